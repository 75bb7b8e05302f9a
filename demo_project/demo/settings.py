"""Settings for the pytest-djasync demo project.

Deliberately small: just enough of Django to show each async-safety scenario in ``shop``.
Not for production (the secret key is public and nothing is hardened).
"""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-demo-only-do-not-deploy"
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "shop",
]

# Django's own middleware is async-capable, so no adapter goes around it under ASGI; but each of
# its MiddlewareMixin hooks (process_request, process_response, ...) still runs through
# sync_to_async, a thread hop per hook per request, which the crossing counts show.
# ``shop.middleware`` has two sync-only classes that the tests switch on to show what one legacy
# middleware adds.
MIDDLEWARE = [
    "shop.middleware.TimingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"


def _database() -> dict[str, object]:
    """PostgreSQL when ``DJASYNC_DB=postgres`` (configured like libpq), SQLite otherwise."""
    if os.environ.get("DJASYNC_DB") == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", "postgres"),
            "NAME": os.environ.get("PGDATABASE", "djasync"),
        }
    # Outside the source tree, so ``manage.py migrate`` leaves no file behind in the checkout.
    # The test run never touches it: pytest-django builds its own test database.
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(tempfile.gettempdir()) / "djasync-demo.sqlite3",
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"

# Read by the views at request time, so tests can point them elsewhere with ``settings``.
UPSTREAM_URL = "http://127.0.0.1:8765/slow"  # a slow HTTP service, for the sync-client views
SERVICES = {  # the three backends the dashboard views fan out to
    "weather": "https://weather.example.test/now",
    "news": "https://news.example.test/top",
    "stocks": "https://stocks.example.test/quote/ACME",
}
