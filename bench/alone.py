"""A lone request against load: `python -m bench alone`.

Does a session with all of the worker's cores answer a lone text faster than the served
shape (single-threaded instances), and what does the service add on top of the model?

1. In-process, same file and text: one item through the model (the run alone, and the whole
   pipeline: tokenize, run, encode), for a 1-thread session, an all-cores session, and an
   all-cores session whose threads spin between parallel sections (ONNX Runtime's
   `allow_spinning`, off in the server). The configurations take turns, `rounds` times.
2. The service with `ORTSERVE_INTRA_OP_THREADS` 1 and all cores (instances as served; the
   instances then share one session's thread pool, so no weights are loaded twice): one
   client in sequence (client p50, and the server's own total and inference time from the
   response's `timing`), then wrk at c=1 and c=64.

Writes the `alone` section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import httpx

from bench import load
from bench.sections import replace_section
from bench.server import Service
from bench.workloads import heldout_texts, text_workload


def _in_process(folder: Path, texts: list[str], threads: int, spin: bool,
                runs: int) -> dict:
    from app.api.v1.codec import encode
    from app.contract.manifest import Manifest
    from app.pipelines import build_pipeline
    from app.runtime.session import create_session
    from app.settings import Settings

    manifest = Manifest.model_validate_json((folder / "model.json").read_text())
    pipeline = build_pipeline(manifest, folder, max_inputs=10_000, max_rows=10_000)
    session = create_session(folder / manifest.model_file, device=Settings().device,
                             intra_op_threads=threads, allow_spinning=spin)
    model, whole = [], []
    for i in range(runs + 50):
        t0 = time.perf_counter()
        payloads, _ = pipeline.preprocess([texts[i % len(texts)]])
        t1 = time.perf_counter()
        out = pipeline.run_batch(session.run, payloads)
        t2 = time.perf_counter()
        encode(manifest.labels, out)
        t3 = time.perf_counter()
        if i >= 50:  # first runs: allocation and thread start-up
            model.append(t2 - t1)
            whole.append(t3 - t0)
    return {"model_ms": statistics.median(model) * 1000,
            "pipeline_ms": statistics.median(whole) * 1000}


def _sequential(url: str, texts: list[str], runs: int) -> dict:
    client, server, inference = [], [], []
    with httpx.Client(base_url=url, timeout=10) as c:
        for i in range(runs + 50):
            t0 = time.perf_counter()
            r = c.post("/models/sentiment/predict", json={"inputs": [texts[i % len(texts)]]})
            took = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 50:
                timing = r.json()["timing"]
                client.append(took * 1000)
                server.append(timing["total_ms"])
                inference.append(timing["inference_ms"])
    return {"client_ms": statistics.median(client), "server_ms": statistics.median(server),
            "inference_ms": statistics.median(inference)}


def run_alone(models: Path, seconds: float, rounds: int, out: Path) -> int:
    from bench.host import cpu_model, latest

    cores = os.cpu_count() or 1
    folder = latest(models, "sentiment")
    texts = heldout_texts()
    configs = [(1, False), (cores, False), (cores, True)]
    inproc: dict[tuple[int, bool], list[dict]] = {c: [] for c in configs}
    print("in-process, one text at a time", flush=True)
    for _ in range(rounds):
        for threads, spin in configs:
            r = _in_process(folder, texts, threads, spin, 500)
            inproc[(threads, spin)].append(r)
            print(f"  {threads} thread(s), spinning {spin}: model {r['model_ms']:.2f} ms, "
                  f"pipeline {r['pipeline_ms']:.2f} ms", flush=True)
    served: dict[int, list[dict]] = {1: [], cores: []}
    wl = text_workload("sentiment", 1)
    print("service", flush=True)
    for _ in range(rounds):
        for threads in served:
            svc = Service(models, env={"ORTSERVE_MODELS": "sentiment",
                                       "ORTSERVE_INTRA_OP_THREADS": str(threads)})
            try:
                r = _sequential(svc.url, texts, 600)
                one = load.closed_loop(svc.url, wl.path, wl.bodies, 1, seconds)
                many = load.closed_loop(svc.url, wl.path, wl.bodies, 64, seconds)
            finally:
                svc.stop()
            r.update(wrk_c1_p50_ms=one["p50_ms"], c64_inputs_s=many["rps"])
            served[threads].append(r)
            print(f"  {threads} thread(s): {json.dumps({k: round(v, 2) for k, v in r.items()})}",
                  flush=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    best_key = min(configs, key=lambda c: med(inproc[c], "pipeline_ms"))
    best = med(inproc[best_key], "pipeline_ms")
    c1 = min(med(served[t], "wrk_c1_p50_ms") for t in served)
    lines = [
        "## A lone request", "",
        f"Generated by `python -m bench alone` (sentiment, served file, {rounds} rounds, "
        "the configurations taking turns; medians of the rounds).", "",
        f"- machine: {cpu_model()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        "In-process, one text at a time (500 runs per round):", "",
        "| session | model run p50 ms | tokenize + run + encode p50 ms |",
        "| --- | --- | --- |",
    ]
    for threads, spin in configs:
        lines.append(f"| {threads} thread(s){', spinning' if spin else ''} | "
                     f"{med(inproc[(threads, spin)], 'model_ms'):.2f} | "
                     f"{med(inproc[(threads, spin)], 'pipeline_ms'):.2f} |")
    lines += [
        "", "The service, `ORTSERVE_INTRA_OP_THREADS` as listed (instances as served):", "",
        "| threads per session | one client: client p50 ms | server total p50 ms | "
        "inference p50 ms | wrk c=1 p50 ms | wrk c=64 inputs/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for threads, rows in served.items():
        lines.append(f"| {threads} | {med(rows, 'client_ms'):.2f} | "
                     f"{med(rows, 'server_ms'):.2f} | {med(rows, 'inference_ms'):.2f} | "
                     f"{med(rows, 'wrk_c1_p50_ms'):.2f} | {med(rows, 'c64_inputs_s'):.0f} |")
    met = c1 <= best + 0.5
    lines += [
        "", f"Target, c=1 p50 <= the best in-process single-item latency + 0.5 ms: "
            f"{c1:.2f} ms vs {best:.2f} + 0.5 ms ({best_key[0]} thread(s)"
            f"{', spinning' if best_key[1] else ''}): **{'met' if met else 'not met'}**.",
    ]
    replace_section(out / "benchmarks.md", "alone", "\n".join(lines))
    return 0
