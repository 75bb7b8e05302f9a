"""The pytest11 entry point: hook bodies that delegate, and nothing else."""

from __future__ import annotations

import inspect
from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_djasync import (
    _compat,
    baseline,
    djangohooks,
    findings,
    live,
    markers,
    report,
    syncops,
)
from pytest_djasync import config as _config
from pytest_djasync import fixtures as _fixtures
from pytest_djasync.dbthread import DatabaseThread
from pytest_djasync.errors import AsyncSafetyFailure, DjasyncWarning
from pytest_djasync.results import ATTRIBUTE, Results
from pytest_djasync.session import Watch
from pytest_djasync.verdict import Judge

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


def _load_baseline(settings: _config.Settings, root: Path) -> baseline.Baseline:
    path = settings.baseline.value
    if path is None or settings.baseline_write:
        return baseline.Baseline()
    try:
        return baseline.Baseline.load(root / path)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"pytest-djasync: {settings.baseline.source}: {exc}") from None


class WatchHooks:
    """The per-test hooks; they watch every test under ``--djasync``, else only marked ones."""

    def __init__(self, config: pytest.Config, settings: _config.Settings) -> None:
        self.config = config
        self.settings = settings
        self.root = Path(config.rootpath)
        self.watch = Watch(settings.block_ms.value, settings.guard.value, settings.allow.value)
        config.stash[_fixtures.WATCH_KEY] = self.watch
        self.known = _load_baseline(settings, self.root)
        self.judge = Judge(self.watch, self.root, self.known)
        self.results = Results()
        self.db_thread = DatabaseThread()
        self._warmed = False
        self._controller = not hasattr(config, "workerinput")  # pytest-xdist workers report up
        self._detailed = settings.report.value is not None
        self._junit = bool(getattr(config.option, "xmlpath", None))

    # -- which tests are watched, and how --------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:  # bad marker arguments are usage errors, found before anything runs
            self._plan(item)

    def _plan(self, item: pytest.Item) -> markers.Plan:
        return markers.plan(item, self.settings.block_ms.value)

    def _watches_loop(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or self._plan(item).block_marked

    def _counts(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or self._plan(item).max_crossings is not None

    def _records_fanout(self, item: pytest.Item) -> bool:
        return self.settings.enabled.value or self._plan(item).fanout is not None

    def _shares_db(self, item: pytest.Item) -> bool:
        """An async test of pytest-asyncio's, or any test using ``live_asgi_server``, in a
        watched run that shares the database."""
        function = getattr(item, "obj", None)
        return (
            self.settings.enabled.value
            and self.settings.db_thread.value
            and function is not None
            and (
                inspect.iscoroutinefunction(inspect.unwrap(function))
                or "live_asgi_server" in getattr(item, "fixturenames", ())
            )
        )

    # -- one test ---------------------------------------------------------------------------------

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

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        watch_loop = self._watches_loop(item)
        if not (watch_loop or self._counts(item) or self._records_fanout(item)):
            return (yield)
        if watch_loop and not self._warmed:
            self._warmed = True
            djangohooks.warm_up()
        self.watch.begin_test(item.nodeid, self._plan(item).block_ms, watch_loop)
        try:
            return (yield)
        finally:
            self.watch.end_test(item.nodeid, self._plan(item).allow_reason)
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
            self._check(item, "call", test_failed=True)
            raise
        self._end_call(item, recording)
        self._check(item, "call", test_failed=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        failed = False
        try:
            return (yield)
        except BaseException:
            failed = True
            raise
        finally:
            try:
                self._check(item, "teardown", test_failed=failed)
            finally:
                self._attach_entry(item)

    def _end_call(self, item: pytest.Item, recording: bool) -> None:
        if recording:
            live.settle_all()  # requests the live server is still serving belong to this test
            self.watch.end_call(item.nodeid)

    def _check(self, item: pytest.Item, when: str, test_failed: bool) -> None:
        """Fail the phase that just ended with every problem found in it; when the test failed
        on its own, or in warn mode, attach them to its report instead."""
        if item.nodeid not in self.watch.records:
            return
        try:
            phase = self.judge.phase(item, self._plan(item), when, self.config.get_verbosity() > 0)
        except Exception as exc:  # a fault of ours must not change the test's outcome
            findings.internal_error(f"judging {item.nodeid}", exc)
            return
        for note in phase.notes:
            item.warn(DjasyncWarning(note))
        if not phase.text:
            return
        if test_failed or self.settings.mode.value == "warn":
            item.add_report_section(when, "djasync", phase.text)
            return
        raise AsyncSafetyFailure(phase.text, pytrace=False)

    def _attach_entry(self, item: pytest.Item) -> None:
        record = self.watch.records.get(item.nodeid)
        if record is None:
            return
        entry = report.test_entry(record, self.root, self._detailed)
        record.reported = True
        item.stash[_ENTRY_KEY] = entry
        if self._junit:
            item.user_properties.extend(report.junit_properties(entry))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        test_report = yield
        if call.when == "teardown" and _ENTRY_KEY in item.stash:
            setattr(
                test_report, ATTRIBUTE, item.stash[_ENTRY_KEY]
            )  # travels to xdist's controller
        return test_report

    # -- the whole run ----------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.results.add(
            report.nodeid, report.when, report.outcome, getattr(report, ATTRIBUTE, None)
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        records = self.watch.unreported_records()
        self.watch.stop()
        self.db_thread.close()
        if not self._controller:
            return
        for record in records:  # a test cut short by Ctrl-C has no teardown report: keep it
            self.results.add_unfinished(report.test_entry(record, self.root, self._detailed))
        partial = exitstatus == pytest.ExitCode.INTERRUPTED or bool(
            session.shouldstop or session.shouldfail
        )
        self._write_outputs(partial)

    def _write_outputs(self, partial: bool) -> None:
        try:
            if self.settings.report.value is not None:
                data = report.report_json(self.results.entries(), self.watch.block_ms)
                report.write_atomically(self.root / self.settings.report.value, data)
            # A baseline from part of a run would drop the known findings of the rest.
            if (
                self.settings.baseline_write
                and self.settings.baseline.value is not None
                and not partial
            ):
                path = self.root / self.settings.baseline.value  # like the report: from rootdir
                baseline.write(path, self.results.keys(failing_only=True))
        except OSError as exc:
            findings.internal_error("writing the report files", exc)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self._controller:
            return
        entries = self.results.entries()
        lines = report.summary_lines(entries)
        costly = report.costliest_requests(entries)
        if costly:
            lines += ["costliest requests by sync/async crossings:", *costly]
        lines += [f"known finding no longer seen: {k}" for k in self._stale()]
        lines += [f"djasync_allow pattern {p!r} matched no finding" for p in self._unmatched()]
        errors = findings.take_internal_errors()
        if not (lines or errors):
            return
        terminalreporter.write_sep("=", "djasync summary")
        for line in lines:
            terminalreporter.write_line(line)
        for error in errors:
            terminalreporter.write_line(error, red=True)
        terminalreporter.write_line(report.totals_line(entries))

    def _stale(self) -> list[str]:
        if self.settings.baseline_write or not self.known.keys:
            return []
        return ["\t".join(k) for k in self.known.stale(self.results.keys(failing_only=False))]

    def _unmatched(self) -> list[str]:
        return self.watch.unmatched_patterns() if self.settings.enabled.value else []


_ENTRY_KEY = pytest.StashKey[report.Entry]()
