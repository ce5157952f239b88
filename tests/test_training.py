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
    # calibrated on validation; the served graph's scores are the 'after' ones
    c = m.calibration
    assert c.method == "temperature" and c.temperature == m.provenance["hyperparameters"][
        "temperature"] and c.bins == 15 and c.n == m.test_metrics["n"]
    assert c.ece_after == m.test_metrics["ece"] and c.brier_after == m.test_metrics["brier"]
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
    # both graphs divide by the temperature fitted on validation; the served one's
    # calibration is the manifest's
    t = m.provenance["training"]["temperature"]
    assert all(v.calibration.temperature == t for v in m.variants.values())
    assert m.calibration == served.calibration
    assert served.calibration.ece_after == served.test_metrics["ece"]
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


# --- calibration -------------------------------------------------------------------------

def _miscalibrated(n: int, seed: int, sharpen: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the 'model' reports z * sharpen (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return z * sharpen, y


def test_temperature_scaling_lowers_ece_of_a_miscalibrated_model():
    from training import calibration as cal

    val_logits, y_val = _miscalibrated(3000, 0, sharpen=3.0)
    test_logits, y_test = _miscalibrated(3000, 1, sharpen=3.0)
    t = cal.fit_temperature(val_logits, y_val)
    assert 2.6 < t < 3.4  # recovers the factor that over-sharpened the scores
    before, after = cal.softmax(test_logits), cal.softmax(test_logits / t)
    assert cal.expected_calibration_error(before, y_test) > 0.08
    assert cal.expected_calibration_error(after, y_test) < 0.03
    assert cal.brier_score(after, y_test) < cal.brier_score(before, y_test)
    # the argmax, so accuracy, never moves; and 'before' is recovered from 'after'
    assert (before.argmax(1) == after.argmax(1)).all()
    np.testing.assert_allclose(cal.uncalibrated(after, t), before, atol=1e-9)


def test_ece_and_brier_on_hand_computed_cases():
    from training import calibration as cal

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin (0.8667, 0.9333]: confidence 0.9, accuracy 0.5; bin (0.5333, 0.6]: 0.6 vs 1.0
    assert cal.expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert cal.brier_score(probs, y) == pytest.approx(
        (0.02 + 2 * 0.81 + 0.32 + 0.32) / 4)


def test_temperature_is_folded_into_the_exported_graph(tmp_path):
    from training.mlp import BinaryClassifier

    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    model = BinaryClassifier(X.mean(0), X.std(0), (8,), 0.0).eval()
    model.temperature.fill_(2.5)
    path = tmp_path / "m.onnx"
    export_onnx(model, {"features": torch.from_numpy(X[:3])}, path, "probabilities",
                {"features": {0: "batch"}})
    got = ort_session(path).run(None, {"features": X})[0]
    with torch.no_grad():
        logit = model.logits(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got[:, 1], 1 / (1 + np.exp(-logit / 2.5)), atol=1e-6)


# --- distillation ------------------------------------------------------------------------

def _tiny_teacher(tiny_encoder: Path):
    from training.sentiment import TextClassifier, load_encoder

    torch.manual_seed(0)
    return TextClassifier(load_encoder(tiny_encoder), 3, 0.0).eval()


def _tiny_feeds(tiny_encoder: Path, n: int = 24) -> dict:
    from training.sentiment import load_tokenizer, pad

    tok = load_tokenizer(tiny_encoder, 32)
    feeds = pad([e.ids for e in tok.encode_batch([r[0] for r in text_rows(n, seed=3)])])
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def test_student_keeps_the_teachers_layers(tiny_encoder):
    from training.distill import distillation_loss, layer_map, make_student

    assert layer_map(6, 3) == [0, 2, 5] and layer_map(6, 2) == [0, 5]
    assert layer_map(2, 1) == [0]
    teacher = _tiny_teacher(tiny_encoder)
    feeds = _tiny_feeds(tiny_encoder)
    # a student keeping every layer is the teacher: same outputs, zero distillation loss
    twin = make_student(teacher, [0, 1]).eval()
    with torch.no_grad():
        t_logits, s_logits = teacher.logits(**feeds), twin.logits(**feeds)
    torch.testing.assert_close(s_logits, t_logits)
    kl_only = distillation_loss(t_logits, torch.zeros(len(t_logits), dtype=torch.long),
                                temperature=2.0, alpha=0.0)
    assert float(kl_only(s_logits, np.arange(len(t_logits))).abs().max()) < 1e-5
    # a one-layer student is the teacher's first layer, not a fresh one
    student = make_student(teacher, [1])
    assert student.encoder.config.num_hidden_layers == 1
    torch.testing.assert_close(student.encoder.encoder.layer[0].state_dict(),
                               teacher.encoder.encoder.layer[1].state_dict())
    assert teacher.encoder.config.num_hidden_layers == 2  # the teacher is untouched


def test_distillation_loss_decreases(tiny_encoder):
    from training.distill import distillation_loss, make_student

    teacher = _tiny_teacher(tiny_encoder)
    feeds = _tiny_feeds(tiny_encoder)
    with torch.no_grad():
        t_logits = teacher.logits(**feeds) * 4  # a confident teacher to learn from
    y = t_logits.argmax(1)
    student = make_student(teacher, [0])
    with torch.no_grad():  # start the student away from the teacher
        student.head.weight.mul_(-1)
    loss_fn = distillation_loss(t_logits, y, temperature=2.0, alpha=0.2)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    batch = np.arange(len(y))
    losses = []
    student.train()
    for _ in range(15):
        loss = loss_fn(student.logits(**feeds), batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def _variant(file: str, accuracy: float, drift: float = 1e-7, **kw) -> dict:
    return {"file": file, "test_metrics": {"accuracy": accuracy},
            "batch_invariance_max_diff": drift, **kw}


def test_variant_choice_under_an_accuracy_budget():
    from app.contract.manifest import eligible_variants

    files = ["model.onnx", "model.int8.onnx", "model.student.onnx", "model.student.int8.onnx"]
    m = Manifest.model_validate({
        "name": "s", "version": 1, "kind": "text-classification", "labels": ["a", "b"],
        "inputs": {"type": "text", "max_length": 64}, "outputs": {},
        "model_file": "model.int8.onnx", "tokenizer_file": "tokenizer.json",
        "artifacts": {f: {"sha256": "0" * 64, "bytes": 1} for f in [*files, "tokenizer.json"]},
        "variants": {
            "fp32": _variant(files[0], 0.80), "int8": _variant(files[1], 0.801),
            "student-fp32": _variant(files[2], 0.795, distilled_from="fp32", layers=3),
            "student-int8": _variant(files[3], 0.788, distilled_from="fp32", layers=3),
        }})
    # budget 0 (the default): today's rule, students never serve even within 1 point
    assert set(eligible_variants(m)) == {"fp32", "int8"}
    assert set(eligible_variants(m, accuracy_budget=0.0)) == {"fp32", "int8"}
    # a budget admits the students within it of the most accurate variant (0.801)
    assert set(eligible_variants(m, accuracy_budget=0.01)) == {"fp32", "int8", "student-fp32"}
    assert set(eligible_variants(m, accuracy_budget=0.015)) == set(m.variants)
    # budget 0 keeps a student out even when it is as accurate as the teacher
    m.variants["student-fp32"].test_metrics["accuracy"] = 0.801
    assert set(eligible_variants(m)) == {"fp32", "int8"}
    m.variants["student-fp32"].test_metrics["accuracy"] = 0.795
    # ... and never one whose output depends on its batch mates
    m.variants["student-int8"].batch_invariance_max_diff = 1e-3
    assert "student-int8" not in eligible_variants(m, accuracy_budget=0.05)
    # older manifests (no calibration, throughput or distillation fields) still load
    old = m.model_dump()
    for v in old["variants"].values():
        for key in ("calibration", "throughput", "layers", "distilled_from"):
            v.pop(key)
    old.pop("calibration")
    old.pop("distillation")
    # (without `distilled_from`, every variant is judged by the 1-point rule)
    assert set(eligible_variants(Manifest.model_validate(old))) == {"fp32", "int8",
                                                                    "student-fp32"}


def test_distill_publishes_a_student_variant_beside_the_teacher(tmp_path, tiny_encoder):
    from app.contract.manifest import eligible_variants
    from training.distill import layer_map

    path = write_csv(tmp_path / "s.csv", ["text", "label"], text_rows(240))
    out = tmp_path / "models"
    ckpt = tmp_path / "teacher.pt"
    assert train_main(["distill", "--csv", str(path), "--text-column", "text",
                       "--label-column", "label", "--encoder", str(tiny_encoder),
                       "--output", str(out), "--name", "tiny", "--set", "layers=1",
                       "--save-checkpoint", str(ckpt)]) == 0
    folder = out / "tiny" / "1"
    m = _manifest(folder)  # every file listed and hashed
    assert set(m.variants) == {"fp32", "int8", "student-fp32", "student-int8"}
    assert {v.file for v in m.variants.values()} == {
        "model.onnx", "model.int8.onnx", "model.student.onnx", "model.student.int8.onnx"}
    assert m.model_file in {"model.onnx", "model.int8.onnx"}  # the teacher serves by default
    for name, v in m.variants.items():
        student = name.startswith("student-")
        assert v.layers == (1 if student else 2)
        assert v.distilled_from == (m.distillation["teacher_variant"] if student else None)
        assert v.throughput.batch_size == 16 and v.throughput.inputs_per_s > 0
        assert v.calibration.temperature > 0 and v.calibration.ece_after is not None
        assert {"accuracy", "macro_f1", "ece", "brier"} <= set(v.test_metrics)
        assert v.batch_invariance_max_diff <= 1e-5  # static int8 and fp32 alike
    assert m.provenance["student_parity_max_abs_diff"] <= 1e-4
    assert m.distillation["layers_kept"] == layer_map(2, 1)
    # the student's graph holds one transformer layer: one attention softmax (+ the output's)
    import onnx

    def softmaxes(f: str) -> int:
        return sum(n.op_type == "Softmax" for n in onnx.load(str(folder / f)).graph.node)

    assert softmaxes("model.onnx") == 3 and softmaxes("model.student.onnx") == 2
    assert "student-fp32" not in eligible_variants(m)
    # a saved teacher distils again without retraining it: same teacher graphs
    assert train_main(["distill", "--csv", str(path), "--text-column", "text",
                       "--label-column", "label", "--teacher", str(ckpt),
                       "--output", str(out), "--name", "tiny", "--set", "layers=1"]) == 0
    m2 = _manifest(out / "tiny" / "2")
    assert m2.variants["fp32"].test_metrics == m.variants["fp32"].test_metrics
    assert m2.provenance["training"] == {"checkpoint": str(ckpt)}
    # ... but not with another seed, whose test split the teacher may have trained on
    assert train_main(["distill", "--csv", str(path), "--text-column", "text",
                       "--label-column", "label", "--teacher", str(ckpt), "--seed", "7",
                       "--output", str(out), "--name", "tiny"]) == 2


def test_summary_says_in_red_when_the_served_model_does_not_beat_the_baseline(capsys):
    from training.__main__ import print_summary
    from training.common import TaskResult

    metrics = {"accuracy": 0.75, "macro_f1": 0.73}
    extra = {"baseline": {"model": "tfidf", "accuracy": 0.76, "macro_f1": 0.72},
             "fp32": metrics, "int8": metrics, "served": "int8", "size_ratio": 0.6,
             "invariance": {"fp32": 0.0, "int8": 0.0}}
    worse = TaskResult("s", 1, Path("x"), "text-classification", metrics, extra)
    warnings = print_summary([worse], 1.0)
    assert len(warnings) == 1 and "does not beat" in warnings[0]
    assert "does NOT beat the baseline: -1.0 points of accuracy" in capsys.readouterr().out
    better = TaskResult("s", 1, Path("x"), "text-classification",
                        {"accuracy": 0.8, "macro_f1": 0.78}, extra)
    assert print_summary([better], 1.0) == []
    assert "beats the baseline by +4.0 points" in capsys.readouterr().out


def test_set_overrides_training_settings_and_rejects_unknown_ones(tmp_path, tiny_encoder,
                                                                   capsys):
    path = write_csv(tmp_path / "s.csv", ["text", "label"], text_rows(120))
    out = tmp_path / "models"
    args = ["sentiment", "--csv", str(path), "--text-column", "text", "--label-column",
            "label", "--encoder", str(tiny_encoder), "--output", str(out)]
    assert train_main([*args, "--set", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert train_main([*args, "--set", "max_length=oops"]) == 2
    assert train_main([*args, "--set", "max_length=16", "--set", "length_buckets=true",
                       "--set", "warm_start=60", "--set", "layer_decay=0.8"]) == 0
    m = _manifest(out / "sentiment" / "1")
    hp = m.provenance["hyperparameters"]
    assert m.inputs.max_length == 16 and hp["length_buckets"] is True
    assert m.provenance["training"]["warm_start"]["texts"] == 60


def test_length_buckets_cover_each_text_once_with_less_padding():
    from training.sentiment import epoch_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=5000)
    idx = np.arange(5000)
    padded = {}
    for buckets in (False, True):
        batches = epoch_batches(idx, lengths, 32, buckets, torch.Generator().manual_seed(0))
        assert sorted(np.concatenate(batches).tolist()) == idx.tolist()
        padded[buckets] = sum(len(b) * lengths[b].max() for b in batches)
    assert padded[True] < 0.7 * padded[False]


def test_layer_decay_gives_lower_layers_smaller_learning_rates(tiny_encoder):
    from training.sentiment import param_groups

    model = _tiny_teacher(tiny_encoder)
    lr_of = {}
    for g in param_groups(model, 1e-3, 0.5, 0.0):
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    named = dict(model.named_parameters())
    assert lr_of[id(named["head.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["encoder.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["encoder.encoder.layer.0.output.dense.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(named["encoder.embeddings.word_embeddings.weight"])] == pytest.approx(2.5e-4)
