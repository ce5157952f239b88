"""The real app over httpx with tiny real ONNX models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.observability.metrics import APIS, OUTCOMES
from tests.builders import FEATURES, TEXT_LABELS
from tests.servers import metric_value

pytestmark = pytest.mark.anyio


async def test_text_predict_returns_labels_in_input_order(client):
    texts = ["good great love", "bad awful hate", "the movie", "ok"]
    r = await client.post("/predict", json={"model": "sentiment", "inputs": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "sentiment" and body["version"] == 1
    assert len(body["predictions"]) == len(texts)
    for p in body["predictions"]:
        assert set(p["scores"]) == set(TEXT_LABELS)
        assert p["label"] == max(p["scores"], key=p["scores"].get)
        assert abs(sum(p["scores"].values()) - 1) < 1e-5
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] >= 0
    assert "x-request-id" in r.headers
    # each input alone gives the same answer as in the batch
    for text, pred in zip(texts, body["predictions"], strict=True):
        alone = (await client.post("/models/sentiment/predict",
                                   json={"inputs": [text]})).json()["predictions"][0]
        for lab in TEXT_LABELS:
            assert abs(alone["scores"][lab] - pred["scores"][lab]) < 1e-5


async def test_default_model_is_sentiment(client):
    r = await client.post("/predict", json={"inputs": ["great"]})
    assert r.status_code == 200 and r.json()["model"] == "sentiment"


async def test_rows_as_lists_or_objects_agree(client):
    rows = [[0.1, 0.2, 0.3, 0.4], [1, -2, 3, -4]]
    objs = [dict(zip(FEATURES, r, strict=True)) for r in rows]
    a = (await client.post("/predict", json={"model": "tabular", "inputs": rows})).json()
    b = (await client.post("/predict", json={"model": "tabular", "inputs": objs})).json()
    assert a["predictions"] == b["predictions"]
    assert set(a["predictions"][0]["scores"]) == {"no", "yes"}
    r = await client.post("/models/regression/predict", json={"inputs": rows})
    assert r.status_code == 200
    values = [p["value"] for p in r.json()["predictions"]]
    assert len(values) == 2 and values[0] != values[1]


@pytest.mark.parametrize("body,status,code,field", [
    ({"model": "tabular", "inputs": [[1, 2, 3]]}, 422, "invalid_input", "inputs[0]"),
    ({"model": "tabular", "inputs": [[1, 2, 3, 4], {"f0": 1}]}, 422, "invalid_input",
     "inputs[1]"),
    ({"model": "tabular", "inputs": [{"f0": 1, "f1": 2, "f2": 3, "f3": 4, "zz": 5}]}, 422,
     "invalid_input", "inputs[0]"),
    ({"model": "tabular", "inputs": ["text"]}, 422, "invalid_input", "inputs[0]"),
    ({"model": "sentiment", "inputs": [[1, 2]]}, 422, "invalid_input", "inputs[0]"),
    ({"model": "sentiment", "inputs": ["ok", "  "]}, 422, "invalid_input", "inputs[1]"),
    ({"model": "sentiment", "inputs": []}, 422, "invalid_request", "inputs"),
    ({"model": "nope", "inputs": ["x"]}, 404, "model_not_found", "model"),
    ({"model": "sentiment", "version": 7, "inputs": ["x"]}, 404, "model_not_found", "version"),
    ({"model": "../etc", "inputs": ["x"]}, 422, "invalid_request", "model"),
    ({"inputs": "not a list"}, 422, "invalid_request", "inputs"),
])
async def test_bad_input_is_4xx_naming_the_field(client, body, status, code, field):
    r = await client.post("/predict", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert field in (err["message"] + str(err["details"]))


async def test_non_finite_values_are_rejected(client):
    r = await client.post("/predict", content=b'{"model":"tabular","inputs":[[1,2,NaN,4]]}',
                          headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert "inputs" in r.text
    r = await client.post("/predict", json={"model": "tabular", "inputs": [[1, 2, 1e39, 4]]})
    assert r.status_code == 422 and "inputs[0]" in r.text


@pytest.mark.parametrize("path, headers, field", [
    ("/predict", {"X-Request-Timeout": "soon"}, "X-Request-Timeout"),
    ("/predict", {"X-Request-Timeout": "0.01"}, "X-Request-Timeout"),
    ("/predict", {"X-Request-Timeout": "inf"}, "X-Request-Timeout"),
    ("/models/Bad.Name/predict", {}, "name"),
])
async def test_bad_header_or_path_is_422_naming_it(client, path, headers, field):
    r = await client.post(path, json={"inputs": ["good"]}, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert field in r.json()["error"]["message"]


async def test_predict_routes_document_body_header_and_path(client):
    spec = (await client.get("/openapi.json")).json()
    for path in ("/predict", "/models/{name}/predict"):
        op = spec["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert {"inputs", "version"} <= set(body["properties"])
        assert "inputs" in body["required"]
        params = {(p["in"], p["name"]) for p in op["parameters"]}
        assert ("header", "X-Request-Timeout") in params
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/PredictResponse"}
    assert ("path", "name") in {(p["in"], p["name"])
                                for p in spec["paths"]["/models/{name}/predict"]["post"][
                                    "parameters"]}
    assert "model" in spec["paths"]["/predict"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]


async def test_malformed_json_is_400(client):
    r = await client.post("/predict", content=b'{"inputs": [', headers={
        "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "malformed_json"


async def test_models_list_and_detail(make_client):
    client = await make_client(device="cpu")
    r = await client.get("/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"sentiment", "tabular", "regression"}
    assert all(m["status"] == "ready" for m in models.values())
    assert models["sentiment"]["provider"] == "CPUExecutionProvider"
    d = (await client.get("/models/sentiment")).json()
    assert d["manifest"]["kind"] == "text-classification"
    assert d["test_metrics"] == {"accuracy": 0.5}
    assert d["batching"]["max_batch_size"] == 8
    assert (await client.get("/models/nope")).status_code == 404


async def test_health_and_metrics(make_client):
    client = await make_client(device="cpu")
    assert (await client.get("/health/live")).status_code == 200
    r = await client.get("/health/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    before = (await client.get("/metrics")).text
    await asyncio.gather(*(client.post("/predict", json={"inputs": ["good day"]})
                           for _ in range(5)))
    after = (await client.get("/metrics")).text

    key = 'ortserve_requests_total{api="v1",model="sentiment",outcome="success",version="1"}'
    assert metric_value(after, key) - metric_value(before, key) == 5
    hist = 'ortserve_request_duration_seconds_count{api="v1",model="sentiment",version="1"}'
    assert metric_value(after, hist) - metric_value(before, hist) == 5
    assert 'ortserve_model_info{' in after and 'provider="CPUExecutionProvider"' in after
    assert 'ortserve_model_ready{model="sentiment",version="1"} 1.0' in after


async def test_every_outcome_series_is_exported_at_zero_from_the_start(client):
    text = (await client.get("/metrics")).text
    for model in ("sentiment", "tabular", "regression"):
        for api in APIS:
            for outcome in OUTCOMES:
                key = (f'ortserve_requests_total{{api="{api}",model="{model}",'
                       f'outcome="{outcome}",version="1"}}')
                assert metric_value(text, key) == 0, key


async def test_concurrent_requests_share_model_runs(make_client):
    client = await make_client(instances=1)
    app = client.app
    queue = app.state.ortserve.dataplane.registry.get("sentiment").queue
    runs_before = queue.batches_run
    n = 40
    texts = [" ".join(np.random.default_rng(i).choice(["good", "bad", "the", "day"], 5))
             for i in range(n)]
    rs = await asyncio.gather(*(client.post("/predict", json={"inputs": [t]}) for t in texts))
    assert all(r.status_code == 200 for r in rs)
    assert queue.batches_run - runs_before < n
