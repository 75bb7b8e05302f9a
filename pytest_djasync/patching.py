"""Patches that remember exactly what they replaced and undo only themselves.

A patched attribute may have been inherited rather than set on its owner; undoing then deletes
ours instead of setting a copy. If someone patched over ours meanwhile (an APM agent, another
detector), theirs stays in place and ours stays behind it, inert once its owner is switched off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_MISSING = object()


@dataclasses.dataclass
class Patch:
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
