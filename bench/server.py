"""Starts the service for a benchmark and measures the CPU and memory of its processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


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


def _sum_over_tree(pid: int, file: str, read) -> float:
    """Sum `read(text of /proc/<p>/<file>)` over the process and its descendants."""
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/{file}") as fh:
                total += read(fh.read())
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    def user_plus_system(stat: str) -> float:
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    return _sum_over_tree(pid, "stat", user_plus_system)


def rss_mb(pid: int) -> float:
    def rss_kb(status: str) -> float:
        return next((int(ln.split()[1]) for ln in status.splitlines()
                     if ln.startswith("VmRSS:")), 0)

    return _sum_over_tree(pid, "status", rss_kb) / 1024


class Service:
    """`ortserve serve` on 127.0.0.1 with the given settings (env), or an external URL."""

    def __init__(self, models: Path, env: dict[str, str] | None = None,
                 workers: int | None = None, url: str | None = None,
                 port: int | None = None, server: str = "uvicorn") -> None:
        self.external = url is not None
        self.proc = None
        if url:
            self.url = url.rstrip("/")
            return
        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, "ORTSERVE_LOG_LEVEL": "warning", **(env or {})}
        if workers is not None and workers != 1:
            full_env["PROMETHEUS_MULTIPROC_DIR"] = f"/tmp/ortserve-bench-prom-{port}"
        extra = [] if workers is None else ["--workers", str(workers)]
        command = [sys.executable, "-m", "app.cli", "serve", "--models", str(models), "--port",
                   str(port), *extra]
        if server == "granian":  # the same app under another HTTP server (bench probe)
            full_env["ORTSERVE_MODELS_DIR"] = str(models)
            command = [sys.executable, "-m", "granian", "--interface", "asgi", "--host",
                       "127.0.0.1", "--port", str(port), "--workers", str(workers or 1),
                       "--log-level", "warning", "app.main:app"]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
