"""The x509 authenticator (--client-ca-file): Go's crypto/x509 `Certificate.Verify` (roots = the
client CA bundle, intermediates = what the client presented, KeyUsages [ClientAuth]), step by step
and with Go's error text (checked against Go itself by tests/unit/test_go_oracle.py).

The leaf's unhandled critical extensions (any critical extension Go does not handle), then its
validity; then chains to a root, each candidate parent checked as CheckSignatureFrom (a CA,
keyCertSign when KeyUsage is set, a signature Go accepts: SHA-1 and MD5 are insecure, Ed448
unknown) and isValid (critical extensions, validity, CA bit of an intermediate, path length); then
per chain EKU clientAuth (a certificate without EKU, or with anyExtendedKeyUsage, allows it) and
the CAs' name constraints over the SANs below them (DNS, IP, email, URI; constraints.py). When no
chain is found the error is Go's: the last candidate's isValid error (an expired CA is
"certificate has expired"), or "signed by unknown authority" with the first hint. A certificate Go
cannot parse (critical SKID or AIA) is malformed. Certificate policies are not evaluated.
Username = the CN, groups = each O in order + system:authenticated, extra credential-id
`X509SHA256=<hex sha256 of the DER>`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8sboot.authn.config import AuthenticatorConfig
from k8sboot.authn.constraints import _chain_constraints_problem, _extension, _go_quote
from k8sboot.authn.names import CREDENTIAL_ID_KEY, X509, Reason
from k8sboot.authn.results import (
    AuthResult,
    UserInfo,
    _fail,
    _rfc3339,
    _utc,
    _with_authenticated_group,
)


def cert_not_valid_before(cert: x509.Certificate) -> datetime:
    """`not_valid_before_utc` when cryptography has it (>= 42), else the naive value as UTC."""
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=timezone.utc)


def cert_not_valid_after(cert: x509.Certificate) -> datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=timezone.utc)


# --- x509 ---------------------------------------------------------------------------------------


def _describe(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={cns[-1].value}" if cns else f"serial {cert.serial_number}"


# Go's crypto/x509 (the version of the oracle in tests/oracle) is followed here step by step:
# Certificate.Verify -> isValid(leaf) -> buildChains (CheckSignatureFrom, isValid(CA)) -> per chain
# extended key usage, then name constraints. Every message below is Go's error text.


@dataclass(frozen=True)
class _GoError:
    reason: Reason
    message: str                              # Go's err.Error()
    cert: x509.Certificate | None = None      # the authority certificate at fault, when not the leaf


def _go_name(cert: x509.Certificate) -> str:
    """How UnknownAuthorityError names a candidate: the CN, else the first O, else the serial."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and cns[-1].value:
        return str(cns[-1].value)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else f"serial:{cert.serial_number}"


def _validity_error(cert: x509.Certificate, now: datetime) -> _GoError | None:
    not_before, not_after = cert_not_valid_before(cert), cert_not_valid_after(cert)
    expired = "x509: certificate has expired or is not yet valid: current time"
    if now < not_before:
        return _GoError(Reason.CERT_NOT_YET_VALID,
                        f"{expired} {_rfc3339(now)} is before {_rfc3339(not_before)}")
    if now > not_after:
        return _GoError(Reason.CERT_EXPIRED, f"{expired} {_rfc3339(now)} is after {_rfc3339(not_after)}")
    return None


# The extensions Go's parser handles (processExtensions); any other one marked critical is an
# "unhandled critical extension". SAN is unhandled when it holds none of DNS/email/IP/URI, name
# constraints when they constrain another kind of name (e.g. a directoryName).
_GO_HANDLED_EXTENSIONS = frozenset({
    "2.5.29.14", "2.5.29.15", "2.5.29.17", "2.5.29.19", "2.5.29.30", "2.5.29.31", "2.5.29.32",
    "2.5.29.33", "2.5.29.35", "2.5.29.36", "2.5.29.37", "2.5.29.54", "1.3.6.1.5.5.7.1.1"})
_GO_NAME_TYPES = (x509.DNSName, x509.RFC822Name, x509.IPAddress, x509.UniformResourceIdentifier)


def _go_parse_error(cert: x509.Certificate) -> str | None:
    """What Go's ParseCertificate refuses and cryptography reads (a TLS handshake would fail)."""
    for ext in cert.extensions:
        if ext.critical and ext.oid.dotted_string == "2.5.29.14":
            return "x509: subject key identifier incorrectly marked critical"
        if ext.critical and ext.oid.dotted_string == "1.3.6.1.5.5.7.1.1":
            return "x509: authority info access incorrectly marked critical"
    return None


def _unhandled_critical_extension(cert: x509.Certificate) -> bool:
    for ext in cert.extensions:
        if not ext.critical:
            continue
        oid = ext.oid.dotted_string
        if oid not in _GO_HANDLED_EXTENSIONS:
            return True
        if oid == "2.5.29.17" and not any(isinstance(n, _GO_NAME_TYPES) for n in ext.value):
            return True
        if oid == "2.5.29.30":
            subtrees = [*(ext.value.permitted_subtrees or ()), *(ext.value.excluded_subtrees or ())]
            if any(not isinstance(n, _GO_NAME_TYPES) for n in subtrees):
                return True
    return False


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    return _extension(cert, x509.BasicConstraints)


def _any_key_usage(ku: x509.KeyUsage) -> bool:
    bits = [ku.digital_signature, ku.content_commitment, ku.key_encipherment, ku.data_encipherment,
            ku.key_agreement, ku.key_cert_sign, ku.crl_sign]
    if ku.key_agreement:
        bits += [ku.encipher_only, ku.decipher_only]
    return any(bits)


# signature OID -> (Go's name, key kind, hash name); hash None: Ed25519 (no pre-hashing)
_GO_SIGNATURE_ALGORITHMS = {
    "1.2.840.113549.1.1.4": ("MD5-RSA", "RSA", "md5"),
    "1.2.840.113549.1.1.5": ("SHA1-RSA", "RSA", "sha1"),
    "1.3.14.3.2.29": ("SHA1-RSA", "RSA", "sha1"),
    "1.2.840.113549.1.1.11": ("SHA256-RSA", "RSA", "sha256"),
    "1.2.840.113549.1.1.12": ("SHA384-RSA", "RSA", "sha384"),
    "1.2.840.113549.1.1.13": ("SHA512-RSA", "RSA", "sha512"),
    "1.2.840.113549.1.1.10": ("RSAPSS", "RSA", "pss"),
    "1.2.840.10040.4.3": ("DSA-SHA1", "DSA", "sha1"),
    "2.16.840.1.101.3.4.3.2": ("DSA-SHA256", "DSA", "sha256"),
    "1.2.840.10045.4.1": ("ECDSA-SHA1", "ECDSA", "sha1"),
    "1.2.840.10045.4.3.2": ("ECDSA-SHA256", "ECDSA", "sha256"),
    "1.2.840.10045.4.3.3": ("ECDSA-SHA384", "ECDSA", "sha384"),
    "1.2.840.10045.4.3.4": ("ECDSA-SHA512", "ECDSA", "sha512"),
    "1.3.101.112": ("Ed25519", "Ed25519", None),
}
_GO_UNSUPPORTED = "x509: cannot verify signature: algorithm unimplemented"
_CANNOT_SIGN = "x509: invalid signature: parent certificate cannot sign this kind of certificate"


def _go_key_kind(key: Any) -> str | None:
    """Go's PublicKeyAlgorithm for a parsed key; None where Go leaves PublicKey nil."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ECDSA"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA"
    return None


_GO_KEY_TYPE = {"RSA": "*rsa.PublicKey", "ECDSA": "*ecdsa.PublicKey", "Ed25519": "ed25519.PublicKey",
                "DSA": "*dsa.PublicKey"}


def _check_signature_from(child: x509.Certificate, parent: x509.Certificate) -> str | None:
    """Go's Certificate.CheckSignatureFrom: None when `parent` may sign and did sign `child`."""
    bc = _basic_constraints(parent)
    if (parent.version == x509.Version.v3 and bc is None) or (bc is not None and not bc.ca):
        return _CANNOT_SIGN
    ku = _extension(parent, x509.KeyUsage)
    if ku is not None and _any_key_usage(ku) and not ku.key_cert_sign:
        return _CANNOT_SIGN
    key = parent.public_key()
    kind = _go_key_kind(key)
    if kind is None:
        return _GO_UNSUPPORTED
    details = _GO_SIGNATURE_ALGORITHMS.get(child.signature_algorithm_oid.dotted_string)
    if details is None:
        return _GO_UNSUPPORTED
    name, algorithm_kind, hash_name = details
    if hash_name == "pss":
        hash_alg = child.signature_hash_algorithm
        if hash_alg is None or hash_alg.name not in ("sha256", "sha384", "sha512"):
            return _GO_UNSUPPORTED
    elif hash_name in ("md5", "sha1"):
        return f"x509: cannot verify signature: insecure algorithm {name}"
    if algorithm_kind != kind:
        if kind == "DSA":
            return _GO_UNSUPPORTED
        return (f"x509: signature algorithm specifies an {algorithm_kind} public key, but have "
                f"public key of type {_GO_KEY_TYPE[kind]}")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 1024:
                return (f"crypto/rsa: {key.key_size}-bit keys are insecure "
                        "(see https://go.dev/pkg/crypto/rsa#hdr-Minimum_key_size)")
            hash_alg = child.signature_hash_algorithm
            pad: padding.AsymmetricPadding = (
                padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
                if hash_name == "pss" else padding.PKCS1v15())
            try:
                key.verify(child.signature, child.tbs_certificate_bytes, pad, hash_alg)
            except InvalidSignature:
                return "crypto/rsa: verification error"
        elif isinstance(key, ec.EllipticCurvePublicKey):
            try:
                key.verify(child.signature, child.tbs_certificate_bytes,
                           ec.ECDSA(child.signature_hash_algorithm))
            except InvalidSignature:
                return "x509: ECDSA verification failure"
        elif isinstance(key, ed25519.Ed25519PublicKey):
            try:
                key.verify(child.signature, child.tbs_certificate_bytes)
            except InvalidSignature:
                return "x509: Ed25519 verification failure"
        else:
            return _GO_UNSUPPORTED
    except (UnsupportedAlgorithm, ValueError, TypeError):
        return _GO_UNSUPPORTED
    return None


def _is_valid(cert: x509.Certificate, chain: Sequence[x509.Certificate], now: datetime, *,
              intermediate: bool = False) -> _GoError | None:
    """Go's isValid for a candidate authority above `chain`, in its order."""
    if _unhandled_critical_extension(cert):
        return _GoError(Reason.CERT_UNHANDLED_CRITICAL_EXTENSION, "x509: unhandled critical extension")
    invalid = _validity_error(cert, now)
    if invalid is not None:
        return invalid
    bc = _basic_constraints(cert)
    if intermediate and (bc is None or not bc.ca):
        return _GoError(Reason.CERT_CHAIN_INVALID,
                        "x509: certificate is not authorized to sign other certificates")
    if bc is not None and bc.path_length is not None and len(chain) - 1 > bc.path_length:
        return _GoError(Reason.CERT_CHAIN_INVALID, "x509: too many intermediates for path length constraint")
    return None


def _key_id(cert: x509.Certificate, kind: type) -> bytes:
    value = _extension(cert, kind)
    if value is None:
        return b""
    return (value.digest if kind is x509.SubjectKeyIdentifier else value.key_identifier) or b""


def _potential_parents(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """CertPool.findPotentialParents: same subject as the issuer; key ids matching first."""
    issuer, akid = cert.issuer.public_bytes(), _key_id(cert, x509.AuthorityKeyIdentifier)
    ranked: tuple[list, list, list] = ([], [], [])
    for candidate in pool:
        if candidate.subject.public_bytes() != issuer:
            continue
        skid = _key_id(candidate, x509.SubjectKeyIdentifier)
        rank = 0 if skid == akid else 1 if (not skid) != (not akid) else 2
        ranked[rank].append(candidate)
    return [*ranked[0], *ranked[1], *ranked[2]]


def _san_bytes(cert: x509.Certificate) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == "2.5.29.17":
            return ext.value.public_bytes() if hasattr(ext.value, "public_bytes") else repr(ext.value).encode()
    return None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _already_in_chain(candidate: x509.Certificate, chain: Sequence[x509.Certificate]) -> bool:
    """Go compares subject, public key and SAN (not the bytes): cross-signing loops end here."""
    for cert in chain:
        if (cert.subject.public_bytes() == candidate.subject.public_bytes()
                and _spki(cert) == _spki(candidate) and _san_bytes(cert) == _san_bytes(candidate)):
            return True
    return False


_MAX_SIGNATURE_CHECKS = 100     # Go's maxChainSignatureChecks


def _build_chains(chain: list[x509.Certificate], intermediates: Sequence[x509.Certificate],
                  roots: Sequence[x509.Certificate], now: datetime,
                  checks: list[int]) -> tuple[list[list[x509.Certificate]], _GoError | None]:
    """Go's buildChains, including which error it returns: the last candidate's isValid error (or
    a deeper level's error) when no chain is found, else UnknownAuthorityError with the first hint."""
    current = chain[-1]
    chains: list[list[x509.Certificate]] = []
    err: _GoError | None = None
    hint: tuple[str, x509.Certificate] | None = None
    for is_root, pool in ((True, roots), (False, intermediates)):
        for candidate in _potential_parents(current, pool):
            checks[0] += 1
            if checks[0] > _MAX_SIGNATURE_CHECKS:
                err = _GoError(Reason.CERT_UNKNOWN_AUTHORITY, "x509: signature check attempts limit "
                                                              "reached while verifying certificate chain")
                break
            if _go_key_kind(candidate.public_key()) is None or _already_in_chain(candidate, chain):
                continue
            problem = _check_signature_from(current, candidate)
            if problem is not None:
                hint = hint or (problem, candidate)
                continue
            err = _is_valid(candidate, chain, now, intermediate=not is_root)
            if err is not None:
                err = _GoError(err.reason, err.message, candidate)
                hint = hint or (err.message, candidate)
                continue
            if is_root:
                chains.append([*chain, candidate])
            else:
                found, err = _build_chains([*chain, candidate], intermediates, roots, now, checks)
                chains.extend(found)
        else:
            continue
        break
    if chains:
        return chains, None
    if err is None:
        message = "x509: certificate signed by unknown authority"
        if hint is not None:
            message += (f" (possibly because of {_go_quote(hint[0])} while trying to verify "
                        f"candidate authority certificate {_go_quote(_go_name(hint[1]))})")
        err = _GoError(Reason.CERT_UNKNOWN_AUTHORITY, message)
    return chains, err


def _eku_allows_client_auth(chain: Sequence[x509.Certificate]) -> bool:
    """Go's checkChainForKeyUsage for [ClientAuth]: every cert with an EKU must allow it."""
    for cert in reversed(chain):
        eku = _extension(cert, x509.ExtendedKeyUsage)
        usages = list(eku) if eku is not None else []
        if not usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
            continue
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            return False
    return True


def _go_verify(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
               roots: Sequence[x509.Certificate], now: datetime) -> _GoError | list[list[x509.Certificate]]:
    """Go's Certificate.Verify with KeyUsages [ClientAuth]: the chains, or the error Go returns."""
    if _unhandled_critical_extension(leaf):
        return _GoError(Reason.CERT_UNHANDLED_CRITICAL_EXTENSION, "x509: unhandled critical extension")
    invalid = _validity_error(leaf, now)
    if invalid is not None:
        return invalid
    der = leaf.public_bytes(serialization.Encoding.DER)
    if any(der == root.public_bytes(serialization.Encoding.DER) for root in roots):
        chains = [[leaf]]            # the leaf is itself a trusted root (Go: opts.Roots.contains)
    else:
        chains, err = _build_chains([leaf], intermediates, roots, now, [0])
        if err is not None:
            return err
    incompatible, constraints_detail, valid = 0, None, []
    for chain in chains:
        if not _eku_allows_client_auth(chain):
            incompatible += 1
            continue
        problem = _chain_constraints_problem(chain)
        if problem is not None:
            constraints_detail = constraints_detail or problem
            continue
        valid.append(chain)
    if valid:
        return valid
    if constraints_detail is not None:
        return _GoError(Reason.CERT_NAME_NOT_AUTHORIZED, "x509: a root or intermediate certificate is "
                        f"not authorized to sign for this name: {constraints_detail}")
    return _GoError(Reason.CERT_INCOMPATIBLE_USAGE, "x509: certificate specifies an incompatible key usage")


# The CA certificates in an AuthenticatorConfig are shared by every request thread of the lab's
# stand-in. Debian bookworm's python3-cryptography (38) keeps a certificate's parsed parts in a
# Rust cell that two threads may not borrow at once: reading the same CA's extensions or key from
# two requests raised "Already borrowed", and the stand-in dropped the connection (seen as
# failed requests through the lab's load balancer). One verification at a time: it takes about a
# millisecond, and the x509 decision is unchanged.
_CA_LOCK = threading.Lock()


def authenticate_cert(
    client_cert_der: bytes,
    config: AuthenticatorConfig,
    now: datetime,
    *,
    intermediates_der: Sequence[bytes] = (),
) -> AuthResult:
    """The x509 authenticator (--client-ca-file) alone, for one presented client certificate."""
    with _CA_LOCK:
        return _authenticate_cert(client_cert_der, config, now, intermediates_der=intermediates_der)


_HINTS = {
    Reason.CERT_INCOMPATIBLE_USAGE: " (the API server needs Extended Key Usage clientAuth)",
}


def _authenticate_cert(
    client_cert_der: bytes,
    config: AuthenticatorConfig,
    now: datetime,
    *,
    intermediates_der: Sequence[bytes] = (),
) -> AuthResult:
    now = _utc(now)
    if not config.client_ca:
        return _fail(X509, Reason.CERT_AUTHENTICATOR_OFF,
                     "a client certificate was presented but no --client-ca-file is configured",
                     is_error=False)
    try:
        leaf = x509.load_der_x509_certificate(bytes(client_cert_der))
        intermediates = [x509.load_der_x509_certificate(bytes(d)) for d in intermediates_der]
        refused = next(filter(None, (_go_parse_error(c) for c in (leaf, *intermediates))), None)
        if refused is None:
            result = _go_verify(leaf, _unique(intermediates), _unique(config.client_ca), now)
    except ValueError as exc:
        return _fail(X509, Reason.CERT_MALFORMED, f"client certificate cannot be parsed: {exc}")
    if refused is not None:
        return _fail(X509, Reason.CERT_MALFORMED, f"client certificate cannot be parsed: {refused}")
    who = f"client certificate {_describe(leaf)}"
    if isinstance(result, _GoError):
        message = f"{who}: {result.message}{_HINTS.get(result.reason, '')}"
        if result.cert is not None:
            message += f" (of the authority certificate {_go_quote(_go_name(result.cert))})"
        return _fail(X509, result.reason, message)

    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(cns[-1].value) if cns else ""          # Go keeps the last CN
    if not common_name:
        return _fail(X509, Reason.CERT_EMPTY_COMMON_NAME,
                     f"client certificate (serial {leaf.serial_number}) verifies but has an empty "
                     "Common Name, so the x509 authenticator does not recognise it", is_error=False)
    organizations = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    fingerprint = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    user = UserInfo(
        username=common_name,
        groups=_with_authenticated_group(organizations),
        extra={CREDENTIAL_ID_KEY: (f"X509SHA256={fingerprint}",)},
    )
    return AuthResult(user, X509)


def _unique(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """A CertPool holds each certificate once (by its bytes), in the order added."""
    seen: set[bytes] = set()
    out = []
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            out.append(cert)
    return out
