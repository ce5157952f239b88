"""The registry's bookkeeping: one record per model, one per version it knows."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.serving.model import LoadedModel
from app.serving.rollout import Rollout
from app.serving.shadow import ShadowRunner
from app.serving.views import (
    FAILED,
    LOADING,
    READY,
    UNLOADED,
    ModelView,
    VersionState,
)


@dataclass
class VersionRecord:
    version: int
    state: str = UNLOADED
    reason: str | None = None
    model: LoadedModel | None = None
    failed_fingerprint: str | None = None  # not retried by polling until the folder changes


@dataclass
class ModelRecord:
    name: str
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    route: LoadedModel | None = None  # where requests without a version go
    pinned: int | None = None  # set by an explicit load of one version
    excluded: set[int] = field(default_factory=set)  # unloaded explicitly
    wanted: bool = True  # False once every version was unloaded explicitly
    error: str | None = None  # why no version serves
    rollout: Rollout | None = None  # a candidate tried beside the routed version
    shadow: ShadowRunner | None = None  # the rollout's shadow copies in flight
    rollout_file: tuple[int, int] | None = None  # rollout.json as last read
    rollout_error: str | None = None  # why the declared rollout does not run

    def version(self, v: int) -> VersionRecord:
        return self.versions.setdefault(v, VersionRecord(v))

    def ready(self) -> dict[int, LoadedModel]:
        return {v: r.model for v, r in sorted(self.versions.items())
                if r.state == READY and r.model is not None}

    @property
    def routed_version(self) -> int | None:
        return self.route.version if self.route is not None else None

    @property
    def status(self) -> str:
        if self.route is not None:
            return READY
        if any(r.state == LOADING for r in self.versions.values()):
            return LOADING
        return FAILED if self.error else UNLOADED

    def view(self, policy: str | list[int]) -> ModelView:
        routed = self.routed_version
        return ModelView(
            name=self.name, status=self.status, error=self.error, policy=policy,
            pinned_version=self.pinned,
            versions=tuple(VersionState(v, r.state, r.reason, v == routed)
                           for v, r in sorted(self.versions.items())),
            routed=self.route.view() if self.route is not None else None,
            served=tuple(self.ready()))
