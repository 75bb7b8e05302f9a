"""Every private name of Django, asgiref, pytest-django and pytest-asyncio the plugin relies on,
in one place, so a release that renames one breaks one line."""

from __future__ import annotations

from typing import Any

#: pytest-django's fixture behind ``db``, ``transactional_db`` and ``@pytest.mark.django_db``:
#: once it is set up, the test's transaction is open on the main thread's connections.
DJANGO_DB_HELPER_FIXTURE = "_django_db_helper"


def evaluated_xfail(item: Any) -> Any:
    """pytest's own verdict on a test's xfail marks, conditions evaluated (``Xfail`` with
    ``run``, ``strict`` and ``raises``), or None: kept in the item's stash from set-up on."""
    from _pytest.skipping import xfailed_key

    return item.stash.get(xfailed_key, None)
