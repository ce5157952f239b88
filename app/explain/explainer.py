"""Explanations of one loaded model version: its inputs -> Shapley values of its output.

Built once per version at load (`for_model`), it knows what the players of an input are
(`app/explain/players.py`); `LoadedModel.explain` runs the coalitions' inputs through the
model's own batch queue, in the low-priority lane, and `attribute` turns the outputs into
the answer. The value explained is the probability of one class (a classifier; by default
the predicted one) or the predicted value (a regressor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.contract.background import BadBackground, read_background
from app.contract.manifest import Manifest
from app.errors import InvalidInput
from app.explain import shapley
from app.explain.players import RowPlayers, TextPlayers


class NotExplainable(InvalidInput):
    """This model version cannot be explained (a feature model without a background)."""
    code = "not_explainable"


@dataclass(frozen=True)
class ExplainOptions:
    target: str | int | None = None  # class name or index; None: the predicted class
    max_evaluations: int | None = None  # None: the server's default
    seed: int = 0
    method: str = "auto"  # auto, exact or permutation


@dataclass(frozen=True)
class ExplainLimits:
    max_inputs: int
    default_evaluations: int
    max_evaluations: int
    exact_max_players: int


class Explainer:
    def __init__(self, manifest: Manifest, pipeline, limits: ExplainLimits,
                 background: np.ndarray | None, background_source: str = "",
                 feature_ranges: list[dict] | None = None) -> None:
        self.manifest, self.pipeline, self.limits = manifest, pipeline, limits
        self.background, self.background_source = background, background_source
        self.feature_ranges = feature_ranges  # for forms that fill a row (the playground)
        self.text = manifest.inputs.type == "text"
        if self.text:
            tok = pipeline.tokenizer
            self.mask_id = next((i for i in (tok.token_to_id("[MASK]"), tok.token_to_id("<mask>"),
                                             tok.token_to_id("[UNK]")) if i is not None),
                                pipeline.pad_id)
            self.baseline: str | None = ("every word replaced by the tokenizer's mask "
                                         f"token ({tok.id_to_token(self.mask_id)}), same length")
        else:
            self.features = [f.name for f in manifest.inputs.features or []]
            self.baseline = (f"mean output over {len(background)} background rows "
                             f"({background_source})" if background is not None else None)

    @classmethod
    def for_model(cls, manifest: Manifest, pipeline, limits: ExplainLimits,
                  verified: Mapping[str, bytes] | None) -> Explainer:
        if not manifest.background_file:
            return cls(manifest, pipeline, limits, None)
        data = (verified or {}).get(manifest.background_file)
        if data is None:
            raise BadBackground(f"{manifest.background_file} was not verified")
        bg = read_background(data, [f.name for f in manifest.inputs.features or []])
        return cls(manifest, pipeline, limits, bg.rows, bg.source, bg.ranges)

    # -- one request -------------------------------------------------------------------
    def check(self, inputs: Sequence[Any], options: ExplainOptions) -> int:
        """Validate the request's options; return the evaluation budget per input."""
        if len(inputs) > self.limits.max_inputs:
            raise InvalidInput(f"inputs: {len(inputs)}, the limit is {self.limits.max_inputs} "
                               "per explain request (ORTSERVE_EXPLAIN_MAX_INPUTS)",
                               {"field": "inputs", "limit": self.limits.max_inputs})
        if not self.text and self.background is None:
            raise NotExplainable(
                f"model {self.manifest.name} has no background rows to explain against: "
                "retrain it, or import it again with `ortserve import --background rows.csv`")
        budget = options.max_evaluations or self.limits.default_evaluations
        if budget > self.limits.max_evaluations:
            raise InvalidInput(f"max_evaluations: {budget}, the limit is "
                               f"{self.limits.max_evaluations} (ORTSERVE_EXPLAIN_MAX_EVALUATIONS)",
                               {"field": "max_evaluations",
                                "limit": self.limits.max_evaluations})
        self.column(options.target, None)  # an unknown class fails before any work
        return budget

    def column(self, target: str | int | None, full: np.ndarray | None) -> int:
        """The output column explained: the named class, else the predicted one."""
        labels = self.manifest.labels
        if labels is None:
            if target is not None:
                raise InvalidInput("target: a regressor has one output; leave target out",
                                   {"field": "target"})
            return 0
        if target is None:
            return int(np.argmax(full)) if full is not None else 0
        if isinstance(target, int) and not isinstance(target, bool):
            if 0 <= target < len(labels):
                return target
        elif target in labels:
            return labels.index(target)
        raise InvalidInput(f"target: {target!r} is not one of the labels {labels}",
                           {"field": "target", "labels": labels})

    def players(self, raw: Any, payload: Any) -> TextPlayers | RowPlayers:
        """`raw` as the user sent it, `payload` as the pipeline validated it."""
        if self.text:
            return TextPlayers(self.pipeline.tokenizer, self.pipeline.checked_text(0, raw),
                               self.mask_id)
        assert self.background is not None  # check() refused the request otherwise
        return RowPlayers(payload, self.background, self.features)

    def plan(self, players, budget: int, options: ExplainOptions) -> shapley.Plan:
        coalitions = budget // players.per_coalition
        try:
            return shapley.plan(players.n, coalitions, self.limits.exact_max_players,
                                options.seed, options.method)
        except ValueError as exc:
            per = (f" (each coalition costs {players.per_coalition} evaluations, one per "
                   "background row)" if players.per_coalition > 1 else "")
            raise InvalidInput(f"max_evaluations: {exc}{per}; ask for more evaluations",
                               {"field": "max_evaluations"}) from None

    def attribute(self, players, plan: shapley.Plan, outputs: np.ndarray,
                  options: ExplainOptions) -> dict:
        """The answer for one input, from the outputs of its plan's coalitions."""
        full_row = -1 if plan.method == "exact" else 1  # the coalition of every player
        full = outputs.reshape(len(plan.masks), players.per_coalition, -1)[full_row].mean(0)
        column = self.column(options.target, full)
        result = plan.attribute(players.values(outputs, column))
        labels = self.manifest.labels
        out: dict[str, Any] = {
            "prediction": full,  # the output row; each API encodes it as its predict does
            "explained": labels[column] if labels else "value",
            "value": result.full, "base_value": result.base,
            "method": result.method,
            "evaluations": result.evaluations * players.per_coalition,
            "baseline": self.baseline,
        }
        se = result.standard_error
        if isinstance(players, TextPlayers):
            out["attributions"] = [
                {"word": w.text, "start": w.start, "end": w.end, "value": float(v),
                 **({"standard_error": float(se[i])} if se is not None else {})}
                for i, (w, v) in enumerate(zip(players.words, result.values, strict=True))]
            out["dropped_words"] = players.dropped
        else:
            out["attributions"] = [
                {"feature": f, "input": float(x), "value": float(v),
                 **({"standard_error": float(se[i])} if se is not None else {})}
                for i, (f, x, v) in enumerate(zip(self.features, players.x, result.values,
                                                  strict=True))]
        return out
