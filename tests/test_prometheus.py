"""A real Prometheus server scrapes a real uvicorn-served ortserve on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import yaml

from tests.servers import ROOT, ServiceProcess, free_port, wait_until
from tests.test_deploy import tool


def test_prometheus_sees_requests_and_latency_rise(repo, tmp_path):
    prometheus = tool("prometheus")
    svc = ServiceProcess(repo, tmp_path / "svc.log").wait_ready()
    prom, api = None, ""

    def query(expr: str) -> float:
        r = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
        result = r["data"]["result"]
        return float(result[0]["value"][1]) if result else -1.0

    try:
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{svc.port}"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(ROOT / "deploy/prometheus/rules.yml", tmp_path / "rules.yml")
        port = free_port()
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "wb"))
        api = f"http://127.0.0.1:{port}/api/v1"
        wait_until(lambda: query('up{job="ortserve"}') == 1, 60, "Prometheus scraping")
        requests = 'sum(ortserve_requests_total{outcome="success"})'
        latency = "sum(ortserve_request_duration_seconds_count)"
        before = (max(query(requests), 0), max(query(latency), 0))
        for i in range(20):
            r = httpx.post(f"{svc.url}/predict", json={"model": "tabular",
                                                        "inputs": [[i, 1, 2, 3]]}, timeout=10)
            assert r.status_code == 200
        wait_until(lambda: query(requests) >= before[0] + 20, 30, "request counter rise")
        wait_until(lambda: query(latency) >= before[1] + 20, 30, "latency histogram rise")
        assert query('sum(ortserve_request_duration_seconds_bucket{le="+Inf"})') >= 20
        # the recording rules evaluate on real data
        wait_until(lambda: query("count(model:ortserve_request_duration_seconds:p99_5m)") > 0,
                   30, "recording rule evaluation")
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        svc.terminate()
