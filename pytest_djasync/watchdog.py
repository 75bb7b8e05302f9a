"""Loop-stall detection: every asyncio loop step is timed, and a watchdog thread samples long ones.

``asyncio.Handle._run`` runs every callback of every asyncio loop in every thread (task steps
included), so wrapping it at class level times each step with one clock read at each end. A
watchdog thread polls slowly (every threshold) and, once a step has run for a quarter of
the threshold, samples that thread's stack quickly until the step ends, so a finding shows the
code that was running *during* the stall, not the next ``await``.

The loop thread's CPU time, which says whether the loop itself was busy, comes from the
watchdog's snapshots (each poll reads every thread's CPU clock), not from reading CPU clocks at
every step: those are system calls, and steps are many. Where the clocks of other threads
cannot be read (not Linux), every step reads its own.

A long step is only a finding when the loop itself was to blame. Subtracted or excused:
garbage-collection pauses (``gc.callbacks``), time the OS kept the runnable thread off the CPU
(run-queue wait from ``/proc/self/task/<tid>/schedstat`` on Linux), time covered by blocking
calls the guard already reported, time spent importing modules for the first time (see
``imports``), and time the loop thread spent waiting for a GIL that another thread of the
process held (a note naming that thread, not a finding).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any, NamedTuple

from pytest_djasync import _clock, findings, heartbeat
from pytest_djasync.findings import Finding, Stack

_perf = _clock.perf_counter
_thread_time = time.thread_time
_process_time = time.process_time
_MAX_SAMPLES = 200
_FAST_POLLS = 20  # polls a threshold while a step is suspect
_STARVED_SHARE = 0.25  # of the polls it would have made, below which the watchdog was starved
_STARVED_MIN_POLLS = 8  # fewer expected polls are too few to tell a starved watchdog apart
# Top-level packages of debuggers: a trace function of theirs, or a frame of theirs in a stall's
# samples, means a debugger had the loop thread.
_DEBUGGERS = frozenset(
    {"bdb", "pdb", "ipdb", "pudb", "pydevd", "pydevd_frame_evaluator", "debugpy"}
)


class _Snapshot(NamedTuple):
    """Clocks of one loop thread and its neighbours at one moment."""

    t: float
    during: float  # the start of the step the loop thread was running then, 0.0 if idle
    loop_cpu: float | None
    process_cpu: float
    wait: float | None  # seconds runnable but not running (Linux only)
    cpus: dict[int, float]  # CPU seconds of every Python thread, by ident


class _Step:
    """What one thread's loop is doing now; written by that thread, sampled by the watchdog."""

    __slots__ = (
        "explained_cpu",
        "explained_for",
        "explained_s",
        "ident",
        "in_guard",
        "latest_waits",
        "name",
        "native_id",
        "sample_due",
        "sampled_for",
        "samples",
        "samples_taken",
        "schedstat",
        "snaps",
        "start",
        "start_cpu",
        "start_proc",
        "suspect_at",
        "suspect_waits",
    )

    def __init__(self) -> None:
        thread = threading.current_thread()
        self.ident = threading.get_ident()
        self.native_id = threading.get_native_id()
        self.name = thread.name
        self.start = 0.0  # perf_counter() at the start of the running step, 0.0 between steps
        self.start_cpu = 0.0  # this thread's CPU time then, where no snapshot can tell it
        self.start_proc = 0.0  # the process's CPU time then, likewise
        self.samples: list[Stack] = []
        self.samples_taken = 0  # during the step ``sampled_for``; ``samples`` keeps at most 200
        self.sampled_for = 0.0
        self.explained_for = 0.0  # the step that ``explained_s`` belongs to
        self.explained_s = 0.0  # time in that step already reported or excused (see explain)
        self.explained_cpu = 0.0  # CPU time of this thread within ``explained_s``, where known
        self.in_guard = False
        self.schedstat = _open_schedstat(self.native_id)
        snap = _snapshot(self, 0.0)
        self.snaps = (snap, snap)  # the watchdog's last two: (earlier, latest)
        self.suspect_at = 0.0  # when the watchdog first saw the current long step
        self.sample_due = 0.0  # when it would have, had it woken on time (see _first_look)
        self.suspect_waits: dict[int, tuple[str, float]] = {}  # native id -> (name, run-queue s)
        self.latest_waits: dict[int, tuple[str, float]] = {}  # kept for threads that end meanwhile

    def close(self) -> None:
        """Let go of the kept file; called once the thread has ended, or the watch stops."""
        fd, self.schedstat = self.schedstat, None
        if fd is not None:
            os.close(fd)


# -- the hot path ------------------------------------------------------------------------------

_enabled = False
_cpu_per_step = False
_threshold_s = 0.1
_local = threading.local()
_steps: dict[int, _Step] = {}
_original_run: Callable[[asyncio.Handle], None] = asyncio.Handle._run
# Our wrapper is still inside one someone put over it (aiodebug's) when we last stopped: it
# stays the timer, as ``_original_run`` stays what it calls; wrapping theirs would loop.
_left_behind = False
_function = types.FunctionType
_method = types.MethodType


def _inner(outer: Callable[..., Any], name: str) -> tuple[str, types.CodeType] | None:
    """A function's closure ``name`` as (qualified name, code), or ``None`` if it has none."""
    for const in outer.__code__.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return f"{outer.__qualname__}.<locals>.{name}", const
    return None


def _named(function: Callable[..., Any]) -> tuple[str, types.CodeType]:
    return function.__qualname__, function.__code__


# asyncio's own callbacks that only hand results between futures, schedule callbacks or drain
# the loop's self-pipe: nothing the application wrote can run inside them, so they cannot be
# its stall or make its blocking call. In a Django request they are most of the loop's steps
# (every sync_to_async hop adds a shield and a chained future's callbacks), so they run untimed.
# _chain_future's _call_check_cancel (one more step of every hop) is quiet only while the future
# it watches was not cancelled: otherwise it cancels a concurrent future, which runs that future's
# done-callbacks, whoever added them. Keyed by qualified name, a str whose hash is cached, then
# checked by code identity: comparing code objects costs more than the step timer.
_cancel_check = _inner(asyncio.futures._chain_future, "_call_check_cancel")  # type: ignore[attr-defined]
_QUIET: dict[str, types.CodeType] = dict(
    pair
    for pair in (
        _inner(asyncio.shield, "_inner_done_callback"),
        _inner(asyncio.shield, "_outer_done_callback"),
        _inner(asyncio.futures._chain_future, "_set_state"),  # type: ignore[attr-defined]
        _cancel_check,
        _inner(asyncio.gather, "_done_callback"),
        _inner(asyncio.tasks._wait, "_on_completion"),  # type: ignore[attr-defined]
        _named(asyncio.futures._set_result_unless_cancelled),  # type: ignore[attr-defined]
        _named(asyncio.selector_events.BaseSelectorEventLoop._read_from_self),  # type: ignore[attr-defined]
    )
    if pair is not None
)
_CANCEL_CHECK = _cancel_check[1] if _cancel_check is not None else None


def _timed_run(self: asyncio.Handle) -> None:
    if not _enabled:
        return _original_run(self)
    callback = self._callback  # type: ignore[attr-defined]
    kind = type(callback)
    if kind is _function or kind is _method:
        code = _QUIET.get(callback.__qualname__)
        if code is callback.__code__ and (
            code is not _CANCEL_CHECK or not self._args[0].cancelled()
        ):
            return _original_run(self)
    try:
        step: _Step = _local.step
    except AttributeError:
        step = _register_thread()
    if step.start:  # re-entered (nest_asyncio): the outer step is being timed already
        return _original_run(self)
    start = step.start = _perf()
    if _cpu_per_step:  # system calls: only where the watchdog cannot read this thread's clock
        step.start_cpu = _thread_time()
        step.start_proc = _process_time()
    try:
        return _original_run(self)
    finally:
        end = _perf()
        if end - start >= _threshold_s:
            _finish_safely(step, self, start, end)  # still marked busy: no idle snapshot now
        step.start = 0.0


findings.mark_step_boundary(_timed_run.__code__)


def explain(step: _Step, seconds: float, cpu: float = 0.0) -> None:
    """Take ``seconds`` of the running step, ``cpu`` of them on the CPU, out of its stall
    judgement: time in blocking calls reported as such already, or the loop thread's own time
    in first-time imports (see ``imports``)."""
    if step.explained_for != step.start:
        step.explained_for = step.start
        step.explained_s = step.explained_cpu = 0.0
    step.explained_s += seconds
    step.explained_cpu += cpu


def run_queue_wait(step: _Step) -> float | None:
    """The loop thread's run-queue wait so far (Linux), to tell its own time from the OS's."""
    return None if step.schedstat is None else _read_wait(step.schedstat)


def current_step() -> _Step | None:
    """The calling thread's running loop step, or ``None`` when it is not inside one."""
    step: _Step | None = getattr(_local, "step", None)
    if step is None or not step.start:
        return None
    return step


def _register_thread() -> _Step:
    step = _Step()
    _local.step = step
    replaced = _steps.get(step.ident)
    _steps[step.ident] = step
    if replaced is not None:  # an ended thread's ident, taken again before the watchdog saw it end
        replaced.close()
    return step


# -- clocks -----------------------------------------------------------------------------------


def _thread_cpu(native_id: int | None) -> float | None:
    """CPU seconds of a thread of this process, by its kernel thread id; ``None`` where that
    clock cannot be read (not Linux, or the thread has ended).

    The clock id is built as the kernel defines it (``MAKE_THREAD_CPUCLOCK``), not with
    ``pthread_getcpuclockid()``, which reads the thread's pthread structure: for a thread that
    ended since the watchdog listed it, that memory may be gone, and the process crashed.
    """
    if native_id is None or not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime((~native_id << 3) | 6)  # per-thread, CPUCLOCK_SCHED
    except OSError:  # EINVAL: no such thread in this process (any more)
        return None


def _open_schedstat(native_id: int) -> int | None:
    """A loop thread's ``schedstat`` file, kept open: a poll then reads it with one ``pread``,
    where opening, reading and closing it handed the GIL back and forth three times."""
    try:
        return os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
    except OSError:  # not Linux, or the thread has ended
        return None


def _read_wait(fd: int) -> float | None:
    """Seconds the thread was runnable but not running (the file's second field)."""
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _run_queue_wait(native_id: int) -> float | None:
    fd = _open_schedstat(native_id)
    if fd is None:
        return None
    try:
        return _read_wait(fd)
    finally:
        os.close(fd)


def _snapshot(step: _Step, during: float) -> _Snapshot:
    # The reads take time (and hand the GIL over), so their order decides which way the error
    # goes: the run-queue wait before the time and the CPU clocks after it err towards an
    # excuse (more wait subtracted, less of the loop thread's CPU counted in the step).
    wait = None if step.schedstat is None else _read_wait(step.schedstat)
    t = _perf()
    cpus = {}
    for thread in threading.enumerate():
        cpu = _thread_cpu(thread.native_id)
        if cpu is not None and thread.ident is not None:
            cpus[thread.ident] = cpu
    return _Snapshot(
        t,
        during,
        cpus.get(step.ident),  # the loop thread is listed: _Step made it known to threading
        _process_time(),
        wait,
        cpus,
    )


class _GCLog:
    """Recent garbage-collection pauses, so a step that a collection interrupted is not blamed."""

    def __init__(self) -> None:
        self._started = 0.0
        # (start, end, the collecting thread's ident)
        self.pauses: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=512)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = _perf()
        elif self._started:
            self.pauses.append((self._started, _perf(), threading.get_ident()))

    def overlap(self, start: float, end: float, thread: int | None = None) -> float:
        """Seconds of pauses within ``start``-``end``: all, or those collected in ``thread``."""
        return sum(
            max(0.0, min(end, e) - max(start, s))
            for s, e, ident in list(self.pauses)
            if thread is None or ident == thread
        )


_gc_log = _GCLog()


# -- judging a long step ------------------------------------------------------------------------


def _finish_safely(step: _Step, handle: asyncio.Handle, start: float, end: float) -> None:
    step.in_guard = True  # our own work here is not the application's blocking call
    try:
        _finish(step, handle, start, end)
    except Exception as exc:  # never let the detector break the application
        findings.internal_error("judging a long loop step", exc)
    finally:
        step.in_guard = False


def _finish(step: _Step, handle: asyncio.Handle, start: float, end: float) -> None:
    if not findings.recording() or debugger_attached():
        return
    explained = (0.0, 0.0)
    if step.explained_for == start:
        explained = (step.explained_s, step.explained_cpu)
    blocked, excuse = _loop_own_time(step, start, end, explained)
    if excuse:
        findings.note(*excuse)
        return
    if blocked < _threshold_s:
        return
    samples = step.samples if step.sampled_for == start else []
    if _stopped_in_debugger(samples):
        return
    stack, location, note = _stall_stack(samples, handle)
    note = "; ".join(filter(None, (note, _tracer_note())))
    request, sent_by = _request_of(handle)
    findings.record(
        Finding(
            kind=findings.STALL,
            what="event loop step",
            duration_ms=blocked * 1000,
            stack=stack,
            location=location,
            request=request,
            sent_by=sent_by,
            fix=stall_fix(stack),
            thread=step.name,
            note=note,
        )
    )


def _snapshots_of(step: _Step, start: float, end: float) -> tuple[_Snapshot, _Snapshot | None]:
    """The watchdog's latest snapshot from before the step, and its first one during it."""
    earlier, latest = step.snaps
    if latest.during == start and latest.t < end:
        return earlier, latest
    return latest, None


def _wait_baseline(before: _Snapshot, first: _Snapshot | None, start: float) -> _Snapshot | None:
    """Of the watchdog's snapshot from just before the step and its first during it, the one
    nearer the step's start. An older one would charge this step with run-queue waits of
    earlier ones; a late first one (the watchdog, too, waited for the GIL) would make the
    wait seen in the step's last moments stand for all of it."""
    recent = 0.0 <= start - before.t <= _threshold_s
    if first is None or (recent and start - before.t < first.t - start):
        return before if recent else None
    return first


def _cpu_during(
    step: _Step, start: float, before: _Snapshot, first: _Snapshot | None, now: _Snapshot
) -> tuple[float, float]:
    """CPU seconds of the loop thread during the step (at least) and of the others (at most).

    The loop's lower bound misses at most the gap between the step's start and the nearer of
    the polls around it; with polls at most a threshold apart, that is half a threshold, so a
    step of at least the threshold that kept its thread busy always shows half of it busy.
    """
    if _cpu_per_step:
        loop = _thread_time() - step.start_cpu
        return loop, _process_time() - step.start_proc - loop
    if now.loop_cpu is None or before.loop_cpu is None:
        return 0.0, now.process_cpu - before.process_cpu
    since_before = now.loop_cpu - before.loop_cpu
    loop = since_before - max(0.0, start - before.t)  # it ran at most that long before the step
    if first is not None and first.loop_cpu is not None:
        loop = max(loop, now.loop_cpu - first.loop_cpu)
    return loop, now.process_cpu - before.process_cpu - since_before


def _loop_own_time(
    step: _Step, start: float, end: float, explained: tuple[float, float]
) -> tuple[float, tuple[str, str] | None]:
    """Seconds of the step that the loop thread itself is to blame for, and any excuse note.

    The watchdog's snapshots from before and during the step bound the loop thread's CPU time
    (was it busy?) and give the run-queue wait, scaled to the whole step. Both bounds lean
    towards an excuse: a finding needs the loop thread's own CPU or its own waiting. The
    ``explained`` seconds and CPU seconds (reported calls, imports) are the thread's own time
    already accounted for: they come off both.
    """
    explained_s, explained_cpu = explained
    blocked = end - start - _gc_log.overlap(start, end)
    if blocked - explained_s < _threshold_s:  # reported calls and imports fill it: no note
        return blocked - explained_s, None
    before, first = _snapshots_of(step, start, end)
    now = _snapshot(step, start)
    base = _wait_baseline(before, first, start)
    if base is not None and now.wait is not None and base.wait is not None:
        observed_from = max(base.t, start)
        observed = end - observed_from
        own = observed - _gc_log.overlap(observed_from, end) - (now.wait - base.wait)
        blocked = min(blocked, max(0.0, own) * (end - start) / max(observed, 1e-9))
    blocked -= explained_s
    loop_cpu, other_cpu = _cpu_during(step, start, before, first, now)
    # A collection the loop thread ran is its CPU but not its doing: off, at its wall time.
    loop_cpu -= explained_cpu + _gc_log.overlap(start, end, step.ident)
    if blocked < _threshold_s or loop_cpu >= 0.5 * blocked:
        return blocked, None  # under the threshold, or the loop thread itself was busy
    if other_cpu >= 0.5 * blocked:
        return blocked, _gil_note(step, blocked, before, now)
    if step.sampled_for != start:
        return blocked, (
            f"unscheduled:{step.name}",
            f"the event loop in thread {step.name!r} was off the CPU for {blocked * 1000:.0f} ms"
            " and the watchdog could not run either: the process was not scheduled (an"
            " overloaded machine); not counted as a stall of the loop",
        )
    return blocked, (
        _starved_neighbour(step, end, blocked, other_cpu)
        or _starting_a_thread(step, blocked)
        or _starved_watchdog(step, blocked, end)
    )


def _gil_note(step: _Step, blocked: float, base: _Snapshot, now: _Snapshot) -> tuple[str, str]:
    hog = "another thread"
    if now.cpus:
        others = {
            ident: cpu - base.cpus.get(ident, 0.0)  # a thread new since the baseline: all of it
            for ident, cpu in now.cpus.items()
            if ident not in (step.ident, _watchdog_ident)
        }
        if others:
            hog = repr(_thread_name(max(others, key=lambda ident: others[ident])))
    return (
        f"gil:{step.name}:{hog}",
        f"the event loop in thread {step.name!r} waited {blocked * 1000:.0f} ms for the GIL"
        f" while {'thread ' if hog != 'another thread' else ''}{hog} held it; not counted as a"
        " stall of the loop",
    )


def _run_queue_waits() -> dict[int, tuple[str, float]]:
    waits = {}
    for thread in threading.enumerate():
        native_id = thread.native_id
        wait = _run_queue_wait(native_id) if native_id is not None else None
        if native_id is not None and wait is not None:
            waits[native_id] = (thread.name, wait)
    return waits


def _starved_neighbour(
    step: _Step, end: float, blocked: float, other_cpu: float
) -> tuple[str, str] | None:
    """An excuse when the loop waited on a thread the OS kept off the CPU (thread start-up,
    a lock holder) because the machine was overloaded: that is not the loop's doing. Seen
    from the watchdog's first look at the step on; with the time other threads of the process
    ran (one holding the GIL the starting thread needs), it may cover the step between them.
    A watchdog that first looked when the step was over saw nothing (see _starved_watchdog)."""
    window = end - step.suspect_at
    if window <= 0:
        return None
    now = {**step.latest_waits, **_run_queue_waits()}
    starved = {
        name: wait - step.suspect_waits.get(native_id, (name, 0.0))[1]
        for native_id, (name, wait) in now.items()
        if native_id != step.native_id
    }
    if not starved:
        return None
    name = max(starved, key=lambda n: starved[n])
    wait = starved[name]
    if wait < 0.001 or (wait < 0.5 * window and wait + other_cpu < 0.5 * blocked):
        return None
    ran = f" while other threads ran for {other_cpu * 1000:.0f} ms" if wait < 0.5 * window else ""
    return (
        f"starved:{step.name}",
        f"the event loop in thread {step.name!r} waited on thread {name!r}, which the OS kept"
        f" off the CPU for {wait * 1000:.0f} ms{ran} (an overloaded machine); not counted as a"
        " stall of the loop",
    )


def _starting_a_thread(step: _Step, blocked: float) -> tuple[str, str] | None:
    """An excuse when the loop spent the step in ``Thread.start()``, which waits until the new
    thread first runs: a few microseconds, unless the machine gives it no CPU or another
    thread the GIL. A thread that never ran has no native id yet, so its run-queue wait (see
    _starved_neighbour) cannot be read; the loop thread's samples show where it waited."""
    samples = step.samples
    starting = sum(1 for stack in samples if any(map(_is_thread_start, stack)))
    if not samples or starting < 0.5 * len(samples):
        return None
    return (
        f"thread-start:{step.name}",
        f"the event loop in thread {step.name!r} waited {blocked * 1000:.0f} ms in"
        " Thread.start() for a thread it started (an overloaded machine: the new thread needs"
        " the CPU, then the GIL, to start); not counted as a stall of the loop",
    )


def _is_thread_start(frame: findings.Frame) -> bool:
    return frame.function in _THREAD_START and frame.path.endswith(f"{os.sep}threading.py")


_THREAD_START = frozenset({"Thread.start", "start"})  # "start": Python 3.10's co_name


def _starved_watchdog(step: _Step, blocked: float, end: float) -> tuple[str, str] | None:
    """An excuse when the watchdog itself could rarely run while the loop thread was off the
    CPU: both were waiting for the GIL, held by a thread the OS was not running (or the whole
    process was not scheduled). A loop thread blocked in a lock or a socket call leaves the
    GIL free, and the watchdog samples it at its fast rate. The samples it would have taken
    count from when it meant to take the first: a watchdog kept from waking until the step's
    last moments is the starved one, not the one with too little time to judge."""
    expected = (end - step.sample_due) / _fast_poll(_threshold_s)
    if expected < _STARVED_MIN_POLLS or step.samples_taken >= _STARVED_SHARE * expected:
        return None
    return (
        f"unsampled:{step.name}",
        f"the event loop in thread {step.name!r} was off the CPU for {blocked * 1000:.0f} ms"
        f" and the watchdog could sample it only {step.samples_taken}"
        f" time{'' if step.samples_taken == 1 else 's'} of about"
        f" {expected:.0f}: another thread held the GIL, or the process was not scheduled (an"
        " overloaded machine); not counted as a stall of the loop",
    )


def _fast_poll(threshold: float) -> float:
    """Seconds between the watchdog's polls while a step runs suspiciously long."""
    return max(0.001, threshold / _FAST_POLLS)


def _first_look(due: float, start: float, now: float) -> float:
    """When a watchdog that woke on time (at ``due``, not ``now``) would have begun sampling
    the step started at ``start``: at its due time, or a quarter threshold into the step if
    that is later. A poll due before the step began would have been followed by another within
    a threshold, so that is the latest the first look could have come."""
    if due < start:
        return min(now, start + _threshold_s)
    return min(now, max(due, start + _threshold_s / 4))


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident}"


def _stall_stack(
    samples: list[Stack], handle: asyncio.Handle
) -> tuple[Stack, findings.Frame | None, str]:
    """The stack sampled most often at one user location during the stall, imports aside, and
    the location to blame. Without a sample, only where the task suspended next is known: the
    user's own frame there, if any, is the best guess; a library's frame would be a wrong one
    (and would key allow patterns and baselines to it)."""
    seen = findings.most_seen(samples)
    if seen is not None:
        return seen[2], seen[0], ""
    stack = _suspended_stack(handle)
    own = next((frame for frame in reversed(stack) if findings.is_user_path(frame.path)), None)
    return (
        stack,
        own,
        (
            "the watchdog took no sample during the stall (a C call held the GIL throughout, or"
            " the machine did not run the watchdog in time); the stack shows where the task"
            " suspended next"
        ),
    )


def _suspended_stack(handle: asyncio.Handle) -> Stack:
    """Where the callback's task is suspended now: its chain of awaiting coroutines."""
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return _code_frame(getattr(callback, "__code__", None))
    stack: list[findings.Frame] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None and len(stack) < 80:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:  # it returned during the stall: name the coroutine at least
            stack.extend(_code_frame(getattr(awaitable, "cr_code", None)))
            break
        stack.extend(findings.capture_one(frame))
        awaitable = getattr(awaitable, "cr_await", None) or getattr(
            awaitable, "gi_yieldfrom", None
        )
    return tuple(stack)


def _request_of(handle: asyncio.Handle) -> tuple[str | None, str | None]:
    """The request the step served and the test that sent it, from the step's context."""
    context = getattr(handle, "_context", None) or contextvars.copy_context()
    return context.get(findings.current_request), context.get(findings.request_sender)


def _code_frame(code: Any) -> Stack:
    if code is None:
        return ()
    name = getattr(code, "co_qualname", code.co_name)
    return (findings.Frame(code.co_filename, code.co_firstlineno, name, "?"),)


def stall_fix(stack: Stack) -> str:
    paths = [frame.path.replace(os.sep, "/") for frame in stack]
    if any(p.endswith("/django/contrib/auth/hashers.py") for p in paths):
        return _hashing_fix(stack)
    if any("/django/db/" in p or "/sqlite3/" in p for p in paths):
        return (
            "use the async ORM (aget, acount, async for) or run the query block in"
            " sync_to_async(...)"
        )
    if any(p.endswith("/ssl.py") for p in paths) or any(
        f.function == "create_ssl_context" for f in stack
    ):  # a client made per call loads the CA certificates each time
        return (
            "build the SSL context once, at import (TLS = httpx.create_ssl_context()), and"
            " pass it (httpx.AsyncClient(verify=TLS)), or share one client: loading CA"
            " certificates is CPU work"
        )
    return (
        "move the blocking or CPU-heavy work off the loop: await asyncio.to_thread(func, ...)"
        " or sync_to_async(func, thread_sensitive=False)(...); heavy CPU work belongs in a"
        " process pool"
    )


def _hashing_fix(stack: Stack) -> str:
    """Django's async auth methods can hash passwords on the loop (``acreate_user``; Django
    5.x's ``acheck_password``, so ``alogin``): the project can hash off it, and tests can hash
    fast. Thread-sensitive, so that what the call writes stays in the test's transaction."""
    called = _django_call(stack)
    where = f" in Django's {called}" if called else ""
    name = called.rpartition(".")[2] if called else ""
    twin = _SYNC_TWINS.get(name, "User.objects.create_user")
    return (
        f"password hashing (slow on purpose) ran on the loop{where}: call the sync version in"
        f" sync_to_async, e.g. await sync_to_async({twin})(...) (thread-sensitive, the"
        " default, so its queries stay in a test's transaction); in tests, use a fast hasher,"
        " PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher'], or log in"
        " with force_login/aforce_login, which hashes nothing"
    )


# Django's async auth methods that hash, and the sync call to hand to sync_to_async instead
_SYNC_TWINS = {
    "acreate_user": "User.objects.create_user",
    "acreate_superuser": "User.objects.create_superuser",
    "alogin": "client.login",
    "aauthenticate": "authenticate",
    "acheck_password": "user.check_password",
    "aset_password": "user.set_password",
}


def _django_call(stack: Stack) -> str | None:
    """The Django function the project's innermost frame called, if it called Django."""
    below = stack[findings.innermost(stack, findings.is_user_path) + 1 :]
    if below and f"{os.sep}django{os.sep}" in below[0].path:
        return below[0].function
    return None


def _tracer_note() -> str:
    """A note when a tracer (coverage, a profiler) ran on the loop thread: it makes Python code
    several times slower, so a step may pass the threshold only under it."""
    tracer = sys.gettrace() or sys.getprofile()
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: coverage's sys.monitoring core
    tool = None
    if monitoring is not None:
        tool = monitoring.get_tool(monitoring.COVERAGE_ID) or monitoring.get_tool(
            monitoring.PROFILER_ID
        )
    if tracer is None and tool is None:
        return ""
    name = tool or getattr(tracer, "__module__", None) or type(tracer).__module__
    return (
        f"a tracer ran on this thread ({name}): coverage and profilers make Python code several"
        " times slower, so this step may be under the threshold without it; gate stalls in a"
        " job without coverage, or raise --djasync-block-ms in that job"
    )


def _stopped_in_debugger(samples: list[findings.Stack]) -> bool:
    """True when the step waited at a debugger's prompt (``breakpoint()``): pdb's ``continue``
    takes its trace function away before the step ends, so ``debugger_attached`` is too late."""
    packages = {frame.module.partition(".")[0] for stack in samples for frame in stack}
    return not packages.isdisjoint(_DEBUGGERS)


def debugger_attached() -> bool:
    """True while a debugger steps through code, when every step looks like a stall."""
    trace = sys.gettrace()
    module = getattr(trace, "__module__", "") or ""
    return any(module.startswith(name) for name in _DEBUGGERS) or "pydevd" in sys.modules


# -- the watchdog thread ------------------------------------------------------------------------

_watchdog_ident = 0


class Watchdog:
    """Owns the patch of ``Handle._run``, the GC callback and the sampling thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        # Set when the threshold drops: a poll scheduled by a higher one would come too late.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._installed: Callable[[asyncio.Handle], None] | None = None
        self._due = 0.0  # when the running poll was meant to start; 0.0 before the first

    def set_threshold(self, ms: float) -> None:
        """Takes effect at once: a test with a lower threshold than the one before it is not
        left with a watchdog sleeping out the longer wait (its stalls would go unsampled)."""
        global _threshold_s
        lowered = ms / 1000 < _threshold_s
        _threshold_s = ms / 1000
        if lowered:
            self._wake.set()

    def start(self, threshold_ms: float) -> None:
        global _enabled, _cpu_per_step, _original_run, _local, _watchdog_ident
        self.set_threshold(threshold_ms)
        _cpu_per_step = _thread_cpu(threading.get_native_id()) is None
        current = asyncio.Handle.__dict__["_run"]
        if current is not _timed_run and not _left_behind:
            _original_run = current
            asyncio.Handle._run = _timed_run  # type: ignore[method-assign]
        _local = threading.local()
        _steps.clear()
        self._installed = _timed_run
        gc.callbacks.append(_gc_log)
        _enabled = True
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="djasync-watchdog", daemon=True)
        self._thread.start()
        _watchdog_ident = self._thread.ident or 0

    def stop(self) -> None:
        global _enabled, _left_behind
        _enabled = False
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        _left_behind = self._installed is not None and (
            asyncio.Handle.__dict__.get("_run") is not self._installed
        )
        if self._installed is not None and not _left_behind:
            asyncio.Handle._run = _original_run  # type: ignore[method-assign,assignment]
        # else someone wrapped us: leave their wrapper; ours is inert while disabled
        if _gc_log in gc.callbacks:
            gc.callbacks.remove(_gc_log)
        while _steps:
            _steps.popitem()[1].close()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._poll()
            self._due = _perf() + wait
            if self._wake.wait(wait):
                self._wake.clear()
                self._due = _perf()  # woken on purpose: this poll is on time

    def _poll(self) -> float:
        """Check every loop thread once; return how long to sleep before the next check."""
        threshold = _threshold_s
        frames = sys._current_frames()
        suspect = False
        # Every wake-up takes the GIL from a busy main thread, so idle polls are a threshold
        # apart: any step that long is still seen at least once (see _cpu_during).
        wait = threshold / 2 if heartbeat.watching() else threshold
        now = _perf()
        for ident, step in list(_steps.items()):
            frame = frames.get(ident)
            if frame is None:  # the thread has ended
                _steps.pop(ident, None)
                step.close()
                continue
            start = step.start
            latest = step.snaps[1]
            if not start or latest.during != start:
                # idle, or the first sight of this step: the clocks its judgement starts from
                step.snaps = (latest, _snapshot(step, start))
            if start and now - start >= threshold / 4:
                suspect = True
                self._sample(step, start, frame, self._due, now)
            elif start:  # look again when it would be suspect, so a stall is always sampled
                wait = min(wait, start + threshold / 4 - now)
        suspect |= heartbeat.poll(threshold, frames)
        del frames
        return _fast_poll(threshold) if suspect else max(0.001, wait)

    @staticmethod
    def _sample(step: _Step, start: float, frame: Any, due: float, now: float) -> None:
        if step.sampled_for != start:
            step.samples = []
            step.samples_taken = 0
            step.suspect_at = _perf()
            step.sample_due = _first_look(due, start, now)
            step.suspect_waits = _run_queue_waits()
            step.latest_waits = dict(step.suspect_waits)
            step.sampled_for = start
        else:
            step.latest_waits.update(_run_queue_waits())
        step.samples_taken += 1
        stack = findings.capture(frame)
        if len(step.samples) < _MAX_SAMPLES:
            step.samples.append(stack)
        else:
            step.samples[-1] = stack
