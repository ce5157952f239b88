"""The security posture a server starts with: closed unless the operator opens it.

A server that listens beyond loopback asks for API keys; without any it refuses to start
unless `ORTSERVE_ALLOW_UNAUTHENTICATED=true` says so (then a warning at every start). The
start-up log says what is open and what is not.
"""

from __future__ import annotations

import ipaddress

from app.security.keys import KeyStore
from app.settings import Settings

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class UnsafeSettings(ValueError):
    """A server these settings would expose without a key, and no opt-in."""


def is_loopback(host: str) -> bool:
    """True when `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost);
    a wildcard (0.0.0.0, ::) or any other name or address is not."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keys_configured(settings: Settings) -> bool:
    return bool(settings.api_keys) or settings.api_keys_file is not None


def check(settings: Settings) -> list[str]:
    """Raise UnsafeSettings for a server that would answer anyone on the network without
    an opt-in; otherwise the warnings to log at start."""
    warnings = []
    if not keys_configured(settings) and not is_loopback(settings.host):
        if not settings.allow_unauthenticated:
            raise UnsafeSettings(
                f"refusing to serve on {settings.host} without API keys: anyone who can "
                "reach it could use every model. Set ORTSERVE_API_KEYS (or "
                "ORTSERVE_API_KEYS_FILE), bind to 127.0.0.1, or set "
                "ORTSERVE_ALLOW_UNAUTHENTICATED=true to accept the risk")
        warnings.append(f"serving on {settings.host} WITHOUT API keys "
                        "(ORTSERVE_ALLOW_UNAUTHENTICATED=true): anyone who can reach it can "
                        "use every model")
    if settings.ssl_certfile is None and not is_loopback(settings.host) and \
            keys_configured(settings):
        warnings.append("API keys travel in clear text: no TLS (ORTSERVE_SSL_CERTFILE) on "
                        f"{settings.host}; terminate TLS in front of the service or set it")
    return warnings


def check_key_files(settings: Settings) -> None:
    """Raise UnsafeSettings for a key file named but unreadable or without a valid key: the
    server would start refusing every key, which looks like an outage, not a setting."""
    for setting, path in (("ORTSERVE_API_KEYS_FILE", settings.api_keys_file),
                          ("ORTSERVE_ADMIN_KEYS_FILE", settings.admin_keys_file),
                          ("ORTSERVE_METRICS_KEYS_FILE", settings.metrics_keys_file)):
        problem = KeyStore((), path, settings.min_key_length).file_problem()
        if problem is not None:
            raise UnsafeSettings(f"{setting}: {problem}; the server would accept none of its "
                                 "keys")


def describe(settings: Settings) -> str:
    """One start-up line: who may call what."""
    keys = ("API keys required" if keys_configured(settings) else "no API keys (open)")
    admin = "admin API on" if settings.admin_keys else "admin API off (no admin key)"
    tls = ("mutual TLS" if settings.ssl_ca_certs else "TLS") if settings.ssl_certfile \
        else "no TLS"
    metrics = "metrics need a key" if settings.metrics_require_key or \
        "/metrics" not in settings.auth_exempt_paths else "metrics open"
    return f"{keys}; {admin}; {tls}; {metrics}; docs {'on' if settings.docs else 'off'}"
