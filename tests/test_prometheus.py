"""A real Prometheus server scrapes a real uvicorn-served ortserve on 127.0.0.1, as
docker-compose.yml runs them: /metrics needs a key and Prometheus sends one from a file."""

from __future__ import annotations

import secrets

import httpx

from bench.cluster import Prometheus
from tests.servers import ServiceProcess, tool, wait_until


def test_prometheus_scrapes_with_its_key_and_sees_requests_and_latency_rise(repo, tmp_path):
    tool("prometheus")
    client_key, metrics_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    (tmp_path / "api-keys").write_text(f"{client_key}\n{metrics_key}\n")
    (tmp_path / "metrics-key").write_text(metrics_key + "\n")  # as `print` writes it
    with ServiceProcess(repo, tmp_path / "svc.log",
                        ORTSERVE_API_KEYS_FILE=str(tmp_path / "api-keys"),
                        ORTSERVE_METRICS_REQUIRE_KEY="true") as svc:
        assert httpx.get(f"{svc.url}/metrics", timeout=10).status_code == 401
        prom = Prometheus(tmp_path, [svc.port], key_file=tmp_path / "metrics-key")
        try:
            def query(expr: str) -> float:
                value = prom.query(expr)
                return -1.0 if value is None else value

            wait_until(lambda: query('up{job="ortserve"}') == 1, 60, "Prometheus scraping")
            requests = 'sum(ortserve_requests_total{outcome="success"})'
            latency = "sum(ortserve_request_duration_seconds_count)"
            before = (max(query(requests), 0), max(query(latency), 0))
            for i in range(20):
                r = httpx.post(f"{svc.url}/predict", json={"model": "tabular",
                                                            "inputs": [[i, 1, 2, 3]]},
                               headers={"Authorization": f"Bearer {client_key}"}, timeout=10)
                assert r.status_code == 200
            wait_until(lambda: query(requests) >= before[0] + 20, 30, "request counter rise")
            wait_until(lambda: query(latency) >= before[1] + 20, 30, "latency histogram rise")
            assert query('sum(ortserve_request_duration_seconds_bucket{le="+Inf"})') >= 20
            # the recording rules evaluate on real data
            wait_until(lambda: query("count(model:ortserve_request_duration_seconds:p99_5m)") > 0,
                       30, "recording rule evaluation")
        finally:
            prom.stop()
