"""Scans `models/<name>/<version>/`, validates manifests and artifact hashes, picks versions.

Only ONNX and tokenizer JSON files listed in a manifest are ever loaded, and only after
their SHA-256 matches; nothing here unpickles or executes model files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from app.contract.manifest import MANIFEST_FILE, NAME_PATTERN, Manifest, eligible_variants

log = logging.getLogger("ortserve.repository")


@dataclass
class ModelSource:
    """One model as found on disk: a verified manifest, or the reason it cannot load."""

    name: str
    version: int | None
    path: Path | None
    manifest: Manifest | None = None
    error: str | None = None
    model_file: str | None = None
    variant: str | None = None
    # variant name -> file of every variant verified and worth timing at load (auto); the
    # loader serves the fastest and sets model_file and variant to it
    candidates: dict[str, str] = field(default_factory=dict)
    variant_rates: dict[str, float] = field(default_factory=dict)  # inputs/s, when timed
    variant_reason: str | None = None
    # The verified bytes of each artifact, so what is parsed is exactly what was hashed
    # (no re-read between the check and the load); released once the model is loaded.
    verified: dict[str, bytes] | None = None


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


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


def verify(name: str, version: int, path: Path, variant: str | None = None) -> ModelSource:
    """Check one version folder against its manifest. `variant`: None or `manifest` (the
    manifest's default file), `auto` (every eligible variant, for the loader to time), or a
    variant's name."""
    src = ModelSource(name, version, path)
    try:
        raw = json.loads((path / MANIFEST_FILE).read_text())
        manifest = Manifest.model_validate(raw)
    except FileNotFoundError:
        src.error = f"{MANIFEST_FILE} missing"
        return src
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        src.error = f"{MANIFEST_FILE} is not valid JSON: {exc}"
        return src
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        src.error = f"{MANIFEST_FILE} invalid at {where}: {first['msg']}"
        return src
    if manifest.name != name or manifest.version != version:
        src.error = (f"manifest says {manifest.name}/{manifest.version}, "
                     f"folder is {name}/{version}")
        return src
    model_file = manifest.model_file
    candidates = eligible_variants(manifest) if variant == "auto" else {}
    if variant in ("auto", "manifest"):
        variant = None
    if variant:
        if variant not in manifest.variants:
            src.error = f"variant {variant!r} not in manifest ({', '.join(manifest.variants)})"
            return src
        model_file = manifest.variants[variant].file
        if model_file not in manifest.artifacts:
            src.error = f"variant file {model_file} is not listed in artifacts"
            return src
    needed = list(dict.fromkeys([model_file, *candidates.values()]
                                + [f for f in (manifest.tokenizer_file, manifest.background_file)
                                   if f]))
    verified = {}
    for fname in needed:
        fpath = path / fname
        if not fpath.is_file():
            src.error = f"{fname} missing"
            return src
        expected = manifest.artifacts[fname]
        if fpath.stat().st_size != expected.bytes:
            src.error = (f"{fname} is {fpath.stat().st_size} bytes, manifest says "
                         f"{expected.bytes} (truncated or replaced)")
            return src
        data = fpath.read_bytes()
        if len(data) != expected.bytes or hashlib.sha256(data).hexdigest() != expected.sha256:
            src.error = f"{fname} SHA-256 does not match the manifest"
            return src
        verified[fname] = data
    src.verified = verified
    src.manifest = manifest
    src.model_file = model_file
    src.variant = variant or next(
        (k for k, v in manifest.variants.items() if v.file == model_file), None)
    src.candidates = candidates if len(candidates) > 1 else {}
    return src


def scan(root: Path, only: list[str] | None = None, pins: dict[str, int] | None = None,
         variants: dict[str, str] | None = None) -> list[ModelSource]:
    """Every model to serve: the pinned or highest version of each (or of `only`)."""
    pins, variants = pins or {}, variants or {}
    if not root.is_dir():
        log.error("model repository %s does not exist", root)
        return [ModelSource(n, pins.get(n), None, error=f"repository {root} does not exist")
                for n in (only or [])]
    found = {p.name: p for p in sorted(root.iterdir())
             if p.is_dir() and NAME_PATTERN.match(p.name)}
    names = only or sorted(found)
    out = []
    for name in names:
        if not NAME_PATTERN.match(name):
            out.append(ModelSource(name, None, None, error="invalid model name"))
            continue
        if name not in found:
            out.append(ModelSource(name, pins.get(name), None,
                                   error=f"no folder {name} in {root}"))
            continue
        versions = _versions(found[name])
        version = pins.get(name) or (versions[-1] if versions else None)
        if version is None:
            out.append(ModelSource(name, None, None, error="no numbered version folder"))
            continue
        if version not in versions:
            out.append(ModelSource(name, version, None,
                                   error=f"pinned version {version} not found "
                                         f"(have {versions})"))
            continue
        out.append(verify(name, version, found[name] / str(version), variants.get(name)))
    return out
