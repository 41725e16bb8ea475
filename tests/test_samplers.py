"""DPM-Solver++(2M) beside DDIM: numpy vs torch parity, and correctness against an exact ODE solution.

The correctness test uses Gaussian data x0 ~ N(mu, diag(s^2)), whose exact denoiser is known in closed form:
E[x0 | x_sigma] = mu + alpha s^2 / (alpha^2 s^2 + beta^2) (x_sigma - alpha mu). The probability-flow ODE then maps
the noise z at sigma = 1 to exactly mu + s z at sigma = 0 (it keeps (x - alpha mu) / sqrt(alpha^2 s^2 + beta^2)
constant). A sampler's error is its distance to that solution; no timing anywhere.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_runtime import tiny  # noqa: F401  (the shared tiny bundle fixture, cached under .pytest_cache)

MU = np.array([0.3, -1.0, 2.0, 0.0, 0.7], dtype=np.float64)
SD = np.array([0.5, 2.0, 0.1, 1.0, 1.5], dtype=np.float64)


def gaussian_v(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The exact v for Gaussian data (x [B, D, T], sigma [B]), float64 inside, x's dtype out."""
    s = np.asarray(sigma, np.float64)[:, None, None]
    a, b = np.cos(s * math.pi / 2), np.sin(s * math.pi / 2)
    a = np.where(s >= 1, 0.0, a)  # exactly pure noise at sigma = 1
    mu, var = MU[None, :, None], (SD ** 2)[None, :, None]
    x0 = mu + a * var / (a * a * var + b * b) * (x - a * mu)
    return ((a * x - x0) / b).astype(x.dtype)


def exact_solution(z: np.ndarray) -> np.ndarray:
    return MU[None, :, None] + SD[None, :, None] * z


def _noise(n: int = 400) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, len(MU), n))


def _err(sampler, steps: int) -> float:
    from mousai_runtime.sampling import linear_sigmas, sample

    z = _noise()
    out = sample(sampler, gaussian_v, z, linear_sigmas(steps).astype(np.float64))
    return float(np.sqrt(np.mean((out - exact_solution(z)) ** 2)))


def test_dpmpp_2m_beats_ddim_and_converges_at_second_order():
    ddim = {n: _err("ddim", n) for n in (5, 10, 20, 40, 80)}
    dpm = {n: _err("dpmpp-2m", n) for n in (5, 10, 20, 40, 80)}
    for n in (5, 10, 20, 40, 80):
        assert dpm[n] < ddim[n], (n, dpm[n], ddim[n])
    # DDIM is first order: halving the step size halves the error
    assert 1.8 < ddim[40] / ddim[80] < 2.2, ddim
    # 2M is second order: the ratio tends to 4 (3.2+ from 20 steps on: the two first-order steps fade out)
    assert dpm[20] / dpm[40] > 3.0 and dpm[40] / dpm[80] > 3.2, dpm
    assert dpm[10] < ddim[20] and dpm[20] < ddim[40] / 1.5  # half the steps for a smaller error
    assert dpm[80] < 3e-3


def test_dpmpp_2m_first_and_last_steps_are_first_order_and_exact_limits():
    from mousai_runtime.sampling import ddim_step, dpmpp_2m_step

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 16))
    v = rng.standard_normal((1, 5, 16))
    # from sigma = 1 (lambda = -inf): no history, first order = DDIM
    out, (x0, h) = dpmpp_2m_step(v, x, 1.0, 0.8, None)
    assert h == math.inf and np.allclose(x0, -v)
    assert np.allclose(out, ddim_step(v, x, 1.0, 0.8), atol=1e-12)
    # the step after it has an infinite history step: still first order (= DDIM), not NaN
    out2, (_, h2) = dpmpp_2m_step(v, out, 0.8, 0.6, (x0, h))
    assert math.isfinite(h2) and np.allclose(out2, ddim_step(v, out, 0.8, 0.6), atol=1e-12)
    # with a finite history the step differs from DDIM by the extrapolation term only
    v2 = rng.standard_normal((1, 5, 16))
    out3, _ = dpmpp_2m_step(v2, out2, 0.6, 0.4, (x0, h2))
    assert not np.allclose(out3, ddim_step(v2, out2, 0.6, 0.4))
    # to sigma = 0 (lambda = +inf): x0 itself, whatever the history
    a, b = math.cos(0.2 * math.pi / 2), math.sin(0.2 * math.pi / 2)
    last, _ = dpmpp_2m_step(v2, out3, 0.2, 0.0, (x0, 0.5))
    assert np.allclose(last, a * out3 - b * v2, atol=1e-12) and np.isfinite(last).all()
    # one step from 1 to 0 is exactly DDIM
    one, _ = dpmpp_2m_step(v, x, 1.0, 0.0, None)
    assert np.allclose(one, ddim_step(v, x, 1.0, 0.0), atol=1e-12)


def _toy_model_pair(channels=3, seed=0):
    import torch

    w = np.random.default_rng(seed).standard_normal((channels, channels)).astype(np.float32) / channels

    def np_fn(x, sigma):
        return np.tanh(np.einsum("ij,bjt->bit", w, x)) * np.cos(sigma)[:, None, None] + sigma[:, None, None] * x

    wt = torch.from_numpy(w)

    def torch_fn(x, sigma):
        return torch.tanh(torch.einsum("ij,bjt->bit", wt, x)) * torch.cos(sigma)[:, None, None] \
            + sigma[:, None, None] * x

    return np_fn, torch_fn


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 50])
def test_dpmpp_2m_parity_numpy_vs_torch(steps):
    import torch

    from mousai_runtime import sampling as ns
    from training.model import diffusion as td

    np_fn, torch_fn = _toy_model_pair()
    x = np.random.default_rng(1).standard_normal((2, 3, 257)).astype(np.float32)
    seen_np, seen_t = [], []
    out_np = ns.sample("dpmpp-2m", np_fn, x, ns.linear_sigmas(steps), callback=lambda i, xx: seen_np.append(i))
    out_t = td.sample("dpmpp-2m", torch_fn, torch.from_numpy(x), td.linear_sigmas(steps),
                      callback=lambda i, xx: seen_t.append(i)).numpy()
    assert out_np.dtype == np.float32 and out_np.shape == x.shape
    assert seen_np == seen_t == list(range(steps))
    err = float(np.linalg.norm(out_np - out_t) / np.linalg.norm(out_t))
    assert err < 1e-5, err
    # 2M equals DDIM up to 3 steps (from sigma 1 two first-order steps, and the last step returns x0), then differs
    ddim = ns.sample("ddim", np_fn, x, ns.linear_sigmas(steps))
    diff = float(np.linalg.norm(ddim - out_np) / np.linalg.norm(ddim))
    assert (diff < 1e-6) if steps <= 3 else (diff > 1e-4), (steps, diff)


def test_unknown_sampler_and_nonfinite():
    from mousai_runtime.sampling import NonFiniteError, linear_sigmas, sample
    from training.model import diffusion as td

    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample("euler", gaussian_v, np.zeros((1, 5, 4)), linear_sigmas(3))
    with pytest.raises(ValueError, match="unknown sampler"):
        td.sample("euler", None, None, td.linear_sigmas(3))
    calls = []

    def broken(x, sigma):
        calls.append(1)
        return x * (np.nan if len(calls) == 2 else 0.5)

    with pytest.raises(NonFiniteError, match=r"decoder at denoising step 2/4"):
        sample("dpmpp-2m", broken, np.ones((1, 2, 8), np.float32), linear_sigmas(4), component="decoder")


# ------------------------------------------------------------------------------------------------- wiring


def test_pipeline_sampler_choice_and_manifest_defaults(tiny, tmp_path):
    """--sampler / defaults.sampler / defaults.decoder_sampler reach both stages; a missing sampler means ddim."""
    from test_runtime import _copy_bundle, _edit_manifest

    from mousai_runtime import Bundle, BundleError, Pipeline
    from mousai_runtime.pipeline import InputError

    pipe = Pipeline(tiny["bundle"], chunk_seconds=3.0, threads=1)
    kw = dict(seconds=1.0, steps=4, decoder_steps=4, seed=3)
    # the generator's sampler changes the latent (a random decoder barely reads it, so compare latents)
    lat = {s: pipe.generate_latent("calm piano", 1.0, steps=4, seed=3, sampler=s) for s in ("ddim", "dpmpp-2m")}
    assert np.abs(lat["ddim"] - lat["dpmpp-2m"]).max() > 1e-3
    # the decoder's sampler changes the audio
    dec = {s: pipe.decode(lat["ddim"], steps=4, seed=3, sampler=s) for s in ("ddim", "dpmpp-2m")}
    assert np.isfinite(dec["dpmpp-2m"]).all() and np.abs(dec["ddim"] - dec["dpmpp-2m"]).max() > 1e-3
    mixed = pipe.generate("calm piano", **kw, sampler="dpmpp-2m", decoder_sampler="ddim")
    ddim = pipe.generate("calm piano", **kw, sampler="ddim")
    # the generator's sampler picks the latent, the decoder's sampler decodes it
    n = mixed.shape[-1]
    assert np.abs(mixed - pipe.decode(lat["dpmpp-2m"], steps=4, seed=3, sampler="ddim", samples=n)).max() < 1e-6
    assert np.abs(ddim - pipe.decode(lat["ddim"], steps=4, seed=3, sampler="ddim", samples=n)).max() < 1e-6
    assert np.abs(mixed - ddim).max() > 1e-5
    assert np.abs(pipe.generate("calm piano", **kw, sampler="dpmpp-2m") - mixed).max() > 1e-5
    with pytest.raises(InputError, match="sampler must be one of ddim, dpmpp-2m"):
        pipe.generate("calm piano", **kw, sampler="euler")

    p = _copy_bundle(tiny, tmp_path)
    _edit_manifest(p, lambda m: m["defaults"].update(sampler="dpmpp-2m", decoder_sampler="ddim"))
    pm = Pipeline(p, chunk_seconds=3.0, threads=1)
    assert np.array_equal(pm.generate_latent("calm piano", 1.0, steps=4, seed=3), lat["dpmpp-2m"])
    assert np.array_equal(pm.decode(lat["ddim"], steps=4, seed=3), dec["ddim"])
    assert np.array_equal(pm.generate("calm piano", **kw), mixed)
    _edit_manifest(p, lambda m: (m["defaults"].pop("sampler"), m["defaults"].pop("decoder_sampler")))
    b = Bundle.load(p)
    assert b.sampler == b.decoder_sampler == "ddim"  # an older bundle
    assert np.array_equal(Pipeline(p, chunk_seconds=3.0, threads=1).generate("calm piano", **kw), ddim)
    _edit_manifest(p, lambda m: m["defaults"].update(decoder_sampler="heun"))
    with pytest.raises(BundleError, match="defaults.decoder_sampler: this runtime implements sampler 'ddim' or"):
        Bundle.load(p)


@pytest.mark.parametrize("frames", [1, 40, 41, 100, 127, 300, 1001, 2813])
def test_balanced_chunk_plan_covers_with_fewest_frames(frames):
    from mousai_runtime.decode import plan_chunks

    hop, mult, chunk, margin, fade = 16, 4, 40, 6, 3
    fixed = plan_chunks(frames, hop, mult, chunk, margin, fade)
    plan = plan_chunks(frames, hop, mult, chunk, margin, fade, balance=True)
    assert len(plan.chunks) <= len(fixed.chunks)
    starts = [s for s, _ in plan.chunks]
    assert starts[0] == 0 and plan.chunks[-1][1] == plan.padded and starts == sorted(set(starts))
    lengths = {e - s for s, e in plan.chunks}
    assert len(lengths) == 1 and lengths.pop() % mult == 0 and plan.chunk_frames <= chunk
    decoded = len(plan.chunks) * plan.chunk_frames
    assert decoded <= len(fixed.chunks) * fixed.chunk_frames
    overlap = 2 * margin + fade
    # only the overlaps (plus < one length multiple per chunk of rounding) are decoded twice
    assert decoded <= plan.padded + (len(plan.chunks) - 1) * overlap + len(plan.chunks) * mult
    for i, (f0, fl) in enumerate(plan.fades):
        (s0, e0), (s1, e1) = plan.chunks[i], plan.chunks[i + 1]
        assert (s1 + margin) * hop <= f0 and f0 + fl <= (e0 - margin) * hop


def test_balanced_chunk_plan_decodes_a_minute_in_a_quarter_fewer_frames():
    from mousai_runtime.decode import plan_chunks

    # the tiny bundle's decoder: hop 1024, multiple 4 frames, receptive field 69375 samples = 68 frames, fade 4
    fixed = plan_chunks(2813, 1024, 4, 1408, 68, 4)  # 60 s in 30 s chunks
    plan = plan_chunks(2813, 1024, 4, 1408, 68, 4, balance=True)
    assert len(fixed.chunks) == len(plan.chunks) == 3
    assert len(fixed.chunks) * fixed.chunk_frames == 4224 and len(plan.chunks) * plan.chunk_frames == 3096


def test_shipped_step_defaults_are_at_least_as_accurate_as_the_previous_ddim_defaults():
    """The exporter's defaults (2M, 20 + 7 steps) on the exact-Gaussian ODE vs DDIM 50 + 10 (the previous ones)."""
    from mousai_export import bundle as bundle_mod

    assert bundle_mod.DEFAULT_SAMPLER == bundle_mod.DEFAULT_DECODER_SAMPLER == "dpmpp-2m"
    assert _err("dpmpp-2m", bundle_mod.DEFAULT_GENERATOR_STEPS) < _err("ddim", 50)
    assert _err("dpmpp-2m", bundle_mod.DEFAULT_DECODER_STEPS) < _err("ddim", 10)


def test_cli_sampler_and_decoder_steps_options(tiny, tmp_path, capsys):
    from mousai_runtime.cli_impl import generate_command

    out = tmp_path / "a.wav"
    assert generate_command("calm piano", str(out), seconds=1.0, sampler="euler", model=str(tiny["bundle"])) == 2
    assert "unknown --sampler 'euler': use ddim or dpmpp-2m" in capsys.readouterr().err and not out.exists()
    assert generate_command("calm piano", str(out), seconds=1.0, decoder_steps=0, model=str(tiny["bundle"])) == 2
    assert "--decoder-steps must be >= 1" in capsys.readouterr().err and not out.exists()
    assert generate_command("calm piano", str(out), seconds=1.0, steps=3, decoder_steps=2, sampler="ddim",
                            model=str(tiny["bundle"])) == 0
    assert out.is_file()


@pytest.mark.parametrize("load, want", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (9.5, 1)])
def test_default_threads_are_the_idle_cores(monkeypatch, load, want):
    from mousai_runtime import backends

    monkeypatch.setattr(backends, "physical_cores", lambda: 2)
    monkeypatch.setattr(backends.os, "getloadavg", lambda: (load, load, load))
    assert backends.idle_cores() == want
