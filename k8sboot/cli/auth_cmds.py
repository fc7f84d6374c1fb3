"""`k8sboot whoami` and `k8sboot token create|decode`: Stage 1 of the API server, offline.

Thin shell over `k8sboot.authn` (the decisions, shared with the lab's kube-apiserver stand-in) and
`k8sboot.tokens` (minting, decoding). cryptography, PyJWT, YAML and rich are imported inside the
commands so that start-up stays fast. A token or key given to these commands is never printed,
except the token `token create` was asked to print on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from k8sboot.cli.options import DEFAULT_INVENTORY, inventory_option

if TYPE_CHECKING:
    from k8sboot.authn import AuthenticatorConfig, UserInfo
    from k8sboot.model import Inventory

WHOAMI_EPILOG = """\
\b
Examples:
  k8sboot whoami --cert pki/admin.pem
      Username admin, Groups [system:masters system:authenticated], like kubectl auth whoami
  k8sboot whoami --cert pki/admin.pem --key pki/admin-key.pem
      the same, after checking that the key belongs to the cert
  TOK=$(k8sboot token create --namespace authn-demo --service-account bot --duration 10m)
  k8sboot whoami --token "$TOK"
      system:serviceaccount:authn-demo:bot
  k8sboot token create --namespace authn-demo --service-account bot | k8sboot whoami --token -
      the token read from stdin (keeps it out of the shell history)
  k8sboot whoami --token "$ID_TOKEN"
      an OIDC ID token: the inventory's authentication.jwt authenticators (issuer, audiences, CEL
      claim rules and mappings), keys from the issuer's discovery URL
  k8sboot whoami --token "$ID_TOKEN" --jwks issuer-keys.json
      the same without network: the issuer's JWK set from a file
  k8sboot whoami --anonymous
      system:anonymous if apiserver.anonymous_auth is true in the inventory, else 401
  k8sboot whoami --cert pki/admin.pem --json
      a SelfSubjectReview document (or the 401 Status), like kubectl auth whoami -o json

\b
Exit codes: 0 authenticated; 11 the API server would answer 401 (the reason on stderr);
4 a PKI file is missing or unreadable; 3 the inventory is invalid; 2 bad usage.
"""

TOKEN_EPILOG = """\
\b
Examples:
  TOK=$(k8sboot token create --namespace authn-demo --service-account bot --duration 10m)
  k8sboot token decode "$TOK"
  k8sboot whoami --token "$TOK"
"""

CREATE_EPILOG = """\
\b
Examples:
  TOK=$(k8sboot token create --namespace authn-demo --service-account bot --duration 10m)
      only the token is printed, like kubectl create token
  k8sboot token create -n authn-demo --service-account bot --duration 1h --audience vault
      a token for another audience: the API server answers 401 to it
  k8sboot token create -n kube-system --service-account ci -i inventory/lab.yaml --duration 1d

\b
Durations: 90s, 10m, 1h, 1d, or combined, 1h30m. Audiences default to the inventory's
cluster.api_audiences (by default the service_account_issuer). The token is signed with
<pki.dir>/service-account-key.pem as kube-apiserver signs: RS256 for an RSA key, ES256,
ES384 or ES512 for an ECDSA P-256, P-384 or P-521 key.
"""

DECODE_EPILOG = """\
\b
Examples:
  k8sboot token decode "$TOK"
      header and claims as JSON on stdout; on stderr whether the signature verifies against
      pki/service-account.pem and whether iss, aud and exp pass
  k8sboot token create -n authn-demo --service-account bot | k8sboot token decode -
  k8sboot token decode "$TOK" 2>/dev/null | jq -s '.[1].exp'

\b
Exit codes: 0 the token decodes (even if it would be refused: see the stderr line, or ask
`k8sboot whoami --token` for a verdict exit code); 12 not a JWT at all; 3 bad inventory.
"""

token_app = typer.Typer(
    help="Mint and decode ServiceAccount tokens (JWTs signed with pki/service-account-key.pem).",
    no_args_is_help=True,
    epilog=TOKEN_EPILOG,
    pretty_exceptions_show_locals=False,   # locals hold the signing key and the token
)


# --- helpers ------------------------------------------------------------------------------------


def _pki_file(inv: Inventory, name: str) -> Path:
    return Path(inv.pki.dir) / name


def _gen_certs_hint(inventory: Path) -> str:
    return f"run `k8sboot gen-certs -i {inventory}` to create the PKI"


def jwt_authenticators(inv: Inventory, jwks_file: Path | None = None, timeout: float = 5.0):
    """The inventory's JWT authenticators compiled, and how their keys are had: `jwks_file` for an
    air-gapped check (used for whichever issuer the token names), else each issuer's discovery
    document and JWKS over HTTPS, fetched once per run, as the API server does at start."""
    from k8sboot.authn import oidc

    if inv.authentication is None:
        return (), None
    compiled = oidc.compile_config(inv.authentication)
    cache: dict[str, dict] = {}

    def keys(authenticator):
        url = authenticator.issuer
        if url not in cache:
            if jwks_file is not None:
                try:
                    data = Path(jwks_file).read_bytes()
                except OSError as exc:
                    raise oidc.JwksError(f"--jwks {jwks_file}: {exc.strerror}") from None
                cache[url] = oidc.load_jwks(data, f"--jwks {jwks_file}")
            else:
                cache[url] = oidc.fetch_jwks(authenticator.spec.issuer, timeout)
        return cache[url]

    return compiled, keys


def _authenticator_config(inv: Inventory, inventory: Path, *, client_ca: bool,
                          service_account: bool, jwks_file: Path | None = None) -> AuthenticatorConfig:
    """The flags kube-apiserver gets from this inventory, with the files they name read."""
    from k8sboot import authn, layout
    from k8sboot.errors import PkiError

    from k8sboot import rotation

    trusted, _ = rotation.service_account_files(inv.rotation)    # a rotation's phase: both keys
    try:
        config = authn.load_authenticator_config(
            client_ca_file=(_pki_file(inv, rotation.trust_name(inv.rotation, layout.cert_file(layout.CA)))
                            if client_ca else None),
            service_account_key_files=[_pki_file(inv, name) for name in trusted] if service_account else [],
            service_account_issuers=rotation.issuers(inv.rotation, inv.cluster.service_account_issuer),
            api_audiences=_explicit_audiences(inv),
            anonymous_auth=inv.apiserver.anonymous_auth,
        )
        if service_account and inv.authentication is not None:
            import dataclasses

            jwt, keys = jwt_authenticators(inv, jwks_file)
            anon = inv.authentication.anonymous
            config = dataclasses.replace(config, jwt=jwt, jwt_keys=keys,
                                         anonymous_paths=anon.paths if anon is not None else ())
        return config
    except authn.AuthnConfigError as exc:
        if exc.missing:
            raise PkiError(f"reading {exc.path}: no such file", hint=_gen_certs_hint(inventory)) from exc
        raise PkiError(f"reading {exc.path}: {exc.message}",
                       hint=f"{_gen_certs_hint(inventory)}, or fix the file") from exc


def _explicit_audiences(inv: Inventory) -> tuple[str, ...]:
    """--api-audiences as rendered: empty when it is the issuer alone, so that the API server's
    default (every --service-account-issuer) applies, as during an issuer rotation."""
    audiences = tuple(inv.cluster.api_audiences)
    return () if audiences == (inv.cluster.service_account_issuer,) else audiences


def _default_audiences(inv: Inventory) -> list[str]:
    """The audiences a TokenRequest without any gets: --api-audiences, else (the API server's
    default) every --service-account-issuer, in order."""
    from k8sboot import rotation

    return list(_explicit_audiences(inv)) or list(rotation.issuers(inv.rotation, inv.cluster.service_account_issuer))


def _read_file(path: Path, what: str) -> bytes:
    from k8sboot.errors import PkiError

    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"reading {what} {path}: no such file") from None
    except IsADirectoryError:
        raise PkiError(f"reading {what} {path}: is a directory") from None
    except OSError as exc:
        raise PkiError(f"reading {what} {path}: {exc.strerror}") from exc


def _read_client_cert(cert_path: Path, key_path: Path | None) -> tuple[bytes, list[bytes]]:
    """The leaf's DER and any intermediates after it (PEM bundle or one DER cert)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from k8sboot.errors import PkiError

    data = _read_file(cert_path, "client certificate")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            chunks = data.split(b"-----END CERTIFICATE-----")
            certs = [x509.load_pem_x509_certificate(c + b"-----END CERTIFICATE-----")
                     for c in chunks if b"-----BEGIN CERTIFICATE-----" in c]
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise PkiError(f"reading client certificate {cert_path}: not a PEM or DER X.509 certificate",
                       hint="pass a certificate such as pki/admin.pem (not a key or kubeconfig)") from None
    der = [c.public_bytes(serialization.Encoding.DER) for c in certs]

    if key_path is not None:
        key_data = _read_file(key_path, "private key")
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            raise PkiError(f"reading private key {key_path}: it is encrypted",
                           hint="whoami needs an unencrypted key to check it matches") from None
        except Exception:   # ValueError, UnsupportedAlgorithm: never echo the content
            raise PkiError(f"reading private key {key_path}: not a PEM private key") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
                != certs[0].public_key().public_bytes(serialization.Encoding.DER, spki)):
            raise PkiError(f"{key_path} does not match {cert_path}: the key's public half is not "
                           "the certificate's public key, so no TLS handshake could use them",
                           hint=f"pass the key issued with the cert, e.g. --cert pki/admin.pem "
                                f"--key pki/admin-key.pem")
    return der[0], der[1:]


def _read_stdin_token(param: str) -> str:
    """The token on stdin; never more than one byte over the limit is read (`yes | ...` ends)."""
    from k8sboot.authn import MAX_TOKEN_BYTES

    text = sys.stdin.read(MAX_TOKEN_BYTES + 1).strip()
    if not text:
        raise typer.BadParameter("no token on stdin", param_hint=param)
    return text


def token_argument(token: Optional[str]) -> Optional[str]:
    """--token as given: '-' reads it from stdin; surrounding blanks dropped; empty refused."""
    if token == "-":
        return _read_stdin_token("'--token'")
    if token is not None:
        token = token.strip()
        if not token:
            raise typer.BadParameter("the token is empty", param_hint="'--token'")
    return token


def authenticate_offline(inventory: Path, cert: Optional[Path], key: Optional[Path], token: Optional[str],
                         as_json: bool, jwks_file: Optional[Path] = None):
    """Stage 1 offline, for whoami and can-i alike: (AuthResult, now) when authenticated; a 401 is
    printed ("401 Unauthorized: <why>", with --json the Status) and ends the command with exit 11.
    Credentials the server would ignore are printed as notes."""
    from datetime import datetime, timezone

    from k8sboot import authn, console
    from k8sboot.errors import ExitCode
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    config = _authenticator_config(inv, inventory, client_ca=cert is not None,
                                   service_account=token is not None, jwks_file=jwks_file)
    leaf, intermediates = _read_client_cert(cert, key) if cert is not None else (None, [])
    now = datetime.now(timezone.utc)
    result = authn.authenticate_request(leaf, f"Bearer {token}" if token else None, config, now,
                                        intermediates_der=intermediates)
    if not result.authenticated:
        if as_json:
            console.json_out(result.status(include_reason=True))
        console.info(f"401 Unauthorized: {result.reason}")
        raise typer.Exit(int(ExitCode.UNAUTHORIZED))
    for ignored in result.failures:
        console.info(f"note: {ignored.message}")
    return result, now


def render_whoami_table(user: UserInfo) -> str:
    """`kubectl auth whoami`'s table: tabwriter columns padded by 3, Go's %v for lists."""
    rows = [("ATTRIBUTE", "VALUE"), ("Username", user.username)]
    if user.uid:
        rows.append(("UID", user.uid))
    if user.groups:
        rows.append(("Groups", "[" + " ".join(user.groups) + "]"))
    for key in sorted(user.extra):
        rows.append((f"Extra: {key}", "[" + " ".join(user.extra[key]) + "]"))
    width = max(len(name) for name, _ in rows) + 3
    return "\n".join(f"{name:<{width}}{value}" for name, value in rows) + "\n"


# --- whoami -------------------------------------------------------------------------------------


def whoami(
    cert: Optional[Path] = typer.Option(None, "--cert", metavar="FILE",
                                        help="A client certificate (PEM, e.g. pki/admin.pem), "
                                             "checked against <pki.dir>/ca.pem."),
    key: Optional[Path] = typer.Option(None, "--key", metavar="FILE",
                                       help="The cert's private key: checked to match the cert."),
    token: Optional[str] = typer.Option(None, "--token", metavar="TOKEN",
                                        help="A ServiceAccount JWT, or '-' to read it from stdin; "
                                             "checked against <pki.dir>/service-account.pem."),
    anonymous: bool = typer.Option(False, "--anonymous",
                                   help="No credential at all: anonymous, or 401 when "
                                        "apiserver.anonymous_auth is false."),
    jwks: Optional[Path] = typer.Option(None, "--jwks", metavar="FILE",
                                        help="The JWT issuer's keys (a JWK set, JSON) for an OIDC token, "
                                             "instead of fetching them from the issuer's discovery URL."),
    inventory: Path = inventory_option,
    as_json: bool = typer.Option(False, "--json",
                                 help="Print a SelfSubjectReview (or the 401 Status) as JSON."),
) -> None:
    """Who kube-apiserver would say you are for a client cert, a ServiceAccount token, an OIDC
    token (the inventory's authentication: section), or nothing.

    Offline Stage 1 with the API server's own rules (the lab's stand-in runs the same code): prints
    what `kubectl auth whoami` prints, or "401 Unauthorized: <why>" on stderr.
    """
    given = [name for name, present in (("--cert", cert is not None), ("--token", token is not None),
                                         ("--anonymous", anonymous)) if present]
    if len(given) != 1:
        raise typer.BadParameter(
            "give exactly one of --cert FILE, --token TOKEN or --anonymous"
            + (f" (got {' and '.join(given)})" if given else ""),
            param_hint="'--cert' / '--token' / '--anonymous'")
    if key is not None and cert is None:
        raise typer.BadParameter("--key goes with --cert", param_hint="'--key'")
    token = token_argument(token)

    from k8sboot import authn, console

    if jwks is not None and token is None:
        raise typer.BadParameter("--jwks goes with --token", param_hint="'--jwks'")
    result, now = authenticate_offline(inventory, cert, key, token, as_json, jwks)
    if result.authenticator == authn.SERVICE_ACCOUNT and token is not None:
        from k8sboot import tokens

        claims = authn.parse_jwt(token).claims
        console.info(f"note: the API server accepts this token as {result.user.username} "
                     f"{tokens.server_lookup_note(claims)}")
    if as_json:
        console.json_out(result.self_subject_review(now))
    else:
        console.data(render_whoami_table(result.user))


# --- token create / decode ----------------------------------------------------------------------


@token_app.command("create", epilog=CREATE_EPILOG)
def create(
    namespace: str = typer.Option("default", "-n", "--namespace", metavar="NS", help="The ServiceAccount's namespace."),
    service_account: str = typer.Option(..., "--service-account", metavar="NAME",
                                        help="The ServiceAccount's name, e.g. bot."),
    duration: str = typer.Option("1h", "--duration", metavar="DURATION", help="Lifetime: 90s, 10m, 1h, 1d, 1h30m."),
    audience: Optional[list[str]] = typer.Option(None, "--audience", metavar="AUD",
                                                 help="An audience (repeatable); default: the "
                                                      "inventory's API audiences."),
    inventory: Path = inventory_option,
) -> None:
    """Mint a ServiceAccount token signed with the service-account key; print only the token."""
    from k8sboot import tokens

    try:
        lifetime = tokens.parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--duration'") from None
    for check, value, hint in ((tokens.check_namespace, namespace, "'-n' / '--namespace'"),
                               (tokens.check_service_account_name, service_account, "'--service-account'")):
        try:
            check(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    if audience is not None and any(not a.strip() for a in audience):
        raise typer.BadParameter("an audience cannot be empty", param_hint="'--audience'")

    from datetime import datetime, timezone

    from k8sboot import console, layout, store
    from k8sboot.errors import PkiError
    from k8sboot.inventory import load_inventory

    from k8sboot import rotation

    inv = load_inventory(inventory)
    longest = inv.apiserver.service_account_max_token_expiration_seconds
    if lifetime.total_seconds() > longest:
        from k8sboot.flags import go_duration

        # kube-apiserver caps a TokenRequest at this; a longer token would also outlive the time a
        # service-account-key rotation waits before it drops the old key (`rotate ... finish`)
        raise typer.BadParameter(
            f"{duration} is longer than --service-account-max-token-expiration={go_duration(longest)} "
            f"({inv.where('apiserver.service_account_max_token_expiration')}): the API server never issues "
            "such a token, and a key rotation could not wait it out",
            param_hint="'--duration'")
    _, signing = rotation.service_account_files(inv.rotation)    # the key the phase signs with
    issuers = rotation.issuers(inv.rotation, inv.cluster.service_account_issuer)
    key_path = _pki_file(inv, signing)
    key_pem = store.read_optional(key_path)      # a regular file in the PKI dir, never a link
    if key_pem is None:
        raise PkiError(f"reading the signing key {key_path}: no such file",
                       hint=_gen_certs_hint(inventory))
    token = tokens.mint_token(namespace, service_account, lifetime,
                              list(audience) if audience else _default_audiences(inv),
                              issuers[0], key_pem, datetime.now(timezone.utc), source=str(key_path))
    console.data(token)


@token_app.command("decode", epilog=DECODE_EPILOG)
def decode(
    token: str = typer.Argument(..., metavar="TOKEN", help="The JWT, or '-' to read it from stdin."),
    inventory: Path = inventory_option,
) -> None:
    """Print a token's header and claims as JSON, and say whether it verifies and would pass."""
    if token == "-":
        token = _read_stdin_token("'TOKEN'")

    from datetime import datetime, timezone

    from k8sboot import authn, console, layout, tokens
    from k8sboot.inventory import load_inventory

    now = datetime.now(timezone.utc)
    tokens.decode_token(token, None, now)            # garbage: TokenError before anything else
    config, source = None, "no inventory"
    if inventory == DEFAULT_INVENTORY and not inventory.exists():
        source = f"no inventory at {inventory}; pass -i INV"
    else:
        from k8sboot import rotation

        inv = load_inventory(inventory)
        trusted, _ = rotation.service_account_files(inv.rotation)
        key_paths = [_pki_file(inv, name) for name in trusted]
        key_path = key_paths[0]
        source = ", ".join(str(p) for p in key_paths)
        try:
            config = authn.load_authenticator_config(
                service_account_key_files=key_paths,
                service_account_issuers=rotation.issuers(inv.rotation, inv.cluster.service_account_issuer),
                api_audiences=_explicit_audiences(inv),
                anonymous_auth=inv.apiserver.anonymous_auth)
        except authn.AuthnConfigError as exc:
            source = (f"{key_path} not found; {_gen_certs_hint(inventory)}" if exc.missing
                      else f"{key_path} unusable: {exc.message}")
    report = tokens.decode_token(token, config, now)
    console.data(report.render_json())
    console.info(tokens.render_verdict(report, source, now))


def register(app: typer.Typer) -> None:
    app.command("whoami", epilog=WHOAMI_EPILOG)(whoami)
    app.add_typer(token_app, name="token")
