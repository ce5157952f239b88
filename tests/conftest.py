from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.builders import build_repository

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
