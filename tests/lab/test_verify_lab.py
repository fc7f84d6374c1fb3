"""verify on real lab hosts: no drift after a deploy, then each kind of drift found, then repaired."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot.errors import ExitCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import fresh_lab_env, reset_hosts  # noqa: E402

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(lab_hosts, tmp_path_factory):
    e = fresh_lab_env(lab_hosts, tmp_path_factory, "verify")
    res, _ = e.deploy()
    assert res.exit_code == 0, res.output
    yield e
    reset_hosts(e)


def verify(env, *args):
    res = env.k8sboot("verify", "-i", env.inventory, "--json", *args)
    return res, json.loads(res.stdout)


def drifted(doc, host):
    h = next(x for x in doc["hosts"] if x["host"] == host)
    return {c["check"]: c["detail"] for c in h["checks"] if c["status"] == "DRIFT"}


def test_no_drift_after_deploy_and_the_tutorial_grep_is_shown(env):
    res = env.k8sboot("verify", "-i", env.inventory, "--host", "controller-0")
    assert res.exit_code == 0, res.output
    assert ("--anonymous-auth=false\n--client-ca-file=/var/lib/kubernetes/ca.pem\n"
            "--service-account-key-file=/var/lib/kubernetes/service-account.pem") in res.stdout
    res, doc = verify(env)
    assert res.exit_code == 0 and all(not h["drifted"] for h in doc["hosts"])
    checks = {c["check"] for c in doc["hosts"][0]["checks"]}
    assert {"tutorial grep", "unit file", "systemctl show ExecStart: auth flags", "CA fingerprint",
            "is-enabled", "is-active", "no ca-key.pem on the host"} <= checks
    assert any(c.startswith("process ") for c in checks)


def test_probe_answers_as_anonymous_auth_dictates(env):
    res, doc = verify(env, "--host", "controller-0", "--probe")
    assert res.exit_code == 0, res.output
    probes = {c["check"]: c for c in doc["hosts"][0]["checks"] if c["check"].startswith("probe")}
    assert probes["probe: no credential"]["actual"] == "401"
    assert probes["probe: bogus bearer token"]["actual"] == "401"
    assert probes["probe: admin cert (SelfSubjectReview)"]["actual"] == "admin"


def test_edited_file_is_drift(env):
    env.ssh(env.host("controller-1"), "echo '# tampered' >> /var/lib/kubernetes/kube-apiserver-kubelet-client.pem")
    res, doc = verify(env)
    assert res.exit_code == ExitCode.DRIFT
    assert "content" in drifted(doc, "controller-1")["file /var/lib/kubernetes/kube-apiserver-kubelet-client.pem"]
    assert drifted(doc, "controller-0") == {} and drifted(doc, "controller-2") == {}


def test_loosened_mode_is_drift(env):
    env.ssh(env.host("controller-2"), "chmod 0644 /var/lib/kubernetes/service-account-key.pem")
    res, doc = verify(env, "--host", "controller-2")
    assert res.exit_code == ExitCode.DRIFT
    assert "mode 0644 -> 0600" in drifted(doc, "controller-2")["file /var/lib/kubernetes/service-account-key.pem"]


def test_unit_edited_by_hand_is_drift_in_file_and_after_reload_in_systemd(env):
    host = env.host("controller-0")
    env.ssh(host, f"sed -i 's/--anonymous-auth=false/--anonymous-auth=true/' {layout.UNIT_PATH}")
    res, doc = verify(env, "--host", "controller-0")
    d = drifted(doc, "controller-0")
    assert res.exit_code == ExitCode.DRIFT
    assert "--anonymous-auth=true (expected false)" in d["unit ExecStart: auth flags"]
    assert "tutorial grep" in d and "unit file" in d
    assert "systemctl show ExecStart: auth flags" not in d      # systemd still has the old one loaded
    env.ssh(host, "systemctl daemon-reload")
    res, doc = verify(env, "--host", "controller-0")
    assert "systemctl show ExecStart: auth flags" in drifted(doc, "controller-0")


def test_stopped_service_is_drift(env):
    env.ssh(env.host("controller-2"), f"systemctl stop {layout.UNIT_NAME}")
    res, doc = verify(env, "--host", "controller-2")
    assert res.exit_code == ExitCode.DRIFT
    assert drifted(doc, "controller-2")["is-active"].startswith("inactive")


def test_deploy_repairs_all_drift(env):
    res, _ = env.deploy()
    assert res.exit_code == 0, res.output
    res, doc = verify(env)
    assert res.exit_code == 0, [drifted(doc, h.name) for h in env.hosts]


def test_unreachable_host_is_a_connect_error_not_drift(env, tmp_path):
    inv = tmp_path / "bad.yaml"
    inv.write_text(env.inventory.read_text().replace(env.hosts[0].address + ",", "10.240.0.250,")
                   .replace(f"address: {env.hosts[0].address}", "address: 10.240.0.250"))
    res = env.k8sboot("verify", "-i", inv, "--host", "controller-0")
    assert res.exit_code in (ExitCode.CONNECT, ExitCode.HOST_KEY), res.output
    assert "controller-0" in res.output and "Traceback" not in res.output


def test_audit_remote_passes_file_checks_and_finds_a_loose_key(env):
    res = env.k8sboot("audit", "-i", env.inventory, "--remote", "--json")
    doc = json.loads(res.stdout)
    remote = [f for f in doc["findings"] if f["subject"].endswith("(remote)") and f["id"].startswith("1.1.")]
    assert remote and all(f["status"] == "PASS" for f in remote)
    env.ssh(env.host("controller-1"), "chmod 0640 /var/lib/kubernetes/kubernetes-key.pem")
    res = env.k8sboot("audit", "-i", env.inventory, "--remote", "--json")
    assert res.exit_code == ExitCode.AUDIT
    doc = json.loads(res.stdout)
    bad = [f for f in doc["findings"] if f["id"] == "1.1.21" and f["status"] == "FAIL"]
    assert bad and "controller-1" in bad[0]["subject"] and "kubernetes-key.pem (0640)" in bad[0]["reason"]
    env.deploy("--hosts", "controller-1")
