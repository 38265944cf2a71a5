"""The full-profile training setup the tests share: the BAH fixture and the `train` command.

The fixture is the XOR variant of `tests.bah_fixture` (see tests/test_full_pipeline.py);
the pytest fixtures built on it (``bah_fx``, ``tiny_encoders``, ``full_trained``) live in
tests/conftest.py, so one training run serves every test module of a pytest session.
"""

from __future__ import annotations

from pathlib import Path

from tests.bah_fixture import BahFixture, make_bah_fixture

__all__ = ["COUNTS", "make_fixture", "train_argv"]

# 16 train / 8 val / 8 test videos of 3 s (six 0.5 s chunks each), half of them positive.
COUNTS = {"train": 16, "val": 8, "test": 8}


def make_fixture(root: Path) -> BahFixture:
    """The XOR BAH fixture (tone random per 0.5 s chunk, face = tone XOR label)."""
    return make_bah_fixture(root, COUNTS, seconds=3.0, seed=0, xor_chunk_s=0.5)


def train_argv(fx: BahFixture, paths: dict[str, Path], out: Path) -> list[str]:
    """`ahstream train --profile full` on ``fx`` with the tiny encoders at ``paths``."""
    return [
        "train",
        "--profile",
        "full",
        "--bah-root",
        str(fx.root),
        "--out-dir",
        str(out),
        "--video-model",
        str(paths["video"]),
        "--audio-model",
        str(paths["audio"]),
        "--text-model",
        str(paths["text"]),
        "--epochs",
        "60",
        "--seed",
        "0",
        "--audio-window",
        "0.5",
        "--json",
    ]
