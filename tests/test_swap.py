"""Version swaps under closed-loop load on a real uvicorn: not one request fails, and
every answer is the output of the version it names."""

from __future__ import annotations

import httpx

from app.api.v1.codec import encode
from tests.builders import add_rows_model, add_text_model
from tests.servers import PredictLoad, ServiceProcess, wait_until

ADMIN = {"Authorization": "Bearer admin-secret-0123456789"}
ROWS = [[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 0.0]]
TEXTS = ["good day", "awful movie", "the phone is fine"]
CLIENTS = 16
SWAPS = 10


def _expected(url: str, model: str, inputs: list, versions: tuple[int, int]) -> dict:
    """Each version's answer, asked for by version while both are on disk."""
    out = {}
    for v in versions:
        r = httpx.post(f"{url}/predict", json={"model": model, "version": v,
                                               "inputs": inputs}, timeout=30)
        assert r.status_code == 200, r.text
        out[v] = r.json()["predictions"]
    assert out[versions[0]] != out[versions[1]]
    return out


def _routed(url: str, model: str) -> int | None:
    return httpx.get(f"{url}/models/{model}", timeout=10).json()["version"]


def _answers_between(load: PredictLoad, step) -> None:
    """Run `step`, then wait until the clients have been answered a few more times."""
    seen = load.answered()
    step()
    wait_until(lambda: load.answered() >= seen + 2 * CLIENTS, 30, "answers")


def test_swapping_versions_through_the_api_fails_no_request(tmp_path):
    repo = tmp_path / "models"
    add_text_model(repo, version=1)
    add_text_model(repo, version=2)
    add_rows_model(repo, "tabular", classifier=True, version=1)
    add_rows_model(repo, "tabular", classifier=True, version=2)
    # sentiment keeps both versions loaded (a swap is a route change); tabular serves the
    # latest, so each swap to version 1 loads it and each swap back unloads it
    svc = ServiceProcess(repo, tmp_path / "log", ORTSERVE_ADMIN_KEYS="admin-secret-0123456789",
                         ORTSERVE_VERSION_POLICY='{"sentiment": "all"}')
    try:
        svc.wait_ready()
        text = _expected(svc.url, "sentiment", TEXTS, (1, 2))
        load_v1 = httpx.post(f"{svc.url}/repository/models/tabular/load", headers=ADMIN,
                             json={"version": 1}, timeout=60)
        assert load_v1.status_code == 200
        rows = _expected(svc.url, "tabular", ROWS, (1, 2))
        jobs = [("sentiment", TEXTS, text), ("tabular", ROWS, rows)]
        with PredictLoad(svc.url, jobs, CLIENTS) as load:
            for i in range(SWAPS):
                version = 1 if i % 2 == 0 else 2
                for model in ("sentiment", "tabular"):
                    def swap(model=model, version=version):
                        r = httpx.post(f"{svc.url}/repository/models/{model}/load",
                                       json={"version": version}, headers=ADMIN, timeout=60)
                        assert r.status_code == 200 and r.json()["version"] == version, r.text
                    _answers_between(load, swap)
                    assert _routed(svc.url, model) == version
        assert load.failures == [], load.failures[:5]
        assert load.answers.get(1, 0) > 0 and load.answers.get(2, 0) > 0
    finally:
        svc.terminate()


def test_swapping_versions_through_polling_fails_no_request(tmp_path):
    """A new version folder renamed into place is served once verified and warmed; its
    removal rolls back to the previous version. Both, ten times, under load."""
    repo = tmp_path / "models"
    add_rows_model(repo, "tabular", classifier=True, version=1)
    parked = tmp_path / "parked"
    add_rows_model(parked, "tabular", classifier=True, version=2)
    # version 2's answers are computed here on the CPU provider: the server uses it too
    svc = ServiceProcess(repo, tmp_path / "log", ORTSERVE_REPOSITORY_POLL_S="0.2",
                         ORTSERVE_MODELS="tabular", ORTSERVE_DEVICE="cpu")
    try:
        svc.wait_ready()
        v1 = httpx.post(f"{svc.url}/predict", json={"model": "tabular", "inputs": ROWS},
                        timeout=30).json()["predictions"]
        # version 2's answers, computed in-process from the same graph
        from app.contract.manifest import Manifest
        from app.pipelines import build_pipeline
        from app.runtime.session import create_session

        folder = parked / "tabular" / "2"
        manifest = Manifest.model_validate_json((folder / "model.json").read_text())
        session = create_session(folder / "model.onnx", device="cpu")
        pipeline = build_pipeline(manifest, folder)
        payloads, _ = pipeline.preprocess(ROWS)
        v2 = encode(manifest.labels, pipeline.run_batch(session.run, payloads))
        expected = {1: v1, 2: v2}
        with PredictLoad(svc.url, [("tabular", ROWS, expected)], CLIENTS) as load:
            for i in range(SWAPS):
                if i % 2 == 0:  # publish version 2 the way the trainer does: one rename
                    step = lambda: (parked / "tabular" / "2").rename(repo / "tabular" / "2")  # noqa: E731
                    want = 2
                else:  # take it away again
                    step = lambda: (repo / "tabular" / "2").rename(parked / "tabular" / "2")  # noqa: E731
                    want = 1
                _answers_between(load, step)
                wait_until(lambda want=want: _routed(svc.url, "tabular") == want, 30,
                           f"routed to version {want}")
        assert load.failures == [], load.failures[:5]
        assert load.answers.get(1, 0) > 0 and load.answers.get(2, 0) > 0
        assert abs(sum(p["score"] for p in v2) - sum(p["score"] for p in v1)) > 0
    finally:
        svc.terminate()
