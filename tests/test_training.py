"""The trainer on tiny data: CSV validation, splits, export parity, repository writes.

These need the `train` extra (torch, transformers); a tiny random BERT stands in for
MiniLM so that a whole text train -> export -> quantise -> serve run takes seconds.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.servers import module

torch = module("torch")

from app.contract.manifest import MANIFEST_FILE, Manifest, sha256_file  # noqa: E402
from training import data  # noqa: E402
from training.__main__ import main as train_main  # noqa: E402
from training.export import ExportError, check_parity, export_onnx, ort_session  # noqa: E402

WORDS = {"positive": ["love", "great", "happy", "wonderful", "best"],
         "negative": ["hate", "awful", "sad", "terrible", "worst"],
         "neutral": ["table", "monday", "report", "train", "paper"]}


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def table_rows(n: int, seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x = rng.normal(size=3)
        rows.append([*np.round(x, 4), "yes" if x[0] + x[1] > 0 else "no"])
    return rows


def text_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    labels = list(WORDS)
    rows = []
    for i in range(n):
        lab = labels[i % 3]
        words = list(rng.choice(WORDS[lab], 3)) + [f"w{i}"]
        rows.append([" ".join(words), lab])
    return rows


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 2-layer random BERT with the real MiniLM tokenizer, saved like a HF folder."""
    from transformers import BertConfig, BertModel

    from training.sentiment import encoder_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    shutil.copy(encoder_path() / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.mark.parametrize("content,args,message", [
    (None, ["tabular", "--target-column", "y"], "file not found"),
    ([["a", "b", "y"], [1, 2, "p"], [3, 4, "q"]], ["tabular", "--target-column", "zz"],
     "column 'zz' not found"),
    ([["a", "b", "y"], [1, 2, "p"], [3, "x7", "q"]], ["tabular", "--target-column", "y"],
     "row 3, column 'b': non-numeric value 'x7'"),
    ([["a", "y"]] + [[i, "p"] for i in range(30)], ["tabular", "--target-column", "y"],
     "exactly two classes"),
    ([["a", "y"], [1, "p"], [2, "q"], [3, "p"]], ["tabular", "--target-column", "y"],
     "too few rows"),
    ([["t", "l"], ["hello", "a"], ["", "b"]],
     ["sentiment", "--text-column", "t", "--label-column", "l"], "row 3: empty text"),
    ([["t", "l"], ["hello", "a"], ["bye", "a"]],
     ["sentiment", "--text-column", "t", "--label-column", "l"], "one class only"),
])
def test_bad_csv_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, content,
                                                                 args, message):
    path = tmp_path / "data.csv"
    if content is not None:
        write_csv(path, content[0], content[1:])
    out = tmp_path / "models"
    code = train_main([args[0], "--csv", str(path), "--output", str(out), *args[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(p for p in out.rglob("*") if p.is_file())


def test_tweets_have_no_duplicate_text_across_splits():
    tweets = data.load_tweets()
    assert 800 < tweets.duplicates_dropped < 1100
    y = np.array([tweets.label_names.index(lab) for lab in tweets.labels])
    s = data.split_indices(len(y), y, seed=42, test_size=0.1, val_size=0.1)
    norm = [" ".join(t.split()).lower() for t in tweets.texts]
    parts = [{norm[i] for i in idx} for idx in (s.train, s.val, s.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sum(map(len, parts)) == len(y)
    # stratified: class shares agree within a point
    shares = [np.bincount(y[idx], minlength=3) / len(idx) for idx in (s.train, s.test)]
    assert np.abs(shares[0] - shares[1]).max() < 0.01


class ShapeBaker(torch.nn.Module):
    """Uses a Python int from the input shape: the tracer bakes the example's batch in."""

    def forward(self, features):
        n = int(features.shape[0])
        return features.reshape(n, -1).sum(1, keepdim=True) + torch.ones(n, 1)


def test_parity_check_catches_shapes_baked_in_by_the_tracer(tmp_path):
    path = tmp_path / "m.onnx"
    example = {"features": torch.ones(3, 4)}
    export_onnx(ShapeBaker(), example, path, "value", {"features": {0: "batch"}})
    with pytest.raises(ExportError):
        check_parity(ShapeBaker(), path, [{"features": np.ones((b, 4), np.float32)}
                                          for b in (1, 7, 64)])


def _manifest(folder: Path) -> Manifest:
    m = Manifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    for name, art in m.artifacts.items():
        assert sha256_file(folder / name) == art.sha256
        assert (folder / name).stat().st_size == art.bytes
    return m


def test_tabular_csv_end_to_end_and_versions_never_overwritten(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "y"], table_rows(300))
    out = tmp_path / "models"
    for expected_version in (1, 2):
        assert train_main(["tabular", "--csv", str(path), "--target-column", "y",
                           "--output", str(out), "--name", "mine"]) == 0
        assert (out / "mine" / str(expected_version)).is_dir()
    m = _manifest(out / "mine" / "1")
    assert m.kind == "tabular-classification" and m.labels == ["no", "yes"]
    assert [f.name for f in m.inputs.features] == ["a", "b", "c"]
    assert m.test_metrics["accuracy"] > 0.85 and "roc_auc" in m.test_metrics
    assert m.provenance["parity_max_abs_diff"] <= 1e-4
    # explanations' background: 10 training rows and the training ranges, verified
    assert m.background_file == "background.json" and "background.json" in m.artifacts
    bg = json.loads((out / "mine" / "1" / "background.json").read_text())
    assert bg["features"] == ["a", "b", "c"] and len(bg["rows"]) == 10
    assert all(lo <= r[j] <= hi for r in bg["rows"]
               for j, (lo, hi) in enumerate(zip(bg["ranges"]["min"], bg["ranges"]["max"],
                                                strict=True)))
    # same seed, same data -> same metrics
    assert _manifest(out / "mine" / "2").test_metrics == m.test_metrics
    session = ort_session(out / "mine" / "1" / "model.onnx")
    probs = session.run(None, {"features": np.array([[3, 3, 0], [-3, -3, 0]], np.float32)})[0]
    assert probs[0].argmax() == 1 and probs[1].argmax() == 0


def test_regression_csv_reports_mae_rmse_r2(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    rows = [[*np.round(x, 4), round(3 * x[0] - x[1] + 10, 4)] for x in X]
    path = write_csv(tmp_path / "r.csv", ["a", "b", "target"], rows)
    out = tmp_path / "models"
    assert train_main(["regression", "--csv", str(path), "--target-column", "target",
                       "--output", str(out)]) == 0
    m = _manifest(out / "diabetes" / "1")
    assert m.kind == "tabular-regression"
    assert set(m.test_metrics) >= {"mae", "rmse", "r2"} and m.test_metrics["r2"] > 0.8


def test_interrupted_export_leaves_no_version_behind(tmp_path, monkeypatch):
    from training import tabular

    def broken(*args, **kwargs):
        raise ExportError("simulated crash during export")

    monkeypatch.setattr(tabular, "export_rows_model", broken)
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "y"], table_rows(100))
    out = tmp_path / "models"
    assert train_main(["tabular", "--csv", str(path), "--target-column", "y",
                       "--output", str(out)]) == 2
    leftovers = list((out / "breast-cancer").iterdir()) if (out / "breast-cancer").exists() else []
    assert leftovers == []


def test_text_csv_end_to_end_with_int8_variant_served(tmp_path, tiny_encoder):
    path = write_csv(tmp_path / "s.csv", ["text", "label"], text_rows(240))
    out = tmp_path / "models"
    assert train_main(["sentiment", "--csv", str(path), "--text-column", "text",
                       "--label-column", "label", "--encoder", str(tiny_encoder),
                       "--output", str(out), "--name", "tiny"]) == 0
    folder = out / "tiny" / "1"
    m = _manifest(folder)
    assert m.labels == ["negative", "neutral", "positive"]
    assert set(m.variants) == {"fp32", "int8"}
    assert m.model_file in {"model.onnx", "model.int8.onnx"}
    assert m.variants["int8"].size_ratio < 1
    # the variant served by default gives an input the same output whatever its batch mates
    served = next(v for v in m.variants.values() if v.file == m.model_file)
    assert served.batch_invariance_max_diff <= 1e-5
    # static int8 fixes activation scales at calibration, so it is batch-invariant too
    assert m.variants["int8"].batch_invariance_max_diff <= 1e-5
    assert m.provenance["parity_max_abs_diff"] <= 1e-4
    # int8 agrees with fp32 on at least 95% of a sample
    from training.sentiment import load_tokenizer, pad

    tok = load_tokenizer(folder, m.inputs.max_length)
    texts = [r[0] for r in text_rows(200, seed=9)]
    feeds = pad([e.ids for e in tok.encode_batch(texts)])
    p32 = ort_session(folder / "model.onnx").run(None, feeds)[0]
    p8 = ort_session(folder / "model.int8.onnx").run(None, feeds)[0]
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= 0.95
    # the served artifacts load in the server's pipeline without torch in the path
    from app.pipelines import build_pipeline

    pipe = build_pipeline(m, folder, 1000, False)
    payloads, _ = pipe.preprocess(texts[:3])
    served = ort_session(folder / m.model_file)
    names = {i.name for i in served.get_inputs()}
    got = served.run(None, {k: v for k, v in pipe.collate(payloads).items() if k in names})[0]
    want = ort_session(folder / m.model_file).run(None, pad([list(p) for p in payloads]))[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert json.loads((folder / MANIFEST_FILE).read_text())["baseline"]["accuracy"] > 0
