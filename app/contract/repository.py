"""Scans `models/<name>/<version>/`, validates manifests and artifact hashes, picks versions.

Only ONNX and tokenizer JSON files listed in a manifest are ever loaded, and only after
their SHA-256 matches; nothing here unpickles or executes model files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from app.contract.manifest import MANIFEST_FILE, NAME_PATTERN, Manifest, eligible_variants

log = logging.getLogger("ortserve.repository")


class VersionRejected(ValueError):
    """A version folder that cannot serve; the message says why."""


@dataclass(frozen=True)
class ModelSource:
    """One version as found on disk, its manifest verified."""

    name: str
    version: int
    path: Path
    manifest: Manifest
    model_file: str  # the variant file to serve, unless the loader picks among candidates
    variant: str | None
    # variant name -> file of every variant verified and worth timing at load (auto); the
    # loader serves the fastest
    candidates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifiedVersion:
    """A source and the verified bytes of each artifact it needs, so what is parsed is
    exactly what was hashed (no re-read between the check and the load). Dropped once the
    version is loaded: ONNX Runtime and the tokenizer keep their own copies."""

    source: ModelSource
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class ScanEntry:
    """What `ortserve check` reports of one model: the version it would serve and whether
    that version verifies."""

    name: str
    version: int | None
    model_file: str | None
    error: str | None


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isascii() and p.name.isdigit())


def model_names(root: Path) -> list[str]:
    """Every model folder of the repository (hidden and badly named folders are not)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))


def version_folders(root: Path, name: str) -> list[int]:
    """The numbered version folders of one model, ascending ([] if it has none)."""
    folder = root / name
    try:
        return _versions(folder) if NAME_PATTERN.match(name) and folder.is_dir() else []
    except OSError:
        return []


def fingerprint(path: Path) -> tuple[str, float]:
    """(names, sizes and modification times of a version folder's files; the newest
    modification time): a folder whose fingerprint changed is checked again, and one
    modified moments ago may still be being copied."""
    entries, newest = [], 0.0
    try:
        for f in sorted(path.iterdir()):
            st = f.stat()
            entries.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
            newest = max(newest, st.st_mtime)
    except OSError:
        return "", 0.0
    return hashlib.sha256("|".join(entries).encode()).hexdigest(), newest


def read_manifest(name: str, version: int, path: Path) -> Manifest:
    try:
        manifest = Manifest.model_validate(json.loads((path / MANIFEST_FILE).read_text()))
    except FileNotFoundError:
        raise VersionRejected(f"{MANIFEST_FILE} missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VersionRejected(f"{MANIFEST_FILE} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise VersionRejected(f"{MANIFEST_FILE} invalid at {where}: {first['msg']}") from None
    if manifest.name != name or manifest.version != version:
        raise VersionRejected(f"manifest says {manifest.name}/{manifest.version}, "
                              f"folder is {name}/{version}")
    return manifest


def _variant_file(manifest: Manifest, variant: str | None) -> str:
    if not variant:
        return manifest.model_file
    if variant not in manifest.variants:
        raise VersionRejected(f"variant {variant!r} not in manifest "
                              f"({', '.join(manifest.variants)})")
    model_file = manifest.variants[variant].file
    if model_file not in manifest.artifacts:
        raise VersionRejected(f"variant file {model_file} is not listed in artifacts")
    return model_file


def read_artifact(path: Path, fname: str, manifest: Manifest) -> bytes:
    """One listed artifact's bytes, checked against the manifest's size and SHA-256."""
    fpath = path / fname
    if not fpath.is_file():
        raise VersionRejected(f"{fname} missing")
    expected = manifest.artifacts[fname]
    if fpath.stat().st_size != expected.bytes:
        raise VersionRejected(f"{fname} is {fpath.stat().st_size} bytes, manifest says "
                              f"{expected.bytes} (truncated or replaced)")
    data = fpath.read_bytes()
    if len(data) != expected.bytes or hashlib.sha256(data).hexdigest() != expected.sha256:
        raise VersionRejected(f"{fname} SHA-256 does not match the manifest")
    return data


def verify(name: str, version: int, path: Path, variant: str | None = None) -> VerifiedVersion:
    """Check one version folder against its manifest; VersionRejected says why it cannot
    serve. `variant`: None or `manifest` (the manifest's default file), `auto` (every
    eligible variant, for the loader to time), or a variant's name."""
    manifest = read_manifest(name, version, path)
    candidates = eligible_variants(manifest) if variant == "auto" else {}
    named = None if variant in ("auto", "manifest") else variant
    model_file = _variant_file(manifest, named)
    needed = list(dict.fromkeys([model_file, *candidates.values()]
                                + [f for f in (manifest.tokenizer_file, manifest.background_file)
                                   if f]))
    files = {fname: read_artifact(path, fname, manifest) for fname in needed}
    served_variant = named or next(
        (k for k, v in manifest.variants.items() if v.file == model_file), None)
    source = ModelSource(name, version, path, manifest, model_file, served_variant,
                         candidates if len(candidates) > 1 else {})
    return VerifiedVersion(source, files)


def scan(root: Path, only: list[str] | None = None,
         variants: Mapping[str, str] | None = None) -> list[ScanEntry]:
    """The highest version of every model (or of `only`), verified."""
    variants = variants or {}
    if not root.is_dir():
        log.error("model repository %s does not exist", root)
        return [ScanEntry(n, None, None, f"repository {root} does not exist")
                for n in (only or [])]
    out = []
    for name in only or model_names(root):
        if not NAME_PATTERN.match(name):
            out.append(ScanEntry(name, None, None, "invalid model name"))
            continue
        if not (root / name).is_dir():
            out.append(ScanEntry(name, None, None, f"no folder {name} in {root}"))
            continue
        versions = _versions(root / name)
        if not versions:
            out.append(ScanEntry(name, None, None, "no numbered version folder"))
            continue
        try:
            found = verify(name, versions[-1], root / name / str(versions[-1]),
                           variants.get(name))
        except VersionRejected as exc:
            out.append(ScanEntry(name, versions[-1], None, str(exc)))
            continue
        out.append(ScanEntry(name, versions[-1], found.source.model_file, None))
    return out
