"""Counting asgiref's sync/async crossings and saying who caused each one.

Every call of a ``SyncToAsync`` or ``AsyncToSync`` adapter is a thread hop. ``__call__`` is
wrapped at class level, so adapters made before the test (Django builds its middleware chain
once) are counted too. Recording a crossing keeps only references (the wrapped callable, a few
caller frames' code and line); attribution runs later, when someone asks, so the hop itself
pays little. Nothing here ever ``repr()``s the wrapped callable: a QuerySet's repr runs a query.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import os
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, markcoroutinefunction

from pytest_djasync import djangohooks, findings, patching

SYNC_TO_ASYNC = "sync_to_async"
ASYNC_TO_SYNC = "async_to_sync"
ORIGINS = (
    "middleware",
    "view",
    "orm",
    "async-api",
    "signal",
    "handler",
    "library",
    "test-client",
    "user",
)
_CALLER_DEPTH = 8  # enough to get past asgiref and Django to the code that caused the hop
_ASGIREF = "asgiref."


@dataclasses.dataclass(slots=True)
class Crossing:
    """One adapter call, recorded cheaply and explained on demand."""

    direction: str
    thread_sensitive: bool
    func: Any  # the wrapped callable; never repr()'d
    callers: list[tuple[CodeType, int, str]]  # innermost first: code, line, module
    caller_self: Any  # ``self`` of the calling frame: the middleware behind an adapter, or
    # the streaming response whose sync iterator Django reads in a thread
    request: str | None
    thread: str
    outer_loop: bool = False  # async_to_sync: runs on the loop of an enclosing sync_to_async
    # When it ran, in ticks of one counter (an order, not a duration), and the crossing whose
    # work made it: only crossings of one parent whose spans overlap ran concurrently (a
    # crossing made inside another one's work overlaps it without running beside it).
    start: int = 0
    end: int | None = None  # None: never awaited, or still running
    parent: Crossing | None = None
    _explained: tuple[str, str, Source | None] | None = None

    @property
    def origin(self) -> str:
        return self._explain()[0]

    @property
    def detail(self) -> str:
        return self._explain()[1]

    @property
    def wrapped(self) -> str:
        """The wrapped callable's name, as the listings show it."""
        return callable_name(self.func)

    @property
    def djangos_middleware(self) -> str | None:
        """The class name of the middleware from Django itself (``django.*``) that this
        crossing is for, or ``None``: the project can only remove that one, not rewrite it."""
        if self.origin != "middleware" or self.detail.startswith("mode adapter"):
            return None  # an adapter is there for a sync-only middleware, whichever it wraps
        func = _unwrap(self.func)
        for candidate in (getattr(func, "__self__", None), self.caller_self, func):
            if _is_middleware(candidate):
                cls = type(candidate)
                return cls.__qualname__ if cls.__module__.startswith("django.") else None
        return None

    @property
    def package(self) -> str | None:
        """The installed package (not Django) that made this hop itself, or ``None``."""
        if self.origin != "library":
            return None
        return self.detail.rpartition("(by ")[2].rstrip(")")

    @property
    def installed_for(self) -> str | None:
        """``Name (package)`` of the installed package's middleware or streaming response
        (not Django's) that this hop is for, or ``None``: the project cannot rewrite that
        code, only upgrade, replace or remove it."""
        source = self._explain()[2]
        if source is None:
            return None
        package = _package_of(source)
        return f"{source[0]} ({package})" if package else None

    def _explain(self) -> tuple[str, str, Source | None]:
        if self._explained is None:
            self._explained = _explanation(self)
        return self._explained

    def user_line(self) -> str | None:
        for code, line, _ in self.callers:
            if findings.is_user_path(code.co_filename):
                return f"{_shown(code.co_filename)}:{line}"
        return None

    def line(self, root: Any = None) -> str:
        sensitive = "thread_sensitive" if self.thread_sensitive else "any thread"
        if self.direction == ASYNC_TO_SYNC:
            sensitive = "outer loop" if self.outer_loop else "new loop"
        request = f" while serving {self.request}" if self.request else ""
        return f"{self.origin}: {self.detail} [{self.direction}, {sensitive}]{request}"


class Recorder:
    """The crossings of one test (or one ``with`` block); thread-safe appends only.

    A recorder made with ``explain=False`` only counts (in total and by request): a crossing
    recorded for nobody who wants it explained costs no look at the caller's frames.
    """

    def __init__(self, explain: bool = True) -> None:
        self.explain = explain
        self.crossings: list[Crossing] = []  # with explain=True: every crossing, explainable
        self._requests: list[str | None] = []  # with explain=False: each crossing's request

    @property
    def total(self) -> int:
        return len(self.crossings) + len(self._requests)

    def by_origin(self) -> dict[str, int]:
        counts = Counter(c.origin for c in self.crossings)
        return {origin: counts[origin] for origin in ORIGINS if counts[origin]}

    def by_request(self) -> dict[str, int]:
        requests = [c.request for c in self.crossings] + self._requests
        return dict(Counter(r for r in requests if r))

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Crossing]:
        return iter(list(self.crossings))


_recorders: list[Recorder] = []  # every active recorder gets every crossing (nested blocks)
_explaining = 0  # how many of them explain: none, in a plain --djasync run


def _count() -> None:
    """A crossing that no recorder wants explained: only its request is kept."""
    request = findings.current_request.get()
    for recorder in tuple(_recorders):
        recorder._requests.append(request)


def _record(direction: str, adapter: Any, func: Any, caller: Any) -> Crossing:
    recorders = tuple(_recorders)
    callers: list[tuple[CodeType, int, str]] = []
    frame = caller
    while frame is not None and len(callers) < _CALLER_DEPTH:
        callers.append((frame.f_code, frame.f_lineno, frame.f_globals.get("__name__", "?")))
        frame = frame.f_back
    a2s = direction == ASYNC_TO_SYNC
    # a response's __aiter__ reading its sync iterator: its self says whose response it is
    wants_self = a2s or (func is list and caller.f_code.co_name == "__aiter__")
    crossing = Crossing(
        direction,
        bool(getattr(adapter, "_thread_sensitive", False)),
        func,
        callers,
        caller.f_locals.get("self") if wants_self else None,
        findings.current_request.get(),
        threading.current_thread().name,
        a2s and _runs_on_outer_loop(adapter),
        start=next(_ticks),
        parent=_running.get(),
    )
    for recorder in recorders:
        if recorder.explain:
            recorder.crossings.append(crossing)
        else:
            recorder._requests.append(crossing.request)
    return crossing


# Only for explained crossings: which one's work is running (asgiref copies the context into
# the thread or loop it hops to), and the ticks that order their starts and ends.
_running: contextvars.ContextVar[Crossing | None] = contextvars.ContextVar(
    "djasync_crossing", default=None
)
_ticks = itertools.count(1)


async def _awaited(crossing: Crossing, call: Callable[[], Awaitable[Any]]) -> Any:
    """A sync_to_async call awaited as ``crossing``: what it runs knows it, and it ends. The
    call's coroutine is made here, so one never awaited warns once, under asgiref's name."""
    __tracebackhide__ = True  # the call's own error is shown from the user's line
    token = _running.set(crossing)
    try:
        return await call()
    finally:
        _running.reset(token)
        crossing.end = next(_ticks)


_awaited.__qualname__ = "SyncToAsync.__call__"  # what "never awaited" names: the user's call


def _called(crossing: Crossing, call: Callable[[], Any]) -> Any:
    """An async_to_sync call made as ``crossing``: what it runs knows it, and it ends."""
    __tracebackhide__ = True
    token = _running.set(crossing)
    try:
        return call()
    finally:
        _running.reset(token)
        crossing.end = next(_ticks)


def _runs_on_outer_loop(adapter: Any) -> bool:
    """Whether asgiref will run this AsyncToSync call on the loop of the SyncToAsync call that
    started this thread (as it does under Django's ASGI handler), not on a new loop."""
    if getattr(adapter, "force_new_loop", False):
        return False
    local = SyncToAsync.threadlocal
    loop = getattr(local, "main_event_loop", None)
    same_process = getattr(local, "main_event_loop_pid", None) == os.getpid()
    return loop is not None and same_process and not loop.is_closed()


def _counting_sync_to_async(original: Callable[..., Any]) -> Callable[..., Any]:
    # A plain function returning the coroutine, so the crossing is recorded where the adapter
    # is called: awaited later inside asyncio.gather, its caller would be the event loop.
    @functools.wraps(original)
    def __call__(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        if _recorders and id(__call__) in _shared.wrappers:  # live, not a stale one restored
            if _explaining:  # only then the extra coroutine that times it
                crossing = _record(SYNC_TO_ASYNC, self, self.func, sys._getframe(1))
                return _awaited(crossing, functools.partial(original, self, *args, **kwargs))
            _count()
        return original(self, *args, **kwargs)

    return markcoroutinefunction(__call__)


def _counting_async_to_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __call__(self: AsyncToSync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # an error of the call (asgiref's own RuntimeError on a loop
        # thread) is shown from the user's line, not as if it came from the plugin
        if _recorders and id(__call__) in _shared.wrappers:
            if _explaining:
                crossing = _record(ASYNC_TO_SYNC, self, self.awaitable, sys._getframe(1))
                return _called(crossing, functools.partial(original, self, *args, **kwargs))
            _count()
        return original(self, *args, **kwargs)

    return __call__


def _wrap_adapters() -> list[patching.Patch]:
    return [
        patching.install(SyncToAsync, "__call__", _counting_sync_to_async(SyncToAsync.__call__)),
        patching.install(AsyncToSync, "__call__", _counting_async_to_sync(AsyncToSync.__call__)),
    ]


_shared = patching.Shared(_wrap_adapters)


def start(recorder: Recorder) -> Recorder:
    """Send every crossing to ``recorder`` from now on; wraps the adapters if nobody has yet."""
    global _explaining
    _shared.acquire(recorder)
    djangohooks.naming.acquire(recorder)  # so that each crossing knows its request
    _recorders.append(recorder)
    _explaining += recorder.explain
    return recorder


def stop(recorder: Recorder) -> None:
    """Stop feeding ``recorder``; the last one out restores asgiref exactly."""
    global _explaining
    if recorder in _recorders:
        _recorders.remove(recorder)
        _explaining -= recorder.explain
    djangohooks.naming.release(recorder)
    _shared.release(recorder)


def pin(owner: object) -> None:
    """Keep the wrappers installed while ``owner`` (a whole watched session) runs."""
    _shared.acquire(owner)


def unpin(owner: object) -> None:
    _shared.release(owner)


# -- attribution --------------------------------------------------------------------------------

_HOOKS = frozenset(
    {
        "process_request",
        "process_response",
        "process_view",
        "process_exception",
        "process_template_response",
    }
)


def callable_name(func: Any) -> str:
    """A readable name for a callable, from its type and qualified name only (no repr)."""
    func = _unwrap(func)
    owner = getattr(func, "__self__", None)
    name = getattr(func, "__qualname__", None)
    if owner is not None and name:
        return f"{type(owner).__qualname__}.{getattr(func, '__name__', name)}"
    if name:
        module = getattr(func, "__module__", None) or ""
        return f"{module}.{name}" if module else name
    return f"{type(func).__module__}.{type(func).__qualname__} instance"


def _unwrap(func: Any) -> Any:
    for _ in range(20):  # follow functools.wraps chains (convert_exception_to_response)
        inner = getattr(func, "__wrapped__", None)
        if inner is None:
            return func
        func = inner
    return func


def _is_middleware(obj: Any) -> bool:
    # Middleware keeps the next handler in an instance attribute; Django's handlers have a
    # get_response *method*, so they do not qualify.
    return callable(obj) and "get_response" in getattr(obj, "__dict__", {})


Source = tuple[str, str, str]  # the name, module and file of the code a hop is for


def attribute(crossing: Crossing) -> tuple[str, str]:
    """(origin, detail) for one crossing; see the module docstring for the rules' order."""
    origin, detail, _ = _explanation(crossing)
    return origin, detail


def _explanation(crossing: Crossing) -> tuple[str, str, Source | None]:
    """(origin, detail) and the source of the middleware or response the hop is for, if any:
    whether it is an installed package's decides what the project can do about it."""
    hop = _middleware_hop(crossing)
    if hop is not None:
        return "middleware", *hop
    if _reads_a_stream(crossing):
        return "handler", *_stream(crossing.caller_self)
    origin, detail = _by_caller(crossing)
    if origin == "signal":
        origin, detail = _signal(crossing, detail)
    return origin, detail, None


def _middleware_hop(crossing: Crossing) -> tuple[str, Source] | None:
    func = _unwrap(crossing.func)
    owner = getattr(func, "__self__", None)
    if owner is not None and _is_middleware(owner) and getattr(func, "__name__", "") in _HOOKS:
        # only MiddlewareMixin runs process_request/response in a thread itself; Django adapts
        # any middleware's process_view and process_template_response to the request's mode
        kind = "MiddlewareMixin hook" if _is_mixin(type(owner)) else "middleware hook"
        return f"{type(owner).__qualname__}.{func.__name__} ({kind})", _source(owner)
    caller_is_middleware = _is_middleware(crossing.caller_self)
    if _is_middleware(func) and not caller_is_middleware:
        return _around(func)
    if caller_is_middleware:  # a sync-only middleware calls the async rest of the chain
        below = crossing.caller_self
        return f"mode adapter below {type(below).__qualname__}", _source(below)
    if _is_chain_link(crossing.func):  # function middleware: no instance holds get_response
        if not hasattr(owner, "load_middleware"):
            return _around(func)
        for code, _, module in crossing.callers:
            if not module.startswith(_ASGIREF):
                name = f"{module}.{_qualname(code)}"
                return f"mode adapter below {name}", (name, module, code.co_filename)
    return None


def _around(link: Any) -> tuple[str, Source]:
    """The adapter from the async handler into the sync chain, put on the outermost sync
    link. Django puts every async-capable middleware above a sync-only one in sync mode too,
    so an async-capable link is named with the sync-only one below it that did so."""
    name = _link_name(link)
    if not _async_capable(link):
        return f"mode adapter around {name}", _source(link)
    below = _sync_only_below(link)
    if below is None:
        return f"mode adapter around {name}", _source(link)
    why = f"in sync mode for {_link_name(below)} below it"
    return f"mode adapter around {name} ({why})", _source(below)


def _sync_only_below(link: Any) -> Any:
    """The first middleware down the ``get_response`` chain from ``link`` that is not
    async-capable, or ``None``."""
    for _ in range(200):  # a chain is as long as settings.MIDDLEWARE
        link = _unwrap(_next_link(link))
        if link is None or not _is_link(link):
            return None
        if not _async_capable(link):
            return link
    return None


def _next_link(link: Any) -> Any:
    if _is_middleware(link):
        return vars(link)["get_response"]
    return _closure(link).get("get_response")


def _is_link(obj: Any) -> bool:
    """A middleware instance, or the function a middleware factory returned (it closes over
    ``get_response``)."""
    code = getattr(obj, "__code__", None)
    return _is_middleware(obj) or (code is not None and "get_response" in code.co_freevars)


def _async_capable(link: Any) -> bool:
    if _is_middleware(link):
        return getattr(type(link), "async_capable", False) is True
    return getattr(_factory(link), "async_capable", False) is True


def _factory(function: Any) -> Any:
    """The module-level middleware factory that made ``function`` (``factory.<locals>.f``)."""
    qualname = getattr(function, "__qualname__", "")
    if ".<locals>." not in qualname:
        return None
    found: Any = sys.modules.get(getattr(function, "__module__", None) or "")
    for part in qualname.partition(".<locals>.")[0].split("."):
        found = getattr(found, part, None)
    return found


def _link_name(link: Any) -> str:
    return type(link).__qualname__ if _is_middleware(link) else callable_name(link)


def _source(obj: Any) -> Source:
    """The name, module and file of a middleware (class, instance or function) or response."""
    code = getattr(obj, "__code__", None)
    if code is not None:  # a function middleware
        return callable_name(obj), getattr(obj, "__module__", "") or "", code.co_filename
    cls = obj if isinstance(obj, type) else type(obj)
    module = sys.modules.get(cls.__module__)
    return cls.__qualname__, cls.__module__, getattr(module, "__file__", None) or ""


def _is_mixin(cls: type) -> bool:
    from django.utils.deprecation import MiddlewareMixin

    return issubclass(cls, MiddlewareMixin)


def _reads_a_stream(crossing: Crossing) -> bool:
    """Django's StreamingHttpResponse.__aiter__ reading a sync iterator (a FileResponse's
    file, WhiteNoise's) to the end with sync_to_async(list), under the ASGI handler."""
    if crossing.func is not list or not crossing.callers:
        return False
    code, _, module = crossing.callers[0]
    return module == "django.http.response" and code.co_name == "__aiter__"


def _stream(response: Any) -> tuple[str, Source]:
    source = _source(response)
    package = _package_of(source)
    whose = f"{source[0]}, from {package}" if package else source[0]
    return f"a streaming response's sync iterator read in a thread ({whose})", source


def _package_of(source: Source) -> str | None:
    """The installed package, other than Django, whose code ``source`` is; else ``None``."""
    _, module, path = source
    if module.startswith("django.") or not findings.is_installed(path):
        return None
    return module.partition(".")[0]


def _is_chain_link(func: Any) -> bool:
    # convert_exception_to_response() wraps every link of the middleware chain in an ``inner``;
    # functools.wraps copies the wrapped callable's __module__ and __name__, so ask the code
    # and the globals. (response_for_exception, from the same module, is no link.)
    globals_ = getattr(func, "__globals__", None) or {}
    code = getattr(func, "__code__", None)
    return (
        globals_.get("__name__") == "django.core.handlers.exception"
        and code is not None
        and code.co_name == "inner"
    )


def _shown(path: str) -> str:
    """A user's file as listings show it: relative to the working directory (the project's
    root, as a rule) when inside it."""
    return findings.relative_path(path, Path.cwd())


def _qualname(code: CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)


def _by_caller(crossing: Crossing) -> tuple[str, str]:
    for code, line, module in crossing.callers:
        if module.startswith(_ASGIREF):
            continue
        if findings.is_user_path(code.co_filename):
            return "user", f"{callable_name(crossing.func)} at {_shown(code.co_filename)}:{line}"
        origin = _django_origin(module, code.co_name)
        if origin == "view" and _name(crossing.func) == "process_exception_by_middleware":
            origin = "handler"  # a view raised: Django asks the middleware, in a thread
        elif origin == "handler" and _name(crossing.func) == code.co_name[1:]:
            origin = "async-api"  # cache.aget running cache.get, Task.aenqueue running enqueue
        if origin == "orm":
            return _orm_call(crossing, code)
        if origin is not None:
            return origin, _django_detail(origin, crossing, code)
        package = _installed_package(module, code.co_filename)
        if package is not None:  # a library's own hop (adrf's fields, Channels' dispatch)
            origin = "test-client" if _TESTING.intersection(module.split(".")) else "library"
            return origin, f"{callable_name(crossing.func)} (by {package})"
        # the standard library (functools, contextlib): the cause is further out
    where = crossing.user_line()
    return "user", callable_name(crossing.func) + (f" at {where}" if where else "")


_TESTING = frozenset({"test", "testing", "tests"})  # rest_framework.test, channels.testing


def _name(func: Any) -> str:
    return str(getattr(_unwrap(func), "__name__", ""))


def _installed_package(module: str, path: str) -> str | None:
    """The top-level name of the installed package (other than Django) that ``path`` is in."""
    if findings.is_installed(path):
        return module.partition(".")[0]
    return None


def _django_origin(module: str, function: str) -> str | None:
    if module.startswith("django.db."):
        return "orm"
    if module.startswith("django.dispatch"):
        return "signal"
    if module == "django.core.handlers.base" and function == "_get_response_async":
        return "view"  # a sync view, or a TemplateResponse's render (see _by_caller)
    if module.startswith(("django.test", "pytest_django", "pytest_djasync")):
        return "test-client"
    if module.startswith("django."):
        return "handler"
    return None


def _orm_call(crossing: Crossing, method: CodeType) -> tuple[str, str]:
    """An async ORM method's hop (``QuerySet.aget``), put on whoever called the method: a line
    of the project's, an async API of Django's that queries for it (``request.auser()``), or
    an installed package (graphql-core iterating a QuerySet with ``async for``)."""
    name = _qualname(method)
    for code, line, module in crossing.callers:
        if module.startswith((_ASGIREF, "django.db.")):
            continue
        if findings.is_user_path(code.co_filename):
            return "orm", f"{name} at {_shown(code.co_filename)}:{line}"
        if module.startswith("django."):
            return "async-api", f"{name} (by Django's {_qualname(code)})"
        package = _installed_package(module, code.co_filename)
        if package is not None:
            return "library", f"{name} (by {package})"
    return "orm", name


def _django_detail(origin: str, crossing: Crossing, code: CodeType) -> str:
    name = callable_name(crossing.func)
    if origin == "view" and _name(crossing.func) == "render":
        return f"{name} (a TemplateResponse, rendered after the view)"
    return name


_SIGNAL_MODULES = (
    "django.core.signals",
    "django.db.models.signals",
    "django.db.backends.signals",
    "django.test.signals",
    "django.contrib.auth.signals",
)


def _signal(crossing: Crossing, detail: str) -> tuple[str, str]:
    """Name the signal and receivers behind ``Signal.asend``'s (or ``send``'s) one adapter.

    Django connects sync receivers of its own to ``request_started`` (``reset_queries``) and
    ``request_finished``, so every request pays that hop whatever the project does: it is the
    handler's, not a receiver the project could make async (on Django 4.2 the handler itself
    wraps ``request_started.send`` in ``sync_to_async``).
    """
    cells = _closure(crossing.func)
    kind = "sync" if "sync_receivers" in cells else "async"
    receivers = cells.get(f"{kind}_receivers")
    if not isinstance(receivers, list) or not receivers:
        return "signal", detail
    names = ", ".join(callable_name(receiver) for receiver in receivers)
    what = f"{_signal_name(cells.get('self'), crossing)}: {kind} receivers {names}"
    modules = (getattr(_unwrap(receiver), "__module__", None) or "" for receiver in receivers)
    if any(module.startswith("django.") for module in modules):
        return "handler", what
    return "signal", what


def _closure(func: Any) -> dict[str, Any]:
    code = getattr(func, "__code__", None)
    cells = getattr(func, "__closure__", None) or ()
    if code is None:
        return {}
    found = {}
    for name, cell in zip(code.co_freevars, cells, strict=False):
        try:
            found[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return found


def _signal_name(signal: Any, crossing: Crossing) -> str:
    """The signal's name in Django's signal modules or in a module that sent it."""
    if signal is None:
        return "a signal"
    senders = (module for _, _, module in crossing.callers if not module.startswith(_ASGIREF))
    for module_name in (*_SIGNAL_MODULES, *senders):
        module = sys.modules.get(module_name)
        for name, value in list(vars(module).items()) if module is not None else ():
            if value is signal:
                return name
    return "a signal"


def hooks_in_sync_mode(recorder: Recorder) -> list[str]:
    """``MiddlewareMixin`` middleware of ``settings.MIDDLEWARE`` whose hooks cost no hop in
    ``recorder`` although mode adapters did: they ran in sync mode beside a sync-only one.
    Made async-capable, that one would put them in async mode, where each hook is a hop."""
    if not any(c.detail.startswith("mode adapter") for c in recorder):
        return []
    seen = {c.detail.partition(".")[0] for c in recorder if "(MiddlewareMixin hook)" in c.detail}
    mixins = (cls for cls in _middleware() if _is_mixin_with_hooks(cls))
    return [cls.__qualname__ for cls in mixins if cls.__qualname__ not in seen]


def sync_only_middleware() -> list[str]:
    """The project's middleware of ``settings.MIDDLEWARE`` that Django can only run in sync
    mode: the ones the project could make async-capable. An installed package's is not the
    project's to rewrite (its mode adapters say whose they are: ``Crossing.installed_for``)."""
    return [
        _middleware_name(middleware)
        for middleware in _middleware()
        if getattr(middleware, "sync_capable", True)
        and not getattr(middleware, "async_capable", False)
        and not findings.is_installed(_source(middleware)[2])
    ]


def _middleware() -> Iterator[Any]:
    """The classes and factories of ``settings.MIDDLEWARE`` that import."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    for path in settings.MIDDLEWARE:
        with contextlib.suppress(ImportError):
            yield import_string(path)


def _middleware_name(middleware: Any) -> str:
    if isinstance(middleware, type):
        return middleware.__qualname__
    return f"{getattr(middleware, '__module__', '?')}.{getattr(middleware, '__qualname__', '?')}"


def _is_mixin_with_hooks(middleware: Any) -> bool:
    """A ``MiddlewareMixin`` class that has a hook."""
    if not (isinstance(middleware, type) and _is_mixin(middleware)):
        return False
    hooks = ("process_request", "process_response", "process_view")
    return any(hasattr(middleware, hook) for hook in hooks)


def ran_concurrently(crossings: Iterable[Crossing]) -> list[Crossing]:
    """The project's ``sync_to_async(..., thread_sensitive=False)`` calls that ran beside
    another such call of the same request and parent (``asyncio.gather`` of them): folded into
    one function, they would run one after the other. (A thread-sensitive call waits for the
    one thread of its request anyway, so folding those loses nothing.)"""
    siblings: dict[tuple[int, str | None], list[Crossing]] = defaultdict(list)
    for crossing in crossings:
        any_thread = crossing.direction == SYNC_TO_ASYNC and not crossing.thread_sensitive
        if any_thread and crossing.origin == "user":  # explained last: it costs most
            siblings[(id(crossing.parent), crossing.request)].append(crossing)
    found: list[Crossing] = []
    for group in siblings.values():
        found += _overlapping(sorted(group, key=lambda crossing: crossing.start))
    return found


def _overlapping(ordered: list[Crossing]) -> list[Crossing]:
    """Of crossings in order of their start, those whose spans overlap another's."""
    found: list[Crossing] = []
    cluster: list[Crossing] = []
    reach = -1
    for crossing in ordered:
        if cluster and crossing.start > reach:  # started after all before it had ended
            found += cluster if len(cluster) > 1 else []
            cluster = []
        cluster.append(crossing)
        reach = max(reach, crossing.start if crossing.end is None else crossing.end)
    return found + (cluster if len(cluster) > 1 else [])
