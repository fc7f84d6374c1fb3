"""`certs renew kubernetes` + `deploy-apiserver` on real lab hosts behind the lab's HAProxy (lb-0):
the serving cert is replaced with no restart at all, every controller presents the new one within
seconds (the lab's stand-in re-reads it every 2 s, k8sboot/lab/plan.py RELOAD_INTERVAL_DROPIN),
`verify` proves the pick-up, and clients through the load balancer see no failure.

The three controllers get fresh roots at the start and at the end (`host.reset()`), lb-0 too at
the end (its HAProxy config is this module's).
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.client import HTTPSConnection
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import fresh_lab_env, reset_hosts, wait_until_lb_serves  # noqa: E402

from k8sboot import layout  # noqa: E402

LB = "10.240.0.5"
PICKUP_TIMEOUT = 20.0          # the lab re-reads every 2 s; generous for a loaded machine


def presented_der(address: str, ca: Path | None = None) -> bytes:
    """The certificate a fresh TLS handshake with `address`:6443 gets; verified against `ca` (and
    the address) when given."""
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((address, 6443), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=address) as tls:
            return tls.getpeercert(binary_form=True)


def pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Clients:
    """Two bounded client loops through the load balancer: HTTPS GET /version with the admin cert
    on a new connection every 50 ms (the CA checked), and the real `kubectl get --raw /version`
    with an admin kubeconfig, back to back."""

    def __init__(self, pki: Path, kubeconfig: Path, limit_s: float = 180.0):
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        self.ctx.load_cert_chain(str(pki / "admin.pem"), str(pki / "admin-key.pem"))
        self.kubeconfig = kubeconfig
        self.limit_s = limit_s
        self.stop = threading.Event()
        self.https: list[str | int] = []
        self.kubectl: list[str | int] = []

    def _https(self):
        t_end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < t_end and len(self.https) < 5000:
            try:
                conn = HTTPSConnection(LB, 6443, context=self.ctx, timeout=5)
                try:
                    conn.request("GET", "/version")
                    self.https.append(conn.getresponse().status)
                finally:
                    conn.close()
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.https.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    def _kubectl(self):
        t_end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < t_end and len(self.kubectl) < 1000:
            r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), "--request-timeout=5s",
                                "get", "--raw", "/version"], capture_output=True, text=True, timeout=30)
            self.kubectl.append(0 if r.returncode == 0 and '"gitVersion"' in r.stdout else r.stderr.strip()[:200])

    def __enter__(self):
        self.threads = [threading.Thread(target=self._https, daemon=True),
                        threading.Thread(target=self._kubectl, daemon=True)]
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.stop.set()
        for t in self.threads:
            t.join(40)

    def failures(self) -> list:
        return [s for s in self.https if s != 200] + [s for s in self.kubectl if s != 0]


@pytest.fixture(scope="module")
def env(lab_hosts, lab_lb, tmp_path_factory):
    e = fresh_lab_env(lab_hosts, tmp_path_factory, "renew")
    try:
        # the env's inventory, with lb-0 in front: api_endpoint = the LB, which the serving cert names
        text = e.inventory.read_text().replace(f"api_endpoint: https://{e.hosts[0].address}:6443",
                                                f"api_endpoint: https://{LB}:6443")
        e.inventory = e.tmp / "lab-renew.yaml"
        e.inventory.write_text(text + f"load_balancers:\n  - {{name: lb-0, address: {LB}, internal_ip: {LB}}}\n")
        e.gen_certs()
        res, doc = e.deploy()
        assert res.exit_code == 0 and doc["ok"], res.output
        res = e.k8sboot("deploy-lb", "-i", e.inventory)
        assert res.exit_code == 0, res.output
        e.kubeconfig = e.tmp / "admin.kubeconfig"
        res = e.k8sboot("kubeconfig", "admin", "-i", e.inventory, "--out", e.kubeconfig)
        assert res.exit_code == 0, res.output
        wait_until_lb_serves(e.pki, LB, timeout=30)
        yield e
    finally:
        reset_hosts(e)
        lab_lb.host.reset()


def service(env, host) -> dict:
    out = env.ssh(host, f"systemctl show -p MainPID,NRestarts,ActiveEnterTimestampMonotonic,ActiveState "
                        f"{layout.UNIT_NAME}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_renewed_serving_cert_is_deployed_with_no_restart_presented_within_seconds_and_no_client_fails(env):
    before = {h.name: service(env, h) for h in env.hosts}
    old_der = pem_der(env.pki / "kubernetes.pem")
    assert all(presented_der(h.address) == old_der for h in env.hosts)

    with Clients(env.pki, env.kubeconfig) as clients:
        res = env.k8sboot("certs", "renew", "kubernetes", "-i", env.inventory, "--json")
        assert res.exit_code == 0, res.output
        renewed = json.loads(res.stdout)
        assert [r["name"] for r in renewed["renewed"]] == ["kubernetes"]
        assert renewed["next"] == [f"k8sboot deploy-apiserver -i {env.inventory}"]
        new_der = pem_der(env.pki / "kubernetes.pem")
        assert new_der != old_der

        res, doc = env.deploy()
        assert res.exit_code == 0 and doc["ok"], res.output
        t_deployed = time.monotonic()
        # every host got the new pair and was not restarted
        assert {h["host"]: (h["outcome"], h["restarted"]) for h in doc["hosts"]} == \
            {h.name: ("deployed", False) for h in env.hosts}, doc
        assert all(h["pid_after"] == 0 for h in doc["hosts"]), doc

        seen: dict[str, float] = {}
        while len(seen) < len(env.hosts):
            for h in env.hosts:
                if h.name not in seen and presented_der(h.address) == new_der:
                    seen[h.name] = time.monotonic() - t_deployed
            assert time.monotonic() - t_deployed < PICKUP_TIMEOUT, \
                f"not presenting the renewed cert {PICKUP_TIMEOUT} s after the deploy: " \
                f"{sorted(set(h.name for h in env.hosts) - set(seen))}"
            time.sleep(0.2)
        time.sleep(1)                       # a few requests on the new cert too

    # the same process, never restarted, on every controller
    after = {h.name: service(env, h) for h in env.hosts}
    assert after == before, (before, after)
    assert all(s["ActiveState"] == "active" and s["MainPID"] != "0" for s in after.values())

    # the new cert, verified against the same CA for the address clients dial
    for h in env.hosts:
        assert presented_der(h.address, ca=env.pki / "ca.pem") == new_der
        out = subprocess.run(["openssl", "s_client", "-connect", f"{h.address}:6443", "-CAfile",
                              str(env.pki / "ca.pem"), "-verify_return_error"], input="", capture_output=True,
                             text=True, timeout=30)
        assert "Verify return code: 0 (ok)" in out.stdout, out.stdout[-2000:]
        pem = out.stdout[out.stdout.index("-----BEGIN CERTIFICATE-----"):
                         out.stdout.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        assert sha256(ssl.PEM_cert_to_DER_cert(pem)) == sha256(new_der), h.name
        assert "Loaded a new cert/key pair" in env.ssh(h, f"journalctl -u {layout.UNIT_NAME} --no-pager -o cat")

    assert len(clients.https) > 20 and len(clients.kubectl) > 3, (len(clients.https), len(clients.kubectl))
    assert clients.failures() == [], f"{len(clients.failures())} failed client requests: {clients.failures()[:5]}"

    # verify proves the pick-up and sees no drift
    res = env.k8sboot("verify", "-i", env.inventory, "--json")
    report = json.loads(res.stdout)
    drift = [(h["host"], c["check"], c["detail"]) for h in report["hosts"] for c in h["checks"]
             if c["status"] not in ("OK", "SKIP", "INFO")]
    assert res.exit_code == 0 and drift == [], drift
    fp = ":".join(f"{b:02X}" for b in hashlib.sha256(new_der).digest())
    for h in (h for h in report["hosts"] if h["kind"] == "controller"):
        checks = {c["check"]: c for c in h["checks"]}
        assert checks["serving cert presented"]["status"] == "OK" and checks["serving cert presented"]["actual"] == fp
        assert checks["client cert from pki/ca.pem accepted"]["status"] == "OK"

    # a second deploy changes nothing
    res, doc = env.deploy()
    assert res.exit_code == 0 and all(h["outcome"] == "up to date" for h in doc["hosts"]), doc


def test_verify_reports_a_serving_cert_the_server_has_not_re_read(env):
    """The host's kubernetes.pem is the local one, but the running server presents another: a
    server that never re-reads (here: its pair made unreadable for it, then the file put back with
    an old mtime, as the server last saw it) is drift with the reason."""
    c0 = env.hosts[0]
    presented = presented_der(c0.address)
    res = env.k8sboot("certs", "renew", "kubernetes", "-i", env.inventory)
    assert res.exit_code == 0, res.output
    try:
        # the host gets the new pair with the key that does not match yet: the server keeps the old one
        for name in ("kubernetes.pem",):
            data = (env.pki / name).read_text()
            env.ssh(c0, f"cat > {layout.REMOTE_PKI_DIR}/{name}.new <<'EOF'\n{data}EOF\n"
                        f"chmod 644 {layout.REMOTE_PKI_DIR}/{name}.new && "
                        f"mv -f {layout.REMOTE_PKI_DIR}/{name}.new {layout.REMOTE_PKI_DIR}/{name} && "
                        f"touch -d '10 minutes ago' {layout.REMOTE_PKI_DIR}/{name}")
        time.sleep(5)                                   # two reload periods: the pair does not load
        assert presented_der(c0.address) == presented
        res = env.k8sboot("verify", "-i", env.inventory, "--host", c0.name, "--json")
        checks = {c["check"]: c for c in json.loads(res.stdout)["hosts"][0]["checks"]}
        serving = checks["serving cert presented"]
        assert serving["status"] == "DRIFT", serving
        assert "the server presents an old serving cert" in serving["detail"]
        assert "it has not re-read --tls-cert-file" in serving["detail"]
        assert res.exit_code == 10
    finally:
        res, doc = env.deploy()                       # puts the matching key there: picked up, no restart
        assert res.exit_code == 0, res.output
