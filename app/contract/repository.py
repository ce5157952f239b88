"""Scans `models/<name>/<version>/`, validates manifests and artifact hashes, picks versions.

Only ONNX and tokenizer JSON files listed in a manifest are ever loaded, and only after
their SHA-256 matches; nothing here unpickles or executes model files. Every file is read
here, through `VersionFolder`: a regular file inside the version folder (a symbolic link
is refused, not followed), its size checked before it is read whole. ONNX graphs that
keep tensors in other files (external data) are refused. With trusted keys
(ORTSERVE_MODEL_PUBLIC_KEYS), a version must also carry a signature by one of them over
every file of its folder (`signing.py`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from app.contract.graphscan import NotAGraph, external_tensors
from app.contract.manifest import (
    MANIFEST_FILE,
    NAME_PATTERN,
    SIGNATURE_FILE,
    Artifact,
    Manifest,
    eligible_variants,
)
from app.contract.signing import (
    MAX_SIGNATURE_BYTES,
    SignatureRejected,
    SignedFiles,
    TrustedKeys,
    signed_files,
)

log = logging.getLogger("ortserve.repository")

# A manifest is a few KB (the sentiment model's: 5.5 KB); one past this is refused unread.
MAX_MANIFEST_BYTES = 1 << 20
_HASH_BLOCK = 1 << 20


class VersionRejected(ValueError):
    """A version folder that cannot serve; the message says why. `kind` labels the failure
    metric: `verify` (manifest, files, hashes) or `signature`."""

    def __init__(self, message: str, kind: str = "verify") -> None:
        super().__init__(message)
        self.kind = kind


class VersionFolder:
    """One version folder, opened once: every file is opened relative to it, never through
    a symbolic link, and must be a regular file."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise VersionRejected(f"cannot open the version folder: {exc.strerror}") from None

    def __enter__(self) -> VersionFolder:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self._fd)

    def names(self) -> list[str]:
        return sorted(os.listdir(self._fd))

    @contextmanager
    def open(self, name: str) -> Iterator[tuple[BinaryIO, int]]:
        """The file and its size. O_NONBLOCK: opening a FIFO must not wait for a writer."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._fd)
        except FileNotFoundError:
            raise VersionRejected(f"{name} missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise VersionRejected(f"{name} is a symbolic link: files must be regular files "
                                      "inside the version folder") from None
            raise VersionRejected(f"{name} cannot be opened: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise VersionRejected(f"{name} is not a regular file")
            yield fh, st.st_size

    def read(self, name: str, limit: int) -> bytes:
        """A small file whole (a manifest, a signature), refused unread past `limit`."""
        with self.open(name) as (fh, size):
            data = fh.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise VersionRejected(f"{name} is {max(size, len(data))} bytes, more than the "
                                  f"{limit} such a file may have")
        return data

    def sha256(self, name: str) -> str:
        """SHA-256 of a file read in blocks, never whole."""
        digest = hashlib.sha256()
        with self.open(name) as (fh, _):
            for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()


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
            st = f.lstat()  # a link is the folder's entry, never its target
            entries.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
            newest = max(newest, st.st_mtime)
    except OSError:
        return "", 0.0
    return hashlib.sha256("|".join(entries).encode()).hexdigest(), newest


def read_manifest(name: str, version: int, data: bytes) -> Manifest:
    """The manifest of version `name`/`version` from its bytes."""
    try:
        manifest = Manifest.model_validate(json.loads(data))
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


def _signature(exc: SignatureRejected | str) -> VersionRejected:
    return VersionRejected(f"signature: {exc}", kind="signature")


def read_artifact(folder: VersionFolder, fname: str, expected: Artifact,
                  signed: SignedFiles | None = None) -> bytes:
    """One listed artifact's bytes, checked against the manifest's size (before it is
    read) and SHA-256. In a signed version the manifest is the signed one, so a mismatch
    is a file changed after signing."""
    with folder.open(fname) as (fh, size):
        data = fh.read(expected.bytes + 1) if size == expected.bytes else None
    if data is not None and len(data) == expected.bytes \
            and hashlib.sha256(data).hexdigest() == expected.sha256:
        return data
    if signed is not None:
        raise _signature(f"files do not match (changed: {fname})")
    if data is None:
        raise VersionRejected(f"{fname} is {size} bytes, manifest says {expected.bytes} "
                              "(truncated or replaced)")
    raise VersionRejected(f"{fname} SHA-256 does not match the manifest")


def _check_signature(folder: VersionFolder, manifest: bytes,
                     trusted: TrustedKeys) -> SignedFiles:
    """The signed files, once the signature verifies with a trusted key, the folder holds
    exactly the files it signs and the manifest is the signed one."""
    names = folder.names()
    if SIGNATURE_FILE not in names:
        raise _signature(f"missing ({SIGNATURE_FILE}; ORTSERVE_MODEL_PUBLIC_KEYS requires "
                         "every version to be signed by one of its keys)")
    try:
        signed = signed_files(folder.read(SIGNATURE_FILE, MAX_SIGNATURE_BYTES), trusted)
        signed.check_names(names)
        signed.check(MANIFEST_FILE, hashlib.sha256(manifest).hexdigest())
    except SignatureRejected as exc:
        raise _signature(exc) from None
    return signed


def _signed_as(signed: SignedFiles, fname: str, sha256: str) -> None:
    try:
        signed.check(fname, sha256)
    except SignatureRejected as exc:
        raise _signature(exc) from None


def _needed(manifest: Manifest, graphs: list[str], every_artifact: bool
            ) -> tuple[list[str], list[str]]:
    """(the graphs to check, every file to read): the served graphs, the tokenizer and the
    background; with `every_artifact`, every variant and every listed file."""
    if every_artifact:
        graphs += [v.file for v in manifest.variants.values() if v.file in manifest.artifacts]
    graphs = list(dict.fromkeys(graphs))
    others = [f for f in (manifest.tokenizer_file, manifest.background_file) if f]
    return graphs, list(dict.fromkeys(
        graphs + others + (list(manifest.artifacts) if every_artifact else [])))


def _check_graph(fname: str, data: bytes) -> None:
    try:
        external = external_tensors(data)
    except NotAGraph as exc:
        raise VersionRejected(f"{fname} is not an ONNX graph ({exc})") from None
    if external:
        raise VersionRejected(
            f"{fname} keeps tensors in other files (external data: "
            f"{', '.join(external[:3])}{', ...' if len(external) > 3 else ''}); the "
            "repository serves self-contained graphs only (save it with the weights inside, "
            "e.g. onnx.save(model, path, save_as_external_data=False))")


def verify(name: str, version: int, path: Path, variant: str | None = None,
           trusted: TrustedKeys | None = None, every_artifact: bool = False,
           accuracy_budget: float = 0.0) -> VerifiedVersion:
    """Check one version folder against its manifest; VersionRejected says why it cannot
    serve. `variant`: None or `manifest` (the manifest's default file), `auto` (every
    eligible variant, for the loader to time), or a variant's name. With `trusted` keys
    the version must carry a signature by one of them that covers every file of the
    folder exactly, and each file read is compared with it. `every_artifact`: read and
    check every listed file, not only those the variant needs (before signing).
    `accuracy_budget`: with `auto`, how far below the most accurate variant a distilled
    student may be and still be timed (`eligible_variants`)."""
    with VersionFolder(path) as folder:
        manifest_bytes = folder.read(MANIFEST_FILE, MAX_MANIFEST_BYTES)
        signed = _check_signature(folder, manifest_bytes, trusted) if trusted else None
        manifest = read_manifest(name, version, manifest_bytes)
        candidates = (eligible_variants(manifest, accuracy_budget) if variant == "auto"
                      else {})
        named = None if variant in ("auto", "manifest") else variant
        model_file = _variant_file(manifest, named)
        graphs, needed = _needed(manifest, [model_file, *candidates.values()], every_artifact)
        if signed is not None:  # the signed manifest lists the signed digests
            for fname, artifact in manifest.artifacts.items():
                if fname in signed.digests:  # else not in the folder either: read says so
                    _signed_as(signed, fname, artifact.sha256)
        files = {fname: read_artifact(folder, fname, manifest.artifacts[fname], signed)
                 for fname in needed}
        if signed is not None:  # the files not loaded are checked too
            for fname in sorted(set(signed.digests) - set(files) - {MANIFEST_FILE}):
                _signed_as(signed, fname, folder.sha256(fname))
    for fname in graphs:
        _check_graph(fname, files[fname])
    served_variant = named or next(
        (k for k, v in manifest.variants.items() if v.file == model_file), None)
    source = ModelSource(name, version, path, manifest, model_file, served_variant,
                         candidates if len(candidates) > 1 else {})
    return VerifiedVersion(source, files)


def scan(root: Path, only: list[str] | None = None,
         variants: Mapping[str, str] | None = None,
         trusted: TrustedKeys | None = None) -> list[ScanEntry]:
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
                           variants.get(name), trusted)
        except VersionRejected as exc:
            out.append(ScanEntry(name, versions[-1], None, str(exc)))
            continue
        out.append(ScanEntry(name, versions[-1], found.source.model_file, None))
    return out
