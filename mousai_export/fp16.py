"""fp16 graphs with fp32 islands, and the measurements that say whether fp16 is safe for a checkpoint.

Conversion: `onnxruntime.transformers.float16.convert_float_to_float16` (shipped inside onnxruntime, a base
dependency, so no extra package) with keep_io_types=True (inputs/outputs stay float32, as the contract's
`models` section says) and these ops kept in float32 (the islands):
  Softmax (attention), LayerNormalization / InstanceNormalization (GroupNorm) / GroupNormalization and the
  reduction ops of any decomposed normalisation (statistics), Sin / Cos (the Fourier sigma embedding loses its
  phase in fp16), Exp / Log / Pow / Sqrt / Reciprocal / Erf (range), plus onnxruntime's default block list.
  Every node that computes a Sin / Cos argument is kept too (phase_nodes: sigma x learned frequencies x 2 pi, with
  its frequency weights): with them in fp16 the trained default's decoder went over the parity bound
  (training/RECIPE.md has the figures). The converter still passes values between kept nodes through fp16 casts,
  so this is not a full-precision phase, only a far better one there.

Measurements (on CPU, per component, with the parity inputs):
  fp16_max_activation  largest |value| of any float tensor in the fp32 graph (every node output, ONNX Runtime with
                       graph optimisations off), versus the fp16 limit 65504. Values <= -1e30 are the attention
                       mask's "-inf" sentinel (finfo(float32).min times a 0/1 mask, clipped to -65504 by the converter
                       and consumed by the fp32 Softmax): they are counted separately, not as overflow.
  fp16_rel_l2_vs_fp32  rel L2 of the fp16 graph's output to the fp32 graph's output (bound 1e-2).
  ort_cpu_inserted_casts  Cast nodes ONNX Runtime CPU adds when it optimises the fp16 graph: fp16 ops without a CPU
                       kernel are upcast to fp32 (expected on x86 CPUs: no speed-up, only half the file size).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

FP16_MAX = 65504.0
SENTINEL = 1e30
FP32_ISLANDS = [
    "Softmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Sin", "Cos", "Exp", "Log", "Pow", "Sqrt",
    "Reciprocal", "Erf",
]


def block_list() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_ISLANDS))


def phase_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes a Sin or Cos input depends on (its producers, theirs, ... up to the graph inputs).
    Unnamed nodes are left out: the converter blocks by name, and "" would match every unnamed node."""
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
    todo = [x for n in graph.node if n.op_type in ("Sin", "Cos") for x in n.input]
    seen: set[int] = set()
    while todo:
        i = producer.get(todo.pop())
        if i is not None and i not in seen:
            seen.add(i)
            todo.extend(graph.node[i].input)
    return [graph.node[i].name for i in sorted(seen) if graph.node[i].name]


def convert(src: str | Path, dst: str | Path) -> list[str]:
    """fp32 graph at src -> fp16 graph (fp32 islands, fp32 io) at dst; returns the file names written."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .onnx import save_model

    model = onnx.load(str(src))  # loads external data too
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=block_list(),
                                    node_block_list=phase_nodes(model.graph))
    half.producer_name = "mousai_export"
    topological_sort(half.graph)  # the converter appends its Cast nodes at the end
    del half.graph.value_info[:]  # stale float32 annotations of now-fp16 tensors: the checker re-infers them
    return save_model(half, Path(dst))


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (stable otherwise)."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = [{producer[x] for x in n.input if x in producer} - {i} for i, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    remaining = [len(d) for d in deps]
    import heapq

    ready = [i for i, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the fp16 graph has a cycle")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def max_activation(onnx_path: str | Path, feeds_list: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Largest |activation| over every float node output of the (fp32) graph for the given inputs."""
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    model = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out in floats and out not in existing:
                model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
                existing.add(out)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "all_outputs.onnx"
        onnx.save_model(model, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="all_outputs.onnx.data", size_threshold=1024)
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        in_names = {i.name for i in sess.get_inputs()}
        best, where, sentinels, nonfinite = 0.0, "", 0, 0
        for feeds in feeds_list:
            for name, value in zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in in_names})):
                a = np.asarray(value)
                if a.dtype != np.float32 or a.size == 0:
                    continue
                fin = np.isfinite(a)
                nonfinite += int(a.size - fin.sum())
                mag = np.abs(np.where(fin, a, 0.0))
                sent = mag >= SENTINEL
                sentinels += int(sent.sum())
                m = float(np.where(sent, 0.0, mag).max())
                if m > best:
                    best, where = m, name
    return {"fp16_max_activation": best, "fp16_max_activation_tensor": where,
            "fp16_mask_sentinels": sentinels, "fp16_nonfinite_fp32": nonfinite}


def inserted_casts(onnx_path: str | Path) -> int:
    """How many Cast nodes ONNX Runtime CPU inserts when optimising the graph (fp16 ops it runs in fp32)."""
    import onnxruntime as ort

    before = sum(n.op_type == "Cast" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        after = sum(n.op_type == "Cast" for n in onnx.load(so.optimized_model_filepath,
                                                           load_external_data=False).graph.node)
    return max(0, after - before)


def overflow_failures(parity: dict[str, dict[str, Any]]) -> list[str]:
    bad = []
    for comp, f in parity.items():
        m = f.get("fp16_max_activation")
        if m is not None and not (m < FP16_MAX):
            bad.append(f"{comp} activation {m:.4g} ({f.get('fp16_max_activation_tensor')}) overflows fp16 "
                       f"(max {FP16_MAX:g})")
        if f.get("fp16_nonfinite_fp32"):
            bad.append(f"{comp}: the fp32 graph itself produced {f['fp16_nonfinite_fp32']} non-finite values")
    return bad

