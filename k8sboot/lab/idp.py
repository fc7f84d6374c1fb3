"""The lab's OIDC identity provider: idp-0 (`k8sboot lab up --idp`, 10.240.0.2) and its keys.

idp-0 runs Debian's nginx serving two static files over HTTPS on port 443, as an issuer's
discovery endpoints do:

    https://10.240.0.2/.well-known/openid-configuration    issuer, jwks_uri, RS256, ...
    https://10.240.0.2/openid/v1/jwks                      the signing key as an RFC 7517 JWK Set

Both with `Content-Type: application/json`. Its serving certificate (IP SAN 10.240.0.2) comes from
the lab's own small idp CA; the ID tokens (`k8sboot lab idp token`, `mint_token`) are RS256 JWTs
signed with an RSA-2048 key whose JWK thumbprint (RFC 7638) is the `kid` in the JWKS and in every
token's header. What this machine keeps, in plan.IDP_DIR (/var/lib/k8sboot/lab/idp, 0700, kept
across `lab down` like the lab's SSH key, made on the first `lab up --idp`):

    ca.pem            the idp CA's certificate: what an authenticator trusts
                      (`certificateAuthorityFile`)
    ca-key.pem        its key                                                   0600
    signing-key.pem   the ID-token signing key (RSA-2048, PKCS#8)                0600
    jwks.json         the JWK Set published by idp-0
    serving.pem       idp-0's serving certificate
    serving-key.pem   its key                                                   0600

Private keys are created with mode 0600 from the start (the store's atomic writer), never printed. Only the serving
pair, nginx's config and the two JSON documents go into idp-0's root (before it boots); the CA key
and the signing key never leave this machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from k8sboot.errors import LabError, PkiError
from k8sboot.lab import plan

# --- what idp-0 serves, and where --------------------------------------------------------------

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
ALGORITHM = "RS256"
SIGNING_KEY_BITS = 2048
NGINX_CONF = "/etc/nginx/nginx.conf"
TLS_DIR = "/etc/nginx/k8sboot-idp"
TLS_CERT = f"{TLS_DIR}/tls.crt"
TLS_KEY = f"{TLS_DIR}/tls.key"
WEB_ROOT = "/var/www/k8sboot-idp"

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SIGNING_KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
SERVING_FILE = "serving.pem"
SERVING_KEY_FILE = "serving-key.pem"
PRIVATE_FILES = (CA_KEY_FILE, SIGNING_KEY_FILE, SERVING_KEY_FILE)

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
SERVING_RENEW_BEFORE = dt.timedelta(days=30)     # `lab up --idp` issues a new one when less is left
CLOCK_SKEW = dt.timedelta(hours=1)               # certificates start an hour in the past


def default_host() -> plan.HostSpec:
    """idp-0 as `lab up --idp` makes it (10.240.0.2)."""
    return plan.host_spec("idp", 0, 0)


def default_issuer() -> str:
    return plan.idp_issuer(default_host())


def discovery_document(issuer: str) -> dict:
    """OpenID Connect Discovery 1.0 (section 3): the required fields, for an ID-token-only issuer."""
    return {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "email", "email_verified", "groups"],
    }


def render_json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def render_nginx_conf(cert: str = TLS_CERT, key: str = TLS_KEY, root: str = WEB_ROOT,
                      pid: str = "/run/nginx.pid", error_log: str = "/var/log/nginx/error.log",
                      access_log: str = "/var/log/nginx/access.log", temp_dir: str | None = None,
                      user: str = "www-data", listen: str = "443") -> str:
    """idp-0's whole /etc/nginx/nginx.conf: HTTPS on 443, exactly the two documents (as
    application/json), 404 for anything else. The paths are arguments so that the unit tests can
    check the real thing with `nginx -t` in a temp dir; the defaults are Debian's and idp-0's."""
    temp = "" if temp_dir is None else "".join(
        f"    {d}_temp_path {temp_dir}/{d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        "# k8sboot lab: idp-0, the lab's OIDC identity provider (`k8sboot lab up --idp`).\n"
        "# Written by k8sboot before the host booted; static files only.\n"
        f"user {user};\n"
        "worker_processes 1;\n"
        f"pid {pid};\n"
        f"error_log {error_log};\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {access_log};\n"
        f"{temp}"
        "    server_tokens off;\n"
        "    sendfile on;\n"
        "    # both documents have no file name extension: every file served is JSON\n"
        "    types { }\n"
        "    default_type application/json;\n"
        "    server {\n"
        f"        listen {listen} ssl;\n"
        "        server_name _;\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"        root {root};\n"
        f"        location = {DISCOVERY_PATH} {{ }}\n"
        f"        location = {JWKS_PATH} {{ }}\n"
        "        location / { return 404; }\n"
        "    }\n"
        "}\n"
    )


# --- JWK (RFC 7517/7518) and its thumbprint (RFC 7638) -------------------------------------------


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 over the required members (RSA: e, kty, n) as JSON with sorted keys and
    no whitespace, base64url without padding."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(public_key) -> dict:
    """The RSA public key as a JWK for signatures with RS256; `kid` = its RFC 7638 thumbprint."""
    numbers = public_key.public_numbers()
    jwk = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    return {**jwk, "use": "sig", "alg": ALGORITHM, "kid": jwk_thumbprint(jwk)}


# --- the files on this machine -------------------------------------------------------------------


@dataclass(frozen=True)
class IdpMaterial:
    """What `lab up --idp` puts on idp-0 (public documents and the serving pair) and the paths
    on this machine; no CA key, no signing key."""

    directory: Path
    issuer: str
    address: str
    kid: str
    jwks: dict
    ca_pem: bytes
    serving_pem: bytes
    serving_key_pem: bytes
    created: tuple[str, ...]        # files made or replaced by this call (idp-0 must be rebooted)

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    @property
    def discovery(self) -> dict:
        return discovery_document(self.issuer)


def _write_private(path: Path, data: bytes) -> None:
    """0600 from the start (never a chmod after), replaced atomically: the store's own writer."""
    from k8sboot.store import write_private_file

    write_private_file(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    from k8sboot.store import write_private_file

    write_private_file(path, data, mode=0o644)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError(f"the lab's identity provider: cannot read {path}: {exc.strerror}",
                       hint="the idp's keys are root's: run as root") from exc


def _load_key(pem: bytes | None):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not pem:
        return None
    try:
        return load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None


def _load_cert(pem: bytes | None):
    from cryptography import x509

    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _same_public(a, b) -> bool:
    from cryptography.hazmat.primitives import serialization

    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _new_ca(now: dt.datetime):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, plan.LAB_CLUSTER_NAME),
                      x509.NameAttribute(NameOID.COMMON_NAME, "k8sboot-lab idp CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _new_serving(ca_key, ca_cert, address: str, name: str, now: dt.datetime):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + SERVING_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)),
                                                        x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _serving_ok(cert, key, ca_cert, address: str, now: dt.datetime) -> bool:
    from cryptography import x509

    if cert is None or key is None or not _same_public(cert.public_key(), key.public_key()):
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:          # another CA's, a bad signature, no SAN: issue a new one
        return False
    if ipaddress.ip_address(address) not in sans.get_values_for_type(x509.IPAddress):
        return False
    return cert.not_valid_after_utc - now > SERVING_RENEW_BEFORE and cert.not_valid_before_utc <= now


def ensure_material(directory: Path = plan.IDP_DIR, host: plan.HostSpec | None = None,
                    now: dt.datetime | None = None) -> IdpMaterial:
    """The idp's CA, signing key, JWKS and serving pair in `directory`, each made only when it
    is missing or unusable (a serving cert also when it is not the CA's, lacks the host's IP or
    has under SERVING_RENEW_BEFORE left). Keys are 0600 from the moment they exist."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    host = host or default_host()
    now = now or dt.datetime.now(dt.timezone.utc)
    created: list[str] = []
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        for name in PRIVATE_FILES:                 # a key someone loosened: tightened again
            p = directory / name
            if p.exists() and (p.stat().st_mode & 0o777) != 0o600:
                os.chmod(p, 0o600)

        ca_key = _load_key(_read(directory / CA_KEY_FILE))
        ca_cert = _load_cert(_read(directory / CA_FILE))
        if ca_key is None or ca_cert is None or not _same_public(ca_cert.public_key(), ca_key.public_key()):
            ca_key, ca_cert = _new_ca(now)
            _write_private(directory / CA_KEY_FILE, _key_pem(ca_key))
            _write_public(directory / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM))
            created += [CA_KEY_FILE, CA_FILE]

        signing = _load_key(_read(directory / SIGNING_KEY_FILE))
        if not isinstance(signing, rsa.RSAPrivateKey) or signing.key_size < SIGNING_KEY_BITS:
            signing = rsa.generate_private_key(public_exponent=65537, key_size=SIGNING_KEY_BITS)
            _write_private(directory / SIGNING_KEY_FILE, _key_pem(signing))
            created.append(SIGNING_KEY_FILE)
        jwk = public_jwk(signing.public_key())
        jwks = {"keys": [jwk]}
        if _read(directory / JWKS_FILE) != render_json(jwks):
            _write_public(directory / JWKS_FILE, render_json(jwks))
            created.append(JWKS_FILE)

        serving_key = _load_key(_read(directory / SERVING_KEY_FILE))
        serving_cert = _load_cert(_read(directory / SERVING_FILE))
        if not _serving_ok(serving_cert, serving_key, ca_cert, host.address, now):
            serving_key, serving_cert = _new_serving(ca_key, ca_cert, host.address, host.name, now)
            _write_private(directory / SERVING_KEY_FILE, _key_pem(serving_key))
            _write_public(directory / SERVING_FILE, serving_cert.public_bytes(serialization.Encoding.PEM))
            created += [SERVING_KEY_FILE, SERVING_FILE]
    except OSError as exc:
        raise LabError(f"the lab's identity provider: writing its keys in {directory}: {exc.strerror}",
                       hint="`k8sboot lab up --idp` runs as root") from exc
    except PkiError as exc:
        raise LabError(f"the lab's identity provider: {exc}", hint="`k8sboot lab up --idp` runs as root") from exc
    return IdpMaterial(directory=directory, issuer=plan.idp_issuer(host), address=host.address,
                       kid=jwk["kid"], jwks=jwks, ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
                       serving_pem=serving_cert.public_bytes(serialization.Encoding.PEM),
                       serving_key_pem=_key_pem(serving_key), created=tuple(created))


def host_files(material: IdpMaterial) -> tuple[tuple[str, int, bytes], ...]:
    """(path, mode, content) written into idp-0's root before it boots: nginx's config, the
    serving pair, the discovery document and the JWKS. Nothing else of the idp leaves this machine."""
    return (
        (NGINX_CONF, 0o644, render_nginx_conf().encode()),
        (TLS_CERT, 0o644, material.serving_pem),
        (TLS_KEY, 0o600, material.serving_key_pem),
        (WEB_ROOT + DISCOVERY_PATH, 0o644, render_json(material.discovery)),
        (WEB_ROOT + JWKS_PATH, 0o644, render_json(material.jwks)),
    )


# --- ID tokens ---------------------------------------------------------------------------------


def parse_time(text: str, now: dt.datetime) -> dt.datetime:
    """`--not-before`: a duration from now (`5m`, `+5m`; `-5m` for the past), Unix seconds, or an
    RFC 3339 time (`2026-12-05T08:00:00Z`). ValueError otherwise."""
    from k8sboot.tokens import parse_duration

    value = text.strip()
    if value[:1] in "+-" and value[1:2].isdigit() and not value[1:].isdigit():
        delta = parse_duration(value[1:])
        return now - delta if value[0] == "-" else now + delta
    if value.isdigit():
        return dt.datetime.fromtimestamp(int(value), dt.timezone.utc)
    try:
        return now + parse_duration(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not a time: use a duration from now (5m, -5m), Unix seconds "
                         "or an RFC 3339 time (2026-12-05T08:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError(f"'{text}': an RFC 3339 time needs its zone (Z or +00:00)")
    return when.astimezone(dt.timezone.utc)


def parse_claim(text: str) -> tuple[str, object]:
    """`key=value` -> (key, value): the value as JSON when it parses (`n=3`, `ok=true`,
    `tags=["a","b"]`, `x={"y":1}`), else as a string (`team=blue`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"'{text}' is not key=value")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def build_claims(sub: str, *, audiences: tuple[str, ...] | list[str] = (plan.IDP_AUDIENCE,),
                 email: str | None = None, email_verified: bool | None = None,
                 groups: list[str] | tuple[str, ...] | None = None, claims: dict | None = None,
                 ttl: dt.timedelta = dt.timedelta(minutes=10), not_before: dt.datetime | None = None,
                 expired: bool = False, issuer: str | None = None, now: dt.datetime | None = None) -> dict:
    """An ID token's claims: iss, sub, aud (a string for one audience, else a list), iat, nbf,
    exp, then email / email_verified (true by default when an email is given) / groups, then
    `claims`, which win over all of these (to mint a token that is wrong on purpose).

    `expired`: the token expired 5 minutes ago (exp = now - 5m, iat = nbf = exp - ttl), beyond
    any verifier's leeway for clock skew."""
    if not sub:
        raise ValueError("the subject (sub) must not be empty")
    if not audiences:
        raise ValueError("at least one audience is needed")
    if ttl.total_seconds() <= 0:
        raise ValueError("the lifetime must be longer than 0s")
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    if expired:
        exp = now - dt.timedelta(minutes=5)
        iat = exp - ttl
        nbf = iat if not_before is None else not_before
    else:
        iat = now
        nbf = now if not_before is None else not_before
        exp = max(iat, nbf) + ttl
    out: dict = {"iss": issuer or default_issuer(), "sub": sub,
                 "aud": audiences[0] if len(audiences) == 1 else list(audiences),
                 "iat": int(iat.timestamp()), "nbf": int(nbf.timestamp()), "exp": int(exp.timestamp())}
    if email is not None:
        out["email"] = email
    if email_verified is not None or email is not None:
        out["email_verified"] = True if email_verified is None else bool(email_verified)
    if groups is not None:
        out["groups"] = list(groups)
    out.update(claims or {})
    return out


def sign(claims: dict, directory: Path = plan.IDP_DIR) -> str:
    """`claims` as an RS256 JWT signed with the idp's key, `kid` = the key's JWKS kid."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = directory / SIGNING_KEY_FILE
    key = _load_key(_read(path))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise LabError(f"the lab's identity provider has no signing key ({path})",
                       hint="`sudo k8sboot lab up --idp` makes it")
    kid = public_jwk(key.public_key())["kid"]
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})


def mint_token(sub: str, *, directory: Path = plan.IDP_DIR, **kwargs) -> str:
    """An ID token from the lab's identity provider: build_claims(sub, **kwargs), signed (sign).
    For tests and demos: `mint_token("alice", email="alice@example.com", groups=["dev"])`."""
    return sign(build_claims(sub, **kwargs), directory)


def kid(directory: Path = plan.IDP_DIR) -> str:
    """The `kid` of the published JWKS (jwks.json)."""
    raw = _read(directory / JWKS_FILE)
    try:
        return json.loads(raw)["keys"][0]["kid"]
    except (TypeError, ValueError, KeyError, IndexError):
        raise LabError(f"the lab's identity provider has no JWKS ({directory / JWKS_FILE})",
                       hint="`sudo k8sboot lab up --idp` makes it") from None


# --- the running lab ---------------------------------------------------------------------------


def require_lab_idp() -> plan.HostSpec:
    """idp-0 of the running lab, or a LabError (one line, no hint) when the lab has none."""
    from k8sboot.lab import hosts
    from k8sboot.lab.state import load_state

    state = load_state()
    for rec in sorted(state.hosts.values(), key=lambda r: r.spec.address):
        if rec.spec.role == "idp" and hosts.alive(rec.pid, rec.starttime):
            return rec.spec
    raise LabError("the lab has no identity provider: bring it up with `sudo k8sboot lab up --idp`")
