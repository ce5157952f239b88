"""`ortserve`: the command line. `ortserve serve` wraps uvicorn with the service settings."""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
from pathlib import Path


def _serve(a: argparse.Namespace) -> int:
    import uvicorn

    from app.security import posture
    from app.settings import SettingsError, load_settings, resolved_workers

    # Flags become environment variables so that every worker process builds the same
    # settings through the app factory.
    flags = {"models_dir": a.models, "device": a.device, "host": a.host, "port": a.port,
             "log_level": a.log_level, "log_format": a.log_format,
             "default_model": a.default_model, "workers": a.workers}
    for key, value in flags.items():
        if value is not None:
            os.environ[f"ORTSERVE_{key.upper()}"] = str(value)
    try:
        settings = load_settings()
        posture.check(settings)
        posture.check_key_files(settings)
    except (SettingsError, posture.UnsafeSettings) as exc:
        print(f"ortserve: {exc}", file=sys.stderr)
        return 2
    workers = resolved_workers(settings)
    # uvicorn re-raises SIGTERM after its graceful shutdown; exit 0 then, as a drained
    # service should.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if workers > 1:
        from app.observability.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir()
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port,
                workers=workers, loop="uvloop", http="httptools",
                log_level=settings.log_level, access_log=False,
                # uvicorn annotates int, but uses it as asyncio.wait_for's timeout: any float
                timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
                ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile,
                ssl_ca_certs=settings.ssl_ca_certs,
                ssl_cert_reqs=ssl.CERT_REQUIRED if settings.ssl_ca_certs else ssl.CERT_NONE,
                limit_concurrency=None, backlog=2048)
    return 0


def _trusted_keys(entries: list[str] | None):
    """The keys of --public-key flags, else the server's (ORTSERVE_MODEL_PUBLIC_KEYS); None
    if neither names one. ValueError (SettingsError) names what cannot be read."""
    from app.contract.signing import load_public_keys
    from app.settings import load_settings

    if entries:
        try:
            return load_public_keys(entries)
        except ValueError as exc:
            raise ValueError(f"--public-key {exc}") from None
    if "ORTSERVE_MODEL_PUBLIC_KEYS" not in os.environ:
        return None
    listed = load_settings().model_public_keys  # parsed and checked as the server does
    return load_public_keys(listed) if listed else None


def _check(a: argparse.Namespace) -> int:
    """Verify the repository the way the server does, without starting it."""
    from app.contract.repository import scan

    try:
        trusted = _trusted_keys(None)
    except ValueError as exc:
        print(f"ortserve: {exc}", file=sys.stderr)
        return 2
    ok = True
    for entry in scan(Path(a.models), trusted=trusted):
        state = "ok" if entry.error is None else f"FAILED: {entry.error}"
        ok &= entry.error is None
        print(json.dumps({"model": entry.name, "version": entry.version,
                          "file": entry.model_file, "status": state}))
    return 0 if ok else 1


def _version_folder(path: str) -> tuple[str, int, Path]:
    """(model name, version, folder) of models/<name>/<version>; ValueError if the path is
    not shaped so."""
    folder = Path(path)
    name, version = folder.resolve().parent.name, folder.resolve().name
    if not (version.isascii() and version.isdigit()):
        raise ValueError(f"{path}: not a version folder (models/<name>/<version>)")
    return name, int(version), folder


def _sign(a: argparse.Namespace) -> int:
    """Check a version as the server does, then sign every file of its folder."""
    from app.contract.repository import VersionRejected, verify
    from app.contract.signing import SigningError, sign_folder, signing_key

    try:
        name, version, folder = _version_folder(a.folder)
        key = signing_key(a.key)
        if key is None:
            raise SigningError("no private key: give --key or set ORTSERVE_SIGN_KEY")
        verify(name, version, folder, every_artifact=True)  # never sign a broken version
        sig = sign_folder(folder, key)
    except VersionRejected as exc:
        print(f"FAILED: {a.folder}: not signed: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # SigningError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"signed: {a.folder}: {sig}")
    return 0


def _verify(a: argparse.Namespace) -> int:
    """Verify one version with a public key, as the server does with
    ORTSERVE_MODEL_PUBLIC_KEYS: exit 0 and `ok`, or 1 and the reason the server gives."""
    from app.contract.repository import VersionRejected, verify

    try:
        name, version, folder = _version_folder(a.folder)
        trusted = _trusted_keys(a.public_key)
        if trusted is None:
            raise ValueError("no public key: give --public-key or set "
                             "ORTSERVE_MODEL_PUBLIC_KEYS")
        verify(name, version, folder, trusted=trusted, every_artifact=True)
    except VersionRejected as exc:
        print(f"FAILED: {a.folder}: {exc}")
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ok: {a.folder}: {name} version {version}, signed by a trusted key, every file "
          "matches")
    return 0


def _import(a: argparse.Namespace) -> int:
    """Check a graph and publish it as the model's next version; exit 2 when it cannot
    serve as declared (one line on stderr saying why)."""
    from app.contract.importer import GraphRejected, ImportRequest, import_model
    from app.contract.signing import SigningError, signing_key

    try:
        sign_key = signing_key(a.sign_key)
    except SigningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = (lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None)  # noqa: E731
    req = ImportRequest(model=Path(a.model), name=a.name, kind=a.kind,
                        models_dir=Path(a.models), labels=split(a.labels),
                        tokenizer=Path(a.tokenizer) if a.tokenizer else None,
                        features=split(a.features), max_length=a.max_length,
                        output=a.output, softmax={"auto": None, "yes": True,
                                                  "no": False}[a.softmax],
                        background=Path(a.background) if a.background else None,
                        sign_key=sign_key)
    if not req.model.is_file():
        print(f"error: {req.model}: no such file", file=sys.stderr)
        return 2
    try:
        version, folder = import_model(req)
    except GraphRejected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": a.name, "version": version, "folder": str(folder),
                      "test_metrics": None, "note": "imported: no test metrics"}))
    return 0


def _keygen(a: argparse.Namespace) -> int:
    """A new random API key (256 bits, URL-safe), for ORTSERVE_API_KEYS or a key file."""
    import secrets

    print(secrets.token_urlsafe(32))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ortserve", description="ONNX model server.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP service (uvicorn with uvloop + httptools)",
                       description="Every option also has an ORTSERVE_* environment "
                                   "variable; flags win. See README for all settings.")
    s.add_argument("--models", help="model repository root (ORTSERVE_MODELS_DIR)")
    s.add_argument("--host", help="bind address (ORTSERVE_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (ORTSERVE_PORT, default 8000)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="execution provider choice (ORTSERVE_DEVICE, default auto)")
    s.add_argument("--default-model", help="model for POST /predict without a model")
    s.add_argument("--workers", type=int,
                   help="worker processes (ORTSERVE_WORKERS; default 1; 0 = one per CPU core); "
                        "metrics use prometheus-client multiprocess mode when above 1")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    s.add_argument("--log-format", choices=("json", "text"))
    s.set_defaults(func=_serve)
    c = sub.add_parser("check", help="verify manifests and hashes of a model repository")
    c.add_argument("--models", default=os.environ.get("ORTSERVE_MODELS_DIR", "models"))
    c.set_defaults(func=_check)
    i = sub.add_parser("import", help="check an ONNX graph and publish it as a model's next "
                                       "version (no trainer needed)")
    i.add_argument("model", help="the .onnx file")
    i.add_argument("--name", required=True, help="model name ([a-z0-9][a-z0-9_-]*)")
    i.add_argument("--kind", required=True, choices=("text-classification",
                                                     "tabular-classification",
                                                     "tabular-regression"))
    i.add_argument("--labels", help="class names in output order, comma-separated")
    i.add_argument("--tokenizer", help="tokenizer.json (text-classification)")
    i.add_argument("--features", help="feature names in input order, comma-separated "
                                      "(default f0..fN-1 when the graph fixes N)")
    i.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    i.add_argument("--output", help="graph output to serve (default: the float one)")
    i.add_argument("--softmax", choices=("auto", "yes", "no"), default="auto",
                   help="apply softmax to the output (auto: when it is not probabilities)")
    i.add_argument("--background", help="feature models: a CSV (header: the feature names) "
                                        "of 1 to 100 training rows that explanations take "
                                        "unknown features from")
    i.add_argument("--models", default=os.environ.get("ORTSERVE_MODELS_DIR", "models"),
                   help="model repository root (ORTSERVE_MODELS_DIR, default models)")
    i.add_argument("--sign-key", help="sign the new version with this EC private key (PEM; "
                                      "default ORTSERVE_SIGN_KEY; an encrypted key's "
                                      "password in ORTSERVE_SIGN_KEY_PASSWORD)")
    i.set_defaults(func=_import)
    g = sub.add_parser("sign", help="check a version folder, then sign every file of it "
                                    "(OpenSSF model-signing format, model.sig)")
    g.add_argument("folder", help="the version folder, models/<name>/<version>")
    g.add_argument("--key", help="EC private key (PEM; default ORTSERVE_SIGN_KEY; an "
                                 "encrypted key's password in ORTSERVE_SIGN_KEY_PASSWORD)")
    g.set_defaults(func=_sign)
    v = sub.add_parser("verify", help="verify a version folder's signature and files as the "
                                      "server does (exit 0 ok, 1 refused)")
    v.add_argument("folder", help="the version folder, models/<name>/<version>")
    v.add_argument("--public-key", action="append",
                   help="trusted public key (PEM file); repeat for several (default "
                        "ORTSERVE_MODEL_PUBLIC_KEYS)")
    v.set_defaults(func=_verify)
    k = sub.add_parser("keygen", help="print a new random API key (for ORTSERVE_API_KEYS, "
                                      "ORTSERVE_ADMIN_KEYS or a key file)")
    k.set_defaults(func=_keygen)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
