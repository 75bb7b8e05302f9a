"""The pytest11 entry point: hook bodies that delegate, and nothing else."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_djasync import config as _config
from pytest_djasync import djangohooks, findings, markers, report
from pytest_djasync import fixtures as _fixtures
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
    return config.stash[SETTINGS_KEY].header_lines()


class WatchHooks:
    """The per-test hooks; they watch every test under ``--djasync``, else only marked ones."""

    def __init__(self, config: pytest.Config, settings: _config.Settings) -> None:
        self.config = config
        self.settings = settings
        self.root = Path(config.rootpath)
        self.watch = Watch(settings.block_ms.value, settings.guard.value, settings.allow.value)
        self._warmed = False

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:  # bad marker arguments are usage errors, found before anything runs
            markers.block_ms(item, self.settings.block_ms.value)
            markers.allow_blocking_reason(item)

    def _watched(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or item.get_closest_marker(markers.BLOCK_MS) is not None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        if not self._watched(item):
            return (yield)
        if not self._warmed:
            self._warmed = True
            djangohooks.warm_up()
        if not self.watch.running:
            self.watch.start()
        self.watch.begin_test(item.nodeid, markers.block_ms(item, self.settings.block_ms.value))
        try:
            return (yield)
        finally:
            self.watch.end_test(markers.allow_blocking_reason(item))
            if not self.settings.enabled.value:
                self.watch.stop()  # a marked test in an unwatched run: leave no trace after it

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            result = yield
        except BaseException:
            self._fail_if_found(item, "call", raise_=False)
            raise
        self._fail_if_found(item, "call", raise_=True)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        result = yield
        self._fail_if_found(item, "teardown", raise_=True)
        return result

    def _fail_if_found(self, item: pytest.Item, when: str, raise_: bool) -> None:
        if not self.watch.running:
            return
        for note in self.watch.take_notes():
            item.warn(DjasyncWarning(note))
        failing = [f for f in self.watch.take() if f.allowed_by is None]
        if not failing or markers.allow_blocking_reason(item) is not None:
            return
        verbose = self.config.get_verbosity() > 0
        text = report.failure_text(failing, self.watch.current_block_ms, self.root, verbose)
        if not raise_:
            item.add_report_section(when, "djasync", text)
            return
        raise AsyncSafetyFailure(text, pytrace=False)

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
        path = self.settings.report.value
        if path is not None:
            data = report.report_json(self.watch.records.values(), self.watch.block_ms, self.root)
            report.write_atomically(self.root / path, data)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lines = report.summary_lines(self.watch.records.values(), self.root)
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
