"""The arrays that cross the ONNX Runtime boundary, named once for the pipelines that make
and read them and the session that runs them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

# A batch's input tensors by graph input name: token ids and masks, or float32 rows
Feeds = Mapping[str, NDArray[np.int64] | NDArray[np.float32]]
# The graph output the service reads: one row of float scores (or a value) per input
Scores = NDArray[np.floating]
