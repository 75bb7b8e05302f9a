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
A request cancelled (a timeout around it) or failed (``send()`` raised) was in flight until then:
it counts like the others, marked with how it ended.

Each request keeps the project's frames that sent it, so a failure can point at the code under
test, not only at the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import math
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx

from pytest_djasync import _clock, findings, patching
from pytest_djasync.client import ASGIStreamingTransport

# asyncio.TaskGroup is Python 3.11+.
TOGETHER = "asyncio.gather(...)" + (
    " or an asyncio.TaskGroup" if sys.version_info >= (3, 11) else ""
)

_IN_PROCESS = (httpx.ASGITransport, httpx.WSGITransport, ASGIStreamingTransport)
_perf = _clock.perf_counter

_SENT_FROM_DEPTH = 3  # the project's frames kept per call: the helper, its caller, theirs
Outcome = Literal["ok", "cancelled", "failed", "unfinished"]


@dataclasses.dataclass
class Call:
    method: str
    url: str
    start: float
    end: float | None
    is_async: bool
    task: int | None  # serial number of the asyncio task that sent it (async clients)
    thread_sensitive: bool  # sent from sync code queued on asgiref's thread-sensitive executor
    location: findings.Frame | None
    queued: float = 0.0  # seconds from send() until it had a connection (httpcore only)
    sent_from: findings.Stack = ()  # the project's frames of the sending stack, innermost first
    # "cancelled" or "failed": its end is when that happened; "unfinished": still in flight
    # when the recording stopped (a task the test left running), counted until then
    outcome: Outcome = "ok"
    # Answered before its task let the loop run anything else (async only): no I/O, no timer,
    # as a mock without a delay answers. Such calls cannot overlap, whatever the code does.
    at_once: bool = False
    on_loop: bool = False  # a sync client's call made on a thread running an event loop

    @property
    def duration(self) -> float:
        return (self.end or self.start) - self.start

    @property
    def label(self) -> str:
        return f"{self.method} {self.url}"

    @property
    def shown(self) -> str:
        """The label on the timeline, with how the call ended unless it was answered."""
        return self.label if self.outcome == "ok" else f"{self.label} ({self.outcome})"


class Recorder:
    """The outbound requests of one test or block; ``root`` shortens the timeline's paths."""

    def __init__(self, root: Path | None = None) -> None:
        self.calls: list[Call] = []
        self.root = root
        self.stopped: float | None = None  # when it stopped recording

    @property
    def finished(self) -> list[Call]:
        """The calls that ended, and, once it stopped, those still in flight then: a gather
        that raised on its first failure leaves its other calls running."""
        stopped = self.stopped
        return [
            call
            if call.end is not None
            else dataclasses.replace(call, end=stopped, outcome="unfinished")
            for call in self.calls
            if call.end is not None or stopped is not None
        ]

    @property
    def peak_concurrency(self) -> int:
        """The most requests that were in flight together at any moment."""
        return _peak(self.finished)

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
        for cause in _CAUSES:  # the most specific evidence first
            found = cause(calls)
            if found is not None:
                return found
        return None

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


# -- likely causes: each reads the finished calls and speaks only on evidence -------------------


def _events(calls: list[Call]) -> list[tuple[float, int]]:
    # An end sorts before a start at the same instant: a call that begins as another ends did
    # not overlap it.
    return sorted([(c.start, 1) for c in calls] + [(c.end or c.start, -1) for c in calls])


def _peak(calls: list[Call]) -> int:
    peak = current = 0
    for _, step in _events(calls):
        current += step
        peak = max(peak, current)
    return peak


def _peak_again(calls: list[Call], peak: int) -> bool:
    """Whether as many calls as ever were in flight again after one had ended: later calls
    taking the slots that earlier ones freed, the mark of a semaphore or a worker pool."""
    current = 0
    ended = False
    for _, step in _events(calls):
        current += step
        if step < 0:
            ended = True
        elif ended and current == peak:
            return True
    return False


def _thread_sensitive(calls: list[Call]) -> str | None:
    sync = [c for c in calls if not c.is_async]
    # One sync call has nothing to queue behind, and calls that overlapped did not queue.
    if len(sync) < 2 or not all(c.thread_sensitive for c in sync) or _peak(sync) > 1:
        return None
    return (
        "the sync calls ran through sync_to_async(..., thread_sensitive=True) (the"
        " default), so they queued on asgiref's single thread-sensitive executor; use"
        " sync_to_async(func, thread_sensitive=False) or an httpx.AsyncClient"
    )


def _pool_wait(calls: list[Call]) -> str | None:
    """The cause when calls waited for a connection about as long as a call takes."""
    if _peak(calls) >= len(calls):
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


def _sync_on_the_loop(calls: list[Call]) -> str | None:
    """A sync client's call on the loop holds back every other call until it is answered."""
    blocking = [c for c in calls if c.on_loop]
    if not blocking or _peak(calls) > 1:
        return None
    names = _names([c.label for c in blocking])
    if len(blocking) == 1:
        return (
            f"the sync call {names} ran on the event loop, which could start nothing else until"
            " it was answered: send it with an httpx.AsyncClient"
        )
    return (
        f"the sync calls {names} ran on the event loop, which could start nothing else until"
        " each was answered: send them with an httpx.AsyncClient"
    )


def _one_task(calls: list[Call]) -> str | None:
    tasks = {c.task for c in calls if c.is_async}
    if len(tasks) != 1 or None in tasks or _peak(calls) > 1:
        return None
    return (
        "the calls were awaited one after another in one task; start them together with"
        f" {TOGETHER}"
    )


def _sync_in_turn(calls: list[Call]) -> str | None:
    """Sync calls only, none beside another: one thread made them in turn (a loop in one
    sync_to_async function)."""
    if any(c.is_async for c in calls) or _peak(calls) > 1:
        return None
    return (
        "the sync calls were made one after another (one thread sends one request at a"
        " time); send them from threads of their own, sync_to_async(func,"
        f" thread_sensitive=False) for each, started together with {TOGETHER}, or use an"
        " httpx.AsyncClient"
    )


def _tasks_in_turn(calls: list[Call]) -> str | None:
    tasks = {c.task for c in calls if c.is_async}
    if len(tasks) < 2 or _peak(calls) > 1:
        return None
    came = f"the calls came from {len(tasks)} tasks, but each"
    if all(c.at_once for c in calls if c.is_async):
        return (
            f"{came} was answered before the next was sent: mocks that answer at once cannot"
            " overlap (give them a delay, side_effect=latency(0.05))"
        )
    return (
        f"{came} started only after the previous one had ended: a limit of one held across"
        " the call (an asyncio.Lock, asyncio.Semaphore(1), httpx.Limits(max_connections=1))"
        " serializes them, or each task was awaited before the next was created (create them"
        " all, then await them together)"
    )


def _capped(calls: list[Call]) -> str | None:
    peak = _peak(calls)
    # A peak as high as there are URLs to fetch caps nothing, whatever was sent after it (a
    # retry); nor does a peak never reached again once calls began to end (a call left out).
    if not 1 < peak < len({c.label for c in calls}) or not _peak_again(calls, peak):
        return None
    return (
        f"at most {peak} ran at once: a semaphore, a connection-pool limit"
        " (httpx.Limits) or a worker pool of that size is capping the fan-out"
    )


def _retried(calls: list[Call]) -> str | None:
    sent: dict[str, list[Call]] = {}
    for call in sorted(calls, key=lambda c: c.start):
        sent.setdefault(call.label, []).append(call)
    again = {label: tries for label, tries in sent.items() if len(tries) > 1 and _in_turn(tries)}
    if not again:
        return None
    said = "; ".join(
        f"{label} was sent {len(tries)} times one after another" for label, tries in again.items()
    )
    return (
        f"{said} ({'a retry' if len(again) == 1 else 'retries'}): the fan-out lasts as long as"
        " all its attempts, while within= compares with the slowest single request"
    )


def _in_turn(tries: list[Call]) -> bool:
    return all(later.start >= (earlier.end or 0.0) for earlier, later in itertools.pairwise(tries))


def _late(calls: list[Call]) -> str | None:
    """Name the calls that started only once every call started before them had ended."""
    ordered = sorted(calls, key=lambda c: c.start)
    late: list[Call] = []
    ended = ordered[0].end or ordered[0].start
    for call in ordered[1:]:
        if call.start >= ended:
            late.append(call)
        ended = max(ended, call.end or call.start)
    if not late:
        return None
    names = _names([c.label for c in late])
    if len(late) == 1:
        return (
            f"{names} started after the calls before it had ended: it was not started together"
            " with them (left out of the gather, or awaited after it), or something it awaited"
            " first (a lock, a sync call) held it back"
        )
    return (
        f"{names} each started after the calls before it had ended: they were not started"
        " together with those (left out of the gather, or awaited after it), or something they"
        " awaited first (a lock, a sync call) held them back"
    )


def _names(labels: list[str], most: int = 3) -> str:
    if len(labels) > most:
        return ", ".join(labels[:most]) + f" and {len(labels) - most} more"
    if len(labels) == 1:
        return labels[0]
    return ", ".join(labels[:-1]) + f" and {labels[-1]}"


_CAUSES: tuple[Callable[[list[Call]], str | None], ...] = (
    _thread_sensitive,
    _pool_wait,
    _sync_on_the_loop,
    _one_task,
    _sync_in_turn,
    _tasks_in_turn,
    _capped,
    _retried,
    _late,
)


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


def timeline(recorder: Recorder, headline: str, width: int = 40, root: Path | None = None) -> str:
    """The calls as bars on one time axis, where the project sent them from, with the peak,
    the sum, the slowest and a cause. ``root`` (else the recorder's) shortens the paths."""
    calls = sorted(recorder.finished, key=lambda c: c.start)
    lines = [headline, ""]
    if calls:
        lines += _bars(calls, width)
        lines += _senders(calls, root if root is not None else recorder.root)
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


def _bars(calls: list[Call], width: int) -> list[str]:
    origin = min(c.start - c.queued for c in calls)
    span = max(c.end or c.start for c in calls) - origin
    scale = width / max(span, 1e-9)
    label_width = min(60, max(len(c.shown) for c in calls))
    lines = []
    dotted = False
    for call in calls:
        left = int((call.start - call.queued - origin) * scale)
        queued = round(call.queued * scale)
        length = max(1, round(call.duration * scale))
        dotted = dotted or queued > 0
        bar = (" " * left + "." * queued + "#" * length).ljust(width)[:width]
        label = call.shown[:label_width]
        lines.append(f"  {label:<{label_width}} |{bar}| {call.duration * 1000:5.0f} ms")
    if dotted:
        lines.append("  (. waiting for a connection from the pool, # in flight)")
    return lines


def _senders(calls: list[Call], root: Path | None) -> list[str]:
    """One line per chain of the project's frames that sent calls, in the order they started:
    the bars say when, these say which line of the code under test to read."""
    groups: dict[findings.Stack, list[Call]] = {}
    for call in calls:
        groups.setdefault(call.sent_from, []).append(call)
    if set(groups) == {()}:
        return []  # no call passed through the project's code: there is no line to point at
    lines = []
    for chain, sent in groups.items():
        where = " < ".join(
            f"{frame.relative_path(root)}:{frame.line} in {frame.function}" for frame in chain
        )
        count = f"{len(sent)} call{'s' if len(sent) > 1 else ''}"
        if len(groups) > 1:  # which calls, when some came from elsewhere
            count += ": " + _names(list(dict.fromkeys(c.label for c in sent)))
        lines.append(f"  sent from {where or 'outside the project code'} ({count})")
    return lines


# -- recording ----------------------------------------------------------------------------------

_recorders: list[Recorder] = []


def _outbound(client: httpx.Client | httpx.AsyncClient, request: httpx.Request) -> bool:
    transport = client._transport_for_url(request.url)
    return not isinstance(transport, _IN_PROCESS)


def _begin(request: httpx.Request, is_async: bool) -> Call:
    url = request.url
    stack = findings.capture(sys._getframe(2))
    call = Call(
        method=request.method,
        url=f"{url.host}{url.path}",
        start=_perf(),
        end=None,
        is_async=is_async,
        task=_task_number(asyncio.current_task()) if is_async else None,
        thread_sensitive=not is_async and _in_thread_sensitive_executor(),
        on_loop=not is_async and asyncio._get_running_loop() is not None,
        location=findings.user_frame(stack),
        sent_from=_project_frames(stack),
    )
    for recorder in list(_recorders):
        recorder.calls.append(call)
    return call


# A task's id() is reused once it is freed: tasks awaited one by one would share a few ids.
# The dictionary holds them weakly, so numbering a task does not keep it alive.
_task_numbers: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
_serials = itertools.count(1)
_numbering = threading.Lock()  # loops in other threads (a live server's) send too


def _task_number(task: asyncio.Task[Any] | None) -> int | None:
    if task is None:
        return None
    with _numbering:
        number = _task_numbers.get(task)
        if number is None:
            number = _task_numbers[task] = next(_serials)
    return number


def _project_frames(stack: findings.Stack) -> findings.Stack:
    """The project's frames of the sending stack, innermost first: the helper that sent the
    request and the code that called it."""
    ours = (frame for frame in reversed(stack) if findings.is_user_path(frame.path))
    return tuple(itertools.islice(ours, _SENT_FROM_DEPTH))


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
    except asyncio.CancelledError:  # a timeout around it, or a sibling task failing
        call.outcome = "cancelled"
        raise
    except BaseException:
        call.outcome = "failed"
        raise
    finally:
        wire.hand_back(request)
        call.end = wire.read if wire.read is not None else _perf()


class _Probe:
    """Whether the running loop has run another callback since the probe was made: a task
    that waits for anything (I/O, a timer, a lock) lets it, and this callback, queued first,
    runs before whatever wakes the task. Structural, so a busy machine cannot fool it."""

    def __init__(self) -> None:
        self.loop_ran = False
        self._handle = asyncio.get_running_loop().call_soon(self._ran)

    def _ran(self) -> None:
        self.loop_ran = True

    def stop(self) -> bool:
        self._handle.cancel()
        return self.loop_ran


def _timing_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        if not _recorders or not _outbound(self, request):
            return await original(self, request, **kwargs)
        call = _begin(request, is_async=True)
        probe = _Probe()
        try:
            with _timing(request, call, is_async=True) as wire:
                response = await original(self, request, **kwargs)
                wire.hand_back_all(response)
                return response
        finally:
            call.at_once = not probe.stop()

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
    recorder.stopped = _perf()


def pin(owner: object) -> None:
    """Keep the wrappers installed while ``owner`` (a whole watched session) runs."""
    with _lock:
        _shared.acquire(owner)


def unpin(owner: object) -> None:
    with _lock:
        _shared.release(owner)
