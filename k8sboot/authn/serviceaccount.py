"""The ServiceAccount token authenticator (--service-account-key-file): JWTs, bound and legacy.

In the real authenticator's order: well-formed (3 base64url segments, JSON objects nesting at most
MAX_JSON_DEPTH levels, at most MAX_TOKEN_BYTES), `iss` among the issuers or the legacy
`kubernetes/serviceaccount` (read before the signature, as the real server does), alg among
SUPPORTED_TOKEN_ALGORITHMS: what go-jose verifies with the key types the server loads, RS/PS
256/384/512 with an RSA key, ES256/ES384/ES512 with a P-256/P-384/P-521 key (none and HS* are
refused with their own message; a key is never handed to PyJWT with any other algorithm, so a
public key can never serve as an HMAC secret), signature by one of the keys (all tried; `kid` is
not used for selection), `aud` (string or list) intersecting the API audiences (a token without
`aud` gets the API audiences, the real server's legacy rule), then nbf / exp / iat with go-jose's
60 s leeway, then the `kubernetes.io` claims (namespace and serviceaccount name required). `sub`
is not compared: the username comes from `kubernetes.io`, as upstream's ServiceAccountInfo does.
Username `system:serviceaccount:<ns>:<name>`, uid the serviceaccount uid, groups
system:serviceaccounts, system:serviceaccounts:<ns>, system:authenticated; extra credential-id
`JTI=<jti>` when there is a jti, pod-name/pod-uid and node-name/node-uid when bound.

Legacy secret-based tokens (iss `kubernetes/serviceaccount`, pkg/serviceaccount/legacy.go):
accepted with the same keys; no time claims are checked; the four
`kubernetes.io/serviceaccount/*` claims are required and `sub` must name the same account.

Lookups (only with `service_accounts`): the ServiceAccount named by the claims must exist with the
claim's uid (`serviceaccounts "bot" not found`, `service account UID (x) does not match claim
(y)`); a token bound to a Secret/Pod/Node fails as "service account token has been invalidated"
since no such objects are stored, and so does a legacy token (its Secret). Deletion timestamps are
not modelled. Offline, `lookup_requirement(claims)` says what a real server will additionally
require.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from k8sboot.authn.config import AuthenticatorConfig, PublicKey
from k8sboot.authn.names import (
    CREDENTIAL_ID_KEY,
    GROUP_SERVICE_ACCOUNTS,
    NODE_NAME_KEY,
    NODE_UID_KEY,
    POD_NAME_KEY,
    POD_UID_KEY,
    SERVICE_ACCOUNT,
    SERVICE_ACCOUNT_USER_PREFIX,
    MalformedTokenError,
    Reason,
)
from k8sboot.authn.results import (
    AuthResult,
    Failure,
    UserInfo,
    _fail,
    _rfc3339,
    _utc,
    _with_authenticated_group,
)

# (namespace, name) -> the uid of the stored ServiceAccount, or None when there is none
ServiceAccountLookup = Callable[[str, str], Optional[str]]
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
