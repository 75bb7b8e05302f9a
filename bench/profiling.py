"""Where a ``--djasync`` run spends its time: cProfile of the tiny suite, plugin functions only.

cProfile sees the main thread only, so the watchdog thread shows up as no function here; what
it costs appears as the main thread waiting for the GIL (time in no function of the plugin).
"""

from __future__ import annotations

import pstats
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytestrun

PLUGIN = "pytest_djasync"
TOP = 15


def profile(root: Path, args: list[str]) -> dict[str, Any]:
    """Profile one pytest run in ``root``; return the costliest plugin functions."""
    pytestrun.run(root, args, {})  # compile and cache the suite's bytecode first
    out = root.resolve() / "run.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(out), *pytestrun.PYTEST[1:], *args]
    subprocess.run(
        command,
        cwd=root,
        env=pytestrun.environment({}),
        capture_output=True,
        timeout=pytestrun.TIMEOUT_S,
        check=False,
    )
    stats = pstats.Stats(str(out))
    total = stats.total_tt
    rows = [_row(key, value) for key, value in stats.stats.items()]
    plugin = [row for row in rows if PLUGIN in row["file"]]
    own = sum(row["tottime_s"] for row in plugin)
    plugin.sort(key=lambda row: row["cumtime_s"], reverse=True)
    return {"args": args, "total_s": total, "plugin_own_s": own, "top": plugin[:TOP]}


def _row(key: tuple[str, int, str], value: tuple[Any, ...]) -> dict[str, Any]:
    filename, line, function = key
    _, calls, tottime, cumtime, _ = value
    short = filename.split(f"{PLUGIN}/")[-1] if PLUGIN in filename else filename
    return {
        "file": filename,
        "function": f"{short}:{line}({function})",
        "calls": calls,
        "tottime_s": round(tottime, 4),
        "cumtime_s": round(cumtime, 4),
    }
