"""What every task returns to the CLI, and the feature-row export shared by the MLP tasks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from app.contract.signing import SigningKey
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


def publish_rows_model(output: Path, name: str, kind: str, module: torch.nn.Module, table,
                       splits, seed: int, profile: str, hyperparameters: dict, t0: float,
                       outputs: dict, evaluate_outputs, export=export_rows_model,
                       labels: list[str] | None = None, calibrate=None,
                       sign_key: SigningKey | None = None) -> TaskResult:
    """Export, evaluate on the test split with ONNX Runtime, and commit a new version.

    `evaluate_outputs(model_outputs)` returns the test metrics; `calibrate(model_outputs)`,
    when given, the manifest's calibration block; `export` is the exporter (parity-checked
    by default); `sign_key` signs the version as it is published.
    """
    from app.contract.background import BACKGROUND_FILE, DEFAULT_ROWS, sample_rows, write_background
    from training.export import run_onnx
    from training.repository import new_version, provenance

    X_test = table.X[splits.test]
    with new_version(output, name, sign_key) as version:
        onnx_path = version.dir / "model.onnx"
        parity = export(module, X_test, onnx_path, outputs["name"], seed)
        X_train = table.X[splits.train]
        write_background(version.dir / BACKGROUND_FILE, list(table.feature_names),
                         sample_rows(X_train, seed),
                         f"{DEFAULT_ROWS} rows of the training split, drawn with seed {seed}",
                         (X_train.min(axis=0), X_train.max(axis=0)))
        test_outputs = run_onnx(onnx_path, [{"features": X_test}])
        metrics = evaluate_outputs(test_outputs)
        calibration = calibrate(test_outputs) if calibrate is not None else None
        manifest = {
            "name": name,
            "kind": kind,
            **({"labels": labels} if labels is not None else {}),
            "inputs": {"type": "features",
                       "features": [{"name": f, "dtype": "float32"} for f in table.feature_names]},
            "outputs": outputs,
            "model_file": "model.onnx",
            "background_file": BACKGROUND_FILE,
            # rows are cheap: a deeper queue still drains in milliseconds
            "batching": {"max_batch_size": 256, "max_batch_tokens": 1 << 20, "max_delay_ms": 0,
                         "max_queue_size": 8192},
            "test_metrics": metrics,
            **({"calibration": calibration} if calibration is not None else {}),
            "provenance": provenance(
                table.source, table.sha256, seed, profile, hyperparameters,
                time.perf_counter() - t0,
                splits={"train": len(splits.train), "validation": len(splits.val),
                        "test": len(splits.test)},
                parity_max_abs_diff=parity),
        }
        number, path = version.commit(manifest)
    return TaskResult(name, number, path, kind, metrics,
                      extra={"calibration": calibration} if calibration is not None else {})
