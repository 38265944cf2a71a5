"""Where a model's weight pair (``<stem>.json`` + ``<stem>.npz``) lives: one rule for all."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WEIGHTS_DIR", "arrays_digest", "read_weight_pair"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def read_weight_pair(
    path: str | Path | None, stem: str, what: str, format_version: int
) -> tuple[dict[str, Any], Path, Path]:
    """Metadata and file paths of a weight pair given a weights dir, a ``.json``/``.npz``
    path or a stem path (None: the shipped weights). Raises FileNotFoundError for a
    missing pair and ValueError for another format version."""
    if path is None:
        base = WEIGHTS_DIR / stem
    else:
        p = Path(path)
        if p.is_dir():
            base = p / stem
        elif p.suffix in (".json", ".npz"):
            base = p.with_suffix("")
        else:
            base = p
    json_path = base.with_name(base.name + ".json")
    npz_path = base.with_name(base.name + ".npz")
    if not json_path.is_file() or not npz_path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {json_path} / {npz_path}")
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    if meta.get("format") != format_version:
        raise ValueError(f"{json_path}: unsupported format {meta.get('format')!r}")
    return meta, json_path, npz_path


def arrays_digest(arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> str:
    """SHA-256 of named arrays (name, dtype, shape, bytes, in name order) and of JSON
    parameters: what a weight pair computes, independent of how the files were written."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()
