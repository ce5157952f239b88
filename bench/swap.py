"""Version swaps under load: `python -m bench swap`.

A repository with two versions of the sentiment model (both the served int8 graph of the
newest training run, so that latency before and during swaps compares like with like; the
suite's tests/test_swap.py swaps versions whose answers differ) is served with the default
policy (latest). wrk keeps `clients` connections busy with one tweet per
request: first `steady` seconds without changes, then `seconds` during which the served
version is switched every `every` seconds through the repository API (a switch to version 1
loads and warms it beside version 2; a switch back drains and unloads it). A side client
checks that every answer is the output of the version it names. Writes the `swap` section
of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

from app.contract.manifest import MANIFEST_FILE
from bench import ceilings, load
from bench.sections import replace_section
from bench.server import Service
from bench.workloads import heldout_texts, text_workload

KEY = "bench-admin"
TOLERANCE = 1e-5


def two_versions(models: Path, root: Path) -> dict[int, str]:
    """root/sentiment/1 and /2: the newest trained sentiment folder's served graph."""
    from bench.host import latest

    source = latest(models, "sentiment")
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    files = {1: manifest["model_file"], 2: manifest["model_file"]}
    for version, model_file in files.items():
        folder = root / "sentiment" / str(version)
        folder.mkdir(parents=True)
        for name in (model_file, manifest["tokenizer_file"]):
            shutil.copyfile(source / name, folder / name)
        (folder / MANIFEST_FILE).write_text(json.dumps({
            **manifest, "version": version, "model_file": model_file,
            "variants": {}, "artifacts": {n: manifest["artifacts"][n]
                                          for n in (model_file, manifest["tokenizer_file"])}}))
    return files


class Verifier(threading.Thread):
    """One client asking for known texts; every answer must match its version's output."""

    def __init__(self, url: str, texts: list[str], expected: dict[int, list[dict]]) -> None:
        super().__init__(daemon=True)
        self.url, self.texts, self.expected = url, texts, expected
        self.stop, self.checked, self.wrong, self.failed = threading.Event(), 0, 0, 0
        self.by_version: dict[int, int] = {}

    def run(self) -> None:
        with httpx.Client(timeout=60) as c:
            i = 0
            while not self.stop.is_set():
                j, i = i % len(self.texts), i + 1
                r = c.post(f"{self.url}/predict", json={"inputs": [self.texts[j]]})
                if r.status_code != 200:
                    self.failed += 1
                    continue
                body = orjson.loads(r.content)
                got, want = body["predictions"][0], self.expected[body["version"]][j]
                ok = got["label"] == want["label"] and all(
                    abs(got["scores"][k] - v) <= TOLERANCE for k, v in want["scores"].items())
                self.checked += 1
                self.wrong += not ok
                self.by_version[body["version"]] = self.by_version.get(body["version"], 0) + 1
                time.sleep(0.02)


def run_swap(models: Path, clients: int, steady: float, seconds: float, every: float,
             out: Path) -> int:
    from bench.host import cpu_model

    root = Path(tempfile.mkdtemp(prefix="ortserve-swap-"))
    try:
        files = two_versions(models, root)
        texts = heldout_texts()[:50]
        expected = {v: ceilings.load(root / "sentiment" / str(v), f)(texts)
                    for v, f in files.items()}
        wl = text_workload("sentiment", 1, count=300)
        svc = Service(root, env={"ORTSERVE_ADMIN_KEYS": KEY})
        try:
            return _measure(svc, wl, clients, steady, seconds, every, texts, expected, out,
                            cpu_model(), files[1])
        finally:
            svc.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(svc: Service, wl, clients, steady, seconds, every, texts, expected, out,
             cpu, files_note: str) -> int:
    verifier = Verifier(svc.url, texts, expected)
    verifier.start()
    base = svc.measure(lambda: load.closed_loop(svc.url, wl.path, wl.bodies, clients, steady))
    print(f"steady: {base['rps']:.0f} req/s p99 {base['p99_ms']:.1f} ms errors "
          f"{base['errors']}", flush=True)
    swaps: list[dict] = []
    stop = threading.Event()

    def swapper() -> None:
        version = 1
        while not stop.wait(every):
            t0 = time.perf_counter()
            r = httpx.post(f"{svc.url}/repository/models/sentiment/load",
                           json={"version": version},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
            swaps.append({"to": version, "status": r.status_code,
                          "seconds": round(time.perf_counter() - t0, 2)})
            version = 2 if version == 1 else 1

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        during = svc.measure(lambda: load.closed_loop(svc.url, wl.path, wl.bodies, clients,
                                                      seconds))
    finally:
        stop.set()
        thread.join()
        verifier.stop.set()
        verifier.join()
    print(f"swaps: {during['rps']:.0f} req/s p99 {during['p99_ms']:.1f} ms errors "
          f"{during['errors']} ({len(swaps)} swaps)", flush=True)
    failed = during["errors"] + base["errors"] + verifier.failed
    ok = failed == 0 and verifier.wrong == 0 and all(s["status"] == 200 for s in swaps)
    loads = [s["seconds"] for s in swaps if s["to"] == 1]
    lines = [
        "## Version swaps under load", "",
        f"Generated by `python -m bench swap` on {cpu}, {clients} wrk connections, one tweet "
        f"per request; versions 1 and 2 are copies of the served sentiment graph "
        f"(`{files_note}`). {len(swaps)} swaps in {seconds:g} s, each {every:g} s after the "
        "previous one finished, through "
        "`POST /repository/models/sentiment/load`: a swap to version 1 loads and warms it "
        "beside version 2; a swap back drains and unloads it. Date: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        "| figure | steady state | during swaps |", "| --- | --- | --- |",
        f"| requests | {base['requests']} | {during['requests']} |",
        f"| failed (non-200 or socket error) | {base['errors']} | {during['errors']} |",
        f"| throughput | {base['rps']:.0f} req/s | {during['rps']:.0f} req/s |",
        f"| p50 / p99 latency | {base['p50_ms']:.1f} / {base['p99_ms']:.1f} ms | "
        f"{during['p50_ms']:.1f} / {during['p99_ms']:.1f} ms |",
        f"| peak server RSS | {base['server_rss_mb']:.0f} MB (version 2 only) | "
        f"{during['server_rss_mb']:.0f} MB (two versions loaded at times) |", "",
        f"Answers checked against each version's in-process output (within {TOLERANCE:g}): "
        f"{verifier.checked} ({', '.join(f'version {v}: {n}' for v, n in sorted(verifier.by_version.items()))}), "  # noqa: E501
        f"{verifier.wrong} wrong, {verifier.failed} failed. A load of version 1 took "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} s (verify, session, "
        f"warm-up) while version 2 kept serving; that work shares the two cores with the "
        "requests, which is what raises p99 during swaps. "
        f"Verdict: **{'pass' if ok else 'FAIL'}**.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    replace_section(out / "benchmarks.md", "swap", "\n".join(lines))
    print(json.dumps({"steady": base, "during": during, "swaps": swaps,
                      "checked": verifier.checked, "wrong": verifier.wrong}, indent=1))
    return 0 if ok else 1
