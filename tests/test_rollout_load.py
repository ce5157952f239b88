"""Rollouts proven under load (issue 23, deliverable 5): a real uvicorn (`ortserve serve` in a
child process) serving tiny real models whose versions answer known inputs differently, so
every answer names the version that gave it and can be checked against that version's own
answer.

Every test here talks to real server processes over loopback HTTP (and gRPC for the sticky
split). The many requests of the statistical tests go through `_exchange`, a minimal
HTTP/1.1 client on asyncio streams with keep-alive: httpx costs the client several times
what the server spends, which on a loaded 2-core machine would make 10,000 requests take
minutes. Each test uses its own model, so the rollouts of one module-wide server do not
meet.

(a) canary share, (b) sticky keys in one and in a second process, (c) raising the canary
percentage, (d) shadowing changes no answer and reports the agreement exactly, (e) the gate
refuses and then promotes under closed-loop load, (f) `auto` rolls a failing candidate back
(and the error rate counts shadowed inputs, not requests), (g) `rollout.json` followed by
two workers.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import numpy_helper

from app.serving.rollout import key_share
from tests.builders import (
    FEATURES,
    WORDS,
    add_rows_model,
    add_text_model,
    build_fragile_rows_model,
    build_rows_model,
    write_manifest,
)
from tests.servers import PredictLoad, ServiceProcess, free_port, metric_value, wait_until

ADMIN_KEY = "admin-secret-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
# the statistical tests' server: auto decisions checked often, shadow copies never dropped
# for lack of room or time (the agreement test needs every one compared), the rollout
# polled without the admin API's rate limit
SERVER_ENV = {"ORTSERVE_ADMIN_KEYS": ADMIN_KEY, "ORTSERVE_ADMIN_RATE_LIMIT_PER_S": "0",
              "ORTSERVE_ROLLOUT_CHECK_S": "0.2",
              "ORTSERVE_SHADOW_MAX_INFLIGHT": "100000", "ORTSERVE_SHADOW_TIMEOUT_S": "600",
              "ORTSERVE_LOG_LEVEL": "warning"}
BOUND_S = 120  # every poll below gives up after this long


# -- models ----------------------------------------------------------------------------------
def rows_classifier(folder: Path, name: str, version: int, build) -> None:
    """A version of a 4-feature classifier (labels no/yes) whose graph `build(path)` writes."""
    folder.mkdir(parents=True)
    build(folder / "model.onnx")
    write_manifest(folder, {
        "name": name, "version": version, "kind": "tabular-classification",
        "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "model.onnx",
        "batching": {"max_batch_size": 16}, "test_metrics": {}})


def add_louder_copy(root: Path, name: str, version: int) -> None:
    """Version 1's weights times 3: every label the same as version 1's, every score
    different (a candidate that agrees)."""
    def build(path: Path) -> None:
        build_rows_model(path, len(FEATURES), classifier=True, seed=0)
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
        onnx.save(model, str(path))

    rows_classifier(root / name / str(version), name, version, build)


def add_fragile_version(root: Path, name: str, version: int) -> None:
    """A candidate that fails at run time (a Gather out of bounds) on rows whose feature 0
    is >= 2, and answers the others."""
    rows_classifier(root / name / str(version), name, version,
                    lambda path: build_fragile_rows_model(path, len(FEATURES)))


def rows(n: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-1.9, 1.9), 3) for _ in FEATURES] for _ in range(n)]


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(n)]


# -- a cheap HTTP/1.1 client ------------------------------------------------------------------
Request = tuple[str, bytes, dict[str, str]]  # path, JSON body, headers
Answer = tuple[int, dict[str, str], object]  # status, headers (lower-case), parsed JSON body


async def _exchange_async(url: str, requests: list[Request], connections: int,
                          fresh: bool) -> list[Answer]:
    host, port = url.split("//", 1)[1].split(":")
    out: list[Answer | None] = [None] * len(requests)
    todo = iter(range(len(requests)))

    async def connect():
        return await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)

    async def client() -> None:
        conn = None
        for i in todo:
            path, body, headers = requests[i]
            if conn is None:
                conn = await connect()
            reader, writer = conn
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            if fresh:
                extra += "Connection: close\r\n"
            writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: "
                         f"application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                         .encode() + body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
            fields = {k.lower(): v for k, v in fields.items()}
            payload = await asyncio.wait_for(
                reader.readexactly(int(fields["content-length"])), 60)
            out[i] = (int(lines[0][9:12]), fields, json.loads(payload))
            if fresh or fields.get("connection") == "close":
                writer.close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(connections)))
    assert all(a is not None for a in out)
    return out  # type: ignore[return-value]


def exchange(url: str, requests: list[Request], connections: int = 8,
             fresh: bool = False) -> list[Answer]:
    """POST every request (in order, `connections` at a time, keep-alive unless `fresh`:
    a new connection each) and return the answers in the same order."""
    return asyncio.run(_exchange_async(url, requests, connections, fresh))


def predict_request(model: str, inputs: list, version: int | None = None,
                    key: str | None = None, request_id: str | None = None) -> Request:
    body = {"model": model, "inputs": inputs} | ({"version": version} if version else {})
    headers = ({"X-Route-Key": key} if key is not None else {}) | (
        {"X-Request-ID": request_id} if request_id is not None else {})
    return "/predict", json.dumps(body).encode(), headers


def same(got: dict, want: dict) -> None:
    """got == want, reporting the first few differences (pytest's own diff of thousands of
    entries takes minutes)."""
    assert got.keys() == want.keys()
    wrong = [(k, got[k], want[k]) for k in got if got[k] != want[k]]
    assert not wrong, (f"{len(wrong)} of {len(got)} differ", wrong[:3])


def ok_bodies(answers: list[Answer]) -> list[dict]:
    bad = [a for a in answers if a[0] != 200]
    assert not bad, bad[:3]
    return [a[2] for a in answers]  # type: ignore[misc]


def own_answers(url: str, model: str, inputs: list, version: int) -> list[dict]:
    """What `version` itself answers for each input (asked with an explicit version, which
    a rollout never reroutes and never counts)."""
    chunks = [inputs[i:i + 16] for i in range(0, len(inputs), 16)]
    bodies = ok_bodies(exchange(url, [predict_request(model, c, version) for c in chunks]))
    assert all(b["version"] == version for b in bodies)
    return [p for b in bodies for p in b["predictions"]]


# -- the admin API ---------------------------------------------------------------------------
def put_rollout(url: str, model: str, spec: dict) -> dict:
    r = httpx.put(f"{url}/repository/models/{model}/rollout", json=spec, headers=ADMIN,
                  timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def get_rollout(url: str, model: str) -> dict:
    r = httpx.get(f"{url}/repository/models/{model}/rollout", headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def shadows_settled(url: str, model: str, inputs: int) -> dict:
    """The rollout once no shadow copy is in flight, which, once every request is answered,
    means all of them ran (each was submitted before its request's answer was sent); every
    one of the `inputs` shadowed inputs is then compared, failed or dropped. Bounded."""
    state: dict = {}

    def settled() -> bool:
        state.update(get_rollout(url, model))
        return state["shadow"]["inflight"] == 0

    wait_until(settled, BOUND_S, f"the shadow copies of {model} done")
    s = state["shadow"]
    assert s["samples"] + s["errors"] + s["dropped"] == inputs, s
    return state


def criterion(state: dict, name: str) -> dict:
    return next(c for c in state["criteria"] if c["name"] == name)


NO_LATENCY = {"max_p99_ratio": None}  # latency criteria are timings: not asserted in tests


# -- the module's server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One real uvicorn, one model per test: `canary`, `sticky`, `moves` (rows, v1 and v2),
    `shadow` (text, v1 and v2, both served), `gate` (rows v1, v2 and v3 = v1 x 3),
    `fragile-canary`, `fragile-shadow` and `units` (rows v1, and a v2 that fails on some
    rows)."""
    tmp = tmp_path_factory.mktemp("rollout")
    root = tmp / "models"
    fragile = ("fragile-canary", "fragile-shadow", "units")
    for name in ("canary", "sticky", "moves", "gate", *fragile):
        add_rows_model(root, name, classifier=True, version=1)
    for name in ("canary", "sticky", "moves", "gate"):
        add_rows_model(root, name, classifier=True, version=2)
    add_louder_copy(root, "gate", 3)
    for name in fragile:
        add_fragile_version(root, name, 2)
    add_text_model(root, "shadow", version=1)
    add_text_model(root, "shadow", version=2)
    env = SERVER_ENV | {"ORTSERVE_VERSION_POLICY": json.dumps(
        {"shadow": "all", "gate": [1]} | {name: [1] for name in fragile})}
    with ServiceProcess(root, tmp / "log", **env) as svc:
        svc.root = root
        yield svc


# -- (a) ---------------------------------------------------------------------------------------
def test_a_ten_percent_canary_answers_ten_percent_of_ten_thousand_requests(service):
    """Real uvicorn, 10,000 requests without a version or key from 8 keep-alive clients:
    the candidate answers 10% +- 2% of them (6 standard deviations), every answer is its
    version's own, and the rollout's own counts agree with the answers."""
    url, inputs = service.url, rows(50, seed=1)
    put_rollout(url, "canary", {"candidate": 2, "stable": 1, "canary_percent": 10})
    want = {v: own_answers(url, "canary", inputs, v) for v in (1, 2)}
    assert want[1] != want[2]  # the versions differ on these inputs
    n = 10_000
    bodies = ok_bodies(exchange(url, [predict_request("canary", [inputs[i % 50]])
                                      for i in range(n)]))
    versions = Counter(b["version"] for b in bodies)
    for i, b in enumerate(bodies):
        assert b["predictions"] == [want[b["version"]][i % 50]]
    assert set(versions) == {1, 2}
    assert 0.08 * n <= versions[2] <= 0.12 * n, versions
    counted = {a["version"]: a["requests"] for a in get_rollout(url, "canary")["answers"]}
    assert counted == {1: versions[1], 2: versions[2]}


# -- (b) ---------------------------------------------------------------------------------------
STICKY = {"candidate": 2, "stable": 1, "canary_percent": 25, "sticky": True}


def v2_request(model: str, row: list[float], key: str) -> Request:
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": row}],
            "parameters": {"route_key": key}}
    return f"/v2/models/{model}/infer", json.dumps(body).encode(), {}


def test_b_sticky_keys_keep_their_version_here_and_in_a_second_process(service, tmp_path):
    """Real uvicorn x 2. 1,000 keys, each sent 20 times (interleaved, 8 keep-alive clients)
    to the first server: no key ever changes version. A second server process on the same
    repository, given the same rollout, puts every key on the same version, over /predict,
    v2 REST (parameters.route_key) and gRPC (x-route-key metadata) alike."""
    url, keys = service.url, [f"user-{i}" for i in range(1000)]
    row = rows(1, seed=2)[0]
    put_rollout(url, "sticky", STICKY)
    requests = [predict_request("sticky", [row], key=k) for _ in range(20) for k in keys]
    bodies = ok_bodies(exchange(url, requests))
    seen: dict[str, set[int]] = {}
    for (_, _, headers), b in zip(requests, bodies, strict=True):
        seen.setdefault(headers["X-Route-Key"], set()).add(b["version"])
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items()
                                                     if len(v) > 1}
    first = {k: next(iter(v)) for k, v in seen.items()}
    on_candidate = sum(v == 2 for v in first.values())
    assert 0.2 * len(keys) <= on_candidate <= 0.3 * len(keys), on_candidate

    grpc_port = free_port()
    with ServiceProcess(service.root, tmp_path / "log2", ORTSERVE_GRPC_PORT=str(grpc_port),
                        **SERVER_ENV) as other:
        put_rollout(other.url, "sticky", STICKY)
        again = ok_bodies(exchange(other.url, [predict_request("sticky", [row], key=k)
                                               for k in keys]))
        same({k: b["version"] for k, b in zip(keys, again, strict=True)}, first)
        sample = keys[:100]
        v2 = ok_bodies(exchange(other.url, [v2_request("sticky", row, k) for k in sample]))
        same({k: int(b["model_version"]) for k, b in zip(sample, v2, strict=True)},
             {k: first[k] for k in sample})
        grpc = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            features = triton.InferInput("features", [1, 4], "FP32")
            features.set_data_from_numpy(np.array([row], dtype=np.float32))
            got = {k: int(grpc.infer("sticky", [features], headers={"x-route-key": k})
                          .get_response().model_version) for k in sample}
        finally:
            grpc.close()
        same(got, {k: first[k] for k in sample})
    # the split is the documented hash of (model, key), which any process computes alike
    same(first, {k: 2 if key_share("sticky", k) < 25 else 1 for k in keys})


# -- (c) ---------------------------------------------------------------------------------------
def test_c_raising_the_canary_from_10_to_30_moves_only_stable_keys(service):
    """Real uvicorn. 1,000 sticky keys at 10%, then at 30% (a change of the running rollout,
    which keeps its statistics): every key on the candidate stays there, about a fifth of the
    keys move from stable to candidate, none the other way; back at 10%, every key is where
    it was."""
    url, keys = service.url, [f"session-{i}" for i in range(1000)]
    row = rows(1, seed=3)[0]

    def split(percent: float) -> dict[str, int]:
        put_rollout(url, "moves", {"candidate": 2, "stable": 1, "canary_percent": percent,
                                   "sticky": True})
        bodies = ok_bodies(exchange(url, [predict_request("moves", [row], key=k)
                                          for k in keys]))
        return {k: b["version"] for k, b in zip(keys, bodies, strict=True)}

    at10 = split(10)
    started = get_rollout(url, "moves")["started_at"]
    at30 = split(30)
    moved = [k for k in keys if at10[k] != at30[k]]
    assert all(at10[k] == 1 and at30[k] == 2 for k in moved)
    assert all(at30[k] == 2 for k in keys if at10[k] == 2)
    assert 0.14 * len(keys) <= len(moved) <= 0.26 * len(keys), len(moved)
    assert 0.05 * len(keys) <= sum(v == 2 for v in at10.values()) <= 0.15 * len(keys)
    same(split(10), at10)
    state = get_rollout(url, "moves")
    assert state["started_at"] == started  # changed in place, not restarted
    assert sum(a["requests"] for a in state["answers"]) == 3 * len(keys)


# -- (d) ---------------------------------------------------------------------------------------
def clear_labels(answers: list[dict], margin: float = 1e-4) -> list[bool]:
    """Whether each answer's label leads the runner-up by `margin`: its label then does not
    depend on the batch it ran in (padding and batch size move scores in the last bits)."""
    out = []
    for a in answers:
        top = sorted(a["scores"].values(), reverse=True)
        out.append(top[0] - top[1] > margin)
    return out


def test_d_full_shadow_changes_no_answer_and_reports_the_agreement_exactly(service):
    """Real uvicorn, text model, both versions served and version 1 routed. Each version's
    own answers to 200 texts are asked first (explicit versions: a rollout never reroutes
    or counts them). 300 requests of 1 to 4 of these texts, before and during a 100%
    shadow on version 2, give the same bodies (timing aside); they are sent on one
    connection, so each runs in a batch of its own both times (concurrent clients batch
    differently from run to run, which moves scores in the last bits, shadow or not). Once
    every shadowed input is compared, the reported samples, agreements and confusion matrix
    (API and Prometheus) equal those computed here from the two versions' own answers; the
    texts are those whose label leads by 1e-4 in both versions, so that the batches the
    shadow copies ran in cannot flip a label."""
    url = service.url
    r = httpx.post(f"{url}/repository/models/shadow/load", json={"version": 1},
                   headers=ADMIN, timeout=60)
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    pool = texts(400, seed=4)
    own = {v: own_answers(url, "shadow", pool, v) for v in (1, 2)}
    clear = [a and b for a, b in zip(*(clear_labels(own[v]) for v in (1, 2)), strict=True)]
    label = {v: {t: p["label"] for t, p, ok in zip(pool, own[v], clear, strict=True) if ok}
             for v in (1, 2)}
    chosen = sorted(label[1])[:200]
    assert len(chosen) == 200
    rng = random.Random(4)
    batches = [rng.sample(chosen, rng.randint(1, 4)) for _ in range(300)]
    requests = [predict_request("shadow", b) for b in batches]

    def bodies() -> list[dict]:
        out = ok_bodies(exchange(url, requests, connections=1))
        return [{k: v for k, v in b.items() if k != "timing"} for b in out]

    before = bodies()
    assert all(b["version"] == 1 for b in before)
    put_rollout(url, "shadow", {"candidate": 2, "stable": 1, "shadow_percent": 100,
                                "gate": {"min_samples": 10}})
    same(dict(enumerate(bodies())), dict(enumerate(before)))
    n = sum(len(b) for b in batches)
    state = shadows_settled(url, "shadow", n)
    s = state["shadow"]
    assert (s["samples"], s["errors"], s["dropped"]) == (n, 0, 0)

    inputs = [t for b in batches for t in b]
    pairs = [(label[1][t], label[2][t]) for t in inputs]
    agreements = sum(a == b for a, b in pairs)
    assert 0 < agreements < n  # the versions agree on some inputs, not all
    assert s["agreements"] == agreements and s["agreement_rate"] == agreements / n
    assert {(c["stable"], c["candidate"]): c["count"] for c in s["confusion"]} == \
        Counter(pairs)
    text = httpx.get(f"{url}/metrics", timeout=30).text
    labels = '{candidate="2",model="shadow",stable="1"}'
    assert metric_value(text, f"ortserve_rollout_shadow_samples_total{labels}") == n
    assert metric_value(text, f"ortserve_rollout_shadow_agreements_total{labels}") == agreements


# -- (e) ---------------------------------------------------------------------------------------
def promote(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/repository/models/{model}/rollout/promote", headers=ADMIN,
                      timeout=60)


def test_e_the_gate_refuses_then_promotes_under_load_with_no_failed_request(service):
    """Real uvicorn. A gate of 200 samples and 90% agreement (lower bound of the 95%
    interval): refused with too few samples; refused with 250 samples of version 2, which
    disagrees too often; met by version 3 (same labels as the stable version, other scores),
    which is then promoted while 8 closed-loop clients send requests: none fails, every
    answer is its version's own, and after the promotion version 1 answers no new request."""
    url, inputs = service.url, rows(250, seed=5)
    gate = {"min_samples": 200, "min_agreement": 0.9, "max_error_rate_increase": 0.01}
    put_rollout(url, "gate", {"candidate": 2, "stable": 1, "shadow_percent": 100,
                              "gate": gate | NO_LATENCY})
    r = promote(url, "gate")
    assert r.status_code == 409 and r.json()["error"]["code"] == "promotion_refused"
    refused = {c["name"]: c["status"] for c in r.json()["error"]["details"]}
    assert refused["min_samples"] == "not_enough_data"

    ok_bodies(exchange(url, [predict_request("gate", [x]) for x in inputs]))
    state = shadows_settled(url, "gate", len(inputs))
    assert state["shadow"]["samples"] == len(inputs)
    assert state["shadow"]["agreements"] / len(inputs) < 0.8  # version 2 often disagrees
    r = promote(url, "gate")
    assert r.status_code == 409, r.text
    refused = {c["name"]: c["status"] for c in r.json()["error"]["details"]}
    assert refused == {"min_samples": "met", "min_agreement": "not_met",
                       "max_error_rate_increase": "met"}
    assert httpx.get(f"{url}/models/gate", timeout=30).json()["version"] == 1

    put_rollout(url, "gate", {"candidate": 3, "stable": 1, "shadow_percent": 100,
                              "gate": gate | NO_LATENCY})
    ok_bodies(exchange(url, [predict_request("gate", [x]) for x in inputs]))
    state = shadows_settled(url, "gate", len(inputs))
    assert state["promotable"] and state["shadow"]["agreements"] == len(inputs)

    job = inputs[:4]
    want = {v: own_answers(url, "gate", job, v) for v in (1, 3)}
    assert want[1] != want[3]
    with PredictLoad(url, [("gate", job, want)], clients=8) as load:
        wait_until(lambda: load.answered() >= 50, BOUND_S, "load under way")
        r = promote(url, "gate")
        assert r.status_code == 200, r.text
        at_promotion = load.answers.get(1, 0)
        wait_until(lambda: load.answers.get(3, 0) >= 100, BOUND_S, "version 3 answering")
    assert load.failures == []
    assert load.answers.get(1, 0) <= at_promotion + 8  # at most the requests in flight
    assert not get_rollout(url, "gate")["active"]
    assert httpx.get(f"{url}/models/gate", timeout=30).json()["version"] == 3
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert metric_value(text, 'ortserve_rollout_decisions_total{decision="promote",'
                              'model="gate",reason="gate_met"}') == 1


# -- (f) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["canary", "shadow"])
def test_f_auto_rolls_back_a_candidate_that_fails_on_some_inputs(service, how):
    """Real uvicorn. Version 2 fails on rows whose first feature is >= 2 (a quarter of
    these). Tried on a 20% canary (its failures are answers: 500) or on a 100% shadow
    (nobody sees them), with an automatic gate of 20 samples and at most 5% more errors,
    the rollout ends in a rollback by itself: the decision is counted, version 2 leaves,
    and every request (the failing rows too) is answered by version 1. Shadowed, not one
    request failed on the way."""
    url, model = service.url, f"fragile-{how}"
    good, bad = rows(30, seed=6), [[2.5, *r[1:]] for r in rows(10, seed=7)]
    inputs = good + bad
    split = {"canary_percent": 20} if how == "canary" else {"shadow_percent": 100}
    put_rollout(url, model, {"candidate": 2, "stable": 1, **split,
                             "gate": {"auto": True, "min_samples": 20, "min_agreement": None,
                                      "max_error_rate_increase": 0.05} | NO_LATENCY})
    sent = 0
    statuses: Counter[int] = Counter()

    def rolled_back() -> bool:
        nonlocal sent
        if not get_rollout(url, model)["active"]:
            return True
        if sent < 5000:  # bounded: at most 5,000 requests
            answers = exchange(url, [predict_request(model, [x]) for x in inputs])
            statuses.update(a[0] for a in answers)
            sent += len(inputs)
        return False

    wait_until(rolled_back, BOUND_S, "the automatic rollback")
    assert set(statuses) <= ({200, 500} if how == "canary" else {200}), statuses
    state = get_rollout(url, model)
    assert not state["active"] and state["error"] is None
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert metric_value(text, 'ortserve_rollout_decisions_total{decision="rollback",'
                              f'model="{model}",reason="max_error_rate_increase"}}') == 1
    served = httpx.get(f"{url}/models/{model}", timeout=30).json()
    assert served["version"] == 1
    assert [v["version"] for v in served["versions"] if v["state"] == "ready"] == [1]
    bodies = ok_bodies(exchange(url, [predict_request(model, [x]) for x in inputs * 5]))
    assert {b["version"] for b in bodies} == {1}


def test_shadow_error_rate_counts_inputs_like_the_samples_it_is_divided_by(service):
    """Real uvicorn, one request at a time (each shadow copy runs alone). 20 shadowed
    requests of 8 rows; 2 of them hold a row version 2 fails on, so it answers 90% of the
    requests and 90% of the inputs: its error rate is 10%, whether counted in requests or
    inputs. (Failed requests counted against compared inputs made it 2 / 146, and a gate of
    at most 5% more errors let such a candidate through.)"""
    url = service.url
    put_rollout(url, "units", {"candidate": 2, "stable": 1, "shadow_percent": 100,
                               "gate": {"min_samples": 10, "min_agreement": None,
                                        "max_error_rate_increase": 0.05} | NO_LATENCY})
    for i in range(20):
        batch = rows(8, seed=100 + i)
        if i in (3, 13):
            batch[5] = [3.0, 0.0, 0.0, 0.0]
        ok_bodies(exchange(url, [predict_request("units", batch)], connections=1))
        shadows_settled(url, "units", 8 * (i + 1))
    state = get_rollout(url, "units")
    assert (state["shadow"]["samples"], state["shadow"]["errors"]) == (18 * 8, 2 * 8)
    c = criterion(state, "max_error_rate_increase")
    assert c["status"] == "not_met" and c["value"] == pytest.approx(0.1), c
    assert not state["promotable"]


# -- (g) ---------------------------------------------------------------------------------------
def test_g_two_workers_follow_the_rollout_file(tmp_path):
    """Real uvicorn, 2 worker processes polling the repository. `rollout.json` (sticky, 30%)
    is there at start; later it says 60%. Each time, 300 keys sent 4 times each on new
    connections (so both workers take them; the access log names the process per request
    id): both workers serve, every key has one version whichever worker answers, the one the
    file's split gives it. The admin API defers to the file (409)."""
    root = tmp_path / "models"
    add_rows_model(root, "tabular", classifier=True, version=1)
    add_rows_model(root, "tabular", classifier=True, version=2)
    spec = {"candidate": 2, "stable": 1, "canary_percent": 30, "sticky": True}
    (root / "tabular" / "rollout.json").write_text(json.dumps(spec))
    keys, row = [f"k{i}" for i in range(300)], rows(1, seed=8)[0]
    svc = ServiceProcess(root, tmp_path / "log", workers=2, ORTSERVE_ADMIN_KEYS=ADMIN_KEY,
                         ORTSERVE_REPOSITORY_POLL_S="0.5",
                         PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")).wait_ready()
    try:
        def log_lines() -> list[dict]:
            return [json.loads(ln) for ln in svc.logs().splitlines() if ln.startswith("{")]

        def pids_logging(text: str) -> set[int]:
            return {ln["pid"] for ln in log_lines() if text in ln["message"]}

        wait_until(lambda: len(pids_logging("ready on")) == 2, BOUND_S, "both workers up")
        assert len(pids_logging("rollout of version 2 beside 1")) == 2

        def check(percent: float, round_: int) -> None:
            requests = [predict_request("tabular", [row], key=k, request_id=f"{round_}-{k}-{j}")
                        for j in range(4) for k in keys]
            bodies = ok_bodies(exchange(svc.url, requests, fresh=True))
            version = {h["X-Request-ID"]: b["version"]
                       for (_, _, h), b in zip(requests, bodies, strict=True)}
            pid: dict[str, int] = {}

            def logged() -> bool:  # a request's access line is written after its answer
                pid.update({ln["request_id"]: ln["pid"] for ln in log_lines()
                            if ln["logger"] == "ortserve.access"
                            and ln.get("path") == "/predict"})
                return all(rid in pid for rid in version)

            wait_until(logged, BOUND_S, "every request in the access log")
            by_key: dict[str, set[int]] = {}
            workers_of: dict[str, set[int]] = {}
            for rid, v in version.items():
                key = rid.split("-")[1]
                by_key.setdefault(key, set()).add(v)
                workers_of.setdefault(key, set()).add(pid[rid])
            assert len({pid[rid] for rid in version}) == 2  # both workers served
            assert any(len(w) == 2 for w in workers_of.values())
            same(by_key, {k: {2 if key_share("tabular", k) < percent else 1} for k in keys})

        check(30, 0)
        r = httpx.put(f"{svc.url}/repository/models/tabular/rollout", headers=ADMIN,
                      json={"candidate": 2, "stable": 1}, timeout=30)
        assert r.status_code == 409 and "rollout.json" in r.json()["error"]["message"]
        (root / "tabular" / "rollout.json").write_text(json.dumps(spec | {"canary_percent": 60}))
        wait_until(lambda: len(pids_logging("rollout of version 2 changed (canary 60%")) == 2,
                   BOUND_S, "both workers following the changed file")
        check(60, 1)
    finally:
        assert svc.terminate() in (0, -15)


def test_exchange_helper_keeps_order_under_concurrency(service):
    """The client the tests above rely on returns each answer at its request's place."""
    url, inputs = service.url, rows(64, seed=9)
    want = own_answers(url, "canary", inputs, 1)
    got = ok_bodies(exchange(url, [predict_request("canary", [x], 1) for x in inputs],
                             connections=16))
    assert [b["predictions"][0] for b in got] == want
