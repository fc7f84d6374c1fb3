"""Day-2 changes on real lab hosts behind the lab's HAProxy (lb-0): rolling, health-gated restarts.

The lab runs 3 (then 5) controllers with the stand-in taking 2 s to become ready after each start
(`lab up --apiserver-ready-delay 2`, a lab-only drop-in) and draining 3 s on SIGTERM (the
inventory's `shutdown_delay_duration: 3`). While a change is deployed, a bounded client loop asks
the API through the load balancer every 50 ms and a prober asks every controller's /readyz every
50 ms: availability is the result asserted. The module puts the lab back to 3 controllers, no
load balancer and no ready delay when it ends.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.client import HTTPSConnection
from pathlib import Path

import pytest

from k8sboot import layout

LB = "10.240.0.5"
READY_DELAY = "2"
INVENTORY = """\
cluster:
  name: k8sboot-rolling-test
  api_endpoint: https://{lb}:6443
  service_cidr: 10.32.0.0/24
  service_account_issuer: https://{first}:6443
pki:
  dir: {pki}
  subject: {{C: VN, OU: k8sboot-rolling-test}}
apiserver:
  anonymous_auth: {anonymous}
  etcd_servers: [{etcd}]          # the three members deploy-etcd runs on controller-0..2
  shutdown_delay_duration: 3
ssh:
  user: root
  identity_file: {key}
  known_hosts: {known_hosts}
  connect_timeout: 5
controllers:
{controllers}load_balancers:
  - {{name: lb-0, address: {lb}, internal_ip: {lb}}}
"""


class Env:
    def __init__(self, tools, tmp: Path, up: dict):
        from k8sboot.lab import plan as labplan

        self.tools, self.tmp = tools, tmp
        self.pki = tmp / "pki"
        self.key, self.known_hosts = labplan.CLIENT_KEY, labplan.KNOWN_HOSTS
        self.all = [h for h in up["hosts"] if h["role"] == "controller"]

    def inventory(self, n: int, anonymous: bool = False) -> Path:
        path = self.tmp / f"rolling-{n}-{str(anonymous).lower()}.yaml"
        controllers = "".join(f"  - {{name: {h['name']}, address: {h['address']}, internal_ip: {h['address']}}}\n"
                              for h in self.all[:n])
        etcd = ", ".join(f"https://{h['address']}:2379" for h in self.all[:3])
        path.write_text(INVENTORY.format(lb=LB, first=self.all[0]["address"], etcd=etcd, pki=self.pki,
                                         anonymous=str(anonymous).lower(), key=self.key,
                                         known_hosts=self.known_hosts, controllers=controllers))
        return path

    def k8sboot(self, *args, check=True):
        return self.tools.k8sboot(*map(str, args), check=check, cwd=self.tmp)

    def deploy(self, inventory: Path, *args, check=True) -> dict:
        r = self.k8sboot("deploy-apiserver", "-i", inventory, "--json", "--wait", "30", *args, check=check)
        doc = json.loads(r.stdout)
        doc["_stderr"], doc["_rc"] = r.stderr, r.returncode
        return doc

    def ssh(self, address: str, command: str) -> str:
        import subprocess

        from k8sboot.lab import plan as labplan

        r = subprocess.run(labplan.ssh_argv(address, command), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{address}: {command}: {r.stderr}"
        return r.stdout


def _context(pki: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / f"{name}.pem"), str(pki / f"{name}-key.pem"))
    return ctx


def _get(ctx, address: str, path: str, timeout: float = 2.0) -> int | None:
    try:
        conn = HTTPSConnection(address, 6443, context=ctx, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()
    except (OSError, ssl.SSLError, Exception):  # noqa: BLE001 - any failure is a failed request
        return None


class Watch:
    """A client loop through the LB (GET /version, admin cert, new connection each time; a 429 is
    retried as client-go does) and a prober of every controller's /readyz, every 50 ms, bounded."""

    def __init__(self, env: Env, controllers: list[str], limit_s: float = 240.0):
        self.ctx_admin = _context(env.pki, "admin")
        self.ctx_health = _context(env.pki, layout.HEALTH_CLIENT)
        self.controllers = controllers
        self.stop = threading.Event()
        self.requests: list[int | None] = []
        self.retried = 0
        self.samples: list[tuple[float, int]] = []      # (time, ready controllers)
        self.limit_s = limit_s

    def _client(self):
        t_end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < t_end and len(self.requests) < 6000:
            status = _get(self.ctx_admin, LB, "/version")
            if status == 429:
                self.retried += 1
                time.sleep(0.05)
                status = _get(self.ctx_admin, LB, "/version")
            self.requests.append(status)
            time.sleep(0.05)

    def _prober(self):
        t_end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < t_end and len(self.samples) < 6000:
            ready = sum(_get(self.ctx_health, a, "/readyz", timeout=1.0) == 200 for a in self.controllers)
            self.samples.append((time.monotonic(), ready))
            time.sleep(0.05)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._client, daemon=True),
                        threading.Thread(target=self._prober, daemon=True)]
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.stop.set()
        for t in self.threads:
            t.join(10)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.requests if s is None or not 200 <= s < 300)

    @property
    def min_ready(self) -> int:
        return min(n for _, n in self.samples)


def wait_lb_serving(env: Env, n: int, timeout: float = 30) -> None:
    """Until every backend is up in HAProxy's view: /version through the LB answers, and each
    controller's /readyz has been 200 for longer than HAProxy's rise (2 checks)."""
    ctx = _context(env.pki, "admin")
    deadline = time.monotonic() + timeout
    while _get(ctx, LB, "/version") != 200:
        assert time.monotonic() < deadline, "the load balancer does not serve the API"
        time.sleep(0.2)
    time.sleep(3)


@pytest.fixture(scope="module")
def env(lab_hosts, lab_tools, lab_inventory, tmp_path_factory):
    up = lab_tools.lab_up(lab_inventory, controllers=5, ready_delay=float(READY_DELAY), wait=900)
    e = Env(lab_tools, tmp_path_factory.mktemp("rolling"), up)
    try:
        inv = e.inventory(3)
        e.k8sboot("gen-certs", "-i", inv)
        e.k8sboot("deploy-etcd", "-i", inv, "--wait", "60")      # members on controller-0..2 only
        first = e.deploy(inv)
        assert first["ok"] and first["strategy"] == "parallel", first    # nothing served yet
        e.k8sboot("deploy-lb", "-i", inv)
        wait_lb_serving(e, 3)
        yield e
    finally:
        lab_tools.lab_up(lab_inventory, wait=900)      # the session's shape: 3 controllers, lb-0, no ready delay


def test_rolling_flag_change_behind_the_lb_fails_no_request_and_keeps_n_minus_1_ready(env):
    inv = env.inventory(3, anonymous=True)
    names = [h["address"] for h in env.all[:3]]
    with Watch(env, names) as w:
        doc = env.deploy(inv)
    assert doc["ok"] and doc["strategy"] == "rolling", doc
    assert doc["waves"] == [[h["name"]] for h in env.all[:3]]
    assert all(h["restarted"] and h["pid_after"] != h["pid_before"] for h in doc["hosts"])
    assert len(w.requests) > 40, "the client loop did not run through the deploy"
    assert w.failed == 0, f"{w.failed} of {len(w.requests)} requests through the LB failed"
    assert w.min_ready >= 2, f"at some sample only {w.min_ready} of 3 controllers were ready"
    # the gate waited for the ready delay of each new process
    assert all(h["ready_seconds"] is not None and h["ready_seconds"] >= 1.5 for h in doc["hosts"])
    env.k8sboot("verify", "-i", inv)      # converged: no drift


def test_the_same_change_in_parallel_takes_the_api_down(env):
    inv = env.inventory(3, anonymous=False)
    wait_lb_serving(env, 3)
    with Watch(env, [h["address"] for h in env.all[:3]]) as w:
        doc = env.deploy(inv, "--strategy", "parallel")
    assert doc["ok"] and doc["waves"] == [], doc
    assert "unavailable" in doc["_stderr"]           # said before acting
    assert w.min_ready == 0, "no sample saw every controller unready at once"
    assert w.failed > 0, "no request through the LB failed during a parallel restart"


def test_a_failing_second_host_stops_the_roll_and_rollback_restores_it(env):
    inv_old = env.inventory(3, anonymous=False)
    inv_new = env.inventory(3, anonymous=True)
    wait_lb_serving(env, 3)
    c0, c1, c2 = env.all[:3]
    launcher = "/usr/local/bin/kube-apiserver"
    env.ssh(c1["address"], f"cp -p {launcher} /root/kube-apiserver.orig && sed -i 's/^import os, sys$/import os, sys\\n"
                           "if \"--anonymous-auth=true\" in sys.argv: sys.stderr.write(\"injected start failure\\\\n\"); "
                           f"os._exit(1)/' {launcher}")
    try:
        def state(h):
            return env.ssh(h["address"], "sha256sum /var/lib/kubernetes/* /etc/systemd/system/kube-apiserver.service; "
                                         "systemctl show -p MainPID kube-apiserver.service; "
                                         "ls -a /var/lib/kubernetes /etc/systemd/system | grep k8sboot || true")
        before = state(c2)
        # with --rollback-on-failure: the failed host goes back to the old set, ready again
        doc = env.deploy(inv_new, "--rollback-on-failure", check=False)
        assert doc["_rc"] == 9 and not doc["ok"]
        outcome = {h["host"]: h["outcome"] for h in doc["hosts"]}
        assert outcome == {c0["name"]: "deployed", c1["name"]: "rolled back", c2["name"]: "not reached"}, outcome
        assert doc["stopped_by"] == c1["name"]
        assert doc["sets"] == {"new": [c0["name"]], "old": [c2["name"]], "rolled back": [c1["name"]], "failed": []}
        assert "ready again" in next(h for h in doc["hosts"] if h["host"] == c1["name"])["message"]
        assert state(c2) == before, "the host after the failure changed"
        assert "--anonymous-auth=false" in env.ssh(c1["address"], "cat /etc/systemd/system/kube-apiserver.service")
        assert _get(_context(env.pki, layout.HEALTH_CLIENT), c1["address"], "/readyz") == 200

        # without it: the failed host keeps the new set (crashing, journal shown), the next is not reached
        doc = env.deploy(inv_new, check=False)
        assert doc["_rc"] == 9
        outcome = {h["host"]: h["outcome"] for h in doc["hosts"]}
        assert outcome == {c0["name"]: "up to date", c1["name"]: "failed", c2["name"]: "not reached"}, outcome
        failed = next(h for h in doc["hosts"] if h["host"] == c1["name"])
        assert any("injected start failure" in line for line in failed["journal"]), failed["journal"]
        assert state(c2) == before
    finally:
        env.ssh(c1["address"], f"mv -f /root/kube-apiserver.orig {launcher}")
    doc = env.deploy(inv_new)          # after the fix: converges, resuming where it stopped
    outcome = {h["host"]: h["outcome"] for h in doc["hosts"]}
    assert outcome == {c0["name"]: "up to date", c1["name"]: "deployed", c2["name"]: "deployed"}, outcome
    env.deploy(inv_old)


def test_max_unavailable_2_on_5_hosts_never_has_more_than_2_unready(env):
    inv5 = env.inventory(5, anonymous=False)
    env.k8sboot("gen-certs", "-i", inv5)      # kubernetes.pem gains the two new controllers' SANs
    # so do etcd's serving and peer certs: the three members roll onto them (quorum kept)
    env.k8sboot("deploy-etcd", "-i", env.inventory(3), "--wait", "60")
    env.deploy(inv5)     # 3 and 4 get their first deploy at once; 0-2 roll onto the reissued serving cert
    addresses = [h["address"] for h in env.all[:5]]
    with Watch(env, addresses) as w:
        doc = env.deploy(env.inventory(5, anonymous=True), "--max-unavailable", "2")
    assert doc["ok"] and doc["waves"] == [[h["name"] for h in env.all[i:i + 2]] for i in (0, 2, 4)], doc
    assert w.min_ready >= 3, f"at some sample {5 - w.min_ready} of 5 controllers were unready"
    env.deploy(inv5)


def test_lb_config_is_checked_and_a_second_deploy_lb_changes_nothing(env):
    inv = env.inventory(3)
    r = env.k8sboot("deploy-lb", "-i", inv, "--json")
    doc = json.loads(r.stdout)
    assert [h["outcome"] for h in doc["hosts"]] == ["up to date"], doc
    cfg = env.ssh(LB, f"haproxy -c -f {layout.LB_CONFIG_PATH} && cat {layout.LB_CONFIG_PATH}")
    for h in env.all[:3]:
        assert f"{h['address']}:6443" in cfg


def test_verify_reports_a_backend_stopped_by_hand_and_a_deploy_brings_it_back(env):
    inv = env.inventory(3)
    c2 = env.all[2]
    env.ssh(c2["address"], "systemctl stop kube-apiserver")
    try:
        deadline = time.monotonic() + 30
        while True:
            r = env.k8sboot("verify", "-i", inv, "--json", check=False)
            doc = json.loads(r.stdout)
            lb = next(h for h in doc["hosts"] if h["host"] == "lb-0")
            backend = next(c for c in lb["checks"] if c["check"] == f"backend {c2['name']}")
            if backend["status"] == "DRIFT" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.returncode == 10 and lb["kind"] == "load balancer"
        assert backend["status"] == "DRIFT" and backend["detail"].startswith("DOWN"), backend
        others = [c for c in lb["checks"] if c["check"].startswith("backend") and c is not backend]
        assert others and all(c["status"] == "OK" for c in others)
    finally:
        doc = env.deploy(inv)                     # the stopped unit is started again
    assert {h["host"]: h["outcome"] for h in doc["hosts"]}[c2["name"]] == "deployed"
    wait_lb_serving(env, 3)
    env.k8sboot("verify", "-i", inv)              # and the LB sees every backend up again
