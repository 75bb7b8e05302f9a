"""Recording outbound httpx requests on one clock, to prove that a fan-out really overlaps.

``Client.send`` and ``AsyncClient.send`` are wrapped at class level, so every client counts,
whichever thread it runs in, over the network or mocked by respx. Requests a test client sends
into the application in-process (ASGI or WSGI transports, ``asgi_client``) are not outbound and
are left out.

A request is in flight from the moment it has a connection, not from ``send()``: a request
queued behind a connection-pool limit (``httpx.Limits``) only waits, and counting that wait would
make a capped fan-out look concurrent. httpcore's ``trace`` extension tells when the request got
its connection (its first event) and when its response was read (``response_closed``, before
the connection goes back to the pool). Mocked requests never reach httpcore: ``send()`` times them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from pytest_djasync import findings, patching
from pytest_djasync.client import ASGIStreamingTransport

# asyncio.TaskGroup is Python 3.11+.
TOGETHER = "asyncio.gather(...)" + (
    " or an asyncio.TaskGroup" if sys.version_info >= (3, 11) else ""
)

_IN_PROCESS = (httpx.ASGITransport, httpx.WSGITransport, ASGIStreamingTransport)
_perf = time.perf_counter


@dataclasses.dataclass
class Call:
    method: str
    url: str
    start: float
    end: float | None
    is_async: bool
    task: int | None  # id of the asyncio task that sent it (async clients)
    thread_sensitive: bool  # sent from sync code queued on asgiref's thread-sensitive executor
    location: findings.Frame | None
    queued: float = 0.0  # seconds from send() until it had a connection (httpcore only)

    @property
    def duration(self) -> float:
        return (self.end or self.start) - self.start

    @property
    def label(self) -> str:
        return f"{self.method} {self.url}"


class Recorder:
    """The outbound requests of one test or block."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    @property
    def finished(self) -> list[Call]:
        return [call for call in self.calls if call.end is not None]

    @property
    def peak_concurrency(self) -> int:
        """The most requests that were in flight together at any moment."""
        events = sorted(
            [(c.start, 1) for c in self.finished] + [(c.end or 0.0, -1) for c in self.finished],
            key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
        )
        peak = current = 0
        for _, step in events:
            current += step
            peak = max(peak, current)
        return peak

    @property
    def wall(self) -> float:
        calls = self.finished
        if not calls:
            return 0.0
        return max(c.end or 0.0 for c in calls) - min(c.start for c in calls)

    @property
    def slowest(self) -> float:
        return max((c.duration for c in self.finished), default=0.0)

    @property
    def total(self) -> float:
        return sum(c.duration for c in self.finished)

    def likely_cause(self) -> str | None:
        """Why the calls did not overlap, when the recording shows it."""
        if not self.calls:
            return (
                "no outbound request was recorded: only httpx's clients are (an"
                " httpx.AsyncClient, or an httpx.Client in a thread); requests, urllib3, aiohttp"
                " and other clients are not seen, so their calls cannot be judged"
            )
        calls = self.finished
        if len(calls) < 2:
            return None
        if all(c.thread_sensitive for c in calls if not c.is_async) and any(
            not c.is_async for c in calls
        ):
            return (
                "the sync calls ran through sync_to_async(..., thread_sensitive=True) (the"
                " default), so they queued on asgiref's single thread-sensitive executor; use"
                " sync_to_async(func, thread_sensitive=False) or an httpx.AsyncClient"
            )
        pool = self._pool_wait()
        if pool:
            return pool
        tasks = {c.task for c in calls if c.is_async}
        if len(tasks) == 1 and None not in tasks and self.peak_concurrency == 1:
            return (
                "the calls were awaited one after another in one task; start them together with"
                f" {TOGETHER}"
            )
        if len(tasks) > 1 and self.peak_concurrency == 1:
            return (
                f"the calls came from {len(tasks)} tasks, but each was answered before the next"
                " was sent: mocks that answer at once cannot overlap (give them a delay,"
                " side_effect=latency(0.05)); otherwise a limit of one (asyncio.Semaphore(1),"
                " httpx.Limits(max_connections=1)) is serializing them"
            )
        peak = self.peak_concurrency
        if 1 < peak < len(calls):
            return (
                f"at most {peak} ran at once: a semaphore, a connection-pool limit"
                " (httpx.Limits) or a worker pool of that size is capping the fan-out"
            )
        return None

    def _pool_wait(self) -> str | None:
        """The cause when calls waited for a connection about as long as a call takes."""
        calls = self.finished
        if self.peak_concurrency >= len(calls):
            return None
        typical = sorted(c.duration for c in calls)[len(calls) // 2]
        waited = [c for c in calls if c.queued >= typical / 2 > 0]
        if not waited:
            return None
        longest = max(c.queued for c in waited)
        return (
            f"{len(waited)} of the calls waited for a connection from httpx's pool (up to"
            f" {longest * 1000:.0f} ms): a pool limit (httpx.Limits(max_connections=...)) is"
            " capping the fan-out; size the client's pool for it"
        )

    def check(self, at_least: int, within: float | None = None) -> str | None:
        """``None`` when the fan-out holds, else why not."""
        peak = self.peak_concurrency
        if peak < at_least:
            return f"expected at least {at_least} outbound requests in flight together, saw {peak}"
        if within is not None and self.wall > within * self.slowest:
            return (
                f"the fan-out took {self.wall * 1000:.0f} ms, more than {within:g} x its slowest"
                f" call ({self.slowest * 1000:.0f} ms)"
            )
        return None

    def assert_concurrent(self, at_least: int, within: float | None = None) -> None:
        wrong = expectation_problem(at_least, within)
        if wrong is not None:
            raise ValueError(f"assert_concurrent: {wrong}; e.g. assert_concurrent(3, within=1.5)")
        problem = self.check(at_least, within)
        if problem is not None:
            raise AssertionError(timeline(self, problem))

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self.calls))


def expectation_problem(at_least: object, within: object) -> str | None:
    """What is wrong with a fan-out expectation (the marker's or the fixture's), or None."""
    if not isinstance(at_least, int) or isinstance(at_least, bool) or at_least < 1:
        return f"n must be a whole number >= 1, got {at_least!r}"
    if within is None:
        return None
    if isinstance(within, bool) or not isinstance(within, (int, float)):
        return f"within must be a number >= 1, got {within!r}"
    if not 1 <= within < math.inf:  # NaN compares false both ways: it would pass any check
        return f"within must be a finite factor >= 1, got {within!r}"
    return None


def timeline(recorder: Recorder, headline: str, width: int = 40) -> str:
    """The calls as bars on one time axis, with the peak, the sum, the slowest and a cause."""
    calls = sorted(recorder.finished, key=lambda c: c.start)
    lines = [headline, ""]
    if calls:
        origin = min(c.start - c.queued for c in calls)
        span = max(c.end or c.start for c in calls) - origin
        scale = width / max(span, 1e-9)
        label_width = min(60, max(len(c.label) for c in calls))
        dotted = False
        for call in calls:
            left = int((call.start - call.queued - origin) * scale)
            queued = round(call.queued * scale)
            length = max(1, round(call.duration * scale))
            dotted = dotted or queued > 0
            bar = (" " * left + "." * queued + "#" * length).ljust(width)[:width]
            label = call.label[:label_width]
            lines.append(f"  {label:<{label_width}} |{bar}| {call.duration * 1000:5.0f} ms")
        if dotted:
            lines.append("  (. waiting for a connection from the pool, # in flight)")
        lines.append("")
    lines.append(
        f"  {len(calls)} requests, peak {recorder.peak_concurrency} in flight,"
        f" wall {recorder.wall * 1000:.0f} ms, sum {recorder.total * 1000:.0f} ms,"
        f" slowest {recorder.slowest * 1000:.0f} ms"
    )
    cause = recorder.likely_cause()
    if cause:
        lines.append(f"  likely cause: {cause}")
    return "\n".join(lines)


# -- recording ----------------------------------------------------------------------------------

_recorders: list[Recorder] = []


def _outbound(client: httpx.Client | httpx.AsyncClient, request: httpx.Request) -> bool:
    transport = client._transport_for_url(request.url)
    return not isinstance(transport, _IN_PROCESS)


def _begin(request: httpx.Request, is_async: bool) -> Call:
    task = asyncio.current_task() if is_async else None
    url = request.url
    call = Call(
        method=request.method,
        url=f"{url.host}{url.path}",
        start=_perf(),
        end=None,
        is_async=is_async,
        task=id(task) if task is not None else None,
        thread_sensitive=not is_async and _in_thread_sensitive_executor(),
        location=findings.user_frame(findings.capture(sys._getframe(2))),
    )
    for recorder in list(_recorders):
        recorder.calls.append(call)
    return call


def _in_thread_sensitive_executor() -> bool:
    """True when this sync code runs inside a ``sync_to_async(thread_sensitive=True)`` call."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "thread_handler" and "asgiref" in frame.f_code.co_filename:
            adapter = frame.f_locals.get("self")
            return bool(getattr(adapter, "_thread_sensitive", False))
        frame = frame.f_back  # type: ignore[assignment]
    return False


class _Wire:
    """One call's httpcore trace events: when it had a connection, when its response was read.
    A ``trace`` callback of the caller's own still gets every event."""

    def __init__(self, call: Call, theirs: Any) -> None:
        self.call = call
        self.theirs = theirs
        self.read: float | None = None  # the last response read: a redirect's final one

    def _event(self, name: str) -> None:
        call = self.call
        now = _perf()
        if not call.queued and name.endswith(".started"):  # the first event: it has a connection
            call.queued = max(now - call.start, 1e-9)
            call.start = now
        elif name.endswith(".response_closed.started"):  # the connection is not back yet
            self.read = now

    async def atrace(self, name: str, info: dict[str, Any]) -> None:
        self._event(name)
        if self.theirs is not None:
            await self.theirs(name, info)

    def trace(self, name: str, info: dict[str, Any]) -> None:
        self._event(name)
        if self.theirs is not None:
            self.theirs(name, info)

    def hand_back(self, request: httpx.Request) -> None:
        """Put the caller's own ``trace`` (or none) back where ours is."""
        if request.extensions.get("trace") not in (self.atrace, self.trace):
            return
        if self.theirs is None:
            request.extensions.pop("trace", None)
        else:
            request.extensions["trace"] = self.theirs

    def hand_back_all(self, response: httpx.Response) -> None:
        """Redirects copy the extensions into each new request: the response's and its
        history's requests carry ours too."""
        for hop in [*response.history, response]:
            self.hand_back(hop.request)


@contextlib.contextmanager
def _timing(request: httpx.Request, call: Call, is_async: bool) -> Iterator[_Wire]:
    wire = _Wire(call, request.extensions.get("trace"))
    request.extensions["trace"] = wire.atrace if is_async else wire.trace
    try:
        yield wire
    finally:
        wire.hand_back(request)
        call.end = wire.read if wire.read is not None else _perf()


def _timing_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        if not _recorders or not _outbound(self, request):
            return await original(self, request, **kwargs)
        with _timing(request, _begin(request, is_async=True), is_async=True) as wire:
            response = await original(self, request, **kwargs)
            wire.hand_back_all(response)
            return response

    return send


def _timing_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
        if not _recorders or not _outbound(self, request):
            return original(self, request, **kwargs)
        with _timing(request, _begin(request, is_async=False), is_async=False) as wire:
            response = original(self, request, **kwargs)
            wire.hand_back_all(response)
            return response

    return send


_lock = threading.Lock()


def _wrap_send() -> list[patching.Patch]:
    return [
        patching.install(httpx.AsyncClient, "send", _timing_async(httpx.AsyncClient.send)),
        patching.install(httpx.Client, "send", _timing_sync(httpx.Client.send)),
    ]


_shared = patching.Shared(_wrap_send)


def start(recorder: Recorder) -> Recorder:
    """Send every outbound request to ``recorder``; wraps httpx if nobody has yet."""
    with _lock:
        _shared.acquire(recorder)
        _recorders.append(recorder)
    return recorder


def stop(recorder: Recorder) -> None:
    """Stop feeding ``recorder``; the last one out restores httpx exactly."""
    with _lock:
        if recorder in _recorders:
            _recorders.remove(recorder)
        _shared.release(recorder)


def pin(owner: object) -> None:
    """Keep the wrappers installed while ``owner`` (a whole watched session) runs."""
    with _lock:
        _shared.acquire(owner)


def unpin(owner: object) -> None:
    with _lock:
        _shared.release(owner)
