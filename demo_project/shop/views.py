"""One view per async-safety scenario; every broken view sits next to its fix.

Under an ASGI server an async view runs on the event loop itself, so anything that blocks in
it stalls every request the process is serving, not just its own. Each docstring says what
the view demonstrates and, for a broken one, what the fix is.

Needs Django 5.0+ (async-aware ``csrf_exempt``/``require_POST`` and ``aget_object_or_404``).
"""

import asyncio
import json
import time

import httpx
import requests
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import BadRequest
from django.db import transaction
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import aget_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from shop.models import Author, Post
from shop.reports import compute_report

HTTP_TIMEOUT = 5  # seconds; no outbound call goes without one
# Made once, at import: loading the CA certificates is tens of milliseconds of CPU (more on a
# slow machine), so an async view that built a client with its own context would stall the loop.
TLS = httpx.create_ssl_context()
SLEEP_SECONDS = 0.2
BACKGROUND_WORK_SECONDS = 0.15
STREAM_CHUNKS = 3
STREAM_PAUSE_SECONDS = 0.05


# 1. Sleeping on the loop -----------------------------------------------------------------------


async def sleepy(request):
    """BROKEN: ``time.sleep`` stops the whole event loop, so every other request waits too.

    Fix: ``await asyncio.sleep(...)`` (``sleepy_fixed``).
    """
    time.sleep(SLEEP_SECONDS)
    return JsonResponse({"slept": SLEEP_SECONDS})


async def sleepy_fixed(request):
    """FIXED: ``asyncio.sleep`` suspends only this request; the loop serves others meanwhile."""
    await asyncio.sleep(SLEEP_SECONDS)
    return JsonResponse({"slept": SLEEP_SECONDS})


# 2. A sync HTTP client in an async view --------------------------------------------------------


def _get_upstream():
    response = requests.get(settings.UPSTREAM_URL, timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    return response.json()


async def sync_http(request):
    """BROKEN: ``requests`` waits for the upstream on the loop's thread, blocking the loop.

    Fix: an async client (``sync_http_fixed``), or at least a worker thread
    (``sync_http_offloaded``).
    """
    return JsonResponse({"upstream": _get_upstream()})


async def sync_http_fixed(request):
    """FIXED: ``httpx.AsyncClient`` yields to the loop while the upstream is slow."""
    async with httpx.AsyncClient(verify=TLS, timeout=HTTP_TIMEOUT) as client:
        response = await client.get(settings.UPSTREAM_URL)
    response.raise_for_status()
    return JsonResponse({"upstream": response.json()})


async def sync_http_offloaded(request):
    """FIXED, as a stopgap: the same ``requests`` call, run in a worker thread.

    ``thread_sensitive=False`` because ``requests`` keeps no thread-bound state, so the call need
    not queue for the one thread that the request's sync code (such as the ORM) shares. Each
    waiting call still holds a thread, which an async client would not.
    """
    upstream = await sync_to_async(_get_upstream, thread_sensitive=False)()
    return JsonResponse({"upstream": upstream})


# 3. CPU-bound work -----------------------------------------------------------------------------


async def cpu_report(request):
    """BROKEN: CPU-bound work holds the loop for its whole duration.

    ``await`` only helps while waiting, and pure computation never waits. Fix: run it in a
    thread (``cpu_report_fixed``), or in a process pool or task queue when it is heavy.
    """
    return JsonResponse(compute_report())


async def cpu_report_fixed(request):
    """FIXED: ``asyncio.to_thread`` keeps the loop responsive while the report is computed.

    The GIL still allows one core for pure Python, but the loop gets its turns in between.
    """
    return JsonResponse(await asyncio.to_thread(compute_report))


# 4. Fan-out: real and fake ---------------------------------------------------------------------


async def _fetch(client, url):
    response = await client.get(url)
    response.raise_for_status()
    return response.json()


# One client for all threads, made once: building a client loads TLS certificates, which takes
# long enough to stagger calls that are meant to start together.
_SYNC_CLIENT = httpx.Client(timeout=HTTP_TIMEOUT)


def _fetch_sync(url):
    response = _SYNC_CLIENT.get(url)
    response.raise_for_status()
    return response.json()


async def _gather_services(fetch):
    """Call ``fetch(url)`` for every service concurrently; map each service name to its JSON."""
    services = settings.SERVICES
    results = await asyncio.gather(*(fetch(url) for url in services.values()))
    return dict(zip(services, results, strict=True))


async def dashboard(request):
    """GOOD: three independent calls in flight at once; the view takes as long as the slowest."""
    async with httpx.AsyncClient(verify=TLS, timeout=HTTP_TIMEOUT) as client:
        data = await _gather_services(lambda url: _fetch(client, url))
    return JsonResponse(data)


async def dashboard_sequential(request):
    """FAKE FAN-OUT: async all the way, yet each call waits for the one before it.

    Nothing blocks the loop, so only the timing gives it away: the view takes the sum of the
    three latencies. Fix: ``asyncio.gather`` (``dashboard``).
    """
    async with httpx.AsyncClient(verify=TLS, timeout=HTTP_TIMEOUT) as client:
        data = {name: await _fetch(client, url) for name, url in settings.SERVICES.items()}
    return JsonResponse(data)


async def dashboard_threads(request):
    """FAKE FAN-OUT: ``gather`` over ``sync_to_async`` calls that still run one at a time.

    ``sync_to_async`` is thread-sensitive by default: every call goes to the request's single
    sync thread and queues there. Fix: ``thread_sensitive=False`` for code with no
    thread-bound state (``dashboard_threads_fixed``), or an async client (``dashboard``).
    """
    return JsonResponse(await _gather_services(sync_to_async(_fetch_sync)))


async def dashboard_threads_fixed(request):
    """FIXED: each call gets a thread of its own, so the three really overlap."""
    fetch = sync_to_async(_fetch_sync, thread_sensitive=False)
    return JsonResponse(await _gather_services(fetch))


# 5. The async ORM ------------------------------------------------------------------------------


def _post_json(post):
    # Reads ``post.author``: free when the author was fetched with the post, a query otherwise.
    return {"id": post.pk, "title": post.title, "author": post.author.name}


def _json_body(request):
    try:
        return json.loads(request.body)
    except ValueError as exc:
        raise BadRequest("the request body must be JSON") from exc


async def post_list(request):
    """GOOD: ``async for`` over a queryset runs the query off the loop."""
    published = Post.objects.filter(published=True).order_by("pk")
    return JsonResponse({"posts": [{"id": p.pk, "title": p.title} async for p in published]})


async def post_detail_lazy(request, pk):
    """BROKEN: ``post.author`` is a lazy relation, that is, a hidden sync query.

    Django refuses to run it on the event loop and raises ``SynchronousOnlyOperation``, which
    the client sees as a 500. Fix: fetch the author with the post (``post_detail``).
    """
    post = await aget_object_or_404(Post, pk=pk)
    return JsonResponse(_post_json(post))


async def post_detail(request, pk):
    """FIXED: ``select_related`` joins the author into the one query, so nothing is lazy."""
    post = await aget_object_or_404(Post.objects.select_related("author"), pk=pk)
    return JsonResponse(_post_json(post))


@transaction.atomic
def _create_post(title, author_name, body, published):
    author, _ = Author.objects.get_or_create(name=author_name)
    return Post.objects.create(title=title, body=body, published=published, author=author)


@csrf_exempt  # a JSON endpoint for the demo; a real API would authenticate its callers instead
@require_POST
async def create_post_tx(request):
    """GOOD: a transaction from an async view.

    ``transaction.atomic`` is sync-only and bound to the connection of the thread it runs in,
    so the whole unit of work lives in one sync function called through ``sync_to_async``.
    """
    data = _json_body(request)
    try:
        title, author_name = data["title"], data["author"]
    except (KeyError, TypeError) as exc:
        raise BadRequest("a post needs a title and an author") from exc
    post = await sync_to_async(_create_post)(
        title, author_name, data.get("body", ""), data.get("published", False)
    )
    return JsonResponse(_post_json(post), status=201)


# 6. A classic sync view ------------------------------------------------------------------------


def classic(request):
    """GOOD: a plain sync view with the sync ORM, left as it is.

    Under ASGI Django runs it in a worker thread: one adapter hop per request, the price of
    mixing. Under WSGI the view itself needs no adapter.
    """
    titles = Post.objects.filter(published=True).order_by("pk").values_list("title", flat=True)
    return JsonResponse({"titles": list(titles)})


# 7. Streaming ----------------------------------------------------------------------------------


async def _chunks():
    for number in range(1, STREAM_CHUNKS + 1):
        if number > 1:
            await asyncio.sleep(STREAM_PAUSE_SECONDS)
        yield f"chunk {number}\n"


async def stream(request):
    """GOOD: an async generator feeds the response, so each chunk goes out as it is produced.

    Under ASGI a *sync* iterator would be read to the end in a thread before anything is sent
    (Django warns about it), which silently turns streaming into buffering.
    """
    return StreamingHttpResponse(_chunks(), content_type="text/plain")


# 8. Fire and forget ----------------------------------------------------------------------------

# The event loop keeps only weak references to tasks; without a strong one a pending task may
# be garbage-collected before it finishes.
BACKGROUND_TASKS = set()
OUTBOX = []  # where the background job "delivers" its notifications


def _spawn(coroutine):
    task = asyncio.create_task(coroutine)
    BACKGROUND_TASKS.add(task)
    task.add_done_callback(BACKGROUND_TASKS.discard)


async def _notify_blocking(message):
    await asyncio.sleep(0)  # by the time this resumes, the view has returned
    time.sleep(BACKGROUND_WORK_SECONDS)  # e.g. a sync SMTP call: blocks the loop
    OUTBOX.append(message)


async def _notify(message):
    await asyncio.sleep(0)
    await asyncio.to_thread(time.sleep, BACKGROUND_WORK_SECONDS)
    OUTBOX.append(message)


async def fire_and_forget(request):
    """BROKEN: the response is quick, but the task it leaves behind blocks the loop later.

    No request looks slow, yet every request in flight stalls when the task runs, so timing a
    view never catches it. Fix: keep blocking work in the task off the loop
    (``fire_and_forget_fixed``), or hand it to a task queue, which also survives a restart.
    """
    _spawn(_notify_blocking("order received"))
    return JsonResponse({"queued": True}, status=202)


async def fire_and_forget_fixed(request):
    """FIXED: the background task waits for its blocking call in a worker thread."""
    _spawn(_notify("order received"))
    return JsonResponse({"queued": True}, status=202)


# 9. Request bodies -----------------------------------------------------------------------------


@csrf_exempt  # see create_post_tx
@require_POST
async def echo(request):
    """Return the JSON body as received: a request body travelling through the ASGI handler."""
    return JsonResponse(_json_body(request), safe=False)
