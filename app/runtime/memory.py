"""The process's resident memory, and handing freed heap pages back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident set size now (Linux: /proc/self/statm; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover
        return None


_LIBC = _libc()


def release_freed_memory() -> None:
    """Ask glibc to return the free pages at the top and inside its heaps to the OS.

    After a session is destroyed its weights are free but glibc keeps most of them
    mapped for reuse, so RSS would not show the unload (tests/test_registry.py measures
    it). A no-op where the C library has no `malloc_trim`.
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
