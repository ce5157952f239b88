"""Every knob of the service, in one place: environment variables prefixed `ORTSERVE_`.

Nested values (lists, dicts) are given as JSON, e.g.
`ORTSERVE_MODEL_VERSIONS='{"sentiment": 2}'`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class BatchingOverride(BaseModel):
    """Per-model batching values that replace the manifest's and the global defaults."""

    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_delay_ms: float | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORTSERVE_", env_file=None,
                                      protected_namespaces=())

    # Model repository
    models_dir: Path = Field(Path("models"), description="Model repository root.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models to load (comma-separated); empty loads "
                                          "every model found.")
    model_versions: dict[str, int] = Field(
        default_factory=dict, description="Pin one version per model (JSON), e.g. "
                                          "{\"sentiment\": 2}: short for the version policy "
                                          "[2].")
    version_policy: dict[str, str | list[int]] = Field(
        default_factory=dict,
        description="Versions served per model (JSON), as in Triton: \"latest\", "
                    "\"latest:N\" (the N highest), \"all\", or a list of versions, e.g. "
                    "{\"sentiment\": \"latest:2\"}. Requests without a version go to the "
                    "highest served one.")
    default_version_policy: str = Field(
        "latest", pattern=r"^(latest(:[1-9][0-9]*)?|all)$",
        description="Version policy of models that version_policy does not name.")
    repository_poll_s: float = Field(
        0.0, ge=0, description="Re-scan the repository this often (seconds) and follow it: "
                               "load verified new versions, unload removed ones. 0: off "
                               "(the repository API still loads and unloads).")
    memory_budget_mb: int = Field(
        0, ge=0, description="Refuse to load a version when the process's resident memory "
                             "plus about twice the version's model file would exceed this "
                             "(MB). 0: no budget.")
    default_model: str | None = Field(
        None, description="Model used by POST /predict when the request names none; "
                          "default: the only model if there is one, else 'sentiment' if loaded.")
    model_variant: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Which variant of each model to serve: `auto` (default) times every "
                    "variant the manifest says is accurate enough on the warm-up batches, on "
                    "this host and provider, and serves the fastest; `manifest` serves the "
                    "manifest's default; or a variant's name. One value for every model "
                    "(`auto`) or JSON per model, e.g. {\"sentiment\": \"fp32\"}.")
    model_public_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Public keys (EC P-256/384/521, PEM) whose signature every version must "
                    "carry (`ortserve sign`, OpenSSF model-signing format, `model.sig`): "
                    "paths of PEM files, or PEM text, comma-separated. A version whose "
                    "signature is missing, made by another key or does not match its "
                    "files is refused (reason `signature`). Empty: signatures are not "
                    "checked.")

    accuracy_budget: float = Field(
        0.0, ge=0, le=1, description="With model_variant auto: how much lower (a fraction, "
                                     "e.g. 0.015 for 1.5 points) a distilled student's test "
                                     "accuracy may be than the most accurate variant's for "
                                     "it to be timed and served when faster. 0: students "
                                     "never serve.")

    # Execution
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when onnxruntime-gpu sees a GPU, else CPU.")
    strict_device: bool = Field(
        False, description="Refuse to start when a model does not run on the asked device.")
    tensorrt: bool = Field(False, description="Try TensorRT before CUDA when on a GPU.")
    instances: int = Field(
        0, ge=0, description="Batches of one model that run at once, each in its own thread "
                             "(Triton's instance count). 0 = one per CPU core of a worker "
                             "process on CPU, 1 on a GPU. Many single-thread instances give "
                             "the most throughput under load; one instance with all the "
                             "cores' threads answers a lone request fastest.")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads per "
                                                      "batch run; 0 = CPU cores / (workers x "
                                                      "instances).")
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads.")
    ort_allow_spinning: bool = Field(
        False, description="Let ONNX Runtime's idle threads spin (lower latency on dedicated "
                           "cores, but they take CPU from the event loop).")
    warmup: bool = Field(True, description="Run warm-up batches before reporting ready.")

    # Batching defaults (a manifest's `batching` overrides these; `batching` below overrides both)
    max_batch_size: int = Field(64, ge=1, description="Most inputs in one model run.")
    max_batch_tokens: int = Field(8192, ge=1, description="Text: most padded tokens "
                                                          "(longest x count) in one run.")
    max_delay_ms: float = Field(
        0.0, ge=0, description="Wait this long for company when a batch is not full. 0: an "
                               "idle model starts a lone request at once; a free instance "
                               "waits (at most a quarter of a batch run) only while another "
                               "one is busy.")
    max_queue_size: int = Field(
        4096, ge=1, description="Hard bound on inputs queued per model (memory: a queued text "
                                "holds its token ids, at most 2 KB at 256 tokens). Requests are "
                                "admitted by deadline first: 503 at once when the queue is "
                                "not expected to answer them in time (a manifest may set its "
                                "own bound).")
    batching: dict[str, BatchingOverride] = Field(default_factory=dict,
                                                  description="Per-model batching overrides "
                                                              "(JSON), e.g. {\"sentiment\": "
                                                              "{\"max_batch_size\": 32}}.")

    # Limits
    max_body_bytes: int = Field(1 << 20, ge=1, description="Largest request body (413).")
    max_inputs: int = Field(256, ge=1, description="Most texts per request (422).")
    max_rows: int = Field(1024, ge=1, description="Most feature rows per request (422).")
    max_text_chars: int = Field(10000, ge=1, description="Longest text in characters.")
    truncate_text: bool = Field(False, description="Cut texts past max_text_chars instead of "
                                                   "answering 422.")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of a predict request "
                                                             "(504); a header may lower it.")

    # Explanations (POST /explain; README "Explanations")
    explain_max_inputs: int = Field(8, ge=1, description="Most inputs (texts or rows) per "
                                                        "explain request (422).")
    explain_max_concurrent: int = Field(
        4, ge=1, description="Explain requests computed at once per worker; more get 503 with "
                             "Retry-After at once.")
    explain_default_evaluations: int = Field(
        2048, ge=2, description="Model evaluations an explanation may spend when the request "
                                "names no `max_evaluations` (a feature model spends one per "
                                "background row per coalition).")
    explain_max_evaluations: int = Field(
        16384, ge=2, description="Most model evaluations one input's explanation may spend "
                                 "(a request asking more gets 422).")
    explain_exact_max_players: int = Field(
        10, ge=0, description="Exact Shapley values (all 2^n coalitions) up to this many words "
                              "or features when they fit the budget; above, antithetic "
                              "permutation sampling with a standard error.")
    explain_batch_size: int = Field(
        16, ge=1, description="Most explanation inputs in one model run of a text model's "
                              "low-priority lane (small batches keep a prediction's wait "
                              "for a running explanation batch short).")
    explain_max_queued: int = Field(
        32768, ge=1, description="Most model inputs waiting in one model's low-priority lane "
                                 "(explanations' coalitions; a text's takes up to 1 KB); an "
                                 "explanation that would pass it gets 503 with Retry-After.")
    explain_evaluations_per_token: int = Field(
        256, ge=1, description="With a rate limit, an explain request takes one token per "
                               "this many model evaluations it may spend (inputs x its "
                               "evaluation budget), on top of its own token; one whose cost "
                               "exceeds the burst gets 429 at once.")
    # Rollouts (README "Rollouts")
    shadow_max_inflight: int = Field(
        256, ge=1, description="Most shadowed inputs of one rollout waiting or running on its "
                               "candidate; past it, shadow copies are dropped (counted).")
    shadow_timeout_s: float = Field(
        10.0, gt=0, description="A shadow copy that has not run within this long is dropped "
                                "(the candidate's lane waits for idle moments).")
    rollout_check_s: float = Field(
        1.0, gt=0, description="How often a rollout with an automatic gate is evaluated.")

    ui: bool = Field(True, description="Serve the playground page at /ui (static files that "
                                       "use the public API only).")

    # Server
    workers: int = Field(1, ge=0, description="Worker processes of `ortserve serve`; 0 = one "
                                              "per CPU core (see docs/benchmarks.md).")
    host: str = Field("127.0.0.1", description="Bind address of `ortserve serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `ortserve serve`.")
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the Open Inference Protocol's gRPC API "
                                          "(same host, same process); unset: no gRPC.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service's own logs.")
    log_format: Literal["json", "text"] = Field("json", description="JSON lines or text.")
    otel: bool = Field(False, description="FastAPI's OpenTelemetry spans and metrics per HTTP "
                                          "request, sent to the globally configured "
                                          "providers; off, it costs nothing per request.")
    shutdown_grace_s: float = Field(30.0, gt=0, description="On SIGTERM, most seconds to "
                                                            "finish accepted work before exit.")
    ssl_certfile: str | None = Field(
        None, description="TLS certificate (PEM): HTTPS, and TLS on the gRPC port too.")
    ssl_keyfile: str | None = Field(None, description="TLS private key (PEM) of ssl_certfile.")
    ssl_ca_certs: str | None = Field(
        None, description="Client CA certificates (PEM): with TLS on, every client must "
                          "present a certificate they signed (mutual TLS), on HTTPS and gRPC.")
    drain_delay_s: float = Field(
        5.0, ge=0, description="On SIGTERM, readiness turns 503 at once and new work is still "
                               "accepted for this long (for load balancers to notice).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated); empty "
                                          "disables CORS.")

    # Auth
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Keys for the repository APIs (/repository/*, "
                                          "/v2/repository/*, the gRPC repository RPCs), "
                                          "comma-separated, distinct from api_keys; empty: "
                                          "those APIs answer 403 and change nothing.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys (comma-separated). Unset, with "
                                          "no api_keys_file: no key is asked for, which "
                                          "`ortserve serve` allows on a loopback address "
                                          "only (see allow_unauthenticated); set but empty "
                                          "is an error.")
    api_keys_file: Path | None = Field(
        None, description="File with one API key per line; re-read when it changes "
                          "(rotation without restart).")
    admin_keys_file: Path | None = Field(
        None, description="File with one admin key per line, beside admin_keys; re-read when "
                          "it changes.")
    metrics_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Keys that may read /metrics (and the docs) and "
                                          "nothing else, for a scraper (comma-separated); "
                                          "API keys are accepted there too.")
    metrics_keys_file: Path | None = Field(
        None, description="File with one metrics key per line; re-read when it changes.")
    allow_unauthenticated: bool = Field(
        False, description="Serve without API keys on a non-loopback address (logged as a "
                           "warning at every start). Without it, `ortserve serve` refuses "
                           "to start on such an address when no key is configured.")
    min_key_length: int = Field(
        16, ge=8, description="Shortest API or admin key accepted: a shorter one in the "
                              "settings stops the start; in a key file it is ignored with "
                              "an error in the log.")
    auth_exempt_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/metrics", "/docs", "/openapi.json", "/redoc"],
        description="Paths of the service's own routes served without a key "
                    "(comma-separated); health checks never need one.")
    metrics_require_key: bool = Field(
        False, description="GET /metrics needs an API key even when auth_exempt_paths "
                           "lists it.")
    docs: bool = Field(True, description="Serve the API documentation: /docs, /redoc and "
                                         "/openapi.json.")
    auth_failures_per_minute: float = Field(
        30.0, ge=0, description="Failed authentications (missing or wrong key) allowed per "
                                "client address and minute, in bursts of as many; past "
                                "that, the address gets 429 with Retry-After on every call "
                                "that needs a key. 0: no limit.")
    rate_limit_per_s: float = Field(0.0, ge=0, description="Per-key requests per second "
                                                           "(token bucket); 0 disables.")
    rate_limit_burst: int = Field(20, ge=1, description="Per-key bucket size.")
    redis_url: str | None = Field(
        None, description="Keep the per-key rate-limit buckets in this Redis (e.g. "
                          "redis://redis:6379/0) so the limit holds across workers and "
                          "replicas; unset: each process limits on its own.")
    rate_limit_fail_open: bool = Field(
        True, description="When Redis cannot be reached: allow requests (true) or refuse "
                          "them with 503 (false); either way a metric and a log line.")
    admin_rate_limit_per_s: float = Field(
        5.0, ge=0, description="Per admin key: repository API calls per second (token "
                               "bucket of admin_rate_limit_burst); 0 disables.")
    admin_rate_limit_burst: int = Field(20, ge=1, description="Per admin key bucket size.")


    @field_validator("model_variant", mode="before")
    @classmethod
    def _variant_map(cls, v):
        return _json_or(v, "{", lambda text: {"*": text} if text else {})

    def variant_for(self, model: str) -> str:
        """`auto`, `manifest` or a variant name for this model."""
        return self.model_variant.get(model, self.model_variant.get("*", "auto"))

    @model_validator(mode="after")
    def _keys(self) -> Settings:
        if "api_keys" in self.model_fields_set and not self.api_keys:
            raise ValueError("ORTSERVE_API_KEYS is set but lists no key; list keys, or unset "
                             "it (and set ORTSERVE_ALLOW_UNAUTHENTICATED=true to serve "
                             "without keys on a non-loopback address)")
        for setting in ("api_keys", "admin_keys", "metrics_keys"):
            short = [k for k in getattr(self, setting) if len(k) < self.min_key_length]
            if short:
                raise ValueError(f"ORTSERVE_{setting.upper()}: {len(short)} key(s) shorter "
                                 f"than {self.min_key_length} characters "
                                 "(ORTSERVE_MIN_KEY_LENGTH); generate one with "
                                 "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return self

    @field_validator("model_public_keys", mode="after")
    @classmethod
    def _public_keys(cls, v: list[str]) -> list[str]:
        from app.contract.signing import load_public_keys

        load_public_keys(v)  # refuse to start on a key that cannot be read
        return v

    @field_validator("models", "cors_origins", "api_keys", "admin_keys", "metrics_keys",
                     "auth_exempt_paths",
                     "model_public_keys", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return _json_or(v, "[", lambda text: [x.strip() for x in text.split(",") if x.strip()])


def _json_or(v, opener: str, shorthand):
    """A setting given as JSON (text that starts with `opener`) or in its shorthand form,
    read by `shorthand(text)`; values that are not text pass through."""
    if not isinstance(v, str):
        return v
    v = v.strip()
    return json.loads(v) if v.startswith(opener) else shorthand(v)


def cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolved_workers(settings: Settings) -> int:
    return settings.workers or cpu_count()


def resolved_instances(settings: Settings, on_gpu: bool = False) -> int:
    if settings.instances:
        return settings.instances
    return 1 if on_gpu else max(1, cpu_count() // resolved_workers(settings))


def resolved_intra_op_threads(settings: Settings) -> int:
    """Cores shared out between worker processes and their instances, so that they do not
    oversubscribe the CPU."""
    return settings.intra_op_threads or max(
        1, cpu_count() // (resolved_workers(settings) * resolved_instances(settings)))


class SettingsError(ValueError):
    """Settings that cannot serve; the message names each setting and why, never a value
    (keys are settings)."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and `overrides`), or SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for e in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in e["loc"])
            lines.append(f"ORTSERVE_{where.upper()}: {e['msg']}" if where else e["msg"])
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
