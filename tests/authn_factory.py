"""Test helper: a tiny CA, client certificates and ServiceAccount keys/tokens, all in memory.

Independent of k8sboot.pki (tests of authentication must not depend on the PKI module) and usable
under cryptography 38 / PyJWT 2.6 (the lab hosts' versions): no `*_utc` attributes, no
`load_pem_x509_certificates`. Keys are cached per (kind, slot) because RSA generation is slow.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
ISSUER = "https://10.0.1.10:6443"
SUBJECT_DEFAULTS = (("C", "VN"), ("OU", "k8s-scratch"))

_OIDS = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME,
         "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}
EKU = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH, "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
       "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


@functools.lru_cache(maxsize=None)
def private_key(kind: str = "rsa", slot: str = "default"):
    """One cached key per (kind, slot): 'rsa' (2048), 'ec' (P-256), 'ec384', 'ed25519'."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: Any

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def _name(pairs: Sequence[tuple[str, str]]) -> x509.Name:
    return x509.Name([x509.NameAttribute(_OIDS[k], v) for k, v in pairs])


def _hash_for(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


_serial = iter(range(1000, 10**9))


def make_ca(cn: str = "Kubernetes", *, key=None, parent: Issued | None = None,
            not_before: datetime | None = None, not_after: datetime | None = None,
            eku: Sequence[str] | None = None, is_ca: bool = True, path_length: int | None = None,
            key_cert_sign: bool = True) -> Issued:
    """A CA (self-signed, or an intermediate when `parent` is given)."""
    key = key or private_key("rsa", f"ca-{cn}")
    subject = _name((*SUBJECT_DEFAULTS, ("CN", cn)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject if parent else subject)
        .public_key(key.public_key())
        .serial_number(next(_serial))
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None),
                       critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([EKU[e] for e in eku]), critical=False)
    signer = parent.key if parent else key
    return Issued(builder.sign(signer, _hash_for(signer)), key)


def make_client_cert(ca: Issued, cn: str | None = "admin", orgs: Sequence[str] = ("system:masters",),
                     *, eku: Sequence[str] | None = ("clientAuth",), key=None,
                     not_before: datetime | None = None, not_after: datetime | None = None,
                     subject: Sequence[tuple[str, str]] | None = None) -> Issued:
    """A leaf signed by `ca`. `eku=None` omits the extension; `cn=None` omits the CN."""
    key = key or private_key("rsa", "leaf")
    if subject is None:
        subject = [("C", "VN"), *(("O", o) for o in orgs), ("OU", "k8s-scratch")]
        if cn is not None:
            subject.append(("CN", cn))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(next(_serial))
        .not_valid_before(not_before or NOW - timedelta(minutes=5))
        .not_valid_after(not_after or NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=True, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([EKU[e] for e in eku]), critical=False)
    return Issued(builder.sign(ca.key, _hash_for(ca.key)), key)


# --- ServiceAccount tokens, built by hand so that authn tests do not depend on k8sboot.tokens ---


def sa_claims(namespace: str = "authn-demo", name: str = "bot", *, iss: str = ISSUER,
              aud: Any = (ISSUER,), now: datetime = NOW, lifetime: timedelta = timedelta(minutes=10),
              uid: str = "6f7c6f3a-0000-4000-8000-000000000001", jti: str | None = "jti-1",
              **overrides: Any) -> dict[str, Any]:
    """Claims like a TokenRequest token; `overrides` replace (or, with value None, drop) claims."""
    iat = int(now.timestamp())
    claims: dict[str, Any] = {
        "aud": list(aud) if isinstance(aud, (list, tuple)) else aud,
        "exp": iat + int(lifetime.total_seconds()),
        "iat": iat,
        "iss": iss,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        "nbf": iat,
        "sub": f"system:serviceaccount:{namespace}:{name}",
    }
    if jti is not None:
        claims["jti"] = jti
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def sign_token(claims: dict[str, Any], key=None, alg: str | None = None,
               headers: dict[str, Any] | None = None) -> str:
    """A JWS by PyJWT; RS256 for RSA keys, ES256 for EC keys unless `alg` says otherwise."""
    import jwt

    key = key or private_key("rsa", "sa")
    alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": "test", **(headers or {})})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled byte by byte (for alg none, forged HMAC, tampering)."""
    return ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
                     b64url(signature)))


def random_uid() -> str:
    return str(uuid.uuid4())
