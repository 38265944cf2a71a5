"""Where benchmark results go: one JSON file and one PNG per benchmark."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_result"]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_result(
    result: dict[str, Any],
    out_dir: str | Path | None,
    name: str,
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """Write ``out_dir/<name>.json`` and the plot ``out_dir/<name>.png`` (nothing if None)."""
    if out_dir is None:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{name}.png")
