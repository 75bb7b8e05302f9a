"""Sync/async crossings: exact counts per request, who caused each one, budgets, restoration.

Each test builds a real Django project and runs its suite in a subprocess. The counts come
from reasoning about Django's request path, and each expected number says where its crossings
come from:

* ``ASGIHandler.handle`` pays two hops per request whatever the project does:
  ``request_started.asend()`` runs Django's own sync receiver (``reset_queries``) behind one
  ``sync_to_async``, and ``response.close()`` (which sends ``request_finished``) runs through
  another. (Django 4.2 wraps ``request_started.send`` itself, so it is one hop there too.)
* ``BaseHandler.load_middleware`` puts one adapter (``adapt_method_mode``) on every boundary
  between a sync and an async link of the chain, counting the handler's async top and bottom.
* ``MiddlewareMixin.__acall__`` runs each ``process_request`` / ``process_response`` hook
  through ``sync_to_async``; ``process_view`` is adapted once by ``load_middleware``.
* a sync view is one ``sync_to_async`` in ``_get_response_async``; each async ORM call is one.
"""

from __future__ import annotations

import fnmatch
import re
import sys
import textwrap
from typing import Any, NamedTuple

import django
import pytest

from tests.conftest import DjangoProject

# request_started's sync receivers and response.close: the two hops of every ASGI request.
if django.VERSION >= (5, 0):
    STARTED = "handler: request_started: sync receivers django.db.reset_queries"
    STARTED_BY_TEST_CLIENT = STARTED
else:  # Django 4.2 wraps Signal.send itself, in the handler or in the test client
    STARTED = "handler: Signal.send"
    STARTED_BY_TEST_CLIENT = "test-client: Signal.send"
S2A = "[sync_to_async, thread_sensitive]"
A2S = "[async_to_sync, outer loop]"  # asgiref runs it on the loop of the request
CLOSED = f"handler: HttpResponse.close {S2A}"
# A caller is named from its code object, which knows its qualified name from Python 3.11 on.
QUALIFIED = sys.version_info >= (3, 11)

VIEWS = """
from django.http import HttpResponse, StreamingHttpResponse

from tproj.models import Item


async def hello(request):
    return HttpResponse("hello")


def plain(request):
    return HttpResponse("plain")


async def reads(request):
    first = await Item.objects.aget(name="a")
    count = await Item.objects.acount()
    names = [item.name async for item in Item.objects.order_by("name")]
    exists = await Item.objects.filter(name="b").aexists()
    last = await Item.objects.order_by("name").alast()
    return HttpResponse(f"{first.name} {count} {','.join(names)} {exists} {last.name}")


async def streams(request):
    async def chunks():
        yield b"a"
        yield b"b"

    return StreamingHttpResponse(chunks())
"""

MIDDLEWARE = """
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.decorators import sync_and_async_middleware, sync_only_middleware
from django.utils.deprecation import MiddlewareMixin


class _AsyncOnly:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        return await self.get_response(request)


class _SyncOnly:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)


class AsyncOne(_AsyncOnly):
    pass


class AsyncTwo(_AsyncOnly):
    pass


class AsyncThree(_AsyncOnly):
    pass


class SyncOne(_SyncOnly):
    pass


class SyncTwo(_SyncOnly):
    pass


class SyncThree(_SyncOnly):
    pass


@sync_only_middleware
def sync_one(get_response):
    def middleware(request):
        return get_response(request)

    return middleware


@sync_only_middleware
def sync_two(get_response):
    def middleware(request):
        return get_response(request)

    return middleware


@sync_only_middleware
def sync_three(get_response):
    def middleware(request):
        return get_response(request)

    return middleware


class Timing(MiddlewareMixin):  # async-capable, in sync mode above a sync-only one
    def process_request(self, request):
        request.timed = True


@sync_and_async_middleware
def both(get_response):
    if iscoroutinefunction(get_response):
        async def middleware(request):
            return await get_response(request)
    else:
        def middleware(request):
            return get_response(request)

    return middleware


class Audit(_AsyncOnly):  # no MiddlewareMixin: Django adapts its process_view to the mode
    def process_view(self, request, view, args, kwargs):
        return None
"""

# Prints every crossing of a test as the failure text would list it; run with -s to read them.
CONFTEST = """
import pytest


@pytest.fixture
def show(djasync_crossings, request):
    yield djasync_crossings
    for crossing in djasync_crossings:
        print(f"CROSSING {request.node.name} | {crossing.line()}")
"""

M = "tproj.middleware."
SYNC_CHAIN = [f"{M}SyncOne", f"{M}SyncTwo", f"{M}SyncThree"]
DEFAULT_STACK = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Each process_request / process_response hook is one sync_to_async in __acall__.
DEFAULT_STACK_HOOKS = [
    "SecurityMiddleware.process_request",
    "SessionMiddleware.process_request",
    "CommonMiddleware.process_request",
    "CsrfViewMiddleware.process_request",
    "AuthenticationMiddleware.process_request",
    "MessageMiddleware.process_request",
    "CsrfViewMiddleware.process_view",  # adapted by load_middleware, run by _get_response_async
    "XFrameOptionsMiddleware.process_response",
    "MessageMiddleware.process_response",
    "CsrfViewMiddleware.process_response",
    "CommonMiddleware.process_response",
    "SessionMiddleware.process_response",
    "SecurityMiddleware.process_response",
]
DEFAULT_STACK_LINES = [
    f"{STARTED} {S2A}",
    *(f"middleware: {hook} (MiddlewareMixin hook) {S2A}" for hook in DEFAULT_STACK_HOOKS),
    CLOSED,
]
# A generous stall threshold: these tests count hops, they must not trip on a slow machine.
REPORT_ARGS = ("-s", "--djasync-block-ms=5000")


class Counted(NamedTuple):
    total: int
    by_origin: dict[str, int]
    lines: list[str]


def project(django_project: DjangoProject, settings: str = "") -> DjangoProject:
    django_project.views(VIEWS)
    django_project.module("tproj/middleware.py", MIDDLEWARE)
    django_project.module("conftest.py", CONFTEST)
    django_project.settings('INSTALLED_APPS += ["django.contrib.messages"]\n' + settings)
    return django_project


def counted(report: dict[str, Any], stdout: str, test: str) -> Counted:
    """The report's count for the test whose node id ends with ``test``, and its printed lines
    (from ``show``; both recorders saw the same crossings)."""
    [entry] = [e for e in report["tests"] if e["nodeid"].endswith(test)]
    name = test.rpartition("::")[2]
    prefix = f"CROSSING {name} | "
    # -s: the first one may share its line with the test's progress dot
    lines = [line.partition(prefix)[2] for line in stdout.splitlines() if prefix in line]
    total, by_origin = entry["crossings"]["total"], entry["crossings"]["by_origin"]
    if lines:
        assert len(lines) == total, (lines, entry)
    return Counted(total, by_origin, lines)


def assert_lines(lines: list[str], expected: list[str], request: str | None) -> None:
    """Every crossing, in order, matches its pattern (``*`` is a wildcard, ``[`` is literal)."""
    suffix = f" while serving {request}" if request else ""
    patterns = [(pattern + suffix).replace("[", "[[]") for pattern in expected]
    assert len(lines) == len(patterns), "\n".join(lines)
    for line, pattern in zip(lines, patterns, strict=True):
        assert fnmatch.fnmatchcase(line, pattern), f"{line!r} !~ {pattern!r}"


def one_request(
    django_project: DjangoProject, middleware: list[str], path: str = "/hello/"
) -> Counted:
    """Serve one GET through ``asgi_client`` with ``middleware``; count it under --djasync."""
    project(django_project, f"MIDDLEWARE = {middleware!r}\n")
    django_project.tests(
        f"""
        import pytest

        @pytest.mark.asyncio
        async def test_request(asgi_client, show):
            assert (await asgi_client.get("{path}")).status_code == 200
        """
    )
    result, report = django_project.report(*REPORT_ARGS)
    result.assert_outcomes(passed=1)
    return counted(report, result.stdout.str(), "test_request")


def line_of(source: str, text: str) -> int:
    lines = textwrap.dedent(source).lstrip().splitlines()
    [number] = [n for n, line in enumerate(lines, 1) if text in line]
    return number


# -- the shape of the middleware chain ------------------------------------------------------------


def test_async_view_behind_async_only_middleware(django_project: DjangoProject) -> None:
    found = one_request(django_project, [f"{M}AsyncOne", f"{M}AsyncTwo"])
    # 1 request_started (sync receivers via asend) + 1 response.close; no adapter in the chain
    assert found[:2] == (2, {"handler": 2})
    assert_lines(found.lines, [f"{STARTED} {S2A}", CLOSED], "GET /hello/")


@pytest.mark.parametrize(
    ("middleware", "around", "below"),
    [
        pytest.param(SYNC_CHAIN, "SyncOne", "SyncThree", id="classes"),
        pytest.param(
            [f"{M}sync_one", f"{M}sync_two", f"{M}sync_three"],
            "tproj.middleware.sync_one.<locals>.middleware",
            f"tproj.middleware.{'sync_three.<locals>.' if QUALIFIED else ''}middleware",
            id="functions",
        ),
    ],
)
def test_async_view_behind_three_sync_only_middlewares(
    django_project: DjangoProject, middleware: list[str], around: str, below: str
) -> None:
    found = one_request(django_project, middleware)
    # 1 request_started + 1 sync_to_async from the async handler into the sync chain (around the
    # first) + 1 async_to_sync out of it to the async view (below the third) + 1 response.close;
    # sync middleware calling sync middleware costs nothing
    assert found[:2] == (4, {"middleware": 2, "handler": 2})
    expected = [
        f"{STARTED} {S2A}",
        f"middleware: mode adapter around {around} {S2A}",
        f"middleware: mode adapter below {below} {A2S}",
        CLOSED,
    ]
    assert_lines(found.lines, expected, "GET /hello/")


def test_async_view_behind_alternating_middleware(django_project: DjangoProject) -> None:
    chain = ["SyncOne", "AsyncOne", "SyncTwo", "AsyncTwo", "SyncThree", "AsyncThree"]
    found = one_request(django_project, [M + name for name in chain])
    # 1 request_started + 6 adapters, one per sync/async boundary (handler->SyncOne, SyncOne->
    # AsyncOne, ..., SyncThree->AsyncThree; AsyncThree->view is async to async) + 1 response.close
    assert found[:2] == (8, {"middleware": 6, "handler": 2})
    # Each boundary is put on the sync-only middleware, the one to make async-capable.
    adapters = [
        f"middleware: mode adapter around {name} {S2A}"
        if name.startswith("Sync")
        else f"middleware: mode adapter below {previous} {A2S}"
        for previous, name in zip(["-", *chain[:-1]], chain, strict=True)
    ]
    assert_lines(found.lines, [f"{STARTED} {S2A}", *adapters, CLOSED], "GET /hello/")


def test_async_view_behind_djangos_default_stack(django_project: DjangoProject) -> None:
    found = one_request(django_project, DEFAULT_STACK)
    # 1 request_started + 6 process_request + 1 process_view (CSRF) + 6 process_response hooks
    # (MiddlewareMixin runs every hook through sync_to_async) + 1 response.close = 15
    assert found[:2] == (15, {"middleware": 13, "handler": 2})
    assert_lines(found.lines, DEFAULT_STACK_LINES, "GET /hello/")


def test_sync_view_without_middleware(django_project: DjangoProject) -> None:
    found = one_request(django_project, [], path="/plain/")
    # 1 request_started + 1 sync_to_async around the view in _get_response_async + 1 close
    assert found[:2] == (3, {"view": 1, "handler": 2})
    assert_lines(
        found.lines, [f"{STARTED} {S2A}", f"view: tproj.views.plain {S2A}", CLOSED], "GET /plain/"
    )


def test_async_view_with_five_async_orm_reads(django_project: DjangoProject) -> None:
    project(django_project)
    django_project.tests(
        """
        import pytest

        from tproj.models import Item


        @pytest.fixture
        def items(transactional_db):
            Item.objects.bulk_create([Item(name="a"), Item(name="b")])


        @pytest.mark.django_db(transaction=True)
        @pytest.mark.asyncio
        async def test_request(asgi_client, items, show):
            response = await asgi_client.get("/reads/")
            assert response.text == "a 2 a,b True b"
        """
    )
    result, report = django_project.report(*REPORT_ARGS)
    result.assert_outcomes(passed=1)
    found = counted(report, result.stdout.str(), "test_request")
    # 1 request_started + aget, acount, async for (one fetch of all rows), aexists, alast: one
    # sync_to_async each + 1 response.close
    assert found[:2] == (7, {"orm": 5, "handler": 2})
    reads = ["aget", "acount", "__aiter__.<locals>.generator", "aexists", "alast"]
    if not QUALIFIED:
        reads = [read.rpartition(".")[2] for read in reads]
    queryset = "QuerySet." if QUALIFIED else ""
    at = " at tproj/views.py:*"  # the project's line that called the a-method
    expected = [f"{STARTED} {S2A}", *(f"orm: {queryset}{r}{at} {S2A}" for r in reads), CLOSED]
    assert_lines(found.lines, expected, "GET /reads/")


# -- the user's own adapters ----------------------------------------------------------------------

USER_TESTS = """
import pytest
from asgiref.sync import async_to_sync, sync_to_async


def work():
    return 1


async def awork():
    return 2


@pytest.mark.asyncio
async def test_async_body(show):
    assert await sync_to_async(work)() == 1
    for _ in range(2):
        assert await sync_to_async(work, thread_sensitive=False)() == 1


def test_sync_body(show):
    assert async_to_sync(awork)() == 2
"""


def test_users_own_adapters_are_attributed_to_their_line(django_project: DjangoProject) -> None:
    project(django_project)
    django_project.tests(USER_TESTS)
    result, report = django_project.report(*REPORT_ARGS)
    result.assert_outcomes(passed=2)
    stdout = result.stdout.str()
    here = "test_scenario.py"  # relative to the working directory, the project's root
    first = line_of(USER_TESTS, "sync_to_async(work)()")
    loop = line_of(USER_TESTS, "thread_sensitive=False")
    found = counted(report, stdout, "test_async_body")
    # 1 sync_to_async + 2 more in the loop, each one hop of its own
    assert found[:2] == (3, {"user": 3})
    expected = [
        f"user: test_scenario.work at {here}:{first} {S2A}",
        f"user: test_scenario.work at {here}:{loop} [sync_to_async, any thread]",
        f"user: test_scenario.work at {here}:{loop} [sync_to_async, any thread]",
    ]
    assert_lines(found.lines, expected, None)
    found = counted(report, stdout, "test_sync_body")
    # 1 async_to_sync: a new event loop in a new thread for one coroutine
    assert found[:2] == (1, {"user": 1})
    line = line_of(USER_TESTS, "async_to_sync(awork)()")
    new_loop = "[async_to_sync, new loop]"  # no sync_to_async around it: a loop of its own
    assert_lines(found.lines, [f"user: test_scenario.awork at {here}:{line} {new_loop}"], None)


# -- budgets --------------------------------------------------------------------------------------

BUDGET_TESTS = f"""
import pytest

DEFAULT_STACK = {DEFAULT_STACK!r}
SYNC_CHAIN = {SYNC_CHAIN!r}


@pytest.mark.djasync_max_crossings(15)
@pytest.mark.asyncio
async def test_default_stack_at_budget(asgi_client, settings):
    settings.MIDDLEWARE = DEFAULT_STACK
    assert (await asgi_client.get("/hello/")).status_code == 200


@pytest.mark.djasync_max_crossings(14)
@pytest.mark.asyncio
async def test_default_stack_over_budget(asgi_client, settings):
    settings.MIDDLEWARE = DEFAULT_STACK
    assert (await asgi_client.get("/hello/")).status_code == 200


@pytest.mark.djasync_max_crossings(4)
@pytest.mark.asyncio
async def test_sync_chain_at_budget(asgi_client, settings):
    settings.MIDDLEWARE = SYNC_CHAIN
    assert (await asgi_client.get("/hello/")).status_code == 200


@pytest.mark.djasync_max_crossings(3)
@pytest.mark.asyncio
async def test_sync_chain_over_budget(asgi_client, settings):
    settings.MIDDLEWARE = SYNC_CHAIN
    assert (await asgi_client.get("/hello/")).status_code == 200
"""


def test_marker_passes_at_the_exact_count_and_fails_one_below(
    django_project: DjangoProject,
) -> None:
    project(django_project)
    django_project.tests(BUDGET_TESTS)
    result = django_project.run()  # no --djasync: the marker alone turns counting on
    result.assert_outcomes(passed=2, failed=2)
    s2a, a2s = "?sync_to_async, thread_sensitive?", "?async_to_sync, outer loop?"
    served = " while serving GET /hello/"
    result.stdout.fnmatch_lines(
        [
            "*test_default_stack_over_budget*",
            "pytest-djasync: 15 sync/async crossings in this test's call phase,"
            " more than the 14 allowed",
            f"  1. {STARTED} {s2a}{served}",
            f"  2. middleware: SecurityMiddleware.process_request (MiddlewareMixin hook) {s2a}*",
            "  8. middleware: CsrfViewMiddleware.process_view (MiddlewareMixin hook) *",
            f" 15. handler: HttpResponse.close {s2a}{served}",
            "13 of them from Django's own middleware (SecurityMiddleware, *,"
            " XFrameOptionsMiddleware): each of its MiddlewareMixin hooks costs a hop per"
            " request in an async view; remove what the project does not need, or allow for"
            " the rest in the budget",
            "*test_sync_chain_over_budget*",
            "pytest-djasync: 4 sync/async crossings in this test's call phase,"
            " more than the 3 allowed",
            f"  1. {STARTED} *",
            f"  2. middleware: mode adapter around SyncOne {s2a}{served}",
            f"  3. middleware: mode adapter below SyncThree {a2s}{served}",
            "  4. handler: HttpResponse.close *",
            "2 of them avoidable:",
            "  - make SyncOne, SyncTwo, SyncThree async-capable (*) so Django needs no adapter"
            " around it (2x)",
        ]
    )
    result.stdout.no_fnmatch_line("13 of them avoidable:")  # Django's can only be removed
    result.stdout.no_fnmatch_line("careful:*")  # no sync-only middleware keeps them in sync mode
    # Every crossing is listed: 15 numbered lines for the stack, 4 for the chain.
    numbered = [line for line in result.stdout.lines if re.match(r" *\d+\. ", line)]
    assert len(numbered) == 15 + 4, numbered
    # The summary names the test's def line, not the first of its decorators (pytest's line).
    line = line_of(BUDGET_TESTS, "async def test_sync_chain_over_budget")
    result.stdout.fnmatch_lines([f"test_scenario.py:{line} in test_sync_chain_over_budget: *"])


FIXTURE_TESTS = f"""
import pytest
from django.test.client import AsyncClientHandler, ClientHandler

# Collected before any test runs: request naming is installed only while a recorder records.
DJANGO_ORIGINAL = {{cls: vars(cls)["__call__"] for cls in (AsyncClientHandler, ClientHandler)}}

SYNC_CHAIN = {SYNC_CHAIN!r}


@pytest.mark.asyncio
async def test_block_at_budget(asgi_client, settings, djasync_assert_max_crossings):
    settings.MIDDLEWARE = SYNC_CHAIN
    with djasync_assert_max_crossings(4) as block:
        assert (await asgi_client.get("/hello/")).status_code == 200
    assert block.total == 4


@pytest.mark.asyncio
async def test_block_over_budget(asgi_client, settings, djasync_assert_max_crossings):
    settings.MIDDLEWARE = SYNC_CHAIN
    with djasync_assert_max_crossings(3):
        assert (await asgi_client.get("/hello/")).status_code == 200


@pytest.mark.asyncio
async def test_recorder(asgi_client, settings, djasync_crossings, djasync_assert_max_crossings):
    settings.MIDDLEWARE = SYNC_CHAIN
    with djasync_assert_max_crossings(4) as block:
        await asgi_client.get("/hello/")
    await asgi_client.get("/hello/")  # outside the block: the test's recorder only
    assert block.total == 4
    assert djasync_crossings.total == len(djasync_crossings) == 8
    assert djasync_crossings.by_origin() == {{"middleware": 4, "handler": 4}}
    assert djasync_crossings.by_request() == {{"GET /hello/": 8}}
    assert [(c.origin, c.direction, c.thread_sensitive) for c in block.crossings] == [
        ("handler", "sync_to_async", True),  # request_started
        ("middleware", "sync_to_async", True),  # into the sync chain
        ("middleware", "async_to_sync", False),  # out of it, back on the loop
        ("handler", "sync_to_async", True),  # response.close
    ]
    assert [c.detail for c in block.crossings][1:3] == [
        "mode adapter around SyncOne",
        "mode adapter below SyncThree",
    ]
    assert block.crossings[1].wrapped == "tproj.middleware.SyncOne instance"
    assert [c.outer_loop for c in block.crossings] == [False, False, True, False]


@pytest.mark.asyncio
async def test_below_djangos_floor(asgi_client, settings, djasync_assert_max_crossings):
    settings.MIDDLEWARE = []
    with djasync_assert_max_crossings(1):
        await asgi_client.get("/hello/")


@pytest.mark.asyncio
async def test_djangos_async_client_names_its_requests(async_client, settings, djasync_crossings):
    settings.MIDDLEWARE = SYNC_CHAIN
    await async_client.get("/hello/")
    assert set(djasync_crossings.by_request()) == {{"GET /hello/"}}


def test_djangos_sync_client_names_its_requests(client, djasync_crossings):
    client.get("/hello/")
    assert set(djasync_crossings.by_request()) == {{"GET /hello/"}}


def test_django_is_restored_after_the_fixtures():
    for cls, original in DJANGO_ORIGINAL.items():
        assert vars(cls)["__call__"] is original, cls
"""


def test_fixtures_count_and_expose_each_crossing(django_project: DjangoProject) -> None:
    project(django_project)
    django_project.tests(FIXTURE_TESTS)
    result = django_project.run()  # without --djasync: the fixtures work on their own
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_block_over_budget*",
            "pytest-djasync: 4 sync/async crossings in the block, more than the 3 allowed",
            "  3. middleware: mode adapter below SyncThree *",
            "2 of them avoidable:",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*test_below_djangos_floor*",
            "pytest-djasync: 2 sync/async crossings in the block, more than the 1 allowed",
            "none of them avoidable from the project: Django's handler and the test client pay"
            " these on every request; allow at least 2",
        ]
    )
    # Warn mode fails no test because of the plugin: the listing goes into the report (trial)
    warned = django_project.run("--djasync-warn", "-rA", "-k", "over_budget or floor")
    warned.assert_outcomes(passed=2)
    warned.stdout.fnmatch_lines(
        [
            "*DjasyncWarning: djasync_assert_max_crossings: 4 sync/async crossings in the block,"
            " more than the 3 allowed",
            "*Captured djasync call*",
            "pytest-djasync: 4 sync/async crossings in the block, more than the 3 allowed",
        ]
    )
    # A project's blanket `-W error` does not undo warn mode; naming the warning does
    blanket = django_project.run("--djasync-warn", "-W", "error", "-k", "over_budget or floor")
    blanket.assert_outcomes(passed=2)
    named = "error::pytest_djasync.errors.DjasyncWarning"
    strict = django_project.run("--djasync-warn", "-W", named, "-k", "over_budget or floor")
    strict.assert_outcomes(failed=2)


# -- stability, and asgi_client against Django's AsyncClient --------------------------------------

CLIENT_TESTS = f"""
import pytest
from django.test import AsyncClient

DEFAULT_STACK = {DEFAULT_STACK!r}


@pytest.mark.parametrize("run", [1, 2, 3])
@pytest.mark.asyncio
async def test_repeat(asgi_client, settings, run):
    settings.MIDDLEWARE = DEFAULT_STACK
    assert (await asgi_client.get("/hello/")).status_code == 200


@pytest.mark.asyncio
async def test_two_requests(asgi_client, settings):
    settings.MIDDLEWARE = DEFAULT_STACK
    for _ in range(2):
        assert (await asgi_client.get("/hello/")).status_code == 200


@pytest.mark.asyncio
async def test_django_async_client(settings, show):
    settings.MIDDLEWARE = DEFAULT_STACK
    assert (await AsyncClient().get("/hello/")).status_code == 200


@pytest.mark.asyncio
async def test_asgi_client_streaming(asgi_client, show):
    async with asgi_client.stream("GET", "/streams/") as response:
        assert [chunk async for chunk in response.aiter_raw()] == [b"a", b"b"]


@pytest.mark.asyncio
async def test_django_async_client_streaming(show):
    response = await AsyncClient().get("/streams/")
    assert [chunk async for chunk in response.streaming_content] == [b"a", b"b"]
"""


def test_counts_are_stable_and_match_djangos_async_client(django_project: DjangoProject) -> None:
    project(django_project)
    django_project.tests(CLIENT_TESTS)
    result, report = django_project.report(*REPORT_ARGS)
    result.assert_outcomes(passed=7)
    stdout = result.stdout.str()
    # The same request costs the same in every run, the session's first included.
    for run in (1, 2, 3):
        found = counted(report, stdout, f"test_repeat[{run}]")
        assert found[:2] == (15, {"middleware": 13, "handler": 2}), run
    # Per request: two requests in one test are exactly twice one.
    assert counted(report, stdout, "test_two_requests")[:2] == (
        30,
        {"middleware": 26, "handler": 4},
    )

    # AsyncClient runs the same middleware chain and view with the same hops, so the total is
    # the same. What differs is who makes the last one: its AsyncClientHandler, not
    # ASGIHandler, calls response.close() via sync_to_async(thread_sensitive=False).
    found = counted(report, stdout, "test_django_async_client")
    if django.VERSION >= (5, 0):
        assert found[:2] == (15, {"middleware": 13, "handler": 1, "test-client": 1})
    else:  # and on 4.2 the request_started hop too
        assert found[:2] == (15, {"middleware": 13, "test-client": 2})
    assert found.lines[0].startswith(STARTED_BY_TEST_CLIENT)
    assert_lines(found.lines[1:-1], DEFAULT_STACK_LINES[1:-1], "GET /hello/")
    assert found.lines[-1] == (
        "test-client: HttpResponse.close [sync_to_async, any thread] while serving GET /hello/"
    )

    # Streaming responses do differ. ASGIHandler still closes the response through
    # sync_to_async once the body is sent: 1 request_started + 1 response.close.
    found = counted(report, stdout, "test_asgi_client_streaming")
    assert found[:2] == (2, {"handler": 2})
    expected = [f"{STARTED} {S2A}", f"handler: StreamingHttpResponse.close {S2A}"]
    assert_lines(found.lines, expected, "GET /streams/")
    # AsyncClient wraps the stream instead and calls close() inline, on the test's loop, when
    # the test has read it: only the request_started hop is left.
    found = counted(report, stdout, "test_django_async_client_streaming")
    assert found.total == 1
    assert found.lines[0].startswith(STARTED_BY_TEST_CLIENT)


# -- leaving asgiref as it was --------------------------------------------------------------------

RESTORE_TESTS = """
import pytest
from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync, sync_to_async

# Collected before any test runs, so before anything was counted.
ORIGINAL = {cls: vars(cls)["__call__"] for cls in (SyncToAsync, AsyncToSync)}


def work():
    return 1


def assert_original():
    for cls, original in ORIGINAL.items():
        assert vars(cls)["__call__"] is original, cls


@pytest.mark.djasync_max_crossings(2)
def test_marked():
    assert vars(SyncToAsync)["__call__"] is not ORIGINAL[SyncToAsync]  # counting now
    assert async_to_sync(sync_to_async(work))() == 1


def test_after_marked():
    assert_original()


def test_fixture(djasync_crossings):
    assert async_to_sync(sync_to_async(work))() == 1
    assert djasync_crossings.total == 2


def test_after_fixture():
    assert_original()


@pytest.mark.djasync_max_crossings(1)
@pytest.mark.asyncio
async def test_patched_over_ours_in_the_body(monkeypatch):
    # monkeypatch undoes this at teardown, after counting stopped: ours is left behind it.
    ours = vars(SyncToAsync)["__call__"]
    monkeypatch.setattr(SyncToAsync, "__call__", lambda self, *a, **k: ours(self, *a, **k))
    assert await sync_to_async(work)() == 1


@pytest.mark.djasync_max_crossings(1)
@pytest.mark.asyncio
async def test_left_behind_wrapper_does_not_count_twice(djasync_crossings):
    assert await sync_to_async(work)() == 1
    assert djasync_crossings.total == 1


def test_after_all():
    assert_original()
"""

USER_PATCH_CONFTEST = (
    CONFTEST
    + """

from asgiref.sync import AsyncToSync, SyncToAsync

SEEN = []


def _counting(cls):
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        SEEN.append(cls.__name__)
        return original(self, *args, **kwargs)

    cls.__call__ = __call__
    return __call__


# An APM agent or a project's own counter: installed before the session starts.
USER_PATCHES = {cls: _counting(cls) for cls in (SyncToAsync, AsyncToSync)}
"""
)

USER_PATCH_TESTS = """
import pytest
from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync, sync_to_async

from conftest import SEEN, USER_PATCHES


def work():
    return 1


async def awork():
    return 2


@pytest.mark.djasync_max_crossings(3)
@pytest.mark.asyncio
async def test_counted_through_the_user_patch(asgi_client, djasync_crossings):
    ours = vars(SyncToAsync)["__call__"]
    assert ours is not USER_PATCHES[SyncToAsync]
    assert ours.__wrapped__ is USER_PATCHES[SyncToAsync]  # chained in front of theirs
    before = len(SEEN)
    assert (await asgi_client.get("/hello/")).status_code == 200
    assert await sync_to_async(work)() == 1
    assert SEEN[before:] == ["SyncToAsync"] * 3  # theirs saw every call too
    assert djasync_crossings.by_origin() == {"handler": 2, "user": 1}


def test_user_patch_is_back_and_still_works():
    for cls, theirs in USER_PATCHES.items():
        assert vars(cls)["__call__"] is theirs, cls
    before = len(SEEN)
    assert async_to_sync(sync_to_async(work))() == 1
    assert SEEN[before:] == ["AsyncToSync", "SyncToAsync"]
"""


def test_asgiref_is_restored_after_counting(django_project: DjangoProject) -> None:
    project(django_project)
    django_project.tests(RESTORE_TESTS)
    result = django_project.run()  # no --djasync: only the marked tests and the fixtures count
    result.assert_outcomes(passed=7)


def test_a_users_own_patch_is_chained_not_clobbered(django_project: DjangoProject) -> None:
    project(django_project)
    django_project.module("conftest.py", USER_PATCH_CONFTEST)
    django_project.tests(USER_PATCH_TESTS)
    result = django_project.run()
    result.assert_outcomes(passed=2)


def test_a_counting_recorder_counts_what_an_explaining_one_explains(
    pytester: pytest.Pytester,
) -> None:
    """Under --djasync a test's own recorder only counts unless a budget or the report file
    asks why; nested recorders each get every crossing, explained where wanted."""
    pytester.makepyfile(
        """
        from asgiref.sync import async_to_sync, sync_to_async

        from pytest_djasync import crossings

        def work():
            return 1

        async def hop():
            return await sync_to_async(work)()

        def test_counts():
            counting = crossings.start(crossings.Recorder(explain=False))
            async_to_sync(hop)()
            explaining = crossings.start(crossings.Recorder())
            async_to_sync(hop)()
            crossings.stop(explaining)
            crossings.stop(counting)
            assert (counting.total, len(counting), counting.crossings) == (4, 4, [])
            assert explaining.total == 2
            assert [c.direction for c in explaining] == ["async_to_sync", "sync_to_async"]
            assert explaining.by_origin() == {"user": 2}
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


# -- hops that Django's exception path, a TemplateResponse and installed packages make ----------

PACKAGE = """
from asgiref.sync import sync_to_async


def _field(value):
    return value


async def serialize(values):  # as adrf's serializers do: one hop per field
    return [await sync_to_async(_field)(value) for value in values]
"""

PACKAGE_TESTING = """
from asgiref.sync import sync_to_async


async def prepare():
    return await sync_to_async(dict)()
"""

ELSEWHERE_VIEWS = """
from django.http import Http404, HttpResponse
from django.template import engines
from django.template.response import SimpleTemplateResponse

import fakelib


async def missing(request):
    raise Http404("no such thing")


async def templated(request):
    return SimpleTemplateResponse(engines["django"].from_string("hi"))


async def packaged(request):
    return HttpResponse(str(await fakelib.serialize([1, 2])))


async def cached(request):
    from django.core.cache import cache

    await cache.aset("greeting", "hi")
    return HttpResponse(await cache.aget("greeting"))
"""

ELSEWHERE_TESTS = """
import pytest

import fakelib.testing


@pytest.mark.asyncio
async def test_missing(asgi_client, show):
    assert (await asgi_client.get("/missing/")).status_code == 404


@pytest.mark.asyncio
async def test_templated(asgi_client, show):
    assert (await asgi_client.get("/templated/")).status_code == 200


@pytest.mark.asyncio
async def test_packaged(asgi_client, show):
    await fakelib.testing.prepare()
    assert (await asgi_client.get("/packaged/")).status_code == 200


@pytest.mark.asyncio
async def test_cached(asgi_client, show):
    assert (await asgi_client.get("/cached/")).status_code == 200


@pytest.mark.asyncio
@pytest.mark.djasync_max_crossings(0)
async def test_budget(asgi_client):
    await asgi_client.get("/templated/")
    await asgi_client.get("/packaged/")
"""


def test_hops_of_djangos_exception_path_templates_and_packages(
    django_project: DjangoProject,
) -> None:
    """A view's exception costs two hops of Django's handler, not the view's; a
    TemplateResponse's render is the view's, with its own advice; a hop an installed package
    makes itself (it lives in site-packages) is that package's, its testing module's a test
    client's, and a budget lists them apart from what the project could avoid."""
    templates = 'TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates"}]\n'
    project(django_project, f"MIDDLEWARE = []\n{templates}")
    django_project.views(ELSEWHERE_VIEWS)
    files = {"fakelib/__init__.py": PACKAGE, "fakelib/testing.py": PACKAGE_TESTING}
    django_project.installed(files, conftest=CONFTEST)
    django_project.tests(ELSEWHERE_TESTS)
    result, report = django_project.report(*REPORT_ARGS)
    result.assert_outcomes(passed=4, failed=1)
    stdout = result.stdout.str()
    cached = counted(report, stdout, "test_cached")
    api = ["async-api: LocMemCache.set [S2A]", "async-api: LocMemCache.get [S2A]"]
    assert_lines(cached.lines[1:3], [line.replace("[S2A]", S2A) for line in api], "GET /cached/")
    missing = counted(report, stdout, "test_missing")
    assert missing.by_origin.keys() == {"handler"}, missing.lines  # never the async view's
    assert_lines(
        missing.lines[1:3],
        [
            f"handler: ASGIHandler.process_exception_by_middleware {S2A}",
            "handler: django.core.handlers.exception.response_for_exception"
            " [sync_to_async, any thread]",
        ],
        "GET /missing/",
    )
    rendered = "view: SimpleTemplateResponse.render (a TemplateResponse, rendered after the view)"
    templated = counted(report, stdout, "test_templated")
    assert_lines(
        templated.lines,
        [f"{STARTED} {S2A}", f"{rendered} {S2A}", f"handler: *.close {S2A}"],
        "GET /templated/",
    )
    packaged = counted(report, stdout, "test_packaged")
    assert packaged.by_origin == {"handler": 2, "library": 2, "test-client": 1}
    assert packaged.lines[0] == f"test-client: builtins.dict (by fakelib) {S2A}"
    assert (
        packaged.lines[2]
        == f"library: fakelib._field (by fakelib) {S2A} while serving GET /packaged/"
    )
    result.stdout.fnmatch_lines(
        [
            "1 of them avoidable:",
            "  - return a rendered response instead of a TemplateResponse*(1x)",
            "2 of them made by installed packages themselves (fakelib): production pays them too*",
        ]
    )


def test_an_error_through_async_to_sync_is_not_shown_from_the_plugins_wrapper(
    django_project: DjangoProject,
) -> None:
    django_project.tests(
        """
        import pytest
        from asgiref.sync import async_to_sync

        async def boom():
            raise ValueError("boom")

        def test_it():
            async_to_sync(boom)()
        """
    )
    result = django_project.run("--djasync")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: boom"])
    result.stdout.no_fnmatch_line("*pytest_djasync*crossings.py*")


def test_a_budget_warns_that_converting_a_sync_only_middleware_wakes_the_hooks_around_it(
    django_project: DjangoProject,
) -> None:
    """Below a sync-only middleware the chain runs in sync mode, where Django's MiddlewareMixin
    hooks cost no hop: making it async-capable, as the adapter's advice says, would turn 2
    adapter hops into 13 hook hops. The failure says so."""
    project(django_project)
    django_project.tests(
        f"""
        import pytest

        @pytest.mark.djasync_max_crossings(0)
        @pytest.mark.asyncio
        async def test_legacy_last(asgi_client, settings):
            settings.MIDDLEWARE = {DEFAULT_STACK!r} + ["{M}SyncOne", "{M}sync_two"]
            assert (await asgi_client.get("/hello/")).status_code == 200
        """
    )
    result = django_project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-djasync: 5 sync/async crossings in this test's call phase, more than the 0*",
            "  2. middleware: mode adapter around SecurityMiddleware *",
            "  3. middleware: mode adapter below tproj.middleware.*middleware *",
            "2 of them avoidable:",
            "  - make SyncOne, tproj.middleware.sync_two async-capable * (2x)",
            "1 of them from Django's own middleware (CsrfViewMiddleware)*",
            "careful: SecurityMiddleware, SessionMiddleware, CommonMiddleware,"
            " AuthenticationMiddleware, MessageMiddleware, XFrameOptionsMiddleware ran in sync"
            " mode beside the sync-only middleware, where a MiddlewareMixin hook costs no hop;*",
            # the summary's one line is the advice that covers most of them
            "*djasync summary*",
            "*: crossings 5 sync/async crossings, more than the 0 allowed",
            "    fix: make SyncOne, tproj.middleware.sync_two async-capable (*",
        ]
    )


def test_a_requests_one_query_is_not_called_avoidable(django_project: DjangoProject) -> None:
    """One async query is one hop whichever way it is made: there is nothing to batch."""
    project(django_project, "MIDDLEWARE = []\n")
    django_project.views(
        VIEWS
        + """

async def one_read(request):
    return HttpResponse(str(await Item.objects.acount()))
"""
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.djasync_max_crossings(0)
        @pytest.mark.asyncio
        async def test_one_read(asgi_client, transactional_db):
            await asgi_client.get("/one_read/")
        """
    )
    result = django_project.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-djasync: 3 sync/async crossings in this test's call phase, more than the 0*",
            "none of them avoidable from the project: Django's handler and the test client pay"
            " these on every request (and a request's one query is one hop however it is made);"
            " allow at least 3",
        ]
    )
    result.stdout.no_fnmatch_line("*batch the ORM work*")


QUERYING_VIEWS = """
from django.http import HttpResponse

import gqlish
from tproj.models import Item


async def resolved(request):
    names = await gqlish.execute(Item.objects.all())  # iterates it with async for
    return HttpResponse(",".join(names))


async def whoami(request):
    user = await request.auser()
    return HttpResponse(str(user.is_authenticated))
"""

QUERYING_PACKAGE = """
async def execute(queryset):  # as graphql-core completes a list field from an async iterable
    return [item.name async for item in queryset]
"""


def test_an_orm_hop_is_put_on_whoever_called_the_async_method(
    django_project: DjangoProject,
) -> None:
    """The project's own call names its line; a package iterating a QuerySet it was handed
    (graphql-core) made that hop itself; Django's request.auser() queries for the session and
    the user. Neither of the last two is the project's ORM work to batch (trial, 10/10)."""
    auth = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ]
    project(django_project, f"MIDDLEWARE = {auth!r}\n")
    django_project.views(QUERYING_VIEWS)
    django_project.installed({"gqlish/__init__.py": QUERYING_PACKAGE}, conftest=CONFTEST)
    django_project.tests(
        """
        import pytest

        from tproj.models import Item

        @pytest.fixture
        def items(transactional_db):
            Item.objects.bulk_create([Item(name="a"), Item(name="b")])

        @pytest.mark.django_db(transaction=True)
        @pytest.mark.asyncio
        async def test_resolved(asgi_client, items, show):
            assert (await asgi_client.get("/resolved/")).text == "a,b"

        @pytest.mark.django_db(transaction=True)
        @pytest.mark.djasync_max_crossings(0)
        @pytest.mark.asyncio
        async def test_whoami(asgi_client, django_user_model, show):
            user = await django_user_model.objects.acreate(username="ada")
            await asgi_client.aforce_login(user)
            assert (await asgi_client.get("/whoami/")).text == "True"
        """
    )
    auser = django.VERSION >= (5, 0)  # request.auser() is new in Django 5.0
    result, report = django_project.report(*REPORT_ARGS, *([] if auser else ["-k", "resolved"]))
    result.assert_outcomes(passed=1, failed=1 if auser else 0)
    stdout = result.stdout.str()
    resolved = counted(report, stdout, "test_resolved")
    assert resolved.by_origin.get("orm") is None, resolved.lines
    [iterated] = [line for line in resolved.lines if line.startswith("library:")]
    assert "(by gqlish)" in iterated, iterated
    if not auser:
        return
    whoami = counted(report, stdout, "test_whoami")
    asked = [line for line in whoami.lines if line.startswith("async-api:")]
    assert len(asked) == 2, whoami.lines  # the session, then the user
    assert all("(by Django's " in line for line in asked), asked
    result.stdout.no_fnmatch_line("*batch the ORM work*")
    result.stdout.no_fnmatch_line("*avoidable:")  # auser() is the fix the plugin gives


def failure_of(result: pytest.RunResult, test: str) -> str:
    """The failure section of ``test`` in pytest's output: from its header to the next one."""
    lines = result.stdout.lines
    [start] = [n for n, line in enumerate(lines) if re.match(rf"^_+ {re.escape(test)} _+$", line)]
    end = next(
        (n for n in range(start + 1, len(lines)) if re.match(r"^(_{3,}|={3,}) ", lines[n])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def fnmatch_in_order(text: str, patterns: list[str]) -> None:
    lines = iter(text.splitlines())
    for pattern in patterns:
        assert any(fnmatch.fnmatchcase(line, pattern) for line in lines), (pattern, text)


# -- middleware in sync mode, middleware hooks, and installed packages' middleware ---------------

SYNC_MODE_TESTS = f"""
import pytest

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_mixin_above(asgi_client, settings):
    settings.MIDDLEWARE = ["{M}Timing", "{M}SyncOne"]
    assert (await asgi_client.get("/hello/")).status_code == 200

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_function_above(asgi_client, settings):
    settings.MIDDLEWARE = ["{M}both", "{M}Timing", "{M}sync_one"]
    assert (await asgi_client.get("/hello/")).status_code == 200

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_plain_hook(asgi_client, settings):
    settings.MIDDLEWARE = ["{M}Audit"]
    assert (await asgi_client.get("/hello/")).status_code == 200
"""


def test_an_adapter_around_an_async_capable_middleware_names_the_sync_only_one_below(
    django_project: DjangoProject,
) -> None:
    """Django puts every async-capable middleware above a sync-only one in sync mode, and its
    adapter around the outermost: that one is named with the sync-only one that caused it
    (trial: "mode adapter around CorsMiddleware" for WhiteNoise below it). A hook Django adapts
    for a middleware that is no MiddlewareMixin is called a middleware hook, with its advice."""
    project(django_project)
    django_project.tests(SYNC_MODE_TESTS)
    result = django_project.run()
    result.assert_outcomes(failed=3)
    fnmatch_in_order(
        failure_of(result, "test_mixin_above"),
        [
            "  2. middleware: mode adapter around Timing (in sync mode for SyncOne below it) *",
            "  3. middleware: mode adapter below SyncOne *",
            "2 of them avoidable:",
            "  - make SyncOne async-capable * (2x)",
            "careful: Timing ran in sync mode beside the sync-only middleware*",
        ],
    )
    fnmatch_in_order(
        failure_of(result, "test_function_above"),
        [
            "  2. middleware: mode adapter around tproj.middleware.both.<locals>.middleware (in"
            " sync mode for tproj.middleware.sync_one.<locals>.middleware below it) *",
            "  3. middleware: mode adapter below tproj.middleware.*middleware *",
            "  - make tproj.middleware.sync_one async-capable * (2x)",
        ],
    )
    hook = failure_of(result, "test_plain_hook")
    fnmatch_in_order(
        hook,
        [
            "pytest-djasync: 3 sync/async crossings *",
            "  2. middleware: Audit.process_view (middleware hook) [[]sync_to_async, *",
            "1 of them avoidable:",
            "  - make the hook a coroutine (async def process_view)* (1x)",
        ],
    )
    assert "MiddlewareMixin" not in hook, hook


CORSISH = """
from asgiref.sync import iscoroutinefunction, markcoroutinefunction


class CorsMiddleware:  # as django-cors-headers: async-capable, either mode
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.get_response(request)

    async def __acall__(self, request):
        return await self.get_response(request)
"""

WHITENOISEISH = """
import pathlib

from django.http import FileResponse


class WhiteNoiseFileResponse(FileResponse):
    pass


class WhiteNoiseMiddleware:  # sync-only: no async_capable
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/static/"):
            return WhiteNoiseFileResponse(open(pathlib.Path(__file__).parent / "app.css", "rb"))
        return self.get_response(request)
"""

OTELISH = """
class MiddlewareMixin:  # opentelemetry's own, not Django's: sync-only
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        self.process_request(request)
        return self.get_response(request)


class _DjangoMiddleware(MiddlewareMixin):
    def process_request(self, request):
        pass

    def process_view(self, request, view, args, kwargs):
        return None
"""

INSTALLED_VIEWS = """
import pathlib

from django.http import FileResponse, HttpResponse


async def hello(request):
    return HttpResponse("hello")


async def download(request):
    return FileResponse(open(pathlib.Path(__file__), "rb"))
"""

INSTALLED_TESTS = """
import pytest

STATIC = ["corsish.CorsMiddleware", "whitenoiseish.WhiteNoiseMiddleware"]

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_static(asgi_client, settings):
    settings.MIDDLEWARE = STATIC
    assert (await asgi_client.get("/static/app.css")).status_code == 200

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_through(asgi_client, settings):
    settings.MIDDLEWARE = STATIC
    assert (await asgi_client.get("/hello/")).status_code == 200

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_traced(asgi_client, settings):
    settings.MIDDLEWARE = ["otelish._DjangoMiddleware"]
    assert (await asgi_client.get("/hello/")).status_code == 200

@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_download(asgi_client):
    assert (await asgi_client.get("/download/")).status_code == 200
"""


def test_installed_packages_middleware_and_responses_are_not_called_the_projects_to_fix(
    django_project: DjangoProject,
) -> None:
    """Trial: WhiteNoise (sync-only) below django-cors-headers, opentelemetry's middleware
    (its own MiddlewareMixin) and WhiteNoise's file responses. Their hops are listed apart as
    installed packages' code, never as "make WhiteNoiseMiddleware async-capable"; a streaming
    response's sync iterator is named, and avoidable when the project's view made it."""
    project(django_project, "MIDDLEWARE = []\n")
    django_project.views(INSTALLED_VIEWS)
    files = {
        "corsish/__init__.py": CORSISH,
        "whitenoiseish/__init__.py": WHITENOISEISH,
        "whitenoiseish/app.css": "body {}\n",
        "otelish/__init__.py": OTELISH,
    }
    django_project.installed(files)
    django_project.tests(INSTALLED_TESTS)
    result = django_project.run("-W", "ignore::Warning")  # Django warns of the sync iterator
    result.assert_outcomes(failed=4)
    installed = "of them for installed packages' middleware or responses"
    upgrade = "upgrade to a release that is async-capable, replace or remove it, or allow*"
    static = failure_of(result, "test_static")
    fnmatch_in_order(
        static,
        [
            "  2. middleware: mode adapter around CorsMiddleware (in sync mode for"
            " WhiteNoiseMiddleware below it) *",
            "  3. handler: a streaming response's sync iterator read in a thread"
            " (WhiteNoiseFileResponse, from whitenoiseish) [[]sync_to_async, thread_sensitive]*",
            f"2 {installed} (WhiteNoiseMiddleware (whitenoiseish), WhiteNoiseFileResponse"
            f" (whitenoiseish)): a package's code, not the project's to rewrite; {upgrade}",
        ],
    )
    through = failure_of(result, "test_through")
    fnmatch_in_order(
        through,
        [
            "  3. middleware: mode adapter below WhiteNoiseMiddleware *",
            f"2 {installed} (WhiteNoiseMiddleware (whitenoiseish)): *",
        ],
    )
    traced = failure_of(result, "test_traced")
    fnmatch_in_order(
        traced,
        [
            "  4. middleware: _DjangoMiddleware.process_view (middleware hook) *",
            f"3 {installed} (_DjangoMiddleware (otelish)): *",
        ],
    )
    for text in (static, through, traced):
        assert "avoidable:" not in text, text
        assert "async-capable (" not in text, text  # no "make WhiteNoiseMiddleware async-..."
        assert "careful:" not in text, text
    fnmatch_in_order(
        failure_of(result, "test_download"),
        [
            "  2. handler: a streaming response's sync iterator read in a thread (FileResponse) *",
            "1 of them avoidable:",
            "  - give the streaming response an async iterator (an async generator)* (1x)",
        ],
    )


# -- the project's sync work: concurrent calls, and one hop per request as the floor -------------

SYNC_WORK_VIEWS = """
import asyncio

from asgiref.sync import sync_to_async
from django.http import HttpResponse

from tproj.models import Item


def sdk_call(n):
    return n


def helper():
    return Item.objects.count()


async def fanned(request):
    calls = [sync_to_async(sdk_call, thread_sensitive=False)(n) for n in range(3)]
    return HttpResponse(str(sum(await asyncio.gather(*calls))))


async def serial(request):
    total = 0
    for n in range(3):
        total += await sync_to_async(sdk_call, thread_sensitive=False)(n)
    return HttpResponse(str(total))


async def mixed(request):
    names = [item.name async for item in Item.objects.all()]
    extra = await sync_to_async(helper)()
    count = await Item.objects.acount()
    return HttpResponse(f"{names} {extra} {count}")


async def batched(request):
    return HttpResponse(str(await sync_to_async(helper)()))
"""

SYNC_WORK_TESTS = """
import pytest
from asgiref.sync import sync_to_async


@pytest.mark.djasync_max_crossings(0)
@pytest.mark.parametrize("view", ["fanned", "serial", "mixed", "batched"])
@pytest.mark.asyncio
async def test_view(asgi_client, transactional_db, view):
    assert (await asgi_client.get(f"/{view}/")).status_code == 200


@pytest.mark.djasync_max_crossings(0)
@pytest.mark.asyncio
async def test_one(transactional_db):
    assert await sync_to_async(int)() == 0
"""


def test_a_requests_sync_work_is_one_hop_at_least_and_concurrent_calls_are_not_folded(
    django_project: DjangoProject,
) -> None:
    """Trial: three gathered sync_to_async(..., thread_sensitive=False) calls were told to
    fold into one, which serializes them; a view's `async for`, sync_to_async(helper) and
    acount() were told "batch the ORM work (2x); fold consecutive sync_to_async calls (1x)",
    though batching all of it leaves one hop, which is then no call to fold."""
    project(django_project, "MIDDLEWARE = []\n")
    django_project.views(SYNC_WORK_VIEWS)
    django_project.tests(SYNC_WORK_TESTS)
    result = django_project.run()
    result.assert_outcomes(failed=5)
    fanned = failure_of(result, "test_view[fanned]")
    fnmatch_in_order(
        fanned,
        [
            "pytest-djasync: 5 sync/async crossings *",
            "3 of them avoidable:",
            "  - sync_to_async calls that ran concurrently (thread_sensitive=False): folding them"
            " would run them one after the other; make what they wrap async * (3x)",
        ],
    )
    assert "fold consecutive" not in fanned, fanned
    fnmatch_in_order(
        failure_of(result, "test_view[serial]"),
        ["2 of them avoidable:", "  - fold consecutive sync_to_async calls * (2x)"],
    )
    mixed = failure_of(result, "test_view[mixed]")
    fnmatch_in_order(
        mixed,
        [
            "pytest-djasync: 5 sync/async crossings *",
            "2 of them avoidable:",
            "  - run the ORM work and the sync calls in one function called through one"
            " sync_to_async(...)* (2x)",
        ],
    )
    assert "fold consecutive" not in mixed, mixed
    assert "batch the ORM work" not in mixed, mixed
    batched = failure_of(result, "test_view[batched]")
    fnmatch_in_order(
        batched,
        [
            "none of them avoidable from the project: Django's handler and the test client pay"
            " these on every request (and a request's one sync_to_async call is one hop however"
            " it is made); allow at least 3",
        ],
    )
    assert "fold consecutive" not in batched, batched
    fnmatch_in_order(
        failure_of(result, "test_one"),
        [
            "pytest-djasync: 1 sync/async crossing in this test's call phase, more than the 0*",
            "it is not avoidable from the project: the test's one sync_to_async call is one hop"
            " however it is made; allow at least 1",
        ],
    )
