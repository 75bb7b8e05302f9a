"""The streaming ASGI transport and the app factory behind ``asgi_client``.

httpx's own ``ASGITransport`` collects the whole response body before it returns, so a test
cannot see a streaming response arrive chunk by chunk, and it answers ``http.disconnect`` as
soon as the body is read, which makes Django 5+ cancel the view. This transport behaves like an
ASGI server instead: the request body is streamed in, in pieces of at most 64 KiB with a loop
iteration between them as a server reads them off a socket, ``receive()`` blocks until the client
goes away, and every ``http.response.body`` message reaches the client as its own chunk.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from pytest_djasync.findings import serving

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_BODY_PIECE = 64 * 1024  # what a server hands the app at a time (uvicorn's flow-control mark)
_BODY_QUEUE_SIZE = 8  # enough to keep the app busy, small enough to apply back-pressure
_CLOSE_GRACE_S = 5.0  # how long aclose() lets disconnected apps finish before cancelling them


def django_asgi_app() -> ASGIApp:
    """Return the project's ASGI application, built now from the current settings.

    ``settings.ASGI_APPLICATION`` (a dotted path, as Channels and Daphne use) wins when set;
    otherwise, or when it names a plain ``ASGIHandler`` instance, a fresh ``ASGIHandler``, so
    middleware and URLconf settings in force now apply.
    """
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.utils.module_loading import import_string

    dotted = getattr(settings, "ASGI_APPLICATION", None)
    if dotted:
        app: ASGIApp = import_string(dotted)
        if type(app) is not ASGIHandler:
            return app
        # The usual ``asgi.py`` (``application = get_asgi_application()``, which Daphne wants
        # in ASGI_APPLICATION) loaded its middleware when first imported; build a fresh one.
    handler: ASGIApp = ASGIHandler()  # type: ignore[assignment]
    return handler


def build_scope(request: httpx.Request, client: tuple[str, int], root_path: str) -> Scope:
    url = request.url
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "root_path": root_path,
        "headers": [(key.lower(), value) for key, value in request.headers.raw],
        "server": (url.host, url.port or (443 if url.scheme == "https" else 80)),
        "client": client,
    }


class ClientDisconnected(OSError):
    """Raised by ``send`` once the client is gone, to an app that does not listen for it.

    The ASGI spec's "disconnected client" rule. An app that waits in ``receive`` (Django 5.0+,
    Starlette) hears of the disconnect there and stops itself; one that never calls
    ``receive`` again (Django 4.2 streaming a response) would otherwise stream on forever.
    """


class _Exchange:
    """One request/response between the client and the app, seen from both ends."""

    def __init__(self, request: httpx.Request) -> None:
        self._body = request.stream
        self._body_iter: AsyncIterator[bytes] | None = None
        self._body_done = False
        self._chunk = b""  # the client's chunk being handed over piece by piece
        self._offset = 0
        self.started = False  # the response's start message arrived
        # Set once the response started, or the app returned without starting one.
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.disconnected = asyncio.Event()
        self._listening = 0  # receive() calls waiting for the disconnect
        self.unheard = False  # the client left while the app was not listening
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue(_BODY_QUEUE_SIZE)

    async def receive(self) -> Message:
        if self.disconnected.is_set():
            return {"type": "http.disconnect"}
        if self._body_done:
            # Like a server: block until the client goes away, not a moment sooner.
            self._listening += 1
            try:
                await self.disconnected.wait()
            finally:
                self._listening -= 1
            return {"type": "http.disconnect"}
        if self._offset < len(self._chunk):
            # A client's body often comes as one chunk (``content=``, ``files=``): handed over
            # whole, Django would spool megabytes in one loop step, which no server makes it do.
            await asyncio.sleep(0)
        else:
            self._chunk, self._offset = await self._next_chunk(), 0
            if self._body_done:
                return {"type": "http.request", "body": b"", "more_body": False}
        piece = self._chunk[self._offset : self._offset + _BODY_PIECE]
        self._offset += len(piece)
        return {"type": "http.request", "body": piece, "more_body": True}

    async def _next_chunk(self) -> bytes:
        if self._body_iter is None:
            assert isinstance(self._body, httpx.AsyncByteStream)
            self._body_iter = self._body.__aiter__()
        try:
            return await self._body_iter.__anext__()
        except StopAsyncIteration:
            self._body_done = True
            return b""

    def disconnect(self) -> None:
        """The client goes away."""
        if not self.disconnected.is_set():
            self.unheard = not self._listening
            self.disconnected.set()

    async def send(self, message: Message) -> None:
        if self.unheard:
            raise ClientDisconnected("the client disconnected")
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
            self.started = True
            self.answer()
        elif message["type"] == "http.response.body" and not self.disconnected.is_set():
            body = message.get("body", b"")
            if body:
                await self._put(body)
            if not message.get("more_body", False):
                await self._put(None)

    def answer(self, *_: object) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    async def _put(self, item: bytes | None) -> None:
        if not self.chunks.full():  # the usual case: no waiting, so no helper tasks either
            self.chunks.put_nowait(item)
            return
        # A client that stopped reading must not leave the app blocked on a full queue.
        put = asyncio.ensure_future(self.chunks.put(item))
        gone = asyncio.ensure_future(self.disconnected.wait())
        try:
            await asyncio.wait({put, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            put.cancel()
            gone.cancel()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange, task: asyncio.Task[None], raise_errors: bool) -> None:
        self._exchange = exchange
        self._task = task
        self._raise_errors = raise_errors

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._exchange.chunks
        while True:
            if chunks.empty():
                chunk = await _first_of(chunks.get(), self._task)
            else:  # the app is ahead of the client: no waiting, so no helper task either
                chunk = chunks.get_nowait()
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        # Waiting for the app means a test sees all of a request's work done once the
        # response is closed: signals, ``response.close()``, thread hops.
        self._exchange.disconnect()
        try:
            if self._exchange.unheard:  # it stops at its next send(); one that sends no more
                # (Django 4.2 awaiting inside a stream) gets what a server shutting down gives
                await _finish_or_cancel({self._task})
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise
        except ClientDisconnected:
            pass  # the app streamed on after the test closed the response: told to stop
        except Exception:
            if self._raise_errors:
                raise


async def _finish_or_cancel(tasks: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Give disconnected apps the time a server shutting down gives them, then cancel the
    ones still running; the ones that finished."""
    done, stuck = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
    for task in stuck:
        task.cancel()
    return done


async def _first_of(get: Awaitable[bytes | None], task: asyncio.Task[None]) -> bytes | None:
    """The next chunk, or ``None`` once the app finished without sending more."""
    getter = asyncio.ensure_future(get)
    try:
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        getter.cancel()
        raise
    if getter.done():
        return getter.result()
    getter.cancel()
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    return None


class ASGIStreamingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that serves requests with an ASGI app the way a server would.

    ``app`` is the application or a zero-argument factory for it (``app_factory``); the factory
    runs on the first request, so configuration changed before then is honoured.
    """

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        app_factory: Callable[[], ASGIApp] | None = None,
        raise_app_exceptions: bool = True,
        root_path: str = "",
        client: tuple[str, int] = ("127.0.0.1", 123),
    ) -> None:
        if (app is None) == (app_factory is None):
            raise TypeError("pass exactly one of app= and app_factory=")
        self._app = app
        self._app_factory = app_factory
        self._raise_errors = raise_app_exceptions
        self._root_path = root_path
        self._client = client
        self._pending: dict[asyncio.Task[None], _Exchange] = {}

    @property
    def app(self) -> ASGIApp:
        if self._app is None:
            assert self._app_factory is not None
            self._app = self._app_factory()
        return self._app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self.app
        exchange = _Exchange(request)
        scope = build_scope(request, self._client, self._root_path)
        context = contextvars.copy_context()
        context.run(serving, f"{request.method} {request.url.path}")
        # A task copies the context current at its creation (``create_task(context=)`` is 3.11+).
        task: asyncio.Task[None] = context.run(
            asyncio.ensure_future, app(scope, exchange.receive, exchange.send)
        )
        self._pending[task] = exchange
        task.add_done_callback(self._forget)
        task.add_done_callback(exchange.answer)
        try:
            await exchange.answered
        except BaseException:
            # The caller gave up (cancelled, timed out) before the response started: for the
            # app that is a client that went away.
            exchange.disconnected.set()
            raise
        if not exchange.started:
            return await self._no_response(task, exchange)
        return httpx.Response(
            exchange.status,
            headers=exchange.headers,
            stream=_ResponseStream(exchange, task, self._raise_errors),
            request=request,
        )

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)

    async def _no_response(self, task: asyncio.Task[None], exchange: _Exchange) -> httpx.Response:
        exchange.disconnected.set()
        error = task.exception() if not task.cancelled() else None
        if error is not None and self._raise_errors:
            raise error
        if error is None and self._raise_errors:
            raise RuntimeError("the ASGI app returned without sending a response")
        return httpx.Response(500)

    async def aclose(self) -> None:
        """Tell apps still serving unclosed responses that their client left; cancel the ones
        that have not finished after a grace period, as a server does when it shuts down."""
        pending = dict(self._pending)
        if not pending:
            return
        for exchange in pending.values():
            exchange.disconnect()
        done = await _finish_or_cancel(set(pending))
        for task in done:  # its error is the response's, which the test never read
            if not task.cancelled():
                task.exception()
        await asyncio.gather(*(set(pending) - done), return_exceptions=True)

    def cancel_pending(self) -> None:
        """Disconnect the apps serving responses that were never closed (sync teardown).

        A disconnect, not ``Task.cancel()``: Django's handler turns a disconnect into the
        cancellation of the view and then finishes the request (``request_finished``, the body
        file closed), whereas cancelling the handler's own task would leave the view running.
        The test's loop, idle between the test and its closing, is run until they are done
        (``aclose``); one running in another thread is told, and delivers it itself.
        """
        loops = {task.get_loop() for task in self._pending}
        for loop in loops:
            if loop.is_closed():
                continue
            if loop.is_running() or len(loops) > 1:
                for task, exchange in list(self._pending.items()):
                    if task.get_loop() is loop:
                        loop.call_soon_threadsafe(exchange.disconnect)
            else:
                loop.run_until_complete(self.aclose())


class ASGIClient(httpx.AsyncClient):
    """What ``asgi_client`` is: an ``httpx.AsyncClient``, with Django's test log-in."""

    async def aforce_login(self, user: Any, backend: str | None = None) -> None:
        """Log ``user`` in without credentials, as Django's test clients' ``force_login``
        does: a session saved in the session store, and its cookie set on this client."""
        from asgiref.sync import sync_to_async
        from django.test import Client

        django_client = Client()  # Django's own way of building the session (4.2 has no async)
        await sync_to_async(django_client.force_login)(user, backend)
        for morsel in django_client.cookies.values():
            self.cookies.set(morsel.key, morsel.value)
