"""Async-unsafe ORM use: every ``SynchronousOnlyOperation`` becomes a finding with the fix.

Django raises it from ``async_unsafe`` when sync database code runs on a thread with a running
event loop; under ASGI the handler turns it into a 500 and the cause ends in a log line. The
exception class's ``__init__`` is wrapped while a test runs, so each one is seen where it is
made, whoever catches it later. The stack says what the user's code did: a lazy relation, a
QuerySet method, a Model method, an ``atomic`` block.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from pytest_djasync import findings, patching

_ORM_API = ("/django/db/models/query.py", "/django/db/models/base.py")
_EVALUATION = {"__iter__", "__len__", "__bool__", "__getitem__", "_fetch_all", "__aiter__"}
_ITERATE = "iterate with async for (or [obj async for obj in queryset]) instead of a sync loop"
# An evaluation that only asks a question of the rows has an async method that asks the database.
_ASK = {
    "__bool__": "await queryset.aexists() instead of `if queryset:` (or fetch the rows first,"
    " rows = [obj async for obj in queryset], when you use them)",
    "__len__": "fetch the rows with rows = [obj async for obj in queryset] (then len(rows));"
    " await queryset.acount() when only the number is needed",
}


def install() -> list[patching.Patch]:
    """Watch ``SynchronousOnlyOperation``; nothing to do when Django is not installed."""
    try:
        from django.core.exceptions import SynchronousOnlyOperation
    except ImportError:
        return []
    original = SynchronousOnlyOperation.__init__
    return [patching.install(SynchronousOnlyOperation, "__init__", _recording(original))]


def _recording(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: BaseException, *args: Any) -> None:
        original(self, *args)
        if findings.recording():
            try:
                _record(self, sys._getframe(1))
            except Exception as exc:  # never let the detector change the application
                findings.internal_error("recording a SynchronousOnlyOperation", exc)

    return __init__


def _record(error: BaseException, frame: FrameType) -> None:
    stack = findings.capture(frame)
    what, fix = describe(frame)
    findings.record(
        findings.Finding(
            kind=findings.SYNC_ONLY,
            what=what,
            duration_ms=None,
            stack=stack,
            location=findings.user_frame(stack),
            request=findings.current_request.get(),
            sent_by=findings.request_sender.get(),
            fix=fix,
            thread=threading.current_thread().name,
            exception=error,
        )
    )


def describe(frame: FrameType | None) -> tuple[str, str]:
    """What the user's code did to reach ``frame`` (innermost), and the fix that fits it."""
    api: FrameType | None = None
    lazy: tuple[str, str] | None = None
    maker: FrameType | None = None  # the innermost frame outside Django's database layer
    reader: FrameType | None = None  # a package's frame that read the lazy attribute
    while frame is not None and not findings.is_user_path(frame.f_code.co_filename):
        code = frame.f_code
        if lazy is not None and reader is None and not _in_django(frame):
            reader = frame
        if maker is None and not _in_the_database_layer(code.co_filename):
            maker = frame
        elif maker is not None and _same_self(frame, maker):
            maker = frame  # the method that was called, not its helper: get, not _base_get_many
        lazy = _lazy_request_attribute(code) or lazy  # the outermost: a user loads a session
        if code.co_name == "__get__" and code.co_filename.endswith("related_descriptors.py"):
            return _lazy_relation(frame)
        if code.co_name == "__enter__" and code.co_filename.endswith("/django/db/transaction.py"):
            return "transaction.atomic()", (
                "put the whole transaction in one sync function and await"
                " sync_to_async(that_function)(...): atomic() cannot be entered on the loop"
            )
        if code.co_filename.replace(os.sep, "/").endswith(_ORM_API):
            api = frame  # keep the outermost ORM frame: the method the user called
        frame = frame.f_back
    if lazy is not None:
        what, fix = lazy
        if reader is not None:
            fix = _read_by_a_package(reader, what)
    else:
        what, fix = _orm_method(api) if api is not None else _sync_call(maker)
        if api is not None:
            evaluated = fix is _ITERATE or fix in _ASK.values()
            fix = _called_by(api.f_back, evaluated=evaluated) or fix
    return what, findings.fix_in(frame, fix, database=True)


_DATABASE_LAYER = tuple(
    os.path.join("django", *parts) for parts in (("db", ""), ("utils", "asyncio.py"))
)


def _in_the_database_layer(path: str) -> bool:
    return any(part in path for part in _DATABASE_LAYER)


def _same_self(frame: FrameType, other: FrameType) -> bool:
    mine = frame.f_locals.get("self")
    return mine is not None and mine is other.f_locals.get("self")


def _sync_call(maker: FrameType | None) -> tuple[str, str]:
    """A query made below no QuerySet or Model method: name the code that made it (Django's
    database cache, a library), and its async twin when it has one."""
    if maker is None:
        return _SYNC_CALL, _WRAP
    qualname, name = findings.method_name(maker), maker.f_code.co_name
    twin = f"a{name}"
    if hasattr(maker.f_locals.get("self"), twin):
        return f"{_SYNC_CALL} in {qualname}()", (
            f"await its async twin .{twin}(...) where your code calls .{name}(); where Django"
            " calls it for you (a decorator or a middleware on an async view), keep that view"
            " sync or run that step through sync_to_async"
        )
    return f"{_SYNC_CALL} in {qualname}()", _WRAP


def _called_by(caller: FrameType | None, evaluated: bool) -> str | None:
    """The fix when code that is not the project's made the ORM call: a serializer or a
    template's ``for`` evaluating the QuerySet it was handed, a form field looking a choice
    up. The project has no line of its own to make async."""
    while caller is not None and _in_the_database_layer(caller.f_code.co_filename):
        caller = caller.f_back  # a manager's proxy method: Author.objects.count()
    if caller is None or findings.is_user_path(caller.f_code.co_filename):
        return None
    package, name = findings.package_and_name(caller)
    if evaluated:
        return (
            f"{package}'s {name}() evaluates the QuerySet on the loop, not your code: hand it"
            " the rows instead (rows = [obj async for obj in queryset]), with"
            " .select_related()/.prefetch_related() for the relations it reads"
        )
    return (
        f"{package}'s {name}() queries the database on the loop, not your code: run the call"
        " of yours that reaches it (form.is_valid(), a render) in sync_to_async(...) and await"
        " it"
    )


_LAZY_USER = (
    "the lazy request.user (loaded from the session and the database when first used)",
    "resolve it on the loop first with request.user = await request.auser() (Django 5.0+),"
    " before your code or a template (the auth context processor's user) reads request.user;"
    " before Django 5.0, read it inside sync_to_async",
)
_LAZY_SESSION = (
    "the lazy request.session (loaded from its backend when first used)",
    "use the session's async methods, await request.session.aget(key) or .aset(key, value)"
    " (Django 5.1+); once one of them has loaded it, sync reads are served from memory;"
    " before Django 5.1, use it inside sync_to_async",
)


def _lazy_request_attribute(code: CodeType) -> tuple[str, str] | None:
    """The lazy ``request.user`` or ``request.session`` that ``code``, a frame's, is loading."""
    path = code.co_filename.replace(os.sep, "/")
    if code.co_name == "get_user" and path.endswith("/django/contrib/auth/middleware.py"):
        return _LAZY_USER
    if "/django/contrib/sessions/backends/" in path and code.co_name == "_get_session":
        return _LAZY_SESSION
    return None


def _in_django(frame: FrameType) -> bool:
    """Django's own code, by module: a package's Django integration lives in a ``django``
    directory too (``sentry_sdk/integrations/django/``)."""
    module = str(frame.f_globals.get("__name__", ""))
    return module == "django" or module.startswith("django.")


def _read_by_a_package(reader: FrameType, what: str) -> str:
    """The fix when an installed package read ``request.user`` or ``request.session`` (an
    error tracker adding the user to its events once the response is sent): no line of the
    project's reads it, and the package may have caught the error, so the response looked
    fine."""
    package, name = findings.package_and_name(reader)
    attribute = "request.session" if what == _LAZY_SESSION[0] else "request.user"
    middleware, load = _LOADED_BY[attribute]
    return (
        f"{package}'s {name}() read {attribute} on the loop, not your code (a package may catch"
        f" the error: the response looks fine, what it wanted is lost): load it before the"
        f" package reads it, in an async middleware placed after Django's {middleware} that"
        f" does {load}"
    )


# The middleware that sets each lazy attribute up, and how an async one loads it on the loop
_LOADED_BY = {
    "request.user": (
        "AuthenticationMiddleware",
        "request.user = await request.auser() (Django 5.0+; before it, await"
        " sync_to_async(lambda: request.user.is_authenticated)(), which loads it in a thread)",
    ),
    "request.session": ("SessionMiddleware", "await request.session.aget(...) (Django 5.1+)"),
}


_SYNC_CALL = "a sync database call"
_WRAP = "wrap the sync ORM block in sync_to_async(...) and await it"
_AITERATOR = (
    "Django's aiterator() ran the query on the loop itself, which it does for values_list()"
    " with several fields (a Django bug): iterate the queryset instead (async for row in"
    " queryset), which fetches its rows in a thread"
)


def _lazy_relation(frame: FrameType) -> tuple[str, str]:
    descriptor: Any = frame.f_locals.get("self")
    field = getattr(descriptor, "field", None) or getattr(descriptor, "related", None)
    name = getattr(field, "name", "?")
    model = getattr(getattr(field, "model", None), "__name__", "?")
    if type(descriptor).__name__.startswith("Reverse") and hasattr(descriptor, "related"):
        name = descriptor.related.get_accessor_name()
        model = descriptor.related.related_model.__name__
    return f"lazy relation {model}.{name}", (
        f"fetch it with the query: .select_related({name!r}) (or .prefetch_related({name!r}) for"
        " a many-valued relation) before the await that loads the object"
    )


def _orm_method(frame: FrameType) -> tuple[str, str]:
    owner, method = _owner_and_name(frame)
    qualname = f"{owner}.{method}" if owner else method
    if method in _EVALUATION:
        return f"{owner or 'QuerySet'} evaluated ({method})", _ASK.get(method, _ITERATE)
    if method == "aiterator":  # the project called the async API; Django's own code failed it
        return f"{qualname}()", _AITERATOR
    async_twin = f"a{method}"
    if owner in ("QuerySet", "Model") and _has_async_twin(owner, async_twin):
        return f"{qualname}()", f"await the async method .{async_twin}(...) instead"
    return f"{qualname}()", _WRAP


def _owner_and_name(frame: FrameType) -> tuple[str, str]:
    """("QuerySet", "count") for a frame of ``QuerySet.count``; Python 3.10 has no
    ``co_qualname``, so the class comes from the frame's ``self`` there."""
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname is not None:
        owner, _, name = qualname.rpartition(".")
        return owner, name
    instance = frame.f_locals.get("self")
    owner = next(
        (cls.__name__ for cls in type(instance).__mro__ if cls.__name__ in ("QuerySet", "Model")),
        "",
    )
    return owner, code.co_name


def _has_async_twin(owner: str, name: str) -> bool:
    from django.db.models import Model, QuerySet

    return hasattr(QuerySet if owner == "QuerySet" else Model, name)


def expected_by(
    finding: findings.Finding, test: CodeType | None, escaped: BaseException | None = None
) -> bool:
    """True when the error reached the test's own code and stopped there: the test caught it
    on purpose (``pytest.raises(SynchronousOnlyOperation)`` or a try/except). One that went on
    out of the test (``escaped``, Django's test client re-raises a view's) failed it."""
    error = finding.exception
    if error is None or test is None or _carries(escaped, error):
        return False
    tb = error.__traceback__
    if tb is None:  # unittest's assertRaises drops it once it has caught the error, and so
        # does a library that turns it into an error of its own (pydantic's validation), which
        # then fails the test: only a test that did not fail caught it
        return escaped is None and _raised_below(finding.stack, test)
    while tb is not None:
        if tb.tb_frame.f_code is test:
            return True
        tb = tb.tb_next
    return False


def _raised_below(stack: findings.Stack, test: CodeType) -> bool:
    """True when the test's code was on the stack the error was raised from: an error that did
    not leave the test, and lost its traceback on the way, was caught on its way to it."""
    name = getattr(test, "co_qualname", test.co_name)
    return any(f.path == test.co_filename and f.function == name for f in stack)


def _carries(escaped: BaseException | None, error: BaseException, depth: int = 0) -> bool:
    """True when ``error`` is ``escaped``, its cause or context, or in its exception group."""
    if escaped is None or depth > 20:
        return False
    if escaped is error:
        return True
    inner = [*getattr(escaped, "exceptions", ()), escaped.__cause__ or escaped.__context__]
    return any(_carries(e, error, depth + 1) for e in inner if isinstance(e, BaseException))
