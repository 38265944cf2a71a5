"""`ahstream score` agrees with an independent implementation of the official metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tests.conftest import ROOT


def _official_ap(y, p):
    """The BAH code's AP, written independently: trapezoid over the 0.001 threshold grid."""
    precisions, recalls = [], []
    for thr in np.arange(0, 1, 0.001):
        pred = p >= thr
        tp = np.sum(pred & (y == 1))
        fp = np.sum(pred & (y == 0))
        fn = np.sum(~pred & (y == 1))
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
    return -np.trapz(precisions, recalls)


def _write_split(path, ids, labels):
    path.write_text(
        "".join(f"{v},{lab},some words, with commas\n" for v, lab in zip(ids, labels, strict=True))
    )


def _score(pred_path, split_path):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "score",
            "--predictions",
            str(pred_path),
            "--split-file",
            str(split_path),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_matches_independent_metrics(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 150
    ids = [
        f"Videos/{i:03d}/Visite_1/{i:03d}_Question_{i % 7 + 1}_2023-01-01 10_00_Video.mp4"
        for i in range(n)
    ]
    y = rng.integers(0, 2, n)
    p1 = np.round(rng.random(n), 6)
    pred = (rng.random(n) < 0.5).astype(int)
    _write_split(tmp_path / "split.txt", ids, y)
    (tmp_path / "sub.csv").write_text(
        "".join(f"{v},{1 - q:.6f},{q:.6f},{k}\n" for v, q, k in zip(ids, p1, pred, strict=True))
    )
    run = _score(tmp_path / "sub.csv", tmp_path / "split.txt")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["n"] == n
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-9)
    assert got["f1_pos"] == pytest.approx(f1_score(y, pred, pos_label=1), abs=1e-9)
    assert got["f1_neg"] == pytest.approx(f1_score(y, pred, pos_label=0), abs=1e-9)
    assert got["ap"] == pytest.approx(_official_ap(y, p1), abs=1e-9)


def test_score_names_missing_and_extra_ids(tmp_path):
    _write_split(tmp_path / "split.txt", ["a", "b", "c"], [0, 1, 1])
    (tmp_path / "sub.csv").write_text("a,0.5,0.5,1\nb,0.2,0.8,1\nzz,0.1,0.9,1\n")
    run = _score(tmp_path / "sub.csv", tmp_path / "split.txt")
    assert run.returncode == 1
    assert "missing" in run.stderr and "'c'" in run.stderr and "'zz'" in run.stderr
    (tmp_path / "bad.csv").write_text("a,0.5,0.5\n")
    run = _score(tmp_path / "bad.csv", tmp_path / "split.txt")
    assert run.returncode == 1 and "bad.csv:1" in run.stderr
    # An extra column is named on its line (a split's ids hold no comma), not reported
    # as an id "a,x" missing from the split.
    (tmp_path / "wide.csv").write_text("a,x,0.5,0.5,1\nb,0.2,0.8,1\nc,0.2,0.8,1\n")
    run = _score(tmp_path / "wide.csv", tmp_path / "split.txt")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "wide.csv:1: expected 'video_id,p0,p1,pred' (4 fields), got 5" in run.stderr
    # An empty split says so, not that every submitted id is extra.
    (tmp_path / "empty.txt").write_text("\n")
    run = _score(tmp_path / "sub.csv", tmp_path / "empty.txt")
    assert run.returncode == 1 and run.stderr.strip().endswith("empty.txt: no videos")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("a,-5,0.5,1\n", "bad.csv:1: p0 must be a probability in [0, 1], got -5"),
        ("a,nan,0.3,0\n", "bad.csv:1: p0 must be a probability in [0, 1], got nan"),
        (
            "a,0.5,0.5,1\nb,0.8,0.8,1\n",
            "bad.csv:2: p0 + p1 must be 1 (within 0.001), got 0.8 + 0.8",
        ),
    ],
)
def test_score_refuses_probabilities_that_are_not_a_pair(tmp_path, lines, message):
    _write_split(tmp_path / "split.txt", ["a", "b"], [0, 1])
    (tmp_path / "bad.csv").write_text(lines)
    run = _score(tmp_path / "bad.csv", tmp_path / "split.txt")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().endswith(message), run.stderr
    # Three decimals each still pass, and pred need not be p1 >= 0.5 (a tuned threshold).
    (tmp_path / "ok.csv").write_text("a,0.667,0.333,1\nb,0.3335,0.6665,1\n")
    assert _score(tmp_path / "ok.csv", tmp_path / "split.txt").returncode == 0


def test_score_refuses_files_that_are_not_utf8_or_repeat_a_video(tmp_path):
    _write_split(tmp_path / "split.txt", ["a", "b"], [0, 1])
    (tmp_path / "latin1.csv").write_bytes("a,0.5,0.5,1\nb\xe9,0.5,0.5,1\n".encode("latin-1"))
    run = _score(tmp_path / "latin1.csv", tmp_path / "split.txt")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "latin1.csv: not UTF-8 text" in run.stderr
    # A split that lists a video twice (here with the other label) would count it twice.
    (tmp_path / "twice.txt").write_text("a,0,x\nb,1,y\na,1,z\n")
    (tmp_path / "sub.csv").write_text("a,0.5,0.5,1\nb,0.5,0.5,1\n")
    run = _score(tmp_path / "sub.csv", tmp_path / "twice.txt")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "twice.txt:3: video_id 'a' repeats line 1" in run.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/mem")
def test_score_and_evaluate_report_files_they_cannot_read(tmp_path, capsys):
    """An OS error while reading (here /proc/self/mem, a regular file whose first page
    reads as an I/O error; a permission error as another user) is a one-line error that
    names the file, not a traceback."""
    from stream.cli import main

    _write_split(tmp_path / "split.txt", ["a", "b"], [0, 1])
    (tmp_path / "sub.csv").write_text("a,0.5,0.5,1\nb,0.5,0.5,1\n")
    unreadable = "/proc/self/mem"
    expected = f"{unreadable}: cannot read (Input/output error)"
    for pred, split in ((unreadable, tmp_path / "split.txt"), (tmp_path / "sub.csv", unreadable)):
        assert main(["score", "--predictions", str(pred), "--split-file", str(split)]) == 1
        assert capsys.readouterr().err == f"ahstream score: {expected}\n"
    assert main(["evaluate", "--split-file", unreadable, "--json"]) == 1
    assert capsys.readouterr().err.endswith(f"ahstream evaluate: {expected}\n")
