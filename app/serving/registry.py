"""(name, version) -> loaded model: the versions each model serves, where requests without
a version go, and every change to that (load, unload, follow the repository folder).

A change never fails a request: a new version is loaded and warmed while the old ones
serve, the route switches in one assignment, and only then do the versions that leave
service drain (every request they accepted is answered) and close (`retire.py`). A version
that fails to load changes nothing that serves. Changes run one at a time (one lock);
lookups are plain dictionary reads on the event loop, never awaited, so a request sees one
route or the other. Which versions serve is the version policy's (`policy.py`); the poll
mode (`poll.py`) calls `poll()`; each version's metrics are `series.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from app.contract.repository import (
    VerifiedVersion,
    VersionRejected,
    fingerprint,
    model_names,
    verify,
    version_folders,
)
from app.contract.signing import load_public_keys
from app.errors import ChangeRefused, ModelNotFound, ModelNotReady
from app.observability.metrics import Metrics
from app.runtime.batcher import Foreground
from app.runtime.session import DeviceError
from app.serving import loader
from app.serving.model import InferenceResult, LoadedModel
from app.serving.policy import VersionPolicy, policy_setting
from app.serving.poll import Poller, settling
from app.serving.records import ModelRecord, VersionRecord
from app.serving.retire import retire
from app.serving.rollout import Rollout
from app.serving.rollouts import Rollouts
from app.serving.series import VersionSeries
from app.serving.views import (
    DRAINING,
    FAILED,
    LOADING,
    READY,
    UNLOADED,
    IndexEntry,
    ModelsReadiness,
    ModelView,
)
from app.settings import Settings, resolved_workers

log = logging.getLogger("ortserve.registry")


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.series = VersionSeries(metrics)
        self.metrics = metrics
        self.records: dict[str, ModelRecord] = {}
        self.lock = asyncio.Lock()  # one change of what serves at a time
        # background work (explanations, shadows) of any model waits for every model's
        # predictions
        self.foreground = Foreground()
        self._poller: Poller | None = None
        self.rollouts = Rollouts(self, settings, metrics)
        # the keys a version's signature must be made with (ORTSERVE_MODEL_PUBLIC_KEYS)
        self.trusted = (load_public_keys(settings.model_public_keys)
                        if settings.model_public_keys else None)

    # -- lookups (synchronous: a request sees one state of the registry) ----------------
    @property
    def root(self) -> Path:
        return self.settings.models_dir

    def default_model(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        if len(self.records) == 1:
            return next(iter(self.records))
        return "sentiment" if "sentiment" in self.records else None

    def record(self, name: str | None) -> ModelRecord:
        name = name or self.default_model()
        if name is None:
            raise ModelNotFound("no model named and no default model configured",
                                {"field": "model", "available": sorted(self.records)})
        rec = self.records.get(name)
        if rec is None:
            raise ModelNotFound(f"unknown model {name!r}",
                                {"field": "model", "available": sorted(self.records)})
        return rec

    def get(self, name: str | None, version: int | None = None) -> LoadedModel:
        """The model that answers a request for (name, version); version None: the route."""
        rec = self.record(name)
        if version is None:
            if rec.route is None:
                raise ModelNotReady(f"model {rec.name} is {rec.status}"
                                    + (f": {rec.error}" if rec.error else ""))
            return rec.route
        vr = rec.versions.get(version)
        if vr is not None and vr.state == READY and vr.model is not None:
            return vr.model
        if vr is not None and vr.state == LOADING:
            raise ModelNotReady(f"model {rec.name} version {version} is loading")
        served = list(rec.ready())
        raise ModelNotFound(f"model {rec.name} version {version} is not served (serving "
                            f"{served or 'none'})", {"field": "version", "served": served})

    def route(self, name: str | None, version: int | None, route_key: str | None = None
              ) -> tuple[LoadedModel, Rollout | None]:
        """The model that answers (name, version), and the rollout that chose it (None when
        the version was asked for or no rollout runs): a request without a version goes
        to the rollout's candidate or stable version as its split says."""
        rec = self.record(name)
        rollout = rec.rollout
        if version is not None or rollout is None:
            return self.get(name, version), None
        chosen = rollout.route(route_key)
        vr = rec.versions.get(chosen)
        if vr is None or vr.state != READY or vr.model is None:
            return self.get(name, None), None  # the candidate is not ready: stable answers
        return vr.model, rollout

    def shadow(self, name: str, inputs: object, result: InferenceResult) -> None:
        """Run the inputs the stable version answered (`result`) on the rollout's
        candidate too, off the request's path (`shadow.py`)."""
        rec = self.records.get(name)
        if rec is None or rec.rollout is None or rec.shadow is None:
            return
        vr = rec.versions.get(rec.rollout.candidate)
        if vr is not None and vr.state == READY and vr.model is not None:
            rec.shadow.submit(vr.model, inputs, result)

    def readiness(self) -> ModelsReadiness:
        """Models that should serve and cannot; a model whose versions were all unloaded
        on purpose is not counted."""
        not_ready = {name: rec.error or rec.status for name, rec in self.records.items()
                     if rec.route is None and rec.wanted and rec.status in (LOADING, FAILED)}
        return ModelsReadiness(not_ready, len(self.records))

    def policy(self, name: str) -> str | list[int]:
        return policy_setting(self.settings, name)

    def view(self, name: str | None) -> ModelView:
        rec = self.record(name)
        return rec.view(self.policy(rec.name))

    def views(self) -> list[ModelView]:
        return [rec.view(self.policy(rec.name)) for rec in self.records.values()]

    def index(self) -> list[IndexEntry]:
        """Every model and version on disk or in memory, and its state."""
        out = []
        for name in sorted(set(model_names(self.root)) | set(self.records)):
            rec = self.records.get(name)
            on_disk = set(version_folders(self.root, name))
            known = set(rec.versions) if rec else set()
            routed = rec.routed_version if rec else None
            for v in sorted(on_disk | known):
                vr = rec.versions.get(v) if rec else None
                out.append(IndexEntry(name, v, vr.state if vr else UNLOADED,
                                      vr.reason if vr else None, v in on_disk, routed == v))
            if not on_disk and not known:
                out.append(IndexEntry(name, None, rec.status if rec else UNLOADED,
                                      rec.error if rec else "no numbered version folder",
                                      False, False))
        return out

    # -- changes ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load what the settings ask for; a DeviceError (strict device) stops the server."""
        names = self.settings.models or model_names(self.root)
        if not self.root.is_dir():
            log.error("model repository %s does not exist", self.root)
        async with self.lock:
            for name in names:
                self.records[name] = ModelRecord(name)
                await self._sync(self.records[name], initial=True)
        if self.settings.repository_poll_s > 0:
            self._poller = Poller(self.poll, self.settings.repository_poll_s)
            self._poller.start()
        self.rollouts.start_watching()

    def check_single_process(self) -> None:
        workers = resolved_workers(self.settings)
        if workers > 1:
            # each worker process has its own registry: a change asked of one would reach
            # only that one; polling reaches them all
            raise ChangeRefused(f"the server runs {workers} worker processes and a change "
                                "asked of one would reach only that one; use the poll mode "
                                "(ORTSERVE_REPOSITORY_POLL_S) with several workers")

    async def load(self, name: str, version: int | None = None) -> ModelRecord:
        """Load `version` (and route unversioned requests to it until the next load) or,
        without a version, apply the model's policy afresh. Returns once done or failed."""
        self.check_single_process()
        async with self.lock:
            rec = self.records.get(name)
            if rec is None:
                if name not in model_names(self.root):
                    raise ModelNotFound(f"no model folder {name!r} in the repository",
                                        {"field": "name"})
                rec = self.records[name] = ModelRecord(name)
            rec.wanted = True
            if version is None:
                rec.pinned = None
                rec.excluded.clear()
                await self._sync(rec)
                return rec
            if version not in version_folders(self.root, name) and version not in rec.ready():
                raise ModelNotFound(f"model {name} has no version {version} in the "
                                    "repository", {"field": "version"})
            previous = rec.pinned
            rec.excluded.discard(version)
            rec.pinned = version
            await self._sync(rec, force=version)
            if rec.versions[version].state != READY:
                rec.pinned = previous if previous in rec.ready() else None
            return rec

    async def unload(self, name: str, version: int | None = None) -> ModelRecord:
        """Take one version (or every version) out of service: drained, then closed."""
        self.check_single_process()
        async with self.lock:
            rec = self.record(name)
            ready = rec.ready()
            if version is None:
                rec.wanted, rec.pinned, rec.error = False, None, None
                leaving = list(ready)
            elif version in ready:
                rec.excluded.add(version)
                if rec.pinned == version:
                    rec.pinned = None
                leaving = [version]
            else:
                raise ModelNotFound(f"model {name} version {version} is not loaded",
                                    {"field": "version", "served": list(ready)})
            self._route(rec, {v: m for v, m in ready.items() if v not in leaving})
            await retire(rec, leaving, self.series, self.root)
            return rec

    async def poll(self) -> None:
        """One pass of the poll mode: follow the repository folder."""
        async with self.lock:
            if not self.settings.models:
                for name in model_names(self.root):
                    self.records.setdefault(name, ModelRecord(name))
            for rec in list(self.records.values()):
                if rec.wanted:
                    await self._sync(rec, polling=True)
                if not self.settings.models and not (self.root / rec.name).is_dir():
                    await retire(rec, list(rec.ready()), self.series, self.root)
                    del self.records[rec.name]  # its folder is gone: so is the model

    # -- the one place where versions come and go ---------------------------------------
    async def sync(self, rec: ModelRecord, force: int | None = None,
                   keep: set[int] | None = None) -> None:
        """`_sync` for the rollouts (under the lock): `keep` versions stay loaded too."""
        await self._sync(rec, force=force, keep=keep)

    async def _sync(self, rec: ModelRecord, initial: bool = False, polling: bool = False,
                    force: int | None = None, keep: set[int] | None = None) -> None:
        """Make the served versions of `rec` what its rollout or policy, pin and exclusions
        say."""
        self.rollouts.follow_file(rec)
        on_disk = version_folders(self.root, rec.name)
        candidates, enough = self._candidates(rec, on_disk, polling)
        if keep:
            candidates, enough = candidates + sorted(keep), enough + len(keep)
        checker = _VersionChecker(self, rec, on_disk, polling, force)
        wanted: list[int] = []
        for v in candidates:  # the policy's versions, best first, until it has enough
            if len(wanted) >= enough:
                break
            if await checker.usable(v):
                wanted.append(v)
        if rec.pinned is not None and rec.pinned not in wanted and \
                await checker.usable(rec.pinned):
            wanted.append(rec.pinned)
        await self._load_verified(rec, checker.verified, initial)
        ready = rec.ready()
        # A version that fails is skipped and the policy falls back to the next one, which
        # is usually the one serving; if nothing it names can serve, keep what does.
        serve = {v: ready[v] for v in wanted if v in ready} or {
            v: m for v, m in ready.items() if v in on_disk}
        self._route(rec, serve)
        if rec.route is not None:
            rec.error = None
        elif not rec.error:
            failures = [r.reason for r in rec.versions.values() if r.state == FAILED]
            rec.error = failures[-1] if failures else None
        await retire(rec, [v for v in ready if v not in serve], self.series, self.root)
        self.rollouts.after_sync(rec)

    def _candidates(self, rec: ModelRecord, on_disk: list[int],
                    polling: bool) -> tuple[list[int], int]:
        """The versions the policy names, best first, and how many it serves; notes on the
        record why none can be found."""
        if not (self.root / rec.name).is_dir():
            rec.error = f"no folder {rec.name} in {self.root}"
        elif not on_disk:
            rec.error = "no numbered version folder"
        if rec.rollout is not None:  # both versions of the rollout serve, whatever the policy
            return [rec.rollout.stable, rec.rollout.candidate], 2
        try:
            policy = VersionPolicy.parse(self.policy(rec.name))
        except ValueError as exc:
            rec.error = str(exc)
            policy = VersionPolicy("specific")
        missing = policy.missing(on_disk)
        if missing and not polling:
            rec.error = f"pinned version {missing[0]} not found (have {on_disk})"
        candidates, enough = policy.candidates(on_disk)
        return [v for v in candidates if v not in rec.excluded], enough

    async def _load_verified(self, rec: ModelRecord, verified: dict[int, VerifiedVersion],
                             initial: bool) -> None:
        """Load and warm each verified version; a failure marks that version only."""
        for v in list(verified):
            vr = rec.version(v)
            vr.state, vr.reason = LOADING, None
            found = verified.pop(v)  # its bytes are freed once loaded
            try:
                vr.model = await loader.load(found, self.settings, self.metrics,
                                             self.foreground)
            except DeviceError as exc:
                if initial:
                    raise
                self._failed(rec, vr, "device", str(exc), fingerprint(found.source.path)[0])
                continue
            except loader.LoadError as exc:
                self._failed(rec, vr, exc.reason, exc.message,
                             fingerprint(found.source.path)[0])
                continue
            finally:
                del found
            vr.state = READY
            self.series.serving(vr.model)

    def _route(self, rec: ModelRecord, serve: dict[int, LoadedModel]) -> None:
        """Switch requests without a version to the pinned or highest served version, and
        mark every other ready version as leaving, in one step (no await)."""
        before = rec.routed_version
        if rec.rollout is not None and rec.rollout.stable in serve:
            rec.route = serve[rec.rollout.stable]
        elif rec.pinned is not None and rec.pinned in serve:
            rec.route = serve[rec.pinned]
        else:
            rec.route = serve[max(serve)] if serve else None
        for v, vr in rec.versions.items():
            if vr.state == READY and v not in serve:
                vr.state = DRAINING
                self.series.leaving(rec.name, v)
        if rec.routed_version != before:
            log.info("model %s: requests without a version now go to version %s (was %s)",
                     rec.name, rec.routed_version, before)

    def _failed(self, rec: ModelRecord, vr: VersionRecord, reason: str, message: str,
                fp: str | None) -> None:
        vr.state, vr.reason, vr.model = FAILED, message, None
        vr.failed_fingerprint = fp
        self.series.load_failed(rec.name, reason)
        log.error("model %s version %s not loaded: %s", rec.name, vr.version, message)

    async def drain(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        self.rollouts.stop()
        models = [m for rec in self.records.values() for m in rec.ready().values()]
        await asyncio.gather(*(m.drain() for m in models))

    async def close(self) -> None:
        for rec in self.records.values():
            for vr in rec.versions.values():
                if vr.model is not None:
                    await vr.model.close()


class _VersionChecker:
    """Whether each version can serve, asked once per version in one sync: ready and still
    on disk, or verified now (its verified bytes kept for loading)."""

    def __init__(self, registry: ModelRegistry, rec: ModelRecord, on_disk: list[int],
                 polling: bool, force: int | None) -> None:
        self.registry, self.rec, self.on_disk = registry, rec, on_disk
        self.polling, self.force = polling, force
        self.ready = rec.ready()
        self.verified: dict[int, VerifiedVersion] = {}
        self._answers: dict[int, bool] = {}

    async def usable(self, v: int) -> bool:
        if v not in self._answers:
            self._answers[v] = await self._check(v)
        return self._answers[v]

    async def _check(self, v: int) -> bool:
        if v in self.ready:
            return v in self.on_disk
        rec, registry = self.rec, self.registry
        vr = rec.version(v)
        if v not in self.on_disk or vr.state == LOADING:
            return False
        path = registry.root / rec.name / str(v)
        fp, newest = fingerprint(path)
        if self.polling and settling(newest, registry.settings.repository_poll_s):
            return False  # may still be being copied; looked at again next poll
        if vr.state == FAILED and vr.failed_fingerprint == fp and v != self.force:
            return False  # known bad until its folder changes
        try:
            self.verified[v] = await asyncio.to_thread(
                verify, rec.name, v, path, registry.settings.variant_for(rec.name),
                registry.trusted, accuracy_budget=registry.settings.accuracy_budget)
        except VersionRejected as exc:
            registry._failed(rec, vr, exc.kind, str(exc), fp)
            return False
        return True
