"""The post-filter (mousai_runtime/postfilter.py, kind "envelope") and its closed-form fit (training/postfilter.py)."""
from __future__ import annotations

import numpy as np
import pytest

from mousai_runtime import postfilter as E
from mousai_runtime import stft as S

SR, LHOP = 48000, 1024


def make_env(weights=None, bands=32, context=1, gain_range=(-8.0, 2.0), latent_channels=4):
    feats = 2 * latent_channels * (2 * context + 1) + 1
    sub = LHOP // 256
    w = np.zeros((feats, sub * 2 * bands), np.float32) if weights is None else weights
    return E.PostFilter(w, SR, LHOP, 1024, 256, bands, 2, context, gain_range)


def band_power_db(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    f = np.fft.rfftfreq(x.shape[-1], 1 / SR)
    return float(10 * np.log10(spec[..., (f >= lo) & (f < hi)].mean()))


def test_stft_istft_round_trip_is_exact():
    x = np.random.default_rng(0).standard_normal((2, 3, 12345)).astype(np.float32)
    y = S.istft(S.stft(x, 1024, 256), 1024, 256, x.shape[-1])
    assert y.shape == x.shape
    assert np.abs(x - y).max() < 1e-5


def test_band_matrices_partition_unity_and_average():
    syn, ana = E.band_matrices(SR, 1024, 32)
    assert syn.shape == ana.shape == (32, 513)
    np.testing.assert_allclose(syn.sum(0), 1.0, atol=1e-6)  # a flat correction is a flat gain
    np.testing.assert_allclose(ana.sum(1), 1.0, atol=1e-6)  # band power = mean bin power: white noise is flat
    c = E.mel_centres(SR, 32)
    assert c[0] == 0 and abs(c[-1] - SR / 2) < 1e-6 and np.all(np.diff(c) > 0)


def test_audio_already_on_the_envelope_passes_unchanged():
    env = make_env()
    x = np.random.default_rng(1).standard_normal((1, 2, 48000)).astype(np.float32) * 0.1
    have, _ = env.band_log_power(x[0])
    env.predict = lambda latent: have  # a perfect prediction: every correction is zero
    y = env.apply(x, np.zeros((1, 4, 47), np.float32))
    assert np.abs(y - x).max() < 1e-5


def test_post_filter_removes_invented_high_band_energy_and_keeps_the_rest():
    """The predicted envelope (constant: only the bias row) says silence above 12 kHz and the measured level
    below; white noise comes out low-passed by the clip of the gain (8 log-power units = 34.7 dB)."""
    bands = 32
    env = make_env(bands=bands)
    x = np.random.default_rng(2).standard_normal((1, 2, 96000)).astype(np.float32) * 0.1
    have, _ = env.band_log_power(x[0])
    level = have.mean(-1)  # [2, bands]
    hi = E.mel_centres(SR, bands) > 12000
    want = np.where(hi[None], -23.0, level)
    env.weights[-1] = np.tile(want.reshape(-1), env.sub)  # bias row: the same target at every sub-frame
    y = env.apply(x, np.zeros((1, 4, 94), np.float32))
    drop_hi = band_power_db(x, 14000, 24000) - band_power_db(y, 14000, 24000)
    drop_lo = band_power_db(x, 100, 8000) - band_power_db(y, 100, 8000)
    assert 30.0 < drop_hi < 36.0  # clipped at exp(-8) in power
    assert abs(drop_lo) < 0.5
    assert np.isfinite(y).all() and y.dtype == np.float32


def test_gain_is_clipped_from_above():
    env = make_env(gain_range=(-8.0, 1.0))
    x = np.random.default_rng(3).standard_normal((1, 2, 48000)).astype(np.float32) * 0.01
    env.weights[-1] = 0.0  # log power 0 >> the noise's ~-9: a boost, capped at exp(1) in power = 4.34 dB
    y = env.apply(x, np.zeros((1, 4, 47), np.float32))
    gain = band_power_db(y, 100, 20000) - band_power_db(x, 100, 20000)
    assert abs(gain - 10 * np.log10(np.e)) < 0.3


def test_fit_recovers_an_envelope_the_latent_carries():
    """A stand-in encoder whose latent is a fixed mix of the clip's coarse band levels (tanh-squashed): the ridge fit
    of the true post-filter code must predict held-out clips' envelopes closely."""
    from training.postfilter import fit

    rng = np.random.default_rng(4)
    bands = 8
    probe = make_env(bands=bands, context=1)
    mix = rng.standard_normal((2 * bands, 2 * bands)).astype(np.float32) / 8

    def encode(a):
        lp, _ = probe.band_log_power(a)  # [2, bands, F]
        t = -(-a.shape[-1] // LHOP)
        f = np.concatenate([lp, lp[..., -1:].repeat(4 * t - lp.shape[-1], -1)], -1)[..., :4 * t]
        frame = f.reshape(2 * bands, t, 4).mean(-1)
        return np.tanh(mix @ (frame + 10.0))

    def clip(seed):
        r = np.random.default_rng(seed)
        tilt = np.linspace(0, r.uniform(-3, 3), 48000 // 2 + 1)
        spec = np.fft.rfft(r.standard_normal((2, 48000))) * np.exp(tilt)
        env_t = np.repeat(r.uniform(0.2, 1.0, 12), 4000)  # loudness steps every 1/12 s
        return (np.fft.irfft(spec, 48000) * env_t * 0.05).astype(np.float32)

    env, stats = fit(encode, [clip(s) for s in range(40)], SR, LHOP, bands=bands, context=1, ridge=1e-3)
    assert stats["r2"] > 0.9
    test = clip(999)
    want, _ = env.band_log_power(test)
    got = env.predict(encode(test))[..., :want.shape[-1]]
    r2 = 1 - ((got - want) ** 2).mean() / want.var()
    assert r2 > 0.85, r2


def test_saved_weights_round_trip_through_safetensors(tmp_path):
    from safetensors import safe_open

    from training.postfilter import save

    env = make_env()
    env.weights = np.random.default_rng(5).standard_normal(env.weights.shape).astype(np.float32)
    save(env, tmp_path / "envelope.safetensors", {"encoder_fp16_sha256": "ab" * 32})
    with safe_open(str(tmp_path / "envelope.safetensors"), "np") as f:
        np.testing.assert_array_equal(f.get_tensor("weights"), env.weights)
        assert '"encoder_fp16_sha256": "' + "ab" * 32 in f.metadata()["settings"]
    assert [p.name for p in tmp_path.iterdir()] == ["envelope.safetensors"]  # no temp file left behind


# ------------------------------------------------------------------------------------------------- in a bundle
from test_runtime import _copy_bundle, _edit_manifest, tiny  # noqa: E402,F401


def _with_postfilter(tiny, tmp_path, bands=32, context=1, edit=None, weights=None):
    """A copy of the tiny bundle with a post-filter whose (bias-only) prediction is silence above 12 kHz."""
    import hashlib

    from safetensors.numpy import save

    from mousai_runtime import Bundle

    p = _copy_bundle(tiny, tmp_path)
    b = Bundle.load(p)
    feats = 2 * b.latent_channels * (2 * context + 1) + 1
    sub = b.hop // 256
    if weights is None:
        weights = np.zeros((feats, sub * 2 * bands), np.float32)
        hi = E.mel_centres(SR, bands) > 12000
        weights[-1] = np.tile(np.where(hi, -23.0, -4.0), sub * 2)
    data = save({"weights": weights})
    (p / "envelope.safetensors").write_bytes(data)

    def add(m):
        m["files"]["envelope.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        m["postfilter"] = {"kind": "envelope", "file": "envelope.safetensors", "features": "latent+square",
                           "n_fft": 1024, "hop": 256, "bands": bands, "context": context, "gain_range": [-8.0, 2.0],
                           "fit": {"train_r2": 0.5}}
        if edit:
            edit(m)
    _edit_manifest(p, add)
    return p


def test_pipeline_applies_the_bundles_post_filter_unless_told_not_to(tiny, tmp_path):
    from mousai_runtime import Pipeline

    p = _with_postfilter(tiny, tmp_path)
    latent = np.random.default_rng(6).uniform(-0.5, 0.5, (1, 32, 96)).astype(np.float32)
    on = Pipeline(p, chunk_seconds=1.0)  # several chunks: the filter runs per chunk, before the crossfade
    off = Pipeline(p, chunk_seconds=1.0, postfilter=False)
    assert on.postfilter is not None and off.postfilter is None
    a, b = on.decode(latent, steps=2, seed=3), off.decode(latent, steps=2, seed=3)
    assert a.shape == b.shape == (2, 96 * 1024) and np.isfinite(a).all()
    drop_hi = band_power_db(b, 14000, 24000) - band_power_db(a, 14000, 24000)
    assert drop_hi > 25.0, drop_hi  # the random decoder's hiss above 12 kHz is cut (clipped at 34.7 dB)
    with pytest.raises(Exception, match="postfilter must be true or false"):
        Pipeline(p, postfilter="yes")


@pytest.mark.parametrize("case, match", [
    ("kind", r"postfilter: this runtime implements kind 'envelope'"),
    ("unknown_field", r"postfilter: unknown field\(s\) \['boost'\]"),
    ("gain_range", r"postfilter.gain_range must be \[low, high\]"),
    ("hop", r"postfilter.hop 300 must divide"),
    ("unlisted", r"postfilter.file 'other.safetensors' is not listed in files"),
    ("shape", r"postfilter weights are \(3, 3\), its settings need"),
])
def test_bundle_post_filter_section_is_checked(tiny, tmp_path, case, match):
    from mousai_runtime import BundleError, Pipeline

    edits = {"kind": lambda m: m["postfilter"].update(kind="eq"),
             "unknown_field": lambda m: m["postfilter"].update(boost=3),
             "gain_range": lambda m: m["postfilter"].update(gain_range=[2.0, -8.0]),
             "hop": lambda m: m["postfilter"].update(hop=300),
             "unlisted": lambda m: m["postfilter"].update(file="other.safetensors")}
    p = _with_postfilter(tiny, tmp_path, edit=edits.get(case),
                         weights=np.zeros((3, 3), np.float32) if case == "shape" else None)
    with pytest.raises(BundleError, match=match) as e:
        Pipeline(p)
    assert "\n" not in str(e.value)
