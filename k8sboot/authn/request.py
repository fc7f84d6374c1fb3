"""kube-apiserver's request authentication: the union of x509, bearer ServiceAccount token and
anonymous, with fail-on-error.

A credential that an authenticator rejects is an *error*, and any error gives 401 even with
anonymous auth on. A credential that an authenticator merely does not recognise is *ignored*: a
client cert whose chain verifies but whose CN is empty (the x509 authenticator returns "not ok, no
error"), or an Authorization header that is not `Bearer <token>`. With nothing but ignored
credentials the request is anonymous when --anonymous-auth is on, else 401.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from k8sboot.authn.config import AuthenticatorConfig
from k8sboot.authn.names import ANONYMOUS, GROUP_UNAUTHENTICATED, USER_ANONYMOUS, Reason
from k8sboot.authn.results import AuthResult, Failure, UserInfo, _fail
from k8sboot.authn.serviceaccount import ServiceAccountLookup, authenticate_token
from k8sboot.authn.x509 import authenticate_cert


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
    path: str | None = None,
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
        if config.jwt:
            # the JWT authenticators come after the ServiceAccount one in the API server's union;
            # the first that accepts the token wins, and a token neither knows gets both reasons
            import k8sboot.authn.oidc as oidc

            jwt_result = oidc.authenticate(token, config.jwt, now, config.jwt_keys)
            if jwt_result.authenticated:
                return AuthResult(jwt_result.user, jwt_result.authenticator, tuple(failures))
            if any(f.is_error for f in jwt_result.failures):
                # the token is one of the JWT issuers': the ServiceAccount verdict is noise
                result = AuthResult(None, "", tuple(f for f in result.failures
                                                    if f.reason != Reason.TOKEN_WRONG_ISSUER))
            failures.extend(jwt_result.failures)
        failures.extend(result.failures)
    if any(f.is_error for f in failures):
        return AuthResult(None, "", tuple(failures))
    if config.anonymous_auth and config.anonymous_paths and path is not None \
            and path not in config.anonymous_paths:
        # the authentication config's anonymous block with conditions: anonymous only there
        return AuthResult(None, "", (*failures, Failure(
            ANONYMOUS, Reason.ANONYMOUS_DISABLED,
            f"anonymous requests are allowed only for {', '.join(config.anonymous_paths)} "
            "(authentication config, anonymous.conditions)")))
    if config.anonymous_auth:
        anon = anonymous(config)
        return AuthResult(anon.user, anon.authenticator, tuple(failures))
    if failures:
        last = Failure(ANONYMOUS, Reason.ANONYMOUS_DISABLED,
                       "no other credential, and anonymous auth is off (--anonymous-auth=false)",
                       is_error=False)          # reason_code stays the ignored credential's
        return AuthResult(None, "", (*failures, last))
    return anonymous(config)
