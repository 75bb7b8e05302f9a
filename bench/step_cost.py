"""What timing adds to one event-loop step, against asyncio's own ``Handle._run``.

    python bench/step_cost.py [--steps N] [--repeat R]

Every callback an asyncio loop runs goes through ``Handle._run``, which the watchdog wraps: a
request through ``asgi_client`` makes about 120 steps. Each figure is the median of R
interleaved rounds of N calls of ``_run`` on a handle whose callback does nothing, so the
differences are exactly the wrapper's own work:

* asyncio's own ``Handle._run``, unwrapped;
* the wrapper as it runs where the watchdog can read other threads' CPU clocks (Linux): two
  ``perf_counter()`` reads and a few attribute look-ups per step;
* the wrapper where it cannot (``time.pthread_getcpuclockid`` missing), which is also how every
  step ran before d5fd174: each step also reads its thread's and the process's CPU clocks, two
  system calls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_djasync import watchdog


def _run_steps(steps: int, run: Callable[[asyncio.Handle], None], handle: asyncio.Handle) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        run(handle)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    handle = asyncio.Handle(lambda: None, (), loop, None)
    original = asyncio.Handle.__dict__["_run"]
    # the state Watchdog.start() sets up, without patching the class or starting the thread
    watchdog._original_run = original
    watchdog._local = threading.local()
    watchdog._enabled = True
    times: dict[str, list[float]] = {"asyncio": [], "snapshots": [], "per-step": []}
    for _ in range(args.repeat):  # interleaved, so drifting load hits all alike
        times["asyncio"].append(_run_steps(args.steps, original, handle))
        for mode in ("snapshots", "per-step"):
            watchdog._cpu_per_step = mode == "per-step"
            times[mode].append(_run_steps(args.steps, watchdog._timed_run, handle))
    watchdog._enabled = False
    loop.close()
    base = statistics.median(times["asyncio"])
    print(f"asyncio's own Handle._run: {base * 1e9:.0f} ns a step")
    print(f"the wrapper adds: {(statistics.median(times['snapshots']) - base) * 1e9:.0f} ns")
    print(
        "the wrapper reading CPU clocks at each step adds:"
        f" {(statistics.median(times['per-step']) - base) * 1e9:.0f} ns"
    )


if __name__ == "__main__":
    main()
