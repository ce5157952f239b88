"""A rollout in progress: which version answers a request without a version (the canary and
sticky split), which answers are shadowed on the candidate, what the two versions did on
real traffic (errors, latency, agreement), and what the gate says about promoting.

Everything here is bookkeeping on the event loop; the registry (`registry.py`) loads the
candidate and switches routes, the data plane (`dataplane.py`) asks `route()` and records
outcomes, and `shadow.py` runs and compares the shadowed inputs.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.contract.rollout import LOWER_IS_BETTER, RolloutSpec, Source

# Latencies and score differences kept for percentiles: a uniform sample of at most this
# many (Algorithm R), so a long rollout costs bounded memory.
RESERVOIR = 4096
# z for the 95% confidence interval of the agreement rate (Wilson score interval)
Z95 = 1.959964
MET, NOT_MET, NOT_ENOUGH, NOT_APPLICABLE = "met", "not_met", "not_enough_data", "not_applicable"


def key_share(model: str, key: str) -> float:
    """Where a route key falls in [0, 100): a hash of (model, key) that every process and
    every replica computes alike. A key goes to the candidate while its share is below
    the canary percentage, so raising the percentage only moves keys to the candidate."""
    digest = hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


class Reservoir:
    """A uniform sample of at most `size` values, for percentiles."""

    def __init__(self, size: int = RESERVOIR, seed: int = 0) -> None:
        self.size, self.seen = size, 0
        self.values: list[float] = []
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        j = self._random.randrange(self.seen)
        if j < self.size:
            self.values[j] = value

    def quantile(self, q: float) -> float | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Answers:
    """What one version answered in the rollout: requests without a version it served,
    those that failed (server errors), and their latency in the model path."""

    requests: int = 0
    errors: int = 0
    latency: Reservoir = field(default_factory=Reservoir)

    def record(self, error: bool, seconds: float) -> None:
        self.requests += 1
        self.errors += error
        self.latency.add(seconds)


@dataclass
class Comparisons:
    """Shadowed inputs: run on the candidate and compared with the stable answer."""

    samples: int = 0
    agreements: int = 0  # classifiers: the same label
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    difference: Reservoir = field(default_factory=Reservoir)  # |score| or |value| difference
    difference_sum: float = 0.0
    relative: Reservoir = field(default_factory=Reservoir)  # regressors: relative difference
    errors: int = 0  # shadowed inputs the candidate failed on (all those of a failed copy)
    dropped: int = 0  # shadowed inputs dropped under load


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    status: str  # MET, NOT_MET, NOT_ENOUGH or NOT_APPLICABLE
    value: float | None
    threshold: float | None
    detail: str


def wilson(successes: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion; None without samples."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


class Rollout:
    """One model's rollout: `stable` answers, `candidate` is tried."""

    def __init__(self, model: str, spec: RolloutSpec, stable: int, source: Source,
                 classifier: bool) -> None:
        self.model, self.stable, self.candidate = model, stable, spec.candidate
        self.spec, self.source, self.classifier = spec, source, classifier
        self.started_at = time.time()
        self.answers = {stable: Answers(), spec.candidate: Answers()}
        self.comparisons = Comparisons()
        self.shadow_inflight = 0  # shadowed inputs submitted and not yet compared
        self.pending = False  # an API rollout whose candidate is still being loaded
        self._random = random.Random()

    def same_versions(self, spec: RolloutSpec, stable: int) -> bool:
        return spec.candidate == self.candidate and stable == self.stable

    def route(self, route_key: str | None) -> int:
        """The version that answers a request without a version."""
        share = self.spec.canary_percent
        if share <= 0:
            return self.stable
        if self.spec.sticky and route_key is not None:
            return self.candidate if key_share(self.model, route_key) < share else self.stable
        return self.candidate if self._random.random() * 100 < share else self.stable

    def wants_shadow(self) -> bool:
        share = self.spec.shadow_percent
        return share > 0 and (share >= 100 or self._random.random() * 100 < share)

    def record(self, version: int, error: bool, seconds: float) -> None:
        answers = self.answers.get(version)
        if answers is not None:
            answers.record(error, seconds)

    # -- the gate ----------------------------------------------------------------------------
    def samples(self) -> int:
        return self.comparisons.samples + self.answers[self.candidate].requests

    def criteria(self, stable_metrics: Mapping[str, object],
                 candidate_metrics: Mapping[str, object]) -> list[Criterion]:
        gate, enough = self.spec.gate, self.samples() >= self.spec.gate.min_samples
        out = [Criterion("min_samples", MET if enough else NOT_ENOUGH, self.samples(),
                         gate.min_samples, f"{self.samples()} shadow comparisons and canary "
                                           f"answers of {gate.min_samples} needed")]
        if gate.min_agreement is not None:
            out.append(self._agreement(gate.min_agreement, enough))
        if gate.max_error_rate_increase is not None:
            out.append(self._error_rate(gate.max_error_rate_increase))
        if gate.max_p99_ratio is not None:
            out.append(self._latency(gate.max_p99_ratio))
        for metric, tolerance in (gate.max_metric_drop or {}).items():
            out.append(_metric(metric, tolerance, stable_metrics.get(metric),
                               candidate_metrics.get(metric)))
        return out

    def _agreement(self, minimum: float, enough: bool) -> Criterion:
        c = self.comparisons
        if not self.classifier:
            return Criterion("min_agreement", NOT_APPLICABLE, None, minimum,
                             "a regressor has no labels to agree on")
        interval = wilson(c.agreements, c.samples)
        if interval is None or c.samples < self.spec.gate.min_samples or not enough:
            return Criterion("min_agreement", NOT_ENOUGH, c.agreements / c.samples
                             if c.samples else None, minimum,
                             f"{c.samples} shadow comparisons")
        low = interval[0]
        return Criterion("min_agreement", MET if low >= minimum else NOT_MET, low, minimum,
                         f"agreement {c.agreements}/{c.samples}, 95% interval "
                         f"[{interval[0]:.4f}, {interval[1]:.4f}]")

    def error_rates(self) -> tuple[float | None, float | None, int]:
        """(stable's, candidate's error rate, candidate's sample count)."""
        s, cand, c = self.answers[self.stable], self.answers[self.candidate], self.comparisons
        n = cand.requests + c.samples + c.errors
        stable = s.errors / s.requests if s.requests else None
        return stable, ((cand.errors + c.errors) / n if n else None), n

    def _error_rate(self, maximum: float) -> Criterion:
        stable, candidate, n = self.error_rates()
        if candidate is None or n < self.spec.gate.min_samples:
            return Criterion("max_error_rate_increase", NOT_ENOUGH, None, maximum,
                             f"{n} candidate answers")
        increase = candidate - (stable or 0.0)
        return Criterion("max_error_rate_increase", MET if increase <= maximum else NOT_MET,
                         increase, maximum, f"candidate {candidate:.4f}, stable "
                                            f"{stable or 0.0:.4f} over {n} answers")

    def _latency(self, maximum: float) -> Criterion:
        cand, stable = self.answers[self.candidate].latency, self.answers[self.stable].latency
        need = self.spec.gate.min_samples
        if cand.seen < max(need, 1) or stable.seen < max(need, 1):
            return Criterion("max_p99_ratio", NOT_ENOUGH, None, maximum,
                             f"{cand.seen} canary and {stable.seen} stable answers "
                             f"(canary_percent > 0 gives the candidate latencies)")
        ratio = (cand.quantile(0.99) or 0.0) / max(stable.quantile(0.99) or 0.0, 1e-9)
        return Criterion("max_p99_ratio", MET if ratio <= maximum else NOT_MET, ratio,
                         maximum, "p99 of the candidate's canary answers over the stable "
                                  "version's")

    def decision(self, criteria: list[Criterion]) -> tuple[str, str] | None:
        """What `auto` does now: ("promote", why), ("rollback", why) or None (wait)."""
        failed = [c for c in criteria if c.status == NOT_MET
                  and c.name in ("max_error_rate_increase", "max_p99_ratio")]
        if failed:
            return "rollback", failed[0].name
        if all(c.status in (MET, NOT_APPLICABLE) for c in criteria):
            return "promote", "gate_met"
        return None


def _metric(name: str, tolerance: float, stable: object, candidate: object) -> Criterion:
    if not isinstance(stable, int | float) or not isinstance(candidate, int | float):
        return Criterion(f"test_metric:{name}", NOT_ENOUGH, None, tolerance,
                         f"the manifests do not both record {name}")
    worse = (candidate - stable) if name in LOWER_IS_BETTER else (stable - candidate)
    return Criterion(f"test_metric:{name}", MET if worse <= tolerance else NOT_MET,
                     float(worse), tolerance, f"candidate {candidate:g}, stable {stable:g}")
