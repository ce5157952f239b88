"""Load generators: wrk (closed loop, C client, cheap) and an asyncio open-loop client."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def closed_loop(url: str, path: str, bodies: list[bytes] | None, connections: int,
                seconds: float, method: str = "POST",
                binary: list[tuple[int, bytes]] | None = None) -> dict:
    """wrk with `connections` concurrent clients for `seconds`; returns its summary plus
    the CPU seconds the client used. `binary`: (JSON header length, body) pairs sent with
    the binary tensor extension's header instead of JSON `bodies`."""
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
        for b in bodies or []:
            fh.write(b + b"\n")
        for length, body in binary or []:
            fh.write(f"{length} {body.hex()}\n".encode())
        bodies_file = fh.name
    env = {**os.environ, "BENCH_BODIES": bodies_file if bodies or binary else "",
           "BENCH_PATH": path, "BENCH_METHOD": method,
           "BENCH_FORMAT": "hexbin" if binary else "json"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
             "--timeout", "30s",
             "-s", str(HERE / "wrk.lua"), url],
            env=env, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(bodies_file)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("BENCH_JSON "):])
    secs = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"requests": r["requests"], "seconds": secs, "rps": r["requests"] / secs,
            "ok_rps": (r["requests"] - r["status"]) / secs,
            "errors": errors, "non_2xx": r["status"],
            "p50_ms": r["p50_us"] / 1000, "p95_ms": r["p95_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000,
            "client_cpu_s": (after.ru_utime + after.ru_stime)
                            - (before.ru_utime + before.ru_stime)}


async def _open_loop(host: str, port: int, path: str, bodies: list[bytes], rate: float,
                     seconds: float, max_connections: int, verify=None,
                     headers: dict[str, str] | None = None) -> dict:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
    idle: asyncio.Queue = asyncio.Queue()
    opened = 0
    latencies: list[float] = []
    rejected_latencies: list[float] = []
    statuses: Counter = Counter()
    failures = 0
    wrong = 0

    async def one(t_sched: float, i: int) -> None:
        nonlocal opened, failures, wrong
        body = bodies[i % len(bodies)]
        try:
            if idle.empty() and opened < max_connections:
                opened += 1
                conn = await asyncio.open_connection(host, port)
            else:
                conn = await idle.get()
            reader, writer = conn
            writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n"
                         + extra + b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            payload = await reader.readexactly(length)
            # latency from the scheduled send time: waiting for a free connection counts
            elapsed = time.perf_counter() - t_sched
            if status == 200:
                latencies.append(elapsed)
                if verify is not None and not verify(i % len(bodies), payload):
                    wrong += 1
            elif status == 503:
                rejected_latencies.append(elapsed)
            statuses[status] += 1
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failures += 1
            opened -= 1

    tasks = []
    t0 = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        t = t0 + i / rate
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t, i)))
        if len(tasks) > 4096:  # keep memory flat on long runs
            tasks = [t for t in tasks if not t.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    elapsed = time.perf_counter() - t0
    ok = sorted(latencies)
    rej = sorted(rejected_latencies)
    accepted = statuses.get(200, 0)

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else 0.0

    return {"offered_rps": rate, "sent": n, "completed": len(latencies),
            "accepted": accepted, "rejected_503": statuses.get(503, 0),
            "timeout_504": statuses.get(504, 0),
            "other_status": sum(v for k, v in statuses.items() if k not in (200, 503)),
            "failures": failures, "wrong_answers": wrong, "rps": accepted / elapsed,
            "p50_ms": pct(ok, 0.5), "p95_ms": pct(ok, 0.95), "p99_ms": pct(ok, 0.99),
            "max_ms": ok[-1] * 1000 if ok else 0.0,
            "rejected_p99_ms": pct(rej, 0.99)}


def open_loop(url: str, path: str, bodies: list[bytes], rate: float, seconds: float,
              max_connections: int = 1024, verify=None,
              headers: dict[str, str] | None = None) -> dict:
    """Requests at a fixed arrival rate whatever the answers (no coordinated omission)."""
    host, port = url.split("//", 1)[1].split(":")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    cpu0 = time.process_time()
    out = runner(_open_loop(host, int(port), path, bodies, rate, seconds, max_connections,
                            verify, headers))
    out["client_cpu_s"] = time.process_time() - cpu0
    return out
