"""The edge every protocol shares (app/api/edge/): one version parser, one readiness rule,
one key matcher and one error table per protocol, asked the same question over /predict's
API, the Open Inference Protocol over HTTP, and over gRPC (real server processes; gRPC
through the messages and stub of Triton's own client, `tritonclient.grpc`)."""

from __future__ import annotations

import inspect
import signal
from urllib.parse import quote

import grpc
import httpx
import pytest
import tritonclient.grpc.service_pb2 as pb_messages
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from app.api.edge import errors as edge_errors
from app.api.edge.errors import GRPC_STATUS, V1_STATUS, V2_STATUS
from app.errors import ServingError
from tests.builders import build_repository
from tests.servers import ServiceProcess, free_port, wait_until

KEY = "predict-key-0123456789"
ADMIN = "admin-key-0123456789"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    port = free_port()
    with ServiceProcess(build_repository(root / "models"), root / "log",
                        ORTSERVE_GRPC_PORT=str(port), ORTSERVE_API_KEYS=KEY,
                        ORTSERVE_ADMIN_KEYS=ADMIN) as svc:
        svc.grpc = f"127.0.0.1:{port}"
        yield svc


@pytest.fixture(scope="module")
def stub(service):
    channel = grpc.insecure_channel(service.grpc)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def pb():
    return pb_messages


def _http(service, method: str, path: str, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{service.url}{path}", headers=headers, timeout=30, **kw)


def _grpc_code(call, *args, key: str | None = KEY) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {key}")] if key else []
    try:
        call(*args, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


BAD_VERSIONS = ["²", "\u0663", "0", "01", "-1", "+1", "1.0", " 1", "1e3", "9" * 10, "9" * 5000,
                "\x00", "1\x00"]
INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["good"]}]}


@pytest.mark.parametrize("raw", BAD_VERSIONS, ids=lambda raw: repr(raw)[:12])
def test_a_version_is_ascii_digits_on_every_protocol(service, stub, pb, raw):
    """`/v2/models/sentiment/versions/%C2%B2/infer` once answered 500: int() reads Unicode
    digits that the check before it let through. Now every protocol answers a client error
    naming the parameter."""
    path = quote(raw, safe="")
    r = _http(service, "POST", f"/v2/models/sentiment/versions/{path}/infer", json=INFER)
    assert r.status_code == 400 and "version" in r.json()["error"], r.text
    r = _http(service, "GET", f"/v2/models/sentiment/versions/{path}/ready")
    assert r.status_code == 400 and "version" in r.json()["error"], r.text
    r = _http(service, "GET", f"/v2/models/sentiment/versions/{path}")
    assert r.status_code == 400, r.text
    for method, route, body in (("GET", f"/models/sentiment/versions/{path}", None),
                                ("POST", f"/v2/models/sentiment/versions/{path}/explain",
                                 {"inputs": ["good"]})):
        r = _http(service, method, route, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "version"
    request = pb.ModelInferRequest(model_name="sentiment", model_version=raw, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1],
                                              contents=pb.InferTensorContents(
                                                  bytes_contents=[b"good"]))])
    assert _grpc_code(stub.ModelInfer, request) == grpc.StatusCode.INVALID_ARGUMENT
    meta = pb.ModelMetadataRequest(name="sentiment", version=raw)
    assert _grpc_code(stub.ModelMetadata, meta) == grpc.StatusCode.INVALID_ARGUMENT
    ready = stub.ModelReady(pb.ModelReadyRequest(name="sentiment", version=raw),
                            metadata=[("authorization", f"Bearer {KEY}")])
    assert ready.ready is False


def test_a_well_formed_version_not_served_is_not_found_everywhere(service, stub, pb):
    r = _http(service, "POST", "/v2/models/sentiment/versions/999999999/infer", json=INFER)
    assert r.status_code == 404
    assert _http(service, "GET", "/models/sentiment/versions/7").status_code == 404
    meta = pb.ModelMetadataRequest(name="sentiment", version="7")
    assert _grpc_code(stub.ModelMetadata, meta) == grpc.StatusCode.NOT_FOUND


def test_one_key_matcher_for_every_protocol(service, stub, pb):
    """Predict keys on the data plane, admin keys on the repository APIs, the same
    answers over HTTP and gRPC; a predict key is not an admin key and vice versa."""
    for key, status, code in ((None, 401, grpc.StatusCode.UNAUTHENTICATED),
                              ("wrong", 403, grpc.StatusCode.PERMISSION_DENIED),
                              (ADMIN, 403, grpc.StatusCode.PERMISSION_DENIED),
                              (KEY, 200, grpc.StatusCode.OK)):
        assert _http(service, "GET", "/models", key=key).status_code == status
        assert _http(service, "GET", "/v2/models/sentiment", key=key).status_code == status
        assert _grpc_code(stub.ServerMetadata, pb.ServerMetadataRequest(), key=key) == code
    for key, status, code in ((None, 401, grpc.StatusCode.UNAUTHENTICATED),
                              ("wrong", 403, grpc.StatusCode.PERMISSION_DENIED),
                              (KEY, 403, grpc.StatusCode.PERMISSION_DENIED),
                              (ADMIN, 200, grpc.StatusCode.OK)):
        assert _http(service, "GET", "/repository/index", key=key).status_code == status
        assert _http(service, "POST", "/v2/repository/index", key=key).status_code == status
        index = pb.RepositoryIndexRequest()
        assert _grpc_code(stub.RepositoryIndex, index, key=key) == code
    # health stays open on every protocol
    assert _http(service, "GET", "/health/ready", key=None).status_code == 200
    assert _http(service, "GET", "/v2/health/ready", key=None).status_code == 200
    assert _grpc_code(stub.ServerReady, pb.ServerReadyRequest(), key=None) == grpc.StatusCode.OK



def _ready_everywhere(svc) -> tuple[int, int, bool, bool]:
    with grpc.insecure_channel(svc.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        server = stub.ServerReady(pb_messages.ServerReadyRequest(), timeout=30).ready
        model = stub.ModelReady(pb_messages.ModelReadyRequest(name="tabular"),
                                timeout=30).ready
    return (httpx.get(f"{svc.url}/health/ready", timeout=30).status_code,
            httpx.get(f"{svc.url}/v2/health/ready", timeout=30).status_code, server, model)


def test_one_readiness_rule_for_every_protocol(tmp_path):
    """No models, or draining: /health/ready, /v2/health/ready, gRPC ServerReady and
    ModelReady all say not ready (the v2 and gRPC copies once ignored both)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    svc = ServiceProcess(empty, tmp_path / "empty.log", ORTSERVE_GRPC_PORT=str(port))
    svc.grpc = f"127.0.0.1:{port}"
    try:  # never ready: wait until it answers at all
        wait_until(lambda: httpx.get(f"{svc.url}/health/live").status_code == 200, 60,
                   "liveness")
        r = httpx.get(f"{svc.url}/health/ready", timeout=30)
        assert r.json()["not_ready"] == {"service": "no models configured or found"}
        assert _ready_everywhere(svc) == (503, 503, False, False)
    finally:
        svc.terminate()

    port = free_port()
    svc = ServiceProcess(build_repository(tmp_path / "models"), tmp_path / "log",
                         ORTSERVE_GRPC_PORT=str(port), ORTSERVE_DRAIN_DELAY_S="60")
    svc.grpc = f"127.0.0.1:{port}"
    with svc:
        assert _ready_everywhere(svc) == (200, 200, True, True)
        assert httpx.get(f"{svc.url}/v2/models/tabular/ready").status_code == 200
        svc.proc.send_signal(signal.SIGTERM)  # draining for 60 s: work still accepted
        wait_until(lambda: httpx.get(f"{svc.url}/health/ready").status_code == 503, 30,
                   "readiness turning 503")
        assert _ready_everywhere(svc) == (503, 503, False, False)
        assert httpx.get(f"{svc.url}/v2/models/tabular/ready").status_code == 503
        svc.proc.send_signal(signal.SIGTERM)  # a second SIGTERM stops at once


def _serving_errors() -> list[type[ServingError]]:
    import app.errors

    found = []
    for module in (app.errors, edge_errors):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ServingError) and cls is not ServingError:
                found.append(cls)
    return found


@pytest.mark.parametrize("table", [V1_STATUS, V2_STATUS, GRPC_STATUS],
                         ids=["v1", "v2", "grpc"])
def test_every_error_has_a_status_in_every_protocol(table):
    """One table per protocol, side by side: an error class missing from one would leave
    that protocol with the generic internal error."""
    missing = [cls.__name__ for cls in _serving_errors()
               if not any(base in table for base in cls.__mro__ if base is not ServingError)]
    assert missing == []
