"""`ortserve import`: bring your own ONNX graph into the repository, without the trainer.

The graph is checked the way the server will use it (its inputs and outputs fit the kind,
the batch axis is dynamic, it runs once on ONNX Runtime and answers one row per input of
the declared width), then published as the model's next version with a manifest whose
hashes the server verifies (and signed, given a private key). The graph is read once: what
is checked is what is copied. A graph that keeps tensors in other files (external data)
is refused, as the repository would refuse it. A Hugging Face Optimum export of a
sequence classifier (input_ids, attention_mask, token_type_ids -> logits) and a
scikit-learn model converted by skl2onnx (float_input -> label, probabilities;
`zipmap=False`) both serve this way.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.contract.background import BACKGROUND_FILE, MAX_ROWS, write_background
from app.contract.graphscan import NotAGraph, external_tensors
from app.contract.manifest import NAME_PATTERN, Kind
from app.contract.publish import new_version
from app.contract.signing import SigningKey

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PROBE_TEXTS = ["a first short text to check the graph", "and a second one"]


class GraphRejected(ValueError):
    """The graph cannot serve as declared; the message says why."""


@dataclass
class ImportRequest:
    model: Path
    name: str
    kind: Kind
    models_dir: Path
    labels: list[str] | None = None
    tokenizer: Path | None = None
    features: list[str] | None = None
    max_length: int = 128
    output: str | None = None
    softmax: bool | None = None  # None: decided by running the graph
    background: Path | None = None  # CSV of rows for explanations (feature models)
    sign_key: SigningKey | None = None  # sign the version as it is published


def _dynamic(dim) -> bool:
    return not isinstance(dim, int) or dim <= 0


def _check_batch_axis(session: ort.InferenceSession) -> None:
    for i in session.get_inputs():
        if not i.shape or not _dynamic(i.shape[0]):
            raise GraphRejected(f"input {i.name!r} has shape {i.shape}: its first (batch) axis "
                               "must be dynamic so that requests can be batched "
                               "(re-export with a dynamic batch axis)")


def _pick_output(session: ort.InferenceSession, wanted: str | None) -> ort.NodeArg:
    outputs = session.get_outputs()
    if wanted is not None:
        for o in outputs:
            if o.name == wanted:
                return o
        raise GraphRejected(f"the graph has no output {wanted!r} "
                           f"(it has {[o.name for o in outputs]})")
    floats = [o for o in outputs if o.type == "tensor(float)"]
    if not floats:
        raise GraphRejected(f"no float tensor output among {[(o.name, o.type) for o in outputs]}"
                           " (skl2onnx classifiers: convert with options zipmap=False)")
    return floats[-1] if len(floats) > 1 and floats[0].name == "label" else floats[0]


def _text_feeds(session: ort.InferenceSession, tokenizer_path: Path, max_length: int):
    from tokenizers import Tokenizer

    names = [i.name for i in session.get_inputs()]
    unknown = [n for n in names if n not in TEXT_INPUTS]
    if "input_ids" not in names or unknown:
        raise GraphRejected(f"a text model's graph takes input_ids (and optionally "
                           f"attention_mask, token_type_ids); this one takes {names}")
    try:
        tok = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise GraphRejected(f"{tokenizer_path}: not a tokenizers JSON file ({exc})") from exc
    tok.no_padding()
    tok.enable_truncation(max_length)
    enc = tok.encode_batch(PROBE_TEXTS)
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, e in enumerate(enc):
        ids[r, :len(e.ids)], mask[r, :len(e.ids)] = e.ids, 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in feeds.items() if k in names}


def _rows_feeds(session: ort.InferenceSession, features: list[str] | None):
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2:
        raise GraphRejected("a tabular model's graph takes one float32 input of shape "
                           f"[batch, features]; this one takes "
                           f"{[(i.name, i.type, i.shape) for i in inputs]}")
    width = inputs[0].shape[1]
    if features is None:
        if _dynamic(width):
            raise GraphRejected("the graph does not fix its number of features: name them "
                               "with --features")
        features = [f"f{j}" for j in range(width)]
    elif not _dynamic(width) and width != len(features):
        raise GraphRejected(f"--features names {len(features)} features, the graph takes "
                           f"{width}")
    return {inputs[0].name: np.zeros((2, len(features)), dtype=np.float32)}, features, \
        inputs[0].name


def read_graph(path: Path) -> bytes:
    """The graph's bytes, refused when it keeps tensors in other files: ONNX Runtime would
    read them from beside the graph here, and from the server's working directory when it
    loads the graph from bytes."""
    data = path.read_bytes()
    try:
        external = external_tensors(data)
    except NotAGraph as exc:
        raise GraphRejected(f"{path}: ONNX Runtime cannot load it: not an ONNX graph "
                            f"({exc})") from None
    if external:
        raise GraphRejected(
            f"{path}: keeps tensors in other files (external data: "
            f"{', '.join(external[:3])}{', ...' if len(external) > 3 else ''}); the "
            "repository serves self-contained graphs only (re-save it with the weights "
            "inside: onnx.save(onnx.load(path), path, save_as_external_data=False))")
    return data


def inspect(req: ImportRequest, graph: bytes) -> dict:
    """Check the graph (`graph`: its bytes, from read_graph); return the manifest fields
    that describe it."""
    if not NAME_PATTERN.match(req.name):
        raise GraphRejected(f"model name {req.name!r} must match {NAME_PATTERN.pattern}")
    classifier = req.kind != "tabular-regression"
    if classifier and (not req.labels or len(req.labels) < 2):
        raise GraphRejected(f"{req.kind} needs --labels (at least two, in output order)")
    if not classifier and req.labels:
        raise GraphRejected("a regressor takes no --labels")
    if (req.kind == "text-classification") != (req.tokenizer is not None):
        raise GraphRejected("--tokenizer is needed for text-classification, and only there")
    try:
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's graph
        raise GraphRejected(f"{req.model}: ONNX Runtime cannot load it: {exc}") from exc
    _check_batch_axis(session)
    fields: dict = {}
    if req.kind == "text-classification":
        assert req.tokenizer is not None  # checked above
        feeds = _text_feeds(session, req.tokenizer, req.max_length)
        fields["inputs"] = {"type": "text", "max_length": req.max_length}
    else:
        feeds, features, tensor = _rows_feeds(session, req.features)
        fields["inputs"] = {"type": "features", "features": [{"name": f} for f in features],
                            **({"tensor": tensor} if tensor != "features" else {})}
    out = _pick_output(session, req.output)
    try:
        result = session.run([out.name], feeds)[0]
    except Exception as exc:  # noqa: BLE001
        raise GraphRejected(f"the graph fails on a batch of 2: {exc}") from exc
    want = len(req.labels) if classifier and req.labels else 1
    rows = result.reshape(result.shape[0], -1) if result.ndim <= 2 else None
    if rows is None or rows.shape != (2, want):
        raise GraphRejected(f"output {out.name!r} answered shape {list(result.shape)} for 2 "
                           f"inputs; expected [2, {want}]"
                           + (" (one column per label)" if classifier else ""))
    softmax = req.softmax
    if classifier and softmax is None:  # scores that are not probabilities are logits
        softmax = not (np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1, atol=1e-3))
    fields["outputs"] = {"name": out.name, **({"softmax": True} if softmax else {})}
    return fields


def background_rows(path: Path, features: list[str]) -> np.ndarray:
    """A background CSV: a header row naming the model's features (any order), then 1 to
    MAX_ROWS rows of numbers; returned in the manifest's feature order."""
    import csv

    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    if not table or sorted(table[0]) != sorted(features):
        raise GraphRejected(f"--background {path}: its header must name the features "
                            f"{features}")
    order = [table[0].index(f) for f in features]
    try:
        rows = np.asarray([[float(r[j]) for j in order] for r in table[1:] if r],
                          dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise GraphRejected(f"--background {path}: {exc}") from None
    if not 1 <= len(rows) <= MAX_ROWS or not np.isfinite(rows).all():
        raise GraphRejected(f"--background {path}: needs 1 to {MAX_ROWS} rows of finite "
                            "numbers (a sample of the training data; 10 is plenty)")
    return rows


def import_model(req: ImportRequest) -> tuple[int, Path]:
    data = read_graph(req.model)
    fields = inspect(req, data)
    if req.background is not None and req.kind == "text-classification":
        raise GraphRejected("--background is for feature models (text explanations mask "
                            "words instead)")
    features = [f["name"] for f in fields["inputs"].get("features", [])]
    background = (background_rows(req.background, features) if req.background is not None
                  else None)
    with new_version(req.models_dir, req.name, req.sign_key) as writer:
        if background is not None and req.background is not None:
            write_background(writer.dir / BACKGROUND_FILE, features, background,
                             f"imported from {req.background.name}")
        (writer.dir / "model.onnx").write_bytes(data)
        if req.tokenizer is not None:
            shutil.copyfile(req.tokenizer, writer.dir / "tokenizer.json")
        manifest = {
            "name": req.name, "kind": req.kind, "labels": req.labels, **fields,
            "model_file": "model.onnx",
            "tokenizer_file": "tokenizer.json" if req.tokenizer is not None else None,
            "background_file": BACKGROUND_FILE if background is not None else None,
            "test_metrics": {},
            "provenance": {
                "imported_from": str(req.model.resolve()),
                "source_sha256": hashlib.sha256(data).hexdigest(),
                "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "note": "imported with `ortserve import`: no test metrics (the server did "
                        "not train or evaluate it)",
            },
        }
        return writer.commit(manifest)  # validates the manifest before publishing
