"""WSGI entry point. Async views still work here, but each one pays an ``async_to_sync`` hop."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

application = get_wsgi_application()
