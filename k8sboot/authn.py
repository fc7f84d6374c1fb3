"""Stage 1 of every API request, offline: who kube-apiserver says you are, or why it answers 401.

One implementation for `k8sboot whoami` / `k8sboot token decode` on the workstation and for the
lab's kube-apiserver stand-in on the hosts. This file is copied as-is onto lab hosts that have
only Debian bookworm's python3 (3.11), python3-cryptography 38.0.4 and python3-jwt (PyJWT 2.6.0):
it imports only the standard library, `cryptography` and `jwt`, nothing from k8sboot, and uses
only APIs present in those versions. Pure: no I/O except `load_authenticator_config`, and the
clock is always passed in as `now` (an aware datetime; a naive one is taken as UTC).

Public API
----------
Configuration (what the API server's flags give)::

    load_authenticator_config(*, client_ca_file=None, service_account_key_files=(),
                              service_account_issuers=(), api_audiences=(),
                              anonymous_auth=True) -> AuthenticatorConfig
        Reads the files named by --client-ca-file and --service-account-key-file (the only I/O
        here). Raises AuthnConfigError(path, message, missing=bool).
    parse_client_ca(pem: bytes, source="client CA") -> tuple[x509.Certificate, ...]
    parse_service_account_keys(pem: bytes, source="service account key") -> tuple[PublicKey, ...]
        PEM public keys, private keys (their public half is used) or certificates; RSA or EC.
    AuthenticatorConfig(client_ca=(), service_account_keys=(), service_account_issuers=(),
                        api_audiences=(), anonymous_auth=True)      # frozen; .audiences

Decisions (each returns an AuthResult; none raises for a bad credential)::

    authenticate_request(client_cert_der: bytes | None, authorization: str | None,
                         config, now, *, intermediates_der=(), service_accounts=None) -> AuthResult
        The union authenticator: x509 client cert, then bearer ServiceAccount JWT, then
        anonymous. `authorization` is the raw Authorization header value.
    authenticate_cert(client_cert_der: bytes, config, now, *, intermediates_der=()) -> AuthResult
    authenticate_token(token: str, config, now, *, service_accounts=None) -> AuthResult
        service_accounts: Callable[[namespace, name], uid | None] | None, the ServiceAccounts a
        server stores (None: offline, no lookup). Given, a token passes only if its
        ServiceAccount exists with the claim's uid, and a token bound to a Secret, Pod or Node
        fails (none are stored), as upstream fails when the object is not found.
    anonymous(config) -> AuthResult
    bearer_token_from_header(authorization: str | None) -> str | None
    inspect_token(token, config, now) -> TokenInspection     # every check, not short-circuited
    parse_jwt(token) -> JwtParts                             # raises MalformedTokenError
    is_legacy_token(claims) -> bool; lookup_requirement(claims) -> str
    cert_not_valid_before(cert) / cert_not_valid_after(cert) -> aware UTC datetime (any version)

Constants: USER_ANONYMOUS, GROUP_AUTHENTICATED, GROUP_UNAUTHENTICATED, CREDENTIAL_ID_KEY, LEEWAY,
MAX_TOKEN_BYTES, MAX_JSON_DEPTH, SUPPORTED_TOKEN_ALGORITHMS; Reason (str enum of stable failure
codes).

For a server: pass `ssl_socket.getpeercert(binary_form=True)` as `client_cert_der` and the raw
Authorization header; answer 201 + `result.self_subject_review(now)` to a SelfSubjectReview POST,
401 + `result.status()` when not authenticated, and log `result.summary()`.

Results::

    AuthResult.authenticated: bool; .user: UserInfo | None; .authenticator: "x509" |
        "serviceaccount" | "anonymous" | ""; .failures: tuple[Failure, ...] (also the ignored
        credentials of an authenticated result); .reason: str (one line, why it is a 401);
        .reason_code: Reason | None; .summary(): one log line;
        .self_subject_review(now=None) -> dict   # POST .../selfsubjectreviews response body
        .status(include_reason=False) -> dict    # the 401 Status body ("message": "Unauthorized"
                                                 # like the real server; the why only on request)
    UserInfo(username, uid="", groups=(), extra={}).to_json() -> {"username", "uid"?, "groups",
        "extra"?} (empty fields omitted, like the API's omitempty)
    Failure(authenticator, reason: Reason, message, is_error=True)

Semantics (kube-apiserver's, checked against its source):

- Union with fail-on-error: a credential that an authenticator rejects is an *error*, and any
  error gives 401 even with anonymous auth on. A credential that an authenticator merely does not
  recognise is *ignored*: a client cert whose chain verifies but whose CN is empty (the x509
  authenticator returns "not ok, no error"), or an Authorization header that is not
  `Bearer <token>`. With nothing but ignored credentials the request is anonymous when
  --anonymous-auth is on, else 401.
- x509: Go's crypto/x509 `Certificate.Verify` (roots = the client CA bundle, intermediates = what
  the client presented, KeyUsages [ClientAuth]), step by step and with Go's error text (checked
  against Go itself by tests/unit/test_go_oracle.py): the leaf's unhandled critical extensions
  (any critical extension Go does not handle), then its validity; then chains to a root, each
  candidate parent checked as CheckSignatureFrom (a CA, keyCertSign when KeyUsage is set, a
  signature Go accepts: SHA-1 and MD5 are insecure, Ed448 unknown) and isValid (critical
  extensions, validity, CA bit of an intermediate, path length); then per chain EKU clientAuth (a
  certificate without EKU, or with anyExtendedKeyUsage, allows it) and the CAs' name constraints
  over the SANs below them (DNS, IP, email, URI). When no chain is found the error is Go's: the
  last candidate's isValid error (an expired CA is "certificate has expired"), or "signed by
  unknown authority" with the first hint. A certificate Go cannot parse (critical SKID or AIA) is
  malformed. Certificate policies are not evaluated. Username = the CN, groups = each O in
  order + system:authenticated, extra credential-id `X509SHA256=<hex sha256 of the DER>`.
- ServiceAccount JWT, in the real authenticator's order: well-formed (3 base64url segments, JSON
  objects nesting at most MAX_JSON_DEPTH levels, at most MAX_TOKEN_BYTES), `iss` among the
  issuers or the legacy `kubernetes/serviceaccount` (read before the signature, as the real
  server does), alg among SUPPORTED_TOKEN_ALGORITHMS: what go-jose verifies with the key types the
  server loads, RS/PS 256/384/512 with an RSA key, ES256/ES384/ES512 with a P-256/P-384/P-521 key
  (none and HS* are refused with their own message; a key is never handed to PyJWT with any other
  algorithm, so a public key can never serve as an HMAC secret), signature by one of the keys
  (all tried; `kid` is not used for selection), `aud` (string or list) intersecting the API
  audiences (a token without `aud` gets the API audiences, the real server's legacy rule), then
  nbf / exp / iat with go-jose's 60 s leeway, then the `kubernetes.io` claims (namespace and
  serviceaccount name required). `sub` is not compared: the username comes from
  `kubernetes.io`, as upstream's ServiceAccountInfo does. Username
  `system:serviceaccount:<ns>:<name>`, uid the serviceaccount uid, groups system:serviceaccounts,
  system:serviceaccounts:<ns>, system:authenticated; extra credential-id `JTI=<jti>` when there is
  a jti, pod-name/pod-uid and node-name/node-uid when bound.
- Legacy secret-based tokens (iss `kubernetes/serviceaccount`, pkg/serviceaccount/legacy.go):
  accepted with the same keys; no time claims are checked; the four
  `kubernetes.io/serviceaccount/*` claims are required and `sub` must name the same account.
- Lookups (only with `service_accounts`): the ServiceAccount named by the claims must exist with
  the claim's uid (`serviceaccounts "bot" not found`, `service account UID (x) does not match
  claim (y)`); a token bound to a Secret/Pod/Node fails as "service account token has been
  invalidated" since no such objects are stored, and so does a legacy token (its Secret).
  Deletion timestamps are not modelled. Offline, `lookup_requirement(claims)` says what a real
  server will additionally require.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]
# (namespace, name) -> the uid of the stored ServiceAccount, or None when there is none
ServiceAccountLookup = Callable[[str, str], Optional[str]]

# --- names the API server uses -----------------------------------------------------------------

USER_ANONYMOUS = "system:anonymous"
GROUP_UNAUTHENTICATED = "system:unauthenticated"
GROUP_AUTHENTICATED = "system:authenticated"
GROUP_SERVICE_ACCOUNTS = "system:serviceaccounts"
SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:"
CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
NODE_UID_KEY = "authentication.kubernetes.io/node-uid"

X509 = "x509"
SERVICE_ACCOUNT = "serviceaccount"
ANONYMOUS = "anonymous"

# What go-jose verifies with the key types kube-apiserver loads (pkg/serviceaccount/jwt.go hands
# every --service-account-key-file key to go-jose): RSA keys PKCS#1 v1.5 and PSS, ECDSA keys the
# ES* algorithm of their own curve (the signature size must match the curve). Upstream signs
# RS256 with an RSA key and ES256/ES384/ES512 with a P-256/P-384/P-521 key.
SUPPORTED_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                              "ES256", "ES384", "ES512")
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_CURVE_FOR_ALGORITHM = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
LEGACY_ISSUER = "kubernetes/serviceaccount"  # secret-based tokens; always accepted with SA keys
_LEGACY_CLAIM = "kubernetes.io/serviceaccount/"
LEEWAY = timedelta(seconds=60)          # go-jose's jwt.DefaultLeeway, used by the API server
MAX_TOKEN_BYTES = 1 << 20               # Go's http.DefaultMaxHeaderBytes: a header cannot be larger
MAX_JSON_DEPTH = 64                     # a real token nests 3 levels; deeper JSON is refused as
                                        # malformed before anything recurses over it


class Reason(str, Enum):
    """Why a credential was not accepted; the value is a stable machine-readable code."""

    ANONYMOUS_DISABLED = "anonymous_disabled"
    CERT_MALFORMED = "cert_malformed"
    CERT_UNKNOWN_AUTHORITY = "cert_unknown_authority"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_INCOMPATIBLE_USAGE = "cert_incompatible_usage"
    CERT_UNHANDLED_CRITICAL_EXTENSION = "cert_unhandled_critical_extension"
    CERT_CHAIN_INVALID = "cert_chain_invalid"                  # a CA above it: not a CA, path length
    CERT_NAME_NOT_AUTHORIZED = "cert_name_not_authorized"      # a CA's name constraints exclude a SAN
    CERT_EMPTY_COMMON_NAME = "cert_empty_common_name"          # ignored, not an error
    CERT_AUTHENTICATOR_OFF = "cert_authenticator_off"          # ignored: no --client-ca-file
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_UNSUPPORTED_ALGORITHM = "token_unsupported_algorithm"
    TOKEN_WRONG_ISSUER = "token_wrong_issuer"
    TOKEN_BAD_SIGNATURE = "token_bad_signature"
    TOKEN_WRONG_AUDIENCE = "token_wrong_audience"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_ISSUED_IN_FUTURE = "token_issued_in_future"
    TOKEN_INVALID_CLAIMS = "token_invalid_claims"
    TOKEN_SERVICE_ACCOUNT_NOT_FOUND = "token_service_account_not_found"
    TOKEN_SERVICE_ACCOUNT_UID_MISMATCH = "token_service_account_uid_mismatch"
    TOKEN_INVALIDATED = "token_invalidated"                    # its bound object is not found
    TOKEN_AUTHENTICATOR_OFF = "token_authenticator_off"        # ignored: no SA keys configured


class AuthnConfigError(Exception):
    """A file named by a flag cannot be read or parsed. `missing` when it does not exist."""

    def __init__(self, path: str, message: str, *, missing: bool = False):
        super().__init__(message)
        self.path = path
        self.message = message
        self.missing = missing

    def __str__(self) -> str:
        return self.message


class MalformedTokenError(ValueError):
    """The text is not a JWS compact serialization with JSON header and claims."""


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthenticatorConfig:
    """The authentication flags of kube-apiserver, with files already parsed."""

    client_ca: tuple[x509.Certificate, ...] = ()             # --client-ca-file (empty: x509 off)
    service_account_keys: tuple[PublicKey, ...] = ()         # --service-account-key-file
    service_account_issuers: tuple[str, ...] = ()            # --service-account-issuer (repeatable)
    api_audiences: tuple[str, ...] = ()                      # --api-audiences
    anonymous_auth: bool = True                              # --anonymous-auth (server default: true)

    @property
    def audiences(self) -> tuple[str, ...]:
        """--api-audiences, or by default the issuers (what the API server does)."""
        return self.api_audiences or self.service_account_issuers


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


def _pem_blocks(pem: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode("ascii"), m.group(0)) for m in _PEM_BLOCK.finditer(pem)]


def parse_client_ca(pem: bytes, source: str = "client CA") -> tuple[x509.Certificate, ...]:
    """Every CERTIFICATE block of a CA bundle; AuthnConfigError when there is none or one is bad."""
    certs = []
    for kind, block in _pem_blocks(pem):
        if kind != "CERTIFICATE":
            continue
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise AuthnConfigError(source, f"unable to load client CA file {source}: {exc}") from exc
    if not certs:
        raise AuthnConfigError(source, f"unable to load client CA file {source}: "
                                       "data does not contain any valid PEM certificate")
    return tuple(certs)


def _usable_public_key(key: Any) -> PublicKey | None:
    if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return key
    return None


def parse_service_account_keys(pem: bytes, source: str = "service account key") -> tuple[PublicKey, ...]:
    """RSA/EC public keys from PEM public keys, private keys or certificates (like keyutil)."""
    keys: list[PublicKey] = []
    for kind, block in _pem_blocks(pem):
        try:
            if kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = _usable_public_key(serialization.load_pem_public_key(block))
            elif kind in ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"):
                key = _usable_public_key(serialization.load_pem_private_key(block, password=None).public_key())
            elif kind == "CERTIFICATE":
                key = _usable_public_key(x509.load_pem_x509_certificate(block).public_key())
            else:
                continue   # tolerated, like "EC PARAMETERS"
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise AuthnConfigError(source, f"failed to parse service-account-key-file {source}: "
                                           f"{kind} block: {exc}") from exc
        if key is not None:
            keys.append(key)
    if not keys:
        raise AuthnConfigError(source, f"failed to parse service-account-key-file {source}: "
                                       "data does not contain any valid RSA or ECDSA public keys")
    return tuple(keys)


def _read(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise AuthnConfigError(str(path), f"{flag} {path}: no such file", missing=True) from exc
    except OSError as exc:
        raise AuthnConfigError(str(path), f"{flag} {path}: {exc.strerror or exc}") from exc


def load_authenticator_config(
    *,
    client_ca_file: str | Path | None = None,
    service_account_key_files: Sequence[str | Path] = (),
    service_account_issuers: Sequence[str] = (),
    api_audiences: Sequence[str] = (),
    anonymous_auth: bool = True,
) -> AuthenticatorConfig:
    """Read the files named by --client-ca-file and --service-account-key-file (the only I/O)."""
    client_ca: tuple[x509.Certificate, ...] = ()
    if client_ca_file is not None:
        client_ca = parse_client_ca(_read(client_ca_file, "--client-ca-file"), str(client_ca_file))
    keys: list[PublicKey] = []
    for path in service_account_key_files:
        keys.extend(parse_service_account_keys(_read(path, "--service-account-key-file"), str(path)))
    return AuthenticatorConfig(
        client_ca=client_ca,
        service_account_keys=tuple(keys),
        service_account_issuers=tuple(service_account_issuers),
        api_audiences=tuple(api_audiences),
        anonymous_auth=anonymous_auth,
    )


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The API's `UserInfo` object (empty uid/groups/extra omitted, keys of extra sorted)."""
        out: dict[str, Any] = {"username": self.username}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(self.extra[k]) for k in sorted(self.extra)}
        return out


@dataclass(frozen=True)
class Failure:
    """One authenticator's verdict on one credential. `is_error` False: merely not recognised."""

    authenticator: str
    reason: Reason
    message: str
    is_error: bool = True


@dataclass(frozen=True)
class AuthResult:
    user: UserInfo | None
    authenticator: str = ""
    failures: tuple[Failure, ...] = ()

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def reason(self) -> str:
        """Why the request is a 401, one line (empty when authenticated)."""
        if self.authenticated:
            return ""
        return "; ".join(f.message for f in self.failures) or "Unauthorized"

    @property
    def reason_code(self) -> Reason | None:
        if self.authenticated or not self.failures:
            return None
        errors = [f for f in self.failures if f.is_error]
        return (errors or list(self.failures))[0].reason

    def summary(self) -> str:
        """One line for a log: who, by what; or 401 and why."""
        if self.user is None:
            return f"401 Unauthorized: {self.reason}"
        groups = " ".join(self.user.groups)
        return f'authenticated user="{self.user.username}" groups=[{groups}] by {self.authenticator}'

    def self_subject_review(self, now: datetime | None = None) -> dict[str, Any]:
        """The body of `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (authenticated)."""
        if self.user is None:
            raise ValueError("a 401 has no SelfSubjectReview; use status()")
        return {
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": _rfc3339(now) if now is not None else None},
            "status": {"userInfo": self.user.to_json()},
        }

    def status(self, include_reason: bool = False) -> dict[str, Any]:
        """The 401 `Status` body. The real server says only "Unauthorized"; the why is logged.

        With `include_reason`, the why is added as details.causes (for `whoami --json`).
        """
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
        if include_reason and self.failures:
            body["details"] = {"causes": [{"reason": f.reason.value, "message": f.message}
                                          for f in self.failures]}
        return body


def _fail(authenticator: str, reason: Reason, message: str, *, is_error: bool = True) -> AuthResult:
    return AuthResult(None, "", (Failure(authenticator, reason, message, is_error),))


def _with_authenticated_group(groups: Sequence[str]) -> tuple[str, ...]:
    """group.AuthenticatedGroupAdder: add system:authenticated unless already (un)authenticated."""
    if GROUP_AUTHENTICATED in groups or GROUP_UNAUTHENTICATED in groups:
        return tuple(groups)
    return (*groups, GROUP_AUTHENTICATED)


# --- time helpers (cryptography 38 has only the naive attributes) -----------------------------


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _rfc3339(moment: datetime) -> str:
    return _utc(moment).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _go_quote(text: str) -> str:
    """Go's %q for printable text."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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


def _extension(cert: x509.Certificate, kind: type) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


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


# --- name constraints (Go's constraints.go) -------------------------------------------------------


def _domain_name_valid(name: str, constraint: bool = False) -> bool:
    if not name:
        return True
    if name.endswith("."):
        return False
    if constraint and name.startswith("."):
        name = name[1:]
    return all(label and all(33 <= ord(c) <= 126 for c in label) for label in name.split("."))


def _dns_has_suffix(constraint: str, name: str) -> bool:
    """dnsHasSuffix: `constraint` is a label suffix of `name` (ASCII case-insensitively); a
    leading-period constraint needs at least one more label."""
    if len(constraint) > len(name) or not name.lower().endswith(constraint.lower()):
        return False
    return constraint.startswith(".") or len(name) == len(constraint) or \
        name[len(name) - len(constraint) - 1] == "."


def _trim_first_label(name: str) -> str:
    dot = name.find(".")
    return "" if dot < 0 else name[dot:]


def _dns_query(constraints: Sequence[str], name: str, *, permitted: bool) -> str | None:
    """The constraint that matches `name`, or None (an empty constraint matches everything)."""
    if any(c == "" for c in constraints):
        return ""
    for constraint in constraints:
        if _dns_has_suffix(constraint, name):
            return constraint
    if not permitted and name.startswith("*"):          # *.example.com vs excluded a.example.com
        parent = _trim_first_label(name.lower())
        for constraint in constraints:
            if parent and _trim_first_label(constraint.lower()) == parent:
                return constraint
    return None


def _mailbox(address: str) -> tuple[str, str] | None:
    local, at, domain = address.rpartition("@")
    return (local, domain.lower()) if at and local and domain else None


def _email_query(constraints: Sequence[str], mailbox: tuple[str, str], *, permitted: bool) -> str | None:
    for constraint in constraints:
        if "@" in constraint and _mailbox(constraint) == mailbox:
            return f"{mailbox[0]}@{mailbox[1]}"
    domains = [c for c in constraints if "@" not in c]
    return _dns_query(domains, mailbox[1], permitted=permitted) if domains else None


def _uri_host(uri: str) -> tuple[str | None, str | None]:
    """(host, None) or (None, error) as Go's parseURIs gives them."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(uri).netloc.rpartition("@")[2].lower()
    if not host:
        return None, f"URI with empty host ({_go_quote(uri)}) cannot be matched against constraints"
    if ":" in host and not host.endswith("]"):
        host = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = host.startswith("[") and host.endswith("]")
    if is_ip:
        return None, f"URI with IP ({_go_quote(uri)}) cannot be matched against constraints"
    return host, None


def _constraint_problem(nc: x509.NameConstraints, dns: Sequence[str], uris: Sequence[tuple[str, str]],
                        emails: Sequence[tuple[str, str]], ips: Sequence[Any]) -> str | None:
    def names(subtrees: Any, kind: type) -> list[Any]:
        return [s.value for s in (subtrees or ()) if isinstance(s, kind)]

    def check(kind: str, shown: str, permitted: list, excluded: list, query) -> str | None:
        if permitted and query(permitted, True) is None:
            return f"{kind} {_go_quote(shown)} is not permitted by any constraint"
        if excluded:
            constraint = query(excluded, False)
            if constraint is not None:
                return f"{kind} {_go_quote(shown)} is excluded by constraint {_go_quote(str(constraint))}"
        return None

    for ip in ips:
        def ip_query(nets: list, _permitted: bool, ip=ip) -> Any:
            same = [n for n in nets if n.version == ip.version]
            return next((n for n in same if ip in n), None)
        problem = check("IP address", str(ip), names(nc.permitted_subtrees, x509.IPAddress),
                        names(nc.excluded_subtrees, x509.IPAddress), ip_query)
        if problem:
            return problem
    for name in dns:
        if not _domain_name_valid(name):
            return f"x509: cannot parse dnsName {_go_quote(name)}"
        problem = check("DNS name", name, names(nc.permitted_subtrees, x509.DNSName),
                        names(nc.excluded_subtrees, x509.DNSName),
                        lambda cs, p, name=name: _dns_query(cs, name, permitted=p))
        if problem:
            return problem
    for uri, host in uris:
        if not _domain_name_valid(host):
            return f"x509: internal error: URI SAN {_go_quote(uri)} failed to parse"
        problem = check("URI", uri, names(nc.permitted_subtrees, x509.UniformResourceIdentifier),
                        names(nc.excluded_subtrees, x509.UniformResourceIdentifier),
                        lambda cs, p, host=host: _dns_query(cs, host, permitted=p))
        if problem:
            return problem
    for mailbox in emails:
        shown = f"{mailbox[0]}@{mailbox[1]}"
        if not _domain_name_valid(mailbox[1]):
            return f"x509: cannot parse rfc822Name {_go_quote(shown)}"
        problem = check("email address", shown, names(nc.permitted_subtrees, x509.RFC822Name),
                        names(nc.excluded_subtrees, x509.RFC822Name),
                        lambda cs, p, mailbox=mailbox: _email_query(cs, mailbox, permitted=p))
        if problem:
            return problem
    return None


def _chain_constraints_problem(chain: Sequence[x509.Certificate]) -> str | None:
    """Go's checkChainConstraints: each CA's name constraints bind the SANs of the certs below."""
    constrained = [(i, nc) for i, c in enumerate(chain)
                   for nc in (_extension(c, x509.NameConstraints),) if nc is not None]
    if not constrained:
        return None
    for i, cert in enumerate(chain):
        san = _extension(cert, x509.SubjectAlternativeName)
        if san is None:
            continue
        above = [nc for j, nc in constrained if j > i]
        if not above:
            return None
        uris: list[tuple[str, str]] = []
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            host, error = _uri_host(uri)
            if error:
                return error
            uris.append((uri, host or ""))
        emails = []
        for address in san.get_values_for_type(x509.RFC822Name):
            mailbox = _mailbox(address)
            if mailbox is None:
                return f"cannot parse rfc822Name {_go_quote(address)}"
            emails.append(mailbox)
        for nc in above:
            problem = _constraint_problem(nc, san.get_values_for_type(x509.DNSName), uris, emails,
                                          san.get_values_for_type(x509.IPAddress))
            if problem:
                return problem
    return None


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


# --- ServiceAccount JWT -------------------------------------------------------------------------


@dataclass(frozen=True)
class JwtParts:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes        # base64url(header) "." base64url(payload), what is signed
    signature: bytes


_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


def _b64url_decode(segment: str, what: str) -> bytes:
    if not _B64URL.match(segment):
        raise MalformedTokenError(f"the {what} is not base64url")
    stripped = segment.rstrip("=")
    if len(stripped) % 4 == 1:
        raise MalformedTokenError(f"the {what} is not base64url (impossible length)")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedTokenError(f"the {what} is not base64url: {exc}") from None


def _json_depth(value: Any) -> int:
    """How deeply arrays and objects nest (iteratively: a hostile token cannot recurse us)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedTokenError(f"the {what} is not JSON") from None
    except RecursionError:
        raise MalformedTokenError(f"the {what} nests more than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise MalformedTokenError(f"the {what} is not a JSON object")
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise MalformedTokenError(f"the {what} nests more than {MAX_JSON_DEPTH} levels")
    return value


def parse_jwt(token: str) -> JwtParts:
    """Split and decode a JWS compact token, verifying nothing. Raises MalformedTokenError."""
    if not isinstance(token, str):
        raise MalformedTokenError("the token is not text")
    if len(token) > MAX_TOKEN_BYTES:
        raise MalformedTokenError(f"the token is longer than {MAX_TOKEN_BYTES} bytes, more than "
                                  "an HTTP header can carry")
    if not token:
        raise MalformedTokenError("the token is empty")
    segments = token.split(".")
    if len(segments) != 3:
        raise MalformedTokenError("expected 3 dot-separated segments (header.payload.signature), "
                                  f"got {len(segments)}")
    header = _json_object(_b64url_decode(segments[0], "header"), "header")
    claims = _json_object(_b64url_decode(segments[1], "payload"), "payload")
    signature = _b64url_decode(segments[2], "signature")
    if not isinstance(header.get("alg"), str):
        raise MalformedTokenError('the header has no "alg"')
    return JwtParts(header, claims, f"{segments[0]}.{segments[1]}".encode("ascii"), signature)


def _algorithm_failure(alg: str) -> Failure | None:
    if alg in SUPPORTED_TOKEN_ALGORITHMS:
        return None
    accepted = ("the API server accepts only RS256/RS384/RS512/PS256/PS384/PS512 signatures by an "
                "RSA key or ES256/ES384/ES512 by a P-256/P-384/P-521 key of "
                "--service-account-key-file")
    if alg.lower() == "none":
        message = f'token algorithm "{alg}" means unsigned: {accepted}'
    elif alg.upper().startswith("HS"):
        message = (f'token algorithm "{alg}" is a shared-secret HMAC, and a public key is never '
                   f"used as an HMAC secret: {accepted}")
    else:
        message = f'token algorithm "{alg}" is not accepted: {accepted}'
    return Failure(SERVICE_ACCOUNT, Reason.TOKEN_UNSUPPORTED_ALGORITHM, message)


def _issuer_failure(claims: Mapping[str, Any], issuers: Sequence[str]) -> Failure | None:
    iss = claims.get("iss")
    if isinstance(iss, str) and (iss in issuers or iss == LEGACY_ISSUER):
        return None
    shown = json.dumps(iss) if iss is not None else "(none)"
    return Failure(SERVICE_ACCOUNT, Reason.TOKEN_WRONG_ISSUER,
                   f"token issuer {shown} is not one of the accepted issuers "
                   f"{json.dumps(list(issuers))} (--service-account-issuer), nor the legacy "
                   f"{json.dumps(LEGACY_ISSUER)} of secret-based tokens")


def _keys_for(alg: str, keys: Sequence[PublicKey]) -> list[PublicKey]:
    if alg in _RSA_ALGORITHMS:
        return [k for k in keys if isinstance(k, rsa.RSAPublicKey)]
    curve = _EC_CURVE_FOR_ALGORITHM.get(alg)
    return [k for k in keys if isinstance(k, ec.EllipticCurvePublicKey) and k.curve.name == curve]


def _signature_failure(token: str, alg: str, keys: Sequence[PublicKey]) -> Failure | None:
    """PyJWS verifies with each key of the right type, `algorithms` pinned to the header's one."""
    from jwt.api_jws import PyJWS
    from jwt.exceptions import InvalidSignatureError, PyJWTError

    candidates = _keys_for(alg, keys)
    if not candidates:
        kinds = sorted({"RSA" if isinstance(k, rsa.RSAPublicKey) else f"EC {k.curve.name}"
                        for k in keys}) or ["none"]
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_BAD_SIGNATURE,
                       f"token is signed {alg} but no --service-account-key-file key can verify "
                       f"that (keys: {', '.join(kinds)})")
    jws = PyJWS(algorithms=[alg])
    for key in candidates:
        try:
            jws.decode_complete(token, key=key, algorithms=[alg])
            return None
        except InvalidSignatureError:
            continue
        except PyJWTError as exc:
            return Failure(SERVICE_ACCOUNT, Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
    return Failure(SERVICE_ACCOUNT, Reason.TOKEN_BAD_SIGNATURE,
                   f"token signature ({alg}) does not verify against any of the "
                   f"{len(candidates)} --service-account-key-file key(s) that could have signed it")


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if aud is None:
        return ()
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise MalformedTokenError('"aud" must be a string or a list of strings')


def _audience_failure(claims: Mapping[str, Any], audiences: Sequence[str]) -> Failure | None:
    try:
        token_auds = _audiences(claims) or tuple(audiences)     # no aud: the API audiences
    except MalformedTokenError as exc:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
    if not audiences or set(token_auds) & set(audiences):
        return None
    return Failure(SERVICE_ACCOUNT, Reason.TOKEN_WRONG_AUDIENCE,
                   f"token audiences {json.dumps(list(token_auds))} do not include any of the "
                   f"API audiences {json.dumps(list(audiences))} (--api-audiences)")


def _numeric_date(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedTokenError(f'"{name}" must be a number of seconds since the epoch')
    try:
        return datetime.fromtimestamp(int(value), tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise MalformedTokenError(f'"{name}" is out of range') from None


def _time_failure(claims: Mapping[str, Any], now: datetime) -> Failure | None:
    """go-jose's order and 60 s leeway: nbf, then exp, then iat."""
    try:
        nbf, exp, iat = (_numeric_date(claims, n) for n in ("nbf", "exp", "iat"))
    except MalformedTokenError as exc:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
    leeway = int(LEEWAY.total_seconds())
    if nbf is not None and now + LEEWAY < nbf:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_NOT_YET_VALID,
                       f"service account token is not valid yet: nbf {_rfc3339(nbf)} is after "
                       f"now {_rfc3339(now)} (+{leeway}s leeway)")
    if exp is not None and now - LEEWAY > exp:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_EXPIRED,
                       f"service account token has expired: exp {_rfc3339(exp)} is before "
                       f"now {_rfc3339(now)} (-{leeway}s leeway)")
    if iat is not None and now + LEEWAY < iat:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_ISSUED_IN_FUTURE,
                       f"service account token is issued in the future: iat {_rfc3339(iat)} is "
                       f"after now {_rfc3339(now)} (+{leeway}s leeway)")
    return None


def _str_at(obj: Any, *path: str) -> str:
    for key in path:
        if not isinstance(obj, Mapping):
            return ""
        obj = obj.get(key)
    return obj if isinstance(obj, str) else ""


def _service_account_user(claims: Mapping[str, Any]) -> UserInfo | Failure:
    """The user the bound-token validator derives from the `kubernetes.io` claims."""
    def invalid(why: str) -> Failure:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_INVALID_CLAIMS,
                       f"service account token claims are invalid: {why}")

    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, Mapping):
        return invalid('no "kubernetes.io" claim (namespace, serviceaccount)')
    namespace = _str_at(k8s, "namespace")
    name = _str_at(k8s, "serviceaccount", "name")
    if not namespace or not name:
        return invalid('"kubernetes.io" needs namespace and serviceaccount.name')
    username = f"{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}"    # not `sub`: upstream
    extra: dict[str, tuple[str, ...]] = {}
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        extra[CREDENTIAL_ID_KEY] = (f"JTI={jti}",)
    pod_name, pod_uid = _str_at(k8s, "pod", "name"), _str_at(k8s, "pod", "uid")
    if pod_name and pod_uid:
        extra[POD_NAME_KEY], extra[POD_UID_KEY] = (pod_name,), (pod_uid,)
    node_name, node_uid = _str_at(k8s, "node", "name"), _str_at(k8s, "node", "uid")
    if node_name:
        extra[NODE_NAME_KEY] = (node_name,)
        if node_uid:
            extra[NODE_UID_KEY] = (node_uid,)
    return UserInfo(
        username=username,
        uid=_str_at(k8s, "serviceaccount", "uid"),
        groups=_with_authenticated_group(
            (GROUP_SERVICE_ACCOUNTS, f"{GROUP_SERVICE_ACCOUNTS}:{namespace}")),
        extra=extra,
    )


def is_legacy_token(claims: Mapping[str, Any]) -> bool:
    """A secret-based token (iss kubernetes/serviceaccount), judged by upstream's legacy validator."""
    return claims.get("iss") == LEGACY_ISSUER


def _legacy_service_account_user(claims: Mapping[str, Any]) -> UserInfo | Failure:
    """pkg/serviceaccount/legacy.go: the four private claims, and `sub` naming the same account."""
    def invalid(why: str) -> Failure:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_INVALID_CLAIMS,
                       f"legacy service account token claims are invalid: {why}")

    def claim(name: str) -> str:
        value = claims.get(_LEGACY_CLAIM + name)
        return value if isinstance(value, str) else ""

    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else ""
    namespace, secret = claim("namespace"), claim("secret.name")
    name, uid = claim("service-account.name"), claim("service-account.uid")
    for value, missing in ((sub, "sub claim is missing"), (namespace, "namespace claim is missing"),
                           (secret, "secretName claim is missing"),
                           (name, "serviceAccountName claim is missing"),
                           (uid, "serviceAccountUID claim is missing")):
        if not value:
            return invalid(missing)
    parts = sub.split(":")
    if (not sub.startswith(SERVICE_ACCOUNT_USER_PREFIX) or len(parts) != 4
            or parts[2] != namespace or parts[3] != name):
        return invalid(f"sub claim is invalid: {json.dumps(sub)} is not "
                       f"{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}")
    return UserInfo(
        username=f"{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}",
        uid=uid,
        groups=_with_authenticated_group(
            (GROUP_SERVICE_ACCOUNTS, f"{GROUP_SERVICE_ACCOUNTS}:{namespace}")),
    )


def lookup_requirement(claims: Mapping[str, Any]) -> str:
    """What a real API server also requires of an otherwise valid token, found by lookups a
    workstation cannot do: e.g. "ServiceAccount authn-demo/bot exists with uid 11ce93d6-…"."""
    if is_legacy_token(claims):
        def claim(name: str) -> str:
            value = claims.get(_LEGACY_CLAIM + name)
            return value if isinstance(value, str) else ""
        namespace = claim("namespace")
        return (f"Secret {namespace}/{claim('secret.name')} exists and holds this very token, and "
                f"ServiceAccount {namespace}/{claim('service-account.name')} exists with uid "
                f"{claim('service-account.uid')}")
    k8s = claims.get("kubernetes.io")
    namespace = _str_at(k8s, "namespace")
    needs = [f"ServiceAccount {namespace}/{_str_at(k8s, 'serviceaccount', 'name')} exists with uid "
             f"{_str_at(k8s, 'serviceaccount', 'uid') or '(none)'}"]
    if isinstance(k8s, Mapping):
        for kind, key in (("Secret", "secret"), ("Pod", "pod")):
            if isinstance(k8s.get(key), Mapping):
                needs.append(f"{kind} {namespace}/{_str_at(k8s, key, 'name')} exists with uid "
                             f"{_str_at(k8s, key, 'uid') or '(none)'}")
        if isinstance(k8s.get("node"), Mapping) and not isinstance(k8s.get("pod"), Mapping):
            needs.append(f"Node {_str_at(k8s, 'node', 'name')} exists with uid "
                         f"{_str_at(k8s, 'node', 'uid') or '(none)'}")
    return " and ".join(needs)


def _legacy_lookup_failure(claims: Mapping[str, Any]) -> Failure:
    """Upstream's legacy validator with --service-account-lookup (the default) first gets the
    Secret holding the token; no Secrets are stored here, so it is never found."""
    namespace = claims.get(_LEGACY_CLAIM + "namespace")
    secret = claims.get(_LEGACY_CLAIM + "secret.name")
    return Failure(SERVICE_ACCOUNT, Reason.TOKEN_INVALIDATED,
                   f"Token has been invalidated: the legacy token's Secret {namespace}/{secret} is "
                   "not found (this API server stores no Secrets; a real one with "
                   "--service-account-lookup, the default, also needs the Secret to hold the token)")


def _lookup_failure(claims: Mapping[str, Any], user: UserInfo,
                    service_accounts: ServiceAccountLookup) -> Failure | None:
    """The bound-token validator's lookups (pkg/serviceaccount/claims.go), in its order: the
    ServiceAccount must exist with the claim's uid, then the Secret, Pod or Node the token is bound
    to must exist. Only ServiceAccounts are stored here, so a token bound to an object fails as
    upstream fails when that object is not found."""
    k8s = claims.get("kubernetes.io")
    namespace, name = _str_at(k8s, "namespace"), _str_at(k8s, "serviceaccount", "name")
    stored_uid = service_accounts(namespace, name)
    if stored_uid is None:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_SERVICE_ACCOUNT_NOT_FOUND,
                       f'serviceaccounts "{name}" not found (the API server looks up '
                       f"ServiceAccount {namespace}/{name} named by the token)")
    if stored_uid != user.uid:
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_SERVICE_ACCOUNT_UID_MISMATCH,
                       f"service account UID ({stored_uid}) does not match claim ({user.uid}): "
                       f"the stored ServiceAccount {namespace}/{name} is not the object the "
                       "token was issued for")
    bound = [(kind, _str_at(k8s, key, "name")) for kind, key in
             (("Secret", "secret"), ("Pod", "pod"))
             if isinstance(k8s.get(key), Mapping)]
    if isinstance(k8s.get("node"), Mapping) and not isinstance(k8s.get("pod"), Mapping):
        bound.append(("Node", _str_at(k8s, "node", "name")))
    if bound:
        kind, obj = bound[0]
        where = obj if kind == "Node" else f"{namespace}/{obj}"
        return Failure(SERVICE_ACCOUNT, Reason.TOKEN_INVALIDATED,
                       f"service account token has been invalidated: it is bound to {kind} "
                       f"{where}, which is not found (this API server stores no {kind} objects)")
    return None


@dataclass(frozen=True)
class TokenInspection:
    """Every check of one token, each evaluated on its own (for `token decode`).

    A check is None when it passes; `algorithm`..`claims` are None too when `malformed` is set.
    `result` is the real, short-circuited decision (what authenticate_token returns).
    """

    parts: JwtParts | None
    malformed: Failure | None
    algorithm: Failure | None
    issuer: Failure | None
    signature: Failure | None
    audience: Failure | None
    validity: Failure | None
    claims: Failure | None
    result: AuthResult


def inspect_token(token: str, config: AuthenticatorConfig, now: datetime) -> TokenInspection:
    result = authenticate_token(token, config, now)
    now = _utc(now)
    try:
        parts = parse_jwt(token)
    except MalformedTokenError as exc:
        bad = Failure(SERVICE_ACCOUNT, Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
        return TokenInspection(None, bad, None, None, None, None, None, None, result)
    alg = parts.header["alg"]
    algorithm = _algorithm_failure(alg)
    legacy = is_legacy_token(parts.claims)
    user = (_legacy_service_account_user if legacy else _service_account_user)(parts.claims)
    return TokenInspection(
        parts=parts,
        malformed=None,
        algorithm=algorithm,
        issuer=_issuer_failure(parts.claims, config.service_account_issuers),
        signature=algorithm or _signature_failure(token, alg, config.service_account_keys),
        audience=_audience_failure(parts.claims, config.audiences),
        validity=None if legacy else _time_failure(parts.claims, now),   # legacy: never checked
        claims=user if isinstance(user, Failure) else None,
        result=result,
    )


def authenticate_token(token: str, config: AuthenticatorConfig, now: datetime, *,
                       service_accounts: ServiceAccountLookup | None = None) -> AuthResult:
    """The ServiceAccount JWT authenticator alone (every failure is an error, like the real one).

    `service_accounts(namespace, name)` returns the stored ServiceAccount's uid or None; given, a
    token is accepted only as upstream's validator accepts it after its lookups. None: offline,
    no lookup."""
    now = _utc(now)
    if not config.service_account_keys:
        return _fail(SERVICE_ACCOUNT, Reason.TOKEN_AUTHENTICATOR_OFF,
                     "a bearer token was presented but no --service-account-key-file is configured",
                     is_error=False)
    try:
        parts = parse_jwt(token)
    except MalformedTokenError as exc:
        return _fail(SERVICE_ACCOUNT, Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
    alg = parts.header["alg"]
    legacy = is_legacy_token(parts.claims)
    failure = (_issuer_failure(parts.claims, config.service_account_issuers)
               or _algorithm_failure(alg)
               or _signature_failure(token, alg, config.service_account_keys)
               or _audience_failure(parts.claims, config.audiences)
               or (None if legacy else _time_failure(parts.claims, now)))
    if failure is not None:
        return AuthResult(None, "", (failure,))
    user = (_legacy_service_account_user if legacy else _service_account_user)(parts.claims)
    if isinstance(user, Failure):
        return AuthResult(None, "", (user,))
    if service_accounts is not None:
        missing = (_legacy_lookup_failure(parts.claims) if legacy
                   else _lookup_failure(parts.claims, user, service_accounts))
        if missing is not None:
            return AuthResult(None, "", (missing,))
    return AuthResult(user, SERVICE_ACCOUNT)


# --- anonymous and the union ----------------------------------------------------------------------


def anonymous(config: AuthenticatorConfig) -> AuthResult:
    """The anonymous authenticator: system:anonymous when --anonymous-auth is on, else 401."""
    if not config.anonymous_auth:
        return _fail(ANONYMOUS, Reason.ANONYMOUS_DISABLED,
                     "no credential presented and anonymous auth is off (--anonymous-auth=false)")
    return AuthResult(UserInfo(USER_ANONYMOUS, groups=(GROUP_UNAUTHENTICATED,)), ANONYMOUS)


def bearer_token_from_header(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None when the header is not one."""
    if not authorization:
        return None
    parts = authorization.strip().split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


def authenticate_request(
    client_cert_der: bytes | None,
    authorization: str | None,
    config: AuthenticatorConfig,
    now: datetime,
    *,
    intermediates_der: Sequence[bytes] = (),
    service_accounts: ServiceAccountLookup | None = None,
) -> AuthResult:
    """kube-apiserver's request authentication: x509, then bearer token, then anonymous.

    `service_accounts`: see authenticate_token (None: offline, no lookup)."""
    failures: list[Failure] = []
    if client_cert_der:
        result = authenticate_cert(client_cert_der, config, now, intermediates_der=intermediates_der)
        if result.authenticated:
            return result
        failures.extend(result.failures)
    token = bearer_token_from_header(authorization)
    if token is not None:
        result = authenticate_token(token, config, now, service_accounts=service_accounts)
        if result.authenticated:
            return AuthResult(result.user, result.authenticator, tuple(failures))
        failures.extend(result.failures)
    if any(f.is_error for f in failures):
        return AuthResult(None, "", tuple(failures))
    if config.anonymous_auth:
        anon = anonymous(config)
        return AuthResult(anon.user, anon.authenticator, tuple(failures))
    if failures:
        last = Failure(ANONYMOUS, Reason.ANONYMOUS_DISABLED,
                       "no other credential, and anonymous auth is off (--anonymous-auth=false)",
                       is_error=False)          # reason_code stays the ignored credential's
        return AuthResult(None, "", (*failures, last))
    return anonymous(config)
