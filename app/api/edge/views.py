"""The service's own JSON for the serving layer's views: a model summary as `/models` lists
it and the repository API answers it, and the facts of a served version."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.serving.views import ModelView, ServedVersion

# What a model summary says of its routed version when none is routed
NO_VERSION: dict[str, Any] = {
    "version": None, "kind": None, "variant": None, "model_file": None, "variant_rates": {},
    "variant_reason": None, "provider": None, "providers": None, "requested_providers": None,
    "batching": None, "instances": None}


def served_facts(v: ServedVersion) -> dict[str, Any]:
    return {
        "name": v.name, "version": v.version, "kind": v.kind, "variant": v.variant,
        "model_file": v.model_file, "variant_rates": dict(v.variant_rates),
        "variant_reason": v.variant_reason, "provider": v.provider,
        "providers": list(v.providers), "requested_providers": list(v.requested_providers),
        "batching": asdict(v.batching), "instances": v.instances,
        "load_seconds": v.load_seconds, "memory_mb": v.memory_mb,
        "explainable": v.explainable, "explain_baseline": v.explain_baseline,
        "feature_ranges": [dict(r) for r in v.feature_ranges] if v.feature_ranges else None,
        "calibration": dict(v.calibration) if v.calibration else None,
    }


def model_summary(m: ModelView) -> dict[str, Any]:
    """One model as `/models` lists it: its routed version's facts, its state, policy and
    versions."""
    out: dict[str, Any] = {"name": m.name, **NO_VERSION}
    if m.routed is not None:
        out.update(served_facts(m.routed))
    out.update(status=m.status, error=m.error, policy=m.policy,
               pinned_version=m.pinned_version,
               versions=[{"version": v.version, "state": v.state, "reason": v.reason,
                          "routed": v.routed} for v in m.versions])
    return out
