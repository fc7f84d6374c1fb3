"""PKI test helpers: property asserts (what a cert says, never its bytes), the example
inventory as a model, and the gen-certs cycle without the CLI.

Independent of `k8sboot.pki`'s own inspection helpers: these read the extensions with
cryptography directly and use `Certificate.verify_directly_issued_by`, so a bug in the module
under test cannot hide itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8sboot.model import ApiserverSpec, ClusterSpec, Host, Inventory, PkiSettings, SshSettings

EKU = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH, "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH}


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def subject_pairs(name: x509.Name) -> list[tuple[str, str]]:
    short = {NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST",
             NameOID.LOCALITY_NAME: "L", NameOID.ORGANIZATION_NAME: "O",
             NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN"}
    return [(short[a.oid], a.value) for a in name]


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


def san_strings(cert: x509.Certificate) -> set[str]:
    try:
        sans = ext(cert, x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({f"DNS:{d}" for d in sans.get_values_for_type(x509.DNSName)}
            | {f"IP:{i}" for i in sans.get_values_for_type(x509.IPAddress)})


def verify_directly_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raises unless `ca` signed `cert` (cryptography's own check, not the project's)."""
    cert.verify_directly_issued_by(ca)


def assert_validity(cert: x509.Certificate, *, days: int, now: datetime | None = None,
                    slack: timedelta = timedelta(minutes=2)) -> None:
    now = now or datetime.now(timezone.utc)
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert abs((now - before) - timedelta(minutes=5)) < slack, f"not backdated 5 min: {before}"
    assert abs(after - (now + timedelta(days=days))) < slack, f"not_after {after} != now + {days}d"


def assert_ca(cert: x509.Certificate, *, subject: list[tuple[str, str]] | None = None) -> None:
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.key_encipherment
    ext(cert, x509.SubjectKeyIdentifier)
    assert cert.issuer == cert.subject
    verify_directly_issued_by(cert, cert)
    if subject is not None:
        assert subject_pairs(cert.subject) == subject
    assert cert.signature_hash_algorithm.name == "sha256"


def assert_leaf(cert: x509.Certificate, *, cn: str, o: Iterable[str] = (), sans: Iterable[str] = (),
                eku: Iterable[str], ca: x509.Certificate | None = None,
                defaults: Iterable[tuple[str, str]] = (("C", "VN"), ("OU", "k8s-scratch"))) -> None:
    """Subject (defaults around O and CN, openssl order), SANs exactly, EKU exactly, usages."""
    defaults = dict(defaults)
    want = [("C", defaults["C"])] if "C" in defaults else []
    want += [(k, defaults[k]) for k in ("ST", "L") if k in defaults]
    want += [("O", g) for g in o]
    want += [("OU", defaults["OU"])] if "OU" in defaults else []
    want += [("CN", cn)]
    assert subject_pairs(cert.subject) == want
    assert san_strings(cert) == set(sans)
    e = ext(cert, x509.ExtendedKeyUsage)
    assert set(e.value) == {EKU[name] for name in eku}
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment == isinstance(cert.public_key(), rsa.RSAPublicKey)
    ext(cert, x509.SubjectKeyIdentifier)
    aki = ext(cert, x509.AuthorityKeyIdentifier)
    assert cert.signature_hash_algorithm.name == "sha256"
    if ca is not None:
        verify_directly_issued_by(cert, ca)
        ca_ski = ext(ca, x509.SubjectKeyIdentifier).value.digest
        assert aki.value.key_identifier == ca_ski


def key_algorithm(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return {"secp256r1": "ecdsa-p256"}[key.curve.name]


def openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --- inventories and generation without the CLI -------------------------------------------------

def _host(name: str, ip: str) -> Host:
    return Host(name=name, address=ip, internal_ip=ipaddress.ip_address(ip))


def example_inventory(pki_dir: Path, **changes) -> Inventory:
    """inventory/cluster.yaml as a model; `changes` replace PkiSettings or Inventory fields."""
    pki_fields = {f.name for f in dataclasses.fields(PkiSettings)}
    pki_changes = {k: v for k, v in changes.items() if k in pki_fields}
    inv_changes = {k: v for k, v in changes.items() if k not in pki_fields}
    endpoint = "https://10.0.1.10:6443"
    inv = Inventory(
        path=Path("inventory/cluster.yaml"),
        cluster=ClusterSpec(name="k8s-scratch", api_endpoint=endpoint,
                            service_cidr=ipaddress.ip_network("10.32.0.0/24"),
                            cluster_domain="cluster.local", service_account_issuer=endpoint,
                            api_audiences=(endpoint,)),
        pki=PkiSettings(dir=pki_dir, subject=(("C", "VN"), ("OU", "k8s-scratch")),
                        key_algorithm="rsa-2048", ca_validity_days=3650, cert_validity_days=365,
                        extra_sans=()),
        apiserver=ApiserverSpec(etcd_servers=("https://10.0.1.10:2379",)),
        ssh=SshSettings(),
        controllers=(_host("controller-0", "10.0.1.10"), _host("controller-1", "10.0.1.11"),
                     _host("controller-2", "10.0.1.12")),
        workers=(_host("worker-0", "10.0.1.20"),),
    )
    if pki_changes:
        inv = dataclasses.replace(inv, pki=dataclasses.replace(inv.pki, **pki_changes))
    if inv_changes:
        inv = dataclasses.replace(inv, **inv_changes)
    return inv


def add_controller(inv: Inventory, name: str = "controller-3", ip: str = "10.0.1.13") -> Inventory:
    return dataclasses.replace(inv, controllers=inv.controllers + (_host(name, ip),))


def generate(inv: Inventory, *, now: datetime | None = None, renew=(), force_new_ca=False):
    """The gen-certs cycle without the CLI: read, plan, issue, write. Returns the PkiResult."""
    from k8sboot import pki, store

    now = now or datetime.now(timezone.utc)
    spec = pki.build_pki_spec(inv)
    facts = store.read_pki(spec)
    plan = pki.plan_pki(spec, facts, now=now, renew=renew, force_new_ca=force_new_ca)
    result = pki.issue_pki(spec, facts, plan, now=now)
    store.write_pki_files(spec.dir, result.files)
    return result


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """name -> (bytes, mode, mtime_ns) of every file, to prove nothing changed."""
    out = {}
    for p in sorted(directory.iterdir()):
        st = p.lstat()
        out[p.name] = (p.read_bytes() if p.is_file() else b"", st.st_mode, st.st_mtime_ns)
    return out


def edit_inventory(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))
