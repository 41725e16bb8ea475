"""Key names of the authors' DMAE (audio-diffusion-pytorch 0.1.3 + a-unet 0.0.16 + audio-encoders-pytorch 0.0.22).

`reference_key_map(dmae)` walks our DMAE and returns {reference key: our key}. The reference nests every U-Net
level inside the previous one and wraps every item in selector modules, so its names are long; the computation
is the same (tests/test_reference.py proves it on the shared test vectors).
"""
from __future__ import annotations

from .dmae import DMAE
from .unet1d import Item, UNet1d


def _item_keys(ref: str, ours: str, item: Item, start: int) -> tuple[dict[str, str], int]:
    m: dict[str, str] = {}
    i = start
    for j, (norm, conv) in enumerate((("norm1", "conv1"), ("norm2", "conv2"))):
        for p in ("weight", "bias"):
            m[f"{ref}.block.blocks.{i}.block.blocks.0.blocks.{j}.0.{p}"] = f"{ours}.resnet.{norm}.{p}"
            m[f"{ref}.block.blocks.{i}.block.blocks.0.blocks.{j}.2.{p}"] = f"{ours}.resnet.{conv}.{p}"
    i += 1
    for p in ("weight", "bias"):
        m[f"{ref}.block.blocks.{i}.blocks.0.block.blocks.0.1.{p}"] = f"{ours}.modulation.to_scale_shift.{p}"
    i += 1
    if item.inject is not None:
        for p in ("weight", "bias"):
            m[f"{ref}.block.blocks.{i}.block.blocks.0.{p}"] = f"{ours}.inject.conv.{p}"
        i += 1
    for name in ("attention", "cross_attention"):
        if getattr(item, name) is not None:
            base = f"{ref}.block.blocks.{i}.blocks.0.block"
            for sub in ("norm", "norm_context"):
                for p in ("weight", "bias"):
                    m[f"{base}.{sub}.{p}"] = f"{ours}.{name}.{sub}.{p}"
            m[f"{base}.to_q.weight"] = f"{ours}.{name}.to_q.weight"
            m[f"{base}.to_kv.weight"] = f"{ours}.{name}.to_kv.weight"
            m[f"{base}.attention.blocks.0.weight"] = f"{ours}.{name}.to_out.weight"
            i += 1
    return m, i


def unet_key_map(unet: UNet1d, ref_root: str, ours_root: str) -> dict[str, str]:
    """Map the reference's LTPlugin(TimeConditioningPlugin(XUNet)) names to our UNet1d's names."""
    m: dict[str, str] = {}
    t = f"{ref_root}.blocks.2" if unet.patch_in is not None else ref_root
    if unet.patch_in is not None:
        m[f"{ref_root}.blocks.0.weight"] = f"{ours_root}.patch_in.weight"
        m[f"{ref_root}.blocks.1.weight"] = f"{ours_root}.patch_out.weight"
    m[f"{t}.blocks.0.weights"] = f"{ours_root}.time_embed.weights"
    for p in ("weight", "bias"):
        m[f"{t}.blocks.0.to_out.{p}"] = f"{ours_root}.time_embed.to_out.{p}"
        for layer in range(unet.cfg.time_mlp_layers):  # one shared module listed once per use
            m[f"{t}.blocks.1.blocks.{layer}.0.{p}"] = f"{ours_root}.time_mlp.{p}"
    ref = f"{t}.blocks.2.net"
    for depth, level in enumerate(unet.levels):
        ours = f"{ours_root}.levels.{depth}"
        for p in ("weight", "bias"):
            m[f"{ref}.block.blocks.0.block.{p}"] = f"{ours}.down.{p}"
            m[f"{ref}.skip.blocks.0.1.{p}"] = f"{ours}.skip_scale.{p}"
            if level.skip_adapter is not None:
                m[f"{ref}.skip_adapter.block.{p}"] = f"{ours}.skip_adapter.{p}"
        i = 1
        for k, item in enumerate(level.items_down):
            mm, i = _item_keys(ref, f"{ours}.items_down.{k}", item, i)
            m.update(mm)
        inner = i
        i += 1 if depth + 1 < len(unet.levels) else 0
        for k, item in enumerate(level.items_up):
            mm, i = _item_keys(ref, f"{ours}.items_up.{k}", item, i)
            m.update(mm)
        for p in ("weight", "bias"):
            m[f"{ref}.block.blocks.{i}.block.1.{p}"] = f"{ours}.up.{p}"
        ref = f"{ref}.block.blocks.{inner}"
    return m


def reference_key_map(dmae: DMAE) -> dict[str, str]:
    m = unet_key_map(dmae.decoder, "net", "decoder")
    enc = dmae.encoder
    for blk in ("block1", "block2"):
        for sub in ("groupnorm", "project"):
            for p in ("weight", "bias"):
                m[f"encoder.to_in.block.{blk}.{sub}.{p}"] = f"encoder.to_in.{blk}.{sub}.{p}"
    if enc.to_in.to_out is not None:
        for p in ("weight", "bias"):
            m[f"encoder.to_in.block.to_out.{p}"] = f"encoder.to_in.to_out.{p}"
    ours = {k for k in dmae.state_dict() if k.startswith("encoder.") and not k.startswith("encoder.to_in.")}
    for k in ours:
        m[k] = k  # downsamples.* and to_out.* share the reference's names
    return m
