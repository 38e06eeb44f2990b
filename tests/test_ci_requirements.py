"""Under `CI`, a test whose shared data or packaged model is missing fails, naming it, instead of skipping."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, in_ci

NEEDS_DATA = "tests/test_ci_requirements.py::test_shared_data_is_there"


def test_shared_data_is_there(data_root):
    """The shared data folder, through the data_root fixture (the test below runs this one in a child pytest)."""
    assert any(data_root.iterdir())


def _pytest(tmp_path, ci: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": ci, "TOOLKIT_TEST_DATA": str(tmp_path / "no-data")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", NEEDS_DATA],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_missing_data_fails_under_ci_and_skips_elsewhere(tmp_path):
    failed = _pytest(tmp_path, "true")
    assert failed.returncode == 1, failed.stdout[-2000:]
    assert "1 error" in failed.stdout and f"test data not found at {tmp_path / 'no-data'}" in failed.stdout
    skipped = _pytest(tmp_path, "false")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]


@pytest.mark.parametrize("value, ci", [("", False), ("0", False), ("false", False), ("False", False),
                                       ("no", False), ("true", True), ("1", True), ("yes", True)])
def test_ci_values(monkeypatch, value, ci):
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci
