"""Evaluation metrics for the held-out test split, in the shape the manifest stores."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1, macro-F1, confusion matrix, expected
    calibration error (15 bins) and Brier score; ROC-AUC if binary."""
    from training.calibration import brier_score, expected_calibration_error

    y_pred = probs.argmax(axis=1)
    k = list(range(len(labels)))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=k,
                                                       zero_division=0)
    out = {
        "n": int(len(y_true)),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=k, average="macro",
                                         zero_division=0)), 4),
        "per_class": {
            lab: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                  "f1": round(float(f[i]), 4), "support": int(support[i])}
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=k).tolist(),
        "ece": round(expected_calibration_error(probs, y_true), 4),
        "brier": round(brier_score(probs, y_true), 4),
    }
    if len(labels) == 2:
        out["roc_auc"] = round(float(roc_auc_score(y_true, probs[:, 1])), 4)
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {
        "n": int(len(y_true)),
        "mae": round(float(mean_absolute_error(y_true, y_pred)), 4),
        "rmse": round(float(np.sqrt(mean_squared_error(y_true, y_pred))), 4),
        "r2": round(float(r2_score(y_true, y_pred)), 4),
    }


def headline(metrics: dict) -> str:
    """One short line for the summary table."""
    keys = ("accuracy", "macro_f1", "roc_auc", "mae", "rmse", "r2")
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
