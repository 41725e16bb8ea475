"""Same seed, same audio: short clips from the shipped default bundle match fingerprints recorded before the
redesign of issue 20 (tests/same_seed.json), so a refactor that changes the noise, the step maths, the windows, the
chunking or the post-filter fails here.

The fingerprint of a clip is the mean and RMS of 32 equal segments per channel (float64) plus its length. The
tolerances sit between two measured gaps: another CPU (ONNX Runtime picks other kernels on AMD than on Intel)
moves the generated clips' segment means by up to 3e-5 and RMS by up to 8e-5, while the smallest change of
behaviour tried (guidance + 0.1) moves them by 4e-4 and 3e-3, and another seed by 1e-2 and 1e-1. One ONNX
Runtime thread, so on one machine the kernels reduce in one fixed order.

    python tests/test_same_seed.py --write     # re-record (only when a change of behaviour is intended)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "engines" / "default"
REFERENCE = Path(__file__).with_name("same_seed.json")
SEGMENTS = 32
ATOL = {"mean": 1.5e-4, "rms": 5e-4}
PROMPT = "calm ambient pads with soft piano"


def fingerprint(audio: np.ndarray) -> dict:
    a = np.asarray(audio, np.float64)
    segs = np.array_split(a, SEGMENTS, axis=-1)
    return {"shape": list(a.shape),
            "mean": [[float(s[c].mean()) for s in segs] for c in range(a.shape[0])],
            "rms": [[float(np.sqrt(np.mean(s[c] ** 2))) for s in segs] for c in range(a.shape[0])]}


def chord(seconds: float = 3.0, sr: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((220.0, 277.2, 329.6, 440.0)))
    return (0.1 * np.stack([x, np.roll(x, 50)])).astype(np.float32)


def clips() -> dict[str, np.ndarray]:
    """The clips the fingerprints are taken of (each a different path through the runtime)."""
    from mousai_runtime import Pipeline

    pipe = Pipeline(DEFAULT, threads=1)
    out = {"default": pipe.generate(PROMPT, 3.0, seed=7),
           "ddim_negative_seed": pipe.generate(PROMPT, 2.0, seed=-3, steps=5, decoder_steps=2, sampler="ddim",
                                               guidance=1.5)}
    # windowed generation (small windows over a 6 s latent) and chunked decoding (3 s chunks), no post-filter
    small = Pipeline(DEFAULT, threads=1, window_frames=64, overlap_frames=16, chunk_seconds=3.0, postfilter=False)
    out["windowed_chunked"] = small.generate("fast techno, 130 bpm", 6.0, seed=11, steps=6, decoder_steps=3)
    out["stream_blocks"] = np.concatenate(list(small.stream("fast techno, 130 bpm", 6.0, seed=11, steps=6,
                                                            decoder_steps=3)), axis=-1)
    z = pipe.encode(chord())
    out["latent"] = z[0]
    out["round_trip"] = pipe.decode(z, seed=5, samples=chord().shape[1])
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _manifest_sha() -> str:
    import hashlib

    return hashlib.sha256((DEFAULT / "manifest.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def measured():
    return {k: fingerprint(v) for k, v in clips().items()}


def test_reference_is_of_the_shipped_bundle():
    ref = json.loads(REFERENCE.read_text())
    assert ref["manifest_sha256"] == _manifest_sha(), "engines/default changed: re-record deliberately"


@pytest.mark.parametrize("name", ["default", "ddim_negative_seed", "windowed_chunked", "stream_blocks", "latent",
                                  "round_trip"])
def test_same_seed_gives_the_recorded_audio(measured, name):
    ref = json.loads(REFERENCE.read_text())["clips"][name]
    got = measured[name]
    assert got["shape"] == ref["shape"]
    for key in ("mean", "rms"):
        diff = np.abs(np.array(got[key]) - np.array(ref[key])).max()
        assert diff <= ATOL[key], f"{name} {key}: differs by {diff:.3g} from the recorded clip"


def test_stream_equals_generate(measured):
    assert measured["stream_blocks"] == measured["windowed_chunked"]


def test_fingerprint_tells_a_small_change_apart():
    """The tolerance is sharp enough: guidance moved by 0.5 (same seed, everything else equal) is outside it."""
    from mousai_runtime import Pipeline

    pipe = Pipeline(DEFAULT, threads=1)
    a = fingerprint(pipe.generate(PROMPT, 1.0, seed=1, steps=3, decoder_steps=2, guidance=3.0))
    b = fingerprint(pipe.generate(PROMPT, 1.0, seed=1, steps=3, decoder_steps=2, guidance=3.5))
    assert np.abs(np.array(a["rms"]) - np.array(b["rms"])).max() > 2 * ATOL["rms"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_same_seed.py --write")
    sys.path.insert(0, str(ROOT))
    doc = {"what": "fingerprints of tests/test_same_seed.py clips()", "commit": _commit(),
           "manifest_sha256": _manifest_sha(), "clips": {k: fingerprint(v) for k, v in clips().items()}}
    REFERENCE.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {REFERENCE} at {doc['commit'][:12]}")
