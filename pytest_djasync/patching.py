"""Patches that remember exactly what they replaced and undo only themselves.

A patched attribute may have been inherited rather than set on its owner; undoing then deletes
ours instead of setting a copy. If someone patched over ours meanwhile (an APM agent, another
detector), theirs stays in place and ours stays behind it, inert once its owner is switched off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

_MISSING = object()


class Patch(NamedTuple):
    owner: Any
    attr: str
    original: Any  # _MISSING when the attribute was inherited rather than set on ``owner``
    wrapper: Any

    def undo(self) -> bool:
        if vars(self.owner).get(self.attr) is not self.wrapper:
            return False
        if self.original is _MISSING:
            delattr(self.owner, self.attr)
        else:
            setattr(self.owner, self.attr, self.original)
        return True


def install(owner: Any, attr: str, wrapper: Any) -> Patch:
    """Set ``owner.attr = wrapper`` and return how to undo exactly that."""
    original = vars(owner).get(attr, _MISSING)
    setattr(owner, attr, wrapper)
    return Patch(owner, attr, original, wrapper)


class Shared:
    """A set of patches installed while anyone needs it: a test's recorder, or a whole watched
    session that pins it so tests do not pay for installing and removing it one by one.

    When the last user leaves, each patch is undone; one that someone patched over meanwhile (a
    ``monkeypatch.setattr`` undone only after the test) is kept aside, inert, and undone as soon
    as it is exposed again.
    """

    def __init__(self, make: Callable[[], list[Patch]]) -> None:
        self._make = make
        self.patches: list[Patch] = []
        self.wrappers: frozenset[int] = frozenset()  # ids of the current wrappers, for hot paths
        self._users: list[object] = []
        self._stale: list[Patch] = []

    def acquire(self, user: object) -> None:
        if not self.patches:
            self._undo_stale()
            self.patches = self._make()
            self.wrappers = frozenset(id(patch.wrapper) for patch in self.patches)
        self._users.append(user)

    def release(self, user: object) -> None:
        if user in self._users:
            self._users.remove(user)
        if self._users:
            return
        for patch in reversed(self.patches):
            if not patch.undo():
                self._stale.append(patch)
        self.patches = []
        self.wrappers = frozenset()
        self._undo_stale()

    def _undo_stale(self) -> None:
        self._stale = [patch for patch in self._stale if not patch.undo()]
