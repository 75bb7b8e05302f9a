"""What watching adds to one request through ``asgi_client``, measured inside one process.

    python bench/request_cost.py [--tests N] [--repeat R]

A whole ``pytest`` run of the requests suite swings by a few percent from one run to the next on
a shared machine, about as much as the plugin costs. This takes pytest, start-up and the
per-test hooks out: the requests suite's project and requests (4 per test, each test in its
own ``asyncio.run``, as a function-scoped loop) run in rounds of N tests, alternately with the
detectors of a ``--djasync`` run started (``session.Watch``: the step timer, the blocking-call
guard, the crossing and outbound-request recorders, request naming, the watchdog thread) and
not. Each figure is the median of R interleaved rounds, and the paired ratio the median of
each watched round over the unwatched round before it.

It also counts, per request, what the detectors wrap: loop steps (``Handle._run``), calls
that run one of the guard's wrappers and sync/async crossings. Their sum, times a Python
function call's cost, is most of what a request pays.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import suites  # noqa: E402

ROOT = HERE / ".work" / "request-cost"
CALIBRATION = {"cpu_loop_iterations": 1, "pbkdf2_iterations": 1, "cte_rows": 1}
GUARDS = ("sleep", "socket", "dns", "select", "subprocess", "http", "wait")


def _setup() -> None:
    suites.write_project(ROOT, CALIBRATION)
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchproj.settings"
    import django

    django.setup()


async def _one_test(number: int) -> None:
    """The requests suite's test body, against a fresh client as the fixture makes it."""
    import httpx

    from pytest_djasync.client import ASGIStreamingTransport, django_asgi_app

    transport = ASGIStreamingTransport(app_factory=django_asgi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/api/data/", params={"n": number % 7})
        assert response.status_code == 200
        assert (await client.get("/page/")).status_code == 200
        response = await client.post("/api/data/", json={"test": number})
        assert response.json() == {"echo": {"test": number}}
        assert (await client.get("/missing/")).status_code == 404


def _round(tests: int, watch: Any) -> float:
    """Seconds per request over ``tests`` tests, watched as ``--djasync`` watches a test."""
    from pytest_djasync.djangohooks import test_client_signals

    start = time.perf_counter()
    with test_client_signals():
        for number in range(tests):
            nodeid = f"test_{number}"
            if watch is not None:
                watch.begin_test(nodeid, 100.0, True)
                watch.begin_call(nodeid, True, True, False)
            asyncio.run(_one_test(number))
            if watch is not None:
                watch.end_call(nodeid)
                watch.end_test(nodeid, None)
                watch.records.clear()
    return (time.perf_counter() - start) / (tests * 4)


def _counts(tests: int) -> dict[str, float]:
    """Per request: loop steps, calls that ran one of the guard's wrappers (in the loop's
    thread: a profile hook sees its own thread only) and crossings; one watched round, untimed.
    """
    from pytest_djasync import crossings, guard
    from pytest_djasync.session import Watch

    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == "guarded" and code.co_filename == guard.__file__:
            counts["guarded calls"] += 1

    run = asyncio.Handle._run

    def counting_run(handle: asyncio.Handle) -> None:
        counts["loop steps"] += 1
        run(handle)

    watch = Watch(100.0, GUARDS, [])
    asyncio.Handle._run = counting_run  # type: ignore[method-assign,assignment]
    try:
        watch.start()
        recorder = crossings.start(crossings.Recorder(explain=False))  # beside each test's own
        sys.setprofile(profile)
        try:
            _round(tests, watch)
        finally:
            sys.setprofile(None)
        crossings.stop(recorder)
    finally:
        watch.stop()
        asyncio.Handle._run = run  # type: ignore[method-assign]
    requests = tests * 4
    return {name: count / requests for name, count in counts.items()} | {
        "crossings": recorder.total / requests
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=8, help="tests (4 requests each) a round")
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    _setup()
    from pytest_djasync.session import Watch

    watch = Watch(100.0, GUARDS, [])
    _round(5, None)  # imports, the URLconf, the first-request costs of both configurations
    watch.start()
    _round(5, watch)
    watch.stop()
    plain, watched = [], []
    for _ in range(args.repeat):
        plain.append(_round(args.tests, None))
        watch.start()
        try:
            watched.append(_round(args.tests, watch))
        finally:
            watch.stop()
    base, with_watch = statistics.median(plain), statistics.median(watched)
    paired = statistics.median(w / p for p, w in zip(plain, watched, strict=True))
    print(f"{'per request':24} {'µs':>8}")
    print(f"{'unwatched':24} {base * 1e6:8.0f}")
    print(f"{'watched (--djasync)':24} {with_watch * 1e6:8.0f}")
    print(f"{'added':24} {(with_watch - base) * 1e6:8.0f}   ratio {with_watch / base:.3f}")
    print(f"{'paired ratio':24} {paired:8.3f}")
    for name, count in _counts(args.tests).items():
        print(f"{name + ' per request':24} {count:8.1f}")


if __name__ == "__main__":
    main()
