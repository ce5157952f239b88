"""Pydantic types of the `/predict`, `/explain` and `/models` bodies (they also make the
OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.api.edge.params import MAX_VERSION
from app.api.edge.schemas import ModelSummary
from app.contract.manifest import NAME_PATTERN

TEXT_EXAMPLE: JsonDict = {"model": "sentiment",
                          "inputs": ["I love this phone", "worst service ever"]}
ROWS_EXAMPLE: JsonDict = {"model": "diabetes",
                          "inputs": [[0.038, 0.05, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003,
                                      0.02, -0.018]]}

Input = str | list[float] | dict[str, float]


class PredictRequest(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid",
                              json_schema_extra={"examples": [TEXT_EXAMPLE, ROWS_EXAMPLE]})

    model: str | None = Field(None, pattern=NAME_PATTERN.pattern, max_length=128,
                              description="Model name; the configured default when omitted.")
    version: int | None = Field(None, ge=1, le=MAX_VERSION,
                                description="Served version to use; default: the one the "
                                            "model routes to.")
    inputs: list[Input] = Field(
        ..., min_length=1,
        description="Texts for text models; rows for tabular models, each a list of numbers "
                    "in the manifest's feature order or an object keyed by feature name.")


class ModelPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"inputs": ["great game"]}]})

    version: int | None = Field(None, ge=1, le=MAX_VERSION,
                                description="Served version to use; default: the one the "
                                            "model routes to.")
    inputs: list[Input] = Field(..., min_length=1)


class ClassPrediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class ValuePrediction(BaseModel):
    value: float


class Timing(BaseModel):
    total_ms: float = Field(description="Time in the server for this request.")
    queue_ms: float = Field(description="Wait before the first batch that ran it.")
    inference_ms: float = Field(description="Model run time of the batches it was part of.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model": "sentiment", "version": 1,
        "predictions": [
            {"label": "positive", "score": 0.93,
             "scores": {"negative": 0.02, "neutral": 0.05, "positive": 0.93}}],
        "timing": {"total_ms": 4.1, "queue_ms": 0.05, "inference_ms": 3.6}}]})

    model: str
    version: int
    predictions: list[ClassPrediction | ValuePrediction]
    timing: Timing


class ModelList(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    default_model: str | None
    models: list[ModelSummary]


class ModelDetail(ModelSummary):
    manifest: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    labels: list[str] | None = None
    inputs: dict[str, Any] | None = None
    load_seconds: float | None = None


# -- explanations ------------------------------------------------------------------------
EXPLAIN_EXAMPLE: JsonDict = {"model": "sentiment", "inputs": ["I love this phone"], "seed": 0}


class ExplainOptionsBody(BaseModel):
    target: str | int | None = Field(
        None, description="Class to explain, by label or index; default: the predicted "
                          "class. Regressors: leave out.")
    max_evaluations: int | None = Field(
        None, ge=2, description="Most model evaluations per input (a feature model spends "
                                "one per background row per coalition); default "
                                "ORTSERVE_EXPLAIN_DEFAULT_EVALUATIONS, at most "
                                "ORTSERVE_EXPLAIN_MAX_EVALUATIONS.")
    seed: int = Field(0, ge=0, description="Seed of the sampled estimator: the same seed "
                                           "gives the same answer.")
    method: str = Field("auto", pattern="^(auto|exact|permutation)$",
                        description="auto: exact Shapley values when the players fit "
                                    "ORTSERVE_EXPLAIN_EXACT_MAX_PLAYERS and the budget, else "
                                    "antithetic permutation sampling.")


class ExplainRequest(ExplainOptionsBody):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid",
                              json_schema_extra={"examples": [EXPLAIN_EXAMPLE]})

    model: str | None = Field(None, pattern=NAME_PATTERN.pattern, max_length=128,
                              description="Model name; the configured default when omitted.")
    version: int | None = Field(None, ge=1, le=MAX_VERSION,
                                description="Served version to use.")
    inputs: list[Input] = Field(..., min_length=1, description="As for predict.")


class ModelExplainRequest(ExplainOptionsBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": ["I love this phone"], "target": "positive"}]})

    version: int | None = Field(None, ge=1, le=MAX_VERSION,
                                description="Served version to use.")
    inputs: list[Input] = Field(..., min_length=1)


class Attribution(BaseModel):
    value: float = Field(description="Shapley value: this word's or feature's share of "
                                     "value - base_value.")
    standard_error: float | None = Field(None, description="Sampled estimates only.")
    word: str | None = Field(None, description="Text: the word as written.")
    start: int | None = Field(None, description="Text: its first character's offset.")
    end: int | None = Field(None, description="Text: the offset after its last character.")
    feature: str | None = Field(None, description="Rows: the feature's name.")
    input: float | None = Field(None, description="Rows: the feature's value in the input.")


class Explanation(BaseModel):
    prediction: dict[str, Any] = Field(description="As predict answers for this input.")
    explained: str = Field(description="The class whose probability is explained, or "
                                       "`value` for a regressor.")
    value: float = Field(description="The explained output for the input.")
    base_value: float = Field(description="The explained output for the baseline.")
    method: str = Field(description="exact or permutation.")
    evaluations: int = Field(description="Model evaluations spent.")
    baseline: str | None = Field(description="What the baseline is.")
    attributions: list[Attribution] = Field(description="Sum to value - base_value.")
    dropped_words: int | None = Field(None, description="Text: words past the model's "
                                                        "max length (not explained).")


class ExplainResponse(BaseModel):
    model: str
    version: int
    explanations: list[Explanation]
    timing: dict[str, float]
