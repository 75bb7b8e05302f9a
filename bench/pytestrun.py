"""One pytest run in a subprocess of the current interpreter: wall time, exit code, summary."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
TIMEOUT_S = 600
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|warnings?)")
_SECONDS = re.compile(r" in ([\d.]+)s")
# Variables of the calling shell that would change what the suites do. Without
# PYTHONDONTWRITEBYTECODE every run would compile (and assertion-rewrite) every module again,
# as no developer's run does; the bytecode cache goes under bench/.work/ instead.
_SCRUB = (
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTHONASYNCIODEBUG",
    "DJANGO_SETTINGS_MODULE",
    "PYTHONDONTWRITEBYTECODE",
)
PYCACHE = Path(__file__).resolve().parent / ".work" / "pycache"


@dataclasses.dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system CPU time of the pytest process and its children
    code: int
    summary: str  # pytest's closing line, e.g. "2000 passed in 8.12s"
    counts: dict[str, int]
    pytest_s: float | None  # the session time pytest reports
    outcomes: dict[str, Any] | None = None  # per test, when asked for (see suites.CONFTEST)
    tail: str = ""  # the end of the output, kept for runs that failed

    def ok(self) -> bool:
        return self.code == 0

    def brief(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("outcomes")
        if self.ok():
            data.pop("tail")
        return data


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("BENCH_")}
    env["COLUMNS"] = "200"
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra)
    return env


def run(cwd: Path, args: Sequence[str], env: Mapping[str, str], outcomes: bool = False) -> Run:
    """Run pytest in ``cwd``; with ``outcomes``, also read every test's outcome back."""
    extra = dict(env)
    outcome_path = cwd.resolve() / "outcomes.json"
    outcome_path.unlink(missing_ok=True)
    if outcomes:
        extra["BENCH_OUTCOME"] = str(outcome_path)
    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(
        [*PYTEST, *args],
        cwd=cwd,
        env=environment(extra),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    summary = closing_line(proc.stdout)
    result = Run(
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 3),
        code=proc.returncode,
        summary=summary,
        counts=_counts(summary),
        pytest_s=_seconds(summary),
        tail=(proc.stdout[-3000:] + proc.stderr[-2000:]),
    )
    if outcomes and outcome_path.exists():
        result.outcomes = json.loads(outcome_path.read_text())
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def closing_line(stdout: str) -> str:
    for line in reversed(stdout.splitlines()):
        if _COUNT.search(line) or "no tests ran" in line:
            return line.strip("= ").strip()
    return ""


def _counts(summary: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for number, word in _COUNT.findall(summary):
        counts[word.rstrip("s") if word.startswith(("error", "warning")) else word] = int(number)
    return counts


def _seconds(summary: str) -> float | None:
    match = _SECONDS.search(summary)
    return float(match.group(1)) if match else None
