"""Optional API-key auth (`Authorization: Bearer <key>`) with a per-key rate limit
(`app/security/ratelimit.py`).

Keys come from settings and/or a file re-read when it changes, so keys rotate without a
restart. Keys are compared in constant time and never logged; rate limits are keyed by a
hash of the key.
"""

from __future__ import annotations

import hashlib
import math

from app.api.edge.http import send_error
from app.security.keys import KeyStore
from app.security.ratelimit import BackendDown, Limiter


class AuthMiddleware:
    def __init__(self, app, keys: KeyStore, exempt: list[str], limiter: Limiter | None,
                 own_auth: tuple[str, ...] = (), public: tuple[str, ...] = ()) -> None:
        self.app = app
        self.public = public  # path prefixes anyone may fetch (the playground's files)
        self.keys = keys
        self.exempt = set(exempt)
        self.own_auth = own_auth  # path prefixes with keys of their own (the admin API)
        self.limiter = limiter

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or not self.keys.enabled or scope["path"] in self.exempt
                or scope["path"].startswith(self.own_auth)
                or scope["path"].startswith(self.public)):
            return await self.app(scope, receive, send)
        path = scope["path"]
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None or not header[:7].lower() == b"bearer " or not header[7:].strip():
            return await send_error(send, path, 401, "unauthorized",
                                    "missing API key: send 'Authorization: Bearer <key>'",
                                    headers=[(b"www-authenticate", b"Bearer")])
        key = header[7:].strip()
        if not self.keys.matches(key):
            return await send_error(send, path, 403, "forbidden", "API key not accepted")
        if self.limiter is not None:
            try:
                wait = await self.limiter.take(hashlib.sha256(key).hexdigest())
            except BackendDown as exc:
                return await send_error(send, path, 503, "rate_limiter_unavailable", str(exc),
                                        headers=[(b"retry-after", b"1")])
            if wait > 0:
                return await send_error(
                    send, path, 429, "rate_limited", f"rate limit exceeded; retry in {wait:.2f} s",
                    headers=[(b"retry-after", str(math.ceil(wait)).encode())])
        return await self.app(scope, receive, send)



