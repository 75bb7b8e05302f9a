"""pytest-djasync: make the async-safety of Django code testable and CI-gateable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_djasync.errors import AsyncSafetyFailure
from pytest_djasync.latency import latency  # binds the name over the submodule's

if TYPE_CHECKING:
    from pytest_djasync.client import ASGIClient, ASGIStreamingTransport, django_asgi_app

__all__ = [
    "ASGIClient",
    "ASGIStreamingTransport",
    "AsyncSafetyFailure",
    "django_asgi_app",
    "latency",
]
__version__ = "0.1.0.dev0"

_LAZY = {
    "ASGIClient": "pytest_djasync.client",
    "ASGIStreamingTransport": "pytest_djasync.client",
    "django_asgi_app": "pytest_djasync.client",
}


def __getattr__(name: str) -> Any:
    # pytest imports this package for its plugin; httpx loads only when a test needs it.
    if name not in _LAZY:
        raise AttributeError(f"module 'pytest_djasync' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
