"""An ended session's freed heap goes back to the system (`stream.serving.trim_heap`)."""

from __future__ import annotations

import os
import sys

import pytest

from stream.serving import trim_heap


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim is Linux")
def test_trim_heap_returns_freed_fragmented_memory() -> None:
    # 64 kB blocks come from the heap (below glibc's mmap threshold); keeping every tenth
    # alive leaves the freed 90 % in holes that free() alone does not give back.
    keep, drop = [], []
    for i in range(3000):
        (keep if i % 10 == 0 else drop).append(bytearray(64 * 1024))
    drop.clear()
    before = _rss_mb()
    assert trim_heap()
    after = _rss_mb()
    assert before - after > 0.5 * 2700 * 64 * 1024 / 1e6, (before, after)
    assert len(keep) == 300
