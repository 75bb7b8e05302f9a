"""Loop-block detection: every blocking kind is caught and named; every false-positive trap passes.

Each test builds a real Django project and runs its suite in a subprocess under ``--djasync``,
then reads the JSON report. Blocking calls are found deterministically (however short they
are); stalls are made several times longer than the threshold so a busy machine cannot hide them.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

import django
import pytest

from pytest_djasync import findings, watchdog
from tests.conftest import DjangoProject, line_of, violations

# Where the watchdog cannot read another thread's CPU clock (not Linux), each loop step reads
# its own; the conftest makes Linux behave that way.
PER_STEP_CLOCKS = """
from pytest_djasync import watchdog

watchdog._thread_cpu = lambda native_id: None
"""
CLOCKS = pytest.mark.parametrize("clocks", ["snapshots", "per-step"])


def use_clocks(django_project: DjangoProject, clocks: str) -> None:
    if clocks == "per-step":
        django_project.module("conftest.py", PER_STEP_CLOCKS)


UPSTREAM = """
import http.server
import threading

import pytest


class _Quick(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quick)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()
    server.server_close()
"""

BLOCKING_VIEWS = """
import concurrent.futures
import http.client
import os
import select
import selectors
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import httpx
import requests
import urllib3
from django.http import HttpResponse


def _ok():
    return HttpResponse("ok")


async def sleeps(request):
    time.sleep(0.001)
    return _ok()


async def socket_pair(request):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        right.recv(1)
    return _ok()


async def socket_send_recv(request):
    left, right = socket.socketpair()
    with left, right:
        left.send(b"x", 0)
        right.recv(1, 0)
    return _ok()


async def dns(request):
    socket.getaddrinfo("localhost", 80)
    return _ok()


async def selects(request):
    read, write = os.pipe()
    try:
        select.select([read], [], [], 0.001)
    finally:
        os.close(read)
        os.close(write)
    return _ok()


async def a_selector(request):
    read, write = socket.socketpair()
    with read, write, selectors.DefaultSelector() as selector:  # epoll on Linux
        selector.register(read, selectors.EVENT_READ)
        selector.select(0.001)
    return _ok()


async def subprocess_run(request):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return _ok()


async def with_requests(request):
    requests.get(request.GET["url"], timeout=5)
    return _ok()


async def with_urllib3(request):
    urllib3.PoolManager().request("GET", request.GET["url"])
    return _ok()


async def with_urllib(request):
    urllib.request.urlopen(request.GET["url"], timeout=5).read()
    return _ok()


async def reads_a_response(request):
    response = urllib.request.urlopen(request.GET["url"], timeout=5)
    response.read()
    return _ok()


async def with_httpx_client(request):
    with httpx.Client() as client:
        client.get(request.GET["url"])
    return _ok()


async def with_httpx_get(request):
    httpx.get(request.GET["url"], timeout=5)
    return _ok()


_POOL = concurrent.futures.ThreadPoolExecutor(1)


async def waits_on_a_thread(request):
    _POOL.submit(time.sleep, 0.01).result()
    return _ok()


async def waits_on_threads(request):
    concurrent.futures.wait([_POOL.submit(time.sleep, 0.01)])
    return _ok()


async def iterates_as_completed(request):
    for future in concurrent.futures.as_completed([_POOL.submit(time.sleep, 0.01)]):
        pass
    return _ok()


async def with_http_client(request):
    url = urllib.parse.urlsplit(request.GET["url"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    connection.request("GET", "/")
    connection.getresponse().read()
    connection.close()
    return _ok()
"""

BLOCKING_TESTS = """
import pytest

CASES = [
    "sleeps", "socket_pair", "socket_send_recv", "dns", "selects", "a_selector", "subprocess_run",
    "with_requests", "with_urllib3", "with_urllib", "reads_a_response", "with_httpx_client",
    "with_httpx_get", "with_http_client", "waits_on_a_thread", "waits_on_threads",
    "iterates_as_completed",
]


@pytest.mark.parametrize("view", CASES)
@pytest.mark.asyncio
async def test_view(asgi_client, upstream, view):
    response = await asgi_client.get(f"/{view}/", params={"url": upstream})
    assert response.status_code == 200
"""

# view name -> (the blocking call named first, the source line of the view that made it)
EXPECTED_CALLS = {
    "sleeps": ("time.sleep", "time.sleep(0.001)"),
    "socket_pair": ("socket.sendall", 'left.sendall(b"x")'),
    "socket_send_recv": ("socket.send", 'left.send(b"x", 0)'),
    "dns": ("socket.getaddrinfo", 'socket.getaddrinfo("localhost", 80)'),
    "selects": ("select.select", "select.select([read], [], [], 0.001)"),
    "a_selector": ("selectors.Selector.select", "selector.select(0.001)"),
    "subprocess_run": ("subprocess.Popen.communicate", "subprocess.run("),
    "with_requests": ("requests.Session.send", "requests.get("),
    "with_urllib3": ("urllib3.HTTPConnectionPool.urlopen", "urllib3.PoolManager()"),
    "with_urllib": ("urllib.request.urlopen", "    urllib.request.urlopen("),
    "reads_a_response": ("urllib.request.urlopen", "response = urllib.request.urlopen("),
    "with_httpx_client": ("httpx.Client.send", "client.get("),
    "with_httpx_get": ("httpx.get", "httpx.get("),
    "with_http_client": ("http.client.HTTPConnection.request", 'connection.request("GET", "/")'),
    "waits_on_a_thread": (
        "concurrent.futures.Future.result",
        "_POOL.submit(time.sleep, 0.01).result()",
    ),
    "waits_on_threads": (
        "concurrent.futures.wait",
        "concurrent.futures.wait([_POOL.submit(time.sleep, 0.01)])",
    ),
    "iterates_as_completed": (
        "concurrent.futures.as_completed",
        "for future in concurrent.futures.as_completed(",
    ),
}


def test_each_blocking_call_is_caught_and_named(django_project: DjangoProject) -> None:
    django_project.views(BLOCKING_VIEWS)
    django_project.module("conftest.py", UPSTREAM)
    django_project.tests(BLOCKING_TESTS)
    result, report = django_project.report()
    result.assert_outcomes(failed=len(EXPECTED_CALLS))
    for view, (call, text) in EXPECTED_CALLS.items():
        line = line_of(BLOCKING_VIEWS, text)
        found = violations(report, f"test_view[{view}]")
        first = found[0]
        assert first["kind"] == "blocking-call", (view, found)
        assert first["message"].startswith(f"blocking call {call}()"), (view, first["message"])
        assert first["location"] == {"path": "tproj/views.py", "line": line, "function": view}
        assert first["request"] == f"GET /{view}/"
        assert first["location"] in first["stack"]
        assert first["duration_ms"] == round(first["duration_ms"], 3)  # not 0.12345678901
    # The body's read is one finding whether or not it came with the headers (network timing)
    _, read = violations(report, "test_view[reads_a_response]")
    assert read["message"].startswith("blocking call http.client.HTTPResponse.read()"), read
    assert read["location"]["line"] == line_of(BLOCKING_VIEWS, "    response.read()")
    _, recv = violations(report, "test_view[socket_send_recv]")
    assert recv["message"].startswith("blocking call socket.recv()"), recv["message"]
    assert recv["location"]["line"] == line_of(BLOCKING_VIEWS, "right.recv(1, 0)")


def test_a_blocking_call_in_a_sync_function_is_fixed_at_its_async_caller(
    django_project: DjangoProject,
) -> None:
    """A sync helper (or a task a sync .enqueue() runs at once) cannot await asyncio.sleep."""
    tasks = django.VERSION >= (6, 0)
    django_project.views(
        """
        import time

        from django.http import HttpResponse


        def pause():
            time.sleep(0.001)


        async def helper(request):
            pause()
            return HttpResponse("ok")


        async def straight(request):
            time.sleep(0.001)
            return HttpResponse("ok")


        from django.dispatch import Signal

        pinged = Signal()


        def on_ping(sender, **kwargs):
            time.sleep(0.001)


        pinged.connect(on_ping)


        async def signals(request):
            pinged.send(sender=None)
            return HttpResponse("ok")
        """
        + (
            """

        from django.tasks import task


        @task
        def nap():
            time.sleep(0.001)


        async def enqueues(request):
            nap.enqueue()
            return HttpResponse("ok")
        """
            if tasks
            else ""
        )
    )
    views = ["helper", "straight", "signals", *(["enqueues"] if tasks else [])]
    django_project.tests(
        f"""
        import pytest

        @pytest.mark.parametrize("view", {views!r})
        @pytest.mark.asyncio
        async def test_view(asgi_client, view):
            assert (await asgi_client.get(f"/{{view}}/")).status_code == 200
        """
    )
    _, report = django_project.report()
    [helper] = violations(report, "test_view[helper]")
    assert helper["location"]["function"] == "pause"
    assert helper["fix"].startswith(
        "pause() is a sync function run on the event loop: have its async caller await"
        " sync_to_async(pause)(...) (or asyncio.to_thread(pause, ...) if it makes no queries);"
    ), helper["fix"]
    assert helper["fix"].endswith(
        "or make it async and await asyncio.sleep(...) instead of time.sleep(...)"
    )
    [signal] = violations(report, "test_view[signals]")
    assert signal["fix"] == (
        "on_ping() is a sync receiver of a signal sent on the event loop: send it with await"
        " sync_to_async(signal.send)(...), or make the receivers async (and await"
        " asyncio.sleep(...) instead of time.sleep(...)) and send it with await signal.asend(...)"
    )
    [straight] = violations(report, "test_view[straight]")
    assert straight["fix"] == "await asyncio.sleep(...) instead of time.sleep(...)"
    if tasks:
        [enqueued] = violations(report, "test_view[enqueues]")
        assert enqueued["fix"].startswith("nap() is a task that .enqueue() ran on the event loop")
        assert enqueued["fix"].endswith("await task.aenqueue(...) instead")


@pytest.mark.parametrize(
    ("view", "call"),
    [
        ("with_requests", "requests.Session.send"),
        ("with_httpx_get", "httpx.get"),
        ("subprocess_run", "subprocess.Popen.communicate"),
    ],
)
def test_nested_blocking_calls_are_reported_once(
    django_project: DjangoProject, view: str, call: str
) -> None:
    """requests -> urllib3 -> http.client -> socket: one finding, for the outermost call. So is
    httpx.get(), whose client (and its SSL context, tens of ms of CPU) is built inside it; and
    subprocess.run(), whose wait() on the process communicate() reaped blocks nothing."""
    django_project.views(BLOCKING_VIEWS)
    django_project.module("conftest.py", UPSTREAM)
    django_project.tests(BLOCKING_TESTS)
    _, report = django_project.report("-k", view)
    [only] = violations(report, f"test_view[{view}]")
    assert only["message"].startswith(f"blocking call {call}()")


STALL_VIEWS = """
import hashlib
import sqlite3
import threading
import time

from django.http import HttpResponse


def _spin(seconds):  # CPU seconds of the loop thread: a busy machine lengthens, not shortens, it
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


async def python_cpu(request):
    _spin(0.5)
    return HttpResponse("ok")


async def c_hash(request):
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2_000_000)
    return HttpResponse("ok")


async def sqlite_query(request):
    db = sqlite3.connect(":memory:")
    db.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
        " SELECT count(*) FROM c"
    ).fetchone()
    db.close()
    return HttpResponse("ok")


async def lock_wait(request):
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.5, lock.release).start()
    with lock:
        pass
    return HttpResponse("ok")
"""

STALL_TESTS = """
import pytest


@pytest.mark.parametrize("view", ["python_cpu", "c_hash", "sqlite_query", "lock_wait"])
@pytest.mark.asyncio
async def test_view(asgi_client, view):
    assert (await asgi_client.get(f"/{view}/")).status_code == 200
"""


@CLOCKS
def test_stalls_are_caught_with_the_line_that_ran_during_the_stall(
    django_project: DjangoProject, clocks: str
) -> None:
    use_clocks(django_project, clocks)
    django_project.views(STALL_VIEWS)
    django_project.tests(STALL_TESTS)
    result, report = django_project.report()
    result.assert_outcomes(failed=4)
    expected = {
        "python_cpu": ("while time.thread_time() < deadline", "_spin"),
        "c_hash": ("hashlib.pbkdf2_hmac(", "c_hash"),
        "sqlite_query": ("db.execute(", "sqlite_query"),
        "lock_wait": ("with lock:", "lock_wait"),
    }
    for view, (text, function) in expected.items():
        line = line_of(STALL_VIEWS, text)
        [stall] = violations(report, f"test_view[{view}]")
        assert stall["kind"] == "stall", view
        assert stall["duration_ms"] >= 100, view
        assert stall["location"] == {"path": "tproj/views.py", "line": line, "function": function}
    out = result.stdout.str()
    assert "event loop blocked for" in out
    assert "use the async ORM" not in out  # a raw sqlite3 call is not the ORM's fault


def test_a_client_built_per_request_stalls_with_a_fix_that_says_why(
    django_project: DjangoProject,
) -> None:
    """Each httpx client loads the CA certificates unless given an SSL context: CPU work on the
    loop that users do not see in their code."""
    django_project.views(
        """
        import time

        import httpx
        from django.http import HttpResponse


        async def per_request(request):
            deadline = time.thread_time() + 0.5  # CPU time: what the loop itself spent
            while time.thread_time() < deadline:
                httpx.AsyncClient(timeout=5)
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import pytest


        @pytest.mark.asyncio
        async def test_view(asgi_client):
            assert (await asgi_client.get("/per_request/")).status_code == 200
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(failed=1)
    [stall] = violations(report, "test_view")
    assert stall["kind"] == "stall"
    assert stall["location"]["function"] == "per_request"
    assert stall["fix"].startswith("build the SSL context once, at import"), stall["fix"]


def test_failure_lists_every_finding_with_source_request_and_fix(
    django_project: DjangoProject,
) -> None:
    django_project.views(
        """
        import socket
        import time

        from django.http import HttpResponse

        async def two_problems(request):
            time.sleep(0.001)
            socket.getaddrinfo("localhost", 80)
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            assert (await asgi_client.get("/two_problems/")).status_code == 200
        """
    )
    result = django_project.run("--djasync")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-djasync: 2 async-safety problems (stall threshold 100 ms)*",
            "1. blocking call time.sleep() for * ms on the event loop at"
            " tproj/views.py:7 in two_problems",
            "*time.sleep(0.001)",
            "*while serving: GET /two_problems/",
            "*fix: await asyncio.sleep(...) instead of time.sleep(...)",
            "2. blocking call socket.getaddrinfo()*tproj/views.py:8 in two_problems",
            "*(run with -v for full stacks)",
        ]
    )
    verbose = django_project.run("--djasync", "-v")
    verbose.stdout.fnmatch_lines(["*stack (most recent call last):", "*tproj/views.py:7 in *"])


def test_a_failure_with_many_findings_lists_the_first_ten_without_v(
    django_project: DjangoProject,
) -> None:
    sleeps = "".join(f"    time.sleep(0.001)  # sleep {n}\n" for n in range(1, 13))
    django_project.tests(
        f"import time\n\nimport pytest\n\n\n@pytest.mark.asyncio\nasync def test_it():\n{sleeps}"
    )
    result, report = django_project.report()
    assert len(violations(report, "test_it")) == 12
    result.stdout.fnmatch_lines(
        [
            "*pytest-djasync: 12 async-safety problems*",
            "10. blocking call time.sleep()*",
            "*# sleep 10",
            "*",
            "... and 2 more (run with -v to list them all, or see --djasync-report)",
        ]
    )
    result.stdout.no_fnmatch_line("11. *")
    verbose = django_project.run("--djasync", "-v")
    verbose.stdout.fnmatch_lines(["12. blocking call time.sleep()*", "*# sleep 12"])
    verbose.stdout.no_fnmatch_line("*more (run with -v*")


WHERE_VIEWS = """
import asyncio
import time

from django.http import HttpResponse, StreamingHttpResponse


async def plain(request):
    return HttpResponse("ok")


async def streaming(request):
    async def chunks():
        yield b"a"
        time.sleep(0.001)
        yield b"b"

    return StreamingHttpResponse(chunks())


DONE = asyncio.Event()


async def _later():
    await asyncio.sleep(0)
    time.sleep(0.001)
    DONE.set()


_TASKS = set()


async def spawns(request):
    task = asyncio.ensure_future(_later())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return HttpResponse("ok")
"""

WHERE_MIDDLEWARE = """
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


class BlockingMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        if request.path == "/plain/":
            time.sleep(0.001)
        return await self.get_response(request)
"""


def test_blocks_are_found_wherever_they_happen(django_project: DjangoProject) -> None:
    django_project.views(WHERE_VIEWS)
    django_project.module("tproj/middleware.py", WHERE_MIDDLEWARE)
    django_project.settings('MIDDLEWARE = ["tproj.middleware.BlockingMiddleware"]\n')
    django_project.tests(
        """
        import time

        import pytest
        import pytest_asyncio

        from tproj import views


        @pytest.mark.asyncio
        async def test_middleware(asgi_client):
            await asgi_client.get("/plain/")


        @pytest.mark.asyncio
        async def test_streaming_generator(asgi_client):
            async with asgi_client.stream("GET", "/streaming/") as response:
                assert [c async for c in response.aiter_raw()] == [b"a", b"b"]


        @pytest.mark.asyncio
        async def test_spawned_task(asgi_client):
            await asgi_client.get("/spawns/")
            await views.DONE.wait()


        @pytest_asyncio.fixture
        async def blocking_fixture():
            time.sleep(0.001)
            yield


        @pytest.mark.asyncio
        async def test_async_fixture(blocking_fixture):
            pass


        @pytest.mark.asyncio
        async def test_test_body():
            time.sleep(0.001)
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(failed=5)
    expected = {
        "test_middleware": ("tproj/middleware.py", "BlockingMiddleware.__call__", "GET /plain/"),
        "test_streaming_generator": ("tproj/views.py", "streaming.<locals>.chunks", None),
        "test_spawned_task": ("tproj/views.py", "_later", "GET /spawns/"),
        "test_async_fixture": ("test_scenario.py", "blocking_fixture", None),
        "test_test_body": ("test_scenario.py", "test_test_body", None),
    }
    for test, (path, function, request) in expected.items():
        [found] = violations(report, test)
        assert found["location"]["path"] == path, test
        assert found["location"]["function"].endswith(function.rpartition(".")[2]), test
        if request:
            assert found["request"] == request, test


@pytest.mark.skipif(django.VERSION < (5, 0), reason="async signal receivers need Django 5.0")
def test_async_signal_receiver(django_project: DjangoProject) -> None:
    django_project.module(
        "tproj/signals.py",
        """
        import time

        from django.core.signals import request_started
        from django.dispatch import receiver


        @receiver(request_started)
        async def _slow_receiver(sender, **kwargs):
            time.sleep(0.001)
        """,
    )
    django_project.views(
        """
        from django.http import HttpResponse


        async def plain(request):
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import pytest

        import tproj.signals  # noqa: F401 - connects the receiver, as an AppConfig.ready would

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            await asgi_client.get("/plain/")
        """
    )
    _, report = django_project.report()
    [found] = violations(report, "test_it")
    assert found["location"]["function"] == "_slow_receiver"


LOOPS_TESTS = """
import asyncio
import time

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, SimpleTestCase, TestCase


async def _blocks():
    time.sleep(0.001)


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop():
    await _blocks()


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop():
    await _blocks()


def test_asyncio_run():
    asyncio.run(_blocks())


def test_async_to_sync():
    async_to_sync(_blocks)()


@pytest.mark.asyncio
async def test_django_async_client():
    assert (await AsyncClient().get("/view/")).status_code == 200


@pytest.mark.asyncio
async def test_pytest_django_async_client(async_client):
    assert (await async_client.get("/view/")).status_code == 200


class DjangoTests(SimpleTestCase):
    async def test_async_method(self):
        await _blocks()


class DjangoDatabaseTests(TestCase):
    async def test_async_method(self):
        await _blocks()

    def test_sync_client(self):
        assert self.client.get("/view/").status_code == 200


def test_pytest_django_client(client):
    assert client.get("/view/").status_code == 200
"""


def test_every_kind_of_loop_is_watched(django_project: DjangoProject) -> None:
    django_project.views(
        """
        import time

        from django.http import HttpResponse

        async def view(request):
            time.sleep(0.001)
            return HttpResponse("ok")
        """
    )
    django_project.tests(LOOPS_TESTS)
    result, report = django_project.report()
    result.assert_outcomes(failed=10)
    for test in (
        "test_module_loop",
        "test_session_loop",
        "test_asyncio_run",
        "test_async_to_sync",
    ):
        [found] = violations(report, test)
        assert found["location"]["function"] == "_blocks", test
    for test in (
        "test_django_async_client",
        "test_pytest_django_async_client",
        "test_pytest_django_client",  # the sync test client: the view runs in async_to_sync
        "DjangoDatabaseTests::test_sync_client",
    ):
        [found] = violations(report, test)
        assert found["location"] == {"path": "tproj/views.py", "line": 6, "function": "view"}
        assert found["request"] == "GET /view/"
    for test in ("DjangoTests::test_async_method", "DjangoDatabaseTests::test_async_method"):
        [found] = violations(report, test)
        assert found["location"]["function"] == "_blocks"


def test_a_finding_of_a_task_a_request_left_running_names_the_test_that_sent_it(
    django_project: DjangoProject,
) -> None:
    """On a loop the tests share, a task a view started and did not wait for makes its findings
    in whichever test is running then; the failure names the test whose request it was."""
    django_project.views(
        """
        import asyncio
        import time

        from django.http import HttpResponse

        _TASKS = set()


        async def _audit_later():
            await asyncio.sleep(0.05)
            time.sleep(0.001)


        async def fire(request):
            task = asyncio.create_task(_audit_later())
            _TASKS.add(task)
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import asyncio

        import pytest

        @pytest.mark.asyncio(loop_scope="module")
        async def test_fires(asgi_client):
            assert (await asgi_client.get("/fire/")).status_code == 200

        @pytest.mark.asyncio(loop_scope="module")
        async def test_innocent():
            await asyncio.sleep(0.3)
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(passed=1, failed=1)
    [found] = violations(report, "test_innocent")
    assert found["request"] == "GET /fire/"
    result.stdout.fnmatch_lines(
        [
            "*1. blocking call time.sleep() * in _audit_later",
            "   while serving: GET /fire/ (sent by test_scenario.py::test_fires,"
            " which left it running)",
        ]
    )


CLEAN_VIEWS = """
import asyncio
import concurrent.futures
import logging
import time

from asgiref.sync import sync_to_async
from django.http import HttpResponse

log = logging.getLogger(__name__)


def sync_view(request):
    time.sleep(0.2)  # runs in a worker thread under ASGI: the loop is free
    return HttpResponse("ok")


async def offloaded(request):
    await sync_to_async(time.sleep)(0.2)
    await sync_to_async(time.sleep, thread_sensitive=False)(0.2)
    await asyncio.to_thread(time.sleep, 0.2)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(time.sleep, 0.2)
        await asyncio.wrap_future(future)
        future.result()  # done: hands the result over at once
        # What they wait for has happened: they return at once.
        concurrent.futures.wait(future for future in [future])
        never = concurrent.futures.Future()
        concurrent.futures.wait([future, never], return_when="FIRST_COMPLETED")
        concurrent.futures.wait([never], timeout=0)
        assert list(concurrent.futures.as_completed([future])) == [future]
        await asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.2)
    return HttpResponse("ok")


async def chatty(request):
    for number in range(200):
        log.warning("line %s", number)
        print("line", number)
    return HttpResponse("ok")


async def waits(request):
    await asyncio.sleep(0.3)
    return HttpResponse("ok")
"""

SYNC_MIDDLEWARE = """
import time


class SlowSyncMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        time.sleep(0.2)  # Django runs sync-only middleware in a thread under ASGI
        return self.get_response(request)
"""


def test_no_false_positives_for_work_off_the_loop(django_project: DjangoProject) -> None:
    django_project.views(CLEAN_VIEWS)
    django_project.module("tproj/middleware.py", SYNC_MIDDLEWARE)
    django_project.tests(
        """
        import pytest

        @pytest.mark.parametrize("view", ["sync_view", "offloaded", "chatty", "waits"])
        @pytest.mark.asyncio
        async def test_view(asgi_client, view):
            assert (await asgi_client.get(f"/{view}/")).status_code == 200

        @pytest.mark.asyncio
        async def test_sync_only_middleware(asgi_client, settings):
            settings.MIDDLEWARE = ["tproj.middleware.SlowSyncMiddleware"]
            assert (await asgi_client.get("/waits/")).status_code == 200
        """
    )
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(passed=5)
    assert all(not entry["violations"] for entry in report["tests"]), report


SLOW_IMPORT = {
    "sleeps": "time.sleep(0.3)",  # a blocking call, made by the module's top-level code
    "computes": "_spin(0.3)",  # pure-Python CPU work: a stall, were it the loop's
}

# CPU seconds of the calling thread, however busy the machine is.
SPIN = """
import time


def _spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
"""


@pytest.mark.parametrize("work", sorted(SLOW_IMPORT))
def test_first_request_importing_the_urlconf_is_not_blamed(
    django_project: DjangoProject, work: str
) -> None:
    """The first request imports the URLconf and the views inside a loop step: imports are
    set aside, as which test pays for them depends on the order tests run in."""
    django_project.views(
        SPIN
        + f"""
from django.http import HttpResponse

{SLOW_IMPORT[work]}  # a slow import, paid once by the first request


async def view(request):
    return HttpResponse("ok")
"""
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_first(asgi_client):
            assert (await asgi_client.get("/view/")).status_code == 200
        """
    )
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_first")


LAZY_VIEWS = (
    SPIN
    + """
from django.http import HttpResponse


async def lazy(request):
    import tproj.heavy  # noqa: F401
    return HttpResponse("ok")


async def lazy_then_busy(request):
    import tproj.heavier  # noqa: F401
    _spin(0.3)
    return HttpResponse("ok")
"""
)

HEAVY = SPIN + "\n_spin(0.3)\n"


def test_a_lazy_import_is_set_aside_but_not_the_rest_of_its_step(
    django_project: DjangoProject,
) -> None:
    django_project.views(LAZY_VIEWS)
    django_project.module("tproj/heavy.py", HEAVY)
    django_project.module("tproj/heavier.py", HEAVY)
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.parametrize("view", ["lazy", "lazy_then_busy"])
        async def test_view(asgi_client, view):
            assert (await asgi_client.get(f"/{view}/")).status_code == 200
        """
    )
    result, report = django_project.report("--djasync-block-ms=100")
    result.assert_outcomes(passed=1, failed=1)
    assert not violations(report, "test_view[lazy]")
    [stall] = violations(report, "test_view[lazy_then_busy]")
    assert stall["kind"] == "stall"
    # Samples taken while tproj.heavier was imported are left out: the stall is the view's.
    assert stall["location"]["path"] == "tproj/views.py"
    assert stall["location"]["function"] == "_spin"
    assert stall["request"] == "GET /lazy_then_busy/"


def test_garbage_collection_pauses_are_not_blamed(django_project: DjangoProject) -> None:
    django_project.tests(
        """
        import gc

        import pytest

        @pytest.fixture(scope="module")
        def big_heap():
            heap = []
            for _ in range(1_000_000):
                node = []
                node.append(node)  # a cycle: every collection has to walk it
                heap.append(node)
            yield heap

        @pytest.mark.asyncio
        async def test_collect(big_heap):
            gc.collect()  # a full collection over millions of objects, inside a loop step
        """
    )
    result, report = django_project.report("--djasync-block-ms=20")
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_collect")


@CLOCKS
def test_a_step_spent_in_a_reported_blocking_call_gets_no_note(
    django_project: DjangoProject, clocks: str
) -> None:
    """A step that is one reported ``time.sleep`` is that finding and nothing more. Other
    threads run while it sleeps; that is not the loop waiting for the GIL, as a note said."""
    use_clocks(django_project, clocks)
    django_project.tests(
        """
        import threading
        import time

        import pytest

        @pytest.mark.asyncio
        async def test_sleeps_beside_a_busy_thread():
            stop = threading.Event()

            def spin():
                while not stop.is_set():
                    pass

            thread = threading.Thread(target=spin, name="spinner")
            thread.start()
            try:
                time.sleep(0.3)
            finally:
                stop.set()
                thread.join()
        """
    )
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(failed=1)
    [found] = violations(report, "test_sleeps_beside_a_busy_thread")
    assert found["message"].startswith("blocking call time.sleep()")
    # The sleep's 300 ms are the finding's, none of a note's. On a machine whose every core is
    # busy, the rest of the step (the join) can wait for the GIL long enough for a note of its
    # own (53 ms seen beside four CPU hogs): that one is true.
    notes = re.findall(r"DjasyncWarning: .*?(\d+) ms", result.stdout.str())
    assert all(int(ms) < 200 for ms in notes), notes


GIL_HOG = """
import asyncio
import threading
import time

import pytest

@pytest.mark.asyncio
async def test_loop_waits_for_the_gil():
    stop = threading.Event()

    def hog():
        while not stop.is_set():
            sum(range(10_000_000))  # one C call that keeps the GIL for a long time

    thread = threading.Thread(target=hog, name="gil-hog")
    thread.start()
    try:
        for _ in range(10):
            time.sleep(0)  # lets the hog take the GIL in the middle of a loop step
            await asyncio.sleep(0.001)
    finally:
        stop.set()
        thread.join()
"""


@CLOCKS
def test_a_thread_hogging_the_gil_is_a_note_not_a_finding(
    django_project: DjangoProject, clocks: str
) -> None:
    use_clocks(django_project, clocks)
    django_project.tests(GIL_HOG)
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_loop_waits_for_the_gil")
    # at the test's def line, not its decorator's (trial: at an @pytest.mark.xfail line)
    def_line = line_of(GIL_HOG, "async def test_loop_waits_for_the_gil")
    result.stdout.fnmatch_lines([f"  test_scenario.py:{def_line}: DjasyncWarning: *"])
    notes = re.findall(r"DjasyncWarning: (.*)", result.stdout.str())
    assert notes
    assert all("not counted as a stall of the loop" in note for note in notes), notes
    # Which excuse depends on the CPU the machine gave the hog: on a machine with a core to
    # spare, the GIL note (naming it where thread clocks can be read). With every core busy,
    # the OS kept the hog, or the whole process, off the CPU too, and the note says that.
    hog = "thread 'gil-hog'" if clocks == "snapshots" else "another thread"
    held = [note for note in notes if "for the GIL while" in note]
    assert all(f"while {hog} held it; not counted" in note for note in held), held


def test_a_note_is_not_made_an_error_by_a_blanket_error_filter(
    django_project: DjangoProject,
) -> None:
    """Many projects set ``filterwarnings = error``; notes are mostly about a busy machine, so
    that must not fail a clean test on a CI runner. A filter naming DjasyncWarning does."""
    django_project.ini("filterwarnings = error")
    django_project.tests(GIL_HOG)
    result = django_project.run("--djasync", "--djasync-block-ms=50")
    result.assert_outcomes(passed=1)
    assert re.findall(r"DjasyncWarning: .*not counted as a stall", result.stdout.str())
    named = "error::pytest_djasync.errors.DjasyncWarning"
    strict = django_project.run("--djasync", "--djasync-block-ms=50", "-W", named)
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["pytest_djasync.errors.DjasyncWarning: *not counted*"])
    assert "watching.py" not in strict.stdout.str()  # the test's failure, not the plugin's code
    assert "traceback entries are hidden" not in strict.stdout.str()


def assert_watchdog_starved(result: pytest.RunResult) -> None:
    """The note excusing a step the watchdog could not sample. With every core busy (other
    processes), the OS can keep the watchdog's own thread off the CPU for as long as the
    holder kept the GIL: the note names that excuse, found first, instead."""
    notes = re.findall(r"DjasyncWarning: (.*)", result.stdout.str())
    starved = re.compile(
        r"the watchdog could sample it only \d+ times? of about"
        r"|waited on thread 'djasync-watchdog', which the OS kept off the CPU"
    )
    assert any(starved.search(note) for note in notes), notes


@CLOCKS
def test_a_thread_asleep_holding_the_gil_is_a_note_not_a_finding(
    django_project: DjangoProject, clocks: str
) -> None:
    """A thread asleep in a C call that keeps the GIL (the OS not running a GIL holder looks
    the same) stops the loop thread and the watchdog alike, with no CPU used by anyone: the
    samples the watchdog could not take say so."""
    use_clocks(django_project, clocks)
    django_project.tests(
        """
        import ctypes
        import threading
        import time

        import pytest

        LIBC = ctypes.PyDLL(None)  # a PyDLL's functions run with the GIL held

        @pytest.mark.asyncio
        async def test_loop_waits_for_a_sleeping_holder():
            go = threading.Event()

            def hold():
                go.wait()
                LIBC.usleep(1_000_000)

            holder = threading.Thread(target=hold, name="gil-sleeper")
            holder.start()
            deadline = time.perf_counter() + 0.15
            while time.perf_counter() < deadline:  # long enough to be sampled, however slowly
                pass
            go.set()
            while holder.is_alive():  # from now on, waiting for the GIL the holder keeps
                pass
            holder.join()
        """
    )
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_loop_waits_for_a_sleeping_holder")
    assert_watchdog_starved(result)


@CLOCKS
def test_a_watchdog_kept_from_its_first_look_is_still_starved(
    django_project: DjangoProject, clocks: str
) -> None:
    """The holder starts sleeping with the GIL before the watchdog's first look at the step,
    so the watchdog wakes only for the step's last moments and samples those at its full
    rate: the samples it could not take count from when it meant to take the first."""
    use_clocks(django_project, clocks)
    django_project.tests(
        """
        import ctypes
        import threading

        import pytest

        LIBC = ctypes.PyDLL(None)  # a PyDLL's functions run with the GIL held

        @pytest.mark.asyncio
        async def test_loop_waits_for_a_holder_from_its_start():
            holder = threading.Thread(target=LIBC.usleep, args=(300_000,), name="gil-sleeper")
            holder.start()
            while holder.is_alive():  # waiting for the GIL the holder keeps
                pass
            holder.join()
            threading.Event().wait(0.04)  # under the threshold; the watchdog is free to sample
        """
    )
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_loop_waits_for_a_holder_from_its_start")
    assert_watchdog_starved(result)


def test_a_collection_the_loop_thread_ran_is_not_its_cpu(django_project: DjangoProject) -> None:
    """A step that collects garbage and then waits for the GIL: the collection is CPU time of
    the loop thread, but not the loop's own work, so it cannot make the wait a stall."""
    django_project.tests(
        """
        import ctypes
        import gc
        import threading

        import pytest

        LIBC = ctypes.PyDLL(None)

        @pytest.fixture(scope="module")
        def big_heap():
            heap = []
            for _ in range(1_000_000):
                node = []
                node.append(node)
                heap.append(node)
            yield heap

        @pytest.mark.asyncio
        async def test_collect_then_wait(big_heap):
            go = threading.Event()

            def hold():
                go.wait()
                LIBC.usleep(100_000)

            holder = threading.Thread(target=hold, name="gil-sleeper")
            holder.start()
            gc.collect()
            go.set()
            while holder.is_alive():
                pass
            holder.join()
        """
    )
    result, report = django_project.report("--djasync-block-ms=50")
    result.assert_outcomes(passed=1)
    assert not violations(report, "test_collect_then_wait")


def test_the_watchdog_wakes_once_a_threshold_until_a_step_runs_long(
    django_project: DjangoProject,
) -> None:
    """Each wake-up takes the GIL from the main thread, so idle polls are a threshold apart; a
    step seen running is looked at again when it is a quarter threshold old, then sampled fast."""
    django_project.tests(
        """
        import time

        from pytest_djasync import watchdog

        def test_schedule():
            dog = watchdog.Watchdog()
            dog.start(100)
            dog._stop.set()
            dog._thread.join()  # no thread: this test calls the poll itself
            try:
                step = watchdog._register_thread()
                idle = dog._poll()
                step.start = time.perf_counter() - 0.010
                young = dog._poll()
                step.start = time.perf_counter() - 0.030
                long = dog._poll()
                step.start = 0.0
                loop = type("Uvloop", (), {"call_soon_threadsafe": lambda *args: None})()
                watchdog.heartbeat._watched[id(loop)] = watchdog.heartbeat._Watched(loop)
                beating = dog._poll()  # each poll sends a heartbeat: half a threshold then
                watchdog.heartbeat._watched.clear()
                print(f"waits: {idle:.4f} {young:.4f} {long:.4f} {len(step.samples)} {beating}")
            finally:
                dog.stop()
        """
    )
    result = django_project.run("-s", "-p", "no:djasync")
    result.assert_outcomes(passed=1)
    idle, young, long, samples, beating = result.stdout.str().split("waits: ")[1].split()[:5]
    assert float(idle) == 0.1
    assert 0.001 <= float(young) <= 0.015  # until the step is 25 ms old
    assert float(long) == 0.005
    assert samples == "1"
    assert float(beating) == 0.05


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread clocks: Linux")
def test_a_thread_that_ended_has_no_cpu_clock_and_no_crash(django_project: DjangoProject) -> None:
    """The watchdog reads the CPU clock of every thread it listed; one may end meanwhile (a
    server's executor threads come and go). ``pthread_getcpuclockid()`` on an ended thread read
    freed memory and crashed the process (Python 3.10, a few hundred live-server requests)."""
    django_project.tests(
        """
        import os
        import threading
        import time

        from pytest_djasync import watchdog

        def test_clocks():
            ended = [threading.Thread(target=lambda: None) for _ in range(50)]
            for thread in ended:
                thread.start()
                thread.join()  # the OS thread may still be exiting: then its clock still reads
                watchdog._thread_cpu(thread.native_id)
            for thread in ended:
                task = f"/proc/self/task/{thread.native_id}"
                deadline = time.monotonic() + 10
                while os.path.exists(task) and time.monotonic() < deadline:
                    time.sleep(0.001)
            assert {watchdog._thread_cpu(thread.native_id) for thread in ended} == {None}
            mine = watchdog._thread_cpu(threading.get_native_id())
            assert mine is not None
            assert 0 < mine <= time.thread_time()  # the same clock, read again later
        """
    )
    django_project.run("-p", "no:djasync").assert_outcomes(passed=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/task: Linux")
def test_a_loop_threads_schedstat_file_stays_open_until_the_thread_ends(
    django_project: DjangoProject,
) -> None:
    """A poll reads the loop thread's run-queue wait with one ``pread`` of a kept file; the
    file is closed once the watchdog sees the thread gone, and the rest when it stops."""
    django_project.tests(
        """
        import asyncio
        import os
        import threading

        from pytest_djasync import watchdog

        def schedstat_files():
            links = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    links.append(os.readlink(f"/proc/self/fd/{fd}"))
                except FileNotFoundError:  # the listing's own descriptor, closed by now
                    pass
            return sorted(link for link in links if link.endswith("/schedstat"))

        def test_files():
            dog = watchdog.Watchdog()
            dog.start(100)
            dog._stop.set()
            dog._thread.join()  # no thread: this test calls the poll itself
            try:
                asyncio.run(asyncio.sleep(0))
                ran, release = threading.Event(), threading.Event()
                worker = threading.Thread(
                    target=lambda: (asyncio.run(asyncio.sleep(0)), ran.set(), release.wait()),
                    daemon=True,
                )
                worker.start()
                ran.wait()
                try:
                    two = schedstat_files()
                    wait = watchdog._snapshot(watchdog._steps[worker.ident], 0.0).wait
                finally:
                    release.set()
                worker.join()
                dog._poll()
                one = schedstat_files()
            finally:
                dog.stop()
            none = schedstat_files()
            print(f"files: {len(two)} {wait is not None} {one} {none}")
            assert one == [f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"]
        """
    )
    result = django_project.run("-s", "-p", "no:djasync")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*files: 2 True * []"])


@CLOCKS
def test_loop_steps_read_cpu_clocks_only_where_the_watchdog_cannot(
    django_project: DjangoProject, clocks: str
) -> None:
    """A CPU-clock read is a system call; a loop step is a few microseconds of Python."""
    use_clocks(django_project, clocks)
    django_project.tests(
        """
        import asyncio

        import pytest

        from pytest_djasync import watchdog

        @pytest.mark.asyncio
        async def test_many_steps(monkeypatch):
            reads = []
            original = watchdog._thread_time
            monkeypatch.setattr(watchdog, "_thread_time", lambda: reads.append(1) or original())
            for _ in range(1000):
                await asyncio.sleep(0)
            print(f"clock reads: {len(reads)}")
        """
    )
    result = django_project.run("--djasync", "-s")
    result.assert_outcomes(passed=1)
    reads = int(result.stdout.str().split("clock reads: ")[1].split()[0])
    assert reads == 0 if clocks == "snapshots" else reads >= 1000


def test_asyncios_own_hand_off_callbacks_run_untimed(django_project: DjangoProject) -> None:
    """Every hand-off callback is found on this Python; they run without clock reads, while a
    callback of the test's own, even one named like them, is timed, and so is the check that
    cancels a worker's future once the future awaiting it was cancelled."""
    django_project.tests(
        """
        import asyncio
        import threading

        import pytest

        from pytest_djasync import watchdog

        def _set_result_unless_cancelled():  # asyncio's name, not asyncio's code
            pass

        @pytest.mark.asyncio
        async def test_steps(monkeypatch):
            reads = []
            loop_thread = threading.get_ident()
            original = watchdog._perf

            def counting():
                if threading.get_ident() == loop_thread:
                    reads.append(1)
                return original()

            monkeypatch.setattr(watchdog, "_perf", counting)
            loop = asyncio.get_running_loop()
            for _ in range(100):  # a timer that wakes the task: asyncio's, then the task's step
                await asyncio.sleep(0.0001)
            sleeping = len(reads)
            del reads[:]
            for _ in range(100):  # the test's own callback, then the task's step
                done = loop.create_future()
                loop.call_soon(_set_result_unless_cancelled)
                loop.call_soon(done.set_result, None)
                await done
            own = len(reads)
            del reads[:]
            for _ in range(100):  # a thread hop: asyncio's hand-back, then the task's step
                await loop.run_in_executor(None, int)
            hops = len(reads)
            del reads[:]
            for _ in range(100):  # a cancelled hop: cancelling the worker's future, timed
                loop.run_in_executor(None, int).cancel()
                await asyncio.sleep(0)
            print(
                f"quiet: {len(watchdog._QUIET)} sleeping: {sleeping} own: {own}"
                f" hops: {hops} cancelled: {len(reads)}"
            )
        """
    )
    result = django_project.run("--djasync", "-s")
    result.assert_outcomes(passed=1)
    line = result.stdout.str().split("quiet: ")[1].split()
    quiet, sleeping, own, hops, cancelled = (int(n) for n in line[0:10:2])
    assert 200 <= sleeping < 300  # two reads for each task step, none for asyncio's wake-ups
    assert own >= 600  # two reads for each of three steps: own callback, set_result, the task
    assert 200 <= hops < 300  # the task's steps only
    assert cancelled >= 400  # the cancel check's step and the task's
    assert quiet == 8


@pytest.mark.skipif(
    not (sys.platform == "linux" and shutil.which("taskset")), reason="needs Linux and taskset"
)
def test_cpu_taken_by_other_processes_is_not_blamed(django_project: DjangoProject) -> None:
    """Three CPU hogs share the test's only core: its steps take 4x their CPU time in wall time."""
    django_project.tests(
        """
        import asyncio
        import subprocess
        import sys
        import threading
        import time

        import pytest

        HOG = "import time\\nend = time.time() + 8\\nwhile time.time() < end: pass"

        @pytest.fixture
        def hogs():
            procs = [
                subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", HOG])
                for _ in range(3)
            ]
            yield
            for proc in procs:
                proc.kill()
                proc.wait()

        def _cpu(seconds):
            start = time.thread_time()
            while time.thread_time() - start < seconds:
                pass

        @pytest.mark.asyncio
        async def test_short_steps_on_a_crowded_core(hogs):
            for _ in range(5):
                _cpu(0.04)  # 40 ms of CPU: takes well over 100 ms of wall time here
                await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_waiting_on_a_thread_the_os_keeps_waiting(hogs):
            for _ in range(3):
                worker = threading.Thread(target=_cpu, args=(0.04,), name="starved-worker")
                worker.start()
                worker.join()  # 40 ms of its CPU, but the hogs make it wait far longer
                await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_starting_threads_beside_a_busy_one(hogs):
            # A new thread needs the CPU, which the hogs take, and the GIL, which the busy
            # thread holds: Thread.start() waits for both in the step (trial, 2 in 28 runs).
            busy = threading.Thread(target=_cpu, args=(1.5,), name="cpu-worker")
            busy.start()
            for _ in range(5):
                started = threading.Thread(target=_cpu, args=(0.001,), name="starting")
                started.start()
                await asyncio.to_thread(started.join)
            await asyncio.to_thread(busy.join)
        """
    )
    result = django_project.pytester.run(
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "pytest",
        "--djasync",
        "--djasync-block-ms=100",
        "--djasync-report=report.json",
        "-W",
        "default::pytest_djasync.errors.DjasyncWarning",
    )
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_allow_blocking_marker_and_allow_patterns(
    django_project: DjangoProject, workers: list[str]
) -> None:
    """Under pytest-xdist too: a pattern is matched in a worker, and the controller says so."""
    if workers:
        pytest.importorskip("xdist")
    django_project.module(
        "tproj/legacy.py",
        """
        import time

        def fetch():
            time.sleep(0.001)
        """,
    )
    django_project.ini("djasync_allow =\n    tproj.legacy:fetch\n    nothing.here:*")
    django_project.tests(
        """
        import time

        import pytest

        from tproj import legacy

        @pytest.mark.djasync_allow_blocking(reason="known, ticket 12")
        @pytest.mark.asyncio
        async def test_marked():
            time.sleep(0.001)

        @pytest.mark.asyncio
        async def test_allowed_by_pattern():
            legacy.fetch()

        @pytest.mark.asyncio
        async def test_not_allowed():
            time.sleep(0.001)
        """
    )
    result, report = django_project.report(*workers)
    result.assert_outcomes(passed=2, failed=1)
    [allowed] = violations(report, "test_allowed_by_pattern")
    assert allowed["allowed"] is True
    result.stdout.fnmatch_lines(["*djasync_allow pattern 'nothing.here:*' matched no finding*"])
    assert "'tproj.legacy:fetch' matched no finding" not in result.stdout.str()


def test_threshold_marker_and_opt_in_without_the_flag(django_project: DjangoProject) -> None:
    django_project.tests(
        """
        import time

        import pytest

        def _spin(seconds):
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        @pytest.mark.djasync_block_ms(2000)
        @pytest.mark.asyncio
        async def test_generous_threshold():
            _spin(0.3)

        @pytest.mark.djasync_block_ms(50)
        @pytest.mark.asyncio
        async def test_strict_threshold():
            _spin(0.3)

        @pytest.mark.asyncio
        async def test_unmarked():
            _spin(0.3)
        """
    )
    result = django_project.run()  # no --djasync: only the marked tests are watched
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_strict_threshold*", "*stall threshold 50 ms*"])


LOWER_THRESHOLD_TESTS = """
import asyncio
import time

import pytest

def _spin(seconds):  # CPU seconds: a busy machine cannot make the stall the OS's
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

@pytest.mark.djasync_block_ms(2000)
def test_generous_first():
    time.sleep(0.3)  # no loop runs; the watchdog polls and then waits a 2 s threshold out

@pytest.mark.asyncio
async def test_stalls_next():
    _spin(0.3)
    await asyncio.sleep(0)
"""


def test_a_lower_threshold_takes_effect_at_once(django_project: DjangoProject) -> None:
    """The next test's lower threshold wakes a watchdog asleep for the previous one's higher
    threshold. Left asleep, it took no sample of the stall, which was then blamed on where the
    task suspended next (a user trying the plugin saw asgiref's ``SyncToAsync.__call__``)."""
    django_project.tests(LOWER_THRESHOLD_TESTS)
    result, report = django_project.report()
    result.assert_outcomes(passed=1, failed=1)
    [stall] = violations(report, "test_stalls_next")
    assert stall["kind"] == "stall"
    line = line_of(LOWER_THRESHOLD_TESTS, "while time.thread_time() < end")
    assert stall["location"] == {"path": "test_scenario.py", "line": line, "function": "_spin"}
    assert "took no sample" not in result.stdout.str()


def test_an_unsampled_stall_is_blamed_on_user_code_or_nowhere(
    django_project: DjangoProject,
) -> None:
    """Without a sample (a C call kept the GIL, or the watchdog was not run in time), where the
    task suspended next is all that is known: the user's frame there is the best guess; a
    library's frame would be a wrong one, and would key allow patterns and baselines to it."""
    django_project.tests(
        """
        import asyncio
        import types

        from pytest_djasync import watchdog

        async def user_code():
            await asyncio.sleep(10)

        def blame(task):
            handle = asyncio.Handle(types.SimpleNamespace(__self__=task), (), task.get_loop())
            stack, location, note = watchdog._stall_stack([], handle)
            return bool(stack), location and location.function, "took no sample" in note

        def test_blame():
            async def main():
                library = asyncio.ensure_future(asyncio.sleep(10))
                user = asyncio.ensure_future(user_code())
                await asyncio.sleep(0)  # both suspended
                blamed = [blame(library), blame(user)]
                library.cancel()
                user.cancel()
                return blamed

            assert asyncio.run(main()) == [(True, None, True), (True, "user_code", True)]
        """
    )
    django_project.run("-p", "no:djasync").assert_outcomes(passed=1)


def test_own_failure_is_kept_and_xfail_on_the_plugin_works(django_project: DjangoProject) -> None:
    django_project.tests(
        """
        import time

        import pytest

        from pytest_djasync import AsyncSafetyFailure

        @pytest.mark.asyncio
        async def test_fails_on_its_own():
            time.sleep(0.001)
            assert 1 == 2

        @pytest.mark.xfail(raises=AsyncSafetyFailure, strict=True, reason="blocks the loop")
        @pytest.mark.asyncio
        async def test_expected_to_be_caught():
            time.sleep(0.001)
        """
    )
    result = django_project.run("--djasync")
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*", "*djasync*", "*blocking call time.sleep()*"])


def test_file_guard_is_opt_in(django_project: DjangoProject) -> None:
    django_project.views(
        """
        from pathlib import Path

        from django.http import HttpResponse

        async def reads(request):
            return HttpResponse(Path(__file__).read_text()[:10])
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_reads(asgi_client):
            assert (await asgi_client.get("/reads/")).status_code == 200
        """
    )
    django_project.report()[0].assert_outcomes(passed=1)
    result, report = django_project.report("--djasync-guard=default file")
    result.assert_outcomes(failed=1)
    [found] = violations(report, "test_reads")
    assert found["message"].startswith("blocking call io.open()")
    assert found["location"]["function"] == "reads"


def test_the_loops_own_selector_goes_around_the_guard_until_disarm(
    django_project: DjangoProject,
) -> None:
    """A loop calls its selector between every two steps; after the first call that selector
    has the plain method as its own attribute, and disarming takes it off again. A selector
    class with its own ``select`` over the wrapped one keeps it, and the record of bypassed
    selectors does not keep a closed loop's selector alive."""
    django_project.tests(
        """
        import asyncio
        import gc
        import selectors
        import weakref

        from pytest_djasync import guard

        class Custom(selectors.DefaultSelector):
            def select(self, timeout=None):
                return super().select(timeout)

        def run_loop_on(selector):
            loop = asyncio.SelectorEventLoop(selector)
            loop.run_until_complete(asyncio.sleep(0.01))
            loop.close()
            return selector

        def test_bypass():
            armed = guard.Guard({"select"})
            armed.arm()
            try:
                plain = run_loop_on(selectors.DefaultSelector())
                custom = run_loop_on(Custom())
                own = vars(plain).get("select")
                assert own is not None and not hasattr(own.__func__, "__wrapped__")
                assert "select" not in vars(custom)
                gone = weakref.ref(run_loop_on(selectors.DefaultSelector()))
                gc.collect()
                assert gone() is None
            finally:
                armed.disarm()
            assert "select" not in vars(plain)
        """
    )
    django_project.run().assert_outcomes(passed=1)


def test_the_loops_self_pipe_goes_around_the_guard_until_disarm(
    django_project: DjangoProject,
) -> None:
    """asyncio's self-pipe (written at every hand-off from another thread) gets the plain
    socket methods with the loop's selector, and its class back at disarm; where someone else
    patched ``recv`` under the guard, it stays in their path."""
    django_project.tests(
        """
        import asyncio
        import socket

        from pytest_djasync import guard

        def self_pipe_of_a_loop():
            async def hand_off():
                assert await asyncio.to_thread(sum, [1, 2]) == 3
                loop = asyncio.get_running_loop()
                return loop._ssock, loop._csock

            return asyncio.run(hand_off())

        def test_retyped_then_restored():
            armed = guard.Guard({"select", "socket"})
            armed.arm()
            try:
                pipe = self_pipe_of_a_loop()
                assert {type(sock) for sock in pipe} == {guard._LoopSocket}
            finally:
                armed.disarm()
            assert {type(sock) for sock in pipe} == {socket.socket}
            assert "recv" not in vars(socket.socket)

        def test_left_in_someone_elses_path(monkeypatch):
            plain = socket.socket.recv
            monkeypatch.setattr(socket.socket, "recv", lambda *args: plain(*args))
            armed = guard.Guard({"select", "socket"})
            armed.arm()
            try:
                assert {type(sock) for sock in self_pipe_of_a_loop()} == {socket.socket}
            finally:
                armed.disarm()
        """
    )
    django_project.run().assert_outcomes(passed=2)


def test_the_guard_patches_each_target_once_and_restores_it_exactly(
    django_project: DjangoProject,
) -> None:
    django_project.tests(
        """
        import selectors

        import requests  # so that every target's module is imported

        from pytest_djasync import guard

        def test_arm_and_disarm():
            targets = [t for t in guard.TARGETS if t.group != "file"]
            owners = {t: guard.owner_of(t) for t in targets}
            before = {t: dict(vars(owner)) for t, owner in owners.items() if owner is not None}
            armed = guard.Guard({t.group for t in targets})
            armed.arm()
            assert "select" not in vars(selectors.PollSelector)  # it reaches the base's wrapper
            wrapped = {
                t for t, owner in owners.items()
                if owner is not None and vars(owner).get(t.attr) is not before[t].get(t.attr)
            }
            armed.disarm()
            after = {t: dict(vars(owner)) for t, owner in owners.items() if owner is not None}
            assert after == before
            names = {f"{t.owner or t.module}.{t.attr}" for t in wrapped}
            assert "EpollSelector.select" in names and "_PollLikeSelector.select" in names
            assert "time.sleep" in names and "Session.send" in names
        """
    )
    django_project.run().assert_outcomes(passed=1)


def test_imports_are_set_aside_only_while_the_session_is_watched(
    django_project: DjangoProject,
) -> None:
    django_project.module(
        "conftest.py",
        """
        import importlib._bootstrap
        import pathlib

        ORIGINAL = importlib._bootstrap._find_and_load

        def pytest_unconfigure(config):
            restored = importlib._bootstrap._find_and_load is ORIGINAL
            pathlib.Path("restored.txt").write_text(str(restored))
        """,
    )
    django_project.tests(
        """
        import importlib._bootstrap

        def test_wrapped():
            assert importlib._bootstrap._find_and_load.__wrapped__ is not None
        """
    )
    django_project.run("--djasync").assert_outcomes(passed=1)
    assert (django_project.path / "restored.txt").read_text() == "True"


def test_a_library_imported_mid_test_is_guarded_at_once(django_project: DjangoProject) -> None:
    """The guard wraps requests the moment it is imported, not from the next test on."""
    django_project.module("conftest.py", UPSTREAM)
    django_project.tests(
        """
        import sys

        import pytest

        @pytest.mark.asyncio
        async def test_imports_and_calls(upstream):
            assert "requests" not in sys.modules
            import requests

            requests.get(upstream, timeout=5)
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(failed=1)
    [only] = violations(report, "test_imports_and_calls")
    assert only["message"].startswith("blocking call requests.Session.send()"), only["message"]


def test_time_at_a_debugger_prompt_is_no_stall(django_project: DjangoProject) -> None:
    """``breakpoint()`` in an async test: the loop waits at the prompt for as long as the user
    reads, and pdb's ``continue`` takes its trace function away before the step ends."""
    django_project.tests(
        """
        import time

        import pytest

        @pytest.mark.asyncio
        async def test_paused():
            breakpoint()
            assert True

        @pytest.mark.asyncio
        async def test_still_watched():
            time.sleep(0.001)
        """
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--djasync"]
    process = subprocess.Popen(
        [*command, "--djasync-report=report.json"],
        cwd=django_project.path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + 60
    while b"(Pdb)" not in seen and time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 1)[0]:
            seen += os.read(process.stdout.fileno(), 4096) or b""
    assert b"(Pdb)" in seen, seen.decode(errors="replace")
    time.sleep(0.5)  # the user reads the prompt: five thresholds
    output, _ = process.communicate(b"c\n", timeout=120)
    assert process.returncode == 1, (seen + output).decode(errors="replace")
    report = json.loads((django_project.path / "report.json").read_text())
    assert violations(report, "test_paused") == []
    [blocking] = violations(report, "test_still_watched")
    assert blocking["kind"] == "blocking-call"


def test_a_stall_under_a_tracer_says_so(django_project: DjangoProject) -> None:
    """Coverage's tracer makes Python code several times slower: a stall measured under one
    (here a trace function of the test's own, still set when the step ends) says so."""
    django_project.tests(
        """
        import asyncio
        import sys
        import time

        import pytest

        def _trace(frame, event, arg):
            return None

        @pytest.mark.djasync_block_ms(50)
        @pytest.mark.asyncio
        async def test_traced():
            sys.settrace(_trace)
            end = time.thread_time() + 0.3
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0)  # the step ends here, the tracer still set
            sys.settrace(None)

        @pytest.mark.djasync_block_ms(50)
        @pytest.mark.asyncio
        async def test_untraced():
            end = time.thread_time() + 0.3
            while time.thread_time() < end:
                pass
        """
    )
    _, report = django_project.report()
    [traced] = violations(report, "test_traced")
    assert traced["kind"] == "stall"
    assert "a tracer ran on this thread (test_scenario)" in traced["note"], traced["note"]
    [untraced] = violations(report, "test_untraced")
    assert "tracer" not in (untraced["note"] or "")


def test_an_error_of_a_guarded_call_is_shown_from_the_users_line(
    django_project: DjangoProject,
) -> None:
    """The guard's wrapper frames are hidden from pytest's tracebacks: an error raised by the
    blocking call (a timeout, a refused connection) reads as without the plugin."""
    django_project.tests(
        """
        import time

        import pytest

        @pytest.mark.asyncio
        async def test_bad_sleep():
            time.sleep(-1)
        """
    )
    result = django_project.run("--djasync", "--tb=long")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: sleep length must be non-negative*"])
    assert "guard.py" not in result.stdout.str()


def test_a_step_timer_someone_wrapped_is_reused_not_wrapped_again(
    django_project: DjangoProject,
) -> None:
    """aiodebug wraps ``Handle._run`` over ours in one marked test; ours stays inside theirs when
    the test's watch stops. The next marked test's watch used to wrap theirs again, and theirs
    called ours, which called theirs: RecursionError, or a hang inside ``asyncio.run``."""
    django_project.tests(
        """
        import asyncio

        import pytest

        from pytest_djasync import watchdog


        def slow_callback_logger():  # what aiodebug.log_slow_callbacks.enable() does
            run = asyncio.Handle._run

            def instrumented(self):
                return run(self)

            asyncio.Handle._run = instrumented


        async def timed():
            return watchdog.current_step() is not None


        def run(coroutine):
            loop = asyncio.new_event_loop()
            try:
                return loop.run_until_complete(coroutine)
            finally:
                loop.close()


        @pytest.mark.djasync_block_ms(100)
        def test_first():
            slow_callback_logger()
            assert run(timed())


        @pytest.mark.djasync_block_ms(100)
        def test_second():
            assert run(timed())  # still timed, through their wrapper


        def test_unwatched():
            assert not run(timed())
        """
    )
    result = django_project.run("-p", "no:randomly")  # no --djasync: one watch per marked test
    result.assert_outcomes(passed=3)


def test_an_error_raised_outside_the_test_is_not_shown_from_the_plugin(
    django_project: DjangoProject,
) -> None:
    """A timeout's signal raised while the loop waits in select (pytest-timeout's signal
    method) has no frame of the test: its traceback starts at the runner, not at the plugin's
    hook wrapper, as it does without the plugin (trial, 3/3)."""
    django_project.module(
        "timeouts.py",
        """
        import signal


        def _expire(*args):
            raise RuntimeError("timed out")


        def arm():
            signal.signal(signal.SIGALRM, _expire)
            signal.setitimer(signal.ITIMER_REAL, 0.2)
        """,
    )
    django_project.tests(
        """
        import asyncio

        import pytest

        from timeouts import arm

        @pytest.mark.asyncio
        async def test_hangs():
            arm()
            await asyncio.sleep(5)
        """
    )
    result = django_project.run("--djasync")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: timed out"])
    result.stdout.no_fnmatch_line("*pytest_djasync*")


def test_a_thread_start_split_between_the_gil_and_the_run_queue_is_excused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop's step starts a thread that needs the CPU (other processes have it) and the
    GIL (a busy thread of ours has it): neither half alone covers the step, together they do
    (a clean suite under load, 2 stalls in 28 runs). A watchdog that first looked after the
    step saw no neighbour at all, and cites none ("kept off the CPU for 0 ms")."""
    monkeypatch.setattr(watchdog, "_run_queue_waits", dict)  # only what the step recorded
    step = watchdog._Step()
    step.close()
    end = 10.0
    step.suspect_at = end - 0.060  # the watchdog watched the step's last 60 ms
    step.suspect_waits = {4242: ("ThreadPoolExecutor-0_1", 1.000)}
    step.latest_waits = {4242: ("ThreadPoolExecutor-0_1", 1.020)}  # 20 ms in the run queue
    blocked = 0.070

    excuse = watchdog._starved_neighbour(step, end, blocked, other_cpu=0.029)
    assert excuse is not None
    assert "thread 'ThreadPoolExecutor-0_1', which the OS kept off the CPU for 20 ms" in excuse[1]
    assert " while other threads ran for 29 ms (an overloaded machine)" in excuse[1]
    # the GIL's share alone is a note of its own (checked before); the run queue's, too small
    assert watchdog._starved_neighbour(step, end, blocked, other_cpu=0.005) is None
    # 40 of the 60 ms watched: the run queue alone, as before
    step.latest_waits = {4242: ("ThreadPoolExecutor-0_1", 1.040)}
    excuse = watchdog._starved_neighbour(step, end, blocked, other_cpu=0.0)
    assert excuse is not None
    assert "ran for" not in excuse[1]
    # the watchdog's first look came after the step: it saw nothing to cite
    step.suspect_at = end + 0.0006
    assert watchdog._starved_neighbour(step, end, blocked, other_cpu=0.029) is None


def test_a_step_spent_in_thread_start_is_the_new_threads_start_up() -> None:
    """asgiref's ThreadSensitiveContext.__aexit__ starts a thread in a loop step; with every
    core taken, Thread.start() waited 489 ms for it to run (a clean suite under four hogs).
    A thread that never ran has no run-queue wait to read: the samples show the wait."""
    import threading as threads

    def frame(path: str, function: str) -> findings.Frame:
        return findings.Frame(path, 1, function, "")

    starting = (
        frame("/srv/app/.venv/lib/python3.11/site-packages/asgiref/sync.py", "__aexit__"),
        frame(threads.__file__, "Thread.start"),
        frame(threads.__file__, "Event.wait"),
    )
    elsewhere = (frame("/srv/app/shop/views.py", "digest"),)
    step = watchdog._Step()
    step.close()
    step.samples = [starting] * 9 + [elsewhere]
    excuse = watchdog._starting_a_thread(step, 0.489)
    assert excuse is not None
    assert "waited 489 ms in Thread.start() for a thread it started" in excuse[1]
    step.samples = [starting] * 4 + [elsewhere] * 6  # mostly somewhere else: no excuse
    assert watchdog._starting_a_thread(step, 0.489) is None
    step.samples = []
    assert watchdog._starting_a_thread(step, 0.489) is None


def test_the_plugins_own_wrapper_is_never_a_findings_location() -> None:
    """Installed, the plugin is in site-packages like any package; a stall with no project
    frame was located in its request-naming wrapper (djangohooks.py), which says nothing."""
    site = "/srv/app/.venv/lib/python3.11/site-packages"
    stack = (
        findings.Frame(f"{site}/django/core/handlers/asgi.py", 1, "ASGIHandler.__call__", ""),
        findings.Frame(f"{site}/pytest_djasync/djangohooks.py", 40, "__call__", ""),
        findings.Frame(f"{site}/asgiref/sync.py", 207, "__aexit__", ""),
    )
    assert findings.user_frame(stack) == stack[-1]
    with_a_package = (*stack[:2], findings.Frame(f"{site}/ninja/operation.py", 9, "run", ""))
    assert findings.user_frame(with_a_package) == with_a_package[-1]


def test_an_installed_packages_pattern_excuses_its_own_blocking_not_the_views_it_wraps(
    django_project: DjangoProject,
) -> None:
    """A toolbar's or an error tracker's middleware is on every request's stack (trial: with
    `debug_toolbar.*:*` allowed, every planted bug of the project passed; with an error
    tracker's pattern listed first, it excused the toolbar's own blocking, and the toolbar's
    pattern was called unused)."""
    django_project.installed(
        {
            "outerkit/__init__.py": """
                from asgiref.sync import markcoroutinefunction

                class Outer:  # an error tracker's: around everything
                    def __init__(self, get_response):
                        self.get_response = get_response
                        markcoroutinefunction(self)

                    async def __call__(self, request):
                        return await self.get_response(request)

                    async_capable = True
                    sync_capable = False
                """,
            "wrapkit/__init__.py": "",
            "wrapkit/middleware.py": """
                import time

                from asgiref.sync import iscoroutinefunction, markcoroutinefunction

                class Wrap:
                    async_capable = True
                    sync_capable = False

                    def __init__(self, get_response):
                        self.get_response = get_response
                        markcoroutinefunction(self)

                    async def __call__(self, request):
                        if request.path == "/own/":
                            time.sleep(0.001)  # the package's own blocking
                        return await self.get_response(request)
                """,
        }
    )
    django_project.settings('MIDDLEWARE = ["outerkit.Outer", "wrapkit.middleware.Wrap"]')
    django_project.views(
        """
        import time

        from django.http import HttpResponse

        async def own(request):
            return HttpResponse("ok")

        async def slow(request):
            time.sleep(0.001)
            return HttpResponse("ok")
        """
    )
    django_project.ini("djasync_allow =\n    outerkit:*\n    wrapkit.*:*\n    tproj.views:own")
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_own(asgi_client):
            assert (await asgi_client.get("/own/")).status_code == 200

        @pytest.mark.asyncio
        async def test_slow(asgi_client):
            assert (await asgi_client.get("/slow/")).status_code == 200
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(passed=1, failed=1)
    [own] = violations(report, "test_own")
    assert own["allowed_by"] == "wrapkit.*:*"
    [slow] = violations(report, "test_slow")
    assert slow["allowed_by"] is None
    assert slow["location"]["function"] == "slow"
    result.stdout.fnmatch_lines(["*djasync_allow pattern 'outerkit:*' matched no finding*"])
    result.stdout.fnmatch_lines(["*djasync_allow pattern 'tproj.views:own' matched no finding*"])


def test_a_findings_stack_leaves_out_the_plugins_own_frames(django_project: DjangoProject) -> None:
    """The request-naming wrapper around Django's handler was a frame of every stack of a
    request sent by Django's AsyncClient (trial: the docs say the stack runs from the loop step
    to the blocking line)."""
    django_project.views(
        """
        import time

        from django.http import HttpResponse

        async def slow(request):
            time.sleep(0.001)
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_slow(async_client):
            await async_client.get("/slow/")
        """
    )
    result, report = django_project.report("-v")
    [finding] = violations(report, "test_slow")
    paths = [frame["path"] for frame in finding["stack"]]
    assert paths[-1].endswith("tproj/views.py"), paths
    assert not [path for path in paths if "pytest_djasync" in path], paths
    assert "djangohooks.py" not in result.stdout.str()


def test_password_hashing_on_the_loop_is_told_how_to_hash_off_it(
    django_project: DjangoProject,
) -> None:
    """Django's acreate_user hashes on the loop: the generic "asyncio.to_thread or
    thread_sensitive=False" fix, followed, wrote the user outside the test's transaction
    (trial: rows leaked into later tests), and named neither Django's method nor the hasher."""
    if django.VERSION < (5, 1):
        pytest.skip("UserManager.acreate_user is Django 5.1+")
    django_project.tests(
        """
        import pytest
        from asgiref.sync import sync_to_async
        from django.contrib.auth.models import User

        @pytest.mark.asyncio
        async def test_make_user(db):
            await User.objects.acreate_user("ada", password="a long enough password")

        @pytest.mark.asyncio
        async def test_follow_the_fix(db):
            await sync_to_async(User.objects.create_user)("ada", password="a long password")
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(passed=1, failed=1)
    [stall] = [v for v in violations(report, "test_make_user") if v["kind"] == "stall"]
    assert stall["location"]["function"] == "test_make_user"
    assert re.search(r"password hashing .* in Django's (UserManager\.)?acreate_user", stall["fix"])
    assert "sync_to_async(User.objects.create_user)" in stall["fix"]
    assert "MD5PasswordHasher" in stall["fix"]


def test_password_hashing_in_alogin_is_told_the_sync_login() -> None:
    """Django 5.x's alogin hashes on the loop too; its sync twin is the client's login, not
    create_user (re-check of the trial)."""
    site = "/srv/app/.venv/lib/python3.11/site-packages"
    stack = (
        findings.Frame("/srv/app/tests/test_login.py", 9, "test_login", "tests.test_login"),
        findings.Frame(f"{site}/django/test/client.py", 1, "ClientMixin.alogin", "django.test"),
        findings.Frame(f"{site}/django/contrib/auth/hashers.py", 1, "verify_password", "x"),
    )
    fix = watchdog.stall_fix(stack)
    assert "in Django's ClientMixin.alogin" in fix
    assert "await sync_to_async(client.login)(...)" in fix


def test_a_frozen_clock_does_not_blind_the_watchdog(django_project: DjangoProject) -> None:
    """freezegun swaps every module attribute that is a real clock for its fake while a freeze
    is on (trial: a 300 ms stall under freeze_time passed unseen, a blocking call took "0 ms",
    and a clean test was told the loop was off the CPU for 54 years)."""
    pytest.importorskip("freezegun")
    django_project.tests(
        """
        import asyncio
        import time

        import httpx
        import pytest
        from freezegun import freeze_time

        from pytest_djasync import latency

        TLS = httpx.create_ssl_context()

        def _spin(seconds):  # CPU seconds: freezegun leaves the thread's CPU clock alone
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass

        @pytest.mark.asyncio
        async def test_stall():
            with freeze_time("2024-01-01"):
                _spin(0.3)
                await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_sleep():
            with freeze_time("2024-01-01"):
                time.sleep(0.15)

        @pytest.mark.asyncio
        async def test_clean():
            with freeze_time("2024-01-01"):
                await asyncio.sleep(0)

        @pytest.mark.asyncio
        @pytest.mark.djasync_fanout(3)
        async def test_fanout(respx_mock):
            respx_mock.route(host="api.test").mock(side_effect=latency(0.05))
            with freeze_time("2024-01-01", real_asyncio=True):
                async with httpx.AsyncClient(verify=TLS) as client:
                    await asyncio.gather(*(client.get(f"https://api.test/{n}") for n in "abc"))
        """
    )
    result, report = django_project.report("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=2)
    [stall] = violations(report, "test_stall")
    assert stall["kind"] == "stall"
    assert stall["duration_ms"] >= 200, stall
    [sleep] = violations(report, "test_sleep")
    assert sleep["what"] == "time.sleep"
    assert sleep["duration_ms"] >= 100, sleep
    assert "DjasyncWarning" not in result.stdout.str()
