"""Where benchmark results go: one JSON file and one PNG per benchmark, with how they were made."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["finite", "mark_start", "pyplot", "run_info", "save_result", "write_json"]

# Packages whose versions change the numbers (absent ones are left out).
PACKAGES = (
    "ahstream",
    "numpy",
    "onnxruntime",
    "torch",
    "faster-whisper",
    "ctranslate2",
    "mediapipe",
    "aiortc",
    "av",
)
# Environment variables the README's benchmark commands set or that change threading.
ENV_VARS = ("MALLOC_ARENA_MAX", "OMP_NUM_THREADS")
REPO = Path(__file__).resolve().parent.parent
_started: dict[str, Any] = {}


def mark_start() -> None:
    """Note the time and the machine's 1-minute load average before a benchmark runs (the
    load after it is mostly its own): `run_info` reports them."""
    _started.update(
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        load_avg_1m_before=round(os.getloadavg()[0], 2),
    )


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()


def _commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes outside
    ``benchmarks/results/``, whose files a series of runs rewrites, new files not yet added
    included); None when this code is not a git checkout of ahstream (an installed copy has
    no commit of its own)."""
    if not (REPO / "pyproject.toml").is_file() or not (REPO / "stream").is_dir():
        return None
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git(
            "status", "--porcelain", "--untracked-files=all", "--", ".", ":!benchmarks/results"
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def run_info(command: str | None = None) -> dict[str, Any]:
    """When, from which code and how a result was made: UTC date, commit, Python and package
    versions, the command line (default: this process's), the set environment variables of
    ``ENV_VARS``, and the start time and the machine's 1-minute load average before the
    benchmark ran (`mark_start`; other work slows a benchmark down), or None when unmarked."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if command is None:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(),
        "python": platform.python_version(),
        "packages": versions,
        "command": command,
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "started": _started.get("started"),
        "load_avg_1m_before": _started.get("load_avg_1m_before"),
    }


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by None: strict JSON
    has no NaN/Infinity, and a value that does not exist is ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as strict JSON (NaN/inf as null), indented, to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def save_result(
    result: dict[str, Any],
    out_dir: str | Path | None,
    name: str,
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """Write ``out_dir/<name>.json`` and the plot ``out_dir/<name>.png`` (nothing if None).

    The JSON gets a ``run`` block (`run_info`) unless ``result`` has one."""
    if out_dir is None:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.setdefault("run", run_info())
    write_json(result, out / f"{name}.json")
    plot(result, out / f"{name}.png")
