"""Finding records, the collector of a test's findings, and the rule that picks the user's frame.

Detectors run in any thread and only ever *add* findings here; the plugin decides what fails.
"""

from __future__ import annotations

import contextvars
import dataclasses
import fnmatch
import functools
import inspect
import os
import sys
import sysconfig
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

STALL = "stall"
BLOCKING_CALL = "blocking-call"
CROSSINGS = "crossings"  # a djasync_max_crossings budget exceeded
FANOUT = "fanout"  # a djasync_fanout expectation not met
SYNC_ONLY = "sync-only"  # Django raised SynchronousOnlyOperation
KINDS = (STALL, BLOCKING_CALL, SYNC_ONLY, CROSSINGS, FANOUT)

_MAX_DEPTH = 80  # deep enough for Django's middleware onion, shallow enough to stay cheap


def relative_path(path: str, root: Path | None) -> str:
    """``path`` relative to ``root`` when inside it (the project's code), else as it is."""
    if root is not None:
        try:
            relative = os.path.relpath(path, root)
        except ValueError:  # another drive on Windows
            return path
        if not relative.startswith(os.pardir):
            return relative
    return path


class Frame(NamedTuple):
    path: str  # absolute path of the source file
    line: int
    function: str  # qualified name where the interpreter knows it
    module: str

    def relative_path(self, root: Path | None) -> str:
        return relative_path(self.path, root)

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}"


Stack = tuple[Frame, ...]  # outermost first, like a traceback


@dataclasses.dataclass
class Finding:
    kind: str
    what: str  # the blocking call ("time.sleep") or what stalled ("event loop step")
    duration_ms: float | None
    stack: Stack
    location: Frame | None
    request: str | None
    fix: str
    thread: str
    note: str = ""
    count: int = 1
    allowed_by: str | None = None  # the djasync_allow pattern that accepted it
    exception: BaseException | None = None  # the error behind a sync-only finding
    sent_by: str | None = None  # the test whose request this was, when not the finding's test

    @property
    def key(self) -> tuple[str, str, Frame | None]:
        return (self.kind, self.what, self.location)

    def message(self, root: Path | None = None) -> str:
        """The one-line summary used in failures, the terminal summary and the JSON report."""
        where = _where(self.location, root)
        took = f" for {self.duration_ms:.0f} ms" if self.duration_ms is not None else ""
        times = f" ({self.count} calls)" if self.count > 1 else ""
        if self.kind in (CROSSINGS, FANOUT):
            return self.what  # the budget or expectation that failed, in its own words
        if self.kind == STALL:
            return f"event loop blocked{took} at {where}{times}"
        if self.kind == SYNC_ONLY:
            return f"{self.what} on the event loop raised SynchronousOnlyOperation at {where}"
        return f"blocking call {self.what}(){took} on the event loop at {where}{times}"


def _where(frame: Frame | None, root: Path | None) -> str:
    if frame is None:
        return "an unknown location"
    return f"{frame.relative_path(root)}:{frame.line} in {frame.function}"


class Collector:
    """All findings of one test, merged by kind, call and place; safe to feed from any thread."""

    def __init__(self, nodeid: str, allow: Sequence[str] = ()) -> None:
        self.nodeid = nodeid
        self._allow = tuple(allow)
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str, Frame | None], Finding] = {}
        self._notes: dict[str, list[Any]] = {}  # key -> [first text, times seen]

    def add(self, finding: Finding) -> None:
        if finding.sent_by == self.nodeid:
            finding.sent_by = None
        pattern = _allowing_pattern(finding.stack, self._allow)
        with self._lock:
            if pattern is not None:
                finding.allowed_by = pattern
            known = self._by_key.get(finding.key)
            if known is None:
                self._by_key[finding.key] = finding
                return
            known.count += finding.count
            if finding.duration_ms is not None:
                known.duration_ms = (known.duration_ms or 0.0) + finding.duration_ms

    @property
    def empty(self) -> bool:
        # No lock: a dict's truth is read atomically, and a finding made meanwhile is taken
        # by the next phase's check (or at the end of the test).
        return not (self._by_key or self._notes)

    def note(self, key: str, text: str) -> None:
        """Something worth a warning that is not a finding; repeats are counted, not repeated."""
        with self._lock:
            self._notes.setdefault(key, [text, 0])[1] += 1

    @property
    def notes(self) -> list[str]:
        with self._lock:
            entries = list(self._notes.values())
        return [text if times == 1 else f"{text} (seen {times} times)" for text, times in entries]

    def findings(self) -> list[Finding]:
        with self._lock:
            return list(self._by_key.values())


def _allowing_pattern(stack: Stack, patterns: Sequence[str]) -> str | None:
    """The pattern that matches the innermost frame of ``stack`` it may: the most specific.

    A frame of the project's own code excuses everything it calls. A library's frame counts
    only from the finding's location in (the project's innermost frame; without one, the
    innermost frame of a package other than Django's; without that either, anywhere): a
    middleware or a wrapper of an installed package (a toolbar, an error tracker) is on every
    request's stack, and its pattern must not excuse the views it calls, nor another
    package's code.
    """
    if not patterns:
        return None
    start = _blamed_depth(stack)
    for depth in range(len(stack) - 1, -1, -1):
        frame = stack[depth]
        if depth < start and not is_user_path(frame.path):
            continue
        short = frame.function.rpartition(".")[2]
        for pattern in patterns:
            module_pat, _, func_pat = pattern.partition(":")
            if fnmatch.fnmatchcase(frame.module, module_pat) and (
                fnmatch.fnmatchcase(frame.function, func_pat)
                or fnmatch.fnmatchcase(short, func_pat)
            ):
                return pattern
    return None


def _blamed_depth(stack: Stack) -> int:
    """Where in ``stack`` a finding's blame starts (user_frame's frame): see _allowing_pattern."""
    for belongs in (is_user_path, _third_party):
        depth = innermost(stack, belongs)
        if depth >= 0:
            return depth
    return 0


#: The request being served, as ``"GET /path/"``, set by the ASGI entry points the plugin knows.
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "djasync_current_request", default=None
)
#: The test that was running when that request started: a task the request left running can
#: make its findings in a later test, which the failure should not leave puzzled.
request_sender: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "djasync_request_sender", default=None
)

_Tokens = tuple["contextvars.Token[str | None]", "contextvars.Token[str | None]"]


def serving(request: str) -> _Tokens:
    """Name the request the current context serves, and the test that sent it."""
    sender = _active.nodeid if _active is not None else None
    return current_request.set(request), request_sender.set(sender)


def served(tokens: _Tokens) -> None:
    current_request.reset(tokens[0])
    request_sender.reset(tokens[1])


_active: Collector | None = None
_internal_errors: list[str] = []


def activate(collector: Collector | None) -> None:
    """Route findings to ``collector`` (``None``: drop them, no test is running)."""
    global _active
    _active = collector


def record(finding: Finding) -> None:
    collector = _active
    if collector is not None:
        collector.add(finding)


def note(key: str, text: str) -> None:
    collector = _active
    if collector is not None:
        collector.note(key, text)


def internal_error(doing: str, exc: BaseException) -> None:
    """A fault of the plugin itself: kept for the session summary, never raised into the app."""
    _internal_errors.append(f"pytest-djasync internal error while {doing}: {exc!r}")


def take_internal_errors() -> list[str]:
    errors = list(_internal_errors)
    _internal_errors.clear()
    return errors


def recording() -> bool:
    return _active is not None


# -- frames -------------------------------------------------------------------------------------


def capture_one(frame: FrameType) -> Stack:
    code = frame.f_code
    return (
        Frame(
            path=code.co_filename,
            line=frame.f_lineno or code.co_firstlineno,
            function=getattr(code, "co_qualname", code.co_name),
            module=str(frame.f_globals.get("__name__", "?")),
        ),
    )


def capture(frame: FrameType | None) -> Stack:
    """The stack from ``frame`` out to the loop step running it, outermost first.

    Frames outside the step (the event loop, pytest) and the plugin's own frames (its
    wrappers, around a request or a call) are left out: they are the same for every finding.
    Works on another thread's frame too.
    """
    frames: list[Frame] = []
    while frame is not None and len(frames) < _MAX_DEPTH:
        code = frame.f_code
        if code is _STEP_CODE[0]:
            break
        if not code.co_filename.startswith(_PLUGIN_DIR):
            frames.extend(capture_one(frame))
        frame = frame.f_back
    frames.reverse()
    while len(frames) > 1 and frames[0].module == "asyncio.events":
        del frames[0]  # Handle._run, the same for every step
    return tuple(frames)


_PLUGIN_DIR = str(Path(__file__).resolve().parent) + os.sep
_STEP_CODE: list[object] = [None]  # the code object of the watchdog's step wrapper


def mark_step_boundary(code: object) -> None:
    _STEP_CODE[0] = code


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots.add(str(Path(__file__).resolve().parent))
    return tuple(sorted({os.path.realpath(r) + os.sep for r in roots}, key=len, reverse=True))


_LIBRARY_ROOTS = _library_roots()


@functools.lru_cache(maxsize=4096)
def is_user_path(path: str) -> bool:
    """Project code: not the standard library, not an installed package, not this plugin."""
    if path.startswith("<"):
        return False
    real = os.path.realpath(path)
    if is_installed(real):
        return False
    return not real.startswith(_LIBRARY_ROOTS)


def is_installed(path: str) -> bool:
    """Installed code: under a ``site-packages`` (or Debian's ``dist-packages``) directory."""
    return "site-packages" in path or "dist-packages" in path


def user_frame(stack: Stack) -> Frame | None:
    """The innermost frame of the project's own code; else the innermost of an installed
    package other than Django and asgiref (a serializer, django-ninja's response building),
    which says more than Django's internals; else the innermost frame at all."""
    for belongs in (is_user_path, _third_party):
        depth = innermost(stack, belongs)
        if depth >= 0:
            return stack[depth]
    return stack[-1] if stack else None


def innermost(stack: Stack, belongs: Callable[[str], bool]) -> int:
    """The index of the innermost frame whose path ``belongs``, or -1."""
    for depth in range(len(stack) - 1, -1, -1):
        if belongs(stack[depth].path):
            return depth
    return -1


# Django's and asgiref's internals say less than the code they ran, and this plugin's own
# wrappers (request naming) nothing: a finding is never located there while another will do.
_NOT_THIRD_PARTY = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("django", "asgiref", "pytest_djasync")
)


def _third_party(path: str) -> bool:
    for marker in ("site-packages", "dist-packages"):
        _, found, inside = path.rpartition(marker)
        if found:
            return not inside.startswith(_NOT_THIRD_PARTY)
    return False


def live_user_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost frame of the project's own code from ``frame`` outwards, if any."""
    while frame is not None and not is_user_path(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})
_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def fix_in(user: FrameType | None, fix: str, database: bool = False) -> str:
    """The fix, for the user's function that made the call: one that is sync (a helper, a
    signal's sync receiver, a task) cannot await anything; its async caller has to hand it off.
    ``fix`` is the one for async code; ``database``: the call was the ORM's, not only blocking."""
    while user is not None and user.f_code.co_name in _COMPREHENSIONS:
        user = user.f_back  # before Python 3.12 a comprehension is a function of its own
    if user is None or user.f_code.co_flags & _ASYNC_CODE:
        return fix
    name = method_name(user)
    if _enqueued(user):
        return (
            f"{name}() is a task that .enqueue() ran on the event loop (the immediate backend"
            " runs it at once, in the caller's thread): await task.aenqueue(...) instead"
        )
    then = f"{fix[0].lower()}{fix[1:]}"
    if _sent_by_a_signal(user):
        return (
            f"{name}() is a sync receiver of a signal sent on the event loop: send it with"
            f" await sync_to_async(signal.send)(...), or make the receivers async (and {then})"
            " and send it with await signal.asend(...)"
        )
    entry = _entered_from_outside(user)
    library = _library_caller(entry)
    if library is not None:
        package, function = library
        entered = method_name(entry)
        called = f"{entered}() is called on the event loop by {package}'s {function}(), not by"
        if package == "django":
            return (
                f"{called} your async code: run the call of yours that reaches it (a render,"
                " form.is_valid()) in sync_to_async(...) and await it"
            )
        # an async framework's callback (a GraphQL resolver): it can await one
        inside = then if entry is user else f"await sync_to_async({name})(...) in it"
        return (
            f"{called} your async code: make it async (async def, and {inside}) if that package"
            f" awaits what it calls, or hand the package sync_to_async({entered}) in its place"
        )
    adapter = "database_sync_to_async" if _in_a_consumer(user) else "sync_to_async"
    # Thread-sensitive hand-offs run one at a time, on the thread that holds the connections:
    # right for a helper that also queries, needless for one that only waits.
    apart = "" if database else f" (or asyncio.to_thread({name}, ...) if it makes no queries)"
    return (
        f"{name}() is a sync function run on the event loop: have its async caller await"
        f" {adapter}({name})(...){apart}; or make it async and {then}"
    )


def _entered_from_outside(frame: FrameType) -> FrameType:
    """The outermost of the project's sync functions that called ``frame``'s in turn: the one
    installed code (a GraphQL library) called, which a fix has to change."""
    while (
        frame.f_back is not None
        and is_user_path(frame.f_back.f_code.co_filename)
        and not frame.f_back.f_code.co_flags & _ASYNC_CODE
        and frame.f_back.f_code.co_name not in _COMPREHENSIONS
    ):
        frame = frame.f_back
    return frame


def _library_caller(frame: FrameType) -> tuple[str, str] | None:
    """(package, ``Function.name``) when installed code (Django's template engine running a
    context processor) called ``frame``'s sync function; ``None`` when the project did."""
    caller = frame.f_back
    if caller is None or is_user_path(caller.f_code.co_filename) or _not_installed(caller):
        return None
    return package_and_name(caller)


def package_and_name(frame: FrameType) -> tuple[str, str]:
    """The top-level package of ``frame``'s code and its function's name, for a message."""
    return str(frame.f_globals.get("__name__", "?")).partition(".")[0], method_name(frame)


def method_name(frame: FrameType) -> str:
    """``Class.method`` for a method's frame: the code's qualified name, or on Python 3.10,
    which has none, the class of the frame's ``self``."""
    code = frame.f_code
    qualname: str | None = getattr(code, "co_qualname", None)
    if qualname is not None:
        return qualname
    instance = frame.f_locals.get("self")
    return code.co_name if instance is None else f"{type(instance).__name__}.{code.co_name}"


def _not_installed(caller: FrameType) -> bool:
    # The standard library calling back (functools, contextlib, a loop's own callback): the
    # project's code is further out; only installed packages count as callers here.
    return not is_installed(caller.f_code.co_filename)


def _sent_by_a_signal(frame: FrameType) -> bool:
    caller = frame.f_back
    return caller is not None and caller.f_code.co_filename.endswith(
        os.path.join("django", "dispatch", "dispatcher.py")
    )


def _in_a_consumer(frame: FrameType | None) -> bool:
    """True inside a Channels consumer, whose docs hand sync database work to
    ``database_sync_to_async`` (it also closes the worker thread's stale connections)."""
    if "channels" not in sys.modules:
        return False
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("channels."):
            return True
        frame = frame.f_back
    return False


def _enqueued(frame: FrameType) -> bool:
    """True when Django's tasks framework (6.0+) runs ``frame`` inside a sync ``enqueue()``."""
    caller = frame.f_back
    while caller is not None and "django" in caller.f_code.co_filename:
        code = caller.f_code
        if code.co_name == "enqueue" and f"{os.sep}tasks{os.sep}" in code.co_filename:
            return True
        caller = caller.f_back
    return False


def _importing(stack: Stack) -> bool:
    return any(frame.path == _IMPORT_MACHINERY for frame in stack)


_IMPORT_MACHINERY = "<frozen importlib._bootstrap>"


def most_seen(samples: Sequence[Stack]) -> tuple[Frame | None, int, Stack] | None:
    """The user location sampled most often, how often, and the latest stack showing it.

    Samples taken during an import name no place: a first-time import's time is set aside
    (see ``imports``), so it is never what a stall is blamed on.
    """
    samples = [stack for stack in samples if not _importing(stack)]
    if not samples:
        return None
    place, seen = Counter(user_frame(stack) for stack in samples).most_common(1)[0]
    stack = next(s for s in reversed(samples) if user_frame(s) == place)
    return place, seen, stack
