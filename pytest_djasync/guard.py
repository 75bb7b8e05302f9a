"""The blocking-call detector: known-blocking functions, wrapped so a call made inside a loop step
becomes a finding however short it was. The call itself always goes through unchanged, and
every patch is undone exactly (see ``patching``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from pytest_djasync import findings, imports, patching, watchdog
from pytest_djasync.findings import Finding

_perf = watchdog._perf

_OFFLOAD = "asyncio.to_thread(...) or sync_to_async(..., thread_sensitive=False)"
FIX = {
    "sleep": "await asyncio.sleep(...) instead of time.sleep(...)",
    "socket": f"use an async client (httpx.AsyncClient, asyncio streams) or {_OFFLOAD}",
    "dns": "let the loop resolve names (await loop.getaddrinfo(...), or loop.getnameinfo(...)"
    f" for a reverse lookup) or {_OFFLOAD}",
    "select": "wait with the loop (asyncio streams, loop.add_reader) instead of select/poll",
    "subprocess": f"use asyncio.create_subprocess_exec(...) or {_OFFLOAD}",
    "http": f"await an async HTTP client (httpx.AsyncClient) or {_OFFLOAD}",
    "file": f"read and write files off the loop: {_OFFLOAD}",
    "wait": "await it instead: await asyncio.wrap_future(future) (asyncio.gather or"
    " asyncio.as_completed over wrapped futures for several), or submit with"
    " await loop.run_in_executor(pool, fn, ...)",
}


def _blocking_socket(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # asyncio drives non-blocking sockets from inside loop steps; only blocking ones block.
    return bool(args) and args[0].gettimeout() != 0.0


def _positive_delay(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return not args or args[0] != 0  # time.sleep(0) merely yields the GIL


def _process_running(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # Waiting on a process already reaped returns at once: subprocess.run's last wait(), after
    # communicate() (the call that blocked, reported already), is no second finding.
    return getattr(args[0], "returncode", None) is None


def _future_pending(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # A done future hands its result over at once; so does a wait of timeout=0.
    timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
    return timeout != 0 and not args[0].done()


def _is_the_loops_selector(selector: Any) -> bool:
    # The loop waits in its own selector between steps, and inside one when nest_asyncio
    # re-enters it; any other selector's select() blocks the loop.
    loop = asyncio.events._get_running_loop()
    return loop is not None and getattr(loop, "_selector", None) is selector


def _not_the_loops_selector(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return not _is_the_loops_selector(args[0])


class Target(NamedTuple):
    group: str
    module: str  # the module that must be imported for the target to exist
    owner: str  # dotted path from the module to the object holding the attribute
    attr: str
    label: str
    applies: Callable[[tuple[Any, ...], dict[str, Any]], bool] | None = None
    own_only: bool = False  # only where the class defines it; subclasses reach the base's wrapper


def _socket_methods() -> list[Target]:
    names: tuple[str, ...] = (
        "connect",
        "connect_ex",
        "accept",
        "recv",
        "recv_into",
        "recvfrom",
        "recvfrom_into",
    )
    names += ("send", "sendall", "sendto", "sendfile")
    return [
        Target("socket", "socket", "socket", name, f"socket.{name}", _blocking_socket)
        for name in names
    ]


TARGETS: tuple[Target, ...] = (
    Target("sleep", "time", "", "sleep", "time.sleep", _positive_delay),
    *_socket_methods(),
    *(
        Target("dns", "socket", "", name, f"socket.{name}")
        for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")
    ),
    Target("dns", "socket", "", "getnameinfo", "socket.getnameinfo"),
    Target("select", "select", "", "select", "select.select"),
    Target(
        "select",
        "selectors",
        "SelectSelector",
        "select",
        "selectors.SelectSelector.select",
        _not_the_loops_selector,
        own_only=True,
    ),
    *(
        Target(
            "select",
            "selectors",
            selector,
            "select",
            "selectors.Selector.select",
            _not_the_loops_selector,
            own_only=True,
        )
        for selector in ("_PollLikeSelector", "EpollSelector", "DevpollSelector", "KqueueSelector")
    ),
    Target("subprocess", "subprocess", "Popen", "wait", "subprocess.Popen.wait", _process_running),
    Target("subprocess", "subprocess", "Popen", "communicate", "subprocess.Popen.communicate"),
    Target("http", "requests", "Session", "send", "requests.Session.send"),
    Target(
        "http",
        "urllib3.connectionpool",
        "HTTPConnectionPool",
        "urlopen",
        "urllib3.HTTPConnectionPool.urlopen",
    ),
    Target("http", "urllib.request", "OpenerDirector", "open", "urllib.request.urlopen"),
    Target(
        "http", "http.client", "HTTPConnection", "request", "http.client.HTTPConnection.request"
    ),
    Target(
        "http",
        "http.client",
        "HTTPConnection",
        "getresponse",
        "http.client.HTTPConnection.getresponse",
    ),
    # Reading the body blocks on the socket only when it did not come with the headers, which
    # depends on the network: guarded whole, the read is one finding every time.
    *(
        Target("http", "http.client", "HTTPResponse", name, f"http.client.HTTPResponse.{name}")
        for name in ("read", "read1", "readinto", "readline", "peek")
    ),
    Target("http", "httpx", "Client", "send", "httpx.Client.send"),
    # httpx.get() and the others build a Client per call, and its SSL context alone is tens of
    # milliseconds of CPU: guarded whole, the call is one finding, not a send and a stall.
    *(
        Target("http", "httpx", "", name, f"httpx.{name}")
        for name in ("request", "get", "options", "head", "post", "put", "patch", "delete")
    ),
    *(
        Target(
            "wait",
            "concurrent.futures",
            "Future",
            name,
            f"concurrent.futures.Future.{name}",
            _future_pending,
        )
        for name in ("result", "exception")
    ),
    Target("wait", "concurrent.futures", "", "wait", "concurrent.futures.wait"),
    Target("wait", "concurrent.futures", "", "as_completed", "concurrent.futures.as_completed"),
    Target("file", "builtins", "", "open", "open"),
    Target("file", "io", "", "open", "io.open"),
    # Python 3.10's pathlib took its own reference to io.open at import time.
    Target("file", "pathlib", "_NormalAccessor", "open", "io.open"),
)


class Guard:
    """Arms the wrappers for the chosen groups, late-imported modules included; disarms exactly."""

    def __init__(self, groups: Iterable[str]) -> None:
        self._groups = frozenset(groups)
        self._pending = [t for t in TARGETS if t.group in self._groups]
        self._patches: list[patching.Patch] = []
        self._armed = False
        # Imports in any thread call ``imported``; reentrant, as looking up a target's owner
        # could import a module and call it again.
        self._lock = threading.RLock()

    def arm(self) -> None:
        """Patch every chosen target whose module is imported by now; until ``disarm``,
        ``imported`` patches those that later imports bring."""
        with self._lock:
            self._armed = True
            self._arm_pending()

    def imported(self) -> None:
        """A module was imported for the first time: patch the targets it brought."""
        with self._lock:
            if self._armed:
                self._arm_pending()

    def _arm_pending(self) -> None:
        pending, self._pending = self._pending, []
        still_pending = []
        for target in pending:
            module = sys.modules.get(target.module)
            if module is None or imports.initializing(module):
                still_pending.append(target)
                continue
            patch = _install(target)
            if patch is not None:
                self._patches.append(patch)
        self._pending += still_pending

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
            for patch in reversed(self._patches):
                patch.undo()
            _end_bypasses()  # after the undo, so no loop sets one again
            self._patches.clear()
            self._pending = [t for t in TARGETS if t.group in self._groups]


def owner_of(target: Target) -> Any:
    """The module or class that holds the target, or ``None`` where this version has none."""
    owner: Any = importlib.import_module(target.module)
    for part in filter(None, target.owner.split(".")):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner


def _install(target: Target) -> patching.Patch | None:
    owner = owner_of(target)
    if owner is None:
        return None
    current = getattr(owner, target.attr, None)
    if current is None or (target.own_only and target.attr not in vars(owner)):
        return None
    return patching.install(owner, target.attr, _wrap(current, target))


def _wrap(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    if target.applies is _blocking_socket:
        if target.attr in _SELF_PIPE_METHODS:
            return _wrap_self_pipe_method(original, target)
        return _wrap_socket_method(original, target)
    if target.applies is _not_the_loops_selector:
        return _wrap_selector_select(original, target)
    if target.applies is _future_pending:
        return _wrap_future_wait(original, target)
    if target.label == "concurrent.futures.wait":
        return _wrap_futures_wait(original, target)
    if target.label == "concurrent.futures.as_completed":
        return _wrap_as_completed(original, target)
    applies = target.applies

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # an error of the call (a timeout, a refused connection) is
        # shown from the user's line; these frames are the same for every one
        step = watchdog.current_step()
        if step is None or step.in_guard or (applies is not None and not applies(args, kwargs)):
            return original(*args, **kwargs)
        return _call_watched(step, target, original, args, kwargs)

    return guarded


def _wrap_socket_method(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """The same, shaped for the hot case: asyncio reads and writes non-blocking sockets (its
    self-pipe on every thread hand-off) from inside loop steps, so that test comes first."""

    @functools.wraps(original)
    def guarded(sock: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if sock.gettimeout() == 0.0:
            return original(sock, *args, **kwargs)
        step = watchdog.current_step()
        if step is None or step.in_guard:
            return original(sock, *args, **kwargs)
        return _call_watched(step, target, original, (sock, *args), kwargs)

    return guarded


_SELF_PIPE_METHODS = frozenset({"recv", "send"})


def _wrap_self_pipe_method(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """``recv`` and ``send``, which asyncio's self-pipe calls at every thread hand-off (three
    calls a wake-up), shaped like the C methods: positional-only, ``flags`` defaulting to 0, so
    the common call builds no argument tuple or dict."""

    @functools.wraps(original)
    def guarded(sock: Any, arg: Any, flags: int = 0, /) -> Any:
        __tracebackhide__ = True
        if sock.gettimeout() == 0.0:
            return original(sock, arg, flags)
        step = watchdog.current_step()
        if step is None or step.in_guard:
            return original(sock, arg, flags)
        return _call_watched(step, target, original, (sock, arg, flags), {})

    return guarded


# A future in these states hands its result (or its cancellation) over at once.
_SETTLED = frozenset(
    {
        concurrent.futures._base.CANCELLED,
        concurrent.futures._base.CANCELLED_AND_NOTIFIED,
        concurrent.futures._base.FINISHED,
    }
)


def _wrap_future_wait(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """``Future.result`` and ``.exception``, shaped for the hot case: asyncio reads every
    executor hop's finished future through ``result()``, so a settled one goes straight by."""

    @functools.wraps(original)
    def guarded(future: Any, timeout: float | None = None) -> Any:
        __tracebackhide__ = True
        if future._state in _SETTLED:
            return original(future, timeout)
        step = watchdog.current_step()
        if step is None or step.in_guard or not _future_pending((future, timeout), {}):
            return original(future, timeout)
        return _call_watched(step, target, original, (future, timeout), {})

    return guarded


# What concurrent.futures.wait() and as_completed() count as done (a future cancelled but not
# yet seen by its executor is waited for).
_NOTIFIED = frozenset(
    {concurrent.futures._base.CANCELLED_AND_NOTIFIED, concurrent.futures._base.FINISHED}
)


def _wait_returns_at_once(fs: set[Any], return_when: str) -> bool:
    done = [future for future in fs if future._state in _NOTIFIED]
    if len(done) == len(fs) or (return_when == concurrent.futures.FIRST_COMPLETED and done):
        return True
    return return_when == concurrent.futures.FIRST_EXCEPTION and any(
        not future.cancelled() and future._exception is not None for future in done
    )


def _wrap_futures_wait(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """``concurrent.futures.wait``: a wait only when what it waits for has not happened yet."""

    @functools.wraps(original)
    def guarded(
        fs: Any, timeout: float | None = None, return_when: str = concurrent.futures.ALL_COMPLETED
    ) -> Any:
        __tracebackhide__ = True
        fs = set(fs)  # as the original does: an iterator is read once
        step = watchdog.current_step()
        if step is None or step.in_guard or timeout == 0 or _wait_returns_at_once(fs, return_when):
            return original(fs, timeout, return_when)
        return _call_watched(step, target, original, (fs, timeout, return_when), {})

    return guarded


def _wrap_as_completed(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """``as_completed`` waits while it is iterated, not when called: a step of the iteration
    with no finished future left to hand over is a wait."""

    @functools.wraps(original)
    def guarded(fs: Any, timeout: float | None = None) -> Any:
        __tracebackhide__ = True
        fs = set(fs)
        waiting = set(fs)
        iterator = original(fs, timeout)
        while True:
            step = watchdog.current_step()
            ready = any(future._state in _NOTIFIED for future in waiting)
            try:
                if ready or not waiting or step is None or step.in_guard or timeout == 0:
                    future = next(iterator)
                else:
                    future = _call_watched(step, target, next, (iterator,), {})
            except StopIteration:
                return
            waiting.discard(future)
            yield future

    return guarded


def _wrap_selector_select(original: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """The same, shaped for the loop's own call between steps on every iteration: the check
    of ``watchdog.current_step()`` is inlined, and the loop's own selector is given the plain
    method as its own attribute, so its later iterations do not pass through here at all
    (nor do its self-pipe's reads and writes, see ``_LoopSocket``)."""

    @functools.wraps(original)
    def guarded(selector: Any, timeout: float | None = None) -> Any:
        step = getattr(watchdog._local, "step", None)
        if step is None or not step.start or step.in_guard:
            if type(selector).select is guarded and _is_the_loops_selector(selector):
                _bypass(selector, original, guarded)
            return original(selector, timeout)
        if _is_the_loops_selector(selector):
            return original(selector, timeout)
        return _call_watched(step, target, original, (selector, timeout), {})

    return guarded


# The loops' own selectors that carry the plain ``select``, with the function it binds; taken
# off at disarm. Weak keys, so a closed loop's selector is not kept alive.
_bypassed: weakref.WeakKeyDictionary[Any, Callable[..., Any]] = weakref.WeakKeyDictionary()
_bypassed_lock = threading.Lock()  # loops in other threads add theirs while disarm walks them


def _bypass(selector: Any, original: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    with _bypassed_lock:
        if type(selector).select is not wrapper:  # disarmed meanwhile, from another thread
            return
        try:
            selector.select = original.__get__(selector)
        except AttributeError:  # a selector class with __slots__: it keeps using the wrapper
            return
        _bypassed[selector] = original
        _bypass_self_pipe(asyncio.events._get_running_loop())


class _LoopSocket(socket.socket):
    """The class a loop's own self-pipe sockets take while the guard is armed.

    asyncio writes a byte to its self-pipe at every hand-off from another thread (each
    ``sync_to_async`` and ``to_thread`` result) and reads it back in two ``recv`` calls, the
    second failing with ``BlockingIOError``: about 40 calls a request through a Python wrapper,
    and an exception raised through it, for sockets that never block. The same layout as
    ``socket.socket``, so it can take an instance's ``__class__``, and the plain methods.
    """

    __slots__ = ()
    recv = socket.socket.recv
    send = socket.socket.send


# Self-pipe sockets given ``_LoopSocket``; handed back their class at disarm.
_retyped: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _bypass_self_pipe(loop: Any) -> None:
    """Only where our wrappers sit directly over the plain methods: one that someone else
    patched in between stays in their path."""
    for name in ("recv", "send"):
        wrapper = vars(socket.socket).get(name)
        if getattr(wrapper, "__wrapped__", None) is not getattr(_LoopSocket, name):
            return
    for sock in (getattr(loop, "_ssock", None), getattr(loop, "_csock", None)):
        if type(sock) is socket.socket:
            _retype(sock, _LoopSocket)
            _retyped.add(sock)


def _retype(sock: socket.socket, cls: type[socket.socket]) -> None:
    sock.__class__ = cls


def _end_bypasses() -> None:
    with _bypassed_lock:
        for selector, original in list(_bypassed.items()):
            own = vars(selector).get("select")
            if getattr(own, "__func__", None) is original:
                del selector.select
        _bypassed.clear()
        for sock in list(_retyped):
            if type(sock) is _LoopSocket:
                _retype(sock, socket.socket)
        _retyped.clear()


def _call_watched(
    step: Any, target: Target, original: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """Make a blocking call from inside a loop step, and report it."""
    __tracebackhide__ = True
    caller = sys._getframe(2)  # the code that called the wrapper
    step.in_guard = True  # report the outermost blocking call, not the socket under it
    start = _perf()
    try:
        return original(*args, **kwargs)
    finally:
        took = _perf() - start
        step.in_guard = False
        _report(step, target, caller, took)
        del caller


def _report(step: Any, target: Target, caller: Any, took: float) -> None:
    try:
        watchdog.explain(step, took)
        if not findings.recording() or watchdog.debugger_attached():
            return
        stack = findings.capture(caller)
        fix = findings.fix_in(findings.live_user_frame(caller), FIX[target.group])
        findings.record(
            Finding(
                kind=findings.BLOCKING_CALL,
                what=target.label,
                duration_ms=took * 1000,
                stack=stack,
                location=findings.user_frame(stack),
                request=findings.current_request.get(),
                sent_by=findings.request_sender.get(),
                fix=fix,
                thread=step.name,
            )
        )
    except Exception as exc:  # never let the detector break the application
        findings.internal_error(f"recording a call of {target.label}", exc)
