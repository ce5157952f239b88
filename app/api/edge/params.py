"""Path parameters and headers, parsed once for every protocol.

Numbers are read from ASCII digits only, with a bounded length, before anything converts
them: `int()` and `float()` accept Unicode digits, signs, spaces, exponents and thousands
of digits, and `int("²")` raises where `"²".isdigit()` says yes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from app.api.edge.errors import InvalidRequest
from app.contract.manifest import NAME_PATTERN

MAX_NAME_LENGTH = 128
# A version: a positive integer of at most 9 digits, no sign, no leading zero (in a JSON
# body: an integer from 1 to MAX_VERSION).
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,8}")
MAX_VERSION = 999_999_999
TIMEOUT_HEADER = "X-Request-Timeout"
TIMEOUT_KEY = TIMEOUT_HEADER.lower().encode("latin-1")
MIN_TIMEOUT_S = 0.05
# Seconds: up to 6 digits, optionally a fraction of up to 6 digits.
TIMEOUT_PATTERN = re.compile(rb"[0-9]{1,6}(\.[0-9]{1,6})?")


def model_name(raw: str, field: str = "name") -> str:
    """A model name as the repository allows it (the path of a folder, never more)."""
    if len(raw) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(raw):
        raise InvalidRequest(field, f"must match {NAME_PATTERN.pattern} and be at most "
                                    f"{MAX_NAME_LENGTH} characters")
    return raw


def version(raw: str | None, field: str = "version") -> int | None:
    """A version parameter; None or "" means "the one requests without a version go to"."""
    if raw is None or raw == "":
        return None
    if not VERSION_PATTERN.fullmatch(raw) or not raw.isascii():
        raise InvalidRequest(field, f"must be a positive integer of at most 9 ASCII digits, "
                                    f"got {raw[:20]!r}")
    return int(raw)


def header(headers: Iterable[tuple[bytes, bytes]], key: bytes) -> bytes | None:
    """The first value of `key` (ASGI header names are lower-case bytes)."""
    for k, value in headers:
        if k == key:
            return value
    return None


def timeout(raw: bytes | None) -> float | None:
    """`X-Request-Timeout`: seconds (at least MIN_TIMEOUT_S) this request may take."""
    if raw is None:
        return None
    value = float(raw) if TIMEOUT_PATTERN.fullmatch(raw) else 0.0
    if value < MIN_TIMEOUT_S:
        raise InvalidRequest(TIMEOUT_HEADER, f"must be a number of seconds >= {MIN_TIMEOUT_S} "
                                             "(ASCII digits, at most 6 before and after the "
                                             "point)")
    return value


ROUTE_KEY_HEADER = "X-Route-Key"
ROUTE_KEY = ROUTE_KEY_HEADER.lower().encode("latin-1")
MAX_ROUTE_KEY = 256


def route_key(raw: bytes | str | None, field: str = ROUTE_KEY_HEADER) -> str | None:
    """A rollout's sticky-split key (a user or session id): 1 to MAX_ROUTE_KEY characters
    after trimming; None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, str | bytes) or len(raw) > MAX_ROUTE_KEY:
        raise InvalidRequest(field, f"must be a string of at most {MAX_ROUTE_KEY} characters")
    key = (raw.decode("latin-1") if isinstance(raw, bytes) else raw).strip()
    if not key:
        raise InvalidRequest(field, "must not be empty")
    return key


def deadline(server_timeout_s: float, *limits: float | None) -> float:
    """Seconds a request may take: the server's setting, lowered by any limit the request
    sets (a header, a protocol parameter, a gRPC deadline); never raised."""
    return min([server_timeout_s, *(x for x in limits if x is not None)])


# OpenAPI: the parameters as the parsers above read them, for routes that parse their own
NAME_DOC = {"name": "name", "in": "path", "required": True, "description": "Model name.",
            "schema": {"type": "string", "pattern": NAME_PATTERN.pattern,
                       "maxLength": MAX_NAME_LENGTH}}
VERSION_DOC = {"name": "version", "in": "path", "required": True,
               "description": "Model version.",
               "schema": {"type": "string", "pattern": f"^{VERSION_PATTERN.pattern}$"}}
TIMEOUT_DOC = {"name": TIMEOUT_HEADER, "in": "header", "required": False,
               "schema": {"type": "number", "minimum": MIN_TIMEOUT_S, "maximum": 999999},
               "description": f"Seconds (at least {MIN_TIMEOUT_S}) before this request gives "
                              "up with 504; the server setting caps it."}
ROUTE_KEY_DOC = {"name": ROUTE_KEY_HEADER, "in": "header", "required": False,
                 "schema": {"type": "string", "maxLength": MAX_ROUTE_KEY},
                 "description": "With a sticky rollout (README \"Rollouts\"), requests with "
                                "the same key reach the same version."}
