"""API keys: from settings and/or a file re-read when it changes (rotation without a
restart), compared in constant time, never logged."""

from __future__ import annotations

import hmac
import time
from pathlib import Path


class KeyStore:
    def __init__(self, keys: list[str], key_file: Path | None) -> None:
        self._static = [k.encode() for k in keys if k]
        self._file = key_file
        self._file_keys: list[bytes] = []
        self._mtime: float | None = None
        self._checked = 0.0

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = self._file.stat().st_mtime
        except OSError:
            self._file_keys, self._mtime = [], None
            return
        if mtime != self._mtime:
            lines = self._file.read_text().splitlines()
            self._file_keys = [ln.strip().encode() for ln in lines
                               if ln.strip() and not ln.startswith("#")]
            self._mtime = mtime

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self._file is not None

    def matches(self, candidate: bytes) -> bool:
        self._refresh()
        found = False
        for key in (*self._static, *self._file_keys):
            found |= hmac.compare_digest(candidate, key)  # no early exit: constant time
        return found
