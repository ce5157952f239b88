"""Finds the tensors of an ONNX graph whose data lives in another file (external data).

An ONNX initializer may keep its values in a separate file named by a relative path;
ONNX Runtime then opens that path when it builds the session. The repository refuses such
graphs: the file is outside what the manifest hashes and, when a graph is loaded from
bytes (as the server does, so that what runs is what was hashed), ONNX Runtime resolves
the path against the working directory. This module reads the protobuf wire format
directly, so serving needs neither the `onnx` package nor a copy of the weights: it walks
only the messages that can hold a tensor and skips every other field by its length
(the 90 MB sentiment graph takes a few milliseconds).

Field numbers are those of onnx.proto (onnx 1.16 to 1.23; they never change once
published).
"""

from __future__ import annotations

# message -> {field number: message kind of that field}; the fields that can lead to a
# TensorProto. ModelProto: graph 7, training_info 20, functions 25. TrainingInfoProto:
# initialization 1, algorithm 2. GraphProto: node 1, initializer 5, sparse_initializer 15.
# NodeProto: attribute 5. FunctionProto: node 7, attribute_proto 11. AttributeProto: t 5,
# g 6, tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23. SparseTensorProto:
# values 1, indices 2.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                  23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
# TensorProto: name 8, external_data 13, data_location 14 (EXTERNAL = 1)
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1
# nested messages deeper than this are refused: a subgraph level costs three (graph, node,
# attribute), and real graphs nest a handful of levels
MAX_DEPTH = 96


class NotAGraph(ValueError):
    """The bytes are not a protobuf message."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise NotAGraph("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NotAGraph("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise NotAGraph("truncated fixed-width field")
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise NotAGraph("length past the end of its message")
            yield number, wire, (pos, pos + length)
            pos += length
        else:  # 3, 4: groups, which onnx.proto does not use; 6, 7: invalid
            raise NotAGraph(f"wire type {wire}")


def _walk(buf: bytes, start: int, end: int, kind: str, depth: int, found: list[str]) -> None:
    if depth > MAX_DEPTH:
        raise NotAGraph(f"messages nested deeper than {MAX_DEPTH}")
    if kind == "tensor":
        name, external = "", False
        for number, wire, value in _fields(buf, start, end):
            if number == _TENSOR_NAME and wire == 2:
                a, b = value
                name = buf[a:b].decode("utf-8", "replace")
            elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                external = True
            elif number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
                external = True
        if external:
            found.append(name or "(unnamed)")
        return
    children = _CHILDREN[kind]
    for number, wire, value in _fields(buf, start, end):
        child = children.get(number)
        if child is not None and wire == 2:
            a, b = value
            _walk(buf, a, b, child, depth + 1, found)


def external_tensors(graph: bytes) -> list[str]:
    """Names of the tensors whose data the graph keeps in another file ([] for a
    self-contained graph); NotAGraph when the bytes are not a protobuf message."""
    found: list[str] = []
    _walk(graph, 0, len(graph), "model", 0, found)
    return found
