"""One pipeline per model kind: pre-process inputs, collate and run a batch, post-process."""

from __future__ import annotations

from pathlib import Path

from app.manifest import Manifest
from app.pipelines.base import Pipeline
from app.pipelines.tabular import TabularClassificationPipeline, TabularRegressionPipeline
from app.pipelines.text import TextClassificationPipeline


def build_pipeline(manifest: Manifest, folder: Path, max_text_chars: int = 10000,
                   truncate_text: bool = False, max_inputs: int = 256,
                   max_rows: int = 1024) -> Pipeline:
    if manifest.kind == "text-classification":
        return TextClassificationPipeline(manifest, folder / manifest.tokenizer_file,
                                          max_text_chars, truncate_text, max_inputs)
    if manifest.kind == "tabular-classification":
        return TabularClassificationPipeline(manifest, max_rows)
    return TabularRegressionPipeline(manifest, max_rows)


__all__ = ["Pipeline", "build_pipeline"]
