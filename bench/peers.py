"""ortserve beside the servers users compare it with: `python -m bench peers`.

Every peer serves the same sentiment model file with the same tokenizer (bench/peers/
sentiment.py: `tokenizers`, one ONNX Runtime session with default options, the batch padded
to its longest text), configured as its own docs show for dynamic batching on a CPU: at most
64 texts a batch, a 5 ms batching window where the server has one. Each peer runs from its own
virtual environment, `.peers/<name>`, made on first use with the pinned versions below (an
optional extra: never part of `make test` or CI). The load is the same wrk client and the same
held-out tweets (their real mix of lengths) for every server, one text per request, at c=1
and c=64; server CPU seconds and RSS are summed over the server's whole process tree.

Writes the `peers` section of docs/benchmarks.md. A peer that does not install or start is
listed with the reason instead of figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import load
from bench.cluster import free_port
from bench.sections import replace_section
from bench.server import ROOT, Service, cpu_seconds, rss_mb
from bench.workloads import heldout_texts, text_workload

HERE = ROOT / "bench" / "peer_servers"
VENVS = ROOT / ".peers"
ORT = "onnxruntime==1.32.0"


def _v2(text: str, shape: list[int]) -> dict:
    return {"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": [text]}]}


@dataclass
class Peer:
    name: str
    packages: list[str]
    command: Callable[[Path, int, Path], list[str]]  # (venv, port, scratch dir) -> argv
    path: str
    body: Callable[[str], dict]
    config: str  # how it is configured, for the report
    files: Callable[[int, Path], None] = field(default=lambda port, scratch: None)


def _mlserver_files(port: int, scratch: Path) -> None:
    (scratch / "settings.json").write_text(json.dumps(
        {"http_port": port, "grpc_port": port + 1, "metrics_port": port + 2}))
    (scratch / "model-settings.json").write_text(json.dumps(
        {"name": "sentiment", "implementation": "runtime.SentimentRuntime",
         "max_batch_size": 64, "max_batch_time": 0.005}))


PEERS = [
    Peer("LitServe", ["litserve==0.2.19"],
         lambda venv, port, _: [str(venv / "bin/python"), "serve_litserve.py", str(port)],
         "/predict", lambda t: {"text": t},
         "LitAPI(max_batch_size=64, batch_timeout=0.005), LitServer(accelerator='cpu', "
         "workers_per_device=1)"),
    Peer("BentoML", ["bentoml==1.4.40"],
         lambda venv, port, _: [str(venv / "bin/bentoml"), "serve", "serve_bentoml:Sentiment",
                                "--host", "127.0.0.1", "--port", str(port)],
         "/predict", lambda t: {"texts": [t]},
         "@bentoml.service(workers=1), @bentoml.api(batchable=True, max_batch_size=64, "
         "max_latency_ms=1000)"),
    # uvloop 0.22+ leaves MLServer 1.7.1's inference-pool worker without an event loop
    # ("There is no current event loop in thread 'MainThread'"): the model never loads
    Peer("MLServer", ["mlserver==1.7.1", "uvloop==0.21.0"],
         lambda venv, port, scratch: [str(venv / "bin/mlserver"), "start", str(scratch)],
         "/v2/models/sentiment/infer", lambda t: _v2(t, [1]),
         "custom runtime (MLModel), V2 REST, adaptive batching max_batch_size=64, "
         "max_batch_time=0.005, default parallel workers (uvloop pinned to 0.21.0)",
         _mlserver_files),
    Peer("Ray Serve", ["ray[serve]==2.60.0"],
         lambda venv, port, _: [str(venv / "bin/python"), "serve_rayserve.py", str(port)],
         "/", lambda t: {"text": t},
         "one replica, @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005), "
         "max_ongoing_requests=256"),
    Peer("PyTriton", ["nvidia-pytriton==0.7.0"],
         lambda venv, port, _: [str(venv / "bin/python"), "serve_pytriton.py", str(port)],
         "/v2/models/sentiment/infer", lambda t: _v2(t, [1, 1]),
         "Triton core with a Python model, @batch, DynamicBatcher(max_queue_delay_microseconds"
         "=5000), max_batch_size=64"),
]


def ensure_venv(name: str, packages: list[str]) -> Path:
    """`.peers/<name>` with exactly these pinned packages, made once (remade when the list
    changes)."""
    venv = VENVS / name
    marker = venv / "installed.json"
    want = sorted(packages)
    if marker.exists() and json.loads(marker.read_text()) == want:
        return venv
    print(f"  installing {', '.join(want)} into {venv.relative_to(ROOT)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", *want],
                         capture_output=True, text=True)
    if pip.returncode:
        raise RuntimeError(f"pip install failed: {pip.stderr[-400:]}")
    marker.write_text(json.dumps(want))
    return venv


def version(venv: Path, package: str) -> str:
    out = subprocess.run([str(venv / "bin/pip"), "show", package], capture_output=True,
                         text=True)
    return next((ln.split(":", 1)[1].strip() for ln in out.stdout.splitlines()
                 if ln.startswith("Version:")), "?")


class PeerProcess:
    """A peer server started in its own session (process group), stopped by its id."""

    def __init__(self, peer: Peer, venv: Path, models: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scratch = Path(tempfile.mkdtemp(prefix="ortserve-peer-"))
        peer.files(self.port, self.scratch)
        env = {**os.environ, "PEER_MODEL_DIR": str(models.resolve()),
               "PYTHONPATH": f"{HERE}:{HERE / 'mlserver'}", "HF_HUB_OFFLINE": "1",
               "RAY_USAGE_STATS_ENABLED": "0", "BENTOML_DO_NOT_TRACK": "True",
               "LITSERVE_DISABLE_TELEMETRY": "1"}
        self.log = (self.scratch / "server.log").open("w")
        self.proc = subprocess.Popen(peer.command(venv, self.port, self.scratch), cwd=HERE,
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        body = peer.body("I love this!")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.post(self.url + peer.path, json=body, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"not answering after 240 s: {self.tail()}")

    def tail(self) -> str:
        """The server log's last error line (Python's or the server's), else its end."""
        self.log.flush()
        text = (self.scratch / "server.log").read_text()
        errors = [ln for ln in text.replace("\\n", "\n").splitlines()
                  if re.search(r"\w+(Error|Exception): ", ln)]
        return (errors[-1].strip() if errors else text[-300:]).replace("\n", " ")[:300]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def _measure(pid: int, url: str, path: str, bodies: list[bytes], clients: int,
             seconds: float) -> dict:
    cpu0 = cpu_seconds(pid)
    r = load.closed_loop(url, path, bodies, clients, seconds)
    r["server_cpu_s"] = cpu_seconds(pid) - cpu0
    r["server_rss_mb"] = rss_mb(pid)
    return r


def _row(server: str, ver: str, config: str, pid: int, url: str, path: str,
         bodies: list[bytes], seconds: float) -> dict:
    row = {"server": server, "version": ver, "config": config, "idle_rss_mb": rss_mb(pid)}
    # a short untimed run first: lazy imports, first batches, the session's first runs
    load.closed_loop(url, path, bodies, 8, 2)
    for clients in (1, 64):
        r = _measure(pid, url, path, bodies, clients, seconds)
        row[f"c{clients}"] = {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "errors",
                                                "server_cpu_s", "server_rss_mb")}
        row[f"c{clients}"]["cpu_ms_per_request"] = (r["server_cpu_s"] * 1000
                                                    / max(r["requests"], 1))
        print(f"  {server} c={clients}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
              f"errors {r['errors']}, CPU {row[f'c{clients}']['cpu_ms_per_request']:.2f} "
              "ms/request", flush=True)
    return row


def run_peers(models: Path, seconds: float, only: list[str] | None, out: Path) -> int:
    from bench.host import cpu_model, latest

    folder = latest(models, "sentiment")
    texts = heldout_texts()
    order = random.Random(0).sample(texts, 500)
    rows, failed = [], []
    print("ortserve", flush=True)
    wl = text_workload("sentiment", 1)
    svc = Service(models, env={"ORTSERVE_MODELS": "sentiment"})
    try:
        info = httpx.get(f"{svc.url}/models/sentiment").json()
        rows.append(_row("ortserve", "this tree", f"defaults (variant {info.get('variant')}, "
                         f"{info.get('instances')} instances)", svc.proc.pid, svc.url, wl.path,
                         wl.bodies, seconds))
    finally:
        svc.stop()
    manifest = json.loads((folder / "model.json").read_text())
    for peer in PEERS:
        if only and peer.name.lower().replace(" ", "") not in only:
            continue
        print(peer.name, flush=True)
        try:
            venv = ensure_venv(peer.name.lower().replace(" ", ""),
                               peer.packages + [ORT, "tokenizers", "numpy"])
            proc = PeerProcess(peer, venv, folder)
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            failed.append((peer.name, f"{type(exc).__name__}: {exc}"[:400]))
            print(f"  failed: {failed[-1][1]}", flush=True)
            continue
        try:
            bodies = [json.dumps(peer.body(t)).encode() for t in order]
            pkg = peer.packages[0].split("==")[0].split("[")[0]
            rows.append(_row(peer.name, version(venv, pkg), peer.config, proc.proc.pid,
                             proc.url, peer.path, bodies, seconds))
        except Exception as exc:  # noqa: BLE001
            failed.append((peer.name, f"{type(exc).__name__}: {exc}"[:400]))
            print(f"  failed: {failed[-1][1]}", flush=True)
        finally:
            proc.stop()
    (ROOT / "bench" / "results" / "peers.json").write_text(json.dumps(
        {"rows": rows, "failed": failed}, indent=1))
    write(rows, failed, seconds, manifest["model_file"], cpu_model(), out)
    return 0


def write(rows: list[dict], failed: list, seconds: float, model_file: str, machine: str,
          out: Path) -> None:
    lines = [
        "## Peers", "",
        f"Generated by `python -m bench peers` ({seconds:g} s per row; every server serves "
        f"sentiment's `{model_file}` with the same tokenizer; one held-out tweet per request, "
        "their real mix of lengths; wrk, 1 thread, closed loop, on the same cores as the "
        "server). Server CPU and RSS are summed over each server's process tree.", "",
        f"- machine: {machine}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- ONNX Runtime {ORT.split('==')[1]} in every environment; every peer's handler is "
        "bench/peer_servers/sentiment.py (`tokenizers`, one session with ONNX Runtime's "
        "default options, the batch padded to its longest text)", "",
        "| server | version | c=1 p50 ms | c=1 req/s | c=64 req/s | c=64 p50 ms | "
        "c=64 p99 ms | errors | server CPU ms per request (c=64) | RSS under load MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        a, b = r["c1"], r["c64"]
        lines.append(f"| {r['server']} | {r['version']} | {a['p50_ms']:.2f} | {a['rps']:.0f} | "
                     f"{b['rps']:.0f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | "
                     f"{a['errors'] + b['errors']} | {b['cpu_ms_per_request']:.2f} | "
                     f"{b['server_rss_mb']:.0f} |")
    lines += ["", "How each server was configured (bench/peer_servers/):", ""]
    lines += [f"- {r['server']}: {r['config']}" for r in rows]
    if failed:
        lines += ["", "Not measured:", ""] + [f"- {n}: {why}" for n, why in failed]
    ours = next((r for r in rows if r["server"] == "ortserve"), None)
    others = [r for r in rows if r["server"] != "ortserve"]
    if ours and others:
        behind = [f"{r['server']} ({what})" for r in others for what, worse in (
            ("c=1 p50", r["c1"]["p50_ms"] < ours["c1"]["p50_ms"]),
            ("c=64 req/s", r["c64"]["rps"] > ours["c64"]["rps"]),
            ("CPU per request", r["c64"]["cpu_ms_per_request"]
             < ours["c64"]["cpu_ms_per_request"]),
            ("RSS", r["c64"]["server_rss_mb"] < ours["c64"]["server_rss_mb"])) if worse]
        lines += ["", "Where ortserve is behind in this run: "
                  + (", ".join(behind) if behind else "nowhere") + "."]
    replace_section(out / "benchmarks.md", "peers", "\n".join(lines))
