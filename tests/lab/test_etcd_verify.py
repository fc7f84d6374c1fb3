"""verify and audit --remote on real etcd: three lab controllers with deploy-etcd's members (Debian's
etcd) and deploy-apiserver's unit. verify reads each member's unit, files and argv over SSH and asks
every member's /health and member list over HTTPS from the workstation, and each API server's own
/readyz (its etcd check); audit --remote reads the deployed etcd units for CIS 2.1-2.7.

Runs in order; the hosts are reset at the start and at the end (`host.reset()`).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from k8sboot.errors import ExitCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import fresh_lab_env, reset_hosts  # noqa: E402

pytestmark = pytest.mark.lab

ETCD_CHECKS = {"etcd health", "etcd member list", "etcd is-enabled", "etcd is-active",
               "file /etc/systemd/system/etcd.service", "file /etc/etcd/etcd-server-key.pem", "dir /etc/etcd"}


@pytest.fixture(scope="module")
def env(lab_hosts, tmp_path_factory):
    e = fresh_lab_env(lab_hosts, tmp_path_factory, "etcd-verify")
    res, _ = e.deploy()                  # deploy-etcd first (LabEnv.ensure_etcd), then the API servers
    assert res.exit_code == 0, res.output
    yield e
    reset_hosts(e)


def verify(env, *args):
    res = env.k8sboot("verify", "-i", env.inventory, "--json", *args)
    return res, json.loads(res.stdout)


def checks_of(doc, host):
    return {c["check"]: c for c in next(h for h in doc["hosts"] if h["host"] == host)["checks"]}


def test_verify_after_deploy_etcd_is_all_ok_with_every_member_checked(env):
    res, doc = verify(env)
    assert res.exit_code == 0, [(h["host"], c) for h in doc["hosts"] for c in h["checks"] if c["status"] != "OK"]
    for h in env.hosts:
        got = checks_of(doc, h.name)
        assert ETCD_CHECKS <= set(got), sorted(got)
        bad = {k: c for k, c in got.items() if (k.startswith("etcd") or "/etc/etcd" in k) and c["status"] != "OK"}
        assert bad == {}, (h.name, bad)
        assert got["etcd member list"]["detail"] == "3 members = the inventory's controllers"
        assert any(k.startswith("etcd process ") and got[k]["status"] == "OK" for k in got)
        assert "etcd" not in got        # no "not deployed" line


def test_audit_remote_passes_2_1_to_2_7_on_every_member(env):
    res = env.k8sboot("audit", "-i", env.inventory, "--remote", "--json")
    doc = json.loads(res.stdout)
    etcd = [f for f in doc["findings"] if f["id"] in {"2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7"}]
    remote = [f for f in etcd if f["subject"].endswith("(remote)")]
    assert len(remote) == 3 * 7 and all(f["status"] == "PASS" for f in etcd), [f for f in etcd if f["status"] != "PASS"]
    assert not [f for f in doc["findings"] if f["id"] == "k8sboot.etcd"]


def test_a_stopped_member_is_named_and_verify_exits_10(env):
    stopped = env.hosts[1]
    env.ssh(stopped, "systemctl stop etcd.service")
    try:
        res, doc = verify(env)
        assert res.exit_code == ExitCode.DRIFT, res.output
        got = checks_of(doc, stopped.name)
        assert got["etcd is-active"]["status"] == "DRIFT" and got["etcd health"]["status"] == "DRIFT"
        assert "refused" in got["etcd health"]["detail"].lower(), got["etcd health"]
        for other in (env.hosts[0], env.hosts[2]):      # the other two keep quorum and still list it
            mine = checks_of(doc, other.name)
            assert mine["etcd health"]["status"] == "OK" and mine["etcd member list"]["status"] == "OK"
        res = env.k8sboot("verify", "-i", env.inventory)
        assert res.exit_code == ExitCode.DRIFT and stopped.name in res.output and "etcd health" in res.output
    finally:
        env.ssh(stopped, "systemctl start etcd.service")
    res, doc = verify(env)
    assert res.exit_code == 0, [(h["host"], c) for h in doc["hosts"] for c in h["checks"] if c["status"] != "OK"]


def test_with_every_etcd_member_stopped_the_api_servers_are_unready_naming_etcd_and_verify_says_why(env):
    """As on a real cluster: kube-apiserver stays up without its storage, but /readyz fails its
    etcd checks (reasons withheld, the real healthz body), and `verify` says which and why."""
    def stop(h):
        env.ssh(h, "systemctl stop etcd.service")

    with ThreadPoolExecutor(3) as pool:          # at once: no member is left to keep quorum
        list(pool.map(stop, env.hosts))
    try:
        for h in env.hosts:
            code, body = env.wait_api(h, want=500)
            assert code == 500, (h.name, code, body)
            lines = body.splitlines()
            assert "[-]etcd failed: reason withheld" in lines and "[-]etcd-readiness failed: reason withheld" in lines
            assert lines[-1] == "readyz check failed" and "[+]ping ok" in lines
            assert env.service(h)["ActiveState"] == "active"           # up, not ready
        res, doc = verify(env)
        assert res.exit_code == ExitCode.DRIFT, res.output
        for h in env.hosts:
            got = checks_of(doc, h.name)
            ready = got["API server /readyz"]
            assert ready["status"] == "DRIFT" and "[-]etcd failed" in ready["detail"], ready
            assert "cannot read etcd" in ready["detail"]
            assert got["etcd health"]["status"] == "DRIFT" and "refused" in got["etcd health"]["detail"].lower()
        text = env.k8sboot("verify", "-i", env.inventory).output
        assert "cannot read etcd" in text and "etcd health" in text
    finally:
        def start(h):
            env.ssh(h, "systemctl start --no-block etcd.service")     # a member waits for its peers
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(start, env.hosts))
    for h in env.hosts:
        code, body = env.wait_api(h, want=200)
        assert code == 200 and "[+]etcd ok" in body.splitlines(), (h.name, code, body)
    deadline = time.monotonic() + 60       # two members make a quorum: the third may still be starting
    while any(env.ssh(h, "systemctl is-active etcd.service || true").strip() != "active" for h in env.hosts):
        assert time.monotonic() < deadline, "an etcd member did not come back within 60 s"
        time.sleep(0.5)
    res, doc = verify(env)
    assert res.exit_code == 0, [(h["host"], c) for h in doc["hosts"] for c in h["checks"] if c["status"] != "OK"]
    assert all(checks_of(doc, h.name)["API server /readyz"]["status"] == "OK" for h in env.hosts)
