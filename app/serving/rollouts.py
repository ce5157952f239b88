"""The rollouts of every model: start or change one, promote, roll back, follow
`models/<name>/rollout.json`, and let the gate decide when it is automatic.

A rollout belongs to the model's record (`records.py`); while it runs, the registry serves
both of its versions whatever the version policy says, and routes requests without a
version to the stable one (`registry.py`), which the data plane splits further
(`Rollout.route`). Every change here runs under the registry's lock, like every other
change of what serves; a candidate that fails to load changes nothing that serves.

Which source wins: while `rollout.json` exists, it is the model's rollout, and the admin
API answers 409 for that model (edit the file instead); without the file, the admin API
manages the rollout in this process (one worker: a change asked of one of several workers
would reach only that one, so it is refused, as for the repository API). Removing the file
ends its rollout and hands the model back to its version policy. An automatic decision
taken in a process (promote or roll back) holds in that process until the file changes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from app.contract.repository import version_folders
from app.contract.rollout import (
    ROLLOUT_FILE,
    BadRollout,
    RolloutSpec,
    file_fingerprint,
    read_rollout,
)
from app.errors import ChangeRefused, InvalidInput, LoadFailed, ModelNotFound, ModelNotReady
from app.observability.metrics import Metrics, RolloutObserver
from app.serving.records import ModelRecord
from app.serving.rollout import MET, NOT_APPLICABLE, Criterion, Rollout, wilson
from app.serving.shadow import ShadowRunner
from app.serving.views import CriterionView, RolloutView, ShadowView, VersionAnswers
from app.settings import Settings


class Versions(Protocol):
    """What the rollouts need of the registry (`registry.py`), which owns them."""

    lock: asyncio.Lock
    records: dict[str, ModelRecord]

    @property
    def root(self) -> Path: ...

    def record(self, name: str | None) -> ModelRecord: ...

    def check_single_process(self) -> None: ...

    async def sync(self, rec: ModelRecord, force: int | None = None,
                   keep: set[int] | None = None) -> None: ...

log = logging.getLogger("ortserve.rollout")
PROMOTE, ROLLBACK = "promote", "rollback"


class PromotionRefused(ChangeRefused):
    """The gate says no; `details` lists every criterion."""

    code = "promotion_refused"


class Rollouts:
    def __init__(self, registry: Versions, settings: Settings, metrics: Metrics) -> None:
        self.registry, self.settings, self.metrics = registry, settings, metrics
        self._watcher: asyncio.Task[None] | None = None
        self._observers: dict[str, RolloutObserver] = {}

    # -- the admin API -----------------------------------------------------------------------
    async def start(self, name: str, spec: RolloutSpec) -> ModelRecord:
        """Start or change the rollout of `name` (API source). The candidate is loaded and
        warmed first when it does not serve; if it cannot, nothing changes (LoadFailed)."""
        reg = self.registry
        async with reg.lock:
            rec = self._api_owned(name)
            stable = spec.stable or rec.routed_version
            if stable is None:
                raise ModelNotReady(f"model {name} has no version serving to be the stable one")
            if stable == spec.candidate:
                raise InvalidInput("candidate: is the stable version",
                                   {"field": "candidate"})
            on_disk = version_folders(reg.root, name)
            for field, v in (("candidate", spec.candidate), ("stable", stable)):
                if v not in on_disk and v not in rec.ready():
                    raise ModelNotFound(f"model {name} has no version {v}", {"field": field})
            previous = rec.rollout
            if previous is not None and previous.same_versions(spec, stable):
                self._change(rec, previous, spec)
                return rec
            await self._replace(rec, Rollout(name, spec, stable, "api", _classifier(rec)))
            return rec

    async def end(self, name: str) -> ModelRecord:
        """Roll back: the rollout ends, every request goes to the stable version (pinned
        there until the next load), and the candidate leaves."""
        async with self.registry.lock:
            rec = self._api_owned(name)
            if rec.rollout is None:
                raise ModelNotFound(f"model {name} has no rollout", {"field": "name"})
            await self._finish(rec, ROLLBACK, "manual")
            return rec

    async def promote(self, name: str, force: bool = False) -> ModelRecord:
        """The candidate becomes the stable version (pinned until the next load), if the
        gate says yes or `force`; PromotionRefused lists the criteria otherwise."""
        async with self.registry.lock:
            rec = self._api_owned(name)
            rollout = rec.rollout
            if rollout is None:
                raise ModelNotFound(f"model {name} has no rollout", {"field": "name"})
            criteria = self.criteria(rec)
            unmet = [c for c in criteria if c.status not in (MET, NOT_APPLICABLE)]
            if unmet and not force:
                raise PromotionRefused(
                    f"the gate refuses: {', '.join(f'{c.name} {c.status}' for c in unmet)} "
                    "(\"force\": true promotes anyway)",
                    [_criterion_json(c) for c in criteria])
            await self._finish(rec, PROMOTE, "forced" if unmet else "gate_met")
            return rec

    def _api_owned(self, name: str) -> ModelRecord:
        rec = self.registry.record(name)
        if rec.rollout_file is not None:
            raise ChangeRefused(f"model {name}'s rollout is declared in "
                                f"{self.registry.root / name / ROLLOUT_FILE}, which wins over "
                                "the API: edit or remove that file")
        self.registry.check_single_process()
        return rec

    # -- the file ---------------------------------------------------------------------------
    def follow_file(self, rec: ModelRecord) -> None:
        """Before a sync: take up a new, changed or removed rollout.json (under the lock)."""
        folder = self.registry.root / rec.name
        found = file_fingerprint(folder)
        if found == rec.rollout_file:
            return
        rec.rollout_file = found
        if found is None:
            if rec.rollout is not None and rec.rollout.source == "file":
                self._clear(rec, "ended", "file_removed")
            return
        try:
            spec = read_rollout(folder)
        except BadRollout as exc:
            rec.rollout_error = str(exc)
            log.error("model %s: %s; the rollout in effect is unchanged", rec.name, exc)
            return
        if spec is None:
            return
        on_disk = version_folders(self.registry.root, rec.name)
        stable = spec.stable or max((v for v in on_disk if v != spec.candidate), default=None)
        if stable is None or spec.candidate not in on_disk or stable not in on_disk:
            # declared before the candidate is published: it starts as soon as it is there
            rec.rollout_file = None  # read again on the next sync
            rec.rollout_error = (f"{ROLLOUT_FILE}: waiting for versions {stable} and "
                                 f"{spec.candidate} to be on disk (have {on_disk})")
            return
        if rec.rollout is not None and rec.rollout.same_versions(spec, stable):
            self._change(rec, rec.rollout, spec)
            rec.rollout.source = "file"
            return
        if rec.rollout is not None:
            self._clear(rec, "ended", "replaced_by_file")
        self._begin(rec, Rollout(rec.name, spec, stable, "file", _classifier(rec)))

    def after_sync(self, rec: ModelRecord) -> None:
        """After a sync: a rollout whose versions do not both serve ends (the candidate
        failed to load, or a version left); the route already leads to what serves."""
        rollout = rec.rollout
        if rollout is None:
            return
        ready = rec.ready()
        if rollout.pending or (rollout.stable in ready and rollout.candidate in ready):
            return  # pending: `_replace` decides once the sync is done
        missing = rollout.candidate if rollout.candidate not in ready else rollout.stable
        reason = rec.versions[missing].reason if missing in rec.versions else "not on disk"
        rec.rollout_error = f"version {missing} does not serve: {reason}"
        log.error("model %s: rollout of version %s stopped: %s", rec.name, rollout.candidate,
                  rec.rollout_error)
        self._clear(rec, "ended", "version_unavailable")
        if rollout.source == "file":
            rec.rollout_file = None  # read again next time: the version may be fixed

    # -- automatic decisions ------------------------------------------------------------------
    def view(self, name: str) -> RolloutView:
        rec = self.registry.record(name)
        return view(rec, self.criteria(rec) if rec.rollout is not None else None)

    def criteria(self, rec: ModelRecord) -> list[Criterion]:
        rollout = rec.rollout
        assert rollout is not None
        metrics = {v: (m.manifest.test_metrics if m is not None else {})
                   for v, m in ((v, rec.ready().get(v))
                                for v in (rollout.stable, rollout.candidate))}
        return rollout.criteria(metrics[rollout.stable], metrics[rollout.candidate])

    def start_watching(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for rec in self.registry.records.values():
            if rec.shadow is not None:
                rec.shadow.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rollout_check_s)
            try:
                await self.decide()
            except Exception:  # noqa: BLE001 - the next check tries again
                log.exception("rollout check failed")

    async def decide(self) -> None:
        """One pass of the automatic gates: promote or roll back where they say so."""
        for rec in list(self.registry.records.values()):
            rollout = rec.rollout
            if rollout is None or not rollout.spec.gate.auto:
                continue
            decision = rollout.decision(self.criteria(rec))
            if decision is None:
                continue
            async with self.registry.lock:
                if rec.rollout is rollout:  # nothing changed it meanwhile
                    log.warning("model %s: automatic %s of version %s (%s)", rec.name,
                                decision[0], rollout.candidate, decision[1])
                    await self._finish(rec, *decision)

    # -- bookkeeping --------------------------------------------------------------------------
    def _begin(self, rec: ModelRecord, rollout: Rollout) -> None:
        rollout.pending = False
        rec.rollout, rec.rollout_error = rollout, None
        rec.excluded.discard(rollout.candidate)
        observer = RolloutObserver(self.metrics, rec.name, rollout.stable, rollout.candidate)
        observer.split(rollout.spec.canary_percent, rollout.spec.shadow_percent)
        self._observers[rec.name] = observer
        rec.shadow = ShadowRunner(rollout, observer, self.settings.shadow_max_inflight,
                                  self.settings.shadow_timeout_s)
        log.info("model %s: rollout of version %s beside %s (canary %g%%, shadow %g%%, "
                 "sticky %s, from %s)", rec.name, rollout.candidate, rollout.stable,
                 rollout.spec.canary_percent, rollout.spec.shadow_percent,
                 rollout.spec.sticky, rollout.source)

    def _change(self, rec: ModelRecord, rollout: Rollout, spec: RolloutSpec) -> None:
        rollout.spec = spec
        observer = self._observers.get(rec.name)
        if observer is not None:
            observer.split(spec.canary_percent, spec.shadow_percent)
        log.info("model %s: rollout of version %s changed (canary %g%%, shadow %g%%)",
                 rec.name, rollout.candidate, spec.canary_percent, spec.shadow_percent)

    def _clear(self, rec: ModelRecord, decision: str, reason: str) -> None:
        """The rollout ends; its shadow copies are dropped and its series removed."""
        if rec.shadow is not None:
            rec.shadow.cancel()
        observer = self._observers.pop(rec.name, None)
        if observer is not None:
            observer.forget()
        if rec.rollout is not None:
            self.metrics.rollout_decisions.labels(rec.name, decision, reason).inc()
        rec.rollout, rec.shadow = None, None

    async def _replace(self, rec: ModelRecord, rollout: Rollout) -> None:
        """Run `rollout` instead of the current one, once its candidate serves."""
        previous, reg = rec.rollout, self.registry
        keep = {previous.candidate} if previous is not None else set()
        rollout.pending = True
        rec.rollout = rollout
        await reg.sync(rec, force=rollout.candidate, keep=keep)
        if rollout.candidate not in rec.ready():
            reason = rec.versions[rollout.candidate].reason \
                if rollout.candidate in rec.versions else "not loaded"
            rec.rollout = previous
            await reg.sync(rec)
            raise LoadFailed(f"candidate version {rollout.candidate} of {rec.name} did not "
                             f"load: {reason}; nothing changed")
        if previous is not None:
            self._clear(rec, "ended", "replaced")
        self._begin(rec, rollout)
        await reg.sync(rec)  # the previous candidate leaves

    async def _finish(self, rec: ModelRecord, decision: str, reason: str) -> None:
        """Promote (the candidate is routed) or roll back (the stable version is, and the
        candidate stays out until loaded again)."""
        rollout = rec.rollout
        assert rollout is not None
        winner = rollout.candidate if decision == PROMOTE else rollout.stable
        if decision == ROLLBACK:
            rec.excluded.add(rollout.candidate)
        self._clear(rec, decision, reason)
        rec.pinned = winner
        await self.registry.sync(rec)
        log.warning("model %s: rollout ended (%s, %s): version %s answers", rec.name,
                    decision, reason, rec.routed_version)


def _classifier(rec: ModelRecord) -> bool:
    model = rec.route or next(iter(rec.ready().values()), None)
    return model is None or model.labels is not None


def _criterion_json(c: Criterion) -> dict[str, object]:
    return {"name": c.name, "status": c.status, "value": c.value, "threshold": c.threshold,
            "detail": c.detail}


def view(rec: ModelRecord, criteria: list[Criterion] | None) -> RolloutView:
    """The rollout of `rec` as the admin API reports it."""
    rollout = rec.rollout
    if rollout is None or criteria is None:
        return RolloutView(rec.name, False, None, None, None, None, None, (), None, (), False,
                           rec.rollout_error)
    answers = tuple(_answers(rollout, v, role) for v, role in
                    ((rollout.stable, "stable"), (rollout.candidate, "candidate")))
    c = rollout.comparisons
    interval = wilson(c.agreements, c.samples) if rollout.classifier else None
    shadow = ShadowView(
        samples=c.samples, agreements=c.agreements if rollout.classifier else None,
        agreement_rate=c.agreements / c.samples if rollout.classifier and c.samples else None,
        agreement_interval=interval,
        mean_difference=c.difference_sum / c.samples if c.samples else None,
        p95_difference=c.difference.quantile(0.95),
        p95_relative_difference=None if rollout.classifier else c.relative.quantile(0.95),
        confusion=tuple((s, k, n) for (s, k), n in sorted(c.confusion.items())),
        errors=c.errors, dropped=c.dropped, inflight=rollout.shadow_inflight)
    return RolloutView(
        rec.name, True, rollout.source, rollout.stable, rollout.candidate,
        rollout.spec.model_dump(mode="json"), rollout.started_at, answers, shadow,
        tuple(CriterionView(c.name, c.status, c.value, c.threshold, c.detail)
              for c in criteria),
        all(c.status in (MET, NOT_APPLICABLE) for c in criteria), rec.rollout_error)


def _answers(rollout: Rollout, version: int, role: str) -> VersionAnswers:
    a = rollout.answers[version]
    p50, p99 = a.latency.quantile(0.5), a.latency.quantile(0.99)
    return VersionAnswers(version, role, a.requests, a.errors,
                          a.errors / a.requests if a.requests else None,
                          None if p50 is None else round(p50 * 1000, 3),
                          None if p99 is None else round(p99 * 1000, 3))
