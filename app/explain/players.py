"""What the players of an explanation are, and the model inputs a coalition of them makes.

Text: the players are the words of the text as the user wrote them (runs of non-space
characters, with their character offsets). A coalition keeps its words' wordpieces and
replaces every wordpiece of an absent word with the tokenizer's mask token, in place. The
baseline is the text with every word masked: [CLS] [MASK] ... [MASK] [SEP], of the same
length. Masking rather than removing words keeps every coalition's sequence the length of
the original (so a batch of coalitions needs no padding, and a word's position does not
shift and change the meaning of the words after it), and needs no re-tokenization. The
caveat: the fine-tuned model never saw [MASK] in training, so the baseline is an input
outside its training data; its output is reported as `base_value`.

Rows: the players are the features. A coalition keeps its features' values and takes the
others from each row of the model's background (rows of its training split); the value
of a coalition is the mean of the model's output over those rows (interventional Shapley
values). The baseline is the mean output over the background rows.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # character offsets in the input text, end exclusive
    end: int


class TextPlayers:
    """The words of one text that reach the model (truncation may drop the last ones)."""

    per_coalition = 1

    def __init__(self, tokenizer, text: str, mask_id: int) -> None:
        enc = tokenizer.encode(text)  # the served truncation; with offsets
        self.ids = np.asarray(enc.ids, dtype=np.int64)
        words = [Word(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
        starts = [w.start for w in words]
        token_word = np.full(len(self.ids), -1, dtype=np.int64)
        for t, ((a, b), special) in enumerate(zip(enc.offsets, enc.special_tokens_mask,
                                                   strict=True)):
            if special or b <= a:
                continue
            j = bisect_right(starts, a) - 1
            if j >= 0 and a < words[j].end:
                token_word[t] = j
        present = sorted(set(token_word[token_word >= 0].tolist()))
        player = {j: p for p, j in enumerate(present)}
        self.words = [words[j] for j in present]
        self.dropped = len(words) - len(present)  # words past the model's max length
        self.token_player = np.asarray([player.get(int(j), -1) for j in token_word],
                                       dtype=np.int64)
        self.mask_id = mask_id

    @property
    def n(self) -> int:
        return len(self.words)

    def payloads(self, masks: np.ndarray) -> list[np.ndarray]:
        """One token-id row per coalition: absent words' wordpieces -> mask id."""
        keep = np.ones((len(masks), len(self.ids)), dtype=bool)
        owned = self.token_player >= 0
        keep[:, owned] = masks[:, self.token_player[owned]]
        return list(np.where(keep, self.ids, self.mask_id))

    def values(self, outputs: np.ndarray, column: int) -> np.ndarray:
        return outputs[:, column].astype(np.float64)


class RowPlayers:
    """The features of one row, against a background of rows."""

    def __init__(self, row: list[float], background: np.ndarray, features: list[str]) -> None:
        self.x = np.asarray(row, dtype=np.float32)
        self.background = background
        self.features = features
        self.per_coalition = len(background)

    @property
    def n(self) -> int:
        return len(self.x)

    def payloads(self, masks: np.ndarray) -> list[np.ndarray]:
        """One block of background-many rows per coalition (the rows pipeline runs a block
        as one payload)."""
        return list(np.where(masks[:, None, :], self.x[None, None, :], self.background[None]))

    def values(self, outputs: np.ndarray, column: int) -> np.ndarray:
        """The mean over each coalition's block of rows."""
        per = outputs[..., column].astype(np.float64).reshape(-1, self.per_coalition)
        return per.mean(axis=1)
