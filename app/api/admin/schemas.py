"""Pydantic types of the health and repository API bodies (they also make the OpenAPI
docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.edge.params import MAX_VERSION


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "alive"}]})
    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "ready", "not_ready": {}},
        {"status": "not_ready", "not_ready": {"sentiment": "loading"}}]})
    status: str
    not_ready: dict[str, str]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2}]})
    version: int | None = Field(None, ge=1, le=MAX_VERSION,
                                description="One version; default: every version the policy "
                                            "names.")


class IndexEntry(BaseModel):
    name: str
    version: int | None
    state: str = Field(description="loading, ready, draining, unloaded or failed")
    reason: str | None
    on_disk: bool
    routed: bool


class RepositoryIndex(BaseModel):
    models: list[IndexEntry]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"force": False}]})
    force: bool = Field(False, description="Promote even when the gate says no.")


class VersionAnswersBody(BaseModel):
    version: int
    role: str = Field(description="stable or candidate")
    requests: int = Field(description="Requests without a version it answered in the "
                                      "rollout.")
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


class ShadowBody(BaseModel):
    samples: int = Field(description="Shadowed inputs compared.")
    agreements: int | None
    agreement_rate: float | None
    agreement_interval: list[float] | None = Field(description="95% (Wilson) interval.")
    mean_difference: float | None = Field(description="Mean |score of the stable label| "
                                                      "(classifiers) or |value| (regressors) "
                                                      "difference.")
    p95_difference: float | None
    p95_relative_difference: float | None
    confusion: list[dict[str, Any]] = Field(description="{stable, candidate, count} per "
                                                        "label pair.")
    errors: int = Field(description="Shadowed inputs the candidate failed on (every input "
                                    "of a shadowed request it failed).")
    dropped: int = Field(description="Shadowed inputs dropped before they ran.")
    inflight: int


class CriterionBody(BaseModel):
    name: str
    status: str = Field(description="met, not_met, not_enough_data or not_applicable")
    value: float | None
    threshold: float | None
    detail: str


class RolloutState(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: str
    active: bool
    source: str | None = Field(description="api or file (rollout.json)")
    stable: int | None
    candidate: int | None
    spec: dict[str, Any] | None
    started_at: float | None
    answers: list[VersionAnswersBody]
    shadow: ShadowBody | None
    criteria: list[CriterionBody]
    promotable: bool = Field(description="Every criterion is met.")
    error: str | None = Field(description="Why a declared rollout does not run.")
