"""The pytest11 entry point: hook bodies that delegate, and nothing else."""

from __future__ import annotations

import inspect
from collections.abc import Generator
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

from pytest_djasync import _compat, djangohooks, fanout, findings, markers, report, syncops
from pytest_djasync import config as _config
from pytest_djasync import fixtures as _fixtures
from pytest_djasync.dbthread import DatabaseThread
from pytest_djasync.errors import AsyncSafetyFailure, DjasyncWarning
from pytest_djasync.session import Watch

SETTINGS_KEY = pytest.StashKey[_config.Settings]()
HOOKS_KEY = pytest.StashKey["WatchHooks"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    _config.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    settings = _config.resolve(config)
    config.stash[SETTINGS_KEY] = settings
    markers.register(config)
    config.pluginmanager.register(_fixtures, "djasync-fixtures")
    hooks = WatchHooks(config, settings)
    config.stash[HOOKS_KEY] = hooks
    config.pluginmanager.register(hooks, "djasync-watch")


def pytest_report_header(config: pytest.Config) -> list[str]:
    warning = syncops.unsafe_mode_warning()
    return config.stash[SETTINGS_KEY].header_lines() + ([warning] if warning else [])


def _test_code(item: pytest.Item) -> CodeType | None:
    """The code object of the test function itself, through pytest-asyncio's wrappers."""
    function: Any = getattr(item, "obj", None)
    function = inspect.unwrap(getattr(function, "__func__", function) or _test_code)
    code: CodeType | None = getattr(function, "__code__", None)
    return code


class WatchHooks:
    """The per-test hooks; they watch every test under ``--djasync``, else only marked ones."""

    def __init__(self, config: pytest.Config, settings: _config.Settings) -> None:
        self.config = config
        self.settings = settings
        self.root = Path(config.rootpath)
        self.watch = Watch(settings.block_ms.value, settings.guard.value, settings.allow.value)
        config.stash[_fixtures.WATCH_KEY] = self.watch
        self._warmed = False
        self.db_thread = DatabaseThread()

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:  # bad marker arguments are usage errors, found before anything runs
            markers.block_ms(item, self.settings.block_ms.value)
            markers.allow_blocking_reason(item)
            markers.max_crossings(item)
            markers.fanout(item)

    def _watches_loop(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or item.get_closest_marker(markers.BLOCK_MS) is not None

    def _counts(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or markers.max_crossings(item) is not None

    def _shares_db(self, item: pytest.Item) -> bool:
        """An async test of pytest-asyncio's, in a watched run that shares the database."""
        function = inspect.unwrap(getattr(item, "obj", None) or _test_code)
        return (
            self.settings.enabled.value
            and self.settings.db_thread.value
            and inspect.iscoroutinefunction(function)
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        result = yield
        if fixturedef.argname == _compat.DJANGO_DB_HELPER_FIXTURE and self._shares_db(
            request.node
        ):
            self.db_thread.share()
            # Runs first at teardown: the test's transaction is rolled back on its own thread.
            fixturedef.addfinalizer(self.db_thread.unshare)
        return result

    def _records_fanout(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or markers.fanout(item) is not None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        watch_loop = self._watches_loop(item)
        if not (watch_loop or self._counts(item) or self._records_fanout(item)):
            return (yield)
        if watch_loop and not self._warmed:
            self._warmed = True
            djangohooks.warm_up()
        block_ms = markers.block_ms(item, self.settings.block_ms.value)
        self.watch.begin_test(item.nodeid, block_ms, watch_loop)
        try:
            return (yield)
        finally:
            self.watch.end_test(item.nodeid, markers.allow_blocking_reason(item))
            if not self.settings.enabled.value:
                self.watch.stop()  # a marked test in an unwatched run: leave no trace after it

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        recording = item.nodeid in self.watch.records
        if recording:
            self.watch.begin_call(item.nodeid, self._counts(item), self._records_fanout(item))
        try:
            result = yield
        except BaseException:
            self._end_call(item, recording)
            self._check(item, "call", raise_=False)
            raise
        self._end_call(item, recording)
        self._check(item, "call", raise_=True)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        result = yield
        self._check(item, "teardown", raise_=True)
        return result

    def _end_call(self, item: pytest.Item, recording: bool) -> None:
        if recording:
            self.watch.end_call(item.nodeid)

    def _check(self, item: pytest.Item, when: str, raise_: bool) -> None:
        """Fail the phase that just ended with every problem found in it (or, when the test
        failed on its own, attach them to its report instead)."""
        texts = [self._loop_text(item)]
        if when == "call":
            texts += [self._crossings_text(item), self._fanout_text(item)]
        text = "\n\n".join(t for t in texts if t)
        if not text:
            return
        if not raise_:
            item.add_report_section(when, "djasync", text)
            return
        raise AsyncSafetyFailure(text, pytrace=False)

    def _loop_text(self, item: pytest.Item) -> str:
        if not self.watch.running:
            return ""
        for note in self.watch.take_notes():
            item.warn(DjasyncWarning(note))
        fresh = self.watch.take()
        test_code = _test_code(item)
        for finding in fresh:
            if finding.allowed_by is None and syncops.expected_by(finding, test_code):
                finding.allowed_by = "caught by the test"
        failing = [f for f in fresh if f.allowed_by is None]
        if not failing or markers.allow_blocking_reason(item) is not None:
            return ""
        verbose = self.config.get_verbosity() > 0
        return report.failure_text(failing, self.watch.current_block_ms, self.root, verbose)

    def _crossings_text(self, item: pytest.Item) -> str:
        limit = markers.max_crossings(item)
        record = self.watch.records.get(item.nodeid)
        recorder = record.crossings if record else None
        if limit is None or recorder is None or recorder.total <= limit:
            return ""
        summary = f"{recorder.total} sync/async crossings, more than the {limit} allowed"
        self._record_marker_failure(item, findings.CROSSINGS, summary, report.CROSSINGS_FIX)
        return report.crossings_text(recorder, limit, "in this test's call phase")

    def _fanout_text(self, item: pytest.Item) -> str:
        expected = markers.fanout(item)
        record = self.watch.records.get(item.nodeid)
        recorder = record.fanout if record else None
        if expected is None or recorder is None:
            return ""
        problem = recorder.check(*expected)
        if problem is None:
            return ""
        cause = recorder.likely_cause() or "start the calls together (asyncio.gather, a TaskGroup)"
        self._record_marker_failure(item, findings.FANOUT, problem, cause)
        return "pytest-djasync: " + fanout.timeline(recorder, problem)

    def _record_marker_failure(self, item: pytest.Item, kind: str, what: str, fix: str) -> None:
        path, line, name = item.location
        self.watch.add_finding(
            item.nodeid,
            findings.Finding(
                kind=kind,
                what=what,
                duration_ms=None,
                stack=(),
                location=findings.Frame(str(self.root / path), (line or 0) + 1, name, ""),
                request=None,
                fix=fix,
                thread="MainThread",
            ),
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.watch.records.get(report.nodeid)
        if record is None or report.passed:
            return
        if report.when == "call":
            record.outcome = "skipped" if report.skipped else "failed"
        elif record.outcome == "passed":  # a failing setup or teardown is an error, as in pytest
            record.outcome = "skipped" if report.skipped else "error"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.watch.stop()
        self.db_thread.close()
        path = self.settings.report.value
        if path is not None:
            data = report.report_json(self.watch.records.values(), self.watch.block_ms, self.root)
            report.write_atomically(self.root / path, data)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lines = report.summary_lines(self.watch.records.values(), self.root)
        costly = report.costliest_requests(self.watch.records.values())
        if costly:
            lines += ["costliest requests by sync/async crossings:", *costly]
        errors = findings.take_internal_errors()
        unmatched = self.watch.unmatched_patterns() if self.settings.enabled.value else []
        if not (lines or errors or unmatched):
            return
        terminalreporter.write_sep("=", "djasync summary")
        for line in lines:
            terminalreporter.write_line(line)
        for pattern in unmatched:
            terminalreporter.write_line(f"djasync_allow pattern {pattern!r} matched no finding")
        for error in errors:
            terminalreporter.write_line(error, red=True)
