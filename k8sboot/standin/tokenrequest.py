"""The TokenRequest API (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`, what `kubectl
create token` calls) as pkg/registry/core/serviceaccount/storage/token.go answers it, and the token
as pkg/serviceaccount/claims.go + jwt.go sign it. Pure: the ServiceAccount, the clock and the jti
are passed in; only `load_signer` parses a key (no file read here).

Upstream's order, kept: the body's name/namespace must match the URL (422), the ServiceAccount
must exist (404, checked by the caller), audiences default to --api-audiences (which default to the
issuers), expirationSeconds defaults to 3600 and must be >= 600 and <= 2^32 (422,
`TokenRequest.authentication.k8s.io "" is invalid: ...`), then is shortened to
--service-account-max-token-expiration with a warning. The token: header {alg, kid} (kid =
base64url SHA-256 of the DER public key, k8sboot.tokens.key_id), claims aud, exp, iat, iss (the
first --service-account-issuer), jti, kubernetes.io {namespace, serviceaccount {name, uid}}, nbf,
sub; RS256 for an RSA key, ES256/ES384/ES512 for P-256/P-384/P-521.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from k8sboot.standin.resources import invalid, rfc3339

GROUP = "authentication.k8s.io"
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


@dataclass(frozen=True)
class Signer:
    key: Any
    algorithm: str
    key_id: str
    issuer: str


def load_signer(pem: bytes, issuer: str) -> Signer:
    """The --service-account-signing-key-file key; ValueError naming what is wrong."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from k8sboot.tokens import key_id

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data does not contain a usable private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHMS:
        alg = _EC_ALGORITHMS[key.curve.name]
    else:
        raise ValueError(f"unsupported key type {type(key).__name__} (want RSA or ECDSA P-256/P-384/P-521)")
    return Signer(key, alg, key_id(key.public_key()), issuer)


def _token_invalid(name: str, field_path: str, value: Any, detail: str) -> dict:
    return invalid(GROUP, "TokenRequest", name, [("Invalid", field_path, value, detail)])


@dataclass(frozen=True)
class Issued:
    body: dict
    warnings: tuple[str, ...] = ()


def check_request(review: Any, name: str, namespace: str) -> dict | None:
    """The 422 for a body naming another ServiceAccount or namespace than the URL (else None)."""
    meta = (review.get("metadata") if isinstance(review, dict) else None) or {}
    if meta.get("name") and meta["name"] != name:
        return _token_invalid(name, "metadata.name", meta["name"], "must match the service account name if specified")
    if meta.get("namespace") and meta["namespace"] != namespace:
        return _token_invalid(name, "metadata.namespace", meta["namespace"],
                              "must match the service account namespace if specified")
    return None


def issue(review: Any, service_account: dict, audiences: tuple[str, ...], signer: Signer, now: datetime,
          jti: str, max_expiration: int = 0) -> Issued | dict:
    """The 201 body (Issued) or a 422 Status for a request for an existing ServiceAccount."""
    import jwt

    review = review if isinstance(review, dict) else {}
    spec = dict(review.get("spec") or {})
    meta = service_account["metadata"]
    seconds = spec.get("expirationSeconds")
    seconds = DEFAULT_EXPIRATION if seconds is None else seconds
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return _token_invalid("", "spec.expirationSeconds", seconds, "must be an integer")
    if seconds < MIN_EXPIRATION:
        return _token_invalid("", "spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes")
    if seconds > MAX_EXPIRATION:
        return _token_invalid("", "spec.expirationSeconds", seconds,
                              "may not specify a duration larger than 2^32 seconds")
    warnings = []
    if max_expiration and seconds > max_expiration:
        warnings.append(f"requested expiration of {seconds} seconds shortened to {max_expiration} seconds")
        seconds = max_expiration
    auds = [a for a in (spec.get("audiences") or []) if isinstance(a, str)] or list(audiences)
    if spec.get("boundObjectRef"):
        return _token_invalid("", "spec.boundObjectRef", json.dumps(spec["boundObjectRef"]),
                              "binding a token to an object is not implemented by the k8sboot stand-in")
    iat = int(now.timestamp())
    claims = {
        "aud": auds,
        "exp": iat + seconds,
        "iat": iat,
        "iss": signer.issuer,
        "jti": jti,
        "kubernetes.io": {"namespace": meta["namespace"],
                          "serviceaccount": {"name": meta["name"], "uid": meta["uid"]}},
        "nbf": iat,
        "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
    }
    token = jwt.encode(claims, signer.key, algorithm=signer.algorithm,
                       headers={"kid": signer.key_id, "typ": None})
    spec = {"audiences": auds, "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")}
    created = now.astimezone(timezone.utc).replace(microsecond=0)
    body = {"kind": "TokenRequest", "apiVersion": f"{GROUP}/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "creationTimestamp": rfc3339(created)},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": rfc3339(created + timedelta(seconds=seconds))}}
    return Issued(body, tuple(warnings))
