"""Fixture functions only; each delegates to the module that owns its capability."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from pytest_djasync import client, crossings, djangohooks, fanout, report
from pytest_djasync.session import Watch

WATCH_KEY = pytest.StashKey[Watch]()


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


@pytest.fixture
def djasync_crossings() -> Iterator[crossings.Recorder]:
    """Every sync/async crossing from now to the end of the test: ``.crossings``, ``.total``,
    ``.by_origin()``, ``.by_request()``."""
    recorder = crossings.start(crossings.Recorder())
    try:
        yield recorder
    finally:
        crossings.stop(recorder)


@pytest.fixture
def djasync_assert_max_crossings() -> Callable[[int], AbstractContextManager[crossings.Recorder]]:
    """``with djasync_assert_max_crossings(n):`` fails if the block makes more than n crossings.

    Modelled on pytest-django's ``django_assert_max_num_queries``.
    """

    @contextlib.contextmanager
    def assert_max_crossings(limit: int) -> Iterator[crossings.Recorder]:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"djasync_assert_max_crossings: {limit!r} is not a whole number >= 0")
        recorder = crossings.start(crossings.Recorder())
        try:
            yield recorder
        finally:
            crossings.stop(recorder)
        if recorder.total > limit:
            pytest.fail(report.crossings_text(recorder, limit, "in the block"), pytrace=False)

    return assert_max_crossings


@pytest.fixture
def djasync_fanout() -> Iterator[fanout.Recorder]:
    """Every outbound httpx request from now to the end of the test: ``.calls``,
    ``.peak_concurrency``, ``.wall``, ``.slowest``, ``.assert_concurrent(n, within=None)``."""
    recorder = fanout.start(fanout.Recorder())
    try:
        yield recorder
    finally:
        fanout.stop(recorder)
