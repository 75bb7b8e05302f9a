"""Every private name of Django, asgiref, pytest, pytest-django and pytest-asyncio the plugin
relies on, in one place, so a release that renames one breaks one line."""

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


def skip_assertion_rewriting(config: Any, package: str) -> None:
    """Let Python's own loader import ``package``'s modules from now on, not pytest's
    assertion-rewriting hook.

    pytest marks every module of a plugin's distribution for rewriting, and its hook reads each
    cached module back with ``marshal.load`` from a file object, which costs several times what
    Python's loader does: about 1.3% of the instructions of a watched run of the benchmark's
    requests suite. The plugin has no asserts for pytest to explain. Where these private
    attributes are missing (another pytest), nothing changes.
    """
    hook = getattr(config.pluginmanager, "rewrite_hook", None)
    marked = getattr(hook, "_must_rewrite", None)
    decided = getattr(hook, "_marked_for_rewrite_cache", None)
    if not isinstance(marked, set) or not isinstance(decided, dict):
        return

    def ours(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    marked.difference_update([name for name in marked if ours(name)])
    for name in [name for name in decided if ours(name)]:
        del decided[name]
