"""Execution backends: one interface for running a component step on ONNX Runtime or on TensorRT engines (plans).

    backend.run(component, {input name: array}) -> array      component in text_encoder, generator, encoder, decoder

Sessions / engines are created once per component (lazily, under a lock) and reused. `run` is safe to call from
several threads (ORT's InferenceSession.run is thread-safe; the TensorRT backend serialises per component).
Nothing here imports torch: the torch backend is mousai_export.torch_backend, loaded by name on request.
"""
from __future__ import annotations

import importlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .bundle import Bundle, BundleError, check_relative_path
from .limits import check_graph_io
from .onnx_check import external_data_locations


class BackendError(RuntimeError):
    """A backend that cannot run here (missing GPU, provider, TensorRT, torch, ...). One-line message."""


_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}

PROVIDER_ALIASES = {
    "trt": "TensorrtExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once); falls back to os.cpu_count()."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology"
        try:
            with open(f"{base}/core_id") as f1, open(f"{base}/physical_package_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    return max(1, len(cores))


def idle_cores() -> int:
    """Physical cores not already busy with other work: physical_cores() minus the 1-minute load average (rounded),
    at least 1. On a shared machine, intra-op threads beyond the idle cores cost far more than they bring
    (benchmarks/RESULTS.md, levers: 2 threads beside a busy core ran a step 2x slower than 1 thread)."""
    n = physical_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return max(1, min(n, int(n - load + 0.5)))


class Backend:
    """Base: `run(component, inputs) -> first output` and a description of what really runs."""

    kind = "base"

    def run(self, component: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def prepare(self, components: Sequence[str]) -> None:
        """Create the sessions now (so the first generation does not pay for it)."""

    #: whether run_fp32 can run an fp16 bundle's fp32 fallback graphs (models.<component>.fp32_file)
    supports_fp32_fallback = False

    def run_fp32(self, component: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One call of the component's fp32 fallback graph (fp16 bundles exported with --fp16-fallback)."""
        raise BackendError(f"the {self.kind} backend cannot run fp32 fallback graphs: use --engine onnx")

    def describe(self) -> str:
        return self.kind

    @property
    def providers(self) -> list[str]:
        return []


# ------------------------------------------------------------------------------------------------- ONNX Runtime


def resolve_providers(requested: Sequence[str] | str | None) -> list[str]:
    """Named providers (aliases trt/cuda/cpu allowed) or, for None, the best available: TensorRT, CUDA, CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None:
        chosen = [p for p in PREFERENCE if p in available]
        return chosen or ["CPUExecutionProvider"]
    if isinstance(requested, str):
        requested = [r for r in requested.split(",") if r.strip()]
    out = []
    for r in requested:
        name = PROVIDER_ALIASES.get(r.strip().lower(), r.strip())
        if name not in available:
            raise BackendError(f"ONNX Runtime provider {name} is not available here (available: "
                              f"{', '.join(available)}); GPU providers need the onnxruntime-gpu package and a GPU")
        out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")  # for the nodes a GPU provider does not take
    return out


class OrtBackend(Backend):
    """ONNX Runtime sessions over a bundle's graphs (created from the verified bytes)."""

    kind = "onnx"

    def __init__(self, bundle: Bundle, providers: Sequence[str] | str | None = None, threads: int | None = None,
                 spinning: bool = True, log_severity: int = 4):
        import onnxruntime as ort

        # FATAL only: ONNX Runtime's own error lines would repeat, on stderr, the one-line error we raise
        ort.set_default_logger_severity(max(0, min(4, log_severity)))
        self._ort = ort
        self.bundle = bundle
        self.explicit = providers is not None
        self.requested = resolve_providers(providers)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = threads or idle_cores()  # None: the cores not busy with other work at creation
        self.spinning = spinning
        self.log_severity = log_severity
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._used: dict[str, list[str]] = {}

    def _options(self):
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = True
        so.enable_mem_pattern = True
        so.log_severity_level = self.log_severity
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def _provider_options(self) -> list:
        out = []
        for p in self.requested:
            if p == "TensorrtExecutionProvider":
                cache = Path(os.environ.get("MOUSAI_CACHE", Path.home() / ".cache" / "mousai")) / "ort-trt"
                opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}
                if self.bundle.manifest.get("precision") == "fp16":
                    opts["trt_fp16_enable"] = "True"
                out.append((p, opts))
            else:
                out.append(p)
        return out

    def session(self, component: str, fp32: bool = False):
        key = f"{component}@fp32" if fp32 else component
        s = self._sessions.get(key)
        if s is not None:
            return s
        with self._lock:
            s = self._sessions.get(key)
            if s is None:
                s = self._create(component, fp32)
                self._sessions[key] = s
        return s

    def model_source(self, file: str) -> bytes | str:
        """What ONNX Runtime loads for a bundle graph: its verified bytes, or - when the graph keeps weights in
        external data files - its path, after checking that every external-data location is a plain relative path
        listed (and so hashed) in the manifest, inside the bundle folder. A graph given as bytes would resolve
        external data against the working directory, so such a graph is never loaded from bytes."""
        b = self.bundle
        data = b.read_bytes(file)  # hashed now: the bytes ORT parses are the verified ones
        try:
            locations = external_data_locations(data)
        except ValueError as e:
            raise BundleError(f"{b.path}: {file} is not a valid ONNX file ({e}): the file is corrupt; re-export "
                              "the bundle") from None
        if not locations:
            return data
        folder = file.rsplit("/", 1)[0] + "/" if "/" in file else ""
        for loc in sorted(locations):
            try:
                check_relative_path(loc, f"{file}: external data location")
            except BundleError as e:
                raise BundleError(f"{b.path}: {e}; refusing to load it") from None
            name = folder + loc
            if name not in b.manifest["files"]:
                raise BundleError(f"{b.path}: {file} keeps weights in {loc!r}, which manifest.json does not list "
                                  "(every file a graph reads must be hashed): refusing to load it")
            b.verify_file(name)  # inside the folder (through symlinks too) and hashed now
        return str(b.file_path(file))  # (its bytes were hashed above)

    def _create(self, component: str, fp32: bool = False):
        ort = self._ort
        spec = self.bundle.model(component)
        file = spec.fp32_file if fp32 else spec.file
        if file is None:
            raise BackendError(f"{self.bundle.path}: the bundle has no fp32 fallback graph for {component} "
                              "(export it with --fp16 --fp16-fallback)")
        data = self.model_source(file)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sess = ort.InferenceSession(data, sess_options=self._options(), providers=self._provider_options())
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"ONNX Runtime cannot load {file}: {' '.join(str(e).split())[:300]}") from None
        used = sess.get_providers()
        self._used[component] = used
        if self.explicit and self.requested[0] not in used:
            raise BackendError(f"asked for {self.requested[0]} but ONNX Runtime runs {file} on {used[0]} "
                              "(no usable GPU / driver / TensorRT?)")
        names = {i.name for i in sess.get_inputs()}
        want = {t.name for t in spec.inputs}
        if names != want:
            raise BundleError(f"{file} has inputs {sorted(names)}, the manifest says {sorted(want)}")
        outs = {o.name for o in sess.get_outputs()}
        if spec.outputs[0].name not in outs:
            raise BundleError(f"{file} has outputs {sorted(outs)}, the manifest says {spec.outputs[0].name!r}")
        try:  # the fp32 fallback graph of an fp16 bundle has the same shapes, its own dtypes
            check_graph_io(file, spec.inputs, sess.get_inputs(), "input", dtypes=not fp32)
            check_graph_io(file, spec.outputs, sess.get_outputs(), "output", dtypes=not fp32)
        except ValueError as e:
            raise BundleError(f"{self.bundle.path}: {e}: the manifest disagrees with its graph") from None
        return sess

    def prepare(self, components: Sequence[str]) -> None:
        for c in components:
            if self.bundle.has(c):
                self.session(c)

    supports_fp32_fallback = True

    def run(self, component: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._run(component, inputs, False)

    def run_fp32(self, component: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._run(component, inputs, True)

    def _run(self, component: str, inputs: Mapping[str, np.ndarray], fp32: bool) -> np.ndarray:
        sess = self.session(component, fp32)
        spec = self.bundle.model(component)
        feeds = {t.name: np.ascontiguousarray(inputs[t.name], dtype=_NP_DTYPES[t.dtype]) for t in spec.inputs}
        out_name = [t.name for t in spec.outputs][0]
        try:
            out = sess.run([out_name], feeds)[0]
        except Exception as e:  # ORT's own exception types: shape errors, out of memory, ...
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
            raise BackendError(f"ONNX Runtime failed running {spec.fp32_file if fp32 else spec.file} on {shapes}: "
                              f"{' '.join(str(e).split())[:300]}") from None
        return out if out.dtype == np.float32 else out.astype(np.float32)

    @property
    def providers(self) -> list[str]:
        """The providers sessions really use (first = where the work runs); requested ones until a session exists."""
        if self._used:
            return next(iter(self._used.values()))
        return list(self.requested)

    def describe(self) -> str:
        if not self._used:
            return f"onnxruntime {self._ort.__version__} (requested {', '.join(self.requested)}; {self.threads} threads)"
        parts = sorted({u[0] for u in self._used.values()})
        return f"onnxruntime {self._ort.__version__} on {', '.join(parts)} ({self.threads} intra-op threads)"


# ------------------------------------------------------------------------------------------------- TensorRT


TRT_HELP = ("--engine trt needs an NVIDIA GPU and TensorRT (pip install 'mousai[trt]' on a CUDA "
            "machine, and a bundle exported with --engine trt); use --engine onnx here")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


class TensorRTBackend(Backend):
    """Native TensorRT engines from `bundle/trt/*.engine` (TensorRT 10 API, device memory via cuda-python).

    `trt/engines.json` (written by mousai_export.trt) maps each component to its engine file, the ONNX sha256 it
    was built from, the TensorRT version and GPU compute capability; all are checked, and the index and engines are
    hash-verified like every bundle file. The engines' optimisation profiles bound the shapes (the decoder is run
    in chunks within them). One execution context and one CUDA stream per component; `run` serialises per component
    (a context is not thread-safe).
    """

    kind = "trt"

    def __init__(self, bundle: Bundle, device: int = 0):
        try:
            import tensorrt as trt  # type: ignore
        except Exception:  # ImportError, or an install whose libraries fail to load
            raise BackendError(TRT_HELP + " (no usable tensorrt module)") from None
        cudart = _import_cudart()
        if cudart is None:
            raise BackendError(TRT_HELP + " (no cuda-python module)")
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count == 0:
            raise BackendError(TRT_HELP + " (no CUDA device found)")
        self.trt, self.cudart, self.bundle, self.device = trt, cudart, bundle, device
        self._check(cudart.cudaSetDevice(device))
        err, props = cudart.cudaGetDeviceProperties(device)
        self._check(err)
        self.cc = (int(props.major), int(props.minor))
        self._index: dict | None = None
        self.gpu_name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self._lock = threading.Lock()
        self._parts: dict[str, dict] = {}

    def _check(self, err):
        if isinstance(err, tuple):
            err = err[0]
        if int(err) != 0:
            raise BackendError(f"CUDA error {err} in the TensorRT engine")

    def index(self) -> dict:
        """trt/engines.json (written by the exporter; hashed like every file): which engine serves which graph."""
        if self._index is None:
            if "trt/engines.json" not in self.bundle.manifest["files"]:
                raise BackendError(f"{self.bundle.path} has no TensorRT engines: export it with --engine trt on a "
                                  "machine with this GPU")
            try:
                idx = json.loads(self.bundle.read_bytes("trt/engines.json"))
            except ValueError as e:
                raise BackendError(f"unreadable trt/engines.json: {e}") from None
            cc = f"{self.cc[0]}.{self.cc[1]}"
            if idx.get("tensorrt") != self.trt.__version__ or idx.get("compute_capability") != cc:
                raise BackendError(f"the bundle's TensorRT engines were built with TensorRT {idx.get('tensorrt')} "
                                  f"for compute capability {idx.get('compute_capability')}; this machine has "
                                  f"TensorRT {self.trt.__version__} and {cc}: re-export with --engine trt here")
            self._index = idx
        return self._index

    def engine_file(self, component: str) -> str:
        entry = self.index().get("engines", {}).get(component)
        if not entry:
            raise BackendError(f"trt/engines.json has no engine for {component}")
        onnx_sha = self.bundle.manifest["files"][self.bundle.model(component).file]["sha256"]
        if entry.get("onnx_sha256") != onnx_sha:
            raise BackendError(f"the TensorRT engine for {component} was built from another {component} graph "
                              "(ONNX sha256 differs): re-export with --engine trt")
        return entry["file"]

    def _part(self, component: str) -> dict:
        p = self._parts.get(component)
        if p is not None:
            return p
        with self._lock:
            if component not in self._parts:
                data = self.bundle.read_bytes(self.engine_file(component))  # hashed
                engine = self.runtime.deserialize_cuda_engine(data)
                if engine is None:
                    raise BackendError(f"TensorRT could not deserialize the {component} engine (version mismatch?)")
                ctx = engine.create_execution_context()
                err, stream = self.cudart.cudaStreamCreate()
                self._check(err)
                self._parts[component] = {"engine": engine, "ctx": ctx, "stream": stream, "buffers": {},
                                          "lock": threading.Lock()}
        return self._parts[component]

    def _buffer(self, part: dict, name: str, nbytes: int) -> int:
        ptr, size = part["buffers"].get(name, (None, 0))
        if ptr is None or size < nbytes:
            if ptr is not None:
                self._check(self.cudart.cudaFree(ptr))
            err, ptr = self.cudart.cudaMalloc(max(nbytes, 1))
            self._check(err)
            part["buffers"][name] = (ptr, nbytes)
        return int(ptr)

    def run(self, component: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        trt, cudart = self.trt, self.cudart
        part = self._part(component)
        spec = self.bundle.model(component)
        engine, ctx, stream = part["engine"], part["ctx"], part["stream"]
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with part["lock"]:
            host_in = []
            for t in spec.inputs:
                arr = np.ascontiguousarray(inputs[t.name], dtype=trt.nptype(engine.get_tensor_dtype(t.name)))
                host_in.append(arr)
                if not ctx.set_input_shape(t.name, arr.shape):
                    raise BackendError(f"TensorRT {component}: input {t.name} shape {arr.shape} is outside the "
                                      "engine's optimisation profile (use a chunk size within it)")
                ptr = self._buffer(part, t.name, arr.nbytes)
                self._check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream))
                ctx.set_tensor_address(t.name, ptr)
            out_name = spec.outputs[0].name
            shape = tuple(ctx.get_tensor_shape(out_name))
            out = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(out_name)))
            optr = self._buffer(part, out_name, out.nbytes)
            ctx.set_tensor_address(out_name, optr)
            for o in spec.outputs[1:]:  # unused extra outputs still need an address
                oshape = tuple(ctx.get_tensor_shape(o.name))
                nbytes = int(np.prod(oshape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(o.name))).itemsize
                ctx.set_tensor_address(o.name, self._buffer(part, o.name, nbytes))
            if not ctx.execute_async_v3(stream):
                raise BackendError(f"TensorRT {component}: execution failed")
            self._check(cudart.cudaMemcpyAsync(out.ctypes.data, optr, out.nbytes, d2h, stream))
            self._check(cudart.cudaStreamSynchronize(stream))
        return out.astype(np.float32, copy=False)

    def prepare(self, components: Sequence[str]) -> None:
        for c in components:
            if self.bundle.has(c):
                self._part(c)

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {self.trt.__version__} on {self.gpu_name} (compute capability {self.cc[0]}.{self.cc[1]})"]

    def describe(self) -> str:
        return self.providers[0]

    def close(self) -> None:
        for part in self._parts.values():
            for ptr, _ in part["buffers"].values():
                self.cudart.cudaFree(ptr)
            self.cudart.cudaStreamDestroy(part["stream"])
        self._parts.clear()


# ------------------------------------------------------------------------------------------------- torch
# The torch backend (parity tests only) lives on the export side, mousai_export/torch_backend.py, so that this
# package holds no torch code at all; make_backend imports it by name only when asked for it.


def make_backend(kind: str | Backend, bundle: Bundle, providers=None, threads: int | None = None,
                checkpoint: str | os.PathLike | None = None) -> Backend:
    if isinstance(kind, Backend):
        return kind
    k = str(kind).lower()
    if k in ("onnx", "ort", "onnxruntime"):
        return OrtBackend(bundle, providers=providers, threads=threads)
    if k in ("trt", "tensorrt"):
        return TensorRTBackend(bundle)
    if k == "torch":
        if checkpoint is None:
            raise BackendError("--engine torch is for parity tests: it needs the checkpoint folder the bundle was "
                              "exported from (Pipeline(bundle, backend='torch', checkpoint=...))")
        from .files import sha256_file

        src = bundle.manifest.get("source") or {}
        for key, fname in (("checkpoint_config_sha256", "config.json"), ("dmae_weights_sha256", "dmae.safetensors"),
                           ("generator_weights_sha256", "generator.safetensors")):
            f = Path(checkpoint) / fname
            if key in src and f.is_file() and sha256_file(f) != src[key]:
                raise BackendError(f"checkpoint {checkpoint} is not the one bundle {bundle.path} was exported from "
                                  f"({fname} differs): parity would compare different models")
        try:
            torch_backend = importlib.import_module("mousai_export.torch_backend")
        except ImportError as e:
            raise BackendError(f"--engine torch needs torch and the export extras: pip install 'mousai[export]' ({e})") from None
        return torch_backend.TorchBackend(checkpoint, threads=threads)
    raise BackendError(f"unknown backend {kind!r}: use onnx, trt or torch")
