"""Benchmark of pytest-djasync: overhead, detection matrix, false-positive soak, profile.

    python bench/run.py [--quick | --full] [--repeat N] [--skip PART ...] [--out DIR]

Suites are generated into bench/.work/, results go to bench/results/latest.{json,md}.
See bench/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import detection
import instructions
import overhead
import pairs
import profiling
import report
import soak
import suites

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
PARTS = ("overhead", "pairs", "instructions", "detection", "soak", "profile")
PAIR_CONFIGS = ("absent", "installed", "djasync")  # absent: the control pair
SUITES = {"requests": suites.requests_suite, "tiny": suites.tiny_suite}
PACKAGES = (
    "pytest",
    "pytest-asyncio",
    "pytest-django",
    "Django",
    "asgiref",
    "httpx",
    "blockbuster",
    "pyleak",
)
NEEDED = ("pytest-djasync", "pytest-asyncio", "pytest-django", "Django", "asgiref", "httpx")
TARGET_S = 0.3  # seconds of CPU each calibrated case (cpu_loop, pbkdf2, sqlite_cte) should take


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 repeats, 1 detection round, 3 soak runs"
    )
    parser.add_argument(
        "--full", action="store_true", help="also pyleak on the tiny suite (~2 min more)"
    )
    parser.add_argument("--repeat", type=int, help="repetitions of each overhead run (5)")
    parser.add_argument(
        "--pairs", type=int, help="concurrent pairs of each configuration against absent (15)"
    )
    parser.add_argument("--rounds", type=int, help="runs of the detection suite per detector (2)")
    parser.add_argument("--soak-runs", type=int, help="runs of the clean suite in the soak (10)")
    parser.add_argument("--hogs", type=int, default=2, help="CPU-hog processes in the soak (2)")
    parser.add_argument("--block-ms", type=float, default=50, help="soak threshold (50)")
    parser.add_argument(
        "--configs", nargs="+", default=list(overhead.CONFIGS), choices=list(overhead.CONFIGS)
    )
    parser.add_argument(
        "--suites",
        nargs="+",
        default=list(SUITES),
        choices=list(SUITES),
        help="overhead suites to time (overhead, pairs, instructions)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="parts not to run")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.pairs = args.pairs or (3 if args.quick else 15)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.soak_runs = args.soak_runs or (3 if args.quick else 10)
    if overhead.BASELINE not in args.configs:
        args.configs.insert(0, overhead.BASELINE)
    return args


def calibrate() -> dict[str, int]:
    """Work sizes that keep a thread busy for ``TARGET_S`` of CPU time on this machine.

    Thread CPU time, not wall time: on a busy machine the wall clock would size the work by
    how long the thread waited for a core, which the watchdog rightly does not count.
    """
    return {
        "cpu_loop_iterations": _scaled(_python_loop, 1_000_000),
        "pbkdf2_iterations": _scaled(_pbkdf2, 100_000),
        "cte_rows": _scaled(_cte, 200_000),
    }


def _python_loop(n: int) -> None:  # the body of the cpu_loop case in suites.BLOCKING
    total = 0
    for i in range(n):
        total += i


def _pbkdf2(n: int) -> None:
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", n)


def _cte(n: int) -> None:
    sqlite3.connect(":memory:").execute(suites.CTE_QUERY, (n,)).fetchone()


def _scaled(work: Callable[[int], None], probe: int) -> int:
    took = []
    for _ in range(3):
        start = time.thread_time()
        work(probe)
        took.append(time.thread_time() - start)
    return int(probe * TARGET_S / min(took))


def machine(args: argparse.Namespace) -> dict[str, Any]:
    packages = {}
    for name in (*PACKAGES, "pytest-djasync"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    mode = "quick" if args.quick else "full" if args.full else "default"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "tree": _tree(),
        "load_start": _load(),
        "mode": f"{mode}: {args.repeat} repeats, {args.rounds} detection rounds,"
        f" {args.pairs} concurrent pairs, {args.soak_runs} soak runs with {args.hogs} hogs"
        + (f"; skipped: {', '.join(args.skip)}" if args.skip else "")
        + (f"; suites: {', '.join(args.suites)}" if args.suites != list(SUITES) else "")
        + (f"; configs: {', '.join(args.configs)}"),
    }


def _tree() -> str:
    def git(*words: str) -> str:
        done = subprocess.run(
            ["git", *words], cwd=HERE, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    dirty = (
        " + uncommitted changes" if git("status", "--porcelain", "--", "pytest_djasync") else ""
    )
    return f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def run_parts(args: argparse.Namespace, calibration: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {"calibration": calibration}
    if "overhead" not in args.skip:
        print("overhead:", file=sys.stderr)
        roots = _overhead_suites(args.suites, calibration)
        results["overhead"] = overhead.measure(roots, args.configs, args.repeat, args.full)
    if "pairs" not in args.skip and pairs.available():
        print("concurrent pairs:", file=sys.stderr)
        roots = _overhead_suites(args.suites, calibration)
        configs = [c for c in PAIR_CONFIGS if c in args.configs]
        overhead.warm_up(roots, configs)
        results["pairs"] = pairs.measure(roots, configs, args.pairs)
    if "instructions" not in args.skip and instructions.available():
        print("instructions (valgrind):", file=sys.stderr)
        roots = _overhead_suites(args.suites, calibration)
        results["instructions"] = instructions.measure(roots)
    if "detection" not in args.skip:
        print("detection matrix:", file=sys.stderr)
        suites.detect_suite(WORK / "detect", calibration)
        results["detection"] = detection.matrix(WORK / "detect", args.rounds)
    if "soak" not in args.skip:
        print("false-positive soak:", file=sys.stderr)
        suites.clean_suite(WORK / "clean", calibration)
        results["soak"] = soak.soak(WORK / "clean", args.soak_runs, args.hogs, args.block_ms)
    if "profile" not in args.skip:
        print("profile:", file=sys.stderr)
        results["profile"] = {}
        for name, write in (("requests", suites.requests_suite), ("tiny", suites.tiny_suite)):
            write(WORK / f"profile-{name}", calibration)
            results["profile"][name] = profiling.profile(WORK / f"profile-{name}", ["--djasync"])
    return results


def _overhead_suites(names: list[str], calibration: dict[str, int]) -> dict[str, Path]:
    """The chosen overhead suites, written afresh: name -> root."""
    roots = {name: WORK / name for name in names}
    for name, root in roots.items():
        SUITES[name](root, calibration)
    return roots


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    meta = machine(args)
    missing = [name for name in NEEDED if meta["packages"][name] == "not installed"]
    if missing:  # every suite would collect nothing, and a soak of nothing finds nothing
        print(
            f"bench: {', '.join(missing)} not installed for {sys.executable}; run it with the"
            " project's environment (pip install -e '.[dev]')",
            file=sys.stderr,
        )
        return 2
    results = {"meta": meta, **run_parts(args, calibrate())}
    meta["took_s"] = time.monotonic() - started
    meta["load_end"] = _load()
    report.write(results, args.out)
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
