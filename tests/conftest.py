"""Shared test helpers. Every test runs offline: model hubs are unreachable and must never be needed."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_REFERENCE = ROOT.parent / "shared" / "reference"


def tiny_test_config():
    """`tiny` shrunk so that a training step takes milliseconds (same structure, fewer channels)."""
    from training.model.configs import tiny

    c = tiny()
    d = c.dmae.decoder
    d.patch_channels, d.channels, d.items = 32, [16, 16, 16, 16, 32, 32, 32], [1, 1, 1, 1, 1, 1, 1]
    d.modulation_features = 64
    e = c.dmae.encoder
    e.channels, e.num_blocks = 16, [1, 1]
    g = c.generator.unet
    g.channels, g.items, g.modulation_features = [32, 32, 64], [1, 1, 1], 64
    g.factors, g.attentions, g.cross_attentions = [1, 2, 2], [0, 1, 1], [1, 1, 1]
    g.attention_heads, g.attention_features = 2, 16
    return c
