"""Shadow traffic: a stable answer's inputs run again on the rollout's candidate, off the
request's path, and the two answers compared where both exist.

The candidate runs them in its low-priority lane, so they take only the CPU predictions
leave, and wait at most `timeout_s`; past `max_inflight` inputs waiting, or when the lane is
full, shadow work is dropped (counted) rather than queued. Comparisons: for classifiers,
whether the labels agree, the (stable, candidate) label pair, and the difference in the
score of the stable version's label; for regressors, the absolute and relative difference
of the values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.errors import ServingError
from app.observability.metrics import RolloutObserver
from app.serving.model import InferenceResult, LoadedModel
from app.serving.rollout import Rollout

log = logging.getLogger("ortserve.rollout")


def compare(rollout: Rollout, observer: RolloutObserver, stable: InferenceResult,
            candidate_labels: Sequence[str] | None, outputs: Sequence[Any]) -> None:
    """Record the comparison of each input's two answers."""
    c = rollout.comparisons
    for s_row, c_row in zip(stable.outputs, outputs, strict=True):
        s, cand = np.asarray(s_row, dtype=np.float64).reshape(-1), \
            np.asarray(c_row, dtype=np.float64).reshape(-1)
        relative = None
        if stable.labels is not None and candidate_labels is not None:
            s_label = stable.labels[int(s.argmax())]
            c_label = candidate_labels[int(cand.argmax())]
            index = list(candidate_labels).index(s_label) \
                if s_label in candidate_labels else None
            difference = abs(float(s.max()) - (float(cand[index]) if index is not None
                                               else 0.0))
            agreed: bool | None = s_label == c_label
            c.agreements += s_label == c_label
            c.confusion[s_label, c_label] += 1
            pair: tuple[str, str] | None = (s_label, c_label)
        else:
            a, b = float(s[0]), float(cand[0])
            difference, agreed, pair = abs(a - b), None, None
            relative = difference / max(abs(a), 1e-12)
            c.relative.add(relative)
        c.samples += 1
        c.difference.add(difference)
        c.difference_sum += difference
        observer.compared(agreed, pair, difference, relative)


class ShadowRunner:
    """The shadow copies in flight for one rollout."""

    def __init__(self, rollout: Rollout, observer: RolloutObserver, max_inflight: int,
                 timeout_s: float) -> None:
        self.rollout, self.observer = rollout, observer
        self.max_inflight, self.timeout_s = max_inflight, timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, candidate: LoadedModel, inputs: Any, stable: InferenceResult) -> None:
        """Shadow `inputs` (answered by `stable`) on `candidate`, or drop them now."""
        n = len(stable.outputs)
        if self.rollout.shadow_inflight + n > self.max_inflight:
            self._drop(n)
            return
        self.rollout.shadow_inflight += n
        task = asyncio.get_running_loop().create_task(self._run(candidate, inputs, stable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, n: int) -> None:
        self.rollout.comparisons.dropped += n
        self.observer.dropped(n)

    def _failed(self, n: int) -> None:
        """Every input of a failed copy counts, like the samples the error rate divides by
        (a request of 8 inputs answered adds 8 samples; failed, it adds 8 errors)."""
        self.rollout.comparisons.errors += n
        self.observer.shadow_failed(n)

    async def _run(self, candidate: LoadedModel, inputs: Any, stable: InferenceResult) -> None:
        n = len(stable.outputs)
        try:
            outputs = await candidate.run_background(inputs, self.timeout_s)
        except ServingError as exc:
            if exc.code in ("queue_full", "deadline_exceeded", "model_not_ready"):
                self._drop(n)
            else:  # the candidate failed on inputs the stable version answered
                self._failed(n)
            return
        except Exception:  # noqa: BLE001 - a shadow never fails a request; it is counted
            log.exception("model %s: shadow comparison failed", self.rollout.model)
            self._failed(n)
            return
        finally:
            self.rollout.shadow_inflight -= n
        compare(self.rollout, self.observer, stable, candidate.labels, outputs)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
