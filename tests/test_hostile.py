"""Hostile input on every protocol, against one real server process (HTTP and gRPC).

Property-based (hypothesis): Open Inference Protocol REST bodies in JSON and with binary
tensors, gRPC `ModelInferRequest`s (and the other RPCs) built from arbitrary field values
or arbitrary bytes, every path parameter of every route, and every header the service
reads. The promise: no 5xx (over gRPC no INTERNAL, UNKNOWN or DATA_LOSS), every refusal in
its protocol's error shape, and no unexpected error in the server's log. Then regression
tests for what `python -m bench hostile` and these properties found.

gRPC goes through Triton's client messages (`tritonclient.grpc.service_pb2`): the app's
own generated module registers the same protobuf package, which a process holds once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import grpc
import httpx
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from tests.builders import build_repository
from tests.servers import ServiceProcess, free_port

KEY, ADMIN = "hostile-predict-key-0123456789", "hostile-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODELS = ("sentiment", "tabular", "regression")
MAX_INPUTS = 256
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    port = free_port()
    with ServiceProcess(build_repository(root / "models"), root / "log",
                        ORTSERVE_GRPC_PORT=str(port), ORTSERVE_API_KEYS=KEY,
                        ORTSERVE_ADMIN_KEYS=ADMIN, ORTSERVE_MAX_INPUTS=str(MAX_INPUTS),
                        # arbitrary keys must not lock the tests' own address out
                        ORTSERVE_AUTH_FAILURES_PER_MINUTE="0",
                        ORTSERVE_ADMIN_RATE_LIMIT_PER_S="0", ORTSERVE_DRAIN_DELAY_S="0",
                        ORTSERVE_LOG_LEVEL="warning") as svc:
        svc.grpc = f"127.0.0.1:{port}"
        yield svc


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(service):
    with grpc.insecure_channel(service.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(autouse=True)
def no_unexpected_errors(service):
    """Whatever a test sent, the server logged no unexpected error (a bug answered 500 or
    INTERNAL is logged with its traceback)."""
    before = len(service.logs())
    yield
    new = service.logs()[before:]
    for sign in ("unexpected error", "Traceback", "Exception in ASGI application"):
        assert sign not in new, new[-4000:]


# -- what an answer must look like ---------------------------------------------------------
def v2_answer(r: httpx.Response) -> None:
    """No 5xx; a refusal is the Open Inference Protocol's `{"error": "message"}`."""
    assert r.status_code < 500, (r.status_code, r.text[:1000])
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text[:500]


def infer_answer(r: httpx.Response) -> None:
    """As v2_answer, and a 200 is an inference response (JSON, or JSON then the binary
    outputs)."""
    v2_answer(r)
    if r.status_code == 200:
        length = r.headers.get("inference-header-content-length")
        head = r.content[:int(length)] if length is not None else r.content
        assert isinstance(json.loads(head).get("outputs"), list), r.text[:500]


def v1_answer(r: httpx.Response) -> None:
    """No 5xx; a refusal is the service's own `{"error": {"code", "message", ...}}`."""
    assert r.status_code < 500, (r.status_code, r.text[:1000])
    if r.status_code >= 400:
        error = r.json().get("error")
        assert isinstance(error, dict) and isinstance(error.get("code"), str) and \
            isinstance(error.get("message"), str), r.text[:500]


def grpc_code(call, request, key: str | None = KEY) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() not in SERVER_ERRORS, (exc.code(), exc.details())
        return exc.code()
    return grpc.StatusCode.OK


# -- regressions: what the hostile bench and the properties below found --------------------
def _text_body(**extra) -> str:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "data": ["good day"]}], **extra})


def test_a_timeout_parameter_of_any_size_is_read_not_divided(http):
    """`{"parameters": {"timeout": <400 digits>}}` once answered 500: the integer was too
    large to divide as a float. Any larger value is the server's own timeout; one below
    the timeout header's minimum (50 ms) is a bad request, as for the header (it was a 503
    from admission, for a deadline no request can meet)."""
    def post(value: str) -> httpx.Response:
        body = _text_body(parameters={"timeout": "VALUE"}).replace('"VALUE"', value)
        return http.post("/v2/models/sentiment/infer", content=body.encode(), headers=AUTH)

    for ok in ("9" * 400, "100000", "50000"):
        assert post(ok).status_code == 200, ok
    for bad in ("-" + "9" * 400, "0", "1", "49999", "1.5", "1e400", '"100000"', "true"):
        r = post(bad)
        assert r.status_code == 400 and "timeout" in r.json()["error"], (bad, r.text)


@pytest.mark.parametrize("dim", ["true", '"1"', "1.0", "1.5", "null", "[1]"])
def test_a_shape_is_json_integers(http, dim):
    """`"shape": [true]`, `["1"]` and `[1.0]` once served as `[1]` (pydantic's lax
    integers); the tensor codec's own check refuses booleans but never saw them."""
    body = _text_body().replace('"shape": [1]', f'"shape": [{dim}]')
    r = http.post("/v2/models/sentiment/infer", content=body.encode(), headers=AUTH)
    assert r.status_code == 400 and "shape" in r.json()["error"], r.text


def test_bytes_elements_are_counted_before_any_is_decoded(http, stub):
    """More texts than a request may carry, the last one not UTF-8: refused for their
    count on HTTP (binary data) and gRPC. Every element was once decoded first, on the
    event loop (200,000 one-byte elements held it for 25 ms), and this one said "not
    UTF-8". Within the limit, a bad element is still named by its index."""
    items = [b"good"] * (MAX_INPUTS + 43) + [b"\xff"]
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)

    def binary(items_raw: bytes, count: int) -> httpx.Response:
        head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [count],
                                       "parameters": {"binary_data_size": len(items_raw)}}]})
        return http.post("/v2/models/sentiment/infer", content=head.encode() + items_raw,
                         headers={**AUTH, "Inference-Header-Content-Length": str(len(head))})

    r = binary(raw, len(items))
    assert r.status_code == 400 and f"the limit is {MAX_INPUTS}" in r.json()["error"], r.text
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(items)])
    request.inputs[0].contents.bytes_contents.extend(items)
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {MAX_INPUTS}" in failed.value.details()
    r = binary(raw[-(8 + 5):], 2)  # "good", b"\xff"
    assert r.status_code == 400 and "'text'[1]: not UTF-8" in r.json()["error"], r.text


def test_grpc_names_are_parsed_as_paths_are_and_errors_stay_short(stub):
    """A 100 KB model or output name once came back inside the status message, which the
    client refused (over its 16 KiB metadata limit) and reported as RESOURCE_EXHAUSTED.
    Names are now parsed as HTTP paths parse them, and status messages are cut short."""
    long = "m" * 100_000
    metadata = (("authorization", f"Bearer {KEY}"),)
    text = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[b"good"]))
    for call, request in (
            (stub.ModelInfer, pb.ModelInferRequest(model_name=long, inputs=[text])),
            (stub.ModelInfer, pb.ModelInferRequest(
                model_name="sentiment", inputs=[text],
                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=long)])),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name=long)),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="../sentiment"))):
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=metadata, timeout=30)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
        assert len(failed.value.details()) < 2000
    assert not stub.ModelReady(pb.ModelReadyRequest(name=long), metadata=metadata).ready
    # an empty name is still the default model, as it was
    assert stub.ModelReady(pb.ModelReadyRequest(name=""), metadata=metadata).ready


def test_grpc_repository_calls_need_a_model_name(stub, http):
    """`RepositoryModelUnload` with an empty name once unloaded the default model (the
    registry reads no name as the default one)."""
    admin = (("authorization", f"Bearer {ADMIN}"),)
    for call, request in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest()),
                          (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest())):
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=admin, timeout=30)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for model in MODELS:
        assert http.get(f"/v2/models/{model}/ready", headers=AUTH).status_code == 200


def test_unrouted_v2_paths_answer_in_the_v2_error_shape(http):
    """A /v2 path that no route matches (a name with a slash in it, a wrong method) once
    answered in the service's own error shape, which a v2 client cannot read."""
    for method, path, status in (("GET", "/v2/nope", 404),
                                 ("GET", "/v2/models/a%2Fb/ready", 404),
                                 ("DELETE", "/v2/models/sentiment/infer", 405)):
        r = http.request(method, path, headers=AUTH)
        assert r.status_code == status and isinstance(r.json()["error"], str), r.text
    r = http.get("/nope", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_text_request_past_the_count_limit_is_refused_unread(tmp_path):
    """Deciding whether texts are tokenized in a thread once summed the length of every
    one of them on the event loop, however many there were."""
    from app.contract.manifest import MANIFEST_FILE, Manifest
    from app.errors import InvalidInput
    from app.pipelines import build_pipeline
    from tests.builders import add_text_model

    folder = add_text_model(tmp_path)
    manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    pipeline = build_pipeline(manifest, folder, max_inputs=4)

    class Unreadable(Sequence[str]):
        def __len__(self) -> int:
            return 200_000

        def __getitem__(self, i):
            raise AssertionError("an input was read")

    assert pipeline.runs_inline(Unreadable())
    with pytest.raises(InvalidInput, match="the limit is 4"):
        pipeline.preprocess(Unreadable())
