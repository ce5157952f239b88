"""Who may call what, for every protocol: one gate that HTTP routes and gRPC methods pass
before they do any work.

A call asks for one of three kinds of access: `PUBLIC` (health, metrics), `PREDICT` (the
data plane: predict, explain, models, v2 inference) or `ADMIN` (the repository APIs).
Keys travel as `Authorization: Bearer <key>` (HTTP header or gRPC metadata). Predict keys
are open when none is configured; admin keys are distinct from them, and with none
configured the admin API is off. A predict key then takes a token from its rate limit,
keyed by a hash of the key (one bucket per key for HTTP and gRPC alike). While the service
is stopping, new work is refused (health and metrics still answer).
"""

from __future__ import annotations

import hashlib
import math
from enum import Enum

from app.api.edge.drain import STOPPING, Drain
from app.api.edge.errors import (
    PermissionDenied,
    RateLimited,
    RateLimiterDown,
    ShuttingDown,
    Unauthenticated,
)
from app.security.keys import KeyStore
from app.security.ratelimit import BackendDown, Limiter

AUTHORIZATION = b"authorization"


class Access(Enum):
    PUBLIC = "public"
    PREDICT = "predict"
    ADMIN = "admin"


def bearer(value: bytes | str | None) -> bytes | None:
    """The key of an `Authorization: Bearer <key>` value; None when there is none."""
    if value is None:
        return None
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if raw[:7].lower() != b"bearer ":
        return None
    return raw[7:].strip() or None


class Gate:
    def __init__(self, predict_keys: KeyStore, admin_keys: KeyStore, limiter: Limiter | None,
                 drain: Drain) -> None:
        self.predict_keys, self.admin_keys = predict_keys, admin_keys
        self.limiter, self.drain = limiter, drain

    async def admit(self, access: Access, key: bytes | None, *, check_key: bool = True,
                    hold: bool = False) -> None:
        """Raise the error that refuses this call, or return. `check_key=False` for a path
        the settings exempt from keys; `hold`: a refused HTTP request waits for the
        listeners to close (see `Drain.until_listeners_closed`)."""
        if access is Access.PUBLIC:
            return
        if self.drain.phase == STOPPING:
            if hold:
                await self.drain.until_listeners_closed()
            raise ShuttingDown("the server is shutting down; retry on another replica",
                               retry_after_s=1)
        if access is Access.ADMIN:
            self._check_admin(key)
        elif check_key and self.predict_keys.enabled:
            await self._check_predict(key)

    def _check_admin(self, key: bytes | None) -> None:
        if key is None:
            raise Unauthenticated("missing admin key: send 'Authorization: Bearer <admin key>'")
        if not self.admin_keys.enabled:
            raise PermissionDenied("the repository API is off: no admin key is configured "
                                   "(ORTSERVE_ADMIN_KEYS)")
        if not self.admin_keys.matches(key):
            raise PermissionDenied("admin key not accepted (ORTSERVE_ADMIN_KEYS)")

    async def _check_predict(self, key: bytes | None) -> None:
        if key is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if not self.predict_keys.matches(key):
            raise PermissionDenied("API key not accepted")
        if self.limiter is None:
            return
        try:
            wait = await self.limiter.take(hashlib.sha256(key).hexdigest())
        except BackendDown as exc:
            raise RateLimiterDown(str(exc), retry_after_s=1) from None
        if wait > 0:
            raise RateLimited(f"rate limit exceeded; retry in {wait:.2f} s",
                              retry_after_s=math.ceil(wait))
