"""What every pipeline offers the model service."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from app.errors import InvalidInput
from app.manifest import Manifest

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class Pipeline(ABC):
    """Pre-process (validate, encode) -> collate a batch -> run -> split -> post-process.

    Nothing here knows about HTTP: invalid inputs raise `app.errors.InvalidInput`.
    """

    unit = "inputs"

    def __init__(self, manifest: Manifest, max_items: int) -> None:
        self.manifest = manifest
        self.labels = manifest.labels
        self.max_items = max_items

    def check_count(self, inputs: Sequence[Any]) -> None:
        if len(inputs) > self.max_items:
            raise InvalidInput(f"inputs: {len(inputs)} {self.unit}, the limit is "
                               f"{self.max_items} per request",
                               {"field": "inputs", "limit": self.max_items})

    @abstractmethod
    def preprocess(self, inputs: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """Validate and encode inputs; return one payload and one cost (length) each."""

    @abstractmethod
    def collate(self, payloads: list[Any]) -> dict[str, np.ndarray]:
        """Stack payloads into the model's input tensors."""

    @abstractmethod
    def warmup_payloads(self) -> list[list[Any]]:
        """Batches that cover the sizes and lengths this model will see."""

    def run_batch(self, run: RunFn, payloads: list[Any]) -> np.ndarray:
        """Runs in the batch worker's thread; returns one output row per payload."""
        return run(self.collate(payloads))

    def postprocess(self, outputs: Sequence[np.ndarray]) -> list[dict]:
        # Plain Python per row: numpy's per-call overhead dominates for a few numbers.
        labels = self.labels
        if labels is None:
            return [{"value": float(r[0])} for r in outputs]
        out = []
        for r in outputs:
            scores = r.tolist()
            best = max(range(len(scores)), key=scores.__getitem__)  # first maximum
            out.append({"label": labels[best], "score": scores[best],
                        "scores": dict(zip(labels, scores, strict=True))})
        return out
