"""Options, ini keys and marker arguments: where each value came from, and bad values.

Most runs are in-process and without Django settings (fast). They either collect only or run
no watched test, so the plugin never patches anything in this process; runs that watch tests
go to a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import DjangoProject

DEFAULT_HEADER = [
    "djasync: on [--djasync]",
    "  block_ms=100 [default]",
    "  report=none [default]",
    "  guard=dns http select sleep socket subprocess wait [default]",
    "  db_thread=on [default]",
]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A plain pytest project (no Django settings) with one passing test."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    write_ini(pytester)
    pytester.makepyfile(test_plain="def test_it():\n    pass\n")
    return pytester


def write_ini(pytester: pytest.Pytester, *lines: str) -> None:
    text = "\n".join(["[pytest]", "asyncio_default_fixture_loop_scope = function", *lines])
    pytester.makefile(".ini", pytest=text)


def header(pytester: pytest.Pytester, *args: str) -> list[str]:
    """The djasync lines of the header of a collect-only run."""
    result = pytester.runpytest_inprocess("--co", "-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("djasync:"))
    end = next(i for i, line in enumerate(lines[start + 1 :], start + 1) if line[:2] != "  ")
    return lines[start:end]


def usage_error(pytester: pytest.Pytester, *args: str) -> str:
    """Run, expect a usage error, and return its message (stderr)."""
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    message = result.stderr.str()
    assert "Traceback" not in message
    return message


# -- where each value comes from ---------------------------------------------------------------


def test_header_shows_defaults(project: pytest.Pytester) -> None:
    assert header(project, "--djasync") == DEFAULT_HEADER


def test_header_is_one_line_when_off(project: pytest.Pytester) -> None:
    """Installed but not enabled, a run reads as if the plugin were absent, but for one line."""
    assert header(project) == ["djasync: off (use --djasync to watch this run) [default]"]


def test_header_when_off_shows_the_settings_someone_chose(project: pytest.Pytester) -> None:
    write_ini(project, "djasync_db_thread = true")
    assert header(project, "--djasync-block-ms=50") == [
        "djasync: off (use --djasync to watch this run) [default]",
        "  block_ms=50 [--djasync-block-ms]",
        "  db_thread=on, unused without --djasync [djasync_db_thread in pytest.ini]",
    ]


def test_header_shows_command_line_value(project: pytest.Pytester) -> None:
    assert "  block_ms=50 [--djasync-block-ms]" in header(project, "--djasync-block-ms=50")


def test_header_names_the_ini_file(project: pytest.Pytester) -> None:
    write_ini(project, "djasync_block_ms = 75")
    assert "  block_ms=75 [djasync_block_ms in pytest.ini]" in header(project)


def test_command_line_overrides_ini(project: pytest.Pytester) -> None:
    write_ini(project, "djasync_block_ms = 75")
    assert "  block_ms=50 [--djasync-block-ms]" in header(project, "--djasync-block-ms=50")


def test_override_ini_is_named_as_such(project: pytest.Pytester) -> None:
    write_ini(project, "djasync_block_ms = 75")
    lines = header(project, "-o", "djasync_block_ms=20")
    assert "  block_ms=20 [-o djasync_block_ms]" in lines


@pytest.mark.parametrize("name", ["tox.ini", "setup.cfg"])
def test_header_names_other_ini_files(project: pytest.Pytester, name: str) -> None:
    (project.path / "pytest.ini").unlink()
    section = "[pytest]" if name == "tox.ini" else "[tool:pytest]"
    scope = "asyncio_default_fixture_loop_scope = function"
    (project.path / name).write_text(f"{section}\n{scope}\ndjasync_block_ms = 60\n")
    assert "  block_ms=60 [djasync_block_ms in " + name + "]" in header(project)


def test_pyproject_ini_options(project: pytest.Pytester) -> None:
    (project.path / "pytest.ini").unlink()
    project.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        asyncio_default_fixture_loop_scope = "function"
        djasync_block_ms = "80"
        djasync_guard = "sleep"
        djasync_allow = ["legacy.client:*", "vendor.*:fetch"]
        """
    )
    assert header(project) == [
        "djasync: off (use --djasync to watch this run) [default]",
        "  block_ms=80 [djasync_block_ms in pyproject.toml]",
        "  guard=sleep [djasync_guard in pyproject.toml]",
        "  allow=legacy.client:*, vendor.*:fetch [djasync_allow in pyproject.toml]",
    ]


@pytest.mark.skipif(pytest.version_tuple < (9, 2), reason="union ini types are pytest 9.2+")
def test_native_toml_takes_unquoted_values(project: pytest.Pytester) -> None:
    """In a ``[tool.pytest]`` table, ``djasync = true`` and a bare number are natural."""
    (project.path / "pytest.ini").unlink()
    project.makepyprojecttoml(
        """
        [tool.pytest]
        asyncio_default_fixture_loop_scope = "function"
        djasync = false
        djasync_block_ms = 75
        """
    )
    assert header(project)[:2] == [
        "djasync: off (use --djasync to watch this run) [djasync in pyproject.toml]",
        "  block_ms=75 [djasync_block_ms in pyproject.toml]",
    ]


@pytest.mark.skipif(pytest.version_tuple < (9, 2), reason="union ini types are pytest 9.2+")
def test_native_toml_zero_threshold_is_an_error_not_the_default(project: pytest.Pytester) -> None:
    (project.path / "pytest.ini").unlink()
    project.makepyprojecttoml("[tool.pytest]\ndjasync_block_ms = 0\n")
    message = usage_error(project)
    assert "djasync_block_ms in pyproject.toml: '0' is not a valid threshold" in message


def test_every_setting_from_the_command_line(project: pytest.Pytester) -> None:
    lines = header(
        project,
        "--djasync",
        "--djasync-block-ms=250.5",
        "--djasync-report=out/report.json",
        "--djasync-guard=default file",
        "--djasync-allow=legacy.client:*",
        "--djasync-allow=vendor.*:fetch",
        "--djasync-db-thread=no",
    )
    assert lines == [
        "djasync: on [--djasync]",
        "  block_ms=250.5 [--djasync-block-ms]",
        "  report=out/report.json [--djasync-report]",
        "  guard=dns file http select sleep socket subprocess wait [--djasync-guard]",
        "  db_thread=off [--djasync-db-thread]",
        "  allow=legacy.client:*, vendor.*:fetch [--djasync-allow]",
    ]


def test_every_setting_from_the_ini_file(project: pytest.Pytester) -> None:
    write_ini(
        project,
        "djasync = yes",
        "djasync_block_ms = 1e3",
        "djasync_report = reports/djasync.json",
        "djasync_guard = sleep, socket",
        "djasync_db_thread = false",
        "djasync_allow =",
        "    legacy.client:*",
        "    vendor.*:fetch",
    )
    assert header(project) == [
        "djasync: on [djasync in pytest.ini]",
        "  block_ms=1000 [djasync_block_ms in pytest.ini]",
        "  report=reports/djasync.json [djasync_report in pytest.ini]",
        "  guard=sleep socket [djasync_guard in pytest.ini]",
        "  db_thread=off [djasync_db_thread in pytest.ini]",
        "  allow=legacy.client:*, vendor.*:fetch [djasync_allow in pytest.ini]",
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("default file", "dns file http select sleep socket subprocess wait"),
        ("default,file", "dns file http select sleep socket subprocess wait"),
        ("sleep", "sleep"),
        ("file  http", "file http"),
        ("none", "none"),
    ],
)
def test_guard_values(project: pytest.Pytester, value: str, shown: str) -> None:
    assert f"  guard={shown} [--djasync-guard]" in header(project, f"--djasync-guard={value}")


@pytest.mark.parametrize(
    ("args", "ini", "shown"),
    [
        (["--djasync-warn"], "", "  mode=warn [--djasync-warn]"),
        (["--djasync-warn", "--djasync-mode=warn"], "", "  mode=warn [--djasync-warn]"),
        (["--djasync-warn"], "djasync_mode = fail", "  mode=warn [--djasync-warn]"),
        (["--djasync-mode=warn"], "", "  mode=warn [--djasync-mode]"),
    ],
)
def test_warn_flag_is_named_as_itself(
    project: pytest.Pytester, args: list[str], ini: str, shown: str
) -> None:
    write_ini(project, ini)
    assert shown in header(project, "--djasync", *args)


@pytest.mark.parametrize(("word", "shown"), [("1", "on"), ("On", "on"), ("no", "off")])
def test_boolean_words_in_ini(project: pytest.Pytester, word: str, shown: str) -> None:
    write_ini(project, f"djasync = {word}")
    assert header(project)[0].startswith(f"djasync: {shown}")


# -- bad values --------------------------------------------------------------------------------

BLOCK_MS_BAD = "is not a valid threshold; give a positive number of milliseconds, e.g. 100"
BOOL_CHOICES = "use one of: 1, true, yes, on, 0, false, no, off"
GUARD_CHOICES = (
    "choose from: default, none, sleep, socket, dns, select, subprocess, http, wait, file"
)
PATTERN_BAD = "is not a 'module:function' pattern (e.g. 'myapp.legacy:*')"


@pytest.mark.parametrize(
    ("args", "ini", "expected"),
    [
        (["--djasync-block-ms=abc"], "", f"--djasync-block-ms: 'abc' {BLOCK_MS_BAD}"),
        (["--djasync-block-ms=-5"], "", f"--djasync-block-ms: '-5' {BLOCK_MS_BAD}"),
        (["--djasync-block-ms=0"], "", f"--djasync-block-ms: '0' {BLOCK_MS_BAD}"),
        (["--djasync-block-ms=nan"], "", f"--djasync-block-ms: 'nan' {BLOCK_MS_BAD}"),
        (["--djasync-block-ms=inf"], "", f"--djasync-block-ms: 'inf' {BLOCK_MS_BAD}"),
        ([], "djasync_block_ms = soon", f"djasync_block_ms in pytest.ini: 'soon' {BLOCK_MS_BAD}"),
        (
            [],
            "djasync = maybe",
            f"djasync in pytest.ini: 'maybe' is not a boolean; {BOOL_CHOICES}",
        ),
        (
            ["--djasync-guard=nosuch"],
            "",
            f"--djasync-guard: unknown guard 'nosuch'; {GUARD_CHOICES}",
        ),
        (["-o", "djasync_guard=sleep,nosuch"], "", "-o djasync_guard: unknown guard 'nosuch';"),
        (
            ["--djasync-guard= , "],
            "",
            "--djasync-guard: no guard group given; write 'none' for no guard, or "
            + GUARD_CHOICES,
        ),
        (["--djasync-allow=:"], "", f"--djasync-allow: ':' {PATTERN_BAD}"),
        (
            [],
            "djasync_allow = myapp.legacy:",
            f"djasync_allow in pytest.ini: 'myapp.legacy:' {PATTERN_BAD}",
        ),
        ([], "djasync_allow = nocolon", f"djasync_allow in pytest.ini: 'nocolon' {PATTERN_BAD}"),
        (
            ["--djasync-allow=ok:*", "--djasync-allow=bad"],
            "",
            f"--djasync-allow: 'bad' {PATTERN_BAD}",
        ),
        (
            ["--djasync-report="],
            "",
            "--djasync-report: the report path is empty; give a file path",
        ),
        (["--djasync-report=  "], "", "--djasync-report: the report path is empty"),
        (
            ["--djasync-db-thread=sometimes"],
            "",
            f"--djasync-db-thread: 'sometimes' is not a boolean; {BOOL_CHOICES}",
        ),
        (
            ["--djasync-db-thread="],
            "",
            f"--djasync-db-thread: '' is not a boolean; {BOOL_CHOICES}",
        ),
        (
            ["--djasync-guard=none,sleep"],
            "",
            f"--djasync-guard: 'none' cannot be combined with other guards; {GUARD_CHOICES}",
        ),
        (
            ["--djasync"],
            "djasync = maybe",
            f"djasync in pytest.ini: 'maybe' is not a boolean; {BOOL_CHOICES}",
        ),
        (["--djasync-allow="], "", "--djasync-allow: an empty pattern; give a 'module:function'"),
        (["--djasync-allow=ok:*", "--djasync-allow= "], "", "--djasync-allow: an empty pattern"),
        (
            ["--djasync-warn", "--djasync-mode=fail"],
            "",
            "--djasync-warn and --djasync-mode=fail contradict each other; give one of them",
        ),
    ],
)
def test_bad_value_is_a_usage_error(
    project: pytest.Pytester, args: list[str], ini: str, expected: str
) -> None:
    write_ini(project, ini)
    assert f"ERROR: pytest-djasync: {expected}" in usage_error(project, *args)


def test_report_path_that_is_a_directory_is_a_usage_error(project: pytest.Pytester) -> None:
    (project.path / "reports").mkdir()
    message = usage_error(project, "--djasync-report=reports")
    assert "--djasync-report: 'reports' is a directory; give a file path" in message


def test_report_path_under_a_file_is_a_usage_error(project: pytest.Pytester) -> None:
    """Found before the run, not as an internal error after it (and an exit status of 0)."""
    (project.path / "afile").write_text("")
    message = usage_error(project, "--djasync-report=afile/sub/r.json")
    assert "--djasync-report: 'afile/sub/r.json' is under '" in message
    assert "afile', which is a file; give a file path" in message


# -- marker arguments --------------------------------------------------------------------------


BLOCK_MS_ARGS = "@pytest.mark.djasync_block_ms takes one number of milliseconds, e.g."
REASON_ARGS = "@pytest.mark.djasync_allow_blocking takes one reason string, e.g."


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ('djasync_block_ms("fast")', f"@pytest.mark.djasync_block_ms: 'fast' {BLOCK_MS_BAD}"),
        ('djasync_block_ms(float("nan"))', f"@pytest.mark.djasync_block_ms: nan {BLOCK_MS_BAD}"),
        ("djasync_block_ms(-1)", f"@pytest.mark.djasync_block_ms: -1 {BLOCK_MS_BAD}"),
        ("djasync_block_ms()", BLOCK_MS_ARGS),
        ("djasync_block_ms(10, 20)", BLOCK_MS_ARGS),
        ("djasync_block_ms(ms=10)", BLOCK_MS_ARGS),
        ("djasync_block_ms(True)", BLOCK_MS_ARGS),
        ("djasync_allow_blocking(123)", REASON_ARGS),
        ("djasync_allow_blocking(reason=None)", REASON_ARGS),
        ('djasync_allow_blocking("a", "b")', REASON_ARGS),
        ('djasync_allow_blocking("a", reason="b")', REASON_ARGS),
        ('djasync_allow_blocking(why="legacy")', REASON_ARGS),
    ],
)
def test_bad_marker_is_a_usage_error_naming_the_test(
    project: pytest.Pytester, marker: str, expected: str
) -> None:
    project.makepyfile(
        test_marked=f"""
        import pytest

        def test_fine():
            pass

        @pytest.mark.{marker}
        def test_it():
            pass
        """
    )
    assert f"ERROR: test_marked.py::test_it: {expected}" in usage_error(project)


def test_bad_marker_on_the_class_names_each_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.djasync_block_ms(0)
        class TestThings:
            def test_it(self):
                pass

            def test_that(self):
                pass
        """
    )
    message = usage_error(project)
    assert "test_marked.py::TestThings::test_it: @pytest.mark.djasync_block_ms: 0" in message
    assert "test_marked.py::TestThings::test_that: @pytest.mark.djasync_block_ms: 0" in message


def test_a_usage_error_prints_no_summary(project: pytest.Pytester) -> None:
    """A run stopped by a bad marker ran nothing: no summary of nothing above the message."""
    project.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.djasync_block_ms(0)
        def test_it():
            pass
        """
    )
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--djasync", "--djasync-allow=myapp.legacy:*"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "djasync summary" not in result.stdout.str()
    assert "matched no finding" not in result.stdout.str()


def test_bad_marker_under_xdist_errors_the_test_with_the_message(
    project: pytest.Pytester,
) -> None:
    """A usage error raised in a pytest-xdist worker crashes the run and hides the message;
    there the marked test errors at set-up with it, and the others run."""
    pytest.importorskip("xdist")
    project.makepyfile(
        test_marked="""
        import pytest

        def test_fine():
            pass

        @pytest.mark.djasync_block_ms(-1)
        def test_it():
            pass
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--djasync")
    result.assert_outcomes(passed=2, errors=1)  # test_plain.py's test and test_fine
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_it*", f"test_marked.py::test_it: *: -1 {BLOCK_MS_BAD}"]
    )


def test_good_markers_are_accepted(project: pytest.Pytester) -> None:
    """Run in a subprocess: a ``djasync_block_ms`` test is watched even without --djasync."""
    project.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.djasync_block_ms(250)
        def test_number():
            pass

        @pytest.mark.djasync_block_ms("2.5e2")
        def test_numeric_text():
            pass

        @pytest.mark.djasync_allow_blocking(reason="legacy client")
        def test_reason_keyword():
            pass

        @pytest.mark.djasync_allow_blocking("legacy client")
        def test_reason_positional():
            pass

        @pytest.mark.djasync_allow_blocking
        def test_no_reason():
            pass
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=6)


# -- the plugin stays out of the way -------------------------------------------------------------


def test_markers_are_registered(project: pytest.Pytester) -> None:
    result = project.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.djasync_block_ms(ms): loop-stall threshold for this test, in *",
            "@pytest.mark.djasync_allow_blocking(reason=...): accept loop blocking in this test",
        ]
    )


def test_installed_but_not_enabled_changes_nothing(django_project: DjangoProject) -> None:
    """No --djasync and no markers: blocking code passes, and nothing is patched or running."""
    django_project.views(
        """
        import time

        from django.http import HttpResponse

        async def sleepy(request):
            time.sleep(0.01)
            return HttpResponse("slept")
        """
    )
    django_project.tests(
        """
        import asyncio
        import importlib._bootstrap
        import inspect
        import socket
        import threading
        import time

        import pytest
        from asgiref.sync import AsyncToSync, SyncToAsync
        from django.core.handlers.asgi import ASGIHandler
        from django.test.client import ClientHandler


        def assert_untouched():
            assert inspect.isbuiltin(time.sleep)
            assert asyncio.Handle._run.__module__ == "asyncio.events"
            assert asyncio.Handle._run.__qualname__ == "Handle._run"
            assert inspect.ismethoddescriptor(socket.socket.connect)
            for function in (
                ASGIHandler.__call__,
                ClientHandler.__call__,
                SyncToAsync.__call__,
                AsyncToSync.__call__,
                importlib._bootstrap._find_and_load,
            ):
                assert not hasattr(function, "__wrapped__"), function
            assert not [t for t in threading.enumerate() if "djasync" in t.name]


        @pytest.mark.asyncio
        async def test_blocking_view_passes(asgi_client):
            assert_untouched()
            response = await asgi_client.get("/sleepy/")
            assert response.text == "slept"
            assert_untouched()


        @pytest.mark.asyncio
        async def test_blocking_test_passes():
            time.sleep(0.01)
            assert_untouched()


        def test_after():
            assert_untouched()
        """
    )
    result = django_project.run("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["djasync: off (use --djasync to watch this run) [default]"])
    result.stdout.no_fnmatch_line("*djasync summary*")


def test_installed_but_not_enabled_registers_no_per_test_hooks(
    django_project: DjangoProject,
) -> None:
    """Nothing to watch: the per-test hooks are not registered and the detectors not imported."""
    django_project.tests(
        """
        import sys

        def test_nothing_watches(request):
            manager = request.config.pluginmanager
            assert manager.has_plugin("djasync-fixtures")
            assert not manager.has_plugin("djasync-watch")
            assert not manager.has_plugin("djasync-db-thread")
            loaded = [m for m in sys.modules if m.startswith("pytest_djasync.")]
            assert "pytest_djasync.watching" not in loaded, loaded
            assert "pytest_djasync.watchdog" not in loaded, loaded
            assert "pytest_djasync.syncops" not in loaded, loaded  # not for the header either
        """
    )
    django_project.run().assert_outcomes(passed=1)


def test_the_detectors_load_without_assertion_rewriting(django_project: DjangoProject) -> None:
    """pytest marks a plugin's modules for assertion rewriting, and its loader costs a watched
    run about 1% (bench/README.md): the modules the plugin imports once it is configured load
    with Python's own loader. The project's asserts are rewritten as before."""
    django_project.module(
        "conftest.py",
        """
        import warnings

        import pytest

        # As a wheel install has it: pytest marks every module of a plugin's distribution (of an
        # editable install it may find none). The package is imported already, hence the warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pytest.PytestAssertRewriteWarning)
            pytest.register_assert_rewrite("pytest_djasync")
        """,
    )
    django_project.tests(
        """
        import sys

        def loader(name):
            return type(sys.modules[name].__loader__).__name__

        def test_loaders():
            assert loader("pytest_djasync.watching") == "SourceFileLoader"
            assert loader("pytest_djasync.watchdog") == "SourceFileLoader"

        def test_the_projects_asserts_are_rewritten():
            assert [1, 2] == [1, 3]
        """
    )
    result = django_project.run("--djasync")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*At index 1 diff: 2 != 3*"])


def test_loading_the_plugin_imports_no_detector_and_no_httpx() -> None:
    code = (
        "import sys, pytest_djasync.plugin, pytest_djasync.latency\n"
        "from pytest_djasync import latency\n"
        "assert callable(latency) and not isinstance(latency, type(sys)), latency\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('pytest_djasync.', 'httpx')))\n"
        "print(' '.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "pytest_djasync._compat",
        "pytest_djasync.config",
        "pytest_djasync.errors",
        "pytest_djasync.fixtures",
        "pytest_djasync.latency",
        "pytest_djasync.markers",
        "pytest_djasync.plugin",
    ]


def test_one_marked_test_registers_the_hooks_for_the_run(django_project: DjangoProject) -> None:
    django_project.tests(
        """
        import pytest

        def test_unmarked(request):
            assert request.config.pluginmanager.has_plugin("djasync-watch")

        @pytest.mark.djasync_max_crossings(0)
        def test_marked():
            pass
        """
    )
    django_project.run().assert_outcomes(passed=2)


def test_disabled_with_no_djasync(project: pytest.Pytester) -> None:
    message = usage_error(project, "-p", "no:djasync", "--djasync")
    assert "unrecognized arguments: --djasync" in message


def test_disabled_with_no_djasync_leaves_no_trace(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_client="""
        def test_uses_the_fixture(asgi_client):
            pass
        """
    )
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:djasync")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'asgi_client' not found*"])
    result.stdout.no_fnmatch_line("djasync:*")


def test_disabled_with_no_djasync_knows_no_markers(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.djasync_block_ms(10)
        def test_it():
            pass
        """
    )
    # In a subprocess: in this process, pytest.mark remembers the markers it has seen.
    unknown = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:djasync", "--strict-markers", "--co"
    )
    unknown.stdout.fnmatch_lines(["*'djasync_block_ms' not found in `markers` configuration*"])


# -- the report file -----------------------------------------------------------------------------


def test_report_creates_its_directory(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_two="""
        def test_passes():
            pass

        def test_fails():
            assert False
        """
    )
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--djasync", "--djasync-report=some/dir/report.json"
    )
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads((project.path / "some" / "dir" / "report.json").read_text())
    assert report["version"] == 1
    assert {(test["nodeid"], test["outcome"]) for test in report["tests"]} == {
        ("test_plain.py::test_it", "passed"),
        ("test_two.py::test_passes", "passed"),
        ("test_two.py::test_fails", "failed"),
    }
    assert all(test["violations"] == [] for test in report["tests"])


def test_report_path_from_ini_is_relative_to_the_root(project: pytest.Pytester) -> None:
    write_ini(project, "djasync = true", "djasync_report = reports/djasync.json")
    (project.path / "sub").mkdir()
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--rootdir", ".", "sub")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    report = json.loads((project.path / "reports" / "djasync.json").read_text())
    assert report["version"] == 1
    assert report["tests"] == []
