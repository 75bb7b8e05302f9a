"""The code in the docs runs: every Python block compiles, and every cookbook recipe is proved.

``docs/cookbook.md`` follows a small convention that this module reads:

* a ``## `` section with a block titled ``<file> (broken)`` is a recipe; its variants are the
  labels in parentheses: ``broken`` ones must fail under ``--djasync``, ``fixed`` ones
  (``fixed``, ``fixed, in a thread``, ...) must pass without a finding; other labels are
  only compiled;
* a block titled with a bare file name belongs to every variant of its recipe, and one before
  the first recipe to every recipe (a recipe's own block of the same name wins);
* ``views.py``, ``models.py``, ``urls.py``, ``middleware.py`` go into the app package,
  ``test_*.py`` and ``conftest.py`` next to it, ``settings.py`` is appended to the settings
  and ``pytest.ini`` to the ini file. The app is ``mysite`` on the page and ``tproj`` in the
  throw-away project, so every ``mysite`` is renamed;
* the recipe's ``text`` block is the symptom: the kinds of its findings are read from it, and
  its headline, finding and ``fix:`` lines must appear in the real output (milliseconds
  excepted).

Python blocks of any page marked as fragments (`` ```{ .python .fragment } ``) are not
compiled. Every assertion is structural: kinds, outcomes and the text of findings, never a
duration.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DjangoProject

DOCS = Path(__file__).resolve().parent.parent / "docs"
COOKBOOK = DOCS / "cookbook.md"
MIN_RECIPES = 11  # one per scenario of the cookbook; a recipe deleted by accident shows here

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_HEADING = re.compile(r"^(?P<level>#{2,3})\s+(?P<text>.+?)\s*$")
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_TITLE = re.compile(r"^(?P<file>[\w.]+)(?: \((?P<variant>[^)]+)\))?$")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    classes: tuple[str, ...]
    title: str
    section: str  # the enclosing ## heading
    subsection: str  # the enclosing ### heading, if any
    source: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _info(info: str) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """The language, classes and attributes of a fence's info string, in either form:
    ``python title="x"`` or ``{ .python .fragment title="x" }``."""
    info = info.strip()
    attributes = dict(_ATTRIBUTE.findall(info))
    if info.startswith("{"):
        classes = tuple(re.findall(r"(?<![\w\"])\.([\w-]+)", _ATTRIBUTE.sub("", info)))
        return (classes[0] if classes else ""), classes[1:], attributes
    words = info.split()
    return (words[0] if words else ""), (), attributes


def read_blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    section = subsection = ""
    lines = path.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        opening = _FENCE.match(line)
        if opening is None:
            heading = _HEADING.match(line)
            if heading and heading["level"] == "##":
                section, subsection = heading["text"], ""
            elif heading:
                subsection = heading["text"]
            number += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        end = number + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else "")
            end += 1
        lang, classes, attributes = _info(opening["info"])
        found.append(
            Block(
                page=path.name,
                line=number + 1,
                lang=lang,
                classes=classes,
                title=attributes.get("title", ""),
                section=section,
                subsection=subsection,
                source="\n".join(body) + "\n",
            )
        )
        number = end + 1
    return found


# -- every Python block compiles ----------------------------------------------------------------


def python_blocks() -> list[Block]:
    return [
        block
        for page in sorted(DOCS.glob("*.md"))
        for block in read_blocks(page)
        if block.lang in ("python", "py") and "fragment" not in block.classes
    ]


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.where)
def test_python_block_compiles(block: Block) -> None:
    compile(block.source, block.where, "exec")


def test_fragments_are_marked_as_such() -> None:
    # The fragment class must sit on a Python block, or the block escapes both checks.
    for page in sorted(DOCS.glob("*.md")):
        for block in read_blocks(page):
            if "fragment" in block.classes:
                assert block.lang in ("python", "py"), block.where


# -- the cookbook --------------------------------------------------------------------------------


@dataclasses.dataclass
class Recipe:
    title: str
    symptom: str
    files: dict[str, str]  # every variant's
    variants: dict[str, dict[str, str]]  # label -> that variant's own files

    def files_of(self, variant: str) -> dict[str, str]:
        return {**self.files, **self.variants[variant]}


def _file_blocks(blocks: list[Block]) -> list[tuple[str, str | None, Block]]:
    named = []
    for block in blocks:
        title = _TITLE.match(block.title)
        if title and block.lang in ("python", "ini"):
            named.append((title["file"], title["variant"], block))
    return named


def read_recipes() -> tuple[dict[str, str], list[Recipe]]:
    """The files shared by every recipe, and the recipes in page order."""
    blocks = read_blocks(COOKBOOK)
    sections: dict[str, list[Block]] = {}
    for block in blocks:
        sections.setdefault(block.section, []).append(block)
    shared: dict[str, str] = {}
    recipes: list[Recipe] = []
    for title, section in sections.items():
        named = _file_blocks(section)
        if not any(variant == "broken" for _, variant, _ in named):
            if not recipes:
                shared.update({name: b.source for name, variant, b in named if variant is None})
            continue
        symptoms = [b.source for b in section if b.lang == "text"]
        assert len(symptoms) == 1, f"recipe {title!r}: expected one text block, the symptom"
        recipe = Recipe(title, symptoms[0], {}, {})
        for name, variant, block in named:
            if variant is None:
                recipe.files[name] = block.source
            else:
                recipe.variants.setdefault(variant, {})[name] = block.source
        recipes.append(recipe)
    return shared, recipes


SHARED, RECIPES = read_recipes()


def recipe_cases() -> list[Any]:
    return [
        pytest.param(recipe, variant, id=f"{_slug(recipe.title)}-{_slug(variant)}")
        for recipe in RECIPES
        for variant in recipe.variants
        if variant.startswith(("broken", "fixed"))
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def test_the_cookbook_has_every_recipe() -> None:
    assert len(RECIPES) >= MIN_RECIPES, [recipe.title for recipe in RECIPES]
    for recipe in RECIPES:
        labels = list(recipe.variants)
        assert any(label.startswith("fixed") for label in labels), recipe.title
        assert symptom_kinds(recipe.symptom), f"{recipe.title}: no finding in the symptom"
    text = COOKBOOK.read_text(encoding="utf-8")
    assert text.count("\n**Why:**") >= len(RECIPES)


def _app(source: str) -> str:
    return re.sub(r"\bmysite\b", "tproj", source)


def build(project: DjangoProject, files: dict[str, str]) -> None:
    for name, source in {**SHARED, **files}.items():
        source = _app(source)
        if name == "settings.py":
            project.settings(source)
        elif name == "pytest.ini":
            project.ini(source.replace("[pytest]\n", "", 1))
        elif name.startswith("test_") or name == "conftest.py":
            project.module(name, source)
        else:
            project.module(f"tproj/{name}", source)


_KINDS = (
    ("blocking call ", "blocking-call"),
    ("event loop blocked ", "stall"),
    ("raised SynchronousOnlyOperation", "sync-only"),
    ("sync/async crossings", "crossings"),
    ("outbound requests in flight together", "fanout"),
    ("the fan-out took ", "fanout"),
)
# Lines of the symptom that must appear in the output. Crossing lines of Django's own handler
# differ between Django versions, so they are not among them.
_CHECKED = re.compile(r"^(pytest-djasync: |\d+\. (?!handler:|test-client:)|fix: |likely cause: )")


def symptom_kinds(symptom: str) -> set[str]:
    lines = [line.strip() for line in symptom.splitlines()]
    return {
        kind
        for line in lines
        if re.match(r"^(pytest-djasync: |\d+\. )", line)
        for text, kind in _KINDS
        if text in line
    }


def _pattern(line: str) -> re.Pattern[str]:
    if sys.version_info < (3, 11):  # no co_qualname: frames are named without their class
        line = re.sub(r" in (?:\w+\.)+(\w+)$", r" in \1", line)
        line = line.replace(" or an asyncio.TaskGroup", "")  # nor asyncio.TaskGroup
    escaped = re.escape(line)
    return re.compile(re.sub(r"\d+(\\\.\d+)?\\ ms\b", r"\\d+(\\.\\d+)? ms", escaped))


def assert_symptom_printed(symptom: str, output: str) -> None:
    """Each checked line of the symptom appears in the output, in order."""
    lines = iter(output.splitlines())
    for wanted in _app(symptom).splitlines():
        wanted = wanted.strip()
        if not _CHECKED.match(wanted):
            continue
        pattern = _pattern(wanted)
        assert any(pattern.search(line) for line in lines), (
            f"not in the output (in this order): {wanted!r}\n--- output ---\n{output}"
        )


def _tests(report: dict[str, Any]) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = report["tests"]
    assert tests, "no test was watched"
    return tests


@pytest.mark.parametrize(("recipe", "variant"), recipe_cases())
def test_recipe(django_project: DjangoProject, recipe: Recipe, variant: str) -> None:
    build(django_project, recipe.files_of(variant))
    result, report = django_project.report()
    output = result.stdout.str()
    found = [v for test in _tests(report) for v in test["violations"]]
    if variant.startswith("broken"):
        assert result.ret == pytest.ExitCode.TESTS_FAILED, output
        kinds = {v["kind"] for v in found if not v["allowed"]}
        assert symptom_kinds(recipe.symptom) <= kinds, (kinds, output)
        assert_symptom_printed(recipe.symptom, output)
    else:
        assert result.ret == pytest.ExitCode.OK, output
        assert not found, json.dumps(found, indent=2)


# What the page says about the broken views in a run without --djasync: their tests pass, but
# for the database recipes (a 500) and the crossing and fan-out ones (their markers are checked
# in every run).
_FAIL_UNWATCHED = {"sync-only", "crossings", "fanout"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda recipe: _slug(recipe.title))
def test_broken_recipe_in_an_ordinary_run(django_project: DjangoProject, recipe: Recipe) -> None:
    build(django_project, recipe.files_of("broken"))
    result = django_project.run()
    if symptom_kinds(recipe.symptom) & _FAIL_UNWATCHED:
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    else:
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()


# -- "When the plugin is wrong": each way of excusing a finding works as described ---------------


def _wrong(subsection: str, lang: str) -> Block:
    [block] = [
        b
        for b in read_blocks(COOKBOOK)
        if b.section == "When the plugin is wrong"
        and b.subsection.startswith(subsection)
        and b.lang == lang
    ]
    return block


def _sleeping_project(project: DjangoProject) -> None:
    """The first recipe's broken view, driven by the default test."""
    [sleep] = [r for r in RECIPES if "time.sleep" in r.title]
    build(project, sleep.files_of("broken"))


def _allowed_by(report: dict[str, Any]) -> set[Any]:
    return {v["allowed_by"] for test in _tests(report) for v in test["violations"]}


def test_the_allow_blocking_marker_excuses_the_test(django_project: DjangoProject) -> None:
    _sleeping_project(django_project)
    build(django_project, {"test_views.py": _wrong("The blocking is deliberate", "python").source})
    result, report = django_project.report()
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert _allowed_by(report) == {"djasync_allow_blocking"}


def test_an_allow_pattern_excuses_the_function(django_project: DjangoProject) -> None:
    _sleeping_project(django_project)
    build(
        django_project, {"pytest.ini": _wrong("The blocking comes from one place", "ini").source}
    )
    result, report = django_project.report()
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert _allowed_by(report) == {"tproj.views:view"}
    result.stdout.fnmatch_lines(["djasync_allow pattern 'tproj.legacy:*' matched no finding"])


def _commands(block: Block) -> list[list[str]]:
    """The arguments of each ``$ pytest ...`` line of a console block."""
    return [
        shlex.split(line.removeprefix("$ pytest").split("#")[0])
        for line in block.source.splitlines()
        if line.startswith("$ pytest ")
    ]


def _run(project: DjangoProject, args: list[str]) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = project.run(*args, "--djasync-report=report.json")
    return result, json.loads((project.path / "report.json").read_text())


def test_the_baseline_commands(django_project: DjangoProject) -> None:
    _sleeping_project(django_project)
    write, check = _commands(_wrong("Known problems in a large suite", "console"))
    result, _ = _run(django_project, write)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the writing run still fails
    assert "blocking-call" in (django_project.path / "djasync-baseline.txt").read_text()
    result, report = _run(django_project, check)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert _allowed_by(report) == {"baseline"}


def test_warn_mode_reports_and_fails_nothing(django_project: DjangoProject) -> None:
    _sleeping_project(django_project)
    [warn] = _commands(_wrong("A first look", "console"))
    result, report = _run(django_project, warn)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert _allowed_by(report) == {None}  # reported, not excused: warn mode fails nothing
    result.stdout.fnmatch_lines(["tproj/views.py:7 in view: blocking-call time.sleep"])
    # the failure text is kept in the passing test's report, which -rP shows
    result = django_project.run(*warn, "-rP")
    result.stdout.fnmatch_lines(
        ["*Captured djasync call*", "1. blocking call time.sleep() for * ms on the event loop*"]
    )


# -- the comparison quotes the recorded benchmark, not numbers of its own -----------------------

BENCH = DOCS.parent / "bench"


def test_benchmark_figures_are_the_recorded_ones() -> None:
    results = BENCH / "results" / "latest.md"
    if not results.exists():
        pytest.skip("no recorded benchmark in this checkout")
    recorded = results.read_text(encoding="utf-8") + (BENCH / "README.md").read_text("utf-8")
    page = (DOCS / "comparison.md").read_text(encoding="utf-8")
    section = page.split("\n## Benchmark figures\n", 1)[1]
    [date] = re.findall(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", section)
    assert date in recorded, f"comparison.md quotes the run of {date}; rerun? update the page"
    quoted = set(re.findall(r"(?<![\w.])\d+\.\d+(?!\w|\.\d)", section))  # not 3.11.7
    missing = sorted(
        n for n in quoted if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", recorded)
    )
    assert not missing, f"figures in comparison.md that bench/ does not record: {missing}"
