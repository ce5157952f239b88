"""Scale-out on loopback: `python -m bench scaleout`.

The Kubernetes topology of deploy/kubernetes/, with processes instead of pods: sentiment
replicas of `ortserve serve` on 127.0.0.1 behind HAProxy (deploy/haproxy/haproxy.cfg,
health checks on /health/ready) and a Prometheus scraping each replica with the project's
rules. Four measurements, written to the `scaleout` section of docs/benchmarks.md:

1. load signals: one replica at rising closed-loop concurrency; per level the throughput,
   latency and the candidate autoscaling signals (time averages from the replica's own
   counters, by Little's law): requests waiting in the model queue, requests in flight,
   busy model instances;
2. throughput of 1, 2 and 3 replicas at 64 clients, with the server CPU they used;
3. a rolling restart at 64 clients (SIGTERM, exit 0, start again, ready, next replica) and
   a SIGKILL of one replica: failed requests in each;
4. the KEDA query of deploy/kubernetes/ (its range shortened to the scrape window), as
   this Prometheus evaluates it while the replicas are overloaded and when idle.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

from bench import load
from bench.cluster import ROOT, Haproxy, Prometheus, free_port, wait_until
from bench.drain import hammer
from bench.sections import replace_section
from bench.server import Service, cpu_seconds
from bench.workloads import text_workload

KEDA = ROOT / "deploy/kubernetes/components/keda/scaledobject.yaml"
ENV = {"ORTSERVE_MODELS": "sentiment", "ORTSERVE_DRAIN_DELAY_S": "1"}


def autoscaling_query(window: str | None = None) -> tuple[str, float]:
    """The ScaledObject's Prometheus query and per-replica threshold; `window` replaces
    the query's range (the manifest's [1m] suits a 15 s scrape; the local runs are short)."""
    trigger = yaml.safe_load(KEDA.read_text())["spec"]["triggers"][0]["metadata"]
    query = trigger["query"]
    return (query.replace("[1m]", f"[{window}]") if window else query,
            float(trigger["threshold"]))


def counters(svc: Service) -> dict[str, float]:
    return {"queued": svc.metric("ortserve_queue_wait_seconds_sum"),
            "in_flight": svc.metric("ortserve_request_duration_seconds_sum"),
            "in_flight_inputs": svc.metric("ortserve_input_seconds_total"),
            "busy": svc.metric("ortserve_inference_duration_seconds_sum")}


def signals(models: Path, levels: dict[int, list[int]], seconds: float) -> list[dict]:
    """levels: texts per request -> client counts."""
    svc = Service(models, env=ENV)
    rows = []
    try:
        load.closed_loop(svc.url, "/predict", text_workload("sentiment", 1).bodies, 8, 2)
        for per_request, conc in ((n, c) for n, cs in levels.items() for c in cs):
            wl = text_workload("sentiment", per_request)
            before, t0 = counters(svc), time.monotonic()
            r = load.closed_loop(svc.url, wl.path, wl.bodies, conc, seconds)
            elapsed = time.monotonic() - t0
            after = counters(svc)
            row = {"texts": per_request, "clients": conc, "rps": r["ok_rps"], "p50_ms": r["p50_ms"],
                   "p99_ms": r["p99_ms"], "errors": r["errors"],
                   **{k: (after[k] - before[k]) / elapsed for k in before}}
            print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
            rows.append(row)
    finally:
        svc.stop()
    return rows


class Replicas:
    """n sentiment replicas on fixed ports, so that a restarted one takes its old place."""

    def __init__(self, models: Path, n: int) -> None:
        self.models, self.ports = models, [free_port() for _ in range(n)]
        self.procs = [Service(models, env=ENV, port=p) for p in self.ports]

    def cpu(self) -> float:
        return sum(cpu_seconds(s.proc.pid) for s in self.procs)

    def restart(self, i: int) -> int:
        code = self.procs[i].stop()
        self.procs[i] = Service(self.models, env=ENV, port=self.ports[i])
        return code

    def stop(self) -> None:
        for s in self.procs:
            if s.proc.poll() is None:
                s.stop()


def replicas_throughput(models: Path, seconds: float, clients: int) -> list[dict]:
    wl = text_workload("sentiment", 1)
    rows = []
    for n in (1, 2, 3):
        with tempfile.TemporaryDirectory() as tmp:
            reps = Replicas(models, n)
            lb = Haproxy(Path(tmp), reps.ports)
            try:
                load.closed_loop(lb.url, wl.path, wl.bodies, clients, 2)  # warm
                cpu0 = reps.cpu()
                r = load.closed_loop(lb.url, wl.path, wl.bodies, clients, seconds)
                cpu = reps.cpu() - cpu0
            finally:
                lb.stop()
                reps.stop()
        row = {"replicas": n, "rps": r["ok_rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
               "errors": r["errors"], "cpu_s_per_request": cpu / max(r["requests"], 1),
               "busy_cores": cpu / r["seconds"]}
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


class Clients:
    """`n` keep-alive clients posting to `/predict` in a closed loop until closed; every
    attempt is counted by outcome (bench/drain.py's client loop: ok, status, refused, lost)."""

    def __init__(self, url: str, n: int, texts: int = 1) -> None:
        self.counts: Counter = Counter()
        self.lock, self.stop = threading.Lock(), threading.Event()
        body = json.dumps({"model": "sentiment",
                           "inputs": ["quick and friendly"] * texts}).encode()
        self.threads = [threading.Thread(target=hammer, daemon=True,
                                         args=(url, body, True, self.stop, self.counts,
                                               self.lock)) for _ in range(n)]
        for t in self.threads:
            t.start()

    def snapshot(self) -> Counter:
        with self.lock:
            return Counter(self.counts)

    def close(self) -> Counter:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return self.snapshot()


def failed(c: Counter) -> int:
    return sum(v for k, v in c.items() if k != "ok")


def restarts_and_signal(models: Path, clients: int, window_s: float) -> dict:
    """Rolling restart, SIGKILL and the autoscaling query, on one 3-replica cluster."""
    query, threshold = autoscaling_query(f"{window_s:g}s")
    out: dict = {"query": query, "threshold": threshold}
    with tempfile.TemporaryDirectory() as tmp:
        reps = Replicas(models, 3)
        lb = prom = None
        try:
            lb = Haproxy(Path(tmp), reps.ports)
            prom = Prometheus(Path(tmp), reps.ports)
            wait_until(lambda: prom.targets_up() == 3, 60, "Prometheus scraping 3 replicas")
            time.sleep(window_s + 2)
            out["idle"] = prom.query(query) or 0.0
            heavy = Clients(lb.url, clients, texts=16)
            time.sleep(window_s + 2)
            out["overloaded"] = prom.query(query) or 0.0
            overload = heavy.close()
            out["overload_failed"] = {k: v for k, v in overload.items() if k != "ok"}
            time.sleep(window_s + 2)
            out["after"] = prom.query(query) or 0.0
            load_ = Clients(lb.url, clients)
            time.sleep(2)
            exits = []
            for i in range(3):
                exits.append(reps.restart(i))
                time.sleep(0.75)  # HAProxy's rise: 2 good checks 250 ms apart
            rolled = load_.snapshot()
            reps.procs[0].proc.send_signal(signal.SIGKILL)
            reps.procs[0].proc.wait()
            time.sleep(2.0)
            after_kill = load_.snapshot()
            time.sleep(2.0)
            final = load_.close()
            out.update(
                exit_codes=exits, rolling_answered=rolled["ok"], rolling_failed=failed(rolled),
                kill_failed=failed(after_kill) - failed(rolled),
                after_window_failed=failed(final) - failed(after_kill),
                kill_kinds={k: after_kill[k] - rolled.get(k, 0) for k in after_kill
                            if k != "ok" and after_kill[k] != rolled.get(k, 0)},
                answered=final["ok"])
            print(json.dumps(out), flush=True)
        finally:
            for d in (prom, lb):
                if d is not None:
                    d.stop()
            reps.stop()
    return out


def run_scaleout(models: Path, seconds: float, clients: int, out: Path) -> int:
    from bench.host import cpu_model

    sig = signals(models, {1: [1, 2, 4, 8, 16, 64], 16: [1, 2, 4, 8]}, seconds)
    thr = replicas_throughput(models, seconds, clients)
    rr = restarts_and_signal(models, clients, window_s=10)
    lines = [
        "## Scale-out on loopback: replicas behind HAProxy, scraped by Prometheus", "",
        f"Generated by `python -m bench scaleout` (sentiment, one text per request, wrk "
        f"closed loop for {seconds:g} s per row; replicas, HAProxy, Prometheus and the "
        "load generator share the machine's cores).", "",
        f"- machine: {cpu_model()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        "### Which signal predicts saturation", "",
        "One replica, 1 or 16 texts per request. Time averages over each row from the "
        "replica's own counters (Little's law): *waiting* = "
        "`rate(ortserve_queue_wait_seconds_sum)`, requests queued for the model; *requests "
        "in flight* = `rate(ortserve_request_duration_seconds_sum)`; *inputs in flight* = "
        "`rate(ortserve_input_seconds_total)`; *busy* = "
        "`rate(ortserve_inference_duration_seconds_sum)`, model instances running.", "",
        "| texts per request | clients | inputs/s | p50 ms | p99 ms | waiting | requests in "
        "flight | inputs in flight | busy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['texts']} | {r['clients']} | {r['rps'] * r['texts']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['queued']:.2f} | "
              f"{r['in_flight']:.2f} | {r['in_flight_inputs']:.1f} | {r['busy']:.2f} |"
              for r in sig]
    lines += ["", "Compare the rows where each request size reaches its plateau: the inputs in "
              "flight there are close, whatever the request size, while requests in flight "
              "and waiting requests differ by the request size (a 16-text request is 16 "
              "inputs of work), and *busy* is capped by the instance count (it cannot say "
              "how far past saturation a replica is). The autoscalers of deploy/kubernetes/ "
              "therefore scale on inputs in flight, with a threshold of about half the "
              "plateau's inputs in flight.", "",
              "### Throughput of 1, 2 and 3 replicas", "",
              f"{clients} clients through HAProxy. On a 2-core host the replicas compete for "
              "the same cores, so total throughput cannot grow with replicas here; the "
              "figure to read is the CPU each request costs (per-core efficiency), which "
              "says what N replicas on N separate nodes would deliver.", "",
              "| replicas | requests/s | p50 ms | p99 ms | errors | server CPU ms per request "
              "| busy cores |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['replicas']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['errors']} | {1000 * r['cpu_s_per_request']:.2f} | {r['busy_cores']:.2f} |"
              for r in thr]
    lines += ["", "### Rolling restart, SIGKILL and the autoscaling signal", "",
              f"Three replicas, {clients} Python clients through HAProxy (`retries 3`, "
              "`retry-on conn-failure empty-response`, checks every 250 ms, `fall 1`).", "",
              f"- rolling restart (SIGTERM, wait for exit, start, ready, next): exit codes "
              f"{rr['exit_codes']}, {rr['rolling_answered']} answered, "
              f"**{rr['rolling_failed']} failed**",
              f"- SIGKILL of one replica: {rr['kill_failed']} failed in the 2 s after the kill "
              f"{json.dumps(rr['kill_kinds']) if rr['kill_kinds'] else ''}, "
              f"{rr['after_window_failed']} in the 2 s after that",
              f"- KEDA query `{rr['query']}` (threshold {rr['threshold']:g} per replica, "
              "`metricType: AverageValue`: KEDA wants ceil(value / threshold) replicas): "
              f"idle {rr['idle']:.1f} (wants the minimum); {clients} clients x 16 texts "
              f"{rr['overloaded']:.1f} (wants "
              f"{max(1, -(-rr['overloaded'] // rr['threshold'])):.0f} replicas; "
              f"failed: {json.dumps(rr['overload_failed'])}); {rr['after']:.1f} one window "
              "after the load stopped"]
    replace_section(out / "benchmarks.md", "scaleout", "\n".join(lines))
    return 0 if rr["rolling_failed"] == 0 and all(c == 0 for c in rr["exit_codes"]) else 1
