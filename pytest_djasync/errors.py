"""The exception a test fails with when the plugin finds problems in it."""

from __future__ import annotations

import pytest


class AsyncSafetyFailure(pytest.fail.Exception):  # type: ignore[name-defined,misc]
    """Raised in place of a passing test's result when pytest-djasync found problems in it.

    A subclass of pytest's own failure outcome, so the message is shown without a traceback,
    and usable as ``pytest.mark.xfail(raises=AsyncSafetyFailure, strict=True)`` to mark a test
    that is expected to fail *because* the plugin catches its problem.
    """


class DjasyncWarning(pytest.PytestWarning):
    """Something worth knowing that is not a finding, such as another thread hogging the GIL."""
