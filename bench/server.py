"""Starts the service for a benchmark and measures the CPU and memory of its processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            continue
    return total


def rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Service:
    """`ortserve serve` on 127.0.0.1 with the given settings (env), or an external URL."""

    def __init__(self, models: Path, env: dict[str, str] | None = None,
                 workers: int | None = None, url: str | None = None) -> None:
        self.external = url is not None
        self.proc = None
        if url:
            self.url = url.rstrip("/")
            return
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, "ORTSERVE_LOG_LEVEL": "warning", **(env or {})}
        if workers is not None and workers != 1:
            full_env["PROMETHEUS_MULTIPROC_DIR"] = f"/tmp/ortserve-bench-prom-{port}"
        extra = [] if workers is None else ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--models", str(models), "--port",
             str(port), *extra],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("service did not become ready")

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def measure(self, fn):
        """Run fn(); return its result with server CPU seconds and peak RSS during it."""
        pid = self.proc.pid if self.proc else None
        peak = [0.0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True) if pid else None
        cpu0 = cpu_seconds(pid) if pid else 0.0
        if sampler:
            sampler.start()
        try:
            result = fn()
        finally:
            stop.set()
            if sampler:
                sampler.join()
        result["server_cpu_s"] = cpu_seconds(pid) - cpu0 if pid else None
        result["server_rss_mb"] = peak[0] if pid else None
        return result

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
