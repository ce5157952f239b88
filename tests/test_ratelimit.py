"""Per-key rate limits shared through a real redis-server: the limit holds across
processes, and a Redis that goes away fails open or closed as configured."""

from __future__ import annotations

import pytest

from tests.servers import RedisProcess, metric_value

pytestmark = pytest.mark.anyio
K1, K2 = "key-one-0123456789", "key-two-0123456789"
KEY = {"Authorization": f"Bearer {K1}"}
BODY = {"model": "tabular", "inputs": [[1.0, 2.0, 3.0, 4.0]]}


@pytest.fixture
def redis(tmp_path):
    server = RedisProcess(tmp_path / "redis.log")
    try:
        yield server
    finally:
        server.stop()


async def test_the_limit_holds_across_replicas_sharing_redis(make_client, redis):
    settings = {"api_keys": f"{K1},{K2}", "rate_limit_per_s": 0.01, "rate_limit_burst": 3,
                "redis_url": redis.url}
    one, two = await make_client(**settings), await make_client(**settings)
    codes = [(await c.post("/predict", json=BODY, headers=KEY)).status_code
             for c in (one, two, one, two)]
    assert codes == [200, 200, 200, 429]  # three tokens for k1, whichever replica answers
    r = await one.post("/predict", json=BODY, headers=KEY)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    other = await two.post("/predict", json=BODY, headers={"Authorization": f"Bearer {K2}"})
    assert other.status_code == 200  # a bucket per key


@pytest.mark.parametrize("fail_open,status", [(True, 200), (False, 503)])
async def test_redis_down_fails_open_or_closed_with_a_metric(make_client, redis, capsys,
                                                             fail_open, status):
    client = await make_client(api_keys=K1, rate_limit_per_s=0.01, rate_limit_burst=1,
                               redis_url=redis.url, rate_limit_fail_open=fail_open)
    assert (await client.post("/predict", json=BODY, headers=KEY)).status_code == 200
    redis.stop()
    r = await client.post("/predict", json=BODY, headers=KEY)
    assert r.status_code == status, r.text
    if status == 503:
        assert r.json()["error"]["code"] == "rate_limiter_unavailable"
    text = (await client.get("/metrics")).text
    assert metric_value(text, "ortserve_rate_limit_backend_errors_total") >= 1
    assert "rate limiter: Redis unavailable" in capsys.readouterr().err
