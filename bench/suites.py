"""Writes the benchmark suites: one small Django project, copied into each suite directory.

Every suite directory under ``bench/.work/`` is a self-contained pytest root: ``pytest.ini``,
the ``benchproj`` Django project, a ``conftest.py`` with the bench-only switches (see
``CONFTEST``) and the generated test modules.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

PYTEST_INI = """\
[pytest]
DJANGO_SETTINGS_MODULE = benchproj.settings
asyncio_default_fixture_loop_scope = function
pythonpath = .
"""

SETTINGS = """\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]
# Django's default stack (startproject) without CsrfViewMiddleware.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchproj.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

VIEWS = """\
import asyncio
import json

from django.http import HttpResponse, JsonResponse

from benchproj import blocking


async def data(request):
    if request.method == "POST":
        return JsonResponse({"echo": json.loads(request.body)})
    n = int(request.GET.get("n", 3))
    await asyncio.sleep(0)
    return JsonResponse({"items": [{"id": i, "name": f"item {i}"} for i in range(n)]})


def page(request):
    return HttpResponse("<html><body>" + "<p>bench</p>" * 20 + "</body></html>")


async def case(request, name):
    await getattr(blocking, name)()
    return JsonResponse({"case": name})
"""

URLS = """\
from django.urls import path

from benchproj import views

urlpatterns = [
    path("api/data/", views.data),
    path("page/", views.page),
    path("case/<str:name>/", views.case),
]
"""

CTE_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
    " SELECT count(*) FROM c"
)

# The blocking cases of the detection matrix, each an ``async def`` run by a test or a view.
BLOCKING = """\
import asyncio
import hashlib
import socket
import sqlite3
import threading
import time

import requests

CPU_LOOP_ITERATIONS = {cpu_loop_iterations}
PBKDF2_ITERATIONS = {pbkdf2_iterations}
CTE_ROWS = {cte_rows}
HTTP_URL = ""  # set by the detection suite's local http.server fixture
CTE = {cte_query!r}


async def clean():
    await asyncio.sleep(0.05)


async def sleep_200ms():
    time.sleep(0.2)


async def many_small_sleeps():
    for _ in range(20):
        time.sleep(0.005)
        await asyncio.sleep(0)


async def http_requests():
    requests.get(HTTP_URL, timeout=5).raise_for_status()


async def cpu_loop():
    total = 0
    for i in range(CPU_LOOP_ITERATIONS):
        total += i


async def pbkdf2():
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", PBKDF2_ITERATIONS)


async def sqlite_cte():
    sqlite3.connect(":memory:").execute(CTE, (CTE_ROWS,)).fetchone()


async def lock_wait():
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.3, lock.release).start()
    lock.acquire()


async def dns():
    socket.getaddrinfo("localhost", 80)
"""

# Used instead of the plugin's fixture when the plugin is disabled (-p no:djasync), so every
# configuration drives the app through the same transport.
FALLBACK = """\
import httpx
import pytest

from pytest_djasync.client import ASGIStreamingTransport, django_asgi_app
from pytest_djasync.djangohooks import test_client_signals


@pytest.fixture
def asgi_client():
    transport = ASGIStreamingTransport(app_factory=django_asgi_app)
    with test_client_signals():
        yield httpx.AsyncClient(transport=transport, base_url="http://testserver")
        transport.cancel_pending()
"""

CONFTEST = """\
\"\"\"Bench-only switches, all off unless the runner sets them.

BENCH_BLOCKBUSTER=1  blockbuster_ctx() around every test (its documented pytest usage)
BENCH_PYLEAK=1       pyleak's no_leaks marker, event-loop blocking only, 100 ms threshold
BENCH_OUTCOME=path   write every test's outcome, failure text and report sections there
\"\"\"

import json
import os
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "no_leaks: pyleak's marker, added by BENCH_PYLEAK=1")
    if not config.pluginmanager.has_plugin("djasync"):
        import bench_fallback

        config.pluginmanager.register(bench_fallback, "bench-fallback")
    if os.environ.get("BENCH_OUTCOME"):
        config.pluginmanager.register(Outcomes(Path(os.environ["BENCH_OUTCOME"])), "outcomes")


if os.environ.get("BENCH_BLOCKBUSTER") == "1":

    @pytest.fixture(autouse=True)
    def _blockbuster():
        from blockbuster import blockbuster_ctx

        with blockbuster_ctx() as buster:
            yield buster


def pytest_collection_modifyitems(items):
    if os.environ.get("BENCH_PYLEAK") != "1":
        return
    mark = pytest.mark.no_leaks(
        tasks=False, threads=False, blocking=True, blocking_threshold=0.1
    )
    for item in items:
        item.add_marker(mark)


class Outcomes:
    def __init__(self, path):
        self.path = path
        self.tests = {}

    def _entry(self, nodeid):
        empty = {"outcome": "passed", "text": "", "sections": "", "warnings": []}
        return self.tests.setdefault(nodeid, empty)

    def pytest_runtest_logreport(self, report):
        entry = self._entry(report.nodeid)
        if report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            entry["text"] += report.longreprtext + "\\n"
        # sections accumulate over the phases: the last report has them all
        entry["sections"] = "\\n".join(f"--- {name}\\n{text}" for name, text in report.sections)

    def pytest_warning_recorded(self, warning_message, nodeid):
        message = f"{warning_message.category.__name__}: {warning_message.message}"
        self._entry(nodeid)["warnings"].append(message)

    def pytest_sessionfinish(self):
        self.path.write_text(json.dumps(self.tests, indent=1))
"""

REQUEST_TEST = """

@pytest.mark.asyncio
async def test_requests_{i}(asgi_client):
    response = await asgi_client.get("/api/data/", params={{"n": {n}}})
    assert response.status_code == 200
    assert len(response.json()["items"]) == {n}
    response = await asgi_client.get("/page/")
    assert response.status_code == 200
    response = await asgi_client.post("/api/data/", json={{"test": {i}}})
    assert response.json() == {{"echo": {{"test": {i}}}}}
    response = await asgi_client.get("/missing/")
    assert response.status_code == 404
"""

TINY_TEST = """

@pytest.mark.asyncio
async def test_tiny_{i}():
    await asyncio.sleep(0)
"""

CLEAN_TESTS = """

@pytest.mark.asyncio
async def test_sleep_{i}():
    await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_sync_to_async_{i}():
    assert await sync_to_async(_work)() > 0


@pytest.mark.asyncio
async def test_to_thread_{i}():
    assert await asyncio.to_thread(_work) > 0


@pytest.mark.asyncio
async def test_logging_{i}(caplog):
    logger.warning("clean test %d logs a warning", {i})
    logger.info("and some info")
    await asyncio.sleep(0)
    assert "clean test" in caplog.text


@pytest.mark.asyncio
async def test_gather_{i}():
    await asyncio.gather(*(asyncio.sleep(0.002) for _ in range(20)))
"""

CLEAN_HEADER = """\
import asyncio
import logging
import time

import pytest
from asgiref.sync import sync_to_async

logger = logging.getLogger("bench.clean")


def _work():
    # CPU work and a sleep in a worker thread: blocking, but not on the loop
    total = sum(i * i for i in range(100_000))
    time.sleep(0.01)
    return total
"""

DETECT_HEADER = """\
import http.server
import threading

import pytest

from benchproj import blocking


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session", autouse=True)
def local_http():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    blocking.HTTP_URL = f"http://127.0.0.1:{server.server_address[1]}/"
    yield
    server.shutdown()


@pytest.mark.asyncio
async def test_warmup(asgi_client):
    # the first request imports views and middleware; not part of the matrix
    assert (await asgi_client.get("/page/")).status_code == 200
"""

DETECT_TESTS = """

@pytest.mark.asyncio
async def test_test_{case}():
    await blocking.{case}()


@pytest.mark.asyncio
async def test_view_{case}(asgi_client):
    response = await asgi_client.get("/case/{case}/")
    assert response.status_code == 200
"""

CASES = (
    "clean",
    "sleep_200ms",
    "many_small_sleeps",
    "http_requests",
    "cpu_loop",
    "pbkdf2",
    "sqlite_cte",
    "lock_wait",
    "dns",
)
REQUEST_TESTS = 100
TINY_TESTS = 2000
MODULES = 4  # the requests suite's tests, spread over this many modules
TINY_MODULES = 10
CLEAN_ROUNDS = 20  # the soak's extra tests: five kinds, this many of each


def write_project(root: Path, calibration: dict[str, int]) -> None:
    """A fresh suite directory holding the Django project and the bench conftest."""
    shutil.rmtree(root, ignore_errors=True)
    files = {
        "pytest.ini": PYTEST_INI,
        "conftest.py": CONFTEST,
        "bench_fallback.py": FALLBACK,
        "benchproj/__init__.py": "",
        "benchproj/settings.py": SETTINGS,
        "benchproj/urls.py": URLS,
        "benchproj/views.py": VIEWS,
        "benchproj/blocking.py": BLOCKING.format(cte_query=CTE_QUERY, **calibration),
    }
    for name, text in files.items():
        _write(root / name, text)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _modules(
    root: Path, count: int, modules: int, header: str, body: Callable[[int], str]
) -> None:
    per_module = -(-count // modules)
    for number in range(modules):
        indices = range(number * per_module, min(count, (number + 1) * per_module))
        tests = "".join(body(i) for i in indices)
        _write(root / f"tests/test_{number:02d}.py", header + tests)


def _request_test(i: int) -> str:
    return REQUEST_TEST.format(i=i, n=i % 7)


def _request_tests(root: Path) -> None:
    _modules(root, REQUEST_TESTS, MODULES, "import pytest\n", _request_test)


def requests_suite(root: Path, calibration: dict[str, int]) -> None:
    """100 async tests, 4 requests each, through ``asgi_client`` and Django's ASGIHandler."""
    write_project(root, calibration)
    _request_tests(root)


def tiny_suite(root: Path, calibration: dict[str, int]) -> None:
    """2000 async tests that only yield to the loop once: the per-test overhead."""
    write_project(root, calibration)
    header = "import asyncio\n\nimport pytest\n"
    _modules(root, TINY_TESTS, TINY_MODULES, header, lambda i: TINY_TEST.format(i=i))


def clean_suite(root: Path, calibration: dict[str, int]) -> None:
    """The requests suite plus sleeps, thread hops and logging: nothing here blocks the loop."""
    write_project(root, calibration)
    _request_tests(root)
    tests = "".join(CLEAN_TESTS.format(i=i) for i in range(CLEAN_ROUNDS))
    _write(root / "tests/test_clean.py", CLEAN_HEADER + tests)


def detect_suite(root: Path, calibration: dict[str, int]) -> None:
    """Every blocking case twice: run by the test itself and by an async view."""
    write_project(root, calibration)
    tests = "".join(DETECT_TESTS.format(case=case) for case in CASES)
    _write(root / "tests/test_detect.py", DETECT_HEADER + tests)
