"""The hooks of a watched run, registered only when some test is watched: a run without
``--djasync`` and without the plugin's markers never calls into this module.

Hook bodies that delegate, as in ``plugin``; each test pays a few dictionary look-ups unless it
found something.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import NamedTuple

import pytest

from pytest_djasync import _compat, baseline, findings, live, markers, report, verdict
from pytest_djasync import config as _config
from pytest_djasync.dbthread import DatabaseThread
from pytest_djasync.errors import AsyncSafetyFailure, DjasyncWarning, spared_from_blanket_errors
from pytest_djasync.results import ATTRIBUTE, Results
from pytest_djasync.session import Watch
from pytest_djasync.verdict import Judge


def start(config: pytest.Config, settings: _config.Settings) -> None:
    """Register the hooks of a watched run (once)."""
    manager = config.pluginmanager
    if manager.has_plugin(WATCH_PLUGIN):
        return
    manager.register(WatchHooks(config, settings), WATCH_PLUGIN)


WATCH_PLUGIN = "djasync-watch"
DB_PLUGIN = "djasync-db-thread"


class _Running(NamedTuple):
    """The watched test in progress, kept so each phase's hook finds it without look-ups."""

    item: pytest.Item
    nodeid: str
    plan: markers.Plan


class WatchHooks:
    """The per-test hooks; they watch every test under ``--djasync``, else only marked ones."""

    def __init__(self, config: pytest.Config, settings: _config.Settings) -> None:
        self.config = config
        self.settings = settings
        self.enabled = settings.enabled.value
        self.root = Path(config.rootpath)
        self.watch = Watch(settings.block_ms.value, settings.guard.value, settings.allow.value)
        self.recorded = _config.load_baseline(settings, self.root)
        # A writing run judges without the old file, so its findings still fail; it keeps
        # only the old entries of the tests it did not run.
        self.known = baseline.Baseline() if settings.baseline_write else self.recorded
        self.judge = Judge(self.watch, self.root, self.known)
        self.results = Results()
        self._outgoing: dict[str, report.Entry] = {}  # entries waiting for their teardown report
        self._controller = not hasattr(config, "workerinput")  # pytest-xdist workers report up
        self._worker_errors: list[str] = []  # the controller's collection of the workers' faults
        self._detailed = settings.report.value is not None
        self._junit = bool(getattr(config.option, "xmlpath", None))
        self._running: _Running | None = None
        self._baseline_lines: list[str] = []  # what the writing run kept of the old file
        self._stopped = False  # Ctrl-C or pytest.exit(), whatever exit status that left

    def _watched(self, item: pytest.Item) -> _Running | None:
        running = self._running
        return running if running is not None and running.item is item else None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # A hook on every fixture's set-up costs every test; only a run that needs it has it.
        settings = self.settings
        if settings.enabled.value and settings.db_thread.value and any(map(self._needs_db, items)):
            manager = self.config.pluginmanager
            if not manager.has_plugin(DB_PLUGIN):
                manager.register(DatabaseSharing(), DB_PLUGIN)

    def _needs_db(self, item: pytest.Item) -> bool:
        """A test that shares the database thread and asks for the database where collection
        sees it: the ``django_db`` marker, or ``db``, ``transactional_db`` and the like among
        its fixtures (a ``request.getfixturevalue("db")`` is seen only once some test
        qualifies). The marker comes from the test's plan, read already at collection."""
        uses_db = _compat.DJANGO_DB_HELPER_FIXTURE in getattr(item, "fixturenames", ())
        marked = markers.plan(item, self.watch.block_ms).django_db
        return (uses_db or marked) and _shares_db(item)

    # -- one test ---------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        __tracebackhide__ = True
        plan = markers.plan(item, self.watch.block_ms)
        if not (self.enabled or plan.asks_for_watching):
            return (yield)
        nodeid = item.nodeid
        self.watch.begin_test(nodeid, plan.block_ms, self.enabled or plan.block_marked)
        self._running = _Running(item, nodeid, plan)
        try:
            return (yield)
        finally:
            self._running = None
            self.watch.end_test(nodeid, plan.allow_reason)
            if not self.enabled:
                self.watch.stop()  # a marked test in an unwatched run: leave no trace after it

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        __tracebackhide__ = True
        running = self._watched(item)
        if running is not None and self.watch.records[running.nodeid].reported:
            self._begin(running)  # pytest-rerunfailures runs the phases again: a new attempt
        try:
            return (yield)
        except BaseException as escaped:
            # The test errors here and never gets a call phase: what set-up found is told with
            # this error, not as a second one at teardown.
            if running is not None:
                self._check(item, running.plan, "setup", test_failed=True, escaped=escaped)
            raise

    def _begin(self, running: _Running) -> None:
        """Start a new attempt of a test whose last one was reported: its findings are its own."""
        plan = running.plan
        self.watch.end_test(running.nodeid, plan.allow_reason)
        self.watch.begin_test(running.nodeid, plan.block_ms, self.enabled or plan.block_marked)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        __tracebackhide__ = True  # an error raised outside the test's own code (a timeout
        # in the loop's select) is shown from the test's runner, as without the plugin
        running = self._watched(item)
        if running is None:
            return (yield)
        nodeid, plan = running.nodeid, running.plan
        budget = plan.max_crossings is not None
        self.watch.begin_call(
            nodeid,
            count_crossings=self.enabled or budget,
            record_fanout=self.enabled or plan.fanout is not None,
            explain=budget or self._detailed,  # a failed budget and the report file say why
        )
        try:
            result = yield
        except BaseException as escaped:
            self._end_call(nodeid)
            self._check(item, plan, "call", test_failed=True, escaped=escaped)
            raise
        self._end_call(nodeid)
        kept = _unittest_error(item)
        self._check(item, plan, "call", test_failed=kept is not None, escaped=kept)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        __tracebackhide__ = True
        running = self._watched(item)
        if running is None:
            return (yield)
        failed = False
        try:
            return (yield)
        except BaseException:
            failed = True
            raise
        finally:
            try:
                self._check(item, running.plan, "teardown", test_failed=failed)
            finally:
                self._hand_over(item, running.nodeid)

    def _end_call(self, nodeid: str) -> None:
        live.settle_all()  # requests the live server is still serving belong to this test
        self.watch.end_call(nodeid)

    def _check(
        self,
        item: pytest.Item,
        plan: markers.Plan,
        when: str,
        test_failed: bool,
        escaped: BaseException | None = None,
    ) -> None:
        """Fail the phase that just ended with every problem found in it; when the test failed
        on its own, or in warn mode, attach them to its report instead."""
        expects = when == "call" and (plan.max_crossings is not None or plan.fanout is not None)
        if not (expects or self.watch.has_news()):
            return
        try:
            verbose = self.config.get_verbosity() > 0
            phase = self.judge.phase(item, plan, when, verbose, escaped)
        except Exception as exc:  # a fault of ours must not change the test's outcome
            findings.internal_error(f"judging {item.nodeid}", exc)
            return
        for note in phase.notes:
            with spared_from_blanket_errors(note):
                try:
                    self._warn(item, DjasyncWarning(note))
                except DjasyncWarning as error:  # a filter naming it made it an error
                    pytest.fail(f"{_WARNING}: {error}", pytrace=False)  # the test's, not ours
        if not phase.text:
            return
        warned = self.settings.mode.value == "warn" and not _expects_our_failure(item)
        if test_failed or warned:
            item.add_report_section(when, "djasync", phase.text)
            return
        raise AsyncSafetyFailure(phase.text, pytrace=False)

    def _warn(self, item: pytest.Item, warning: DjasyncWarning) -> None:
        """``item.warn``, at the test's ``def`` line rather than its first decorator's."""
        if not isinstance(item, pytest.Function):
            item.warn(warning)
            return
        _, line = verdict.def_line(item, self.root)
        warnings.warn_explicit(warning, category=None, filename=item.location[0], lineno=line)

    def _hand_over(self, item: pytest.Item, nodeid: str) -> None:
        """Give the test's entry to its teardown report; an empty one in a ``--djasync`` run
        stays behind (the controller knows what it says), so clean tests cost nothing here."""
        record = self.watch.records[nodeid]
        record.reported = True
        entry = None
        if not (self.enabled and record.is_empty()):
            entry = self._outgoing[nodeid] = report.test_entry(record, self.root, self._detailed)
        if self._junit:
            entry = entry or report.empty_entry(nodeid, self._detailed)
            # a rerun's (pytest-rerunfailures) replace the earlier attempt's, which stay on
            # the item
            earlier = [p for p in item.user_properties if not str(p[0]).startswith("djasync_")]
            item.user_properties[:] = earlier + report.junit_properties(entry)

    # -- the whole run ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker sends the report up
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        when = report.when
        if when != "teardown":  # only an outcome to note; a passed phase changes none, but a
            # set-up starts an attempt (pytest-rerunfailures): the last attempt's outcome counts
            if self._controller and (report.outcome != "passed" or when == "setup"):
                self.results.add(report.nodeid, when, report.outcome, None)
            return
        nodeid = report.nodeid
        if self._outgoing:
            entry = self._outgoing.pop(nodeid, None)
            if entry is not None:
                setattr(report, ATTRIBUTE, entry)
        if self._controller:
            self.results.add(nodeid, when, report.outcome, getattr(report, ATTRIBUTE, None))
            self._worker_errors += getattr(report, INTERNAL_ERRORS, ())
        else:  # sent up with the report, so a worker that dies later loses none of them
            _send_internal_errors(self.config, report.__dict__)

    @pytest.hookimpl(optionalhook=True)  # pytest-xdist's: a worker has finished
    def pytest_testnodedown(self, node: object, error: object) -> None:
        self._worker_errors += getattr(node, "workeroutput", {}).get(INTERNAL_ERRORS, ())

    def pytest_keyboard_interrupt(self) -> None:
        self._stopped = True  # pytest.exit(returncode=0) too: its exit status says nothing

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        records = self.watch.unreported_records()
        self.watch.stop()
        if not self._controller:
            _send_internal_errors(self.config, self.config.workeroutput)  # type: ignore[attr-defined]
            return
        if self.config.option.collectonly:
            return  # no test ran: the last run's report and baseline stand
        # A test cut short (Ctrl-C, pytest.exit) has no teardown report: keep what it found,
        # whether it was stopped in its teardown (its entry made already) or before.
        for entry in self._outgoing.values():
            self.results.add_unfinished(entry)
        for record in records:
            self.results.add_unfinished(report.test_entry(record, self.root, self._detailed))
        partial = (
            self._stopped
            or exitstatus == pytest.ExitCode.INTERRUPTED
            or bool(session.shouldstop or session.shouldfail)
        )
        self._write_outputs(partial)

    def _entries(self) -> list[report.Entry]:
        return self.results.entries(
            report.empty_entry if self.enabled else None, detailed=self._detailed
        )

    def _write_outputs(self, partial: bool) -> None:
        if self.settings.report.value is not None:
            path = self.root / self.settings.report.value
            try:
                report.write_atomically(
                    path, report.report_json(self._entries(), self.watch.block_ms)
                )
            except OSError as exc:
                findings.internal_error(f"writing the report {path}", exc)
        baseline_path = self.settings.baseline.value
        if self.settings.baseline_write and baseline_path is not None:
            path = self.root / baseline_path  # like the report: from rootdir
            try:
                self._write_baseline(path, partial)
            except OSError as exc:
                findings.internal_error(f"writing the baseline {path}", exc)

    def _write_baseline(self, path: Path, partial: bool) -> None:
        if partial:  # its last test may not have finished: those findings are not whole
            self._baseline_lines = [f"baseline not rewritten: the run stopped early ({path})"]
            return
        kept, dropped = self.recorded.kept(self.results.ran(), self.root)
        keys = self.results.keys(to_record=True).union(kept)
        baseline.write(path, keys)
        self._baseline_lines = _kept_lines(path, len(keys), kept, dropped)

    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter, exitstatus: int
    ) -> None:
        if (
            not self._controller
            or exitstatus == pytest.ExitCode.USAGE_ERROR
            or self.config.option.collectonly
        ):
            return  # no test ran: a summary of nothing would bury pytest's own output
        # A clean test's entry adds nothing here: only count those.
        entries = self.results.entries(None, detailed=self._detailed)
        tests = len(self.results) if self.enabled else len(entries)
        lines = report.summary_lines(entries, verbose=self.config.get_verbosity() > 0)
        costly = report.costliest_requests(entries)
        if costly:
            lines += ["costliest requests by sync/async crossings:", *costly]
        lines += self._stale()
        lines += [report.unmatched_allow(p) for p in self._unmatched(entries)]
        errors = [*self._worker_errors, *findings.take_internal_errors()]
        if not (lines or errors):
            return
        terminalreporter.write_sep("=", "djasync summary")
        for line in lines:
            terminalreporter.write_line(line)
        for error in errors:
            terminalreporter.write_line(error, red=True)
        terminalreporter.write_line(report.totals_line(entries, tests))

    def _stale(self) -> list[str]:
        """Known findings gone from the tests that ran; those of the tests that did not (a
        partial run, or a test since removed) are counted, not listed as gone."""
        if self.settings.baseline_write:
            return self._baseline_lines
        if not self.known.keys or not self.enabled:
            return []  # without --djasync, a test is watched only for what its marker asks
        ran = self.results.ran()
        gone = self.known.stale(self.results.keys(to_record=False), ran)
        lines = ["known finding no longer seen: " + "\t".join(k) for k in gone]
        not_run = self.known.not_run(ran)
        if not_run:
            lines.append(f"{not_run} {_NOT_RUN}")
        return lines

    def _unmatched(self, entries: list[report.Entry]) -> list[str]:
        """Patterns no finding of the run names: read off the entries, which the pytest-xdist
        workers' findings reach too."""
        if not self.enabled:
            return []
        used = {v.get("allowed_by") for entry in entries for v in entry["violations"]}
        return [p for p in self.settings.allow.value if p not in used]


_WARNING = f"{DjasyncWarning.__module__}.{DjasyncWarning.__qualname__}"


def _expects_our_failure(item: pytest.Item) -> bool:
    """A test whose xfail mark our failure meets (``raises=AsyncSafetyFailure``, or none):
    failing it in warn mode fails nothing, and not failing it would fail a strict one."""
    if item.config.option.runxfail:
        return False
    xfailed = _compat.evaluated_xfail(item)
    if xfailed is None or not xfailed.run:
        return False
    return xfailed.raises is None or issubclass(AsyncSafetyFailure, xfailed.raises)


INTERNAL_ERRORS = "djasync_internal_errors"  # a worker's faults, on a report or its workeroutput


def _send_internal_errors(config: pytest.Config, carrier: dict[str, object]) -> None:
    """Put a pytest-xdist worker's internal errors so far where the controller reads them."""
    errors = findings.take_internal_errors()
    if errors:
        worker = config.workerinput["workerid"]  # type: ignore[attr-defined]
        carrier[INTERNAL_ERRORS] = [f"[{worker}] {error}" for error in errors]


_NOT_RUN = (
    "known finding(s) of tests that did not run: deselected, skipped or removed"
    " (delete the lines of removed tests)"
)


def _kept_lines(path: Path, written: int, kept: list[baseline.Key], dropped: int) -> list[str]:
    lines = [f"baseline: wrote {written} finding(s) to {path}"]
    if kept:  # the kept ones are among those written: say so, or they read as counted twice
        lines[0] += f" ({written - len(kept)} from this run)"
        lines.append(f"baseline: kept {len(kept)} {_NOT_RUN}")
    if dropped:
        lines.append(f"baseline: dropped {dropped} known finding(s) of test files that are gone")
    return lines


class DatabaseSharing:
    """Under ``--djasync``, an async test's thread-sensitive work runs in its transaction."""

    def __init__(self) -> None:
        self.db_thread = DatabaseThread()

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        result = yield
        if fixturedef.argname == _compat.DJANGO_DB_HELPER_FIXTURE and _shares_db(request.node):
            self.db_thread.share()
            # Runs first at teardown: the test's transaction is rolled back on its own thread.
            fixturedef.addfinalizer(self.db_thread.unshare)
        return result

    def pytest_sessionfinish(self) -> None:
        self.db_thread.close()


def _shares_db(item: pytest.Item) -> bool:
    """An async test of pytest-asyncio's, or any test using ``live_asgi_server``."""
    function = getattr(item, "obj", None)
    return function is not None and (
        inspect.iscoroutinefunction(inspect.unwrap(function))
        or "live_asgi_server" in getattr(item, "fixturenames", ())
    )


def _unittest_error(item: pytest.Item) -> BaseException | None:
    """What a unittest ``TestCase`` (Django's) let out of the test: pytest's unittest support
    raises nothing from the call, it keeps the error on the item for the report."""
    kept = getattr(item, "_excinfo", None)
    return kept[0].value if kept else None
