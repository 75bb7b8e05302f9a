"""The run's results as the controlling process sees them, gathered from test reports.

Each test's entry travels on its teardown report (``report.djasync``), so results from
pytest-xdist workers arrive exactly like those of a single process: once each, none lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_djasync.baseline import Key, key

Entry = dict[str, Any]

ATTRIBUTE = "djasync"  # the test report attribute that carries a test's entry


class Results:
    def __init__(self) -> None:
        self._entries: dict[str, Entry | None] = {}  # None: the test sent no entry
        self._outcomes: dict[str, str] = {}
        self._no_call: set[str] = set()  # set-up failed: the test body never ran

    def __len__(self) -> int:
        """Tests that finished (a teardown report each), entry or not."""
        return len(self._entries)

    def ran(self) -> set[str]:
        """The tests that finished and were not skipped: what a baseline can judge. (An xfailed
        test reads as skipped too; with findings, it plainly ran.) One whose set-up failed never
        ran its body: its known findings can be neither confirmed nor gone."""
        outcomes = self._outcomes
        return {
            nodeid
            for nodeid, entry in self._entries.items()
            if (entry is not None or outcomes.get(nodeid) != "skipped")
            and nodeid not in self._no_call
        }

    def add(self, nodeid: str, when: str, outcome: str, entry: Entry | None) -> None:
        """Take one test report: its phase's outcome and, on teardown, the test's entry."""
        if when == "setup":  # an attempt begins; a rerun's outcome replaces the last one's
            self._outcomes.pop(nodeid, None)
            self._no_call.discard(nodeid)
            if outcome == "failed":
                self._no_call.add(nodeid)
        if outcome != "passed":
            self._outcomes[nodeid] = _merge(self._outcomes.get(nodeid, "passed"), when, outcome)
        if when == "teardown":
            self._entries[nodeid] = entry

    def add_unfinished(self, entry: Entry) -> None:
        """A test cut short (Ctrl-C): keep what it had found, as an error unless a phase that
        ended already failed it."""
        nodeid = entry["nodeid"]
        if nodeid not in self._entries:
            self._entries[nodeid] = entry
            self._outcomes.setdefault(nodeid, "error")

    def entries(
        self, empty: Callable[[str, bool], Entry] | None, *, detailed: bool
    ) -> list[Entry]:
        """Every watched test, in the order it finished, with its outcome. A test that sent no
        entry had nothing to say: ``empty`` makes its entry, or it is left out (with no
        ``empty``, only tests with entries were watched)."""
        result = []
        for nodeid, sent in self._entries.items():
            entry = sent if sent is not None or empty is None else empty(nodeid, detailed)
            if entry is not None:
                outcome = self._outcomes.get(nodeid, "passed")
                if outcome == "skipped" and entry["violations"]:
                    entry = {**entry, "violations": _excused(entry["violations"])}
                result.append({"nodeid": nodeid, "outcome": outcome, **entry})
        return result

    def keys(self, *, to_record: bool) -> set[Key]:
        """Baseline keys of the findings: all of them; or, ``to_record``, those a baseline
        holds: not excused otherwise, and not of a test that xfailed (its marker expects the
        failure already; a baseline entry would make a strict xfail pass, and fail)."""
        outcomes = self._outcomes
        return {
            key(nodeid, violation)
            for nodeid, entry in self._entries.items()
            if entry is not None and not (to_record and outcomes.get(nodeid) == "skipped")
            for violation in entry["violations"]
            if not to_record or violation.get("allowed_by") in (None, "baseline")
        }


SKIPPED = "xfail or skip"  # ``allowed_by`` of a finding in a test that xfailed or skipped


def _excused(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A test that xfailed (its marker expects the failure) or skipped itself failed nothing:
    its findings are excused, as the baseline, which leaves them out, has them."""
    return [
        v if v.get("allowed") else {**v, "allowed": True, "allowed_by": SKIPPED}
        for v in violations
    ]


def _merge(current: str, when: str, outcome: str) -> str:
    if outcome == "passed":
        return current
    if when == "call":
        return "skipped" if outcome == "skipped" else "failed"
    if current == "passed":  # a failing setup or teardown is an error, as in pytest
        return "skipped" if outcome == "skipped" else "error"
    return current
