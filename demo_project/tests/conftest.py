"""Fixtures for the demo suite: a real slow upstream, mocked fan-out services, seeded posts.

The plugin provides ``asgi_client``; pytest-django provides ``settings`` and the database.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import respx
from pytest_djasync import latency

from shop.models import Author, Post

UPSTREAM_DELAY = 0.05  # seconds; slow enough to be a real wait, short enough for a quick suite
SERVICE_LATENCY = 0.1


class _SlowJSONHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(UPSTREAM_DELAY)
        body = json.dumps({"service": "upstream"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # one access-log line per request would only clutter the test output


@pytest.fixture
def upstream(settings):
    """A real HTTP server on a free local port, answering JSON after ``UPSTREAM_DELAY``.

    Real sockets, because a mock would hide exactly what the sync-client views get wrong.
    ``settings.UPSTREAM_URL`` points at it for the test; the fixture returns that URL.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowJSONHandler)
    # A short poll interval, so that ``shutdown()`` returns quickly at teardown.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="upstream", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    settings.UPSTREAM_URL = f"http://{host}:{port}/slow"
    try:
        yield settings.UPSTREAM_URL
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def services(settings):
    """Mock every URL in ``settings.SERVICES``; service ``name`` answers ``{"service": name}``.

    Yields the respx router: ``services[name]`` is the route of that service, with its calls.
    """
    with respx.mock(assert_all_called=False) as router:
        for name, url in settings.SERVICES.items():
            payload = {"service": name}
            router.get(url, name=name).mock(side_effect=latency(SERVICE_LATENCY, json=payload))
        yield router


@pytest.fixture
def posts(db):
    """One published and one draft post by the same author, as ``(published, draft)``."""
    author = Author.objects.create(name="Ada")
    published = Post.objects.create(title="Hello", body="First!", published=True, author=author)
    draft = Post.objects.create(title="Draft", published=False, author=author)
    return published, draft
