"""ServiceAccount tokens on the workstation: mint one like the TokenRequest API, decode and check one.

`mint_token` builds the claims a bound token carries (aud, exp, iat, iss, jti, kubernetes.io, nbf,
sub) and lets PyJWT sign them with the service-account private key as kube-apiserver does:
RS256 for RSA, ES256/ES384/ES512 for EC P-256/P-384/P-521, header `kid` computed as it does
(base64url of the SHA-256 of the DER public key). The serviceaccount uid is derived from namespace/name (uuid5), so every token minted for
one ServiceAccount names the same uid, as the real one would. `decode_token` shows header and
claims and evaluates every check with `k8sboot.authn` (the same code the lab's stand-in runs).
Pure: no files read here, the clock passed in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Sequence

from k8sboot.errors import PkiError, TokenError

if TYPE_CHECKING:
    from k8sboot.authn import AuthenticatorConfig, TokenInspection

# A fixed namespace for uuid5: the uid of system:serviceaccount:<ns>:<name> is stable everywhere.
SERVICE_ACCOUNT_UID_NAMESPACE = uuid.UUID("8a3c0e52-4d0b-5b7e-9a51-6b3d2f1e0c47")

_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_DURATION = timedelta(days=365 * 10)
# kube-apiserver's signer (pkg/serviceaccount/jwt.go): RS256 for RSA, the ES* of the key's curve
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def parse_duration(text: str) -> timedelta:
    """`10m`, `1h`, `3600s`, `1d`, `1h30m` -> timedelta. ValueError with the accepted forms."""
    value = text.strip().lower()
    if not value or _DURATION_PART.sub("", value):
        raise ValueError(f"'{text}' is not a duration; use a number and a unit: 90s, 10m, 1h, 1d "
                         "(or combined, 1h30m)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"'{text}': the duration must be longer than 0s")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"'{text}': the duration must not exceed 10 years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """timedelta -> `9m58s`, `2h0m5s`, `-1m2s` (kubectl-like, for messages)."""
    total = int(delta.total_seconds())
    sign, total = ("-", -total) if total < 0 else ("", total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{seconds}s")
    return sign + "".join(parts)


def check_namespace(namespace: str) -> str:
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise ValueError(f"'{namespace}' is not a valid namespace: lower-case letters, digits and "
                         "'-', at most 63 characters, e.g. authn-demo")
    return namespace


def check_service_account_name(name: str) -> str:
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ValueError(f"'{name}' is not a valid ServiceAccount name: lower-case letters, "
                         "digits, '-' and '.', e.g. bot")
    return name


def service_account_uid(namespace: str, name: str) -> str:
    """A stable uid for a ServiceAccount that has no object in etcd (uuid5 of namespace/name)."""
    return str(uuid.uuid5(SERVICE_ACCOUNT_UID_NAMESPACE, f"{namespace}/{name}"))


def key_id(public_key: Any) -> str:
    """kube-apiserver's `kid`: base64url (no padding) of SHA-256 over the DER (PKIX) public key."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _signing_key(signing_key_pem: bytes, source: str):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(signing_key_pem, password=None)
    except TypeError as exc:   # encrypted
        raise PkiError(f"reading the signing key {source}: {exc}",
                       hint="the service-account key must not be encrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"reading the signing key {source}: not a PEM private key",
                       hint="run `k8sboot gen-certs` to create pki/service-account-key.pem") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHM:
        return key, _EC_ALGORITHM[key.curve.name]
    what = (f"an ECDSA key on curve {key.curve.name}" if isinstance(key, ec.EllipticCurvePrivateKey)
            else f"a {type(key).__name__}")
    raise PkiError(f"reading the signing key {source}: {what} cannot sign ServiceAccount tokens; "
                   "use RSA (RS256) or ECDSA P-256, P-384 or P-521 (ES256, ES384, ES512), as "
                   "kube-apiserver does")


def build_claims(namespace: str, service_account: str, duration: timedelta,
                 audiences: Sequence[str], issuer: str, now: datetime,
                 jti: str | None = None) -> dict[str, Any]:
    """The claims of a TokenRequest token, in the order kube-apiserver writes them."""
    iat = int(now.timestamp())
    return {
        "aud": list(audiences),
        "exp": iat + int(duration.total_seconds()),
        "iat": iat,
        "iss": issuer,
        "jti": jti or str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": service_account,
                               "uid": service_account_uid(namespace, service_account)},
        },
        "nbf": iat,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
    }


def mint_token(namespace: str, service_account: str, duration: timedelta,
               audiences: Sequence[str], issuer: str, signing_key_pem: bytes, now: datetime,
               *, source: str = "service-account-key.pem") -> str:
    """A signed ServiceAccount JWT. ValueError for a bad name or duration, PkiError for a bad key."""
    import jwt

    check_namespace(namespace)
    check_service_account_name(service_account)
    if duration <= timedelta(0):
        raise ValueError("the duration must be longer than 0s")
    if not audiences:
        raise ValueError("at least one audience is needed")
    key, alg = _signing_key(signing_key_pem, source)
    claims = build_claims(namespace, service_account, duration, audiences, issuer, now)
    return jwt.encode(claims, key, algorithm=alg,
                      headers={"kid": key_id(key.public_key()), "typ": None})


# --- decode -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenReport:
    header: dict[str, Any]
    claims: dict[str, Any]
    inspection: TokenInspection | None      # None when nothing to verify against

    def render_json(self) -> str:
        return (json.dumps(self.header, indent=2) + "\n" + json.dumps(self.claims, indent=2))


def decode_token(token: str, config: AuthenticatorConfig | None, now: datetime) -> TokenReport:
    """Header and claims of any JWS; with `config`, every authn check. TokenError for garbage."""
    from k8sboot import authn

    try:
        parts = authn.parse_jwt(token.strip())
    except authn.MalformedTokenError as exc:
        raise TokenError(f"decoding the token: {exc}",
                         hint="pass the whole token (three base64url parts joined by '.'), "
                              "e.g. TOK=$(k8sboot token create ...); k8sboot token decode \"$TOK\"") from None
    inspection = authn.inspect_token(token.strip(), config, now) if config is not None else None
    return TokenReport(parts.header, parts.claims, inspection)


def server_lookup_note(claims: dict[str, Any]) -> str:
    """What the real API server additionally requires of a token k8sboot accepts offline:
    `if ServiceAccount authn-demo/bot exists with uid … (it looks the account up; k8sboot cannot,
    offline)`."""
    from k8sboot import authn

    looked_up = "them" if " and " in authn.lookup_requirement(claims) else "the account"
    return (f"if {authn.lookup_requirement(claims)} (it looks {looked_up} up; k8sboot cannot, "
            "offline)")


def render_verdict(report: TokenReport, key_source: str, now: datetime) -> str:
    """One line: does the signature verify against `key_source`, and do iss / aud / exp pass."""
    ins = report.inspection
    if ins is None:
        return f"signature: not checked ({key_source})"
    alg = report.header.get("alg")
    kid = report.header.get("kid")
    if ins.signature is None:
        signature = f"signature: OK ({alg}) against {key_source}"
    else:
        signature = f"signature: FAILED against {key_source}: {ins.signature.message}"
    items = [signature]
    items.append("iss: OK" if ins.issuer is None else f"iss: FAILED: {ins.issuer.message}")
    items.append("aud: OK" if ins.audience is None else f"aud: FAILED: {ins.audience.message}")
    exp = report.claims.get("exp")
    if ins.validity is None:
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            left = datetime.fromtimestamp(int(exp), tz=timezone.utc) - now.astimezone(timezone.utc)
            items.append(f"exp: OK (expires in {format_duration(left)})")
        else:
            items.append("exp: OK (no expiry)")
    else:
        items.append(f"exp/nbf: FAILED: {ins.validity.message}")
    if ins.claims is not None:
        items.append(f"claims: FAILED: {ins.claims.message}")
    verdict = (f"the API server accepts it as {ins.result.user.username} "
               f"{server_lookup_note(report.claims)}"
               if ins.result.authenticated else "the API server would answer 401")
    line = "; ".join(items) + f" => {verdict}"
    if kid and ins.signature is not None:
        line += f" (token kid {kid})"
    return line
