"""The Open Inference Protocol over gRPC (`grpc_predict_v2.proto`), in the server's own
process and event loop on `ORTSERVE_GRPC_PORT`: the same data plane, batcher, metrics,
API keys (`authorization: Bearer <key>` metadata; the repository RPCs take the admin
keys), deadlines (the call's gRPC deadline) and drain as the HTTP APIs.

Imported only when the port is set: the generated messages live in protobuf's global
pool under the protocol's package name, which a process can hold only once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote

import grpc
from google.protobuf.message import Message

from app.api.edge.auth import Access, bearer
from app.api.edge.body import sized_work
from app.api.edge.errors import InternalError, grpc_status
from app.api.edge.params import deadline, model_name, route_key, version
from app.api.edge.readiness import model_ready, readiness
from app.api.edge.state import AppState
from app.api.v2 import tensors as tz
from app.api.v2.grpc import grpc_predict_v2_pb2 as pb
from app.api.v2.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from app.api.v2.metadata import model_metadata, repository_index, server_metadata
from app.errors import InvalidInput, ServingError
from app.observability.audit import admin_action
from app.observability.context import GRPC, name_model, request_context
from app.settings import Settings

log = logging.getLogger("ortserve.grpc")

DEADLINE_MARGIN_S = 0.005
# A status message travels in a trailer, percent-encoded, and clients refuse trailers over
# 16 KiB (reporting RESOURCE_EXHAUSTED instead of the error): a message that echoes a
# 100 KB name is cut to this many characters (at most 12 KiB once encoded).
MAX_STATUS_MESSAGE = 1024
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "BYTES": "bytes_contents"}


def _name(raw: str, field: str = "name") -> str:
    """A model name as HTTP paths take it (the same parser); empty is the default model."""
    return model_name(raw, field) if raw else raw


def _input_tensors(request: pb.ModelInferRequest, max_bytes: int) -> list[tz.Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    out = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            out.append(tz.from_raw(t.name, t.datatype, shape, raw[i], max_bytes))
            continue
        field = CONTENTS.get(t.datatype)
        if field is None:
            raise InvalidInput(f"input {t.name!r}: unknown datatype {t.datatype!r}")
        out.append(tz.from_contents(t.name, t.datatype, shape, getattr(t.contents, field),
                                    max_bytes))
    return out


class _Malformed:
    """A request body that does not parse as its message (answered INVALID_ARGUMENT, not
    the INTERNAL that gRPC gives a failing deserializer)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(parse: Callable[[bytes], Message]) -> Callable[[bytes], Message | _Malformed]:
    def deserialize(data: bytes) -> Message | _Malformed:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bytes
            return _Malformed(f"{type(exc).__name__}: {exc}")
    return deserialize


# A servicer's bound method, as gRPC calls it: (request, context) -> response
Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _rejecting_malformed(method: Handler) -> Handler:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid protobuf message: {request.error}")
        return await method(request, context)
    return handler


def service_handler(servicer: InferenceService) -> grpc.GenericRpcHandler:
    """The generated service's methods, each with a deserializer that does not throw."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            _rejecting_malformed(getattr(servicer, m.name)),
            request_deserializer=_lenient(getattr(pb, m.input_type.name).FromString),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString)
        for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


Req = TypeVar("Req")
Resp = TypeVar("Resp")
# A method of the servicer: (self, request message, context) -> response message
Method = Callable[["InferenceService", Req, Any], Awaitable[Resp]]


def _guarded(access: Access) -> Callable[[Method[Req, Resp]], Method[Req, Resp]]:
    """A method of the servicer behind the gate, in its own request context, with every
    error answered as its gRPC status (an unexpected one logged and INTERNAL)."""
    def wrap(method: Method[Req, Resp]) -> Method[Req, Resp]:
        async def handler(self: InferenceService, request: Req,
                          context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
            with request_context(os.urandom(16).hex(), GRPC) as ctx:
                try:
                    metadata = dict(context.invocation_metadata() or ())
                    await self.state.gate.admit(
                        access, bearer(metadata.get("authorization")), peer_address(context),
                        GRPC)
                    answer = await method(self, request, context)
                    if access is Access.ADMIN:
                        admin_action(ctx.key_id, GRPC, method.__name__, "OK",
                                     ctx.request_id)
                    return answer
                except ServingError as exc:
                    if access is Access.ADMIN:
                        admin_action(ctx.key_id, GRPC, method.__name__,
                                     grpc_status(exc), ctx.request_id)
                    await _abort(context, exc)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug: answered, then logged
                    log.error("unexpected error in %s: %s: %s", method.__name__,
                              type(exc).__name__, exc, exc_info=exc,
                              extra={"request_id": ctx.request_id})
                    await _abort(context, InternalError(
                        f"internal server error (request id {ctx.request_id})"))
        handler.__name__ = method.__name__
        return handler
    return wrap


def peer_address(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The client's address from gRPC's peer string (`ipv4:1.2.3.4:5678`,
    `ipv6:[::1]:5678`, `unix:...`)."""
    peer = context.peer() or ""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: ServingError) -> NoReturn:
    message = exc.message
    if len(message) > MAX_STATUS_MESSAGE:
        message = message[:MAX_STATUS_MESSAGE] + "..."
    await context.abort(grpc.StatusCode[grpc_status(exc)], message)
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    @_guarded(Access.PUBLIC)
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_guarded(Access.PUBLIC)
    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=readiness(self.state).ready)

    @_guarded(Access.PREDICT)
    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            model_ready(self.state, _name(request.name), version(request.version))
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_guarded(Access.PREDICT)
    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**server_metadata())

    @_guarded(Access.PREDICT)
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        meta = model_metadata(self.state.dataplane, _name(request.name),
                              version(request.version))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]])

    @_guarded(Access.PREDICT)
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        state = self.state
        name, model_version = _name(request.model_name), version(request.model_version)
        name_model(name, model_version)
        tensors = await sized_work(request.ByteSize(), _input_tensors, request,
                                   state.settings.max_inputs)
        remaining = context.time_remaining()
        # answer a few ms before the call's deadline, so that the server's own timeout
        # (dropping queued inputs, counted as `timeout`) acts before the transport cancels
        # the call
        timeout = deadline(state.settings.request_timeout_s, None if remaining is None
                           else max(remaining - DEADLINE_MARGIN_S, 0.001))
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def call_done(_: object) -> None:
            if not gone.done():
                gone.set_result(None)

        context.add_done_callback(call_done)
        requested: Sequence[str] | None = [o.name for o in request.outputs] or None
        metadata = dict(context.invocation_metadata() or ())
        key = route_key(metadata.get("x-route-key"), "x-route-key")
        state.drain.enter()
        try:
            result = await state.dataplane.infer(name, model_version,
                                                 lambda model: tz.to_inputs(model, tensors),
                                                 timeout, lambda: gone, key)
        finally:
            state.drain.leave()
        name_model(result.model, result.version)
        outputs = tz.outputs(result, requested)
        return pb.ModelInferResponse(
            model_name=result.model, model_version=str(result.version), id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(
                name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
            raw_output_contents=[tz.raw(t) for t in outputs])

    @_guarded(Access.ADMIN)
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            index(**e) for e in repository_index(self.state.dataplane, request.ready)])

    @_guarded(Access.ADMIN)
    async def RepositoryModelLoad(self, request: Any, context: Any
                                  ) -> pb.RepositoryModelLoadResponse:
        await self.state.dataplane.load(model_name(request.model_name, "model_name"))
        return pb.RepositoryModelLoadResponse()

    @_guarded(Access.ADMIN)
    async def RepositoryModelUnload(self, request: Any, context: Any
                                    ) -> pb.RepositoryModelUnloadResponse:
        await self.state.dataplane.unload(model_name(request.model_name, "model_name"))
        return pb.RepositoryModelUnloadResponse()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the HTTPS settings (the same certificate and key), with client certificates
    required when a client CA is set; None without TLS."""
    if settings.ssl_certfile is None:
        return None
    if settings.ssl_keyfile is None:
        raise ValueError("ORTSERVE_SSL_CERTFILE needs ORTSERVE_SSL_KEYFILE")
    key = Path(settings.ssl_keyfile).read_bytes()
    cert = Path(settings.ssl_certfile).read_bytes()
    ca = Path(settings.ssl_ca_certs).read_bytes() if settings.ssl_ca_certs else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


async def start(state: AppState, host: str, port: int,
                max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ])
    server.add_generic_rpc_handlers([service_handler(InferenceService(state))])
    credentials = server_credentials(state.settings)
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if not bound:
        raise RuntimeError(f"gRPC: cannot listen on {address}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d (%s)", host, bound,
             "plaintext" if credentials is None else ("mutual TLS" if state.settings.ssl_ca_certs
                                                 else "TLS"))
    return server
