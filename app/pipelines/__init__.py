"""One pipeline per model kind: pre-process inputs, collate and run a batch, post-process."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.contract.manifest import Manifest
from app.pipelines.base import Pipeline
from app.pipelines.tabular import TabularClassificationPipeline, TabularRegressionPipeline
from app.pipelines.text import TextClassificationPipeline

# A pipeline of any kind. The serving core hands each payload back to the pipeline that
# made it (preprocess -> batch queue -> run_batch) and never looks inside, so there the
# payload type is left open.
AnyPipeline = Pipeline[Any]


def build_pipeline(manifest: Manifest, folder: Path, max_text_chars: int = 10000,
                   truncate_text: bool = False, max_inputs: int = 256,
                   max_rows: int = 1024, verified: Mapping[str, bytes] | None = None
                   ) -> AnyPipeline:
    """`verified` holds artifact bytes already checked against the manifest's SHA-256."""
    if manifest.kind == "text-classification":
        if manifest.tokenizer_file is None:  # the manifest's validator demands one
            raise ValueError("text-classification needs tokenizer_file")
        tokenizer = (verified or {}).get(manifest.tokenizer_file,
                                         folder / manifest.tokenizer_file)
        return TextClassificationPipeline(manifest, tokenizer, max_text_chars, truncate_text,
                                          max_inputs)
    if manifest.kind == "tabular-classification":
        return TabularClassificationPipeline(manifest, max_rows)
    return TabularRegressionPipeline(manifest, max_rows)


__all__ = ["AnyPipeline", "Pipeline", "build_pipeline"]
