"""What the plugin needs from Django itself, imported lazily so Django loads only when used."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from pytest_djasync import patching
from pytest_djasync.findings import served, serving


@contextlib.contextmanager
def test_client_signals() -> Iterator[None]:
    """Keep Django from closing the test's database connection at each request's start and end.

    Django's own test clients do the same: ``close_old_connections`` would otherwise close the
    connection that holds the test's transaction.
    """
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    started = request_started.disconnect(close_old_connections)
    finished = request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        if started:
            request_started.connect(close_old_connections)
        if finished:
            request_finished.connect(close_old_connections)


def _naming_requests(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def __call__(self: Any, scope: Mapping[str, Any], *args: Any) -> Any:
        tokens = serving(f"{scope.get('method', '?')} {scope.get('path', '?')}")
        try:
            return await original(self, scope, *args)
        finally:
            served(tokens)

    return __call__


def _naming_sync_requests(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __call__(self: Any, environ: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        # asgiref copies the context into the loop an async view runs on, so it names it too
        request = f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '?')}"
        tokens = serving(request)
        try:
            return original(self, environ, *args, **kwargs)
        finally:
            served(tokens)

    return __call__


def track_requests() -> list[patching.Patch]:
    """Make findings say which request was being served, whichever Django entry point serves it:
    ``ASGIHandler`` (``asgi_client``, uvicorn), the test ``AsyncClient``'s handler, or the sync
    test ``Client``'s (``self.client`` of a ``TestCase``), which runs an async view in a loop of
    its own."""
    try:
        from django.core.handlers.asgi import ASGIHandler
        from django.test.client import AsyncClientHandler, ClientHandler
    except ImportError:  # Django is optional until a test uses it
        return []
    sync_client = _naming_sync_requests(ClientHandler.__call__)
    return [
        *(
            patching.install(owner, "__call__", _naming_requests(owner.__call__))
            for owner in (ASGIHandler, AsyncClientHandler)
        ),
        patching.install(ClientHandler, "__call__", sync_client),
    ]


# Wanted by a watched session (findings say ``while serving:``) and by every crossing recorder,
# the fixtures' included, in runs without ``--djasync`` too (``Crossing.request``).
naming = patching.Shared(track_requests)
