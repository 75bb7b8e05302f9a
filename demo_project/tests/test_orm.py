"""Scenarios 5 and 6: the ORM from async and sync views.

The async ORM runs its queries in a worker thread with a connection of its own, which cannot
see rows in the uncommitted transaction of a plain ``django_db`` test. Tests whose views read
seeded rows therefore use ``transaction=True``.
"""

import pytest
from django.core.exceptions import SynchronousOnlyOperation
from expected import caught_by_djasync

from shop.models import Post


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_post_list_shows_published_posts_only(asgi_client, posts):
    published, _draft = posts

    response = await asgi_client.get("/posts/")

    assert response.status_code == 200
    assert response.json() == {"posts": [{"id": published.pk, "title": "Hello"}]}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_post_detail_with_select_related(asgi_client, posts):
    published, _draft = posts

    response = await asgi_client.get(f"/posts/{published.pk}/")

    assert response.status_code == 200
    assert response.json() == {"id": published.pk, "title": "Hello", "author": "Ada"}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@caught_by_djasync("post.author is loaded lazily on the event loop")
async def test_post_detail_lazy_relation_fails(asgi_client, posts, caplog):
    published, _draft = posts

    response = await asgi_client.get(f"/posts/{published.pk}/lazy/")

    assert response.status_code == 500
    errors = [record.exc_info[0] for record in caplog.records if record.exc_info]
    assert errors == [SynchronousOnlyOperation]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_post_detail_missing_post(asgi_client):
    response = await asgi_client.get("/posts/999/")

    assert response.status_code == 404


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_create_post_in_a_transaction(asgi_client):
    payload = {"title": "New", "author": "Grace", "published": True}

    response = await asgi_client.post("/posts/new/", json=payload)

    assert response.status_code == 201
    created = await Post.objects.select_related("author").aget(pk=response.json()["id"])
    assert (created.title, created.author.name, created.published) == ("New", "Grace", True)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_create_post_rejects_missing_fields(asgi_client):
    response = await asgi_client.post("/posts/new/", json={"title": "No author"})

    assert response.status_code == 400
    assert not await Post.objects.aexists()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_classic_sync_view_under_asgi(asgi_client, posts):
    response = await asgi_client.get("/classic/")

    assert response.status_code == 200
    assert response.json() == {"titles": ["Hello"]}


@pytest.mark.django_db
def test_classic_sync_view_under_wsgi(client, posts):
    # Django's test client is WSGI-style: the sync view and the sync ORM share this thread.
    response = client.get("/classic/")

    assert response.status_code == 200
    assert response.json() == {"titles": ["Hello"]}
