"""The scale-out topology on loopback, from real Debian-packaged servers: HAProxy in front of
ortserve replicas (deploy/haproxy/haproxy.cfg) and Prometheus scraping each replica with the
project's rules (deploy/prometheus/). Used by `python -m bench scaleout` and by the tests;
every server is a child process stopped by its process id, never by name."""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The namespace label the Kubernetes manifests' queries select on; the local Prometheus
# attaches it to its static targets so that one query text serves both.
NAMESPACE = "ortserve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout} s ({last})")


def binary(name: str) -> str | None:
    """A tool on PATH or beside this Python (tools installed into the venv)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


class Daemon:
    """A server from a Debian package, in a child process on loopback."""

    def __init__(self, name: str, args: list[str], log: Path, up, env: dict | None = None,
                 timeout: float = 30) -> None:
        found = binary(name)
        if found is None:
            raise RuntimeError(f"{name} is not installed (scripts/system-deps.sh installs it)")
        self._log = open(log, "wb")
        self.log_path = log
        self.proc = subprocess.Popen([found, *args], stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        try:
            wait_until(up, timeout, name)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Haproxy(Daemon):
    """deploy/haproxy/haproxy.cfg with one `server` line per replica port (`r0`, `r1`...),
    and a stats socket in `workdir` that says what its health checks concluded."""

    def __init__(self, workdir: Path, ports: list[int]) -> None:
        self.socket = workdir / "haproxy.sock"
        config = (ROOT / "deploy/haproxy/haproxy.cfg").read_text().replace(
            "\nglobal\n", f"\nglobal\n    stats socket {self.socket}\n", 1) + "".join(
            f"    server r{i} 127.0.0.1:{p} check\n" for i, p in enumerate(ports))
        path = workdir / "haproxy.cfg"
        path.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            "haproxy", ["-f", str(path), "-db"], workdir / "haproxy.log",
            lambda: httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200,
            env={"ORTSERVE_LB_BIND": f"127.0.0.1:{self.port}"})

    def server_states(self) -> dict[str, str]:
        """Each replica's status as the balancer's checks see it: "UP", "DOWN", or on the
        way ("UP 1/2": failed once, "DOWN 1/2": passed once)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows
                if r["svname"] not in ("FRONTEND", "BACKEND")}


class Prometheus(Daemon):
    """deploy/prometheus/prometheus.yml and rules.yml, scraping `ports` every second. The
    config's scrape key file becomes `key_file`; without one (replicas serving without
    keys on loopback) the scrapes send no key."""

    def __init__(self, workdir: Path, ports: list[int], interval: str = "1s",
                 key_file: Path | None = None) -> None:
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"]["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
        if key_file is None:
            config["scrape_configs"][0].pop("authorization", None)
        else:
            config["scrape_configs"][0]["authorization"]["credentials_file"] = str(key_file)
        config["scrape_configs"][0]["static_configs"] = [{
            "targets": [f"127.0.0.1:{p}" for p in ports],
            "labels": {"namespace": NAMESPACE}}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(ROOT / "deploy/prometheus/rules.yml", workdir / "rules.yml")
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api/v1"
        super().__init__(
            "prometheus", [f"--config.file={workdir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={workdir / 'tsdb'}",
                           f"--web.listen-address=127.0.0.1:{port}"],
            workdir / "prometheus.log",
            lambda: httpx.get(f"{self.api}/status/buildinfo", timeout=2).status_code == 200)

    def query(self, expr: str) -> float | None:
        """The value of an instant query's first sample; None when it has no sample."""
        r = httpx.get(f"{self.api}/query", params={"query": expr}, timeout=5).json()
        if r["status"] != "success":
            raise ValueError(f"{expr}: {r}")
        result = r["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> int:
        return int(self.query('sum(up{job="ortserve"})') or 0)
