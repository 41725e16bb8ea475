"""Write a bundle (docs/bundle-format.md): export every component, measure parity, write manifest.json.

The bundle is assembled in a temp folder beside `out` and renamed into place (mousai_runtime.files.atomic_dir):
on any failure (bad checkpoint, exporter error, parity outside its bounds, Ctrl-C) nothing is left behind, and an
existing bundle is replaced only with --force and only once the new one is complete.

decoder_info.receptive_field is computed analytically from the decoder's conv stack (`receptive_field` below):
the widest span, in audio samples either side, over which one output sample of one step depends on the noisy
input x or on the latent (whole latent frames counted). GroupNorm statistics are computed over the whole input,
so strictly every sample influences every other one through them; they are excluded: the figure is the overlap
for chunked decoding, and tests/test_export.py checks it against autograd on a GroupNorm-free copy of the
decoder. A decoder with self-attention has a global receptive field: it is then set to the samples of
defaults.max_seconds (decode in one chunk).

Two kinds of bundle (manifest "kind"): a checkpoint with generator weights gives a "text-to-music" bundle (text
encoder, tokenizer, generator, encoder, decoder); a DMAE-only checkpoint (e.g. `mousai import archisound`) gives an
"autoencoder" bundle: encoder.onnx + decoder.onnx, no text / generator_info sections, defaults for the decoder only,
and an end-to-end parity that encodes audio and decodes the latent (parity.end_to_end_autoencoder).

Exported graphs are memoised per process (key: component, weights sha256, config, opset, torch and onnx
versions), so exporting the same checkpoint again (e.g. --fp16 after fp32, or a retry) skips the slow exporter.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mousai_runtime.files import UnsafePathError, atomic_dir, check_apart, existing_target, sha256_and_size, sha256_file

from mousai_runtime.bundle import SEAL, manifest_seal

from . import ExportError

FORMAT, VERSION = "mousai-bundle", 1
# The shipped defaults are the settings measured in benchmarks/RESULTS.md: DPM-Solver++(2M) with 20 generator and
# 7 decoder steps (on the exact-Gaussian ODE test as accurate as DDIM with 50 and 10, the previous defaults). A
# checkpoint's meta (sampler, decoder_sampler, generator_steps, decoder_steps) overrides them, e.g. from its eval.
DEFAULT_GENERATOR_STEPS, DEFAULT_DECODER_STEPS = 20, 7
DEFAULT_SAMPLER, DEFAULT_DECODER_SAMPLER = "dpmpp-2m", "dpmpp-2m"  # manifest defaults.sampler / decoder_sampler
DEFAULT_SECONDS, MAX_SECONDS = 10.0, 3600.0
MODEL_FILES = {"text_encoder": "text_encoder.onnx", "generator": "generator.onnx", "encoder": "encoder.onnx",
               "decoder": "decoder.onnx"}
TEXT_TO_MUSIC, AUTOENCODER = "text-to-music", "autoencoder"  # manifest "kind"
KIND_COMPONENTS = {TEXT_TO_MUSIC: tuple(MODEL_FILES), AUTOENCODER: ("encoder", "decoder")}
CACHE_LIMIT_BYTES = 600_000_000  # graphs larger than this are not memoised

_EXPORT_CACHE: dict[str, tuple[bytes, list, list]] = {}


# ------------------------------------------------------------------------------------------------- helpers


class Steps:
    """Numbered progress lines on stderr: '[3/9] generator.onnx ... 41.2 s'."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.i, self.t = total, enabled, 0, 0.0
        self.open = False

    def start(self, what: str) -> None:
        self.i += 1
        self.t = time.perf_counter()
        self.open = True
        if self.enabled:
            print(f"[{self.i}/{self.total}] {what} ...", end="", file=sys.stderr, flush=True)

    def done(self, note: str = "") -> None:
        self.open = False
        if self.enabled:
            print(f" {time.perf_counter() - self.t:.1f} s{(' ' + note) if note else ''}", file=sys.stderr, flush=True)

    def failed(self) -> None:
        """End a step line that an error interrupted (the error then gets a line of its own)."""
        if self.open and self.enabled:
            print(" failed", file=sys.stderr, flush=True)
        self.open = False

    def note(self, what: str) -> None:
        if self.enabled:
            print(f"\n      {what}", end="", file=sys.stderr, flush=True)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mousai_version() -> str:
    try:
        from importlib.metadata import version

        return version("mousai")
    except Exception:
        pass
    try:
        import tomllib

        doc = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
        return str(doc["project"]["version"])
    except Exception:
        return "unknown"


def _state_hash(module: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode() + str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def _cached(kind: str, module: Any, config_repr: str, opset: int, path: Path,
            export: Callable[[], Any]) -> tuple[Any, bool]:
    """Run export() (which writes `path`) unless an identical graph was exported in this process."""
    import onnx
    import torch

    from .onnx import Exported

    key = hashlib.sha256(json.dumps([kind, _state_hash(module), config_repr, opset, torch.__version__,
                                     onnx.__version__]).encode()).hexdigest()
    if key in _EXPORT_CACHE:
        data, ins, outs = _EXPORT_CACHE[key]
        path.write_bytes(data)
        return Exported(path, [path.name], ins, outs, 0.0), True
    e = export()
    if e.files == [path.name] and path.stat().st_size <= CACHE_LIMIT_BYTES:
        _EXPORT_CACHE[key] = (path.read_bytes(), e.inputs, e.outputs)
    return e, False


# ------------------------------------------------------------------------------------------------- receptive field


def _conv(iv: tuple[int, int] | None, k: int, s: int, pad: int) -> tuple[int, int] | None:
    """Outputs of Conv1d(kernel k, stride s, padding pad) influenced by inputs lo..hi."""
    if iv is None:
        return None
    lo, hi = iv
    return -((-(lo + pad - k + 1)) // s), (hi + pad) // s


def _union(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1])


class _Global(Exception):
    """The influence reached a self-attention layer: it spans the whole input."""


def _influence(cfg: Any, source: str, pos: int) -> tuple[int, int] | None:
    """Output samples of one decoder step influenced by input sample `pos` (source "x") or latent frame `pos`."""
    n = len(cfg.channels)
    inj = cfg.inject_depth

    def item(iv, depth, first_inject):
        iv = _conv(_conv(iv, 3, 1, 1), 3, 1, 1)  # resnet: conv3 -> conv3 (+ identity); modulation is pointwise
        if depth == inj and first_inject[0]:
            if source == "latent":
                iv = _union(iv, (pos, pos))
            first_inject[0] = False
        if cfg.attentions[depth] and iv is not None:
            raise _Global
        return iv  # cross-attention on text and the feed-forward are pointwise in time

    first = [True]
    iv = (pos, pos) if source == "x" else None
    if cfg.patch_size > 1:
        iv = _conv(iv, cfg.patch_size, cfg.patch_size, 0)
    skips = []
    for d in range(n):
        skips.append(iv)  # the skip (or its 1x1 adapter) is taken before the level's down-sampling
        f = cfg.factors[d]
        iv = _conv(iv, f, f, 0)
        for _ in range(cfg.items[d]):
            iv = item(iv, d, first)
    for d in reversed(range(n)):
        for _ in range(cfg.items[d]):
            iv = item(iv, d, first)
        f = cfg.factors[d]
        if iv is not None and f > 1:
            iv = (iv[0] * f, iv[1] * f + f - 1)  # nearest up-sampling (repeat_interleave)
        iv = _conv(iv, 3, 1, 1)
        iv = _union(skips[d], iv)
    if iv is not None and cfg.patch_size > 1:
        p = cfg.patch_size
        iv = (iv[0] * p, iv[1] * p + p - 1)  # ConvTranspose1d(kernel = stride = patch)
    return iv


def receptive_field(dmae_cfg: Any) -> int | None:
    """Audio samples either side that influence one output sample of one decoder step (None: global)."""
    cfg, hop, mult = dmae_cfg.decoder, dmae_cfg.hop, dmae_cfg.length_multiple
    base = 1000 * mult  # far from the start: boundaries play no part
    rf = 0
    try:
        for p in range(base, base + mult):
            lo, hi = _influence(cfg, "x", p)
            rf = max(rf, p - lo, hi - p)
        for q in range(base // hop, (base + mult) // hop):
            lo, hi = _influence(cfg, "latent", q)
            rf = max(rf, hi - q * hop, q * hop + hop - 1 - lo)
    except _Global:
        return None
    return rf


# ------------------------------------------------------------------------------------------------- checks


def _check_arguments(checkpoint: str, out: str, engine: str, opset: int, force: bool) -> tuple[Path, Path]:
    from .onnx import check_opset

    if engine not in ("onnx", "trt"):
        raise ExportError(f"unknown engine {engine!r}: use onnx or trt")
    try:
        check_opset(opset)
    except ValueError as e:
        raise ExportError(str(e)) from None
    ck = Path(checkpoint).expanduser()
    if not ck.exists():
        raise ExportError(f"checkpoint not found: {ck}")
    if not ck.is_dir():
        raise ExportError(f"not a checkpoint folder: {ck} (expected config.json + *.safetensors)")
    o = Path(out).expanduser()
    if o.exists() or o.is_symlink():
        if not o.is_dir():
            raise ExportError(f"output {o} exists and is not a folder")
        if not force:
            raise ExportError(f"output folder {o} exists (use --force to replace it)")
    anc = o.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the bundle folder {o}: {anc} is not a writable folder")
    try:
        check_apart(o, {"checkpoint": ck})
        existing_target(o, folder_ok=True)
    except UnsafePathError as e:
        raise ExportError(str(e)) from None
    return ck, o


def checkpoint_kind(ck: Path) -> str:
    """"text-to-music" (DMAE + generator weights) or "autoencoder" (DMAE weights only)."""
    if not (ck / "dmae.safetensors").is_file():
        raise ExportError(f"checkpoint {ck} has no DMAE weights (dmae.safetensors): a bundle needs at least the "
                          f"autoencoder")
    return TEXT_TO_MUSIC if (ck / "generator.safetensors").is_file() else AUTOENCODER


def _load(ck: Path, kind: str = TEXT_TO_MUSIC):
    from training.checkpoint import COMPONENTS, CheckpointError, load_models, read_config
    from training.model.text import FrozenTextEncoder, TextEncoderError

    try:
        config, meta = read_config(ck)
        _, models = load_models(ck, components=COMPONENTS if kind == TEXT_TO_MUSIC else ("dmae",))
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise ExportError(f"cannot load the checkpoint {ck}: {e}") from None
    if kind == AUTOENCODER:  # no text encoder: nothing to condition
        return config, meta, models
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar would break our step lines
        try:
            te = FrozenTextEncoder(config.text.encoder, config.text.max_length)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    except (TextEncoderError, OSError, ValueError) as e:
        raise ExportError(f"cannot load the text encoder {config.text.encoder!r}: {e}") from None
    if te.features != config.text.features:
        raise ExportError(f"the text encoder has {te.features} features, the checkpoint config says "
                          f"{config.text.features}")
    models["text_encoder"] = te
    return config, meta, models


# ------------------------------------------------------------------------------------------------- manifest


def manifest_skeleton(config: Any, meta: dict[str, Any], ck: Path, name: str, fp16: bool, opset: int,
                      tokenizer: dict[str, Any] | None, kind: str = TEXT_TO_MUSIC) -> dict[str, Any]:
    """Every manifest field but files / models / parity. An autoencoder bundle (tokenizer None) has no text and
    generator_info sections, no text_encoder source and only the decoder's defaults."""
    import onnx
    import onnxruntime
    import torch

    d = config.dmae
    e = d.encoder
    rf = receptive_field(d)
    full = kind == TEXT_TO_MUSIC
    sources = {"checkpoint_config_sha256": sha256_file(ck / "config.json"), "model_name": config.name}
    if full:
        sources["text_encoder"] = config.text.encoder
    for comp in ("dmae", "generator"):
        f = ck / f"{comp}.safetensors"
        if f.is_file():
            sources[f"{comp}_weights_sha256"] = sha256_file(f)
    m = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "name": name,
        "created": _utc_now(),
        "precision": "fp16" if fp16 else "fp32",
        "versions": {"mousai": _mousai_version(), "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                     "opset": opset, "onnxruntime": onnxruntime.__version__},
        "source": sources,
        "audio": {"sample_rate": d.sample_rate, "channels": d.decoder.in_channels, "audio_scale": float(d.audio_scale)},
        "latent": {"channels": d.latent_channels, "hop": d.hop},
        "stft": {"n_fft": e.stft_n_fft, "hop": e.stft_hop, "center": bool(e.stft_center), "normalized": True,
                 "window": "hann", "pad_mode": "reflect"},
        "text": {"max_length": config.text.max_length, "features": config.text.features,
                 "tokenizer": "tokenizer.json", "pad_id": tokenizer["pad_id"]} if full else None,
        "decoder_info": {
            "length_multiple": d.length_multiple,
            "receptive_field": rf if rf is not None else int(MAX_SECONDS * d.sample_rate),
            "receptive_field_method": "analytic conv stack (GroupNorm statistics excluded)" if rf is not None
            else "global (decoder self-attention): decode in one chunk",
            "downsampling": [d.decoder.patch_size, *d.decoder.factors],
        },
        "generator_info": {"length_multiple": config.generator.unet.downsample_factor} if full else None,
        "defaults": {"sampler": str(meta.get("sampler", DEFAULT_SAMPLER)),
                     "decoder_sampler": str(meta.get("decoder_sampler", DEFAULT_DECODER_SAMPLER)),
                     "schedule": "linear",
                     "generator_steps": int(meta.get("generator_steps", DEFAULT_GENERATOR_STEPS)),
                     "decoder_steps": int(meta.get("decoder_steps", DEFAULT_DECODER_STEPS)),
                     "guidance": float(meta.get("guidance", config.generator.default_guidance)),
                     "seconds": DEFAULT_SECONDS, "max_seconds": MAX_SECONDS},
    }
    if not full:
        del m["text"], m["generator_info"]
        for k in ("generator_steps", "guidance", "seconds"):  # generation settings: there is no generator
            del m["defaults"][k]
    return m


# ------------------------------------------------------------------------------------------------- the export


def _fp16_measure(comp: str, fp32_path: Path, fp16_path: Path, models: dict, config: Any) -> dict[str, Any]:
    from . import fp16 as half
    from . import parity as par

    cases = par.component_cases(comp, models, config)
    feeds = [par.onnx_feeds(comp, config, c) for c in cases]
    s32, s16 = par.session(fp32_path), par.session(fp16_path)
    vs_fp32, vs_torch = [], []
    for case, f in zip(cases, feeds):
        o32, o16 = par.run(s32, f), par.run(s16, f)
        vs_fp32.append(par.figures(o32, o16))
        vs_torch.append(par.figures(par.torch_reference(comp, models, config, case), o16))
    out = par.worst(*vs_torch)  # max_abs / rel_l2: the bundle's (fp16) graph vs torch
    w = par.worst(*vs_fp32)
    out.update({"fp16_rel_l2_vs_fp32": w["rel_l2"], "fp16_max_abs_vs_fp32": w["max_abs"]})
    out.update(half.max_activation(fp32_path, feeds))
    out["ort_cpu_inserted_casts"] = half.inserted_casts(fp16_path)
    return out


def build_bundle(checkpoint: str, out: str, engine: str = "onnx", fp16: bool = False, opset: int = 18,
                 check: bool = True, force: bool = False, progress: bool = True,
                 fp16_fallback: bool = False) -> dict[str, Any]:
    ck, o = _check_arguments(checkpoint, out, engine, opset, force)
    if fp16_fallback and not fp16:
        raise ExportError("--fp16-fallback keeps fp32 copies of the graphs of an fp16 bundle: use it with --fp16")
    if fp16_fallback and engine == "trt":
        raise ExportError("--fp16-fallback is for ONNX Runtime bundles (--engine onnx): the TensorRT engine has no "
                          "fp32 fallback")
    if engine == "trt":
        from .trt import require

        require()  # before any slow work
    kind = checkpoint_kind(ck)
    comps = KIND_COMPONENTS[kind]
    # load + tokenizer (text-to-music only) + one step per graph + manifest (+ parity, fp16, trt)
    total = 2 + (kind == TEXT_TO_MUSIC) + len(comps) + int(fp16) + int(check) + int(engine == "trt")
    steps = Steps(total, progress)
    try:
        return _build(ck, o, kind, engine, fp16, opset, check, force, progress, fp16_fallback, steps)
    except BaseException:
        steps.failed()
        raise


def _build(ck: Path, o: Path, kind: str, engine: str, fp16: bool, opset: int, check: bool, force: bool,
           progress: bool, fp16_fallback: bool, steps: Steps) -> dict[str, Any]:
    steps.start(f"loading checkpoint {ck}" + ("" if kind == TEXT_TO_MUSIC else
                                             " (DMAE only: autoencoder bundle, encoder + decoder)"))
    config, meta, models = _load(ck, kind)
    steps.done()
    result: dict[str, Any] = {}

    # remember which parent folders we create, so a failure leaves nothing at all
    missing_parents = []
    p = o.parent
    while not p.exists():
        missing_parents.append(p)
        p = p.parent

    def write(tmp: Path) -> None:
        result["manifest"] = _write_bundle(tmp, o, ck, config, meta, models, engine, fp16, opset, check, steps,
                                           kind, fp16_fallback)

    try:
        atomic_dir(o, write, overwrite=force)
    except FileExistsError:
        _cleanup(missing_parents)
        raise ExportError(f"output folder {o} exists (use --force to replace it)") from None
    except ExportError:
        _cleanup(missing_parents)
        raise
    except OSError as e:
        _cleanup(missing_parents)
        raise ExportError(f"cannot write the bundle {o}: {e.strerror or e}") from None
    except BaseException:
        _cleanup(missing_parents)
        raise
    manifest = result["manifest"]
    if progress:
        print(f"wrote {o} ({sum(f['bytes'] for f in manifest['files'].values()) / 1e6:.1f} MB)", file=sys.stderr)
    return manifest


def _cleanup(created: list[Path]) -> None:
    for p in created:  # deepest first
        try:
            p.rmdir()
        except OSError:
            pass


FALLBACK_DIR = "fp32"  # fp16 bundles exported with --fp16-fallback keep the fp32 graphs here


def _write_bundle(tmp: Path, final: Path, ck: Path, config: Any, meta: dict, models: dict, engine: str,
                  fp16: bool, opset: int, check: bool, steps: Steps, kind: str = TEXT_TO_MUSIC,
                  fp16_fallback: bool = False) -> dict[str, Any]:
    from . import onnx as ox
    from . import parity as par

    comps = KIND_COMPONENTS[kind]
    full = kind == TEXT_TO_MUSIC

    def end_to_end(paths: dict[str, Path]) -> dict[str, Any]:
        if full:
            return par.end_to_end(paths, tmp / "tokenizer.json", models, config)
        return par.end_to_end_autoencoder(paths, models, config)

    work = tmp / ".fp32" if fp16 else tmp  # fp16: the fp32 graphs are the reference, kept out of the bundle
    work.mkdir(exist_ok=True)
    keep_fp32 = False
    try:
        tokenizer = None
        if full:
            steps.start("tokenizer.json")
            tokenizer = ox.save_tokenizer(models["text_encoder"], tmp / "tokenizer.json")
            steps.done()
        cfg_json = json.dumps(config.to_dict(), sort_keys=True)
        exported: dict[str, Any] = {}
        jobs = {
            "text_encoder": lambda: (models["text_encoder"].model,
                                     lambda p: ox.export_text_encoder(models["text_encoder"], p, opset)),
            "generator": lambda: (models["generator"], lambda p: ox.export_generator(models["generator"], p, opset)),
            "encoder": lambda: (models["dmae"].encoder, lambda p: ox.export_encoder(models["dmae"], p, opset)),
            "decoder": lambda: (models["dmae"], lambda p: ox.export_decoder(models["dmae"], p, opset)),
        }
        for comp in comps:
            module, fn = jobs[comp]()
            steps.start(f"{MODEL_FILES[comp]}")
            path = work / MODEL_FILES[comp]
            try:
                e, hit = _cached(comp, module, cfg_json + json.dumps(tokenizer), opset, path, lambda: fn(path))
            except ox.OnnxExportFailed as err:
                raise ExportError(str(err)) from None
            except ValueError as err:
                raise ExportError(f"{comp}: {err}") from None
            exported[comp] = e
            steps.done("(memoised)" if hit else "")

        parity: dict[str, dict[str, Any]] = {}
        paths32 = {c: work / MODEL_FILES[c] for c in comps}
        if check:
            steps.start("parity: ONNX Runtime vs PyTorch (batch 1 and 3, two new lengths, end to end)")
            for comp in comps:
                parity[comp] = par.component_parity(comp, paths32[comp], models, config)
            parity["end_to_end"] = end_to_end(paths32)
            steps.done()

        if fp16:
            from . import fp16 as half

            steps.start("fp16 graphs (fp32 islands)" + (" + overflow / accuracy figures" if check else ""))
            for comp in comps:
                files = half.convert(paths32[comp], tmp / MODEL_FILES[comp])
                exported[comp].files = files
                if check:
                    f32 = parity[comp]
                    figs = _fp16_measure(comp, paths32[comp], tmp / MODEL_FILES[comp], models, config)
                    figs.update({"fp32_max_abs": f32["max_abs"], "fp32_rel_l2": f32["rel_l2"]})
                    parity[comp] = figs
            if check:
                paths16 = {c: tmp / MODEL_FILES[c] for c in comps}
                e2e32 = parity["end_to_end"]
                e2e = end_to_end(paths16)
                e2e.update({"fp32_max_abs": e2e32["max_abs"], "fp32_rel_l2": e2e32["rel_l2"]})
                parity["end_to_end"] = e2e
            steps.done()
        keep_fp32 = fp16 and fp16_fallback
    finally:
        if keep_fp32:  # --fp16-fallback: the fp32 graphs (and any external data beside them) go into the bundle
            os.replace(work, tmp / FALLBACK_DIR)
        elif fp16:
            shutil.rmtree(work, ignore_errors=True)

    if check:
        from . import fp16 as half

        if fp16:
            bad = (par.failures(parity, par.FP16_BOUND) + par.failures(parity, par.FP32_BOUND, "fp32_rel_l2")
                   + par.failures(parity, par.FP16_BOUND, "fp16_rel_l2_vs_fp32") + half.overflow_failures(parity))
        else:
            bad = par.failures(parity, par.FP32_BOUND)
        if steps.enabled:
            print(par.table(parity, par.FP16_BOUND if fp16 else par.FP32_BOUND), flush=True)
        if bad:
            raise ExportError("parity check failed, no bundle written: " + "; ".join(bad))

    steps.start("manifest.json")
    manifest = manifest_skeleton(config, meta, ck, final.name, fp16, opset, tokenizer, kind)
    manifest["models"] = {c: {"file": MODEL_FILES[c], "inputs": exported[c].inputs, "outputs": exported[c].outputs}
                          for c in comps}
    if keep_fp32:
        for c in comps:
            manifest["models"][c]["fp32_file"] = f"{FALLBACK_DIR}/{MODEL_FILES[c]}"
    pf = postfilter_section(ck, tmp)
    if pf is not None:
        manifest["postfilter"] = pf
    steps.done()

    if engine == "trt":
        from .trt import build_engines

        steps.start("TensorRT engines")
        caches = (final / "trt",) if (final / "trt").is_dir() else ()
        manifest["files"] = {}
        build_engines(tmp, manifest, fp16=fp16, cache_dirs=caches, progress=steps.note)
        import tensorrt

        manifest["versions"]["tensorrt"] = tensorrt.__version__
        steps.done()

    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = path.relative_to(tmp).as_posix()
        if rel in ("manifest.json", SEAL):
            continue
        digest, size = sha256_and_size(path)
        files[rel] = {"sha256": digest, "bytes": size}
    manifest["files"] = files
    if check:
        manifest["parity"] = parity
    text = (json.dumps(_jsonable(manifest), indent=1) + "\n").encode("utf-8")
    (tmp / "manifest.json").write_bytes(text)
    (tmp / SEAL).write_text(manifest_seal(text))  # the manifest is hashed too (mousai_runtime.bundle)
    return manifest


def postfilter_section(ck: Path, tmp: Path) -> dict[str, Any] | None:
    """The checkpoint's post-filter (training/postfilter.py), copied into the bundle, or None without one.
    Refused when it was fitted to another encoder (its latents would mean something else)."""
    from training.postfilter import FILE, encoder_fingerprint

    src = ck / FILE
    if not src.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(src), "np") as f:
            settings = json.loads((f.metadata() or {})["settings"])
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise ExportError(f"{src}: not an envelope post-filter file ({e})") from None
    want = encoder_fingerprint(ck)
    if settings.get("encoder_fp16_sha256") != want:
        raise ExportError(f"{src} was fitted to encoder {str(settings.get('encoder_fp16_sha256'))[:12]}..., the "
                          f"checkpoint's encoder is {want[:12]}...: refit it (mousai checkpoint fit-envelope)")
    shutil.copyfile(src, tmp / FILE)
    keys = ("n_fft", "hop", "bands", "context", "gain_range")
    fit = {k: v for k, v in settings.items() if k not in keys + ("features", "sample_rate", "latent_hop", "channels")}
    return {"kind": "envelope", "file": FILE, "features": settings["features"], **{k: settings[k] for k in keys},
            "fit": fit}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x
