"""`python -m bench run|probe|report|soak|drain|swap|protocols|hostile|rollout|...`: benchmark
the service beside its ceilings, soak it, measure a drain, version swaps, the APIs side by
side, hostile requests against liveness, or a rollout's shadow under load."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from app.runtime.session import CPU, requested_providers
from app.settings import (
    Settings,
    resolved_instances,
    resolved_intra_op_threads,
    resolved_workers,
)
from bench import ceilings, load, report
from bench.host import cpu_model, latest
from bench.server import Service
from bench.workloads import heldout_rows, heldout_texts, rows_workload, text_workload

ROOT = Path(__file__).resolve().parent.parent


def batch_stats(svc: Service, model: str, before: tuple[float, float]) -> float | None:
    s = svc.metric("ortserve_batch_size_sum", f'model="{model}"')
    c = svc.metric("ortserve_batch_size_count", f'model="{model}"')
    return (s - before[0]) / (c - before[1]) if c > before[1] else None


def closed(svc: Service, wl, conc: int, seconds: float) -> dict:
    marks = (svc.metric("ortserve_batch_size_sum", f'model="{wl.model}"'),
             svc.metric("ortserve_batch_size_count", f'model="{wl.model}"'))
    r = svc.measure(lambda: load.closed_loop(svc.url, wl.path, wl.bodies, conc, seconds))
    r.update(workload=wl.name, model=wl.model, concurrency=conc,
             inputs_per_s=r["ok_rps"] * wl.inputs_per_request,
             mean_batch=batch_stats(svc, wl.model, marks))
    cpu = (f"  server CPU {r['server_cpu_s'] * 1000 / max(r['requests'], 1):.2f} ms/request"
           if r.get("server_cpu_s") is not None else "")
    print(f"  {wl.name:12s} c={conc:<4d} {r['inputs_per_s']:9.1f} inputs/s  "
          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  "
          f"batch {r['mean_batch'] or 0:.1f}{cpu}", flush=True)
    return r


def pairs_with_http(svc: Service, wl, conc: int, seconds: float, rounds: int) -> list[dict]:
    """`rounds` x (GET /health/live, then the workload), each at `conc` clients: back to
    back, so that the VM's drift between minutes cancels out of each ratio."""
    out = []
    for _ in range(rounds):
        live = load.closed_loop(svc.url, "/health/live", None, conc, seconds, method="GET")
        served = load.closed_loop(svc.url, wl.path, wl.bodies, conc, seconds)
        out.append({"http_rps": live["rps"], "tabular_rps": served["rps"]})
        print(f"  {live['rps']:9.1f} vs {served['rps']:9.1f} req/s "
              f"({served['rps'] / live['rps']:.0%})", flush=True)
    return out


def pairs_with_ceiling(svc: Service, wl, conc: int, seconds: float, rounds: int,
                       folder: Path, model_file: str, batch: int, instances: int,
                       threads: int, ceiling_seconds: float) -> list[dict]:
    """`rounds` x (in-process ceiling at `batch`, then the workload at `conc` clients)."""
    out = []
    for _ in range(rounds):
        ceil = ceilings.model_ceiling(folder, heldout_texts(), model_file, threads,
                                      batch_sizes=(batch,), seconds=ceiling_seconds,
                                      parallel=instances, single=False)
        served = load.closed_loop(svc.url, wl.path, wl.bodies, conc, seconds)
        rate = served["ok_rps"] * wl.inputs_per_request
        out.append({"ceiling": ceil["throughput"], "served": rate})
        print(f"  {ceil['throughput']:9.1f} vs {rate:9.1f} inputs/s "
              f"({rate / ceil['throughput']:.0%})", flush=True)
    return out


def run(a: argparse.Namespace) -> int:
    if not load.wrk_available():
        print("wrk not found: scripts/system-deps.sh installs it", file=sys.stderr)
        return 2
    models = Path(a.models)
    secs = a.seconds
    levels = [1, 4, 16, 64, 256]
    served_settings = Settings()
    instances = resolved_instances(served_settings)
    threads = resolved_intra_op_threads(served_settings)
    cores = os.cpu_count() or 1
    sent_dir, tab_dir = latest(models, "sentiment"), latest(models, "breast-cancer")
    manifest = json.loads((sent_dir / "model.json").read_text())
    texts, rows = heldout_texts(), heldout_rows()
    results: dict = {"machine": {"cpu": cpu_model(), "cores": cores,
                                 "python": platform.python_version()},
                     "command": " ".join(["python -m bench"] + sys.argv[1:]),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "served_file": manifest["model_file"],
                     "settings": {"instances": instances, "threads": threads}}
    print("ceilings (in-process ONNX Runtime, same files and threads)", flush=True)
    variants = {k: v["file"] for k, v in manifest.get("variants", {}).items()}
    variants.setdefault("fp32", "model.onnx")
    for name, file in variants.items():
        # the service's shape: `instances` batches at once, `threads` threads each
        results[f"ceiling_{name}"] = ceilings.model_ceiling(
            sent_dir, texts, file, threads, parallel=instances, seconds=a.ceiling_seconds)
        if (instances, threads) != (1, cores):
            # for reference: one session with a thread per core (ORTSERVE_INSTANCES=1)
            results[f"ceiling_single_{name}"] = ceilings.model_ceiling(
                sent_dir, texts, file, cores, seconds=a.ceiling_seconds)
    if "int8" in variants and requested_providers(served_settings.device, False)[0] == CPU:
        # what the int8 graph gives with every ONNX Runtime fusion on (the server turns
        # SkipLayerNormFusion off on CPU; see app.runtime.session)
        results["ceiling_int8_all_fusions"] = ceilings.model_ceiling(
            sent_dir, texts, variants["int8"], threads, batch_sizes=(32, 128),
            parallel=instances, seconds=a.ceiling_seconds, disabled_optimizers=(),
            single=False)
    served = next(k for k, f in variants.items() if f == manifest["model_file"])
    # a tabular batch is too small to leave the event loop: one session, run inline
    results["ceiling_tabular"] = ceilings.model_ceiling(tab_dir, rows, threads=threads,
                                                        seconds=a.ceiling_seconds)
    for k in sorted(k for k in results if k.startswith("ceiling_")):
        c = results[k]
        print(f"  {k:16s} {c['throughput']:9.1f} inputs/s at batch {c['best_batch']}"
              + (f", single item {c['single_p50_ms']:.2f} ms" if c["single_p50_ms"] else ""),
              flush=True)

    text1 = text_workload("sentiment", 1)
    text16 = text_workload("sentiment", 16)
    tab1 = rows_workload("breast-cancer", 1)
    tab64 = rows_workload("breast-cancer", 64)
    svc = Service(models, url=a.url)
    try:
        info = httpx.get(f"{svc.url}/models/sentiment").json()
        results["provider"] = info["provider"]
        # what the service chose (ORTSERVE_MODEL_VARIANT=auto times the variants at load)
        served = info.get("variant") or served
        results.update(served_variant=served, served_file=info.get("model_file"),
                       variant_reason=info.get("variant_reason"),
                       ceiling_served=results[f"ceiling_{served}"])
        print(f"sentiment runs {served} on {results['provider']}: "
              f"{info.get('variant_reason') or 'the manifest default'}", flush=True)
        print("HTTP ceiling: GET /health/live", flush=True)
        results["http"] = []
        for c in levels:
            r = svc.measure(lambda c=c: load.closed_loop(svc.url, "/health/live", None, c,
                                                         secs, method="GET"))
            r.update(concurrency=c)
            results["http"].append(r)
            print(f"  c={c:<4d} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:.2f} ms", flush=True)
        print("served", flush=True)
        results["closed"] = []
        for wl, lv in ((text1, levels), (text16, levels[:4]), (tab1, levels),
                       (tab64, levels[:4])):
            for c in lv:
                if wl is text1 and c == 1:
                    # the same minute as the c=1 run: this VM's speed drifts between minutes
                    single = ceilings.model_ceiling(
                        sent_dir, texts, results["served_file"], threads, batch_sizes=(1,),
                        seconds=a.ceiling_seconds)
                    results["single_paired_ms"] = single["single_p50_ms"]
                results["closed"].append(closed(svc, wl, c, secs))
        print("paired: GET /health/live then tabular x1, c=64, three rounds", flush=True)
        results["paired_tabular_http"] = pairs_with_http(svc, tab1, 64, secs / 2, 3)
        print("paired: in-process ceiling then text x1 at c=64, three rounds", flush=True)
        results["paired_text_c64"] = pairs_with_ceiling(
            svc, text1, 64, secs / 2, 3, sent_dir, results["served_file"],
            results["ceiling_served"]["best_batch"], instances, threads, a.ceiling_seconds)
        print("mixed: sentiment x1 and tabular x1 at c=32 each", flush=True)
        mixed: dict = {}

        def side(wl, key):
            mixed[key] = load.closed_loop(svc.url, wl.path, wl.bodies, 32, secs)

        def both():
            ts = [threading.Thread(target=side, args=(text1, "sentiment")),
                  threading.Thread(target=side, args=(tab1, "tabular"))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return {}

        usage = svc.measure(both)
        results["mixed"] = {**mixed, **usage}
        for k in ("sentiment", "tabular"):
            print(f"  {k:10s} {mixed[k]['rps']:9.1f} req/s  p99 {mixed[k]['p99_ms']:.2f} ms")
        c64 = next(r for r in results["closed"]
                   if r["workload"] == text1.name and r["concurrency"] == 64)
        print("open loop: text x1 at fixed arrival rates", flush=True)
        results["open"] = []
        for f in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
            rate = max(1.0, c64["rps"] * f)
            r = svc.measure(lambda rate=rate: load.open_loop(svc.url, "/predict", text1.bodies,
                                                             rate, secs))
            r.update(fraction=f)
            results["open"].append(r)
            print(f"  offered {rate:8.1f}/s  accepted {r['rps']:8.1f}/s  rejected "
                  f"{r['rejected_503']}  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms",
                  flush=True)
    finally:
        svc.stop()
    if a.url is None:
        print("naive baseline: max_batch_size=1", flush=True)
        naive = Service(models, env={"ORTSERVE_BATCHING": json.dumps(
            {"sentiment": {"max_batch_size": 1}})})
        try:
            results["naive"] = [closed(naive, text1, c, secs) for c in (1, 64)]
        finally:
            naive.stop()
        if (os.cpu_count() or 1) > 1:
            print("one worker process per core, one ONNX Runtime thread each", flush=True)
            multi = Service(models, workers=0)
            try:
                results["per_core_workers"] = [closed(multi, text1, c, secs) for c in (1, 64)]
            finally:
                multi.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "latest.json").write_text(json.dumps(results, indent=1))
    report.write(results, out)
    print(f"report: {out / 'benchmarks.md'}")
    return 0


def probe(a: argparse.Namespace) -> int:
    """One configuration, a few load levels: for tuning (figures go to bench/tuning.md)."""
    env = dict(kv.split("=", 1) for kv in a.env)
    wl = {"text1": lambda: text_workload("sentiment", 1),
          "text16": lambda: text_workload("sentiment", 16),
          "tab1": lambda: rows_workload("breast-cancer", 1),
          "tab64": lambda: rows_workload("breast-cancer", 64)}[a.workload]()
    svc = Service(Path(a.models), env=env, workers=a.workers, server=a.server)
    try:
        print(f"{a.workload} server={a.server} workers={a.workers} env={env}")
        for c in a.concurrency:
            if not a.pairs:
                closed(svc, wl, c, a.seconds)
                continue
            if wl.model != "sentiment":
                print(f"  c={c}: GET /health/live, then {wl.name}; {a.pairs} rounds")
                found = pairs_with_http(svc, wl, c, a.seconds, a.pairs)
                ratios = [p["tabular_rps"] / p["http_rps"] for p in found]
            else:
                # the ceiling in the shape these settings serve: workers x instances
                # sessions, each with the threads a batch run gets
                os.environ.update(env)
                if a.workers is not None:
                    os.environ["ORTSERVE_WORKERS"] = str(a.workers)
                settings = Settings()
                folder = latest(Path(a.models), "sentiment")
                file = json.loads((folder / "model.json").read_text())["model_file"]
                print(f"  c={c}: in-process ceiling at batch 128, then {wl.name}; "
                      f"{a.pairs} rounds")
                found = pairs_with_ceiling(svc, wl, c, a.seconds, a.pairs, folder, file, 128,
                                           resolved_workers(settings)
                                           * resolved_instances(settings),
                                           resolved_intra_op_threads(settings), 3.0)
                ratios = [p["served"] / p["ceiling"] for p in found]
            print(f"  median {statistics.median(ratios):.0%}", flush=True)
    finally:
        svc.stop()
    return 0


def rewrite(a: argparse.Namespace) -> int:
    """Write docs/benchmarks.md again from bench/results/latest.json (no new measurement)."""
    results = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    Path(a.out).mkdir(parents=True, exist_ok=True)
    report.write(results, Path(a.out))
    return 0


def soak(a: argparse.Namespace) -> int:
    from bench.soak import run_soak

    return run_soak(Path(a.models), a.minutes, a.factor, Path(a.out), a.deadline)


def protocols(a: argparse.Namespace) -> int:
    from bench.protocols import run_protocols

    return run_protocols(Path(a.models), a.seconds, Path(a.out))


def swap(a: argparse.Namespace) -> int:
    from bench.swap import run_swap

    return run_swap(Path(a.models), a.clients, a.steady, a.seconds, a.every, Path(a.out))


def drain(a: argparse.Namespace) -> int:
    from bench.drain import run_drain

    return run_drain(Path(a.models), a.clients, a.before, a.runs, Path(a.out))


def memory(a: argparse.Namespace) -> int:
    from bench.memory import run_memory

    return run_memory(Path(a.models), a.seconds, Path(a.out))


def admission(a: argparse.Namespace) -> int:
    from bench.admission import run_admission

    return run_admission(Path(a.models), a.seconds, Path(a.out))


def scaleout(a: argparse.Namespace) -> int:
    from bench.scaleout import run_scaleout

    return run_scaleout(Path(a.models), a.seconds, a.clients, Path(a.out))


def alone(a: argparse.Namespace) -> int:
    from bench.alone import run_alone

    return run_alone(Path(a.models), a.seconds, a.rounds, Path(a.out))


def peers(a: argparse.Namespace) -> int:
    from bench.peers import run_peers

    return run_peers(Path(a.models), a.seconds, a.only, Path(a.out))


def explain(a: argparse.Namespace) -> int:
    from bench.explain import run_explain

    return run_explain(Path(a.models), a.seconds, a.rounds, a.explainers, Path(a.out))


def rollout(a: argparse.Namespace) -> int:
    from bench.rollout import run_rollout

    return run_rollout(Path(a.models), a.seconds, a.rounds, Path(a.out))


def shap(a: argparse.Namespace) -> int:
    from bench.shap_compare import run_shap

    return run_shap(Path(a.models), Path(a.out))


def hostile(a: argparse.Namespace) -> int:
    from bench.hostile import run_hostile

    return run_hostile(Path(a.models), Path(a.out), a.url, a.grpc, a.only)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        """A subcommand that reads the model repository and writes under docs/."""
        c = sub.add_parser(name, help=help)
        c.add_argument("--models", default="models")
        c.add_argument("--out", default="docs")
        c.set_defaults(func=func)
        return c

    r = sub.add_parser("run", help="the full benchmark and docs/benchmarks.md")
    r.add_argument("--models", default="models")
    r.add_argument("--url", help="benchmark a running service instead of starting one")
    r.add_argument("--seconds", type=float, default=8.0, help="per load level")
    r.add_argument("--ceiling-seconds", type=float, default=3.0)
    r.add_argument("--out", default="docs")
    r.set_defaults(func=run)
    pr = sub.add_parser("probe", help="one configuration at a few concurrency levels")
    pr.add_argument("--models", default="models")
    pr.add_argument("--workload", choices=("text1", "text16", "tab1", "tab64"), default="text1")
    pr.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    pr.add_argument("--seconds", type=float, default=8.0)
    pr.add_argument("--workers", type=int, help="default: the server's default")
    pr.add_argument("--env", nargs="*", default=[], help="ORTSERVE_X=value settings")
    pr.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn",
                    help="the HTTP server running the app (granian: `pip install granian`; "
                         "one worker, the app from ORTSERVE_* settings)")
    pr.add_argument("--pairs", type=int, default=0,
                    help="N back-to-back pairs per level against a reference measured in the "
                         "same minute: GET /health/live for tabular workloads, the in-process "
                         "ceiling (batch 128) for text ones")
    pr.set_defaults(func=probe)
    w = sub.add_parser("report", help="rewrite the report from the last run's results")
    w.add_argument("--out", default="docs")
    w.set_defaults(func=rewrite)
    s = command("soak", soak, help="bounded overload run; writes docs/reliability.md")
    s.add_argument("--minutes", type=float, default=5.0)
    s.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    s.add_argument("--deadline", type=float, default=1.0,
                   help="X-Request-Timeout of every request, seconds")
    d = command("drain", drain, help="SIGTERM under load, keep-alive and new-connection "
                                     "clients; writes docs/reliability.md's drain section")
    d.add_argument("--clients", type=int, default=64)
    d.add_argument("--before", type=float, default=3.0, help="seconds of load before SIGTERM")
    d.add_argument("--runs", type=int, default=3, help="runs of each kind of client")
    pc = command("protocols", protocols,
                 help="/predict, v2 HTTP (JSON, binary) and v2 gRPC side by side; writes "
                      "docs/benchmarks.md's protocols section")
    pc.add_argument("--seconds", type=float, default=8.0, help="per row")
    sw = command("swap", swap, help="version swaps under load; writes docs/benchmarks.md's "
                                    "swap section")
    sw.add_argument("--clients", type=int, default=64)
    sw.add_argument("--steady", type=float, default=20.0, help="seconds without swaps")
    sw.add_argument("--seconds", type=float, default=60.0, help="seconds with swaps")
    sw.add_argument("--every", type=float, default=5.0, help="seconds between swaps")
    so = command("scaleout", scaleout,
                 help="replicas behind HAProxy scraped by Prometheus: load signals, 1-3 "
                      "replicas, rolling restart, SIGKILL, the autoscaling query; writes "
                      "docs/benchmarks.md's scaleout section")
    so.add_argument("--seconds", type=float, default=8.0, help="per row")
    so.add_argument("--clients", type=int, default=64)
    ad = command("admission", admission,
                 help="deadline-aware admission: 16 texts x 64 clients, then twice the "
                      "sustainable load with 1 s deadlines; writes docs/benchmarks.md's "
                      "admission section")
    ad.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    me = command("memory", memory, help="RSS per model and for all of them, ready and under "
                                        "load; writes docs/benchmarks.md's memory section")
    me.add_argument("--seconds", type=float, default=5.0, help="per workload")
    al = command("alone", alone, help="a lone request: in-process single-item latency by "
                                      "threads and spinning, the service at c=1 and c=64 by "
                                      "threads; writes docs/benchmarks.md's alone section")
    al.add_argument("--seconds", type=float, default=6.0, help="per wrk measurement")
    al.add_argument("--rounds", type=int, default=2)
    pe = command("peers", peers, help="ortserve beside LitServe, BentoML, MLServer, Ray Serve "
                                      "and PyTriton on the same model file (each installed "
                                      "into .peers/ on first use); writes docs/benchmarks.md's "
                                      "peers section")
    pe.add_argument("--seconds", type=float, default=8.0, help="per row")
    pe.add_argument("--only", nargs="*", help="peer names, e.g. litserve mlserver")
    ex = command("explain", explain, help="explanations: cost per model and method, and "
                                          "predict latency at c=16 with and without "
                                          "explanations running; writes docs/benchmarks.md's "
                                          "explain section")
    ex.add_argument("--seconds", type=float, default=10.0, help="per load row")
    ex.add_argument("--rounds", type=int, default=2)
    ex.add_argument("--explainers", type=int, default=2, help="explaining clients")
    ro = command("rollout", rollout, help="predict latency at c=16 without a rollout and with "
                                          "a 100%% shadow on a copy of sentiment, "
                                          "alternating; shadow throughput and drops; writes "
                                          "docs/benchmarks.md's rollout section")
    ro.add_argument("--seconds", type=float, default=10.0, help="per load run")
    ro.add_argument("--rounds", type=int, default=3)
    command("shap", shap, help="what the shap library would add (size, packages) and its "
                               "explainers beside /explain on the same rows; writes "
                               "docs/benchmarks.md's shap section")
    ho = command("hostile", hostile,
                 help="hostile requests on every protocol while a watcher polls /health/live "
                      "every 20 ms: statuses and worst stall per kind; writes "
                      "docs/benchmarks.md's hostile section")
    ho.add_argument("--url", help="a running server (with the bench's keys) instead of one "
                                  "started here; the report is left as it is")
    ho.add_argument("--grpc", help="its gRPC address (host:port)")
    ho.add_argument("--only", nargs="*", help="kinds whose name or protocol contains one of "
                                              "these words; the report is left as it is")
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
