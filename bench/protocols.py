"""The three APIs side by side: `python -m bench protocols`.

One server (default settings, gRPC on), the sentiment model, one and 16 texts per
request, 1 and 64 clients: `/predict` (JSON), the Open Inference Protocol over HTTP with
JSON tensors and with binary tensors (Triton's extension; the form tritonclient sends by
default), all three driven by wrk, and over gRPC driven by bench/grpc_load.py in its own
process (a Python client: it spends far more CPU than wrk on the same cores, which its
client CPU column shows). Writes the `protocols` section of docs/benchmarks.md. Target:
v2 binary within 10% of `/predict`'s throughput.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import load
from bench.cluster import free_port
from bench.sections import replace_section
from bench.server import ROOT, Service
from bench.workloads import text_workload

TARGET = 0.90


def v2_bodies(texts_per_body: list[list[str]]) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """(JSON bodies, (header length, body) pairs with binary tensors) for the same texts."""
    as_json, as_binary = [], []
    for texts in texts_per_body:
        as_json.append(json.dumps({"inputs": [{"name": "text", "shape": [len(texts)],
                                               "datatype": "BYTES", "data": texts}]}).encode())
        raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
        head = json.dumps({"inputs": [{"name": "text", "shape": [len(texts)],
                                       "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        as_binary.append((len(head), head + raw))
    return as_json, as_binary


def grpc_requests(texts_per_body: list[list[str]]) -> list[bytes]:
    from app.api.v2.grpc import grpc_predict_v2_pb2 as pb

    out = []
    for texts in texts_per_body:
        raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
        out.append(pb.ModelInferRequest(model_name="sentiment", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES",
                                                  shape=[len(texts)])],
            raw_input_contents=[raw]).SerializeToString())
    return out


def grpc_closed_loop(target: str, requests: list[bytes], concurrency: int,
                     seconds: float) -> dict:
    from bench.grpc_load import write_requests

    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as fh:
        path = Path(fh.name)
    write_requests(path, requests)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.grpc_load", "--target", target,
                              "--requests", str(path), "--concurrency", str(concurrency),
                              "--seconds", str(seconds)], cwd=ROOT, capture_output=True,
                             text=True, timeout=seconds + 120)
    finally:
        path.unlink()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"gRPC load gave no summary: {out.stdout}\n{out.stderr}")
    return json.loads(line[len("BENCH_JSON "):])


def run_protocols(models: Path, seconds: float, out: Path) -> int:
    from bench.host import cpu_model

    grpc_port = free_port()
    svc = Service(models, env={"ORTSERVE_MODELS": "sentiment",
                               "ORTSERVE_GRPC_PORT": str(grpc_port)})
    rows = []
    try:
        for per_request in (1, 16):
            wl = text_workload("sentiment", per_request, count=300)
            texts = [json.loads(b)["inputs"] for b in wl.bodies]
            v2_json, v2_binary = v2_bodies(texts)
            messages = grpc_requests(texts)
            path = "/v2/models/sentiment/infer"
            for conc in (1, 64):
                target = f"127.0.0.1:{grpc_port}"
                runs = {
                    "/predict": (load.closed_loop, svc.url, wl.path, wl.bodies, conc,
                                 seconds),
                    "v2 HTTP, JSON": (load.closed_loop, svc.url, path, v2_json, conc,
                                      seconds),
                    "v2 HTTP, binary": (load.closed_loop, svc.url, path, None, conc, seconds,
                                        "POST", v2_binary),
                    "v2 gRPC": (grpc_closed_loop, target, messages, conc, seconds),
                }
                for api, (fn, *args) in runs.items():
                    r = svc.measure(lambda fn=fn, args=args: fn(*args))
                    r.update(api=api, per_request=per_request, concurrency=conc,
                             inputs_per_s=r["ok_rps"] * per_request)
                    rows.append(r)
                    print(f"  text x{per_request:<2d} c={conc:<3d} {api:16s} "
                          f"{r['ok_rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 "
                          f"{r['p99_ms']:7.2f} ms  errors {r['errors']}", flush=True)
    finally:
        svc.stop()
    return write(rows, cpu_model(), seconds, out)


def write(rows: list[dict], cpu: str, seconds: float, out: Path) -> int:
    def base(r: dict) -> dict:
        return next(x for x in rows if x["api"] == "/predict"
                    and x["per_request"] == r["per_request"]
                    and x["concurrency"] == r["concurrency"])

    lines = [
        "## The three APIs side by side", "",
        f"Generated by `python -m bench protocols` on {cpu}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the int8 sentiment model "
        f"served with default settings and gRPC on, {seconds:g} s per row. `/predict` and "
        "both v2 HTTP forms are driven by wrk; gRPC by a Python asyncio client in its own "
        "process (no ghz or perf_analyzer installs from the package registries here: the "
        "`perf-analyzer` name on PyPI resolves to a 0.1.0 placeholder), which spends far "
        "more CPU on the shared cores than wrk, so its rows are reported, not compared.", "",
        "| texts per request | clients | API | req/s | inputs/s | p50 ms | p99 ms | errors "
        "| vs /predict | server CPU s | client CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for r in rows:
        ratio = r["ok_rps"] / base(r)["ok_rps"] if base(r)["ok_rps"] else 0.0
        if r["api"] == "v2 HTTP, binary":
            verdicts.append((r["per_request"], r["concurrency"], ratio))
        lines.append(
            f"| {r['per_request']} | {r['concurrency']} | {r['api']} | {r['ok_rps']:.0f} | "
            f"{r['inputs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | {ratio:.0%} | {r['server_cpu_s']:.1f} | "
            f"{r['client_cpu_s']:.1f} |")
    met = all(v >= TARGET for *_, v in verdicts)
    lines += ["", "Target, v2 binary HTTP within 10% of `/predict`'s throughput: "
              + ", ".join(f"x{p} c={c}: {v:.0%}" for p, c, v in verdicts)
              + f" — **{'met' if met else 'not met'}**.", "",
              "Errors in these rows are 503 `queue_full` answers: 64 clients x 16 texts "
              "exceed the default queue bound of 256 inputs (admission by count; the "
              "performance issue replaces it by a deadline-aware bound). Throughput counts "
              "answered requests only."]
    out.mkdir(parents=True, exist_ok=True)
    replace_section(out / "benchmarks.md", "protocols", "\n".join(lines))
    return 0
