"""Exact parity with the authors' implementation on the shared test vectors (made with their code)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED_REFERENCE
from training.model.configs import DMAEConfig, EncoderConfig, UNetConfig
from training.model.dmae import DMAE
from training.model.reference import reference_key_map

pytestmark = pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="shared/reference test vectors not present")


def reference_small_config() -> DMAEConfig:
    rc = json.loads((SHARED_REFERENCE / "dmae_small_seed1_config.json").read_text())["config"]
    e = rc["encoder"]
    enc = EncoderConfig(in_channels=e["in_channels"], stft_n_fft=e["stft_num_fft"], stft_hop=e["stft_hop_length"],
                        channels=e["channels"], multipliers=e["multipliers"], factors=e["factors"],
                        num_blocks=e["num_blocks"], out_channels=e["out_channels"])
    dec = UNetConfig(in_channels=2, patch_size=rc["lt_window_length"], patch_channels=2 * rc["lt_num_filters"],
                     channels=rc["unet_channels"], factors=rc["factors"], items=rc["items"],
                     inject_depth=rc["inject_depth"], inject_channels=e["out_channels"])
    return DMAEConfig(encoder=enc, decoder=dec)


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def test_reference_weights_map_completely_and_reproduce_outputs():
    weights = load_file(str(SHARED_REFERENCE / "dmae_small_seed1_weights.safetensors"))
    io = load_file(str(SHARED_REFERENCE / "dmae_small_seed1_io.safetensors"))
    model = DMAE(reference_small_config()).eval()
    key_map = reference_key_map(model)
    ref_keys = set(weights) - {"encoder.stft.window"}  # a buffer we rebuild (checked below)
    assert ref_keys == set(key_map), (sorted(ref_keys - set(key_map))[:5], sorted(set(key_map) - ref_keys)[:5])
    assert set(key_map.values()) == set(model.state_dict())
    torch.testing.assert_close(weights["encoder.stft.window"], torch.hann_window(1023))
    model.load_state_dict({key_map[k]: weights[k] for k in ref_keys})
    with torch.no_grad():
        latent = model.encode(io["audio"])
        v = model.denoise(io["x_noisy"], io["sigma"], io["latent"])
    assert latent.shape == io["latent"].shape == (1, 32, 112)
    assert rel_l2(latent, io["latent"]) < 1e-4
    assert rel_l2(v, io["v"]) < 1e-4


def test_reference_paper_size_counts_185m():
    cfg = reference_small_config()
    cfg.decoder.channels = [256, 512, 512, 512, 1024, 1024, 1024]
    cfg.decoder.patch_channels = 2 * 128
    cfg.encoder.channels = 512
    with torch.device("meta"):
        n = sum(p.numel() for p in DMAE(cfg).parameters())
    assert abs(n - 185e6) / 185e6 < 0.01, n
