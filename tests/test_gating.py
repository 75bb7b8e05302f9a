"""CI gating: baselines, warn mode, pytest-xdist, JUnit properties, interrupted runs, faults."""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_djasync import baseline, crossings, fanout, findings, report
from pytest_djasync.session import TestRecord as Record
from tests.conftest import DjangoProject, violations

SUITE = """
import time

import pytest


async def _sleep_in(where):
    time.sleep(0.001)


@pytest.mark.asyncio
async def test_old_problem():
    time.sleep(0.001)


@pytest.mark.asyncio
async def test_other_old_problem():
    await _sleep_in("helper")


@pytest.mark.asyncio
async def test_clean():
    pass
"""

NEW_PROBLEM = """

@pytest.mark.asyncio
async def test_new_problem():
    time.sleep(0.001)
"""

FIXED = SUITE.replace(
    "async def test_old_problem():\n    time.sleep(0.001)",
    "async def test_old_problem():\n    pass",
)


def _comparable(report: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, str, str, int]]]]:
    """Each test's outcome and findings, without timings (locations as JSON: dicts and ``None``
    do not sort)."""
    return sorted(
        (
            entry["nodeid"],
            entry["outcome"],
            sorted(
                (v["kind"], json.dumps(v["location"], sort_keys=True), v["what"], v["count"])
                for v in entry["violations"]
            ),
        )
        for entry in report["tests"]
    )


def test_baseline_round_trip(django_project: DjangoProject) -> None:
    django_project.tests(SUITE)
    written = django_project.run(
        "--djasync", "--djasync-baseline=baseline.txt", "--djasync-baseline-write"
    )
    written.assert_outcomes(passed=1, failed=2)  # writing records findings; it does not hide them
    written.stdout.fnmatch_lines(["baseline: wrote 2 finding(s) to */baseline.txt"])
    lines = (django_project.path / "baseline.txt").read_text().splitlines()
    entries = [line.split("\t") for line in lines if not line.startswith("#")]
    assert entries == sorted(entries)
    old = "test_scenario.py::test_old_problem"
    other = "test_scenario.py::test_other_old_problem"
    assert entries == [
        [old, "blocking-call", "test_scenario.py:test_old_problem", "time.sleep"],
        [other, "blocking-call", "test_scenario.py:_sleep_in", "time.sleep"],
    ]

    django_project.run("--djasync", "--djasync-baseline=baseline.txt").assert_outcomes(passed=3)

    django_project.tests(SUITE + NEW_PROBLEM)
    new = django_project.run("--djasync", "--djasync-baseline=baseline.txt")
    new.assert_outcomes(passed=3, failed=1)
    new.stdout.fnmatch_lines(["FAILED test_scenario.py::test_new_problem*"])

    django_project.tests(FIXED)
    fixed = django_project.run("--djasync", "--djasync-baseline=baseline.txt")
    fixed.assert_outcomes(passed=3)
    fixed.stdout.fnmatch_lines(
        ["known finding no longer seen: test_scenario.py::test_old_problem*"]
    )


def test_a_partial_run_lists_as_gone_only_the_known_findings_of_tests_it_ran(
    django_project: DjangoProject,
) -> None:
    """A ``-k`` run is no evidence that the other tests' known problems were fixed."""
    django_project.tests(SUITE)
    django_project.run("--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    django_project.tests(FIXED)
    partial = django_project.run("--djasync", "--djasync-baseline=b.txt", "-k", "test_old")
    partial.assert_outcomes(passed=1)
    partial.stdout.fnmatch_lines(
        [
            "known finding no longer seen: test_scenario.py::test_old_problem\t*",
            "1 known finding(s) of tests that did not run: deselected, skipped or removed*",
        ]
    )
    partial.stdout.no_fnmatch_line("*no longer seen: test_scenario.py::test_other_old_problem*")
    whole = django_project.run("--djasync", "--djasync-baseline=b.txt")
    whole.assert_outcomes(passed=3)
    whole.stdout.no_fnmatch_line("*tests that did not run*")


def test_a_partial_writing_run_keeps_the_entries_of_the_tests_it_did_not_run(
    django_project: DjangoProject,
) -> None:
    """Rewriting from a ``-k`` run (or with a test skipped) changes only the tests that ran;
    entries of a test file that no longer exists are dropped."""
    django_project.tests(SUITE)
    write = ("--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    django_project.run(*write)
    path = django_project.path / "b.txt"
    gone = "test_gone.py::test_x\tblocking-call\ttest_gone.py:test_x\ttime.sleep\n"
    path.write_text(path.read_text() + gone)
    django_project.tests(FIXED + NEW_PROBLEM)

    partial = django_project.run(*write, "-k", "test_old or test_new")
    partial.assert_outcomes(passed=1, failed=1)
    partial.stdout.fnmatch_lines(
        [
            "baseline: wrote 2 finding(s) to */b.txt (1 from this run)",
            "baseline: kept 1 known finding(s) of tests that did not run: deselected, skipped*",
            "baseline: dropped 1 known finding(s) of test files that are gone",
        ]
    )
    assert _baseline_tests(path) == ["test_new_problem", "test_other_old_problem"]

    skip = "@pytest.mark.skip\nasync def test_other"
    django_project.tests((FIXED + NEW_PROBLEM).replace("async def test_other", skip))
    skipped = django_project.run(*write)
    skipped.assert_outcomes(passed=2, failed=1, skipped=1)
    assert _baseline_tests(path) == ["test_new_problem", "test_other_old_problem"]


def _baseline_tests(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.split("\t")[0].split("::")[1] for line in lines if not line.startswith("#")]


def test_an_xfailed_test_stays_out_of_the_baseline(django_project: DjangoProject) -> None:
    """A test marked to fail on its finding expects that failure already: a baseline entry
    would excuse the finding, and a strict xfail would then fail as XPASS."""
    django_project.tests(
        SUITE
        + """

from pytest_djasync import AsyncSafetyFailure


@pytest.mark.xfail(raises=AsyncSafetyFailure, strict=True)
@pytest.mark.asyncio
async def test_known_to_block():
    time.sleep(0.001)
"""
    )
    args = ("--djasync", "--djasync-baseline=baseline.txt")
    django_project.run(*args, "--djasync-baseline-write").assert_outcomes(
        passed=1, failed=2, xfailed=1
    )
    assert "test_known_to_block" not in (django_project.path / "baseline.txt").read_text()
    django_project.run(*args).assert_outcomes(passed=3, xfailed=1)


def test_findings_of_xfailed_and_skipped_tests_are_excused_in_the_report(
    django_project: DjangoProject,
) -> None:
    """Neither test fails the run, and the baseline leaves both out: the JSON gate of ci.md
    (``not violation["allowed"]``) must agree, and the summary must not call them unexcused."""
    django_project.tests(
        """
import time

import pytest

from pytest_djasync import AsyncSafetyFailure


@pytest.mark.xfail(raises=AsyncSafetyFailure, strict=True)
@pytest.mark.asyncio
async def test_known_to_block():
    time.sleep(0.001)


@pytest.mark.asyncio
async def test_skips_itself():
    time.sleep(0.001)
    pytest.skip("not here")
"""
    )
    result, report = django_project.report()
    result.assert_outcomes(skipped=1, xfailed=1)
    found = [v for test in report["tests"] for v in test["violations"]]
    assert [(v["allowed"], v["allowed_by"]) for v in found] == [(True, "xfail or skip")] * 2
    result.stdout.fnmatch_lines(["djasync: 2 findings in 2 of 2 tests *; 0 unexcused, *"])


def test_baseline_survives_unrelated_edits(django_project: DjangoProject) -> None:
    django_project.tests(SUITE)
    django_project.run("--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    django_project.tests("# a comment pushes every line down\n\n" + SUITE)
    django_project.run("--djasync", "--djasync-baseline=b.txt").assert_outcomes(passed=3)


def test_malformed_baseline_is_a_usage_error(django_project: DjangoProject) -> None:
    django_project.tests(SUITE)
    (django_project.path / "b.txt").write_text("only\ttwo fields\n")
    result = django_project.run("--djasync", "--djasync-baseline=b.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--djasync-baseline: */b.txt:1: expected 4 tab-separated*"])
    rewrite = django_project.run(
        "--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write"
    )
    assert rewrite.ret == pytest.ExitCode.USAGE_ERROR  # it would keep the entries it can't read
    rewrite.stderr.fnmatch_lines(
        ["*expected 4 tab-separated*(delete the file to write a new one)"]
    )
    # Without --djasync too, before any test: it was read only once a marker started watching,
    # after collection, and not at all in a run with no marked test (trial)
    unwatched = django_project.run("--djasync-baseline=b.txt")
    assert unwatched.ret == pytest.ExitCode.USAGE_ERROR
    unwatched.stderr.fnmatch_lines(["*--djasync-baseline: */b.txt:1: expected 4 tab-separated*"])
    assert "collected" not in unwatched.stdout.str()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"t.py::t\tblockingcall\tt.py:t\ttime.sleep\n",
            "*/b.txt:1: unknown kind 'blockingcall'; choose from: stall, blocking-call, sync-only,"
            " crossings, fanout",
        ),
        (b"\xff\xfe\x00", "*/b.txt is not a UTF-8 text file (byte 0: invalid start byte)*"),
        (None, "*/b.txt is a directory; give a file path such as djasync-baseline.txt"),
    ],
    ids=["unknown-kind", "not-utf8", "directory"],
)
def test_unreadable_baseline_is_a_usage_error_naming_the_file(
    django_project: DjangoProject, content: bytes | None, expected: str
) -> None:
    django_project.tests(SUITE)
    path = django_project.path / "b.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    result = django_project.run("--djasync", "--djasync-baseline=b.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-djasync: --djasync-baseline: {expected}"])


def test_baseline_write_needs_a_path(django_project: DjangoProject) -> None:
    django_project.tests(SUITE)
    result = django_project.run("--djasync", "--djasync-baseline-write")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--djasync-baseline-write needs a file to write*"])


def test_baseline_write_needs_djasync(django_project: DjangoProject) -> None:
    """Without --djasync only marked tests are watched: a rewrite would drop everyone else's."""
    django_project.tests(SUITE)
    result = django_project.run("--djasync-baseline=b.txt", "--djasync-baseline-write")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--djasync-baseline-write needs --djasync (or djasync = true*"])
    assert not (django_project.path / "b.txt").exists()


def test_a_test_whose_set_up_failed_keeps_its_baseline_entries(
    django_project: DjangoProject,
) -> None:
    """Its body never ran: its known findings are neither confirmed nor gone."""
    django_project.tests(SUITE)
    django_project.run("--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    before = (django_project.path / "b.txt").read_text()
    assert "test_old_problem" in before
    broken = SUITE.replace(
        "async def test_old_problem():", "async def test_old_problem(missing_fixture):"
    )
    django_project.tests(broken)
    gate = django_project.run("--djasync", "--djasync-baseline=b.txt")
    gate.stdout.no_fnmatch_line("known finding no longer seen*test_old_problem*")
    django_project.run("--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    assert (django_project.path / "b.txt").read_text() == before


@pytest.mark.parametrize(
    ("args", "ini"),
    [(["--djasync-warn"], ""), ([], "djasync_mode = warn")],
    ids=["flag", "ini"],
)
def test_warn_mode_reports_everything_and_fails_nothing(
    django_project: DjangoProject, args: list[str], ini: str
) -> None:
    django_project.tests(SUITE)
    django_project.ini(ini)
    result, report = django_project.report(*args)
    result.assert_outcomes(passed=3)
    assert len(violations(report, "test_old_problem")) == 1
    result.stdout.fnmatch_lines(
        [
            "*djasync summary*",
            "test_scenario.py:*test_old_problem: blocking-call time.sleep",
            "djasync: 2 findings in 2 of 3 tests (blocking-call 2)*",
        ]
    )


def test_warn_mode_keeps_an_xfail_that_expects_the_plugins_failure(
    django_project: DjangoProject,
) -> None:
    """The documented strict xfail of a known problem would XPASS, and fail, if warn mode did
    not fail it (two trials' CI gates went red on it)."""
    django_project.tests(
        """
        import time

        import pytest

        from pytest_djasync.errors import AsyncSafetyFailure

        @pytest.mark.xfail(raises=AsyncSafetyFailure, strict=True, reason="known")
        @pytest.mark.asyncio
        async def test_known():
            time.sleep(0.001)

        @pytest.mark.xfail(reason="known too")
        @pytest.mark.asyncio
        async def test_known_any_failure():
            time.sleep(0.001)

        @pytest.mark.asyncio
        async def test_new():
            time.sleep(0.001)
        """
    )
    result = django_project.run("--djasync", "--djasync-warn")
    result.assert_outcomes(passed=1, xfailed=2)
    ignored = django_project.run("--djasync", "--djasync-warn", "--runxfail")
    ignored.assert_outcomes(passed=3)


def test_the_summary_counts_clean_tests_without_a_report_file(
    django_project: DjangoProject,
) -> None:
    """Without ``--djasync-report`` no entry is made for a clean test; it is still counted."""
    django_project.tests(SUITE)
    result = django_project.run("--djasync", "--djasync-warn")
    result.stdout.fnmatch_lines(["djasync: 2 findings in 2 of 3 tests (blocking-call 2)*"])


def test_xdist_two_workers_report_what_one_process_does(django_project: DjangoProject) -> None:
    pytest.importorskip("xdist")
    django_project.tests(SUITE + NEW_PROBLEM)
    single, one = django_project.report("-p", "no:randomly")
    parallel, two = django_project.report("-n", "2", "-p", "no:randomly")
    assert single.parseoutcomes() == parallel.parseoutcomes()
    assert _comparable(one) == _comparable(two)
    summary = [line for line in parallel.outlines if " findings in " in line]
    assert summary == ["djasync: 3 findings in 3 of 4 tests (blocking-call 3); 3 unexcused,"
                       " 0 known from the baseline; 0 sync/async crossings"]  # fmt: skip


def test_junit_xml_carries_the_counts(django_project: DjangoProject) -> None:
    django_project.tests(SUITE)
    django_project.run("--djasync", "--junitxml=junit.xml")
    tree = ET.parse(django_project.path / "junit.xml")
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in tree.iter("testcase")
    }
    assert properties["test_old_problem"]["djasync_findings"] == "1"
    assert properties["test_old_problem"]["djasync_blocking_call"] == "1"
    assert properties["test_clean"]["djasync_findings"] == "0"
    assert properties["test_clean"]["djasync_crossings_total"] == "0"


def test_interrupted_run_still_writes_what_ran(django_project: DjangoProject) -> None:
    django_project.tests(
        SUITE
        + """

@pytest.mark.asyncio
async def test_zz_interrupted():
    time.sleep(0.001)
    raise KeyboardInterrupt
"""
    )
    result = django_project.run("--djasync", "--djasync-report=report.json", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = json.loads((django_project.path / "report.json").read_text())
    assert len(violations(report, "test_old_problem")) == 1
    assert len(violations(report, "test_zz_interrupted")) == 1
    outcomes = {entry["nodeid"].split("::")[1]: entry["outcome"] for entry in report["tests"]}
    assert outcomes["test_zz_interrupted"] == "error"


def test_a_test_interrupted_in_its_teardown_keeps_its_findings(
    django_project: DjangoProject,
) -> None:
    """Ctrl-C in a fixture's teardown: the test's entry was made, its teardown report never
    came; it was lost from the report and the summary although the terminal counted it."""
    django_project.tests(
        """
import time

import pytest


@pytest.fixture
def interrupted_teardown():
    yield
    raise KeyboardInterrupt


@pytest.mark.asyncio
async def test_blocks(interrupted_teardown):
    time.sleep(0.001)
"""
    )
    result, report = django_project.report()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    [entry] = report["tests"]
    assert entry["outcome"] == "failed"  # its call failed; the teardown never reported
    assert [v["kind"] for v in entry["violations"]] == ["blocking-call"]
    result.stdout.fnmatch_lines(["djasync: 1 finding in 1 of 1 test *"])


@pytest.mark.parametrize("returncode", [0, 3])
def test_pytest_exit_in_a_test_does_not_rewrite_the_baseline(
    django_project: DjangoProject, returncode: int
) -> None:
    django_project.tests(SUITE)
    args = ("--djasync", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    django_project.run(*args)
    before = (django_project.path / "b.txt").read_text()
    django_project.tests(
        f"""
import pytest


@pytest.mark.asyncio
async def test_exits():
    pytest.exit("stop here", returncode={returncode})
""",
        name="test_aa_exit.py",
    )
    stopped = django_project.run(*args, "-p", "no:randomly")
    assert stopped.ret == returncode
    assert (django_project.path / "b.txt").read_text() == before
    if returncode == 0:  # pytest shows no terminal summary after other exit statuses
        stopped.stdout.fnmatch_lines(["baseline not rewritten: the run stopped early (*b.txt)"])


def test_the_report_and_the_baseline_are_readable_as_files_normally_are(
    django_project: DjangoProject,
) -> None:
    """Written through a private temporary file (mkstemp's 0600), they used to stay private:
    a CI artifact step running as another user could not read them."""
    django_project.tests(SUITE)
    old = django_project.path / "b.txt"
    old.write_text("")
    old.chmod(0o640)  # an existing file keeps its mode
    django_project.run(
        "--djasync",
        "--djasync-report=report.json",
        "--djasync-baseline=b.txt",
        "--djasync-baseline-write",
    )
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((django_project.path / "report.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(old.stat().st_mode) == 0o640


def test_collect_only_leaves_the_report_and_the_baseline_alone(
    django_project: DjangoProject,
) -> None:
    django_project.tests(SUITE)
    args = ("--djasync-report=report.json", "--djasync-baseline=b.txt", "--djasync-baseline-write")
    django_project.run("--djasync", *args)
    files = {name: (django_project.path / name).read_text() for name in ("report.json", "b.txt")}
    listed = django_project.run("--djasync", *args, "--collect-only")
    assert listed.ret == pytest.ExitCode.OK
    assert {name: (django_project.path / name).read_text() for name in files} == files
    listed.stdout.no_fnmatch_line("*djasync summary*")
    listed.stdout.no_fnmatch_line("baseline*")


def test_a_stopped_run_does_not_rewrite_the_baseline(django_project: DjangoProject) -> None:
    django_project.tests(SUITE)
    args = (
        "--djasync",
        "--djasync-baseline=b.txt",
        "--djasync-baseline-write",
        "-p",
        "no:randomly",
    )
    django_project.run(*args)
    before = (django_project.path / "b.txt").read_text()
    stopped = django_project.run(*args, "-x")  # stops at the first failure, perhaps mid-test
    assert (django_project.path / "b.txt").read_text() == before
    stopped.stdout.fnmatch_lines(["baseline not rewritten: the run stopped early (*b.txt)"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_an_internal_fault_is_reported_and_changes_no_outcome(
    django_project: DjangoProject, workers: list[str]
) -> None:
    """Under pytest-xdist the faults happen in the workers: the controller prints them, those
    after a worker's last test included."""
    if workers:
        pytest.importorskip("xdist")
    django_project.module(
        "conftest.py",
        """
        import pytest
        import pytest_djasync.report
        from pytest_djasync import findings

        def _broken(*args, **kwargs):
            raise RuntimeError("boom")

        pytest_djasync.report.failure_text = _broken

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish():
            findings.internal_error("finishing", RuntimeError("late"))
        """,
    )
    django_project.tests(SUITE)
    result, report = django_project.report(*workers, "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    worker = "[[]gw?[]] " if workers else ""
    errors = [line for line in result.outlines if "internal error" in line]
    # two tests judged, then a late fault in every process: one, or two workers and the controller
    assert len(errors) == (5 if workers else 3), errors
    result.stdout.fnmatch_lines(
        [f"{worker}pytest-djasync internal error while judging*boom*"], consecutive=False
    )
    result.stdout.fnmatch_lines([f"{worker}pytest-djasync internal error while finishing*late*"])
    assert len(violations(report, "test_old_problem")) == 1


@pytest.mark.parametrize("detailed", [False, True], ids=["summary", "report-file"])
def test_a_clean_test_needs_no_entry_of_its_own(detailed: bool) -> None:
    """A clean test of a --djasync run sends no entry: the controller makes this one."""
    record = Record("t.py::test", crossings=crossings.Recorder(), fanout=fanout.Recorder())
    assert record.is_empty()
    counts: dict[str, Any] = {"total": 0, **({"by_origin": {}} if detailed else {})}
    expected = {
        "nodeid": "t.py::test",
        "violations": [],
        "crossings": {**counts, "by_request": {}},
        "fanout": {"requests": 0, "peak_concurrency": 0},
    }
    assert json.dumps(report.empty_entry("t.py::test", detailed)) == json.dumps(expected)


def test_the_summary_orders_locations_by_line_number() -> None:
    def hit(line: int) -> dict[str, Any]:
        location = {"path": "shop/views.py", "line": line, "function": f"view_{line}"}
        return {"kind": "blocking-call", "location": location, "what": "time.sleep", "fix": "-"}

    nowhere = {**hit(9), "location": None}
    entries = [{"nodeid": "t.py::t", "violations": [hit(140), nowhere, hit(61)]}]
    places = [line for line in report.summary_lines(entries) if not line.startswith(" ")]
    assert places == [
        "shop/views.py:61 in view_61: blocking-call time.sleep",
        "shop/views.py:140 in view_140: blocking-call time.sleep",
        "<unknown location>: blocking-call time.sleep",
    ]


def test_the_summary_shows_the_busiest_locations_without_v() -> None:
    def hit(line: int) -> dict[str, Any]:
        location = {"path": "shop/views.py", "line": line, "function": "view"}
        return {"kind": "blocking-call", "location": location, "what": "time.sleep", "fix": "-"}

    entries = [{"nodeid": f"t.py::t{line}", "violations": [hit(line)]} for line in range(1, 36)]
    entries += [{"nodeid": f"t.py::u{n}", "violations": [hit(35)]} for n in range(4)]
    places = [line for line in report.summary_lines(entries, verbose=False) if line[0] != " "]
    assert len(places) == report.SHOWN_LOCATIONS + 1
    assert "shop/views.py:35 in view: blocking-call time.sleep" in places  # hit by 5 tests
    assert places[-1].startswith("... and 5 more locations, hit less often (run with -v")
    assert len(report.summary_lines(entries, verbose=True)) == 35 * 3


def test_each_rerun_is_judged_on_its_own(django_project: DjangoProject) -> None:
    """pytest-rerunfailures runs set-up, call and teardown again inside one protocol: each
    attempt has findings of its own, so a test that blocks every time fails every time, and the
    report holds the last attempt's outcome and findings."""
    pytest.importorskip("pytest_rerunfailures")
    django_project.tests(
        """
        import itertools
        import time

        import pytest

        attempts = itertools.count(1)

        @pytest.mark.asyncio
        async def test_always_blocks():
            time.sleep(0.001)

        @pytest.mark.asyncio
        async def test_blocks_once():
            if next(attempts) == 1:
                time.sleep(0.001)
        """
    )
    result, report = django_project.report(
        "--reruns", "2", "-p", "no:randomly", "--junitxml=junit.xml"
    )
    outcomes = result.parseoutcomes()
    assert (outcomes["failed"], outcomes["passed"], outcomes["rerun"]) == (1, 1, 3), outcomes
    [always] = violations(report, "test_always_blocks")
    assert always["count"] == 1  # the last attempt's one call, not three merged
    assert not violations(report, "test_blocks_once")
    final = {entry["nodeid"].split("::")[1]: entry["outcome"] for entry in report["tests"]}
    assert final == {"test_always_blocks": "failed", "test_blocks_once": "passed"}
    # JUnit XML too: the last attempt's counts, once each (earlier ones stayed, trial 3/3)
    tree = ET.parse(django_project.path / "junit.xml")
    *_, last = [case for case in tree.iter("testcase") if case.get("name") == "test_blocks_once"]
    properties = [(p.get("name"), p.get("value")) for p in last.iter("property")]
    assert len(properties) == len(dict(properties)), properties
    assert dict(properties) == {
        "djasync_findings": "0",
        "djasync_crossings_total": "0",
        "djasync_fanout_peak": "0",
    }


def _at(kind: str, path: str, function: str = "inner") -> dict[str, Any]:
    location = {"path": path, "line": 24, "function": function}
    return {"kind": kind, "location": location, "what": "QuerySet.count()", "fix": "-"}


def test_a_library_location_keys_the_same_from_any_virtualenv() -> None:
    """No project frame on the stack: the baseline must not depend on where the virtualenv
    is or which Python it has; a stall's sampled library frame can differ run to run."""
    here = ".venv/lib/python3.11/site-packages/django/utils/asyncio.py"
    there = "/opt/ci/venv/lib/python3.12/site-packages/django/utils/asyncio.py"
    debian = "/usr/lib/python3/dist-packages/django/utils/asyncio.py"
    keys = {baseline.key("t.py::t", _at("sync-only", path)) for path in (here, there, debian)}
    assert keys == {("t.py::t", "sync-only", "django/utils/asyncio.py:inner", "QuerySet.count()")}
    stdlib = baseline.key("t.py::t", _at("blocking-call", "/usr/lib/python3.11/json/encoder.py"))
    assert stdlib[2] == "json/encoder.py:inner"
    stalls = {
        baseline.key("t.py::t", _at("stall", path, function))[2]
        for path, function in ((here, "inner"), (there.replace("django", "pydantic"), "dump"))
    }
    assert stalls == {baseline.LIBRARY_CODE}
    mine = baseline.key("t.py::t", _at("stall", "shop/views.py", "report"))
    assert mine[2] == "shop/views.py:report"


def test_a_baseline_written_with_virtualenv_paths_still_matches(tmp_path: Path) -> None:
    old = ".venv/lib/python3.11/site-packages/django/utils/asyncio.py:inner"
    (tmp_path / "b.txt").write_text(f"t.py::t\tsync-only\t{old}\tQuerySet.count()\n")
    known = baseline.Baseline.load(tmp_path / "b.txt")
    elsewhere = "/opt/venv/lib/python3.13/site-packages/django/utils/asyncio.py"
    assert known.knows(baseline.key("t.py::t", _at("sync-only", elsewhere)))


def test_with_no_project_frame_a_finding_names_the_package_that_called_django() -> None:
    def frame(path: str, function: str) -> findings.Frame:
        return findings.Frame(path, 1, function, "")

    site = "/venv/lib/python3.11/site-packages"
    stack = (
        frame(f"{site}/ninja/operation.py", "run"),
        frame(f"{site}/ninja/schema.py", "_convert_result"),
        frame(f"{site}/django/db/models/query.py", "__iter__"),
        frame(f"{site}/asgiref/sync.py", "__call__"),
        frame(f"{site}/django/utils/asyncio.py", "inner"),
    )
    assert findings.user_frame(stack) == stack[1]
    assert findings.user_frame(stack[2:]) == stack[-1]
    assert findings.user_frame((*stack, frame("/proj/shop/views.py", "v"))) == frame(
        "/proj/shop/views.py", "v"
    )


def test_a_stall_is_keyed_by_where_it_entered_the_project_not_by_its_sample() -> None:
    """One CPU loop calling two helpers is sampled in either: the key must not flip."""

    def stall(inner: str) -> dict[str, Any]:
        stack = [
            {"path": "/usr/lib/python3.11/asyncio/events.py", "line": 84, "function": "_run"},
            {"path": ".venv/lib/python3.11/site-packages/django/x.py", "line": 1, "function": "f"},
            {"path": "shop/views.py", "line": 9, "function": "quote"},
            {"path": "shop/pricing.py", "line": 4, "function": "total"},
            {"path": "shop/pricing.py", "line": 12, "function": inner},
        ]
        return {"kind": "stall", "location": stack[-1], "stack": stack, "what": "event loop step"}

    keys = {baseline.key("t.py::t", stall(inner)) for inner in ("_discount", "_tax")}
    assert keys == {("t.py::t", "stall", "shop/views.py:quote", "event loop step")}
    blocking = {**stall("_tax"), "kind": "blocking-call", "what": "time.sleep"}
    assert baseline.key("t.py::t", blocking)[2] == "shop/pricing.py:_tax"  # exact: no sampling


def test_a_stall_below_an_async_middleware_is_keyed_by_its_view(
    django_project: DjangoProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every view's stall passes through an async middleware's __call__, the outermost project
    frame: keyed there, a known stall in one view excused a new one in another (trial, 3/3)."""
    django_project.module(
        "tproj/middleware.py",
        """
        from django.utils.decorators import async_only_middleware


        @async_only_middleware
        def request_id(get_response):
            async def middleware(request):
                return await get_response(request)

            return middleware
        """,
    )
    django_project.settings("MIDDLEWARE = ['tproj.middleware.request_id']\n")
    django_project.views(
        """
        import time

        from django.http import HttpResponse


        def _score(seconds):
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass


        def _digest(seconds):
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass


        async def ranking(request):
            _score(0.3)
            return HttpResponse("ok")


        async def digest(request):
            _digest(0.3)
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import os

        import pytest

        @pytest.mark.asyncio
        async def test_report_page(asgi_client):
            await asgi_client.get("/ranking/")
            if os.environ.get("NEW_REGRESSION"):
                await asgi_client.get("/digest/")
        """
    )
    django_project.run("--djasync", "--djasync-baseline=known.txt", "--djasync-baseline-write")
    known = (django_project.path / "known.txt").read_text()
    assert "tproj/views.py:ranking" in known, known
    monkeypatch.setenv("NEW_REGRESSION", "1")
    result = django_project.run("--djasync", "--djasync-baseline=known.txt")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*1 unexcused, 1 known from the baseline*"])


def test_a_qualified_allow_pattern_that_matched_nothing_on_python_310_says_why() -> None:
    """Frames on 3.10 have no class in their names: 'Client.fetch' can never match there."""
    pattern = "myapp.legacy:SoapClient.call"
    assert report.unmatched_allow(pattern, qualnames=True) == (
        "djasync_allow pattern 'myapp.legacy:SoapClient.call' matched no finding"
    )
    assert report.unmatched_allow(pattern, qualnames=False).endswith(
        " matched no finding (Python 3.10 names no class in a frame: write 'myapp.legacy:call')"
    )
    assert "Python 3.10" not in report.unmatched_allow("myapp.legacy:call", qualnames=False)
    # a location copied from a finding names a file, which no module's name matches
    assert report.unmatched_allow("myapp/legacy.py:SoapClient.call", qualnames=False).endswith(
        " (the part before ':' is a module's dotted name, not a file; Python 3.10 names no class"
        " in a frame: write 'myapp.legacy:call')"
    )
    assert report.unmatched_allow("myapp/legacy.py:call", qualnames=True).endswith(
        ": write 'myapp.legacy:call')"
    )
