"""Realistic latency for respx routes, for async and sync callers alike.

``respx.get(url).mock(side_effect=latency(0.05, json={...}))`` answers after 50 ms: an
``httpx.AsyncClient`` awaits ``asyncio.sleep`` (so concurrent calls overlap, as on a network),
and an ``httpx.Client`` sleeps its own thread. A fan-out test then needs no network and no
hand-written side effects.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

_ASYNC_RESOLVER = "aresolve"  # respx's async route resolution; it awaits what we return


def latency(seconds: float, status_code: int = 200, **response: Any) -> Callable[..., Any]:
    """A respx side effect: ``httpx.Response(status_code, **response)`` after ``seconds``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(
            f"latency: {seconds!r} is not a number; give a delay in seconds, e.g. 0.05"
        )
    if not 0 <= seconds < math.inf:  # NaN too: it would fail later, inside time.sleep
        raise ValueError(
            f"latency: {seconds!r} is not a delay; give a finite number of seconds >= 0, e.g. 0.05"
        )

    def side_effect(request: httpx.Request, **context: Any) -> Any:
        # respx passes a pattern's named groups (url__regex=r".../(?P<id>\d+)") as keywords
        import httpx  # here: importing the plugin must not import httpx

        if _called_by_async_resolver():
            return _answer_later(seconds, status_code, response)
        time.sleep(seconds)
        return httpx.Response(status_code, **response)

    return side_effect


async def _answer_later(
    seconds: float, status_code: int, response: dict[str, Any]
) -> httpx.Response:
    import httpx

    await asyncio.sleep(seconds)
    return httpx.Response(status_code, **response)


def _called_by_async_resolver() -> bool:
    frame = sys._getframe(2)
    for _ in range(8):  # respx calls side effects a few frames below its resolver
        if frame is None:
            return False
        if frame.f_code.co_name == _ASYNC_RESOLVER:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
