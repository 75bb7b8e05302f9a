"""Which findings fail a test phase, and the text it fails with.

Detectors only record; this module applies what excuses a finding (the test caught the error
itself, ``djasync_allow_blocking``, a ``djasync_allow`` pattern, the baseline) and checks the
test's own expectations (``djasync_max_crossings``, ``djasync_fanout``).
"""

from __future__ import annotations

import dataclasses
import inspect
import linecache
import re
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

from pytest_djasync import baseline, fanout, findings, markers, report, syncops
from pytest_djasync.findings import Finding
from pytest_djasync.session import Watch

CAUGHT = "caught by the test"
BASELINE = "baseline"
MARKER = "djasync_allow_blocking"


@dataclasses.dataclass
class Phase:
    """What one phase of one test left: the failure text (empty: nothing fails) and notes."""

    text: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


class Judge:
    def __init__(self, watch: Watch, root: Path, known: baseline.Baseline) -> None:
        self.watch = watch
        self.root = root
        self.known = known

    def phase(
        self,
        item: pytest.Item,
        plan: markers.Plan,
        when: str,
        verbose: bool,
        escaped: BaseException | None = None,
    ) -> Phase:
        """``escaped``: what the phase raised, if anything (an error the test let through
        is not one it caught)."""
        result = Phase(notes=self.watch.take_notes() if self.watch.running else [])
        texts = [self._loop_text(item, plan, verbose, escaped)]
        if when == "call":
            texts += [self._crossings_text(item, plan), self._fanout_text(item, plan)]
        result.text = "\n\n".join(t for t in texts if t)
        return result

    def _excuse(
        self,
        item: pytest.Item,
        plan: markers.Plan,
        finding: Finding,
        test_code: CodeType | None,
        escaped: BaseException | None,
    ) -> None:
        if finding.allowed_by is not None:
            return
        if syncops.expected_by(finding, test_code, escaped):
            finding.allowed_by = CAUGHT
        elif plan.allow_reason is not None:
            finding.allowed_by = MARKER
        elif self.known.knows(
            baseline.key(item.nodeid, report.violation_json(finding, self.root))
        ):
            finding.allowed_by = BASELINE

    def _loop_text(
        self, item: pytest.Item, plan: markers.Plan, verbose: bool, escaped: BaseException | None
    ) -> str:
        if not self.watch.running:
            return ""
        fresh = self.watch.take()
        if not fresh:
            return ""
        test_code = test_function_code(item)
        for finding in fresh:
            self._excuse(item, plan, finding, test_code, escaped)
        failing = [f for f in fresh if f.allowed_by is None]
        if not failing:
            return ""
        return report.failure_text(failing, self.watch.current_block_ms, self.root, verbose)

    def _crossings_text(self, item: pytest.Item, plan: markers.Plan) -> str:
        limit = plan.max_crossings
        record = self.watch.records.get(item.nodeid)
        recorder = record.crossings if record else None
        if limit is None or recorder is None or recorder.total <= limit:
            return ""
        plural = "" if recorder.total == 1 else "s"
        summary = f"{recorder.total} sync/async crossing{plural}, more than the {limit} allowed"
        fix = report.crossings_fix(recorder)
        if self._marker_failure(item, findings.CROSSINGS, summary, fix):
            return report.crossings_text(recorder, limit, "in this test's call phase")
        return ""

    def _fanout_text(self, item: pytest.Item, plan: markers.Plan) -> str:
        expected = plan.fanout
        record = self.watch.records.get(item.nodeid)
        recorder = record.fanout if record else None
        if expected is None or recorder is None:
            return ""
        problem = recorder.check(*expected)
        if problem is None:
            return ""
        cause = recorder.likely_cause() or f"start the calls together ({fanout.TOGETHER})"
        if self._marker_failure(item, findings.FANOUT, problem, cause):
            return "pytest-djasync: " + fanout.timeline(recorder, problem, root=self.root)
        return ""

    def _marker_failure(self, item: pytest.Item, kind: str, what: str, fix: str) -> bool:
        """Record a failed expectation as a finding; True when it fails the test."""
        where, line = def_line(item, self.root)
        finding = Finding(
            kind=kind,
            what=what,
            duration_ms=None,
            stack=(),
            location=findings.Frame(where, line, item.location[2], ""),
            request=None,
            fix=fix,
            thread="MainThread",
        )
        if self.known.knows(baseline.key(item.nodeid, report.violation_json(finding, self.root))):
            finding.allowed_by = BASELINE
        self.watch.add_finding(item.nodeid, finding)
        return finding.allowed_by is None


_DEF = re.compile(r"\s*(async\s+)?def\s")


def def_line(item: pytest.Item, root: Path) -> tuple[str, int]:
    """The file and ``def`` line of a test, whose location pytest gives as its first
    decorator's."""
    path, line, _ = item.location
    where = str(root / path)
    return where, _def_line(where, (line or 0) + 1)


def _def_line(path: str, first: int) -> int:
    for number in range(first, first + 50):
        text = linecache.getline(path, number)
        if not text:
            break
        if _DEF.match(text):
            return number
    return first


def test_function_code(item: pytest.Item) -> CodeType | None:
    """The code object of the test function itself, through pytest-asyncio's wrappers."""
    function: Any = getattr(item, "obj", None)
    if function is None:
        return None
    function = inspect.unwrap(getattr(function, "__func__", function))
    code: CodeType | None = getattr(function, "__code__", None)
    return code
