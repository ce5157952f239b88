"""Real processes on loopback for integration tests: the service under uvicorn, Prometheus."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


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


class ServiceProcess:
    """`ortserve serve` in a child process on 127.0.0.1, stopped with SIGTERM."""

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
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> ServiceProcess:
        """Returns once /health/ready is 200; on any failure the child is stopped first."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.logs()}")
            return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200

        try:
            wait_until(ready, timeout, "service readiness")
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.terminate()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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


class RedisProcess:
    """A throwaway redis-server on 127.0.0.1 (Debian's package), no persistence."""

    def __init__(self, log: Path) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/system-deps.sh)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=self._log, stderr=subprocess.STDOUT)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        try:
            wait_until(up, 20, "redis-server")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()
