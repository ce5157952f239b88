"""A rollout, as the admin API takes it and as `models/<name>/rollout.json` declares it: a
candidate version tried beside the stable one, on a share of the traffic (canary), on a
copy of it (shadow), or both, and the evidence its promotion needs (the gate).

The file sits beside the version folders, so every worker and every replica following the
folder runs the same rollout; while it exists it wins over the admin API, which then
answers 409 for that model. The schema is the same in both places.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROLLOUT_FILE = "rollout.json"
# the largest rollout.json read (it is a few hundred bytes)
MAX_FILE_BYTES = 64 * 1024
# test metrics where a lower value is better (for the gate's manifest criterion)
LOWER_IS_BETTER = ("mae", "rmse", "mse", "brier", "ece", "log_loss", "loss")


class BadRollout(ValueError):
    """A rollout that cannot run; the message names the field."""


class GateSpec(BaseModel):
    """The evidence promotion needs. A criterion left out (None) is not asked for."""

    model_config = ConfigDict(extra="forbid")

    min_samples: int = Field(
        200, ge=0, le=10**9, description="Shadow comparisons plus canary answers needed "
                                         "before any other criterion counts.")
    min_agreement: float | None = Field(
        0.95, ge=0, le=1, description="Classifiers: the lower bound of the 95% confidence "
                                      "interval of the share of shadowed inputs whose "
                                      "label the candidate agrees on.")
    max_error_rate_increase: float | None = Field(
        0.01, ge=0, le=1, description="The candidate's error rate (canary and shadow) minus "
                                      "the stable version's, at most.")
    max_p99_ratio: float | None = Field(
        1.5, gt=0, le=1000, description="The candidate's p99 latency on canary requests "
                                        "over the stable version's, at most.")
    max_metric_drop: dict[str, float] | None = Field(
        None, description="Per test metric of the manifests, how much worse the candidate's "
                          "may be than the stable version's (e.g. {\"accuracy\": 0.01}); "
                          "lower-is-better metrics (mae, rmse, ...) the other way round.")
    auto: bool = Field(False, description="Promote when every criterion is met; roll back "
                                          "when the error-rate or latency criterion fails "
                                          "with enough samples.")


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: int = Field(ge=1, le=999_999_999, description="The version tried.")
    stable: int | None = Field(
        None, ge=1, le=999_999_999, description="The version that answers the rest; "
                                                "default: the one answering now (API), or "
                                                "the highest other version on disk (file).")
    canary_percent: float = Field(0.0, ge=0, le=100, description="Share of requests "
                                                                 "without a version that "
                                                                 "the candidate answers.")
    shadow_percent: float = Field(0.0, ge=0, le=100, description="Share of the stable "
                                                                 "version's answers also "
                                                                 "run on the candidate, "
                                                                 "off the request's path, "
                                                                 "and compared.")
    sticky: bool = Field(False, description="Split by the request's route key (X-Route-Key, "
                                            "v2 parameters.route_key, gRPC x-route-key) "
                                            "through a stable hash: a key stays on its "
                                            "version while canary_percent does not drop.")
    gate: GateSpec = Field(default_factory=GateSpec)

    @model_validator(mode="after")
    def _distinct(self) -> RolloutSpec:
        if self.stable is not None and self.stable == self.candidate:
            raise ValueError("stable and candidate must be different versions")
        return self


Source = Literal["api", "file"]


def read_rollout(model_dir: Path) -> RolloutSpec | None:
    """The rollout `model_dir/rollout.json` declares; None without the file; BadRollout
    naming the field when it cannot run."""
    path = model_dir / ROLLOUT_FILE
    try:
        if not path.is_file() or path.is_symlink():
            return None
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BadRollout(f"{ROLLOUT_FILE}: larger than {MAX_FILE_BYTES} bytes")
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRollout(f"{ROLLOUT_FILE}: not readable JSON ({exc})") from None
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "rollout"
        raise BadRollout(f"{ROLLOUT_FILE}: {where}: {first['msg']}") from None


def file_fingerprint(model_dir: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of rollout.json, to notice a change; None without the file."""
    try:
        st = (model_dir / ROLLOUT_FILE).stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
