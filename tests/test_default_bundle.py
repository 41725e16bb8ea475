"""The shipped default bundle (engines/default): it loads, carries its parity figures, and makes real audio."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "engines" / "default"
CHECKPOINT = ROOT / "engines" / "checkpoints" / "default"


@pytest.fixture(scope="module")
def pipe():
    from mousai_runtime import Pipeline

    return Pipeline(DEFAULT, threads=2)


def test_manifest_has_parity_figures_within_bounds():
    m = json.loads((DEFAULT / "manifest.json").read_text())
    assert m["kind"] == "text-to-music" and m["sample_rate"] == 48000 and m["channels"] == 2
    parity = m["parity"]
    assert set(parity) >= {"text_encoder", "generator", "encoder", "decoder", "end_to_end"}
    for comp, figs in parity.items():
        assert 0 <= figs["rel_l2"] < 1e-2, (comp, figs)


def test_bundle_and_checkpoint_fit_the_budget():
    size = sum(p.stat().st_size for d in (DEFAULT, CHECKPOINT) for p in d.rglob("*") if p.is_file())
    assert size < 120e6, f"{size / 1e6:.1f} MB"


def test_short_generation_is_real_audio(pipe):
    audio = pipe.generate("calm ambient pads with soft piano", seconds=3.0, seed=0)
    assert audio.dtype == np.float32 and audio.shape == (2, 3 * 48000)
    assert np.isfinite(audio).all()
    rms = float(np.sqrt(np.mean(audio ** 2)))
    assert rms > 1e-3, f"silent: RMS {rms}"
    assert float(np.mean(np.abs(audio) >= 0.999)) < 1e-4, "clipped"
    # the two channels are not one signal copied, and the seed matters
    assert np.abs(audio[0] - audio[1]).max() > 1e-3
    other = pipe.generate("calm ambient pads with soft piano", seconds=3.0, seed=1)
    assert np.abs(other - audio).max() > 1e-2
