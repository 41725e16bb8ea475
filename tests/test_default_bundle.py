"""The shipped default model (engines/default + engines/checkpoints/default): it fits the budget, its manifest carries
the export's parity figures, and `mousai generate` with it writes real audio."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "engines" / "default"
CHECKPOINT = ROOT / "engines" / "checkpoints" / "default"
SR = 48000


def test_manifest_has_parity_figures_within_bounds():
    m = json.loads((DEFAULT / "manifest.json").read_text())
    assert m["audio"]["sample_rate"] == SR and m["audio"]["channels"] == 2 and m["precision"] == "fp16"
    parity = m["parity"]
    for comp in ("text_encoder", "generator", "encoder", "decoder", "end_to_end"):
        figs = parity[comp]
        assert 0 <= figs["rel_l2"] < 1e-2, (comp, figs)  # the shipped fp16 graphs vs PyTorch
    for comp in ("text_encoder", "generator", "encoder", "decoder"):
        assert parity[comp]["fp32_rel_l2"] < 1e-4, comp  # the fp32 graphs they were made from
        assert parity[comp]["fp16_max_activation"] < 65504 / 4, comp  # headroom below the fp16 limit


def test_bundle_and_checkpoint_fit_the_budget():
    size = sum(p.stat().st_size for d in (DEFAULT, CHECKPOINT) for p in d.rglob("*") if p.is_file())
    assert size < 120e6, f"{size / 1e6:.1f} MB"


def test_checkpoint_is_the_one_exported():
    """The bundle was exported from the committed checkpoint: same config, same weights."""
    from mousai_runtime.bundle import sha256_file

    src = json.loads((DEFAULT / "manifest.json").read_text())["source"]
    assert src["checkpoint_config_sha256"] == sha256_file(CHECKPOINT / "config.json")[0]
    for comp in ("dmae", "generator"):
        assert src[f"{comp}_weights_sha256"] == sha256_file(CHECKPOINT / f"{comp}.safetensors")[0], comp


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "out.wav"

    def run(prompt: str, seed: int) -> tuple[np.ndarray, int, str]:
        p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "generate", prompt, "-o", str(out),
                            "--seconds", "4", "--seed", str(seed)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        audio, sr = sf.read(out, dtype="float32", always_2d=True)
        return audio.T, sr, p.stdout + p.stderr

    return run


def test_cli_generation_is_real_stereo_music(generated):
    audio, sr, log = generated("calm ambient pads with soft piano", 0)
    assert sr == SR and audio.shape == (2, 4 * SR)
    assert np.isfinite(audio).all()
    rms = float(np.sqrt(np.mean(audio ** 2)))
    assert rms > 1e-2, f"silent: RMS {rms:.5f}"
    assert float(np.mean(np.abs(audio) >= 0.999)) < 1e-4, "clipped"
    assert np.abs(audio[0] - audio[1]).max() > 1e-3, "one channel copied"
    assert "real-time factor" in log
    # the seed matters: another seed is another clip
    other, _, _ = generated("calm ambient pads with soft piano", 1)
    assert float(np.sqrt(np.mean((other - audio) ** 2))) > 0.1 * rms
