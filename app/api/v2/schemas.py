"""The Open Inference Protocol's (KServe v2) JSON shapes, as pydantic models.

From `kserve/open-inference-protocol`, `specification/protocol/inference_rest.md`, plus
the `parameters` of Triton's binary tensor data extension. Requests accept the extra
keys clients add; responses are built to these shapes and tested against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP16", "FP32", "FP64", "BYTES")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ServerMetadata(_Open):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Open):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Open):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(_Open):
    name: str
    # integers as JSON writes them: not `true`, `"1"` or `1.0`, which a lax int accepts
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Open):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Open):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Open):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Open):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(_Open):
    error: str


class RepositoryIndexRequest(_Open):
    ready: bool | None = None


class RepositoryIndexEntry(_Open):
    name: str
    version: str | None = None
    state: str | None = None
    reason: str | None = None
