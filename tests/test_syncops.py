"""Async-unsafe ORM use: each SynchronousOnlyOperation is a finding naming the line and the fix."""

from __future__ import annotations

import pytest

from tests.conftest import DjangoProject, violations

MODELS = """
from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=50)


class Post(models.Model):
    title = models.CharField(max_length=50)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
"""

VIEWS = """
from django.db import transaction
from django.http import HttpResponse
from django.template import Context, Engine

from tproj.models import Author, Post


async def lazy_fk(request):
    post = await Post.objects.aget(title="hello")
    return HttpResponse(post.author.name)


async def sync_queryset(request):
    titles = [post.title for post in Post.objects.all()]
    return HttpResponse(", ".join(titles))


async def any_posts(request):
    if Post.objects.all():
        return HttpResponse("some")
    return HttpResponse("none")


async def counted(request):
    return HttpResponse(str(len(Post.objects.all())))


async def template_count(request):
    template = Engine().from_string("{{ posts.count }} posts")
    return HttpResponse(template.render(Context({"posts": Post.objects.all()})))


async def atomic_block(request):
    with transaction.atomic():
        await Author.objects.acreate(name="x")
    return HttpResponse("ok")


async def values_aiterator(request):
    rows = []
    async for row in Post.objects.values_list("id", "title").aiterator():
        rows.append(row)
    return HttpResponse(str(len(rows)))


async def fixed(request):
    post = await Post.objects.select_related("author").aget(title="hello")
    return HttpResponse(post.author.name)
"""

TESTS = """
import pytest
from django.core.exceptions import SynchronousOnlyOperation

from tproj.models import Author, Post


@pytest.fixture
def post(transactional_db):
    return Post.objects.create(title="hello", author=Author.objects.create(name="Ada"))


@pytest.mark.parametrize(
    "view",
    [
        "lazy_fk",
        "sync_queryset",
        "any_posts",
        "counted",
        "template_count",
        "atomic_block",
        "values_aiterator",
    ],
)
@pytest.mark.asyncio
async def test_view(asgi_client, post, view):
    await asgi_client.get(f"/{view}/")


@pytest.mark.asyncio
async def test_fixed(asgi_client, post):
    assert (await asgi_client.get("/fixed/")).text == "Ada"


@pytest.mark.asyncio
async def test_expected_error(post):
    with pytest.raises(SynchronousOnlyOperation):
        Post.objects.get(title="hello")
"""


def line_of(source: str, text: str) -> int:
    numbers = [n for n, line in enumerate(source.lstrip().splitlines(), 1) if text in line]
    return numbers[0]  # the first: the broken view comes before its fix


def test_each_async_unsafe_use_is_named_with_its_fix(django_project: DjangoProject) -> None:
    django_project.module("tproj/models.py", MODELS)
    django_project.views(VIEWS)
    django_project.tests(TESTS)
    result, report = django_project.report()
    result.assert_outcomes(passed=2, failed=7)
    expected = {
        "lazy_fk": (
            "lazy relation Post.author",
            "(post.author.name)",
            ".select_related('author')",
        ),
        "sync_queryset": ("QuerySet evaluated (__iter__)", "for post in", "async for"),
        # a truth test or a length asks the database a question with an async method
        "any_posts": ("QuerySet evaluated (__bool__)", "if Post", "await queryset.aexists()"),
        "counted": ("QuerySet evaluated (__len__)", "len(Post", "await queryset.acount()"),
        # the template calls count(): the fix is at the render, which the view can hand off
        "template_count": ("QuerySet.count()", "template.render(", "a render) in sync_to_async"),
        "atomic_block": ("transaction.atomic()", "with transaction.atomic()", "sync_to_async"),
        # Django's aiterator() runs a values_list()'s first query on the loop (a Django bug)
        "values_aiterator": (
            "QuerySet.aiterator()",
            ".aiterator()",
            "(async for row in queryset)",
        ),
    }
    for view, (what, line_text, fix) in expected.items():
        [found] = violations(report, f"test_view[{view}]")
        assert found["kind"] == "sync-only", view
        assert found["message"].startswith(f"{what} on the event loop"), (view, found["message"])
        assert found["location"] == {
            "path": "tproj/views.py",
            "line": line_of(VIEWS, line_text),
            "function": view,
        }
        assert fix in found["fix"], (view, found["fix"])
        assert found["request"] == f"GET /{view}/"
    [caught] = violations(report, "test_expected_error")
    assert caught["allowed"] is True
    assert not violations(report, "test_fixed")


def test_failure_names_the_relation_not_a_500(django_project: DjangoProject) -> None:
    django_project.module("tproj/models.py", MODELS)
    django_project.views(VIEWS)
    django_project.tests(TESTS)
    result = django_project.run("--djasync", "-k", "lazy_fk")
    result.stdout.fnmatch_lines(
        [
            "*1. lazy relation Post.author on the event loop raised SynchronousOnlyOperation"
            " at tproj/views.py:10 in lazy_fk",
            "*return HttpResponse(post.author.name)",
            "*while serving: GET /lazy_fk/",
            "*fix: fetch it with the query: .select_related('author')*",
        ]
    )
    assert "traceback entries are hidden" not in result.stdout.str()  # the text alone


def test_unsafe_mode_is_warned_about_in_the_header(
    django_project: DjangoProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    django_project.tests("def test_nothing():\n    pass\n")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    result = django_project.run("--djasync")
    result.stdout.fnmatch_lines(["*WARNING DJANGO_ALLOW_ASYNC_UNSAFE is set*"])


def test_an_error_the_test_let_through_is_not_caught_by_it(django_project: DjangoProject) -> None:
    """Django's test client re-raises a view's exception in the test, so the error passes
    through the test's code on its way out: that fails the test, it is no catch on purpose.
    The finding stays unexcused, with its fix in the test's report."""
    django_project.module("tproj/models.py", MODELS)
    django_project.views(VIEWS)
    django_project.tests(
        """
        import pytest
        from django.test import TransactionTestCase

        from tproj.models import Author, Post

        @pytest.fixture
        def post(transactional_db):
            return Post.objects.create(title="hello", author=Author.objects.create(name="Ada"))

        @pytest.mark.asyncio
        async def test_through_the_client(async_client, post):
            await async_client.get("/lazy_fk/")

        @pytest.mark.asyncio
        async def test_straight_out(post):
            Post.objects.get(title="hello")

        @pytest.mark.asyncio
        async def test_into_a_failure(post):
            try:
                Post.objects.get(title="hello")
            except Exception as error:
                raise AssertionError("no post") from error

        class TestDjangos(TransactionTestCase):  # pytest keeps a unittest error on the item
            async def test_straight_out(self):
                Author.objects.count()

            async def test_through_the_client(self):
                author = await Author.objects.acreate(name="Ada")
                await Post.objects.acreate(title="hello", author=author)
                await self.async_client.get("/lazy_fk/")
        """
    )
    result, report = django_project.report("-rA")
    result.assert_outcomes(failed=5)
    tests = ("test_through_the_client", "test_straight_out", "test_into_a_failure")
    for test in (*(f".py::{t}" for t in tests), *(f"TestDjangos::{t}" for t in tests[:2])):
        [found] = violations(report, test)
        assert found["kind"] == "sync-only", test
        assert found["allowed"] is False, (test, found.get("allowed_by"))
    assert "caught by the test" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*fix: fetch it with the query: .select_related('author')*"])


def test_an_error_caught_by_assert_raises_is_caught_by_the_test(
    django_project: DjangoProject,
) -> None:
    """unittest's assertRaises drops the error's traceback once it has caught it, the test's
    frame with it (trial: the usual idiom of TestCase suites failed under --djasync)."""
    django_project.module("tproj/models.py", MODELS)
    django_project.tests(
        """
        import unittest

        import pytest
        from django.core.exceptions import SynchronousOnlyOperation
        from django.test import SimpleTestCase

        from tproj.models import Author

        class TestDjangos(SimpleTestCase):
            async def test_assert_raises(self):
                with self.assertRaises(SynchronousOnlyOperation):
                    Author.objects.count()

            async def test_assert_raises_message(self):
                with self.assertRaisesMessage(SynchronousOnlyOperation, "async context"):
                    Author.objects.count()

        @pytest.mark.asyncio
        async def test_unittest_in_a_function():
            with unittest.TestCase().assertRaises(SynchronousOnlyOperation):
                Author.objects.count()
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(passed=3)
    for entry in report["tests"]:
        [found] = entry["violations"]
        assert found["allowed_by"] == "caught by the test", entry["nodeid"]


def test_an_error_a_library_turned_into_its_own_is_not_caught_by_the_test(
    django_project: DjangoProject,
) -> None:
    """pydantic keeps only the message of an error raised while it reads an attribute, and
    raises a ValidationError of its own (trial: Django Ninja's test client serialising a
    queryset's relation in the test's task); the test fails, so it did not catch the error."""
    django_project.module("tproj/models.py", MODELS)
    django_project.tests(
        """
        import pytest
        from django.core.exceptions import SynchronousOnlyOperation

        from tproj.models import Author

        def validate(read):
            try:
                read()
            except SynchronousOnlyOperation as error:
                message = str(error)
                error.__traceback__ = None  # as pydantic-core does
            raise ValueError(f"Error extracting attribute: {message}")

        @pytest.mark.asyncio
        async def test_serialised():
            validate(lambda: list(Author.objects.all()))
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(failed=1)
    [found] = violations(report, "test_serialised")
    assert found["kind"] == "sync-only"
    assert found["allowed_by"] is None
    assert "caught by the test" not in result.stdout.str()


def test_a_package_reading_the_lazy_user_is_named_and_told_to_have_it_loaded_first(
    django_project: DjangoProject,
) -> None:
    """An error tracker adds the user to its events once the response is sent, on the loop, and
    catches the error (trial: sentry-sdk; the fix spoke of "your code or a template")."""
    django_project.installed(
        {
            "tracker/__init__.py": "",
            "tracker/integrations/__init__.py": "",
            # a package's Django integration lives in a `django` directory too (sentry-sdk's)
            "tracker/integrations/django/__init__.py": """
                def user_id(request):
                    return request.user.pk
                """,
            "tracker/middleware.py": """
                from asgiref.sync import markcoroutinefunction

                from tracker.integrations.django import user_id

                class Tracker:
                    async_capable = True
                    sync_capable = False

                    def __init__(self, get_response):
                        self.get_response = get_response
                        markcoroutinefunction(self)

                    async def __call__(self, request):
                        response = await self.get_response(request)
                        try:
                            self.user_id = user_id(request)
                        except Exception:
                            pass  # a tracker never breaks the response
                        return response
                """,
        }
    )
    django_project.views(
        """
        from asgiref.sync import markcoroutinefunction, sync_to_async
        from django.http import HttpResponse

        async def hello(request):
            return HttpResponse("hello")

        class LoadUser:  # the fix it gives, followed
            async_capable = True
            sync_capable = False

            def __init__(self, get_response):
                self.get_response = get_response
                markcoroutinefunction(self)

            async def __call__(self, request):
                if hasattr(request, "auser"):
                    request.user = await request.auser()
                else:  # Django 4.2
                    await sync_to_async(lambda: request.user.is_authenticated)()
                return await self.get_response(request)
        """
    )
    django_project.tests(
        """
        import pytest
        from django.contrib.auth.models import User

        MIDDLEWARE = [
            "tracker.middleware.Tracker",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ]

        @pytest.mark.asyncio
        @pytest.mark.django_db
        @pytest.mark.parametrize("loaded", [[], ["tproj.views.LoadUser"]], ids=["as-is", "fixed"])
        async def test_logged_in(asgi_client, settings, loaded):
            settings.MIDDLEWARE = MIDDLEWARE + loaded
            await asgi_client.aforce_login(await User.objects.acreate(username="ada"))
            assert (await asgi_client.get("/hello/")).status_code == 200
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(passed=1, failed=1)
    [found] = violations(report, "test_logged_in[as-is]")
    assert found["what"].startswith("the lazy request.user")
    assert found["location"]["function"] == "user_id"
    assert found["fix"].startswith("tracker's user_id() read request.user on the loop,")
    assert "after Django's AuthenticationMiddleware" in found["fix"]
    assert "request.user = await request.auser()" in found["fix"]


def test_an_error_in_an_async_fixture_is_one_error_with_its_fix(
    django_project: DjangoProject,
) -> None:
    """The fixture's error stops the test at set-up: the finding is told with that error, not
    as a second error at teardown."""
    django_project.module("tproj/models.py", MODELS)
    django_project.tests(
        """
        import pytest
        import pytest_asyncio

        from tproj.models import Author

        @pytest_asyncio.fixture
        async def author(transactional_db):
            return Author.objects.create(name="Ada")

        @pytest.mark.asyncio
        async def test_it(author):
            pass
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_it*",
            "*QuerySet.create() on the event loop raised SynchronousOnlyOperation*",
            "*fix: await the async method .acreate(...) instead",
        ]
    )
    assert "ERROR at teardown" not in result.stdout.str()
    [found] = violations(report, "test_it")
    assert found["allowed"] is False


def test_a_sync_helper_on_the_loop_is_told_to_go_through_sync_to_async(
    django_project: DjangoProject,
) -> None:
    """An `a...` twin cannot be awaited in a sync function: the fix is at its async caller."""
    django_project.module("tproj/models.py", MODELS)
    django_project.views(
        """
        from django.http import HttpResponse

        from tproj.models import Author


        def remember(name):
            Author.objects.create(name=name)


        async def signup(request):
            remember("Ada")
            return HttpResponse("ok")


        async def counts(request):
            return HttpResponse(str([Author.objects.count() for _ in range(1)]))
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_signup(asgi_client, transactional_db):
            await asgi_client.get("/signup/")

        @pytest.mark.asyncio
        async def test_counts(asgi_client, transactional_db):
            await asgi_client.get("/counts/")
        """
    )
    _, report = django_project.report()
    [in_comprehension] = violations(report, "test_counts")  # its own function before 3.12
    assert in_comprehension["fix"] == "await the async method .acount(...) instead"
    [found] = violations(report, "test_signup")
    assert found["location"]["function"] == "remember"
    assert found["fix"].startswith(
        "remember() is a sync function run on the event loop: have its async caller await"
        " sync_to_async(remember)(...);"
    ), found["fix"]  # it queries: no thread of its own
    assert "to_thread" not in found["fix"]
    assert found["fix"].endswith(
        "or make it async and await the async method .acreate(...) instead"
    )


def test_a_lazy_user_or_session_is_named_with_its_async_accessor(
    django_project: DjangoProject,
) -> None:
    """``request.user`` and ``request.session`` load on first use; the user's code calls no ORM
    method, so the fix is Django's async accessor, not the ``.aget()`` of the query inside."""
    django_project.views(
        """
        from django.http import HttpResponse


        async def whoami(request):
            return HttpResponse(str(request.user.is_authenticated))


        async def visits(request):
            return HttpResponse(str(request.session.get("n", 0)))
        """
    )
    django_project.tests(
        """
        import pytest
        from django.contrib.sessions.backends.db import SessionStore


        @pytest.fixture
        def session_key(transactional_db, django_user_model):
            user = django_user_model.objects.create(username="ada")
            session = SessionStore()
            session["_auth_user_id"] = str(user.pk)
            session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
            session["_auth_user_hash"] = user.get_session_auth_hash()
            session.save()
            return session.session_key


        @pytest.mark.parametrize("view", ["whoami", "visits"])
        @pytest.mark.asyncio
        async def test_lazy(asgi_client, settings, session_key, view):
            settings.MIDDLEWARE = [
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
            ]
            asgi_client.cookies["sessionid"] = session_key
            await asgi_client.get(f"/{view}/")
        """
    )
    _, report = django_project.report()
    [user] = violations(report, "test_lazy[whoami]")
    assert user["message"].startswith("the lazy request.user "), user["message"]
    assert user["location"]["function"] == "whoami"
    assert "request.user = await request.auser()" in user["fix"], user["fix"]
    [session] = violations(report, "test_lazy[visits]")
    assert session["message"].startswith("the lazy request.session "), session["message"]
    assert "await request.session.aget(key)" in session["fix"], session["fix"]


def test_a_queryset_a_package_evaluates_is_told_to_be_handed_over_as_rows(
    django_project: DjangoProject,
) -> None:
    """A serializer (here a package in site-packages) loops over the QuerySet it was given:
    the project has no loop of its own to make `async for`."""
    django_project.module("tproj/models.py", MODELS)
    names = """
        def names(queryset):
            found = []
            for author in queryset:
                found.append(author.name)
            return found
        """
    django_project.installed({"fakelib.py": names})
    django_project.views(
        """
        from django.http import HttpResponse

        import fakelib
        from tproj.models import Author


        async def listed(request):
            return HttpResponse(",".join(fakelib.names(Author.objects.all())))
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_listed(asgi_client, transactional_db):
            await asgi_client.get("/listed/")
        """
    )
    _, report = django_project.report()
    [found] = violations(report, "test_listed")
    assert found["location"]["function"] == "listed"
    assert found["fix"].startswith(
        "fakelib's names() evaluates the QuerySet on the loop, not your code: hand it the rows"
    ), found["fix"]


def test_a_sync_helper_in_a_channels_consumer_is_told_database_sync_to_async(
    django_project: DjangoProject,
) -> None:
    """Channels' docs hand a consumer's sync database work to database_sync_to_async (which
    also closes the worker's stale connections). A stand-in for Channels' consumer base class,
    in site-packages as the real one is, calls the project's handler."""
    django_project.module("tproj/models.py", MODELS)
    consumer = """
        class AsyncConsumer:
            async def dispatch(self, message):
                return await self.handle(message)
        """
    django_project.installed({"channels/__init__.py": "", "channels/consumer.py": consumer})
    django_project.views(
        """
        from channels.consumer import AsyncConsumer
        from django.http import HttpResponse

        from tproj.models import Author


        def history():
            return [author.name for author in Author.objects.all()]


        class Chat(AsyncConsumer):
            async def handle(self, message):
                return history()


        async def consumed(request):
            await Chat().dispatch({})
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_consumed(asgi_client, transactional_db):
            await asgi_client.get("/consumed/")
        """
    )
    _, report = django_project.report()
    [found] = violations(report, "test_consumed")
    assert found["location"]["function"].startswith("history"), found["location"]
    assert found["fix"].startswith(
        "history() is a sync function run on the event loop: have its async caller await"
        " database_sync_to_async(history)(...);"
    ), found["fix"]


def test_a_query_no_orm_method_made_names_the_code_that_made_it(
    django_project: DjangoProject,
) -> None:
    """Django's database cache queries through a cursor, below no QuerySet method."""
    django_project.settings(
        'CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",'
        ' "LOCATION": "cache_table"}}\n'
    )
    django_project.views(
        """
        from django.core.cache import cache
        from django.http import HttpResponse


        async def cached(request):
            return HttpResponse(str(cache.get("greeting")))
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_cached(asgi_client, transactional_db):
            await asgi_client.get("/cached/")
        """
    )
    _, report = django_project.report()
    [found] = violations(report, "test_cached")
    assert found["location"]["function"] == "cached"
    assert found["message"].startswith(
        "a sync database call in DatabaseCache.get() on the event loop"
    )
    assert found["fix"].startswith("await its async twin .aget(...) where your code calls .get()")


def test_orm_calls_django_makes_for_you_are_fixed_at_your_call(
    django_project: DjangoProject,
) -> None:
    """A form field looking its choice up, a context processor the template engine runs: the
    project's async code reached them through form.is_valid() and a render."""
    django_project.module("tproj/models.py", MODELS)
    django_project.module(
        "tproj/context.py",
        """
        from tproj.models import Author


        def authors(request):
            return {"authors": list(Author.objects.all())}
        """,
    )
    django_project.settings(
        'TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates",'
        ' "OPTIONS": {"context_processors": ["tproj.context.authors"]}}]\n'
    )
    django_project.views(
        """
        from django import forms
        from django.http import HttpResponse
        from django.template import engines

        from tproj.models import Author


        class PostForm(forms.Form):
            author = forms.ModelChoiceField(queryset=Author.objects.all())


        async def validates(request):
            return HttpResponse(str(PostForm({"author": "1"}).is_valid()))


        async def renders(request):
            return HttpResponse(engines["django"].from_string("hi").render({}, request))
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.parametrize("view", ["validates", "renders"])
        @pytest.mark.asyncio
        async def test_view(asgi_client, transactional_db, view):
            await asgi_client.get(f"/{view}/")
        """
    )
    _, report = django_project.report()
    [form] = violations(report, "test_view[validates]")
    assert form["location"]["function"] == "validates"
    assert form["fix"].startswith(
        "django's ModelChoiceField.to_python() queries the database on the loop, not your code"
    ), form["fix"]
    [processor] = violations(report, "test_view[renders]")
    assert processor["location"]["function"] == "authors"
    assert processor["fix"].startswith(
        "authors() is called on the event loop by django's RequestContext.bind_template(), not"
        " by your async code: run the call of yours that reaches it"
    ), processor["fix"]


def test_a_sync_callback_an_async_package_calls_is_told_to_be_async(
    django_project: DjangoProject,
) -> None:
    """A GraphQL library calls a sync resolver of the project's on the loop, as it awaits an
    async one: no call of the project's reaches it, so the fix is the resolver's (trial)."""
    django_project.module("tproj/models.py", MODELS)
    django_project.installed(
        {
            "gqlish/__init__.py": """
            import inspect


            async def execute(resolver):
                value = resolver()  # sync or async, as strawberry's resolvers are
                return await value if inspect.isawaitable(value) else value
            """
        }
    )
    django_project.views(
        """
        from django.http import HttpResponse

        import gqlish
        from tproj.models import Author


        def author_count():
            return Author.objects.count()


        def _count_them():
            return Author.objects.count()


        def author_count_by_helper():
            return _count_them()


        async def graphql(request):
            return HttpResponse(str(await gqlish.execute(author_count)))


        async def graphql_helped(request):
            return HttpResponse(str(await gqlish.execute(author_count_by_helper)))
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.parametrize("view", ["graphql", "graphql_helped"])
        @pytest.mark.asyncio
        async def test_query(asgi_client, transactional_db, view):
            await asgi_client.get(f"/{view}/")
        """
    )
    _, report = django_project.report()
    [found] = violations(report, "test_query[graphql]")
    assert found["location"]["function"] == "author_count"
    assert found["fix"] == (
        "author_count() is called on the event loop by gqlish's execute(), not by your async"
        " code: make it async (async def, and await the async method .acount(...) instead) if"
        " that package awaits what it calls, or hand the package sync_to_async(author_count)"
        " in its place"
    ), found["fix"]
    # The resolver's helper made the call: the resolver is what the fix changes
    [helped] = violations(report, "test_query[graphql_helped]")
    assert helped["location"]["function"] == "_count_them"
    assert helped["fix"].startswith(
        "author_count_by_helper() is called on the event loop by gqlish's execute(), not by"
        " your async code: make it async (async def, and await sync_to_async(_count_them)(...)"
        " in it)"
    ), helped["fix"]
