"""Request bodies drawn from the held-out test splits the models never trained on."""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass

import numpy as np


@dataclass
class Workload:
    name: str
    path: str
    bodies: list[bytes]       # JSON request bodies, cycled through by the load generator
    inputs_per_request: int
    model: str


@functools.cache
def heldout_texts(seed: int = 42) -> list[str]:
    from training import data

    tweets = data.load_tweets()
    y = np.array([tweets.label_names.index(lab) for lab in tweets.labels])
    splits = data.split_indices(len(y), y, seed=seed, test_size=0.1, val_size=0.1)
    return [tweets.texts[i] for i in splits.test]


@functools.cache
def heldout_rows(seed: int = 42) -> list[list[float]]:
    from training import data

    table = data.load_breast_cancer()
    splits = data.split_indices(len(table.y), table.y, seed=seed, test_size=0.2, val_size=0.16)
    return table.X[splits.test].astype(float).round(6).tolist()


def _bodies(model: str, items: list, per_request: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [json.dumps({"model": model, "inputs": rng.sample(items, per_request)}).encode()
            for _ in range(count)]


def text_workload(model: str, per_request: int, count: int = 500, seed: int = 0) -> Workload:
    return Workload(f"text x{per_request}", "/predict",
                    _bodies(model, heldout_texts(), per_request, count, seed), per_request, model)


def rows_workload(model: str, per_request: int, count: int = 500, seed: int = 0) -> Workload:
    return Workload(f"tabular x{per_request}", "/predict",
                    _bodies(model, heldout_rows(), per_request, count, seed), per_request, model)
