"""Safe to expose: closed unless opened, keys that cannot be guessed or leaked, TLS on every
protocol, and abuse that costs the abuser (real server processes, real TLS handshakes with
certificates made in the test, the real app over httpx)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys

import grpc
import httpx
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
import trustme

from tests.builders import build_repository
from tests.servers import ROOT, ServiceProcess, free_port, metric_value, wait_until

KEY = "predict-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
ROW = [0.5, 0.1, 0.2, 0.3]


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`ortserve serve` that is expected to refuse to start (a timeout means it started)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    return subprocess.run([sys.executable, "-m", "app.cli", "serve", "--models", "models",
                           *args], cwd=ROOT, env={**full_env, **env}, capture_output=True,
                          text=True, timeout=60)


def test_a_server_beyond_loopback_without_keys_refuses_to_start():
    r = _serve("--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2, r.stderr
    assert "ORTSERVE_ALLOW_UNAUTHENTICATED" in r.stderr and "without API keys" in r.stderr


@pytest.mark.parametrize("env, words", [
    ({"ORTSERVE_API_KEYS": ""}, "set but lists no key"),
    ({"ORTSERVE_API_KEYS": "short-secret-1"}, "shorter than 16 characters"),
    ({"ORTSERVE_ADMIN_KEYS": "short-admin-99"}, "ORTSERVE_ADMIN_KEYS"),
])
def test_bad_keys_stop_the_start_and_are_never_printed(env, words):
    r = _serve("--port", str(free_port()), **env)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    for value in env.values():
        assert not value or value not in r.stderr + r.stdout


@pytest.mark.anyio
async def test_opening_up_is_explicit_and_logged(make_client, capsys):
    """Without keys beyond loopback, the app factory refuses too (the CLI is not the only
    door); the opt-in starts it with a warning."""
    from app.security.posture import UnsafeSettings

    with pytest.raises(UnsafeSettings):
        await make_client(host="0.0.0.0")
    client = await make_client(host="0.0.0.0", allow_unauthenticated=True)
    assert (await client.get("/models")).status_code == 200
    logs = capsys.readouterr().err
    assert "WITHOUT API keys" in logs and "security: no API keys (open)" in logs


@pytest.mark.anyio
async def test_metrics_can_need_a_key_and_docs_can_be_off(make_client):
    client = await make_client(api_keys=KEY, metrics_require_key=True, docs=False)
    assert (await client.get("/metrics")).status_code == 401
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "ortserve_requests_total" in r.text
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert (await client.get(path, headers={"Authorization": f"Bearer {KEY}"})
                ).status_code == 404
    assert (await client.get("/health/ready")).status_code == 200  # never needs a key
    open_client = await make_client(api_keys=KEY)
    assert (await open_client.get("/metrics")).status_code == 200  # exempt by default
    assert (await open_client.get("/openapi.json")).status_code == 200


@pytest.mark.anyio
async def test_failed_authentications_are_throttled_per_address(make_client):
    client = await make_client(api_keys=KEY, auth_failures_per_minute=3)
    body = {"model": "tabular", "inputs": [ROW]}
    codes = [(await client.post("/predict", json=body,
                                headers={"Authorization": "Bearer wrong-key-000000000"})
              ).status_code for _ in range(4)]
    assert codes == [403, 403, 403, 429]
    # the address is refused before its key is looked at, a good key included
    r = await client.post("/predict", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "failed authentications" in r.json()["error"]["message"]
    text = (await client.get("/metrics")).text
    assert metric_value(text, 'ortserve_auth_failures_total{api="v1",reason="wrong_key"}') == 3
    assert metric_value(text, 'ortserve_auth_failures_total{api="v1",reason="throttled"}') == 2


@pytest.mark.anyio
async def test_the_repository_api_is_rate_limited_and_audited(make_client, capsys):
    client = await make_client(admin_keys=ADMIN_KEY, admin_rate_limit_per_s=0.01,
                               admin_rate_limit_burst=2)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    codes = [(await client.get("/repository/index", headers=admin)).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    logs = capsys.readouterr().err
    lines = [dict(kv.split("=", 1) for kv in ln.split("  ", 1)[1].split(" ") if "=" in kv)
             for ln in logs.splitlines() if "ortserve.audit" in ln]
    assert [ln["outcome"] for ln in lines] == ["200", "200", "rate_limited"]
    assert all(ln["protocol"] == "v1" and len(ln["key_id"]) == 12 for ln in lines)
    assert all("GET /repository/index" in ln for ln in logs.splitlines()
               if "ortserve.audit" in ln)
    assert ADMIN_KEY not in logs


@pytest.mark.anyio
async def test_an_explanation_costs_tokens_by_its_budget(make_client):
    client = await make_client(api_keys=KEY, rate_limit_per_s=0.01, rate_limit_burst=8,
                               explain_evaluations_per_token=256)
    key = {"Authorization": f"Bearer {KEY}"}
    # 8 inputs x 2048 evaluations = 64 tokens: more than the bucket ever holds
    r = await client.post("/explain", headers=key, json={
        "model": "sentiment", "inputs": ["good day"] * 8, "max_evaluations": 2048})
    assert r.status_code == 429 and "more than a key's bucket" in r.json()["error"]["message"]
    # that refusal took the request's own token; 1 input x 1280 evaluations = 5 tokens
    # (+1 for the request): 7 of the 8 gone
    r = await client.post("/explain", headers=key, json={
        "model": "sentiment", "inputs": ["good day"], "max_evaluations": 1280})
    assert r.status_code == 200, r.text
    codes = [(await client.post("/predict", headers=key, json={"model": "tabular",
                                                                "inputs": [ROW]})
              ).status_code for _ in range(2)]
    assert codes == [200, 429]


@pytest.mark.anyio
async def test_the_explanation_lane_is_bounded(make_client):
    client = await make_client(explain_max_queued=100)
    text = "the movie was good but the phone is awful and i hate this sad day ok"
    r = await client.post("/explain", json={"model": "sentiment", "inputs": [text],
                                            "max_evaluations": 1024, "method": "permutation"})
    assert r.status_code == 422, r.text
    assert "ORTSERVE_EXPLAIN_MAX_QUEUED" in r.json()["error"]["message"]


def test_a_short_key_in_a_key_file_is_ignored_and_logged(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"short-one\n{KEY}\n")
    with ServiceProcess(build_repository(tmp_path / "models"), tmp_path / "log",
                        ORTSERVE_API_KEYS_FILE=str(keys)) as svc:
        ok = httpx.get(f"{svc.url}/models", headers={"Authorization": f"Bearer {KEY}"})
        short = httpx.get(f"{svc.url}/models", headers={"Authorization": "Bearer short-one"})
        assert (ok.status_code, short.status_code) == (200, 403)
        wait_until(lambda: "shorter than 16 characters ignored" in svc.logs(), 10, "log")
    assert "short-one" not in svc.logs()


# -- TLS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a certificate for 127.0.0.1 it signed, and a client CA with one client."""
    folder = tmp_path_factory.mktemp("pki")
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("client@example.org")
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem",
             "client_ca": folder / "client-ca.pem", "client": folder / "client.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client_ca.cert_pem.write_to_path(str(paths["client_ca"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    paths["client_key"] = client.private_key_pem.bytes()
    paths["client_cert"] = client.cert_chain_pems[0].bytes()
    return paths


class TLSService(ServiceProcess):
    """The service on HTTPS (and gRPC over TLS), checked with the test's CA."""

    def __init__(self, models, log, pki, client_cert: bool, **env: str) -> None:
        self.grpc_port = free_port()
        super().__init__(models, log, ORTSERVE_SSL_CERTFILE=str(pki["cert"]),
                         ORTSERVE_SSL_KEYFILE=str(pki["key"]),
                         ORTSERVE_GRPC_PORT=str(self.grpc_port), **env)
        self.url = f"https://127.0.0.1:{self.port}"
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        if client_cert:
            context.load_cert_chain(str(pki["client"]))
        self.tls = httpx.Client(verify=context, timeout=10)

    def wait_ready(self, timeout: float = 60) -> TLSService:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n"
                                   f"{self.logs()}")
            return self.tls.get(f"{self.url}/health/ready").status_code == 200

        try:
            wait_until(ready, timeout, "service readiness over TLS")
        except BaseException:
            self.kill()
            raise
        return self


def _grpc_ready(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    with channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(),
                                                                  timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls_on_both_protocols_and_plaintext_refused(tmp_path, pki):
    with TLSService(build_repository(tmp_path / "models"), tmp_path / "log", pki,
                    client_cert=False, ORTSERVE_API_KEYS=KEY) as svc:
        r = svc.tls.post(f"{svc.url}/predict", json={"model": "tabular", "inputs": [ROW]},
                         headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["model"] == "tabular"
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{svc.port}/health/live", timeout=5)
        address = f"127.0.0.1:{svc.grpc_port}"
        ca = pki["ca"].read_bytes()
        assert _grpc_ready(address, grpc.ssl_channel_credentials(ca)) == grpc.StatusCode.OK
        assert _grpc_ready(address, None) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_asks_every_client_for_a_certificate(tmp_path, pki):
    with TLSService(build_repository(tmp_path / "models"), tmp_path / "log", pki,
                    client_cert=True, ORTSERVE_SSL_CA_CERTS=str(pki["client_ca"])) as svc:
        assert svc.tls.get(f"{svc.url}/health/ready").status_code == 200
        anonymous = httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"])),
                                 timeout=5)
        with pytest.raises(httpx.HTTPError):
            anonymous.get(f"{svc.url}/health/ready")
        address, ca = f"127.0.0.1:{svc.grpc_port}", pki["ca"].read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, pki["client_key"], pki["client_cert"])
        assert _grpc_ready(address, with_cert) == grpc.StatusCode.OK
        assert _grpc_ready(address, grpc.ssl_channel_credentials(ca)) == \
            grpc.StatusCode.UNAVAILABLE


@pytest.mark.anyio
async def test_a_metrics_key_reads_metrics_and_nothing_else(make_client, tmp_path):
    metrics_key, admin_file = "metrics-key-0123456789", tmp_path / "admin-keys"
    admin_file.write_text(f"# rotated 2026-12\n{ADMIN_KEY}\n")
    client = await make_client(api_keys=KEY, metrics_keys=metrics_key,
                               metrics_require_key=True, admin_keys_file=admin_file)
    scraper = {"Authorization": f"Bearer {metrics_key}"}
    assert (await client.get("/metrics", headers=scraper)).status_code == 200
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
            ).status_code == 200
    assert (await client.get("/models", headers=scraper)).status_code == 403
    r = await client.post("/predict", headers=scraper, json={"model": "tabular",
                                                             "inputs": [ROW]})
    assert r.status_code == 403
    r = await client.get("/repository/index", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200  # the admin key came from its file


@pytest.mark.parametrize("contents", [None, "", "short-key\n"], ids=["missing", "empty",
                                                                    "no-valid-key"])
def test_a_key_file_that_gives_no_key_stops_the_start(tmp_path, contents):
    keys = tmp_path / "keys"
    if contents is not None:
        keys.write_text(contents)
    r = _serve("--port", str(free_port()), ORTSERVE_API_KEYS_FILE=str(keys))
    assert r.returncode == 2 and "ORTSERVE_API_KEYS_FILE" in r.stderr, r.stderr


@pytest.mark.anyio
async def test_a_key_file_that_turns_unreadable_refuses_every_key(make_client, tmp_path):
    """A keys file that becomes unreadable (compose makes a folder of a missing secret)
    accepts no key: 403, not a 500 and not an open door."""
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    client = await make_client(api_keys_file=keys)
    headers = {"Authorization": f"Bearer {KEY}"}
    assert (await client.get("/models", headers=headers)).status_code == 200
    keys.unlink()
    keys.mkdir()
    codes = set()
    for _ in range(100):  # the file is looked at once a second at most (REFRESH_S)
        code = (await client.get("/models", headers=headers)).status_code
        codes.add(code)
        if code != 200:
            break
        await asyncio.sleep(0.05)
    assert code == 403 and codes <= {200, 403}, codes
