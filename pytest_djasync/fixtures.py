"""Fixture functions only; each delegates to the module that owns its capability.

Those modules are imported when a fixture is used, not when pytest loads the plugin.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import httpx

    from pytest_djasync import crossings, fanout, live
    from pytest_djasync.client import ASGIClient


@pytest.fixture
def asgi_client(request: pytest.FixtureRequest) -> Iterator[ASGIClient]:
    """An ``httpx.AsyncClient`` that drives the project's ASGI app, as uvicorn would, with
    ``await asgi_client.aforce_login(user)`` to log a user in.

    The app is built on the first request, so settings changed before it apply. The fixture is
    synchronous on purpose: it works in whatever event loop the test runs in (any
    pytest-asyncio loop scope).
    """

    from pytest_djasync import client, djangohooks

    transport = client.ASGIStreamingTransport(app_factory=client.django_asgi_app)
    finishing: list[bool] = []

    async def finish_before_the_loop_closes(_: httpx.Request) -> None:
        # pytest-asyncio sets its loop up after this fixture, so it would close it (cancelling
        # the apps of responses never closed) before this fixture's teardown: a finalizer added
        # now, in the test, runs first, while the loop is idle and still open.
        if not finishing:
            finishing.append(True)
            request.node.addfinalizer(transport.cancel_pending)

    hooks = {"request": [finish_before_the_loop_closes]}
    with djangohooks.test_client_signals():
        yield client.ASGIClient(
            transport=transport, base_url="http://testserver", event_hooks=hooks
        )
        transport.cancel_pending()


@pytest.fixture
def djasync_crossings() -> Iterator[crossings.Recorder]:
    """Every sync/async crossing from now to the end of the test: ``.crossings``, ``.total``,
    ``.by_origin()``, ``.by_request()``."""
    from pytest_djasync import crossings

    recorder = crossings.start(crossings.Recorder())
    try:
        yield recorder
    finally:
        crossings.stop(recorder)


@pytest.fixture
def djasync_assert_max_crossings(
    request: pytest.FixtureRequest,
) -> Callable[[int], AbstractContextManager[crossings.Recorder]]:
    """``with djasync_assert_max_crossings(n):`` fails if the block makes more than n crossings
    (in warn mode, puts the listing in the test's report instead).

    Modelled on pytest-django's ``django_assert_max_num_queries``.
    """
    from pytest_djasync import crossings, report
    from pytest_djasync.errors import DjasyncWarning, spared_from_blanket_errors
    from pytest_djasync.plugin import SETTINGS_KEY

    warn = request.config.stash[SETTINGS_KEY].mode.value == "warn"

    @contextlib.contextmanager
    def assert_max_crossings(limit: int) -> Iterator[crossings.Recorder]:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"djasync_assert_max_crossings: {limit!r} is not a whole number >= 0")
        recorder = crossings.start(crossings.Recorder())
        try:
            yield recorder
        finally:
            crossings.stop(recorder)
        if recorder.total <= limit:
            return
        text = report.crossings_text(recorder, limit, "in the block")
        if warn:  # no test fails because of the plugin: the text goes where warn mode puts it,
            # and a warning says so where a run's output shows it
            request.node.add_report_section("call", "djasync", text)
            headline = text.splitlines()[0].removeprefix("pytest-djasync: ")
            note = f"djasync_assert_max_crossings: {headline}"
            with spared_from_blanket_errors(note):
                warnings.warn(DjasyncWarning(note), stacklevel=3)
        else:
            pytest.fail(text, pytrace=False)

    return assert_max_crossings


@pytest.fixture
def djasync_fanout(request: pytest.FixtureRequest) -> Iterator[fanout.Recorder]:
    """Every outbound httpx request from now to the end of the test: ``.calls``,
    ``.peak_concurrency``, ``.wall``, ``.slowest``, ``.assert_concurrent(n, within=None)``."""
    from pytest_djasync import fanout

    # the rootdir, as in the marker's failures: the timeline's "sent from" paths are relative
    recorder = fanout.start(fanout.Recorder(root=request.config.rootpath))
    try:
        yield recorder
    finally:
        fanout.stop(recorder)


@pytest.fixture(scope="session")
def live_asgi_server() -> Iterator[live.LiveServer]:
    """The project's ASGI app served by uvicorn at ``.url`` (``http://127.0.0.1:<free port>``),
    in a thread with its own event loop, started once for the session.

    Under ``--djasync`` the server's loop is watched like a test's: a request that blocks it
    fails the test running at the time, and the crossings and outbound requests it makes count
    for that test. A test whose requests use the database asks for ``db`` as usual; under
    ``--djasync`` they see the test's own rows, otherwise (as with pytest-django's
    ``live_server``) only committed ones: use ``transactional_db``. The app is built once, so
    settings overrides that change how it is built (``MIDDLEWARE``) do not reach it. Needs
    ``pip install uvicorn`` (the ``live`` extra).
    """
    from pytest_djasync import live

    server = live.LiveServer()
    problem = ""
    try:
        server.start()
    except (live.UvicornMissing, live.StartupError) as exc:
        problem = str(exc)
    if problem:  # failed outside the ``except``: the message alone, no chained traceback
        pytest.fail(problem, pytrace=False)
    yield server
    server.stop()
