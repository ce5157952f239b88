"""The Prometheus series of each loaded version: set when it serves, withdrawn when it
leaves, so that a scrape lists exactly the versions in memory."""

from __future__ import annotations

import logging

from app.observability.metrics import Metrics
from app.serving.model import LoadedModel

log = logging.getLogger("ortserve.registry")


class VersionSeries:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def _info_labels(self, model: LoadedModel) -> tuple[str, ...]:
        s = model.session
        return (model.name, str(model.version), model.kind, model.variant.name or "",
                s.provider, s.requested[0],
                model.manifest.artifacts[model.variant.file].sha256)

    def serving(self, model: LoadedModel) -> None:
        """The version is loaded and warmed: ready, its provider and file, its variants'
        measured rates."""
        name, version = model.metric_labels
        self.metrics.ready.labels(name, version).set(1)
        self.metrics.info.labels(*self._info_labels(model)).set(1)
        for variant, rate in model.variant.rates.items():
            self.metrics.variant_rate.labels(name, version, variant).set(rate)

    def leaving(self, name: str, version: int) -> None:
        """Requests without a version no longer reach it; it drains."""
        self.metrics.ready.labels(name, str(version)).set(0)

    def gone(self, model: LoadedModel) -> None:
        """The version was closed: none of its series remains."""
        name, version = model.metric_labels
        series = [(self.metrics.info, self._info_labels(model))]
        series += [(self.metrics.variant_rate, (name, version, v)) for v in model.variant.rates]
        for metric, labels in series:
            try:
                metric.remove(*labels)
            except KeyError:
                pass
        self.metrics.forget(name, version)

    def load_failed(self, name: str, reason: str) -> None:
        self.metrics.load_failures.labels(name, reason).inc()
