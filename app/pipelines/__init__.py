"""One pipeline per model kind: pre-process inputs, collate and run a batch, post-process."""

from __future__ import annotations

from pathlib import Path

from app.contract.manifest import Manifest
from app.pipelines.base import Pipeline
from app.pipelines.tabular import TabularClassificationPipeline, TabularRegressionPipeline
from app.pipelines.text import TextClassificationPipeline


def build_pipeline(manifest: Manifest, folder: Path, max_text_chars: int = 10000,
                   truncate_text: bool = False, max_inputs: int = 256,
                   max_rows: int = 1024, verified: dict[str, bytes] | None = None) -> Pipeline:
    """`verified` holds artifact bytes already checked against the manifest's SHA-256."""
    if manifest.kind == "text-classification":
        tokenizer = (verified or {}).get(manifest.tokenizer_file,
                                         folder / manifest.tokenizer_file)
        return TextClassificationPipeline(manifest, tokenizer, max_text_chars, truncate_text,
                                          max_inputs)
    if manifest.kind == "tabular-classification":
        return TabularClassificationPipeline(manifest, max_rows)
    return TabularRegressionPipeline(manifest, max_rows)


__all__ = ["Pipeline", "build_pipeline"]
