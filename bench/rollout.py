"""A 100% shadow under load: `python -m bench rollout`.

Sentiment, one tweet per request, 16 closed-loop clients (wrk) on /predict, alternately
without a rollout and with one that shadows every answer on a candidate version, `rounds`
times. The candidate is a copy of the stable version (a temporary repository holds version
1 and the same files as version 2), so the shadow copies cost what the stable answers cost.
Both versions run the manifest's file (ORTSERVE_MODEL_VARIANT=manifest): timing the variants
at load could give them different files.

Each "with" run starts the rollout (the candidate is loaded and warmed before the load
begins) and ends it (rollback, the candidate unloaded) afterwards, so each "without" run
serves exactly what a server without rollouts serves; the pairs alternate their order.
Reported: predict throughput, p50 and p99; the shadow copies compared per second during the
load, and those dropped (the shadow bound or the candidate's background lane full, or too
long a wait) or failed. Target: predict p99 with the shadow <= 1.25x without (the median of
the rounds' ratios, each from a pair of runs a few seconds apart).

Writes the `rollout` section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench import load
from bench.sections import replace_section
from bench.server import Service
from bench.workloads import text_workload

TARGET = 1.25
CLIENTS = 16
ADMIN_KEY = "bench-admin-key-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
ENV = {"ORTSERVE_MODELS": "sentiment", "ORTSERVE_MODEL_VARIANT": "manifest",
       "ORTSERVE_VERSION_POLICY": json.dumps({"sentiment": [1]}),
       "ORTSERVE_ADMIN_KEYS": ADMIN_KEY, "ORTSERVE_ADMIN_RATE_LIMIT_PER_S": "0"}
SPEC = {"candidate": 2, "stable": 1, "shadow_percent": 100}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the same bytes, no 150 MB copy, when on one file system
    except OSError:
        shutil.copy2(src, dst)


def two_versions(models: Path, root: Path) -> Path:
    """`root/sentiment/{1,2}`: the newest sentiment version of `models` and the same files
    as version 2 (its manifest's version changed; the artifacts' hashes stay valid)."""
    from bench.host import latest

    source = latest(models, "sentiment")
    for version in (1, 2):
        folder = root / "sentiment" / str(version)
        folder.mkdir(parents=True)
        for f in source.iterdir():
            if f.name != "model.json":
                _link_or_copy(f, folder / f.name)
        manifest = json.loads((source / "model.json").read_text())
        manifest["version"] = version
        (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return root


def _rollout(url: str) -> dict:
    r = httpx.get(f"{url}/repository/models/sentiment/rollout", headers=ADMIN, timeout=30)
    r.raise_for_status()
    return r.json()


def _settled(url: str, timeout: float = 120) -> dict:
    """The rollout once no shadow copy is in flight (the last ones finish or time out)."""
    deadline = time.monotonic() + timeout
    state = _rollout(url)
    while state["shadow"]["inflight"] and time.monotonic() < deadline:
        time.sleep(0.2)
        state = _rollout(url)
    return state


def _run(svc: Service, wl, seconds: float, shadow: bool, round_: int) -> dict:
    """One load run, with a 100% shadow started before and ended after it, or without."""
    if shadow:
        r = httpx.put(f"{svc.url}/repository/models/sentiment/rollout", json=SPEC,
                      headers=ADMIN, timeout=300)
        r.raise_for_status()
        before = _rollout(svc.url)["shadow"]
    host_load = os.getloadavg()[0]
    got = load.closed_loop(svc.url, wl.path, wl.bodies, CLIENTS, seconds)
    row = {"round": round_, "shadow": shadow, "rps": got["rps"], "p50_ms": got["p50_ms"],
           "p99_ms": got["p99_ms"], "errors": got["errors"], "load_1m": host_load}
    if shadow:
        during = _rollout(svc.url)["shadow"]
        after = _settled(svc.url)["shadow"]
        row.update(shadowed=got["requests"],
                   compared_s=(during["samples"] - before["samples"]) / got["seconds"],
                   compared=after["samples"] - before["samples"],
                   dropped=after["dropped"] - before["dropped"],
                   failed=after["errors"] - before["errors"])
        httpx.delete(f"{svc.url}/repository/models/sentiment/rollout", headers=ADMIN,
                     timeout=300).raise_for_status()
    print(f"  {json.dumps(row)}", flush=True)
    return row


def run_rollout(models: Path, seconds: float, rounds: int, out: Path) -> int:
    from bench.host import cpu_model

    tmp = Path(tempfile.mkdtemp(prefix="ortserve-bench-rollout-"))
    rows: list[dict] = []
    try:
        svc = Service(two_versions(models, tmp / "models"), env=ENV)
        try:
            wl = text_workload("sentiment", 1)
            load.closed_loop(svc.url, wl.path, wl.bodies, CLIENTS, 2)  # warm
            for i in range(rounds):
                # each round a pair, in alternating order: drift between minutes cancels
                for shadow in ((False, True) if i % 2 == 0 else (True, False)):
                    rows.append(_run(svc, wl, seconds, shadow, i + 1))
        finally:
            svc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(shadow: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["shadow"] == shadow)

    pairs = [next(r["p99_ms"] for r in rows if r["round"] == i and r["shadow"])
             / next(r["p99_ms"] for r in rows if r["round"] == i and not r["shadow"])
             for i in range(1, rounds + 1)]
    ratio = statistics.median(pairs)
    lines = [
        "## A 100% shadow under load", "",
        f"Generated by `python -m bench rollout` (sentiment, one tweet per request, "
        f"{CLIENTS} closed-loop clients (wrk), {seconds:g} s per run; {rounds} rounds, each "
        "a run without a rollout and one with a rollout shadowing every answer on a "
        "candidate version, a copy of the stable one, in alternating order; both versions "
        "run the manifest's file). The load generator shares the machine's cores with the "
        "server; `load 1m` is the host's load average as each run began (other processes "
        "on a shared host show there).", "",
        f"- machine: {cpu_model()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        "| round | shadow | load 1m | predict req/s | p50 ms | p99 ms | errors | "
        "shadow compared/s during the load | shadowed inputs | compared | dropped | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {'100%' if r['shadow'] else 'none'} | {r['load_1m']:.1f} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
            + (f"{r['compared_s']:.1f} | {r['shadowed']} | {r['compared']} | "
               f"{r['dropped']} | {r['failed']} |" if r["shadow"] else "- | - | - | - | - |"))
    shadowed = sum(r["shadowed"] for r in rows if r["shadow"])
    dropped = sum(r["dropped"] for r in rows if r["shadow"])
    lines += [
        "", f"Target, predict p99 with the shadow <= {TARGET}x without: median of the "
            f"rounds' ratios {ratio:.2f}x ({', '.join(f'{p:.2f}' for p in pairs)}): "
            f"**{'met' if ratio <= TARGET else 'not met'}**. Medians of the runs: p99 "
            f"{med(True, 'p99_ms'):.1f} vs {med(False, 'p99_ms'):.1f} ms, throughput "
            f"{med(True, 'rps'):.0f} vs {med(False, 'rps'):.0f} req/s. Shadow: "
            f"{med(True, 'compared_s'):.0f} inputs compared per second during the load "
            f"(median), {dropped} of {shadowed} shadowed inputs dropped "
            f"({dropped / max(shadowed, 1):.0%}), "
            f"{sum(r['failed'] for r in rows if r['shadow'])} failed.", "",
        "Shadow copies run in the candidate's background lane, whose batches start only "
        "when no model of the process has a prediction queued or running, at normal "
        "priority (a lane at idle priority, preempted while holding the GIL, stalled the "
        "event loop for hundreds of milliseconds on a busy host: bench/tuning.md); past "
        "ORTSERVE_SHADOW_MAX_INFLIGHT (256) inputs waiting, new copies are dropped at once, "
        "and a copy that has not run within ORTSERVE_SHADOW_TIMEOUT_S is dropped: under "
        "this closed-loop load most are. \"Compared\" and \"dropped\" count the run's "
        "shadowed inputs once the last copies finished or timed out.",
    ]
    replace_section(out / "benchmarks.md", "rollout", "\n".join(lines))
    return 0
