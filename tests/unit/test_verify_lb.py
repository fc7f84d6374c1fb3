"""verify's view of a load balancer: HAProxy's own stats (a real haproxy on loopback) parsed into
one check per controller, and the restart-pending check from process start and file times."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from k8sboot import lb
from k8sboot import verify as V

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make test installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stats_of_a_real_haproxy_name_the_backend_that_is_down(tmp_path):
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(16)
    down_port, front = _free_port(), _free_port()
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""\
global
    stats socket {sock} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend kube-apiserver
    bind 127.0.0.1:{front}
    default_backend kube-apiserver
backend kube-apiserver
    server controller-0 127.0.0.1:{up.getsockname()[1]} check inter 100ms fall 1 rise 1
    server controller-1 127.0.0.1:{down_port} check inter 100ms fall 1 rise 1
""")
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        command = lb.LB_STATS_COMMAND.replace(f"s={V.layout.LB_STATS_SOCKET}", f"s={sock}")
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout
            servers = lb.parse_lb_stats(out, "kube-apiserver")
            if servers.get("controller-1", ("",))[0].startswith("DOWN") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert servers["controller-0"][0].startswith("UP")
        assert servers["controller-1"][0].startswith("DOWN") and "L4CON" in servers["controller-1"][1]
        from k8sboot.plan import HostFacts, ServiceFact
        facts = HostFacts(files={}, service=ServiceFact("loaded", "active", "running"), sections={"stats": out})
        checks = {c.check: c for c in V.check_lb_host("lb-0", (), facts, ["controller-0", "controller-1",
                                                                            "controller-2"], "kube-apiserver")}
        assert checks["backend controller-0"].status == V.OK
        assert checks["backend controller-1"].status == V.DRIFT and "DOWN" in checks["backend controller-1"].detail
        assert checks["backend controller-2"].status == V.DRIFT      # not in the running config at all
    finally:
        proc.terminate()
        proc.wait(5)
        up.close()


def test_a_file_newer_than_the_running_process_is_a_pending_restart():
    text = ("start 1000.500\n999.100000000 /var/lib/kubernetes/ca.pem\n"
            "1005.000000000 /var/lib/kubernetes/service-account.pem\n")
    check = V.check_restart_pending("controller-0", text)
    assert check.status == V.DRIFT and "service-account.pem" in check.detail and "ca.pem" not in check.detail
    # the serving pair is re-read by the running server: newer is no pending restart
    served = "start 1000.5\n1005.0 /var/lib/kubernetes/kubernetes.pem\n1005.0 /var/lib/kubernetes/kubernetes-key.pem\n"
    assert V.check_restart_pending("controller-0", served).status == V.OK
    # a deploy renames just before it restarts: the same second is not "newer"
    assert V.check_restart_pending("controller-0", "start 1000.50\n1000.40 /x/ca.pem\n").status == V.OK
    assert V.check_restart_pending("controller-0", "999.1 /x/ca.pem\n") is None      # nothing runs


def test_the_started_section_runs_in_a_real_shell_and_measures_a_process_start(tmp_path):
    """The section's shell (awk over /proc) against a process started here, with a file written
    before it and one after."""
    import os

    before = tmp_path / "before"
    before.write_text("x")
    time.sleep(0.6)
    proc = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.6)
        after = tmp_path / "after"
        after.write_text("y")
        command = dict(V.SECTIONS)["started"]
        command = command.replace(f"$(systemctl show -p MainPID --value {V.layout.UNIT_NAME})", str(proc.pid))
        command = command.split("stat -c")[0] + f"stat -c '%.9Y %n' {before} {after}"
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout
        start = float(out.split()[1])
        assert abs(start - (os.stat(before).st_mtime + 0.6)) < 0.3, out
        check = V.check_restart_pending("h", out)
        assert check.status == V.DRIFT and "after" in check.detail and "before" not in check.detail
    finally:
        proc.kill()
        proc.wait()
