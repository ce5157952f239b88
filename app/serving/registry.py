"""(name, version) -> loaded model: the versions each model serves, where requests without
a version go, and every change to that (load, unload, follow the repository folder).

A change never fails a request: a new version is loaded and warmed while the old ones
serve, the route switches in one assignment, and only then do the versions that leave
service drain (every request they accepted is answered) and close. A version that fails to
load changes nothing that serves. Changes run one at a time (one lock); lookups are plain
dictionary reads on the event loop, never awaited, so a request sees one route or the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.contract.repository import ModelSource, fingerprint, model_names, verify, version_folders
from app.errors import ChangeRefused, ModelNotFound, ModelNotReady
from app.observability.metrics import Metrics
from app.runtime.memory import release_freed_memory
from app.runtime.session import DeviceError
from app.serving import loader
from app.serving.model import LoadedModel
from app.settings import Settings, resolved_workers

log = logging.getLogger("ortserve.registry")

LOADING, READY, DRAINING, UNLOADED, FAILED = "loading", "ready", "draining", "unloaded", "failed"
# A polled version folder changed less than this many poll intervals ago may still be
# being copied: it is looked at again on a later poll.
SETTLE_POLLS = 2.0


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

    def version(self, v: int) -> VersionRecord:
        return self.versions.setdefault(v, VersionRecord(v))

    def ready(self) -> dict[int, LoadedModel]:
        return {v: r.model for v, r in sorted(self.versions.items())
                if r.state == READY and r.model is not None}

    @property
    def status(self) -> str:
        if self.route is not None:
            return READY
        if any(r.state == LOADING for r in self.versions.values()):
            return LOADING
        return FAILED if self.error else UNLOADED


def parse_policy(policy: str | list[int]) -> tuple[str, int | list[int]]:
    """("latest", N) | ("all", 0) | ("specific", [versions]); ValueError when malformed."""
    if isinstance(policy, list):
        return "specific", sorted(set(policy))
    if policy == "all":
        return "all", 0
    if policy == "latest":
        return "latest", 1
    if policy.startswith("latest:") and policy[7:].isdigit() and int(policy[7:]) > 0:
        return "latest", int(policy[7:])
    raise ValueError(f"version policy {policy!r}: expected latest, latest:N, all or a list")


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.records: dict[str, ModelRecord] = {}
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

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

    def not_ready(self) -> dict[str, str]:
        """Models that should serve and cannot (readiness); a model whose versions were
        all unloaded on purpose is not counted."""
        out = {}
        for name, rec in self.records.items():
            if rec.route is None and rec.wanted and rec.status in (LOADING, FAILED):
                out[name] = rec.error or rec.status
        return out

    def policy(self, name: str) -> str | list[int]:
        if name in self.settings.model_versions:
            return [self.settings.model_versions[name]]
        return self.settings.version_policy.get(name, self.settings.default_version_policy)

    def versions(self, rec: ModelRecord) -> list[dict]:
        return [{"version": v, "state": r.state, "reason": r.reason,
                 "routed": rec.route is not None and rec.route.version == v}
                for v, r in sorted(rec.versions.items())]

    def summary(self, rec: ModelRecord) -> dict:
        """What /models says about one model: its routed version's facts, its versions."""
        out: dict = {"name": rec.name, "version": None, "kind": None, "variant": None,
                     "model_file": None, "variant_rates": {}, "variant_reason": None,
                     "provider": None, "providers": None,
                     "requested_providers": None, "batching": None, "instances": None}
        if rec.route is not None:
            out.update(rec.route.describe())
        out.update(status=rec.status, error=rec.error, policy=self.policy(rec.name),
                   pinned_version=rec.pinned, versions=self.versions(rec))
        return out

    def index(self) -> list[dict]:
        """Every model and version on disk or in memory, and its state."""
        names = sorted(set(model_names(self.root)) | set(self.records))
        out = []
        for name in names:
            rec = self.records.get(name)
            on_disk = set(version_folders(self.root, name))
            known = set(rec.versions) if rec else set()
            for v in sorted(on_disk | known):
                vr = rec.versions.get(v) if rec else None
                out.append({"name": name, "version": v,
                            "state": vr.state if vr else UNLOADED,
                            "reason": vr.reason if vr else None,
                            "on_disk": v in on_disk,
                            "routed": bool(rec and rec.route and rec.route.version == v)})
            if not on_disk and not known:
                out.append({"name": name, "version": None,
                            "state": rec.status if rec else UNLOADED,
                            "reason": rec.error if rec else "no numbered version folder",
                            "on_disk": False, "routed": False})
        return out

    # -- changes ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load what the settings ask for; a DeviceError (strict device) stops the server."""
        names = self.settings.models or model_names(self.root)
        if not self.root.is_dir():
            log.error("model repository %s does not exist", self.root)
        async with self._lock:
            for name in names:
                self.records[name] = ModelRecord(name)
                await self._sync(self.records[name], initial=True)
        if self.settings.repository_poll_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    def _check_single_process(self) -> None:
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
        self._check_single_process()
        async with self._lock:
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
        self._check_single_process()
        async with self._lock:
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
            staying = {v: m for v, m in ready.items() if v not in leaving}
            self._route(rec, staying)
            await self._retire(rec, leaving)
            return rec

    async def poll(self) -> None:
        """One pass of the poll mode: follow the repository folder."""
        async with self._lock:
            if not self.settings.models:
                for name in model_names(self.root):
                    self.records.setdefault(name, ModelRecord(name))
            for rec in list(self.records.values()):
                if rec.wanted:
                    await self._sync(rec, polling=True)
                if not self.settings.models and not (self.root / rec.name).is_dir():
                    await self._retire(rec, list(rec.ready()))
                    del self.records[rec.name]  # its folder is gone: so is the model

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - the next poll tries again
                log.exception("repository poll failed")

    # -- the one place where versions come and go ---------------------------------------
    async def _sync(self, rec: ModelRecord, initial: bool = False, polling: bool = False,
                    force: int | None = None) -> None:
        """Make the served versions of `rec` what its policy, pin and exclusions say."""
        name = rec.name
        on_disk = version_folders(self.root, name)
        if not (self.root / name).is_dir():
            rec.error = f"no folder {name} in {self.root}"
        elif not on_disk:
            rec.error = "no numbered version folder"
        try:
            kind, arg = parse_policy(self.policy(name))
        except ValueError as exc:
            rec.error = str(exc)
            kind, arg = "specific", []
        ready = rec.ready()
        if kind == "specific":
            missing = [v for v in arg if v not in on_disk]
            if missing and not polling:
                rec.error = f"pinned version {missing[0]} not found (have {on_disk})"
            candidates, enough = [v for v in arg if v in on_disk], len(arg)
        else:
            candidates = sorted(on_disk, reverse=True)
            enough = len(candidates) if kind == "all" else arg
        candidates = [v for v in candidates if v not in rec.excluded]
        sources: dict[int, ModelSource] = {}
        looked_at: dict[int, bool] = {}

        async def usable(v: int) -> bool:
            if v not in looked_at:
                looked_at[v] = await check(v)
            return looked_at[v]

        async def check(v: int) -> bool:
            """Ready and still on disk, or verified now (its source kept for loading)."""
            if v in ready:
                return v in on_disk
            vr = rec.version(v)
            if v not in on_disk or vr.state == LOADING:
                return False
            path = self.root / name / str(v)
            fp, newest = fingerprint(path)
            settle = SETTLE_POLLS * self.settings.repository_poll_s
            if polling and time.time() - newest < settle:
                return False  # may still be being copied; looked at again next poll
            if vr.state == FAILED and vr.failed_fingerprint == fp and v != force:
                return False  # known bad until its folder changes
            src = await asyncio.to_thread(verify, name, v, path,
                                          self.settings.variant_for(name))
            if src.error:
                self._failed(rec, vr, "verify", src.error, fp)
                return False
            sources[v] = src
            return True

        wanted: list[int] = []
        for v in candidates:  # the policy's versions, best first, until it has enough
            if len(wanted) >= enough:
                break
            if await usable(v):
                wanted.append(v)
        if rec.pinned is not None and rec.pinned not in wanted and await usable(rec.pinned):
            wanted.append(rec.pinned)

        for v, src in sources.items():
            vr = rec.version(v)
            vr.state, vr.reason = LOADING, None
            try:
                vr.model = await loader.load(src, self.settings, self.metrics)
            except DeviceError as exc:
                if initial:
                    raise
                self._failed(rec, vr, "device", str(exc), fingerprint(src.path)[0])
                continue
            except loader.LoadError as exc:
                self._failed(rec, vr, exc.reason, exc.message, fingerprint(src.path)[0])
                continue
            vr.state = READY
            self.metrics.ready.labels(name, str(v)).set(1)
            self._info(vr.model, 1)

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
        await self._retire(rec, [v for v in ready if v not in serve])

    def _route(self, rec: ModelRecord, serve: dict[int, LoadedModel]) -> None:
        """Switch requests without a version to the pinned or highest served version, and
        mark every other ready version as leaving, in one step (no await)."""
        before = rec.route.version if rec.route else None
        if rec.pinned is not None and rec.pinned in serve:
            rec.route = serve[rec.pinned]
        else:
            rec.route = serve[max(serve)] if serve else None
        for v, vr in rec.versions.items():
            if vr.state == READY and v not in serve:
                vr.state = DRAINING
                self.metrics.ready.labels(rec.name, str(v)).set(0)
        after = rec.route.version if rec.route else None
        if after != before:
            log.info("model %s: requests without a version now go to version %s (was %s)",
                     rec.name, after, before)

    async def _retire(self, rec: ModelRecord, versions: list[int]) -> None:
        """Drain (every accepted request answered), close, forget the metrics of each."""
        for v in versions:
            vr = rec.versions[v]
            model, vr.state = vr.model, DRAINING
            if model is None:
                continue
            await model.drain()
            await model.close()
            self._info(model, None)
            vr.model, vr.state, vr.reason = None, UNLOADED, None
            if not (self.root / rec.name / str(v)).is_dir():
                del rec.versions[v]  # gone from disk too: nothing left to report
            self.metrics.forget(rec.name, str(v))
            del model
            release_freed_memory()
            log.info("model %s version %s unloaded", rec.name, v)

    def _info(self, model: LoadedModel, value: int | None) -> None:
        s, src = model.session, model.source
        labels = (model.name, str(model.version), model.kind, src.variant or "", s.provider,
                  s.requested[0], model.manifest.artifacts[src.model_file].sha256)
        rates = {(model.name, str(model.version), v): r for v, r in src.variant_rates.items()}
        if value is None:
            for metric, series in ((self.metrics.info, [labels]),
                                   (self.metrics.variant_rate, list(rates))):
                for one in series:
                    try:
                        metric.remove(*one)
                    except KeyError:
                        pass
        else:
            self.metrics.info.labels(*labels).set(value)
            for one, rate in rates.items():
                self.metrics.variant_rate.labels(*one).set(rate)

    def _failed(self, rec: ModelRecord, vr: VersionRecord, reason: str, message: str,
                fp: str | None) -> None:
        vr.state, vr.reason, vr.model = FAILED, message, None
        vr.failed_fingerprint = fp
        self.metrics.load_failures.labels(rec.name, reason).inc()
        log.error("model %s version %s not loaded: %s", rec.name, vr.version, message)

    async def drain(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        models = [m for rec in self.records.values() for m in rec.ready().values()]
        await asyncio.gather(*(m.drain() for m in models))

    async def close(self) -> None:
        for rec in self.records.values():
            for vr in rec.versions.values():
                if vr.model is not None:
                    await vr.model.close()
