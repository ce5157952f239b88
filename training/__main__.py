"""`python -m training <task>`: train, evaluate and export models into the repository."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

TASKS = ("sentiment", "tabular", "regression", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate on a held-out test split, export to ONNX (checked "
                    "against torch) and write a new version into the model repository.")
    p.add_argument("task", choices=TASKS,
                   help="sentiment: MiniLM text classifier on the tweets corpus (or --csv); "
                        "tabular: binary MLP classifier (breast cancer or --csv); "
                        "regression: MLP regressor (diabetes or --csv); all: the three defaults")
    p.add_argument("--profile", choices=("quick", "full"), default="quick",
                   help="quick: what the service's first run uses (all defaults in under 5 "
                        "minutes on 2 CPU cores); full: best quality (see README for its time)")
    p.add_argument("--seed", type=int, default=42, help="random seed for splits, init, order")
    p.add_argument("--output", type=Path, default=Path("models"),
                   help="model repository root; the model goes to OUTPUT/NAME/<next version>/")
    p.add_argument("--name", help="model name in the repository ([a-z0-9][a-z0-9_-]*); "
                                  "defaults: sentiment, breast-cancer, diabetes")
    p.add_argument("--csv", type=Path, help="train on your own CSV with a header row")
    p.add_argument("--target-column", help="tabular/regression: the column to predict; every "
                                           "other column is a numeric feature")
    p.add_argument("--text-column", help="sentiment: the column holding the text")
    p.add_argument("--label-column", help="sentiment: the column holding the label (any "
                                          "number of classes)")
    p.add_argument("--encoder", type=Path,
                   help="sentiment: a local Hugging Face encoder folder (config, weights, "
                        "tokenizer.json) to fine-tune instead of the packaged MiniLM-L6")
    p.add_argument("--sign-key", type=Path,
                   help="sign each new version with this EC private key (PEM; default "
                        "ORTSERVE_SIGN_KEY; an encrypted key's password in "
                        "ORTSERVE_SIGN_KEY_PASSWORD); a server with "
                        "ORTSERVE_MODEL_PUBLIC_KEYS loads only signed versions")
    p.add_argument("-v", "--verbose", action="store_true", help="log export/parity details")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.task == "all" and (a.csv or a.name):
        p.error("--csv and --name apply to one task, not 'all'")
    if a.csv:
        if a.task == "sentiment" and not (a.text_column and a.label_column):
            p.error("sentiment --csv needs --text-column and --label-column")
        if a.task in ("tabular", "regression") and not a.target_column:
            p.error(f"{a.task} --csv needs --target-column")
    elif a.target_column or a.text_column or a.label_column:
        p.error("column options need --csv")


def run_task(task: str, a: argparse.Namespace):
    common = dict(output=a.output, name=a.name, seed=a.seed, profile=a.profile,
                  sign_key=a.signing_key)
    if task == "sentiment":
        from training import sentiment

        return sentiment.run(**common, csv=a.csv, text_column=a.text_column,
                             label_column=a.label_column, encoder=a.encoder)
    if task == "tabular":
        from training import tabular

        return tabular.run(**common, csv=a.csv, target_column=a.target_column)
    from training import regression

    return regression.run(**common, csv=a.csv, target_column=a.target_column)


def print_summary(results, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from training.evaluate import headline

    table = Table(title=f"trained in {elapsed:.0f} s")
    for col in ("model", "version", "kind", "test metrics", "written to"):
        table.add_column(col)
    for r in results:
        metrics = headline(r.test_metrics)
        if "baseline" in r.extra:
            b, f, i8 = r.extra["baseline"], r.extra["fp32"], r.extra["int8"]
            metrics += (f"\nserved: {r.extra['served']}  (fp32 accuracy={f['accuracy']:.4f}, "
                        f"int8 accuracy={i8['accuracy']:.4f}, int8 size ratio="
                        f"{r.extra['size_ratio']:.2f}, int8 batch dependence="
                        f"{r.extra['invariance']['int8']:.1e})"
                        f"\nbaseline {b['model']}: accuracy={b['accuracy']:.4f} "
                        f"macro_f1={b['macro_f1']:.4f}")
        table.add_row(r.name, str(r.version), r.kind, metrics, str(r.path))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    parser = build_parser()
    a = parser.parse_args(argv)
    _check_args(parser, a)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("root").setLevel(logging.ERROR)  # quantizer's pre-processing hint

    from app.contract.signing import SigningError, signing_key
    from training.data import DataError
    from training.export import ExportError

    try:  # checked before training, not when the version is published
        a.signing_key = signing_key(a.sign_key)
    except SigningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    tasks = ("sentiment", "tabular", "regression") if a.task == "all" else (a.task,)
    t0 = time.perf_counter()
    results = []
    for task in tasks:
        try:
            results.append(run_task(task, a))
        except (DataError, ExportError, ValueError) as exc:
            print(f"error: {task}: {exc}", file=sys.stderr)
            return 2
    print_summary(results, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
