"""Scenario 4: fan-out to three services, done right and done in name only.

All four views give the same answer and call each service once; only ``dashboard`` and
``dashboard_threads_fixed`` have the three calls in flight at the same time.
"""

import pytest
from expected import caught_by_djasync


@pytest.mark.asyncio
@pytest.mark.djasync_fanout(3)
@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/",
        pytest.param(
            "/dashboard/sequential/", marks=caught_by_djasync("awaited one by one", by_marker=True)
        ),
        pytest.param(
            "/dashboard/threads/",
            marks=caught_by_djasync("one thread-sensitive thread", by_marker=True),
        ),
        "/dashboard/threads/fixed/",
    ],
)
async def test_dashboard_calls_each_service_once(asgi_client, services, settings, path):
    response = await asgi_client.get(path)

    assert response.status_code == 200
    assert response.json() == {name: {"service": name} for name in settings.SERVICES}
    assert {name: services[name].call_count for name in settings.SERVICES} == {
        "weather": 1,
        "news": 1,
        "stocks": 1,
    }
