"""Tiny real ONNX models and a real tokenizer.json, written as a model repository.

No torch: graphs are built with `onnx.helper`, so fixtures take milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from app.contract.manifest import MANIFEST_FILE, describe_artifact

WORDS = ["good", "great", "love", "happy", "bad", "awful", "hate", "sad", "the", "a", "is",
         "movie", "phone", "day", "ok", "fine", "it", "was", "this", "i"]
TEXT_LABELS = ["negative", "neutral", "positive"]
FEATURES = ["f0", "f1", "f2", "f3"]


def build_tokenizer(path: Path) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.save(str(path))
    return tok


def text_embedding(vocab_size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = rng.normal(0, 1, (vocab_size, 3)).astype(np.float32)
    emb[0] = 0
    return emb


def build_text_model(path: Path, vocab_size: int, seed: int = 0) -> np.ndarray:
    """Embedding lookup -> masked mean over the sequence -> softmax over 3 labels."""
    emb = text_embedding(vocab_size, seed)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),          # B,L,3
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),  # B,L
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),                   # B,L,1
        helper.make_node("Mul", ["h", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),        # B,3
        helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0),        # B,1
        helper.make_node("Max", ["n", "one"], ["n1"]),
        helper.make_node("Div", ["s", "n1"], ["mean"]),
        helper.make_node("Softmax", ["mean"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny-text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                       ["batch", "sequence"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(emb, "emb"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
         numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")])
    _save(graph, path)
    return emb


def build_rows_model(path: Path, n_features: int, classifier: bool, seed: int = 0,
                     hidden: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out = 2 if classifier else 1
    w = rng.normal(0, 1, (n_features, out)).astype(np.float32)
    b = rng.normal(0, 1, (out,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["features", "w"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["logits" if classifier else "value"])]
    weights = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if hidden:
        # features -> hidden -> hidden (x 1e-6) -> summed into z: changes nothing visible,
        # but every weight is used, so ONNX Runtime keeps them all in memory
        h1 = rng.normal(0, 1, (n_features, hidden)).astype(np.float32)
        h2 = rng.normal(0, 1, (hidden, hidden)).astype(np.float32)
        nodes[0:1] = [
            helper.make_node("MatMul", ["features", "h1"], ["a"]),
            helper.make_node("MatMul", ["a", "h2"], ["a2"]),
            helper.make_node("ReduceSum", ["a2", "axis1"], ["s"], keepdims=1),
            helper.make_node("Mul", ["s", "tiny"], ["s2"]),
            helper.make_node("MatMul", ["features", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "s2"], ["z"]),
        ]
        weights += [numpy_helper.from_array(h1, "h1"), numpy_helper.from_array(h2, "h2"),
                    numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
                    numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "tiny")]
    if classifier:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    name = "probabilities" if classifier else "value"
    graph = helper.make_graph(
        nodes, "tiny-rows",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", out])],
        weights)
    _save(graph, path)


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def add_unrunnable_model(root: Path, name: str, version: int) -> Path:
    """A classifier that loads but fails on every input (a Gather past its table): its
    warm-up fails."""
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    nodes = [
        helper.make_node("Slice", ["features", "s0", "s1", "ax1"], ["f0"]),
        helper.make_node("Cast", ["f0"], ["i0"], to=TensorProto.INT64),
        helper.make_node("Add", ["i0", "five"], ["i5"]),
        helper.make_node("Gather", ["table", "i5"], ["g"], axis=0),
        helper.make_node("Reshape", ["g", "shape"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "unrunnable",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(FEATURES)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.zeros((2, 2), dtype=np.float32), "table"),
         numpy_helper.from_array(np.array([0], dtype=np.int64), "s0"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "s1"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1"),
         numpy_helper.from_array(np.array(5, dtype=np.int64), "five"),
         numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "shape")])
    _save(graph, folder / "model.onnx")
    write_manifest(folder, {
        "name": name, "version": version, "kind": "tabular-classification",
        "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "model.onnx"})
    return folder


def write_manifest(folder: Path, manifest: dict) -> dict:
    artifacts = {f.name: describe_artifact(f).model_dump() for f in sorted(folder.iterdir())
                 if f.name != MANIFEST_FILE}
    manifest = {**manifest, "artifacts": artifacts}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def add_text_model(root: Path, name: str = "sentiment", version: int = 1,
                   max_length: int = 16, batching: dict | None = None) -> Path:
    """Each version has its own weights (seed version - 1), so answers tell them apart."""
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    tok = build_tokenizer(folder / "tokenizer.json")
    build_text_model(folder / "model.onnx", tok.get_vocab_size(), seed=version - 1)
    write_manifest(folder, {
        "name": name, "version": version, "kind": "text-classification",
        "labels": TEXT_LABELS, "inputs": {"type": "text", "max_length": max_length},
        "outputs": {"name": "probabilities"}, "model_file": "model.onnx",
        "tokenizer_file": "tokenizer.json",
        "batching": batching or {"max_batch_size": 8, "max_batch_tokens": 8 * max_length},
        "test_metrics": {"accuracy": 0.5}})
    return folder


def add_rows_model(root: Path, name: str, classifier: bool, version: int = 1,
                   batching: dict | None = None, hidden: int = 0) -> Path:
    """Each version has its own weights (seed version - 1). `hidden` > 0 adds a hidden
    layer of that width (a hidden x hidden weight matrix: a model of visible size)."""
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    build_rows_model(folder / "model.onnx", len(FEATURES), classifier, seed=version - 1,
                     hidden=hidden)
    write_manifest(folder, {
        "name": name, "version": version,
        "kind": "tabular-classification" if classifier else "tabular-regression",
        "labels": ["no", "yes"] if classifier else None,
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities" if classifier else "value"},
        "model_file": "model.onnx", "batching": batching or {"max_batch_size": 16},
        "test_metrics": {}})
    return folder


def build_repository(root: Path) -> Path:
    add_text_model(root)
    add_rows_model(root, "tabular", classifier=True)
    add_rows_model(root, "regression", classifier=False)
    return root


def build_fragile_rows_model(path: Path, n_features: int) -> None:
    """A classifier whose run fails (Gather out of bounds) when feature 0 is >= 2."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (n_features, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Slice", ["features", "s0", "s1", "ax1"], ["f0"]),
        helper.make_node("Cast", ["f0"], ["i0"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "i0"], ["g"], axis=0),
        helper.make_node("MatMul", ["features", "w"], ["z"]),
        helper.make_node("Add", ["z", "g"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "fragile",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.zeros(2, dtype=np.float32), "table"),
         numpy_helper.from_array(np.array([0], dtype=np.int64), "s0"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "s1"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1")])
    _save(graph, path)


def _add_classifier(root: Path, name: str, build, max_batch_size: int) -> Path:
    """A version-1 tabular classifier whose graph `build(path, n_features)` writes."""
    folder = root / name / "1"
    folder.mkdir(parents=True)
    build(folder / "model.onnx", len(FEATURES))
    write_manifest(folder, {
        "name": name, "version": 1, "kind": "tabular-classification", "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "model.onnx",
        "batching": {"max_batch_size": max_batch_size}})
    return folder


def add_fragile_model(root: Path, name: str = "fragile") -> Path:
    return _add_classifier(root, name, build_fragile_rows_model, 4)


def build_slow_rows_model(path: Path, n_features: int, size: int = 1536) -> None:
    """A classifier that spends real compute on every run: a size^3 MatMul that depends on
    the input (so it cannot be folded away), multiplied by zero before the output."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (n_features, 2)).astype(np.float32)
    big = rng.normal(0, 1, (size, size)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["features"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["z0"]),
        helper.make_node("Add", ["z0", "one"], ["scale"]),
        helper.make_node("Mul", ["big", "scale"], ["big_s"]),
        helper.make_node("MatMul", ["big_s", "big"], ["prod1"]),
        helper.make_node("MatMul", ["prod1", "big"], ["prod"]),
        helper.make_node("ReduceSum", ["prod"], ["noise"], keepdims=0),
        helper.make_node("Mul", ["noise", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["features", "w"], ["z"]),
        helper.make_node("Add", ["z", "nothing"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(big, "big"),
         numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"),
         numpy_helper.from_array(np.array(1, dtype=np.float32), "one")])
    _save(graph, path)


def add_slow_model(root: Path, name: str = "slow", max_batch_size: int = 1,
                   size: int = 1536) -> Path:
    return _add_classifier(root, name, lambda p, n: build_slow_rows_model(p, n, size),
                           max_batch_size)


def add_odd_shape_regressor(root: Path, name: str = "odd") -> Path:
    """A regressor whose output is [batch, 1, 1]: its width checks out, but no API knows
    how to encode a row of it."""
    folder = root / name / "1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (len(FEATURES), 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["features", "w"], ["z"]),
             helper.make_node("Unsqueeze", ["z", "axis"], ["value"])]
    graph = helper.make_graph(
        nodes, "odd",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(FEATURES)])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1, 1])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis")])
    _save(graph, folder / "model.onnx")
    write_manifest(folder, {
        "name": name, "version": 1, "kind": "tabular-regression",
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "value"}, "model_file": "model.onnx"})
    return folder


def add_variants_model(root: Path, name: str = "variants") -> Path:
    """A classifier with four variants: `slow` (the manifest's default: a wide hidden
    layer), `fast` (tiny, as accurate), `wrong` (fastest, but 5 points less accurate) and
    `drifty` (fast, but its outputs move with its batch mates)."""
    folder = root / name / "1"
    folder.mkdir(parents=True)
    # 1536 x 1536 hidden weights: 2.4 M multiply-adds per input, against 8 for the others
    build_rows_model(folder / "slow.onnx", len(FEATURES), True, hidden=1536)
    for f in ("fast", "wrong", "drifty"):
        build_rows_model(folder / f"{f}.onnx", len(FEATURES), True)
    def variant(file: str, accuracy: float, drift: float) -> dict:
        return {"file": file, "test_metrics": {"accuracy": accuracy},
                "batch_invariance_max_diff": drift}

    write_manifest(folder, {
        "name": name, "version": 1, "kind": "tabular-classification", "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "slow.onnx",
        "batching": {"max_batch_size": 64},
        "variants": {"slow": variant("slow.onnx", 0.90, 0.0),
                     "fast": variant("fast.onnx", 0.895, 1e-7),
                     "wrong": variant("wrong.onnx", 0.85, 0.0),
                     "drifty": variant("drifty.onnx", 0.90, 1e-3)}})
    return folder


def add_distilled_model(root: Path, name: str = "distilled") -> Path:
    """A classifier with a `teacher` (the manifest's default: a wide hidden layer, accuracy
    0.90) and a distilled `student` (tiny, accuracy 0.88, batch-invariant), and the
    teacher's calibration as the trainer records it."""
    folder = root / name / "1"
    folder.mkdir(parents=True)
    build_rows_model(folder / "teacher.onnx", len(FEATURES), True, hidden=1536)
    build_rows_model(folder / "student.onnx", len(FEATURES), True)
    calibration = {"method": "temperature", "temperature": 1.25, "fitted_on": "validation",
                   "bins": 15, "n": 200, "ece_before": 0.061, "ece_after": 0.018,
                   "brier_before": 0.19, "brier_after": 0.17}
    write_manifest(folder, {
        "name": name, "version": 1, "kind": "tabular-classification", "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "teacher.onnx",
        "batching": {"max_batch_size": 64}, "calibration": calibration,
        "variants": {
            "teacher": {"file": "teacher.onnx", "test_metrics": {"accuracy": 0.90},
                        "batch_invariance_max_diff": 0.0, "calibration": calibration},
            "student": {"file": "student.onnx", "test_metrics": {"accuracy": 0.88},
                        "batch_invariance_max_diff": 1e-7, "distilled_from": "teacher"}}})
    return folder
