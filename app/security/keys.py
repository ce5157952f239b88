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
        self._failing = False

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < REFRESH_S:
            return
        self._checked = now
        try:
            mtime = self._file.stat().st_mtime
            if mtime == self._mtime:
                return
            text = self._file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            # no key is accepted from a file that cannot be read (closed, not open)
            if not self._failing:
                log.error("%s: cannot read the keys (%s); none of its keys is accepted",
                          self._file, type(exc).__name__)
            self._file_keys, self._mtime, self._failing = [], None, True
            return
        self._failing = False
        self._file_keys = self._parse(text)
        self._mtime = mtime

    def _parse(self, text: str) -> list[bytes]:
        keys = [ln.strip() for ln in text.splitlines()]
        keys = [k for k in keys if k and not k.startswith("#")]
        short = sum(len(k) < self.min_length for k in keys)
        if short:
            log.error("%s: %d key(s) shorter than %d characters ignored "
                      "(ORTSERVE_MIN_KEY_LENGTH)", self._file, short, self.min_length)
        return [_digest(k.encode()) for k in keys if len(k) >= self.min_length]

    def file_problem(self) -> str | None:
        """Why the key file gives no key (for the start-up check); None when it does."""
        if self._file is None:
            return None
        self._checked = float("-inf")
        self._refresh()
        if self._mtime is None:
            return f"{self._file} cannot be read"
        if not self._file_keys:
            return f"{self._file} holds no key of at least {self.min_length} characters"
        return None

    @property
    def enabled(self) -> bool:
        """Keys are asked for: some are configured, or a key file is named."""
        return bool(self._static) or self._file is not None

    def __or__(self, other: KeyStore) -> KeyStore:
        """A store that accepts the keys of both (e.g. predict keys for /metrics)."""
        return _Either(self, other)

    def matches(self, candidate: bytes) -> bool:
        self._refresh()
        given = _digest(candidate)
        found = False
        for key in (*self._static, *self._file_keys):
            found |= hmac.compare_digest(given, key)  # no early exit: constant time
        return found


class _Either(KeyStore):
    def __init__(self, first: KeyStore, second: KeyStore) -> None:
        super().__init__(())
        self._stores = (first, second)

    @property
    def enabled(self) -> bool:
        return any(s.enabled for s in self._stores)

    def matches(self, candidate: bytes) -> bool:
        found = False
        for store in self._stores:  # both asked, whatever the first says: constant time
            found |= store.matches(candidate)
        return found
