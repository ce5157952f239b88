"""The Open Inference Protocol over HTTP against a real uvicorn, spoken by Triton's own
client (`tritonclient.http`) and by hand, with the binary tensor data extension."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.api.v2 import schemas
from tests.builders import add_rows_model, build_repository
from tests.servers import ServiceProcess, predictions

TEXTS = ["good great day", "awful sad movie", "the phone is fine"]
ROWS = [[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 0.0]]
ADMIN = {"Authorization": "Bearer admin-secret-0123456789"}
KEY = "k-0123456789abcdef"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    repo = build_repository(root / "models")
    add_rows_model(repo, "tabular", classifier=True, version=2)
    add_rows_model(repo, "spare", classifier=False)  # unloaded and loaded by one test only
    with ServiceProcess(repo, root / "log", ORTSERVE_VERSION_POLICY='{"tabular": "all"}',
                        ORTSERVE_ADMIN_KEYS="admin-secret-0123456789") as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    c = triton.InferenceServerClient(f"127.0.0.1:{service.port}")
    yield c
    c.close()


def _predict(service, model: str, inputs: list, version: int | None = None) -> list[dict]:
    return predictions(service.url, model, inputs, version)


def _text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    t = triton.InferInput("text", [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=object),
                          binary_data=binary)
    return t


def _rows_input(rows: list, binary: bool = True) -> triton.InferInput:
    t = triton.InferInput("features", [len(rows), len(rows[0])], "FP32")
    t.set_data_from_numpy(np.array(rows, dtype=np.float32), binary_data=binary)
    return t


def test_health_and_server_metadata(client, service):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ortserve"
    assert set(meta["extensions"]) == {"binary_tensor_data", "model_repository"}
    schemas.ServerMetadata.model_validate(meta)
    assert client.is_model_ready("sentiment") and client.is_model_ready("tabular", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("tabular", "9")


def test_model_metadata_says_datatypes_and_shapes(client):
    text = schemas.ModelMetadata.model_validate(client.get_model_metadata("sentiment"))
    assert text.platform == "onnxruntime_onnx" and text.versions == ["1"]
    assert [(t.name, t.datatype, t.shape) for t in text.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, t.shape) for t in text.outputs] == [
        ("probabilities", "FP32", [-1, 3]), ("label", "BYTES", [-1])]
    rows = client.get_model_metadata("tabular", "2")
    assert rows["versions"] == ["1", "2"]
    assert rows["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    reg = client.get_model_metadata("regression")
    assert reg["outputs"] == [{"name": "value", "datatype": "FP32", "shape": [-1]}]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False])
def test_text_infer_with_default_arguments_equals_predict(client, service, binary):
    result = client.infer("sentiment", [_text_input(TEXTS, binary)])  # all outputs, binary
    probs, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    want = _predict(service, "sentiment", TEXTS)
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    for p, lab, w in zip(probs, labels, want, strict=True):
        assert lab.decode() == w["label"]
        assert p.tolist() == pytest.approx([w["scores"][k] for k in w["scores"]], abs=1e-7)
    response = result.get_response()
    schemas.InferenceResponse.model_validate(response)
    # no outputs named: tritonclient asks for every output in binary, and gets it
    assert all("binary_data_size" in o["parameters"] and "data" not in o
               for o in response["outputs"])


@pytest.mark.parametrize("binary", [True, False])
def test_rows_infer_json_and_binary_equal_predict(client, service, binary):
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("tabular", [_rows_input(ROWS, binary)], outputs=outputs,
                          request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "2"
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]
    assert ("data" not in response["outputs"][0]) is binary  # binary exactly when asked
    want = _predict(service, "tabular", ROWS)
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               [[w["scores"]["no"], w["scores"]["yes"]] for w in want],
                               atol=1e-7)
    value = client.infer("regression", [_rows_input(ROWS, binary)]).as_numpy("value")
    assert value.tolist() == pytest.approx([w["value"] for w in
                                            _predict(service, "regression", ROWS)], abs=1e-5)


def test_versions_are_served_by_path(client, service):
    one = client.infer("tabular", [_rows_input(ROWS)], model_version="1")
    two = client.infer("tabular", [_rows_input(ROWS)], model_version="2")
    assert one.get_response()["model_version"] == "1"
    np.testing.assert_allclose(one.as_numpy("probabilities"),
                               [[w["scores"]["no"], w["scores"]["yes"]]
                                for w in _predict(service, "tabular", ROWS, 1)], atol=1e-7)
    assert one.as_numpy("probabilities").tolist() != two.as_numpy("probabilities").tolist()
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("tabular", [_rows_input(ROWS)], model_version="7")


def test_bad_input_is_400_in_the_spec_shape(client, service):
    with pytest.raises(InferenceServerException) as err:
        client.infer("tabular", [_rows_input([[1.0, 2.0, 3.0]])])
    assert err.value.status() == "400" and "shape [N, 4]" in err.value.message()
    with pytest.raises(InferenceServerException, match="takes one input 'text'"):
        client.infer("sentiment", [_rows_input(ROWS)])
    r = httpx.post(f"{service.url}/v2/models/sentiment/infer", json={"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["  "]}]})
    assert r.status_code == 400 and "empty text" in r.json()["error"]
    schemas.ErrorResponse.model_validate(r.json())


def _binary_request(header: dict, blobs: list[bytes], declared: int | None = None):
    head = json.dumps(header).encode()
    return {"content": head + b"".join(blobs),
            "headers": {"Inference-Header-Content-Length": str(
                len(head) if declared is None else declared)}}


@pytest.mark.parametrize("case", [
    "header past the body", "negative size", "size overruns the body", "bytes left over",
    "element length overruns", "huge shape", "not a length", "json array header",
])
def test_malformed_binary_bodies_are_400_never_5xx(service, case):
    url = f"{service.url}/v2/models/sentiment/infer"
    one = struct.pack("<I", 4) + b"good"

    def text(size, shape=None):
        return {"inputs": [{"name": "text", "shape": shape or [1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": size}}]}

    requests = {
        "header past the body": _binary_request(text(8), [one], declared=10_000),
        "negative size": _binary_request(text(-8), [one]),
        "size overruns the body": _binary_request(text(80), [one]),
        "bytes left over": _binary_request(text(8), [one, b"xx"]),
        "element length overruns": _binary_request(text(8), [struct.pack("<I", 999) + b"good"]),
        "huge shape": _binary_request(text(8, shape=[1 << 40]), [one]),
        "not a length": {**_binary_request(text(8), [one]),
                         "headers": {"Inference-Header-Content-Length": "-3"}},
        "json array header": _binary_request([1, 2], [one]),  # type: ignore[arg-type]
    }
    r = httpx.post(url, timeout=30, **requests[case])
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str)


def test_the_repository_extension_maps_onto_repository_control(service):
    r = httpx.post(f"{service.url}/v2/repository/index", headers=ADMIN, json={})
    assert r.status_code == 200
    entries = [schemas.RepositoryIndexEntry.model_validate(e) for e in r.json()]
    assert ("spare", "1", "READY") in {(e.name, e.version, e.state) for e in entries}
    assert httpx.post(f"{service.url}/v2/repository/index").status_code == 401
    models = f"{service.url}/v2/repository/models/spare"
    try:
        r = httpx.post(f"{models}/unload", headers=ADMIN)
        assert r.status_code == 200
        assert httpx.get(f"{service.url}/v2/models/spare/ready").status_code == 503
        r = httpx.post(f"{models}/load", headers=ADMIN)
        assert r.status_code == 200
        assert httpx.get(f"{service.url}/v2/models/spare/ready").status_code == 200
    finally:  # whatever failed, the shared server serves it again
        if httpx.get(f"{service.url}/v2/models/spare/ready").status_code != 200:
            httpx.post(f"{models}/load", headers=ADMIN)


def test_spec_shapes_are_enforced_both_ways():
    """The pydantic shapes accept what the spec's examples send and refuse what it does
    not allow; every response above was validated against them."""
    schemas.InferenceRequest.model_validate({
        "id": "42", "model_name": "m", "parameters": {"binary_data_output": True},
        "inputs": [{"name": "input0", "shape": [2, 2], "datatype": "UINT32",
                    "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "output0"}]})
    for bad in ({"inputs": []}, {"inputs": [{"name": "x", "datatype": "FP32"}]},
                {"inputs": [{"name": "x", "shape": "2", "datatype": "FP32"}]}):
        with pytest.raises(ValueError):
            schemas.InferenceRequest.model_validate(bad)
    with pytest.raises(ValueError):
        schemas.InferenceResponse.model_validate({"outputs": []})  # model_name is required


def test_metrics_split_requests_by_api(client, service):
    from tests.servers import metric_value

    client.infer("regression", [_rows_input(ROWS)])
    _predict(service, "regression", ROWS)
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    for api in ("v1", "v2"):
        assert metric_value(text, f'ortserve_requests_total{{api="{api}",model="regression",'
                                  'outcome="success"') >= 1, api
    assert metric_value(text, 'ortserve_requests_total{api="grpc",model="regression",'
                              'outcome="success"') == 0  # exported from the start
    assert metric_value(text, 'ortserve_request_duration_seconds_count{api="v2",'
                              'model="regression"') >= 1


def test_errors_from_the_middleware_take_the_v2_shape_under_v2(tmp_path):
    svc = ServiceProcess(build_repository(tmp_path / "models"), tmp_path / "log",
                         ORTSERVE_API_KEYS=KEY, ORTSERVE_MAX_BODY_BYTES="100")
    try:
        svc.wait_ready()
        url = f"{svc.url}/v2/models/sentiment/infer"
        assert httpx.post(url, json={}).json() == {
            "error": "missing API key: send 'Authorization: Bearer <key>'"}
        r = httpx.post(url, content=b"x" * 200, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 413 and r.json() == {"error": "request body exceeds 100 bytes"}
        r = httpx.post(f"{svc.url}/predict", content=b"x" * 200,
                       headers={"Authorization": f"Bearer {KEY}"})
        assert r.json()["error"]["code"] == "payload_too_large"  # the v1 shape
    finally:
        svc.terminate()
