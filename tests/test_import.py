"""`ortserve import`: graphs shaped like a Hugging Face Optimum export and a skl2onnx
conversion, built here, imported, then served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.cli import main as cli
from tests.builders import _save, build_tokenizer, text_embedding

pytestmark = pytest.mark.anyio


def optimum_like_text_graph(path: Path, vocab_size: int, batch: str | int = "batch") -> None:
    """input_ids, attention_mask, token_type_ids -> logits [batch, 3] (no softmax)."""
    emb = text_embedding(vocab_size, seed=5)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["t"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["m", "t"], ["mt"]),  # segment ids are 0 here
        helper.make_node("Unsqueeze", ["mt", "axis2"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0),
        helper.make_node("Div", ["s", "n"], ["mean"]),
        helper.make_node("Mul", ["mean", "four"], ["logits"]),
    ]
    dims = [batch, "sequence"]
    graph = helper.make_graph(
        nodes, "optimum-like",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
         for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(emb, "emb"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
         numpy_helper.from_array(np.array(4.0, dtype=np.float32), "four")])
    _save(graph, path)


def skl2onnx_like_graph(path: Path, n_features: int = 4) -> None:
    """float_input -> label (int64 [N]), probabilities (float [N, 2]), as skl2onnx writes a
    classifier converted with zipmap=False."""
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (n_features, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["float_input", "w"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=-1),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "skl2onnx-like",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w, "w")])
    _save(graph, path)


def _import(tmp_path: Path, *args: str) -> int:
    return cli(["import", *args, "--models", str(tmp_path / "models")])


async def test_an_optimum_style_text_export_imports_and_serves(make_client, tmp_path, capsys):
    tok = build_tokenizer(tmp_path / "tokenizer.json")
    optimum_like_text_graph(tmp_path / "model.onnx", tok.get_vocab_size())
    code = _import(tmp_path, str(tmp_path / "model.onnx"), "--name", "reviews", "--kind",
                   "text-classification", "--labels", "neg,neu,pos", "--tokenizer",
                   str(tmp_path / "tokenizer.json"), "--max-length", "16")
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 1 and out["test_metrics"] is None
    manifest = json.loads((tmp_path / "models/reviews/1/model.json").read_text())
    assert manifest["outputs"] == {"name": "logits", "softmax": True}  # found to be logits
    assert manifest["test_metrics"] == {} and "no test metrics" in manifest["provenance"]["note"]
    client = await make_client(tmp_path / "models", device="cpu")  # compared with CPU runs
    texts = ["good great day", "awful sad movie"]
    r = await client.post("/predict", json={"model": "reviews", "inputs": texts})
    assert r.status_code == 200, r.text
    # the same graph run directly, softmax applied by hand
    ids = [tok.encode(t).ids for t in texts]
    width = max(map(len, ids))
    feeds = {"input_ids": np.array([i + [0] * (width - len(i)) for i in ids]),
             "attention_mask": np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
             "token_type_ids": np.zeros((2, width), dtype=np.int64)}
    logits = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, feeds)[0]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for p, want in zip(r.json()["predictions"], probs, strict=True):
        assert [p["scores"][k] for k in ("neg", "neu", "pos")] == pytest.approx(want.tolist(),
                                                                                abs=1e-5)


async def test_a_skl2onnx_style_classifier_imports_and_serves(make_client, tmp_path, capsys):
    skl2onnx_like_graph(tmp_path / "clf.onnx")
    assert _import(tmp_path, str(tmp_path / "clf.onnx"), "--name", "churn", "--kind",
                   "tabular-classification", "--labels", "stay,leave") == 0
    manifest = json.loads((tmp_path / "models/churn/1/model.json").read_text())
    assert manifest["outputs"] == {"name": "probabilities"}
    assert manifest["inputs"]["tensor"] == "float_input"
    assert [f["name"] for f in manifest["inputs"]["features"]] == ["f0", "f1", "f2", "f3"]
    # a second import is the next version, never an overwrite
    assert _import(tmp_path, str(tmp_path / "clf.onnx"), "--name", "churn", "--kind",
                   "tabular-classification", "--labels", "stay,leave") == 0
    assert (tmp_path / "models/churn/2/model.json").is_file()
    client = await make_client(tmp_path / "models", device="cpu")  # compared with CPU runs
    rows = [[0.1, 2.0, -1.0, 0.5]]
    r = await client.post("/predict", json={"model": "churn", "inputs": rows})
    assert r.status_code == 200 and r.json()["version"] == 2
    want = ort.InferenceSession(str(tmp_path / "clf.onnx")).run(
        ["probabilities"], {"float_input": np.array(rows, dtype=np.float32)})[0][0]
    scores = r.json()["predictions"][0]["scores"]
    assert [scores["stay"], scores["leave"]] == pytest.approx(want.tolist(), abs=1e-6)


@pytest.mark.parametrize("build,args,message", [
    (lambda p: skl2onnx_like_graph(p), ["--kind", "tabular-classification", "--labels",
                                        "a,b,c"], "expected [2, 3]"),
    (lambda p: skl2onnx_like_graph(p), ["--kind", "tabular-classification"], "needs --labels"),
    (lambda p: skl2onnx_like_graph(p), ["--kind", "tabular-classification", "--labels", "a,b",
                                        "--features", "x,y"], "names 2 features"),
    (lambda p: optimum_like_text_graph(p, 30, batch=4),
     ["--kind", "text-classification", "--labels", "a,b,c", "--tokenizer", "TOK"],
     "batch) axis must be dynamic"),
    (lambda p: p.write_bytes(b"not onnx"), ["--kind", "tabular-regression"],
     "ONNX Runtime cannot load it"),
])
def test_a_graph_that_cannot_serve_as_declared_is_refused(tmp_path, capsys, build, args,
                                                          message):
    build_tokenizer(tmp_path / "tok.json")
    build(tmp_path / "m.onnx")
    args = [str(tmp_path / "tok.json") if a == "TOK" else a for a in args]
    assert _import(tmp_path, str(tmp_path / "m.onnx"), "--name", "x", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "models" / "x").exists() or not any(
        (tmp_path / "models" / "x").iterdir())
