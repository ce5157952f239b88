"""The model repository contract: the schema of `models/<name>/<version>/model.json`.

Both the trainer (which writes manifests) and the server (which reads them) use this
module, so the contract is defined once.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "model.json"
# a version's signature (app/contract/signing.py): it covers every other file of the
# folder, the manifest included, so the manifest cannot list it
SIGNATURE_FILE = "model.sig"
SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# A variant may serve in place of the manifest's default when it is accurate enough: test
# accuracy at most this far below the most accurate variant's, and an input's output
# changes by at most VARIANT_MAX_BATCH_DRIFT with its batch mates (the server batches
# strangers together; dynamic int8 quantisation, which scales activations over the whole
# batch, fails this). The trainer applies the same rule when it picks the default.
VARIANT_MAX_ACCURACY_DROP = 0.01
VARIANT_MAX_BATCH_DRIFT = 1e-5

Kind = Literal["text-classification", "tabular-classification", "tabular-regression"]


class Artifact(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Feature(BaseModel):
    name: str
    dtype: Literal["float32"] = "float32"


class InputSchema(BaseModel):
    """Text models give `max_length` (tokens); tabular models give their features in order."""

    type: Literal["text", "features"]
    max_length: int | None = Field(default=None, ge=2)
    features: list[Feature] | None = None
    tensor: str | None = Field(default=None, description="Feature models: the graph's "
                                                         "input name (default 'features').")

    @model_validator(mode="after")
    def _check(self) -> InputSchema:
        if self.type == "text" and self.max_length is None:
            raise ValueError("text inputs need max_length")
        if self.type == "features" and not self.features:
            raise ValueError("feature inputs need a non-empty features list")
        return self


class Batching(BaseModel):
    """A model's own batching values; each one left out takes the server's setting."""

    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_delay_ms: float | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)


class Calibration(BaseModel):
    """How a classifier's scores were calibrated (optional: manifests before it lack it).

    The graph's probabilities are softmax(logits / temperature) (sigmoid for a binary
    head), with the temperature fitted on the validation split; expected calibration error
    (top-label, `bins` equal-width bins) and Brier score (mean over inputs of the summed
    squared error against the one-hot label) are measured on the `n` test inputs without
    the temperature (`_before`) and with it (`_after`, what the graph serves)."""

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0)
    fitted_on: str = ""
    bins: int = Field(default=15, ge=1)
    n: int | None = Field(default=None, ge=0)
    ece_before: float | None = None
    ece_after: float | None = None
    brier_before: float | None = None
    brier_after: float | None = None


class Throughput(BaseModel):
    """Inputs per second of a variant's graph, timed by the trainer in one process with
    the other variants of the same version (compare within one manifest only)."""

    batch_size: int = Field(ge=1)
    inputs_per_s: float = Field(ge=0)
    texts: int | None = Field(default=None, ge=1)


class Variant(BaseModel):
    file: str
    test_metrics: dict[str, Any] = Field(default_factory=dict)
    size_ratio: float | None = None
    batch_invariance_max_diff: float | None = None  # |alone - in a batch| on a test sample
    calibration: Calibration | None = None
    throughput: Throughput | None = None
    layers: int | None = Field(default=None, ge=1)  # transformer layers (text models)
    # A distilled student names the variant it learnt from; it serves only when an
    # accuracy budget allows it (eligible_variants), never under the default rule.
    distilled_from: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN.pattern)
    version: int = Field(ge=1)
    kind: Kind
    labels: list[str] | None = None
    inputs: InputSchema
    outputs: dict[str, Any]
    model_file: str = "model.onnx"
    tokenizer_file: str | None = None
    # feature models: rows of the training split that explanations take absent features
    # from (app/contract/background.py); optional, explanations need it
    background_file: str | None = None
    variants: dict[str, Variant] = Field(default_factory=dict)
    artifacts: dict[str, Artifact]
    batching: Batching = Field(default_factory=Batching)
    test_metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None  # of the graph in model_file
    # distill: teacher/student variants, layers kept, accuracy gap, throughput ratio
    distillation: dict[str, Any] | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        classifier = self.kind != "tabular-regression"
        if classifier and (not self.labels or len(self.labels) < 2):
            raise ValueError(f"{self.kind} needs at least two labels")
        if not classifier and self.labels:
            raise ValueError("tabular-regression predicts a value and takes no labels")
        if (self.kind == "text-classification") != (self.inputs.type == "text"):
            raise ValueError(f"kind {self.kind} does not match input type {self.inputs.type}")
        if self.kind == "text-classification" and not self.tokenizer_file:
            raise ValueError("text-classification needs tokenizer_file")
        if self.background_file and self.inputs.type != "features":
            raise ValueError("background_file is for feature models only")
        for f in (self.model_file, self.tokenizer_file, self.background_file):
            if f is not None and f not in self.artifacts:
                raise ValueError(f"{f} is not listed in artifacts")
        for f in self.artifacts:
            if "/" in f or "\\" in f or f.startswith("."):
                raise ValueError(f"artifact name {f!r} must be a plain file name")
            if f in (MANIFEST_FILE, SIGNATURE_FILE):
                raise ValueError(f"{f} cannot be an artifact of its own version")
        for name, v in self.variants.items():
            if v.distilled_from is not None and v.distilled_from not in self.variants:
                raise ValueError(f"variant {name!r} is distilled from unknown variant "
                                 f"{v.distilled_from!r}")
        return self


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_artifact(path: Path) -> Artifact:
    return Artifact(sha256=sha256_file(path), bytes=path.stat().st_size)


def eligible_variants(m: Manifest, accuracy_budget: float = 0.0) -> dict[str, str]:
    """Variant name -> file of every variant accurate enough to serve (see
    VARIANT_MAX_ACCURACY_DROP): the manifest's default always, the others when their
    recorded test accuracy and batch invariance pass. {} for a manifest without variants.

    A distilled student (`distilled_from` set) is a different, smaller model: with the
    default budget 0 it never serves; with `accuracy_budget` > 0 it may, when its test
    accuracy is within the budget of the most accurate variant (and its batch drift
    passes)."""
    if not m.variants:
        return {}
    best = max((a for v in m.variants.values()
                if isinstance(a := v.test_metrics.get("accuracy"), (int, float))), default=None)
    out = {}
    for name, v in m.variants.items():
        accuracy = v.test_metrics.get("accuracy")
        allowed = (accuracy_budget if v.distilled_from is not None
                   else VARIANT_MAX_ACCURACY_DROP)
        ok = (v.file == m.model_file or (
            (v.distilled_from is None or accuracy_budget > 0)
            and best is not None and isinstance(accuracy, (int, float))
            and best - accuracy <= allowed
            and v.batch_invariance_max_diff is not None
            and v.batch_invariance_max_diff <= VARIANT_MAX_BATCH_DRIFT))
        if ok and v.file in m.artifacts:
            out[name] = v.file
    return out
