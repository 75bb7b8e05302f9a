"""The exception a test fails with when the plugin finds problems in it, and its warning."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytest


class AsyncSafetyFailure(pytest.fail.Exception):  # type: ignore[name-defined,misc]
    """Raised in place of a passing test's result when pytest-djasync found problems in it.

    A subclass of pytest's own failure outcome, so the message is shown without a traceback,
    and usable as ``pytest.mark.xfail(raises=AsyncSafetyFailure, strict=True)`` to mark a test
    that is expected to fail *because* the plugin catches its problem.
    """


class DjasyncWarning(pytest.PytestWarning):
    """Something worth knowing that is not a finding, such as another thread hogging the GIL."""


@contextlib.contextmanager
def spared_from_blanket_errors(text: str) -> Iterator[None]:
    """Issue a DjasyncWarning with ``text`` as a warning even under a blanket ``error`` filter
    (``filterwarnings = error``, ``-W error``), which many projects set: notes are mostly about
    the machine (a busy core, a thread's start-up), so they would fail clean tests on a busy CI
    runner. A filter that names DjasyncWarning still makes it an error, and ``ignore`` still
    hides it."""
    with warnings.catch_warnings():
        if _blanket_error(text):
            warnings.filterwarnings("always", category=DjasyncWarning)
        yield


def _blanket_error(text: str) -> bool:
    """Whether the filter that decides about this warning turns every warning into an error."""
    for action, message, category, module, _line in warnings.filters:
        if module is not None or (message is not None and not message.match(text)):
            continue  # about warnings from elsewhere, or other warnings
        if issubclass(DjasyncWarning, category):
            names_it = isinstance(category, type) and issubclass(category, DjasyncWarning)
            return action == "error" and not names_it
    return False
