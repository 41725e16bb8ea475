"""Issue #9, part 1: bad input everywhere a user types or passes something, untrusted files, and NaN/inf.

Every refusal is checked for: its exit code (CLI: 2) or exception type (API), ONE line naming the problem, no
traceback, and nothing written. docs/reliability.md lists every case with the test that proves it. Faults (SIGKILL,
disk full) and the concurrency soak are in tests/test_faults.py.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import ROOT
from test_runtime import _copy_bundle, _edit_manifest, _rewrite, _source_key, pipe, tiny  # noqa: F401

SR = 48000
runner = CliRunner()
HYPOTHESIS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------- helpers


def cases(rows):
    """pytest.param per row, with the row's first element (a case name) as its test id."""
    return [pytest.param(*row, id=row[0]) for row in rows]


def cli(*args, env=None):
    from cli import app

    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(stderr: str, match: str, stdout: str = "") -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(match, lines[0]), (match, lines[0])
    assert "Traceback" not in stderr + stdout
    return lines[0]


def assert_refused(r, match: str, code: int = 2, progress_ok: bool = False) -> str:
    """Exit code, no exception, one `error:` line (with progress_ok: after export step lines ending in 'failed')."""
    assert r.exit_code == code, (r.exit_code, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    err = r.stderr
    if progress_ok:
        lines = err.strip().splitlines()
        assert all(re.match(r"^\[\d+/\d+\] .*( s| failed)$", x) for x in lines[:-1]), err
        assert not lines[:-1] or lines[-2].endswith(" failed"), err
        err = lines[-1] if lines else ""
    return assert_one_line_error(err, match, r.stdout)


def tree(folder: Path) -> list[str]:
    """Every path under folder (hidden ones too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_py(code: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, env=e, cwd=str(ROOT),
                          timeout=timeout)


CLI_MAIN = "import sys, cli; sys.argv[0] = 'mousai'; cli.app()"


@pytest.fixture(scope="module")
def tiny16(tiny, request):
    """An fp16 bundle of the tiny checkpoint exported with --fp16 --fp16-fallback (fp32 graphs kept), cached on disk
    like the fp32 one (key: model code + exporter code)."""
    from mousai_export import export_bundle

    h = hashlib.sha256(_source_key().encode())
    for f in sorted(ROOT.glob("mousai_export/*.py")):
        h.update(f.read_bytes())
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("mousai-runtime")) if cache is not None else Path(tempfile.gettempdir())
    final = folder / f"tiny16-{h.hexdigest()[:16]}"
    if not (final / "manifest.json").is_file():
        tmp = folder / f".tiny16-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        export_bundle(str(tiny["ckpt"]), str(tmp), fp16=True, fp16_fallback=True, check=False, progress=False)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


# ================================================================================================= bad input: CLI

LONG_PROMPT = "a" * 100_000


@pytest.mark.parametrize("case, args, match", cases([
    ("prompt_empty", [""], "prompt is empty"),
    ("prompt_whitespace", ["  \t \n "], "prompt is empty"),
    ("prompt_100k_chars", [LONG_PROMPT], "100,000 characters long; the limit is 4,000"),
    ("prompt_control_char", ["piano\x07bell"], r"control character U\+0007 at character 6"),
    ("prompt_escape_sequence", ["\x1b[31mred"], r"control character U\+001B"),
    ("seconds_0", ["x", "--seconds", "0"], "--seconds must be a finite number > 0"),
    ("seconds_negative", ["x", "--seconds", "-1"], "--seconds must be a finite number > 0"),
    ("seconds_nan", ["x", "--seconds", "nan"], "--seconds must be a finite number > 0"),
    ("seconds_inf", ["x", "--seconds", "inf"], "--seconds must be a finite number > 0"),
    ("seconds_huge", ["x", "--seconds", "1e308"], "longer than this bundle's maximum of 3600 s"),
    ("seconds_not_a_number", ["x", "--seconds", "ten"], "Invalid value for '--seconds'"),
    ("steps_0", ["x", "--steps", "0"], "--steps must be >= 1 and <= 10000"),
    ("steps_negative", ["x", "--steps", "-3"], "--steps must be >= 1"),
    ("steps_huge", ["x", "--steps", str(10**30)], "--steps must be >= 1 and <= 10000"),
    ("steps_nan", ["x", "--steps", "nan"], "Invalid value for '--steps'"),
    ("steps_fraction", ["x", "--steps", "2.5"], "Invalid value for '--steps'"),
    ("guidance_nan", ["x", "--guidance", "nan"], "--guidance must be a finite number"),
    ("guidance_inf", ["x", "--guidance", "inf"], "--guidance must be a finite number"),
    ("guidance_minus_inf", ["x", "--guidance", "-inf"], "--guidance must be a finite number"),
    ("guidance_huge", ["x", "--guidance", "1e9"], "--guidance must be between -100 and 100"),
    ("seed_nan", ["x", "--seed", "nan"], "Invalid value for '--seed'"),
    ("seed_fraction", ["x", "--seed", "1.5"], "Invalid value for '--seed'"),
    ("loudness_positive", ["x", "--loudness", "1"], "--loudness must be between -70 and 0"),
    ("loudness_too_low", ["x", "--loudness", "-71"], "--loudness must be between -70 and 0"),
    ("loudness_nan", ["x", "--loudness", "nan"], "--loudness must be between -70 and 0"),
    ("loudness_inf", ["x", "--loudness", "-inf"], "--loudness must be between -70 and 0"),
    ("engine_unknown", ["x", "--engine", "vulkan"], "unknown --engine 'vulkan'"),
    ("format_unknown", ["x", "--format", "ogg"], "unknown format 'ogg'"),
    ("option_unknown", ["x", "--colour", "red"], "No such option: --colour"),
    ("prompt_missing", [], "Missing argument"),
]))
def test_cli_generate_refuses_bad_input(tiny, tmp_path, case, args, match):
    work = tmp_path / "work"
    work.mkdir()
    r = cli("generate", *args, "-o", work / "x.wav", "--model", tiny["bundle"])
    assert_refused(r, match)
    assert tree(work) == []


def test_cli_generate_refuses_undecodable_prompt_bytes(tiny, tmp_path):
    """argv bytes that are not UTF-8 arrive as lone surrogates (PEP 383): refused in one line, no file."""
    out = tmp_path / "x.wav"
    r = subprocess.run([sys.executable, "-c", CLI_MAIN, "generate", b"caf\xe9 \xff\xfe", "-o", str(out), "--model",
                        str(tiny["bundle"])], capture_output=True, cwd=str(ROOT), timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"})
    assert r.returncode == 2, r.stderr
    assert_one_line_error(r.stderr.decode(errors="replace"), r"not valid UTF-8 text \(undecodable byte at "
                                                             r"character 4\)")
    assert tree(tmp_path) == []


def test_cli_generate_edge_values_are_accepted(tiny, tmp_path):
    """0 and negative values where they mean something (guidance 0, negative seeds, huge seeds, 0 LUFS) work."""
    for args in (["--seed", "-1", "--guidance", "0", "--loudness", "0", "--seconds", "0.5"],
                 ["--seed", str(2**70), "--guidance", "-1", "--seconds", "0.001"]):
        out = tmp_path / "ok.wav"
        r = cli("generate", "soft pads", "-o", out, "--model", tiny["bundle"], "--steps", "1", *args)
        assert r.exit_code == 0, r.output
        data, sr = sf.read(out, always_2d=True)
        assert sr == SR and data.shape[1] == 2 and np.isfinite(data).all()
        assert data.shape[0] == round(float(args[-1]) * SR)
        out.unlink()


@pytest.mark.parametrize("case, args, match", cases([
    ("opset_0", ["--opset", "0"], "opset 0 is not supported"),
    ("opset_negative", ["--opset", "-1"], "opset -1 is not supported"),
    ("opset_huge", ["--opset", str(10**30)], "is newer than the installed onnx"),
    ("opset_not_a_number", ["--opset", "eighteen"], "Invalid value for '--opset'"),
    ("engine_unknown", ["--engine", "vulkan"], "Invalid value for '--engine'"),
    ("fp16_fallback_without_fp16", ["--fp16-fallback"], "--fp16-fallback .* use it with --fp16"),
    ("checkpoint_missing", ["@missing"], "checkpoint not found"),
    ("checkpoint_is_a_file", ["@file"], "not a checkpoint folder"),
    ("checkpoint_empty_folder", ["@empty"], "has no DMAE weights"),
    ("checkpoint_truncated_safetensors", ["@truncated"], "corrupt weights file .*dmae.safetensors"),
    ("checkpoint_wrong_shapes", ["@wrong_shapes"], "dmae weights do not match the config: .*shape mismatches"),
    ("checkpoint_config_not_json", ["@bad_config"], "corrupt config.json"),
    ("checkpoint_config_unknown_version", ["@config_v2"], "unsupported checkpoint version 2"),
    ("output_exists", ["@exists"], "exists \\(use --force to replace it\\)"),
]))
def test_cli_export_refuses_bad_input(tiny, tmp_path, case, args, match):
    ck = tmp_path / "ck"
    out = tmp_path / "out" / "bundle"
    kind = args[0][1:] if args and args[0].startswith("@") else None
    if kind in (None, "truncated", "wrong_shapes", "bad_config", "config_v2", "exists"):
        shutil.copytree(tiny["ckpt"], ck)
    if kind == "missing":
        ck = tmp_path / "nothing"
    elif kind == "file":
        ck.write_text("not a folder")
    elif kind == "empty":
        ck.mkdir()
    elif kind == "truncated":
        data = (ck / "dmae.safetensors").read_bytes()
        (ck / "dmae.safetensors").write_bytes(data[: len(data) // 3])
    elif kind == "wrong_shapes":  # weights of the test config under the config of the (bigger) tiny model
        from training.model.configs import tiny as tiny_config

        doc = json.loads((ck / "config.json").read_text())
        doc["model"] = tiny_config().to_dict()
        (ck / "config.json").write_text(json.dumps(doc))
    elif kind == "bad_config":
        (ck / "config.json").write_text("{\"format\": \"mousai-checkpoint\", ")
    elif kind == "config_v2":
        doc = json.loads((ck / "config.json").read_text())
        doc["version"] = 2
        (ck / "config.json").write_text(json.dumps(doc))
    elif kind == "exists":
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("previous")
    before = tree(tmp_path)
    rest = [] if kind else args
    r = cli("export", ck, "--out", out, "--no-check", *rest)
    assert_refused(r, match, progress_ok=True)
    assert tree(tmp_path) == before  # no bundle, no temp folder, no parent folder created
    if kind == "exists":
        assert (out / "keep.txt").read_text() == "previous"


@pytest.mark.parametrize("case, args, match", cases([
    ("steps_negative", ["--steps", "-1"], r"steps must be an integer in \[0, "),
    ("steps_huge", ["--steps", str(10**30)], r"steps must be an integer in \[0, 1,000,000,000\]"),
    ("batch_size_0", ["--batch-size", "0"], r"batch_size must be an integer in \[1, 4,096\], got 0"),
    ("batch_size_negative", ["--batch-size", "-8"], r"batch_size must be an integer in \[1, "),
    ("crop_length_0", ["--crop-length", "0"], r"crop_length must be an integer in \[1, "),
    ("crop_length_huge", ["--crop-length", str(2**40)], r"crop_length must be an integer in \[1, 16,777,216\]"),
    ("lr_0", ["--lr", "0"], r"lr must be a finite number in \(0, 1\], got 0.0"),
    ("lr_negative", ["--lr", "-1e-4"], r"lr must be a finite number in \(0, 1\]"),
    ("lr_nan", ["--lr", "nan"], r"lr must be a finite number in \(0, 1\], got nan"),
    ("lr_inf", ["--lr", "inf"], r"lr must be a finite number in \(0, 1\], got inf"),
    ("lr_huge", ["--lr", "1e9"], r"lr must be a finite number in \(0, 1\]"),
    ("seed_negative", ["--seed", "-1"], r"seed must be an integer in \[0, "),
    ("seed_huge", ["--seed", str(2**64)], r"seed must be an integer in \[0, 9,223,372,036,854,775,807\]"),
    ("threads_0", ["--threads", "0"], r"threads must be an integer in \[1, 1,024\]"),
    ("threads_huge", ["--threads", str(10**6)], r"threads must be an integer in \[1, 1,024\]"),
    ("ckpt_every_negative", ["--ckpt-every", "-1"], r"ckpt_every must be an integer in \[0, "),
    ("sample_every_negative", ["--sample-every", "-5"], r"sample_every must be an integer in \[0, "),
    ("lr_not_a_number", ["--lr", "fast"], "Invalid value for '--lr'"),
    ("stage_unknown", ["@stage"], "Invalid value for 'stage': .*'vocoder' is not one of"),
    ("config_unknown", ["--config", "gigantic"], "unknown config"),
    ("data_missing", ["@no_data"], "not a folder"),
    ("data_only_unreadable_files", ["@bad_data"], r"no audio files in .* \(2 unreadable\)"),
]))
def test_cli_train_refuses_bad_input(tmp_path, case, args, match):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "tone.wav", (0.1 * np.sin(np.arange(SR) / 10)).astype(np.float32), SR)
    stage = "autoencoder"
    if args[0] == "@stage":
        stage, args = "vocoder", []
    elif args[0] == "@no_data":
        data, args = tmp_path / "nothing", []
    elif args[0] == "@bad_data":
        (data / "tone.wav").unlink()
        (data / "text.wav").write_text("not audio " * 50)
        (data / "empty.flac").write_bytes(b"")
        args = []
    out = tmp_path / "run"
    r = cli("train", stage, "--out", out, "--data", data, "--steps", "2", "--no-progress", *args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert_one_line_error(lines[-1], match, r.stdout)  # (after one-line warnings, e.g. the skipped files)
    assert all(line.startswith("warning: ") for line in lines[:-1]), r.stderr
    assert not out.exists()  # refused before any run folder is created


@pytest.mark.parametrize("case, args, match", cases([
    ("init_seed_negative", ["init", "--out", "@", "--seed", "-1"], r"--seed must be an integer in \[0, "),
    ("init_seed_huge", ["init", "--out", "@", "--seed", str(2**64)], r"--seed must be an integer in \[0, "),
    ("init_seed_nan", ["init", "--out", "@", "--seed", "nan"], "Invalid value for '--seed'"),
    ("init_config_unknown", ["init", "--out", "@", "--config", "huge"], "unknown config"),
    ("params_config_unknown", ["params", "--config", "huge"], "unknown config"),
    ("info_bundle_missing", ["info", "@"], "bundle not found"),
    ("import_checkpoint_missing", ["import", "archisound", "@", "--out", "@o"], "no such checkpoint"),
    ("data_build_unknown_source", ["data", "build", "@", "--sources", "spotify"], "unknown source"),
    ("command_unknown", ["frobnicate"], "No such command 'frobnicate'"),
    ("fit_envelope_no_corpus", ["checkpoint", "fit-envelope", "@", "--data", "@o"], "not a corpus folder"),
    ("fit_envelope_too_few_clips", ["checkpoint", "fit-envelope", "@", "--data", "@o", "--clips", "3"],
     "Invalid value for '--clips'"),
    ("train_encoder_no_corpus", ["checkpoint", "train-encoder", "@", "--data", "@o", "--out", "@o"],
     "not a corpus folder"),
    ("train_encoder_zero_steps", ["checkpoint", "train-encoder", "@", "--data", "@o", "--out", "@o", "--steps", "0"],
     "Invalid value for '--steps'"),
    ("train_genre_balance_out_of_range", ["train", "generator", "--out", "@o", "--genre-balance", "2"],
     "Invalid value for '--genre-balance'"),
    ("train_short_captions_out_of_range", ["train", "generator", "--out", "@o", "--short-captions", "-0.1"],
     "Invalid value for '--short-captions'"),
    ("train_short_captions_for_the_dmae", ["train", "autoencoder", "--out", "@o", "--short-captions", "0.5"],
     "generator stage only"),
]))
def test_cli_other_commands_refuse_bad_input(tmp_path, case, args, match):
    args = [str(tmp_path / "x") if a == "@" else str(tmp_path / "o") if a == "@o" else a for a in args]
    r = cli(*args)
    assert_refused(r, match)
    assert tree(tmp_path) == []


def test_cli_unexpected_exception_is_one_line_exit_1(monkeypatch, tmp_path):
    """A bug is still one line (exit 1, not 2: not the user's fault), never a traceback; MOUSAI_DEBUG shows it."""
    import mousai_runtime.cli_impl as impl

    def boom(*a, **kw):
        raise KeyError("surprise")

    monkeypatch.setattr(impl, "info_command", boom)
    r = cli("info", tmp_path)
    assert_refused(r, r"internal error: KeyError: 'surprise' \(MOUSAI_DEBUG=1 shows the traceback", code=1)
    r = cli("info", tmp_path, env={"MOUSAI_DEBUG": "1"})
    assert isinstance(r.exception, KeyError)


# ================================================================================================= bad input: API


@pytest.mark.parametrize("case, kwargs, match", cases([
    ("prompt_100k_chars", dict(prompt="a" * 100_000), "100,000 characters long"),
    ("prompt_4001_chars", dict(prompt="a" * 4001), "4,001 characters long; the limit is 4,000"),
    ("prompt_nul", dict(prompt="a\x00b"), r"control character U\+0000 at character 2"),
    ("prompt_c1_control", dict(prompt="x\x85"), r"control character U\+0085"),
    ("prompt_undecodable_bytes", dict(prompt="caf\udce9"), r"not valid UTF-8 text \(undecodable byte at character 4\)"),
    ("prompt_bytes", dict(prompt=b"pads"), "must be text \\(str\\), not bytes"),
    ("prompt_not_text", dict(prompt=42), "prompt is empty"),
    ("seconds_bool", dict(seconds=True), "seconds must be a number"),
    ("seconds_below_one_sample", dict(seconds=1e-9), "shorter than one sample"),
    ("seconds_numpy_nan", dict(seconds=np.float32("nan")), "seconds must be a finite number"),
    ("steps_10001", dict(steps=10001), "steps must be <= 10000"),
    ("steps_huge", dict(steps=10**30), "steps must be <= 10000"),
    ("steps_negative", dict(steps=-1), "steps must be an integer >= 1"),
    ("steps_float", dict(steps=np.float64(2)), "steps must be an integer"),
    ("decoder_steps_huge", dict(decoder_steps=10**9), "decoder steps must be <= 10000"),
    ("guidance_huge", dict(guidance=1e9), "guidance must be between -100 and 100"),
    ("guidance_below_minus_100", dict(guidance=-101), "guidance must be between -100 and 100"),
    ("guidance_string", dict(guidance="3"), "guidance must be a finite number"),
    ("seed_none", dict(seed=None), "seed must be an integer"),
    ("seed_string", dict(seed="7"), "seed must be an integer"),
]))
def test_api_generate_refuses_bad_input(pipe, case, kwargs, match):
    from mousai_runtime import InputError

    args = dict(prompt="pads", seconds=1.0, steps=1, decoder_steps=1)
    args.update(kwargs)
    for fn in (pipe.stream, pipe.generate, pipe.generate_latent):
        a = dict(args)
        if fn.__name__ == "generate_latent":
            a.pop("decoder_steps")
            if "decoder_steps" in kwargs:
                continue
        with pytest.raises(InputError, match=match) as e:
            fn(**a)
        assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_api_edge_values_accepted_and_seed_taken_modulo_2_64(pipe):
    kw = dict(steps=1, decoder_steps=1)
    a = pipe.generate("pads", 0.1, seed=2**64 + 5, guidance=0, **kw)
    assert np.array_equal(a, pipe.generate("pads", 0.1, seed=5, guidance=0, **kw))
    b = pipe.generate("pads", 0.1, seed=-1, guidance=-1.0, **kw)
    assert np.array_equal(b, pipe.generate("pads", 0.1, seed=2**64 - 1, guidance=-1.0, **kw))
    tab = pipe.generate("pads\tsoft\npiano", 0.1, seed=np.int64(3), guidance=np.float32(2.0), **kw)
    assert tab.shape == (2, round(0.1 * SR)) and np.isfinite(tab).all()  # tab and newline are whitespace, not control


@pytest.mark.parametrize("case, kwargs, exc, match", cases([
    ("chunk_seconds_nan", dict(chunk_seconds=float("nan")), "InputError", "chunk_seconds must be a number > 0"),
    ("chunk_seconds_0", dict(chunk_seconds=0), "InputError", "chunk_seconds must be a number > 0"),
    ("text_cache_negative", dict(text_cache=-1), "InputError", "text_cache must be an integer >= 0"),
    ("threads_0", dict(threads=0), "BackendError", "threads must be an integer >= 1"),
    ("window_frames_0", dict(window_frames=0), "InputError", "window_frames must be an integer >= 1"),
    ("window_batch_0", dict(window_batch=0), "InputError", "window_batch must be an integer >= 1"),
    ("fp16_fallback_string", dict(fp16_fallback="yes"), "InputError", "fp16_fallback must be true or false"),
    ("backend_unknown", dict(backend="vulkan"), "BackendError", "unknown backend 'vulkan'"),
    ("provider_unavailable", dict(providers=["cuda"]), "BackendError", "CUDAExecutionProvider is not available"),
]))
def test_api_pipeline_refuses_bad_options(tiny, case, kwargs, exc, match):
    import mousai_runtime
    from mousai_runtime import Pipeline

    with pytest.raises(getattr(mousai_runtime, exc), match=match) as e:
        Pipeline(tiny["bundle"], **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case, audio, match", cases([
    ("nan_samples", np.full((2, 4096), np.nan, np.float32), "NaN or infinite samples"),
    ("inf_sample", np.concatenate([np.zeros((2, 100)), np.full((2, 1), np.inf)], 1), "NaN or infinite samples"),
    ("mono_1d", np.zeros(4096, np.float32), r"audio must be \[2, samples\], got \(4096,\)"),
    ("six_channels", np.zeros((6, 4096), np.float32), r"audio must be \[2, samples\], got \(6, 4096\)"),
    ("empty", np.zeros((2, 0), np.float32), r"audio must be \[2, samples\], got \(2, 0\)"),
    ("strings", [["a", "b"], ["c", "d"]], "audio must be an array of numbers"),
    ("ragged", [[0.0, 1.0], [0.0]], "audio must be an array of numbers"),
]))
def test_api_encode_refuses_bad_audio(pipe, case, audio, match):
    from mousai_runtime import InputError

    with pytest.raises(InputError, match=match) as e:
        pipe.encode(audio)
    assert "\n" not in str(e.value)


def test_api_encode_accepts_silence_and_odd_lengths(pipe):
    z = pipe.encode(np.zeros((2, 5000), np.float32))
    assert z.shape == (1, 32, 5) and np.isfinite(z).all()
    z = pipe.encode(np.ones((2, 1), np.float64) * 0.5)  # one sample, float64
    assert z.shape == (1, 32, 1) and np.isfinite(z).all()


@pytest.mark.parametrize("case, latent, kw, match", cases([
    ("nan_latent", np.full((1, 32, 4), np.nan, np.float32), {}, "latent contains NaN"),
    ("wrong_channels", np.zeros((1, 31, 4), np.float32), {}, r"latent must be \[1, 32, frames\]"),
    ("batch_of_2", np.zeros((2, 32, 4), np.float32), {}, r"latent must be \[1, 32, frames\]"),
    ("samples_0", np.zeros((1, 32, 4), np.float32), dict(samples=0), r"samples must be an integer in \[1, 4096\]"),
    ("samples_too_many", np.zeros((1, 32, 4), np.float32), dict(samples=4097),
     r"samples must be an integer in \[1, 4096\]"),
    ("steps_0", np.zeros((1, 32, 4), np.float32), dict(steps=0), "decoder steps must be an integer >= 1"),
    ("seed_fraction", np.zeros((1, 32, 4), np.float32), dict(seed=0.5), "seed must be an integer"),
]))
def test_api_decode_refuses_bad_latents(pipe, case, latent, kw, match):
    from mousai_runtime import InputError

    with pytest.raises(InputError, match=match):
        pipe.decode(latent, **kw)


@pytest.mark.parametrize("case, kwargs, match", cases([
    ("steps_negative", dict(steps=-1), r"steps must be an integer in \[0, "),
    ("steps_float", dict(steps=2.5), r"steps must be an integer"),
    ("batch_size_0", dict(batch_size=0), r"batch_size must be an integer in \[1, "),
    ("crop_length_negative", dict(crop_length=-4), r"crop_length must be an integer in \[1, "),
    ("lr_nan", dict(lr=float("nan")), r"lr must be a finite number in \(0, 1\]"),
    ("lr_0", dict(lr=0.0), r"lr must be a finite number in \(0, 1\]"),
    ("seed_negative", dict(seed=-2), r"seed must be an integer in \[0, "),
    ("seed_bool", dict(seed=True), r"seed must be an integer"),
    ("threads_0", dict(threads=0), r"threads must be an integer in \[1, "),
    ("ckpt_every_negative", dict(ckpt_every=-1), r"ckpt_every must be an integer in \[0, "),
    ("grad_clip_inf", dict(grad_clip=float("inf")), r"grad_clip must be a finite number"),
    ("ema_beta_1", dict(ema_beta=1.0), r"ema_beta must be a finite number in \[0, 1\)"),
    ("ema_power_0", dict(ema_power=0.0), r"ema_power must be a finite number in \(0, 100\]"),
    ("sample_steps_0", dict(sample_steps=0), r"sample_steps must be an integer in \[1, 10,000\]"),
]))
def test_api_train_refuses_bad_arguments_before_creating_anything(tmp_path, case, kwargs, match):
    import training.train as T

    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match) as e:
        T.train("autoencoder", tmp_path, "tiny", out, **{"steps": 1, **kwargs})
    assert "\n" not in str(e.value) and not out.exists()


# ------------------------------------------------------------------------------------------------- properties

GEN_KEYS = ("prompt", "seconds", "steps", "guidance", "seed", "decoder_steps")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def generate_args_valid(prompt, seconds, steps, guidance, seed, decoder_steps, max_seconds=3600.0) -> bool:
    """The documented rules (docs/reliability.md), written independently of mousai_runtime."""
    def number(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    def integer(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    ok = isinstance(prompt, str) and prompt.strip() != "" and len(prompt) <= 4000 \
        and not _CTRL.search(prompt) and not any(0xD800 <= ord(c) <= 0xDFFF for c in prompt)
    ok = ok and number(seconds) and math.isfinite(seconds) and 0 < seconds <= max_seconds \
        and round(seconds * SR) >= 1
    ok = ok and all(s is None or (integer(s) and 1 <= s <= 10000) for s in (steps, decoder_steps))
    ok = ok and (guidance is None or (number(guidance) and math.isfinite(guidance) and abs(guidance) <= 100))
    return ok and integer(seed)


def mostly(valid, invalid):
    """Three valid draws for one invalid one, so that all six arguments are valid together often enough."""
    return st.integers(0, 3).flatmap(lambda k: invalid if k == 0 else valid)


def _prompts():
    return mostly(
        st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=24)
        .filter(str.strip),
        st.one_of(st.text(max_size=24), st.just(""), st.text(" \t\n\r\u3000", max_size=5),
                  st.integers(3995, 4005).map(lambda n: "b" * n),
                  st.tuples(st.text(max_size=5), st.characters(categories=["Cc"]), st.text(max_size=5)).map("".join),
                  st.tuples(st.text(min_size=1, max_size=5), st.characters(categories=["Cs"])).map("".join),
                  st.none(), st.binary(max_size=4), st.integers()))


def _steps():
    return mostly(st.one_of(st.none(), st.integers(1, 3), st.just(10000), st.sampled_from([np.int32(2)])),
                  st.one_of(st.integers(-3, 0), st.integers(10001, 10003), st.integers(min_value=2**62),
                            st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)))


@settings(max_examples=150, **HYPOTHESIS)
@given(prompt=_prompts(),
       seconds=mostly(st.one_of(st.floats(3e-5, 3600.0), st.integers(1, 3600), st.sampled_from([np.float32(0.5)])),
                      st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 0),
                                st.sampled_from([1e-6, 1e-5, 3600.01, 1e308]), st.booleans(), st.none(),
                                st.text(max_size=3))),
       steps=_steps(), decoder_steps=_steps(),
       guidance=mostly(st.one_of(st.none(), st.floats(-100, 100), st.integers(-100, 100)),
                       st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 100.5, -1e300]),
                                 st.integers(101, 10**6), st.booleans(), st.text(max_size=2))),
       seed=mostly(st.one_of(st.integers(), st.integers(min_value=2**64, max_value=2**200), st.just(np.uint64(7))),
                   st.one_of(st.floats(), st.booleans(), st.none(), st.text(max_size=2))))
def test_property_generate_arguments_accepted_iff_documented_rules(pipe, prompt, seconds, steps, guidance, seed,
                                                                   decoder_steps):
    """Over the whole argument space: stream() accepts exactly what the documented rules accept, and refuses the
    rest with InputError (one line) before running anything; nothing else is ever raised."""
    from mousai_runtime import InputError

    valid = generate_args_valid(prompt, seconds, steps, guidance, seed, decoder_steps)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            it = pipe.stream(prompt, seconds, steps=steps, guidance=guidance, seed=seed, decoder_steps=decoder_steps)
    except InputError as e:
        event("refused")
        assert not valid, f"refused valid arguments: {e}"
        assert "\n" not in str(e) and str(e)
        return
    event("accepted")
    assert valid, "accepted invalid arguments"
    it.close()  # validated, never started


@settings(max_examples=12, **HYPOTHESIS)
@given(prompt=st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=80)
       .filter(str.strip),
       seconds=st.floats(1 / SR, 0.3), steps=st.integers(1, 2), decoder_steps=st.integers(1, 2),
       guidance=st.floats(-100, 100), seed=st.integers(-2**70, 2**70))
def test_property_valid_arguments_give_a_finite_clip_of_the_right_length(pipe, prompt, seconds, steps, guidance, seed,
                                                                         decoder_steps):
    kw = dict(steps=steps, guidance=guidance, seed=seed, decoder_steps=decoder_steps)
    a = pipe.generate(prompt, seconds, **kw)
    assert a.shape == (2, round(seconds * SR)) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, pipe.generate(prompt, seconds, **kw))  # same arguments, same clip


_FLAG_VALUES = {
    "--seconds": mostly(st.sampled_from(["1", "0.5", "3600", "1e-4"]),
                        st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400", "3600.5", "abc", ""])),
    "--steps": mostly(st.sampled_from(["1", "3", "10000"]),
                      st.sampled_from(["0", "-1", "10001", str(10**30), "nan", "2.5", "abc", ""])),
    "--guidance": mostly(st.sampled_from(["0", "-1", "3", "100", "-100"]),
                         st.sampled_from(["nan", "inf", "-inf", "1e9", "100.5", "x", ""])),
    "--seed": mostly(st.sampled_from(["0", "-1", str(2**70)]), st.sampled_from(["nan", "1.5", "x", ""])),
    "--loudness": mostly(st.sampled_from(["0", "-14", "-70"]),
                         st.sampled_from(["1", "-71", "nan", "inf", "-inf", "x"])),
    "--engine": mostly(st.sampled_from(["onnx"]), st.sampled_from(["vulkan", "", "ONNX!"])),
    "--format": mostly(st.sampled_from(["wav", "flac"]), st.sampled_from(["ogg", "mp3", ""])),
}


@settings(max_examples=40, **HYPOTHESIS)
@given(argv=st.lists(st.sampled_from(sorted(_FLAG_VALUES)).flatmap(
    lambda f: st.tuples(st.just(f), _FLAG_VALUES[f])), max_size=4, unique_by=lambda fv: fv[0])
    .map(lambda pairs: [x for fv in pairs for x in fv]))
def test_property_cli_generate_never_crashes(tiny, argv):
    """Any flags and values: exit 2 with one `error:` line and no file, and the missing bundle is reported exactly
    when every flag given was fine (all cheap checks run before anything is loaded)."""
    with tempfile.TemporaryDirectory() as d:
        r = cli("generate", "pads", "-o", Path(d) / "x.wav", "--model", Path(d) / "no-bundle", *argv)
        assert r.exit_code == 2, r.output
        line = assert_one_line_error(r.stderr, ".", r.stdout)
        assert os.listdir(d) == []
    flags_ok = _generate_flags_ok(argv)
    event(f"flags ok: {flags_ok}")
    assert ("bundle not found" in line) == flags_ok, (argv, line)


def _generate_flags_ok(argv: list[str]) -> bool:
    """Whether every (flag, value) pair parses and is in range (the documented rules)."""
    ok = True
    for flag, v in zip(argv[::2], argv[1::2]):
        try:
            x = v if flag in ("--engine", "--format") else float(v) if flag not in ("--steps", "--seed") else int(v)
        except ValueError:
            ok = False
            continue
        if flag == "--seconds":
            ok &= math.isfinite(x) and 0 < x <= 3600 and round(x * SR) >= 1
        elif flag == "--steps":
            ok &= 1 <= x <= 10000
        elif flag == "--guidance":
            ok &= math.isfinite(x) and abs(x) <= 100
        elif flag == "--loudness":
            ok &= math.isfinite(x) and -70 <= x <= 0
        elif flag == "--engine":
            ok &= x in ("onnx", "trt", "tensorrt", "torch")
        elif flag == "--format":
            ok &= x in ("wav", "flac")
    return ok


@settings(max_examples=40, **HYPOTHESIS)
@given(opset=mostly(st.sampled_from([18, 19, 20]), st.one_of(st.integers(-5, 30), st.integers(min_value=10**6))),
       engine=mostly(st.just("onnx"), st.sampled_from(["trt", "vulkan", "", "ONNX"])), fp16=st.booleans(),
       fp16_fallback=st.booleans(),
       force=st.booleans(), check=st.booleans(),
       ckpt=st.sampled_from(["missing", "file", "empty"]), out=st.sampled_from(["absent", "dir", "file", "deep"]))
def test_property_export_arguments_refused_cleanly(opset, engine, fp16, fp16_fallback, force, check, ckpt, out):
    """Over the export argument space (with checkpoints that cannot be exported): always ExportError with one line
    that names a problem these arguments really have, and the file system is left exactly as it was."""
    import onnx

    from mousai_export import ExportError, export_bundle

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        ck, o = root / "ck", root / "out"
        if ckpt == "file":
            ck.write_text("x")
        elif ckpt == "empty":
            ck.mkdir()
        if out == "dir":
            o.mkdir()
            (o / "old.txt").write_text("old")
        elif out == "file":
            o.write_text("old")
        elif out == "deep":
            o = root / "a" / "b" / "out"
        before = {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}
        with pytest.raises(ExportError) as e:
            export_bundle(str(ck), str(o), engine=engine, fp16=fp16, opset=opset, check=check, force=force,
                          progress=False, fp16_fallback=fp16_fallback)
        msg = str(e.value)
        after = {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}
        assert after == before
    assert "\n" not in msg
    problems = {
        "unknown engine": engine not in ("onnx", "trt"),
        "opset": not 18 <= opset <= onnx.defs.onnx_opset_version(),
        "checkpoint not found": ckpt == "missing",
        "not a checkpoint folder": ckpt == "file",
        "exists and is not a folder": out == "file",
        "exists (use --force": out == "dir" and not force,
        "--fp16-fallback": fp16_fallback and (not fp16 or engine == "trt"),
        "NVIDIA GPU": engine == "trt",
        "has no DMAE weights": ckpt == "empty",
    }
    named = [p for p in problems if p in msg]
    event(named[0] if named else "none")
    assert named and all(problems[p] for p in named), (msg, problems)


# ================================================================================================= audio files


def _audio_cases(folder: Path) -> dict[str, Path]:
    t = np.arange(SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([x, 0.5 * x], 1)
    files = {}

    def put(name, write):
        files[name] = folder / name
        write(files[name])

    put("empty.wav", lambda p: p.write_bytes(b""))
    put("good.wav", lambda p: sf.write(p, stereo, SR, subtype="PCM_16"))
    put("truncated.wav", lambda p: p.write_bytes(files["good.wav"].read_bytes()[:100_000]))
    put("good.flac", lambda p: sf.write(p, stereo, SR, subtype="PCM_16"))
    put("truncated.flac", lambda p: p.write_bytes(files["good.flac"].read_bytes()[:20_000]))
    put("header_only.flac", lambda p: p.write_bytes(files["good.flac"].read_bytes()[:60]))
    put("wav_named.flac", lambda p: sf.write(p, stereo, SR, format="WAV", subtype="PCM_16"))
    put("text_named.wav", lambda p: p.write_text("this is not audio " * 40))
    put("u8_mono_8k.wav", lambda p: sf.write(p, x[::6], 8000, subtype="PCM_U8"))
    put("six_ch_192k.wav", lambda p: sf.write(p, np.tile(np.repeat(x, 4)[:, None], (1, 6)) * 0.5, 192000,
                                                subtype="PCM_24"))
    nan = stereo.copy()
    nan[100, 0], nan[200, 1] = np.nan, np.inf
    put("nan_samples.wav", lambda p: sf.write(p, nan, SR, subtype="FLOAT"))
    put("silence.wav", lambda p: sf.write(p, np.zeros((SR, 2), np.float32), SR, subtype="PCM_16"))
    return files


@pytest.mark.parametrize("case, expect", cases([
    ("empty.wav", "cannot open audio"),
    ("truncated.wav", r"truncated WAV: the header promises 192,000 bytes of audio, the file holds 99,956"),
    ("truncated.flac", "cannot decode audio"),
    ("header_only.flac", "cannot open audio"),
    ("text_named.wav", "cannot open audio"),
    ("nan_samples.wav", "2 NaN or infinite samples"),
    ("wav_named.flac", (2, SR)),  # the content decides, not the extension
    ("u8_mono_8k.wav", (2, SR)),  # 8-bit mono 8 kHz: duplicated to stereo, resampled to 48 kHz
    ("six_ch_192k.wav", (2, SR)),  # 6 channels at 192 kHz: folded down to stereo, resampled
    ("silence.wav", (2, SR)),  # silence is valid audio
]))
def test_audio_loaders(tmp_path, case, expect):
    from training.data.audio import AudioError, info, load_audio, read_frames

    path = _audio_cases(tmp_path)[case]
    if isinstance(expect, str):
        with pytest.raises(AudioError, match=expect) as e:
            load_audio(path)
        assert "\n" not in str(e.value)
        if case != "truncated.flac":  # (a cut FLAC's header is intact: only decoding finds the cut)
            with pytest.raises(AudioError):
                info(path) if case != "nan_samples.wav" else read_frames(path, 0, SR)
        return
    a = load_audio(path)
    assert a.shape == expect and a.dtype == np.float32 and np.isfinite(a).all()
    if case == "silence.wav":
        assert not a.any()
    else:
        assert 0.1 < float(np.abs(a[0]).max()) < 0.35  # the 0.3 sine survives the conversion
    assert read_frames(path, 0, 100)[0].shape == (2, 100)


def test_training_corpus_skips_unreadable_files_with_one_warning(tmp_path):
    from training.data.dataset import AudioFolder

    files = _audio_cases(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        folder = AudioFolder(tmp_path)
    names = sorted(t.rel for t in folder.tracks)
    assert names == sorted(["good.wav", "good.flac", "truncated.flac", "wav_named.flac", "u8_mono_8k.wav",
                            "six_ch_192k.wav", "nan_samples.wav", "silence.wav"]), names
    skipped = [str(x.message) for x in w if "skipped" in str(x.message)]
    assert len(skipped) == 1 and skipped[0].startswith("skipped 4 unreadable files"), skipped
    assert len(files) == 12


def test_training_crops_skip_a_file_with_nan_samples(tmp_path):
    """NaN samples are found when a crop reads them: that file is dropped with one warning, never zero-filled."""
    from training.data.dataset import AudioFolder, RandomCrops

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    x = (0.3 * np.sin(np.arange(2 * SR) / 7)).astype(np.float32)
    sf.write(corpus / "good.wav", np.stack([x, x], 1), SR, subtype="FLOAT")
    x[::1000] = np.nan  # every crop of this file holds NaNs
    sf.write(corpus / "nan_samples.wav", np.stack([x, x], 1), SR, subtype="FLOAT")
    crops = RandomCrops(AudioFolder(corpus), 4096, seed=0, batch_size=8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = [crops.batch(k)[0].numpy() for k in range(4)]
    assert all(np.isfinite(b).all() and np.abs(b).max() > 0.1 for b in batches)
    msgs = [str(x.message) for x in w if "NaN" in str(x.message)]
    assert len(msgs) == 1 and re.search(r"nan_samples.wav: \d+ NaN or infinite samples", msgs[0]), msgs


# ================================================================================================= bundles, untrusted


def _onnx_with_input_renamed(path: Path, old: str, new: str) -> bytes:
    import onnx

    m = onnx.load(str(path))
    for i in m.graph.input:
        if i.name == old:
            i.name = new
    for n in m.graph.node:
        n.input[:] = [new if x == old else x for x in n.input]
    return m.SerializeToString()


def _set_file(p: Path, name: str, data: bytes) -> None:
    """Replace a bundle file and record its new hash + size in the manifest (a consistent but bad bundle)."""
    _rewrite(p / name, data)
    _edit_manifest(p, lambda m: m["files"].__setitem__(
        name, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))


def _external(p: Path, name: str, location: str, listed: bool = True) -> None:
    """Rewrite p/name so its weights live in external data at `location` (relative to the graph)."""
    import onnx

    model = onnx.load(str(p / name))
    (p / name).unlink()
    data_file = p / "weights.bin"
    onnx.save(model, str(p / name), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    model = onnx.load(str(p / name), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    data = model.SerializeToString()
    _set_file(p, name, data)
    if listed and (p / location).resolve().is_relative_to(p.resolve()) and not location.startswith("/"):
        if (p / location).resolve() != data_file.resolve():
            os.makedirs((p / location).parent, exist_ok=True)
            shutil.move(data_file, p / location)
        d = (p / location).read_bytes()
        _edit_manifest(p, lambda m: m["files"].__setitem__(
            location, {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}))


@pytest.mark.parametrize("case, match, exc", cases([
    ("truncated_onnx_consistent_hash", r"decoder.onnx is not a valid ONNX file \(.*truncated", "BundleError"),
    ("garbage_onnx_consistent_hash", r"generator.onnx is not a valid ONNX file", "BundleError"),
    ("graph_inputs_differ_from_manifest", r"decoder.onnx has inputs \['latent', 'noisy', 'sigma'\], the manifest "
                                          r"says \['latent', 'sigma', 'x'\]", "BundleError"),
    ("external_data_dotdot", r"refusing path '../weights.bin'", "BundleError"),
    ("external_data_absolute", r"refusing absolute path '/etc/hostname'", "BundleError"),
    ("external_data_not_listed", r"keeps weights in 'weights.bin', which manifest.json does not list", "BundleError"),
    ("external_data_symlink_out", r"resolves outside the bundle folder", "BundleError"),
    ("external_data_backslash", r"backslash", "BundleError"),
]))
def test_untrusted_graphs_are_refused(tiny, tmp_path, case, match, exc):
    """A downloaded bundle whose manifest hashes are consistent but whose graphs are bad or point outside."""
    import mousai_runtime
    from mousai_runtime import Pipeline

    p = _copy_bundle(tiny, tmp_path)
    if case == "truncated_onnx_consistent_hash":
        _set_file(p, "decoder.onnx", (p / "decoder.onnx").read_bytes()[:-5000])
    elif case == "garbage_onnx_consistent_hash":
        _set_file(p, "generator.onnx", b"\x0f" * 1000)
    elif case == "graph_inputs_differ_from_manifest":
        _set_file(p, "decoder.onnx", _onnx_with_input_renamed(p / "decoder.onnx", "x", "noisy"))
    elif case == "external_data_dotdot":
        shutil.copy(tiny["bundle"] / "decoder.onnx", tmp_path / "weights.bin")
        _external(p, "decoder.onnx", "../weights.bin")
    elif case == "external_data_absolute":
        _external(p, "decoder.onnx", "/etc/hostname")
    elif case == "external_data_not_listed":
        _external(p, "decoder.onnx", "weights.bin", listed=False)
    elif case == "external_data_symlink_out":
        _external(p, "decoder.onnx", "weights.bin")
        shutil.move(p / "weights.bin", tmp_path / "outside.bin")
        (p / "weights.bin").symlink_to(tmp_path / "outside.bin")
    elif case == "external_data_backslash":
        _external(p, "decoder.onnx", "sub\\weights.bin", listed=False)
    if case != "external_data_symlink_out":  # (a listed file that resolves outside is refused by the loader)
        mousai_runtime.Bundle.load(p)  # the manifest itself is consistent: the graphs are what is wrong
    with pytest.raises(getattr(mousai_runtime, exc), match=match) as e:
        Pipeline(p)
    assert "\n" not in str(e.value)
    # the same through the CLI: one line, exit 2, no file
    out = tmp_path / "o"
    out.mkdir()
    r = cli("generate", "x", "-o", out / "x.wav", "--model", p, "--steps", "1")
    assert_refused(r, match)
    assert tree(out) == []


def test_external_data_scanner_matches_onnx(tiny, tmp_path):
    """mousai_runtime.onnx_check (no onnx import) finds exactly the tensors onnx itself marks external."""
    import onnx
    from onnx import external_data_helper as edh

    from mousai_runtime.onnx_check import external_tensors

    assert external_tensors((tiny["bundle"] / "decoder.onnx").read_bytes()) == []
    m = onnx.load(str(tiny["bundle"] / "decoder.onnx"))
    onnx.save(m, str(tmp_path / "d.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=4096)
    data = (tmp_path / "d.onnx").read_bytes()
    m2 = onnx.load(str(tmp_path / "d.onnx"), load_external_data=False)
    expect = sorted((t.name, {e.key: e.value for e in t.external_data}["location"])
                    for t in edh._get_all_tensors(m2) if edh.uses_external_data(t))
    assert len(expect) > 10 and sorted(external_tensors(data)) == expect
    with pytest.raises(ValueError):
        external_tensors(data[:-7])  # truncated inside a field
    with pytest.raises(ValueError):
        external_tensors(b"")


@pytest.mark.parametrize("case, match", cases([
    ("nested_unknown_field", r"stft: unknown field\(s\) \['power'\]"),
    ("model_unknown_field", r"models.decoder: unknown field\(s\) \['preprocess'\]"),
    ("tensor_unknown_field", r"models.decoder.inputs\[0\]: unknown field\(s\) \['scale'\]"),
    ("duplicate_key", r"duplicate key 'version'"),
    ("nan_literal", r"NaN is not JSON"),
    ("fp32_file_in_fp32_bundle", r"only an fp16 bundle carries fp32 fallback graphs"),
    ("deeply_nested", r"unreadable manifest"),
]))
def test_manifest_parsed_strictly(tiny, tmp_path, case, match):
    from mousai_runtime import Bundle, BundleError

    p = _copy_bundle(tiny, tmp_path)
    text = (p / "manifest.json").read_text()
    if case == "nested_unknown_field":
        _edit_manifest(p, lambda m: m["stft"].update(power=2))
    elif case == "model_unknown_field":
        _edit_manifest(p, lambda m: m["models"]["decoder"].update(preprocess="rm -rf /"))
    elif case == "tensor_unknown_field":
        _edit_manifest(p, lambda m: m["models"]["decoder"]["inputs"][0].update(scale=2))
    elif case == "duplicate_key":
        _rewrite(p / "manifest.json", text.replace('"version": 1', '"version": 1, "version": 2', 1).encode())
    elif case == "nan_literal":
        _rewrite(p / "manifest.json", re.sub(r'"audio_scale": [0-9.]+', '"audio_scale": NaN', text).encode())
    elif case == "fp32_file_in_fp32_bundle":
        _edit_manifest(p, lambda m: m["models"]["decoder"].update(fp32_file="encoder.onnx"))
    elif case == "deeply_nested":
        _rewrite(p / "manifest.json", text.replace('"parity"', '"x"').rstrip().rstrip("}")
                 .replace('"kind"', '"source": ' + "[" * 100_000 + "]" * 100_000 + ', "kind"', 1).encode() + b"}")
    with pytest.raises(BundleError, match=match) as e:
        Bundle.load(p)
    assert "\n" not in str(e.value)


def test_no_pickle_is_ever_loaded_without_weights_only():
    """Every torch.load in the shipped code passes weights_only=True; nothing calls pickle / joblib / np.load with
    allow_pickle, or torch.load via another name. (tests/test_archisound.py proves a pickle carrying code is
    refused, not run.)"""
    offenders, loads = [], 0
    for f in sorted([*ROOT.glob("*.py"), *ROOT.glob("mousai_*/**/*.py"), *ROOT.glob("training/**/*.py")]):
        tree_ = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree_):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(m and m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve", "marshal")
                       for m in mods):
                    offenders.append(f"{f.name}:{node.lineno} imports {mods}")
                if isinstance(node, ast.ImportFrom) and node.module == "torch" and \
                        any(a.name == "load" for a in node.names):
                    offenders.append(f"{f.name}:{node.lineno} imports torch.load by name")
            if not isinstance(node, ast.Call):
                continue
            fn = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if fn.endswith("torch.load"):
                loads += 1
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{f.name}:{node.lineno} torch.load without weights_only=True")
            if fn.endswith(("np.load", "numpy.load")) and not (
                    isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                offenders.append(f"{f.name}:{node.lineno} np.load without allow_pickle=False")
    assert not offenders, offenders
    assert loads >= 1  # the archisound importer's .bin reader is found (the scan sees real calls)


# ================================================================================================= numerics


@pytest.mark.parametrize("case, component, call, match", cases([
    ("text_encoder_call0", "text_encoder", 0, r"non-finite values in the text_encoder in its output"),
    ("generator_step1", "generator", 0, r"non-finite values in the generator at denoising step 1/3"),
    ("generator_step3", "generator", 2, r"non-finite values in the generator at denoising step 3/3"),
    ("decoder_step2", "decoder", 1, r"non-finite values in the decoder at denoising step 2/2"),
]))
def test_nonfinite_is_detected_and_named(pipe, case, component, call, match):
    from mousai_runtime import NonFiniteError
    from mousai_runtime.faults import inject_nonfinite

    for value in (math.nan, math.inf):
        prompt = f"unique prompt {component} {call} {value}"  # not in the text cache: the text encoder runs
        with inject_nonfinite(component, call=call, value=value):
            with pytest.raises(NonFiniteError, match=match) as e:
                pipe.generate(prompt, 0.5, steps=3, decoder_steps=2)
        assert e.value.component == component and "\n" not in str(e.value)
    assert np.isfinite(pipe.generate("after the fault", 0.5, steps=3, decoder_steps=2)).all()  # hook gone


def test_nonfinite_in_encoder_is_named(pipe):
    from mousai_runtime import NonFiniteError
    from mousai_runtime.faults import inject_nonfinite

    with inject_nonfinite("encoder", call=0, value=-math.inf):
        with pytest.raises(NonFiniteError, match="non-finite values in the encoder in its output"):
            pipe.encode(np.zeros((2, 4096), np.float32))


def test_fault_hook_spec_is_validated():
    from mousai_runtime import faults

    assert faults.parse("generator:2:fp16:inf") == (faults.Fault("generator", 2, "fp16", math.inf),)
    for bad in ("generator", "vocoder:1", "generator:1:fp8", "generator:1:any:3.0", "decoder:x"):
        with pytest.raises(ValueError):
            faults.parse(bad)


def test_cli_nonfinite_is_one_line_and_writes_nothing(tiny, tmp_path):
    out = tmp_path / "x.wav"
    r = run_py(CLI_MAIN, "generate", "pads", "-o", str(out), "--model", str(tiny["bundle"]), "--steps", "3",
               "--seconds", "0.5", env={"MOUSAI_TEST_INJECT_NONFINITE": "generator:1"})
    assert r.returncode == 2, r.stderr
    assert_one_line_error(r.stderr.decode(), r"non-finite values in the generator at denoising step 2/3")
    assert tree(tmp_path) == []


def test_fp16_fallback_reruns_the_failing_component_in_fp32(tiny16):
    from mousai_runtime import Fp16FallbackWarning, NonFiniteError, Pipeline
    from mousai_runtime.faults import inject_nonfinite

    fb = Pipeline(tiny16, chunk_seconds=3.0, fp16_fallback=True)
    plain = Pipeline(tiny16, chunk_seconds=3.0)
    assert fb.bundle.precision == "fp16" and all(fb.bundle.has_fp32_fallback(c) for c in fb.bundle.models)
    kw = dict(steps=3, decoder_steps=2, seed=1)
    clean = fb.generate("pads", 1.0, **kw)
    assert np.array_equal(clean, plain.generate("pads", 1.0, **kw))  # no fault: fallback changes nothing
    for component, call, where in (("generator", 1, "at denoising step 2/3"),
                                   ("decoder", 0, "in chunk 1 at denoising step 1/2"),
                                   ("text_encoder", 0, "in its output")):
        prompt = "pads" if component != "text_encoder" else "a prompt not in the cache"
        ref = clean if component != "text_encoder" else fb.generate(prompt, 1.0, **kw)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with inject_nonfinite(component, call=call, precision="fp16"):
                if component == "text_encoder":
                    fb._text_cache.clear()
                out = fb.generate(prompt, 1.0, **kw)
        msgs = [str(x.message) for x in w if issubclass(x.category, Fp16FallbackWarning)]
        assert msgs == [f"the fp16 {component} gave NaN/inf {where}: re-ran it with its fp32 graph, which serves "
                        "the rest of this render"], msgs
        assert out.shape == ref.shape and np.isfinite(out).all()
        assert not np.array_equal(out, ref)  # the fp32 graph really ran ...
        assert rel_l2(out, ref) < 1e-2  # ... and gave the same music (fp16 vs fp32 graphs), not silence
        assert abs(np.sqrt(np.mean(out ** 2)) / np.sqrt(np.mean(ref ** 2)) - 1) < 0.01
        # without the fallback the same fault is an error naming the component
        with inject_nonfinite(component, call=call, precision="fp16"):
            plain._text_cache.clear()
            with pytest.raises(NonFiniteError, match=f"non-finite values in the {component}"):
                plain.generate(prompt, 1.0, **kw)
    # the fp32 graph fails as well: an error, never silence
    with inject_nonfinite("generator", call=1, precision="any"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(NonFiniteError, match="generator at denoising step 2/3"):
                fb.generate("pads", 1.0, **kw)


def test_fp16_fallback_bundle_layout(tiny, tiny16):
    """`export --fp16 --fp16-fallback`: fp16 graphs at the usual names, fp32 graphs under fp32/, all hashed."""
    import onnx
    import onnxruntime as ort

    from mousai_runtime import Bundle

    b = Bundle.load(tiny16)
    m = b.manifest
    assert m["precision"] == "fp16"
    for comp, spec in m["models"].items():
        assert spec["fp32_file"] == f"fp32/{comp}.onnx" and spec["fp32_file"] in m["files"]
        types16 = {t.data_type for t in onnx.load(str(tiny16 / spec["file"])).graph.initializer}
        types32 = {t.data_type for t in onnx.load(str(tiny16 / spec["fp32_file"])).graph.initializer}
        assert onnx.TensorProto.FLOAT16 in types16 and onnx.TensorProto.FLOAT16 not in types32, comp
    # the fp32 copy computes what the fp32 bundle's graph computes
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 2, 8192), dtype=np.float32), "sigma": np.full(1, 0.6, np.float32),
             "latent": rng.standard_normal((1, 32, 8), dtype=np.float32)}
    run = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for f in (tiny16 / "fp32" / "decoder.onnx", tiny["bundle"] / "decoder.onnx")]
    assert rel_l2(*run) < 1e-5


def test_fp16_fallback_needs_the_fp32_graphs(tiny, tiny16, tmp_path):
    from mousai_runtime import Bundle, BundleError, Pipeline

    Pipeline(tiny["bundle"], fp16_fallback=True)  # fp32 bundle: nothing to fall back from, no effect
    p = tmp_path / "b16"
    shutil.copytree(tiny16, p, copy_function=os.link)

    def drop(m):
        for spec in m["models"].values():
            spec.pop("fp32_file", None)

    _edit_manifest(p, drop)
    Bundle.load(p)
    with pytest.raises(BundleError, match=r"has no fp32 fallback graphs for \['text_encoder', 'generator', "
                                          r"'encoder', 'decoder'\]: re-export it with `mousai export --fp16 "
                                          r"--fp16-fallback`"):
        Pipeline(p, fp16_fallback=True)
    r = cli("generate", "x", "-o", tmp_path / "x.wav", "--model", p, "--fp16-fallback")
    assert_refused(r, "has no fp32 fallback graphs")


def test_cli_fp16_fallback_end_to_end(tiny16, tmp_path):
    out = tmp_path / "x.wav"
    args = ["generate", "pads", "-o", str(out), "--model", str(tiny16), "--steps", "3", "--seconds", "0.5"]
    env = {"MOUSAI_TEST_INJECT_NONFINITE": "generator:1:fp16"}
    r = run_py(CLI_MAIN, *args, env=env)
    assert r.returncode == 2 and not out.exists()
    assert_one_line_error(r.stderr.decode(), "non-finite values in the generator at denoising step 2/3")
    r = run_py(CLI_MAIN, *args, "--fp16-fallback", env=env)
    assert r.returncode == 0, r.stderr
    assert "warning: the fp16 generator gave NaN/inf at denoising step 2/3: re-ran it with its fp32 graph" \
        in r.stderr.decode()
    a, sr = sf.read(out, always_2d=True)
    assert a.shape == (SR // 2, 2) and np.isfinite(a).all() and np.abs(a).max() > 1e-3  # not silence


# ================================================================================================= the docs


def test_reliability_doc_names_real_tests():
    """docs/reliability.md: every test it names exists (with its case ids), and every test of this module and of
    test_faults.py is named there."""
    doc = (ROOT / "docs" / "reliability.md").read_text()
    refs = re.findall(r"`(test_\w+\.py)::(\w+)(?:\[([^\]]+)\])?`", doc)
    assert len(refs) > 80
    defined: dict[str, set[str]] = {}
    for file, name, ids in refs:
        src = (ROOT / "tests" / file).read_text()
        if file not in defined:
            defined[file] = {n.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)}
        assert name in defined[file], f"{file}::{name} does not exist"
        for case in filter(None, (ids or "").split(",")):
            assert f'"{case}' in src or f"'{case}" in src, f"{file}::{name}[{case}]: no such case"
    named = {(f, n) for f, n, _ in refs}
    for file in ("test_reliability.py", "test_faults.py", "test_escapes.py", "test_manifest_limits.py",
                 "test_host_arguments.py", "test_one_line_errors.py"):
        tests = {n for n in defined.get(file, set()) if n.startswith("test_")}
        missing = sorted(n for n in tests if (file, n) not in named and n != "test_reliability_doc_names_real_tests")
        assert not missing, f"tests missing from docs/reliability.md: {missing}"
