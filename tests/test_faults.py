"""Broken models on disk and failing model runs: the service keeps serving what it can."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.runtime.session import DeviceError
from tests.builders import (
    add_fragile_model,
    add_odd_shape_regressor,
    add_rows_model,
    add_text_model,
    write_manifest,
)

pytestmark = pytest.mark.anyio


async def _status(client) -> dict:
    return {m["name"]: m for m in (await client.get("/models")).json()["models"]}


@pytest.mark.parametrize("damage,reason", [
    (lambda f: (f / "model.onnx").write_bytes((f / "model.onnx").read_bytes()[:100]),
     "truncated"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json missing"),
    (lambda f: (f / "model.onnx").write_bytes(
        bytes(b ^ 1 if i == 50 else b for i, b in enumerate((f / "model.onnx").read_bytes()))),
     "SHA-256 does not match"),
    (lambda f: (f / "model.json").write_text("{not json"), "not valid JSON"),
    (lambda f: (f / "model.json").write_text(json.dumps(
        {**json.loads((f / "model.json").read_text()), "kind": "nonsense"})), "invalid at kind"),
])
async def test_a_broken_model_does_not_stop_the_others(make_client, repo, capsys, damage,
                                                       reason):
    damage(repo / "sentiment" / "1")
    client = await make_client()
    models = await _status(client)
    assert models["sentiment"]["status"] == "failed"
    assert reason in models["sentiment"]["error"]
    assert models["tabular"]["status"] == "ready"
    r = await client.post("/predict", json={"model": "tabular", "inputs": [[1, 2, 3, 4]]})
    assert r.status_code == 200
    r = await client.post("/predict", json={"model": "sentiment", "inputs": ["good"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    ready = await client.get("/health/ready")
    assert ready.status_code == 503 and reason in ready.json()["not_ready"]["sentiment"]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "model sentiment version" in ln]
    assert len(lines) == 1 and "not loaded" in lines[0] and reason in lines[0]


async def test_highest_version_is_served_unless_pinned(make_client, repo):
    add_text_model(repo, version=2)
    client = await make_client()
    assert (await _status(client))["sentiment"]["version"] == 2
    pinned = await make_client(model_versions={"sentiment": 1})
    assert (await _status(pinned))["sentiment"]["version"] == 1
    missing = await make_client(model_versions={"sentiment": 9})
    assert "pinned version 9 not found" in (await _status(missing))["sentiment"]["error"]


async def test_only_listed_models_load(make_client):
    client = await make_client(models=["tabular"])
    assert set(await _status(client)) == {"tabular"}
    r = await client.post("/predict", json={"inputs": [[1, 2, 3, 4]]})
    assert r.json()["model"] == "tabular"  # the only model is the default


async def test_staging_and_bad_names_are_ignored(make_client, repo):
    (repo / "sentiment" / ".staging-x").mkdir()
    (repo / "Bad Name").mkdir()
    client = await make_client()
    assert set(await _status(client)) == {"sentiment", "tabular", "regression"}


async def test_a_failing_batch_fails_only_its_requests(make_client, repo):
    add_fragile_model(repo)
    # the CPU provider raises on a Gather past its table; CUDA's kernel may not check
    client = await make_client(batching={"fragile": {"max_batch_size": 1}}, device="cpu")
    good = [1.0, 0.0, 0.0, 0.0]
    bad = [5.0, 0.0, 0.0, 0.0]
    rs = await asyncio.gather(*(client.post("/predict", json={
        "model": "fragile", "inputs": [bad if i == 3 else good]}) for i in range(8)))
    codes = [r.status_code for r in rs]
    assert codes[3] == 500 and rs[3].json()["error"]["code"] == "inference_failed"
    assert codes[:3] + codes[4:] == [200] * 7
    r = await client.post("/predict", json={"model": "fragile", "inputs": [good]})
    assert r.status_code == 200
    m = (await client.get("/metrics")).text
    assert ('ortserve_requests_total{api="v1",model="fragile",outcome="server_error",'
            'version="1"} 1.0') in m


async def test_strict_cuda_refuses_to_start_without_a_gpu(make_client, cuda_error):
    if cuda_error is None:
        pytest.skip("a CUDA session starts on this host")
    with pytest.raises(DeviceError):
        await make_client(device="cuda", strict_device=True)


async def test_cuda_without_strict_falls_back_and_says_so(make_client, capsys, cuda_error):
    if cuda_error is None:
        pytest.skip("a CUDA session starts on this host")
    capsys.readouterr()  # the probe's own warning
    client = await make_client(device="cuda", models=["tabular"])
    m = (await _status(client))["tabular"]
    assert m["provider"] == "CPUExecutionProvider"
    assert m["requested_providers"][0] == "CUDAExecutionProvider"
    assert "runs it on CPU" in capsys.readouterr().err


async def test_readiness_flips_only_after_warm_up(repo):
    import httpx

    from app.main import create_app
    from app.settings import Settings
    from tests.builders import add_slow_model
    from tests.sync import until

    # warm-up runs of the slow model take a tenth of a second or more on any CPU core
    add_slow_model(repo, max_batch_size=8)
    app = create_app(Settings(models_dir=repo, log_format="text", device="cpu",
                              intra_op_threads=1))
    ctx = app.router.lifespan_context(app)
    startup = asyncio.ensure_future(ctx.__aenter__())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        await until(lambda: hasattr(app.state, "ortserve"), "the app's state set up")
        early = await client.get("/health/ready")
        assert early.status_code == 503
        assert early.json()["not_ready"]["service"] == "starting"
        assert (await client.get("/health/live")).status_code == 200
        await startup
        late = await client.get("/health/ready")
        assert late.status_code == 200 and late.json()["not_ready"] == {}
    await ctx.__aexit__(None, None, None)


async def test_an_unexpected_error_is_a_500_in_the_one_error_shape(make_client, repo, capsys):
    import httpx

    add_odd_shape_regressor(repo)
    client = await make_client()
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
        r = await raw.post("/predict", json={"model": "odd", "inputs": [[1, 2, 3, 4]]},
                           headers={"X-Request-ID": "req-odd-1"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert r.json()["error"]["details"] == {"request_id": "req-odd-1"}
    assert "req-odd-1" in capsys.readouterr().err


@pytest.mark.parametrize("labels,reason", [
    (["a", "b", "c"], "output has 2 columns but the manifest declares 3 labels"),
    (None, "tabular-classification needs at least two labels"),
])
async def test_labels_must_match_the_outputs(make_client, repo, labels, reason):
    folder = add_rows_model(repo, "mislabelled", classifier=True)
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").unlink()
    write_manifest(folder, {**manifest, "labels": labels})
    client = await make_client()
    m = (await _status(client))["mislabelled"]
    assert m["status"] == "failed" and reason in m["error"]


async def test_a_regressor_takes_no_labels(make_client, repo):
    folder = add_rows_model(repo, "valued", classifier=False)
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").unlink()
    write_manifest(folder, {**manifest, "labels": ["low", "high"]})
    client = await make_client()
    m = (await _status(client))["valued"]
    assert m["status"] == "failed" and "takes no labels" in m["error"]
