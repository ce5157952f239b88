"""Feature-row models: rows as lists in manifest order or objects keyed by feature name."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from app.contract.manifest import Manifest
from app.errors import InvalidInput
from app.pipelines.base import Pipeline, RunFn
from app.runtime.tensors import Feeds, Scores

# One payload: a request's row of feature values (a list, or a tuple as sent), or a block
# of rows as one 2-D float32 array (an explanation's coalition, see `run_batch`)
Row = Sequence[float] | NDArray[np.float32]

F32_MAX = float(np.finfo(np.float32).max)
_FLOAT_ONLY = {float}


class _RowsPipeline(Pipeline[Row]):
    unit = "rows"

    def __init__(self, manifest: Manifest, max_rows: int) -> None:
        super().__init__(manifest, max_rows)
        self.features = [f.name for f in manifest.inputs.features or []]
        self._index = {name: j for j, name in enumerate(self.features)}
        self.tensor = manifest.inputs.tensor or "features"  # the graph's input name

    def _values(self, i: int, row: object) -> Sequence[float]:
        n = len(self.features)
        if isinstance(row, dict):
            missing = [f for f in self.features if f not in row]
            extra = [k for k in row if k not in self._index]
            if missing or extra:
                raise InvalidInput(
                    f"inputs[{i}]: " + "; ".join(
                        ([f"missing features {missing[:5]}"] if missing else [])
                        + ([f"unknown features {extra[:5]}"] if extra else [])),
                    {"field": f"inputs[{i}]", "missing": missing, "unknown": extra})
            values: Sequence[float] = [row[f] for f in self.features]
        elif isinstance(row, list | tuple):
            if len(row) != n:
                raise InvalidInput(f"inputs[{i}]: expected {n} features, got {len(row)}",
                                   {"field": f"inputs[{i}]", "expected": n, "got": len(row)})
            values = row
        else:
            raise InvalidInput(f"inputs[{i}]: expected a list of {n} numbers or an object "
                               f"keyed by feature name, got {type(row).__name__}",
                               {"field": f"inputs[{i}]"})
        if set(map(type, values)) == _FLOAT_ONLY:  # what the request schema makes
            # NaN and infinities make the sum non-finite; finite doubles past float32 range
            # would become infinities in the model's input
            if (math.isfinite(sum(values)) and max(values) <= F32_MAX
                    and min(values) >= -F32_MAX):
                return values
        for j, v in enumerate(values):
            if (isinstance(v, bool) or not isinstance(v, int | float)
                    or not -F32_MAX <= v <= F32_MAX):
                self._reject(i, j, v)
        return values

    def _reject(self, i: int, j: int, value: object) -> None:
        name = self.features[j]
        raise InvalidInput(f"inputs[{i}].{name}: expected a finite number within float32 "
                           f"range, got {value!r}",
                           {"field": f"inputs[{i}][{j}]", "feature": name})

    def preprocess(self, inputs: Sequence[object]) -> tuple[list[Row], list[int]]:
        """Validate each row; the payloads stay Python lists, converted once per batch."""
        self.check_count(inputs)
        values: list[Row] = [self._values(i, r) for i, r in enumerate(inputs)]
        return values, [1] * len(values)

    def collate(self, payloads: Sequence[Row]) -> Feeds:
        return {self.tensor: np.array(payloads, dtype=np.float32)}

    def run_batch(self, run: RunFn, payloads: list[Row]) -> Scores:
        """Rows from requests are lists (one row each). A block, a 2-D float32 array of k
        rows (explanations: one coalition against k background rows), is one payload too:
        the batch runs all rows at once and answers each block with its k output rows."""
        if not isinstance(payloads[0], np.ndarray) or payloads[0].ndim != 2:
            return super().run_batch(run, payloads)
        rows = np.concatenate(payloads).astype(np.float32, copy=False)
        out = self.activate(run({self.tensor: rows}))
        return out.reshape(len(payloads), -1, *out.shape[1:])

    def warmup_payloads(self, max_batch_size: int) -> list[list[Row]]:
        row: Row = [0.0] * len(self.features)
        return [[row] * b for b in sorted({1, min(8, max_batch_size), max_batch_size})]


class TabularClassificationPipeline(_RowsPipeline):
    pass


class TabularRegressionPipeline(_RowsPipeline):
    pass
