"""Explanations: what they cost, and what they do to predictions: `python -m bench explain`.

1. Cost per model and method: held-out tweets (sentiment) and test-like rows (the tabular
   models' own background rows, perturbed) explained one at a time with the server's
   defaults, plus exact values where they need a larger budget; method, evaluations and
   milliseconds per explanation (median).
2. Predictions at c=16 (wrk, one tweet per request) alone, then with `explainers` clients
   explaining tweets back to back, alternating `rounds` times: predict p50/p99 and
   throughput with and without, and the explanations' own throughput. Target: predict p99
   with explanations running <= 1.25x without.

Writes the `explain` section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from pathlib import Path

import httpx

from bench import load
from bench.sections import replace_section
from bench.server import Service
from bench.workloads import heldout_texts, text_workload

TARGET = 1.25


def _costs(url: str, models: Path) -> list[dict]:
    from bench.host import latest

    rng = random.Random(0)
    texts = heldout_texts()
    short = [t for t in texts if len(t.split()) <= 10][:15]
    long = [t for t in texts if 15 <= len(t.split()) <= 25][:15]
    cases = [("sentiment", "tweets of <= 10 words", [[t] for t in short], {}),
             ("sentiment", "tweets of 15-25 words", [[t] for t in long], {})]
    for name in ("breast-cancer", "diabetes"):
        doc = json.loads((latest(models, name) / "background.json").read_text())
        rows = [[v * (1 + rng.uniform(-0.2, 0.2)) for v in r] for r in doc["rows"]]
        cases.append((name, "background rows, +-20%", [[r] for r in rows], {}))
    doc = json.loads((latest(models, "diabetes") / "background.json").read_text())
    cases.append(("diabetes", "same rows, exact (budget 2^10 x 10 rows)",
                  [[r] for r in doc["rows"]], {"max_evaluations": 10240}))
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for model, what, inputs, extra in cases:
            ms, evals, methods, words = [], [], set(), []
            for body in inputs:
                t0 = time.perf_counter()
                r = c.post(f"/models/{model}/explain", json={"inputs": body, **extra})
                took = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                e = r.json()["explanations"][0]
                ms.append(took)
                evals.append(e["evaluations"])
                methods.add(e["method"])
                words.append(len(e["attributions"]))
            row = {"model": model, "inputs": what, "players": statistics.median(words),
                   "method": "/".join(sorted(methods)),
                   "evaluations": statistics.median(evals), "ms": statistics.median(ms),
                   "ms_max": max(ms)}
            print(f"  {json.dumps(row)}", flush=True)
            out.append(row)
    return out


def _explain_load(url: str, clients: int, stop: threading.Event, done: list) -> None:
    texts = heldout_texts()

    def client(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/models/sentiment/explain",
                           json={"inputs": [rng.choice(texts)], "seed": k})
                if r.status_code == 200:
                    done.append(r.json()["explanations"][0]["evaluations"])

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(60)


def run_explain(models: Path, seconds: float, rounds: int, explainers: int,
                out: Path) -> int:
    from bench.host import cpu_model

    svc = Service(models)
    try:
        print("cost per explanation (one at a time, server defaults)", flush=True)
        costs = _costs(svc.url, models)
        wl = text_workload("sentiment", 1)
        rows = []
        for i in range(rounds):
            for with_explain in (False, True):
                stop, done = threading.Event(), []
                loader = None
                if with_explain:
                    loader = threading.Thread(target=_explain_load,
                                              args=(svc.url, explainers, stop, done))
                    loader.start()
                    time.sleep(1.0)  # the explainers' first requests are under way
                t0 = time.perf_counter()
                r = load.closed_loop(svc.url, wl.path, wl.bodies, 16, seconds)
                took = time.perf_counter() - t0
                stop.set()
                if loader:
                    loader.join(120)
                row = {"round": i + 1, "explain": with_explain, "rps": r["rps"],
                       "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
                       "explanations_s": len(done) / took if with_explain else None,
                       "evaluations_s": sum(done) / took if with_explain else None}
                print(f"  {json.dumps(row)}", flush=True)
                rows.append(row)
    finally:
        svc.stop()

    def med(explain: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["explain"] == explain)

    ratio = med(True, "p99_ms") / med(False, "p99_ms")
    lines = [
        "## Explanations", "",
        f"Generated by `python -m bench explain` (server defaults; {seconds:g} s per load "
        f"row, {rounds} rounds alternating without and with {explainers} explaining "
        "clients).", "",
        f"- machine: {cpu_model()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        "Cost of one explanation (one request at a time; medians, and the slowest):", "",
        "| model | inputs | players (median) | method | evaluations | ms | slowest ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {c['model']} | {c['inputs']} | {c['players']:g} | {c['method']} | "
              f"{c['evaluations']:g} | {c['ms']:.0f} | {c['ms_max']:.0f} |" for c in costs]
    lines += ["", "Predictions (text x1, c=16, wrk) without and with explanations running:", "",
              "| round | explanations running | predict req/s | p50 ms | p99 ms | errors | "
              "explanations/s | evaluations/s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['round']} | {'yes' if r['explain'] else 'no'} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
            + (f"{r['explanations_s']:.2f} | {r['evaluations_s']:.0f} |" if r["explain"]
               else "- | - |"))
    lines += ["", f"Target, predict p99 with explanations running <= {TARGET}x without: "
                  f"{med(True, 'p99_ms'):.1f} vs {med(False, 'p99_ms'):.1f} ms = {ratio:.2f}x "
                  f"(medians of the rounds): **{'met' if ratio <= TARGET else 'not met'}**. "
                  f"Predict throughput with them: {med(True, 'rps'):.0f} vs "
                  f"{med(False, 'rps'):.0f} req/s."]
    replace_section(out / "benchmarks.md", "explain", "\n".join(lines))
    return 0
