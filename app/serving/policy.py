"""Version policies, as in Triton: which of a model's versions on disk it serves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.settings import Settings


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """`latest` (the `count` highest versions), `all`, or `specific` versions."""

    kind: str
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, raw: str | list[int]) -> VersionPolicy:
        """"latest", "latest:N", "all" or a list of versions; ValueError when malformed."""
        if isinstance(raw, list):
            return cls("specific", versions=tuple(sorted(set(raw))))
        if raw == "all":
            return cls("all", 0)
        if raw == "latest":
            return cls("latest", 1)
        if raw.startswith("latest:") and raw[7:].isascii() and raw[7:].isdigit() \
                and int(raw[7:]) > 0:
            return cls("latest", int(raw[7:]))
        raise ValueError(f"version policy {raw!r}: expected latest, latest:N, all or a list")

    def candidates(self, on_disk: Sequence[int]) -> tuple[list[int], int]:
        """(the versions this policy may serve, best first; how many of them it serves)."""
        if self.kind == "specific":
            return [v for v in self.versions if v in on_disk], len(self.versions)
        ordered = sorted(on_disk, reverse=True)
        return ordered, (len(ordered) if self.kind == "all" else self.count)

    def missing(self, on_disk: Sequence[int]) -> list[int]:
        """Versions a specific policy names that are not on disk."""
        return [v for v in self.versions if v not in on_disk]


def policy_setting(settings: Settings, name: str) -> str | list[int]:
    """The policy the settings give a model: a pinned version, its own, or the default."""
    if name in settings.model_versions:
        return [settings.model_versions[name]]
    return settings.version_policy.get(name, settings.default_version_policy)
