"""Coarse watching of event loops that asyncio does not step itself (uvloop).

uvloop runs its callbacks in C, so timing ``asyncio.Handle._run`` never sees them. While such a
loop runs, the watchdog sends it a heartbeat (``call_soon_threadsafe``) at each poll and samples
the loop thread's stack while a beat is overdue. A beat that waited past the threshold is a
stall when most samples show one place in the project's code; a backlog of many short
callbacks shows many places and is not reported. Coarser than per-step timing: the duration
runs from the beat that caught the stall, and the blocking-call guard cannot tell a uvloop
step from idle time, so only stalls are found.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from pytest_djasync import _clock, findings, patching

_perf = _clock.perf_counter
_MAX_SAMPLES = 200
_AGREEMENT = 0.6  # the share of samples one user location needs to be called the stall's


class _Watched:
    """One running non-asyncio loop and its heartbeat."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.ident = threading.get_ident()
        self.thread = threading.current_thread().name
        self.sent = 0.0  # when the pending beat was sent; 0.0 when none is pending
        self.samples: list[findings.Stack] = []


_watched: dict[int, _Watched] = {}


def install() -> list[patching.Patch]:
    """Watch uvloop's loops from now on, if uvloop is imported; cheap to call per test."""
    uvloop = sys.modules.get("uvloop")
    loop_class = getattr(uvloop, "Loop", None)
    if loop_class is None or getattr(loop_class.run_forever, "_djasync", False):
        return []
    return [patching.install(loop_class, "run_forever", _registering(loop_class.run_forever))]


def _registering(run_forever: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(run_forever)
    def wrapper(loop: Any) -> Any:
        _watched[id(loop)] = _Watched(loop)
        try:
            return run_forever(loop)
        finally:
            _watched.pop(id(loop), None)

    wrapper._djasync = True  # type: ignore[attr-defined]
    return wrapper


def watching() -> bool:
    """Whether a loop gets heartbeats (the watchdog polls faster then: each poll sends one)."""
    return bool(_watched)


def poll(threshold: float, frames: dict[int, Any]) -> bool:
    """Send beats and sample overdue loops; True while one is overdue (poll fast then)."""
    overdue = False
    now = _perf()
    for watched in list(_watched.values()):
        if not watched.sent:
            _send(watched, now, threshold)
        elif now - watched.sent >= threshold / 4:
            overdue = True
            frame = frames.get(watched.ident)
            if frame is not None and len(watched.samples) < _MAX_SAMPLES:
                watched.samples.append(findings.capture(frame))
    return overdue


def _send(watched: _Watched, now: float, threshold: float) -> None:
    watched.sent = now
    watched.samples = []
    try:
        watched.loop.call_soon_threadsafe(_beat, watched, now, threshold)
    except RuntimeError:  # the loop closed between the check and the call
        watched.sent = 0.0


def _beat(watched: _Watched, sent: float, threshold: float) -> None:
    lag = _perf() - sent
    samples, watched.samples = watched.samples, []
    watched.sent = 0.0
    if lag >= threshold and findings.recording() and not _debugging():
        try:
            _judge(watched, lag, samples)
        except Exception as exc:  # never let the detector break the application
            findings.internal_error("judging a uvloop heartbeat", exc)


def _debugging() -> bool:
    from pytest_djasync.watchdog import debugger_attached

    return debugger_attached()


def _judge(watched: _Watched, lag: float, samples: list[findings.Stack]) -> None:
    # Samples taken during a first-time import name no place (``most_seen``) but count
    # against the agreement below: here an import is only sampled, not timed.
    most = findings.most_seen(samples)
    if most is None:
        return  # nothing seen during the wait: no evidence the loop itself was stuck
    place, seen, stack = most
    if place is None or seen < _AGREEMENT * len(samples):
        return  # many places: a backlog of short callbacks, not one stall
    from pytest_djasync.watchdog import stall_fix

    findings.record(
        findings.Finding(
            kind=findings.STALL,
            what="event loop step",
            duration_ms=lag * 1000,
            stack=stack,
            location=place,
            request=None,
            fix=stall_fix(stack),
            thread=watched.thread,
            note="uvloop runs callbacks in C: timed by a heartbeat, so the duration is"
            " approximate",
        )
    )
