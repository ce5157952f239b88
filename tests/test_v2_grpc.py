"""The Open Inference Protocol over gRPC, on the server's own port beside HTTP, spoken by
Triton's own client (`tritonclient.grpc`) against a real server process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.builders import add_rows_model, add_slow_model, build_repository
from tests.servers import ServiceProcess, free_port, metric_value, predictions, wait_until

TEXTS = ["good great day", "awful sad movie"]
ROWS = [[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 0.0]]
PREDICT_KEY, ADMIN_KEY = "predict-key-0123456789", "admin-secret-0123456789"
KEY = {"authorization": f"Bearer {PREDICT_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
# The slow model's pace must not depend on the host: one run at a time on one CPU thread,
# so that the deadline tests' calls are refused whatever the cores or GPU.
ONE_CPU_INSTANCE = {"ORTSERVE_DEVICE": "cpu", "ORTSERVE_INSTANCES": "1",
                    "ORTSERVE_INTRA_OP_THREADS": "1"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    repo = build_repository(root / "models")
    add_rows_model(repo, "tabular", classifier=True, version=2)
    add_rows_model(repo, "spare", classifier=False)  # unloaded and loaded by one test only
    add_slow_model(repo)
    port = free_port()
    with ServiceProcess(repo, root / "log", ORTSERVE_GRPC_PORT=str(port),
                        ORTSERVE_API_KEYS=PREDICT_KEY, ORTSERVE_ADMIN_KEYS=ADMIN_KEY,
                        ORTSERVE_VERSION_POLICY='{"tabular": "all"}', **ONE_CPU_INSTANCE) as svc:
        svc.grpc = f"127.0.0.1:{port}"
        yield svc


@pytest.fixture(scope="module")
def client(service):
    c = triton.InferenceServerClient(service.grpc)
    yield c
    c.close()


def _predict(service, model: str, inputs: list, version: int | None = None) -> list[dict]:
    return predictions(service.url, model, inputs, version, headers=KEY)


def _rows(rows: list) -> triton.InferInput:
    t = triton.InferInput("features", [len(rows), len(rows[0])], "FP32")
    t.set_data_from_numpy(np.array(rows, dtype=np.float32))
    return t


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sentiment", headers=KEY)
    assert not client.is_model_ready("nope", headers=KEY)
    meta = client.get_server_metadata(headers=KEY, as_json=True)
    assert meta["name"] == "ortserve" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("tabular", headers=KEY, as_json=True)
    assert model["versions"] == ["1", "2"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]


def test_infer_text_and_rows_equal_predict(client, service):
    text = triton.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    result = client.infer("sentiment", [text], headers=KEY)
    want = _predict(service, "sentiment", TEXTS)
    assert [x.decode() for x in result.as_numpy("label")] == [w["label"] for w in want]
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               [list(w["scores"].values()) for w in want], atol=1e-7)
    result = client.infer("regression", [_rows(ROWS)], headers=KEY, request_id="r-1")
    assert result.get_response().id == "r-1"
    np.testing.assert_allclose(result.as_numpy("value"),
                               [w["value"] for w in _predict(service, "regression", ROWS)],
                               atol=1e-5)


def test_versions_and_requested_outputs(client, service):
    outputs = [triton.InferRequestedOutput("label")]
    one = client.infer("tabular", [_rows(ROWS)], model_version="1", outputs=outputs,
                       headers=KEY)
    assert one.get_response().model_version == "1"
    assert [o.name for o in one.get_response().outputs] == ["label"]
    assert [x.decode() for x in one.as_numpy("label")] == [
        w["label"] for w in _predict(service, "tabular", ROWS, 1)]
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.infer("tabular", [_rows(ROWS)], model_version="9", headers=KEY)


def test_errors_auth_and_deadline_map_to_grpc_status(client):
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*shape"):
        client.infer("tabular", [_rows([[1.0, 2.0, 3.0]])], headers=KEY)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("tabular", [_rows(ROWS)])
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        client.infer("tabular", [_rows(ROWS)], headers={"authorization": "Bearer wrong"})
    # refused at once: the queue cannot answer within the call's deadline (retryable)
    with pytest.raises(InferenceServerException, match="UNAVAILABLE.*deadline"):
        client.infer("slow", [_rows(ROWS * 4)], headers=KEY, client_timeout=0.05)


def test_the_grpc_deadline_is_the_servers_deadline(client, service):
    """The call's deadline reaches admission: a call the slow model cannot answer in time
    is refused at once (outcome rejected) with the time it had left, instead of being run
    for nobody."""
    import re

    key = 'ortserve_requests_total{api="grpc",model="slow",outcome="rejected"'

    def rejected() -> float:
        return metric_value(httpx.get(f"{service.url}/metrics", timeout=10).text, key)

    before = rejected()
    with pytest.raises(InferenceServerException, match="UNAVAILABLE") as err:
        client.infer("slow", [_rows(ROWS * 8)], headers=KEY, client_timeout=0.2)
    left = float(re.search(r"\(([0-9.]+) s left\)", str(err.value)).group(1))
    assert 0 < left <= 0.2  # the call's deadline (less the server's 5 ms margin)
    assert rejected() == before + 1


def test_repository_rpcs_take_the_admin_key(client):
    index = client.get_model_repository_index(headers=ADMIN, as_json=True)
    assert {"name": "spare", "version": "1", "state": "READY"} in index["models"]
    try:
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            client.unload_model("spare", headers=KEY)
        client.unload_model("spare", headers=ADMIN)
        assert not client.is_model_ready("spare", headers=KEY)
        client.load_model("spare", headers=ADMIN)
        assert client.is_model_ready("spare", headers=KEY)
    finally:  # whatever failed, the shared server serves it again
        if not client.is_model_ready("spare", headers=KEY):
            client.load_model("spare", headers=ADMIN)


def test_grpc_requests_are_counted_as_such(client, service):
    def counted(model: str, outcome: str) -> float:
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
        try:
            return metric_value(text, f'ortserve_requests_total{{api="grpc",model="{model}",'
                                      f'outcome="{outcome}"')
        except KeyError:  # not counted yet
            return 0.0

    successes, client_errors = counted("regression", "success"), counted("tabular",
                                                                         "client_error")
    client.infer("regression", [_rows(ROWS)], headers=KEY)
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        client.infer("tabular", [_rows([[1.0, 2.0, 3.0]])], headers=KEY)
    assert counted("regression", "success") == successes + 1
    assert counted("tabular", "client_error") == client_errors + 1


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x80", b"\x2a\x05\x0a\x03abc\x0f",
                                     bytes(range(256))])
def test_malformed_protobufs_are_invalid_argument_never_internal(service, payload):
    import grpc

    with grpc.insecure_channel(service.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, metadata=tuple(KEY.items()), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


@pytest.mark.parametrize("tensor", [
    {"name": "features", "datatype": "FP32", "shape": [1, 4], "raw": b"\x00" * 15},
    {"name": "features", "datatype": "FP32", "shape": [-1, 4], "raw": b""},
    {"name": "features", "datatype": "FP32", "shape": [1 << 40, 4], "raw": b""},
    {"name": "text", "datatype": "BYTES", "shape": [1], "raw": b"\x09\x00\x00\x00abc"},
    {"name": "features", "datatype": "NOPE", "shape": [1, 4], "raw": b"\x00" * 16},
])
def test_malformed_tensors_are_invalid_argument(service, tensor):
    import grpc

    # Built by hand with the client's own message types: the server's module and
    # tritonclient's share a protobuf package, so only the client's is imported here.
    from tritonclient.grpc import service_pb2 as tpb

    request = tpb.ModelInferRequest(model_name="sentiment" if tensor["name"] == "text"
                                    else "tabular",
                                    inputs=[tpb.ModelInferRequest.InferInputTensor(
                                        name=tensor["name"], datatype=tensor["datatype"],
                                        shape=tensor["shape"])],
                                    raw_input_contents=[tensor["raw"]])
    with grpc.insecure_channel(service.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=tpb.ModelInferRequest.SerializeToString)
        with pytest.raises(grpc.RpcError) as err:
            call(request, metadata=tuple(KEY.items()), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


def test_rate_limits_are_shared_with_http(tmp_path):
    port = free_port()
    svc = ServiceProcess(build_repository(tmp_path / "models"), tmp_path / "log",
                         ORTSERVE_GRPC_PORT=str(port), ORTSERVE_API_KEYS=PREDICT_KEY,
                         ORTSERVE_RATE_LIMIT_PER_S="0.2", ORTSERVE_RATE_LIMIT_BURST="2")
    try:
        svc.wait_ready()
        c = triton.InferenceServerClient(f"127.0.0.1:{port}")
        c.infer("regression", [_rows(ROWS)], headers=KEY)
        r = httpx.post(f"{svc.url}/predict", json={"model": "regression", "inputs": ROWS},
                       headers=KEY, timeout=30)
        assert r.status_code == 200  # the key's second token
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):
            c.infer("regression", [_rows(ROWS)], headers=KEY)
        c.close()
    finally:
        svc.terminate()


def test_sigterm_finishes_grpc_calls_in_flight(tmp_path):
    import signal
    import threading

    repo = build_repository(tmp_path / "models")
    add_slow_model(repo, max_batch_size=1, size=2048)
    port = free_port()
    svc = ServiceProcess(repo, tmp_path / "log", ORTSERVE_GRPC_PORT=str(port),
                         ORTSERVE_DRAIN_DELAY_S="0.2", **ONE_CPU_INSTANCE)
    results: list = []
    try:
        svc.wait_ready()

        def call() -> None:
            c = triton.InferenceServerClient(f"127.0.0.1:{port}")
            try:  # sixteen runs of the slow model, one at a time
                results.append(c.infer("slow", [_rows(ROWS * 8)],
                                       client_timeout=60).as_numpy("label").shape)
            except InferenceServerException as exc:
                results.append(exc)
            finally:
                c.close()

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()

        def both_queued() -> bool:  # more rows queued than one call has
            text = httpx.get(f"{svc.url}/metrics", timeout=10).text
            return metric_value(text, 'ortserve_queue_depth{model="slow"') > 16

        wait_until(both_queued, 60, "both calls accepted and queued")
        assert results == []  # still in flight
        svc.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code = svc.proc.wait(60)
    finally:
        svc.terminate()
    assert results == [(16,), (16,)], results
    assert code == 0
