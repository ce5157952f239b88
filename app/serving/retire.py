"""Taking versions out of service: drained (every request they accepted is answered),
closed, their series withdrawn and their memory handed back."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from app.runtime.memory import release_freed_memory
from app.serving.records import ModelRecord
from app.serving.series import VersionSeries
from app.serving.views import DRAINING, UNLOADED

log = logging.getLogger("ortserve.registry")


async def retire(rec: ModelRecord, versions: list[int], series: VersionSeries,
                 root: Path) -> None:
    """Retire each of `versions` of `rec`, one after the other. The route must already
    lead elsewhere (`ModelRegistry._route`)."""
    for v in versions:
        vr = rec.versions[v]
        model, vr.state = vr.model, DRAINING
        if model is None:
            continue
        await model.drain()
        await model.close()
        series.gone(model)
        vr.model, vr.state, vr.reason = None, UNLOADED, None
        if not (root / rec.name / str(v)).is_dir():
            del rec.versions[v]  # gone from disk too: nothing left to report
        del model
        # A version caught in a reference cycle (a cancelled task's traceback, a pending
        # timer) is freed only by the cycle collector: collect first, so the trim below
        # hands its weights back now rather than never (tests/test_registry.py).
        gc.collect()
        release_freed_memory()
        log.info("model %s version %s unloaded", rec.name, v)
