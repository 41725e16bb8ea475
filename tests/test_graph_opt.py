"""mousai_export.graph_opt: the exact speed rewrites applied at export (no timing here: benchmarks/levers.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h


def _repeat_graph(k: int = 2, expand_shape=None, axis: int = 3) -> onnx.ModelProto:
    """x [B, C, T] -> repeat_interleave(x, k, -1) as the dynamo exporter writes it, then * 2 (so it is not the output)."""
    x = h.make_tensor_value_info("x", TP.FLOAT, ["B", 8, "T"])
    y = h.make_tensor_value_info("y", TP.FLOAT, None)
    shape = expand_shape if expand_shape is not None else [1, 1, 1, k]
    inits = [h.make_tensor("axes", TP.INT64, [1], [axis]), h.make_tensor("shp", TP.INT64, [4], shape),
             h.make_tensor("minus1", TP.INT64, [1], [-1]), h.make_tensor("two", TP.FLOAT, [], [2.0])]
    nodes = [h.make_node("Unsqueeze", ["x", "axes"], ["u"], name="unsq"),
             h.make_node("Expand", ["u", "shp"], ["e"], name="expand"),
             h.make_node("Shape", ["x"], ["s"], name="shape", start=0, end=-1),
             h.make_node("Concat", ["s", "minus1"], ["target"], name="concat", axis=0),
             h.make_node("Reshape", ["e", "target"], ["r"], name="reshape"),
             h.make_node("Mul", ["r", "two"], ["y"], name="mul")]
    m = h.make_model(h.make_graph(nodes, "g", [x], [y], inits), opset_imports=[h.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(m)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("k", [2, 4])
def test_repeat_interleave_becomes_one_resize_with_identical_values(k):
    from mousai_export.graph_opt import optimize

    m = _repeat_graph(k)
    x = np.random.default_rng(0).standard_normal((3, 8, 37)).astype(np.float32)
    before = _run(m, x)
    assert optimize(m) == {"nearest_upsample_to_resize": 1}
    ops = [n.op_type for n in m.graph.node]
    assert ops == ["Resize", "Mul"], ops  # Unsqueeze, Expand and the now unused Shape / Concat are gone
    onnx.checker.check_model(m)
    after = _run(m, x)
    assert np.array_equal(after, before) and np.array_equal(after, 2 * np.repeat(x, k, axis=-1))
    x2 = np.random.default_rng(1).standard_normal((1, 8, 5)).astype(np.float32)  # other batch and length
    assert np.array_equal(_run(m, x2), 2 * np.repeat(x2, k, axis=-1))


@pytest.mark.parametrize("case", ["not_last_axis", "broadcast_other_axes"])
def test_other_expands_are_left_alone(case):
    from mousai_export.graph_opt import optimize

    m = _repeat_graph(2, expand_shape=[1, 1, 2, 1], axis=2) if case == "not_last_axis" else \
        _repeat_graph(2, expand_shape=[1, 2, 1, 2])
    assert optimize(m) == {"nearest_upsample_to_resize": 0}
    assert "Expand" in [n.op_type for n in m.graph.node]
