"""CPU instructions of whole pytest runs, counted by valgrind (callgrind): a steady figure.

Wall and CPU times on a shared machine move by 10-20% from run to run, more than the
differences the targets are about. The number of instructions a run executes does not depend
on the machine's load, so one run per configuration gives a ratio that repeats to the third
decimal. It is a proxy: it weighs every instruction alike (a cache miss or a system call's
kernel time counts for nothing). And it errs against djasync: under valgrind a run is about 40
times slower, so the watchdog, which wakes by wall time, wakes about 40 times more often per
test than in a normal run. String hashing is seeded the same in every run: with Python's
random seed, the layout of dictionaries (and so the cost of their look-ups) changes from run to
run by a few tenths of a percent.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import overhead
import pytestrun

CONFIGS = ("absent", "installed", "djasync")
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")
TIMEOUT_S = 3600


def available() -> bool:
    return shutil.which("valgrind") is not None


def count(root: Path, config: str) -> dict[str, Any]:
    """One run of the suite in ``root`` under callgrind: instructions and pytest's summary."""
    args, env = overhead.CONFIGS[config]
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        *pytestrun.PYTEST,
        *args,
    ]
    done = subprocess.run(
        command,
        cwd=root,
        env=pytestrun.environment({**env, "PYTHONHASHSEED": "0"}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    found = _REFS.search(done.stderr)
    return {
        "instructions": int(found.group(1).replace(",", "")) if found else None,
        "code": done.returncode,
        "summary": pytestrun.closing_line(done.stdout),
    }


def measure(suites: Mapping[str, Path]) -> dict[str, Any]:
    """Every (suite, configuration) once, as many at a time as there are CPUs."""
    for root in suites.values():  # the bytecode cache, filled as in the timed runs
        for config in CONFIGS:
            pytestrun.run(root, *overhead.CONFIGS[config])
    jobs = [(suite, config) for suite in suites for config in CONFIGS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {job: pool.submit(count, suites[job[0]], job[1]) for job in jobs}
    results: dict[str, Any] = {}
    for (suite, config), future in futures.items():
        results.setdefault(suite, {})[config] = future.result()
    for by_config in results.values():
        base = by_config["absent"]["instructions"]
        for row in by_config.values():
            mine = row["instructions"]
            row["ratio"] = round(mine / base, 4) if mine and base else None
    return results
