"""The suite's CI rule, as CI runs it: under CI=true any skipped test — unit or lab — fails the run
(tests/conftest.py); outside CI a skip stays a skip. Checked on a throw-away test file run by a
real pytest with this repository's tests/conftest.py, so the rule cannot silently stop applying."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _run_suite_with_one_skip(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    root = tmp_path / "tests"
    (root / "unit").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    (root / "unit" / "test_skips.py").write_text(
        "import pytest\n\n\ndef test_passes():\n    assert True\n\n\n"
        "def test_needs_a_tool():\n    pytest.skip('some tool is not installed')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_skipped_unit_test_fails_the_run_and_is_named(tmp_path):
    proc = _run_suite_with_one_skip(tmp_path, "true")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout
    assert "CI=true: 1 skipped test(s) count as failures" in proc.stdout
    assert "test_needs_a_tool: " in proc.stdout and "some tool is not installed" in proc.stdout


def test_outside_ci_a_skip_is_only_a_skip(tmp_path):
    proc = _run_suite_with_one_skip(tmp_path, None)
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout
