"""ONNX export, torch-vs-ONNX Runtime parity check and static int8 quantisation."""

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
    """A CPU session built the way the server builds one, so that the test metrics written
    to the manifest are those of the graph ONNX Runtime serves."""
    from app.runtime.session import create_session

    return create_session(path, device="cpu", intra_op_threads=threads).session


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


def quantize_int8(src: Path, dst: Path, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """Static (calibrated) int8 quantisation of the weight MatMuls, in QDQ format.

    Activation ranges are fixed from `calibration` (min/max), so an input's output never
    depends on what it is batched with; dynamic quantisation computes the activation scale
    over the whole batch tensor and moved one input's probabilities by up to 0.15 between
    running alone and in a batch of 64. Choices, each measured on the sentiment model at
    batch 64 on 2 cores (fp32: 201 inputs/s):
    - uint8 activations, symmetric per-channel int8 weights (int8 activations: 196/s, and
      3 points less accuracy);
    - MatMul outputs stay float, so ONNX Runtime fuses each DequantizeLinear -> MatMul into
      MatMulIntegerToFloat (with requantised outputs: 309/s);
    - one DequantizeLinear per consumer, so the query/key/value MatMuls that share an input
      fuse too (without: 359/s; with: 414/s);
    - attention's activation-by-activation MatMuls stay float (little time, most error).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    model = onnx.load(str(src))
    weights = {init.name for init in model.graph.initializer}
    activation_matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"
                          and not any(name in weights for name in node.input)]
    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=activation_matmuls,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "DedicatedQDQPair": True,
                       "OpTypesToExcludeOutputQuantization": ["MatMul"]})


def run_onnx(path: Path, feeds_batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """Concatenate the first output of `path` over several feed batches."""
    session = ort_session(path)
    return np.concatenate([session.run(None, f)[0] for f in feeds_batches], axis=0)
