"""Everything the plugin says: a test's failure text, the terminal summary and the JSON report."""

from __future__ import annotations

import json
import linecache
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pytest_djasync import fanout
from pytest_djasync._io import write_text_atomically
from pytest_djasync.crossings import (
    SYNC_TO_ASYNC,
    Crossing,
    Recorder,
    hooks_in_sync_mode,
    ran_concurrently,
    sync_only_middleware,
)
from pytest_djasync.findings import Finding, Frame
from pytest_djasync.session import TestRecord

REPORT_VERSION = 1


def _source(frame: Frame | None) -> str:
    if frame is None:
        return ""
    return linecache.getline(frame.path, frame.line).strip()


# Without -v, a test's failure lists this many findings and the summary this many locations:
# a test (or a suite) with hundreds of them would bury pytest's own output.
SHOWN_FINDINGS = 10
SHOWN_LOCATIONS = 30


def failure_text(found: Sequence[Finding], block_ms: float, root: Path, verbose: bool) -> str:
    """Why a test failed: every finding (the first ``SHOWN_FINDINGS`` without ``-v``) with its
    line, request and fix; stacks with ``-v``."""
    noun = "problem" if len(found) == 1 else "problems"
    lines = [f"pytest-djasync: {len(found)} async-safety {noun} (stall threshold {block_ms:g} ms)"]
    shown = found if verbose else found[:SHOWN_FINDINGS]
    for number, finding in enumerate(shown, 1):
        lines.append("")
        lines += _finding_lines(number, finding, root, verbose)
    if len(shown) < len(found):
        more = len(found) - len(shown)
        lines += [
            "",
            f"... and {more} more (run with -v to list them all, or see --djasync-report)",
        ]
    if not verbose:
        lines += ["", "(run with -v for full stacks)"]
    return "\n".join(lines)


def _finding_lines(number: int, finding: Finding, root: Path, verbose: bool) -> list[str]:
    lines = [f"{number}. {finding.message(root)}"]
    source = _source(finding.location)
    if source:
        lines.append(f"       {source}")
    if finding.request:
        sender = f" (sent by {finding.sent_by}, which left it running)" if finding.sent_by else ""
        lines.append(f"   while serving: {finding.request}{sender}")
    if finding.thread != "MainThread":
        lines.append(f"   thread: {finding.thread}")
    lines.append(f"   fix: {finding.fix}")
    if finding.note:
        lines.append(f"   note: {finding.note}")
    return lines + _stack_lines(finding, root, verbose)


def _stack_lines(finding: Finding, root: Path, verbose: bool) -> list[str]:
    if not verbose or not finding.stack:
        return []
    lines = ["   stack (most recent call last):"]
    for frame in finding.stack:
        lines.append(f"     {frame.relative_path(root)}:{frame.line} in {frame.function}")
        source = _source(frame)
        if source:
            lines.append(f"         {source}")
    return lines


Entry = dict[str, Any]  # one test's part of the JSON report


def summary_lines(entries: Iterable[Entry], verbose: bool = True) -> list[str]:
    """Findings grouped by the user's code location, with the tests that hit them; without
    ``verbose``, the ``SHOWN_LOCATIONS`` locations hit most often."""
    groups: dict[tuple[_Where, str], list[tuple[str, Entry]]] = defaultdict(list)
    for entry in entries:
        for violation in entry["violations"]:
            groups[(_where(violation), violation["kind"])].append((entry["nodeid"], violation))
    shown = sorted(groups)  # by path, then line as a number
    if not verbose and len(shown) > SHOWN_LOCATIONS:
        busiest = sorted(shown, key=lambda key: len(groups[key]), reverse=True)
        shown = sorted(busiest[:SHOWN_LOCATIONS])
    lines = []
    for key in shown:
        lines += _group_lines(key[1], groups[key])
    if len(shown) < len(groups):
        more = len(groups) - len(shown)
        lines.append(
            f"... and {more} more locations, hit less often"
            " (run with -v to list them all, or see --djasync-report)"
        )
    return lines


def _group_lines(kind: str, hits: list[tuple[str, Entry]]) -> list[str]:
    first = hits[0][1]
    reasons = {v.get("allowed_by") for _, v in hits}
    excused = "" if None in reasons else f" [{', '.join(sorted(map(str, reasons)))}]"
    tests = sorted({nodeid for nodeid, _ in hits})
    shown = ", ".join(tests[:3]) + (f" and {len(tests) - 3} more" if len(tests) > 3 else "")
    return [
        f"{_place(first)}: {kind} {first.get('what', '')}{excused}",
        f"    in {len(tests)} test{'' if len(tests) == 1 else 's'}: {shown}",
        f"    fix: {first['fix']}",
    ]


def totals_line(entries: Iterable[Entry], watched: int) -> str:
    """One line: findings by kind, how many the baseline knew, crossings counted; ``watched``
    tests in all, clean ones included, whether or not ``entries`` lists them."""
    kinds: Counter[str] = Counter()
    known = failing = tests = crossings = 0
    for entry in entries:
        violations = entry["violations"]
        kinds.update(v["kind"] for v in violations)
        known += sum(1 for v in violations if v.get("allowed_by") == "baseline")
        failing += sum(1 for v in violations if v.get("allowed_by") is None)
        tests += bool(violations)
        crossings += entry.get("crossings", {}).get("total", 0)
    by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    return (
        f"djasync: {_plural(sum(kinds.values()), 'finding')} in {tests} of"
        f" {_plural(watched, 'test')}"
        f" ({by_kind or 'none'}); {failing} unexcused, {known} known from the baseline;"
        f" {crossings} sync/async crossings"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


_Where = tuple[bool, str, int, str]


def _where(violation: Entry) -> _Where:
    """A location's sort key: findings with none come last."""
    location = violation.get("location")
    if not location:
        return (True, "", 0, "")
    return (False, location["path"], location["line"], location["function"])


def _place(violation: Entry) -> str:
    location = violation.get("location")
    if not location:
        return "<unknown location>"
    return f"{location['path']}:{location['line']} in {location['function']}"


def _frame_json(frame: Frame, root: Path) -> dict[str, Any]:
    return {"path": frame.relative_path(root), "line": frame.line, "function": frame.function}


def violation_json(finding: Finding, root: Path) -> Entry:
    return {
        "kind": finding.kind,
        "message": finding.message(root),
        # to the microsecond: the clocks say no more, and 200.12345678901 reads as noise
        "duration_ms": None if finding.duration_ms is None else round(finding.duration_ms, 3),
        "location": _frame_json(finding.location, root) if finding.location else None,
        "stack": [_frame_json(frame, root) for frame in finding.stack],
        "request": finding.request,
        "what": finding.what,
        "count": finding.count,
        "fix": finding.fix,
        "note": finding.note or None,
        "allowed": finding.allowed_by is not None,
        "allowed_by": finding.allowed_by,
    }


def report_json(entries: Iterable[Entry], block_ms: float) -> dict[str, Any]:
    return {"version": REPORT_VERSION, "block_ms": block_ms, "tests": list(entries)}


def test_entry(record: TestRecord, root: Path, detailed: bool) -> Entry:
    """One test's entry of the JSON report (without its outcome, which the controller knows).

    ``detailed`` adds what only the JSON report shows and is costly to work out: each
    crossing's origin.
    """
    entry: Entry = {
        "nodeid": record.nodeid,
        "violations": [violation_json(f, root) for f in record.findings],
    }
    if record.crossings is not None:
        entry["crossings"] = {"total": record.crossings.total}
        if detailed:
            entry["crossings"]["by_origin"] = record.crossings.by_origin()
        entry["crossings"]["by_request"] = record.crossings.by_request()
    if record.fanout is not None:
        entry["fanout"] = {
            "requests": len(record.fanout.finished),
            "peak_concurrency": record.fanout.peak_concurrency,
        }
    return entry


def empty_entry(nodeid: str, detailed: bool) -> Entry:
    """The entry of a clean test in a ``--djasync`` run: ``test_entry`` of a test that found
    nothing, made no crossing and sent no request."""
    clean = TestRecord(nodeid, crossings=Recorder(explain=False), fanout=fanout.Recorder())
    return test_entry(clean, Path(), detailed)


def unmatched_allow(pattern: str, qualnames: bool = sys.version_info >= (3, 11)) -> str:
    """The summary's line for a pattern that allowed nothing, with the likely reason: a file
    path where the module's dotted name goes (copied from a finding's location), or on Python
    3.10, whose frames have no qualified names (``co_qualname``), a class in the name."""
    line = f"djasync_allow pattern {pattern!r} matched no finding"
    module, _, function = pattern.partition(":")
    why = []
    if "/" in module or "\\" in module or module.endswith(".py"):
        module = module.removesuffix(".py").replace("\\", "/").replace("/", ".")
        why.append("the part before ':' is a module's dotted name, not a file")
    if "." in function and not qualnames:
        function = function.rpartition(".")[2]
        why.append("Python 3.10 names no class in a frame")
    if why:
        line += f" ({'; '.join(why)}: write '{module}:{function}')"
    return line


def junit_properties(entry: Entry) -> list[tuple[str, object]]:
    """Counts for JUnit XML ``<property>`` elements, so CI systems can show them."""
    kinds = Counter(v["kind"] for v in entry["violations"])
    properties: list[tuple[str, object]] = [("djasync_findings", sum(kinds.values()))]
    properties += [(f"djasync_{kind.replace('-', '_')}", n) for kind, n in sorted(kinds.items())]
    if "crossings" in entry:
        properties.append(("djasync_crossings_total", entry["crossings"]["total"]))
    if "fanout" in entry:
        properties.append(("djasync_fanout_peak", entry["fanout"]["peak_concurrency"]))
    return properties


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """The JSON report, replaced in one step."""
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")


_CROSSING_ADVICE = {
    "middleware": "make {which} async-capable (async_capable = True with an async"
    " __call__, or @sync_and_async_middleware) so Django needs no adapter around it",
    "hook": "replace the MiddlewareMixin hook with an async-capable middleware: each hook costs"
    " a hop per request",
    "plain-hook": "make the hook a coroutine (async def process_view), or do its work in the"
    " middleware's async __call__: Django runs a sync process_view or"
    " process_template_response in a thread on every request in async mode",
    "view": "make the view async (async def) or serve it under WSGI",
    "render": "return a rendered response instead of a TemplateResponse (or DRF's Response),"
    " which Django renders in a thread after the view",
    "stream": "give the streaming response an async iterator (an async generator): Django"
    " reads a sync one to the end in a thread, and holds all of it in memory",
    "orm": "batch the ORM work in one sync_to_async(...) call instead of one a-method per query",
    "fold": "fold consecutive sync_to_async calls into one function called once",
    "batch": "run the ORM work and the sync calls in one function called through one"
    " sync_to_async(...): a request's sync work needs one hop, not one per query or call",
    "concurrent": "sync_to_async calls that ran concurrently (thread_sensitive=False): folding"
    " them would run them one after the other; make what they wrap async (an async client)"
    " to keep them concurrent without a thread each",
    "async-api": "a Django async method that runs its sync twin in a thread (cache.aget runs"
    " cache.get): batch the calls (aget_many, aset_many) or make fewer of them",
    "signal": "make the receiver async (async def) so Django can await it directly",
    "user": "an async_to_sync call in the project's code: make the code that calls it async,"
    " and await what it wraps",
    "handler": "Django's own per-request hop; not avoidable from the project",
    "test-client": "the test client's own hop; production does not pay it",
}


def _advice(origin: str, detail: str) -> str:
    if origin == "middleware" and "(MiddlewareMixin hook)" in detail:
        return _CROSSING_ADVICE["hook"]
    if origin == "middleware" and "(middleware hook)" in detail:
        return _CROSSING_ADVICE["plain-hook"]
    if origin == "view" and "(a TemplateResponse" in detail:
        return _CROSSING_ADVICE["render"]
    if origin == "handler" and detail.startswith("a streaming response's"):
        return _CROSSING_ADVICE["stream"]
    return _CROSSING_ADVICE[origin]


class _Sorted(NamedTuple):
    """A budget's crossings sorted out by what the project can do about them."""

    avoidable: list[tuple[Crossing, str]]  # each with its advice
    djangos: list[str]  # Django's own middleware: only removable
    installed: list[str]  # installed packages' middleware and responses: not the project's
    packages: list[str]  # installed packages that made the hop themselves
    floors: list[str]  # whose one hop of sync work each batch leaves


def crossings_text(recorder: Recorder, limit: int, where: str) -> str:
    """Why a crossing budget failed: every crossing, then what can be done about them."""
    noun = "crossing" if recorder.total == 1 else "crossings"
    lines = [
        f"pytest-djasync: {recorder.total} sync/async {noun} {where}, more than the"
        f" {limit} allowed",
        "",
    ]
    for number, crossing in enumerate(recorder, 1):
        lines.append(f"{number:3}. {crossing.line()}")
    found = _sorted_out(recorder)
    if not (found.avoidable or found.djangos or found.installed or found.packages):
        return "\n".join([*lines, "", _none_avoidable(recorder, found.floors)])
    lines += _advice_lines(found.avoidable)
    lines += _apart(found.djangos, _DJANGOS_MIDDLEWARE)
    if any(advice == _CROSSING_ADVICE["middleware"] for _, advice in found.avoidable):
        lines += _apart(hooks_in_sync_mode(recorder), _CAREFUL)  # the advice converts one
    lines += _apart(found.installed, _INSTALLED)
    lines += _apart(found.packages, _PACKAGES)
    return "\n".join(lines)


def _none_avoidable(recorder: Recorder, floors: list[str]) -> str:
    """Why none is avoidable: Django's own hops, and each request's one hop of sync work."""
    floor = _floor_text(floors)
    why = floor or "Django makes these itself"
    if any(crossing.origin in ("handler", "test-client") for crossing in recorder):
        why = _PAID + (f" (and {floor})" if floor else "")
    subject = "it is not" if recorder.total == 1 else "none of them"
    return f"{subject} avoidable from the project: {why}; allow at least {recorder.total}"


_PAID = "Django's handler and the test client pay these on every request"
_DJANGOS_MIDDLEWARE = (
    "{count} of them from Django's own middleware ({names}): each of its MiddlewareMixin hooks"
    " costs a hop per request in an async view; remove what the project does not need, or allow"
    " for the rest in the budget"
)
_CAREFUL = (
    "careful: {names} ran in sync mode beside the sync-only middleware, where a MiddlewareMixin"
    " hook costs no hop; once every middleware around them is async-capable they run in async"
    " mode, and each of their hooks costs one per request: count both before converting"
)
_INSTALLED = (
    "{count} of them for installed packages' middleware or responses ({names}): a package's"
    " code, not the project's to rewrite; upgrade to a release that is async-capable, replace"
    " or remove it, or allow for its hops in the budget"
)
_PACKAGES = (
    "{count} of them made by installed packages themselves ({names}): production pays them too;"
    " only using those packages differently (their async API, less work per request) avoids"
    " them, or allow for them in the budget"
)


def crossings_fix(recorder: Recorder) -> str:
    """A failed budget's one-line fix for the summary: the advice that covers most of the
    avoidable crossings, else what the rest are."""
    found = _sorted_out(recorder)
    advice = _advice_counts(found.avoidable)
    if advice:
        best = max(advice, key=lambda text: advice[text])
        more = len(advice) - 1
        return best + (f"; {more} more kind(s) in the test's failure" if more else "")
    if found.djangos:
        names = ", ".join(dict.fromkeys(found.djangos))
        return f"remove the Django middleware the project does not need ({names}) or allow for it"
    if found.installed:
        names = ", ".join(dict.fromkeys(found.installed))
        return (
            f"installed packages' code ({names}): upgrade to an async-capable release, replace"
            " or remove it, or allow for its hops in the budget"
        )
    if found.packages:
        names = ", ".join(dict.fromkeys(found.packages))
        return f"made by installed packages ({names}): allow for them in the budget"
    return f"none avoidable from the project: allow at least {recorder.total}"


def _advice_lines(avoidable: list[tuple[Crossing, str]]) -> list[str]:
    advice = _advice_counts(avoidable)
    if not advice:
        return []
    lines = ["", f"{len(avoidable)} of them avoidable:"]
    return lines + [f"  - {text} ({count}x)" for text, count in advice.items()]


def _advice_counts(avoidable: list[tuple[Crossing, str]]) -> dict[str, int]:
    """How many crossings each advice covers; the middleware advice names the project's
    sync-only middleware (a walk over settings.MIDDLEWARE, so once)."""
    counts = Counter(advice for _, advice in avoidable)
    if _CROSSING_ADVICE["middleware"] not in counts:
        return dict(counts)
    which = ", ".join(sync_only_middleware()) or "the middleware"
    named = _CROSSING_ADVICE["middleware"].format(which=which)
    return {
        named if text == _CROSSING_ADVICE["middleware"] else text: n for text, n in counts.items()
    }


def _apart(names: list[str], text: str) -> list[str]:
    """A paragraph about the crossings listed apart, naming whom they are for."""
    if not names:
        return []
    return ["", text.format(count=len(names), names=", ".join(dict.fromkeys(names)))]


_FLOORS = {"orm": "query", "user": "sync_to_async call"}


def _floor(batch: list[Crossing]) -> str:
    """Whose one hop of sync work is left once ``batch`` is batched: a request's, or the test's
    own (its body, outside any request)."""
    whose = "the test's" if batch[0].request is None else "a request's"
    return f"{whose} one {_FLOORS[batch[0].origin] if len(batch) == 1 else 'batch'}"


def _floor_text(floors: list[str]) -> str:
    """Why a request's one hop of sync work is not called avoidable: nothing to batch it with."""
    if not floors:
        return ""
    return f"{' or '.join(dict.fromkeys(floors))} is one hop however it is made"


def _sorted_out(recorder: Recorder) -> _Sorted:
    """The crossings the project could avoid, with their advice; whom the others are for."""
    found = _Sorted([], [], [], [], [])
    concurrent = {id(crossing) for crossing in ran_concurrently(recorder)}
    batches: dict[str | None, list[Crossing]] = {}
    for crossing in recorder:
        if crossing.djangos_middleware:
            found.djangos.append(crossing.djangos_middleware)
        elif crossing.package:
            found.packages.append(crossing.package)
        elif crossing.installed_for:
            found.installed.append(crossing.installed_for)
        elif crossing.origin == "async-api" and "(by Django's " in crossing.detail:
            continue  # a query Django's own async API makes (request.auser()): not the project's
        elif id(crossing) in concurrent:
            found.avoidable.append((crossing, _CROSSING_ADVICE["concurrent"]))
        elif _batchable(crossing):
            batches.setdefault(crossing.request, []).append(crossing)
        elif crossing.origin not in ("handler", "test-client") or _avoidable_stream(crossing):
            found.avoidable.append((crossing, _advice(crossing.origin, crossing.detail)))
    for batch in batches.values():
        found.avoidable.extend(_batched(batch))
        found.floors.append(_floor(batch))
    return found


def _batchable(crossing: Crossing) -> bool:
    """A request's ORM hops and the project's own sync_to_async calls: all of them can run
    in one function through one sync_to_async."""
    return crossing.origin == "orm" or (
        crossing.origin == "user" and crossing.direction == SYNC_TO_ASYNC
    )


def _avoidable_stream(crossing: Crossing) -> bool:
    return crossing.origin == "handler" and crossing.detail.startswith("a streaming response's")


def _batched(batch: list[Crossing]) -> list[tuple[Crossing, str]]:
    """All but one of a request's batchable hops, with the advice that batches them: one hop
    for all of a request's sync work is the floor, so the one left is not avoidable."""
    origins = {crossing.origin for crossing in batch}
    kind = "batch" if len(origins) > 1 else "orm" if origins == {"orm"} else "fold"
    return [(crossing, _CROSSING_ADVICE[kind]) for crossing in batch[1:]]


def costliest_requests(entries: Iterable[Entry], top: int = 5) -> list[str]:
    """The requests that paid most crossings, one line each."""
    rows = [
        (count, request, entry["nodeid"])
        for entry in entries
        for request, count in entry.get("crossings", {}).get("by_request", {}).items()
    ]
    rows.sort(key=lambda row: (-row[0], row[1], row[2]))
    return [
        f"{count:4} crossings  {request}  in {nodeid}" for count, request, nodeid in rows[:top]
    ]
