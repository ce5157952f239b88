"""What the serving layer tells the APIs about models: typed, immutable views, built from
the registry's state in one step on the event loop (a view is one moment's truth). Each
protocol encodes them in its own shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.contract.manifest import Manifest
from app.runtime.batcher import BatchLimits

# A version's state in the registry
LOADING, READY, DRAINING, UNLOADED, FAILED = "loading", "ready", "draining", "unloaded", "failed"


@dataclass(frozen=True, slots=True)
class VersionState:
    """One version of a model and where it stands."""

    version: int
    state: str  # LOADING, READY, DRAINING, UNLOADED or FAILED
    reason: str | None  # why it failed
    routed: bool  # requests without a version go to it


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """The facts about one loaded version: what serves it, how, and what it answers."""

    name: str
    version: int
    kind: str
    labels: tuple[str, ...] | None
    features: tuple[str, ...] | None  # feature models: input names in order
    manifest: Manifest
    variant: str | None
    model_file: str
    variant_rates: Mapping[str, float]
    variant_reason: str | None
    provider: str
    providers: tuple[str, ...]
    requested_providers: tuple[str, ...]
    batching: BatchLimits
    instances: int
    load_seconds: float
    memory_mb: float | None
    explainable: bool
    explain_baseline: str | None
    feature_ranges: tuple[Mapping[str, Any], ...] | None
    # the served graph's calibration (temperature, ECE and Brier before/after) and test
    # metrics, from the manifest (its variant's, when it records them)
    calibration: Mapping[str, Any] | None = None
    test_metrics: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelView:
    """One model: its status, its version policy and every version's state, and the
    version requests without one go to (None when none can serve)."""

    name: str
    status: str  # READY, LOADING, FAILED or UNLOADED
    error: str | None  # why no version serves
    policy: str | list[int]
    pinned_version: int | None  # set by an explicit load of one version
    versions: tuple[VersionState, ...]
    routed: ServedVersion | None
    served: tuple[int, ...] = field(default=())  # versions ready to answer, ascending


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One model version on disk or in memory (a model without any: version None)."""

    name: str
    version: int | None
    state: str
    reason: str | None
    on_disk: bool
    routed: bool


@dataclass(frozen=True, slots=True)
class ModelsReadiness:
    """The models' part of readiness: every model that should serve and cannot, with why;
    `configured` is how many models the service has."""

    not_ready: Mapping[str, str]
    configured: int


@dataclass(frozen=True, slots=True)
class VersionAnswers:
    """What one version of a rollout answered of the requests without a version."""

    version: int
    role: str  # stable or candidate
    requests: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class ShadowView:
    samples: int
    agreements: int | None  # classifiers only
    agreement_rate: float | None
    agreement_interval: tuple[float, float] | None  # 95% (Wilson)
    mean_difference: float | None
    p95_difference: float | None
    p95_relative_difference: float | None  # regressors only
    confusion: tuple[tuple[str, str, int], ...]  # (stable label, candidate label, inputs)
    errors: int
    dropped: int
    inflight: int


@dataclass(frozen=True, slots=True)
class CriterionView:
    name: str
    status: str  # met, not_met, not_enough_data or not_applicable
    value: float | None
    threshold: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A model's rollout and what it measured; `active` False when none runs (`error`
    then says why a declared one does not)."""

    model: str
    active: bool
    source: str | None  # api or file
    stable: int | None
    candidate: int | None
    spec: Mapping[str, Any] | None  # the rollout as given (RolloutSpec's fields)
    started_at: float | None
    answers: tuple[VersionAnswers, ...]
    shadow: ShadowView | None
    criteria: tuple[CriterionView, ...]
    promotable: bool
    error: str | None
