"""One watched run: starts and stops the detectors and gives each test its own collector.

No pytest here: the plugin tells this object when a test starts and ends, and decides from the
returned findings whether the test fails.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence

from pytest_djasync import (
    crossings,
    djangohooks,
    fanout,
    findings,
    heartbeat,
    imports,
    patching,
    syncops,
)
from pytest_djasync.findings import Collector, Finding
from pytest_djasync.guard import Guard
from pytest_djasync.watchdog import Watchdog


@dataclasses.dataclass
class TestRecord:
    """What one test left behind, for the report."""

    nodeid: str
    outcome: str = "passed"
    findings: list[Finding] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    allowed_reason: str | None = None
    crossings: crossings.Recorder | None = None
    fanout: fanout.Recorder | None = None
    reported: bool = False  # its entry went out on the teardown report

    def is_empty(self) -> bool:
        """Nothing to say beyond what every clean test says: no finding, crossing or request."""
        return not (
            self.findings
            or (self.crossings is not None and self.crossings.total)
            or (self.fanout is not None and self.fanout.calls)
        )


class Watch:
    def __init__(self, block_ms: float, guards: Iterable[str], allow: Sequence[str]) -> None:
        self.block_ms = block_ms
        self.allow = tuple(allow)
        self._watchdog = Watchdog()
        self._guard = Guard(guards)
        self._collector: Collector | None = None
        self.records: dict[str, TestRecord] = {}
        self._block_ms_now = block_ms
        self._patches: list[patching.Patch] = []
        self.running = False
        self._importing = threading.Lock()  # imports in other threads add patches

    def start(self) -> None:
        self._watchdog.start(self.block_ms)
        # The first request imports the URLconf and the views inside a loop step: set aside.
        # Installed before the guard arms, so that no import in between goes unseen.
        self._patches = imports.install(self._imported)
        self._guard.arm()
        self._patches += syncops.install() + heartbeat.install()
        djangohooks.naming.acquire(self)
        crossings.pin(self)
        fanout.pin(self)
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        with self._importing:
            self.running = False
            for patch in reversed(self._patches):
                patch.undo()
        findings.activate(None)
        djangohooks.naming.release(self)
        crossings.unpin(self)
        fanout.unpin(self)
        self._guard.disarm()
        self._watchdog.stop()

    def begin_test(self, nodeid: str, block_ms: float, watch_loop: bool) -> None:
        self.records[nodeid] = TestRecord(nodeid)
        if not watch_loop:
            return
        if not self.running:
            self.start()
        self._watchdog.set_threshold(block_ms)
        self._block_ms_now = block_ms
        self._collector = Collector(nodeid, self.allow)
        findings.activate(self._collector)

    def _imported(self) -> None:
        """Any thread imported a module: wrap what it brought (a library's blocking calls,
        uvloop's loop) now, not at the next test."""
        self._guard.imported()
        with self._importing:
            if self.running:
                self._patches += heartbeat.install()

    def begin_call(
        self, nodeid: str, count_crossings: bool, record_fanout: bool, explain: bool
    ) -> None:
        """Count crossings and record outbound requests for the test's call phase; ``explain``
        when something will ask where each crossing came from."""
        record = self.records[nodeid]
        if count_crossings:
            record.crossings = crossings.start(crossings.Recorder(explain))
        if record_fanout:
            record.fanout = fanout.start(fanout.Recorder())

    def end_call(self, nodeid: str) -> None:
        record = self.records[nodeid]
        if record.crossings is not None:
            crossings.stop(record.crossings)
        if record.fanout is not None:
            fanout.stop(record.fanout)

    def has_news(self) -> bool:
        """Whether the running test's collector holds anything (cheap: checked every phase)."""
        collector = self._collector
        return collector is not None and not collector.empty

    def take(self) -> list[Finding]:
        """Findings made since the last call, for the test phase that just ended."""
        collector = self._collector
        if collector is None or collector.empty:
            return []
        return _move_findings(collector, self.records[collector.nodeid])

    def add_finding(self, nodeid: str, finding: Finding) -> None:
        """A finding the plugin itself made (a marker's expectation), not a detector."""
        self.records[nodeid].findings.append(finding)

    def take_notes(self) -> list[str]:
        """Notes made since the last call."""
        collector = self._collector
        if collector is None or collector.empty:
            return []
        return _move_notes(collector, self.records[collector.nodeid])

    @property
    def current_block_ms(self) -> float:
        return self._block_ms_now

    def end_test(self, nodeid: str, allowed_reason: str | None) -> TestRecord:
        """The test is over: stop routing findings to it; forget it once it is reported."""
        record = self.records[nodeid]
        record.allowed_reason = allowed_reason
        collector, self._collector = self._collector, None
        findings.activate(None)
        self._watchdog.set_threshold(self.block_ms)
        if collector is not None and not collector.empty:  # a clean test has nothing to move
            _move_findings(collector, record)
            _move_notes(collector, record)
        if record.reported:
            del self.records[nodeid]  # its entry says it all; keep none of its objects alive
        return record

    def unreported_records(self) -> list[TestRecord]:
        """Tests not reported yet: one cut short by Ctrl-C, with what it found so far."""
        self.take()
        return [record for record in self.records.values() if not record.reported]


def _move_findings(collector: Collector, record: TestRecord) -> list[Finding]:
    """The collector's findings that the record does not hold yet, now added to it."""
    known = {id(f) for f in record.findings}
    fresh = [f for f in collector.findings() if id(f) not in known]
    record.findings.extend(fresh)
    return fresh


def _move_notes(collector: Collector, record: TestRecord) -> list[str]:
    fresh = [note for note in collector.notes if note not in record.notes]
    record.notes.extend(fresh)
    return fresh
