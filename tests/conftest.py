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


# --- network rule: tests talk only to loopback and to the lab's own hosts ----------------------

import ipaddress  # noqa: E402
import socket  # noqa: E402

ALLOWED_NETS = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.240.0.0/24"))
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_destination(sock: socket.socket, address) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    if not any(ip in net for net in ALLOWED_NETS):
        raise AssertionError(f"a test tried to connect to {host}:{address[1]}; tests may reach only "
                             "loopback and the lab's hosts on 10.240.0.0/24")


def _guarded_connect(self, address):
    _check_destination(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_destination(self, address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def only_loopback_and_lab_network():
    """Every in-process connection is checked; a test that dials any other address fails."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
