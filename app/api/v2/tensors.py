"""Open Inference Protocol tensors <-> the data plane's inputs and typed results.

Shared by the REST and gRPC front ends. Each model kind has one signature: text models
take a BYTES tensor `text` of shape [N] (or [N, 1]); feature models an FP32 (or FP64)
tensor `features` of shape [N, features]. Classifiers answer `probabilities` FP32 [N,
classes] and `label` BYTES [N]; regressors `value` FP32 [N]. BYTES elements travel as
4-byte little-endian lengths, each followed by its bytes (the spec's raw format).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from app.errors import InvalidInput
from app.serving.model import InferenceResult
from app.serving.views import ServedVersion

PLATFORM = "onnxruntime_onnx"
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
FEATURE_TYPES = ("FP32", "FP64")
# Most dimensions a tensor may have (the models served take rank 1 or 2), and most elements
# it may declare: a shape is checked against both, dimension by dimension, before anything is
# multiplied, allocated or decoded. An unbounded shape once took 5 s to multiply.
MAX_RANK = 8
MAX_ELEMENTS = 1 << 24
_LEN = struct.Struct("<I")


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | Sequence[bytes]


def _bad(message: str, field: str) -> InvalidInput:
    return InvalidInput(message, {"field": field})


def elements(name: str, shape: Sequence[int]) -> int:
    """The element count a shape declares, checked as it is multiplied: at most MAX_RANK
    dimensions of non-negative integers and MAX_ELEMENTS elements."""
    if len(shape) > MAX_RANK:
        raise _bad(f"input {name!r}: {len(shape)} dimensions, at most {MAX_RANK}", name)
    count = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MAX_ELEMENTS:
            raise _bad(f"input {name!r}: shape {list(shape)} must be non-negative integers "
                       f"of at most {MAX_ELEMENTS}", name)
        count *= d
        if count > MAX_ELEMENTS:
            raise _bad(f"input {name!r}: shape {list(shape)} has more than {MAX_ELEMENTS} "
                       "elements", name)
    return count


def decode_bytes(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """`count` length-prefixed elements that must fill `raw` exactly (each takes at least
    its 4-byte length: a count that cannot fit is refused before decoding)."""
    view, out, pos = memoryview(raw), [], 0
    if count * _LEN.size > len(view):
        raise _bad(f"input {name!r}: {count} BYTES elements cannot fit in {len(view)} bytes",
                   name)
    for _ in range(count):
        if pos + 4 > len(view):
            raise _bad(f"input {name!r}: BYTES data ends inside an element's length", name)
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise _bad(f"input {name!r}: a BYTES element of {n} bytes overruns the data",
                       name)
        out.append(bytes(view[pos:pos + n]))
        pos += n
    if pos != len(view):
        raise _bad(f"input {name!r}: {len(view) - pos} bytes left after {count} BYTES "
                   "elements", name)
    return out


def encode_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(b)) + b for b in items)


def _bytes_count(name: str, count: int, limit: int | None) -> None:
    """BYTES elements are texts to every model that takes them: past the most texts a
    request may carry, refused before one is decoded."""
    if limit is not None and count > limit:
        raise _bad(f"input {name!r}: {count} BYTES elements, the limit is {limit} per "
                   "request (ORTSERVE_MAX_INPUTS)", name)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview,
             max_bytes: int | None = None) -> Tensor:
    """`max_bytes`: the most BYTES elements a request may carry."""
    count = elements(name, shape)
    if datatype == "BYTES":
        _bytes_count(name, count, max_bytes)
        return Tensor(name, datatype, list(shape), decode_bytes(raw, count, name))
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}", name)
    want = count * np.dtype(dtype).itemsize
    if len(raw) != want:
        raise _bad(f"input {name!r}: {len(raw)} bytes of data, shape {list(shape)} of "
                   f"{datatype} needs {want}", name)
    return Tensor(name, datatype, list(shape),
                  np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")))


def from_contents(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any],
                  max_bytes: int | None = None) -> Tensor:
    """A tensor from gRPC's typed contents (`bytes_contents`, `fp32_contents`, ...): the
    field's type is the values' type, so nothing is checked one by one; their count is
    checked before anything is copied (BYTES elements stay in the message)."""
    count = elements(name, shape)
    if len(values) != count:
        raise _bad(f"input {name!r}: {len(values)} values for shape {list(shape)}", name)
    if datatype == "BYTES":
        _bytes_count(name, count, max_bytes)
        return Tensor(name, datatype, list(shape), values)
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}", name)
    try:
        array: np.ndarray = np.fromiter(values, dtype=dtype, count=count)
    except (OverflowError, ValueError) as exc:
        raise _bad(f"input {name!r}: {exc}", name) from None
    return Tensor(name, datatype, list(shape), array)


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        return [x for part in data for x in _flatten(part)]
    return data


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any,
              max_bytes: int | None = None) -> Tensor:
    count = elements(name, shape)
    if datatype == "BYTES":
        _bytes_count(name, count, max_bytes)
    flat = _flatten(data)
    if len(flat) != count:
        raise _bad(f"input {name!r}: {len(flat)} values for shape {list(shape)}", name)
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise _bad(f"input {name!r}: BYTES data must be strings in JSON", name)
        return Tensor(name, datatype, list(shape), [x.encode() for x in flat])
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}", name)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) or
               (datatype == "BOOL" and isinstance(x, bool)) for x in flat):
        raise _bad(f"input {name!r}: {datatype} data must be numbers", name)
    try:
        array: np.ndarray = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise _bad(f"input {name!r}: {exc}", name) from None
    return Tensor(name, datatype, list(shape), array)


def signature(model: ServedVersion) -> tuple[list[tuple[str, str, list[int]]],
                                             list[tuple[str, str, list[int]]]]:
    """(inputs, outputs) as (name, datatype, shape), -1 for a variable dimension."""
    if model.kind == "text-classification":
        inputs = [("text", "BYTES", [-1])]
    else:
        inputs = [("features", "FP32", [-1, len(model.features or ())])]
    if model.labels:
        outputs = [("probabilities", "FP32", [-1, len(model.labels)]),
                   ("label", "BYTES", [-1])]
    else:
        outputs = [("value", "FP32", [-1])]
    return inputs, outputs


class Texts(Sequence[str]):
    """A BYTES tensor's elements as texts, each decoded when it is read. The pipeline
    counts the inputs before it reads one, so a request with more than it takes is refused
    without decoding any (200,000 one-byte elements once took 25 ms of the event loop)."""

    def __init__(self, items: Sequence[bytes]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        try:
            return self._items[i].decode("utf-8")
        except UnicodeDecodeError:
            i = i % len(self)
            raise _bad(f"input 'text'[{i}]: not UTF-8", f"text[{i}]") from None


class Rows(Sequence[list[float]]):
    """An [N, features] tensor's rows as lists of floats, each converted when it is read
    (the pipeline counts the rows first: a request past its limit converts none)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, i: int) -> list[float]: ...
    @overload
    def __getitem__(self, i: slice) -> list[list[float]]: ...
    def __getitem__(self, i: int | slice) -> list[float] | list[list[float]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row: list[float] = self._array[i].astype(np.float64).tolist()
        return row


def to_inputs(model: ServedVersion, tensors: Sequence[Tensor]) -> Sequence[Any]:
    """The request's one tensor as the data plane's inputs (texts or rows), read lazily:
    the pipeline checks their count before it reads one."""
    [(name, datatype, shape)] = signature(model)[0]
    if len(tensors) != 1 or tensors[0].name != name:
        got = [t.name for t in tensors]
        raise _bad(f"model {model.name} takes one input {name!r} ({datatype} {shape}); the "
                   f"request has {got}", "inputs")
    t = tensors[0]
    if name == "text":
        if t.datatype != "BYTES" or not (len(t.shape) == 1 or
                                         (len(t.shape) == 2 and t.shape[1] == 1)):
            raise _bad(f"input 'text': expected BYTES of shape [N] or [N, 1], got "
                       f"{t.datatype} {t.shape}", "text")
        assert not isinstance(t.data, np.ndarray)  # a BYTES tensor holds its items as bytes
        return Texts(t.data)
    features = shape[1]
    if t.datatype not in FEATURE_TYPES or len(t.shape) != 2 or t.shape[1] != features:
        raise _bad(f"input 'features': expected FP32 or FP64 of shape [N, {features}], got "
                   f"{t.datatype} {t.shape}", "features")
    return Rows(np.asarray(t.data).reshape(t.shape))


def outputs(result: InferenceResult, requested: Sequence[str] | None) -> list[Tensor]:
    """The requested outputs (default: all of the model's) of one result."""
    n = len(result.outputs)
    if result.labels:
        probs = (np.stack(result.outputs).astype(np.float32, copy=False) if n
                 else np.zeros((0, len(result.labels)), np.float32))
        available = {
            "probabilities": lambda: Tensor("probabilities", "FP32", list(probs.shape), probs),
            "label": lambda: Tensor("label", "BYTES", [n], [
                result.labels[int(i)].encode() for i in probs.argmax(axis=1)]),
        }
    else:
        values = np.asarray([float(np.asarray(r).reshape(-1)[0]) for r in result.outputs],
                            dtype=np.float32)
        available = {"value": lambda: Tensor("value", "FP32", [n], values)}
    names = list(requested) if requested else list(available)
    unknown = [x for x in names if x not in available]
    if unknown:
        raise _bad(f"model {result.model} has no output {unknown[0]!r} (it has "
                   f"{list(available)})", "outputs")
    return [available[x]() for x in names]


def raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        assert not isinstance(t.data, np.ndarray)  # a BYTES tensor holds its items as bytes
        return encode_bytes(t.data)
    return np.ascontiguousarray(
        t.data, dtype=np.dtype(NUMPY[t.datatype]).newbyteorder("<")).tobytes()


def json_data(t: Tensor) -> list:
    if t.datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in t.data]
    return np.asarray(t.data).reshape(-1).tolist()
