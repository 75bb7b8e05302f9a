"""The database thread: an async test's thread-sensitive sync work, inside the test's transaction.

Django connections are per thread. pytest-django opens a test's transaction on the main
thread's connection, but an async test (pytest-asyncio) sends its ORM calls and the app's
thread-sensitive sync work to asgiref's executor threads, whose own connections cannot see the
transaction (pytest-django issue 580). While a test runs, this module sends all of that work to
one thread that uses the main thread's connection objects, the way Django's
``LiveServerTestCase`` shares an in-memory SQLite connection with its server thread:

* ``SyncToAsync.single_thread_executor`` (sync work with no context) becomes that thread;
* every ``ThreadSensitiveContext`` (one per request in Django's ``ASGIHandler``) maps to it too;
* Django's ``close_old_connections`` receivers are disconnected, so a request's end does not
  close the connection that holds the test's transaction, and the shared connections ignore
  ``close_old_connections()`` called outright (Channels calls it around every consumer call
  and in ``database_sync_to_async``);
* ``CaptureQueriesContext`` (behind pytest-django's ``django_assert_num_queries``) opens on
  the database thread when entered on the loop, where Django forbids touching the connection;
* ``TestCase.captureOnCommitCallbacks`` (behind ``django_capture_on_commit_callbacks``) is
  entered and left on the database thread when entered on the loop, whose own connections
  (asgiref keeps one per async context) never see the callbacks; ``execute=True`` runs them
  there, where on_commit would. It is replaced for the whole session, as the fixture hands it
  out before or after the test's database set-up.

``thread_sensitive=False`` work keeps running in other threads with connections of their own,
as in production. Everything is undone when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from asgiref.sync import SyncToAsync

from pytest_djasync import patching


class _AllToOne(weakref.WeakKeyDictionary[Any, Executor]):
    """``SyncToAsync.context_to_thread_executor`` stand-in: every context uses one executor.

    An executor given explicitly (``ThreadSensitiveContext(executor=...)``) is still honoured;
    ``pop`` never hands ours out, so asgiref never shuts it down when a context ends.
    """

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self._executor = executor

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: Any) -> Executor:
        return super().get(key, self._executor)

    def pop(self, key: Any, default: Any = None) -> Any:
        return super().pop(key, default)


class DatabaseThread:
    """Owns the one thread; ``share()`` for a test, ``unshare()`` after it."""

    def __init__(self) -> None:
        from django.test import TestCase

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="djasync-db")
        self._patches: list[patching.Patch] = []
        self._shared: dict[str, Any] = {}
        self._signals = contextlib.ExitStack()
        original = vars(TestCase)["captureOnCommitCallbacks"].__func__
        replaced = classmethod(self._captured_here(original))
        self._capture_patch = patching.install(TestCase, "captureOnCommitCallbacks", replaced)

    def share(self) -> None:
        """Route thread-sensitive work to the database thread, on the caller's connections."""
        from django.db import connections

        from pytest_djasync.djangohooks import test_client_signals

        self._shared = {alias: connections[alias] for alias in connections}
        for connection in self._shared.values():
            connection.inc_thread_sharing()
        self._executor.submit(_adopt, self._shared).result()
        from django.test.utils import CaptureQueriesContext

        self._patches = [
            *(
                patching.install(connection, "close_if_unusable_or_obsolete", _kept_open)
                for connection in self._shared.values()
            ),
            patching.install(SyncToAsync, "single_thread_executor", self._executor),
            patching.install(SyncToAsync, "context_to_thread_executor", _AllToOne(self._executor)),
            patching.install(
                CaptureQueriesContext,
                "__enter__",
                self._entered_here(CaptureQueriesContext.__enter__),
            ),
        ]
        self._signals.enter_context(test_client_signals())

    def _entered_here(self, enter: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``CaptureQueriesContext.__enter__`` that, on a running loop, enters on this thread.

        On the loop Django forbids opening the connection, and ``django.db.connection`` would
        name the loop's own connection, not the shared one: bind the shared one, then enter.
        """

        @functools.wraps(enter)
        def __enter__(context: Any) -> Any:
            if not _on_a_loop():
                return enter(context)
            return self._run_here(functools.partial(_bind_and_enter, enter, context))

        return __enter__

    def _run_here(self, call: Callable[[], Any]) -> Any:
        """``call()`` on this thread, waited for by the loop. The test's own set-up or
        tear-down, a moment's wait, which the guard's `wait` group would report as the loop
        waiting on a thread: waited for on an Event, out of its sight."""
        ran = self._executor.submit(call)
        done = threading.Event()
        ran.add_done_callback(lambda _: done.set())
        done.wait()
        return ran.result()

    def _captured_here(self, capture: Callable[..., Any]) -> Callable[..., Any]:
        """``captureOnCommitCallbacks`` that, on a running loop while a test shares its
        connections, is entered and left on this thread: the test's callbacks are registered
        on its connection, and ``execute=True`` runs them where on_commit would (sending mail
        or querying, which on the loop would be the test's blocking call)."""

        @contextlib.contextmanager
        def captureOnCommitCallbacks(cls: type, **options: Any) -> Iterator[list[Any]]:
            alias = options.get("using", "default")  # Django's DEFAULT_DB_ALIAS
            if alias not in self._shared or not _on_a_loop():
                with capture(cls, **options) as callbacks:
                    yield callbacks
                return
            context = capture(cls, **options)
            callbacks = self._run_here(context.__enter__)
            try:
                yield callbacks
            except BaseException as error:
                leave = functools.partial(
                    context.__exit__, type(error), error, error.__traceback__
                )
                if not self._run_here(leave):
                    raise
            else:
                self._run_here(functools.partial(context.__exit__, None, None, None))

        functools.update_wrapper(captureOnCommitCallbacks, capture)
        return captureOnCommitCallbacks

    def unshare(self) -> None:
        self._signals.close()
        for patch in reversed(self._patches):
            patch.undo()
        self._patches.clear()
        self._executor.submit(_release, list(self._shared)).result()
        for connection in self._shared.values():
            connection.dec_thread_sharing()
        self._shared.clear()

    def close(self) -> None:
        self._capture_patch.undo()
        self._executor.shutdown(wait=True)


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _kept_open() -> None:
    """``close_if_unusable_or_obsolete`` of a shared connection, which ``close_old_connections()``
    calls: it holds the test's transaction until pytest-django rolls it back."""


def _adopt(shared: dict[str, Any]) -> None:
    from django.db import connections

    for alias, connection in shared.items():
        connections[alias] = connection


def _release(aliases: list[str]) -> None:
    from django.db import connections

    for alias in aliases:
        with contextlib.suppress(AttributeError):  # never adopted: nothing to give back
            del connections[alias]


def _bind_and_enter(enter: Callable[[Any], Any], context: Any) -> Any:
    from django.db import connections

    alias = vars(context.connection).get("_alias")  # a ConnectionProxy names its alias
    if alias is not None:
        context.connection = connections[alias]
    return enter(context)
