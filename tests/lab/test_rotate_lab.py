"""Rotations on real lab hosts behind the lab's HAProxy (lb-0): who is accepted after each phase.

Three controllers run the stand-in on etcd (deploy-etcd), lb-0 balances them. Credentials are
real: tokens the API server itself minted (`kubectl create token`, the TokenRequest API) before
and during the rotation, the admin kubeconfig k8sboot wrote. After every phase the table below is
asserted with real `kubectl auth whoami` through the load balancer and with the offline
`k8sboot whoami`, `verify` must be clean, and a client loop that ran through the phase's rolling
deploy must have seen zero failed requests. The loop mints a token through the LB and uses it at
once through the LB, the case a two-phase rotation would break (a token minted by a restarted
server, presented to one not restarted yet).

Expected answers (kube-apiserver reference, --service-account-key-file / -signing-key-file /
--service-account-issuer; "the first is used to generate tokens and all are used to determine
which issuers are accepted"):

    service-account-key       before  start  switch  finish(--force)
    token minted before       ok      ok     ok      401
    token minted after start  -       ok     ok      401   (still signed with the old key)
    token minted after switch -       -      ok      ok
    admin kubeconfig          ok      ok     ok      ok

    issuer                    before  start  switch  finish(--force)
    token minted before       ok      ok     ok      401   (iss and aud: the old issuer)
    token minted after switch -       -      ok      ok    (iss: new; aud: both issuers)
"""

from __future__ import annotations

import json
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from http.client import HTTPSConnection
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import BackgroundLoop  # noqa: E402

LB = "10.240.0.5"
INVENTORY = """\
cluster:
  name: k8sboot-rotate-test
  api_endpoint: https://{lb}:6443
  service_cidr: 10.32.0.0/24
  service_account_issuer: {issuer}
pki:
  dir: {pki}
  subject: {{C: VN, OU: k8sboot-rotate-test}}
apiserver:
  shutdown_delay_duration: 3
  service_account_max_token_expiration: 1h
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
        self.all = [h for h in up["hosts"] if h["role"] == "controller"][:3]
        self.first_issuer = f"https://{self.all[0]['address']}:6443"
        self.inv = self.inventory(self.first_issuer)

    def inventory(self, issuer: str) -> Path:
        path = self.tmp / "rotate.yaml"
        controllers = "".join(f"  - {{name: {h['name']}, address: {h['address']}, internal_ip: {h['address']}}}\n"
                              for h in self.all)
        path.write_text(INVENTORY.format(lb=LB, issuer=issuer, pki=self.pki, key=self.key,
                                         known_hosts=self.known_hosts, controllers=controllers))
        return path

    def k8sboot(self, *args, check=True, timeout=600):
        return self.tools.k8sboot(*map(str, args), check=check, cwd=self.tmp, timeout=timeout)

    def rotate(self, *args, check=True) -> dict:
        r = self.k8sboot("rotate", *args, "-i", self.inv, "--yes", "--json", check=check)
        doc = json.loads(r.stdout) if r.stdout.strip() else {}
        doc["_rc"], doc["_stderr"] = r.returncode, r.stderr
        return doc

    def kubectl(self, *args, token: str | None = None) -> subprocess.CompletedProcess:
        if token is None:
            base = ["kubectl", "--kubeconfig", str(self.tmp / "admin.kubeconfig")]
        else:
            base = ["kubectl", "--kubeconfig=/dev/null", f"--server=https://{LB}:6443",
                    f"--certificate-authority={self.pki / 'ca.pem'}", f"--token={token}"]
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                              env=self.tools.clean_env())

    def mint(self) -> str:
        r = self.kubectl("create", "token", "bot", "--duration", "1h")
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def whoami(self, token: str) -> str:
        """`kubectl auth whoami` through the LB: the username, or '401' for Unauthorized."""
        r = self.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", token=token)
        if r.returncode == 0:
            return r.stdout.strip()
        assert "Unauthorized" in r.stderr, r.stderr       # a 401, nothing else (no TLS error, no 5xx)
        return "401"

    def offline(self, token: str) -> str:
        """The offline `k8sboot whoami --token`: the username, or '401' (exit 11)."""
        r = self.k8sboot("whoami", "--token", token, "-i", self.inv, "--json", check=False)
        if r.returncode == 11:
            return "401"
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["status"]["userInfo"]["username"]

    def pids(self) -> dict[str, str]:
        from k8sboot.lab import plan as labplan

        out = {}
        for h in self.all:
            r = subprocess.run(labplan.ssh_argv(h["address"], "systemctl show -p MainPID --value kube-apiserver"),
                               capture_output=True, text=True, timeout=60)
            out[h["name"]] = r.stdout.strip()
        return out

    def ssh(self, host: dict, command: str) -> str:
        from k8sboot.lab import plan as labplan

        r = subprocess.run(labplan.ssh_argv(host["address"], command), capture_output=True, text=True, timeout=60)
        return r.stdout


def _context(pki: Path, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if name:
        ctx.load_cert_chain(str(pki / f"{name}.pem"), str(pki / f"{name}-key.pem"))
    return ctx


def _request(ctx, method: str, path: str, body: dict | None = None, token: str | None = None):
    try:
        conn = HTTPSConnection(LB, 6443, context=ctx, timeout=5)
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
    except Exception:  # noqa: BLE001 - any failure is a failed request
        return None, b""


REVIEW = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
TOKEN_REQUEST = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}


class Loop(BackgroundLoop):
    """Through the LB, every 100 ms, bounded: mint a token (TokenRequest, admin cert) and present it
    at once (SelfSubjectReview); and present `kept`, a token the table keeps valid. A 429 (a
    server draining) is retried once, as client-go does. `trust`: the CA file the client trusts
    (default pki/ca.pem); `mint=False`: only the kept token (a CA rotation retires the admin cert)."""

    def __init__(self, env: Env, kept: str, limit_s: float = 300.0, trust: Path | None = None, mint: bool = True):
        self.admin, self.anon = _context(env.pki, "admin"), _context(env.pki, None)
        if trust is not None:
            self.anon = ssl.create_default_context(cafile=str(trust))
        self.mint = mint
        self.kept, self.limit_s = kept, limit_s
        self.stop = threading.Event()
        self.join_timeout = 15.0
        self.results: list[tuple[str, int | None]] = []

    def _call(self, *args, **kw):
        status, body = _request(*args, **kw)
        if status == 429:
            time.sleep(0.1)
            status, body = _request(*args, **kw)
        return status, body

    def _run(self):
        t_end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < t_end and len(self.results) < 6000:
            status, body = (self._call(self.admin, "POST", "/api/v1/namespaces/default/serviceaccounts/bot/token",
                                       TOKEN_REQUEST) if self.mint else (None, b""))
            if self.mint:
                self.results.append(("mint", status))
            if status == 201:
                fresh = json.loads(body)["status"]["token"]
                self.results.append(("fresh", self._call(self.anon, "POST", "/apis/authentication.k8s.io/v1/"
                                                         "selfsubjectreviews", REVIEW, token=fresh)[0]))
            self.results.append(("kept", self._call(self.anon, "POST", "/apis/authentication.k8s.io/v1/"
                                                    "selfsubjectreviews", REVIEW, token=self.kept)[0]))
            time.sleep(0.1)

    @property
    def failed(self) -> list[tuple[str, int | None]]:
        return [(what, s) for what, s in self.results if s is None or not 200 <= s < 300]


def wait_lb(env: Env, timeout: float = 30) -> None:
    ctx = _context(env.pki, "admin")
    deadline = time.monotonic() + timeout
    while _request(ctx, "GET", "/version")[0] != 200:
        assert time.monotonic() < deadline, "the load balancer does not serve the API"
        time.sleep(0.2)
    time.sleep(3)          # HAProxy's rise on every backend


@pytest.fixture(scope="module")
def env(lab_hosts, lab_tools, lab_inventory, tmp_path_factory):
    up = lab_tools.lab_up(lab_inventory, wait=900)
    controllers = list(lab_hosts)[:3]
    for h in controllers:          # fresh roots: no etcd or files of another module's PKI
        h.reset()
    e = Env(lab_tools, tmp_path_factory.mktemp("rotate"), up)
    try:
        e.k8sboot("gen-certs", "-i", e.inv)
        e.k8sboot("deploy-etcd", "-i", e.inv, "--wait", "60")
        e.k8sboot("deploy-apiserver", "-i", e.inv, "--wait", "60")
        e.k8sboot("deploy-lb", "-i", e.inv)
        e.k8sboot("kubeconfig", "admin", "-i", e.inv, "--out", e.tmp / "admin.kubeconfig")
        wait_lb(e)
        r = e.kubectl("create", "serviceaccount", "bot")
        assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
        yield e
    finally:
        for h in controllers:      # the next module finds clean roots, not this module's rotated PKI
            h.reset()


def phase(env: Env, kind: str, name: str, kept: str, *extra, trust: Path | None = None, mint: bool = True) -> dict:
    """Run one phase with the client loop through it; assert zero failures and a clean verify."""
    wait_lb(env)
    with Loop(env, kept, trust=trust, mint=mint) as loop:
        doc = env.rotate(kind, name, *extra)
    assert doc["_rc"] == 0, doc["_stderr"]
    assert len(loop.results) > 20, "the client loop did not run through the phase"
    assert loop.failed == [], f"{len(loop.failed)} of {len(loop.results)} requests failed: {loop.failed[:10]}"
    wait_lb(env)
    env.k8sboot("verify", "-i", env.inv)          # exit 0: no drift, every controller in the phase
    return doc


def test_service_account_key_rotation_locks_out_exactly_what_the_table_says(env):
    before = env.mint()
    admin = env.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert admin.stdout == "admin"
    assert env.whoami(before) == env.offline(before) == "system:serviceaccount:default:bot"

    phase(env, "service-account-key", "start", before)
    after_start = env.mint()
    for token in (before, after_start):
        assert env.whoami(token) == env.offline(token) == "system:serviceaccount:default:bot"
    hosts = env.ssh(env.all[0], "ls /var/lib/kubernetes")
    assert "service-account-1.pem" in hosts and "service-account-1-key.pem" in hosts

    # a re-run changes nothing: no host restarted
    pids = env.pids()
    again = env.rotate("service-account-key", "start")
    assert again["_rc"] == 0 and again["resumed"], again
    assert env.pids() == pids

    phase(env, "service-account-key", "switch", before)
    after_switch = env.mint()
    for token in (before, after_start, after_switch):
        assert env.whoami(token) == env.offline(token) == "system:serviceaccount:default:bot"

    # finish before the old tokens can have expired (1 h after the switch): refused, nothing changed
    pids = env.pids()
    early = env.rotate("service-account-key", "finish", check=False)
    assert early["_rc"] == 21 and "finish refused" in early["_stderr"] and "--force" in early["_stderr"]
    assert env.pids() == pids and "phase: switch" in (env.pki / "rotation.yaml").read_text()

    phase(env, "service-account-key", "finish", after_switch, "--force")
    assert env.whoami(before) == env.offline(before) == "401"
    assert env.whoami(after_start) == env.offline(after_start) == "401"
    assert env.whoami(after_switch) == env.offline(after_switch) == "system:serviceaccount:default:bot"
    for h in env.all:
        assert "service-account-1" not in env.ssh(h, "ls -a /var/lib/kubernetes")
    assert not (env.pki / "rotation.yaml").exists()
    assert list((env.pki / "retired").glob("rotation-service-account-key.*.yaml"))
    status = json.loads(env.k8sboot("rotate", "status", "-i", env.inv, "--json").stdout)
    assert status["in_progress"] is None and status["last_finished"]["kind"] == "service-account-key"


def test_issuer_rotation_locks_out_exactly_what_the_table_says(env):
    new_issuer = f"https://{LB}:6443"
    # changing the issuer in the inventory alone is refused before any host changes
    env.inventory(new_issuer)
    refused = env.k8sboot("deploy-apiserver", "-i", env.inv, check=False)
    assert refused.returncode == 21 and "rotate issuer start --to" in refused.stderr, refused.stderr
    env.inventory(env.first_issuer)

    before = env.mint()
    phase(env, "issuer", "start", before, "--to", new_issuer)
    assert env.whoami(before) == env.offline(before) == "system:serviceaccount:default:bot"
    argv = env.ssh(env.all[1], "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value kube-apiserver)/cmdline")
    assert f"--service-account-issuer={env.first_issuer} --service-account-issuer={new_issuer}" in argv

    phase(env, "issuer", "switch", before)
    after_switch = env.mint()
    import jwt

    assert jwt.decode(after_switch, options={"verify_signature": False})["iss"] == new_issuer
    for token in (before, after_switch):
        assert env.whoami(token) == env.offline(token) == "system:serviceaccount:default:bot"

    env.inventory(new_issuer)          # finish needs the inventory to name the new issuer
    phase(env, "issuer", "finish", after_switch, "--force")
    assert env.whoami(before) == env.offline(before) == "401"
    assert env.whoami(after_switch) == env.offline(after_switch) == "system:serviceaccount:default:bot"


def test_a_phase_killed_at_random_moments_resumes_to_the_same_end_state(env):
    """SIGKILL of `rotate service-account-key start` at random moments (local step, deploy), then
    the same command again: the end state is the one an uninterrupted run reaches."""
    seed = int(time.time())
    rng = random.Random(seed)
    for attempt in range(2):
        wait_lb(env)
        proc = subprocess.Popen([env.tools.K8SBOOT, "rotate", "service-account-key", "start", "-i", str(env.inv),
                                 "--yes"], cwd=env.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env.tools.clean_env())
        delay = rng.uniform(0.2, 6.0)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        doc = env.rotate("service-account-key", "start", check=False)
        assert doc["_rc"] == 0, f"seed {seed}, attempt {attempt}, killed after {delay:.2f}s: {doc['_stderr']}"
    journal = (env.pki / "rotation.yaml").read_text()
    assert "phase: start" in journal and "state: deployed" in journal
    env.k8sboot("verify", "-i", env.inv)
    for h in env.all:
        assert "service-account-1.pem" in env.ssh(h, "ls /var/lib/kubernetes")
    # and the rotation carries on to its end from there
    phase(env, "service-account-key", "switch", env.mint())
    phase(env, "service-account-key", "finish", env.mint(), "--force")
    assert env.whoami(env.mint()) == "system:serviceaccount:default:bot"
    for h in env.all:
        assert "service-account-1" not in env.ssh(h, "ls -a /var/lib/kubernetes")


def test_ca_rotation_locks_out_exactly_what_the_table_says_and_leaves_nothing_of_the_old_ca(env):
    """Issue 13's table: K0 (from before: old trust, old cert), K1 (after start: both CAs, old
    cert), K2 (after reissue: both CAs, new cert), an SA token from before (never breaks)."""
    import shutil

    wait_lb(env)
    kube = {k: env.tmp / f"{k}.kubeconfig" for k in ("k0", "k1", "k2")}
    env.k8sboot("kubeconfig", "admin", "-i", env.inv, "--out", kube["k0"])
    token = env.mint()
    old_ca = (env.pki / "ca.pem").read_bytes()
    old_etcd_ca = (env.pki / "etcd-ca.pem").read_bytes()

    def who(k: str) -> str:
        r = subprocess.run(["kubectl", "--kubeconfig", str(kube[k]), "auth", "whoami", "-o",
                            "jsonpath={.status.userInfo.username}"], capture_output=True, text=True, timeout=60,
                           env=env.tools.clean_env())
        if r.returncode == 0:
            return r.stdout.strip()
        if "Unauthorized" in r.stderr:
            return "401"
        assert "x509" in r.stderr or "certificate" in r.stderr, r.stderr
        return "TLS error"

    def offline(k: str) -> str:
        """The offline whoami of the kubeconfig's client cert, against the phase's client CA."""
        import base64

        import yaml

        cert = env.tmp / f"{k}-cert.pem"
        cert.write_bytes(base64.b64decode(yaml.safe_load(kube[k].read_text())["users"][0]["user"]
                                          ["client-certificate-data"]))
        r = env.k8sboot("whoami", "--cert", cert, "-i", env.inv, check=False)
        return "401" if r.returncode == 11 else ("admin" if r.returncode == 0 else f"exit {r.returncode}")

    old_trust = env.tmp / "trust-old.pem"
    old_trust.write_bytes(old_ca)
    phase(env, "ca", "start", token, trust=old_trust, mint=False)
    env.k8sboot("kubeconfig", "admin", "-i", env.inv, "--out", kube["k1"])
    assert (who("k0"), who("k1"), env.whoami(token)) == ("admin", "admin", "system:serviceaccount:default:bot")
    assert (offline("k0"), offline("k1")) == ("admin", "admin")
    both = env.tmp / "trust-both.pem"
    shutil.copy(env.pki / "ca-trust.pem", both)

    reissue = env.rotate("ca", "reissue", "--dry-run")
    locked = " ".join(reissue["breaks"])         # K0, and the fixture's admin.kubeconfig (old trust too)
    assert str(kube["k0"]) in locked and str(env.tmp / "admin.kubeconfig") in locked and str(kube["k1"]) not in locked
    phase(env, "ca", "reissue", token, trust=both, mint=False)
    env.k8sboot("kubeconfig", "admin", "-i", env.inv, "--out", kube["k2"])
    assert (who("k0"), who("k1"), who("k2")) == ("TLS error", "admin", "admin")
    assert env.whoami(token) == "system:serviceaccount:default:bot"
    assert (offline("k1"), offline("k2")) == ("admin", "admin")

    phase(env, "ca", "finish", token, trust=both, mint=False)
    assert (who("k0"), who("k1"), who("k2")) == ("TLS error", "401", "admin")
    assert env.whoami(token) == "system:serviceaccount:default:bot"
    assert (offline("k1"), offline("k2")) == ("401", "admin")
    env.k8sboot("kubeconfig", "admin", "-i", env.inv, "--out", env.tmp / "admin.kubeconfig")   # the new cert

    # every leaf of the local PKI verifies against the new CAs (openssl), none against the old ones
    etcd_leaves = {"etcd-server", "etcd-peer", "apiserver-etcd-client", "etcd-healthcheck-client"}
    leaves = [p for p in env.pki.glob("*.pem") if not p.name.endswith("-key.pem")
              and p.stem not in ("ca", "etcd-ca", "service-account")]
    assert leaves
    for leaf in leaves:
        ca = env.pki / ("etcd-ca.pem" if leaf.stem in etcd_leaves else "ca.pem")
        ok = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(leaf)], capture_output=True, text=True)
        assert ok.returncode == 0, (leaf.name, ok.stdout, ok.stderr)
    # nothing on any host is the old CA or signed by it: every certificate in every PEM file there
    from k8sboot import rotation

    old_fps = {rotation.cert_fingerprint(old_ca), rotation.cert_fingerprint(old_etcd_ca)}
    olds = env.tmp / "olds.pem"
    olds.write_bytes(old_ca + old_etcd_ca)
    hosts = [*env.all, {"address": LB, "name": "lb-0"}]
    for h in hosts:
        listing = env.ssh(h, "for f in /var/lib/kubernetes/*.pem /etc/etcd/*.pem /etc/haproxy/k8sboot/*.pem; do "
                             "[ -f \"$f\" ] && case $f in *-key.pem) ;; *) echo \"== $f\"; cat \"$f\";; esac; done")
        for block in listing.split("== ")[1:]:
            path, _, body = block.partition("\n")
            for pem in rotation.split_pem_certs(body.encode()):
                if b"PRIVATE KEY" in pem:
                    continue
                assert rotation.cert_fingerprint(pem) not in old_fps, f"{h['name']}:{path} holds an old CA"
                one = env.tmp / "one.pem"
                one.write_bytes(pem)
                r = subprocess.run(["openssl", "verify", "-CAfile", str(olds), str(one)], capture_output=True)
                assert r.returncode != 0, f"{h['name']}:{path} holds a cert the old CA signed"
