"""The audit log: one line per call to the repository APIs (load, unload, index), on the
`ortserve.audit` logger: which key (an id derived from it, never the key), which protocol,
what, on what, and how it ended."""

from __future__ import annotations

import logging

audit_log = logging.getLogger("ortserve.audit")


def admin_action(key_id: str | None, protocol: str, action: str, outcome: str,
                 request_id: str | None = None) -> None:
    audit_log.info("admin %s by key %s: %s", action, key_id or "-", outcome, extra={
        "audit": True, "key_id": key_id, "protocol": protocol, "action": action,
        "outcome": outcome, "request_id": request_id})
