"""The authentication flags of kube-apiserver (--client-ca-file, --service-account-key-file,
--service-account-issuer, --api-audiences, --anonymous-auth) with their files parsed. Reading
those files in `load_authenticator_config` is the only file I/O of the package; the other I/O is
`oidc.fetch_jwks`, the JWT issuers' keys over HTTPS, called by whoami and the stand-in, never while
a configuration is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from k8sboot.authn.names import AuthnConfigError

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]
# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthenticatorConfig:
    """The authentication flags of kube-apiserver, with files already parsed."""

    client_ca: tuple[x509.Certificate, ...] = ()             # --client-ca-file (empty: x509 off)
    service_account_keys: tuple[PublicKey, ...] = ()         # --service-account-key-file
    service_account_issuers: tuple[str, ...] = ()            # --service-account-issuer (repeatable)
    api_audiences: tuple[str, ...] = ()                      # --api-audiences
    anonymous_auth: bool = True                              # --anonymous-auth (server default: true)
    # --authentication-config's JWT authenticators (oidc.Compiled), tried after the ServiceAccount
    # authenticator, and how to get an issuer's JWKS (oidc.KeysFor; raises oidc.JwksError)
    jwt: tuple[Any, ...] = ()
    jwt_keys: Any = field(default=None, compare=False, hash=False)
    # the anonymous block's conditions: anonymous only for these paths (empty: every path)
    anonymous_paths: tuple[str, ...] = ()

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
