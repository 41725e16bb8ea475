"""Issue #19: inputs that ended in "internal error ... please report it" (exit 1), a traceback, a raw Python
exception or a message longer than one line now end in one line and exit 2 (the CLI) or an InputError (the API);
optional packages are checked before the render; broken standard streams do not turn a success into a failure.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_REFERENCE
from test_reliability import CLI_MAIN, assert_one_line_error, assert_refused, cases, cli, tree
from test_runtime import pipe, tiny  # noqa: F401

FAST = ["--seconds", "0.5", "--steps", "1", "--decoder-steps", "1"]


def mousai(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=None, cwd=None):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run([sys.executable, "-c", CLI_MAIN, *argv], stdout=stdout, stderr=stderr, env=e,
                          cwd=cwd or str(ROOT), timeout=600)


# ================================================================================================= optional packages


@pytest.mark.parametrize("case, flag, module, match", cases([
    ("spectrogram_without_matplotlib", ["--spectrogram", "@s.png"], "matplotlib",
     r"--spectrogram needs matplotlib, which is not installed: pip install 'mousai\[audio\]'"),
    ("loudness_without_pyloudnorm", ["--loudness", "-14"], "pyloudnorm", r"--loudness needs pyloudnorm"),
]))
def test_optional_packages_are_checked_before_rendering(tiny, tmp_path, monkeypatch, case, flag, module, match):
    """On a runtime-only install: refused at once (nothing rendered: generate is never called), no WAV left."""
    from mousai_runtime.pipeline import Pipeline

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    calls = []
    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: calls.append(1))
    flag = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in flag]
    assert_refused(cli("generate", "music", "-o", tmp_path / "x.wav", "--model", tiny["bundle"], *FAST, *flag), match)
    assert calls == [] and tree(tmp_path) == []


def test_spectrogram_failure_leaves_no_audio_file(tiny, tmp_path, monkeypatch):
    """The PNG is made before the audio is written: if making it fails, neither file exists."""
    import mousai_runtime.audio as audio

    def broken(*a, **k):
        raise audio.AudioError("the spectrogram could not be drawn")

    monkeypatch.setattr(audio, "spectrogram_png", broken)
    assert_refused(cli("generate", "music", "-o", tmp_path / "x.wav", "--spectrogram", tmp_path / "s.png",
                       "--model", tiny["bundle"], *FAST), r"the spectrogram could not be drawn")
    assert tree(tmp_path) == []


# ================================================================================================= standard streams


@pytest.mark.parametrize("case", ["stderr_closed", "stdout_closed", "stdout_ascii", "stdout_dev_full"])
def test_broken_standard_streams_do_not_fail_a_good_render(tiny, tmp_path, case):
    """Exit 0 and the file written, whatever the streams are: closed by the shell (`2>&-`: Python's sys.stderr is
    None), an ascii encoding with a non-ASCII file name, or a full device (one warning says what was lost)."""
    out = tmp_path / ("é.wav" if case == "stdout_ascii" else "x.wav")
    args = ["generate", "music", "-o", out, "--model", tiny["bundle"], *FAST]
    if case.endswith("_closed"):
        e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        fd = 2 if case == "stderr_closed" else 1
        r = subprocess.run(["bash", "-c", f'exec "$0" "$@" {fd}>&-', sys.executable, "-c", CLI_MAIN, *map(str, args)],
                           capture_output=False, stdout=subprocess.PIPE if fd == 2 else None,
                           stderr=subprocess.PIPE if fd == 1 else None, env=e, cwd=str(ROOT), timeout=600)
    elif case == "stdout_ascii":
        r = mousai(*args, env={"PYTHONIOENCODING": "ascii"})
        assert r.stdout.decode("ascii").startswith(f"wrote {tmp_path}/\\xe9.wav")
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        with open("/dev/full", "w") as full:
            r = mousai(*args, stdout=full)
        assert r.stderr.decode().strip().splitlines()[-1] == \
            "warning: could not print the result to stdout (No space left on device)"
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert out.is_file() and out.stat().st_size > 40_000


# ================================================================================================= was: internal error


def _archisound_source(tmp_path, edit):
    from safetensors.torch import load_file, save_file

    if not SHARED_REFERENCE.is_dir():
        pytest.skip("shared/reference test vectors not present")
    w = load_file(str(SHARED_REFERENCE / "dmae_small_seed1_weights.safetensors"))
    src = tmp_path / "src"
    src.mkdir()
    edit(w, src)
    save_file(w, str(src / "model.safetensors"))
    return src


@pytest.mark.parametrize("case, match", cases([
    ("missing_key", r"missing reference key 'encoder\.to_in\.block\.block1\.project\.weight'"),
    ("weight_1d", r"unexpected weight layout \(IndexError: .*\): not an archisound DMAE this importer knows"),
    ("config_a_list", r"config\.json in .* must hold a JSON object, not a list"),
    ("config_not_utf8", r"unreadable config\.json in .*codec can't decode"),
]))
def test_import_of_a_malformed_checkpoint_is_one_line(tmp_path, case, match):
    def edit(w, src):
        if case == "missing_key":
            w.pop("encoder.to_in.block.block1.project.weight")
        elif case == "weight_1d":
            w["net.blocks.0.weight"] = w["net.blocks.0.weight"].reshape(-1)
        elif case == "config_a_list":
            (src / "config.json").write_text("[1, 2]")
        else:
            (src / "config.json").write_bytes(b'{"x": "\xff\xfe"}')

    src = _archisound_source(tmp_path, edit)
    assert_refused(cli("import", "archisound", src, "--out", tmp_path / "out"), match)
    assert not (tmp_path / "out").exists()


def test_import_refusal_never_advises_running_the_pickle(tmp_path):
    """torch's weights_only error suggests weights_only=False (running the file's code): never repeated."""
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": torch.zeros(1), "o": Evil()}, tmp_path / "evil.bin")
    line = assert_refused(cli("import", "archisound", tmp_path / "evil.bin", "--out", tmp_path / "o"),
                          r"cannot read evil\.bin: it holds Python objects other than tensors, which a safe load "
                          r"refuses \(mousai never runs code from a checkpoint\)")
    assert "weights_only" not in line and "False" not in line


def test_train_steps_0_is_valid_and_trains_nothing(tmp_path):
    """Documented as valid (0 ... 10^9): a run folder with no step trained, exit 0 (was: internal error)."""
    import soundfile as sf

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    t = np.arange(48000) / 48000
    for i in range(2):
        tone = (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32)
        sf.write(corpus / f"t{i}.wav", np.stack([tone, tone], 1), 48000)
    r = cli("train", "autoencoder", "--data", corpus, "--out", tmp_path / "run", "--steps", "0", "--crop-length",
            "16384", "--batch-size", "1", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1].startswith("step 0: no step trained; checkpoint ")


def test_train_out_of_memory_is_one_line_exit_2(tmp_path, monkeypatch):
    import training.train as T

    def oom(**kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1099511627776 bytes")

    monkeypatch.setattr(T, "train", oom)
    assert_refused(cli("train", "autoencoder", "--data", tmp_path, "--out", tmp_path / "run", "--crop-length",
                       str(2**24)), r"out of memory \(.*can't allocate memory.*\): try a smaller --batch-size or "
                                    r"--crop-length")
    assert not (tmp_path / "run").exists()


# ================================================================================================= the Python API


@pytest.mark.parametrize("case, make, match", cases([
    ("pipeline_none", lambda t: __import__("mousai_runtime").Pipeline(None),
     r"bundle_dir must be a folder path \(str or os\.PathLike\), got NoneType"),
    ("chunk_seconds_1e308", lambda t: __import__("mousai_runtime").Pipeline(t["bundle"], chunk_seconds=1e308),
     r"chunk_seconds must be a number > 0 and <= 3600"),
]))
def test_api_construction_errors_are_input_errors(tiny, case, make, match):
    from mousai_runtime import InputError

    with pytest.raises(InputError, match=match):
        make(tiny)


@pytest.mark.parametrize("case, kwargs, match", cases([
    ("progress_not_callable", {"progress": 3}, r"progress must be a function \(or None\), got int"),
    ("stage_progress_not_callable", {"stage_progress": "x"}, r"stage_progress must be a function"),
    ("cancel_without_is_set", {"cancel": True}, r"cancel must be a CancelToken or threading\.Event .* got bool"),
]))
def test_api_callbacks_are_checked_before_the_render(pipe, case, kwargs, match):
    from mousai_runtime import InputError

    with pytest.raises(InputError, match=match):
        pipe.generate("music", 0.5, steps=1, decoder_steps=1, **kwargs)


def test_api_encode_of_integer_pcm_names_the_dtype(pipe):
    """int16 audio used to reach the encoder as huge values and raise NonFiniteError advising another seed."""
    from mousai_runtime import InputError

    pcm = (np.sin(np.arange(9600) / 10) * 30000).astype(np.int16)
    with pytest.raises(InputError, match=r"audio must be floating point .* got int16 samples: .* / 32768"):
        pipe.encode(np.stack([pcm, pcm]))
    assert pipe.encode(np.stack([pcm, pcm]).astype(np.float32) / 32768).shape[0] == 1


# ================================================================================================= smaller


@pytest.mark.parametrize("prompt", ["\u200b", "\ufeff", "\u200b \ufeff\u2060", "\u00a0\u3000"])
def test_prompt_of_only_invisible_characters_is_empty(tmp_path, prompt):
    from mousai_runtime import InputError
    from mousai_runtime.pipeline import check_prompt

    with pytest.raises(InputError, match="the prompt (is empty|has no visible characters)"):
        check_prompt(prompt)
    assert_refused(cli("generate", prompt, "-o", tmp_path / "x.wav", "--model", tmp_path / "nb"),
                   r"the prompt (is empty|has no visible characters)")
    assert check_prompt("\u200bjazz") == "\u200bjazz"


def test_info_never_prints_terminal_escapes_from_a_manifest(tiny, tmp_path):
    from test_runtime import _copy_bundle, _edit_manifest

    p = _copy_bundle(tiny, tmp_path)
    _edit_manifest(p, lambda m: m.update(name="evil\x1b]0;pwned\x07\x1b[2J"))
    r = cli("info", p)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in r.stdout


def test_error_lines_never_carry_escapes_either(tmp_path):
    r = cli("generate", "music", "-o", tmp_path / "x.wav", "--model", tmp_path / "evil\x1b[2J")
    line = assert_refused(r, r"bundle not found: .*evil\\x1b\[2J")
    assert "\x1b" not in line


def test_refusal_messages_show_the_value_they_refuse_unrounded(pipe):
    from mousai_runtime import InputError

    with pytest.raises(InputError, match=r"seconds 3600\.0001 is longer than this bundle's maximum of 3600 s"):
        pipe.generate("music", 3600.0001)
    with pytest.raises(InputError, match=r"the audio is 172,800,001 samples \(3600\.000020833333 s\) long"):
        pipe._check_length(172_800_001, "audio")


def test_c_locale_accepts_a_utf8_prompt(tmp_path):
    """Without UTF-8 mode the C locale decodes argv as ASCII: a valid UTF-8 prompt was refused as undecodable."""
    r = mousai("generate", "café ♫", "-o", tmp_path / "x.wav", "--model", tmp_path / "nb",
               env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})
    assert r.returncode == 2
    assert_one_line_error(r.stderr.decode("utf-8", "replace"), r"bundle not found")  # past the prompt checks
    r = mousai("generate", b"caf\xff", "-o", tmp_path / "x.wav", "--model", tmp_path / "nb",
               env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})
    assert_one_line_error(r.stderr.decode("utf-8", "replace"), r"the prompt is not valid UTF-8 text")


def test_onnx_runtime_log_lines_do_not_lengthen_an_error(tiny, tmp_path):
    """A graph ONNX Runtime cannot load (hash consistent): the one error line only, no '[E:onnxruntime:...]'."""
    from test_runtime import _copy_bundle, _edit_manifest, _rewrite

    p = _copy_bundle(tiny, tmp_path)
    data = (p / "decoder.onnx").read_bytes()
    bad = data[:len(data) // 2] + bytes(len(data) - len(data) // 2)
    _rewrite(p / "decoder.onnx", bad)
    import hashlib

    _edit_manifest(p, lambda m: m["files"]["decoder.onnx"].update(sha256=hashlib.sha256(bad).hexdigest()))
    r = mousai("generate", "music", "-o", tmp_path / "x.wav", "--model", p, *FAST)
    assert r.returncode == 2, r.stderr
    assert_one_line_error(r.stderr.decode(), r"decoder\.onnx")
    assert not (tmp_path / "x.wav").exists()
