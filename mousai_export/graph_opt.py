"""ONNX graph rewrites applied at export, for speed in ONNX Runtime; each computes exactly the same function.

`nearest_upsample_to_resize`: the U-Nets' nearest up-sampling (`torch.repeat_interleave(x, k, dim=-1)`) exports as
Unsqueeze(x, last) -> Expand(to [1, .., 1, k]) -> Reshape(to Shape(x)[:-1] + [-1]). ONNX Runtime's Expand along a new
innermost axis is very slow on CPU (benchmarks/RESULTS.md: 26 ms vs 0.7 ms for Resize on a [1, 128, 3776] tensor;
11% of a decoder step). The chain is replaced by one Resize(x, scales [1, .., 1, k], nearest, asymmetric, floor),
which yields out[..., i] = x[..., floor(i / k)], the same values bit for bit.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


def _const(model: onnx.ModelProto, name: str, producers: dict):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    n = producers.get(name)
    if n is not None and n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
        return numpy_helper.to_array(n.attribute[0].t)
    return None


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def nearest_upsample_to_resize(model: onnx.ModelProto) -> int:
    """Rewrite every repeat_interleave chain in place; returns how many were replaced."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    new_inits = []
    count = 0
    for n in g.node:
        if n.op_type != "Expand":
            continue
        u = producers.get(n.input[0])
        if u is None or u.op_type != "Unsqueeze" or len(consumers.get(u.output[0], [])) != 1:
            continue
        x = u.input[0]
        rank = _rank(model, x)
        axes = _const(model, u.input[1], producers) if len(u.input) > 1 else None
        shape = _const(model, n.input[1], producers)
        if rank is None or axes is None or shape is None or axes.size != 1:
            continue
        if int(axes.reshape(-1)[0]) not in (rank, -1) or shape.size != rank + 1 or any(int(v) != 1 for v in shape[:-1]):
            continue
        k = int(shape[-1])
        cons = consumers.get(n.output[0], [])
        if k < 2 or len(cons) != 1 or cons[0].op_type != "Reshape" or n.output[0] in outputs:
            continue
        r = cons[0]
        # the Reshape must merge the last two axes: target = Concat(Shape(x)[0:-1], [-1])
        c = producers.get(r.input[1])
        if c is None or c.op_type != "Concat" or len(c.input) != 2:
            continue
        s = producers.get(c.input[0])
        tail = _const(model, c.input[1], producers)
        if s is None or s.op_type != "Shape" or s.input[0] != x or tail is None or tail.reshape(-1).tolist() != [-1]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in s.attribute}
        if attrs.get("start", 0) != 0 or attrs.get("end") not in (-1, rank - 1):
            continue
        scales_name = f"{n.name or n.output[0]}_resize_scales"
        new_inits.append(numpy_helper.from_array(
            __import__("numpy").array([1.0] * (rank - 1) + [float(k)], dtype="float32"), scales_name))
        resize = helper.make_node("Resize", [x, "", scales_name], [r.output[0]], name=f"{r.name}_as_resize",
                                  mode="nearest", nearest_mode="floor",
                                  coordinate_transformation_mode="asymmetric")
        idx = {id(m): i for i, m in enumerate(g.node)}
        replace[idx[id(r)]] = resize
        drop.update({idx[id(u)], idx[id(n)]})
        count += 1
    if not count:
        return 0
    nodes = []
    for i, node in enumerate(g.node):
        if i in drop:
            continue
        nodes.append(replace.get(i, node))
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    _prune(model)
    return count


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads any more (the now unused Shape / Concat of a rewritten chain)."""
    g = model.graph
    while True:
        used = {o.name for o in g.output}
        for n in g.node:
            used.update(i for i in n.input if i)
        keep = [n for n in g.node if any(o in used for o in n.output)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    names = {i for n in g.node for i in n.input}
    inits = [t for t in g.initializer if t.name in names]
    del g.initializer[:]
    g.initializer.extend(inits)


def resize_to_expand(model: onnx.ModelProto) -> int:
    """The inverse rewrite (Resize of the form above -> the exporter's Unsqueeze/Expand/Reshape), for the levers
    benchmark to measure what the rewrite wins on a shipped graph. Returns how many were replaced."""
    import numpy as np

    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    nodes, inits, count = [], [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        scales = _const(model, n.input[2], producers) if n.op_type == "Resize" and len(n.input) == 3 else None
        if scales is None or attrs.get("mode") != b"nearest" or np.any(scales[:-1] != 1):
            nodes.append(n)
            continue
        x, k, rank, p = n.input[0], int(scales[-1]), len(scales), f"{n.name}_inv"
        inits += [numpy_helper.from_array(np.array([rank], np.int64), f"{p}_axes"),
                  numpy_helper.from_array(np.array([1] * rank + [k], np.int64), f"{p}_shape"),
                  numpy_helper.from_array(np.array([-1], np.int64), f"{p}_m1")]
        nodes += [helper.make_node("Unsqueeze", [x, f"{p}_axes"], [f"{p}_u"]),
                  helper.make_node("Expand", [f"{p}_u", f"{p}_shape"], [f"{p}_e"]),
                  helper.make_node("Shape", [x], [f"{p}_s"], start=0, end=-1),
                  helper.make_node("Concat", [f"{p}_s", f"{p}_m1"], [f"{p}_t"], axis=0),
                  helper.make_node("Reshape", [f"{p}_e", f"{p}_t"], list(n.output))]
        count += 1
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    return count


def optimize(model: onnx.ModelProto) -> dict[str, int]:
    """All rewrites, in place: {rewrite name: times applied}."""
    return {"nearest_upsample_to_resize": nearest_upsample_to_resize(model)}
