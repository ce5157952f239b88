"""Live models on the real app over httpx: several versions, the repository API, failed
loads that change nothing, unloads that return memory."""

from __future__ import annotations

import gc
import json
import shutil

import pytest

from app.runtime.memory import rss_mb
from tests.builders import add_rows_model, add_unrunnable_model
from tests.servers import metric_value
from tests.sync import until

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]
ADMIN_KEY, PREDICT_KEY = "admin-secret-0123456789", "predict-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def _predict(client, version: int | None = None, model: str = "tabular") -> dict:
    body = {"model": model, "inputs": [ROW]} | ({"version": version} if version else {})
    r = await client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def _index(client) -> dict:
    r = await client.get("/repository/index", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {(e["name"], e["version"]): e for e in r.json()["models"]}


async def test_policy_latest_2_serves_both_and_routes_to_the_highest(make_client, repo):
    add_rows_model(repo, "tabular", classifier=True, version=2)
    client = await make_client(version_policy={"tabular": "latest:2"})
    plain, v1, v2 = await _predict(client), await _predict(client, 1), await _predict(client, 2)
    assert (plain["version"], v1["version"], v2["version"]) == (2, 1, 2)
    assert v1["predictions"] != v2["predictions"]  # really two models
    assert plain["predictions"] == v2["predictions"]
    detail = (await client.get("/models/tabular")).json()
    assert detail["version"] == 2
    assert [(v["version"], v["state"], v["routed"]) for v in detail["versions"]] == [
        (1, "ready", False), (2, "ready", True)]
    one = await client.get("/models/tabular/versions/1")
    assert one.status_code == 200 and one.json()["version"] == 1
    assert (await client.get("/models/tabular/versions/7")).status_code == 404
    text = (await client.get("/metrics")).text
    for v in ("1", "2"):
        key = f'ortserve_requests_total{{api="v1",model="tabular",outcome="success",version="{v}"}}'
        assert metric_value(text, key) >= 1


async def test_default_policy_serves_only_the_latest(make_client, repo):
    add_rows_model(repo, "tabular", classifier=True, version=2)
    client = await make_client()
    assert (await _predict(client))["version"] == 2
    r = await client.post("/predict", json={"model": "tabular", "version": 1, "inputs": [ROW]})
    assert r.status_code == 404 and r.json()["error"]["details"]["served"] == [2]


async def test_repository_api_needs_the_admin_key(make_client):
    closed = await make_client()  # no admin key configured: nothing can change
    r = await closed.get("/repository/index")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await closed.post("/repository/models/tabular/unload", headers=ADMIN)
    assert r.status_code == 403 and "ORTSERVE_ADMIN_KEYS" in r.json()["error"]["message"]
    assert (await _predict(closed))["version"] == 1
    client = await make_client(admin_keys=ADMIN_KEY, api_keys=PREDICT_KEY)
    r = await client.get("/repository/index", headers={"Authorization": f"Bearer {PREDICT_KEY}"})
    assert r.status_code == 403
    r = await client.post("/predict", json={"inputs": ["good"]}, headers=ADMIN)
    assert r.status_code == 403  # the admin key is not a predict key
    assert (await client.get("/repository/index", headers=ADMIN)).status_code == 200


async def test_load_a_version_routes_to_it_until_the_next_load(make_client, repo):
    add_rows_model(repo, "tabular", classifier=True, version=2)
    client = await make_client(admin_keys=ADMIN_KEY)
    r = await client.post("/repository/models/tabular/load", json={"version": 1},
                          headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["pinned_version"] == 1
    assert (await _predict(client))["version"] == 1
    assert (await _predict(client, 2))["version"] == 2  # the policy's version still serves
    idx = await _index(client)
    assert idx[("tabular", 1)]["state"] == "ready" and idx[("tabular", 1)]["routed"]
    # a load without a version applies the policy again: back to 2, 1 unloaded
    r = await client.post("/repository/models/tabular/load", headers=ADMIN)
    assert r.json()["version"] == 2 and r.json()["pinned_version"] is None
    assert (await _predict(client))["version"] == 2
    assert (await _index(client))[("tabular", 1)]["state"] == "unloaded"
    text = (await client.get("/metrics")).text
    assert 'model="tabular",outcome="success",version="1"' not in text  # series removed
    assert 'ortserve_model_ready{model="tabular",version="2"} 1.0' in text


async def test_unload_a_version_then_the_model(make_client, repo):
    add_rows_model(repo, "tabular", classifier=True, version=2)
    client = await make_client(admin_keys=ADMIN_KEY,
                               version_policy={"tabular": "latest:2"})
    r = await client.post("/repository/models/tabular/unload", json={"version": 2},
                          headers=ADMIN)
    assert r.status_code == 200 and r.json()["version"] == 1
    assert (await _predict(client))["version"] == 1
    assert (await _index(client))[("tabular", 2)]["state"] == "unloaded"
    r = await client.post("/repository/models/tabular/unload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "unloaded"
    r = await client.post("/predict", json={"model": "tabular", "inputs": [ROW]})
    assert r.status_code == 503
    # unloaded on purpose: the replica stays ready for the other models
    assert (await client.get("/health/ready")).status_code == 200
    r = await client.post("/repository/models/tabular/load", headers=ADMIN)
    assert r.json()["status"] == "ready" and (await _predict(client))["version"] == 2
    r = await client.post("/repository/models/nope/load", headers=ADMIN)
    assert r.status_code == 404


def _corrupt(folder):
    data = bytearray((folder / "model.onnx").read_bytes())
    data[60] ^= 1
    (folder / "model.onnx").write_bytes(bytes(data))


def _bad_manifest(folder):
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "inputs": {"type": "text"}}))


@pytest.mark.parametrize("make_bad,reason,words", [
    (lambda repo: _corrupt(add_rows_model(repo, "tabular", True, version=2)), "verify",
     "SHA-256 does not match"),
    (lambda repo: _bad_manifest(add_rows_model(repo, "tabular", True, version=2)), "verify",
     "model.json invalid"),
    (lambda repo: (add_rows_model(repo, "tabular", True, version=2) / "model.onnx").unlink(),
     "verify", "model.onnx missing"),
    (lambda repo: add_unrunnable_model(repo, "tabular", 2), "warmup", "warm-up failed"),
])
async def test_a_failed_load_changes_nothing(make_client, repo, make_bad, reason, words):
    # the CPU provider raises on the unrunnable model's Gather past its table; CUDA's
    # kernel may not check
    client = await make_client(admin_keys=ADMIN_KEY, device="cpu")
    before = await _predict(client)
    make_bad(repo)
    r = await client.post("/repository/models/tabular/load", json={"version": 2},
                          headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "load_failed"
    assert words in r.json()["error"]["message"]
    after = await _predict(client)
    assert after == {**before, "timing": after["timing"]}  # same version, same answer
    idx = await _index(client)
    assert idx[("tabular", 2)]["state"] == "failed" and words in idx[("tabular", 2)]["reason"]
    versions = (await client.get("/models/tabular")).json()["versions"]
    assert any(v["version"] == 2 and words in v["reason"] for v in versions)
    assert (await client.get("/health/ready")).status_code == 200
    text = (await client.get("/metrics")).text
    assert metric_value(text, f'ortserve_model_load_failures_total{{model="tabular",'
                              f'reason="{reason}"}}') == 1
    # the policy (latest) prefers 2, but a failed 2 leaves 1 serving
    r = await client.post("/repository/models/tabular/load", headers=ADMIN)
    assert r.json()["version"] == 1 and (await _predict(client))["version"] == 1


async def test_a_load_over_the_memory_budget_is_refused(make_client, repo):
    add_rows_model(repo, "tabular", classifier=True, version=2, hidden=2048)  # 16 MB
    client = await make_client(admin_keys=ADMIN_KEY, version_policy={"tabular": [1]})
    # the budget leaves 8 MB above what the process uses once started
    client.app.state.ortserve.settings.memory_budget_mb = int(rss_mb()) + 8
    r = await client.post("/repository/models/tabular/load", json={"version": 2},
                          headers=ADMIN)
    assert r.status_code == 422 and "memory budget" in r.json()["error"]["message"]
    assert (await _predict(client))["version"] == 1
    text = (await client.get("/metrics")).text
    assert metric_value(text, 'ortserve_model_load_failures_total{model="tabular",'
                              'reason="memory"}') == 1


async def test_unloading_returns_memory(make_client, repo):
    # 8,192 x 8,192 float32 weights: a 256 MB version
    add_rows_model(repo, "big", classifier=True, version=1, hidden=8192)
    # host memory is what is measured: the CPU provider, also on a machine with a GPU
    client = await make_client(admin_keys=ADMIN_KEY, models=["tabular"], device="cpu")
    gc.collect()
    before = rss_mb()
    r = await client.post("/repository/models/big/load", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    loaded = rss_mb()
    r = await client.post("/repository/models/big/unload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "unloaded"
    del r
    assert loaded - before > 200  # the version was visible in memory

    def returned() -> bool:
        """The last references go with the model's threads, which end on their own once
        the queue is closed: the memory comes back soon after the answer, not with it."""
        gc.collect()
        return rss_mb() <= before * 1.10

    await until(returned, f"RSS back within 10% of {before:.0f} MB (loaded {loaded:.0f} MB)",
                every=0.05)
    print(f"RSS before {before:.0f} MB, loaded {loaded:.0f} MB, after unload {rss_mb():.0f} MB")


async def test_deleting_the_newest_folder_rolls_back_on_load(make_client, repo):
    add_rows_model(repo, "tabular", classifier=True, version=2)
    client = await make_client(admin_keys=ADMIN_KEY)
    assert (await _predict(client))["version"] == 2
    shutil.rmtree(repo / "tabular" / "2")
    r = await client.post("/repository/models/tabular/load", headers=ADMIN)
    assert r.json()["version"] == 1 and (await _predict(client))["version"] == 1
    assert ("tabular", 2) not in await _index(client)


class Polls:
    """Counts the registry's finished polls of the repository folder (the real poll runs;
    the test only learns when one is done)."""

    def __init__(self, client) -> None:
        poller = client.app.state.ortserve.dataplane.registry._poller
        self.done, real = 0, poller._poll

        async def counted() -> None:
            try:
                await real()
            finally:
                self.done += 1

        poller._poll = counted

    async def more(self, n: int) -> None:
        """Returns once `n` more polls have finished."""
        target = self.done + n
        await until(lambda: self.done >= target, f"{n} more repository polls")


async def test_polling_never_notices_a_half_copied_folder(make_client, repo, tmp_path):
    # A folder changed less than two poll intervals ago is left for a later poll; here each
    # file follows the last within one poll (plus a request), however slow the host.
    client = await make_client(admin_keys=ADMIN_KEY, repository_poll_s=0.5)
    polls = Polls(client)
    source = add_rows_model(tmp_path / "elsewhere", "tabular", classifier=True, version=2)
    target = repo / "tabular" / "2"
    target.mkdir()
    for f in sorted(source.iterdir()):  # copied file by file, as `cp -r` would
        shutil.copyfile(f, target / f.name)
        await polls.more(1)  # a poll saw the half-copied folder
        assert (await _predict(client))["version"] == 1
    await until(lambda: _served(client, 2), "version 2 served")
    text = (await client.get("/metrics")).text
    assert "ortserve_model_load_failures_total{" not in text  # never seen half-copied


async def _served(client, version: int) -> bool:
    return (await _predict(client))["version"] == version


async def test_polling_counts_a_broken_version_once_and_retries_when_it_changes(make_client,
                                                                                 repo):
    client = await make_client(admin_keys=ADMIN_KEY, repository_poll_s=0.05)
    folder = add_rows_model(repo, "tabular", classifier=True, version=2)
    good = (folder / "model.onnx").read_bytes()
    _corrupt(folder)
    key = 'ortserve_model_load_failures_total{model="tabular",reason="verify"}'

    async def failed() -> bool:
        text = (await client.get("/metrics")).text
        return key in text

    polls = Polls(client)
    await until(failed, "the broken version counted")
    await polls.more(10)
    assert metric_value((await client.get("/metrics")).text, key) == 1
    assert (await _predict(client))["version"] == 1
    assert (await client.get("/health/ready")).status_code == 200
    (folder / "model.onnx").write_bytes(good)  # fixed in place: the folder changed
    await until(lambda: _served(client, 2), "the fixed version served")
    assert (await _index(client))[("tabular", 1)]["state"] == "unloaded"


def test_with_several_workers_the_api_refuses_changes_that_would_reach_one(repo, tmp_path):
    import httpx

    from tests.servers import ServiceProcess

    svc = ServiceProcess(repo, tmp_path / "log", workers=2, ORTSERVE_ADMIN_KEYS=ADMIN_KEY,
                         PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    try:
        svc.wait_ready()
        r = httpx.post(f"{svc.url}/repository/models/tabular/unload", headers=ADMIN, timeout=30)
        assert r.status_code == 409 and "poll mode" in r.json()["error"]["message"]
        r = httpx.post(f"{svc.url}/predict", json={"model": "tabular", "inputs": [ROW]},
                       timeout=30)
        assert r.status_code == 200
    finally:
        svc.terminate()


async def test_warm_up_leaves_no_arena_behind(make_client, repo):
    """The warm-up's largest batch (here 32,768 rows x 512 hidden units: about 128 MB of
    activations in ONNX Runtime's CPU arena) is handed back once warm-up is done."""
    add_rows_model(repo, "wide", classifier=True, version=1, hidden=512,
                   batching={"max_batch_size": 32768})
    client = await make_client(admin_keys=ADMIN_KEY, models=["tabular"], device="cpu")
    gc.collect()
    before = rss_mb()
    r = await client.post("/repository/models/wide/load", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    grown = rss_mb() - before
    print(f"RSS grew by {grown:.0f} MB over the load")
    assert grown < 48, grown
