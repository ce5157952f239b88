"""Publishes a version into the repository `models/<name>/<version>/` (the writer side of
the contract that `app/contract/repository.py` reads): the trainer and `ortserve import`
both use it.

A version is assembled in a hidden temporary folder beside its final place and renamed
into place only once every artifact and the manifest are written (and the signature, when
a signing key is given), so an interrupted run leaves no half-written version, and a
server polling the folder never sees one, nor an unsigned one when it requires
signatures. Existing versions are never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from app.contract.manifest import MANIFEST_FILE, NAME_PATTERN, Manifest, describe_artifact
from app.contract.signing import SigningKey, sign_folder


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


class VersionWriter:
    """Collects artifacts in a staging folder; `commit` publishes them as the next version,
    signed with `sign_key` (a PEM private key) when one is given."""

    def __init__(self, staging: Path, model_dir: Path, sign_key: SigningKey | None = None
                 ) -> None:
        self.dir = staging
        self._model_dir = model_dir
        self._sign_key = sign_key

    def commit(self, manifest: dict) -> tuple[int, Path]:
        artifacts = {}
        for f in sorted(self.dir.iterdir()):
            if f.name != MANIFEST_FILE:
                artifacts[f.name] = describe_artifact(f).model_dump()
        while True:
            version = (existing_versions(self._model_dir) or [0])[-1] + 1
            manifest = {**manifest, "version": version, "artifacts": artifacts}
            Manifest.model_validate(manifest)  # never publish a manifest the server rejects
            (self.dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            target = self._model_dir / str(version)
            try:
                os.mkdir(target)  # claims the number; fails if another run took it
            except FileExistsError:
                continue
            if self._sign_key is not None:  # every file is final: sign them all
                try:
                    sign_folder(self.dir, self._sign_key)
                except BaseException:
                    os.rmdir(target)  # give the number back
                    raise
            os.chmod(self.dir, 0o755)  # mkdtemp creates it private
            os.replace(self.dir, target)
            return version, target


@contextmanager
def new_version(output: Path, name: str, sign_key: SigningKey | None = None):
    """Yield a VersionWriter; on any exception the staging folder is removed."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must match {NAME_PATTERN.pattern}")
    model_dir = output / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        yield VersionWriter(staging, model_dir, sign_key)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
