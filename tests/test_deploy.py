"""Checks of the deployment files that run without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from unittest import mock

import httpx
import pytest
import yaml

from app.security import posture
from app.settings import load_settings
from tests.servers import ROOT, ServiceProcess, tool

METRIC = re.compile(r"(?<![:\w])(ortserve_[a-z_]+)(?![:\w])")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu",
                                        "deploy/kubernetes/Dockerfile.models"])
def test_hadolint_is_clean(dockerfile):
    r = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


COMPOSE_FILES = [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]]
COMPOSE_IDS = ["cpu", "gpu"]


def compose_config(root: Path, files: list[str], tmp_path: Path) -> dict:
    """`docker-compose config` of `files` under `root`, as compose resolves them with no
    variable of the caller's shell or of a .env file (the defaults a new checkout gets)."""
    (tmp_path / "empty.env").write_text("")
    args = [a for f in files for a in ("-f", str(root / f))]
    r = subprocess.run([tool("docker-compose"), "--env-file", str(tmp_path / "empty.env"),
                        *args, "config"], capture_output=True, text=True, cwd=root,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@pytest.mark.parametrize("files", COMPOSE_FILES, ids=COMPOSE_IDS)
def test_compose_config_is_valid(files, tmp_path):
    config = compose_config(ROOT, files, tmp_path)
    assert {"api", "prometheus", "grafana"} <= set(config["services"])


def published_addresses(service: dict) -> list[str]:
    """The host address of each port a compose service publishes ("" = every interface),
    from either form `docker-compose config` writes (short strings, long mappings)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") is not None:
                out.append(str(port.get("host_ip") or ""))
            continue
        parts = str(port).rsplit(":", 2)  # [ip:]published:target[/proto] or target
        out.append(parts[0] if len(parts) == 3 else "")
    return [a.strip("[]") for a in out]


def secret_mount(config: dict, service: str, path: str) -> Path | None:
    """The host file of the compose secret that `service` sees at `path`, if any."""
    for ref in config["services"][service].get("secrets", []):
        source = ref if isinstance(ref, str) else ref["source"]
        target = source if isinstance(ref, str) else ref.get("target", source)
        if path == (target if target.startswith("/") else f"/run/secrets/{target}"):
            return Path(config["secrets"][source]["file"])
    return None


def compose_problems(config: dict) -> list[str]:
    """What in a resolved compose config leaves something open that should be closed."""
    problems = []
    services = config["services"]
    for name, svc in services.items():
        if svc.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port")
        # the api is closed by its keys; anything else published stays on this host
        wide = [a for a in published_addresses(svc) if not posture.is_loopback(a)]
        if name != "api" and wide:
            problems.append(f"{name}: ports published beyond loopback ({wide})")
    for name in ("prometheus", "grafana"):
        if not published_addresses(services[name]):
            problems.append(f"{name}: publishes no port")
    env = {k: str(v) for k, v in (services["grafana"].get("environment") or {}).items()}
    if env.get("GF_AUTH_ANONYMOUS_ENABLED", "").lower() != "false":
        problems.append("grafana: GF_AUTH_ANONYMOUS_ENABLED is not false")
    if "GF_SECURITY_ADMIN_PASSWORD" in env:
        problems.append("grafana: GF_SECURITY_ADMIN_PASSWORD written into the compose file")
    if secret_mount(config, "grafana", env.get("GF_SECURITY_ADMIN_PASSWORD__FILE", "")) is None:
        problems.append("grafana: GF_SECURITY_ADMIN_PASSWORD__FILE is no mounted secret")
    # the api: the image's environment with the compose file's over it, parsed as it parses
    api = services["api"]
    dockerfile = Path(api.get("build", {}).get("dockerfile", "Dockerfile")).name
    env = {**image_env(ROOT / dockerfile),
           **{k: str(v) for k, v in (api.get("environment") or {}).items()}}
    for literal in ("ORTSERVE_API_KEYS", "ORTSERVE_ADMIN_KEYS"):
        if env.get(literal):
            problems.append(f"api: {literal} written into the compose file")
    with mock.patch.dict(os.environ, env, clear=True):
        settings = load_settings()
    if settings.allow_unauthenticated:
        problems.append("api: ORTSERVE_ALLOW_UNAUTHENTICATED")
    try:
        posture.check(settings)
    except posture.UnsafeSettings as exc:
        problems.append(f"api: {exc}")
    if secret_mount(config, "api", str(settings.api_keys_file)) is None:
        problems.append("api: no API keys from a mounted secret (ORTSERVE_API_KEYS_FILE)")
    if not settings.metrics_require_key:
        problems.append("api: /metrics answers without a key")
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    creds = scrape["scrape_configs"][0].get("authorization", {}).get("credentials_file", "")
    if secret_mount(config, "prometheus", creds) is None:
        problems.append("prometheus: the scrape key (credentials_file) is no mounted secret")
    return problems


@pytest.mark.parametrize("files", COMPOSE_FILES, ids=COMPOSE_IDS)
def test_compose_is_closed_by_default(files, tmp_path):
    """Monitoring on loopback, Grafana with a password from a secret and no anonymous
    access, the api with keys from a secret and /metrics behind one, Prometheus scraping
    with a key from a secret."""
    assert compose_problems(compose_config(ROOT, files, tmp_path)) == []


COMPOSE_MUTATIONS = {  # each opens one thing; compose_problems must name it
    "prometheus on every interface": ('"127.0.0.1:9090:9090"', '"9090:9090"', "prometheus"),
    "grafana on every interface": ('"127.0.0.1:3000:3000"', '"0.0.0.0:3000:3000"', "grafana"),
    "grafana anonymous": ('GF_AUTH_ANONYMOUS_ENABLED: "false"',
                          'GF_AUTH_ANONYMOUS_ENABLED: "true"', "ANONYMOUS"),
    "grafana default password": ("GF_SECURITY_ADMIN_PASSWORD__FILE: /run/secrets/grafana_admin"
                                 "_password", "GF_SECURITY_ADMIN_PASSWORD: admin", "PASSWORD"),
    "api without keys": ("ORTSERVE_API_KEYS_FILE: /run/secrets/api_keys",
                         "ORTSERVE_LOG_LEVEL: info", "API keys"),
    "api open by opt-in": ("ORTSERVE_LOG_FORMAT: json", "ORTSERVE_LOG_FORMAT: json\n"
                           "      ORTSERVE_ALLOW_UNAUTHENTICATED: \"true\"", "ALLOW_UNAUTH"),
    "metrics open": ('ORTSERVE_METRICS_REQUIRE_KEY: "true"',
                     'ORTSERVE_METRICS_REQUIRE_KEY: "false"', "/metrics"),
}


@pytest.mark.parametrize("name", COMPOSE_MUTATIONS)
def test_compose_check_sees_each_opening(name, tmp_path):
    old, new, expected = COMPOSE_MUTATIONS[name]
    root = tmp_path / "root"
    root.mkdir()
    text = (ROOT / "docker-compose.yml").read_text()
    assert text.count(old) == 1, old
    (root / "docker-compose.yml").write_text(text.replace(old, new))
    problems = compose_problems(compose_config(root, ["docker-compose.yml"], tmp_path))
    assert problems and all(expected in p for p in problems), problems


@pytest.mark.parametrize("content,starts", [(None, False), ("", False), ("dir", False),
                                            ("a-password\n", True)],
                         ids=["missing", "empty", "directory", "present"])
def test_grafana_refuses_to_start_without_its_password(tmp_path, content, starts):
    """Grafana falls back to admin/admin when the password file is empty (its entrypoint
    exports an empty variable) or missing (compose v1 makes a folder there): the compose
    file's own entrypoint, run by a real sh with the secret's path moved to tmp_path."""
    secret = tmp_path / "grafana_admin_password"
    if content == "dir":
        secret.mkdir()
    elif content is not None:
        secret.write_text(content)
    config = compose_config(ROOT, ["docker-compose.yml"], tmp_path)
    entrypoint = config["services"]["grafana"]["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"] and "exec /run.sh" in entrypoint[2]
    script = entrypoint[2].replace("/run/secrets/grafana_admin_password", str(secret)) \
        .replace("exec /run.sh", "exit 0")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert (r.returncode == 0) is starts, r.stderr
    assert starts or "grafana-admin-password" in r.stderr


def image_env(dockerfile: Path) -> dict[str, str]:
    """ENV of a Dockerfile's last stage (the image that runs)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stage = re.split(r"^FROM ", text, flags=re.M)[-1]
    env = {}
    for line in stage.splitlines():
        if line.startswith("ENV "):
            env |= dict(w.split("=", 1) for w in shlex.split(line[4:]))
    return env


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu",
                                        "deploy/kubernetes/Dockerfile.models"])
def test_images_run_as_non_root_and_never_open(dockerfile):
    """The server image listens on every interface, so with no key given at run time it
    must refuse to start (the app's own start-up check, on the image's environment)."""
    text = "\n".join(ln for ln in (ROOT / dockerfile).read_text().splitlines()
                     if not ln.lstrip().startswith("#"))
    assert "ALLOW_UNAUTHENTICATED" not in text  # in ENV, ARG or a RUN's script
    users = re.findall(r"^USER (\S+)", text.split("\nFROM ")[-1], flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    env = image_env(ROOT / dockerfile)
    if "ORTSERVE_HOST" in env:
        assert not posture.is_loopback(env["ORTSERVE_HOST"])
        with mock.patch.dict(os.environ, env, clear=True):
            settings = load_settings()
        with pytest.raises(posture.UnsafeSettings):
            posture.check(settings)


def test_promtool_accepts_config_and_rules(tmp_path):
    """The config as shipped, its scrape key file (a compose secret) moved to tmp_path:
    promtool checks that the file exists."""
    promtool = tool("promtool")
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    key = tmp_path / "metrics-key"
    key.write_text("x" * 32 + "\n")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(key)
    config["rule_files"] = [str(ROOT / "deploy/prometheus/rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    for args in (["check", "config", str(tmp_path / "prometheus.yml")],
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
            elif kind == "counter":  # a counter without series yet: its samples' name
                names.add(f"{name}_total")
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
