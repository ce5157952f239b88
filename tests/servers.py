"""Real processes on loopback for integration tests: the service under uvicorn, Redis, a
closed-loop /predict load; the balancer and Prometheus live in bench/cluster.py."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import httpx
import pytest

# re-exported: the tests take every real-process helper from here
from bench.cluster import ROOT as ROOT
from bench.cluster import Daemon as Daemon
from bench.cluster import binary
from bench.cluster import free_port as free_port
from bench.cluster import wait_until as wait_until

IN_CI = os.environ.get("CI") == "true"


def missing(what: str) -> NoReturn:
    """Something a test needs is not installed: under CI=true, where everything must be,
    the test fails; elsewhere it is skipped, saying what to install."""
    if IN_CI:
        pytest.fail(f"required in CI: {what}", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def tool(name: str) -> str:
    """The path of a program on PATH or beside this Python, else `missing`."""
    found = binary(name)
    if found is None:
        missing(f"{name} not installed (scripts/system-deps.sh installs it)")
    return found


def module(name: str) -> ModuleType:
    """`import name`, else `missing` (pytest.importorskip, failing under CI=true)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} not importable ({exc}); `pip install -e '.[train,test]'`")


class _Exited(Exception):
    """The service's process ended while it was awaited."""


class ServiceProcess:
    """`ortserve serve` in a child process on 127.0.0.1, stopped with SIGTERM. It leads
    its own session: whatever it started (uvicorn's worker processes) is in its process
    group, and nothing of that group outlives `terminate()` or `kill()`."""

    def __init__(self, models: Path, log: Path, workers: int = 1, port: int | None = None,
                 **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        full_env = {**os.environ, "ORTSERVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
                    **{k: str(v) for k, v in env.items()}}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None) if workers == 1 else None
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--models", str(models),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> ServiceProcess:
        """Returns once /health/ready is 200; on any failure the child is stopped first."""
        def ready() -> bool:
            if self._exited():
                raise _Exited()
            return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200

        try:
            wait_until(ready, timeout, "service readiness")
        except _Exited:
            self.kill()
            raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.logs()}"
                               ) from None
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL to the whole process group."""
        self._end_group()
        self._log.close()

    def _exited(self) -> bool:
        """The leader has exited. It is not reaped here (`WNOWAIT`): until it is, its pid,
        the group's id, cannot be given to another process."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _end_group(self) -> None:
        """SIGKILL what is left of the process group (the leader, workers it started),
        then reap the leader."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # nothing left of the group
        self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.terminate()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the leader (uvicorn passes it on to its workers); once it exited, or
        after `timeout`, SIGKILL to whatever is left of its process group. Returns the
        leader's exit code (negative: the signal that ended it)."""
        if not self._exited():
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._end_group()  # an exited leader keeps its exit code: SIGKILL reaches the rest
        self._log.close()
        return self.proc.returncode


def metric_value(text: str, prefix: str) -> float:
    """Sum of every sample whose line starts with `prefix` (name plus optional labels);
    a series that is not exported at all is an error, not 0."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(prefix)]
    if not values:
        raise KeyError(f"no series starts with {prefix!r}")
    return sum(values)


def predictions(url: str, model: str, inputs: list, version: int | None = None,
                headers: dict | None = None) -> list[dict]:
    """`/predict`'s answer for these inputs: what the other APIs are compared with."""
    body = {"model": model, "inputs": inputs} | ({"version": version} if version else {})
    r = httpx.post(f"{url}/predict", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


class RedisProcess(Daemon):
    """A throwaway redis-server, no persistence."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        super().__init__("redis-server", ["--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"], log, up)


class PredictLoad:
    """`clients` threads posting to `/predict` in a closed loop until the block ends. Each
    client cycles one job (model, inputs, {version: expected predictions}); every answer
    must be 200 and equal to the output of the version it names."""

    def __init__(self, url: str, jobs: list[tuple[str, list, dict[int, list]]],
                 clients: int = 16) -> None:
        self.url, self.jobs = url, jobs
        self.stop = threading.Event()
        self.answers: dict[int, int] = {}
        self.failures: list = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,))
                        for i in range(clients)]

    def _client(self, i: int) -> None:
        model, inputs, expected = self.jobs[i % len(self.jobs)]
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"{self.url}/predict", json={"model": model, "inputs": inputs})
                    body = r.json()
                except (httpx.TransportError, ValueError) as exc:
                    with self.lock:
                        self.failures.append(repr(exc))
                    continue
                with self.lock:
                    if r.status_code != 200:
                        self.failures.append((r.status_code, body))
                    elif body["predictions"] != expected.get(body["version"]):
                        self.failures.append(("wrong answer", body))
                    else:
                        self.answers[body["version"]] = self.answers.get(body["version"], 0) + 1

    def answered(self) -> int:
        with self.lock:
            return sum(self.answers.values())

    def failed(self) -> int:
        with self.lock:
            return len(self.failures)

    def __enter__(self) -> PredictLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
