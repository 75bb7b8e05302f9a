"""The database thread: async tests see, and roll back, the test's own transaction.

Every scenario runs on SQLite and, when a server can be reached, on PostgreSQL (``.ci/run``
starts one; locally set ``PGHOST`` and friends). Each runs first without ``--djasync`` to show
the problem is real (pytest-django issue 580), then with it.
"""

from __future__ import annotations

import pytest

from tests.conftest import DjangoProject

VIEWS = """
from django.http import JsonResponse

from tproj.models import Item


async def names(request):
    return JsonResponse({"names": [item.name async for item in Item.objects.order_by("name")]})


async def add(request):
    await Item.objects.acreate(name=request.GET["name"])
    return JsonResponse({"count": await Item.objects.acount()})
"""

TESTS = """
import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.db import transaction
from django.test import AsyncClient

from tproj.models import Item

LOOP = {loop!r}


@pytest.fixture
def seeded(db):
    Item.objects.create(name="seed")


@pytest.mark.asyncio(loop_scope=LOOP)
async def test_1_asgi_client_sees_the_fixture_rows(asgi_client, seeded):
    assert (await asgi_client.get("/names/")).json() == {{"names": ["seed"]}}


@pytest.mark.asyncio(loop_scope=LOOP)
async def test_2_async_client_sees_the_fixture_rows(seeded):
    assert (await AsyncClient().get("/names/")).json() == {{"names": ["seed"]}}


@pytest.mark.asyncio(loop_scope=LOOP)
@pytest.mark.django_db
async def test_3_writes_from_the_view_and_the_test(asgi_client):
    await asgi_client.get("/add/", params={{"name": "from-view"}})
    await Item.objects.acreate(name="from-test")
    assert await Item.objects.acount() == 2


@pytest.mark.asyncio(loop_scope=LOOP)
@pytest.mark.django_db
async def test_4_nothing_leaked_from_the_previous_test():
    assert await Item.objects.acount() == 0


@pytest.mark.asyncio(loop_scope=LOOP)
async def test_5_num_queries_sees_the_views_queries(
    asgi_client, seeded, django_assert_num_queries
):
    with django_assert_num_queries(1):
        await asgi_client.get("/names/")


@pytest.mark.asyncio(loop_scope=LOOP)
async def test_6_on_commit_callbacks_are_captured(django_capture_on_commit_callbacks, db):
    # the fixture before `db`: it hands out the method before the test's database set-up
    def notify():  # sync work, as on_commit runs it: mail (a DNS look-up at first), a query
        mail.send_mail("subject", "body", "from@example.com", ["to@example.com"])
        Item.objects.create(name="from-the-callback")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        await Item.objects.acreate(name="x")
        await sync_to_async(transaction.on_commit)(notify)
    assert len(callbacks) == 1
    assert len(mail.outbox) == 1
    assert await Item.objects.acount() == 2
"""


@pytest.mark.parametrize("loop", ["function", "module"])
def test_async_tests_share_the_test_transaction(
    django_project: DjangoProject, database: str, loop: str
) -> None:
    django_project.views(VIEWS)
    django_project.tests(TESTS.format(loop=loop))
    result = django_project.run("--djasync", "-p", "no:randomly", "-W", "error::RuntimeWarning")
    result.assert_outcomes(passed=6)
    output = result.stdout.str() + result.stderr.str()
    assert "being accessed by other users" not in output


def test_closing_old_connections_keeps_the_tests_connection(
    django_project: DjangoProject, database: str
) -> None:
    """Channels calls close_old_connections() around every consumer call and in
    database_sync_to_async: on the database thread that is the test's own connection, and
    closing it lost the test's transaction ("Cannot operate on a closed database" on a file
    SQLite database; an in-memory one ignores close())."""
    if database == "sqlite":
        django_project.settings('DATABASES["default"]["TEST"] = {"NAME": "test_db.sqlite3"}\n')
    django_project.views(
        VIEWS
        + """

from asgiref.sync import sync_to_async
from django.db import close_old_connections


async def closes(request):
    await sync_to_async(close_old_connections)()
    return JsonResponse({"count": await Item.objects.acount()})
"""
    )
    django_project.tests(
        """
        import pytest
        from asgiref.sync import sync_to_async
        from django.db import close_old_connections

        from tproj.models import Item

        @pytest.mark.asyncio
        @pytest.mark.django_db
        async def test_closes_in_the_view(asgi_client):
            await Item.objects.acreate(name="seed")
            assert (await asgi_client.get("/closes/")).json() == {"count": 1}
            assert await Item.objects.acount() == 1

        @pytest.mark.asyncio
        @pytest.mark.django_db
        async def test_closes_in_the_test():
            await Item.objects.acreate(name="seed")
            await sync_to_async(close_old_connections)()
            assert await Item.objects.acount() == 1

        @pytest.mark.django_db
        def test_nothing_leaked():
            assert Item.objects.count() == 0
        """
    )
    django_project.run("--djasync", "-p", "no:randomly").assert_outcomes(passed=3)


def test_without_the_plugin_the_problem_is_real(django_project: DjangoProject) -> None:
    """The same suite, plain pytest-django: seeded rows unseen, writes leaked, queries missed."""
    django_project.views(VIEWS)
    django_project.tests(TESTS.format(loop="function"))
    result = django_project.run("-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 3, result.stdout.str()


def test_the_ini_switch_turns_it_off(django_project: DjangoProject) -> None:
    django_project.views(VIEWS)
    django_project.tests(TESTS.format(loop="function"))
    django_project.ini("djasync_db_thread = false")
    result = django_project.run("--djasync", "-p", "no:randomly")
    assert result.parseoutcomes().get("failed", 0) >= 3
    result.stdout.fnmatch_lines(["*db_thread=off [[]djasync_db_thread in pytest.ini]*"])


def test_thread_insensitive_work_keeps_its_own_thread(django_project: DjangoProject) -> None:
    django_project.tests(
        """
        import threading

        import pytest
        from asgiref.sync import sync_to_async

        @pytest.mark.asyncio
        @pytest.mark.django_db
        async def test_threads():
            name = threading.current_thread
            sensitive = await sync_to_async(lambda: name().name)()
            free = await sync_to_async(lambda: name().name, thread_sensitive=False)()
            assert sensitive.startswith("djasync-db")
            assert not free.startswith("djasync-db")
        """
    )
    django_project.run("--djasync").assert_outcomes(passed=1)


def test_asgiref_and_django_are_restored_after_the_test(django_project: DjangoProject) -> None:
    django_project.tests(
        """
        import pytest
        from asgiref.sync import SyncToAsync
        from django.test.utils import CaptureQueriesContext

        ORIGINAL = (
            SyncToAsync.single_thread_executor,
            vars(SyncToAsync)["context_to_thread_executor"],
            vars(CaptureQueriesContext)["__enter__"],
        )

        def now():
            return (
                SyncToAsync.single_thread_executor,
                vars(SyncToAsync)["context_to_thread_executor"],
                vars(CaptureQueriesContext)["__enter__"],
            )

        @pytest.mark.asyncio
        @pytest.mark.django_db
        async def test_1_shares():
            assert now() != ORIGINAL

        def test_2_restored():
            assert now() == ORIGINAL
        """
    )
    django_project.run("--djasync", "-p", "no:randomly").assert_outcomes(passed=2)


def test_capturing_on_commit_callbacks_is_restored_at_the_end_of_the_session(
    django_project: DjangoProject,
) -> None:
    """Replaced for the whole session (the fixture hands the method out before or after the
    test's database set-up), delegating outside a shared async test; restored at its end."""
    django_project.installed(
        {},
        conftest="""
        from django.test import TestCase

        ORIGINAL = vars(TestCase)["captureOnCommitCallbacks"]

        def pytest_unconfigure(config):
            restored = vars(TestCase)["captureOnCommitCallbacks"] is ORIGINAL
            open("restored.txt", "w").write(str(restored))
        """,
    )
    django_project.tests(
        """
        import pytest
        from django.db import transaction

        @pytest.mark.asyncio
        @pytest.mark.django_db
        async def test_async():
            pass

        def test_sync(django_capture_on_commit_callbacks, db):
            with django_capture_on_commit_callbacks() as callbacks:
                transaction.on_commit(lambda: None)
            assert len(callbacks) == 1
        """
    )
    django_project.run("--djasync").assert_outcomes(passed=2)
    assert (django_project.path / "restored.txt").read_text() == "True"


SHOW_THE_HOOK = """
import pytest


@pytest.mark.asyncio
async def test_shows_the_hook(request):
    print("hook:", request.config.pluginmanager.has_plugin("djasync-db-thread"))
"""


@pytest.mark.parametrize(
    ("other_test", "hook"),
    [
        ("@pytest.mark.django_db\n@pytest.mark.asyncio\nasync def test_db(): pass", True),
        ("@pytest.mark.asyncio\nasync def test_db(db): pass", True),
        ("def test_sync_with_db(db): pass", False),  # sync tests need no database thread
        ("@pytest.mark.asyncio\nasync def test_no_db(): pass", False),
    ],
)
def test_only_a_run_with_async_database_tests_hooks_every_fixture(
    django_project: DjangoProject, other_test: str, hook: bool
) -> None:
    """The database thread's hook runs at every fixture's set-up; a suite without an async test
    that uses the database does not pay for it."""
    django_project.tests(SHOW_THE_HOOK + "\n\n" + other_test + "\n")
    result = django_project.run("--djasync", "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*hook: {hook}*"])
