"""In-process ceilings: what ONNX Runtime does with the same model file, threads and texts
when no server stands in between (tokenization and post-processing included)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from app.manifest import Manifest
from app.pipelines import build_pipeline
from app.runtime.session import create_session


def load(folder: Path, model_file: str | None = None, threads: int = 0):
    manifest = Manifest.model_validate_json((folder / "model.json").read_text())
    pipeline = build_pipeline(manifest, folder, max_inputs=10_000, max_rows=10_000)
    session = create_session(folder / (model_file or manifest.model_file), "cpu", False,
                             intra_op_threads=threads)
    names = set(session.input_names)

    def session_run(feeds: dict):
        return session.run({k: v for k, v in feeds.items() if k in names})

    def predict(inputs: list) -> list[dict]:
        payloads, _ = pipeline.preprocess(inputs)
        return pipeline.postprocess(pipeline.run_batch(session_run, payloads))

    return predict


def model_ceiling(folder: Path, inputs: list, model_file: str | None = None, threads: int = 0,
                  batch_sizes=(1, 8, 16, 32, 64, 128), seconds: float = 3.0) -> dict:
    """Best inputs/s over batch sizes, and single-item latency (p50 over repeated runs)."""
    predict = load(folder, model_file, threads)
    rng = np.random.default_rng(0)
    for _ in range(3):
        predict(inputs[:64])
    by_batch = {}
    for b in batch_sizes:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            idx = rng.integers(0, len(inputs), b)
            predict([inputs[i] for i in idx])
            done += b
        by_batch[b] = done / (time.perf_counter() - t0)
    lat = []
    t_end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        predict([inputs[i % len(inputs)]])
        lat.append(time.perf_counter() - t)
        i += 1
    best = max(by_batch, key=by_batch.get)
    return {"throughput": by_batch[best], "best_batch": best,
            "by_batch": {str(k): round(v, 1) for k, v in by_batch.items()},
            "single_p50_ms": statistics.median(lat) * 1000,
            "batch64_over_batch1": by_batch.get(64, 0) / by_batch[1] if 1 in by_batch else None}
