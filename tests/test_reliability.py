"""Limits, backpressure, deadlines, auth and input safety, on the real app over httpx."""

from __future__ import annotations

import asyncio

import pytest

from tests.builders import add_slow_model
from tests.servers import metric_value
from tests.sync import WAIT_S, Gate, until

pytestmark = pytest.mark.anyio
ROW = [0.5, 0.1, 0.2, 0.3]
# The slow model's outcomes must not depend on the host: one run at a time, on one CPU
# thread (no GPU), and held at a gate the test opens.
ONE_CPU_INSTANCE = {"device": "cpu", "instances": 1, "intra_op_threads": 1}


async def test_body_over_the_limit_is_413(make_client):
    client = await make_client(max_body_bytes=200)
    r = await client.post("/predict", json={"inputs": ["good " * 100]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b"x" * 100

    r = await client.post("/predict", content=chunks(), headers={
        "content-type": "application/json"})
    assert r.status_code == 413


async def test_count_and_length_limits_are_422_naming_the_limit(make_client):
    client = await make_client(max_inputs=3, max_rows=2, max_text_chars=10)
    r = await client.post("/predict", json={"inputs": ["a"] * 4})
    assert r.status_code == 422 and "limit is 3" in r.json()["error"]["message"]
    r = await client.post("/predict", json={"model": "tabular", "inputs": [ROW] * 3})
    assert r.status_code == 422 and "limit is 2" in r.json()["error"]["message"]
    r = await client.post("/predict", json={"inputs": ["good", "x" * 11]})
    err = r.json()["error"]
    assert r.status_code == 422 and err["details"]["field"] == "inputs[1]"
    assert "ORTSERVE_TRUNCATE_TEXT" in err["message"]


async def test_long_texts_are_cut_when_truncation_is_on(make_client):
    client = await make_client(max_text_chars=10, truncate_text=True)
    long = (await client.post("/predict", json={"inputs": ["good " * 2 + "bad " * 50]})).json()
    short = (await client.post("/predict", json={"inputs": [("good " * 2 + "bad ")[:10]]})).json()
    assert long["predictions"] == short["predictions"]


async def test_full_queue_answers_503_with_retry_after_at_once(make_client, repo):
    add_slow_model(repo)
    client = await make_client(batching={"slow": {"max_queue_size": 2}}, **ONE_CPU_INSTANCE)
    gate = Gate.on(client, "slow")
    reqs = [asyncio.ensure_future(client.post("/predict", json={"model": "slow",
                                                                 "inputs": [ROW]}))
            for _ in range(8)]
    queue = gate.queue

    def settled() -> bool:  # each request answered, or queued or running behind the gate
        return sum(r.done() for r in reqs) + len(queue._queue) + len(gate.entered) == 8

    await until(settled, "every request answered or queued")
    # the refusals came while the model was held: at once, not after queued work ran
    refused_early = [r.result().status_code for r in reqs if r.done()]
    gate.release()
    rs = await asyncio.wait_for(asyncio.gather(*reqs), WAIT_S)
    codes = [r.status_code for r in rs]
    assert refused_early == [503] * codes.count(503)
    assert codes.count(200) >= 2 and 503 in codes
    rejected = next(r for r in rs if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["code"] == "queue_full"
    m = (await client.get("/metrics")).text
    assert metric_value(m, 'ortserve_requests_total{api="v1",model="slow",outcome="rejected"') == \
        codes.count(503)


async def busy_then_late(client) -> tuple:
    """Three rows at batch size 1 keep the slow model busy for three runs (the first held
    at a gate); meanwhile a request of three more rows asks to be answered within 50 ms.
    Returns (the late response, the metrics page) once the model has drained, after
    checking that the late request was answered while the model was still held, that the
    busy request was answered and that only its three rows ran."""
    svc = client.app.state.ortserve.dataplane.registry.get("slow")
    gate = Gate.on(client, "slow")
    runs_before = svc.queue.batches_run
    first = asyncio.ensure_future(client.post("/predict", json={"model": "slow",
                                                                 "inputs": [ROW] * 3}))
    await gate.wait_entered()
    late = await asyncio.wait_for(client.post(
        "/predict", json={"model": "slow", "inputs": [ROW, ROW, ROW]},
        headers={"X-Request-Timeout": "0.05"}), WAIT_S)
    assert gate.entered == [1] and not first.done()  # answered while the model was held
    gate.release()
    assert (await asyncio.wait_for(first, WAIT_S)).status_code == 200
    await svc.queue.drain()
    assert svc.queue.batches_run - runs_before == 3  # the late request's rows never ran
    return late, (await client.get("/metrics")).text


async def test_a_request_the_queue_cannot_answer_in_time_is_refused_at_once(make_client,
                                                                            repo):
    add_slow_model(repo)
    client = await make_client(**ONE_CPU_INSTANCE)
    late, m = await busy_then_late(client)
    assert late.status_code == 503 and late.json()["error"]["code"] == "queue_full"
    assert "deadline" in late.json()["error"]["message"]
    assert int(late.headers["retry-after"]) >= 1
    assert metric_value(m, 'ortserve_requests_total{api="v1",model="slow",outcome="rejected"') == 1
    assert metric_value(m, 'ortserve_requests_total{api="v1",model="slow",outcome="timeout"') == 0


async def test_deadline_gives_504_and_the_item_never_runs(make_client, repo):
    """An admitted request whose deadline passes in the queue: without warm-up the model's
    cost is unknown until its first batch ends, so admission has no estimate yet."""
    add_slow_model(repo)
    client = await make_client(warmup=False, **ONE_CPU_INSTANCE)
    late, m = await busy_then_late(client)
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert metric_value(m, 'ortserve_requests_total{api="v1",model="slow",outcome="timeout"') == 1


async def test_header_cannot_raise_the_server_deadline(make_client, repo):
    add_slow_model(repo)
    # admitted: no estimate without warm-up
    client = await make_client(request_timeout_s=0.001, warmup=False, **ONE_CPU_INSTANCE)
    gate = Gate.on(client, "slow")  # the model never answers before the deadline
    r = await asyncio.wait_for(client.post("/predict", json={"model": "slow", "inputs": [ROW]},
                                           headers={"X-Request-Timeout": "100"}), WAIT_S)
    gate.release()
    assert r.status_code == 504


async def test_api_keys(make_client, tmp_path, capsys):
    keyfile = tmp_path / "keys"
    keyfile.write_text("file-key-1-0123456789\n")
    # the rotation poll below sends the new key until it is accepted: not a key guesser
    client = await make_client(api_keys="alpha-key-0123456789,beta-key-0123456789",
                               api_keys_file=keyfile, auth_failures_per_minute=0)
    body = {"inputs": ["good"]}
    r = await client.post("/predict", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/predict", json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403
    for key in ("alpha-key-0123456789", "beta-key-0123456789", "file-key-1-0123456789"):
        r = await client.post("/predict", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, key
    assert (await client.get("/health/ready")).status_code == 200  # exempt
    assert (await client.get("/metrics")).status_code == 200
    # rotation without restart: the file is re-read when it changes
    import os
    import time

    keyfile.write_text("file-key-2-0123456789\n")
    os.utime(keyfile, (time.time() + 5, time.time() + 5))
    h1 = {"Authorization": "Bearer file-key-1-0123456789"}
    h2 = {"Authorization": "Bearer file-key-2-0123456789"}

    async def rotated() -> bool:  # the file is looked at again within a second
        return (await client.post("/predict", json=body, headers=h2)).status_code == 200

    await until(rotated, "the new key accepted")
    assert (await client.post("/predict", json=body, headers=h1)).status_code == 403
    assert (await client.post("/predict", json=body, headers=h2)).status_code == 200
    logs = capsys.readouterr().err
    assert "alpha" not in logs and "file-key" not in logs and "nope" not in logs


async def test_rate_limit_per_key(make_client):
    k1, k2 = "key-one-0123456789", "key-two-0123456789"
    client = await make_client(api_keys=f"{k1},{k2}", rate_limit_per_s=0.5, rate_limit_burst=2)
    h1, h2 = {"Authorization": f"Bearer {k1}"}, {"Authorization": f"Bearer {k2}"}
    codes = [(await client.post("/predict", json={"inputs": ["good"]}, headers=h1)).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    r = await client.post("/predict", json={"inputs": ["good"]}, headers=h1)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert (await client.post("/predict", json={"inputs": ["ok"]}, headers=h2)).status_code == 200


async def test_cors_is_off_by_default_and_configurable(make_client):
    client = await make_client()
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = await client.options("/predict", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    client = await make_client(cors_origins="https://app.example")
    r = await client.options("/predict", headers=pre)
    assert r.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize("path", ["/models/..%2F..%2Fetc/predict", "/models/%2e%2e/predict",
                                  "/models/Sentiment/predict", "/models/a%00b"])
async def test_model_names_cannot_reach_the_filesystem(client, path):
    method = client.post if path.endswith("predict") else client.get
    r = await (method(path, json={"inputs": ["x"]}) if method == client.post else method(path))
    assert r.status_code in (404, 422)
    assert "error" in r.json()


async def test_request_id_is_kept_or_made(client):
    r = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/health/live")
    assert len(r.headers["x-request-id"]) == 32


async def test_stopping_answers_new_work_503_and_finishes_what_was_accepted(make_client, repo):
    add_slow_model(repo, max_batch_size=1)
    client = await make_client(**ONE_CPU_INSTANCE)
    gate = Gate.on(client, "slow")  # the accepted work is still running until released
    drain = client.app.state.ortserve.drain
    accepted = asyncio.ensure_future(client.post("/predict", json={"model": "slow",
                                                                    "inputs": [ROW] * 3}))
    await until(lambda: drain.inflight > 0, "the slow request accepted")
    drain.begin()
    assert (await client.get("/health/ready")).status_code == 503
    r = await client.post("/predict", json={"model": "tabular", "inputs": [ROW]})
    assert r.status_code == 200 and r.headers["connection"] == "close"
    drain.stop_accepting(hold_s=30)
    refused = asyncio.ensure_future(client.post("/predict", json={"model": "tabular",
                                                                   "inputs": [ROW]}))
    assert (await client.get("/health/live")).status_code == 200
    ready = await asyncio.wait_for(client.get("/v2/health/ready"), 5)  # answered, not held
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert not accepted.done()
    gate.release()
    assert await drain.wait_idle(30)
    assert not refused.done()  # held until the server stops accepting connections
    drain.listeners_closed()
    r = await refused
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
    done = await accepted
    assert done.status_code == 200 and len(done.json()["predictions"]) == 3
    assert done.headers["connection"] == "close"
