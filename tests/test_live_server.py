"""``live_asgi_server``: uvicorn serving a real Django project, driven over real sockets.

Each test writes a project and its inner suite and runs it in a subprocess, so the server's
thread, its event loop and its port live and die with that process. Nothing here waits on a
clock: the streaming view waits for an event the test sets, and stalls are made far longer
than the threshold.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import DjangoProject, line_of, violations

VIEWS = """
import asyncio
import json
import threading
import time

from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from tproj.models import Item

release = threading.Event()  # set by the inner test once it holds the first chunk


async def hello(request):
    return HttpResponse("hello async")


def plain(request):
    return HttpResponse("hello sync")


async def echo_json(request):
    return JsonResponse({"method": request.method, "got": json.loads(request.body)})


async def two_chunks(request):
    async def chunks():
        yield b"chunk-1"
        await sync_to_async(release.wait, thread_sensitive=False)(10)
        yield b"chunk-2"

    return StreamingHttpResponse(chunks())


async def sleeps(request):
    time.sleep(0.01)
    return HttpResponse("slept")


def _spin(seconds):
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


async def spins(request):
    _spin(0.5)
    return HttpResponse("spun")


async def endless(request):
    async def chunks():
        yield b"first"
        await asyncio.Event().wait()  # never set: only the server stopping ends this

    return StreamingHttpResponse(chunks())


async def crosses(request):
    await sync_to_async(lambda: None)()
    return HttpResponse("crossed")


async def names(request):
    return JsonResponse({"names": [item.name async for item in Item.objects.order_by("name")]})


def names_sync(request):
    names = Item.objects.order_by("name").values_list("name", flat=True)
    return JsonResponse({"names": list(names)})
"""


@pytest.fixture
def project(django_project: DjangoProject) -> DjangoProject:
    pytest.importorskip("uvicorn", reason="pip install 'pytest-djasync[live]'")
    django_project.views(VIEWS)
    return django_project


def test_get_and_post_with_sync_and_async_httpx_clients(project: DjangoProject) -> None:
    project.tests(
        """
        import httpx
        import pytest

        TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms

        def test_sync_client(live_asgi_server):
            assert live_asgi_server.url.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=live_asgi_server.url) as client:
                assert client.get("/hello/").text == "hello async"
                assert client.get("/plain/").text == "hello sync"
                response = client.post("/echo_json/", json={"a": [1, 2]})
                assert response.json() == {"method": "POST", "got": {"a": [1, 2]}}
                assert client.get("/missing/").status_code == 404

        @pytest.mark.asyncio
        async def test_async_client(live_asgi_server):
            async with httpx.AsyncClient(verify=TLS) as client:
                response = await client.get(live_asgi_server + "/hello/")
                assert response.text == "hello async"
                assert response.headers["server"] == "uvicorn"
        """
    )
    result, report = project.report("-v")
    result.assert_outcomes(passed=2)
    assert all(entry["violations"] == [] for entry in report["tests"])


def test_streaming_response_read_from_a_plain_socket(project: DjangoProject) -> None:
    """The view holds chunk 2 back until the test, holding chunk 1, releases it: a server that
    buffered the body would make the test time out instead."""
    project.tests(
        """
        import socket
        from urllib.parse import urlsplit

        from tproj import views

        def read_until(sock, data, marker):
            while marker not in data:
                more = sock.recv(4096)
                assert more, data
                data += more
            return data

        def test_chunks_arrive_one_by_one(live_asgi_server):
            url = urlsplit(live_asgi_server.url)
            with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
                sock.sendall(
                    b"GET /two_chunks/ HTTP/1.1\\r\\n"
                    b"Host: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n"
                )
                data = read_until(sock, b"", b"chunk-1")
                assert b"chunk-2" not in data
                assert data.startswith(b"HTTP/1.1 200 OK\\r\\n")
                assert b"transfer-encoding: chunked" in data.lower()
                views.release.set()
                data = read_until(sock, data, b"0\\r\\n\\r\\n")
                assert b"chunk-2" in data
                assert sock.recv(4096) == b""  # Connection: close
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=1)
    assert violations(report, "test_chunks_arrive_one_by_one") == []


BLOCKING_TESTS = """
import httpx
import pytest

TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms


def test_1_sleeps(live_asgi_server):
    assert httpx.get(live_asgi_server + "/sleeps/").text == "slept"


@pytest.mark.asyncio
async def test_2_spins(live_asgi_server):
    async with httpx.AsyncClient(verify=TLS) as client:
        assert (await client.get(live_asgi_server + "/spins/")).text == "spun"


def test_3_clean_afterwards(live_asgi_server):
    assert httpx.get(live_asgi_server + "/hello/").text == "hello async"
"""


def test_a_view_blocking_the_server_loop_fails_the_test_that_requested_it(
    project: DjangoProject,
) -> None:
    project.tests(BLOCKING_TESTS)
    result, report = project.report("-p", "no:randomly")
    outcomes = {entry["nodeid"].split("::")[-1]: entry["outcome"] for entry in report["tests"]}
    assert outcomes["test_1_sleeps"] == "failed"
    # A stall is judged when the server's loop step ends, which may be after the client has
    # its response: without ``LiveServer.settle`` at the end of the call, it fails the teardown.
    assert outcomes["test_2_spins"] in ("failed", "error")
    assert outcomes["test_3_clean_afterwards"] == "passed"

    [sleep] = violations(report, "test_1_sleeps")
    assert sleep["kind"] == "blocking-call"
    assert sleep["message"].startswith("blocking call time.sleep()")
    line = line_of(VIEWS, "time.sleep(0.01)")
    assert sleep["location"] == {"path": "tproj/views.py", "line": line, "function": "sleeps"}
    assert sleep["request"] == "GET /sleeps/"

    [stall] = violations(report, "test_2_spins")
    assert stall["kind"] == "stall"
    line = line_of(VIEWS, "while time.perf_counter() < deadline")
    assert stall["location"] == {"path": "tproj/views.py", "line": line, "function": "_spin"}
    assert stall["request"] == "GET /spins/"
    assert violations(report, "test_3_clean_afterwards") == []
    result.stdout.fnmatch_lines(
        [
            "1. blocking call time.sleep() for * ms on the event loop at tproj/views.py:*",
            "*while serving: GET /sleeps/",
            "*thread: djasync-live-server",
        ]
    )


def test_crossings_made_while_serving_count_for_the_test(project: DjangoProject) -> None:
    project.tests(
        """
        import httpx

        def test_crossing(live_asgi_server):
            assert httpx.get(live_asgi_server + "/crosses/").text == "crossed"
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=1)
    [entry] = report["tests"]
    assert entry["crossings"]["total"] > 0
    assert entry["crossings"]["by_request"].get("GET /crosses/", 0) > 0


SEEDED_TESTS = """
import httpx
import pytest

from tproj.models import Item

TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms


@pytest.fixture
def seeded(db):
    Item.objects.create(name="seed")


@pytest.mark.parametrize("view", ["names", "names_sync"])
def test_1_sync_test_sees_its_rows(live_asgi_server, seeded, view):
    response = httpx.get(f"{live_asgi_server}/{view}/")
    assert response.json() == {"names": ["seed"]}


@pytest.mark.asyncio
async def test_2_async_test_sees_its_rows(live_asgi_server, seeded):
    async with httpx.AsyncClient(verify=TLS, base_url=live_asgi_server.url) as client:
        assert (await client.get("/names/")).json() == {"names": ["seed"]}
        await Item.objects.acreate(name="more")
        assert (await client.get("/names_sync/")).json() == {"names": ["more", "seed"]}


def test_3_rows_were_rolled_back(live_asgi_server, db):
    assert httpx.get(f"{live_asgi_server}/names/").json() == {"names": []}
"""


def test_the_server_sees_the_tests_rows(project: DjangoProject, database: str) -> None:
    project.tests(SEEDED_TESTS)
    result, report = project.report("-p", "no:randomly")
    result.assert_outcomes(passed=4)
    assert all(entry["violations"] == [] for entry in report["tests"])
    output = result.stdout.str() + result.stderr.str()
    assert "being accessed by other users" not in output


def test_a_few_hundred_concurrent_requests(project: DjangoProject) -> None:
    project.tests(
        """
        import asyncio

        import httpx
        import pytest

        TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms

        @pytest.mark.asyncio
        async def test_load(live_asgi_server):
            gate = asyncio.Semaphore(50)
            limits = httpx.Limits(max_connections=50)

            url = live_asgi_server.url
            async with httpx.AsyncClient(verify=TLS, base_url=url, limits=limits) as client:

                async def one(n):
                    async with gate:
                        response = await client.get("/hello/", params={"n": n})
                        return response.status_code, response.text

                answers = await asyncio.gather(*(one(n) for n in range(300)))
            assert answers == [(200, "hello async")] * 300
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=1)
    assert violations(report, "test_load") == []


def test_the_server_accepts_its_own_host_name(project: DjangoProject) -> None:
    """DEBUG off and no ALLOWED_HOSTS: like ``live_server``, the server's host is allowed."""
    project.settings("ALLOWED_HOSTS = []")
    project.tests(
        """
        import httpx

        def test_it(live_asgi_server):
            assert httpx.get(live_asgi_server + "/hello/").status_code == 200
        """
    )
    project.run().assert_outcomes(passed=1)


STOP_CONFTEST = """
import json
import socket
import threading
from pathlib import Path

import pytest

PORT = Path("port.txt")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    port = int(PORT.read_text())
    with socket.socket() as probe:
        refused = probe.connect_ex(("127.0.0.1", port)) != 0
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
    threads = [t.name for t in threading.enumerate() if t.name == "djasync-live-server"]
    Path("stopped.json").write_text(json.dumps({"refused": refused, "threads": threads}))
"""


def test_the_server_stops_cleanly_at_session_end(project: DjangoProject) -> None:
    """Even with a keep-alive connection and a streaming response left open by the test."""
    project.module("conftest.py", STOP_CONFTEST)
    project.tests(
        """
        import socket
        import threading
        from urllib.parse import urlsplit

        import httpx

        from conftest import PORT

        LEFT_OPEN = []

        def test_it(live_asgi_server):
            url = urlsplit(live_asgi_server.url)
            PORT.write_text(str(url.port))
            client = httpx.Client()  # never closed: an idle keep-alive connection
            assert client.get(live_asgi_server + "/hello/").status_code == 200
            sock = socket.create_connection((url.hostname, url.port), timeout=10)
            LEFT_OPEN.append(sock)  # never closed, never released: the view waits forever
            sock.sendall(b"GET /endless/ HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
            data = b""
            while b"first" not in data:
                more = sock.recv(4096)
                assert more, data
                data += more
            live_asgi_server.settle(0.2)  # gives up on the endless request...
            live_asgi_server.settle()  # ...once: the next wait is not held up by it
            names = [t.name for t in threading.enumerate()]
            assert names.count("djasync-live-server") == 1
        """
    )
    project.run("--djasync").assert_outcomes(passed=1)
    stopped = json.loads((project.path / "stopped.json").read_text())
    assert stopped == {"refused": True, "threads": []}


def test_a_startup_failure_shows_uvicorn_error(project: DjangoProject) -> None:
    project.tests(
        """
        import socket
        import threading

        import pytest

        from pytest_djasync.live import LiveServer, StartupError

        def test_port_taken():
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                port = taken.getsockname()[1]
                server = LiveServer(port=port)
                with pytest.raises(StartupError) as failure:
                    server.start()
            message = str(failure.value)
            where = f"127.0.0.1:{port}"
            assert message.startswith(f"live_asgi_server: uvicorn could not start on {where}: ")
            assert "error while attempting to bind on address" in message
            assert "address already in use" in message
            assert "djasync-live-server" not in [t.name for t in threading.enumerate()]
        """
    )
    project.run("--djasync").assert_outcomes(passed=1)


def test_without_uvicorn_the_message_names_the_extra(django_project: DjangoProject) -> None:
    project = django_project
    project.module("conftest.py", "import sys\n\nsys.modules['uvicorn'] = None\n")
    project.tests(
        """
        def test_it(live_asgi_server):
            pass
        """
    )
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_it*",
            "live_asgi_server needs uvicorn: pip install uvicorn"
            " (the 'live' extra of pytest-djasync)",
            "*short test summary info*",
        ]
    )


def test_only_loopback_is_bound(project: DjangoProject) -> None:
    project.tests(
        """
        from pytest_djasync.live import HOST

        def test_it(live_asgi_server):
            [sock] = live_asgi_server._sockets
            assert sock.getsockname()[0] == HOST == "127.0.0.1"
        """
    )
    project.run().assert_outcomes(passed=1)


def test_without_the_db_thread_transactional_db_shares_rows(
    project: DjangoProject, database: str
) -> None:
    """A plain run, as with pytest-django's ``live_server``: committed rows are seen."""
    project.tests(
        """
        import httpx

        from tproj.models import Item

        def test_it(live_asgi_server, transactional_db):
            Item.objects.create(name="committed")
            response = httpx.get(f"{live_asgi_server}/names_sync/")
            assert response.json() == {"names": ["committed"]}
        """
    )
    result = project.run()
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "being accessed by other users" not in output
