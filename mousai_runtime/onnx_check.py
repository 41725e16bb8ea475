"""Read the external-data locations out of an ONNX file without the onnx package (a minimal protobuf walk).

An ONNX tensor may keep its bytes in another file (`data_location = EXTERNAL`, `external_data["location"]`);
ONNX Runtime then opens that path, relative to the model's folder (or to the working directory for a model given
as bytes). A downloaded graph must not make the runtime read files outside its bundle, so the runtime lists every
location first (`external_data_locations`) and refuses any that is not a plain relative path listed (and hashed)
in the manifest (mousai_runtime/backends.py). Only the protobuf wire format is parsed: no code, no pickle.

Walked: ModelProto.graph / .functions / .training_info, GraphProto.initializer / .sparse_initializer / .node,
NodeProto.attribute, AttributeProto.t / .g / .tensors / .graphs / .sparse_tensor / .sparse_tensors, FunctionProto.node
/ .attribute_proto, SparseTensorProto.values / .indices, TrainingInfoProto.initialization / .algorithm (field numbers
from onnx/onnx.proto3). A malformed or truncated message raises ValueError.
"""
from __future__ import annotations

from typing import Iterator

MAX_DEPTH = 64  # nested subgraphs (If / Loop / Scan bodies); deeper is refused, not recursed into

# message -> {field number: message type} for the fields that can (transitively) hold a TensorProto
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNC, _TRAIN, _ENTRY = range(9)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 25: _FUNC, 20: _TRAIN},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _FUNC: {7: _NODE, 11: _ATTR},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TRAIN: {1: _GRAPH, 2: _GRAPH},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _TENSOR_NAME = 13, 14, 8
EXTERNAL = 1


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if i >= end:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, value or payload start, payload end) for each field of the message buf[start:end]."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            v, i = _varint(buf, i, end)
            yield field, wire, v, i
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise ValueError("length-delimited field runs past the end (truncated file?)")
            yield field, wire, i, i + n
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > end:
            raise ValueError("field runs past the end (truncated file?)")


def _string(buf: memoryview, a: int, b: int) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a string field is not UTF-8") from None


def _tensor(buf: memoryview, a: int, b: int, out: list[tuple[str, str]]) -> None:
    name, location, external = "", None, False
    for field, wire, x, y in _fields(buf, a, b):
        if field == _TENSOR_NAME and wire == 2:
            name = _string(buf, x, y)
        elif field == _TENSOR_DATA_LOCATION and wire == 0:
            external = x == EXTERNAL
        elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = value = None
            for f2, w2, x2, y2 in _fields(buf, x, y):
                if w2 == 2 and f2 == 1:
                    key = _string(buf, x2, y2)
                elif w2 == 2 and f2 == 2:
                    value = _string(buf, x2, y2)
            if key == "location":
                location = value if value is not None else ""
    if external or location is not None:
        out.append((name, location if location is not None else ""))


def _walk(buf: memoryview, a: int, b: int, kind: int, depth: int, out: list[tuple[str, str]]) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"graphs nested deeper than {MAX_DEPTH} levels")
    children = _CHILDREN[kind]
    for field, wire, x, y in _fields(buf, a, b):
        child = children.get(field)
        if child is None or wire != 2:
            continue
        if child == _TENSOR:
            _tensor(buf, x, y, out)
        else:
            _walk(buf, x, y, child, depth + 1, out)


def external_tensors(model: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """[(tensor name, location)] of every tensor stored outside the file (location '' if none is given)."""
    buf = memoryview(model)
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B")
    if len(buf) == 0:
        raise ValueError("empty file")
    out: list[tuple[str, str]] = []
    saw_graph = False
    for field, wire, x, y in _fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:
            saw_graph = True
        child = _CHILDREN[_MODEL].get(field)
        if child is not None and wire == 2:
            _walk(buf, x, y, child, 1, out)
    if not saw_graph:
        raise ValueError("no graph in the model")
    return out


def external_data_locations(model: bytes | bytearray | memoryview) -> set[str]:
    """The set of external-data paths the model refers to (as written in the file)."""
    return {loc for _, loc in external_tensors(model)}
