"""Fixture functions only; each delegates to the module that owns its capability."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pytest_djasync import client, djangohooks


@pytest.fixture
def asgi_client() -> Iterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` that drives the project's ASGI app, as uvicorn would.

    The app is built on the first request, so settings changed before it apply. The fixture is
    synchronous on purpose: it works in whatever event loop the test runs in (any
    pytest-asyncio loop scope).
    """
    transport = client.ASGIStreamingTransport(app_factory=client.django_asgi_app)
    with djangohooks.test_client_signals():
        yield httpx.AsyncClient(transport=transport, base_url="http://testserver")
        transport.cancel_pending()
