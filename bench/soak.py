"""The false-positive soak: a clean suite, run again and again under ``--djasync`` while CPU hogs
keep every core busy. Every finding here is a false positive."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytestrun

_FRAMES = 5  # innermost frames shown per finding
_HOG = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def cpu_hogs(count: int, limit_s: float) -> Iterator[None]:
    """``count`` busy-looping processes; each stops by itself after ``limit_s`` at the latest."""
    code = _HOG.format(limit=limit_s)
    hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def soak(root: Path, runs: int, hogs: int, block_ms: float) -> dict[str, Any]:
    args = ["--djasync", f"--djasync-block-ms={block_ms:g}", "--djasync-report=report.json"]
    results = []
    with cpu_hogs(hogs, limit_s=runs * pytestrun.TIMEOUT_S):
        for number in range(runs):
            result = pytestrun.run(root, args, {}, outcomes=True)
            results.append(_judge(root, result))
            print(f"  [{number + 1}/{runs}] soak      {result.summary}", file=sys.stderr)
    return {
        "runs": runs,
        "hogs": hogs,
        "block_ms": block_ms,
        "tests_per_run": results[0]["tests"] if results else 0,
        "failed_tests": sum(r["failed"] for r in results),
        "findings": sum(r["findings"] for r in results),
        "notes": sum(r["notes"] for r in results),
        "broken_runs": sum(r["broken"] for r in results),
        "per_run": results,
    }


def _judge(root: Path, result: pytestrun.Run) -> dict[str, Any]:
    outcomes = result.outcomes or {}
    failed = [nodeid for nodeid, e in outcomes.items() if e["outcome"] != "passed"]
    notes = [w for e in outcomes.values() for w in e["warnings"] if w.startswith("Djasync")]
    messages = _violations(root / "report.json")
    tests = sum(result.counts.values()) - result.counts.get("warning", 0)
    return {
        "wall_s": result.wall_s,
        "summary": result.summary,
        "broken": tests == 0 or result.code not in (0, 1),  # the suite did not run: no verdict
        "tail": "" if result.code in (0, 1) else result.tail,
        "tests": tests,
        "failed": len(failed),
        "failed_tests": failed[:10],
        "findings": len(messages),
        "finding_messages": messages[:10],
        "notes": len(notes),
        "note_messages": notes[:10],
    }


def _violations(path: Path) -> list[str]:
    """Each finding of the run's JSON report: its message and the innermost frames."""
    try:
        report = json.loads(path.read_text())
        return [_described(v) for t in report["tests"] for v in t["violations"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _described(violation: dict[str, Any]) -> str:
    frames = violation.get("stack") or []
    inner = " < ".join(
        f"{f['function']} ({Path(f['path']).name}:{f['line']})" for f in frames[::-1][:_FRAMES]
    )
    return f"{violation['message']}; stack: {inner}" if inner else violation["message"]
