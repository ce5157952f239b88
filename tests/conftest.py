from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import hypothesis
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from app.main import create_app
from app.runtime.session import DeviceError, create_session
from app.settings import Settings
from tests.builders import FEATURES, build_repository, build_rows_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Hypothesis keeps no example database, and its caches live in a temporary folder: the tests
# write nothing into the source tree (its default is .hypothesis/ in the working directory).
hypothesis.settings.register_profile("ortserve", database=None)
hypothesis.settings.load_profile("ortserve")


def pytest_configure(config: pytest.Config) -> None:
    home = tempfile.mkdtemp(prefix="ortserve-hypothesis-")
    set_hypothesis_home_dir(home)
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repository(tmp_path / "models")


@pytest.fixture
async def make_client(repo: Path):
    """Start the real app (lifespan included) and return an httpx client talking to it."""
    async with AsyncExitStack() as stack:

        async def _make(root: Path | None = None, **overrides) -> httpx.AsyncClient:
            settings = Settings(models_dir=root or repo, log_format="text", **overrides)
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"))
            client.app = app
            client.gates = []  # tests.sync.Gate.on: opened before the app stops
            stack.callback(lambda: [gate.release() for gate in client.gates])
            return client

        yield _make


@pytest.fixture
async def client(make_client) -> httpx.AsyncClient:
    return await make_client()


@pytest.fixture(scope="session")
def cuda_error(tmp_path_factory) -> str | None:
    """Why a real CUDA session cannot start on this host (None when one does): a tiny
    model's session on the CUDA provider, strict, so that ONNX Runtime falling back to the
    CPU (the provider listed, but no GPU or no CUDA libraries) counts as no CUDA."""
    path = tmp_path_factory.mktemp("cuda") / "probe.onnx"
    build_rows_model(path, len(FEATURES), classifier=True)
    try:
        create_session(path, device="cuda", strict=True)
    except DeviceError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a CUDA provider that loads but cannot run
        return f"{type(exc).__name__}: {exc}"
    return None
