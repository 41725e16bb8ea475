"""Import the authors' published DMAE checkpoints (archinetai/archisound, e.g. dmae1d-ATC64-v2).

The architecture is read off the weights themselves (channels, factors, items, patch transform, encoder stacks,
inject depth), so any checkpoint of the family imports without a hand-written config; the only hyper-parameters
that weights cannot show (GroupNorm groups, STFT hop) take the reference defaults and may be overridden from the
folder's config.json. Every key must map and every shape must match, or the import is refused with the list.
Pickled `.bin` files are read only with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from mousai_runtime.files import UnsafePathError, check_apart, existing_target

from .checkpoint import CheckpointError, save_checkpoint
from .model.configs import DMAEConfig, EncoderConfig, ModelConfig, UNetConfig, tiny
from .model.dmae import DMAE
from .model.reference import reference_key_map

ALIASES = ("diffusion.net.", "sampler.net.")


class ImportError_(ValueError):
    """A checkpoint that cannot be imported (one clear line)."""


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A HF-style folder (model.safetensors / pytorch_model.bin + config.json), or a bare weights file."""
    path = Path(path)
    config: dict = {}
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                config = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise ImportError_(f"unreadable config.json in {path}: {e}") from e
            if not isinstance(config, dict):
                raise ImportError_(f"config.json in {path} must hold a JSON object, not a {type(config).__name__}")
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")) + sorted(path.glob("*.ckpt"))
        if not files:
            raise ImportError_(f"no weights (*.safetensors, *.bin, *.pt, *.ckpt) in {path}")
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(_read_file(f))
        return sd, config
    if not path.is_file():
        raise ImportError_(f"no such checkpoint: {path}")
    return _read_file(path), config


def _read_file(f: Path) -> dict[str, torch.Tensor]:
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(f))
        obj = torch.load(str(f), map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:  # noqa: BLE001 - any parse failure is a user error here
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            # torch's message advises loading with weights_only=False, i.e. running the file's code: never
            raise ImportError_(f"cannot read {f.name}: it holds Python objects other than tensors, which a safe "
                               "load refuses (mousai never runs code from a checkpoint)") from None
        raise ImportError_(f"cannot read {f.name}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ImportError_(f"{f.name} does not hold a state dict of tensors")
    return obj


def normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a common prefix and fold the diffusion.net / sampler.net aliases into net."""
    anchor = next((k for k in sd if re.search(r"(^|\.)encoder\.to_in\.", k)), None)
    if anchor is None:
        raise ImportError_("not a DMAE checkpoint: no encoder.to_in.* weights found")
    prefix = anchor[: anchor.index("encoder.to_in.")]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            raise ImportError_(f"unexpected key outside the model prefix {prefix!r}: {k}")
        k = k[len(prefix):]
        for alias in ALIASES:
            if k.startswith(alias):
                k = "net." + k[len(alias):]
                if k in out and not torch.equal(out[k], v):
                    raise ImportError_(f"alias {alias}* differs from net.* at {k}")
        out[k] = v
    return out


def infer_config(sd: dict[str, torch.Tensor], hints: dict | None = None) -> DMAEConfig:
    """Read the DMAE architecture off the reference-layout weights (ImportError_ for any checkpoint it cannot read:
    a missing key, a weight of too few dimensions, a hint of the wrong type)."""
    try:
        return _infer_config(sd, hints or {})
    except ImportError_:
        raise
    except KeyError as e:
        raise ImportError_(f"missing reference key {e}") from None
    except (IndexError, TypeError, ValueError, AttributeError) as e:
        raise ImportError_(f"unexpected weight layout ({type(e).__name__}: {' '.join(str(e).split())[:200]}): not "
                           "an archisound DMAE this importer knows") from None


def _infer_config(sd: dict[str, torch.Tensor], hints: dict) -> DMAEConfig:
    try:
        patch = sd["net.blocks.0.weight"]  # Conv1d [2 * filters, in, window]
        mf = sd["net.blocks.2.blocks.0.to_out.weight"].shape[0]
        time_dim = sd["net.blocks.2.blocks.0.weights"].shape[0] * 2
    except KeyError as e:
        raise ImportError_(f"missing reference key {e}") from e
    channels, factors, items, attentions, inject_depth, inject_channels = [], [], [], [], None, 0
    ref = "net.blocks.2.blocks.2.net"
    depth = 0
    while f"{ref}.block.blocks.0.block.weight" in sd:
        down = sd[f"{ref}.block.blocks.0.block.weight"]  # Conv1d [ch, in, factor]
        channels.append(down.shape[0])
        factors.append(down.shape[2])
        kinds = _level_modules(sd, ref)
        inner = next((i for i, kind in kinds if kind == "inner"), None)
        resnets = [i for i, kind in kinds if kind == "resnet"]
        items.append(len([i for i in resnets if inner is None or i < inner]) // (1 if inner is not None else 2))
        attentions.append(int(any(kind == "attention" for _, kind in kinds)))
        for i, kind in kinds:
            if kind == "inject":
                inject_depth = depth
                inject_channels = sd[f"{ref}.block.blocks.{i}.block.blocks.0.weight"].shape[1] - channels[-1]
        if inner is None:
            break
        ref = f"{ref}.block.blocks.{inner}"
        depth += 1
    if not channels:
        raise ImportError_("could not find the decoder U-Net levels")
    enc_in = sd["encoder.to_in.block.block1.project.weight"]
    n_down = len({k.split(".")[2] for k in sd if k.startswith("encoder.downsamples.")})
    enc_factors, enc_blocks, enc_mults = [], [], [1]
    base_ch = enc_in.shape[0]
    for j in range(n_down):
        w = sd[f"encoder.downsamples.{j}.downsample.weight"]
        enc_factors.append((w.shape[2] - 1) // 2)
        enc_blocks.append(len({k.split(".")[4] for k in sd if k.startswith(f"encoder.downsamples.{j}.blocks.")}))
        enc_mults.append(w.shape[0] // base_ch)
    in_ch = patch.shape[1]
    bins = enc_in.shape[1] // in_ch
    enc = EncoderConfig(
        in_channels=in_ch, stft_n_fft=bins * 2 - 1, stft_hop=int(hints.get("stft_hop_length", 256)),
        channels=base_ch, multipliers=enc_mults, factors=enc_factors, num_blocks=enc_blocks,
        resnet_groups=int(hints.get("encoder_resnet_groups", 8)), out_channels=sd["encoder.to_out.weight"].shape[0],
    )
    dec = UNetConfig(
        in_channels=in_ch, patch_size=patch.shape[2], patch_channels=patch.shape[0], channels=channels,
        factors=factors, items=items, attentions=attentions, inject_depth=inject_depth,
        inject_channels=inject_channels, resnet_groups=int(hints.get("resnet_groups", 8)),
        modulation_features=mf, time_dim=time_dim,
    )
    try:
        return DMAEConfig(encoder=enc, decoder=dec, audio_scale=1.0)
    except ValueError as e:
        raise ImportError_(f"inferred architecture is inconsistent: {e}") from e


# the key that identifies each module kind in a reference level's sequence (checked in this order)
_MARKERS = (
    ("skip.blocks.0.1.weight", "inner"),
    ("block.blocks.0.blocks.0.0.weight", "resnet"),
    ("blocks.0.block.blocks.0.1.weight", "modulation"),
    ("blocks.0.block.to_q.weight", "attention"),
    ("block.blocks.0.weight", "inject"),
    ("block.1.weight", "upsample"),
)


def _level_modules(sd: dict[str, torch.Tensor], ref: str) -> list[tuple[int, str]]:
    """The kinds of the modules in one reference level's sequence, after its down-sample (index 0)."""
    kinds, i = [], 1
    while True:
        base = f"{ref}.block.blocks.{i}"
        kind = next((k for suffix, k in _MARKERS if f"{base}.{suffix}" in sd), None)
        if kind is None:
            raise ImportError_(f"unrecognised module at {base}")
        kinds.append((i, kind))
        if kind == "upsample":
            return kinds
        i += 1


def convert(sd: dict[str, torch.Tensor], config: DMAEConfig) -> dict[str, torch.Tensor]:
    """Reference-layout weights -> our DMAE state dict, refusing anything that does not map completely."""
    model = DMAE(config)
    key_map = reference_key_map(model)
    own = model.state_dict()
    extra = sorted(set(sd) - set(key_map) - {"encoder.stft.window"})
    missing = sorted(set(key_map) - set(sd))
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(own[key_map[k]].shape)}"
              for k in key_map if k in sd and sd[k].shape != own[key_map[k]].shape]
    if extra or missing or shapes:
        lines = [f"unexpected: {k}" for k in extra] + [f"missing: {k}" for k in missing] + \
                [f"shape mismatch: {s}" for s in shapes]
        raise ImportError_(f"checkpoint does not map completely ({len(lines)} problems): " + "; ".join(lines[:20]))
    out: dict[str, torch.Tensor] = {}
    for k, ours in key_map.items():
        v = sd[k].float()
        if ours in out and not torch.equal(out[ours], v):
            raise ImportError_(f"shared weight differs between its reference names: {k}")
        out[ours] = v
    return out


def import_archisound(path: str | Path, out: str | Path, force: bool = False) -> ModelConfig:
    """Write a mousai checkpoint (config.json + dmae.safetensors) computing the same function as `path`."""
    out = Path(out)
    try:
        check_apart(out, {"source checkpoint": path})
        existing_target(out, folder_ok=True)
    except UnsafePathError as e:
        raise ImportError_(str(e)) from None
    if os.path.lexists(out) and not force:
        raise ImportError_(f"{out} exists (use --force to replace it)")
    raw, hints = read_state_dict(path)
    sd = normalise_keys(raw)
    dmae_cfg = infer_config(sd, hints)
    try:
        weights = convert(sd, dmae_cfg)
    except (RuntimeError, ValueError, TypeError) as e:
        if isinstance(e, ImportError_):
            raise
        raise ImportError_(f"the weights do not fit the inferred architecture: {' '.join(str(e).split())[:200]}") from None
    cfg = tiny()
    cfg.name = "archisound"
    cfg.dmae = dmae_cfg
    try:
        save_checkpoint(out, cfg, {"dmae": weights}, meta={"kind": "archisound-import", "source": str(path)})
    except OSError as e:
        raise CheckpointError(f"cannot write {out}: {e}") from e
    return cfg
