"""Fan-out checks: ``djasync_fanout`` tells a real fan-out from calls that only look like one.

Each test builds a real Django project, drives its views with ``asgi_client`` in a subprocess,
and mocks the outbound API with respx and ``pytest_djasync.latency`` (or serves it from a real
HTTP server on 127.0.0.1). Every assertion is structural, never a timing:

* calls started by ``asyncio.gather`` or a ``TaskGroup`` all record their start in one loop
  step, and every answer (a timer, a socket read) arrives in a later step, so every start
  precedes every end however slow the machine is; calls awaited one after another, queued on
  one thread-sensitive executor or behind a semaphore of 2 never overlap more than 1 or 2;
* where threads must overlap, the mock answers only once all of them are in flight (a barrier)
  instead of hoping that a sleep is long enough.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

import pytest_djasync
from pytest_djasync import fanout
from tests.conftest import DjangoProject, line_of

# The outbound API lives at {base}a, {base}b, ...: respx mocks https://api.test/ unless a test
# passes ?base=... (the real server's address).
VIEWS = """
import asyncio

import httpx
from asgiref.sync import sync_to_async
from django.http import HttpResponse

TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms


def _urls(request, count=3):
    base = request.GET.get("base", "https://api.test/")
    return [base + name for name in "abcd"[:count]]


async def gathered(request):
    async with httpx.AsyncClient(verify=TLS) as client:
        await asyncio.gather(*(client.get(url) for url in _urls(request)))
    return HttpResponse("ok")


async def sequential(request):
    async with httpx.AsyncClient(verify=TLS) as client:
        for url in _urls(request):
            await client.get(url)
    return HttpResponse("ok")


async def task_group(request):
    async with httpx.AsyncClient(verify=TLS) as client, asyncio.TaskGroup() as group:
        for url in _urls(request):
            group.create_task(client.get(url))
    return HttpResponse("ok")


async def limited(request):
    limit = asyncio.Semaphore(2)

    async def fetch(client, url):
        async with limit:
            await client.get(url)

    async with httpx.AsyncClient(verify=TLS) as client:
        await asyncio.gather(*(fetch(client, url) for url in _urls(request, count=4)))
    return HttpResponse("ok")


async def pool_capped(request):
    # One connection: the three requests queue for it inside httpx, however they were started.
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
        await asyncio.gather(*(client.get(url) for url in _urls(request)))
    return HttpResponse("ok")


async def traced(request):
    events = []

    async def trace(name, info):
        events.append(name)

    async with httpx.AsyncClient() as client:
        response = await client.get(_urls(request)[0], extensions={"trace": trace})
    assert response.request.extensions["trace"] is trace
    return HttpResponse(str(len(events)))


def _fetch_with_httpx_client(url):
    with httpx.Client() as client:
        client.get(url)


async def sync_default(request):
    fetch = sync_to_async(_fetch_with_httpx_client)
    await asyncio.gather(*(fetch(url) for url in _urls(request)))
    return HttpResponse("ok")


async def sync_not_thread_sensitive(request):
    fetch = sync_to_async(_fetch_with_httpx_client, thread_sensitive=False)
    await asyncio.gather(*(fetch(url) for url in _urls(request)))
    return HttpResponse("ok")


async def quiet(request):
    return HttpResponse("ok")


async def awaited_tasks(request):
    # A task per call, each awaited as soon as it is created: a finished task's id() is free
    # for the next one.
    async with httpx.AsyncClient(verify=TLS) as client:
        for url in _urls(request):
            await asyncio.create_task(client.get(url))
    return HttpResponse("ok")


async def locked(request):
    lock = asyncio.Lock()

    async def fetch(client, url):
        async with lock:
            await client.get(url)

    async with httpx.AsyncClient(verify=TLS) as client:
        await asyncio.gather(*(fetch(client, url) for url in _urls(request)))
    return HttpResponse("ok")


async def sync_then_sequential(request):
    first, *rest = _urls(request)
    await sync_to_async(_fetch_with_httpx_client)(first)
    async with httpx.AsyncClient(verify=TLS) as client:
        for url in rest:
            await client.get(url)
    return HttpResponse("ok")


async def sync_on_the_loop(request):
    first, second = _urls(request, count=2)
    _fetch_with_httpx_client(first)  # a sync client, on the loop
    async with httpx.AsyncClient(verify=TLS) as client:
        await client.get(second)
    return HttpResponse("ok")


async def gather_then_one(request):
    a, b, c = _urls(request)
    async with httpx.AsyncClient(verify=TLS) as client:
        await asyncio.gather(client.get(a), client.get(b))
        await client.get(c)
    return HttpResponse("ok")


async def held_back(request):
    # The third call of the gather waits for a lock released once the first two are answered.
    a, b, c = _urls(request)
    lock = asyncio.Lock()
    await lock.acquire()
    async with httpx.AsyncClient(verify=TLS) as client:

        async def first_two():
            try:
                await asyncio.gather(client.get(a), client.get(b))
            finally:
                lock.release()

        async def after_the_lock():
            async with lock:
                await client.get(c)

        await asyncio.gather(first_two(), after_the_lock())
    return HttpResponse("ok")


async def retried(request):
    async def fetch(client, url):
        for _ in range(3):
            response = await client.get(url)
            if response.status_code != 503:
                return

    async with httpx.AsyncClient(verify=TLS) as client:
        await asyncio.gather(*(fetch(client, url) for url in _urls(request)))
    return HttpResponse("ok")


async def _get(client, url):
    return await client.get(url)


async def seq_loop(request):
    async with httpx.AsyncClient(verify=TLS) as client:
        for url in _urls(request):
            await _get(client, url)
    return HttpResponse("ok")
"""

CONFTEST = """
import http.server
import threading
import time

import httpx
import pytest

from pytest_djasync import latency


@pytest.fixture
def api(respx_mock):
    respx_mock.route(host="api.test").mock(side_effect=latency(0.05))
    return respx_mock


@pytest.fixture
def api_all_at_once(respx_mock):
    # Answers once three requests are waiting: they overlap by construction, not by timing.
    everyone_in = threading.Barrier(3, timeout=30)

    def answer(request):
        everyone_in.wait()
        return httpx.Response(200)

    respx_mock.route(host="api.test").mock(side_effect=answer)
    return respx_mock


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()
    server.server_close()
"""


@pytest.fixture
def project(django_project: DjangoProject) -> DjangoProject:
    django_project.views(VIEWS)
    django_project.module("conftest.py", CONFTEST)
    return django_project


def fanout_of(report: dict[str, Any], test: str) -> Any:
    """The ``fanout`` entry of the test whose node id ends with ``test``."""
    [entry] = [t for t in report["tests"] if t["nodeid"].endswith(test)]
    return entry.get("fanout")


# -- 1, 2: gather against awaiting one after another ------------------------------------------


def test_gather_passes_the_marker(project: DjangoProject) -> None:
    # within=2 holds by construction: every start precedes every end (module docstring), so
    # wall = duration of the last call to end + the gap between its start and the first start
    #      < duration of the last call to end + duration of the first call to start
    #      <= 2 x slowest.
    # within=1.5 would need the three starts to fall within half a call of each other, which
    # one scheduler stall on a busy CI machine breaks; the peak is the main assertion anyway.
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3, within=2)
        @pytest.mark.asyncio
        async def test_gathered(asgi_client, api):
            assert (await asgi_client.get("/gathered/")).status_code == 200
            assert api.calls.call_count == 3
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=1)
    assert fanout_of(report, "test_gathered") == {"requests": 3, "peak_concurrency": 3}


def test_gathered_calls_to_instant_mocks_name_the_mocks(project: DjangoProject) -> None:
    """A respx route with no delay answers within the task's step: gathered calls cannot
    overlap, and the cause says so rather than asking for the gather the view has."""
    project.tests(
        """
        import httpx
        import pytest

        @pytest.fixture
        def instant(respx_mock):
            respx_mock.route(host="api.test").mock(return_value=httpx.Response(200))

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_gathered(asgi_client, instant):
            assert (await asgi_client.get("/gathered/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected at least 3 outbound requests in flight together, saw 1",
            "*likely cause: the calls came from 3 tasks, but each was answered before the next"
            " was sent: mocks that answer at once cannot overlap (give them a delay,"
            " side_effect=latency(0.05))*",
        ]
    )


def test_calls_awaited_in_sequence_fail_with_a_timeline_and_the_cause(
    project: DjangoProject,
) -> None:
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_sequential(asgi_client, api):
            assert (await asgi_client.get("/sequential/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-djasync: expected at least 3 outbound requests in flight together, saw 1",
            "  GET api.test/a |#*| * ms",
            "  GET api.test/b |*#*| * ms",
            "  GET api.test/c |*#*| * ms",
            "  3 requests, peak 1 in flight, wall * ms, sum * ms, slowest * ms",
            "  likely cause: the calls were awaited one after another in one task; start them"
            " together with asyncio.gather(...)"
            + (" or an asyncio.TaskGroup" if sys.version_info >= (3, 11) else ""),  # 3.11+
        ]
    )


# -- 3: sync_to_async and its thread-sensitive executor ----------------------------------------


def test_sync_to_async_fans_out_only_off_the_thread_sensitive_executor(
    project: DjangoProject,
) -> None:
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_default(asgi_client, api):
            assert (await asgi_client.get("/sync_default/")).status_code == 200

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_not_thread_sensitive(asgi_client, api_all_at_once):
            assert (await asgi_client.get("/sync_not_thread_sensitive/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*3 requests, peak 1 in flight*",
            "  likely cause: the sync calls ran through sync_to_async(..., thread_sensitive=True)"
            " (the default), so they queued on asgiref's single thread-sensitive executor;"
            " use sync_to_async(func, thread_sensitive=False) or an httpx.AsyncClient",
            "FAILED test_scenario.py::test_default - *",
        ]
    )


# -- 4: a semaphore caps the fan-out -----------------------------------------------------------


def test_a_semaphore_of_two_caps_the_fan_out_at_two(project: DjangoProject) -> None:
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_needs_three(asgi_client, api):
            assert (await asgi_client.get("/limited/")).status_code == 200

        @pytest.mark.djasync_fanout(2)
        @pytest.mark.asyncio
        async def test_needs_two(asgi_client, api):
            assert (await asgi_client.get("/limited/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected at least 3 outbound requests in flight together, saw 2",
            "  4 requests, peak 2 in flight*",
            "  likely cause: at most 2 ran at once: a semaphore, a connection-pool limit"
            " (httpx.Limits) or a worker pool of that size is capping the fan-out",
            "FAILED test_scenario.py::test_needs_three - *",
        ]
    )


# -- 5: asyncio.TaskGroup ----------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in Python 3.11")
def test_task_group_fan_out_passes(project: DjangoProject) -> None:
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_task_group(asgi_client, api):
            assert (await asgi_client.get("/task_group/")).status_code == 200
        """
    )
    project.run().assert_outcomes(passed=1)


# -- 6: a real HTTP server instead of mocks ----------------------------------------------------


def test_real_requests_to_a_local_server_are_timed_too(project: DjangoProject) -> None:
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_gathered(asgi_client, upstream):
            response = await asgi_client.get("/gathered/", params={"base": upstream})
            assert response.status_code == 200

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_sequential(asgi_client, upstream):
            response = await asgi_client.get("/sequential/", params={"base": upstream})
            assert response.status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "  GET 127.0.0.1/a |*#*| * ms",  # dots first: connecting, on a busy machine
            "  3 requests, peak 1 in flight*",
            "  likely cause: the calls were awaited one after another in one task;*",
            "FAILED test_scenario.py::test_sequential - *",
        ]
    )


def test_a_pool_limit_serializes_the_fan_out_and_is_named(project: DjangoProject) -> None:
    # A request is in flight from when it has a connection: before it, it only waits. The next
    # call gets the one connection only after the previous response was read (httpcore's
    # response_closed comes before the connection is released), so the peak is 1 by
    # construction, not by timing.
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_capped(asgi_client, upstream):
            response = await asgi_client.get("/pool_capped/", params={"base": upstream})
            assert response.status_code == 200

        @pytest.mark.asyncio
        async def test_their_trace_still_runs(asgi_client, upstream, djasync_fanout):
            response = await asgi_client.get("/traced/", params={"base": upstream})
            assert int(response.text) >= 4  # connect, send headers/body, receive, close
            assert djasync_fanout.calls[0].queued > 0
        """
    )
    result = project.run("--djasync")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "  GET 127.0.0.1/a |*#*| * ms",
            "  GET 127.0.0.1/b |*.#*| * ms",
            "  (. waiting for a connection from the pool, # in flight)",
            "  3 requests, peak 1 in flight*",
            "  likely cause: * waited for a connection from httpx's pool*"
            "httpx.Limits(max_connections=...)*",
            "FAILED test_scenario.py::test_capped - *",
        ]
    )


def test_a_redirected_call_is_timed_to_its_last_response_and_their_trace_is_theirs(
    project: DjangoProject,
) -> None:
    project.tests(
        """
        import http.server
        import threading
        import time

        import httpx


        class Redirecting(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(302 if self.path == "/a" else 200)
                self.send_header("Location", "/b")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass


        def test_redirect(djasync_fanout):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            events = []
            read = []  # when each response was read, just after the plugin saw it

            def theirs(name, info):
                events.append(name)
                if name.endswith("response_closed.started"):
                    read.append(time.perf_counter())

            with httpx.Client(follow_redirects=True) as client:
                response = client.get(
                    f"http://127.0.0.1:{server.server_address[1]}/a",
                    extensions={"trace": theirs},
                )
            server.shutdown()
            assert [r.status_code for r in [*response.history, response]] == [302, 200]
            assert sum(name.endswith("response_closed.started") for name in events) == 2
            [call] = djasync_fanout.calls
            assert read[0] < call.end <= read[1]  # the last response, not the redirect's
            assert call.queued > 0
            for hop in [*response.history, response]:
                assert hop.request.extensions["trace"] is theirs
        """
    )
    project.run().assert_outcomes(passed=1)


# -- 7: the djasync_fanout fixture -------------------------------------------------------------


def test_the_fixture_records_calls_in_a_test_body(project: DjangoProject) -> None:
    project.tests(
        """
        import asyncio

        import httpx
        import pytest

        TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms

        @pytest.mark.asyncio
        async def test_fixture(api, djasync_fanout):
            async with httpx.AsyncClient(verify=TLS) as client:
                await asyncio.gather(*(client.get(f"https://api.test/{n}") for n in "abc"))
            assert sorted((c.method, c.url) for c in djasync_fanout.calls) == [
                ("GET", "api.test/a"), ("GET", "api.test/b"), ("GET", "api.test/c")
            ]
            assert all(c.start < c.end for c in djasync_fanout.calls)
            assert djasync_fanout.peak_concurrency == 3
            djasync_fanout.assert_concurrent(3)

        @pytest.mark.asyncio
        async def test_fixture_failing(api, djasync_fanout):
            async with httpx.AsyncClient(verify=TLS) as client:
                for n in "abc":
                    await client.get(f"https://api.test/{n}")
            with pytest.raises(AssertionError, match="peak 1 in flight") as failure:
                djasync_fanout.assert_concurrent(2)
            assert "awaited one after another" in str(failure.value)
        """
    )
    project.run().assert_outcomes(passed=2)


# -- 8: requests into the app are not outbound -------------------------------------------------


def test_requests_into_the_app_are_not_counted(project: DjangoProject) -> None:
    project.tests(
        """
        import asyncio

        import pytest

        @pytest.mark.asyncio
        async def test_into_the_app(asgi_client, djasync_fanout):
            responses = await asyncio.gather(*(asgi_client.get("/quiet/") for _ in range(3)))
            assert [r.status_code for r in responses] == [200, 200, 200]
            assert djasync_fanout.calls == []

        @pytest.mark.asyncio
        async def test_out_of_the_app(asgi_client, api):
            assert (await asgi_client.get("/gathered/")).status_code == 200
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=2)
    assert fanout_of(report, "test_into_the_app") == {"requests": 0, "peak_concurrency": 0}
    assert fanout_of(report, "test_out_of_the_app") == {"requests": 3, "peak_concurrency": 3}


# -- 9: marker arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments", ["", "0", "3, within=0.5", "3, bogus=1", "3, within=float('nan')", "'3'"]
)
def test_bad_marker_arguments_are_usage_errors(project: DjangoProject, arguments: str) -> None:
    project.tests(
        f"""
        import pytest

        @pytest.mark.djasync_fanout({arguments})
        def test_marked():
            pass
        """
    )
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*test_scenario.py::test_marked: @pytest.mark.djasync_fanout takes a whole number"
            " >= 1 and optionally within=<factor >= 1>*"
        ]
    )


# -- 10: latency for sync and async clients ----------------------------------------------------


def test_latency_answers_sync_clients_in_threads_and_async_clients(
    project: DjangoProject,
) -> None:
    # Under --djasync a time.sleep on the loop is a finding however short, so a clean report
    # shows the async client awaited its delay and the sync client slept its worker thread.
    # The durations are lower bounds (a sleep never ends early): a slow machine cannot fail them.
    project.tests(
        """
        import asyncio

        import httpx
        import pytest

        from pytest_djasync import latency

        TLS = httpx.create_ssl_context()  # built once: loading CA certificates takes tens of ms

        URL = "https://api.test/items/7"

        @pytest.fixture
        def items(respx_mock):
            # respx hands the named group to the side effect as a keyword argument
            respx_mock.get(url__regex=r"https://api.test/items/(?P<item>[0-9]+)").mock(
                side_effect=latency(0.1, status_code=201, json={"id": 7})
            )

        def fetch(url):
            with httpx.Client() as client:
                return client.get(url)

        @pytest.mark.asyncio
        async def test_sync_client_in_a_thread(items, djasync_fanout):
            response = await asyncio.to_thread(fetch, URL)
            assert (response.status_code, response.json()) == (201, {"id": 7})
            [call] = djasync_fanout.calls
            assert not call.is_async and call.duration >= 0.09

        @pytest.mark.asyncio
        async def test_async_client(items, djasync_fanout):
            async with httpx.AsyncClient(verify=TLS) as client:
                response = await client.get(URL)
            assert (response.status_code, response.json()) == (201, {"id": 7})
            [call] = djasync_fanout.calls
            assert call.is_async and call.duration >= 0.09
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=2)
    assert [t["violations"] for t in report["tests"]] == [[], []]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-0.1, r"latency: -0\.1 is not a delay; give a finite number of seconds >= 0"),
        (float("nan"), r"latency: nan is not a delay"),
        (float("inf"), r"latency: inf is not a delay"),
        ("0.1", r"latency: '0\.1' is not a number; give a delay in seconds"),
        (True, r"latency: True is not a number"),
    ],
)
def test_latency_rejects_what_is_not_a_delay(seconds: Any, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        pytest_djasync.latency(seconds)


@pytest.mark.parametrize(
    ("at_least", "within", "expected"),
    [
        (0, None, "n must be a whole number >= 1, got 0"),
        ("3", None, "n must be a whole number >= 1, got '3'"),
        (3, 0.5, "within must be a finite factor >= 1, got 0.5"),
        (3, float("nan"), "within must be a finite factor >= 1, got nan"),
        (3, "2", "within must be a number >= 1, got '2'"),
    ],
)
def test_assert_concurrent_rejects_bad_arguments(
    at_least: Any, within: Any, expected: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"assert_concurrent: {expected}; e.g.")):
        fanout.Recorder().assert_concurrent(at_least, within)


def test_a_fan_out_of_calls_no_recorder_saw_says_which_clients_are_seen() -> None:
    """requests in threads, aiohttp: nothing recorded is no reason to advise asyncio.gather."""
    with pytest.raises(AssertionError) as failed:
        fanout.Recorder().assert_concurrent(2)
    text = str(failed.value)
    assert "expected at least 2 outbound requests in flight together, saw 0" in text
    assert "likely cause: no outbound request was recorded: only httpx's clients are" in text


# -- 11: tasks are told apart by number, not by id() -------------------------------------------


def test_tasks_awaited_one_by_one_each_count_as_a_task(project: DjangoProject) -> None:
    """A finished task's id() is reused by the next task: three tasks awaited one by one
    looked like two, or one."""
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_view(asgi_client, api):
            assert (await asgi_client.get("/awaited_tasks/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected at least 3 outbound requests in flight together, saw 1",
            "  likely cause: the calls came from 3 tasks, but each*",
            "FAILED test_scenario.py::test_view - *",
        ]
    )


# -- 12: a likely cause only on evidence of it -------------------------------------------------


def test_tasks_serialized_by_a_lock_are_not_blamed_on_instant_mocks(
    project: DjangoProject,
) -> None:
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_locked(asgi_client, api):
            assert (await asgi_client.get("/locked/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "  3 requests, peak 1 in flight*",
            "  likely cause: the calls came from 3 tasks, but each started only after the"
            " previous one had ended: a limit of one held across the call (an asyncio.Lock,"
            " asyncio.Semaphore(1), httpx.Limits(max_connections=1)) serializes them, or each"
            " task was awaited before the next was created (create them all, then await them"
            " together)",
        ]
    )
    result.stdout.no_fnmatch_line("*answer at once*")


def test_one_thread_sensitive_call_is_no_queue_on_the_executor(project: DjangoProject) -> None:
    """One sync call through the thread-sensitive executor, then two awaited in turn: the
    executor queued nothing, the awaits did."""
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_sync_then_sequential(asgi_client, api):
            assert (await asgi_client.get("/sync_then_sequential/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "  3 requests, peak 1 in flight*",
            "  likely cause: the calls were awaited one after another in one task;*",
        ]
    )
    result.stdout.no_fnmatch_line("*thread-sensitive executor*")


def test_a_sync_call_on_the_loop_is_named_as_what_held_the_others_back(
    project: DjangoProject,
) -> None:
    """A sync client's call on the loop, then an async one: the first held everything back
    (trial: the cause said the calls were awaited one after another in one task)."""
    project.tests(
        """
        import pytest

        @pytest.mark.djasync_fanout(2)
        @pytest.mark.asyncio
        async def test_sync_on_the_loop(asgi_client, api):
            assert (await asgi_client.get("/sync_on_the_loop/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "  2 requests, peak 1 in flight*",
            "  likely cause: the sync call GET api.test/a ran on the event loop, which could"
            " start nothing else until it was answered: send it with an httpx.AsyncClient",
        ]
    )


def test_a_cap_is_named_only_on_evidence_of_one(project: DjangoProject) -> None:
    """A call left out of a gather, a call held back by a lock, a retry: the peak is below the
    number of requests, but nothing capped it."""
    project.tests(
        """
        import asyncio

        import httpx
        import pytest

        from pytest_djasync import latency

        @pytest.fixture
        def b_fails_once(respx_mock):
            answers = iter([503, 200])

            async def answer(request):
                await asyncio.sleep(0.05)
                return httpx.Response(next(answers))

            respx_mock.get("https://api.test/b").mock(side_effect=answer)
            respx_mock.route(host="api.test").mock(side_effect=latency(0.05))

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_gather_then_one(asgi_client, api):
            assert (await asgi_client.get("/gather_then_one/")).status_code == 200

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_held_back(asgi_client, api):
            assert (await asgi_client.get("/held_back/")).status_code == 200

        # Each attempt of b waits 50 ms after the last ended, so no single call spans them
        # both: the fan-out takes longer than its slowest call however slow the machine is.
        @pytest.mark.djasync_fanout(3, within=1)
        @pytest.mark.asyncio
        async def test_retried(asgi_client, b_fails_once):
            assert (await asgi_client.get("/retried/")).status_code == 200
        """
    )
    result = project.run()
    result.assert_outcomes(failed=3)
    late = (
        "  likely cause: GET api.test/c started after the calls before it had ended: it was not"
        " started together with them (left out of the gather, or awaited after it), or"
        " something it awaited first (a lock, a sync call) held it back"
    )
    result.stdout.fnmatch_lines(
        [
            "*expected at least 3 outbound requests in flight together, saw 2",
            "  3 requests, peak 2 in flight*",
            late,
            "*expected at least 3 outbound requests in flight together, saw 2",
            "  3 requests, peak 2 in flight*",
            late,
            "*the fan-out took * ms, more than 1 x its slowest call (* ms)",
            "  4 requests, peak 3 in flight*",
            "  likely cause: GET api.test/b was sent 2 times one after another (a retry): the"
            " fan-out lasts as long as all its attempts, while within= compares with the"
            " slowest single request",
        ]
    )
    result.stdout.no_fnmatch_line("*capping the fan-out*")


# -- 13: the lines of the code under test that sent the calls ----------------------------------


def test_the_timeline_names_the_lines_that_sent_the_calls(project: DjangoProject) -> None:
    test_source = """
        import httpx
        import pytest

        TLS = httpx.create_ssl_context()

        async def fetch_one(client, n):
            return await client.get(f"https://api.test/{n}")

        @pytest.mark.djasync_fanout(3)
        @pytest.mark.asyncio
        async def test_view(asgi_client, api):
            assert (await asgi_client.get("/seq_loop/")).status_code == 200

        @pytest.mark.asyncio
        async def test_fixture(api, djasync_fanout):
            async with httpx.AsyncClient(verify=TLS) as client:
                await fetch_one(client, "a")
                await client.get("https://api.test/b")
            with pytest.raises(AssertionError) as failure:
                djasync_fanout.assert_concurrent(2)
            print(failure.value)
        """
    project.tests(test_source)
    result = project.run("-s")
    result.assert_outcomes(failed=1, passed=1)
    get, loop = line_of(VIEWS, "return await client.get(url)"), line_of(VIEWS, "await _get(")
    fetch = line_of(test_source, 'return await client.get(f"https://api.test/{n}")')
    body = line_of(test_source, 'await fetch_one(client, "a")')
    plain = line_of(test_source, 'await client.get("https://api.test/b")')
    result.stdout.fnmatch_lines(
        [
            "*GET api.test/c |*",
            f"  sent from tproj/views.py:{get} in _get < tproj/views.py:{loop} in seq_loop"
            " (3 calls)",
            "",
            "  3 requests, peak 1 in flight*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"  sent from test_scenario.py:{fetch} in fetch_one < test_scenario.py:{body} in"
            " test_fixture (1 call: GET api.test/a)",
            f"  sent from test_scenario.py:{plain} in test_fixture (1 call: GET api.test/b)",
        ]
    )


# -- 14: calls cancelled or failed count, and say so -------------------------------------------


def test_cancelled_and_failed_calls_count_and_are_marked(project: DjangoProject) -> None:
    project.tests(
        """
        import asyncio

        import httpx
        import pytest

        from pytest_djasync import latency

        TLS = httpx.create_ssl_context()

        @pytest.fixture
        def mixed(respx_mock):
            respx_mock.get("https://api.test/b").mock(side_effect=httpx.ConnectError("refused"))
            respx_mock.get("https://api.test/c").mock(side_effect=latency(30))
            respx_mock.route(host="api.test").mock(side_effect=latency(0.05))

        async def get(client, n):
            try:
                await asyncio.wait_for(client.get(f"https://api.test/{n}"), 0.2)
            except (httpx.ConnectError, asyncio.TimeoutError):
                pass

        @pytest.mark.asyncio
        async def test_outcomes(mixed, djasync_fanout):
            async with httpx.AsyncClient(verify=TLS) as client:
                await asyncio.gather(*(get(client, n) for n in "abc"))
            outcomes = {call.url: call.outcome for call in djasync_fanout.calls}
            assert outcomes == {
                "api.test/a": "ok", "api.test/b": "failed", "api.test/c": "cancelled"
            }
            assert len(djasync_fanout.finished) == 3
            with pytest.raises(AssertionError) as failure:
                djasync_fanout.assert_concurrent(3)
            text = str(failure.value)
            assert "  3 requests, peak 2 in flight" in text
            assert "  GET api.test/b (failed)    |" in text
            assert "  GET api.test/c (cancelled) |" in text
            assert "  GET api.test/a             |" in text
        """
    )
    project.run().assert_outcomes(passed=1)


def test_calls_still_in_flight_when_the_test_ends_count_until_then(
    project: DjangoProject,
) -> None:
    """A gather raises on its first failure and leaves its other calls running: they were in
    flight together, and the test ended with them unfinished (re-check: "saw 1", and only the
    failed call drawn)."""
    project.tests(
        """
        import asyncio

        import httpx
        import pytest

        from pytest_djasync import latency

        TLS = httpx.create_ssl_context()

        @pytest.fixture
        def services(respx_mock):
            respx_mock.get("https://api.test/c").mock(side_effect=httpx.ConnectError("refused"))
            respx_mock.route(host="api.test").mock(side_effect=latency(30))

        @pytest.mark.asyncio
        @pytest.mark.djasync_fanout(3)
        async def test_left_running(services):
            client = httpx.AsyncClient(verify=TLS)
            with pytest.raises(httpx.ConnectError):
                await asyncio.gather(*(client.get(f"https://api.test/{n}") for n in "abc"))
        """
    )
    result, report = project.report()
    result.assert_outcomes(passed=1)
    [entry] = report["tests"]
    assert entry["fanout"] == {"requests": 3, "peak_concurrency": 3}


def test_sync_calls_made_in_turn_are_told_so(project: DjangoProject) -> None:
    """A loop of sync calls in one thread was told it was "left out of the gather" (re-check)."""
    project.tests(
        """
        import httpx
        import pytest

        from pytest_djasync import latency

        def test_in_turn(respx_mock, djasync_fanout):
            respx_mock.route(host="api.test").mock(side_effect=latency(0.05))
            with httpx.Client() as client:
                for n in "abc":
                    client.get(f"https://api.test/{n}")
            with pytest.raises(AssertionError) as failure:
                djasync_fanout.assert_concurrent(3)
            assert "likely cause: the sync calls were made one after another" in str(
                failure.value
            )
        """
    )
    project.run().assert_outcomes(passed=1)
