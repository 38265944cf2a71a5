"""The code base stays ruff-clean (lint runs with the tests, so CI checks it)."""

import importlib.util
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_clean():
    # ruff comes with the [test] extra: a test run without it is a broken install
    assert importlib.util.find_spec("ruff") is not None, "ruff is not installed ([test] extra)"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "stream",
            "models",
            "clients",
            "benchmarks",
            "tests",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
