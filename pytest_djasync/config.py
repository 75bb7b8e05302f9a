"""Options and ini keys, resolved once (command line, then ini, then default) into frozen settings.

Every value remembers where it came from, so the header can say it and a bad value can be
reported against the place the user has to fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pytest

if TYPE_CHECKING:
    from pytest_djasync import baseline

UNSAFE_ENV = "DJANGO_ALLOW_ASYNC_UNSAFE"

T = TypeVar("T")

GUARD_GROUPS = ("sleep", "socket", "dns", "select", "subprocess", "http", "wait", "file")
DEFAULT_GUARDS = frozenset(GUARD_GROUPS) - {"file"}  # small template/config reads are harmless
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Setting(Generic[T]):
    """A value and where it came from: a flag, an ini key and its file, or ``default``."""

    __slots__ = ("source", "value")

    def __init__(self, value: T, source: str) -> None:
        self.value = value
        self.source = source


# NamedTuples rather than dataclasses here and for the other records made at import or per
# test: a dataclass compiles its methods from source, 0.3-0.7 ms apiece at every start-up.
class Settings(NamedTuple):
    enabled: Setting[bool]
    block_ms: Setting[float]
    report: Setting[Path | None]
    guard: Setting[frozenset[str]]
    allow: Setting[tuple[str, ...]]
    db_thread: Setting[bool]
    mode: Setting[str]  # "fail" or "warn"
    baseline: Setting[Path | None]
    baseline_write: bool = False

    def header_lines(self) -> list[str]:
        state = "on" if self.enabled.value else "off (use --djasync to watch this run)"
        guards = " ".join(sorted(self.guard.value)) or "none"
        settings: list[tuple[str, Setting[Any]]] = [
            (f"block_ms={self.block_ms.value:g}", self.block_ms),
            (f"report={self.report.value or 'none'}", self.report),
            (f"guard={guards}", self.guard),
            (f"db_thread={self._db_thread_state()}", self.db_thread),
        ]
        if self.mode.value != "fail":
            settings.append((f"mode={self.mode.value}", self.mode))
        if self.baseline.value is not None:
            write = " (rewriting it)" if self.baseline_write else ""
            settings.append((f"baseline={self.baseline.value}{write}", self.baseline))
        if self.allow.value:
            settings.append((f"allow={', '.join(self.allow.value)}", self.allow))
        if not self.enabled.value:
            # Installed but off, a run should read as if the plugin were absent: one line, and
            # only the settings someone chose (the markers of such a run still use them).
            settings = [(text, s) for text, s in settings if s.source != "default"]
        lines = [f"djasync: {state} [{self.enabled.source}]"]
        return lines + [f"  {text} [{s.source}]" for text, s in settings]

    def _db_thread_state(self) -> str:
        if not self.db_thread.value:
            return "off"
        # The thread is shared only in a --djasync run: a database test that fails with
        # "table is locked" in a plain run should not read as if it were on.
        return "on" if self.enabled.value else "on, unused without --djasync"


class _Option(NamedTuple):
    flag: str
    ini: str
    help: str


ENABLE = _Option("--djasync", "djasync", "watch every test for async-safety problems")
BLOCK_MS = _Option(
    "--djasync-block-ms", "djasync_block_ms", "loop-stall threshold in milliseconds (100)"
)
REPORT = _Option("--djasync-report", "djasync_report", "write the JSON report to this path")
GUARD = _Option(
    "--djasync-guard",
    "djasync_guard",
    f"blocking-call guards to arm: 'default' or any of {', '.join(GUARD_GROUPS)}"
    " ('file' is off by default)",
)
DB_THREAD = _Option(
    "--djasync-db-thread",
    "djasync_db_thread",
    "run async tests' thread-sensitive work on one thread inside the test's transaction"
    " (true; false restores pytest-django's own behaviour)",
)
MODE = _Option(
    "--djasync-mode",
    "djasync_mode",
    "fail: findings fail their tests (default); warn: report everything, fail nothing",
)
BASELINE = _Option(
    "--djasync-baseline",
    "djasync_baseline",
    "file of known findings: they are reported but do not fail; new ones do",
)
ALLOW = _Option(
    "--djasync-allow",
    "djasync_allow",
    "module:function patterns whose blocking is accepted (fnmatch, repeatable)",
)


# pytest 9.2+ takes union ini types: a native ``[tool.pytest]`` TOML table may then say
# ``djasync = true`` and ``djasync_block_ms = 75`` unquoted. INI files and ``-o`` always give
# the first member, a string, which the parsers below check themselves.
_UNION_INI_TYPES = pytest.version_tuple >= (9, 2)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("djasync", "async-safety checks for Django (pytest-djasync)")
    group.addoption(ENABLE.flag, action="store_true", default=None, help=ENABLE.help)
    for option in (BLOCK_MS, REPORT, GUARD, DB_THREAD, MODE, BASELINE):
        group.addoption(option.flag, default=None, metavar="VALUE", help=option.help)
    group.addoption(
        "--djasync-warn",
        action="store_true",
        default=False,
        help="same as --djasync-mode=warn: for a first run on a large legacy suite",
    )
    group.addoption(
        "--djasync-baseline-write",
        action="store_true",
        default=False,
        help="write this run's findings to the --djasync-baseline file",
    )
    group.addoption(ALLOW.flag, action="append", default=None, metavar="PATTERN", help=ALLOW.help)
    if _UNION_INI_TYPES:
        parser.addini(ENABLE.ini, ENABLE.help, type=str | bool, default="")
        parser.addini(DB_THREAD.ini, DB_THREAD.help, type=str | bool, default="")
        parser.addini(BLOCK_MS.ini, BLOCK_MS.help, type=str | float, default="")
    else:  # pragma: no cover - pytest < 9.2
        for option in (ENABLE, BLOCK_MS, DB_THREAD):
            parser.addini(option.ini, option.help, type="string", default="")
    for option in (REPORT, GUARD, MODE, BASELINE):
        parser.addini(option.ini, option.help, type="string", default="")
    parser.addini(ALLOW.ini, ALLOW.help, type="linelist", default=[])


def distributes_tests(config: pytest.Config) -> bool:
    """True in a pytest-xdist controller: workers run the tests and send their reports here."""
    if hasattr(config, "workerinput"):
        return False
    option = config.option
    return bool(getattr(option, "numprocesses", None)) or getattr(option, "dist", "no") != "no"


def _unwritable(path: Path) -> str | None:
    """Why no file can be written at ``path`` (checked before the run, not after it)."""
    if path.is_dir():
        return "is a directory"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"is under {str(parent)!r}, which is a file"
    return None


def resolve(config: pytest.Config) -> Settings:
    """Read every setting once; raise ``pytest.UsageError`` naming any bad value."""
    report = _pick(config, REPORT, _parse_path, None)
    if report.value is not None:
        problem = _unwritable(config.rootpath / report.value)
        if problem:
            raise pytest.UsageError(
                f"pytest-djasync: {report.source}: {str(report.value)!r} {problem};"
                " give a file path such as djasync.json"
            )
    enabled = _pick(config, ENABLE, parse_bool, False)
    if config.getoption("djasync_baseline_write") and not enabled.value:
        raise pytest.UsageError(
            "pytest-djasync: --djasync-baseline-write needs --djasync (or djasync = true in the"
            " ini file): without it a test is watched only for what its marker asks, and the"
            " baseline would lose the findings of every other test"
        )
    return Settings(
        enabled=enabled,
        block_ms=_pick(config, BLOCK_MS, parse_block_ms, 100.0),
        report=report,
        guard=_pick(config, GUARD, parse_guards, DEFAULT_GUARDS),
        allow=_pick(config, ALLOW, _parse_patterns, ()),
        db_thread=_pick(config, DB_THREAD, parse_bool, True),
        mode=_mode(config),
        baseline=_baseline(config),
        baseline_write=bool(config.getoption("djasync_baseline_write")),
    )


def _baseline(config: pytest.Config) -> Setting[Path | None]:
    baseline = _pick(config, BASELINE, _parse_baseline_path, None)
    if config.getoption("djasync_baseline_write") and baseline.value is None:
        raise pytest.UsageError(
            "pytest-djasync: --djasync-baseline-write needs a file to write:"
            " give --djasync-baseline=PATH (or djasync_baseline in the ini file)"
        )
    return baseline


def _mode(config: pytest.Config) -> Setting[str]:
    mode = _pick(config, MODE, parse_mode, "fail")
    if not config.getoption("djasync_warn"):
        return mode
    if mode.source == MODE.flag and mode.value != "warn":
        raise pytest.UsageError(
            f"pytest-djasync: --djasync-warn and {MODE.flag}={mode.value} contradict each"
            " other; give one of them"
        )
    return Setting("warn", "--djasync-warn")  # over the ini file's mode, as any flag is


def parse_mode(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in ("fail", "warn"):
        raise ValueError(f"{raw!r} is not a mode; choose fail or warn")
    return mode


def _pick(
    config: pytest.Config, option: _Option, parse: Callable[[str], T], default: T
) -> Setting[T]:
    cli = config.getoption(option.flag.lstrip("-").replace("-", "_"))
    ini = config.getini(option.ini)
    from_ini = None
    if ini is not None and ini != "" and ini != []:  # a TOML ``false`` or ``0`` is a value
        # Read even when the command line wins: a bad value in the file is a bad file.
        from_ini = _parsed(parse, _text(ini), _ini_source(config, option.ini))
    if cli is not None:
        return _parsed(parse, _text(cli), option.flag)
    return from_ini if from_ini is not None else Setting(default, "default")


def _ini_source(config: pytest.Config, name: str) -> str:
    """Where an ini value came from: ``-o name=...`` or the configuration file."""
    overrides = config.getoption("override_ini", None) or []
    if any(entry.split("=", 1)[0].strip() == name for entry in overrides):
        return f"-o {name}"
    return f"{name} in {config.inipath.name if config.inipath else 'ini'}"


def _text(value: object) -> str:
    """The command-line or ini value as the text the parsers read."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    assert isinstance(value, Sequence)
    return "\n".join(str(v) for v in value)


def _parsed(parse: Callable[[str], T], raw: str, where: str) -> Setting[T]:
    try:
        return Setting(parse(raw), where)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-djasync: {where}: {exc}") from None


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean; use one of: {', '.join(_TRUE + _FALSE)}")


def parse_block_ms(raw: str | float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"{raw!r} is not a valid threshold; give a positive number of milliseconds, e.g. 100"
        )
    return value


def parse_guards(raw: str) -> frozenset[str]:
    words = raw.replace(",", " ").lower().split()
    choices = ", ".join(("default", "none", *GUARD_GROUPS))
    if not words:  # an empty value is more likely a slip than a wish to turn the guard off
        raise ValueError(
            f"no guard group given; write 'none' for no guard, or choose from: {choices}"
        )
    if "none" in words and len(words) > 1:  # "none,sleep" is a contradiction, not "sleep"
        raise ValueError(f"'none' cannot be combined with other guards; choose from: {choices}")
    chosen: set[str] = set()
    for word in words:
        if word == "default":
            chosen |= DEFAULT_GUARDS
        elif word == "none":
            continue
        elif word in GUARD_GROUPS:
            chosen.add(word)
        else:
            raise ValueError(f"unknown guard {word!r}; choose from: {choices}")
    return frozenset(chosen)


def _parse_baseline_path(raw: str) -> Path | None:
    if not raw.strip():
        raise ValueError(
            "the baseline path is empty; give a file path such as djasync-baseline.txt"
        )
    return Path(raw.strip())


def _parse_path(raw: str) -> Path | None:
    text = raw.strip()
    if not text:
        raise ValueError("the report path is empty; give a file path such as djasync.json")
    return Path(text)


def _parse_patterns(raw: str) -> tuple[str, ...]:
    # The ini file's line list has no blank lines: a blank one is an empty --djasync-allow=.
    patterns = tuple(p.strip() for p in raw.splitlines() or [raw])
    for pattern in patterns:
        if not pattern:
            raise ValueError(
                "an empty pattern; give a 'module:function' pattern (e.g. 'myapp.legacy:*')"
            )
        module, _, function = pattern.partition(":")
        if not module.strip() or not function.strip():
            raise ValueError(
                f"{pattern!r} is not a 'module:function' pattern (e.g. 'myapp.legacy:*')"
            )
    return patterns


def load_baseline(settings: Settings, root: Path) -> baseline.Baseline:
    """The ``--djasync-baseline`` file, read; a bad one is a usage error."""
    from pytest_djasync import baseline

    path = settings.baseline.value
    if path is None:
        return baseline.Baseline()
    try:
        return baseline.Baseline.load(root / path)
    except (OSError, ValueError) as exc:
        # A rewrite keeps the old entries of the tests it does not run, so it reads them too.
        hint = " (delete the file to write a new one)" if settings.baseline_write else ""
        raise pytest.UsageError(
            f"pytest-djasync: {settings.baseline.source}: {exc}{hint}"
        ) from None


def unsafe_mode_warning() -> str | None:
    """The header's warning when Django is told not to raise ``SynchronousOnlyOperation``."""
    if os.environ.get(UNSAFE_ENV):
        return (
            f"djasync: WARNING {UNSAFE_ENV} is set: Django will not raise"
            " SynchronousOnlyOperation, so sync ORM calls on the event loop go unreported"
        )
    return None
