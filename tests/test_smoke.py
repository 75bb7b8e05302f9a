from tests.conftest import DjangoProject, violations


def test_sleep_in_async_view_is_found(django_project: DjangoProject) -> None:
    django_project.views(
        """
        import time
        from django.http import HttpResponse

        async def sleepy(request):
            time.sleep(0.01)
            return HttpResponse("ok")
        """
    )
    django_project.tests(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(asgi_client):
            assert (await asgi_client.get("/sleepy/")).status_code == 200
        """
    )
    result, report = django_project.report()
    result.assert_outcomes(failed=1)
    [found] = violations(report, "test_it")
    assert found["kind"] == "blocking-call"
    assert found["location"] == {"path": "tproj/views.py", "line": 5, "function": "sleepy"}
