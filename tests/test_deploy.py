"""Checks of the deployment files that run without a Docker engine."""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest

from tests.servers import ROOT, ServiceProcess, tool

METRIC = re.compile(r"(?<![:\w])(ortserve_[a-z_]+)(?![:\w])")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu",
                                        "deploy/kubernetes/Dockerfile.models"])
def test_hadolint_is_clean(dockerfile):
    r = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("files", [["docker-compose.yml"],
                                   ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_config_is_valid(files):
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    r = subprocess.run([tool("docker-compose"), *args, "config"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "api:" in r.stdout and "prometheus:" in r.stdout and "grafana:" in r.stdout


def test_promtool_accepts_config_and_rules():
    promtool = tool("promtool")
    for args in (["check", "config", "deploy/prometheus/prometheus.yml"],
                 ["check", "rules", "deploy/prometheus/rules.yml"]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr


def _exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_and_rules_only_use_exported_metrics(repo, tmp_path):
    svc = ServiceProcess(repo, tmp_path / "log").wait_ready()
    try:
        httpx.post(f"{svc.url}/predict", json={"inputs": ["good"]}, timeout=10)
        exported = _exported_names(httpx.get(f"{svc.url}/metrics", timeout=10).text)
    finally:
        svc.terminate()
    used = set(METRIC.findall((ROOT / "deploy/prometheus/rules.yml").read_text()))
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/ortserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"])
    for e in exprs:
        used |= set(METRIC.findall(e))
    assert len(used) >= 8
    assert used <= exported, f"not exported by the service: {sorted(used - exported)}"


def test_readme_configuration_table_matches_settings():
    from scripts.settings_table import render_into

    text = (ROOT / "README.md").read_text()
    assert render_into(text) == text, "run: python scripts/settings_table.py --write README.md"


def test_readme_has_exactly_two_setup_commands_and_ci_uses_the_test_one():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in quick.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci/run").read_text()
