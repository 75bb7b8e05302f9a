"""pytest-djasync: make the async-safety of Django code testable and CI-gateable."""

from pytest_djasync.client import ASGIStreamingTransport, django_asgi_app
from pytest_djasync.errors import AsyncSafetyFailure
from pytest_djasync.latency import latency

__all__ = ["ASGIStreamingTransport", "AsyncSafetyFailure", "django_asgi_app", "latency"]
__version__ = "0.1.0.dev0"
