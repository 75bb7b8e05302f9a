"""The pytest11 entry point: hook bodies that delegate, and nothing else.

Only options, markers and fixtures are set up here. The hooks that watch tests live in
``watching`` and are registered when the run watches anything (``--djasync``, or a test with
one of the plugin's markers), so a run without them pays nothing per test.
"""

from __future__ import annotations

import pytest

from pytest_djasync import _compat, markers
from pytest_djasync import config as _config
from pytest_djasync import fixtures as _fixtures

SETTINGS_KEY = pytest.StashKey[_config.Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    _config.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _compat.skip_assertion_rewriting(config, "pytest_djasync")
    settings = _config.resolve(config)
    config.stash[SETTINGS_KEY] = settings
    markers.register(config)
    config.pluginmanager.register(_fixtures, "djasync-fixtures")
    # A pytest-xdist controller collects nothing, so it cannot wait for the markers to decide.
    if settings.enabled.value or _config.distributes_tests(config):
        _watch(config)
    elif settings.baseline.value is not None:  # read now, as a watching run would: a bad one
        _config.load_baseline(settings, config.rootpath)  # is a usage error before any test


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default_ms = config.stash[SETTINGS_KEY].block_ms.value
    # Bad marker arguments are usage errors, found before anything runs.
    if markers.plan_all(config, items, default_ms):
        _watch(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    warning = _config.unsafe_mode_warning()
    return config.stash[SETTINGS_KEY].header_lines() + ([warning] if warning else [])


def _watch(config: pytest.Config) -> None:
    from pytest_djasync import watching  # the detectors load only for a run that watches

    watching.start(config, config.stash[SETTINGS_KEY])
