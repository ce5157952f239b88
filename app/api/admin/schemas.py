"""Pydantic types of the health and repository API bodies (they also make the OpenAPI
docs)."""

from __future__ import annotations

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
