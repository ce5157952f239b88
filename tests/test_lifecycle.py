"""The service as a real uvicorn process: drain on SIGTERM, disconnects, slow neighbours,
several worker processes behind one /metrics."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx

from tests.builders import add_slow_model
from tests.servers import ServiceProcess, metric_value, wait_until

ROW = [0.5, 0.1, 0.2, 0.3]
# The slow model's pace must not depend on the host's cores or GPU: one run at a time, on
# one CPU thread (at least a tenth of a second per run on any core).
ONE_CPU_INSTANCE = {"ORTSERVE_DEVICE": "cpu", "ORTSERVE_INSTANCES": "1",
                    "ORTSERVE_INTRA_OP_THREADS": "1"}
SLOW_QUEUED = 'ortserve_queue_depth{model="slow"'
SLOW_RUNS = 'ortserve_batch_size_count{model="slow",version="1"}'


def scrape(svc: ServiceProcess) -> str:
    return httpx.get(f"{svc.url}/metrics", timeout=10).text


def slow_accounted(svc: ServiceProcess) -> float:
    """Slow rows queued plus batches run, from one scrape: while there is queued work one
    batch runs (the next starts as one ends), so this grows only by rows newly queued."""
    text = scrape(svc)
    return metric_value(text, SLOW_QUEUED) + metric_value(text, SLOW_RUNS)


def _classify(exc: httpx.TransportError) -> str:
    """A connection the server never accepted is 'refused'; an error once the request
    was sent (read error, reset, protocol error, timeout) means accepted work was 'lost'."""
    return "refused" if isinstance(exc, httpx.ConnectError) else "lost"


def test_sigterm_drains_accepted_work_and_exits_zero(repo, tmp_path):
    """Clients behind a balancer that honours readiness: nothing they sent is lost."""
    # Slow requests of 8 runs each (a quarter second a run here) are still queued when the
    # drain delay ends. The delay is the time the balancer below has to notice readiness
    # 503 (polling every 50 ms): 0.3 s was not enough on a host with 10 runnable threads
    # per core, and a request it then let through was answered 503 shutting_down.
    add_slow_model(repo, max_batch_size=1, size=2048)
    svc = ServiceProcess(repo, tmp_path / "log", ORTSERVE_DRAIN_DELAY_S="3",
                         ORTSERVE_SHUTDOWN_GRACE_S="60", **ONE_CPU_INSTANCE).wait_ready()
    results: list[tuple] = []
    removed, stop = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        rows = [[i / 10, 1, 2, 3] for i in range(8)]
        expected = {}
        for model in ("slow", "tabular", "sentiment"):
            inputs = ["good day", "bad movie"] if model == "sentiment" else rows
            r = httpx.post(f"{svc.url}/predict", json={"model": model, "inputs": inputs},
                           timeout=30)
            expected[model] = (inputs, r.json()["predictions"])

        def balancer() -> None:  # takes the replica out once readiness is 503
            while not stop.is_set():
                try:
                    if httpx.get(f"{svc.url}/health/ready", timeout=2).status_code == 503:
                        removed.set()
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)

        def client(model: str, v2: bool = False) -> None:
            inputs, want = expected[model]
            # the Open Inference Protocol's form of the same request (same drain)
            url, body = ((f"{svc.url}/v2/models/{model}/infer", {"inputs": [{
                "name": "features", "datatype": "FP32", "shape": [len(inputs), 4],
                "data": inputs}]}) if v2 else
                (f"{svc.url}/predict", {"model": model, "inputs": inputs}))
            labels = [p["label"] for p in want]
            with httpx.Client(timeout=60) as c:
                while not removed.is_set() and not stop.is_set():
                    try:
                        r = c.post(url, json=body)
                    except httpx.TransportError as exc:
                        results.append((_classify(exc), repr(exc)))
                        continue
                    if r.status_code != 200:
                        results.append((r.status_code, r.text))
                    elif v2:
                        got = next(o for o in r.json()["outputs"] if o["name"] == "label")
                        results.append((200, got["data"] == labels))
                    else:
                        results.append((200, r.json()["predictions"] == want))

        threads = [threading.Thread(target=client, args=(m,))
                   for m in ("slow", "slow", "slow", "tabular", "sentiment", "sentiment")]
        threads += [threading.Thread(target=client, args=(m, True)) for m in ("slow", "tabular")]
        threads.append(threading.Thread(target=balancer))
        for t in threads:
            t.start()
        # SIGTERM once clients have been answered and two slow requests' rows are queued
        wait_until(lambda: len(results) > 10 and metric_value(scrape(svc), SLOW_QUEUED) >= 12,
                   60, "answers, and slow work queued")
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(60)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        svc.terminate()
    assert code == 0, svc.logs()[-3000:]
    assert removed.is_set()
    assert len(results) > 10
    bad = [r for r in results if r != (200, True)]
    assert bad == [], bad[:5]
    assert "readiness is now 503" in svc.logs()


def test_client_gone_while_queued_is_dropped_before_it_runs(repo, tmp_path):
    add_slow_model(repo, max_batch_size=1, size=2048)
    # one instance: the queue depth the test follows does not depend on the core count
    svc = ServiceProcess(repo, tmp_path / "log", **ONE_CPU_INSTANCE).wait_ready()
    try:
        base = metric_value(scrape(svc), SLOW_RUNS)
        codes = []

        def busy() -> None:
            r = httpx.post(f"{svc.url}/predict", json={"model": "slow", "inputs": [ROW] * 12},
                           timeout=60)
            codes.append(r.status_code)

        # one request of twelve rows at batch size 1: twelve model runs in a row
        thread = threading.Thread(target=busy)
        thread.start()
        wait_until(lambda: metric_value(scrape(svc), SLOW_QUEUED) >= 3, 60,
                   "the busy request queued")
        body = json.dumps({"model": "slow", "inputs": [ROW]}).encode()
        for _ in range(4):
            queued = slow_accounted(svc)
            s = socket.create_connection(("127.0.0.1", svc.port))
            s.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                      b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait_until(lambda q=queued: slow_accounted(svc) == q + 1, 60, "the request queued")
            s.close()
        assert metric_value(scrape(svc), SLOW_QUEUED) >= 5  # all four behind busy rows
        thread.join(60)
        assert codes == [200]
        wait_until(lambda: metric_value(scrape(svc), 'ortserve_requests_total{api="v1",'
                                        'model="slow",outcome="cancelled"') == 4, 60,
                   "4 cancelled")
        # queued after everything else: once it is answered, every row before it ran or
        # was dropped
        r = httpx.post(f"{svc.url}/predict", json={"model": "slow", "inputs": [ROW]}, timeout=60)
        assert r.status_code == 200
        assert metric_value(scrape(svc), SLOW_RUNS) - base == 12 + 1  # the busy rows, this one
        lines = [json.loads(ln) for ln in svc.logs().splitlines() if ln.startswith("{")]
        statuses = [ln["status"] for ln in lines
                    if ln["logger"] == "ortserve.access" and ln.get("path") == "/predict"]
        assert statuses.count(499) == 4 and 503 not in statuses  # cancelled, not unavailable
    finally:
        svc.terminate()


def test_a_slow_model_does_not_hold_up_the_others(repo, tmp_path):
    # six runs of a quarter of a second or more (a tenth on the fastest cores) in a row
    add_slow_model(repo, max_batch_size=1, size=2048)
    svc = ServiceProcess(repo, tmp_path / "log", **ONE_CPU_INSTANCE).wait_ready()
    done: list[tuple[str, float]] = []
    try:
        start = threading.Barrier(6, timeout=60)

        def call(model: str, inputs, together: threading.Barrier | None = None):
            with httpx.Client(timeout=60) as c:
                if together is not None:  # connected first: the six arrive at once
                    c.get(f"{svc.url}/health/live")
                    together.wait()
                r = c.post(f"{svc.url}/predict", json={"model": model, "inputs": inputs})
            assert r.status_code == 200
            done.append((model, time.monotonic()))

        slow = [threading.Thread(target=call, args=("slow", [ROW], start)) for _ in range(6)]
        for t in slow:
            t.start()
        # the fast requests start once the six slow ones are queued or running
        wait_until(lambda: slow_accounted(svc) >= 5, 60, "the slow requests queued")
        fast = [threading.Thread(target=call, args=(m, i)) for m, i in
                [("tabular", [ROW]), ("sentiment", ["good"]), ("regression", [ROW])] * 2]
        for t in fast:
            t.start()
        for t in fast + slow:
            t.join(60)
    finally:
        svc.terminate()
    order = [m for m, _ in sorted(done, key=lambda x: x[1])]
    assert len(order) == 12
    # every fast request finished before the slow model worked through its queue
    assert order[-1] == "slow"
    last_fast = max(i for i, m in enumerate(order) if m != "slow")
    assert order[last_fast + 1:].count("slow") >= 2


def test_two_workers_report_the_whole_service_in_metrics(repo, tmp_path):
    svc = ServiceProcess(repo, tmp_path / "log", workers=2,
                         PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")).wait_ready()
    try:
        def serving_pids() -> set:
            lines = [json.loads(ln) for ln in svc.logs().splitlines() if ln.startswith("{")]
            return {ln["pid"] for ln in lines if ln["message"].startswith("serving ")}

        # readiness answers as soon as one worker is up; the other may still be loading,
        # and the kernel would then hand every connection to the first
        wait_until(lambda: len(serving_pids()) == 2, 60, "both workers serving")
        n = 96

        def send(i: int) -> None:
            with httpx.Client(timeout=30) as c:
                r = c.post(f"{svc.url}/predict", json={"model": "tabular",
                                                       "inputs": [[i, 0, 0, 0]]})
                assert r.status_code == 200

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        lines = [json.loads(ln) for ln in svc.logs().splitlines() if ln.startswith("{")]
        pids = {ln["pid"] for ln in lines if "ready on" in ln["message"]}
        served_by = {ln["pid"] for ln in lines
                     if ln["logger"] == "ortserve.access" and ln.get("path") == "/predict"}
        key = 'ortserve_requests_total{api="v1",model="tabular",outcome="success"'
        # every scrape, whichever worker answers it, sums over both workers
        for _ in range(6):
            text = httpx.get(f"{svc.url}/metrics", timeout=10,
                             headers={"Connection": "close"}).text
            assert metric_value(text, key) == n
        assert len(pids) == 2
        assert served_by == pids  # both workers answered predictions
    finally:
        assert svc.terminate() in (0, -15)
