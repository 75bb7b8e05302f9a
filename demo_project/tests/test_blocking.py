"""Scenarios 1, 2, 3 and 8: work that blocks the event loop, each view next to its fix.

A client gets the same answer from a broken view as from its fix; what differs is what the
event loop could do meanwhile. These tests pin the answers.
"""

import asyncio

import pytest
from expected import caught_by_djasync

from shop import views
from shop.reports import compute_report


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/sleepy/", marks=caught_by_djasync("time.sleep on the loop")),
        "/sleepy/fixed/",
    ],
)
async def test_sleepy(asgi_client, path):
    response = await asgi_client.get(path)

    assert response.status_code == 200
    assert response.json() == {"slept": views.SLEEP_SECONDS}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/sync-http/", marks=caught_by_djasync("requests.get on the loop")),
        "/sync-http/fixed/",
        "/sync-http/offloaded/",
    ],
)
async def test_sync_http_reaches_upstream(asgi_client, upstream, path):
    response = await asgi_client.get(path)

    assert response.status_code == 200
    assert response.json() == {"upstream": {"service": "upstream"}}


@pytest.fixture(scope="module")
def expected_report():
    return compute_report()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/cpu-report/", marks=caught_by_djasync("CPU work stalls the loop")),
        "/cpu-report/fixed/",
    ],
)
async def test_cpu_report(asgi_client, expected_report, path):
    # The same report on the loop or in a thread: the fix changes only where the work runs.
    response = await asgi_client.get(path)

    assert response.status_code == 200
    assert response.json() == expected_report


@pytest.fixture
def outbox(monkeypatch):
    monkeypatch.setattr(views, "OUTBOX", [])
    return views.OUTBOX


async def _drain_background_tasks():
    # The server never awaits these tasks; a test must, or the loop closes under them.
    while views.BACKGROUND_TASKS:
        await asyncio.gather(*views.BACKGROUND_TASKS)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            "/fire-and-forget/", marks=caught_by_djasync("a background task blocks the loop")
        ),
        "/fire-and-forget/fixed/",
    ],
)
async def test_fire_and_forget_work_runs_after_the_response(asgi_client, outbox, path):
    response = await asgi_client.get(path)
    await _drain_background_tasks()

    assert response.status_code == 202
    assert response.json() == {"queued": True}
    assert outbox == ["order received"]
