"""Tabular binary classifier: MLP 64 -> 64 -> 1 on feature rows (default: breast cancer)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from app.contract.signing import SigningKey
from training import calibration, data, evaluate
from training.common import TaskResult, export_rows_model, publish_rows_model, seed_everything
from training.mlp import BinaryClassifier, FitConfig, fit

DEFAULT_NAME = "breast-cancer"
HIDDEN = (64, 64)
DROPOUT = 0.5


def _bce(model: BinaryClassifier, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model.logits(X), y)


def run(output: Path, name: str | None, seed: int, profile: str,
        csv: Path | None = None, target_column: str | None = None,
        sign_key: SigningKey | None = None) -> TaskResult:
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
    y_test = y[splits.test].astype(int)
    with torch.no_grad():
        val_logit = model.logits(torch.from_numpy(X[splits.val])).numpy()
    model.temperature.fill_(calibration.fit_temperature(calibration.binary_logits(val_logit),
                                                        y[splits.val].astype(int)))
    temperature = float(model.temperature)  # as the graph stores it (float32)
    fitted_on = f"validation split ({len(splits.val)} rows)"
    return publish_rows_model(
        output, name or DEFAULT_NAME, "tabular-classification", model, table, splits, seed,
        profile,
        {"architecture": f"MLP {len(table.feature_names)} -> "
                         f"{' -> '.join(map(str, HIDDEN))} -> 1",
         "activation": "relu", "dropout": DROPOUT, "optimizer": "adam",
         "lr": cfg.lr, "batch_size": cfg.batch_size, "max_epochs": cfg.max_epochs,
         "patience": cfg.patience, "epochs_run": result.epochs_run,
         "best_epoch": result.best_epoch, "standardisation": "fitted on train, in graph",
         "temperature": round(temperature, 6)},
        t0,
        {"name": "probabilities", "shape": ["batch", 2],
         "meaning": "probability of each label, in `labels` order, temperature-scaled on "
                    "the validation split (see calibration)"},
        lambda probs: evaluate.classification_metrics(y_test, probs, table.label_names),
        export=export_rows_model, labels=table.label_names,
        calibrate=lambda probs: calibration.report(
            temperature, fitted_on, y_test, calibration.uncalibrated(probs, temperature), probs),
        sign_key=sign_key)
