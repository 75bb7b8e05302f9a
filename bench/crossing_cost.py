"""What counting adds to one sync/async crossing, against the crossing's own cost.

    python bench/crossing_cost.py [--calls N] [--repeat R]

A crossing's own cost (a thread hop, tens of microseconds) swings with scheduling far more than
counting costs, so the two are measured apart, each as the median of R interleaved rounds:

* the crossing: N ``await sync_to_async(noop)()`` calls (thread-sensitive and not) and N/4
  ``async_to_sync(anoop)()`` calls, uncounted;
* what counting adds: N calls of the adapter's ``__call__`` that create its coroutine and close
  it unrun, with and without a recorder; the difference is exactly the wrapper's work. Twice:
  with a recorder that explains each crossing (what a crossing budget, the fixtures and the
  report file use: a few caller frames are kept) and with one that only counts (a test's own
  recorder in a plain ``--djasync`` run).

The target in the crossings issue: at most 5 microseconds added per crossing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from asgiref.sync import async_to_sync, sync_to_async

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_djasync import crossings


def _noop() -> None:
    return None


async def _anoop() -> None:
    return None


async def _to_async(calls: int, thread_sensitive: bool) -> float:
    adapter = sync_to_async(_noop, thread_sensitive=thread_sensitive)
    start = time.perf_counter()
    for _ in range(calls):
        await adapter()
    return (time.perf_counter() - start) / calls


def _to_sync(calls: int) -> float:
    adapter = async_to_sync(_anoop)
    start = time.perf_counter()
    for _ in range(calls):
        adapter()
    return (time.perf_counter() - start) / calls


def _call_only(calls: int, adapter: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        result = adapter()
        close = getattr(result, "close", None)
        if close is not None:
            close()  # a coroutine never awaited: no hop, only the call
    return (time.perf_counter() - start) / calls


def _measure(run: Callable[[], float], counted: bool, explain: bool = True) -> float:
    recorder = crossings.start(crossings.Recorder(explain)) if counted else None
    try:
        return run()
    finally:
        if recorder is not None:
            crossings.stop(recorder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    cases: dict[str, Callable[[], float]] = {
        "sync_to_async, thread_sensitive": lambda: asyncio.run(_to_async(args.calls, True)),
        "sync_to_async, any thread": lambda: asyncio.run(_to_async(args.calls, False)),
        "async_to_sync": lambda: _to_sync(args.calls // 4),
    }
    calls_only: dict[str, Callable[[], float]] = {
        "sync_to_async, thread_sensitive": lambda: _call_only(
            args.calls, sync_to_async(_noop, thread_sensitive=True)
        ),
        "sync_to_async, any thread": lambda: _call_only(
            args.calls, sync_to_async(_noop, thread_sensitive=False)
        ),
        "async_to_sync": lambda: _call_only(args.calls, _async_to_sync_call_only()),
    }
    header = f"{'crossing':34} {'its cost µs':>12} {'explaining adds µs':>19}"
    print(f"{header} {'counting adds µs':>17}")
    for name, run in cases.items():
        own, plain, explained, counted = [], [], [], []
        for _ in range(args.repeat):  # interleaved, so drifting load hits all alike
            own.append(_measure(run, counted=False))
            plain.append(_measure(calls_only[name], counted=False))
            explained.append(_measure(calls_only[name], counted=True))
            counted.append(_measure(calls_only[name], counted=True, explain=False))
        base = statistics.median(plain)
        print(
            f"{name:34} {statistics.median(own) * 1e6:12.1f}"
            f" {(statistics.median(explained) - base) * 1e6:19.2f}"
            f" {(statistics.median(counted) - base) * 1e6:17.2f}"
        )


def _async_to_sync_call_only() -> Callable[[], object]:
    """``AsyncToSync.__call__`` makes the hop inside the call, so nothing can run the call
    without it: time the counting wrapper's own work instead, which is what it adds."""
    adapter = async_to_sync(_anoop)

    def record() -> None:
        if crossings._recorders:
            crossings._record(crossings.ASYNC_TO_SYNC, adapter, adapter.awaitable, sys._getframe())

    return record


if __name__ == "__main__":
    main()
