"""Marks for the tests of the broken views: each is expected to be caught by pytest-djasync."""

import pytest
from pytest_djasync import AsyncSafetyFailure


def caught_by_djasync(reason, *, by_marker=False):
    """Mark a test of a broken view: it must fail, and only because the plugin caught the
    problem (strict, so a fix or a missed detection shows up as XPASS).

    Loop blocking is watched under ``--djasync`` only; a test's own ``djasync_*`` marker
    (``by_marker=True``) is checked in every run.
    """
    condition = True if by_marker else "config.getoption('djasync')"
    return pytest.mark.xfail(condition, raises=AsyncSafetyFailure, strict=True, reason=reason)
