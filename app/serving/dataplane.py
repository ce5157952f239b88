"""The protocol-neutral data plane: every API calls this, none calls the registry's
models directly. Inputs in, typed results out; errors are `app.errors` domain errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.errors import QueueFull
from app.explain.explainer import ExplainOptions
from app.serving.model import ClientGone, InferenceResult, LoadedModel
from app.serving.registry import ModelRegistry


class DataPlane:
    def __init__(self, registry: ModelRegistry, explain_max_concurrent: int = 4) -> None:
        self.registry = registry
        self.explain_max_concurrent = explain_max_concurrent
        self._explaining = 0

    def model(self, name: str | None, version: int | None = None) -> LoadedModel:
        """The version that would answer (name, version) now (metadata, logs)."""
        return self.registry.get(name, version)

    async def infer(self, name: str | None, version: int | None,
                    inputs: Sequence[Any] | Callable[[LoadedModel], Sequence[Any]],
                    timeout_s: float, client_gone: ClientGone | None = None,
                    api: str = "v1") -> InferenceResult:
        """`api` labels the request's metrics: v1, v2 or grpc."""
        # no await between the lookup and the submit inside infer(): a version swap
        # happens before or after this request, never during it
        return await self.registry.get(name, version).infer(inputs, timeout_s, client_gone,
                                                            api)

    async def explain(self, name: str | None, version: int | None, inputs: Sequence[Any],
                      options: ExplainOptions, timeout_s: float,
                      client_gone: ClientGone | None = None) -> tuple[LoadedModel, list[dict]]:
        """Explanations of `inputs` by the model that would answer them, and that model.
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
            return model, await model.explain(inputs, options, timeout_s, client_gone)
        finally:
            self._explaining -= 1
            if gauge is not None:
                gauge.dec()
