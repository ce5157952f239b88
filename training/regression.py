"""Tabular regressor: MLP 10 -> 100 -> 1 on feature rows (default: diabetes)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from app.contract.signing import SigningKey
from training import data, evaluate
from training.common import TaskResult, export_rows_model, publish_rows_model, seed_everything
from training.mlp import FitConfig, Regressor, fit

DEFAULT_NAME = "diabetes"
HIDDEN = (100,)
MAX_EPOCHS = {"quick": 300, "full": 1000}


def _mse(model: Regressor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Loss on the standardised target keeps Adam's step size meaningful for any units.
    return nn.functional.mse_loss(model.scaled(X), (y - model.y_mean) / model.y_std)


def run(output: Path, name: str | None, seed: int, profile: str,
        csv: Path | None = None, target_column: str | None = None,
        sign_key: SigningKey | None = None) -> TaskResult:
    t0 = time.perf_counter()
    table = (data.load_table_csv(csv, target_column, classification=False) if csv
             else data.load_diabetes())
    splits = data.split_indices(len(table.y), None, seed=seed, test_size=0.2, val_size=0.16)
    seed_everything(seed)
    X, y = table.X, table.y
    Xtr, ytr = X[splits.train], y[splits.train]
    model = Regressor(Xtr.mean(0), Xtr.std(0), float(ytr.mean()), float(ytr.std() or 1.0),
                      HIDDEN)
    cfg = FitConfig(seed=seed, max_epochs=MAX_EPOCHS[profile], patience=20)
    result = fit(model, _mse, Xtr, ytr, X[splits.val], y[splits.val], cfg,
                 desc=f"{name or DEFAULT_NAME} (regression)")
    y_test = y[splits.test]
    return publish_rows_model(
        output, name or DEFAULT_NAME, "tabular-regression", model, table, splits, seed,
        profile,
        {"architecture": f"MLP {len(table.feature_names)} -> "
                         f"{' -> '.join(map(str, HIDDEN))} -> 1",
         "activation": "relu", "optimizer": "adam", "lr": cfg.lr,
         "batch_size": cfg.batch_size, "max_epochs": cfg.max_epochs,
         "patience": cfg.patience, "epochs_run": result.epochs_run,
         "best_epoch": result.best_epoch,
         "standardisation": "features and target fitted on train, in graph"},
        t0,
        {"name": "value", "shape": ["batch", 1],
         "meaning": "predicted target in the units of the training data"},
        lambda values: evaluate.regression_metrics(y_test, values[:, 0]),
        export=export_rows_model, sign_key=sign_key)
