"""What every task returns to the CLI, and the feature-row export shared by the MLP tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.export import check_parity, export_onnx

PARITY_BATCHES = (1, 7, 64)  # the export example uses batch 3


@dataclass
class TaskResult:
    name: str
    version: int
    path: Path
    kind: str
    test_metrics: dict
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def export_rows_model(module: torch.nn.Module, X_ref: np.ndarray, path: Path,
                      output_name: str, seed: int) -> float:
    """Export a feature-row model and check parity at batch sizes unlike the example."""
    example = {"features": torch.from_numpy(X_ref[:3].astype(np.float32))}
    export_onnx(module, example, path, output_name, {"features": {0: "batch"}})
    rng = np.random.default_rng(seed)
    sets = []
    for n in PARITY_BATCHES:
        rows = X_ref[rng.integers(0, len(X_ref), n)].astype(np.float32)
        sets.append({"features": rows})
    return check_parity(module, path, sets)

