"""ONNX Runtime session creation: provider choice, threads, and what really runs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from app.runtime.tensors import Feeds, Scores

log = logging.getLogger("ortserve.session")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


# ONNX Runtime graph rewrites skipped on the CPU provider. SkipLayerNormFusion merges each
# residual Add with the LayerNormalization after it; on the static int8 sentiment graph
# (where the residual is a dequantised copy of the previous LayerNorm's output) the fused
# kernel is slower than the two nodes it replaces: 1,250 vs 1,026 texts/s at batch 128
# (2 sessions x 1 thread, docs/benchmarks.md), at the same test accuracy. The fp32 graphs do
# not match the pattern either way. `python -m bench run` reports both on every run.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class DeviceError(RuntimeError):
    """The model does not run on the device that strict mode demands."""


def requested_providers(device: str, tensorrt: bool) -> list[str]:
    """The providers to ask for, best first; `auto` asks for CUDA only when ORT offers it."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    gpu = ([TENSORRT] if tensorrt and TENSORRT in available else []) + [CUDA]
    if device == "cuda" or CUDA in available:
        return gpu + [CPU]
    return [CPU]


@dataclass
class ModelSession:
    """A loaded ONNX model: the session plus the facts the server reports about it."""

    session: ort.InferenceSession
    requested: list[str]
    providers: list[str]
    input_names: list[str]
    output_name: str

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def output_shape(self) -> list[int | str | None]:
        """The output's declared shape; a string or None is a dynamic dimension."""
        out = next(o for o in self.session.get_outputs() if o.name == self.output_name)
        return list(out.shape)

    def run(self, feeds: Feeds, options: ort.RunOptions | None = None) -> Scores:
        """Feeds the inputs the graph has (a pipeline may offer more, e.g. segment ids)."""
        names = self.input_names
        # onnxruntime is untyped: run() returns a list of arrays, here the one output
        out: Scores = self.session.run([self.output_name],
                                       {k: v for k, v in feeds.items() if k in names},
                                       options)[0]
        return out

    def run_and_shrink(self, feeds: Feeds) -> Scores:
        """`run`, then hand the CPU memory arena's unused chunks back. After warm-up, whose
        largest batch (64 texts x 128 tokens for sentiment) grows the arena by about
        200 MB, the arena keeps only what real batches need again."""
        options = ort.RunOptions()
        if self.provider == CPU:
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return self.run(feeds, options)


def create_session(model: Path | bytes, *, device: str, strict: bool = False,
                   tensorrt: bool = False, intra_op_threads: int = 0, inter_op_threads: int = 1,
                   allow_spinning: bool = False,
                   disabled_optimizers: Sequence[str] | None = None,
                   output_name: str | None = None) -> ModelSession:
    """A session on the best provider `device` allows; `disabled_optimizers` defaults to
    CPU_DISABLED_OPTIMIZERS when the session runs on the CPU provider. `output_name`:
    the graph output the model answers with (default: the first)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    # Spinning worker threads burn the cores the event loop needs between batches.
    spin = "1" if allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    opts.log_severity_level = 3
    requested = requested_providers(device, tensorrt)
    if disabled_optimizers is None:
        disabled_optimizers = CPU_DISABLED_OPTIMIZERS if requested[0] == CPU else ()
    data = model if isinstance(model, bytes) else model.read_bytes()
    session = ort.InferenceSession(data, opts, providers=requested,
                                   disabled_optimizers=list(disabled_optimizers))
    where = "model" if isinstance(model, bytes) else str(model)
    providers = session.get_providers()
    wanted_gpu = requested[0] != CPU
    if wanted_gpu and providers[0] == CPU:
        msg = (f"{where}: asked for {requested[0]} but ONNX Runtime runs it on CPU "
               "(CUDA/cuDNN libraries missing or no GPU visible)")
        if strict:
            raise DeviceError(msg)
        log.warning(msg)
    if strict and device == "cpu" and providers[0] != CPU:
        raise DeviceError(f"{where}: runs on {providers[0]}, not CPU")
    outputs = [o.name for o in session.get_outputs()]
    if output_name is not None and output_name not in outputs:
        raise ValueError(f"the graph has no output {output_name!r} (it has {outputs})")
    return ModelSession(session, requested, providers,
                        [i.name for i in session.get_inputs()], output_name or outputs[0])
