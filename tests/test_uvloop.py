"""uvloop runs its callbacks in C: its loops are watched by a heartbeat, more coarsely."""

from __future__ import annotations

import pytest

from tests.conftest import DjangoProject, violations

pytest.importorskip("uvloop")

TESTS = """
import asyncio
import time

import uvloop


async def _blocks():
    await asyncio.sleep(0)
    time.sleep(0.5)


async def _waits():
    await asyncio.sleep(0.5)


def test_blocking_uvloop():
    uvloop.run(_blocks())


def test_clean_uvloop():
    uvloop.run(_waits())
"""


def test_a_uvloop_stall_is_found_by_the_heartbeat(django_project: DjangoProject) -> None:
    django_project.tests(TESTS)
    result, report = django_project.report("-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    [stall] = violations(report, "test_blocking_uvloop")
    assert stall["kind"] == "stall"
    assert stall["location"] == {"path": "test_scenario.py", "line": 9, "function": "_blocks"}
    assert stall["duration_ms"] >= 100
    assert not violations(report, "test_clean_uvloop")
    result.stdout.fnmatch_lines(["*note: uvloop runs callbacks in C: timed by a heartbeat*"])


def test_uvloop_is_left_as_it_was(django_project: DjangoProject) -> None:
    """Patched only while a watched session runs; an unwatched one never touches it."""
    django_project.module(
        "conftest.py",
        """
        import pathlib

        import uvloop

        def pytest_unconfigure(config):
            patched = "run_forever" in vars(uvloop.Loop)
            pathlib.Path("patched-after.txt").write_text(str(patched))
        """,
    )
    django_project.tests(
        TESTS
        + """

def test_not_patched_when_unwatched(request):
    watched = request.config.getoption("djasync")
    assert ("run_forever" in vars(uvloop.Loop)) == bool(watched)
"""
    )
    django_project.run("-p", "no:randomly", "-k", "clean or unwatched").assert_outcomes(passed=2)
    django_project.run(
        "--djasync", "-p", "no:randomly", "-k", "clean or unwatched"
    ).assert_outcomes(passed=2)
    assert (django_project.path / "patched-after.txt").read_text() == "False"


def test_a_first_time_import_on_a_uvloop_loop_is_not_a_stall(
    django_project: DjangoProject,
) -> None:
    django_project.module(
        "slow_module.py",
        """
        import time

        end = time.thread_time() + 0.5
        while time.thread_time() < end:  # CPU work at import: a stall, were it the loop's
            pass
        """,
    )
    django_project.tests(
        """
        import asyncio

        import uvloop

        async def _imports():
            await asyncio.sleep(0)
            import slow_module  # noqa: F401

        def test_import_on_uvloop():
            uvloop.run(_imports())
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_import_on_uvloop")
