"""Windowed latent generation (flat memory at any length) and autoencoder-only bundles.

Windows: the weights are a partition of unity (exactly 1 in float32); a latent no longer than the window takes the
single-call path bit for bit; a translation-equivariant local model gives the single-call result within tolerance
(and a no-overlap tiling, the check's negative control, does not); the tiny bundle's windowed latent is finite and
deterministic per seed; a 10-minute generation stays well under 1 GB of peak RSS (subprocess, ru_maxrss).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from test_runtime import _copy_bundle, _edit_manifest, rel_l2, tiny  # noqa: F401  (session fixture)

SR = 48000


# ------------------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize("frames, window, overlap, multiple", [
    (516, 512, 64, 4), (904, 512, 64, 8), (1000, 512, 64, 8), (28128, 512, 64, 4), (520, 512, 256, 8),
    (40, 16, 8, 4), (44, 16, 8, 4), (132, 32, 16, 4), (68, 64, 4, 4), (4096 + 8, 512, 64, 8)])
def test_plan_weights_are_a_partition_of_unity(frames, window, overlap, multiple):
    from mousai_runtime.overlap import raised_cosine
    from mousai_runtime.windowed import plan_windows

    p = plan_windows(frames, window, overlap, multiple)
    assert p.starts[0] == 0 and p.starts[-1] + window == frames  # the last window is aligned to the end
    assert all(s % multiple == 0 for s in p.starts) and list(p.starts) == sorted(set(p.starts))
    assert all(w.shape == (window,) and w.dtype == np.float32 for w in p.weights)
    total = np.zeros(frames, np.float32)
    count = np.zeros(frames, int)
    for s, w, (a, b) in zip(p.starts, p.weights, p.support):
        total[s:s + window] += w
        count[s:s + window] += w > 0
        assert (w[a:b] > 0).all() and not w[:a].any() and not w[b:].any()
    assert (total == 1).all()  # exactly, in float32
    assert count.max() <= 2 and count.min() == 1
    f = raised_cosine(overlap)
    for i, (f0, fl) in enumerate(p.fades):
        assert fl == overlap
        s0, s1 = p.starts[i], p.starts[i + 1]
        assert s1 <= f0 and f0 + fl <= s0 + window  # inside both windows
        assert np.array_equal(p.weights[i + 1][f0 - s1:f0 - s1 + fl], f)
        assert np.array_equal(p.weights[i][f0 - s0:f0 - s0 + fl], np.float32(1) - f)
        if i + 1 < len(p.fades):
            assert f0 + fl <= p.fades[i + 1][0]
    if frames <= window:
        assert len(p) == 1


def test_plan_refuses_bad_windows():
    from mousai_runtime.windowed import plan_windows

    with pytest.raises(ValueError, match="at most half"):
        plan_windows(1000, 64, 40, 4)
    with pytest.raises(ValueError, match="multiples"):
        plan_windows(1000, 64, 6, 4)
    with pytest.raises(ValueError, match=">= 1"):
        plan_windows(1000, 64, 0, 4)


# ------------------------------------------------------------------------------------------------- toy models


def _box(x: np.ndarray, r: int) -> np.ndarray:
    c = np.cumsum(np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(r + 1, r)]), axis=-1)
    return (c[..., 2 * r + 1:] - c[..., :-2 * r - 1]) / (2 * r + 1)


def _local_model(channels: int = 4, radius: int = 2):
    """Translation-equivariant and local (reach `radius` frames, zero padding at the edges), nonlinear."""
    w = np.random.default_rng(0).standard_normal((channels, channels)).astype(np.float32) / channels
    calls = []

    def fn(x, sigma):
        calls.append(x.shape)
        h = _box(np.tanh(np.einsum("ij,bjt->bit", w, x)), radius)
        return (h * np.cos(sigma)[:, None, None] + sigma[:, None, None] * x).astype(np.float32)

    return fn, calls


def _tiled_plan(frames: int, window: int):
    """The negative control: windows side by side with hard cuts at their edges (what a missing overlap does)."""
    from mousai_runtime.windowed import WindowPlan

    starts = list(range(0, frames - window + 1, window))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    weights, support, prev = [], [], 0
    for s in starts:
        w = np.zeros(window, np.float32)
        w[prev - s:] = 1
        weights.append(w)
        support.append((prev - s, window))
        prev = s + window
    return WindowPlan(frames, window, 0, tuple(starts), (), tuple(weights), tuple(support))


def test_short_latent_is_one_plain_call():
    from mousai_runtime.windowed import WindowedModel, plan_windows

    fn, calls = _local_model()
    x = np.random.default_rng(1).standard_normal((1, 4, 64)).astype(np.float32)
    sigma = np.array([0.6], np.float32)
    v = WindowedModel(fn, plan_windows(64, 64, 16, 4))(x, sigma)
    assert np.array_equal(v, fn(x, sigma)) and calls[0] == (1, 4, 64)


@pytest.mark.parametrize("frames, window, overlap", [(300, 64, 16), (1000, 128, 32), (2000, 512, 64)])
def test_windowed_equals_single_call_for_a_local_model(frames, window, overlap):
    from mousai_runtime.sampling import ddim_sample, linear_sigmas
    from mousai_runtime.windowed import WindowedModel, plan_windows

    fn, calls = _local_model()
    x = np.random.default_rng(1).standard_normal((1, 4, frames)).astype(np.float32)
    plan = plan_windows(frames, window, overlap, 4)
    whole = ddim_sample(fn, x, linear_sigmas(6))
    calls.clear()
    win = ddim_sample(WindowedModel(fn, plan), x, linear_sigmas(6))
    assert len(calls) == 6 * len(plan) and {c for c in calls} == {(1, 4, window)}  # one window per call
    err = rel_l2(win, whole)
    print(f"{frames} frames, {len(plan)} windows of {window}/{overlap}: windowed vs single rel L2 {err:.2e}")
    assert err < 1e-3 and np.abs(win - whole).max() < 5e-3
    # one step: away from the windows' edges (beyond the model's reach) the combined v is the single call's v
    sigma = np.array([0.5], np.float32)
    v_whole, v_win = fn(x, sigma), WindowedModel(fn, plan)(x, sigma)
    near = np.zeros(frames, bool)
    for s in plan.starts:
        near[max(0, s - 2):s + 2] = near[s + window - 2:s + window + 2] = True
    near[:2] = near[-2:] = False  # the clip's own edges are edges for the single call too
    assert np.allclose(v_win[..., ~near], v_whole[..., ~near], rtol=0, atol=1e-6)
    # batching windows changes nothing
    batched = ddim_sample(WindowedModel(fn, plan, batch=3), x, linear_sigmas(6))
    assert np.array_equal(batched, win)
    # the negative control: without overlap and crossfade the same check fails by far
    tiled = ddim_sample(WindowedModel(fn, _tiled_plan(frames, window)), x, linear_sigmas(6))
    assert rel_l2(tiled, whole) > 10 * err and rel_l2(tiled, whole) > 5e-3


# ------------------------------------------------------------------------------------------------- the tiny bundle


@pytest.fixture(scope="module")
def pipes(tiny):  # noqa: F811
    from mousai_runtime import Pipeline

    base = Pipeline(tiny["bundle"], chunk_seconds=3.0)
    small = Pipeline(tiny["bundle"], backend=base.backend, chunk_seconds=3.0, window_frames=64, overlap_frames=16)
    return base, small


def test_windowed_pipeline_short_is_single_call_and_long_is_deterministic(pipes):
    base, small = pipes
    assert (base.window_frames, base.overlap_frames) == (512, 64)  # the tiny bundle's manifest sets none
    assert (small.window_frames, small.overlap_frames) == (64, 16)
    kw = dict(steps=2, guidance=2.0, seed=3)
    # 1 s = 47 frames -> 48 <= 64: exactly the single-call path
    assert small.window_plan(small.frames_for(1.0)[0]) is None
    assert np.array_equal(small.generate_latent("pads", 1.0, **kw), base.generate_latent("pads", 1.0, **kw))
    # 4 s = 188 frames: windows of 64
    frames = small.frames_for(4.0)[0]
    plan = small.window_plan(frames)
    assert plan is not None and len(plan) >= 3 and base.window_plan(frames) is None
    progress = []
    z = small.generate_latent("pads", 4.0, progress=progress.append, **kw)
    assert z.shape == (1, 32, frames) and z.dtype == np.float32 and np.isfinite(z).all()
    assert len(progress) == 1 + 2 * len(plan) and progress[-1] == 1.0  # text + every window call
    assert np.array_equal(z, small.generate_latent("pads", 4.0, **kw))  # deterministic per seed
    assert not np.allclose(z, small.generate_latent("pads", 4.0, steps=2, guidance=2.0, seed=4))
    single = base.generate_latent("pads", 4.0, **kw)
    print(f"tiny generator (global attention) windowed vs single call: rel L2 {rel_l2(z, single):.3f}")
    # batching windows (one call with several windows) matches within float noise
    small.window_batch = 2
    try:
        zb = small.generate_latent("pads", 4.0, **kw)
    finally:
        small.window_batch = 1
    assert rel_l2(zb, z) < 1e-5, rel_l2(zb, z)
    # audio: stream == generate, finite
    blocks = list(small.stream("pads", 4.0, decoder_steps=1, **kw))
    audio = small.generate("pads", 4.0, decoder_steps=1, **kw)
    assert np.array_equal(np.concatenate(blocks, -1), audio) and audio.shape == (2, 4 * SR)
    assert np.isfinite(audio).all()


def test_window_settings_from_manifest_and_overrides(tiny, tmp_path):  # noqa: F811
    from mousai_runtime import Bundle, BundleError, InputError, Pipeline

    p = _copy_bundle(tiny, tmp_path)
    _edit_manifest(p, lambda m: m["generator_info"].update(window_frames=128, overlap_frames=32))
    assert (Bundle.load(p).window_frames, Bundle.load(p).overlap_frames) == (128, 32)
    pipe = Pipeline(p, prepare=False)
    assert (pipe.window_frames, pipe.overlap_frames) == (128, 32)
    pipe = Pipeline(p, prepare=False, window_frames=250, overlap_frames=30)  # rounded up to the multiple (4)
    assert (pipe.window_frames, pipe.overlap_frames) == (252, 32)
    with pytest.raises(InputError, match="at most half"):
        Pipeline(p, prepare=False, overlap_frames=100)
    with pytest.raises(InputError, match="window_frames must be an integer >= 1"):
        Pipeline(p, prepare=False, window_frames=0)
    for bad, match in [(dict(window_frames=130, overlap_frames=32), "multiples"),
                       (dict(window_frames=128, overlap_frames=96), "at most half"),
                       (dict(window_frames="128", overlap_frames=32), "must be an integer")]:
        _edit_manifest(p, lambda m: m["generator_info"].update(bad))
        with pytest.raises(BundleError, match=match):
            Bundle.load(p)
    _edit_manifest(p, lambda m: m["generator_info"].pop("overlap_frames"))
    with pytest.raises(BundleError, match="come together"):
        Bundle.load(p)


MEMORY_PROBE = r"""
import resource, sys, time
import numpy as np
from mousai_runtime import Pipeline

def peak_mb():
    # ru_maxrss of a child of a big process (pytest) starts at the parent's RSS on Linux (the high-water mark
    # survives fork + exec), so read this process's own VmHWM where there is one
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

p = Pipeline(sys.argv[1])
load = peak_mb()
seconds = float(sys.argv[2])
t0 = time.perf_counter()
a = p.generate("long ambient drone", seconds, steps=2, decoder_steps=1, seed=0)
wall = time.perf_counter() - t0
assert a.shape == (2, round(seconds * p.sample_rate)) and np.isfinite(a).all()
plan = p.window_plan(p.frames_for(seconds)[0])
print(load, peak_mb(), wall, len(plan), a.nbytes / 2**20)
"""


@pytest.mark.slow
def test_ten_minutes_peak_rss_well_under_1gb(tiny):  # noqa: F811
    """10 min with the default windows (512/64 frames), 2 generator + 1 decoder step: ~15 s on 2 cores; measured
    583 MB peak, 325 MB of it the loaded pipeline and 220 MB the returned clip itself."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tiny["bundle"]), "600"], capture_output=True,
                       text=True, env=env, cwd=str(ROOT), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    load, peak, wall, windows, clip = (float(v) for v in r.stdout.split())
    print(f"10 min: {int(windows)} windows; peak RSS {peak:.0f} MB (after loading {load:.0f} MB, clip {clip:.0f} MB); "
          f"{wall:.1f} s, RTF {wall / 600:.4f}")
    assert peak < 800, peak
    assert peak - load - clip < 150, (peak, load, clip)  # everything but the clip itself is flat in its length


# ------------------------------------------------------------------------------------------------- autoencoder only


def _autoencoder_bundle(tiny, tmp_path):  # noqa: F811
    """The test bundle minus its text encoder and generator: entries and files deleted, nothing recomputed."""
    p = _copy_bundle(tiny, tmp_path)

    def strip(m):
        m["kind"] = "autoencoder"
        for comp in ("text_encoder", "generator"):
            m["files"].pop(m["models"].pop(comp)["file"])
        m["files"].pop(m.pop("text")["tokenizer"])
        m.pop("generator_info")

    _edit_manifest(p, strip)
    for f in ("text_encoder.onnx", "generator.onnx", "tokenizer.json"):
        (p / f).unlink()
    return p


AE_MESSAGE = "this bundle is an autoencoder only (no text encoder / generator): use encode/decode"


def test_autoencoder_bundle_encodes_and_decodes(tiny, tmp_path, pipes):  # noqa: F811
    import re

    from mousai_runtime import Bundle, HostRenderer, InputError, Pipeline

    p = _autoencoder_bundle(tiny, tmp_path)
    b = Bundle.load(p)
    assert b.kind == "autoencoder" and b.is_autoencoder and sorted(b.models) == ["decoder", "encoder"]
    assert Bundle.load(tiny["bundle"]).kind == "text-to-music"  # no kind in the manifest: text-to-music
    ae = Pipeline(p, chunk_seconds=3.0)
    base = pipes[0]
    audio = (np.random.default_rng(0).standard_normal((2, 1024 * 20 + 5)) * 0.2).astype(np.float32)
    z = ae.encode(audio)
    assert z.shape == (1, 32, 21) and np.array_equal(z, base.encode(audio))
    y = ae.decode(z, steps=2, seed=5)
    assert y.shape == (2, 21 * 1024) and np.array_equal(y, base.decode(z, steps=2, seed=5))
    assert ae.decode(z, steps=1, seed=5, samples=1000).shape == (2, 1000)
    for call in (lambda: ae.generate("pads", 1.0), lambda: ae.stream("pads", 1.0),
                 lambda: ae.generate_latent("pads", 1.0), lambda: ae.text_states("pads"),
                 lambda: HostRenderer(ae).start("pads", 1.0)):
        with pytest.raises(InputError, match=re.escape(AE_MESSAGE)):
            call()
    assert "autoencoder" in ae.describe()


def test_autoencoder_bundle_in_the_cli(tiny, tmp_path, capsys):  # noqa: F811
    from mousai_runtime.cli_impl import generate_command, info_command

    p = _autoencoder_bundle(tiny, tmp_path)
    assert info_command(str(p)) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["kind", "autoencoder"] for line in out.splitlines()), out
    assert "models.encoder" in out and "models.generator" not in out and "verified" in out
    assert info_command(str(tiny["bundle"])) == 0
    assert any(line.split()[:2] == ["kind", "text-to-music"] for line in capsys.readouterr().out.splitlines())
    wav = tmp_path / "x.wav"
    assert generate_command("pads", str(wav), seconds=1.0, steps=2, model=str(p)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {AE_MESSAGE}"] and not wav.exists()


@pytest.mark.parametrize("case, match", [
    ("unknown_kind", "unknown bundle kind 'vocoder'"),
    ("ae_with_generator", r"an autoencoder bundle has no \['generator'\]"),
    ("ae_without_encoder", r"models.encoder is missing \(an autoencoder bundle needs encoder \+ decoder\)"),
    ("ae_with_text", r"an autoencoder bundle has no \['text'\] section"),
    ("t2m_without_generator_info", r"missing field\(s\) \['generator_info'\]"),
    ("t2m_without_generator", "models.generator is missing"),
])
def test_kind_refusals(tiny, tmp_path, case, match):  # noqa: F811
    from mousai_runtime import Bundle, BundleError

    if case.startswith("ae_"):
        p = _autoencoder_bundle(tiny, tmp_path)
        Bundle.load(p)
        src = json.loads((tiny["bundle"] / "manifest.json").read_text())
        if case == "ae_with_generator":
            _edit_manifest(p, lambda m: m["models"].update(generator=src["models"]["generator"]))
        elif case == "ae_without_encoder":
            _edit_manifest(p, lambda m: m["models"].pop("encoder"))
        else:
            _edit_manifest(p, lambda m: m.update(text=src["text"]))
    else:
        p = _copy_bundle(tiny, tmp_path)
        _edit_manifest(p, lambda m: m.update(kind="text-to-music"))
        Bundle.load(p)  # an explicit kind is fine
        if case == "unknown_kind":
            _edit_manifest(p, lambda m: m.update(kind="vocoder"))
        elif case == "t2m_without_generator_info":
            _edit_manifest(p, lambda m: m.pop("generator_info"))
        else:
            _edit_manifest(p, lambda m: m["models"].pop("generator"))
    with pytest.raises(BundleError, match=match) as e:
        Bundle.load(p)
    assert "\n" not in str(e.value)
