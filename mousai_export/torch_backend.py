"""The PyTorch backend behind mousai_runtime's Backend interface: the checkpoint's models, for parity tests.

It lives here, not in mousai_runtime, so the runtime package never contains torch code;
`mousai_runtime.backends.make_backend("torch", ...)` imports this module by name only when asked.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mousai_runtime.backends import Backend, BackendError


class TorchBackend(Backend):
    """The PyTorch models of a checkpoint folder, for parity tests. Imports torch (lazily, here only)."""

    kind = "torch"

    def __init__(self, checkpoint: str | os.PathLike, threads: int | None = None, text_encoder: Any = None):
        try:
            import torch
            from training.checkpoint import CheckpointError, load_models
        except ImportError as e:
            raise BackendError(f"--engine torch needs torch and the training package ({e})") from None
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        try:
            has_generator = (Path(checkpoint) / "generator.safetensors").is_file()
            self.config, models = load_models(checkpoint, ("dmae", "generator") if has_generator else ("dmae",))
        except CheckpointError as e:
            raise BackendError(str(e)) from None
        self.dmae, self.generator = models["dmae"], models.get("generator")
        self._text = text_encoder  # a FrozenTextEncoder-like module, built lazily
        self._lock = threading.Lock()
        self.checkpoint = Path(checkpoint)

    def text_encoder(self):
        with self._lock:
            if self._text is None:
                from training.model.text import FrozenTextEncoder

                self._text = FrozenTextEncoder(self.config.text.encoder, self.config.text.max_length)
            return self._text

    def run(self, component: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        t = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in inputs.items()}
        with torch.no_grad():
            if component == "text_encoder":
                te = self.text_encoder()
                out = te.states(t["input_ids"].long(), t["attention_mask"].long())
            elif component == "generator":
                out = self.generator.guided(t["x"].float(), t["sigma"].float(), t["text_states"].float(),
                                            t["text_mask"].float(), t["guidance"].float())
            elif component == "encoder":
                out = self.dmae.encoder.frames_to_latent(t["magnitude"].float())
            elif component == "decoder":
                out = self.dmae.denoise(t["x"].float(), t["sigma"].float(), t["latent"].float())
            else:
                raise BackendError(f"unknown component {component}")
        return out.float().numpy()

    @property
    def providers(self) -> list[str]:
        return [f"torch {self.torch.__version__} CPU"]

    def describe(self) -> str:
        return f"torch {self.torch.__version__} eager ({self.checkpoint})"
