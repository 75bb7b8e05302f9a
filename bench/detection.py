"""The detection matrix: the same blocking cases under each detector, caught or not."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytestrun
import soak
import suites

CONTEXTS = ("test", "view")  # the blocking code runs in the test itself, or in an async view
_SLOW_CALLBACK = re.compile(r"Executing .+? took (\d+\.\d+) seconds")
_BLOCKBUSTER = re.compile(r"BlockingError: Blocking call to (\S+)")
_PYLEAK = re.compile(r"EventLoopBlockError: (.+)")
_DJASYNC = re.compile(
    r"^\d+\. (blocking call (\S+)\(\) for (\d+) ms|event loop blocked for (\d+) ms)"
)
_CALLS = re.compile(r"\((\d+) calls\)")


@dataclasses.dataclass(frozen=True)
class Verdict:
    caught: bool
    detail: str = ""


def _djasync(entry: dict[str, Any]) -> Verdict:
    text = entry["text"] + entry["sections"]
    if "pytest-djasync:" not in text:  # a stall it excused shows as a note (a warning)
        notes = [w for w in entry["warnings"] if w.startswith("Djasync")]
        return Verdict(False, "; ".join(notes))
    details = []
    for line in text.splitlines():
        match = _DJASYNC.match(line.strip())
        if match is None:
            continue
        calls = _CALLS.search(line)
        if match.group(2):
            times = f" x{calls.group(1)}" if calls else ""
            details.append(f"{match.group(2)}{times}")
        else:
            details.append(f"stall {match.group(4)} ms")
    return Verdict(True, ", ".join(details))


def _searcher(pattern: re.Pattern[str], fmt: str) -> Callable[[dict[str, Any]], Verdict]:
    def judge(entry: dict[str, Any]) -> Verdict:
        match = pattern.search(entry["text"] + entry["sections"])
        return Verdict(True, fmt.format(*match.groups())) if match else Verdict(False)

    return judge


@dataclasses.dataclass(frozen=True)
class Detector:
    args: list[str]
    env: dict[str, str]
    judge: Callable[[dict[str, Any]], Verdict]  # how a caught case shows
    hogs: int = 0  # CPU-hog processes running meanwhile


LOADED_HOGS = 2
DETECTORS: dict[str, Detector] = {
    "djasync": Detector(["--djasync"], {}, _djasync),
    # the same, with every core kept busy: stalls must still be caught, and not excused
    "djasync-loaded": Detector(["--djasync"], {}, _djasync, hogs=LOADED_HOGS),
    "asyncio-debug": Detector(
        ["-p", "no:djasync", "--asyncio-debug"],
        {},
        _searcher(_SLOW_CALLBACK, "slow callback {} s"),
    ),
    "blockbuster": Detector(
        ["-p", "no:djasync"], {"BENCH_BLOCKBUSTER": "1"}, _searcher(_BLOCKBUSTER, "{}")
    ),
    "pyleak": Detector(["-p", "no:djasync"], {"BENCH_PYLEAK": "1"}, _searcher(_PYLEAK, "{}")),
}


def matrix(root: Path, rounds: int) -> dict[str, Any]:
    """Run the detection suite ``rounds`` times under each detector; count the catches."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for turn in range(rounds):
        for detector, spec in DETECTORS.items():
            with soak.cpu_hogs(spec.hogs, limit_s=pytestrun.TIMEOUT_S):
                result = pytestrun.run(root, spec.args, spec.env, outcomes=True)
            print(
                f"  [{turn + 1}/{rounds}] detect    {detector:<14} {result.summary}",
                file=sys.stderr,
            )
            if result.outcomes is None:
                raise SystemExit(
                    f"the detection suite did not run under {detector}:\n{result.tail}"
                )
            for row, entry in _rows(result.outcomes):
                _add(cells.setdefault(row, {}), detector, spec.judge(entry), entry["outcome"])
    return {"rounds": rounds, "rows": cells, "cases": list(suites.CASES), "contexts": CONTEXTS}


def _rows(outcomes: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for nodeid, entry in outcomes.items():
        name = nodeid.rpartition("::")[2]
        for context in CONTEXTS:
            prefix = f"test_{context}_"
            if name.startswith(prefix):
                rows.append((f"{name[len(prefix) :]} / {context}", entry))
    return rows


def _add(row: dict[str, dict[str, Any]], detector: str, verdict: Verdict, outcome: str) -> None:
    cell = row.setdefault(detector, {"caught": 0, "runs": 0, "details": [], "outcomes": []})
    cell["runs"] += 1
    cell["caught"] += verdict.caught
    cell["outcomes"].append(outcome)
    if verdict.detail and verdict.detail not in cell["details"]:
        cell["details"].append(verdict.detail)
