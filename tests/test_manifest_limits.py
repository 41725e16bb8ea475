"""Issue #19: the manifest is covered by a hash, its numbers are range-checked, its fields agree with its graphs,
and a clip that is silent, non-finite or absurdly over range is never written without a clear error.

Edits below go through test_runtime._edit_manifest, which reseals the manifest (manifest.sha256), so each case
tests the field it edits; test_manifest_edit_without_reseal_is_refused tests the seal itself.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_reliability import assert_refused, cases, cli, tree
from test_runtime import _copy_bundle, _edit_manifest, _rewrite, tiny  # noqa: F401


def _set(m: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for k in head:
        m = m[k]
    m[last] = value


# ================================================================================================= the seal


@pytest.mark.parametrize("case, match", cases([
    ("edited_not_resealed", r"manifest\.json was changed after export \(sha256 .*\): re-export the bundle"),
    ("seal_missing", r"no manifest\.sha256 \(the manifest's own hash\)"),
    ("seal_garbage", r"manifest\.sha256 must be one line '<sha256> manifest\.json'"),
]))
def test_manifest_edit_without_reseal_is_refused(tiny, tmp_path, case, match):
    from mousai_runtime import Bundle, BundleError

    p = _copy_bundle(tiny, tmp_path)
    Bundle.load(p)
    if case == "edited_not_resealed":
        text = (p / "manifest.json").read_text().replace('"audio_scale": ', '"audio_scale": 1', 1)
        _rewrite(p / "manifest.json", text.encode(), reseal=False)
    elif case == "seal_missing":
        (p / "manifest.sha256").unlink()
    else:
        _rewrite(p / "manifest.sha256", b"not a hash\n")
    with pytest.raises(BundleError, match=match):
        Bundle.load(p)
    out = tmp_path / "o"
    out.mkdir()
    assert_refused(cli("generate", "music", "-o", out / "x.wav", "--model", p, "--seconds", "0.5"), match)
    assert tree(out) == []


def test_exported_seal_is_sha256sum_of_the_manifest(tiny):
    import hashlib

    p = tiny["bundle"]
    digest = hashlib.sha256((p / "manifest.json").read_bytes()).hexdigest()
    assert (p / "manifest.sha256").read_text() == f"{digest}  manifest.json\n"  # `sha256sum -c` checks it


# ================================================================================================= ranges


@pytest.mark.parametrize("case, field, value, match", cases([
    ("audio_scale_huge", "audio.audio_scale", 1e6, r"audio\.audio_scale is 1000000\.0; the runtime accepts 0\.01 \.\.\. 100"),
    ("audio_scale_tiny", "audio.audio_scale", 1e-9, r"audio\.audio_scale is 1e-09"),
    ("sample_rate_44k", "audio.sample_rate", 44100, r"audio\.sample_rate is 44100; mousai models work at 48000 Hz"),
    ("text_max_length_1e8", "text.max_length", 100_000_000, r"text\.max_length is 100000000; the runtime accepts 1 \.\.\. 4096"),
    ("generator_steps_huge", "defaults.generator_steps", 10**9, r"defaults\.generator_steps is 1000000000"),
    ("decoder_steps_huge", "defaults.decoder_steps", 10**6, r"defaults\.decoder_steps is 1000000"),
    ("guidance_huge", "defaults.guidance", 1e6, r"defaults\.guidance is 1000000\.0"),
    ("max_seconds_huge", "defaults.max_seconds", 1e12, r"defaults\.max_seconds is 1000000000000\.0"),
    ("latent_hop_huge", "latent.hop", 2**40, r"latent\.hop is 1099511627776"),
    ("stft_hop_over_n_fft", "stft.hop", 4096, r"stft\.hop 4096 is larger than stft\.n_fft"),
    ("pad_id_huge", "text.pad_id", 2**40, r"text\.pad_id is 1099511627776"),
]))
def test_manifest_numbers_are_range_checked(tiny, tmp_path, case, field, value, match):
    """Each value passes the type checks (an integer / finite number) but no graph can use it: refused when the
    bundle loads, before anything runs."""
    from mousai_runtime import Bundle, BundleError

    p = _copy_bundle(tiny, tmp_path)
    if case == "latent_hop_huge":  # keep the decoder's length multiple a multiple of it (the older check)
        _edit_manifest(p, lambda m: (_set(m, field, value), _set(m, "decoder_info.length_multiple", value)))
    else:
        _edit_manifest(p, lambda m: _set(m, field, value))
    with pytest.raises(BundleError, match=match):
        Bundle.load(p)


@pytest.mark.parametrize("case, gain_range, ok", cases([
    ("wide_gain", [0.0, 80.0], False),  # e^40: a file peaking at 1e16
    ("low_gain", [-80.0, 0.0], False),
    ("shipped_gain", [-12.0, 2.0], True),
]))
def test_postfilter_gain_range_is_range_checked(tiny, case, gain_range, ok):
    """(Checked on the manifest: the tiny bundle has no post-filter; test_postfilter's bundles load one.)"""
    from mousai_runtime.limits import check_ranges

    m = json.loads((tiny["bundle"] / "manifest.json").read_text())
    m["postfilter"] = {"gain_range": gain_range}
    if ok:
        check_ranges(m)
    else:
        with pytest.raises(ValueError, match=r"postfilter\.gain_range is .* the runtime accepts corrections within"):
            check_ranges(m)


# ================================================================================================= agreement


@pytest.mark.parametrize("case, field, value, match", cases([
    ("text_max_length_vs_graph", "text.max_length", 32,
     r"text\.max_length is 32, but models\.text_encoder\.inputs 'input_ids' has size 64"),
    ("text_features_vs_graph", "text.features", 128, r"text\.features is 128, but models\.text_encoder\.outputs"),
    ("latent_channels_vs_graph", "latent.channels", 16, r"latent\.channels is 16, but models\.generator\.inputs 'x'"),
]))
def test_manifest_fields_agree_with_its_tensor_specs(tiny, tmp_path, case, field, value, match):
    from mousai_runtime import Bundle, BundleError

    p = _copy_bundle(tiny, tmp_path)
    _edit_manifest(p, lambda m: _set(m, field, value))
    with pytest.raises(BundleError, match=match):
        Bundle.load(p)


def _spec(m: dict, comp: str, kind: str, name: str) -> dict:
    return next(t for t in m["models"][comp][kind] if t["name"] == name)


@pytest.mark.parametrize("case, edit, match", cases([
    ("dtype", lambda m: _spec(m, "text_encoder", "inputs", "input_ids").update(dtype="int32"),
     r"text_encoder\.onnx input 'input_ids' is int64, the manifest says int32"),
    ("rank", lambda m: _spec(m, "decoder", "inputs", "sigma").update(shape=["batch", 1, 1]),
     r"decoder\.onnx input 'sigma' has shape .* the manifest says \['batch', 1, 1\]"),
    ("static_size", lambda m: [_spec(m, "text_encoder", k, n)["shape"].__setitem__(1, 65) for k, n in
                               (("inputs", "input_ids"), ("inputs", "attention_mask"), ("outputs", "text_states"))]
     and m["text"].update(max_length=65),
     r"text_encoder\.onnx input '(input_ids|attention_mask)' has shape \[.*64\], the manifest says \[.*65\]"),
]))
def test_manifest_tensor_specs_agree_with_the_graphs(tiny, tmp_path, case, edit, match):
    """The manifest's tensor specs against each graph's real inputs (ONNX Runtime's view), when it is opened:
    the CLI exits 2 and writes nothing."""
    from mousai_runtime import BundleError, Pipeline

    p = _copy_bundle(tiny, tmp_path)
    _edit_manifest(p, edit)
    with pytest.raises(BundleError, match=match):
        Pipeline(p).generate("music", 0.5, steps=1, decoder_steps=1)
    out = tmp_path / "o"
    out.mkdir()
    assert_refused(cli("generate", "music", "-o", out / "x.wav", "--model", p, "--seconds", "0.5", "--steps", "1",
                       "--decoder-steps", "1"), match)
    assert tree(out) == []


# ================================================================================================= the written level


@pytest.mark.parametrize("case, audio, allow, match", cases([
    ("silence", np.zeros((2, 4800), np.float32), False, r"the audio is silent \(peak 0\.0e\+00\): nothing written"),
    ("nearly_silent", np.full((2, 4800), 1e-8, np.float32), False, r"the audio is silent"),
    ("over_range", np.full((2, 4800), 6.7e16, np.float32), False, r"peaks at 6\.7e\+16 \(\+336\.5 dBFS"),
    ("nan", np.full((2, 4800), np.nan, np.float32), False, r"NaN or infinity"),
    ("inf_even_when_allowed", np.full((2, 4800), np.inf, np.float32), True, r"NaN or infinity"),
    ("silence_even_when_allowed", np.zeros((2, 4800), np.float32), True, r"silent"),
]))
def test_cli_never_writes_a_broken_clip(tiny, tmp_path, monkeypatch, case, audio, allow, match):
    """Whatever produced it (an edited bundle, a broken graph), such a clip ends as exit 2 with nothing written."""
    from mousai_runtime.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: audio.copy())
    for fmt in ("wav", "flac"):
        args = ["generate", "music", "-o", tmp_path / f"x.{fmt}", "--model", tiny["bundle"], "--seconds", "0.1"]
        assert_refused(cli(*args, *(["--allow-clipping"] if allow else [])), match)
    assert tree(tmp_path) == []


def test_allow_clipping_writes_an_over_range_clip(tiny, tmp_path, monkeypatch):
    import soundfile as sf

    from mousai_runtime.pipeline import Pipeline

    loud = np.full((2, 4800), 5.0, np.float32)
    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: loud.copy())
    r = cli("generate", "music", "-o", tmp_path / "x.wav", "--model", tiny["bundle"], "--seconds", "0.1",
            "--allow-clipping")
    assert r.exit_code == 0, r.output
    data, sr = sf.read(tmp_path / "x.wav", dtype="float32")
    assert sr == 48000 and data.shape == (4800, 2) and float(np.abs(data).max()) == 5.0
    quiet = np.full((2, 4800), 3.9, np.float32)  # under +12 dBFS: written without the flag
    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: quiet.copy())
    r = cli("generate", "music", "-o", tmp_path / "y.wav", "--model", tiny["bundle"], "--seconds", "0.1")
    assert r.exit_code == 0, r.output
    assert float(np.abs(sf.read(tmp_path / "y.wav", dtype="float32")[0]).max()) == pytest.approx(3.9)
