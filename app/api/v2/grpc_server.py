"""The Open Inference Protocol over gRPC (`grpc_predict_v2.proto`), in the server's own
process and event loop on `ORTSERVE_GRPC_PORT`: the same data plane, batcher, metrics,
API keys (`authorization: Bearer <key>` metadata; the repository RPCs take the admin
keys), deadlines (the call's gRPC deadline) and drain as the HTTP APIs.

Imported only when the port is set: the generated messages live in protobuf's global
pool under the protocol's package name, which a process can hold only once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Sequence

import grpc

from app import __version__
from app.api.edge.drain import STOPPING
from app.api.edge.state import AppState
from app.api.v2 import tensors as tz
from app.api.v2.grpc import grpc_predict_v2_pb2 as pb
from app.api.v2.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from app.api.v2.rest import EXTENSIONS, model_metadata
from app.errors import (
    ChangeRefused,
    ClientCancelled,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ServingError,
    mapped,
)
from app.security.keys import KeyStore
from app.security.ratelimit import BackendDown, Limiter

log = logging.getLogger("ortserve.grpc")

DEADLINE_MARGIN_S = 0.005
CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    QueueFull: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ClientCancelled: grpc.StatusCode.CANCELLED,
    ChangeRefused: grpc.StatusCode.FAILED_PRECONDITION,
}
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "BYTES": "bytes_contents"}


def _code(exc: ServingError) -> grpc.StatusCode:
    return mapped(exc, CODES, grpc.StatusCode.INTERNAL)


def _param(p: pb.InferParameter):
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _version(raw: str) -> int | None:
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInput(f"model version {raw!r} must be a positive integer")
    return int(raw)


def _input_tensors(request: pb.ModelInferRequest) -> list[tz.Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    out = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            out.append(tz.from_raw(t.name, t.datatype, shape, raw[i]))
            continue
        field = CONTENTS.get(t.datatype)
        if field is None:
            raise InvalidInput(f"input {t.name!r}: unknown datatype {t.datatype!r}")
        values = list(getattr(t.contents, field))
        if t.datatype == "BYTES":
            if len(values) != tz.elements(t.name, shape):
                raise InvalidInput(f"input {t.name!r}: {len(values)} values for shape {shape}")
            out.append(tz.Tensor(t.name, "BYTES", shape, values))
        else:
            out.append(tz.from_json(t.name, t.datatype, shape, values))
    return out


class _Malformed:
    """A request body that does not parse as its message (answered INVALID_ARGUMENT, not
    the INTERNAL that gRPC gives a failing deserializer)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bytes
            return _Malformed(f"{type(exc).__name__}: {exc}")
    return deserialize


def _rejecting_malformed(method):
    async def handler(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid protobuf message: {request.error}")
        return await method(request, context)
    return handler


def service_handler(servicer) -> grpc.GenericRpcHandler:
    """The generated service's methods, each with a deserializer that does not throw."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            _rejecting_malformed(getattr(servicer, m.name)),
            request_deserializer=_lenient(getattr(pb, m.input_type.name).FromString),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString)
        for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState, keys: KeyStore, limiter: Limiter | None) -> None:
        self.state, self.keys, self.limiter = state, keys, limiter

    async def _guard(self, context: grpc.aio.ServicerContext, admin: bool = False) -> None:
        metadata = dict(context.invocation_metadata() or ())
        auth = metadata.get("authorization", "")
        given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if admin:
            keys = [k.encode() for k in self.state.settings.admin_keys if k]
            found = False
            for key in keys:
                found |= hmac.compare_digest(given, key)
            if not given:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing admin key")
            if not found:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "admin key not accepted (ORTSERVE_ADMIN_KEYS)")
        elif self.keys.enabled:
            if not given:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "missing API key: send 'authorization: Bearer <key>'")
            if not self.keys.matches(given):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "API key not accepted")
            if self.limiter is not None:  # the HTTP APIs' limiter: one limit per key
                try:
                    wait = await self.limiter.take(hashlib.sha256(given).hexdigest())
                except BackendDown as exc:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                if wait > 0:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"rate limit exceeded; retry in {wait:.2f} s")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        s = self.state
        return pb.ServerReadyResponse(ready=s.started and not s.draining
                                      and not s.registry.not_ready())

    async def ModelReady(self, request, context):
        await self._guard(context)
        try:
            self.state.dataplane.model(request.name, _version(request.version))
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        await self._guard(context)
        return pb.ServerMetadataResponse(name="ortserve", version=__version__,
                                         extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        await self._guard(context)
        try:
            meta = model_metadata(self.state, request.name, _version(request.version))
        except ServingError as exc:
            await context.abort(_code(exc), exc.message)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        await self._guard(context)
        state = self.state
        if state.drain.phase == STOPPING:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the server is shutting down; retry on another replica")
        try:
            return await self._infer(request, context)
        except ServingError as exc:
            await context.abort(_code(exc), exc.message)

    async def _infer(self, request, context) -> pb.ModelInferResponse:
        state = self.state
        version = _version(request.model_version)
        tensors = _input_tensors(request)
        deadline = state.settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            # answer a few ms before the call's deadline, so that the server's own timeout
            # (dropping queued inputs, counted as `timeout`) acts before the transport
            # cancels the call
            deadline = min(deadline, max(remaining - DEADLINE_MARGIN_S, 0.001))
        gone = asyncio.get_running_loop().create_future()
        context.add_done_callback(lambda _: gone.done() or gone.set_result(None))
        requested: Sequence[str] | None = [o.name for o in request.outputs] or None
        result = await state.dataplane.infer(request.model_name, version,
                                             lambda model: tz.to_inputs(model, tensors),
                                             deadline, lambda: gone, api="grpc")
        outputs = tz.outputs(result, requested)
        return pb.ModelInferResponse(
            model_name=result.model, model_version=str(result.version), id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(
                name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
            raw_output_contents=[tz.raw(t) for t in outputs])

    async def RepositoryIndex(self, request, context):
        await self._guard(context, admin=True)
        index = pb.RepositoryIndexResponse.ModelIndex
        entries = [index(name=e["name"], version=str(e["version"] or ""),
                         state=e["state"].upper(), reason=e["reason"] or "")
                   for e in self.state.registry.index()]
        if request.ready:
            entries = [e for e in entries if e.state == "READY"]
        return pb.RepositoryIndexResponse(models=entries)

    async def RepositoryModelLoad(self, request, context):
        await self._guard(context, admin=True)
        try:
            rec = await self.state.registry.load(request.model_name)
        except ServingError as exc:
            await context.abort(_code(exc), exc.message)
        if rec.route is None:
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"failed to load {request.model_name!r}: {rec.error}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self._guard(context, admin=True)
        try:
            await self.state.registry.unload(request.model_name)
        except ServingError as exc:
            await context.abort(_code(exc), exc.message)
        return pb.RepositoryModelUnloadResponse()


async def start(state: AppState, keys: KeyStore, limiter: Limiter | None, host: str,
                port: int, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ])
    server.add_generic_rpc_handlers([service_handler(InferenceService(state, keys,
                                                                      limiter))])
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise RuntimeError(f"gRPC: cannot listen on {host}:{port}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d", host, bound)
    return server
