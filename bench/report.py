"""The results files: everything as JSON, and the Markdown tables a person reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import detection

SUITE_TITLES = {
    "requests": "requests suite: 100 async tests, 400 requests through `asgi_client`",
    "tiny": "tiny suite: 2000 async tests doing `await asyncio.sleep(0)`",
}
# (suite, configuration, the most its median may be, as a ratio to `absent`)
TARGETS = (
    ("requests", "djasync", 1.05),
    ("tiny", "djasync", 1.10),
    ("requests", "installed", 1.02),
    ("tiny", "installed", 1.02),
)


def write(results: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (directory / "latest.md").write_text(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    parts = [_header(results["meta"])]
    if "overhead" in results:
        parts.append(_overhead(results["overhead"]))
    if "pairs" in results:
        parts.append(_pairs(results["pairs"]))
    if "instructions" in results:
        parts.append(_instructions(results["instructions"]))
    parts.append(_targets(results))
    if "detection" in results:
        parts.append(_detection(results["detection"]))
    if "soak" in results:
        parts.append(_soak(results["soak"]))
    for suite, profile in results.get("profile", {}).items():
        parts.append(_profile(suite, profile))
    return "\n\n".join(parts) + "\n"


def _header(meta: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in meta["packages"].items())
    return "\n".join(
        [
            "# pytest-djasync benchmark results",
            "",
            f"- date: {meta['date']} (took {meta['took_s'] / 60:.1f} min)",
            f"- machine: {meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}",
            f"- load average at start / end: {meta['load_start']} / {meta['load_end']}",
            f"- packages: {versions}",
            f"- pytest-djasync tree: {meta['tree']}",
            f"- mode: {meta['mode']}",
        ]
    )


def _overhead(overhead: dict[str, Any]) -> str:
    parts = [
        "## Overhead",
        "",
        "Wall time of the whole `pytest` process (start-up and collection included), in"
        " seconds. *ratio* = median / median of `absent`; *paired* = median [range] of each"
        " run divided by the `absent` run of the same repetition (they ran minutes apart at"
        " most, so paired ratios cancel slow drifts of the machine's load). *CPU* = user +"
        " system time of the pytest process, less disturbed by other work on the machine than"
        " wall time. *+ms/test* = (median - `absent` median) / number of tests.",
    ]
    for suite, configs in overhead.items():
        parts += ["", f"### {SUITE_TITLES.get(suite, suite)}", "", *_overhead_table(configs)]
    return "\n".join(parts)


def _overhead_table(configs: dict[str, Any]) -> list[str]:
    lines = [
        "| config | wall median s | wall min-max s | ratio | paired ratio [min-max]"
        " | CPU median s | CPU ratio | +ms/test | runs | all passed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, c in configs.items():
        cpu = c["cpu"]
        extra = c["extra_ms_per_test"]
        lines.append(
            f"| {name} | {c['median_s']:.2f} | {c['min_s']:.2f}-{c['max_s']:.2f}"
            f" | {c['ratio']:.3f} | {_paired(c)} | {cpu['median_s']:.2f} | {cpu['ratio']:.3f}"
            f" | {'' if extra is None else f'{extra:+.2f}'} | {len(c['runs'])}"
            f" | {'yes' if c['all_ok'] else 'NO'} |"
        )
    return lines


def _pairs(found: dict[str, Any]) -> str:
    lines = [
        "## Concurrent pairs",
        "",
        "Each pair starts `absent` and the configuration at the same moment, one per core, so"
        " both live through the same drift of the machine's speed; the `absent` row is the"
        " control pair (`absent` against itself): its distance from 1.000 and its spread are"
        " the method's own. *wall ratio* = median of the pairs' ratios with the 95% confidence"
        " interval of that median [in brackets]; *CPU ratio* = the same for each process's own"
        " CPU time.",
        "",
        "| suite | config | wall ratio [95% CI] | min-max | stdev | CPU ratio [95% CI] | pairs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for suite, configs in found.items():
        for name, row in configs.items():
            wall, cpu = row["wall"], row["cpu"]
            label = f"{name} (control)" if name == "absent" else name
            lines.append(
                f"| {suite} | {label} | {_interval(wall)} | {wall['min']:.3f}-{wall['max']:.3f}"
                f" | {wall['stdev']:.3f} | {_interval(cpu)} | {len(wall['ratios'])} |"
            )
    return "\n".join(lines)


def _interval(stats: dict[str, Any]) -> str:
    low, high = stats["ci95"]
    return f"{stats['median']:.3f} [{low:.3f}-{high:.3f}]"


def _instructions(counted: dict[str, Any]) -> str:
    lines = [
        "## Instructions (valgrind)",
        "",
        "CPU instructions of one whole `pytest` run per configuration, counted by callgrind:"
        " unlike times, they do not move with the machine's load. Under valgrind the watchdog"
        " wakes about 40 times more often per test than in a normal run (it polls by wall"
        " time), so djasync's figure is an upper bound.",
        "",
        "| suite | config | instructions | ratio | pytest said |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for suite, configs in counted.items():
        for name, row in configs.items():
            count = row["instructions"]
            lines.append(
                f"| {suite} | {name} | {count:,} | {row['ratio']:.4f} | {row['summary']} |"
                if count
                else f"| {suite} | {name} | failed (exit {row['code']}) | | {row['summary']} |"
            )
    return "\n".join(lines)


def _paired(stats: dict[str, float]) -> str:
    return (
        f"{stats['paired_ratio_median']:.3f}"
        f" [{stats['paired_ratio_min']:.3f}-{stats['paired_ratio_max']:.3f}]"
    )


def _targets(results: dict[str, Any]) -> str:
    lines = [
        "## Targets",
        "",
        "Judged on the concurrent pairs when they ran: *yes* when the whole 95% confidence"
        " interval of the median wall-time ratio is within the target, *on the median only*"
        " when the median is but the interval reaches past it. Otherwise, and beside it, on the"
        " ratio of the one-after-another runs' wall-time medians. `installed`"
        " counts as about `absent` within 2%. The instruction ratio, when valgrind ran, is"
        " the steady figure beside them.",
        "",
        "| target | concurrent pairs | one after another | instructions | met |",
        "| --- | --- | --- | ---: | --- |",
    ]
    overhead = results.get("overhead", {})
    found = results.get("pairs", {})
    counted = results.get("instructions", {})
    for suite, config, limit in TARGETS:
        c = overhead.get(suite, {}).get(config)
        pair = found.get(suite, {}).get(config)
        if c is None and pair is None:
            continue
        if pair is not None:
            met = _verdict(pair["wall"]["median"], pair["wall"]["ci95"][1], limit)
        else:
            met = _yes(c is not None and c["ratio"] <= limit)
        together = "not run" if pair is None else f"wall {_interval(pair['wall'])}"
        apart = (
            "not run"
            if c is None
            else f"wall {c['ratio']:.3f} (paired {_paired(c)}), CPU {c['cpu']['ratio']:.3f}"
        )
        ratio = counted.get(suite, {}).get(config, {}).get("ratio")
        steady = "not run" if ratio is None else f"{ratio:.3f}"
        lines.append(
            f"| `{config}` ≤ {limit:.2f}x `absent`, {suite} | {together} | {apart} | {steady}"
            f" | {met} |"
        )
    soak = results.get("soak")
    if soak is not None:
        broken = soak.get("broken_runs", 0)
        bad = soak["findings"] + soak["failed_tests"] + broken
        measured = f"{soak['findings']} findings, {soak['failed_tests']} failed tests"
        if broken:
            measured += f", **{broken} runs did not run the suite**"
        lines.append(f"| 0 false positives in the soak | {measured} | | | {_yes(bad == 0)} |")
    return "\n".join(lines)


def _verdict(median: float, upper: float, limit: float) -> str:
    if upper <= limit:
        return "yes"
    return "on the median only" if median <= limit else "**no**"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def _detection(matrix: dict[str, Any]) -> str:
    detectors = list(detection.DETECTORS)
    lines = [
        "## Detection matrix",
        "",
        f"Each cell: caught in how many of {matrix['rounds']} run(s), and what the detector"
        " reported. `test` = the blocking code runs in the async test, `view` = in an async"
        " view served through `asgi_client`. `djasync-loaded` = `djasync` while"
        f" {detection.LOADED_HOGS} CPU-hog processes keep every core busy. `clean` is the"
        " control: any catch there is a false positive.",
        "",
        "| case / where | " + " | ".join(detectors) + " |",
        "| --- |" + " --- |" * len(detectors),
    ]
    for row, cells in matrix["rows"].items():
        lines.append(f"| {row} | " + " | ".join(_cell(cells.get(d)) for d in detectors) + " |")
    return "\n".join(lines)


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "?"
    caught, runs = cell["caught"], cell["runs"]
    word = "yes" if caught == runs else "no" if caught == 0 else f"{caught}/{runs}"
    if caught == 0 and any(o != "passed" for o in cell["outcomes"]):
        word += " (test failed)"
    details = "; ".join(cell["details"][:2])
    return f"{word} ({details})" if details else word


def _soak(soak: dict[str, Any]) -> str:
    walls = ", ".join(f"{r['wall_s']:.1f}" for r in soak["per_run"])
    lines = [
        "## False-positive soak",
        "",
        f"The clean suite ({soak['tests_per_run']} tests: the requests suite plus sleeps,"
        " sync_to_async / to_thread work and logging) run"
        f" {soak['runs']} times under `--djasync --djasync-block-ms={soak['block_ms']:g}`"
        f" with {soak['hogs']} CPU-hog processes busy-looping on this"
        " machine.",
        "",
        f"- findings (false positives): **{soak['findings']}**",
        f"- failed tests: {soak['failed_tests']}",
        f"- notes (warnings, e.g. GIL waits excused): {soak['notes']}",
        f"- wall time per run, s: {walls}",
    ]
    shown = [m for r in soak["per_run"] for m in r["finding_messages"] + r["note_messages"]]
    lines += [f"    - {m}" for m in shown[:10]]
    broken = [r for r in soak["per_run"] if r.get("broken")]
    if broken:
        lines += [f"- runs that did not run the suite: **{len(broken)}**; the first ended:", ""]
        lines += [f"    {line}" for line in broken[0]["tail"].splitlines()[-10:]]
    return "\n".join(lines)


def _profile(suite: str, profile: dict[str, Any]) -> str:
    lines = [
        f"## Profile of a `--djasync` run ({suite} suite, cProfile, main thread)",
        "",
        f"Total {profile['total_s']:.2f} s profiled; {profile['plugin_own_s']:.3f} s inside"
        " plugin functions (tottime). Top plugin functions by cumulative time:",
        "",
        "| function | calls | tottime s | cumtime s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in profile["top"]:
        lines.append(
            f"| `{row['function']}` | {row['calls']} | {row['tottime_s']:.3f}"
            f" | {row['cumtime_s']:.3f} |"
        )
    return "\n".join(lines)
