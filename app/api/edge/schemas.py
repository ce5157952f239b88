"""The JSON shapes the service's own API shares between `/models`, the repository API and
every error: pydantic types that also make the OpenAPI docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "code": "invalid_input", "message": "inputs[1]: expected 10 features, got 3",
        "details": {"field": "inputs[1]", "expected": 10, "got": 3}}}]})

    error: ErrorDetail


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_batch_tokens: int
    max_delay_ms: float
    max_queue_size: int


class VersionState(BaseModel):
    version: int
    state: str = Field(description="loading, ready, draining, unloaded or failed")
    reason: str | None = Field(None, description="Why it failed.")
    routed: bool = Field(False, description="Requests without a version go to it.")


class ModelSummary(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "name": "sentiment", "version": 1, "status": "ready", "error": None,
        "kind": "text-classification", "variant": "int8", "model_file": "model.int8.onnx",
        "provider": "CPUExecutionProvider", "providers": ["CPUExecutionProvider"],
        "requested_providers": ["CPUExecutionProvider"],
        "batching": {"max_batch_size": 64, "max_batch_tokens": 8192, "max_delay_ms": 0.0,
                     "max_queue_size": 1024}, "instances": 2}]})

    name: str
    version: int | None = Field(description="The version requests without one go to.")
    status: str
    error: str | None
    kind: str | None
    variant: str | None
    model_file: str | None
    variant_rates: dict[str, float] = Field(
        default_factory=dict, description="Inputs per second of each eligible variant on the "
                                          "warm-up batches, when ORTSERVE_MODEL_VARIANT=auto "
                                          "chose between several.")
    variant_reason: str | None = Field(None, description="Why this variant serves.")
    provider: str | None
    providers: list[str] | None
    requested_providers: list[str] | None
    batching: BatchingInfo | None
    instances: int | None = Field(None, description="Batches of this model that run at once.")
    explainable: bool | None = Field(None, description="POST /models/{name}/explain answers "
                                                       "for this version.")
    explain_baseline: str | None = Field(None, description="What its explanations compare "
                                                           "the input with.")
    feature_ranges: list[dict[str, Any]] | None = Field(
        None, description="Feature models with a background: per feature its name, min, max "
                          "(of the training split) and a typical value.")
    calibration: dict[str, Any] | None = Field(
        None, description="How the served graph's scores were calibrated: temperature, and "
                          "expected calibration error (15 bins) and Brier score on the test "
                          "split before and after (README \"Training\").")
    policy: str | list[int] | None = Field(None, description="Version policy.")
    pinned_version: int | None = Field(
        None, description="Set by an explicit load of one version: requests without a "
                          "version go to it until the next load or restart.")
    versions: list[VersionState] = Field(default_factory=list)
