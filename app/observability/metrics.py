"""Every Prometheus metric of the service, defined once, with its labels.

Labels are per model and version (and outcome/provider); none takes per-input values.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from app.observability.context import PROTOCOLS, protocol

MS_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
              0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DIFF_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
MODEL = ("model", "version")
# The API a request came through (the `api` label): the request context's protocol
APIS = PROTOCOLS

OUTCOMES = ("success", "client_error", "server_error", "rejected", "timeout", "cancelled")


class Metrics:
    """The service's metrics on their own registry (one per app instance)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        if registry is None and not multiprocess_enabled():
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "ortserve_requests", "Predict requests by API (v1, v2, grpc) and outcome "
            "(success, client_error, server_error, rejected, timeout, cancelled).",
            ("api", *MODEL, "outcome"), registry=r)
        self.inputs = Counter("ortserve_inputs", "Inputs (texts or rows) predicted.", MODEL,
                              registry=r)
        self.request_latency = Histogram(
            "ortserve_request_duration_seconds", "Predict request latency in the server, by "
            "API.", ("api", *MODEL), buckets=MS_BUCKETS, registry=r)
        self.input_seconds = Counter(
            "ortserve_input_seconds", "Inputs x seconds each request spent in the model path "
            "(admission to answer); its rate is the time-averaged number of inputs in flight "
            "(Little's law), the autoscaling signal of deploy/kubernetes/.", MODEL, registry=r)
        self.queue_wait = Histogram(
            "ortserve_queue_wait_seconds", "Time from enqueue to the first batch that ran "
            "the request.", MODEL, buckets=MS_BUCKETS, registry=r)
        self.inference = Histogram(
            "ortserve_inference_duration_seconds", "Time of one model run (a batch).",
            MODEL, buckets=MS_BUCKETS, registry=r)
        self.batch_size = Histogram("ortserve_batch_size", "Inputs per model run.", MODEL,
                                    buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "ortserve_batch_tokens", "Padded tokens (longest x count) per model run; 1 per "
            "row for tabular models.", MODEL, buckets=TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("ortserve_queue_depth", "Inputs waiting in the model's queue.",
                                 MODEL, registry=r, multiprocess_mode="livesum")
        self.ready = Gauge("ortserve_model_ready", "1 when the model is loaded and warmed.",
                           MODEL, registry=r, multiprocess_mode="livemax")
        self.info = Gauge(
            "ortserve_model_info", "Constant 1; labels say which provider really runs the "
            "model and the SHA-256 of its file.",
            (*MODEL, "kind", "variant", "provider", "requested_provider", "sha256"),
            registry=r, multiprocess_mode="livemax")
        self.variant_rate = Gauge(
            "ortserve_model_variant_rate", "Inputs per second of each eligible variant on the "
            "warm-up batches, measured at load when the served variant was chosen by timing "
            "(ORTSERVE_MODEL_VARIANT=auto); ortserve_model_info says which one serves.",
            (*MODEL, "variant"), registry=r, multiprocess_mode="livemax")
        self.load_failures = Counter(
            "ortserve_model_load_failures", "Versions that failed to load, by reason (verify: "
            "manifest, file or hash; signature: missing, untrusted or not matching the files; "
            "session; outputs; warmup; device; memory).",
            ("model", "reason"), registry=r)
        self.rate_limit_backend_errors = Counter(
            "ortserve_rate_limit_backend_errors", "Rate-limit checks that could not reach "
            "Redis (requests allowed or refused per ORTSERVE_RATE_LIMIT_FAIL_OPEN).",
            registry=r)
        self.auth_failures = Counter(
            "ortserve_auth_failures", "Calls refused for their key, by API and reason "
            "(missing_key, wrong_key; throttled: refused before the key was looked at, the "
            "client address having failed too often).", ("api", "reason"), registry=r)
        self.explain_requests = Counter(
            "ortserve_explain_requests", "Explain requests by outcome (success, client_error, "
            "server_error, rejected, timeout, cancelled).", (*MODEL, "outcome"), registry=r)
        self.explain_evaluations = Counter(
            "ortserve_explain_evaluations", "Model inputs run for explanations (coalitions x "
            "background rows for feature models).", MODEL, registry=r)
        self.explain_latency = Histogram(
            "ortserve_explain_duration_seconds", "Explain request latency in the server.",
            MODEL, buckets=MS_BUCKETS, registry=r)
        self.explain_in_progress = Gauge(
            "ortserve_explain_in_progress", "Explain requests being computed (bounded by "
            "ORTSERVE_EXPLAIN_MAX_CONCURRENT).", registry=r, multiprocess_mode="livesum")
        pair = ("model", "stable", "candidate")
        self.rollout_canary_percent = Gauge(
            "ortserve_rollout_canary_percent", "Share (%) of the model's requests without a "
            "version that the rollout's candidate answers.", pair, registry=r,
            multiprocess_mode="livemax")
        self.rollout_shadow_percent = Gauge(
            "ortserve_rollout_shadow_percent", "Share (%) of the stable version's answers "
            "also run on the candidate and compared.", pair, registry=r,
            multiprocess_mode="livemax")
        self.rollout_samples = Counter(
            "ortserve_rollout_shadow_samples", "Shadowed inputs compared between the stable "
            "version and the candidate.", pair, registry=r)
        self.rollout_agreements = Counter(
            "ortserve_rollout_shadow_agreements", "Shadowed inputs (classifiers) on whose label "
            "the candidate agrees with the stable version.", pair, registry=r)
        self.rollout_confusion = Counter(
            "ortserve_rollout_shadow_labels", "Shadowed inputs by (stable label, candidate "
            "label): the confusion matrix between the versions.",
            (*pair, "stable_label", "candidate_label"), registry=r)
        self.rollout_difference = Histogram(
            "ortserve_rollout_shadow_difference", "Per shadowed input: classifiers, |score of "
            "the stable version's label| between the versions; regressors, |value| "
            "difference.", pair, buckets=DIFF_BUCKETS, registry=r)
        self.rollout_relative_difference = Histogram(
            "ortserve_rollout_shadow_relative_difference", "Regressors: |value difference| "
            "over |stable value| per shadowed input.", pair, buckets=DIFF_BUCKETS,
            registry=r)
        self.rollout_shadow_errors = Counter(
            "ortserve_rollout_shadow_errors", "Shadowed inputs the candidate failed on (every "
            "input of a shadowed request it failed).",
            pair, registry=r)
        self.rollout_shadow_dropped = Counter(
            "ortserve_rollout_shadow_dropped", "Shadowed inputs dropped before they ran (the "
            "shadow bound or the candidate's background lane was full, or they waited too "
            "long): shadow work is what gives way under load.", pair, registry=r)
        self.rollout_decisions = Counter(
            "ortserve_rollout_decisions", "Rollouts ended, by decision (promote, rollback) "
            "and reason (gate_met, forced, a failed criterion, manual).",
            ("model", "decision", "reason"), registry=r)
        self._per_version = (self.inputs, self.input_seconds, self.queue_wait, self.inference,
                             self.batch_size,
                             self.batch_tokens, self.queue_depth, self.ready,
                             self.explain_evaluations, self.explain_latency)

    def forget(self, model: str, version: str) -> None:
        """Remove an unloaded version's series (its info series is removed by its owner).
        In multiprocess mode the files of the workers keep them until restart."""
        for metric in self._per_version:
            try:
                metric.remove(model, version)
            except KeyError:
                pass
        for api in APIS:
            try:
                self.request_latency.remove(api, model, version)
            except KeyError:
                pass
            for outcome in OUTCOMES:
                try:
                    self.requests.remove(api, model, version, outcome)
                except KeyError:
                    pass
        for outcome in OUTCOMES:
            try:
                self.explain_requests.remove(model, version, outcome)
            except KeyError:
                pass

    def render(self) -> bytes:
        if multiprocess_enabled():
            # Every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR; any
            # worker answering a scrape reports the sum over all of them.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)



class RequestObserver:
    """Binds the request metrics of one model once, not per request (one child per API and
    outcome; every one is exported from the start, at 0)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._requests = {(a, o): metrics.requests.labels(a, model, version, o)
                          for a in APIS for o in OUTCOMES}
        self._latency = {a: metrics.request_latency.labels(a, model, version) for a in APIS}
        self._inputs = metrics.inputs.labels(model, version)
        self._input_seconds = metrics.input_seconds.labels(model, version)
        self._queue_wait = metrics.queue_wait.labels(model, version)

    def predicted(self, inputs: int, queue_wait_s: float) -> None:
        self._inputs.inc(inputs)
        self._queue_wait.observe(queue_wait_s)

    def request_done(self, outcome: str, seconds: float, inputs: int = 0) -> None:
        """One request answered (or refused) by this version, counted under the protocol of
        the request being answered (the request context)."""
        api = protocol()
        self._requests[api, outcome].inc()
        self._latency[api].observe(seconds)
        if inputs:
            self._input_seconds.inc(inputs * seconds)


class ExplainObserver:
    """The explanation metrics of one model version."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._requests = {o: metrics.explain_requests.labels(model, version, o)
                          for o in OUTCOMES}
        self._evaluations = metrics.explain_evaluations.labels(model, version)
        self._latency = metrics.explain_latency.labels(model, version)
        self.in_progress = metrics.explain_in_progress

    def evaluated(self, inputs: int) -> None:
        self._evaluations.inc(inputs)

    def done(self, outcome: str, seconds: float) -> None:
        self._requests[outcome].inc()
        self._latency.observe(seconds)


class RolloutObserver:
    """The series of one rollout (model, stable, candidate), bound once; `forget` removes
    them when the rollout ends, so ended rollouts leave no series behind."""

    def __init__(self, metrics: Metrics, model: str, stable: int, candidate: int) -> None:
        self.metrics = metrics
        self.labels = (model, str(stable), str(candidate))
        m, labels = metrics, self.labels
        self._samples = m.rollout_samples.labels(*labels)
        self._agreements = m.rollout_agreements.labels(*labels)
        self._difference = m.rollout_difference.labels(*labels)
        self._relative = m.rollout_relative_difference.labels(*labels)
        self._errors = m.rollout_shadow_errors.labels(*labels)
        self._dropped = m.rollout_shadow_dropped.labels(*labels)
        self._pairs: set[tuple[str, str]] = set()

    def split(self, canary_percent: float, shadow_percent: float) -> None:
        self.metrics.rollout_canary_percent.labels(*self.labels).set(canary_percent)
        self.metrics.rollout_shadow_percent.labels(*self.labels).set(shadow_percent)

    def compared(self, agreed: bool | None, pair: tuple[str, str] | None, difference: float,
                 relative: float | None) -> None:
        self._samples.inc()
        if agreed:
            self._agreements.inc()
        if pair is not None:
            self._pairs.add(pair)
            self.metrics.rollout_confusion.labels(*self.labels, *pair).inc()
        self._difference.observe(difference)
        if relative is not None:
            self._relative.observe(relative)

    def shadow_failed(self, inputs: int) -> None:
        self._errors.inc(inputs)

    def dropped(self, inputs: int) -> None:
        self._dropped.inc(inputs)

    def forget(self) -> None:
        m = self.metrics
        for metric in (m.rollout_canary_percent, m.rollout_shadow_percent, m.rollout_samples,
                       m.rollout_agreements, m.rollout_difference,
                       m.rollout_relative_difference, m.rollout_shadow_errors,
                       m.rollout_shadow_dropped):
            try:
                metric.remove(*self.labels)
            except KeyError:
                pass
        for pair in self._pairs:
            try:
                m.rollout_confusion.remove(*self.labels, *pair)
            except KeyError:
                pass


class ModelObserver:
    """Binds the batch metrics of one model for the batcher (which knows no labels)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._inference = metrics.inference.labels(model, version)
        self._size = metrics.batch_size.labels(model, version)
        self._tokens = metrics.batch_tokens.labels(model, version)
        self._depth = metrics.queue_depth.labels(model, version)

    def batch_done(self, size: int, padded_tokens: int, seconds: float) -> None:
        self._inference.observe(seconds)
        self._size.observe(size)
        self._tokens.observe(padded_tokens)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def prepare_multiprocess_dir() -> str:
    """Before worker processes start: create (or empty) PROMETHEUS_MULTIPROC_DIR.

    Must run before prometheus_client is imported in the workers, which read the variable
    at import time. Stale files from an earlier run would otherwise add to the counters.
    """
    import shutil
    import tempfile

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="ortserve-prom-")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path
