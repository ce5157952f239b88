"""KServe's own Python client (`InferenceRESTClient`, protocol v2) against a real uvicorn:
health, infer on rows and text, an error; answers equal `/predict`'s."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.builders import build_repository
from tests.servers import ROOT, ServiceProcess

ROWS = [[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 0.0]]
TEXTS = ["good great day", "awful sad movie"]


def test_kserve_rest_client_speaks_to_ortserve(tmp_path):
    repo = build_repository(tmp_path / "models")
    svc = ServiceProcess(repo, tmp_path / "log")
    try:
        svc.wait_ready()
        run = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "kserve_client.py"), svc.url,
             json.dumps(ROWS), json.dumps(TEXTS)],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-3000:]
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        rows = httpx.post(f"{svc.url}/predict", json={"model": "tabular", "inputs": ROWS},
                          timeout=30).json()["predictions"]
        texts = httpx.post(f"{svc.url}/predict", json={"model": "sentiment",
                                                       "inputs": TEXTS},
                           timeout=30).json()["predictions"]
    finally:
        svc.terminate()
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["rows_id"] == "k-1"
    assert seen["rows"]["label"] == [p["label"] for p in rows]
    assert seen["rows"]["probabilities"] == pytest.approx(
        [v for p in rows for v in (p["scores"]["no"], p["scores"]["yes"])], abs=1e-7)
    assert seen["text"]["label"] == [p["label"] for p in texts]
    assert "400" in seen["error"] and "shape [N, 4]" in seen["error"]
