"""``asgi_client`` against a real Django project, run by pytest in a subprocess.

Each test writes the views and the inner test module it needs, so every request goes through
Django's real ``ASGIHandler`` (or the project's own ASGI app) and the streaming transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import django
import httpx
import pytest

from pytest_djasync import ASGIStreamingTransport
from tests.conftest import DjangoProject

# Django 5.0 made ASGIHandler cancel a view whose client disconnected; 4.2 lets it finish.
needs_disconnect_cancellation = pytest.mark.skipif(
    django.VERSION < (5, 0), reason="Django < 5.0 does not cancel a view on client disconnect"
)

VIEWS = """
import asyncio
import json

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from tproj.models import Item

release = None  # an asyncio.Event the inner test creates and sets
closed = []  # what happened to a view or generator whose client went away
gone = asyncio.Event()  # set once that view or generator has finished
entered = asyncio.Event()  # set once the `stuck` view runs


async def hello(request):
    return HttpResponse("hello async", headers={"X-Kind": "async"})


def plain(request):
    return HttpResponse("hello sync", content_type="text/plain; charset=utf-8")


async def echo_json(request):
    data = json.loads(request.body)
    return JsonResponse({"method": request.method, "got": data})


async def echo_body(request):
    return HttpResponse(request.body, content_type="application/octet-stream")


async def echo_query(request):
    params = {key: request.GET.getlist(key) for key in request.GET}
    return JsonResponse({"path": request.path, "get": params})


async def two_chunks(request):
    async def chunks():
        yield b"chunk-1"
        await release.wait()
        yield b"chunk-2"

    return StreamingHttpResponse(chunks())


async def endless(request):
    async def chunks():
        try:
            yield b"first"
            await asyncio.Event().wait()  # never set: only the client leaving ends this
            yield b"never"
        except asyncio.CancelledError:
            closed.append("cancelled")
            raise
        finally:
            closed.append("closed")
            gone.set()

    return StreamingHttpResponse(chunks())


ticked = []


async def ticking(request):
    async def ticks():
        while True:
            ticked.append(1)
            yield b"tick"
            await asyncio.sleep(0.01)

    return StreamingHttpResponse(ticks())


async def stuck(request):
    entered.set()
    try:
        await asyncio.Event().wait()  # never set: only the client leaving ends this
    except asyncio.CancelledError:
        closed.append("cancelled")
        raise
    finally:
        gone.set()


async def broken(request):
    raise RuntimeError("the view failed")


async def items(request):
    names = [item.name async for item in Item.objects.order_by("name")]
    return JsonResponse({"names": names})
"""


@pytest.fixture
def project(django_project: DjangoProject) -> DjangoProject:
    django_project.views(VIEWS)
    return django_project


def run_passing(project: DjangoProject, source: str, passed: int = 1) -> None:
    """Write ``source`` as the inner test module, run it, and expect every test to pass."""
    project.tests(source)
    result = project.run("-v")
    result.assert_outcomes(passed=passed, warnings=0)


def test_get_async_view(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            response = await asgi_client.get("/hello/")
            assert response.status_code == 200
            assert response.text == "hello async"
            assert response.headers["x-kind"] == "async"
            assert response.headers["content-type"] == "text/html; charset=utf-8"
        """,
    )


def test_get_sync_view(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            response = await asgi_client.get("/plain/")
            assert response.status_code == 200
            assert response.text == "hello sync"
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
        """,
    )


def test_unknown_path_is_a_404(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            assert (await asgi_client.get("/nowhere/")).status_code == 404
        """,
    )


def test_post_json_body(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            payload = {"name": "café", "tags": ["a", "b"], "n": 3}
            response = await asgi_client.post("/echo_json/", json=payload)
            assert response.status_code == 200
            assert response.json() == {"method": "POST", "got": payload}
        """,
    )


def test_request_body_streamed_from_async_generator(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            async def body():
                for part in (b"one,", b"two,", b"", b"three"):
                    yield part

            response = await asgi_client.post("/echo_body/", content=body())
            assert response.status_code == 200
            assert response.content == b"one,two,three"
        """,
    )


def test_large_request_body_arrives_whole(project: DjangoProject) -> None:
    """Many request body chunks and a body bigger than Django keeps in memory (it spools it to
    a file) reach the view intact."""
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            parts = [bytes([65 + i % 26]) * 50_000 for i in range(40)]

            async def body():
                for part in parts:
                    yield part

            response = await asgi_client.post("/echo_body/", content=body())
            assert response.content == b"".join(parts)
        """,
    )


def test_query_string_and_encoded_path(project: DjangoProject) -> None:
    project.module(
        "tproj/urls.py",
        """
        from django.urls import re_path

        from tproj import views

        urlpatterns = [re_path(r"^files/.*$", views.echo_query)]
        """,
    )
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            response = await asgi_client.get(
                "/files/caf%C3%A9%20au%20lait/x%2By/?q=caf%C3%A9&amp=a%26b&q=two+words"
            )
            assert response.status_code == 200
            assert response.json() == {
                "path": "/files/café au lait/x+y/",
                "get": {"q": ["café", "two words"], "amp": ["a&b"]},
            }

        @pytest.mark.asyncio
        async def test_params(asgi_client):
            response = await asgi_client.get("/files/ü/", params={"k": "ä ö", "e": ""})
            assert response.json() == {"path": "/files/ü/", "get": {"k": ["ä ö"], "e": [""]}}
        """,
        passed=2,
    )


def test_streaming_response_arrives_chunk_by_chunk(project: DjangoProject) -> None:
    """The view's generator waits after chunk 1 for an event that the test sets only once it
    has chunk 1 in hand: a transport that buffered the body would time out instead."""
    run_passing(
        project,
        """
        import asyncio

        import pytest

        from tproj import views

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            views.release = asyncio.Event()
            seen = []

            async def scenario():
                async with asgi_client.stream("GET", "/two_chunks/") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_raw():
                        seen.append(chunk)
                        if len(seen) == 1:
                            assert not views.release.is_set()
                            views.release.set()

            await asyncio.wait_for(scenario(), timeout=10)
            assert seen == [b"chunk-1", b"chunk-2"]
        """,
    )


def test_a_plain_response_needs_no_helper_tasks(project: DjangoProject) -> None:
    """The transport waits on futures, not on tasks made for the purpose: every task costs
    the loop steps, and a watched loop pays for each step."""
    run_passing(
        project,
        """
        import asyncio

        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            loop = asyncio.get_running_loop()
            made = []

            def factory(loop, coro, **kwargs):
                made.append(coro.__qualname__)
                return asyncio.Task(coro, loop=loop, **kwargs)

            loop.set_task_factory(factory)
            try:
                response = await asgi_client.get("/hello/")
            finally:
                loop.set_task_factory(None)
            assert response.text == "hello async"
            helpers = [name for name in made if name.startswith(("Event.", "Queue."))]
            assert not helpers, made
        """,
    )


def test_client_leaving_a_stream_early_cancels_the_view(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import asyncio

        import pytest

        from tproj import views

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            async def scenario():
                async with asgi_client.stream("GET", "/endless/") as response:
                    async for chunk in response.aiter_raw():
                        assert chunk == b"first"
                        break

            await asyncio.wait_for(scenario(), timeout=10)
            # Closing the response waits for the app, so the generator is already gone.
            assert views.closed == ["cancelled", "closed"]

            response = await asgi_client.get("/hello/")  # the client is still usable
            assert response.text == "hello async"
        """,
    )


def test_a_stream_left_early_stops_though_the_app_does_not_listen_for_it(
    project: DjangoProject,
) -> None:
    """Django 4.2 never asks whether its client left a stream: closing the response would wait
    for the stream's end, forever here (trial, 2/2). As the ASGI spec has it, ``send`` raises
    once the client is gone; Django 5.0+ hears of it in ``receive`` first."""
    run_passing(
        project,
        """
        import asyncio

        import pytest

        from tproj import views

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            async def scenario():
                async with asgi_client.stream("GET", "/ticking/") as response:
                    async for chunk in response.aiter_raw():
                        assert chunk == b"tick"
                        break

            finished, _ = await asyncio.wait({asyncio.ensure_future(scenario())}, timeout=60)
            assert finished, "closing the response waited for an endless stream"
            ticks = len(views.ticked)
            await asyncio.sleep(0.1)
            assert len(views.ticked) == ticks, "the app streamed on after the client left"
            assert (await asgi_client.get("/hello/")).text == "hello async"
        """,
    )


@needs_disconnect_cancellation
def test_client_giving_up_before_the_response_cancels_the_view(project: DjangoProject) -> None:
    """A request cancelled while the view has not answered yet is a client that went away."""
    run_passing(
        project,
        """
        import asyncio

        import pytest

        from tproj import views

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            request = asyncio.ensure_future(asgi_client.get("/stuck/"))
            await asyncio.wait_for(views.entered.wait(), timeout=10)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.wait_for(views.gone.wait(), timeout=10)
            assert views.closed == ["cancelled"]
        """,
    )


def test_closing_the_client_disconnects_unclosed_responses(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import asyncio

        import pytest

        from tproj import views

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            async with asgi_client:
                response = await asgi_client.send(
                    asgi_client.build_request("GET", "/endless/"), stream=True
                )
                assert response.status_code == 200
            await asyncio.wait_for(views.gone.wait(), timeout=10)
            assert views.closed == ["cancelled", "closed"]
        """,
    )


MIDDLEWARE = """
def tag(get_response):
    def middleware(request):
        response = get_response(request)
        response["X-Tagged"] = "yes"
        return response

    return middleware
"""


def test_settings_override_before_first_request_is_honoured(project: DjangoProject) -> None:
    """Each test gets a freshly built app, so a middleware added by one test is seen by that
    test only, before and after it."""
    project.module("tproj/middleware.py", MIDDLEWARE)
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_1_without(asgi_client):
            assert "x-tagged" not in (await asgi_client.get("/hello/")).headers

        @pytest.mark.asyncio
        async def test_2_with(settings, asgi_client):
            settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tproj.middleware.tag"]
            response = await asgi_client.get("/hello/")
            assert response.status_code == 200
            assert response.headers["x-tagged"] == "yes"

        @pytest.mark.asyncio
        async def test_3_without_again(asgi_client):
            assert "x-tagged" not in (await asgi_client.get("/hello/")).headers
        """,
        passed=3,
    )


CUSTOM_ASGI = """
async def application(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 218, "headers": [(b"x-app", b"custom")]})
    await send({"type": "http.response.body", "body": b"custom " + scope["path"].encode()})


async def failing(scope, receive, send):
    raise LookupError("the custom app failed")
"""


def test_asgi_application_setting_is_used(project: DjangoProject) -> None:
    project.module("tproj/custom_asgi.py", CUSTOM_ASGI)
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_custom(settings, asgi_client):
            settings.ASGI_APPLICATION = "tproj.custom_asgi.application"
            response = await asgi_client.get("/hello/")
            assert response.status_code == 218
            assert response.headers["x-app"] == "custom"
            assert response.text == "custom /hello/"

        @pytest.mark.asyncio
        async def test_django_again(asgi_client):
            assert (await asgi_client.get("/hello/")).text == "hello async"
        """,
        passed=2,
    )


def test_asgi_application_setting_from_settings_module(project: DjangoProject) -> None:
    project.module("tproj/custom_asgi.py", CUSTOM_ASGI)
    project.settings('ASGI_APPLICATION = "tproj.custom_asgi.application"')
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            assert (await asgi_client.get("/anything/")).text == "custom /anything/"
        """,
    )


def test_exception_from_custom_asgi_app_reaches_the_test(project: DjangoProject) -> None:
    project.module("tproj/custom_asgi.py", CUSTOM_ASGI)
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(settings, asgi_client):
            settings.ASGI_APPLICATION = "tproj.custom_asgi.failing"
            with pytest.raises(LookupError, match="the custom app failed"):
                await asgi_client.get("/hello/")
        """,
    )


def test_django_project_asgi_module_honours_settings_overrides(project: DjangoProject) -> None:
    """``ASGI_APPLICATION`` pointing at the usual ``asgi.py`` (as Daphne requires) must not pin
    the middleware loaded when that module was first imported."""
    project.module(
        "tproj/asgi.py",
        """
        from django.core.asgi import get_asgi_application

        application = get_asgi_application()
        """,
    )
    project.module("tproj/middleware.py", MIDDLEWARE)
    project.settings('ASGI_APPLICATION = "tproj.asgi.application"')
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_1_without(asgi_client):
            assert "x-tagged" not in (await asgi_client.get("/hello/")).headers

        @pytest.mark.asyncio
        async def test_2_with(settings, asgi_client):
            settings.MIDDLEWARE = ["tproj.middleware.tag"]
            assert (await asgi_client.get("/hello/")).headers["x-tagged"] == "yes"
        """,
        passed=2,
    )


LOOP_SCOPES = """
import asyncio

import pytest

loops = {}


async def hello_through(client):
    response = await client.get("/hello/")
    assert response.text == "hello async"
    return asyncio.get_running_loop()


@pytest.mark.asyncio(loop_scope="function")
async def test_function_a(asgi_client):
    loops["function_a"] = await hello_through(asgi_client)


@pytest.mark.asyncio(loop_scope="function")
async def test_function_b(asgi_client):
    loops["function_b"] = await hello_through(asgi_client)
    assert loops["function_b"] is not loops["function_a"]


@pytest.mark.asyncio(loop_scope="module")
async def test_module_a(asgi_client):
    loops["module_a"] = await hello_through(asgi_client)


@pytest.mark.asyncio(loop_scope="module")
async def test_module_b(asgi_client):
    loops["module_b"] = await hello_through(asgi_client)
    assert loops["module_b"] is loops["module_a"]


@pytest.mark.asyncio(loop_scope="session")
async def test_session_a(asgi_client):
    loops["session_a"] = await hello_through(asgi_client)
    assert loops["session_a"] is not loops["module_a"]


@pytest.mark.asyncio(loop_scope="session")
async def test_session_b(asgi_client):
    loops["session_b"] = await hello_through(asgi_client)
    assert loops["session_b"] is loops["session_a"]
"""


def test_every_loop_scope(project: DjangoProject) -> None:
    run_passing(project, LOOP_SCOPES, 6)


@needs_disconnect_cancellation
def test_module_loop_scope_set_in_ini(project: DjangoProject) -> None:
    """``asyncio_default_test_loop_scope = module``: the tests share one loop, and the view of a
    response one test never closed is disconnected at its teardown, not left running."""
    project.ini("asyncio_default_test_loop_scope = module")
    run_passing(
        project,
        """
        import asyncio

        import pytest

        from tproj import views

        loops = []

        @pytest.mark.asyncio
        async def test_leaves_a_stream_open(asgi_client):
            loops.append(asyncio.get_running_loop())
            response = await asgi_client.send(
                asgi_client.build_request("GET", "/endless/"), stream=True
            )
            assert response.status_code == 200  # never read, never closed

        @pytest.mark.asyncio
        async def test_next(asgi_client):
            loops.append(asyncio.get_running_loop())
            assert loops[0] is loops[1]
            # The first test's teardown disconnected the stream it left open.
            await asyncio.wait_for(views.gone.wait(), timeout=10)
            assert views.closed == ["cancelled", "closed"]
            assert (await asgi_client.get("/hello/")).status_code == 200
        """,
        passed=2,
    )


@needs_disconnect_cancellation
def test_unclosed_stream_in_a_function_loop_is_cleaned_up(project: DjangoProject) -> None:
    """The loop closes after the test: before it does, the app of the response left open is
    told its client left, so Django finishes the request (``request_finished``, its body file
    closed) rather than being cancelled with the loop; no warning about pending tasks or an
    unclosed file."""
    run_passing(
        project,
        """
        import pytest
        from django.core.signals import request_finished

        from tproj import views

        finished = []
        request_finished.connect(lambda **_: finished.append(True), weak=False)

        @pytest.mark.asyncio
        async def test_leaves_a_stream_open(asgi_client):
            response = await asgi_client.send(
                asgi_client.build_request("POST", "/endless/", content=b"x"), stream=True
            )
            assert response.status_code == 200

        def test_next():
            assert views.closed == ["cancelled", "closed"]
            assert finished == [True]
        """,
        passed=2,
    )


def test_view_exception_is_a_500(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            response = await asgi_client.get("/broken/")
            assert response.status_code == 500
        """,
    )


def test_close_old_connections_is_disconnected_only_during_the_test(
    project: DjangoProject,
) -> None:
    run_passing(
        project,
        """
        import pytest
        from django.core.signals import request_finished, request_started
        from django.db import close_old_connections
        from django.dispatch.dispatcher import _make_id


        def connected(signal):
            return any(key[0] == _make_id(close_old_connections) for key, *_ in signal.receivers)


        def test_1_before():
            assert connected(request_started)
            assert connected(request_finished)


        @pytest.mark.asyncio
        async def test_2_during(asgi_client):
            assert not connected(request_started)
            assert not connected(request_finished)
            await asgi_client.get("/hello/")
            assert not connected(request_started)
            assert not connected(request_finished)


        def test_3_after():
            assert connected(request_started)
            assert connected(request_finished)
        """,
        passed=3,
    )


def test_async_orm_view_sees_rows_the_test_created(project: DjangoProject) -> None:
    run_passing(
        project,
        """
        import pytest

        from tproj.models import Item

        @pytest.mark.django_db(transaction=True)
        @pytest.mark.asyncio
        async def test_it(asgi_client):
            await Item.objects.acreate(name="pear")
            await Item.objects.acreate(name="apple")
            response = await asgi_client.get("/items/")
            assert response.json() == {"names": ["apple", "pear"]}

        @pytest.mark.django_db(transaction=True)
        @pytest.mark.asyncio
        async def test_empty_again(asgi_client):
            assert (await asgi_client.get("/items/")).json() == {"names": []}
        """,
        passed=2,
    )


def test_a_large_body_reaches_the_app_in_pieces_with_the_loop_free_between_them() -> None:
    """A body sent as one chunk (``content=``, ``files=``) is handed over the way a server reads
    it off a socket: Django spooling 80 MB in one loop step was reported as a stall that no
    server would cause. Structural: a ticking task must run between any two pieces."""
    pieces: list[tuple[int, int]] = []  # (size, ticks when it arrived)
    ticks = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            pieces.append((len(message["body"]), ticks))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> None:
        ticker = asyncio.ensure_future(tick())
        transport = ASGIStreamingTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/", content=b"x" * 1_000_000)
        ticker.cancel()
        assert response.text == "ok"

    asyncio.run(main())
    sizes = [size for size, _ in pieces]
    assert sum(sizes) == 1_000_000
    assert max(sizes) == 64 * 1024
    assert len(pieces) == 17  # 16 pieces (15 whole, the rest) and the end of the body
    data_ticks = [seen for size, seen in pieces if size]
    assert data_ticks == sorted(set(data_ticks))  # strictly increasing: the loop ran between


def test_csrf_is_checked_and_the_documented_token_round_trip_passes(
    django_project: DjangoProject,
) -> None:
    """asgi_client goes through CsrfViewMiddleware as a browser would (reference.md)."""
    django_project.views(
        """
        from django.http import HttpResponse
        from django.middleware.csrf import get_token


        async def form(request):
            return HttpResponse(get_token(request))  # sets the csrftoken cookie


        async def submit(request):
            return HttpResponse("saved")
        """
    )
    run_passing(
        django_project,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client, settings):
            settings.MIDDLEWARE = ["django.middleware.csrf.CsrfViewMiddleware"]
            assert (await asgi_client.post("/submit/", data={"a": "1"})).status_code == 403
            await asgi_client.get("/form/")
            token = asgi_client.cookies["csrftoken"]
            response = await asgi_client.post(
                "/submit/", data={"a": "1"}, headers={"X-CSRFToken": token}
            )
            assert response.text == "saved"
        """,
    )


def test_aforce_login_logs_a_user_in_for_the_following_requests(
    django_project: DjangoProject,
) -> None:
    """As Django's test clients' force_login: a session in the store, its cookie on the client."""
    django_project.views(
        """
        from asgiref.sync import sync_to_async
        from django.http import HttpResponse


        async def whoami(request):
            name = await sync_to_async(lambda: request.user.get_username())()  # 4.2: no auser
            return HttpResponse(name or "anonymous")
        """
    )
    run_passing(
        django_project,
        """
        import pytest
        from django.contrib.auth.models import User

        import pytest_djasync

        MIDDLEWARE = [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ]

        @pytest.mark.asyncio
        @pytest.mark.django_db
        async def test_it(asgi_client, settings):
            settings.MIDDLEWARE = MIDDLEWARE
            assert isinstance(asgi_client, pytest_djasync.ASGIClient)
            assert (await asgi_client.get("/whoami/")).text == "anonymous"
            ada = await User.objects.acreate(username="ada")
            await asgi_client.aforce_login(ada)
            assert (await asgi_client.get("/whoami/")).text == "ada"
        """,
    )
    django_project.run("--djasync").assert_outcomes(passed=1)  # the session on the db thread
