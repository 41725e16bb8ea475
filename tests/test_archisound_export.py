"""The authors' DMAE -> `mousai import archisound` -> `mousai export` -> an autoencoder bundle that reproduces the
reference vectors through ONNX Runtime and decodes, through the runtime, lengths the reference's decode refuses.

One import and one export per module (the export is most of this file's time: ~1 min of torch.export on 2 cores).
The paper-size variant's parameter count is checked in tests/test_reference.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SHARED_REFERENCE

pytestmark = pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="shared/reference test vectors not present")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BOUND = 1e-4  # rel L2


def rel_l2(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def io():
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(SHARED_REFERENCE / "dmae_small_seed1_io.safetensors")).items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The reference weights as a HF-style folder (model.safetensors + config.json), imported with the CLI."""
    from safetensors.torch import load_file, save_file

    from cli import app

    root = tmp_path_factory.mktemp("archisound")
    src = root / "hf"
    src.mkdir()
    save_file(load_file(str(SHARED_REFERENCE / "dmae_small_seed1_weights.safetensors")), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"architectures": ["DMAE1d"]}))
    r = CliRunner().invoke(app, ["import", "archisound", str(src), "--out", str(root / "ckpt")])
    assert r.exit_code == 0, r.output
    assert {p.name for p in (root / "ckpt").iterdir()} == {"config.json", "dmae.safetensors"}
    return root / "ckpt"


@pytest.fixture(scope="module")
def bundle(checkpoint):
    """`mousai export CKPT --out B` with no extra flag (it calls mousai_export.export_bundle, parity on)."""
    from cli import app

    out = checkpoint.parent / "bundle"
    r = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def sessions(bundle):
    out, _ = bundle
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return {c: ort.InferenceSession(str(out / f"{c}.onnx"), so, providers=["CPUExecutionProvider"])
            for c in ("encoder", "decoder")}


def test_manifest_is_an_autoencoder_bundle(bundle, checkpoint):
    from mousai_export import bundle as bundle_mod
    from training.checkpoint import read_config

    out, m = bundle
    config, _ = read_config(checkpoint)
    assert m["kind"] == "autoencoder"
    assert "text" not in m and "generator_info" not in m
    assert set(m["models"]) == {"encoder", "decoder"}
    assert set(m["files"]) == {"encoder.onnx", "decoder.onnx"}
    assert {p.name for p in out.iterdir()} == {"encoder.onnx", "decoder.onnx", "manifest.json", "manifest.sha256"}
    assert m["source"]["model_name"] == "archisound" and "text_encoder" not in m["source"]
    assert "generator_weights_sha256" not in m["source"] and "dmae_weights_sha256" in m["source"]
    assert m["audio"] == {"sample_rate": 48000, "channels": 2, "audio_scale": 1.0}
    assert m["latent"] == {"channels": 32, "hop": 1024}
    assert m["stft"]["center"] is True and m["stft"]["n_fft"] == 1023 and m["stft"]["hop"] == 256
    assert m["defaults"] == {"sampler": bundle_mod.DEFAULT_SAMPLER, "decoder_sampler": bundle_mod.DEFAULT_DECODER_SAMPLER,
                             "schedule": "linear", "decoder_steps": bundle_mod.DEFAULT_DECODER_STEPS,
                             "max_seconds": 3600.0}
    d = m["decoder_info"]
    assert d["length_multiple"] == 4096 and d["downsampling"] == [64, 1, 2, 2, 2, 2, 2, 2]
    rf = bundle_mod.receptive_field(config.dmae)  # no attention in the reference decoder: analytic and finite
    assert rf is not None and d["receptive_field"] == rf < 10 * 48000 and d["receptive_field_method"].startswith("analytic")
    p = m["parity"]
    assert set(p) == {"encoder", "decoder", "end_to_end"}
    for comp, f in p.items():
        assert 0 <= f["rel_l2"] < BOUND, (comp, f)
    assert p["end_to_end"]["latent_rel_l2"] < BOUND and p["end_to_end"]["steps"] == {"decoder": 3}


def test_runtime_loads_it_as_an_autoencoder(bundle):
    from mousai_runtime.bundle import Bundle

    out, _ = bundle
    b = Bundle.load(out)  # fields, paths, sizes, sha256s
    assert b.kind == "autoencoder" and set(b.models) == {"encoder", "decoder"}


def test_onnx_reproduces_the_reference_latent_and_v(bundle, sessions, io):
    from mousai_runtime.stft import magnitude_stft

    _, m = bundle
    s, hop = m["stft"], m["latent"]["hop"]
    audio = io["audio"]
    assert audio.shape[-1] % hop == 0  # the contract's zero padding to a multiple of hop is a no-op here
    mag = magnitude_stft(audio, s["n_fft"], s["hop"], s["center"], s["normalized"])
    latent = sessions["encoder"].run(None, {"magnitude": mag})[0]
    assert rel_l2(latent, io["latent"]) < BOUND
    v = sessions["decoder"].run(None, {"x": io["x_noisy"], "sigma": io["sigma"].reshape(1).astype(np.float32),
                                       "latent": io["latent"]})[0]
    assert rel_l2(v, io["v"]) < BOUND


@pytest.mark.parametrize("frames", [112, 100])
def test_runtime_decodes_lengths_that_are_not_powers_of_two(bundle, io, frames):
    """The reference's decode rounds the length up to a power of two; the runtime decodes exactly frames * hop.
    (ONNX + numpy DDIM vs torch DMAE.decode with the same noise is the manifest's parity.end_to_end.)"""
    from mousai_runtime.pipeline import Pipeline

    out, _ = bundle
    pipe = Pipeline(out)
    latent = io["latent"][..., :frames]
    if frames == 112:
        assert rel_l2(pipe.encode(io["audio"][0]), io["latent"]) < BOUND
    audio = pipe.decode(latent, steps=10, seed=3)
    n = frames * 1024
    assert n & (n - 1) and audio.shape == (2, n) and audio.dtype == np.float32 and np.isfinite(audio).all()
    assert audio.std() > 1e-3


def test_refuses_a_checkpoint_without_dmae_weights(checkpoint, tmp_path):
    import shutil

    from mousai_export import ExportError, export_bundle

    ck = tmp_path / "no-dmae"
    ck.mkdir()
    shutil.copyfile(checkpoint / "config.json", ck / "config.json")
    with pytest.raises(ExportError, match="no DMAE weights"):
        export_bundle(str(ck), str(tmp_path / "b"), progress=False)
    assert not (tmp_path / "b").exists()


def test_trt_profiles_cover_only_the_autoencoder(bundle):
    from mousai_export.trt import default_profiles

    _, m = bundle
    prof = default_profiles(m)
    assert set(prof) == {"encoder", "decoder"}
    for comp, p in prof.items():
        assert set(p.shapes) == {t["name"] for t in m["models"][comp]["inputs"]}, comp
    assert all(s[2] % 4096 == 0 for s in prof["decoder"].shapes["x"])
