"""What every pipeline offers the model service."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from app.contract.manifest import Manifest
from app.errors import InvalidInput
from app.runtime.tensors import Feeds, Scores

RunFn = Callable[[Feeds], Scores]
# What preprocess makes of one input and run_batch takes back: each pipeline's own
PayloadT = TypeVar("PayloadT")


class Pipeline(ABC, Generic[PayloadT]):
    """Pre-process (validate, encode) -> collate a batch -> run -> one output row per input.

    Nothing here knows about HTTP or response shapes: invalid inputs raise
    `app.errors.InvalidInput`, and each API encodes the output rows its own way.
    """

    unit = "inputs"

    def __init__(self, manifest: Manifest, max_items: int) -> None:
        self.manifest = manifest
        self.labels = manifest.labels
        self.max_items = max_items
        self.softmax = bool(manifest.outputs.get("softmax", False))

    def check_count(self, inputs: Sequence[object]) -> None:
        if len(inputs) > self.max_items:
            raise InvalidInput(f"inputs: {len(inputs)} {self.unit}, the limit is "
                               f"{self.max_items} per request",
                               {"field": "inputs", "limit": self.max_items})

    @abstractmethod
    def preprocess(self, inputs: Sequence[object]) -> tuple[list[PayloadT], list[int]]:
        """Validate and encode inputs; return one payload and one cost (length) each."""

    @abstractmethod
    def collate(self, payloads: Sequence[PayloadT]) -> Feeds:
        """Stack payloads into the model's input tensors."""

    @abstractmethod
    def warmup_payloads(self, max_batch_size: int) -> list[list[PayloadT]]:
        """Batches that cover the sizes and lengths this model will see."""

    def runs_inline(self, inputs: Sequence[object]) -> bool:
        """Whether `preprocess(inputs)` is short enough for the event loop (a few ms at
        most); the model runs it in a thread otherwise."""
        return True

    def cost(self, payload: PayloadT) -> int:
        """The cost preprocess gives this payload: 1 (a row); texts: their token count."""
        return 1

    def run_batch(self, run: RunFn, payloads: list[PayloadT]) -> Scores:
        """Runs in the batch worker's thread; returns one output row per payload."""
        return self.activate(run(self.collate(payloads)))

    def activate(self, outputs: Scores) -> Scores:
        """Scores as the API returns them: a graph that ends in logits (an imported one;
        the manifest's `outputs.softmax`) gets its softmax here, once per batch."""
        if not self.softmax:
            return outputs
        # numpy types max() and sum() of an axis as Any
        top: Scores = outputs.max(axis=1, keepdims=True)
        shifted = np.exp(outputs - top)
        total: Scores = shifted.sum(axis=1, keepdims=True)
        return shifted / total
