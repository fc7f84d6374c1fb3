"""k8sboot.pki: the specs, issuance, the checks of existing certs, and the gen-certs plan.

Certificates are checked by property (tests/certs_helpers.py), by real `openssl verify` and
`openssl x509 -subject`, and by a real TLS handshake with Python's ssl module.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import queue
import socket
import ssl
import threading
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from certs_helpers import (
    add_controller,
    assert_ca,
    assert_leaf,
    assert_validity,
    generate,
    key_algorithm,
    load_cert,
    openssl,
    snapshot,
    subject_pairs,
    verify_directly_issued_by,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from k8sboot import audit, authn, layout, pki, store, verify
from k8sboot.errors import PkiError
from k8sboot.model import KEY_ALGORITHMS

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

ETCD_LEAVES = ["etcd-server", "etcd-peer", "apiserver-etcd-client", "etcd-healthcheck-client"]
LEAVES = ["admin", "kubernetes", "kube-apiserver-kubelet-client", "kube-controller-manager",
          "kube-scheduler", "kube-proxy", "k8sboot-health", *ETCD_LEAVES, "worker-0"]
CAS = ["ca", "etcd-ca"]
HEALTH_CN = "system:k8sboot-health"
APISERVER_SANS = {
    "DNS:controller-0", "DNS:controller-1", "DNS:controller-2",
    "IP:10.0.1.10", "IP:10.0.1.11", "IP:10.0.1.12", "IP:10.32.0.1", "IP:127.0.0.1",
    "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
}


def plan_for(inv, **kw):
    spec = pki.build_pki_spec(inv)
    return pki.plan_pki(spec, store.read_pki(spec), now=kw.pop("now", NOW), **kw)


def verbs(plan) -> dict[str, str]:
    return {a.name: a.verb for a in plan.actions}


# --- specs -----------------------------------------------------------------------------------


def test_spec_has_one_cert_per_row_of_the_design_table_and_one_per_worker(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    assert spec.ca.cert_file == "ca.pem" and spec.ca.key_file == "ca-key.pem"
    assert [leaf.name for leaf in spec.leaves] == LEAVES
    assert spec.service_account.cert_file == "service-account.pem"
    assert spec.service_account.key_file == "service-account-key.pem"
    assert spec.encryption_config_file == "encryption-config.yaml"
    assert spec.renewable_names == (*LEAVES, "service-account")


def test_spec_subjects_merge_the_defaults_around_o_and_cn_in_openssl_order(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    assert spec.leaf("admin").subject == (("C", "VN"), ("O", "system:masters"),
                                         ("OU", "k8s-scratch"), ("CN", "admin"))
    assert spec.ca.subject == (("C", "VN"), ("OU", "k8s-scratch"), ("CN", "Kubernetes"))
    assert spec.leaf("worker-0").subject[-1] == ("CN", "system:node:worker-0")
    assert ("O", "system:nodes") in spec.leaf("worker-0").subject
    assert ("O", "system:node-proxier") in spec.leaf("kube-proxy").subject


def test_subject_defaults_st_and_l_go_between_c_and_o(make_inventory):
    inv = make_inventory(subject=(("OU", "x"), ("L", "Hanoi"), ("ST", "HN"), ("C", "VN")))
    subject = pki.build_pki_spec(inv).leaf("admin").subject
    assert [t for t, _ in subject] == ["C", "ST", "L", "O", "OU", "CN"]


def test_apiserver_sans_are_complete(cluster_inventory):
    assert set(pki.build_pki_spec(cluster_inventory).leaf("kubernetes").sans) == APISERVER_SANS


def test_apiserver_sans_take_a_dns_endpoint_and_ip_looking_extra_sans_as_ips(make_inventory):
    inv = make_inventory(extra_sans=("api.example.com", "192.0.2.7", "2001:db8::1", "*.k8s.lan"))
    inv = dataclasses.replace(inv, cluster=dataclasses.replace(
        inv.cluster, api_endpoint="https://lb.example.com:6443", cluster_domain="corp.local"))
    spec = pki.build_pki_spec(inv).leaf("kubernetes")
    assert {"DNS:lb.example.com", "DNS:api.example.com", "IP:192.0.2.7", "IP:2001:db8::1",
            "DNS:*.k8s.lan", "DNS:kubernetes.default.svc.corp.local"} <= set(spec.sans)
    assert ipaddress.ip_address("192.0.2.7") in spec.ip_sans


def test_worker_spec_has_its_name_and_internal_ip_and_both_usages(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory).leaf("worker-0")
    assert spec.sans == ("DNS:worker-0", "IP:10.0.1.20")
    assert set(spec.eku) == {"clientAuth", "serverAuth"}


def test_a_worker_named_like_a_pki_file_is_refused(make_inventory, cluster_inventory):
    worker = dataclasses.replace(cluster_inventory.workers[0], name="admin")
    with pytest.raises(PkiError, match="would overwrite admin.pem"):
        pki.build_pki_spec(make_inventory(workers=(worker,)))


# --- issuing, per algorithm ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_every_key_algorithm_issues_a_ca_and_a_leaf_with_the_right_properties(make_inventory, algorithm):
    spec = pki.build_pki_spec(make_inventory(key_algorithm=algorithm))
    ca_key, leaf_key = pki.generate_keys([algorithm, algorithm])
    ca_cert = pki.issue_ca(spec.ca, ca_key, NOW)
    leaf = spec.leaf("kubernetes")
    cert = pki.issue_leaf(leaf, leaf_key.public_key(), pki.Authority(ca_cert, ca_key), NOW)
    assert key_algorithm(ca_cert) == key_algorithm(cert) == algorithm
    assert_ca(ca_cert, subject=[("C", "VN"), ("OU", "k8s-scratch"), ("CN", "Kubernetes")])
    assert_leaf(cert, cn="kubernetes", sans=APISERVER_SANS, eku=["serverAuth", "clientAuth"], ca=ca_cert)
    assert pki.is_directly_issued_by(cert, ca_cert)
    assert pki.key_matches(cert, leaf_key) and not pki.key_matches(cert, ca_key)
    assert pki.key_algorithm_of(leaf_key) == algorithm


def test_validity_is_backdated_five_minutes_and_lasts_the_configured_days(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    ca_key = pki.generate_key("ecdsa-p256")
    ca_cert = pki.issue_ca(spec.ca, ca_key, NOW)
    cert = pki.issue_leaf(spec.leaf("admin"), ca_key.public_key(), pki.Authority(ca_cert, ca_key), NOW)
    assert_validity(ca_cert, days=3650, now=NOW, slack=timedelta(seconds=1))
    assert_validity(cert, days=365, now=NOW, slack=timedelta(seconds=1))


def test_a_leaf_never_outlives_its_ca(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    key = pki.generate_key("ecdsa-p256")
    short_ca = pki.issue_ca(dataclasses.replace(spec.ca, validity_days=30), key, NOW)
    cert = pki.issue_leaf(spec.leaf("admin"), key.public_key(), pki.Authority(short_ca, key), NOW)
    assert cert.not_valid_after_utc == short_ca.not_valid_after_utc


def test_issuer_check_rejects_a_ca_with_the_same_name_but_another_key(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    key_a, key_b = pki.generate_key("ecdsa-p256"), pki.generate_key("ecdsa-p256")
    ca_a, ca_b = pki.issue_ca(spec.ca, key_a, NOW), pki.issue_ca(spec.ca, key_b, NOW)
    cert = pki.issue_leaf(spec.leaf("admin"), key_a.public_key(), pki.Authority(ca_a, key_a), NOW)
    assert ca_a.subject == ca_b.subject
    assert pki.is_directly_issued_by(cert, ca_a)
    assert not pki.is_directly_issued_by(cert, ca_b)


def test_issuer_check_rejects_a_cert_whose_signature_was_tampered(generated_pki):
    ca = load_cert(generated_pki.path("ca.pem"))
    der = bytearray(load_cert(generated_pki.path("admin.pem")).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01                                   # inside the signature BIT STRING
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert not pki.is_directly_issued_by(tampered, ca)


class _Cryptography38Cert:
    """A certificate exposing only what cryptography 38 has (no *_utc, no verify_directly_issued_by)."""

    _ALLOWED = {"issuer", "subject", "signature", "tbs_certificate_bytes", "signature_hash_algorithm",
                "public_key", "not_valid_after", "not_valid_before", "extensions", "serial_number"}

    def __init__(self, cert):
        self._cert = cert

    def __getattr__(self, name):
        if name not in self._ALLOWED:
            raise AttributeError(name)
        return getattr(self._cert, name)


def test_issuer_check_and_expiry_work_with_the_cryptography_38_api(generated_pki):
    ca = load_cert(generated_pki.path("ca.pem"))
    cert = load_cert(generated_pki.path("kubernetes.pem"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # naive not_valid_after is deprecated on >= 42
        assert pki.is_directly_issued_by(_Cryptography38Cert(cert), _Cryptography38Cert(ca))
        assert pki.not_after_of(_Cryptography38Cert(cert)) == cert.not_valid_after_utc
    assert not pki.is_directly_issued_by(_Cryptography38Cert(ca), _Cryptography38Cert(cert))


def test_encryption_config_is_aescbc_with_32_random_bytes():
    secret = pki.generate_encryption_secret()
    doc = yaml.safe_load(pki.render_encryption_config(secret))
    assert doc["kind"] == "EncryptionConfiguration"
    provider = doc["resources"][0]["providers"][0]["aescbc"]
    assert base64.b64decode(provider["keys"][0]["secret"]) == secret and len(secret) == 32
    assert doc["resources"][0]["providers"][1] == {"identity": {}}
    assert pki.generate_encryption_secret() != secret


# --- the generated PKI, checked from the outside ---------------------------------------------


def test_every_generated_cert_has_the_properties_of_its_row(generated_pki):
    d = generated_pki.dir
    ca = load_cert(d / "ca.pem")
    assert_ca(ca)
    assert_validity(ca, days=3650, slack=timedelta(hours=2))
    expected = {
        "admin": dict(cn="admin", o=["system:masters"], eku=["clientAuth"]),
        "kubernetes": dict(cn="kubernetes", sans=APISERVER_SANS, eku=["serverAuth", "clientAuth"]),
        "kube-apiserver-kubelet-client": dict(cn="kube-apiserver-kubelet-client", eku=["clientAuth"]),
        "kube-controller-manager": dict(cn="system:kube-controller-manager",
                                        o=["system:kube-controller-manager"], eku=["clientAuth"]),
        "kube-scheduler": dict(cn="system:kube-scheduler", o=["system:kube-scheduler"],
                               eku=["clientAuth"]),
        "kube-proxy": dict(cn="system:kube-proxy", o=["system:node-proxier"], eku=["clientAuth"]),
        "k8sboot-health": dict(cn=HEALTH_CN, o=[], eku=["clientAuth"]),
        "worker-0": dict(cn="system:node:worker-0", o=["system:nodes"],
                         sans={"DNS:worker-0", "IP:10.0.1.20"}, eku=["clientAuth", "serverAuth"]),
    }
    for name, props in expected.items():
        cert = load_cert(d / f"{name}.pem")
        assert_leaf(cert, ca=ca, **props)
        assert_validity(cert, days=365, slack=timedelta(hours=2))
        assert key_algorithm(cert) == "rsa-2048"
        key = serialization.load_pem_private_key((d / f"{name}-key.pem").read_bytes(), None)
        assert pki.key_matches(cert, key)


def test_service_account_pair_is_a_pkix_public_key_and_its_private_key(generated_pki):
    public_pem = generated_pki.path("service-account.pem").read_bytes()
    private_pem = generated_pki.path("service-account-key.pem").read_bytes()
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    public = serialization.load_pem_public_key(public_pem)
    assert pki.key_matches(public, serialization.load_pem_private_key(private_pem, None))


def test_openssl_verifies_every_leaf_against_its_own_ca(generated_pki):
    cluster = [str(generated_pki.path(f"{n}.pem")) for n in LEAVES if n not in ETCD_LEAVES]
    out = openssl("verify", "-CAfile", str(generated_pki.path("ca.pem")), *cluster)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": OK") == len(cluster)
    etcd = [str(generated_pki.path(f"{n}.pem")) for n in ETCD_LEAVES]
    out = openssl("verify", "-CAfile", str(generated_pki.path("etcd-ca.pem")), *etcd)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": OK") == len(ETCD_LEAVES)


def test_no_etcd_cert_verifies_under_ca_pem_and_no_cluster_cert_under_etcd_ca_pem(generated_pki):
    """With --client-cert-auth etcd trusts whatever its CA signed: admin.pem, a kubelet's or
    kube-proxy's cert must not be able to talk to etcd, nor etcd's certs to the API server."""
    for ca, names in (("ca.pem", ETCD_LEAVES), ("etcd-ca.pem", [n for n in LEAVES if n not in ETCD_LEAVES])):
        for name in names:
            out = openssl("verify", "-CAfile", str(generated_pki.path(ca)), str(generated_pki.path(f"{name}.pem")))
            assert out.returncode != 0 and "unable to get local issuer certificate" in out.stderr, (ca, name)
    assert load_cert(generated_pki.path("etcd-ca.pem")).public_key().public_numbers() != \
        load_cert(generated_pki.path("ca.pem")).public_key().public_numbers()


def test_openssl_prints_the_tutorial_admin_subject(generated_pki):
    out = openssl("x509", "-in", str(generated_pki.path("admin.pem")), "-noout", "-subject")
    assert out.stdout == "subject=C = VN, O = system:masters, OU = k8s-scratch, CN = admin\n"


# --- k8sboot's own health client (the deploy's /readyz gate, the load balancer's check) ------


def test_health_client_spec_is_a_cn_only_client_cert_with_the_subject_defaults(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory).leaf(layout.HEALTH_CLIENT)
    assert (spec.cert_file, spec.key_file) == ("k8sboot-health.pem", "k8sboot-health-key.pem")
    assert spec.subject == (("C", "VN"), ("OU", "k8s-scratch"), ("CN", HEALTH_CN))
    assert spec.eku == ("clientAuth",) and spec.sans == () and not spec.is_ca
    assert (spec.key_algorithm, spec.validity_days) == ("rsa-2048", 365)


def test_health_client_follows_the_inventory_key_algorithm_validity_and_subject(make_inventory):
    inv = make_inventory(key_algorithm="ecdsa-p256", cert_validity_days=90,
                         subject=(("C", "DE"), ("L", "Berlin"), ("OU", "ops")))
    spec = pki.build_pki_spec(inv).leaf(layout.HEALTH_CLIENT)
    assert (spec.key_algorithm, spec.validity_days) == ("ecdsa-p256", 90)
    assert spec.subject == (("C", "DE"), ("L", "Berlin"), ("OU", "ops"), ("CN", HEALTH_CN))


def test_openssl_verifies_the_health_cert_for_client_use_and_refuses_it_for_a_server(generated_pki):
    ca, cert = str(generated_pki.path("ca.pem")), str(generated_pki.path("k8sboot-health.pem"))
    client = openssl("verify", "-CAfile", ca, "-purpose", "sslclient", cert)
    assert client.returncode == 0 and client.stdout == f"{cert}: OK\n", client.stdout + client.stderr
    server = openssl("verify", "-CAfile", ca, "-purpose", "sslserver", cert)
    assert server.returncode != 0 and "unsuitable certificate purpose" in server.stderr
    eku = openssl("x509", "-in", cert, "-noout", "-ext", "extendedKeyUsage")
    assert eku.stdout.splitlines()[1:] == ["    TLS Web Client Authentication"], eku.stdout


def test_openssl_prints_the_health_subject_without_any_organization(generated_pki):
    out = openssl("x509", "-in", str(generated_pki.path("k8sboot-health.pem")), "-noout", "-subject")
    assert out.stdout == "subject=C = VN, OU = k8s-scratch, CN = system:k8sboot-health\n"


def _identity_by_openssl(cert: Path) -> tuple[str, tuple[str, ...]]:
    """The API server's x509 rule (CN -> username, each O -> a group, + system:authenticated)
    applied to the subject as openssl reads it: independent of k8sboot's parsing."""
    out = openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "multiline")
    assert out.returncode == 0, out.stderr
    fields = [line.strip().split(" = ", 1) for line in out.stdout.splitlines()[1:]]
    names = [v for k, v in fields if k.strip() == "commonName"]
    orgs = tuple(v for k, v in fields if k.strip() == "organizationName")
    assert len(names) == 1, out.stdout
    return names[0], orgs + ("system:authenticated",)


def test_authn_and_openssl_agree_the_health_cert_is_its_cn_in_no_group_but_authenticated(generated_pki):
    cert_path = generated_pki.path("k8sboot-health.pem")
    config = authn.load_authenticator_config(client_ca_file=generated_pki.path("ca.pem"),
                                             anonymous_auth=False)
    der = load_cert(cert_path).public_bytes(serialization.Encoding.DER)
    result = authn.authenticate_cert(der, config, datetime.now(timezone.utc))
    assert result.authenticated, result.reason
    assert (result.user.username, result.user.groups) == (HEALTH_CN, ("system:authenticated",))
    assert _identity_by_openssl(cert_path) == (HEALTH_CN, ("system:authenticated",))
    # the same rule, checked on admin, proves the openssl side does read groups
    assert _identity_by_openssl(generated_pki.path("admin.pem")) == (
        "admin", ("system:masters", "system:authenticated"))


def test_the_health_credential_is_a_workstation_file_never_uploaded_to_a_controller():
    shipped = {f.local_name for f in layout.CONTROLLER_FILES}
    assert not {"k8sboot-health.pem", "k8sboot-health-key.pem"} & shipped
    with pytest.raises(KeyError):
        layout.remote_path("k8sboot-health-key.pem")


def test_an_existing_pki_gains_the_health_cert_on_the_next_run_and_nothing_else_changes(generated_pki):
    for name in ("k8sboot-health.pem", "k8sboot-health-key.pem"):
        generated_pki.path(name).unlink()
    before = snapshot(generated_pki.dir)
    result = generate(generated_pki.inventory)
    assert [(r.file, r.action.verb) for r in result.rows if r.action.changes] == [
        ("k8sboot-health.pem", "created")]
    assert {f.name: f.mode for f in result.files} == {"k8sboot-health-key.pem": 0o600,
                                                       "k8sboot-health.pem": 0o644}
    after = snapshot(generated_pki.dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert store.file_mode(generated_pki.path("k8sboot-health-key.pem")) == 0o600
    assert store.file_mode(generated_pki.path("k8sboot-health.pem")) == 0o644
    verify_directly_issued_by(load_cert(generated_pki.path("k8sboot-health.pem")),
                              load_cert(generated_pki.path("ca.pem")))


def test_audit_does_not_count_the_health_cert_in_system_masters(generated_pki):
    summaries = verify.read_cert_summaries(generated_pki.dir)
    health = [c for c in summaries if c.common_name == HEALTH_CN]
    assert len(health) == 1 and health[0].organizations == ()
    masters = [f for f in audit.check_certs(summaries, datetime.now(timezone.utc)) if f.id == "5.1.7"]
    assert [f.subject for f in masters] == [str(generated_pki.path("admin.pem"))]   # admin's WARN only
    assert masters[0].status == audit.WARN


@pytest.mark.parametrize("name, cn", [("admin", "admin"), ("k8sboot-health", HEALTH_CN)])
def test_tls_handshake_with_a_workstation_client_cert_succeeds(generated_pki, name, cn):
    d = generated_pki.dir
    listener, seen = _tls_server(d)
    try:
        port = listener.getsockname()[1]
        assert _dial(port, "127.0.0.1", d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem") == b"ok"
    finally:
        listener.close()
    assert seen.get(timeout=5) == cn


def test_every_key_file_is_0600_every_cert_0644_and_the_dir_0700(tmp_path, cluster_inventory):
    generate(cluster_inventory)
    d = cluster_inventory.pki.dir
    assert store.file_mode(d) == 0o700
    modes = {p.name: store.file_mode(p) for p in d.iterdir()}
    for name, mode in modes.items():
        secret = name.endswith("-key.pem") or name == "encryption-config.yaml"
        assert mode == (0o600 if secret else 0o644), name
    assert len(modes) == 2 * (len(LEAVES) + len(CAS) + 1) + 1   # leaves, CAs, SA pair, encryption config
    assert not [n for n in modes if n.startswith(".")], "no temp file left behind"


# --- a real TLS handshake --------------------------------------------------------------------


def _tls_server(pki_dir: Path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki_dir / "kubernetes.pem", pki_dir / "kubernetes-key.pem")
    ctx.load_verify_locations(pki_dir / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    seen: queue.Queue[str] = queue.Queue()   # the CN of each accepted client, or "refused"

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert()
                    seen.put(dict(x[0] for x in peer["subject"])["commonName"])
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                seen.put("refused")

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


def _dial(port: int, server_hostname: str, ca: Path, cert: Path, key: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.recv(2)


@pytest.mark.parametrize("server_name", ["127.0.0.1", "kubernetes.default.svc.cluster.local"])
def test_tls_handshake_admin_to_apiserver_cert_succeeds(generated_pki, server_name):
    d = generated_pki.dir
    listener, seen = _tls_server(d)
    try:
        port = listener.getsockname()[1]
        assert _dial(port, server_name, d / "ca.pem", d / "admin.pem", d / "admin-key.pem") == b"ok"
    finally:
        listener.close()
    assert seen.get(timeout=5) == "admin"


def test_tls_handshake_refuses_a_client_cert_from_another_ca(generated_pki, tmp_path, make_inventory):
    other = make_inventory(dir=tmp_path / "other-pki", key_algorithm="ecdsa-p256")
    generate(other)
    d, o = generated_pki.dir, other.pki.dir
    listener, seen = _tls_server(d)
    try:
        port = listener.getsockname()[1]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            # TLS 1.3: the client learns of the refusal on its first read
            _dial(port, "127.0.0.1", d / "ca.pem", o / "admin.pem", o / "admin-key.pem")
    finally:
        listener.close()
    assert seen.get(timeout=5) == "refused"


def test_tls_client_refuses_a_name_missing_from_the_apiserver_sans(generated_pki):
    d = generated_pki.dir
    listener, _ = _tls_server(d)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            _dial(listener.getsockname()[1], "evil.example.com", d / "ca.pem", d / "admin.pem",
                  d / "admin-key.pem")
    finally:
        listener.close()


# --- planning: what gen-certs decides --------------------------------------------------------


def test_fresh_dir_plans_every_file_as_created(cluster_inventory):
    plan = plan_for(cluster_inventory)
    assert set(verbs(plan).values()) == {"created"}
    assert list(verbs(plan)) == [*CAS, *LEAVES, "service-account", "encryption-config"]


def test_a_complete_pki_plans_everything_unchanged_and_issues_nothing(generated_pki):
    spec = pki.build_pki_spec(generated_pki.inventory)
    facts = store.read_pki(spec)
    plan = pki.plan_pki(spec, facts, now=datetime.now(timezone.utc))
    assert set(verbs(plan).values()) == {"unchanged"}
    result = pki.issue_pki(spec, facts, plan, now=datetime.now(timezone.utc))
    assert result.files == () and not result.changed
    assert [r.action.verb for r in result.rows] == ["unchanged"] * (len(LEAVES) + len(CAS) + 2)


def test_a_missing_leaf_is_issued_by_the_existing_ca(generated_pki):
    for name in ("kube-proxy.pem", "kube-proxy-key.pem"):
        generated_pki.path(name).unlink()
    before = snapshot(generated_pki.dir)
    result = generate(generated_pki.inventory)
    assert {r.file: r.action.verb for r in result.rows}["kube-proxy.pem"] == "created"
    assert {f.name for f in result.files} == {"kube-proxy.pem", "kube-proxy-key.pem"}
    after = snapshot(generated_pki.dir)
    assert {k: v for k, v in after.items() if k in before} == before
    verify_directly_issued_by(load_cert(generated_pki.path("kube-proxy.pem")),
                              load_cert(generated_pki.path("ca.pem")))


def test_adding_a_controller_reissues_only_the_serving_and_peer_certs_and_says_which_sans(generated_pki):
    plan = plan_for(add_controller(generated_pki.inventory))
    for name in ("kubernetes", "etcd-server", "etcd-peer"):
        action = plan.action(name)
        assert action.verb == "reissued"
        assert action.describe() == "reissued (SANs changed: +DNS:controller-3 +IP:10.0.1.13)"
    assert [a.name for a in plan.actions if a.changes] == ["kubernetes", "etcd-server", "etcd-peer"]


def test_a_changed_subject_default_reissues_every_leaf_but_keeps_the_ca_with_a_warning(generated_pki):
    inv = dataclasses.replace(generated_pki.inventory, pki=dataclasses.replace(
        generated_pki.inventory.pki, subject=(("C", "DE"), ("OU", "k8s-scratch"))))
    plan = plan_for(inv)
    assert verbs(plan)["ca"] == "unchanged"
    assert all(verbs(plan)[n] == "reissued" for n in LEAVES)
    assert "subject changed: C=VN, O=system:masters, OU=k8s-scratch, CN=admin -> C=DE, " \
           "O=system:masters, OU=k8s-scratch, CN=admin" in plan.action("admin").reason
    assert any("ca.pem differs from the inventory" in w and "--force-new-ca" in w for w in plan.warnings)


def test_a_changed_key_algorithm_reissues_leaves_and_keeps_the_service_account_key(generated_pki):
    inv = dataclasses.replace(generated_pki.inventory, pki=dataclasses.replace(
        generated_pki.inventory.pki, key_algorithm="ecdsa-p256"))
    plan = plan_for(inv)
    assert "key algorithm changed: rsa-2048 -> ecdsa-p256" in plan.action("admin").reason
    assert "usages changed: -keyEncipherment" in plan.action("admin").reason
    assert verbs(plan)["service-account"] == "unchanged"
    assert any("service-account-key.pem is rsa-2048" in w for w in plan.warnings)


def test_changed_usages_are_reported(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    key = pki.generate_key("ecdsa-p256")
    ca = pki.Authority(pki.issue_ca(dataclasses.replace(spec.ca, key_algorithm="ecdsa-p256"), key, NOW), key)
    admin = dataclasses.replace(spec.leaf("admin"), key_algorithm="ecdsa-p256")
    cert = pki.issue_leaf(dataclasses.replace(admin, eku=("clientAuth", "serverAuth")),
                          key.public_key(), ca, NOW)
    assert pki.spec_differences(admin, cert) == ("usages changed: -serverAuth",)


def test_renew_forces_one_leaf(generated_pki):
    plan = plan_for(generated_pki.inventory, renew=["admin"])
    assert [a.describe() for a in plan.actions if a.changes] == ["renewed (--renew)"]


def test_renew_with_an_unknown_name_lists_the_valid_ones(generated_pki):
    with pytest.raises(PkiError, match="unknown name") as err:
        plan_for(generated_pki.inventory, renew=["nope"])
    assert "admin" in err.value.hint and "worker-0" in err.value.hint


def test_force_new_ca_reissues_the_ca_and_every_leaf_but_not_the_sa_key_or_encryption(generated_pki):
    v = verbs(plan_for(generated_pki.inventory, force_new_ca=True))
    assert v["ca"] == v["etcd-ca"] == "reissued" and all(v[n] == "reissued" for n in LEAVES)
    assert v["service-account"] == v["encryption-config"] == "unchanged"


def test_force_new_ca_also_replaces_a_broken_pki(generated_pki):
    generated_pki.path("ca-key.pem").unlink()
    generated_pki.path("admin-key.pem").unlink()
    v = verbs(plan_for(generated_pki.inventory, force_new_ca=True))
    assert v["ca"] == "reissued" and v["admin"] == "reissued"


def _refused(generated_pki, match: str, **kw) -> PkiError:
    before = snapshot(generated_pki.dir)
    with pytest.raises(PkiError, match=match) as err:
        generate(generated_pki.inventory, **kw)
    assert snapshot(generated_pki.dir) == before, "nothing may be overwritten"
    assert err.value.hint
    return err.value


def test_a_leaf_cert_without_its_key_is_refused_naming_both_paths(generated_pki):
    generated_pki.path("admin-key.pem").unlink()
    err = _refused(generated_pki, "admin.pem: the certificate has no key")
    assert "admin-key.pem is missing" in err.message and "--renew admin" in err.hint


def test_a_leaf_key_without_its_cert_is_refused(generated_pki):
    generated_pki.path("kube-scheduler.pem").unlink()
    _refused(generated_pki, "kube-scheduler-key.pem: the key has no certificate")


def test_a_key_that_does_not_match_its_cert_is_refused(generated_pki):
    generated_pki.path("admin-key.pem").write_bytes(generated_pki.path("kube-proxy-key.pem").read_bytes())
    _refused(generated_pki, "admin.pem: its public key does not match .*admin-key.pem")


def test_a_ca_cert_without_its_key_is_refused_and_points_at_force_new_ca(generated_pki):
    generated_pki.path("ca-key.pem").unlink()
    err = _refused(generated_pki, "ca.pem: the CA certificate has no key")
    assert "--force-new-ca" in err.hint


def test_a_missing_ca_with_existing_leaves_is_refused(generated_pki):
    generated_pki.path("ca.pem").unlink()
    generated_pki.path("ca-key.pem").unlink()
    _refused(generated_pki, "ca.pem and .*ca-key.pem are missing, but certificates they issued exist")


def test_a_leaf_not_signed_by_the_ca_is_refused(generated_pki, tmp_path, make_inventory):
    other = make_inventory(dir=tmp_path / "other", key_algorithm="ecdsa-p256")
    generate(other)
    for name in ("admin.pem", "admin-key.pem"):
        generated_pki.path(name).write_bytes((other.pki.dir / name).read_bytes())
    err = _refused(generated_pki, "admin.pem: not signed by the CA in .*ca.pem")
    assert "--renew admin" in err.hint


def test_renew_replaces_a_leaf_that_was_refused(generated_pki):
    generated_pki.path("admin-key.pem").unlink()
    result = generate(generated_pki.inventory, renew=["admin"])
    assert {r.file: r.action.verb for r in result.rows}["admin.pem"] == "renewed"
    assert pki.key_matches(load_cert(generated_pki.path("admin.pem")),
                           serialization.load_pem_private_key(
                               generated_pki.path("admin-key.pem").read_bytes(), None))


def test_a_service_account_public_key_without_its_private_key_is_refused(generated_pki):
    generated_pki.path("service-account-key.pem").unlink()
    err = _refused(generated_pki, "service-account.pem: the public key has no private key")
    assert "ServiceAccount token" in err.hint


def test_mismatched_service_account_halves_are_refused(generated_pki):
    generated_pki.path("service-account-key.pem").write_bytes(generated_pki.path("admin-key.pem").read_bytes())
    _refused(generated_pki, "service-account.pem: it is not the public half")


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-----BEGIN CERTIFICATE-----\nMIIB\n"])
def test_garbage_or_truncated_pem_is_refused_naming_the_file(generated_pki, content):
    generated_pki.path("kube-proxy.pem").write_bytes(content)
    _refused(generated_pki, r"kube-proxy.pem: not a PEM certificate \(truncated or garbage\)")


def test_a_truncated_key_is_refused_naming_the_file(generated_pki):
    path = generated_pki.path("kubernetes-key.pem")
    path.write_bytes(path.read_bytes()[:200])
    _refused(generated_pki, "kubernetes-key.pem: not a PEM private key")


def test_a_garbage_encryption_config_is_refused_and_never_regenerated(generated_pki):
    generated_pki.path("encryption-config.yaml").write_text("hello: [\n")
    err = _refused(generated_pki, "encryption-config.yaml: not YAML")
    assert "never regenerated" in err.hint


def test_an_existing_encryption_config_is_never_regenerated(generated_pki):
    before = generated_pki.path("encryption-config.yaml").read_bytes()
    generate(generated_pki.inventory, force_new_ca=True, renew=["service-account"])
    assert generated_pki.path("encryption-config.yaml").read_bytes() == before


def test_an_expired_leaf_is_kept_with_a_warning_to_renew_it(generated_pki):
    plan = plan_for(generated_pki.inventory, now=datetime.now(timezone.utc) + timedelta(days=400))
    assert verbs(plan)["admin"] == "unchanged"
    assert any("admin.pem expired" in w and "--renew admin" in w for w in plan.warnings)


# --- status for certs list / check-expiration ------------------------------------------------


def test_check_certs_reports_issuer_key_match_and_residual(generated_pki):
    spec = pki.build_pki_spec(generated_pki.inventory)
    now = datetime.now(timezone.utc)
    statuses = {s.name: s for s in pki.check_certs(spec, store.read_pki(spec), now)}
    assert list(statuses) == [*CAS, *LEAVES, "service-account"]
    assert statuses["etcd-ca"].is_ca and statuses["etcd-ca"].issuer_ok
    assert statuses["etcd-server"].issuer_ok and statuses["apiserver-etcd-client"].issuer_ok
    admin = statuses["admin"]
    assert admin.issuer_ok and admin.key_match and admin.present and not admin.expiring
    assert admin.subject == "C=VN, O=system:masters, OU=k8s-scratch, CN=admin"
    assert timedelta(days=364) < admin.residual <= timedelta(days=365)
    assert statuses["ca"].is_ca and statuses["ca"].issuer_ok
    assert statuses["service-account"].key_match and statuses["service-account"].not_after is None
    health = statuses["k8sboot-health"]      # certs list / check-expiration show it like any leaf
    assert health.file == "k8sboot-health.pem" and health.issuer_ok and health.key_match
    assert health.subject == "C=VN, OU=k8s-scratch, CN=system:k8sboot-health"
    assert timedelta(days=364) < health.residual <= timedelta(days=365)


def test_check_certs_flags_a_foreign_leaf_and_a_wrong_key_without_raising(generated_pki, tmp_path,
                                                                          make_inventory):
    other = make_inventory(dir=tmp_path / "other", key_algorithm="ecdsa-p256")
    generate(other)
    generated_pki.path("admin.pem").write_bytes((other.pki.dir / "admin.pem").read_bytes())
    spec = pki.build_pki_spec(generated_pki.inventory)
    statuses = {s.name: s for s in pki.check_certs(spec, store.read_pki(spec), datetime.now(timezone.utc))}
    assert statuses["admin"].issuer_ok is False and statuses["admin"].key_match is False


@pytest.mark.parametrize("residual, text", [
    (timedelta(days=3649), "9y"), (timedelta(days=364, hours=23), "364d"), (timedelta(hours=30), "30h"),
    (timedelta(minutes=5), "5m"), (timedelta(seconds=-1), "expired"), (None, "-"),
])
def test_residual_time_reads_like_kubeadm(residual, text):
    assert pki.format_residual(residual) == text


def test_client_credentials_refuse_an_admin_cert_from_another_ca(generated_pki, tmp_path, make_inventory):
    other = make_inventory(dir=tmp_path / "other", key_algorithm="ecdsa-p256")
    generate(other)
    for name in ("admin.pem", "admin-key.pem"):
        generated_pki.path(name).write_bytes((other.pki.dir / name).read_bytes())
    spec = pki.build_pki_spec(generated_pki.inventory)
    with pytest.raises(PkiError, match="not signed by the CA"):
        pki.client_credentials(spec, store.read_pki(spec))


def test_subjects_read_back_in_file_order(generated_pki):
    cert = load_cert(generated_pki.path("kube-controller-manager.pem"))
    assert pki.subject_of(cert.subject) == tuple(subject_pairs(cert.subject))
    assert layout.cert_file("kube-controller-manager") == "kube-controller-manager.pem"


def test_a_ca_key_that_does_not_sign_for_ca_pem_is_caught_before_anything_is_written(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    key, other = pki.generate_key("ecdsa-p256"), pki.generate_key("ecdsa-p256")
    ca_cert = pki.issue_ca(spec.ca, key, NOW)
    with pytest.raises(PkiError, match="issuing admin.pem: the CA key does not make signatures"):
        pki.issue_leaf(spec.leaf("admin"), other.public_key(), pki.Authority(ca_cert, other), NOW)


def test_an_expired_ca_refuses_to_issue_leaves_that_would_be_born_expired(generated_pki):
    generated_pki.path("admin.pem").unlink()
    generated_pki.path("admin-key.pem").unlink()
    later = datetime.now(timezone.utc) + timedelta(days=3651)
    with pytest.raises(PkiError, match="issuing admin: the CA in .*ca.pem expired on") as err:
        plan_for(generated_pki.inventory, now=later)
    assert "--force-new-ca" in err.value.hint
    assert verbs(plan_for(generated_pki.inventory, now=later, force_new_ca=True))["admin"] == "created"


def test_an_expired_ca_is_refused_even_when_nothing_needs_issuing(generated_pki):
    later = datetime.now(timezone.utc) + timedelta(days=3651)
    with pytest.raises(PkiError, match=r"checking .*ca.pem: the CA expired on .*TLS refuses every "
                                       r"certificate it signed") as err:
        plan_for(generated_pki.inventory, now=later)
    assert "--force-new-ca" in err.value.hint
    assert verbs(plan_for(generated_pki.inventory, now=later, force_new_ca=True))["ca"] == "reissued"


def test_check_certs_tells_a_missing_key_from_a_wrong_one(generated_pki):
    generated_pki.path("ca-key.pem").unlink()
    generated_pki.path("admin-key.pem").write_bytes(generated_pki.path("kube-proxy-key.pem").read_bytes())
    spec = pki.build_pki_spec(generated_pki.inventory)
    statuses = {s.name: s for s in pki.check_certs(spec, store.read_pki(spec), datetime.now(timezone.utc))}
    assert statuses["ca"].key_present is False and statuses["ca"].key_match is False
    assert statuses["admin"].key_present is True and statuses["admin"].key_match is False


# --- etcd's own PKI (etcd-ca and the certs it signs) -------------------------------------------

ETCD_SANS = {"DNS:controller-0", "DNS:controller-1", "DNS:controller-2", "IP:10.0.1.10", "IP:10.0.1.11",
             "IP:10.0.1.12", "IP:127.0.0.1", "DNS:localhost"}


def test_etcd_certs_are_signed_by_etcd_ca_with_kubeadms_identities_and_usages(generated_pki):
    ca = load_cert(generated_pki.path("etcd-ca.pem"))
    assert_ca(ca, subject=[("C", "VN"), ("OU", "k8s-scratch"), ("CN", "etcd-ca")])
    for name, cn in (("etcd-server", "etcd-server"), ("etcd-peer", "etcd-peer")):
        assert_leaf(load_cert(generated_pki.path(f"{name}.pem")), cn=cn, sans=ETCD_SANS,
                    eku=("serverAuth", "clientAuth"), ca=ca)
    assert_leaf(load_cert(generated_pki.path("apiserver-etcd-client.pem")), cn="kube-apiserver-etcd-client",
                eku=("clientAuth",), ca=ca)
    assert_leaf(load_cert(generated_pki.path("etcd-healthcheck-client.pem")), cn="kube-etcd-healthcheck-client",
                eku=("clientAuth",), ca=ca)


def test_openssl_accepts_etcd_server_and_peer_for_both_ends_and_the_clients_only_as_clients(generated_pki):
    ca = str(generated_pki.path("etcd-ca.pem"))
    for name in ("etcd-server", "etcd-peer"):
        for purpose in ("sslserver", "sslclient"):
            out = openssl("verify", "-CAfile", ca, "-purpose", purpose, str(generated_pki.path(f"{name}.pem")))
            assert out.returncode == 0, (name, purpose, out.stderr)
    for name in ("apiserver-etcd-client", "etcd-healthcheck-client"):
        cert = str(generated_pki.path(f"{name}.pem"))
        assert openssl("verify", "-CAfile", ca, "-purpose", "sslclient", cert).returncode == 0
        assert openssl("verify", "-CAfile", ca, "-purpose", "sslserver", cert).returncode != 0


def test_etcd_ca_key_is_never_uploaded_and_apiserver_gets_only_its_etcd_client_pair():
    assert "etcd-ca-key.pem" in layout.NEVER_UPLOADED
    shipped = {f.local_name for f in layout.CONTROLLER_FILES}
    assert {"etcd-ca.pem", "apiserver-etcd-client.pem", "apiserver-etcd-client-key.pem"} <= shipped
    assert not shipped & {"etcd-ca-key.pem", "etcd-server-key.pem", "etcd-peer-key.pem",
                          "etcd-healthcheck-client-key.pem"}
    on_members = {f.local_name for f in layout.ETCD_FILES}
    assert on_members == {"etcd-ca.pem", "etcd-server.pem", "etcd-server-key.pem", "etcd-peer.pem",
                          "etcd-peer-key.pem"}
    assert all(f.path.startswith("/etc/etcd/") for f in layout.ETCD_FILES)
    assert {f.local_name for f in layout.ETCD_FILES if f.is_secret} == {"etcd-server-key.pem", "etcd-peer-key.pem"}


def test_an_existing_pki_without_etcds_gets_it_and_nothing_else_changes(generated_pki):
    for name in ("etcd-ca", *ETCD_LEAVES):
        generated_pki.path(f"{name}.pem").unlink()
        generated_pki.path(f"{name}-key.pem").unlink()
    v = verbs(plan_for(generated_pki.inventory))
    assert {n for n, verb in v.items() if verb == "created"} == {"etcd-ca", *ETCD_LEAVES}
    assert {n for n, verb in v.items() if verb != "created"} == {n for n in v if n not in ("etcd-ca", *ETCD_LEAVES)}
    assert set(v[n] for n in v if n not in ("etcd-ca", *ETCD_LEAVES)) == {"unchanged"}


def test_a_lost_etcd_ca_with_its_certs_still_there_is_refused(generated_pki):
    generated_pki.path("etcd-ca.pem").unlink()
    generated_pki.path("etcd-ca-key.pem").unlink()
    with pytest.raises(PkiError, match=r"etcd-ca.pem and .*etcd-ca-key.pem are missing, but certificates they "
                                       r"issued exist \(etcd-server.pem"):
        plan_for(generated_pki.inventory)


def test_an_etcd_cert_signed_by_the_cluster_ca_is_refused_naming_etcd_ca(generated_pki, tmp_path):
    # etcd-server.pem replaced by a cert of the same spec from the cluster CA
    spec = pki.build_pki_spec(generated_pki.inventory)
    facts = store.read_pki(spec)
    key = facts.leaves["etcd-server"].key
    wrong = pki.issue_leaf(spec.leaf("etcd-server"), key.public_key(), pki.Authority(facts.ca.cert, facts.ca.key),
                           datetime.now(timezone.utc))
    generated_pki.path("etcd-server.pem").write_bytes(pki.cert_pem(wrong))
    with pytest.raises(PkiError, match=r"etcd-server.pem: not signed by the CA in .*etcd-ca.pem"):
        plan_for(generated_pki.inventory)
