"""Recorded baselines: findings a team already knows about, so CI gates only on new ones.

One finding per line, tab-separated: test node id, kind, where (path:function), what. No line
numbers, so an unrelated edit above a known problem does not make it new; sorted, so the file
reviews well in a diff.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_djasync._io import write_text_atomically
from pytest_djasync.findings import KINDS

Key = tuple[str, str, str, str]

_HEADER = (
    "# pytest-djasync baseline: known findings, one per line, that do not fail the run.\n"
    "# Fields (tab-separated): test node id, kind, where, what. Rewrite it with\n"
    "# pytest --djasync --djasync-baseline=PATH --djasync-baseline-write\n"
)
_COUNTED_KINDS = ("crossings", "fanout")  # their 'what' holds counts that change run to run


def key(nodeid: str, violation: Mapping[str, Any]) -> Key:
    """The identity of a finding, from its JSON report form."""
    kind = str(violation["kind"])
    location = violation.get("location") or {}
    if kind == "stall":  # sampled: where inside the step it was caught varies run to run
        location = _outermost_own(violation.get("stack") or ()) or location
    where = f"{location.get('path', '?')}:{location.get('function', '?')}" if location else "-"
    what = "-" if kind in _COUNTED_KINDS else str(violation.get("what", "-"))
    return (nodeid, kind, _portable(kind, where), what)


def _outermost_own(stack: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Where a stall's step entered the project's code (its stack outermost first): the view,
    middleware or test whose step it was. Samples of one stall land in different functions it
    calls (a loop calling _discount, then _tax); its entry into the project does not move.
    Below Django's handler the entry is the view Django called, not an async middleware
    around it, which every view's stall passes through."""
    frames = [(frame, str(frame.get("path", "")).replace("\\", "/")) for frame in stack]
    below = max((n for n, (_, path) in enumerate(frames, 1) if _HANDLER.match(path)), default=0)
    return _first_own(frames[below:]) or _first_own(frames)


def _first_own(frames: list[tuple[Mapping[str, Any], str]]) -> Mapping[str, Any] | None:
    for frame, path in frames:
        if not (_ELSEWHERE.match(path) or _INSTALLED.match(path) or _STDLIB.match(path)):
            return frame
    return None


_HANDLER = re.compile(r"(?:.*/)?django/core/handlers/[^/]+\.py$")  # calls middleware and views
_INSTALLED = re.compile(r".*(?:site|dist)-packages/(.+)$")
_STDLIB = re.compile(r".*/lib/python\d+\.\d+/(.+)$")
_ELSEWHERE = re.compile(r"(/|[A-Za-z]:/|<)")  # outside the rootdir, or no file
LIBRARY_CODE = "<library code>"


def _portable(kind: str, where: str) -> str:
    """``where`` the same on every machine: a library's file (a finding with no project code
    on its stack) relative to its site-packages or standard library, not to a virtualenv that
    may be elsewhere or on another Python; a stall there is any library frame, as the sample
    that names it can land on a different one each run."""
    path, colon, function = where.replace("\\", "/").rpartition(":")
    match = _INSTALLED.match(path) or _STDLIB.match(path)
    if match is None:
        return where
    return LIBRARY_CODE if kind == "stall" else f"{match.group(1)}{colon}{function}"


class Baseline:
    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.keys = frozenset(keys)

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read ``path``; a missing file is an empty baseline, a malformed line an error."""
        if not path.exists():
            return cls()
        keys = []
        for number, line in enumerate(_read_lines(path), 1):
            if not line.strip() or line.startswith("#"):
                continue
            keys.append(_parse_line(line, f"{path}:{number}"))
        return cls(keys)

    def knows(self, finding_key: Key) -> bool:
        return finding_key in self.keys

    def stale(self, seen: Iterable[Key], ran: Collection[str]) -> list[Key]:
        """Known findings of the tests that ``ran`` that no longer occur: the baseline can
        shrink by these."""
        return sorted(k for k in self.keys - set(seen) if k[0] in ran)

    def not_run(self, ran: Collection[str]) -> int:
        """How many known findings belong to tests that did not run (deselected, or gone)."""
        return sum(k[0] not in ran for k in self.keys)

    def kept(self, ran: Collection[str], root: Path) -> tuple[list[Key], int]:
        """What a writing run keeps of this file: the known findings of the tests it did not
        run, whose test file still exists under ``root``; and how many it drops (their file is
        gone). A ``-k`` run can be no evidence about the tests it deselected."""
        unrun = [k for k in self.keys if k[0] not in ran]
        present = {f for f in {_test_file(k[0]) for k in unrun} if (root / f).is_file()}
        kept = sorted(k for k in unrun if _test_file(k[0]) in present)
        return kept, len(unrun) - len(kept)


def _read_lines(path: Path) -> list[str]:
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file path such as djasync-baseline.txt")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not a UTF-8 text file (byte {exc.start}: {exc.reason});"
            " is it a baseline file?"
        ) from None


def _parse_line(line: str, where: str) -> Key:
    fields = line.split("\t")
    if len(fields) != 4:
        raise ValueError(
            f"{where}: expected 4 tab-separated fields (node id, kind, where, what),"
            f" found {len(fields)}: {line!r}"
        )
    if fields[1] not in KINDS:  # a typo would match nothing and excuse nothing, silently
        raise ValueError(f"{where}: unknown kind {fields[1]!r}; choose from: {', '.join(KINDS)}")
    return fields[0], fields[1], _portable(fields[1], fields[2]), fields[3]


def _test_file(nodeid: str) -> str:
    """The file part of a node id, relative to the rootdir: ``tests/test_a.py::test_b[x]``."""
    return nodeid.split("::", 1)[0]


def write(path: Path, keys: Iterable[Key]) -> None:
    """Write the baseline atomically, sorted, one finding per line."""
    body = "".join("\t".join(k) + "\n" for k in sorted(set(keys)))
    write_text_atomically(path, _HEADER + body)
