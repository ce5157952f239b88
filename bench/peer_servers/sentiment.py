"""The sentiment model as a peer server's handler would write it: `tokenizers` for the text,
one ONNX Runtime session with its default options (all cores), the batch padded to its
longest text. Standalone: it needs onnxruntime, tokenizers and numpy only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class SentimentModel:
    def __init__(self, folder: str | None = None) -> None:
        path = Path(folder or os.environ["PEER_MODEL_DIR"])
        manifest = json.loads((path / "model.json").read_text())
        self.labels = manifest["labels"]
        self.tokenizer = Tokenizer.from_file(str(path / manifest["tokenizer_file"]))
        self.tokenizer.enable_truncation(int(manifest["inputs"]["max_length"]))
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        self.session = ort.InferenceSession(str(path / manifest["model_file"]),
                                            providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def predict(self, texts: list[str]) -> list[dict]:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids,
                 "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
                 "token_type_ids": np.zeros_like(ids)}
        probs = self.session.run(None, {k: v for k, v in feeds.items()
                                        if k in self.input_names})[0]
        best = probs.argmax(axis=1)
        return [{"label": self.labels[b], "score": float(p[b])} for b, p in
                zip(best, probs, strict=True)]
