"""The code base stays ruff-clean (lint runs with the tests, so CI checks it)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_ruff_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the [test] extra)")
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
