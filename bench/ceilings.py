"""In-process ceilings: what ONNX Runtime does with the same model file, threads and texts
when no server stands in between (tokenization and post-processing included)."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import numpy as np

from app.api.v1.codec import encode
from app.contract.manifest import Manifest
from app.pipelines import build_pipeline
from app.runtime.session import create_session
from app.settings import Settings


def load(folder: Path, model_file: str | None = None, threads: int = 0,
         disabled_optimizers: tuple[str, ...] | None = None):
    manifest = Manifest.model_validate_json((folder / "model.json").read_text())
    pipeline = build_pipeline(manifest, folder, max_inputs=10_000, max_rows=10_000)
    # the service's device setting (ORTSERVE_DEVICE), so that a GPU run compares GPU to GPU
    session = create_session(folder / (model_file or manifest.model_file),
                             device=Settings().device, intra_op_threads=threads,
                             disabled_optimizers=disabled_optimizers,
                             output_name=manifest.outputs.get("name"))

    def predict(inputs: list) -> list[dict]:
        payloads, _ = pipeline.preprocess(inputs)
        return encode(manifest.labels, pipeline.run_batch(session.run, payloads))

    return predict


def model_ceiling(folder: Path, inputs: list, model_file: str | None = None, threads: int = 0,
                  batch_sizes=(1, 8, 16, 32, 64, 128), seconds: float = 3.0,
                  parallel: int = 1, disabled_optimizers: tuple[str, ...] | None = None,
                  single: bool = True) -> dict:
    """Best inputs/s over batch sizes, and single-item latency (p50 over repeated runs).

    `parallel` sessions run side by side in threads (ONNX Runtime releases the GIL), the
    in-process counterpart of that many worker processes with `threads` threads each.
    `disabled_optimizers` None: the server's choice (see app.runtime.session). `single`
    False skips the single-item latency loop.
    """
    predictors = [load(folder, model_file, threads, disabled_optimizers)
                  for _ in range(parallel)]
    predict = predictors[0]
    for p in predictors:
        for _ in range(3):
            p(inputs[:64])
    by_batch, cpu_by_batch = {}, {}
    for b in batch_sizes:
        counts = [0] * parallel
        cpu0 = time.process_time()  # every thread of this process: tokenizing, ORT, Python
        t0 = time.perf_counter()

        def loop(k: int, b: int = b, t0: float = t0, counts: list = counts) -> None:
            rng = np.random.default_rng(k)
            while time.perf_counter() - t0 < seconds:
                idx = rng.integers(0, len(inputs), b)
                predictors[k]([inputs[i] for i in idx])
                counts[k] += b

        workers = [threading.Thread(target=loop, args=(k,)) for k in range(parallel)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        by_batch[b] = sum(counts) / (time.perf_counter() - t0)
        cpu_by_batch[b] = (time.process_time() - cpu0) / max(sum(counts), 1)
    lat = []
    t_end = time.perf_counter() + (seconds if single else 0)
    i = 0
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        predict([inputs[i % len(inputs)]])
        lat.append(time.perf_counter() - t)
        i += 1
    best = max(by_batch, key=by_batch.get)
    return {"throughput": by_batch[best], "best_batch": best, "parallel": parallel,
            "threads": threads,
            "by_batch": {str(k): round(v, 1) for k, v in by_batch.items()},
            # CPU seconds per input of the whole in-process pipeline, by batch size
            "cpu_ms_per_input": {str(k): round(v * 1000, 4) for k, v in cpu_by_batch.items()},
            "single_p50_ms": statistics.median(lat) * 1000 if lat else None,
            "batch64_over_batch1": by_batch.get(64, 0) / by_batch[1] if 1 in by_batch else None}
