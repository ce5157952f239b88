"""Who may call what, for every protocol: one gate that HTTP routes and gRPC methods pass
before they do any work.

A call asks for one of four kinds of access:

- `PUBLIC`: health checks. No key, and answered while the service stops.
- `OBSERVE`: metrics and the API docs. A predict key unless the settings exempt the path;
  answered while the service stops.
- `PREDICT`: the data plane (predict, explain, models, v2 inference). A predict key unless
  the path is exempt; refused while the service stops.
- `ADMIN`: the repository APIs. An admin key, always; refused while the service stops.

Keys travel as `Authorization: Bearer <key>` (HTTP header or gRPC metadata) and are matched
in constant time (`app/security/keys.py`). Predict keys are open when none is configured
(`app/security/posture.py` decides whether that may start); admin keys are distinct, and
with none configured the admin API is off. A client address whose authentications keep
failing is throttled (429) before its keys are looked at. An accepted key takes a token from
its rate limit (one bucket per key, the same for HTTP and gRPC; admin keys have their own).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum

from app.api.edge.drain import STOPPING, Drain
from app.api.edge.errors import (
    PermissionDenied,
    RateLimited,
    RateLimiterDown,
    ShuttingDown,
    Unauthenticated,
)
from app.observability.context import name_caller
from app.observability.metrics import Metrics
from app.security.keys import KeyStore
from app.security.ratelimit import AddressThrottle, BackendDown, Limiter

AUTHORIZATION = b"authorization"


class Access(Enum):
    PUBLIC = "public"
    OBSERVE = "observe"
    PREDICT = "predict"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who the gate let in: `key_id` (a SHA-256 of the key: its rate-limit bucket and, cut
    short, its name in the audit log; None without a key) and the client's address."""

    key_id: str | None
    address: str | None

    @property
    def short_id(self) -> str | None:
        return self.key_id[:12] if self.key_id else None


ANONYMOUS = Caller(None, None)


def bearer(value: bytes | str | None) -> bytes | None:
    """The key of an `Authorization: Bearer <key>` value; None when there is none."""
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    if raw[:7].lower() != b"bearer ":
        return None
    return raw[7:].strip() or None


class Gate:
    def __init__(self, predict_keys: KeyStore, admin_keys: KeyStore, drain: Drain,
                 metrics: Metrics, limiter: Limiter | None = None,
                 admin_limiter: Limiter | None = None,
                 throttle: AddressThrottle | None = None,
                 observe_keys: KeyStore | None = None) -> None:
        self.predict_keys, self.admin_keys = predict_keys, admin_keys
        # metrics and docs: predict keys, or keys for them alone (a scraper's)
        self.observe_keys = observe_keys or predict_keys
        self.limiter, self.admin_limiter = limiter, admin_limiter
        self.throttle, self.drain, self.metrics = throttle, drain, metrics

    async def admit(self, access: Access, key: bytes | None, address: str | None,
                    protocol: str, *, check_key: bool = True, hold: bool = False) -> Caller:
        """Return who is calling, or raise the error that refuses the call. `check_key`:
        False for a path the settings exempt from keys; `hold`: a call refused while
        stopping waits for the listeners to close (see `Drain.until_listeners_closed`)."""
        if access is Access.PUBLIC:
            return ANONYMOUS
        if access is not Access.OBSERVE and self.drain.phase == STOPPING:
            if hold:
                await self.drain.until_listeners_closed()
            raise ShuttingDown("the server is shutting down; retry on another replica",
                               retry_after_s=1)
        if access is Access.ADMIN:
            return await self._keyed(self.admin_keys, self.admin_limiter, key, address,
                                     protocol, "admin key", "ORTSERVE_ADMIN_KEYS")
        keys = self.observe_keys if access is Access.OBSERVE else self.predict_keys
        if not check_key or not keys.enabled:
            return Caller(None, address)
        return await self._keyed(keys, self.limiter if access is Access.PREDICT else None,
                                 key, address, protocol, "API key", "ORTSERVE_API_KEYS")

    async def _keyed(self, keys: KeyStore, limiter: Limiter | None, key: bytes | None,
                     address: str | None, protocol: str, what: str, setting: str) -> Caller:
        if self.throttle is not None and address is not None:
            wait = self.throttle.wait(address)
            if wait > 0:
                self.metrics.auth_failures.labels(protocol, "throttled").inc()
                raise RateLimited(f"too many failed authentications from {address}; retry "
                                  f"in {wait:.0f} s", retry_after_s=wait)
        if key is None:
            self._failed(address, protocol, "missing_key")
            raise Unauthenticated(f"missing {what}: send 'Authorization: Bearer "
                                  f"<{'key' if what == 'API key' else what}>'")
        if not keys.enabled:
            self._failed(address, protocol, "wrong_key")
            raise PermissionDenied(f"the repository API is off: no {what} is configured "
                                   f"({setting})")
        if not keys.matches(key):
            self._failed(address, protocol, "wrong_key")
            raise PermissionDenied(f"{what} not accepted ({setting})")
        caller = Caller(hashlib.sha256(key).hexdigest(), address)
        name_caller(caller.short_id)
        await self._take(limiter, caller, 1)
        return caller

    def _failed(self, address: str | None, protocol: str, reason: str) -> None:
        self.metrics.auth_failures.labels(protocol, reason).inc()
        if self.throttle is not None and address is not None:
            self.throttle.failed(address)

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Take `tokens` more from the caller's predict rate limit (a costly request:
        explanations), or raise RateLimited."""
        if tokens > 0 and caller.key_id is not None:
            await self._take(self.limiter, caller, tokens)

    @staticmethod
    async def _take(limiter: Limiter | None, caller: Caller, tokens: int) -> None:
        if limiter is None or caller.key_id is None:
            return
        try:
            wait = await limiter.take(caller.key_id, tokens)
        except BackendDown as exc:
            raise RateLimiterDown(str(exc), retry_after_s=1) from None
        if wait == float("inf"):
            raise RateLimited(f"this request costs {tokens} rate-limit tokens, more than a "
                              "key's bucket holds (ORTSERVE_RATE_LIMIT_BURST); ask for less")
        if wait > 0:
            raise RateLimited(f"rate limit exceeded; retry in {wait:.2f} s",
                              retry_after_s=math.ceil(wait))
