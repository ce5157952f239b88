"""`ortserve`: the command line. `ortserve serve` wraps uvicorn with the service settings."""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings


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
    threading.Thread(target=_announce_when_ready, args=(settings,), daemon=True).start()
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


def _announce_when_ready(settings: Settings, timeout_s: float = 900.0) -> None:
    """Once /health/ready answers 200, print where everything is (once, in the parent)."""
    import time
    import urllib.request

    scheme = "https" if settings.ssl_certfile else "http"
    wildcard = settings.host in ("0.0.0.0", "::", "")
    local = "127.0.0.1" if wildcard else settings.host
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # our own, on loopback
    probe = f"{scheme}://{local}:{settings.port}/health/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(probe, timeout=2, context=context) as r:  # noqa: S310
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        return
    base = f"{scheme}://{'localhost' if wildcard else settings.host}:{settings.port}"
    lines = [f"ortserve is ready on {scheme}://{settings.host}:{settings.port}",
             f"  API         {base}/predict, {base}/models, {base}/v2 (Open Inference Protocol)"]
    if settings.grpc_port is not None:
        lines.append(f"  gRPC        {local}:{settings.grpc_port} (Open Inference Protocol)")
    lines.append(f"  docs        {base}/docs" if settings.docs
                 else "  docs        off (ORTSERVE_DOCS=false)")
    if settings.ui:
        lines.append(f"  playground  {base}/ui/")
    lines.append(f"  metrics     {base}/metrics"
                 + (" (needs a key)" if settings.metrics_require_key else ""))
    lines.append("  health      /health/live, /health/ready")
    print("\n".join(lines), flush=True)


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


def _setting(name: str) -> str:
    """"(ORTSERVE_NAME, default value)" for a flag's help, from Settings itself."""
    from app.settings import Settings

    field = Settings.model_fields[name]
    default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    shown = "unset" if default is None else (",".join(map(str, default))
                                             if isinstance(default, list) else default)
    return f"(ORTSERVE_{name.upper()}, default {shown})"


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve", help="run the service: HTTP (and gRPC with ORTSERVE_GRPC_PORT)",
        description="Serve every model of the repository. Each flag sets the setting named "
                    "beside it; every other setting is an ORTSERVE_* environment variable "
                    "(the README's Configuration table lists them all). Once ready it "
                    "prints where the API, the docs, the playground and the metrics are.",
        epilog="Without API keys (ORTSERVE_API_KEYS or ORTSERVE_API_KEYS_FILE) the server "
               "starts on a loopback address only, unless ORTSERVE_ALLOW_UNAUTHENTICATED=true "
               "(SECURITY.md). `ortserve keygen` prints a new key.")
    s.add_argument("--models", help=f"model repository root {_setting('models_dir')}")
    s.add_argument("--host", help=f"bind address {_setting('host')}")
    s.add_argument("--port", type=int, help=f"HTTP port {_setting('port')}")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help=f"execution provider: auto takes CUDA when a GPU can run the model "
                        f"{_setting('device')}")
    s.add_argument("--default-model", help=f"model for POST /predict without one "
                                           f"{_setting('default_model')}: the only model, "
                                           "else sentiment")
    s.add_argument("--workers", type=int,
                   help=f"worker processes; 0 = one per CPU core; metrics are summed over "
                        f"them {_setting('workers')}")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help=f"the service's log level {_setting('log_level')}")
    s.add_argument("--log-format", choices=("json", "text"),
                   help=f"one JSON object per line, or text {_setting('log_format')}")
    s.set_defaults(func=_serve)


def _repository_parsers(sub: argparse._SubParsersAction) -> None:
    models = os.environ.get("ORTSERVE_MODELS_DIR", "models")
    c = sub.add_parser("check", help="verify every model's newest version as the server would",
                       description="Manifests, hashes and (with ORTSERVE_MODEL_PUBLIC_KEYS) "
                                   "signatures; one JSON line per model; exit 1 when one "
                                   "fails.")
    c.add_argument("--models", default=models,
                   help="model repository root (ORTSERVE_MODELS_DIR, default models)")
    c.set_defaults(func=_check)
    i = sub.add_parser("import", help="check an ONNX graph and publish it as a model's next "
                                       "version (no trainer needed)",
                       description="The graph is checked the way the server will use it, "
                                   "then written as the model's next version with a "
                                   "manifest; exit 2 with the reason when it cannot serve.")
    i.add_argument("model", help="the .onnx file")
    i.add_argument("--name", required=True, help="model name ([a-z0-9][a-z0-9_-]*)")
    i.add_argument("--kind", required=True, choices=("text-classification",
                                                     "tabular-classification",
                                                     "tabular-regression"),
                   help="what the graph does: texts to classes, rows to classes, or rows to "
                        "a value")
    i.add_argument("--labels", help="class names in output order, comma-separated")
    i.add_argument("--tokenizer", help="tokenizer.json (text-classification)")
    i.add_argument("--features", help="feature names in input order, comma-separated "
                                      "(default f0..fN-1 when the graph fixes N)")
    i.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    i.add_argument("--output", help="graph output to serve (default: the float one)")
    i.add_argument("--softmax", choices=("auto", "yes", "no"), default="auto",
                   help="apply softmax to the output (default auto: when it is not "
                        "probabilities)")
    i.add_argument("--background", help="feature models: a CSV (header: the feature names) "
                                        "of 1 to 100 training rows that explanations take "
                                        "unknown features from (default: none)")
    i.add_argument("--models", default=models,
                   help="model repository root (ORTSERVE_MODELS_DIR, default models)")
    i.add_argument("--sign-key", help="sign the new version with this EC private key (PEM; "
                                      "default ORTSERVE_SIGN_KEY; an encrypted key's "
                                      "password in ORTSERVE_SIGN_KEY_PASSWORD)")
    i.set_defaults(func=_import)


def _signing_parsers(sub: argparse._SubParsersAction) -> None:
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
                                      "ORTSERVE_ADMIN_KEYS, ORTSERVE_METRICS_KEYS or a key "
                                      "file)")
    k.set_defaults(func=_keygen)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ortserve", description="ortserve: an ONNX model server (predictions, the Open "
                                     "Inference Protocol over HTTP and gRPC, explanations, "
                                     "rollouts) and its model repository tools.",
        epilog="`ortserve <command> --help` explains a command. Settings: ORTSERVE_* "
               "environment variables (README, Configuration).")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    _serve_parser(sub)
    _repository_parsers(sub)
    _signing_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    result: int = a.func(a)
    return result


if __name__ == "__main__":
    sys.exit(main())
