"""The levers measured one by one on a bundle's generator step and decoder step (ONNX Runtime, CPU).

    python -m benchmarks.levers --bundle B [--reps 7] [--openvino PATH]

Every lever runs against the shipped setting in one process, interleaved, after warm-up: medians, the ratio and
the output's relative L2 error against the fp32 graph with the runtime's session options (speed only counts where the
error is within what diffusion tolerates: the export bound is 1e-4 per step for fp32, 1e-2 for fp16).
  - the exporter's exact rewrite of nearest up-sampling as Resize (vs the graph without it)
  - threads: 1, 2 (spinning), 2 (no spinning)
  - graph optimisation level: basic / extended / all (and the load time of a pre-optimised graph)
  - int8 dynamic quantisation (onnxruntime.quantization): MatMul only, MatMul + Conv
  - OpenVINO fp32 / bf16 (only with --openvino: a folder holding the `openvino` package; not a runtime dependency)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .common import DEFAULT_CACHE, interleaved, machine_line, med, other_load, table


def feeds_for(bundle, comp: str, seconds: float = 10.0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = np.float32
    frames = -(-int(round(seconds * bundle.sample_rate)) // bundle.hop)
    if comp == "generator":
        t = -(-frames // bundle.generator_multiple) * bundle.generator_multiple
        t = min(t, bundle.window_frames or 512)
        n, d = bundle.text["max_length"], bundle.text["features"]
        return {"x": rng.standard_normal((1, bundle.latent_channels, t)).astype(f), "sigma": np.array([0.6], f),
                "text_states": rng.standard_normal((1, n, d)).astype(f), "text_mask": np.ones((1, n), f),
                "guidance": np.array([3.0], f)}
    m = bundle.decoder_multiple_frames
    t = -(-frames // m) * m
    return {"x": rng.standard_normal((1, bundle.channels, t * bundle.hop)).astype(f), "sigma": np.array([0.6], f),
            "latent": rng.uniform(-1, 1, (1, bundle.latent_channels, t)).astype(f)}


def ort_session(path: str, threads: int, spin: bool = True, level: str = "all", optimized_out: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    if optimized_out:
        so.optimized_model_filepath = optimized_out
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def measure(name: str, fns: dict, ref_out: np.ndarray, reps: int, outs: dict) -> list[list[str]]:
    times = interleaved(fns, reps=reps, warmup=1)
    base = med(times[next(iter(fns))])
    rows = []
    for k, ts in times.items():
        rows.append([name, k, f"{med(ts) * 1e3:.1f}", f"{base / med(ts):.2f}x", f"{outs[k]:.1e}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(DEFAULT_CACHE / "tiny-bundle"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=10.0, help="decoder chunk / generator window length")
    ap.add_argument("--openvino", default=None, help="folder with the openvino package (pip install --target)")
    ap.add_argument("--only", default="upsample,threads,opt,int8,openvino")
    a = ap.parse_args(argv)
    from mousai_runtime.bundle import Bundle

    b = Bundle.load(a.bundle, verify=False)
    only = set(a.only.split(","))
    print(f"machine: {machine_line()}\n{other_load()}\n")
    rows: list[list[str]] = []
    qdir = DEFAULT_CACHE / "levers" / Path(a.bundle).name
    qdir.mkdir(parents=True, exist_ok=True)
    for comp in ("generator", "decoder"):
        path = str(b.file_path(b.model(comp).file))
        feeds = feeds_for(b, comp, a.seconds)
        ref_sess = ort_session(path, 1)
        ref = ref_sess.run(None, feeds)[0]
        label = f"{comp} step ({list(feeds['x'].shape)})"
        if "upsample" in only:
            import onnx

            from mousai_export.graph_opt import resize_to_expand

            m = onnx.load(path)
            n = resize_to_expand(m)
            if n:
                without = qdir / f"{comp}-expand.onnx"
                onnx.save(m, str(without))
                ss = {f"shipped ({n} x Resize)": ref_sess, "without the rewrite (Expand)": ort_session(str(without), 1)}
                outs = {k: rel(s.run(None, feeds)[0], ref) for k, s in ss.items()}
                rows += measure(label, {k: (lambda s=s: s.run(None, feeds)) for k, s in ss.items()}, ref, a.reps,
                                outs)
        if "threads" in only:
            ss = {"1 thread": ref_sess, "2 threads": ort_session(path, 2),
                  "2 threads, no spinning": ort_session(path, 2, spin=False)}
            outs = {k: rel(s.run(None, feeds)[0], ref) for k, s in ss.items()}
            rows += measure(label, {k: (lambda s=s: s.run(None, feeds)) for k, s in ss.items()}, ref, a.reps, outs)
        if "opt" in only:
            opt_path = str(qdir / f"{comp}.ort-optimized.onnx")
            ss = {"opt all (shipped)": ref_sess, "opt extended": ort_session(path, 1, level="extended"),
                  "opt basic": ort_session(path, 1, level="basic")}
            ort_session(path, 1, optimized_out=opt_path)
            t0 = time.perf_counter()
            ort_session(path, 1)
            load_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            pre = ort_session(opt_path, 1, level="none")
            load_pre = time.perf_counter() - t0
            ss[f"pre-optimised graph (load {load_pre:.2f} s vs {load_plain:.2f} s)"] = pre
            outs = {k: rel(s.run(None, feeds)[0], ref) for k, s in ss.items()}
            rows += measure(label, {k: (lambda s=s: s.run(None, feeds)) for k, s in ss.items()}, ref, a.reps, outs)
        if "int8" in only:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            ss = {"fp32 (shipped)": ref_sess}
            for ops, tag in ((["MatMul"], "int8 dynamic MatMul"), (["MatMul", "Conv"], "int8 dynamic MatMul+Conv")):
                q = qdir / f"{comp}-{'mm' if len(ops) == 1 else 'mmconv'}.onnx"
                if not q.exists():
                    quantize_dynamic(path, str(q), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
                ss[tag] = ort_session(str(q), 1)
            outs = {k: rel(s.run(None, feeds)[0], ref) for k, s in ss.items()}
            rows += measure(label, {k: (lambda s=s: s.run(None, feeds)) for k, s in ss.items()}, ref, a.reps, outs)
        if "openvino" in only and a.openvino:
            sys.path.insert(0, a.openvino)
            import openvino as ov

            core = ov.Core()
            fns = {"ORT fp32 (shipped)": lambda: ref_sess.run(None, feeds)}
            outs = {"ORT fp32 (shipped)": 0.0}
            model = core.read_model(path)
            for prec in ("f32", "bf16"):
                c = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": prec, "INFERENCE_NUM_THREADS": 1,
                                                      "PERFORMANCE_HINT": "LATENCY"})
                req = c.create_infer_request()
                k = f"OpenVINO {ov.__version__.split('-')[0]} {prec}"
                fns[k] = lambda req=req: req.infer(feeds)
                outs[k] = rel(req.infer(feeds)[0], ref)
            rows += measure(label, fns, ref, a.reps, outs)
    print(table(["component", "setting", "median ms", "speed vs first", "rel L2 vs fp32 ORT"], rows))
    print(f"\n{other_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
