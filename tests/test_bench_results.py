"""Benchmark result files: strict JSON, and a record of how each was made."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.output import finite, mark_start, save_result


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_results_are_strict_json_with_null_for_values_that_do_not_exist(tmp_path: Path) -> None:
    result = {
        "p95": math.inf,
        "rss": {"slope": float("nan"), "steps": [1.5, -math.inf, np.float64("nan")]},
        "rows": ({"ms": 2.0},),
        "name": "x",
    }
    plotted: list[dict[str, Any]] = []

    def plot(res: dict[str, Any], png: Path) -> None:
        plotted.append(res)
        png.write_bytes(b"png")

    save_result(result, tmp_path / "out", "demo", plot)
    saved = _strict((tmp_path / "out" / "demo.json").read_text())
    assert saved["p95"] is None and saved["rss"] == {"slope": None, "steps": [1.5, None, None]}
    assert saved["rows"] == [{"ms": 2.0}] and saved["name"] == "x"
    assert (tmp_path / "out" / "demo.png").read_bytes() == b"png" and len(plotted) == 1
    assert finite({"a": [math.nan]}) == {"a": [None]}


def test_results_record_when_and_from_what_they_were_made(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    mark_start()
    save_result({"bench": "demo"}, tmp_path, "demo", lambda res, png: None)
    run = _strict((tmp_path / "demo.json").read_text())["run"]
    assert run["date"].endswith("Z") and run["date"][:2] == "20"
    assert run["commit"] is None or len(run["commit"].split("+")[0]) == 12
    assert run["packages"]["numpy"] == np.__version__ and "ahstream" in run["packages"]
    assert run["env"]["MALLOC_ARENA_MAX"] == "2"
    assert isinstance(run["load_avg_1m_before"], float) and run["command"]
    assert run["started"] <= run["date"]
    # A result that already says how it was made keeps that record.
    save_result({"run": {"command": "given"}}, tmp_path, "kept", lambda res, png: None)
    assert _strict((tmp_path / "kept.json").read_text())["run"] == {"command": "given"}


def test_a_checkout_records_its_commit_and_whether_it_was_changed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A git checkout of the project records HEAD, with ``+dirty`` for uncommitted changes
    except under benchmarks/results/ (which a series of runs rewrites)."""
    from benchmarks import output

    repo = tmp_path / "checkout"
    (repo / "stream").mkdir(parents=True)
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'ahstream'\n")
    (repo / "stream" / "session.py").write_text("x = 1\n")
    (repo / "benchmarks" / "results" / "latency.json").write_text("{}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=x", "-c", "user.email=x@x.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "code"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.setattr(output, "REPO", repo)
    assert len(head) == 12 and output.run_info()["commit"] == head
    (repo / "benchmarks" / "results" / "latency.json").write_text('{"new": 1}\n')
    assert output.run_info()["commit"] == head  # a rewritten result is not a code change
    (repo / "stream" / "session.py").write_text("x = 2\n")
    assert output.run_info()["commit"] == head + "+dirty"
    subprocess.run([*git, "checkout", "-q", "--", "stream/session.py"], check=True)
    (repo / "stream" / "new_module.py").write_text("y = 1\n")  # code not added yet
    assert output.run_info()["commit"] == head + "+dirty"
    (repo / "benchmarks" / "results" / "new.json").write_text("{}\n")
    (repo / "stream" / "new_module.py").unlink()
    assert output.run_info()["commit"] == head  # a new result is not a code change


def test_an_installed_copy_claims_no_commit(tmp_path: Path, monkeypatch: Any) -> None:
    from benchmarks import output

    # site-packages of a venv kept inside some other git checkout
    other = ["git", "-C", str(tmp_path), "-c", "user.name=x", "-c", "user.email=x@x.invalid"]
    subprocess.run([*other, "init", "-q"], check=True)
    subprocess.run([*other, "commit", "-q", "--allow-empty", "-m", "other"], check=True)
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(output, "REPO", site)
    assert output.run_info()["commit"] is None


def test_committed_throughput_results_written_with_the_old_keys_still_plot(
    tmp_path: Path,
) -> None:
    from benchmarks.throughput import _cores, _plot

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    files = sorted(results.rglob("throughput.json"))
    assert files
    for i, path in enumerate(files):
        result = _strict(path.read_text())
        rounds = result["rounds"]
        # Before `cpu_s_per_media_s` and `ticks_without_frame`: CPU per wall second and
        # `frames_dropped`; after: both names of each are accepted.
        assert all("cpu_cores" in r or "cpu_s" in r for r in rounds)
        assert all("frames_dropped_max" in r or "ticks_without_frame_max" in r for r in rounds)
        assert all(_cores(result, r) is not None for r in rounds)
        _plot(result, tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 0
