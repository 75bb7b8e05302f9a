"""Wall time of whole pytest runs under each configuration, interleaved across repetitions."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytestrun

# name -> (extra pytest arguments, extra environment)
CONFIGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "absent": (["-p", "no:djasync"], {}),
    "installed": ([], {}),
    "djasync": (["--djasync"], {}),
    "asyncio-debug": (["-p", "no:djasync", "--asyncio-debug"], {}),
    "blockbuster": (["-p", "no:djasync"], {"BENCH_BLOCKBUSTER": "1"}),
    "pyleak": (["-p", "no:djasync"], {"BENCH_PYLEAK": "1"}),
}
BASELINE = "absent"
# pyleak waits on its monitor thread at the end of every test: ~14 ms per test, which makes the
# tiny suite take half a minute per run. Measured with --full only.
SLOW = frozenset({("tiny", "pyleak")})


def rotated(names: list[str], turn: int) -> list[str]:
    """The configurations in a different order each repetition, so none is always first."""
    shift = turn % len(names)
    return names[shift:] + names[:shift]


def measure(
    suites: Mapping[str, Path], configs: list[str], repeat: int, full: bool
) -> dict[str, Any]:
    """Run every (suite, configuration) ``repeat`` times; return the summary per suite."""
    warm_up(suites, configs)
    runs: dict[str, dict[str, list[pytestrun.Run]]] = {
        suite: {c: [] for c in configs if full or (suite, c) not in SLOW} for suite in suites
    }
    for turn in range(repeat):
        for suite, root in suites.items():
            for config in rotated(list(runs[suite]), turn):
                args, env = CONFIGS[config]
                result = pytestrun.run(root, args, env)
                runs[suite][config].append(result)
                _progress(turn, repeat, suite, config, result)
    return {suite: summarize(by_config) for suite, by_config in runs.items()}


def warm_up(suites: Mapping[str, Path], configs: list[str]) -> None:
    """Fill the bytecode cache: every suite once, and every configuration's own imports."""
    first, first_root = next(iter(suites.items()))
    runs = [(name, root, BASELINE) for name, root in suites.items()]
    runs += [(first, first_root, config) for config in configs if config != BASELINE]
    for name, root, config in runs:
        args, env = CONFIGS[config]
        result = pytestrun.run(root, args, env)
        if not result.ok():
            raise SystemExit(f"the {name} suite fails under {config}:\n{result.tail}")


def _progress(turn: int, repeat: int, suite: str, config: str, result: pytestrun.Run) -> None:
    flag = "" if result.ok() else f"  exit {result.code}: {result.summary}"
    print(
        f"  [{turn + 1}/{repeat}] {suite:<9} {config:<14} {result.wall_s:7.2f} s{flag}",
        file=sys.stderr,
    )


def summarize(by_config: Mapping[str, list[pytestrun.Run]]) -> dict[str, Any]:
    base = by_config[BASELINE]
    tests = sum(base[0].counts.get(k, 0) for k in ("passed", "failed", "error", "skipped"))
    summary = {}
    for config, results in by_config.items():
        walls = _stats([r.wall_s for r in results], [r.wall_s for r in base])
        cpus = _stats([r.cpu_s for r in results], [r.cpu_s for r in base])
        extra_ms = (walls["median_s"] - statistics.median(r.wall_s for r in base)) * 1000
        summary[config] = {
            **walls,
            "cpu": cpus,
            "extra_ms_per_test": extra_ms / tests if tests else None,
            "all_ok": all(r.ok() for r in results),
            "runs": [r.brief() for r in results],
        }
    return summary


def _stats(values: list[float], base: list[float]) -> dict[str, float]:
    """Median, range and ratios to the baseline; paired = the same repetition's baseline run."""
    paired = [v / b for v, b in zip(values, base, strict=True)]
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "ratio": statistics.median(values) / statistics.median(base),
        "paired_ratio_median": statistics.median(paired),
        "paired_ratio_min": min(paired),
        "paired_ratio_max": max(paired),
    }
