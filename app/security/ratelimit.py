"""Per-key token buckets: in the process (default) or in Redis (`ORTSERVE_REDIS_URL`), where
the limit holds across worker processes and replicas.

Both answer `take(who, tokens)` with the seconds until that many tokens are free (0: taken;
infinity: never, the cost exceeds the bucket). A Redis that
cannot be reached does not take predictions down: the request is allowed (fail open, the
default) or refused with 503 (`ORTSERVE_RATE_LIMIT_FAIL_OPEN=false`); either way
`ortserve_rate_limit_backend_errors_total` rises and a log line says so (at most one every
10 s).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("ortserve.ratelimit")

# Seconds a Redis call may take before the limiter gives up on it (loopback or LAN).
REDIS_TIMEOUT_S = 0.25
LOG_EVERY_S = 10.0

# One atomic step of the bucket, on Redis's clock: refill by elapsed time, take a token if
# there is one, remember the state (expiring once the bucket would be full again anyway).
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class BackendDown(Exception):
    """The shared limiter cannot be asked and the settings say to refuse."""


class Limiter(Protocol):
    async def take(self, who: str, tokens: int = 1) -> float: ...


class TokenBucket:
    """In this process only: N workers or replicas allow N times the limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens: dict[str, tuple[float, float]] = {}

    async def take(self, who: str, tokens: int = 1) -> float:
        if tokens > self.burst:
            return float("inf")
        now = time.monotonic()
        have, last = self.tokens.get(who, (float(self.burst), now))
        have = min(self.burst, have + (now - last) * self.rate)
        if have >= tokens:
            self.tokens[who] = (have - tokens, now)
            return 0.0
        self.tokens[who] = (have, now)
        return (tokens - have) / self.rate


class RedisTokenBucket:
    """In Redis: one bucket per key for every process that uses the same Redis."""

    def __init__(self, url: str, rate: float, burst: int, fail_open: bool,
                 on_error=None, prefix: str = "ortserve:ratelimit:") -> None:
        import redis.asyncio as redis

        self.prefix = prefix
        self.rate, self.burst, self.fail_open = rate, burst, fail_open
        self._redis = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                     socket_connect_timeout=REDIS_TIMEOUT_S)
        self._script = self._redis.register_script(_TAKE)
        self._on_error = on_error
        self._logged = 0.0

    async def take(self, who: str, tokens: int = 1) -> float:
        if tokens > self.burst:
            return float("inf")
        try:
            wait = await self._script(keys=[f"{self.prefix}{who}"],
                                      args=[self.rate, self.burst, tokens])
            return float(wait)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is handled the same way
            if self._on_error is not None:
                self._on_error()
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY_S:
                self._logged = now
                log.error("rate limiter: Redis unavailable (%s: %s); requests are %s",
                          type(exc).__name__, exc,
                          "allowed (fail open)" if self.fail_open else "refused (fail closed)")
            if self.fail_open:
                return 0.0
            raise BackendDown("the rate limiter is unavailable; retry shortly") from exc


def build_limiter(settings, metrics, rate: float | None = None, burst: int | None = None,
                  prefix: str = "ortserve:ratelimit:") -> Limiter | None:
    """The per-key limiter the settings ask for (`rate`/`burst` default to the predict
    keys' settings); None when the rate is 0."""
    rate = settings.rate_limit_per_s if rate is None else rate
    burst = settings.rate_limit_burst if burst is None else burst
    if rate <= 0:
        return None
    if settings.redis_url:
        return RedisTokenBucket(settings.redis_url, rate, burst, settings.rate_limit_fail_open,
                                on_error=metrics.rate_limit_backend_errors.inc, prefix=prefix)
    return TokenBucket(rate, burst)


class AddressThrottle:
    """Failed authentications per client address: a token bucket of `per_minute` tokens
    refilling over a minute, one taken per failure. An address with an empty bucket is
    refused before its key is looked at. At most `max_addresses` are remembered (the
    least recently failing are forgotten first), so a flood from many addresses cannot
    grow memory without bound."""

    def __init__(self, per_minute: float, max_addresses: int = 65536) -> None:
        self.burst = max(1.0, per_minute)
        self.rate = per_minute / 60.0
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def wait(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        if address not in self._buckets:
            return 0.0
        level = self._level(address, time.monotonic())
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def failed(self, address: str) -> None:
        now = time.monotonic()
        level = self._level(address, now)
        self._buckets[address] = (max(0.0, level - 1), now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
