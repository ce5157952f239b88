"""Tabular binary classifier: MLP 64 -> 64 -> 1 on feature rows (default: breast cancer)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from training import data, evaluate
from training.common import TaskResult, export_rows_model, seed_everything
from training.export import run_onnx
from training.mlp import BinaryClassifier, FitConfig, fit
from training.repository import new_version, provenance

DEFAULT_NAME = "breast-cancer"
HIDDEN = (64, 64)
DROPOUT = 0.5


def _bce(model: BinaryClassifier, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model.logits(X), y)


def run(output: Path, name: str | None, seed: int, profile: str,
        csv: Path | None = None, target_column: str | None = None) -> TaskResult:
    t0 = time.perf_counter()
    table = (data.load_table_csv(csv, target_column, classification=True) if csv
             else data.load_breast_cancer())
    splits = data.split_indices(len(table.y), table.y, seed=seed, test_size=0.2, val_size=0.16)
    seed_everything(seed)
    X, y = table.X, table.y
    Xtr = X[splits.train]
    model = BinaryClassifier(Xtr.mean(0), Xtr.std(0), HIDDEN, DROPOUT)
    cfg = FitConfig(seed=seed)
    result = fit(model, _bce, Xtr, y[splits.train], X[splits.val], y[splits.val], cfg,
                 desc=f"{name or DEFAULT_NAME} (tabular)")
    name = name or DEFAULT_NAME
    with new_version(output, name) as version:
        onnx_path = version.dir / "model.onnx"
        parity = export_rows_model(model, X[splits.test], onnx_path, "probabilities", seed)
        probs = run_onnx(onnx_path, [{"features": X[splits.test]}])
        metrics = evaluate.classification_metrics(y[splits.test].astype(int), probs,
                                                  table.label_names)
        manifest = {
            "name": name,
            "kind": "tabular-classification",
            "labels": table.label_names,
            "inputs": {"type": "features",
                       "features": [{"name": f, "dtype": "float32"} for f in table.feature_names]},
            "outputs": {"name": "probabilities", "shape": ["batch", 2],
                        "meaning": "probability of each label, in `labels` order"},
            "model_file": "model.onnx",
            # rows are cheap: a deeper queue still drains in milliseconds
            "batching": {"max_batch_size": 256, "max_batch_tokens": 1 << 20, "max_delay_ms": 0,
                         "max_queue_size": 8192},
            "test_metrics": metrics,
            "provenance": provenance(
                table.source, table.sha256, seed, profile,
                {"architecture": f"MLP {len(table.feature_names)} -> "
                                 f"{' -> '.join(map(str, HIDDEN))} -> 1",
                 "activation": "relu", "dropout": DROPOUT, "optimizer": "adam",
                 "lr": cfg.lr, "batch_size": cfg.batch_size, "max_epochs": cfg.max_epochs,
                 "patience": cfg.patience, "epochs_run": result.epochs_run,
                 "best_epoch": result.best_epoch, "standardisation": "fitted on train, in graph"},
                time.perf_counter() - t0,
                splits={"train": len(splits.train), "validation": len(splits.val),
                        "test": len(splits.test)},
                parity_max_abs_diff=parity),
        }
        number, path = version.commit(manifest)
    return TaskResult(name, number, path, "tabular-classification", metrics)
