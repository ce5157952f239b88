"""Three replicas on loopback behind a real HAProxy (deploy/haproxy/haproxy.cfg) that
health-checks /health/ready: a rolling restart under load fails nothing, a replica killed
outright costs at most the requests it held, and a real Prometheus scraping the three
evaluates the Kubernetes autoscaling query above its threshold under overload only."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.cluster import Haproxy, Prometheus, wait_until
from bench.scaleout import autoscaling_query
from tests.builders import build_repository
from tests.servers import PredictLoad, ServiceProcess, free_port, predictions

CLIENTS = 16
ROWS = [[0.5, -1.0, 2.0, 0.25]]
TEXTS = ["good great day"]


@dataclass
class Cluster:
    repo: Path
    ports: list[int]
    replicas: list[ServiceProcess] = field(default_factory=list)
    lb: Haproxy | None = None

    def start(self, i: int, tmp_path: Path, generation: int) -> ServiceProcess:
        return ServiceProcess(self.repo, tmp_path / f"r{i}-{generation}.log",
                              port=self.ports[i], ORTSERVE_DRAIN_DELAY_S="1").wait_ready()

    def load(self) -> PredictLoad:
        assert self.lb is not None
        jobs = [(m, inputs, {1: predictions(self.lb.url, m, inputs)})
                for m, inputs in (("sentiment", TEXTS), ("tabular", ROWS))]
        return PredictLoad(self.lb.url, jobs, CLIENTS)


@contextmanager
def cluster(tmp_path: Path):
    """Three replicas of the tiny models behind the balancer; all stopped afterwards, also
    when one of them fails to start."""
    ports = [free_port() for _ in range(3)]
    c = Cluster(build_repository(tmp_path / "models"), ports)
    try:
        for i in range(len(ports)):
            c.replicas.append(c.start(i, tmp_path, 0))
        c.lb = Haproxy(tmp_path, ports)
        yield c
    finally:
        if c.lb is not None:
            c.lb.stop()
        for r in c.replicas:
            r.terminate()


def test_rolling_restart_behind_haproxy_fails_nothing(tmp_path):
    with cluster(tmp_path) as c:
        with c.load() as load:
            for i in range(len(c.ports)):
                before = load.answered()
                c.replicas[i].proc.send_signal(signal.SIGTERM)
                assert c.replicas[i].proc.wait(60) == 0, c.replicas[i].logs()[-2000:]
                c.replicas[i].terminate()
                c.replicas[i] = c.start(i, tmp_path, 1)
                # back in the balancer (two good checks) before the next one goes
                wait_until(lambda i=i: c.lb.server_states()[f"r{i}"] == "UP", 60,
                           f"replica {i} up in the balancer")
                assert load.answered() > before  # traffic kept flowing meanwhile
        assert load.failures == [], load.failures[:5]
        assert load.answered() > 100
        for r in c.replicas:  # every restarted replica took traffic again
            assert '"path":"/predict"' in r.logs().replace(" ", "")


def test_a_killed_replica_costs_at_most_the_requests_it_held(tmp_path):
    with cluster(tmp_path) as c, c.load() as load:
        wait_until(lambda: load.answered() >= 3 * CLIENTS, 60, "traffic flowing")
        c.replicas[0].proc.kill()
        # the window: until the balancer's checks take it out
        wait_until(lambda: c.lb.server_states()["r0"] == "DOWN", 60, "replica 0 down")
        failed_in_window = load.failed()
        before = load.answered()
        wait_until(lambda: load.answered() >= before + 10 * CLIENTS, 60, "traffic flowing")
        assert load.failed() == failed_in_window  # none after the window
    # connection failures are retried on another replica; what can fail is what the
    # killed replica held when it died: at most one request per client
    print(f"SIGKILL of 1 of 3 replicas: {failed_in_window} failed, {load.answered()} answered")
    assert failed_in_window <= CLIENTS, load.failures[:5]


def test_the_autoscaling_query_crosses_its_threshold_only_under_overload(tmp_path):
    """What KEDA would see: deploy/kubernetes/components/keda's query (its [1m] range cut
    to 5 s), evaluated by Prometheus over the three replicas, divided by the replica count
    as KEDA's AverageValue does, against the manifest's threshold."""
    query, threshold = autoscaling_query("5s")
    with cluster(tmp_path) as c:
        prom = Prometheus(tmp_path, c.ports)
        try:
            wait_until(lambda: prom.targets_up() == 3, 60, "Prometheus scraping 3 replicas")
            # one whole window of scrapes without traffic (every second, over 5 s)
            wait_until(lambda: (prom.query('min(count_over_time(up{job="ortserve"}[5s]))')
                                or 0) >= 5, 60, "a whole window of idle scrapes")
            idle = (prom.query(query) or 0.0) / 3
            assert idle < 1 < threshold
            texts = TEXTS * 16  # 24 clients x 16 texts: far more inputs than 3 x threshold
            job = ("sentiment", texts, {1: predictions(c.lb.url, "sentiment", texts)})
            with PredictLoad(c.lb.url, [job], 24) as load:
                wait_until(lambda: (prom.query(query) or 0.0) / 3 > threshold, 60,
                           f"{query} / 3 above {threshold}")
            assert load.failures == []
            print(f"autoscaling signal per replica: idle {idle:.2f}, overloaded > {threshold}")
        finally:
            prom.stop()
