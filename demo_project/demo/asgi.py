"""ASGI entry point, e.g. ``uvicorn demo.asgi:application``: how these views should run."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

application = get_asgi_application()
