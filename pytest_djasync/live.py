"""The server behind ``live_asgi_server``: uvicorn in a thread of its own, with its own loop.

It serves on loopback only, on a free port, with asyncio's own event loop (``loop="asyncio"``),
because the watchdog times asyncio's ``Handle`` in every thread: a view that blocks the server's
loop is found while a test runs, exactly as in the test's own loop. uvicorn is an optional
dependency (``pytest-djasync[live]``), imported only when a server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from pytest_djasync import _clock
from pytest_djasync.client import ASGIApp, Receive, Scope, Send, django_asgi_app
from pytest_djasync.findings import served, serving

if TYPE_CHECKING:
    import socket

    import uvicorn
    from django.test.utils import modify_settings

HOST = "127.0.0.1"
THREAD_NAME = "djasync-live-server"
MISSING_UVICORN = (
    "live_asgi_server needs uvicorn: pip install uvicorn (the 'live' extra of pytest-djasync)"
)
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_GRACE_S = 2  # how long a stopping uvicorn lets unfinished responses finish
_SETTLE_S = 2.0
# uvicorn closes a connection idle for 5 s, and httpx reuses one idle for up to 5 s: on a slow
# machine a request sent as the server closes its connection fails (httpx.ReadError). A test
# server keeps idle connections until it stops.
_KEEP_ALIVE_S = 3600

_running: set[LiveServer] = set()


class UvicornMissing(ImportError):
    """uvicorn is not installed."""


class StartupError(RuntimeError):
    """uvicorn did not start; the message is uvicorn's own error where it gave one."""


def named_requests(app: ASGIApp) -> ASGIApp:
    """``app``, with each request named in findings (``"GET /path/"``) whatever app it is."""

    async def named(scope: Scope, receive: Receive, send: Send) -> None:
        tokens = serving(f"{scope.get('method', '?')} {scope.get('path', '?')}")
        try:
            await app(scope, receive, send)
        finally:
            served(tokens)

    return named


class _ErrorLog(logging.Handler):
    """The messages uvicorn logs while it starts: the reason it gives when it cannot."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _load_uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise UvicornMissing(MISSING_UVICORN) from exc
    return uvicorn


class LiveServer:
    """The project's ASGI app (or ``app``) served by uvicorn on ``http://127.0.0.1:<port>``.

    ``port=0`` (the default) takes a free port. Like pytest-django's ``live_server``, the app
    is built once, when the server starts: settings Django reads while building it
    (``MIDDLEWARE``, ``ASGI_APPLICATION``) stay as they were then, while settings read per
    request (``ALLOWED_HOSTS``, ``DEBUG``, ``ROOT_URLCONF``) follow a test's overrides.
    """

    def __init__(self, app: ASGIApp | None = None, *, port: int = 0) -> None:
        self._app = app
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._sockets: list[socket.socket] = []
        self._allowed_host: modify_settings | None = None
        self._given_up: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()  # loop only

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __str__(self) -> str:
        return self.url

    def __add__(self, other: str) -> str:
        return f"{self.url}{other}"

    def __repr__(self) -> str:
        return f"<LiveServer listening at {self.url}>"

    def start(self) -> None:
        """Serve; return once uvicorn listens, or raise ``StartupError`` with its reason."""
        uvicorn = _load_uvicorn()
        config = uvicorn.Config(
            named_requests(self._app or django_asgi_app()),
            host=HOST,
            port=self.port,
            loop="asyncio",
            lifespan="off",
            log_config=None,  # leave the logging setup to pytest: uvicorn's errors are captured
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=_GRACE_S,
            timeout_keep_alive=_KEEP_ALIVE_S,
        )
        errors = _ErrorLog()
        logger = logging.getLogger("uvicorn.error")
        logger.addHandler(errors)
        try:
            try:
                config.load()  # its imports run here, not in a watched step of the server's loop
            except (Exception, SystemExit) as exc:
                raise StartupError(self._failure(errors.messages, exc)) from exc
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()
            self._wait_until_started(errors.messages)
        finally:
            logger.removeHandler(errors)
        self._allow_host()
        _running.add(self)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # uvicorn's failed startup is a SystemExit
            self._error = exc

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def _wait_until_started(self, uvicorn_errors: list[str]) -> None:
        server, thread = self._server, self._thread
        assert server is not None
        assert thread is not None
        deadline = _clock.monotonic() + _START_TIMEOUT_S
        while not server.started and thread.is_alive() and _clock.monotonic() < deadline:
            thread.join(0.01)  # returns at once if the thread ends
        if not server.started:
            self._shut_down()
            raise StartupError(self._failure(uvicorn_errors, self._error))
        self._sockets = [sock for listener in server.servers for sock in listener.sockets]
        self.port = self._sockets[0].getsockname()[1]

    def _failure(self, uvicorn_errors: list[str], error: BaseException | None) -> str:
        reason = "; ".join(uvicorn_errors)
        if not reason:
            reason = repr(error) if error else f"no answer within {_START_TIMEOUT_S:.0f} s"
        return f"live_asgi_server: uvicorn could not start on {HOST}:{self.port}: {reason}"

    def settle(self, timeout: float = _SETTLE_S) -> None:
        """Wait (at most ``timeout`` seconds) for the requests being served now to finish, so
        what they do after sending their response is recorded before the caller moves on."""
        loop, server = self._loop, self._server
        if loop is None or server is None or not server.started:
            return
        try:
            done = asyncio.run_coroutine_threadsafe(
                _requests_done(server, self._given_up, timeout), loop
            )
        except RuntimeError:  # the loop has closed
            return
        with contextlib.suppress(FutureTimeout):
            done.result(timeout + 1)

    def stop(self) -> None:
        """Stop serving, join the thread, and check that the listening sockets are closed."""
        _running.discard(self)
        if self._allowed_host is not None:
            self._allowed_host.disable()
            self._allowed_host = None
        if self._thread is None:
            return
        self._shut_down()
        leftovers = [sock for sock in self._sockets if sock.fileno() != -1]
        if leftovers:
            raise RuntimeError(f"live_asgi_server: {HOST}:{self.port} is still bound after stop")

    def _shut_down(self) -> None:
        server, thread = self._server, self._thread
        assert server is not None
        assert thread is not None
        server.should_exit = True
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"live_asgi_server: thread {THREAD_NAME!r} did not stop")
        self._thread = None

    def _allow_host(self) -> None:
        """Accept the server's own host name, as pytest-django's ``live_server`` does."""
        from django.conf import settings
        from django.test.utils import modify_settings

        if not settings.configured:
            return
        self._allowed_host = modify_settings(ALLOWED_HOSTS={"append": HOST})
        self._allowed_host.enable()


async def _requests_done(
    server: uvicorn.Server, given_up: weakref.WeakSet[asyncio.Task[None]], timeout: float
) -> None:
    """Wait for the requests in flight; one that outlived a wait before (a stream a test left
    open) is not waited for again."""
    tasks = set(server.server_state.tasks) - set(given_up)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        given_up.update(pending)


def settle_all(timeout: float = _SETTLE_S) -> None:
    """``settle()`` every running server: the end of a test's call phase waits for its requests."""
    for server in list(_running):
        server.settle(timeout)
