"""Stage 1 of every API request, offline: who kube-apiserver says you are, or why it answers 401.

One implementation for `k8sboot whoami` / `k8sboot token decode` on the workstation and for the
lab's kube-apiserver stand-in on the hosts. This package is copied as-is onto lab hosts that have
only Debian bookworm's python3 (3.11), python3-cryptography 38.0.4 and python3-jwt (PyJWT 2.6.0):
it imports only the standard library, `cryptography` and `jwt`, nothing from k8sboot outside
itself, and uses only APIs present in those versions. Pure: no I/O except
`load_authenticator_config`, and the clock is always passed in as `now` (an aware datetime; a
naive one is taken as UTC).

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

Modules (each rule of kube-apiserver's is told in the module that follows it)::

    names           the API server's user, group and extra names; Reason; the errors
    config          AuthenticatorConfig and the flag files it is read from (the only I/O)
    results         UserInfo, Failure, AuthResult and the bodies the server answers with
    x509            the x509 authenticator: Go's crypto/x509 Certificate.Verify, step by step
    constraints     the CAs' name constraints over a chain's SANs (Go's constraints.go)
    serviceaccount  the ServiceAccount token authenticator: bound and legacy JWTs, lookups
    request         the union: x509, then bearer token, then anonymous (fail-on-error)
"""

from __future__ import annotations

from k8sboot.authn.names import (
    ANONYMOUS,
    CREDENTIAL_ID_KEY,
    GROUP_AUTHENTICATED,
    GROUP_SERVICE_ACCOUNTS,
    GROUP_UNAUTHENTICATED,
    NODE_NAME_KEY,
    NODE_UID_KEY,
    POD_NAME_KEY,
    POD_UID_KEY,
    SERVICE_ACCOUNT,
    SERVICE_ACCOUNT_USER_PREFIX,
    USER_ANONYMOUS,
    X509,
    AuthnConfigError,
    MalformedTokenError,
    Reason,
)
from k8sboot.authn.config import (
    AuthenticatorConfig,
    PublicKey,
    load_authenticator_config,
    parse_client_ca,
    parse_service_account_keys,
)
from k8sboot.authn.results import AuthResult, Failure, UserInfo
from k8sboot.authn.x509 import authenticate_cert, cert_not_valid_after, cert_not_valid_before
from k8sboot.authn.serviceaccount import (
    LEEWAY,
    LEGACY_ISSUER,
    MAX_JSON_DEPTH,
    MAX_TOKEN_BYTES,
    SUPPORTED_TOKEN_ALGORITHMS,
    JwtParts,
    ServiceAccountLookup,
    TokenInspection,
    authenticate_token,
    inspect_token,
    is_legacy_token,
    lookup_requirement,
    parse_jwt,
)
from k8sboot.authn.request import anonymous, authenticate_request, bearer_token_from_header

__all__ = [
    "ANONYMOUS",
    "CREDENTIAL_ID_KEY",
    "GROUP_AUTHENTICATED",
    "GROUP_SERVICE_ACCOUNTS",
    "GROUP_UNAUTHENTICATED",
    "NODE_NAME_KEY",
    "NODE_UID_KEY",
    "POD_NAME_KEY",
    "POD_UID_KEY",
    "SERVICE_ACCOUNT",
    "SERVICE_ACCOUNT_USER_PREFIX",
    "USER_ANONYMOUS",
    "X509",
    "AuthnConfigError",
    "MalformedTokenError",
    "Reason",
    "AuthenticatorConfig",
    "PublicKey",
    "load_authenticator_config",
    "parse_client_ca",
    "parse_service_account_keys",
    "AuthResult",
    "Failure",
    "UserInfo",
    "authenticate_cert",
    "cert_not_valid_after",
    "cert_not_valid_before",
    "LEEWAY",
    "LEGACY_ISSUER",
    "MAX_JSON_DEPTH",
    "MAX_TOKEN_BYTES",
    "SUPPORTED_TOKEN_ALGORITHMS",
    "JwtParts",
    "ServiceAccountLookup",
    "TokenInspection",
    "authenticate_token",
    "inspect_token",
    "is_legacy_token",
    "lookup_requirement",
    "parse_jwt",
    "anonymous",
    "authenticate_request",
    "bearer_token_from_header",
]
