"""The protocol-neutral data plane: every API calls this, none calls the registry's
models directly. Inputs in, typed results out; errors are `app.errors` domain errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.serving.model import ClientGone, InferenceResult, LoadedModel
from app.serving.registry import ModelRegistry


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

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
