"""deploy-etcd on real lab hosts: three members of Debian's etcd (the lab's root has etcd-server
and etcd-client, Debian's own etcd.service disabled), checked with the real etcdctl on a host.

Runs in order: each test starts from the state the previous one left. The hosts are reset at the
start and at the end (`host.reset()`), so no etcd survives into another module's tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot.errors import ExitCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import LabEnv, fresh_lab_env, reset_hosts  # noqa: E402

pytestmark = pytest.mark.lab

CLUSTER = "k8sboot-deploy-test"          # deploy_helpers.LAB_INVENTORY's cluster name
DATA_DIR = f"/var/lib/etcd/{CLUSTER}"
SAMPLE_BOUND_S = 120                     # the quorum sampler never runs longer than this


@pytest.fixture(scope="module")
def env(lab_hosts, tmp_path_factory):
    e = fresh_lab_env(lab_hosts, tmp_path_factory, "etcd")
    e.etcd_up = True         # this module deploys etcd itself, test by test (env.deploy must not)
    yield e
    reset_hosts(e)


def etcd_inventory(env: LabEnv, name: str, extra_flags: dict | None = None) -> Path:
    path = env.write_inventory(env.tmp / name)
    if extra_flags:
        with path.open("a") as f:
            f.write("etcd:\n  extra_flags: {" + ", ".join(f"{k}: {v}" for k, v in extra_flags.items()) + "}\n")
    return path


def deploy_etcd(env: LabEnv, inventory: Path | None = None, *args) -> tuple[object, dict]:
    res = env.k8sboot("deploy-etcd", "-i", inventory or env.inventory, "--json", "--wait", "60", *args)
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        doc = None
    return res, doc


def etcdctl(env: LabEnv) -> str:
    """etcdctl on a member with every member's endpoint and etcd-server.pem as the client cert
    (it carries clientAuth; the healthcheck client's key never goes to the hosts)."""
    endpoints = ",".join(f"https://{h.address}:2379" for h in env.hosts)
    return (f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert=/etc/etcd/etcd-ca.pem "
            "--cert=/etc/etcd/etcd-server.pem --key=/etc/etcd/etcd-server-key.pem --command-timeout=3s")


def etcd_service(env: LabEnv, host) -> dict:
    out = env.ssh(host, "systemctl show -p ActiveState,SubState,MainPID,ActiveEnterTimestampMonotonic,"
                        "UnitFileState etcd.service")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def by_host(doc):
    return {h["host"]: h for h in doc["hosts"]}


def test_three_members_are_deployed_at_once_and_healthy(env):
    res, doc = deploy_etcd(env)
    assert res.exit_code == 0, res.output
    assert doc["ok"] and doc["waves"] == [], doc
    assert all(h["outcome"] == "deployed" and h["restarted"] for h in doc["hosts"])
    c0 = env.hosts[0]
    health = env.ssh(c0, f"{etcdctl(env)} endpoint health --cluster 2>&1")
    assert health.count("is healthy") == 3, health
    members = json.loads(env.ssh(c0, f"{etcdctl(env)} member list -w json"))["members"]
    assert sorted((m["name"], tuple(m["peerURLs"]), tuple(m["clientURLs"])) for m in members) == sorted(
        (h.name, (f"https://{h.address}:2380",), (f"https://{h.address}:2379",)) for h in env.hosts)
    # what deploy-etcd itself asks from the workstation (health gate, join check) over etcd's v3 gateway
    from k8sboot import deploy as D
    from k8sboot import etcd
    from k8sboot.inventory import load_inventory

    inv = load_inventory(env.inventory)
    ask = D.etcd_prober(inv)
    listed = etcd.parse_member_list(ask(inv.controllers[1], "members").body)
    assert sorted((m.name, m.peer_urls) for m in listed) == sorted(
        (h.name, (f"https://{h.address}:2380",)) for h in env.hosts)
    assert all(etcd.parse_health(a.status, a.body)[0] for a in (ask(h, "health") for h in inv.controllers))
    for host in env.hosts:
        svc = etcd_service(env, host)
        assert (svc["ActiveState"], svc["SubState"], svc["UnitFileState"]) == ("active", "running", "enabled")
        modes = env.ssh(host, f"stat -c '%n %a %U %G' /etc/etcd /etc/etcd/*.pem {DATA_DIR}").splitlines()
        assert sorted(modes) == sorted([
            "/etc/etcd 700 root root", "/etc/etcd/etcd-ca.pem 644 root root",
            "/etc/etcd/etcd-peer-key.pem 600 root root", "/etc/etcd/etcd-peer.pem 644 root root",
            "/etc/etcd/etcd-server-key.pem 600 root root", "/etc/etcd/etcd-server.pem 644 root root",
            f"{DATA_DIR} 700 root root"])
        # the unit that runs is ours, on Debian's binary; Debian's default member never ran
        assert env.ssh(host, "systemctl show -p FragmentPath etcd.service").strip() == \
            f"FragmentPath={layout.ETCD_UNIT_PATH}"
        assert env.ssh(host, "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value etcd)/cmdline").startswith(
            f"/usr/bin/etcd --name={host.name} ")
        assert env.ssh(host, "test -e /var/lib/etcd/default && echo present || echo absent").strip() == "absent"
        found = env.ssh(host, "find / -xdev \\( -name 'ca-key.pem' -o -name 'etcd-ca-key.pem' "
                              "-o -name 'etcd-healthcheck-client*' \\) 2>/dev/null; true")
        assert found.strip() == "", f"{host.name}: {found}"


def test_a_second_run_changes_nothing(env):
    before = {h.name: (etcd_service(env, h), env.ssh(h, "sha256sum /etc/etcd/*.pem /etc/systemd/system/etcd.service; "
                                                        "stat -c '%n %i %Y' /etc/etcd/* /etc/systemd/system/etcd.service"))
              for h in env.hosts}
    res, doc = deploy_etcd(env)
    assert res.exit_code == 0, res.output
    assert all(h["outcome"] == "up to date" and not h["restarted"] and h["files_changed"] == []
               for h in doc["hosts"])
    after = {h.name: (etcd_service(env, h), env.ssh(h, "sha256sum /etc/etcd/*.pem /etc/systemd/system/etcd.service; "
                                                       "stat -c '%n %i %Y' /etc/etcd/* /etc/systemd/system/etcd.service"))
             for h in env.hosts}
    assert after == before


class QuorumSampler:
    """`etcdctl endpoint health --cluster` in a loop on a member (every ~0.1 s, at most
    SAMPLE_BOUND_S, until told to stop): how many members answered healthy at each sample."""

    STOP = "/run/k8sboot-test-stop-sampling"

    def __init__(self, env: LabEnv, host):
        from k8sboot.lab import plan as labplan

        self.env, self.host = env, host
        script = (f"rm -f {self.STOP}; end=$(( $(date +%s) + {SAMPLE_BOUND_S} )); "
                  f"while [ $(date +%s) -lt $end ] && [ ! -e {self.STOP} ]; do echo @@sample; "
                  f"{etcdctl(env)} endpoint health --cluster 2>&1; sleep 0.1; done; echo @@end")
        self.argv = labplan.ssh_argv(host.address, script, timeout=10)
        self.out = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        r = subprocess.run(self.argv, capture_output=True, text=True, timeout=SAMPLE_BOUND_S + 30)
        self.out = r.stdout

    def __enter__(self):
        self.thread.start()
        time.sleep(1.0)          # a few samples before the change
        return self

    def __exit__(self, *exc):
        time.sleep(1.0)          # and a few after
        self.env.ssh(self.host, f"touch {self.STOP}")
        self.thread.join(SAMPLE_BOUND_S + 40)

    def samples(self) -> list[str]:
        return [chunk for chunk in self.out.split("@@end")[0].split("@@sample")[1:] if chunk.strip()]

    def healthy_counts(self) -> list[int]:
        """Healthy members per sample that reported on every member (a sample whose member list
        call itself failed reports none: it says nothing about quorum, and is counted apart)."""
        n = len(self.env.hosts)
        return [c.count("is healthy") for c in self.samples()
                if c.count("is healthy") + c.count("is unhealthy") >= n]


def test_a_flag_change_rolls_one_member_at_a_time_and_quorum_holds_at_every_sample(env):
    changed = etcd_inventory(env, "etcd-heartbeat.yaml", {"heartbeat-interval": 150, "election-timeout": 1500})
    before = {h.name: etcd_service(env, h) for h in env.hosts}
    with QuorumSampler(env, env.hosts[0]) as sampler:
        res, doc = deploy_etcd(env, changed)
    assert res.exit_code == 0, res.output
    assert doc["strategy"] == "rolling" and doc["waves"] == [[h.name] for h in env.hosts], doc
    results = by_host(doc)
    for i, host in enumerate(env.hosts):
        r = results[host.name]
        assert r["outcome"] == "deployed" and r["restarted"] and r["wave"] == i + 1
        assert r["pid_after"] != r["pid_before"] and r["ready_seconds"] is not None
    after = {h.name: etcd_service(env, h) for h in env.hosts}
    # one at a time, in order: each member (re)started after the previous one was back
    starts = [int(after[h.name]["ActiveEnterTimestampMonotonic"]) for h in env.hosts]
    assert starts == sorted(starts) and all(starts[i] > int(before[h.name]["ActiveEnterTimestampMonotonic"])
                                            for i, h in enumerate(env.hosts))
    counts = sampler.healthy_counts()
    assert len(counts) >= 5 and len(counts) >= len(sampler.samples()) // 2, sampler.out[-3000:]
    assert min(counts) >= 2, f"quorum lost at some sample: {counts}\n{sampler.out[-3000:]}"
    for host in env.hosts:
        unit = env.ssh(host, "cat /etc/systemd/system/etcd.service")
        assert "--heartbeat-interval=150" in unit and "--initial-cluster-state=new" in unit
    health = env.ssh(env.hosts[0], f"{etcdctl(env)} endpoint health --cluster 2>&1")
    assert health.count("is healthy") == 3, health


def test_deploy_apiserver_with_its_etcd_client_flags_still_deploys_and_serves(env):
    res, doc = env.deploy()
    assert res.exit_code == 0, res.output
    assert doc["ok"] and all(h["outcome"] == "deployed" for h in doc["hosts"])
    for host in env.hosts:
        unit = env.ssh(host, "cat /etc/systemd/system/kube-apiserver.service")
        assert "--etcd-cafile=/var/lib/kubernetes/etcd-ca.pem" in unit
        assert "--etcd-certfile=/var/lib/kubernetes/apiserver-etcd-client.pem" in unit
        assert "--etcd-keyfile=/var/lib/kubernetes/apiserver-etcd-client-key.pem" in unit
        files = env.ssh(host, "stat -c '%n %a' /var/lib/kubernetes/etcd-ca.pem "
                              "/var/lib/kubernetes/apiserver-etcd-client.pem "
                              "/var/lib/kubernetes/apiserver-etcd-client-key.pem").split()
        assert files[1::2] == ["644", "644", "600"]
        assert env.service(host)["ActiveState"] == "active"
        # the API server's etcd client cert is one etcd accepts (verified on the host by etcdctl)
        out = env.ssh(host, f"ETCDCTL_API=3 etcdctl --endpoints=https://{host.address}:2379 "
                            "--cacert=/var/lib/kubernetes/etcd-ca.pem --cert=/var/lib/kubernetes/apiserver-etcd-client.pem "
                            "--key=/var/lib/kubernetes/apiserver-etcd-client-key.pem endpoint health 2>&1")
        assert "is healthy" in out, out


def kubectl(env: LabEnv, host, *args: str) -> subprocess.CompletedProcess:
    """Real kubectl as admin against `host`'s API server (a kubeconfig from `k8sboot kubeconfig`)."""
    config = env.tmp / f"admin-{host.name}.kubeconfig"
    if not config.exists():
        res = env.k8sboot("kubeconfig", "admin", "-i", env.inventory, "--out", config,
                          "--server", f"https://{host.address}:6443")
        assert res.exit_code == 0, res.output
    return subprocess.run(["kubectl", "--kubeconfig", str(config), *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(env.tmp)})


def test_objects_are_in_etcd_shared_by_every_api_server_and_survive_a_restart_of_all_of_them(env):
    c0, c1, c2 = env.hosts
    made = kubectl(env, c0, "create", "namespace", "survivor", "-o", "jsonpath={.metadata.uid}")
    assert made.returncode == 0, made.stderr
    uid = made.stdout.strip()
    # under upstream's key, read by etcdctl on a member
    stored = env.ssh(c1, f"{etcdctl(env)} get /registry/namespaces/survivor --print-value-only")
    assert json.loads(stored)["metadata"]["uid"] == uid
    # every API server reads the same etcd
    seen = kubectl(env, c2, "get", "namespace", "survivor", "-o", "jsonpath={.metadata.uid}")
    assert seen.returncode == 0 and seen.stdout.strip() == uid, seen.stderr

    def stop(h):
        env.ssh(h, "systemctl stop kube-apiserver.service etcd.service")

    def start(h):
        env.ssh(h, "systemctl start --no-block etcd.service && systemctl start kube-apiserver.service")

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(stop, env.hosts))
        assert all(env.service(h)["ActiveState"] == "inactive" for h in env.hosts)
        list(pool.map(start, env.hosts))
    for h in env.hosts:
        code, body = env.wait_api(h)
        assert code == 200, (h.name, code, body)
    again = kubectl(env, c2, "get", "namespace", "survivor", "-o", "jsonpath={.metadata.uid}")
    assert again.returncode == 0 and again.stdout.strip() == uid, again.stderr
    assert kubectl(env, c0, "delete", "namespace", "survivor").returncode == 0


def test_a_wrong_etcd_cafile_leaves_the_first_api_server_unready_and_the_roll_stops_there(env):
    """KTHW's layout named ca.pem (the cluster CA) as --etcd-cafile; with etcd's own CA that is a
    CA that does not sign etcd's serving cert. The API server starts, cannot read etcd, never
    turns ready: the rolling deploy stops at its first host and leaves the others serving."""
    c0, c1, c2 = env.hosts
    wrong = env.write_inventory(env.tmp / "wrong-etcd-ca.yaml",
                                extra_flags={"etcd-cafile": "/var/lib/kubernetes/ca.pem"})
    before = {h.name: env.service(h)["MainPID"] for h in (c1, c2)}
    res, doc = env.deploy("--wait", "10", "--ready-timeout", "12", inventory=wrong)
    assert res.exit_code == ExitCode.DEPLOY, res.output
    assert doc["strategy"] == "rolling" and doc["stopped_by"] == c0.name, doc
    outcome = {h["host"]: h["outcome"] for h in doc["hosts"]}
    assert outcome == {c0.name: "failed", c1.name: "not reached", c2.name: "not reached"}, outcome
    # it never read etcd, so it has no RBAC policy and denies the gate's health identity, as a
    # real kube-apiserver's empty informer caches do; the gate's line says what that means
    failed = by_host(doc)[c0.name]
    assert "HTTP 403: the API server denies the health identity" in failed["message"], failed["message"]
    assert "etcd" in failed["message"]
    assert {h.name: env.service(h)["MainPID"] for h in (c1, c2)} == before        # not touched
    code, body = env.api(c0, "/readyz?verbose")           # admin, system:masters: the real reason
    assert code == 500 and "[-]etcd failed: reason withheld" in body.splitlines()
    for h in (c1, c2):
        assert env.api(h, "/readyz")[0] == 200
    # the right CA back: converges
    res, doc = env.deploy()
    assert res.exit_code == 0, res.output
    assert env.wait_api(c0)[0] == 200
