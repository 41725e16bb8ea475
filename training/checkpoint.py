"""Checkpoints: a folder with `config.json` (model config + metadata) and safetensors weights. Never pickles.

    CKPT/config.json          {"format": "mousai-checkpoint", "version": 1, "model": {...}, "meta": {...}}
    CKPT/dmae.safetensors     DMAE weights (EMA weights when written by the trainer)
    CKPT/generator.safetensors

Writes are atomic: everything goes to a temp folder beside the target, then replaces it in one rename, so a
crash or a full disk leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mousai_runtime.files import UnsafePathError, atomic_dir, check_apart, current_umask, recover_dir

from .model.configs import ModelConfig

FORMAT, VERSION = "mousai-checkpoint", 1
COMPONENTS = ("dmae", "generator")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _contiguous(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_checkpoint(
    path: str | Path,
    config: ModelConfig,
    weights: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """weights: {"dmae": state_dict, "generator": state_dict} (either may be absent)."""

    def write(tmp: Path) -> None:
        doc = {"format": FORMAT, "version": VERSION, "model": config.to_dict(), "meta": meta or {}}
        (tmp / "config.json").write_text(json.dumps(doc, indent=1))
        for name, sd in weights.items():
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name}")
            save_file(_contiguous(sd, dtype), str(tmp / f"{name}.safetensors"))
            # safetensors creates its files 0600: give them the mode any other file written here gets
            os.chmod(tmp / f"{name}.safetensors", 0o666 & ~current_umask())
        for fname, data in (extra_files or {}).items():
            (tmp / fname).write_bytes(data)

    return atomic_dir(Path(path), write)


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(path)
    recover_dir(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"not a checkpoint folder (no config.json): {path}")
    try:
        doc = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt config.json in {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file} is not a mousai checkpoint config")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"unsupported checkpoint version {doc.get('version')!r} (this mousai reads {VERSION})")
    try:
        return ModelConfig.from_dict(doc["model"]), doc.get("meta", {})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model config in {cfg_file}: {e}") from e


def load_weights(path: str | Path, component: str) -> dict[str, torch.Tensor]:
    f = Path(path) / f"{component}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} has no {component} weights ({f.name})")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt weights file {f}: {e}") from e


def load_into(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with a readable error naming missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise CheckpointError(f"{what} weights do not match the config: " + "; ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def load_models(path: str | Path, components: tuple[str, ...] = COMPONENTS) -> tuple[ModelConfig, dict[str, torch.nn.Module]]:
    """Build the models from config.json and load their weights (float32, eval mode)."""
    from .model.dmae import DMAE
    from .model.generator import Generator

    config, _ = read_config(path)
    models: dict[str, torch.nn.Module] = {}
    for name in components:
        module = DMAE(config.dmae) if name == "dmae" else Generator(config.generator)
        load_into(module, load_weights(path, name), name)
        models[name] = module.eval()
    return config, models


def combine(generator_ckpt: str | Path, dmae_ckpt: str | Path, out: str | Path, dtype: torch.dtype | None = None,
            note: str | None = None) -> Path:
    """A text-to-music checkpoint from the generator of `generator_ckpt` and the DMAE of `dmae_ckpt`.

    The generator was trained on the latents of the DMAE inside its own checkpoint; a later DMAE (a decoder trained
    on with `--freeze-encoder`) may replace it only if its encoder, and so every latent, is the same: the encoder
    weights must be equal (at the lower of the two precisions) and the DMAE configs identical."""
    try:
        check_apart(out, {"generator checkpoint": generator_ckpt, "DMAE checkpoint": dmae_ckpt})
    except UnsafePathError as e:
        raise CheckpointError(str(e)) from None
    gcfg, gmeta = read_config(generator_ckpt)
    dcfg, dmeta = read_config(dmae_ckpt)
    if isinstance(dmeta.get("dmae"), dict):  # a combined checkpoint: its own meta is its generator's
        dmeta = dmeta["dmae"]
    gen = load_weights(generator_ckpt, "generator")
    old, new = load_weights(generator_ckpt, "dmae"), load_weights(dmae_ckpt, "dmae")
    if gcfg.dmae != dcfg.dmae:
        raise CheckpointError(f"{dmae_ckpt} has another DMAE config than the generator's DMAE in {generator_ckpt}")
    enc = [k for k in old if k.startswith("encoder.")]
    if not enc or set(enc) != {k for k in new if k.startswith("encoder.")}:
        raise CheckpointError("the two DMAEs do not have the same encoder parameters")
    for k in enc:
        a, b = old[k], new[k]
        low = a.dtype if a.element_size() <= b.element_size() else b.dtype
        if a.shape != b.shape or not torch.equal(a.to(low), b.to(low)):
            raise CheckpointError(f"the DMAE in {dmae_ckpt} has another encoder than the one the generator in "
                                  f"{generator_ckpt} was trained on (first difference: {k}): its latents differ")
    meta = {**gmeta, "dmae": dmeta, "combined_from": {"generator": str(generator_ckpt), "dmae": str(dmae_ckpt)}}
    if note:
        meta["note"] = note
    from .postfilter import FILE  # the post-filter (training/postfilter.py) depends on the encoder only

    extra = {}
    for src in (Path(dmae_ckpt), Path(generator_ckpt)):
        if (src / FILE).is_file():
            extra[FILE] = (src / FILE).read_bytes()
            break
    return save_checkpoint(out, gcfg, {"dmae": new, "generator": gen}, meta, dtype=dtype, extra_files=extra)
