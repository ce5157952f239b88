"""A bounded closed-loop gRPC load generator, run in its own process by `python -m bench`
(no ghz or perf_analyzer can be installed from the package registries here).

`--concurrency` tasks, spread over a few channels, each send pre-serialized
ModelInferRequest messages one after another for `--seconds`; prints one JSON line with
the request count, throughput, latency percentiles, errors and the client's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import time
from pathlib import Path

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def read_requests(path: Path) -> list[bytes]:
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def write_requests(path: Path, requests: list[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack("<I", len(r)) + r for r in requests))


async def run(target: str, requests: list[bytes], concurrency: int, seconds: float,
              metadata: tuple) -> dict:
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(concurrency, 8))]
    calls = [c.unary_unary(METHOD) for c in channels]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        call, k = calls[i % len(calls)], i
        while time.perf_counter() < deadline:
            body = requests[k % len(requests)]
            k += concurrency
            t0 = time.perf_counter()
            try:
                await call(body, metadata=metadata, timeout=30)
            except grpc.RpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    for c in channels:
        await c.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 \
            if latencies else 0.0

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"requests": len(latencies) + errors, "seconds": wall,
            "rps": (len(latencies) + errors) / wall, "ok_rps": len(latencies) / wall,
            "errors": errors, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "max_ms": latencies[-1] * 1000 if latencies else 0.0,
            "client_cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_load")
    p.add_argument("--target", required=True)
    p.add_argument("--requests", required=True, help="file of length-prefixed messages")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--key", help="API key (authorization metadata)")
    a = p.parse_args()
    metadata = (("authorization", f"Bearer {a.key}"),) if a.key else ()
    result = asyncio.run(run(a.target, read_requests(Path(a.requests)), a.concurrency,
                             a.seconds, metadata))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
