"""Scenarios 7 and 9: bodies through the ASGI handler, out as a stream and in as a request."""

import pytest

from shop import views


@pytest.mark.asyncio
async def test_stream_arrives_chunk_by_chunk(asgi_client):
    async with asgi_client.stream("GET", "/stream/") as response:
        chunks = [chunk async for chunk in response.aiter_raw()]

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain"
    assert chunks == [f"chunk {n}\n".encode() for n in range(1, views.STREAM_CHUNKS + 1)]


@pytest.mark.asyncio
async def test_echo_returns_the_json_body(asgi_client):
    payload = {"items": [1, 2, 3], "note": "héllo"}

    response = await asgi_client.post("/echo/", json=payload)

    assert response.status_code == 200
    assert response.json() == payload


@pytest.mark.asyncio
async def test_echo_rejects_a_body_that_is_not_json(asgi_client):
    response = await asgi_client.post("/echo/", content=b"not json")

    assert response.status_code == 400


@pytest.mark.asyncio
async def test_echo_only_accepts_post(asgi_client):
    response = await asgi_client.get("/echo/")

    assert response.status_code == 405
