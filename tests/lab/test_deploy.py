"""deploy-apiserver on real lab hosts (systemd + sshd in systemd-nspawn), end to end.

Shares the session's lab with the other lab tests: the hosts this module dirties are reset at the
end (`host.reset()`). Runs in order: each test starts from the state the previous one left.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot.errors import ExitCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import expected_files, fresh_lab_env, reset_hosts  # noqa: E402

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(lab_hosts, tmp_path_factory):
    e = fresh_lab_env(lab_hosts, tmp_path_factory, "deploy")
    yield e
    reset_hosts(e)


def by_host(doc):
    return {h["host"]: h for h in doc["hosts"]}


def test_first_deploy_installs_every_file_with_content_mode_and_owner(env):
    res, doc = env.deploy()
    assert res.exit_code == 0, res.output
    assert doc["ok"] and all(h["outcome"] == "deployed" and h["restarted"] for h in doc["hosts"])
    for host in env.hosts:
        assert env.remote_files(host) == expected_files(env, host), host.name
        svc = env.service(host)
        assert (svc["ActiveState"], svc["SubState"], svc["UnitFileState"]) == ("active", "running", "enabled")
        assert env.ssh(host, "stat -c '%a %U %G' /var/lib/kubernetes").split() == ["700", "root", "root"]


def test_tutorial_grep_on_controller_0_prints_the_auth_flags(env):
    out = env.ssh(env.hosts[0], 'grep -oE "\\-\\-(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*" '
                                "/etc/systemd/system/kube-apiserver.service")
    assert out.splitlines() == ["--anonymous-auth=false",
                                "--client-ca-file=/var/lib/kubernetes/ca.pem",
                                "--service-account-key-file=/var/lib/kubernetes/service-account.pem"]


def test_no_ca_key_anywhere_on_the_hosts(env):
    for host in env.hosts:
        found = env.ssh(host, "find / -xdev \\( -name 'ca-key*' -o -name '*.k8sboot-new' \\) 2>/dev/null; true")
        assert found.strip() == "", f"{host.name}: {found}"


def test_second_deploy_uploads_nothing_and_restarts_nothing(env):
    before = {h.name: (env.snapshot(h), env.service(h)) for h in env.hosts}
    res, doc = env.deploy()
    assert res.exit_code == 0, res.output
    assert all(h["outcome"] == "up to date" and not h["restarted"] and h["files_changed"] == []
               for h in doc["hosts"])
    after = {h.name: (env.snapshot(h), env.service(h)) for h in env.hosts}
    assert after == before           # same inodes, mtimes, hashes; same start time and PID
    table = env.k8sboot("deploy-apiserver", "-i", env.inventory)
    assert table.exit_code == 0 and "already up to date" in table.output


def test_dry_run_leaves_every_host_byte_identical_and_shows_the_diff(env):
    changed = env.write_inventory(env.tmp / "anon.yaml", anonymous=True)
    before = {h.name: (env.snapshot(h), env.service(h)) for h in env.hosts}
    res = env.k8sboot("deploy-apiserver", "-i", changed, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "-  --anonymous-auth=false \\" in res.stdout and "+  --anonymous-auth=true \\" in res.stdout
    assert "nothing was changed" in res.stdout
    assert {h.name: (env.snapshot(h), env.service(h)) for h in env.hosts} == before


def test_hosts_option_touches_only_those_hosts(env):
    changed = env.write_inventory(env.tmp / "v3.yaml", extra_flags={"v": 3})
    before = {h.name: env.snapshot(h) for h in env.hosts}
    res, doc = env.deploy("--hosts", "controller-1", inventory=changed)
    assert res.exit_code == 0, res.output
    assert [h["host"] for h in doc["hosts"]] == ["controller-1"]
    assert env.snapshot(env.host("controller-0")) == before["controller-0"]
    assert env.snapshot(env.host("controller-2")) == before["controller-2"]
    assert env.snapshot(env.host("controller-1")) != before["controller-1"]
    assert "--v=3" in env.ssh(env.host("controller-1"), f"cat {layout.UNIT_PATH}")
    res, doc = env.deploy()   # back to the module's inventory everywhere
    assert res.exit_code == 0 and by_host(doc)["controller-1"]["files_changed"] == [layout.UNIT_NAME]
    assert by_host(doc)["controller-0"]["outcome"] == "up to date"


def test_inventory_change_updates_only_the_unit_and_restarts_every_host(env):
    pids = {h.name: env.service(h)["MainPID"] for h in env.hosts}
    pki_before = {h.name: {p: v for p, v in env.remote_files(h).items() if p != layout.UNIT_PATH} for h in env.hosts}
    env.write_inventory(env.inventory, anonymous=True)
    res, doc = env.deploy()
    assert res.exit_code == 0, res.output
    for h in doc["hosts"]:
        assert h["files_changed"] == [layout.UNIT_NAME] and h["unit_changed"] and h["restarted"], h
    for host in env.hosts:
        assert env.service(host)["MainPID"] != pids[host.name]
        assert {p: v for p, v in env.remote_files(host).items() if p != layout.UNIT_PATH} == pki_before[host.name]
        assert "--anonymous-auth=true" in env.ssh(host, f"grep -o -- '--anonymous-auth=[a-z]*' {layout.UNIT_PATH}")
    env.write_inventory(env.inventory, anonymous=False)
    res, _ = env.deploy()
    assert res.exit_code == 0


def test_reissued_cert_changes_only_that_file(env):
    env.gen_certs("--renew", "kube-apiserver-kubelet-client")
    res, doc = env.deploy()
    assert res.exit_code == 0, res.output
    for h in doc["hosts"]:
        assert sorted(h["files_changed"]) == ["kube-apiserver-kubelet-client-key.pem",
                                              "kube-apiserver-kubelet-client.pem"], h
        assert not h["unit_changed"] and h["restarted"]
    for host in env.hosts:
        assert env.remote_files(host) == expected_files(env, host)


def test_unit_that_fails_to_start_is_reported_with_journal_lines(env):
    broken = env.write_inventory(env.tmp / "broken.yaml",
                                 extra_flags={"encryption-provider-config": "/var/lib/kubernetes/missing.yaml"})
    res, doc = env.deploy("--hosts", "controller-2", inventory=broken)
    assert res.exit_code == ExitCode.DEPLOY, res.output
    h = by_host(doc)["controller-2"]
    assert h["outcome"] == "failed" and "did not come up" in h["message"]
    assert any("missing.yaml" in line for line in h["journal"]), h["journal"]
    table = env.k8sboot("deploy-apiserver", "-i", broken, "--hosts", "controller-2", "--wait", "10")
    assert table.exit_code == ExitCode.DEPLOY and "journal:" in table.output and "Traceback" not in table.output
    res, _ = env.deploy("--hosts", "controller-2")      # repair with the good inventory
    assert res.exit_code == 0, res.output


def test_rollback_on_failure_restores_the_previous_working_state(env):
    host = env.host("controller-2")
    good = env.remote_files(host)
    broken = env.write_inventory(env.tmp / "broken.yaml",
                                 extra_flags={"encryption-provider-config": "/var/lib/kubernetes/missing.yaml"})
    res, doc = env.deploy("--hosts", "controller-2", "--rollback-on-failure", inventory=broken)
    assert res.exit_code == ExitCode.DEPLOY, res.output
    h = by_host(doc)["controller-2"]
    assert h["outcome"] == "rolled back" and h["state"] == "active/running", h
    assert env.remote_files(host) == good
    assert env.service(host)["ActiveState"] == "active"
    assert env.ssh(host, "ls -A /var/lib/kubernetes /etc/systemd/system | grep -c k8sboot-; true").strip() == "0"
    res, doc = env.deploy()
    assert res.exit_code == 0 and all(h["outcome"] == "up to date" for h in doc["hosts"]), res.output


def test_mode_loosened_on_a_host_is_repaired_without_restart(env):
    host = env.host("controller-0")
    pid = env.service(host)["MainPID"]
    env.ssh(host, "chmod 0644 /var/lib/kubernetes/kubernetes-key.pem; chmod 0755 /var/lib/kubernetes")
    res, doc = env.deploy("--hosts", "controller-0")
    assert res.exit_code == 0, res.output
    assert by_host(doc)["controller-0"]["files_changed"] == ["kubernetes-key.pem"]
    assert not by_host(doc)["controller-0"]["restarted"] and env.service(host)["MainPID"] == pid
    assert env.remote_files(host) == expected_files(env, host)
    assert env.ssh(host, "stat -c %a /var/lib/kubernetes").strip() == "700"


def test_no_restart_defers_the_restart_and_verify_says_so(env):
    host = env.host("controller-1")
    pid = env.service(host)["MainPID"]
    changed = env.write_inventory(env.tmp / "v4.yaml", extra_flags={"v": 4})
    res, doc = env.deploy("--hosts", "controller-1", "--no-restart", inventory=changed)
    assert res.exit_code == 0, res.output
    h = by_host(doc)["controller-1"]
    assert h["unit_changed"] and not h["restarted"] and env.service(host)["MainPID"] == pid
    res = env.k8sboot("verify", "-i", changed, "--host", "controller-1")
    assert res.exit_code == ExitCode.DRIFT and "restart pending" in res.output, res.output
    res, doc = env.deploy("--hosts", "controller-1", inventory=changed)
    h = by_host(doc)["controller-1"]
    assert res.exit_code == 0 and h["restarted"] and h["files_changed"] == [], h
    assert env.service(host)["MainPID"] != pid
    assert env.k8sboot("verify", "-i", changed, "--host", "controller-1").exit_code == 0
    res, _ = env.deploy("--hosts", "controller-1")
    assert res.exit_code == 0


def test_binary_option_uploads_the_binary_0755_and_restarts(env):
    host = env.host("controller-0")
    original = env.ssh(host, f"base64 -w0 {layout.BINARY_PATH}")
    import base64
    import hashlib
    data = base64.b64decode(original) + b"\n# k8sboot test: a changed binary\n"
    binary = env.tmp / "kube-apiserver"
    binary.write_bytes(data)
    res, doc = env.deploy("--hosts", "controller-0", "--binary", binary)
    assert res.exit_code == 0, res.output
    h = by_host(doc)["controller-0"]
    assert h["files_changed"] == ["kube-apiserver"] and h["restarted"] and h["state"] == "active/running"
    got = env.ssh(host, f"sha256sum < {layout.BINARY_PATH} | cut -c1-64; stat -c '%a %U %G' {layout.BINARY_PATH}")
    assert got.split() == [hashlib.sha256(data).hexdigest(), "755", "root", "root"]
    res, doc = env.deploy("--hosts", "controller-0", "--binary", binary)
    assert by_host(doc)["controller-0"]["outcome"] == "up to date"


def test_concurrent_deploy_waits_for_the_lock_then_refuses(env):
    host = env.host("controller-0")
    with host.connection() as c:
        promise = c.run(f"flock {layout.LOCK_PATH} sleep 3", hide=True, asynchronous=True, in_stream=False)
        import time
        time.sleep(0.5)
        res, doc = env.deploy("--hosts", "controller-0", "--lock-wait", "1")
        promise.join()
    assert res.exit_code == ExitCode.LOCKED, res.output
    assert "another k8sboot deploy holds" in by_host(doc)["controller-0"]["message"]


def test_installed_entry_point_deploys(env):
    import subprocess
    exe = Path(sys.executable).with_name("k8sboot")
    proc = subprocess.run([str(exe), "deploy-apiserver", "--inventory", str(env.inventory)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already up to date" in proc.stderr
