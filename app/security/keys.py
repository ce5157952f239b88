"""API keys: from settings and/or a file re-read when it changes (rotation without a
restart), compared in constant time, never logged.

Predict keys and admin keys are two stores of this one matcher; the HTTP edge and the gRPC
servicer both ask it through `app/api/edge/auth.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("ortserve.keys")

# A key file is looked at (stat) at most this often.
REFRESH_S = 1.0


def _digest(key: bytes) -> bytes:
    # Equal-length digests: the comparison's time says nothing about a key's length.
    return hashlib.sha256(key).digest()


class KeyStore:
    def __init__(self, keys: Iterable[str], key_file: Path | None = None,
                 min_length: int = 1) -> None:
        self._static = [_digest(k.encode()) for k in keys if k]
        self.min_length = min_length
        self._file = key_file
        self._file_keys: list[bytes] = []
        self._mtime: float | None = None
        self._checked = float("-inf")

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < REFRESH_S:
            return
        self._checked = now
        try:
            mtime = self._file.stat().st_mtime
        except OSError:
            self._file_keys, self._mtime = [], None
            return
        if mtime != self._mtime:
            lines = [ln.strip() for ln in self._file.read_text().splitlines()]
            keys = [ln for ln in lines if ln and not ln.startswith("#")]
            short = sum(len(k) < self.min_length for k in keys)
            if short:
                log.error("%s: %d key(s) shorter than %d characters ignored "
                          "(ORTSERVE_MIN_KEY_LENGTH)", self._file, short, self.min_length)
            self._file_keys = [_digest(k.encode()) for k in keys if len(k) >= self.min_length]
            self._mtime = mtime

    @property
    def enabled(self) -> bool:
        """Keys are asked for: some are configured, or a key file is named."""
        return bool(self._static) or self._file is not None

    def matches(self, candidate: bytes) -> bool:
        self._refresh()
        given = _digest(candidate)
        found = False
        for key in (*self._static, *self._file_keys):
            found |= hmac.compare_digest(given, key)  # no early exit: constant time
        return found
