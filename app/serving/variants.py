"""Which variant of a version serves on this host: every variant the manifest says is
accurate enough, timed on the model's warm-up batches, the fastest kept."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from app.contract.manifest import Manifest
from app.pipelines import Pipeline
from app.runtime.batcher import BatchLimits
from app.runtime.session import ModelSession

# A variant must be this much faster than the manifest's default to replace it (timing noise).
VARIANT_TIE = 0.05

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class ServedVariant:
    """The variant a loaded version serves, and why (rates: inputs/s of each variant timed
    at load; empty when there was no choice)."""

    name: str | None
    file: str
    rates: Mapping[str, float] = field(default_factory=dict)
    reason: str | None = None


def time_variants(pipeline: Pipeline[P], sessions: Mapping[str, ModelSession],
                  limits: BatchLimits) -> dict[str, float]:
    """Inputs per second of each variant's session on the model's middle-sized warm-up
    batches (8 inputs of each warm-up length, for text), on this host and provider: one
    untimed run of the smallest batch (first-run costs), then the better of two timed
    passes, the variants taking turns so that a slow moment of a shared host hurts them
    alike. Timing every warm-up batch (up to 64 x 128 tokens) cost sentiment 8.5 s of load
    time on a 2-core host for the same choice."""
    warm = [b[:limits.max_batch_size] for b in pipeline.warmup_payloads(limits.max_batch_size)]
    sizes = sorted({len(b) for b in warm})
    batches = [b for b in warm if len(b) == sizes[len(sizes) // 2]]
    inputs = sum(len(b) for b in batches)
    best = dict.fromkeys(sessions, float("inf"))
    for session in sessions.values():
        pipeline.run_batch(session.run, min(warm, key=len))
    for _ in range(2):
        for variant, session in sessions.items():
            t0 = time.perf_counter()
            for b in batches:
                pipeline.run_batch(session.run, b)
            best[variant] = min(best[variant], time.perf_counter() - t0)
    return {v: round(inputs / t, 1) for v, t in best.items()}


def budget_note(manifest: Manifest, chosen: str, budget: float) -> str:
    """Why a distilled student may serve (its accuracy against the best variant's); "" for
    any other variant."""
    variant = manifest.variants.get(chosen)
    if variant is None or variant.distilled_from is None:
        return ""
    accuracies = [a for v in manifest.variants.values()
                  if isinstance(a := v.test_metrics.get("accuracy"), int | float)]
    accuracy = variant.test_metrics.get("accuracy")
    if not accuracies or not isinstance(accuracy, int | float):
        return ""
    return (f"; {chosen} is a distilled student admitted by ORTSERVE_ACCURACY_BUDGET="
            f"{budget:g}: test accuracy {accuracy:.4f}, {max(accuracies) - accuracy:.4f} "
            "below the most accurate variant")


def choose_variant(rates: Mapping[str, float], default: str | None) -> tuple[str, str]:
    """The fastest variant, unless the manifest's default is within VARIANT_TIE of it."""
    fastest = max(rates, key=lambda v: rates[v])
    listed = ", ".join(f"{v} {r:g} inputs/s" for v, r in
                       sorted(rates.items(), key=lambda kv: -kv[1]))
    if (default is not None and default in rates
            and rates[default] >= (1 - VARIANT_TIE) * rates[fastest]):
        if default == fastest:
            return default, f"fastest on this host: {listed}"
        return default, (f"the manifest's default, within {VARIANT_TIE:.0%} of the fastest: "
                         f"{listed}")
    return fastest, f"fastest on this host: {listed}"
