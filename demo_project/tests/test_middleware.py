"""Middleware modes: the async-only default stack, and what one sync-only middleware changes.

The ``asgi_client`` builds Django's handler on the first request, so changing
``settings.MIDDLEWARE`` before it takes effect. Any quick async view will do; ``echo`` is one.
"""

import pytest
from expected import caught_by_djasync

SYNC_ONLY = [
    ("shop.middleware.LegacyHeaderMiddleware", "X-Legacy"),
    ("shop.middleware.SyncOnlyMiddleware", "X-Sync-Only"),
]


@pytest.mark.asyncio
@pytest.mark.djasync_max_crossings(2)  # request_started's sync receivers + response.close
async def test_an_all_async_stack_pays_two_hops_per_request(asgi_client, settings):
    settings.MIDDLEWARE = ["shop.middleware.TimingMiddleware"]

    response = await asgi_client.post("/echo/", json={})

    assert response.status_code == 200


@pytest.mark.asyncio
@pytest.mark.djasync_max_crossings(2)
@caught_by_djasync(
    "each MiddlewareMixin hook of Django's stack is a thread hop (12 in all)", by_marker=True
)
async def test_the_default_stack_within_the_all_async_budget(asgi_client):
    await asgi_client.post("/echo/", json={})


@pytest.mark.asyncio
# 2 as above + 10 MiddlewareMixin hooks: process_request of Security, Session, Common, Csrf and
# Authentication; Csrf's process_view; process_response of Csrf, Common, Session and Security.
@pytest.mark.djasync_max_crossings(12)
async def test_default_stack_times_the_response(asgi_client):
    response = await asgi_client.post("/echo/", json={})

    assert response.status_code == 200
    assert float(response.headers["X-Elapsed-Ms"]) > 0
    assert "X-Legacy" not in response.headers
    assert "X-Sync-Only" not in response.headers


@pytest.mark.asyncio
@pytest.mark.parametrize(("middleware", "header"), SYNC_ONLY)
async def test_sync_only_middleware_still_works_under_asgi(
    asgi_client, settings, middleware, header
):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, middleware]

    response = await asgi_client.post("/echo/", json={})

    assert response.status_code == 200
    assert response.headers[header] == "1"
    assert "X-Elapsed-Ms" in response.headers


def test_async_only_middleware_under_wsgi(client):
    # Under WSGI Django adapts the async-only TimingMiddleware with async_to_sync.
    response = client.post("/echo/", {}, content_type="application/json")

    assert response.status_code == 200
    assert "X-Elapsed-Ms" in response.headers
