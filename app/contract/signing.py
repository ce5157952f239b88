"""Signed versions in the OpenSSF model-signing format (PyPI `model-signing`, the
elliptic-curve key-pair method, which works offline).

A version folder is signed as a whole: `model.sig` (the format's default name) is a
Sigstore bundle whose DSSE envelope holds an in-toto statement listing the SHA-256 of every
other file of the folder, `model.json` included. So a changed file, a manifest rewritten
with consistent hashes, an extra file and a missing file all show as files that do not
match the signature. The format's own tool verifies the same folders:
`model_signing verify key --signature model.sig --public_key pub.pem models/<name>/<version>`.

`repository.verify` compares the signed digests with the bytes it read and hashed itself,
not with a second reading of the folder: what loads is what was signed. That needs the
signed statement, which the library's public `verify` does not return, so this module
uses its elliptic-curve verifier and bundle reader (internal modules): the version is
pinned exactly in pyproject.toml, and tests/test_signing.py signs and verifies with it.

model-signing is imported lazily: it brings sigstore and takes about a second to import,
which only a server with trusted keys, or a signing command, pays.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.contract.manifest import SIGNATURE_FILE

# The statement lists one digest per file (about 150 bytes each); a version has a handful
# of files, so 1 MiB is far more than any signature needs.
MAX_SIGNATURE_BYTES = 1 << 20
# the curves the format supports (model_signing._signing.sign_ec_key)
CURVES = ("secp256r1", "secp384r1", "secp521r1")
PEM_BEGIN = "-----BEGIN"
# where the signing tools (not the server: it never holds a private key) find their key
SIGN_KEY_ENV, SIGN_PASSWORD_ENV = "ORTSERVE_SIGN_KEY", "ORTSERVE_SIGN_KEY_PASSWORD"


class SignatureRejected(ValueError):
    """A signature that is missing, untrusted or does not match; the message says which."""


class SigningError(ValueError):
    """A folder that cannot be signed, or a key that cannot sign; the message says why."""


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys whose signatures a version may carry (ORTSERVE_MODEL_PUBLIC_KEYS)."""

    keys: tuple[ec.EllipticCurvePublicKey, ...]

    def by_hint(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """Key identifier -> key, the identifier being what a signature names its key by
        (SHA-256 of the key's PEM)."""
        return {key_hint(k): k for k in self.keys}


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _pem_blocks(text: str) -> list[bytes]:
    blocks, current = [], []
    for line in text.strip().splitlines():
        line = line.strip()
        if line.startswith(PEM_BEGIN):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith("-----END"):
                blocks.append("\n".join(current).encode() + b"\n")
                current = []
    return blocks


def load_public_keys(entries: Sequence[str]) -> TrustedKeys:
    """Each entry is PEM text or the path of a PEM file, holding one or more public keys
    (EC P-256, P-384 or P-521). ValueError names the entry (its path, or its position for
    PEM text, never the text) and why."""
    keys: list[ec.EllipticCurvePublicKey] = []
    for i, entry in enumerate(entries, 1):
        where = f"entry {i} (PEM text)"
        if PEM_BEGIN in entry:
            text = entry
        else:
            where = entry
            try:
                text = Path(entry).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{where}: cannot read it ({exc})") from None
        blocks = _pem_blocks(text)
        if not blocks:
            raise ValueError(f"{where}: no PEM public key in it")
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block)
            except ValueError as exc:
                raise ValueError(f"{where}: not a PEM public key ({exc})") from None
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
                raise ValueError(f"{where}: model signatures use elliptic-curve keys "
                                 f"({', '.join(CURVES)}); this one is {_describe(key)}")
            keys.append(key)
    return TrustedKeys(tuple(keys))


def _describe(key: object) -> str:
    curve = getattr(key, "curve", None)
    return curve.name if curve is not None else type(key).__name__.lstrip("_")


@dataclass(frozen=True)
class SigningKey:
    """A PEM private key file to sign versions with, and its password if it is encrypted."""

    path: Path
    password: str | None = None

    def check(self) -> SigningKey:
        """Self, or SigningError when it cannot sign models (checked before model-signing
        reads it, and before a long job that ends by signing)."""
        try:
            key = serialization.load_pem_private_key(
                self.path.read_bytes(), self.password.encode() if self.password else None)
        except (OSError, ValueError, TypeError) as exc:
            raise SigningError(f"{self.path}: cannot read the private key ({exc}; an "
                               f"encrypted key needs {SIGN_PASSWORD_ENV})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in CURVES:
            raise SigningError(f"{self.path}: model signatures use elliptic-curve keys "
                               f"({', '.join(CURVES)}); this one is {_describe(key)}")
        return self


def signing_key(flag: str | Path | None) -> SigningKey | None:
    """The key the trainer and `ortserve import` sign with: their --sign-key flag, else
    ORTSERVE_SIGN_KEY; none: they publish unsigned. Checked at once."""
    path = flag or os.environ.get(SIGN_KEY_ENV)
    if not path:
        return None
    return SigningKey(Path(path), os.environ.get(SIGN_PASSWORD_ENV) or None).check()


def sign_folder(folder: Path, key: SigningKey) -> Path:
    """Sign every file of `folder` but the signature itself; write `model.sig` (replaced
    in one rename, so a reader sees the old signature or the new one). Symbolic links and
    anything but regular files and folders are refused."""
    import model_signing

    key.check()
    hashing = model_signing.hashing.Config().use_file_serialization(
        hashing_algorithm="sha256", allow_symlinks=False,
    ).set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    # the folder is hashed before this file is written, so it is not among the signed
    tmp = folder / f".{SIGNATURE_FILE}.{secrets.token_hex(4)}.tmp"
    try:
        model_signing.signing.Config().use_elliptic_key_signer(
            private_key=key.path, password=key.password,
        ).set_hashing_config(hashing).sign(folder, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / SIGNATURE_FILE)
    except ValueError as exc:  # model-signing's refusals (a symlink, a special file)
        raise SigningError(f"{folder}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return folder / SIGNATURE_FILE


@dataclass(frozen=True)
class SignedFiles:
    """File name -> SHA-256 (hex) of every file a trusted key signed."""

    digests: Mapping[str, str]

    def check_names(self, present: Iterable[str]) -> None:
        """The folder holds exactly the signed files (besides the signature)."""
        names = set(present) - {SIGNATURE_FILE}
        extra, missing = sorted(names - set(self.digests)), sorted(set(self.digests) - names)
        parts = ([f"extra: {', '.join(extra)}"] if extra else []) + (
            [f"missing: {', '.join(missing)}"] if missing else [])
        if parts:
            raise SignatureRejected(f"files do not match ({'; '.join(parts)})")

    def check(self, name: str, sha256: str) -> None:
        if self.digests.get(name) != sha256:
            raise SignatureRejected(f"files do not match (changed: {name})")


class _Text:
    """The one method the format's bundle reader calls on its path argument: the
    signature's bytes were read (bounded, no link followed) by the repository."""

    def __init__(self, text: str) -> None:
        self._text = text

    def read_text(self, encoding: str = "utf-8") -> str:
        return self._text


def signed_files(signature: bytes, trusted: TrustedKeys) -> SignedFiles:
    """The files and digests a signature lists, once it verifies with a trusted key;
    SignatureRejected says why not."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    class KeyVerifier(sign_ec_key.Verifier):
        def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
            # the library's verifier reads its key from a file; ours are loaded already
            self._public_key = key

    try:
        bundle: Any = sign_sigstore_pb.Signature.read(_Text(signature.decode()))  # type: ignore[arg-type]
        hint = bundle.bundle.verification_material.public_key.hint
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unreadable file
        raise SignatureRejected(f"unreadable: not a model-signing bundle "
                                f"({type(exc).__name__})") from None
    keys = trusted.by_hint()
    if hint and hint not in keys:
        raise SignatureRejected(f"not made by a trusted key (it names key {hint[:16]}, "
                                "which ORTSERVE_MODEL_PUBLIC_KEYS does not list)")
    candidates = [keys[hint]] if hint else list(trusted.keys)
    for key in candidates:
        try:
            signed = KeyVerifier(key).verify(bundle)
            break
        except Exception:  # noqa: BLE001 - a bad signature, or a payload it does not cover
            continue
    else:
        raise SignatureRejected("does not verify with its key: the signature or the list "
                                "of files it signs was altered" if hint else
                                "not made by a trusted key")
    params = signed.serialization_type
    items = {rd.identifier: rd.digest for rd in signed.resource_descriptors()}
    if params.get("method") != "files" or any(d.algorithm != "sha256" for d in items.values()):
        raise SignatureRejected(f"signs {params.get('method')} with "
                                f"{params.get('hash_type')}; ortserve checks SHA-256 "
                                "digests of whole files (sign with `ortserve sign`)")
    return SignedFiles({name: d.digest_hex for name, d in items.items()})
