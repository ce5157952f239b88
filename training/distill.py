"""`python -m training distill`: a 2- or 3-layer student of the sentiment teacher.

The student keeps the teacher's embeddings, head and a few of its transformer layers
(evenly spaced, first and last included) and learns from the teacher's soft labels over the
training split (plus the hard labels). Its graphs go through the teacher's checks (parity
with torch, batch invariance, the int8 accuracy rule, temperature scaling) and are
published beside the teacher's in one new version, as variants `student-fp32` and
`student-int8` with their own test metrics and an in-process throughput figure measured in
the same run as the teacher's. The manifest's default stays the teacher's graph: serving
the student is the server's choice under an accuracy budget.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.contract.signing import SigningKey
from training import sentiment
from training.common import TaskResult, seed_everything
from training.repository import new_version, provenance
from training.sentiment import SentimentConfig, TextClassifier, TextTask

THROUGHPUT_BATCH = 16
THROUGHPUT_TEXTS = 512  # test texts timed per repeat, in test-split order
THROUGHPUT_REPEATS = 5  # each batch keeps its fastest run (see throughput())


@dataclass
class StudentConfig:
    layers: int = 3
    kd_temperature: float = 2.0  # softens teacher and student logits in the KL term
    alpha: float = 0.2  # weight of the hard-label cross-entropy; 1 - alpha on the KL term
    epochs: float = 2.0
    lr: float = 1e-4
    batch_size: int = 32
    train_limit: int | None = None
    val_limit: int | None = None
    evals_per_epoch: int = 2
    patience: int = 2
    length_buckets: bool = True
    bf16: bool = True

    def training_config(self, teacher: SentimentConfig) -> SentimentConfig:
        return SentimentConfig(
            max_length=teacher.max_length, epochs=self.epochs, train_limit=self.train_limit,
            val_limit=self.val_limit, batch_size=self.batch_size, lr=self.lr,
            weight_decay=teacher.weight_decay, warmup_fraction=teacher.warmup_fraction,
            dropout=teacher.dropout, evals_per_epoch=self.evals_per_epoch,
            patience=self.patience, length_buckets=self.length_buckets, bf16=self.bf16)


PROFILES = {
    "quick": StudentConfig(epochs=1.0, train_limit=9600, val_limit=1000, evals_per_epoch=1),
    "full": StudentConfig(),
}


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, the first and the last always among them."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1 to {teacher_layers} layers, not {student_layers}")
    return sorted({int(round(x)) for x in np.linspace(0, teacher_layers - 1, student_layers)})


def make_student(teacher: TextClassifier, layers: list[int]) -> TextClassifier:
    """A copy of the teacher that keeps only the transformer layers listed."""
    student = copy.deepcopy(teacher)
    student.encoder.encoder.layer = nn.ModuleList(
        [student.encoder.encoder.layer[i] for i in layers])
    student.encoder.config.num_hidden_layers = len(layers)
    for j, layer in enumerate(student.encoder.encoder.layer):
        if hasattr(layer.attention.self, "layer_idx"):  # the key/value cache's index
            layer.attention.self.layer_idx = j
    student.temperature.fill_(1.0)
    return student


def distillation_loss(teacher_logits: torch.Tensor, y: torch.Tensor, temperature: float,
                      alpha: float):
    """Per-item loss: alpha x cross-entropy on the label + (1 - alpha) x T^2 x
    KL(teacher || student) at temperature T (Hinton et al., 2015)."""

    def loss(logits: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
        t = torch.log_softmax(teacher_logits[batch] / temperature, -1)
        s = torch.log_softmax(logits / temperature, -1)
        kl = (t.exp() * (t - s)).sum(-1) * temperature ** 2
        ce = nn.functional.cross_entropy(logits, y[batch], reduction="none")
        return alpha * ce + (1 - alpha) * kl

    return loss


def throughput(paths: dict[str, Path], seqs: list[list[int]], batch: int = THROUGHPUT_BATCH,
               repeats: int = THROUGHPUT_REPEATS) -> dict[str, float]:
    """Inputs per second of each graph at `batch`, in this process (sessions built as the
    server builds them, all cores). The graphs take turns batch by batch, and each batch
    counts its fastest of `repeats` runs, so a burst of load on a shared host slows one
    run of one batch rather than one graph's whole measurement."""
    from training.export import ort_session

    feeds = [sentiment.pad(seqs[i:i + batch]) for i in range(0, len(seqs), batch)]
    sessions = {name: ort_session(path) for name, path in paths.items()}
    for s in sessions.values():
        for f in feeds[:4]:
            s.run(None, f)
    best = {name: [float("inf")] * len(feeds) for name in sessions}
    for _ in range(repeats):
        for j, f in enumerate(feeds):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, f)
                best[name][j] = min(best[name][j], time.perf_counter() - t0)
    return {name: round(len(seqs) / sum(times), 1) for name, times in best.items()}


def load_teacher(path: Path, task: TextTask, seed: int
                 ) -> tuple[TextClassifier, SentimentConfig]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["seed"] != seed:
        # the seed draws the splits: another seed's teacher has trained on this test split
        raise ValueError(f"{path}: the teacher was trained with --seed {ckpt['seed']}, "
                         f"not {seed}")
    if ckpt["labels"] != task.labels:
        raise ValueError(f"{path}: teacher labels {ckpt['labels']} != data labels {task.labels}")
    if ckpt["data_sha256"] != task.corpus.sha256:
        raise ValueError(f"{path}: the teacher was trained on other data")
    cfg = SentimentConfig(**ckpt["config"])
    model = TextClassifier(sentiment.load_encoder(Path(ckpt["encoder"])), len(task.labels),
                           cfg.dropout)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, cfg


def run(output: Path, name: str | None, seed: int, profile: str, csv: Path | None = None,
        text_column: str | None = None, label_column: str | None = None,
        encoder: Path | None = None, overrides: dict | None = None,
        teacher_overrides: dict | None = None, teacher: Path | None = None,
        save_checkpoint: Path | None = None, sign_key: SigningKey | None = None) -> TaskResult:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    name = name or sentiment.DEFAULT_NAME
    scfg = copy.deepcopy(PROFILES[profile])
    for key, value in (overrides or {}).items():
        if not hasattr(scfg, key):
            raise ValueError(f"--set {key}: no such student setting (settings: "
                             f"{', '.join(asdict(scfg))})")
        setattr(scfg, key, value)
    if teacher is not None:
        probe = torch.load(teacher, map_location="cpu", weights_only=False)
        tcfg = SentimentConfig(**probe["config"])
        encoder = Path(probe["encoder"])
        del probe
    else:
        tcfg = sentiment.config_for(profile, teacher_overrides)
    task = sentiment.load_task(csv, text_column, label_column, encoder, tcfg.max_length, seed)
    y = task.y
    if teacher is not None:
        teacher_model, tcfg = load_teacher(teacher, task, seed)
        teacher_training = {"checkpoint": str(teacher)}
        teacher_val = sentiment._subset(task.splits.val, y, tcfg.val_limit, seed)
        sentiment.calibrate(teacher_model, sentiment.predict_torch(
            teacher_model, [task.seqs[i] for i in teacher_val], "teacher validation",
            output="logits"), y[teacher_val])
    else:
        teacher_model, teacher_training, _, teacher_val = sentiment.train_teacher(
            task, tcfg, seed, name)
        if save_checkpoint:
            sentiment.save_teacher(save_checkpoint, teacher_model, task, tcfg, seed, profile)
    t_student = time.perf_counter()
    seed_everything(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    n_layers = teacher_model.encoder.config.num_hidden_layers
    kept = layer_map(n_layers, scfg.layers)
    student = make_student(teacher_model, kept)
    train_cfg = scfg.training_config(tcfg)
    train_idx = sentiment._subset(task.splits.train, y, scfg.train_limit, seed)
    val_idx = sentiment._subset(task.splits.val, y, scfg.val_limit, seed)
    soft = np.zeros((len(y), len(task.labels)), dtype=np.float32)
    soft[train_idx] = sentiment.predict_torch(teacher_model, [task.seqs[i] for i in train_idx],
                                              "teacher soft labels", output="logits")
    loss_fn = distillation_loss(torch.from_numpy(soft), torch.from_numpy(y),
                                scfg.kd_temperature, scfg.alpha)
    training, val_logits = sentiment.train_classifier(
        student, task.seqs, y, train_idx, val_idx, train_cfg, seed,
        desc=f"{name} (distil {scfg.layers} layers)", loss_fn=loss_fn)
    training["temperature"] = round(sentiment.calibrate(student, val_logits, y[val_idx]), 6)
    training["seconds"] = round(time.perf_counter() - t_student, 1)
    baseline = sentiment.tfidf_baseline(task.corpus.texts, y, task.splits, task.labels)
    splits = task.splits
    with new_version(output, name, sign_key) as version:
        teacher_export = sentiment.export_classifier(
            teacher_model, task, version.dir, "model", tcfg.max_length, seed,
            f"validation split ({len(teacher_val)} texts)")
        student_export = sentiment.export_classifier(
            student, task, version.dir, "model.student", tcfg.max_length, seed,
            f"validation split ({len(val_idx)} texts)", prefix="student-")
        task.tok.save(str(version.dir / "tokenizer.json"))
        variants = {**teacher_export["variants"], **student_export["variants"]}
        files = {v: version.dir / variants[v]["file"] for v in variants}
        rates = throughput(files, task.test_seqs[:THROUGHPUT_TEXTS])
        for v, rate in rates.items():
            variants[v]["throughput"] = {"batch_size": THROUGHPUT_BATCH,
                                         "inputs_per_s": rate, "texts": THROUGHPUT_TEXTS}
            variants[v]["layers"] = scfg.layers if v.startswith("student-") else n_layers
            if v.startswith("student-"):
                variants[v]["distilled_from"] = teacher_export["served"]
        teacher_served = teacher_export["served"]
        student_served = student_export["served"]
        t_acc = variants[teacher_served]["test_metrics"]["accuracy"]
        s_acc = variants[student_served]["test_metrics"]["accuracy"]
        manifest = sentiment.text_manifest(name, task, tcfg, teacher_export, baseline)
        manifest["variants"] = variants
        manifest["distillation"] = {
            "teacher_variant": teacher_served,
            "student_variant": student_served,
            "teacher_layers": n_layers,
            "student_layers": len(kept),
            "layers_kept": kept,
            "accuracy_gap": round(t_acc - s_acc, 4),
            "throughput_ratio": round(rates[student_served] / rates[teacher_served], 2),
            "throughput_batch_size": THROUGHPUT_BATCH,
            "student_reason": student_export["reason"],
        }
        manifest["provenance"] = provenance(
            task.corpus.source, task.corpus.sha256, seed, profile,
            {"encoder": str(task.encoder),
             "head": "masked mean pooling -> dropout -> linear", **asdict(tcfg),
             "student": asdict(scfg)},
            time.perf_counter() - t0,
            duplicates_dropped=task.corpus.duplicates_dropped,
            splits={"train": len(splits.train), "student_train_used": len(train_idx),
                    "validation": len(splits.val), "student_validation_used": len(val_idx),
                    "test": len(splits.test)},
            training=teacher_training, student_training=training,
            parity_max_abs_diff=teacher_export["parity"],
            student_parity_max_abs_diff=student_export["parity"])
        number, path = version.commit(manifest)
    extra = sentiment.summary_extra(teacher_export, baseline)
    extra["student"] = {"variant": student_served,
                        "test_metrics": variants[student_served]["test_metrics"],
                        **manifest["distillation"],
                        "rates": rates}
    return TaskResult(name, number, path, "text-classification", manifest["test_metrics"],
                      extra=extra)


def main(argv: list[str] | None = None) -> None:
    """`python -m training.distill VERSION_DIR [ROUNDS]`: time a published version's
    variants again on its test texts (tweets corpus), as the trainer did."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0])
    m = json.loads((folder / "model.json").read_text())
    task = sentiment.load_task(None, None, None, None, m["inputs"]["max_length"],
                               m["provenance"]["seed"])
    files = {name: folder / v["file"] for name, v in m["variants"].items()}
    d = m.get("distillation") or {}
    for _ in range(int(args[1]) if len(args) > 1 else 1):
        rates = throughput(files, task.test_seqs[:THROUGHPUT_TEXTS])
        line = f"load {os.getloadavg()[0]:.1f}: {rates}"
        if d:
            ratio = rates[d["student_variant"]] / rates[d["teacher_variant"]]
            line += f"  student/teacher {ratio:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
