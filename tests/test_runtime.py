"""mousai_runtime: sampler parity, chunked decoding, bundle verification, no-torch import, threads, cancel.

The bundle under test is exported by `mousai_export.export_bundle` from a very small random checkpoint (the
test config of conftest.py) once, and cached under .pytest_cache (keyed by the model code): the first run pays a
few minutes of export, later runs start at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, tiny_test_config

SR = 48000


# ------------------------------------------------------------------------------------------------- helpers


def _source_key() -> str:
    """What the cached test bundle depends on: the model code, the test config, torch. Not the exporter's sources:
    they change often and a rebuild costs minutes; the runtime verifies every bundle it loads anyway."""
    import inspect

    import torch

    h = hashlib.sha256(torch.__version__.encode() + b"manifest.sha256")  # bundles carry their manifest's seal
    for f in sorted([*ROOT.glob("training/model/*.py"), ROOT / "training/checkpoint.py"]):
        h.update(f.name.encode() + f.read_bytes())
    h.update(inspect.getsource(tiny_test_config).encode())
    return h.hexdigest()[:16]


def make_tiny_assets(cache_dir: Path) -> dict:
    """{'bundle', 'ckpt'}: a tiny random checkpoint and its bundle (mousai_export.export_bundle), built once and
    cached on disk (a few minutes on 2 busy cores, mostly the 22M-parameter text encoder)."""
    import torch

    key = _source_key()
    final = cache_dir / f"tiny-{key}"
    if not (final / "bundle" / "manifest.json").is_file():
        from mousai_export import export_bundle
        from training.checkpoint import save_checkpoint
        from training.model.dmae import DMAE
        from training.model.generator import Generator

        tmp = cache_dir / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.manual_seed(0)
        cfg = tiny_test_config()
        dmae, gen = DMAE(cfg.dmae).eval(), Generator(cfg.generator).eval()
        save_checkpoint(tmp / "ckpt", cfg, {"dmae": dmae.state_dict(), "generator": gen.state_dict()})
        export_bundle(str(tmp / "ckpt"), str(tmp / "bundle"), check=False, progress=False)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return {"bundle": final / "bundle", "ckpt": final / "ckpt"}


@pytest.fixture(scope="session")
def tiny(request):
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("mousai-runtime")) if cache is not None else \
        Path(os.environ.get("MOUSAI_TEST_CACHE", Path(tempfile.gettempdir()) / "mousai-test-cache"))
    return make_tiny_assets(folder)


@pytest.fixture(scope="session")
def pipe(tiny):
    from mousai_runtime import Pipeline

    return Pipeline(tiny["bundle"], chunk_seconds=3.0)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ------------------------------------------------------------------------------------------------- sampler


def _toy_model_pair(channels=3, seed=0):
    """The same nonlinear v(x, sigma) in numpy and torch."""
    import torch

    w = np.random.default_rng(seed).standard_normal((channels, channels)).astype(np.float32) / channels

    def np_fn(x, sigma):
        return np.tanh(np.einsum("ij,bjt->bit", w, x)) * np.cos(sigma)[:, None, None] + sigma[:, None, None] * x

    wt = torch.from_numpy(w)

    def torch_fn(x, sigma):
        return torch.tanh(torch.einsum("ij,bjt->bit", wt, x)) * torch.cos(sigma)[:, None, None] + sigma[:, None, None] * x

    return np_fn, torch_fn


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_sampler_parity_numpy_vs_torch(steps):
    import torch

    from mousai_runtime import sampling as ns
    from training.model import diffusion as td

    assert np.allclose(ns.linear_sigmas(steps), td.linear_sigmas(steps).numpy(), atol=1e-7, rtol=0)
    np_fn, torch_fn = _toy_model_pair()
    x = np.random.default_rng(1).standard_normal((2, 3, 257)).astype(np.float32)
    seen_np, seen_t = [], []
    out_np = ns.ddim_sample(np_fn, x, ns.linear_sigmas(steps), callback=lambda i, xx: seen_np.append(i))
    out_t = td.ddim_sample(torch_fn, torch.from_numpy(x), td.linear_sigmas(steps),
                           callback=lambda i, xx: seen_t.append(i)).numpy()
    assert out_np.dtype == np.float32 and out_np.shape == x.shape
    assert seen_np == seen_t == list(range(steps))
    assert rel_l2(out_np, out_t) < 1e-5, rel_l2(out_np, out_t)
    # one step, the same formula on tensors and on arrays
    v = np_fn(x, np.full(2, 0.7, np.float32))
    ref = ns.ddim_step(torch.from_numpy(v), torch.from_numpy(x), 0.7, 0.3).numpy()
    assert np.allclose(ns.ddim_step(v, x, 0.7, 0.3), ref, atol=1e-6)
    with pytest.raises(ValueError):
        ns.linear_sigmas(0)


def test_nonfinite_raises_with_step_and_component():
    from mousai_runtime.sampling import NonFiniteError, ddim_sample, linear_sigmas

    calls = []

    def broken(x, sigma):
        calls.append(1)
        return x * (np.inf if len(calls) == 3 else 0.5)

    with pytest.raises(NonFiniteError, match=r"decoder at denoising step 3/5") as e:
        ddim_sample(broken, np.ones((1, 2, 8), np.float32), linear_sigmas(5), component="decoder")
    assert e.value.step == 2 and e.value.component == "decoder" and len(calls) == 3


def test_nonfinite_in_pipeline_names_component(tiny):
    from mousai_runtime import NonFiniteError, Pipeline
    from mousai_runtime.backends import OrtBackend
    from mousai_runtime.bundle import Bundle

    class NaNDecoder(OrtBackend):
        def run(self, component, inputs):
            out = super().run(component, inputs)
            return out * np.nan if component == "decoder" else out

    b = Bundle.load(tiny["bundle"])
    p = Pipeline(tiny["bundle"], backend=NaNDecoder(b))
    with pytest.raises(NonFiniteError, match="decoder at denoising step 1/"):
        p.generate("a", 0.5, steps=2, decoder_steps=2)


# ------------------------------------------------------------------------------------------------- STFT, encoder


@pytest.mark.parametrize("length", [1024 * 3, 4096 * 2 + 17, 5000])
def test_stft_matches_torch(length):
    import torch

    from mousai_runtime.stft import magnitude_stft
    from training.model.dmae import magnitude_stft as torch_mag

    audio = np.random.default_rng(length).standard_normal((2, 2, length)).astype(np.float32) * 0.3
    ours = magnitude_stft(audio, 1023, 256, center=True, normalized=True, block_frames=7)
    ref = torch_mag(torch.from_numpy(audio), 1023, 256, True, torch.hann_window(1023)).numpy()
    assert ours.shape == ref.shape
    assert rel_l2(ours, ref) < 1e-5 and np.abs(ours - ref).max() < 1e-4


def test_encode_matches_torch(tiny, pipe):
    import torch

    from training.checkpoint import load_models

    _, models = load_models(tiny["ckpt"], ("dmae",))
    audio = (np.random.default_rng(3).standard_normal((2, 1024 * 9 + 100)) * 0.2).astype(np.float32)
    z = pipe.encode(audio)
    with torch.no_grad():
        ref = models["dmae"].encode(torch.from_numpy(audio)[None]).numpy()
    assert z.shape == ref.shape == (1, 32, 10)
    assert rel_l2(z, ref) < 1e-4


# ------------------------------------------------------------------------------------------------- noise + plan


def test_global_noise_windows_are_consistent_and_deterministic():
    from mousai_runtime.decode import GlobalNoise

    n = GlobalNoise(7, block=1000)
    whole = GlobalNoise(7, block=1000).cut(0, 5500)
    for a, b in [(0, 10), (990, 1010), (999, 3001), (4000, 5500), (2500, 2500)]:
        assert np.array_equal(n.cut(a, b), whole[:, a:b])
    assert np.array_equal(GlobalNoise(7, block=1000).cut(3000, 4000), whole[:, 3000:4000])
    other = GlobalNoise(8, block=1000).cut(0, 5500)
    assert not np.allclose(other, whole)
    big = GlobalNoise(1).cut(0, 200_000)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01
    assert np.corrcoef(big[0], big[1])[0, 1] < 0.01
    assert GlobalNoise(-3).cut(0, 4).shape == (2, 4)  # any Python int is a seed


@pytest.mark.parametrize("frames", [1, 3, 4, 5, 50, 51, 127, 128, 129, 300, 1001])
def test_plan_covers_any_length(frames):
    from mousai_runtime.decode import plan_chunks

    hop, mult, chunk, margin, fade = 16, 4, 40, 6, 3
    plan = plan_chunks(frames, hop, mult, chunk, margin, fade)
    assert plan.padded % mult == 0 and plan.padded >= frames > plan.padded - mult
    starts = [s for s, _ in plan.chunks]
    assert starts[0] == 0 and plan.chunks[-1][1] == plan.padded and starts == sorted(set(starts))
    lengths = {e - s for s, e in plan.chunks}
    assert len(lengths) == 1 and lengths.pop() % mult == 0
    assert len(plan.fades) == len(plan.chunks) - 1
    for i, (f0, fl) in enumerate(plan.fades):
        (s0, e0), (s1, e1) = plan.chunks[i], plan.chunks[i + 1]
        assert fl == fade * hop
        assert (s1 + margin) * hop <= f0 and f0 + fl <= (e0 - margin) * hop  # both chunks >= margin from edges
        if i:
            assert plan.fades[i - 1][0] + plan.fades[i - 1][1] <= f0


# ------------------------------------------------------------------------------------------------- chunked decoding


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Moving average of width 2r+1 along the last axis with zero padding (a local op with radius r)."""
    c = np.cumsum(np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(r + 1, r)]), axis=-1)
    return (c[..., 2 * r + 1:] - c[..., :-2 * r - 1]) / (2 * r + 1)


def local_decoder(hop: int, radius: int, noise_gain: float = 0.3):
    """A decoder step with receptive field `radius` whose clean estimate is smooth: 0.3 x smoothed noise + the
    latent's first two channels smoothed; exact v for that estimate, so DDIM ends on it."""

    def fn(x, sigma, latent):
        alpha = np.cos(sigma * np.pi / 2)[:, None, None]
        beta = np.sin(sigma * np.pi / 2)[:, None, None]
        r = radius // 3  # three boxes: reach `radius`, side lobes low enough that a click stands out
        tone = _box(_box(_box(np.repeat(latent[:, :2], hop, axis=-1), r), r), r)
        x0 = noise_gain * _box(_box(_box(x, r), r), r) + tone
        eps = (x - alpha * x0) / beta
        return (alpha * eps - beta * x0).astype(np.float32)

    return fn


def _smooth_latent(frames: int, seed: int = 0) -> np.ndarray:
    z = np.cumsum(np.random.default_rng(seed).standard_normal((1, 4, frames)), axis=-1) * 0.05
    return np.tanh(z).astype(np.float32)


@pytest.mark.parametrize("frames", [1, 7, 33, 64, 97, 200])
def test_chunked_equals_whole_for_a_local_model(frames):
    from mousai_runtime.decode import ChunkedDecoder, GlobalNoise

    hop, radius, steps = 32, 40, 3
    fn = local_decoder(hop, radius)
    margin = -(-radius * steps // hop)  # influence grows by the radius every step
    lat = _smooth_latent(frames)
    whole = ChunkedDecoder(fn, hop, 4, audio_scale=2.0, chunk_frames=None).decode(lat, steps, GlobalNoise(1))
    dec = ChunkedDecoder(fn, hop, 4, audio_scale=2.0, chunk_frames=24, margin_frames=margin, fade_frames=2)
    chunked = dec.decode(lat, steps, GlobalNoise(1))
    assert chunked.shape == whole.shape == (1, 2, frames * hop)
    assert np.abs(chunked - whole).max() < 1e-5
    blocks = list(dec.stream(lat, steps, GlobalNoise(1)))
    assert np.array_equal(np.concatenate(blocks, -1), chunked)
    if frames > 24:
        assert len(blocks) == len(dec.plan(frames).chunks) > 1
    if frames == 200:  # the same check fails when the overlap is too small for the model's reach (it can fail)
        bad = ChunkedDecoder(fn, hop, 4, audio_scale=2.0, chunk_frames=24, margin_frames=0, fade_frames=1)
        assert np.abs(bad.decode(lat, steps, GlobalNoise(1)) - whole).max() > 1e-3


def _seam_metrics(y: np.ndarray, seams: list[tuple[int, int]], guard: int = 64) -> tuple[float, float]:
    """(max sample jump near seams / max jump elsewhere, mean spectral flux near seams / median flux elsewhere)."""
    from mousai_runtime.stft import magnitude_stft

    d = np.abs(np.diff(y, axis=-1)).max(axis=0)
    near = np.zeros(d.shape[-1], bool)
    for f0, fl in seams:
        near[max(0, f0 - guard):f0 + fl + guard] = True
    jump = d[near].max() / d[~near].max()
    hop = 256
    mag = magnitude_stft(y[None], 1023, hop)[0].reshape(y.shape[0], 512, -1)[:, 128:]  # upper 3/4 of the band:
    flux = np.sqrt((np.diff(mag, axis=-1) ** 2).sum((0, 1)))  # where a click shows and smooth content does not
    t = np.arange(flux.shape[-1]) * hop + hop  # frame centre (sample) of each difference
    fnear = np.zeros(flux.shape[-1], bool)
    for f0, fl in seams:
        fnear |= (t > f0 - 1023) & (t < f0 + fl + 1023)
    return float(jump), float(flux[fnear].max() / np.median(flux[~fnear]))


def test_no_discontinuity_at_seams_and_the_check_detects_one():
    from mousai_runtime.decode import ChunkedDecoder, GlobalNoise

    hop, radius = 64, 48
    fn = local_decoder(hop, radius)
    lat = _smooth_latent(160, seed=2)
    dec = ChunkedDecoder(fn, hop, 4, chunk_frames=48, margin_frames=3, fade_frames=4)
    y = dec.decode(lat, 4, GlobalNoise(3))[0]
    plan = dec.plan(160)
    assert len(plan.fades) >= 3
    jump, flux = _seam_metrics(y, plan.fades)
    assert jump < 1.0 and flux < 3.0, (jump, flux)
    # a hard cut between independently noised chunks (what a broken join looks like) is caught by the same check
    half = ChunkedDecoder(fn, hop, 4, chunk_frames=None)
    a = half.decode(lat[..., :80], 4, GlobalNoise(3))[0]
    b = half.decode(lat[..., 80:], 4, GlobalNoise(4))[0]
    bad = np.concatenate([a, b], -1)
    jump_bad, flux_bad = _seam_metrics(bad, [(80 * hop, 1)])
    assert jump_bad > 1.0 and flux_bad > 10, (jump_bad, flux_bad)


CHUNK_VS_WHOLE_REL_L2 = 1e-2  # the DMAE decoder's GroupNorm statistics are per chunk: close, not bit-equal


def test_chunked_vs_whole_real_decoder(pipe):
    from mousai_runtime.decode import ChunkedDecoder, GlobalNoise

    b = pipe.bundle
    lat = np.tanh(np.random.default_rng(0).standard_normal((1, 32, 150))).astype(np.float32)
    args = (pipe._decoder_fn, b.hop, b.decoder_multiple_frames, b.audio_scale, b.receptive_field)
    whole = ChunkedDecoder(*args, chunk_frames=None).decode(lat, 2, GlobalNoise(5))
    dec = ChunkedDecoder(*args, chunk_frames=96)
    plan = dec.plan(150)
    assert len(plan.chunks) >= 3 and dec.margin * b.hop >= b.receptive_field
    chunked = dec.decode(lat, 2, GlobalNoise(5))
    err = rel_l2(chunked, whole)
    print(f"chunked vs whole decoding: rel L2 {err:.2e}, max abs {np.abs(chunked - whole).max():.2e}")
    assert err < CHUNK_VS_WHOLE_REL_L2
    jump, flux = _seam_metrics(chunked[0], plan.fades)
    jump_ref, flux_ref = _seam_metrics(whole[0], plan.fades)  # the same positions without seams
    print(f"seams: jump {jump:.2f} (whole {jump_ref:.2f}), flux {flux:.2f} (whole {flux_ref:.2f})")
    assert jump < 1.2 * jump_ref + 0.05 and flux < 1.2 * flux_ref + 0.05, (jump, jump_ref, flux, flux_ref)


def test_whole_decode_matches_torch_dmae_decode(tiny, pipe):
    """numpy DDIM over the ORT decoder step == training's DMAE.decode with the same global noise."""
    import torch

    from mousai_runtime.decode import GlobalNoise
    from training.checkpoint import load_models

    _, models = load_models(tiny["ckpt"], ("dmae",))
    lat = np.tanh(np.random.default_rng(1).standard_normal((1, 32, 9))).astype(np.float32)
    ours = pipe.decode(lat, steps=3, seed=11)
    noise = GlobalNoise(11).cut(0, 12 * 1024)[None]
    with torch.no_grad():
        ref = models["dmae"].decode(torch.from_numpy(lat), steps=3, noise=torch.from_numpy(noise)).numpy()[0]
    assert ours.shape == ref.shape == (2, 9 * 1024)
    assert rel_l2(ours, ref) < 1e-4, rel_l2(ours, ref)


@pytest.mark.parametrize("seconds", [0.01, 0.37, 1.0, 3.3])
def test_any_length(pipe, seconds):
    audio = pipe.generate("drums", seconds, steps=2, decoder_steps=2, seed=1)
    assert audio.shape == (2, round(seconds * SR)) and audio.dtype == np.float32
    assert np.isfinite(audio).all() and audio.std() > 0


def test_stream_equals_generate_and_is_deterministic(pipe):
    kw = dict(steps=2, decoder_steps=2, seed=4)
    blocks = list(pipe.stream("piano", 7.0, **kw))
    assert len(blocks) == len(pipe.decoder.plan(pipe.frames_for(7.0)[0]).chunks) >= 3
    audio = pipe.generate("piano", 7.0, **kw)
    assert np.array_equal(np.concatenate(blocks, -1), audio)
    assert not np.array_equal(audio, pipe.generate("piano", 7.0, steps=2, decoder_steps=2, seed=5))
    assert not np.array_equal(audio, pipe.generate("organ", 7.0, **kw))


def test_onnx_matches_torch_backend(tiny, pipe):
    from mousai_runtime import Pipeline

    tp = Pipeline(tiny["bundle"], backend="torch", checkpoint=tiny["ckpt"], chunk_seconds=3.0)
    assert tp.providers[0].startswith("torch")
    kw = dict(steps=3, decoder_steps=2, seed=2, guidance=2.5)
    a = pipe.generate("ambient", 4.0, **kw)
    b = tp.generate("ambient", 4.0, **kw)
    assert rel_l2(a, b) < 1e-3, rel_l2(a, b)
    za = pipe.generate_latent("ambient", 4.0, steps=3, guidance=2.5, seed=2)
    zb = tp.generate_latent("ambient", 4.0, steps=3, guidance=2.5, seed=2)
    assert rel_l2(za, zb) < 1e-4, rel_l2(za, zb)


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="  \n\t"), "prompt is empty"),
    (dict(prompt=None), "prompt is empty"),
    (dict(seconds=0), "seconds"),
    (dict(seconds=-1.0), "seconds"),
    (dict(seconds=float("nan")), "seconds"),
    (dict(seconds=float("inf")), "seconds"),
    (dict(seconds=4000.0), "maximum"),
    (dict(seconds="10"), "seconds"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(decoder_steps=0), "decoder steps"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(guidance=float("-inf")), "guidance"),
    (dict(seed=1.5), "seed"),
])
def test_input_validation(pipe, kwargs, match):
    from mousai_runtime import InputError

    args = dict(prompt="pads", seconds=1.0)
    args.update(kwargs)
    with pytest.raises(InputError, match=match) as e:
        pipe.stream(**args)  # validated before anything runs
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------- bundle checks


def _copy_bundle(tiny, tmp_path) -> Path:
    """A hard-linked copy (cheap for a 90 MB text encoder): change files only through _rewrite."""
    dst = tmp_path / "b"
    shutil.copytree(tiny["bundle"], dst, copy_function=os.link)
    return dst


def _rewrite(path: Path, data: bytes, reseal: bool = True) -> None:
    """Replace a file of a copied bundle; a rewritten manifest.json is resealed (manifest.sha256) unless
    reseal=False, so that what a test checks is the field it edited, not the seal."""
    from mousai_runtime.bundle import SEAL, manifest_seal

    path.unlink()  # break the hard link first: never touch the cached original
    path.write_bytes(data)
    if path.name == "manifest.json" and reseal:
        (path.parent / SEAL).unlink(missing_ok=True)
        (path.parent / SEAL).write_text(manifest_seal(data))


def _edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    _rewrite(path / "manifest.json", json.dumps(m).encode())


def _rename_file(m, old, new):
    m["files"][new] = m["files"].pop(old)
    for spec in m["models"].values():
        if spec["file"] == old:
            spec["file"] = new


@pytest.mark.parametrize("case, match", [
    ("version", "version 2 is not supported"),
    ("format", "not a mousai bundle"),
    ("unknown_field", r"unknown top-level field\(s\) \['extra'\]"),
    ("missing_field", r"missing field\(s\) \['defaults'\]"),
    ("missing_file", "missing file decoder.onnx"),
    ("wrong_hash", "sha256 mismatch for generator.onnx"),
    ("wrong_size", "has .* bytes, the manifest says"),
    ("absolute", "refusing absolute path"),
    ("dotdot", "refusing path '../decoder.onnx'"),
    ("unlisted_model", "is not listed in files"),
    ("bad_inputs", "this runtime feeds"),
    ("sampler", "sampler 'ddim'"),
    ("symlink_out", "resolves outside the bundle folder"),
    ("not_json", "unreadable manifest"),
    ("no_manifest", "no manifest.json"),
    ("absent", "bundle not found"),
])
def test_bundle_refusals(tiny, tmp_path, case, match):
    from mousai_runtime import Bundle, BundleError

    p = _copy_bundle(tiny, tmp_path)
    Bundle.load(p)  # the copy is fine before the edit
    if case == "version":
        _edit_manifest(p, lambda m: m.update(version=2, newfield=1))
    elif case == "format":
        _edit_manifest(p, lambda m: m.update(format="other"))
    elif case == "unknown_field":
        _edit_manifest(p, lambda m: m.update(extra=1))
    elif case == "missing_field":
        _edit_manifest(p, lambda m: m.pop("defaults"))
    elif case == "missing_file":
        (p / "decoder.onnx").unlink()
    elif case == "wrong_hash":
        data = bytearray((p / "generator.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        _rewrite(p / "generator.onnx", bytes(data))
    elif case == "wrong_size":
        _rewrite(p / "generator.onnx", (p / "generator.onnx").read_bytes() + b"\0")
    elif case == "absolute":
        _edit_manifest(p, lambda m: _rename_file(m, "decoder.onnx", str((p / "decoder.onnx").resolve())))
    elif case == "dotdot":
        _edit_manifest(p, lambda m: _rename_file(m, "decoder.onnx", "../decoder.onnx"))
    elif case == "unlisted_model":
        _edit_manifest(p, lambda m: m["models"]["decoder"].update(file="other.onnx"))
    elif case == "bad_inputs":
        _edit_manifest(p, lambda m: m["models"]["decoder"]["inputs"][0].update(name="noisy"))
    elif case == "sampler":
        _edit_manifest(p, lambda m: m["defaults"].update(sampler="dpm++"))
    elif case == "symlink_out":
        outside = tmp_path / "outside.onnx"
        shutil.move(p / "decoder.onnx", outside)
        (p / "decoder.onnx").symlink_to(outside)
    elif case == "not_json":
        _rewrite(p / "manifest.json", b"{not json")
    elif case == "no_manifest":
        (p / "manifest.json").unlink()
    elif case == "absent":
        shutil.rmtree(p)
    with pytest.raises(BundleError, match=match) as e:
        Bundle.load(p)
    assert "\n" not in str(e.value)


def test_bundle_rehashes_bytes_it_hands_out(tiny, tmp_path):
    from mousai_runtime import Bundle, BundleError

    p = _copy_bundle(tiny, tmp_path)
    b = Bundle.load(p)
    data = bytearray((p / "decoder.onnx").read_bytes())
    data[-10] ^= 1
    _rewrite(p / "decoder.onnx", bytes(data))  # replaced after verification
    with pytest.raises(BundleError, match="sha256 mismatch for decoder.onnx"):
        b.model_bytes("decoder")


# ------------------------------------------------------------------------------------------------- engines


def test_engine_errors_are_clear(tiny, tmp_path):
    from mousai_runtime import Bundle, BackendError
    from mousai_runtime.backends import OrtBackend, make_backend

    b = Bundle.load(tiny["bundle"])
    with pytest.raises(BackendError, match="--engine trt needs an NVIDIA GPU and TensorRT"):
        make_backend("trt", b)
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not available"):
        OrtBackend(b, providers=["cuda"])
    with pytest.raises(BackendError, match="needs the checkpoint"):
        make_backend("torch", b)
    other = tmp_path / "ckpt"
    shutil.copytree(tiny["ckpt"], other)
    doc = json.loads((other / "config.json").read_text())
    doc["meta"]["note"] = "another checkpoint"
    (other / "config.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="is not the one bundle .* was exported from"):
        make_backend("torch", b, checkpoint=other)
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend("vulkan", b)
    e = OrtBackend(b, providers="cpu", threads=1)
    e.prepare(["decoder"])
    assert e.providers[0] == "CPUExecutionProvider" and "CPUExecutionProvider" in e.describe()
    s1 = e.session("decoder")
    assert e.session("decoder") is s1  # created once, reused


# ------------------------------------------------------------------------------------------------- no torch


BLOCK_TORCH = r"""
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
try:
    import torch
    raise SystemExit("the torch blocker does not work")
except ImportError:
    pass
"""


def test_runtime_runs_without_torch(tiny):
    code = BLOCK_TORCH + f"""
import numpy as np
import mousai_runtime
from mousai_runtime import Pipeline, HostRenderer
from mousai_runtime.audio import write_audio
p = Pipeline({str(tiny['bundle'])!r}, chunk_seconds=1.0)
a = p.generate("no torch here", 2.0, steps=2, decoder_steps=2, seed=3)
assert a.shape == (2, 96000) and np.isfinite(a).all()
assert p.encode(a[:, :5000]).shape == (1, 32, 5)
blocks = list(p.stream("no torch here", 2.0, steps=2, decoder_steps=2, seed=3))
assert np.array_equal(np.concatenate(blocks, -1), a)
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("ok", len(blocks))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")


# ------------------------------------------------------------------------------------------------- threads, cancel


def test_thread_safety_deterministic_per_seed(pipe):
    kw = dict(steps=2, decoder_steps=2)
    prompts = ["bass", "bass", "strings", "bass"]
    seeds = [0, 1, 0, 0]
    expected = [pipe.generate(p, 1.5, seed=s, **kw) for p, s in zip(prompts, seeds)]
    results: dict[int, np.ndarray] = {}
    errors = []

    def work(i):
        try:
            results[i] = pipe.generate(prompts[i], 1.5, seed=seeds[i], **kw)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, exp in enumerate(expected):
        assert np.array_equal(results[i], exp), i
    assert np.array_equal(results[0], results[3]) and not np.array_equal(results[0], results[1])


class _SlowBackend:
    """Wraps a backend: every call takes at least `delay` s; records call start times."""

    def __init__(self, inner, delay):
        from mousai_runtime.backends import Backend

        self.inner, self.delay, self.calls = inner, delay, []
        self.__class__ = type("SlowBackend", (_SlowBackend, Backend), {})

    def run(self, component, inputs):
        self.calls.append((time.perf_counter(), component))
        out = self.inner.run(component, inputs)
        time.sleep(self.delay)
        return out

    def prepare(self, components):
        self.inner.prepare(components)

    def describe(self):
        return "slow"


@pytest.mark.parametrize("when, steps", [("generator", 20), ("decoder", 3)])
def test_cancel_returns_within_one_step(tiny, pipe, when, steps):
    from mousai_runtime import Cancelled, CancelToken, Pipeline

    slow = _SlowBackend(pipe.backend, 0.15)
    p = Pipeline(tiny["bundle"], backend=slow, chunk_seconds=3.0)
    token = CancelToken()
    progress = []

    def on_progress(f):
        progress.append(f)

    def canceller():
        while not any(c == when for _, c in slow.calls):
            time.sleep(0.005)
        time.sleep(0.05)
        token.cancel()
        t_cancel.append(time.perf_counter())

    t_cancel: list[float] = []
    th = threading.Thread(target=canceller)
    th.start()
    with pytest.raises(Cancelled):
        p.generate("x", 6.0, steps=steps, decoder_steps=20, progress=on_progress, cancel=token)
    t_end = time.perf_counter()
    th.join()
    latency = t_end - t_cancel[0]
    calls_after = [t for t, _ in slow.calls if t > t_cancel[0]]
    assert not calls_after, "a model call started after cancel"
    assert latency < 0.15 + 0.5, latency  # at most the step in flight
    assert progress and all(0 <= a <= b <= 1 for a, b in zip(progress, progress[1:]))


# ------------------------------------------------------------------------------------------------- audio files


def test_write_audio_atomic_roundtrip(tmp_path, monkeypatch):
    import soundfile as sf

    from mousai_runtime.audio import AudioError, write_audio

    audio = (np.random.default_rng(0).standard_normal((2, 4800)) * 0.3).astype(np.float32)
    info = write_audio(tmp_path / "a.wav", audio, SR)
    back, sr = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    assert sr == SR and info["subtype"] == "FLOAT" and np.array_equal(back.T, audio)
    write_audio(tmp_path / "b.flac", audio * 4, SR)  # beyond +-1: clipped for 24-bit FLAC, and counted
    back, _ = sf.read(tmp_path / "b.flac", dtype="float32", always_2d=True)
    assert np.abs(back.T - np.clip(audio * 4, -1, 1)).max() < 1e-6
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "b.flac"]  # no temp files left
    with pytest.raises(AudioError, match="NaN"):
        write_audio(tmp_path / "c.wav", audio * np.nan, SR)
    with pytest.raises(AudioError, match="unknown format"):
        write_audio(tmp_path / "c.wav", audio, SR, fmt="mp3")

    def crash(*a, **k):  # the header is already in the temp file when the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf.SoundFile, "write", crash)  # write_audio writes block by block through SoundFile
    with pytest.raises(OSError):
        write_audio(tmp_path / "a.wav", audio * 0, SR)  # must not replace the good file with a broken one
    back, _ = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    assert np.array_equal(back.T, audio)
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "b.flac"]


def test_running_min_matches_brute_force():
    from mousai_runtime.audio import _running_min

    g = np.random.default_rng(0).random(1000)
    for w in (1, 2, 5, 64):
        ref = np.array([g[max(0, i - w + 1):i + w].min() for i in range(len(g))])
        assert np.array_equal(_running_min(g, w), ref)


def test_true_peak_sees_intersample_peaks():
    from mousai_runtime.audio import true_peak_db, true_peak_per_sample

    n = np.arange(48000)
    x = np.sin(np.pi / 2 * n + np.pi / 4)[None].repeat(2, 0)  # fs/4 at 45 degrees: samples at +-0.707
    assert abs(20 * np.log10(np.abs(x).max()) + 3.01) < 0.01
    assert abs(20 * np.log10(true_peak_per_sample(x)[1000:-1000].max())) < 0.01  # the true peak: 0 dBFS
    assert 0 <= true_peak_db(x) < 0.3  # (the abrupt start and end of the sine overshoot a little)


def test_loudness_normalisation_and_true_peak_limit():
    from mousai_runtime.audio import AudioError, normalize_loudness, true_peak_db

    rng = np.random.default_rng(0)
    t = np.arange(SR * 3) / SR
    quiet = (0.05 * rng.standard_normal((2, t.size)) + 0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    spiky = quiet.copy()
    spiky[:, ::SR // 4] = 0.9  # clicks: normalising to -9 LUFS would push them far over 0 dBFS
    for audio, target in ((quiet, -14.0), (spiky, -9.0)):
        out, res = normalize_loudness(audio, SR, target)
        assert out.shape == audio.shape and out.dtype == np.float32
        assert true_peak_db(out) <= -1.0 + 0.05, res
        assert abs(res.output_lufs - target) < (0.5 if res.limited_db < 0.1 else 1.5), res
    assert normalize_loudness(spiky, SR, -9.0)[1].limited_db > 1.0  # the limiter really worked there
    with pytest.raises(AudioError, match="silent"):
        normalize_loudness(np.zeros((2, SR), np.float32), SR, -14.0)
    with pytest.raises(AudioError, match="between -70 and 0"):
        normalize_loudness(quiet, SR, 3.0)


def test_spectrogram_png(tmp_path):
    from mousai_runtime.audio import AudioError, write_spectrogram

    audio = (np.random.default_rng(0).standard_normal((2, SR)) * 0.1).astype(np.float32)
    p = write_spectrogram(tmp_path / "s.png", audio, SR, title="noise")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AudioError, match="PNG"):
        write_spectrogram(tmp_path / "s.jpg", audio, SR)


# ------------------------------------------------------------------------------------------------- CLI functions


def test_cli_generate_writes_file_and_reports(tiny, tmp_path, capsys):
    import soundfile as sf

    from mousai_runtime.cli_impl import generate_command

    out = tmp_path / "clip.flac"
    code = generate_command("warm pads", str(out), seconds=1.5, steps=2, guidance=2.0, seed=1,
                            model=str(tiny["bundle"]), engine="onnx", format=None, loudness=-16.0,
                            spectrogram=str(tmp_path / "clip.png"))
    cap = capsys.readouterr()
    assert code == 0, cap.err
    data, sr = sf.read(out, always_2d=True)
    assert sr == SR and data.shape == (round(1.5 * SR), 2)
    assert (tmp_path / "clip.png").is_file()
    assert str(out) in cap.out and "1.50 s" in cap.out and "real-time factor" in cap.out
    assert sorted(os.listdir(tmp_path)) == ["clip.flac", "clip.png"]


def _readonly_dir(tmp_path: Path) -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes through permission bits
        return Path("/proc")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


@pytest.mark.parametrize("case, match", [
    ("empty_prompt", "prompt is empty"),
    ("zero_seconds", "--seconds must be"),
    ("nan_seconds", "--seconds must be"),
    ("too_long", "longer than this bundle's maximum"),
    ("zero_steps", "--steps must be >= 1"),
    ("nan_guidance", "--guidance must be a finite number"),
    ("missing_bundle", "bundle not found"),
    ("wrong_hash", "sha256 mismatch"),
    ("missing_folder", "output folder does not exist"),
    ("readonly_folder", "cannot write to"),
    ("unknown_format", "unknown format"),
    ("unknown_suffix", "cannot tell the format"),
    ("trt", "--engine trt needs an NVIDIA GPU and TensorRT"),
    ("bad_loudness", "--loudness must be between"),
])
def test_cli_generate_bad_input(tiny, tmp_path, capsys, case, match):
    from mousai_runtime.cli_impl import generate_command

    work = tmp_path / "work"
    work.mkdir()
    args = dict(prompt="pads", out=str(work / "x.wav"), seconds=1.0, steps=2, guidance=None, seed=0,
                model=str(tiny["bundle"]), engine="onnx", format=None, loudness=None, spectrogram=None)
    if case == "empty_prompt":
        args["prompt"] = "   "
    elif case == "zero_seconds":
        args["seconds"] = 0.0
    elif case == "nan_seconds":
        args["seconds"] = float("nan")
    elif case == "too_long":
        args["seconds"] = 1e7
    elif case == "zero_steps":
        args["steps"] = 0
    elif case == "nan_guidance":
        args["guidance"] = float("nan")
    elif case == "missing_bundle":
        args["model"] = str(tmp_path / "nope")
    elif case == "wrong_hash":
        b = _copy_bundle(tiny, tmp_path)
        data = bytearray((b / "decoder.onnx").read_bytes())
        data[100] ^= 1
        _rewrite(b / "decoder.onnx", bytes(data))
        args["model"] = str(b)
    elif case == "missing_folder":
        args["out"] = str(work / "no" / "x.wav")
    elif case == "readonly_folder":
        args["out"] = str(_readonly_dir(tmp_path) / "x.wav")
    elif case == "unknown_format":
        args["format"] = "ogg"
    elif case == "unknown_suffix":
        args["out"] = str(work / "x.mp3")
    elif case == "trt":
        args["engine"] = "trt"
    elif case == "bad_loudness":
        args["loudness"] = 5.0
    code = generate_command(**args)
    cap = capsys.readouterr()
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re_search(match, lines[0]), cap.err
    assert os.listdir(work) == [] and not Path(args["out"]).exists()


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_cli_info(tiny, tmp_path, capsys):
    from mousai_runtime.cli_impl import info_command

    assert info_command(str(tiny["bundle"])) == 0
    out = capsys.readouterr().out
    assert "audio.sample_rate" in out and "48000" in out and "models.decoder" in out and "verified" in out
    assert info_command(str(tmp_path / "none")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bundle not found")


def test_graph_with_external_data_loads_by_path(tiny, pipe, tmp_path):
    """> 2 GB graphs come with <file>.data (docs/bundle-format.md): ORT loads those by path, both files hashed."""
    import onnx

    from mousai_runtime import BundleError, Pipeline

    p = _copy_bundle(tiny, tmp_path)
    (p / "decoder.onnx").unlink()
    onnx.save(onnx.load(tiny["bundle"] / "decoder.onnx"), p / "decoder.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="decoder.onnx.data")
    m = json.loads((p / "manifest.json").read_text())
    for f in ("decoder.onnx", "decoder.onnx.data"):
        m["files"][f] = {"sha256": _sha(p / f), "bytes": (p / f).stat().st_size}
    _rewrite(p / "manifest.json", json.dumps(m).encode())
    kw = dict(steps=2, decoder_steps=2, seed=1)
    assert np.array_equal(Pipeline(p, chunk_seconds=3.0).generate("x", 1.0, **kw), pipe.generate("x", 1.0, **kw))
    data = bytearray((p / "decoder.onnx.data").read_bytes())
    data[0] ^= 1
    _rewrite(p / "decoder.onnx.data", bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch for decoder.onnx.data"):
        Pipeline(p)
