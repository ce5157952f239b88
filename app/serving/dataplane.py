"""The protocol-neutral data plane: the one door to serving for every API. Requests come in
as (name, version, inputs, deadline); answers go out as typed results and views; errors are
`app.errors` domain errors. No API reads the registry or a loaded model itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from app.contract.rollout import RolloutSpec
from app.errors import LoadFailed, QueueFull, ServingError
from app.explain.explainer import ExplainOptions
from app.serving.model import ClientGone, InferenceResult, outcome_of
from app.serving.registry import ModelRegistry
from app.serving.views import (
    READY,
    IndexEntry,
    ModelsReadiness,
    ModelView,
    RolloutView,
    ServedVersion,
)

Inputs = Sequence[object] | Callable[[ServedVersion], Sequence[object]]


class DataPlane:
    def __init__(self, registry: ModelRegistry, explain_max_concurrent: int = 4) -> None:
        self.registry = registry
        self.explain_max_concurrent = explain_max_concurrent
        self._explaining = 0

    # -- what is served ------------------------------------------------------------------
    def default_model(self) -> str | None:
        return self.registry.default_model()

    def models(self) -> list[ModelView]:
        return self.registry.views()

    def model(self, name: str | None) -> ModelView:
        """One model (ModelNotFound when it has no record)."""
        return self.registry.view(name)

    def served(self, name: str | None, version: int | None = None) -> ServedVersion:
        """The version that would answer (name, version) now (ModelNotFound, ModelNotReady
        when none would)."""
        return self.registry.get(name, version).view()

    def index(self) -> list[IndexEntry]:
        return self.registry.index()

    def readiness(self) -> ModelsReadiness:
        return self.registry.readiness()

    # -- requests ------------------------------------------------------------------------
    async def infer(self, name: str | None, version: int | None, inputs: Inputs,
                    timeout_s: float, client_gone: ClientGone | None = None,
                    route_key: str | None = None) -> InferenceResult:
        """`inputs` may be a function of the answering version's view that decodes them (a
        protocol's tensors): its errors count as that version's client errors. A request
        without a version goes where the model's rollout splits it (`route_key`: the sticky
        split's key), and its answer may be shadowed on the candidate."""
        # no await between the lookup and the submit inside infer(): a version swap
        # happens before or after this request, never during it
        model, rollout = self.registry.route(name, version, route_key)
        if rollout is None:
            return await model.infer(inputs, timeout_s, client_gone)
        t0, failed = time.perf_counter(), False
        try:
            result = await model.infer(inputs, timeout_s, client_gone)
        except ServingError as exc:
            failed = outcome_of(exc) == "server_error"
            raise
        except Exception:
            failed = True
            raise
        finally:
            rollout.record(model.version, failed, time.perf_counter() - t0)
        if model.version == rollout.stable and rollout.wants_shadow():
            self.registry.shadow(model.name, inputs, result)
        return result

    async def explain(self, name: str | None, version: int | None, inputs: Sequence[object],
                      options: ExplainOptions, timeout_s: float,
                      client_gone: ClientGone | None = None
                      ) -> tuple[ServedVersion, list[dict[str, Any]]]:
        """Explanations of `inputs` by the version that would answer them, and its view.
        At most `explain_max_concurrent` at once: more are refused at once (503)."""
        model = self.registry.get(name, version)
        if self._explaining >= self.explain_max_concurrent:
            raise QueueFull(f"{self._explaining} explanations in progress, the limit is "
                            f"{self.explain_max_concurrent} (ORTSERVE_EXPLAIN_MAX_CONCURRENT); "
                            "retry shortly", retry_after_s=1)
        self._explaining += 1
        gauge = model.explain_observer.in_progress if model.explain_observer else None
        if gauge is not None:
            gauge.inc()
        try:
            return model.view(), await model.explain(inputs, options, timeout_s, client_gone)
        finally:
            self._explaining -= 1
            if gauge is not None:
                gauge.dec()

    # -- repository control --------------------------------------------------------------
    async def load(self, name: str, version: int | None = None) -> ModelView:
        """Load one version (requests without a version go to it until the next load), or
        apply the model's version policy afresh. LoadFailed, with the model's view as
        details, when the asked version did not load or, without a version, when nothing
        serves afterwards."""
        rec = await self.registry.load(name, version)
        view = rec.view(self.registry.policy(name))
        if version is not None and rec.versions[version].state != READY:
            raise LoadFailed(f"model {name} version {version} did not load: "
                             f"{rec.versions[version].reason}", model=view)
        if version is None and rec.route is None:
            raise LoadFailed(f"failed to load {name!r}: {rec.error or rec.status}", model=view)
        return view

    # -- rollouts ----------------------------------------------------------------------------
    def rollout(self, name: str) -> RolloutView:
        return self.registry.rollouts.view(name)

    async def start_rollout(self, name: str, spec: RolloutSpec) -> RolloutView:
        await self.registry.rollouts.start(name, spec)
        return self.rollout(name)

    async def promote(self, name: str, force: bool = False) -> ModelView:
        rec = await self.registry.rollouts.promote(name, force)
        return rec.view(self.registry.policy(name))

    async def end_rollout(self, name: str) -> ModelView:
        rec = await self.registry.rollouts.end(name)
        return rec.view(self.registry.policy(name))

    async def unload(self, name: str, version: int | None = None) -> ModelView:
        """Drain and unload one version, or every version of the model."""
        rec = await self.registry.unload(name, version)
        return rec.view(self.registry.policy(name))

