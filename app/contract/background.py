"""The background of a feature model's explanations: rows of its training split.

An explanation of a row asks what the model says when some features are unknown; an unknown
feature takes its values from these rows, and the model's outputs are averaged over them
(interventional Shapley values, as KernelSHAP and `shap`'s explainers compute with a
background sample). The file is JSON: {"features": [names in manifest order], "rows":
[[numbers]...], "source": "where the rows came from", "ranges": optional {"min": [...],
"max": [...]} of the whole training split, per feature}, listed in the manifest's artifacts
(`background_file`), so the server verifies it like the model. The ranges give the
playground's form its bounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKGROUND_FILE = "background.json"
# Rows the trainer samples: each coalition of features costs this many model evaluations,
# and 10 rows is what shap's documentation suggests summarising a background to.
DEFAULT_ROWS = 10
MAX_ROWS = 100


class BadBackground(ValueError):
    pass


def write_background(path: Path, features: list[str], rows: np.ndarray, source: str,
                     ranges: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(features) or not 1 <= len(rows) <= MAX_ROWS:
        raise BadBackground(f"a background needs 1 to {MAX_ROWS} rows of {len(features)} "
                            f"features, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise BadBackground("background rows must be finite numbers")
    doc = {"features": features, "rows": rows.tolist(), "source": source}
    if ranges is not None:
        doc["ranges"] = {"min": np.asarray(ranges[0], dtype=np.float64).tolist(),
                         "max": np.asarray(ranges[1], dtype=np.float64).tolist()}
    path.write_text(json.dumps(doc) + "\n")


@dataclass(frozen=True)
class Background:
    rows: np.ndarray  # float32 (k, features), manifest order
    source: str  # where the rows came from
    # per feature: name, min, max (of the training split when the file has them, else of
    # its rows) and a typical value (the rows' median), for forms that fill a row
    ranges: list[dict]


def read_background(data: bytes, features: list[str]) -> Background:
    try:
        doc = json.loads(data)
        names, rows = doc["features"], doc["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadBackground(f"background: not the expected JSON ({exc})") from None
    if names != features:
        raise BadBackground("background: its features differ from the manifest's")
    if (not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS
            or any(not isinstance(r, list) or len(r) != len(features) for r in rows)
            or any(not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)
                   for r in rows for v in r)):
        raise BadBackground(f"background: needs 1 to {MAX_ROWS} rows of {len(features)} "
                            "finite numbers")
    table = np.asarray(rows, dtype=np.float64)
    given = doc.get("ranges") or {}
    lo = given.get("min") or table.min(axis=0).tolist()
    hi = given.get("max") or table.max(axis=0).tolist()
    mid = np.median(table, axis=0).tolist()
    ranges = [{"name": f, "min": lo[j], "max": hi[j], "typical": mid[j]}
              for j, f in enumerate(features)]
    return Background(table.astype(np.float32), str(doc.get("source", "")), ranges)


def sample_rows(X: np.ndarray, seed: int, k: int = DEFAULT_ROWS) -> np.ndarray:
    """k rows of X drawn without replacement (all of them when X has fewer)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(X), size=min(k, len(X)), replace=False)
    return X[np.sort(idx)]
