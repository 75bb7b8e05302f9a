"""One async-only middleware for the default stack, and two sync-only ones to switch on in tests.

Django builds the middleware chain once per handler. Under ASGI every sync-only middleware
makes it wrap the rest of the chain in ``async_to_sync`` and the middleware itself in
``sync_to_async``: two thread hops per request for a single header.
"""

import time

from asgiref.sync import markcoroutinefunction
from django.utils.deprecation import MiddlewareMixin


class TimingMiddleware:
    """Add ``X-Elapsed-Ms``: the time the rest of the stack took to produce the response.

    Async-only, so it costs nothing under ASGI. Under WSGI Django adapts it with
    ``async_to_sync``, which still works, just more slowly. For a streaming response the time
    covers producing the response object, not sending its body.
    """

    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        self.get_response = get_response
        # Django tells async middleware apart by this marker; an instance with an
        # ``async def __call__`` is not a coroutine function to ``inspect``.
        markcoroutinefunction(self)

    async def __call__(self, request):
        start = time.perf_counter()
        response = await self.get_response(request)
        response["X-Elapsed-Ms"] = f"{(time.perf_counter() - start) * 1000:.1f}"
        return response


class LegacyHeaderMiddleware(MiddlewareMixin):
    """Old-style hook middleware, as older third-party packages write it.

    ``MiddlewareMixin`` can serve both modes, but this one opts out of async (as code with
    thread-local state must), so under ASGI Django runs ``process_response`` in a thread.
    """

    async_capable = False

    def process_response(self, request, response):
        response["X-Legacy"] = "1"
        return response


class SyncOnlyMiddleware:
    """A plain callable middleware that can only be called synchronously."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response["X-Sync-Only"] = "1"
        return response
