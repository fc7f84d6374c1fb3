"""Suite-wide rules. Under CI (CI=true, set by .ci/run) a skipped test is a failure: the lab
tests must run there, never silently skip."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        if reporter:
            reporter.write_line(f"CI=true: {len(skipped)} skipped test(s) count as failures:", red=True)
            for rep in skipped[:20]:
                reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr
                reporter.write_line(f"  {rep.nodeid}: {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
