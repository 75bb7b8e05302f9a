"""A throw-away Django project per test, run by pytest in a subprocess through ``pytester``.

Like pytest-django's ``django_pytester``: every test writes the views, URLs and tests it needs
into a fresh directory, so each scenario is a real project with a real ASGI handler, real
asgiref and real event loops, and the plugin's patches and threads die with the subprocess.
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

SETTINGS = """
import os

SECRET_KEY = "djasync-tests"
DEBUG = False
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "tproj",
]
if os.environ.get("DJASYNC_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", "postgres"),
            "NAME": os.environ.get("PGDATABASE", "djasync"),
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
ROOT_URLCONF = "tproj.urls"
MIDDLEWARE = []
USE_TZ = True
ALLOWED_HOSTS = ["*"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

# Every public function of tproj/views.py is served at /<name>/.
URLS = """
import inspect

from django.urls import path

from tproj import views

urlpatterns = [
    path(f"{name}/", view)
    for name, view in vars(views).items()
    if inspect.isfunction(view) and view.__module__ == views.__name__ and not name.startswith("_")
]
"""

MODELS = """
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)
"""

PYTEST_INI = """
[pytest]
DJANGO_SETTINGS_MODULE = tproj.settings
asyncio_default_fixture_loop_scope = function
pythonpath = .
addopts = -p no:cacheprovider
{extra}
"""


class DjangoProject:
    """Files of a small Django project inside ``pytester.path``, and a way to run its tests."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = Path(pytester.path)
        package = self.path / "tproj"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "urls.py").write_text(URLS)
        (package / "models.py").write_text(MODELS)
        self.settings()
        self.views("")
        self.ini()

    def _write(self, relative: str, source: str) -> None:
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())

    def settings(self, extra: str = "") -> None:
        self._write("tproj/settings.py", SETTINGS + textwrap.dedent(extra))

    def views(self, source: str) -> None:
        self._write("tproj/views.py", source)

    def module(self, relative: str, source: str) -> None:
        self._write(relative, source)

    def ini(self, extra: str = "") -> None:
        self._write("pytest.ini", PYTEST_INI.format(extra=textwrap.dedent(extra)))

    def installed(self, files: dict[str, str], conftest: str = "") -> None:
        """Modules of a stand-in installed package: under a ``site-packages`` directory, where
        the plugin tells installed code from the project's, put on ``sys.path`` by the
        ``conftest.py`` (which gets ``conftest`` after that)."""
        for relative, source in files.items():
            self._write(f"vendor/site-packages/{relative}", source)
        path = "import sys\nsys.path.insert(0, 'vendor/site-packages')\n"
        self._write("conftest.py", path + textwrap.dedent(conftest))

    def tests(self, source: str, name: str = "test_scenario.py") -> None:
        self._write(name, source)

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(*args)

    def report(self, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
        """Run under ``--djasync`` with a JSON report; return the result and the parsed report."""
        result = self.run("--djasync", "--djasync-report=report.json", *args)
        return result, json.loads((self.path / "report.json").read_text())


@pytest.fixture
def django_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> DjangoProject:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    for variable in ("CI", "BUILD_NUMBER"):  # on CI pytest prints whole messages in its summary
        monkeypatch.delenv(variable, raising=False)
    return DjangoProject(pytester)


def violations(report: dict[str, Any], test: str) -> list[dict[str, Any]]:
    """The violations of the test whose node id ends with ``test``."""
    for entry in report["tests"]:
        if entry["nodeid"].endswith(test):
            found: list[dict[str, Any]] = entry["violations"]
            return found
    raise AssertionError(
        f"no test {test!r} in the report: {[t['nodeid'] for t in report['tests']]}"
    )


def line_of(source: str, text: str) -> int:
    """The 1-based line of ``text`` in ``source`` as the project writes it (dedented, stripped)."""
    lines = textwrap.dedent(source).lstrip().splitlines()
    [number] = [n for n, line in enumerate(lines, 1) if text in line]
    return number


@functools.cache
def _postgres_reachable() -> str | None:
    """``None`` when a PostgreSQL server answers, else why not.

    Asked once per process: ``pytester`` takes out of ``sys.modules`` what a test imported, so
    a second probe imported psycopg again, and its C extension, initialised only once, raised
    the first import's ``OperationalError``, which the new ``psycopg.Error`` did not catch.
    """
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'pytest-djasync[postgres]')"
    try:
        psycopg.connect(
            host=os.environ.get("PGHOST", "127.0.0.1"),
            port=os.environ.get("PGPORT", "5432"),
            user=os.environ.get("PGUSER", "postgres"),
            password=os.environ.get("PGPASSWORD", "postgres"),
            dbname="postgres",
            connect_timeout=2,
        ).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL server reachable: {exc}"
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgres":
        why_not = _postgres_reachable()
        if why_not:
            pytest.skip(why_not)
        monkeypatch.setenv("DJASYNC_DB", "postgres")
    return str(request.param)
