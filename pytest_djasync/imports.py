"""First-time imports inside a loop step are not the loop's stall: their time is set aside.

A module is imported once per process, and which test pays for that depends on the order the
tests run in (and, under pytest-xdist, on the worker): the first request that imports the
URLconf, the views and the middleware, or a view's own lazy ``import``. So the time a step
spends importing is taken out of its stall judgement, and blocking calls made by a module's
top-level code while it is imported are not reported either.

The import statement calls ``importlib._bootstrap._find_and_load``, looked up on that module
each time, only for a module that ``sys.modules`` does not hold yet: imports that find their
module loaded never reach the wrapper. After each one, the session is told, so the guard wraps
the blocking functions of a library the moment it is imported, mid-test included.
"""

from __future__ import annotations

import functools
import importlib._bootstrap as _bootstrap
import sys
import time
from collections.abc import Callable
from typing import Any

from pytest_djasync import findings, patching, watchdog

_perf = watchdog._perf
_thread_time = time.thread_time


def _set_aside(
    find_and_load: Callable[..., Any], imported: Callable[[], None]
) -> Callable[..., Any]:
    @functools.wraps(find_and_load)
    def wrapper(name: str, *args: Any) -> Any:
        loaded = sys.modules.get(name)
        if loaded is not None and not initializing(loaded):  # importlib.import_module()
            return find_and_load(name, *args)
        step = getattr(watchdog._local, "step", None)
        if step is None or not step.start or step.in_guard:
            module = find_and_load(name, *args)
            _tell(imported)
            return module
        step.in_guard = True  # the module's own blocking calls belong to the import
        # Its own time: what the OS kept the thread waiting meanwhile stays with the step,
        # which takes all such waits off as a whole.
        waited, cpu, start = watchdog.run_queue_wait(step), _thread_time(), _perf()
        try:
            module = find_and_load(name, *args)
            _tell(imported)
            return module
        finally:
            took, cpu = _perf() - start, _thread_time() - cpu
            waited_now = watchdog.run_queue_wait(step)
            if waited is not None and waited_now is not None:
                took -= waited_now - waited
            step.in_guard = False
            watchdog.explain(step, max(0.0, took), cpu)

    return wrapper


def initializing(module: Any) -> bool:
    """Whether the module is still being imported: its attributes may not exist yet."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _tell(imported: Callable[[], None]) -> None:
    try:
        imported()
    except Exception as exc:  # an import of the application's must not fail because of us
        findings.internal_error("wrapping what an import brought", exc)


def install(imported: Callable[[], None]) -> list[patching.Patch]:
    """From now on, set first-time imports aside and call ``imported`` after each (in the
    importing thread); the patch undoes exactly."""
    original = _bootstrap._find_and_load  # type: ignore[attr-defined]  # private, no stubs
    return [patching.install(_bootstrap, "_find_and_load", _set_aside(original, imported))]
