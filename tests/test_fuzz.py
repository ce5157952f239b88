"""schemathesis against the live OpenAPI schema of a real uvicorn-served instance: no 5xx
for any generated request, and every response conforms to the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.builders import build_repository
from tests.servers import ServiceProcess


@pytest.fixture(scope="module")
def live_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    svc = ServiceProcess(build_repository(root / "models"), root / "log",
                         ORTSERVE_LOG_LEVEL="warning").wait_ready()
    try:
        yield svc
    finally:
        svc.terminate()


@pytest.fixture(scope="module")
def api_schema(live_service):
    return schemathesis.openapi.from_url(f"{live_service.url}/openapi.json")


OPERATIONS = ["POST /predict", "POST /models/{name}/predict", "GET /models",
              "POST /explain", "POST /models/{name}/explain", "POST /v2/models/{name}/explain",
              "POST /v2/models/{name}/versions/{version}/explain",
              "GET /models/{name}", "GET /models/{name}/versions/{version}",
              "GET /health/live", "GET /health/ready", "GET /metrics",
              # no admin key is configured: these answer 401/403 and change nothing
              "GET /repository/index", "POST /repository/models/{name}/load",
              "POST /repository/models/{name}/unload", "GET /repository/models/{name}/rollout",
              "PUT /repository/models/{name}/rollout",
              "POST /repository/models/{name}/rollout/promote",
              "DELETE /repository/models/{name}/rollout",
              # the Open Inference Protocol (v2)
              "GET /v2", "GET /v2/health/live", "GET /v2/health/ready", "GET /v2/models/{name}",
              "GET /v2/models/{name}/versions/{version}", "GET /v2/models/{name}/ready",
              "GET /v2/models/{name}/versions/{version}/ready", "POST /v2/models/{name}/infer",
              "POST /v2/models/{name}/versions/{version}/infer", "POST /v2/repository/index",
              "POST /v2/repository/models/{name}/load",
              "POST /v2/repository/models/{name}/unload"]


def test_schema_lists_every_operation(api_schema):
    found = {op.ok().label for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors_and_responses_match_the_schema(api_schema, label):
    operation = next(op.ok() for op in api_schema.get_all_operations()
                     if op.ok().label == label)

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance,
                                       content_type_conformance, response_schema_conformance])

    check()
