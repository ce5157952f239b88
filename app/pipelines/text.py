"""Text classification: `tokenizers` encoding, truncation to the manifest's max length,
padding to the longest item of each length bucket within a batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from app.contract.manifest import Manifest
from app.errors import InvalidInput
from app.pipelines.base import Pipeline, RunFn
from app.runtime.tensors import Feeds, Scores

# One text's payload: its token ids, [CLS] ... [SEP]
TokenIds = NDArray[np.int64]

# Texts longer than this in total are tokenized in a thread, not on the event loop: about
# 3 ms of tokenizing at 300-400 ns per character (a 1 MiB request took 400 ms).
INLINE_CHARS = 8192
# One model run costs about as much as this many extra padded tokens (MiniLM on CPU:
# ~0.3 ms of fixed cost per run vs ~30 us per token); bench/ measures both.
RUN_OVERHEAD_TOKENS = 16


def length_buckets(lengths: list[int], overhead: int) -> list[tuple[int, int]]:
    """Split ascending `lengths` into contiguous runs minimising sum(overhead + longest x
    count): the padded tokens of each run plus a fixed cost per run (dynamic programming,
    O(n^2) for a batch of n)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + overhead + lengths[j - 1] * (j - i)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs: list[tuple[int, int]] = []
    j = n
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


class TextClassificationPipeline(Pipeline[TokenIds]):
    unit = "texts"

    def __init__(self, manifest: Manifest, tokenizer: Path | bytes, max_text_chars: int,
                 truncate_text: bool, max_inputs: int) -> None:
        super().__init__(manifest, max_inputs)
        if manifest.inputs.max_length is None:  # the manifest's validator demands one
            raise ValueError("text-classification needs inputs.max_length")
        self.max_length = int(manifest.inputs.max_length)
        self.tokenizer = (Tokenizer.from_str(tokenizer.decode()) if isinstance(tokenizer, bytes)
                          else Tokenizer.from_file(str(tokenizer)))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.max_text_chars = max_text_chars
        self.truncate_text = truncate_text
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        # without character offsets (tokenizers >= 0.21): 35 vs 42 us for one tweet
        self._encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)

    def preprocess(self, inputs: Sequence[object]) -> tuple[list[TokenIds], list[int]]:
        self.check_count(inputs)
        texts = [self.checked_text(i, text) for i, text in enumerate(inputs)]
        encodings = self._encode(texts, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        return ids, [self.cost(x) for x in ids]

    def runs_inline(self, inputs: Sequence[object]) -> bool:
        if len(inputs) > self.max_items:
            return True  # refused by its count before any is read: no need for a thread
        return sum(len(x) for x in inputs if isinstance(x, str)) <= INLINE_CHARS

    def checked_text(self, i: int, text: object) -> str:
        """`inputs[i]` as the model reads it (cut at max_text_chars when the server
        truncates), or InvalidInput saying why it cannot be."""
        if not isinstance(text, str):
            raise InvalidInput(f"inputs[{i}]: expected a string, got {type(text).__name__}",
                               {"field": f"inputs[{i}]"})
        if not text.strip():
            raise InvalidInput(f"inputs[{i}]: empty text", {"field": f"inputs[{i}]"})
        if len(text) > self.max_text_chars:
            if not self.truncate_text:
                raise InvalidInput(
                    f"inputs[{i}]: text has {len(text)} characters, the limit is "
                    f"{self.max_text_chars} (set ORTSERVE_TRUNCATE_TEXT=true to cut instead)",
                    {"field": f"inputs[{i}]", "limit": self.max_text_chars})
            text = text[:self.max_text_chars]
        return text

    def collate(self, payloads: Sequence[TokenIds]) -> Feeds:
        length = max(len(p) for p in payloads)
        ids = np.full((len(payloads), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(payloads), length), dtype=np.int64)
        for row, p in enumerate(payloads):
            ids[row, :len(p)] = p
            mask[row, :len(p)] = 1
        # BERT-style exports (Hugging Face Optimum) also take segment ids; the session
        # feeds only the inputs its graph has
        return {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids)}

    def run_batch(self, run: RunFn, payloads: list[TokenIds]) -> Scores:
        """Pad per length bucket, not per batch: sort the batch by length and split it where
        padding would cost more than another model run (see `length_buckets`)."""
        order = sorted(range(len(payloads)), key=lambda i: len(payloads[i]))
        lengths = [len(payloads[i]) for i in order]
        out: Scores | None = None
        for start, stop in length_buckets(lengths, RUN_OVERHEAD_TOKENS):
            idx = order[start:stop]
            probs = self.activate(run(self.collate([payloads[i] for i in idx])))
            if out is None:
                out = np.empty((len(payloads), probs.shape[1]), dtype=probs.dtype)
            out[idx] = probs
        assert out is not None  # a batch has at least one payload
        return out

    def cost(self, payload: TokenIds) -> int:
        return len(payload)

    def warmup_payloads(self, max_batch_size: int) -> list[list[TokenIds]]:
        cls_ = self.tokenizer.token_to_id("[CLS]") or 101
        sep = self.tokenizer.token_to_id("[SEP]") or 102
        word = self.tokenizer.token_to_id("the") or 1000

        def seq(n: int) -> TokenIds:
            return np.asarray([cls_] + [word] * max(0, n - 2) + [sep], dtype=np.int64)

        sizes = sorted({1, min(8, max_batch_size), max_batch_size})
        return [[seq(n)] * b for b in sizes for n in (8, min(48, self.max_length),
                                                       self.max_length)]
