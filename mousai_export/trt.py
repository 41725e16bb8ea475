"""`--engine trt`: TensorRT engines built from the bundle's ONNX graphs (needs an NVIDIA GPU + `tensorrt`).

For each component: builder -> network from the ONNX parser -> builder config (fp16 flag when asked, a workspace
limit, a timing cache shared by all builds) -> one optimisation profile with min/opt/max shapes for the dynamic
axes -> serialized engine. Engines live under `bundle/trt/`, named by a cache key over (ONNX sha256, TensorRT
version, GPU compute capability) plus the profile and flags they were built with; an engine whose key matches a
file in a cache folder (e.g. the previous bundle's trt/ when re-exporting with --force) is reused instead of
rebuilt. `trt/engines.json` indexes them (listed and hashed in the manifest's `files`, like every file).

Nothing here is mocked: without a GPU or without `tensorrt` importable, `require()` raises ExportError.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mousai_runtime.files import sha256_file

NO_TRT = ("TensorRT engines need an NVIDIA GPU and the tensorrt package (pip install 'mousai[trt]'); "
          "this machine has none: use --engine onnx")
TIMING_CACHE = "timing.cache"
INDEX = "engines.json"


@dataclass(frozen=True)
class Profile:
    """Shapes per input: {name: (min, opt, max)} with each a tuple of ints."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def to_json(self) -> dict[str, Any]:
        return {k: [list(s) for s in v] for k, v in sorted(self.shapes.items())}


def _error(msg: str) -> Exception:
    from . import ExportError

    return ExportError(msg)


def gpu_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of GPU 0 through the CUDA driver API (libcuda), or None without a driver or a GPU."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return None
    try:
        if cuda.cuInit(0) != 0:
            return None
        count = ctypes.c_int(0)
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return None
        dev = ctypes.c_int(0)
        if cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
            return None
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0:
            return None
        if cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0:
            return None
        return major.value, minor.value
    except (AttributeError, OSError):
        return None


def require():
    """The tensorrt module and the GPU's compute capability, or ExportError naming what is missing."""
    cc = gpu_compute_capability()
    if cc is None:
        raise _error(NO_TRT)
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a broken install whose libraries fail to load
        raise _error(NO_TRT) from None
    return tensorrt, cc


def default_profiles(manifest: dict[str, Any], batch: tuple[int, int, int] = (1, 1, 4),
                     seconds: tuple[float, float, float] | None = None,
                     decoder_seconds: tuple[float, float, float] | None = None) -> dict[str, Profile]:
    """min/opt/max shapes per component from the manifest.

    batch: prompts per call. seconds: generator clip length (default: 1 latent multiple, defaults.seconds,
    120 s). decoder_seconds: one decoder call (default: 1 length multiple, defaults.seconds, 30 s; the runtime
    decodes longer clips in overlapping chunks).
    """
    sr, hop = manifest["audio"]["sample_rate"], manifest["latent"]["hop"]
    dmult = manifest["decoder_info"]["length_multiple"]
    opt_s = float(manifest["defaults"].get("seconds", 10.0))  # an autoencoder bundle has no generation length
    seconds = seconds or (0.0, opt_s, 120.0)
    decoder_seconds = decoder_seconds or (0.0, opt_s, 30.0)

    def samples(s: float) -> int:
        n = max(1, math.ceil(s * sr))
        return max(dmult, -(-n // dmult) * dmult)

    lat = manifest["latent"]["channels"]
    ch = manifest["audio"]["channels"]
    bins = manifest["stft"]["n_fft"] // 2 + 1
    bmin, bopt, bmax = batch
    prof: dict[str, Profile] = {}
    if "text" in manifest and "generator_info" in manifest:  # not in an autoencoder bundle
        gmult = manifest["generator_info"]["length_multiple"]

        def frames(s: float) -> int:  # latent frames for s seconds, rounded up to the generator multiple (>= 1)
            f = max(1, math.ceil(s * sr / hop))
            return max(gmult, -(-f // gmult) * gmult)

        t = manifest["text"]
        n, d = t["max_length"], t["features"]
        prof["text_encoder"] = Profile({k: ((bmin, n), (bopt, n), (bmax, n)) for k in ("input_ids", "attention_mask")})
        g = [frames(s) for s in seconds]
        prof["generator"] = Profile({
            "x": tuple((b, lat, f) for b, f in zip(batch, g)),
            "sigma": ((bmin,), (bopt,), (bmax,)),
            "text_states": ((bmin, n, d), (bopt, n, d), (bmax, n, d)),
            "text_mask": ((bmin, n), (bopt, n), (bmax, n)),
            "guidance": ((bmin,), (bopt,), (bmax,)),
        })
    sm = [samples(s) for s in decoder_seconds]
    prof["decoder"] = Profile({
        "x": tuple((b, ch, s) for b, s in zip(batch, sm)),
        "sigma": ((bmin,), (bopt,), (bmax,)),
        "latent": tuple((b, lat, s // hop) for b, s in zip(batch, sm)),
    })
    stft_hop = manifest["stft"]["hop"]
    prof["encoder"] = Profile({"magnitude": tuple((b, ch * bins, s // stft_hop) for b, s in zip(batch, sm))})
    return prof



def cache_key(onnx_sha256: str, trt_version: str, cc: tuple[int, int], profile: Profile, fp16: bool) -> str:
    doc = {"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "compute_capability": f"{cc[0]}.{cc[1]}",
           "profile": profile.to_json(), "fp16": fp16}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def build_engine(trt: Any, onnx_path: Path, engine_path: Path, profile: Profile, fp16: bool,
                 timing_cache: Path, workspace_gb: float = 4.0) -> None:
    """One engine: ONNX parser -> network -> config (fp16, workspace, timing cache, profile) -> serialized engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10, required in 8
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise _error(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in TensorRT 10
            raise _error("this GPU has no fast fp16: export without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for name in names:
        if name not in profile.shapes:
            raise _error(f"no optimisation profile for input {name!r} of {onnx_path.name}")
        lo, mid, hi = profile.shapes[name]
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise _error(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_engines(bundle_dir: Path, manifest: dict[str, Any], fp16: bool, profiles: dict[str, Profile] | None = None,
                  cache_dirs: tuple[Path, ...] = (), progress: Any = None) -> dict[str, Any]:
    """Engines for every model in the manifest under bundle_dir/trt/; returns the index written to engines.json."""
    trt, cc = require()
    profiles = profiles or default_profiles(manifest)
    out = bundle_dir / "trt"
    out.mkdir(exist_ok=True)
    timing = out / TIMING_CACHE
    for d in cache_dirs:  # start from an earlier timing cache if one exists
        if (Path(d) / TIMING_CACHE).is_file() and not timing.is_file():
            shutil.copyfile(Path(d) / TIMING_CACHE, timing)
    index: dict[str, Any] = {"tensorrt": trt.__version__, "compute_capability": f"{cc[0]}.{cc[1]}", "fp16": fp16,
                             "timing_cache": f"trt/{TIMING_CACHE}", "engines": {}}
    for comp, spec in manifest["models"].items():
        onnx_path = bundle_dir / spec["file"]
        sha = sha256_file(onnx_path)
        key = cache_key(sha, trt.__version__, cc, profiles[comp], fp16)
        name = f"{comp}-{key}.engine"
        target = out / name
        reused = False
        for d in cache_dirs:
            if (Path(d) / name).is_file():
                shutil.copyfile(Path(d) / name, target)
                reused = True
                break
        if not reused:
            if progress is not None:
                progress(f"TensorRT engine for {comp}")
            build_engine(trt, onnx_path, target, profiles[comp], fp16, timing)
        index["engines"][comp] = {"file": f"trt/{name}", "onnx_sha256": sha, "key": key,
                                  "profile": profiles[comp].to_json(), "reused": reused}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index
