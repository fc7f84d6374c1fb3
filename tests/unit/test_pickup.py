"""verify's pick-up checks (k8sboot/pickup.py): the serving cert a running server presents and the
client CA it trusts. The judgements table-driven on made-up answers; the probe against the real
stand-in on 127.0.0.1 (a real handshake, a real client cert, a real reload); the wiring through
`verify` with the fakes of deploy_helpers."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/*_helpers.py

from standin_helpers import Running, backends, make_pki  # noqa: E402

from k8sboot import layout  # noqa: E402
from k8sboot import pickup as P  # noqa: E402
from k8sboot.plan import FileFact, HostFacts, ServiceFact  # noqa: E402
from k8sboot.probe import ProbeAnswer  # noqa: E402
from k8sboot.standin.reload import Reloader  # noqa: E402
from k8sboot.verify import pem_fingerprint  # noqa: E402

NOW = 1_800_000_000.0
OLD_DER, NEW_DER = b"old certificate", b"new certificate"
LOCAL_FP = P.fingerprint(NEW_DER)


def der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


# --- pure --------------------------------------------------------------------------------------


def test_fingerprint_is_openssls_sha256_fingerprint_of_the_der(tmp_path):
    make_pki(tmp_path)
    out = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "kubernetes.pem"), "-noout", "-fingerprint",
                          "-sha256"], capture_output=True, text=True, check=True).stdout
    want = out.strip().split("=", 1)[1]
    assert P.fingerprint(der(tmp_path / "kubernetes.pem")) == want
    assert pem_fingerprint((tmp_path / "kubernetes.pem").read_bytes()) == want


def test_mtimes_are_read_from_verifys_started_section_without_the_process_start():
    started = ("start 1799999000.125\n1799999990.500000000 /var/lib/kubernetes/kubernetes.pem\n"
               "1700000000.000000000 /var/lib/kubernetes/ca.pem\ngarbage line\n")
    assert P.parse_mtimes(started) == {"/var/lib/kubernetes/kubernetes.pem": 1799999990.5,
                                       "/var/lib/kubernetes/ca.pem": 1700000000.0}
    assert P.parse_mtimes("") == {}


@pytest.mark.parametrize("presented, host_copy_is_local, age, status, words", [
    (P.Presented(NEW_DER, version="TLSv1.3"), True, 5, "OK", "pki/kubernetes.pem (TLSv1.3)"),
    (P.Presented(NEW_DER), False, 500, "OK", "pki/kubernetes.pem"),     # what it presents is what counts
    (P.Presented(OLD_DER), True, 5, "WARN", "not picked up yet: /var/lib/kubernetes/kubernetes.pem changed 5 s ago"),
    (P.Presented(OLD_DER), True, 89, "WARN", "re-reads --tls-cert-file about every minute"),
    (P.Presented(OLD_DER), True, 91, "DRIFT", "the server presents an old serving cert"),
    (P.Presented(OLD_DER), True, None, "DRIFT", "it has not re-read --tls-cert-file"),
    (P.Presented(OLD_DER), False, 5, "DRIFT", "deploy-apiserver uploads it"),
    (P.Presented(None, "ConnectionRefusedError: [Errno 111] Connection refused"), True, 5, "DRIFT",
     "no TLS handshake: ConnectionRefusedError"),
])
def test_the_presented_serving_cert_is_ok_pending_for_a_reload_period_then_drift(presented, host_copy_is_local, age,
                                                                                status, words):
    mtime = None if age is None else NOW - age
    check = P.check_serving_cert("controller-0", presented, LOCAL_FP, host_copy_is_local, mtime, NOW)
    assert (check.check, check.status) == ("serving cert presented", status)
    assert words in check.detail
    assert check.expected == LOCAL_FP
    if presented.der is not None:
        assert check.actual == P.fingerprint(presented.der)


def test_an_old_serving_cert_says_what_to_do():
    check = P.check_serving_cert("controller-0", P.Presented(OLD_DER), LOCAL_FP, True, NOW - 3600, NOW)
    assert "journalctl -u kube-apiserver" in check.detail and "systemctl restart kube-apiserver" in check.detail
    assert "3600 s ago" in check.detail


def test_without_a_local_serving_cert_there_is_nothing_to_compare():
    assert P.check_serving_cert("c0", P.Presented(OLD_DER), None, False, None, NOW).status == "SKIP"


@pytest.mark.parametrize("answer, ca_age, status, words", [
    (ProbeAnswer(200, "ok"), None, "OK", "HTTP 200 to pki/k8sboot-health.pem: --client-ca-file trusts pki/ca.pem"),
    (ProbeAnswer(403, "{}"), None, "OK", "HTTP 403"),            # authenticated, then forbidden: the CA is trusted
    (ProbeAnswer(401, "{}"), 5, "WARN", "HTTP 401 to pki/k8sboot-health.pem; /var/lib/kubernetes/ca.pem changed 5 s ago"),
    (ProbeAnswer(401, "{}"), 3600, "DRIFT", "does not accept the local CA's client certs"),
    (ProbeAnswer(401, "{}"), None, "DRIFT", "its --client-ca-file holds another CA"),
    (ProbeAnswer(None, error="SSLError: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert"), None, "DRIFT",
     "refused: SSLError"),
    (ProbeAnswer(None, error="TLS verification failed: certificate signature failure"), None, "SKIP",
     "see 'serving cert presented'"),
    (None, None, "SKIP", "no client cert in pki/"),
])
def test_a_client_cert_of_the_local_ca_must_be_authenticated(answer, ca_age, status, words):
    mtime = None if ca_age is None else NOW - ca_age
    check = P.check_client_ca("controller-0", answer, mtime, NOW, identity="pki/k8sboot-health.pem")
    assert (check.check, check.status) == ("client cert from pki/ca.pem accepted", status)
    assert words in check.detail


# --- against the real stand-in ------------------------------------------------------------------


@pytest.fixture
def pkis(tmp_path):
    live, new = tmp_path / "live", tmp_path / "new"
    live.mkdir()
    new.mkdir()
    make_pki(live)
    make_pki(new)
    return live, new


def _facts(live: Path, started: str = "") -> HostFacts:
    data = (live / "kubernetes.pem").read_bytes()
    path = layout.remote_path("kubernetes.pem")
    return HostFacts(files={path: FileFact(path, True, hashlib.sha256(data).hexdigest(), 0o644, "root", "root")},
                     service=ServiceFact(active_state="active"), sections={"started": started})


@pytest.mark.parametrize("backend", backends())
def test_the_probe_reads_the_presented_cert_and_proves_the_client_ca_on_the_stand_in(pkis, backend):
    live, new = pkis
    server = Running(live, backend)
    inventory = SimpleNamespace(pki=SimpleNamespace(dir=str(live)), path="inv.yaml")     # admin: the client cert
    host = SimpleNamespace(name="controller-0", internal_ip="127.0.0.1")
    try:
        presented = P.read_presented("127.0.0.1", server.port, timeout=5)
        assert presented.der == der(live / "kubernetes.pem") and presented.version.startswith("TLS")
        checks = P.probe_host(inventory, host, server.port, _facts(live), {"kubernetes.pem": (live / "kubernetes.pem")
                              .read_bytes()}, timeout=5, now=NOW)
        assert [(c.check, c.status) for c in checks] == [("serving cert presented", "OK"),
                                                         ("client cert from pki/ca.pem accepted", "OK")], checks
        assert "pki/admin.pem" in checks[1].detail

        # a renewed pair on the host: presented once the server has looked again, never before
        started = f"start {NOW - 100:.3f}\n{NOW - 1:.9f} {layout.remote_path('kubernetes.pem')}\n"
        for name in ("kubernetes.pem", "kubernetes-key.pem"):
            shutil.copy(new / name, live / name)
        local = {"kubernetes.pem": (live / "kubernetes.pem").read_bytes()}
        before = P.probe_host(inventory, host, server.port, _facts(live, started), local, timeout=5, now=NOW)
        assert before[0].status == "WARN" and "not picked up yet" in before[0].detail
        late = P.probe_host(inventory, host, server.port, _facts(live, started), local, timeout=5, now=NOW + 600)
        assert late[0].status == "DRIFT" and "has not re-read --tls-cert-file" in late[0].detail
    finally:
        server.stop()


def test_the_probe_after_a_reload_presents_the_new_cert(pkis):
    live, new = pkis
    server = Running(live, "python-ssl")
    try:
        reloader = Reloader(server.server, server.server_flags)
        old = der(live / "kubernetes.pem")
        for name in ("kubernetes.pem", "kubernetes-key.pem"):
            shutil.copy(new / name, live / name)
        assert P.read_presented("127.0.0.1", server.port).der == old          # not looked again yet
        assert reloader.check() == ["serving-cert"]
        assert P.read_presented("127.0.0.1", server.port).der == der(new / "kubernetes.pem")
    finally:
        server.stop()


def test_nothing_listening_is_a_failed_handshake_not_an_exception():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    presented = P.read_presented("127.0.0.1", port, timeout=2)
    assert presented.der is None and "Connection refused" in presented.error


def test_a_client_cert_of_another_ca_is_drift_on_the_stand_in(pkis, tmp_path):
    """The inventory's PKI holds a CA the server's --client-ca-file does not: refused (a TLS alert
    with python's ssl, 401 with pyOpenSSL), never OK."""
    live, _ = pkis
    other = tmp_path / "other-pki"
    other.mkdir()
    shutil.copy(live / "ca.pem", other / "ca.pem")                 # the server's cert still verifies
    shutil.copy(live / "mallory.pem", other / "admin.pem")         # signed by "Other CA"
    shutil.copy(live / "mallory-key.pem", other / "admin-key.pem")
    for backend in backends():
        server = Running(live, backend)
        try:
            checks = P.probe_host(SimpleNamespace(pki=SimpleNamespace(dir=str(other)), path="inv.yaml"),
                                  SimpleNamespace(name="controller-0", internal_ip="127.0.0.1"), server.port,
                                  _facts(live), {"kubernetes.pem": (live / "kubernetes.pem").read_bytes()},
                                  timeout=5, now=NOW)
        finally:
            server.stop()
        assert checks[1].status == "DRIFT", (backend, checks[1])
        assert "does not accept the local CA's client certs" in checks[1].detail


# --- wired into verify ------------------------------------------------------------------------------


def test_verify_adds_the_pickup_checks_to_each_active_controller_and_its_json(tmp_path):
    from deploy_helpers import FakeHost, fake_connector, fake_readyz, healthy_etcd, make_inventory, write_fake_pki

    from k8sboot import deploy as D
    from k8sboot.verify import Check, VerifyOptions, verify

    pki = tmp_path / "pki"
    files = write_fake_pki(pki)
    inventory = make_inventory(pki=pki)
    hosts = {h.name: FakeHost(h.name) for h in inventory.controllers}
    assert D.deploy(inventory, D.DeployOptions(wait=2), connect=fake_connector(hosts), readyz=fake_readyz(hosts),
                    etcd_ask=healthy_etcd()).exit_code() == 0
    seen = []

    def pickup(host, facts, local_pki):
        seen.append((host.name, facts.service.is_active, local_pki["kubernetes.pem"]))
        return [Check(host.name, P.SERVING_LABEL, P.WARN, "not picked up yet")]

    without = verify(inventory, VerifyOptions(), connect=fake_connector(hosts), readyz=fake_readyz(hosts))
    assert not any(c.check == P.SERVING_LABEL for h in without.hosts for c in h.checks)   # no dial in a test
    report = verify(inventory, VerifyOptions(), connect=fake_connector(hosts), readyz=fake_readyz(hosts),
                    pickup=pickup)
    assert sorted(seen) == [(n, True, files["kubernetes.pem"]) for n in sorted(hosts)]
    assert report.exit_code() == without.exit_code()                   # WARN is never drift
    doc = report.to_json()
    for h in doc["hosts"]:
        assert {"host": h["host"], "check": "serving cert presented", "status": "WARN",
                "detail": "not picked up yet", "expected": "", "actual": ""} in h["checks"]
