"""Concurrent pairs: the two runs being compared start at the same moment, one per core.

On a shared virtual machine the speed of a core drifts by 10-20% within a minute (other
tenants, CPU steal), so two runs made one after the other differ by about as much as the
targets are about, and so does their ratio. Two runs made at the same time, each on its own
core, live through the same drift: the ratio of their wall times is far steadier. Each pair
is ``absent`` against a configuration, the start order alternating from pair to pair; a
control pair of ``absent`` against itself measures the method's own bias and spread.

Reported per configuration: the median of the pairs' wall-time ratios with a 95% confidence
interval for that median (distribution-free, from order statistics), their range and standard
deviation, and the same for CPU time (each process's own, from ``wait4``). Needs at least 2 CPUs.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import overhead
import pytestrun


def available() -> bool:
    return (os.cpu_count() or 1) >= 2


def measure(suites: Mapping[str, Path], configs: Sequence[str], pairs: int) -> dict[str, Any]:
    """``pairs`` concurrent pairs of ``absent`` against each configuration, per suite."""
    results: dict[str, Any] = {}
    for suite, root in suites.items():
        ratios: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
        for turn in range(pairs):
            for config in overhead.rotated(list(configs), turn):
                ratios[config].append(_pair(root, config, swap=bool(turn % 2)))
                _progress(turn, pairs, suite, config, ratios[config][-1])
        results[suite] = {config: _summary(found) for config, found in ratios.items()}
    return results


_FAILED_TAIL = 3000  # characters of a failed run's output shown


def _pair(root: Path, config: str, swap: bool) -> tuple[float, float]:
    """(wall ratio, CPU ratio) of ``config`` to ``absent``, both started together."""
    runs: list[tuple[float, float]] = [(0.0, 0.0), (0.0, 0.0)]
    jobs = [(0, overhead.BASELINE), (1, config)]
    if swap:
        jobs.reverse()
    threads = [
        threading.Thread(target=_timed, args=(root, name, runs, slot)) for slot, name in jobs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (base_wall, base_cpu), (wall, cpu) = runs
    if not (base_wall and wall):
        raise SystemExit(f"a pytest run of {root.name} failed in a pair with {config}")
    return wall / base_wall, cpu / base_cpu


def _timed(root: Path, config: str, runs: list[tuple[float, float]], slot: int) -> None:
    """One pytest run; its wall time and its own CPU time (``wait4``: a child's rusage alone,
    where ``RUSAGE_CHILDREN`` would mix in the other run of the pair)."""
    args, env = overhead.CONFIGS[config]
    with tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*pytestrun.PYTEST, *args],
            cwd=root,
            env=pytestrun.environment(env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:  # the pair is then given up: say why
            output.seek(0)
            tail = output.read()[-_FAILED_TAIL:].decode(errors="replace")
            print(f"pytest ({config}) exited {proc.returncode}:\n{tail}", file=sys.stderr)
            return
    runs[slot] = (wall, usage.ru_utime + usage.ru_stime)


def _progress(turn: int, pairs: int, suite: str, config: str, ratio: tuple[float, float]) -> None:
    print(
        f"  [{turn + 1}/{pairs}] {suite:<9} {config:<10} wall ratio {ratio[0]:.3f}"
        f"  CPU ratio {ratio[1]:.3f}",
        file=sys.stderr,
    )


def _summary(found: list[tuple[float, float]]) -> dict[str, Any]:
    walls = [wall for wall, _ in found]
    cpus = [cpu for _, cpu in found]
    return {"wall": _describe(walls), "cpu": _describe(cpus)}


def _describe(ratios: list[float]) -> dict[str, Any]:
    low, high = median_interval(ratios)
    return {
        "median": statistics.median(ratios),
        "ci95": [low, high],
        "min": min(ratios),
        "max": max(ratios),
        "stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "ratios": [round(r, 4) for r in ratios],
    }


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the k-th smallest and k-th
    largest value, k the largest rank whose binomial tail stays within the error allowed
    (with fewer than 6 values no such k exists, and the interval is the whole range)."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    k, below = 0, 0.0
    while k < n // 2:
        below += math.comb(n, k) / 2**n  # P(fewer than k + 1 values below the median)
        if below > tail:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]
