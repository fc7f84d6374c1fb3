"""JWT authenticators of kube-apiserver's structured authentication configuration.

`--authentication-config` names an `AuthenticationConfiguration` (apiserver.config.k8s.io: v1alpha1
in 1.29, v1beta1 from 1.30, v1 from 1.34) with up to 64 JWT authenticators and, from 1.32, an
`anonymous` block. This module is the one reading of that structure, shared by the inventory
(`authentication:` section, validated offline with file:line errors), `render`/`deploy` (the file),
`k8sboot whoami --token` and the lab's stand-in:

* `parse(data, ...)`: the structure -> `AuthenticationConfig`, with upstream's validation rules
  (https issuers without query/fragment/user, unique issuers and discovery URLs, no clash with the
  ServiceAccount issuer, audiences with MatchAny, claim rules either claim+requiredValue or an
  expression, username claim with a prefix, extra keys domain-prefixed and lowercase, every CEL
  expression compiled and type-checked). ConfigError names the key path.
* `render(config)`: the file's bytes (certificateAuthorityFile inlined).
* `authenticate(token, authenticators, now, keys)`: upstream's order. The authenticator is chosen
  by the token's (unverified) `iss`; then the signature against the issuer's JWKS (`kid` when the
  token has one; RS/ES/PS 256/384/512, upstream's AllValidSigningAlgorithms), `aud` against the
  audiences (MatchAny), `exp` (no leeway) and `nbf` (5 minutes of clock skew, go-oidc's), the
  claim validation rules, the claim mappings (a username from the `email` claim needs
  `email_verified` true when present), the user validation rules. The groups
  get `system:authenticated`. Every failure names the rule or the claim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import k8sboot.authn.cel as cel
from k8sboot.authn.names import MalformedTokenError, Reason
from k8sboot.authn.results import AuthResult, Failure, UserInfo, _rfc3339, _utc, _with_authenticated_group

GROUP = "apiserver.config.k8s.io"
KIND = "AuthenticationConfiguration"
MAX_AUTHENTICATORS = 64
MIN_VERSION = (1, 29)
DISCOVERY_SINCE = (1, 30)          # issuer.discoveryURL
ANONYMOUS_SINCE = (1, 32)          # the anonymous block (beta, on by default; GA in 1.34)
# (first minor, apiVersion): the newest version the release serves
API_VERSIONS = (((1, 34), "v1"), ((1, 30), "v1beta1"), ((1, 29), "v1alpha1"))
ALL_API_VERSIONS = tuple(f"{GROUP}/{v}" for _, v in API_VERSIONS)
FEATURE_GATE = "StructuredAuthenticationConfiguration"
MATCH_ANY = "MatchAny"
NBF_SKEW = timedelta(minutes=5)    # go-oidc's allowedClockSkew for nbf; exp has none
# What the API server's JWT authenticators verify: with --authentication-config "all known signing
# algs are allowed" (kube-apiserver's authentication options set oidc.AllValidSigningAlgorithms():
# RS/ES/PS 256/384/512); never none, HS* or anything else
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
JWT = "jwt"
_EXTRA_KEY = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/\S+$")
_RESERVED_EXTRA_DOMAINS = ("kubernetes.io", "k8s.io")


class ConfigError(ValueError):
    """One problem of the configuration, at a key path (`authentication.jwt[0].issuer.url`)."""

    def __init__(self, key_path: str, message: str, hint: str | None = None):
        super().__init__(f"{key_path}: {message}")
        self.key_path = key_path
        self.message = message
        self.hint = hint


class JwksError(RuntimeError):
    """The issuer's keys cannot be had (discovery or JWKS fetch failed)."""


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    url: str
    audiences: tuple[str, ...]
    discovery_url: str = ""
    certificate_authority: str = ""         # PEM, inline in the file
    audience_match_policy: str = ""


@dataclass(frozen=True)
class ClaimRule:
    claim: str = ""
    required_value: str = ""
    expression: str = ""
    message: str = ""


@dataclass(frozen=True)
class ClaimOrExpression:
    claim: str = ""
    prefix: str | None = None
    expression: str = ""


@dataclass(frozen=True)
class ExtraMapping:
    key: str
    value_expression: str


@dataclass(frozen=True)
class UserRule:
    expression: str
    message: str = ""


@dataclass(frozen=True)
class JwtAuthenticator:
    issuer: Issuer
    username: ClaimOrExpression
    groups: ClaimOrExpression | None = None
    uid: ClaimOrExpression | None = None
    extra: tuple[ExtraMapping, ...] = ()
    claim_rules: tuple[ClaimRule, ...] = ()
    user_rules: tuple[UserRule, ...] = ()
    key_path: str = field(default="", compare=False)      # where it was read, for messages


@dataclass(frozen=True)
class Anonymous:
    enabled: bool
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthenticationConfig:
    api_version: str
    jwt: tuple[JwtAuthenticator, ...] = ()
    anonymous: Anonymous | None = None

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(a.issuer.url for a in self.jwt)


# --- versions --------------------------------------------------------------------------------------


def api_version_for(version: tuple[int, int]) -> str:
    """The apiVersion a kube-apiserver of `version` reads; ConfigError-free: check MIN_VERSION first."""
    for since, name in API_VERSIONS:
        if version >= since:
            return f"{GROUP}/{name}"
    raise ValueError(f"kube-apiserver {version[0]}.{version[1]} has no structured authentication "
                     f"configuration (--authentication-config came in {MIN_VERSION[0]}.{MIN_VERSION[1]})")


# --- parsing and validation ------------------------------------------------------------------------


class _Walk:
    def __init__(self, root: str):
        self.root = root

    def fail(self, path: str, message: str, hint: str | None = None):
        raise ConfigError(path, message, hint)

    def mapping(self, value: Any, path: str, known: Sequence[str], required: Sequence[str] = ()) -> dict:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, not {_kind(value)}")
        for key in value:
            if key not in known:
                import difflib

                close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
                self.fail(f"{path}.{key}", "unknown key",
                          f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}")
        for key in required:
            if key not in value or value[key] in (None, ""):
                self.fail(f"{path}.{key}", "required")
        return dict(value)

    def string(self, value: Any, path: str, *, empty_ok: bool = True) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {_kind(value)}")
        if not empty_ok and not value:
            self.fail(path, "must not be empty")
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(path, f"must be a list of strings, not {_kind(value)}")
        return tuple(self.string(v, f"{path}[{i}]", empty_ok=False) for i, v in enumerate(value))

    def items(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "nothing"
    return type(value).__name__


def _https_url(w: _Walk, value: str, path: str, what: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port
    except ValueError as exc:
        w.fail(path, f"'{value}' is not a URL: {exc}")
    if parts.scheme != "https":
        w.fail(path, f"'{value}': URL scheme must be https", hint=f"kube-apiserver only accepts https {what}s")
    if not parts.hostname:
        w.fail(path, f"'{value}' has no host")
    if parts.username or parts.password:
        w.fail(path, f"'{value}': URL must not contain a username or password")
    if parts.query:
        w.fail(path, f"'{value}': URL must not contain a query")
    if parts.fragment or value.endswith("#"):
        w.fail(path, f"'{value}': URL must not contain a fragment")
    return value


def parse(data: Any, *, root: str = "authentication", version: tuple[int, int] = (1, 34),
          service_account_issuers: Sequence[str] = (), read_file: Callable[[str], str] | None = None,
          inventory_form: bool = True, compile_cel: bool = True) -> AuthenticationConfig:
    """The inventory's `authentication:` section (`inventory_form`: no apiVersion/kind, and
    `certificateAuthorityFile` allowed, read by `read_file(value) -> PEM text`, which raises
    ValueError with the reason; the module itself reads no file) or a rendered file's document."""
    w = _Walk(root)
    keys = ("jwt", "anonymous") if inventory_form else ("apiVersion", "kind", "jwt", "anonymous")
    top = w.mapping(data if data is not None else {}, root, keys)
    if inventory_form:
        if version < MIN_VERSION:
            w.fail(root, f"kube-apiserver {version[0]}.{version[1]} (apiserver.version) has no structured "
                         f"authentication configuration: --authentication-config came in 1.29",
                   hint="set apiserver.version to the release you run (1.30 or later; 1.34 made it GA), "
                        "or use --oidc-* flags in apiserver.extra_flags without this section")
        api_version = api_version_for(version)
    else:
        api_version = w.string(top.get("apiVersion"), f"{root}.apiVersion")
        if api_version not in ALL_API_VERSIONS:
            w.fail(f"{root}.apiVersion", f"'{api_version}' is not one of {', '.join(ALL_API_VERSIONS)}")
        if top.get("kind") != KIND:
            w.fail(f"{root}.kind", f"must be {KIND}")
        version = {f"{GROUP}/v1": (1, 34), f"{GROUP}/v1beta1": (1, 32),
                   f"{GROUP}/v1alpha1": (1, 29)}[api_version]
    items = w.items(top.get("jwt"), f"{root}.jwt")
    if len(items) > MAX_AUTHENTICATORS:
        w.fail(f"{root}.jwt", f"{len(items)} authenticators: at most {MAX_AUTHENTICATORS} are allowed")
    authenticators = []
    seen_issuers: dict[str, str] = {}
    seen_discovery: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"{root}.jwt[{i}]"
        a = _authenticator(w, item, path, version, read_file, inventory_form, compile_cel)
        url = a.issuer.url
        if url in seen_issuers:
            w.fail(f"{path}.issuer.url", f"'{url}' is already the issuer of {seen_issuers[url]}",
                   hint="each JWT authenticator needs an issuer URL of its own")
        seen_issuers[url] = path
        if url in service_account_issuers:
            w.fail(f"{path}.issuer.url", f"'{url}' is the ServiceAccount token issuer "
                                         "(--service-account-issuer)",
                   hint="a JWT issuer must differ from cluster.service_account_issuer: the API server would "
                        "not know which authenticator a token is for")
        if a.issuer.discovery_url:
            d = a.issuer.discovery_url
            if d in seen_discovery:
                w.fail(f"{path}.issuer.discoveryURL", f"'{d}' is already the discovery URL of {seen_discovery[d]}")
            seen_discovery[d] = path
        authenticators.append(a)
    anonymous = None
    if top.get("anonymous") is not None:
        path = f"{root}.anonymous"
        if version < ANONYMOUS_SINCE:
            w.fail(path, f"kube-apiserver {version[0]}.{version[1]} has no anonymous block in the "
                         "authentication configuration (beta and on by default from 1.32)",
                   hint="remove it and use apiserver.anonymous_auth, or set apiserver.version to 1.32 or later")
        an = w.mapping(top["anonymous"], path, ("enabled", "conditions"), required=())
        enabled = an.get("enabled")
        if not isinstance(enabled, bool):
            w.fail(f"{path}.enabled", "must be true or false")
        paths = []
        for j, cond in enumerate(w.items(an.get("conditions"), f"{path}.conditions")):
            c = w.mapping(cond, f"{path}.conditions[{j}]", ("path",), required=("path",))
            p = w.string(c["path"], f"{path}.conditions[{j}].path", empty_ok=False)
            if not p.startswith("/"):
                w.fail(f"{path}.conditions[{j}].path", f"'{p}' must start with /", hint="e.g. /livez")
            if p in paths:
                w.fail(f"{path}.conditions[{j}].path", f"'{p}' is listed twice")
            paths.append(p)
        if paths and not enabled:
            w.fail(f"{path}.conditions", "conditions need enabled: true")
        anonymous = Anonymous(enabled, tuple(paths))
    return AuthenticationConfig(api_version, tuple(authenticators), anonymous)


def _read_ca(w: _Walk, value: str, path: str, read_file: Callable[[str], str] | None) -> str:
    if read_file is None:
        w.fail(path, "only an inventory may name a file: the API server's file inlines certificateAuthority")
    try:
        return read_file(value)
    except ValueError as exc:
        w.fail(path, str(exc), hint="the issuer's CA certificate (PEM)")


def _check_ca(w: _Walk, pem: str, path: str) -> str:
    from cryptography import x509

    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.DOTALL)
    if not blocks:
        w.fail(path, "holds no PEM certificate")
    for block in blocks:
        try:
            x509.load_pem_x509_certificate(block.encode())
        except ValueError as exc:
            w.fail(path, f"a certificate cannot be read: {exc}")
    return pem


def _authenticator(w: _Walk, item: Any, path: str, version: tuple[int, int],
                   read_file: Callable[[str], str] | None, inventory_form: bool,
                   compile_cel: bool) -> JwtAuthenticator:
    v = w.mapping(item, path, ("issuer", "claimValidationRules", "claimMappings", "userValidationRules"),
                  required=("issuer", "claimMappings"))
    issuer_keys = ["url", "discoveryURL", "certificateAuthority", "audiences", "audienceMatchPolicy"]
    if inventory_form:
        issuer_keys.append("certificateAuthorityFile")
    ip = f"{path}.issuer"
    iv = w.mapping(v["issuer"], ip, issuer_keys, required=("url", "audiences"))
    url = _https_url(w, w.string(iv["url"], f"{ip}.url", empty_ok=False), f"{ip}.url", "issuer")
    discovery = w.string(iv.get("discoveryURL"), f"{ip}.discoveryURL")
    if discovery:
        if version < DISCOVERY_SINCE:
            w.fail(f"{ip}.discoveryURL", f"kube-apiserver {version[0]}.{version[1]} has no discoveryURL (from 1.30)")
        _https_url(w, discovery, f"{ip}.discoveryURL", "discovery URL")
        if discovery.rstrip("/") == url.rstrip("/"):
            w.fail(f"{ip}.discoveryURL", "must differ from issuer.url",
                   hint="leave it out: the discovery document is then read from the issuer URL")
    ca = w.string(iv.get("certificateAuthority"), f"{ip}.certificateAuthority")
    ca_file = w.string(iv.get("certificateAuthorityFile"), f"{ip}.certificateAuthorityFile")
    if ca and ca_file:
        w.fail(f"{ip}.certificateAuthorityFile", "give certificateAuthority or certificateAuthorityFile, not both")
    if ca_file:
        ca = _check_ca(w, _read_ca(w, ca_file, f"{ip}.certificateAuthorityFile", read_file),
                       f"{ip}.certificateAuthorityFile")
    elif ca:
        ca = _check_ca(w, ca, f"{ip}.certificateAuthority")
    audiences = w.strings(iv["audiences"], f"{ip}.audiences")
    if not audiences:
        w.fail(f"{ip}.audiences", "at least one audience is required")
    if len(set(audiences)) != len(audiences):
        w.fail(f"{ip}.audiences", "duplicate audience")
    policy = w.string(iv.get("audienceMatchPolicy"), f"{ip}.audienceMatchPolicy")
    if policy and policy != MATCH_ANY:
        w.fail(f"{ip}.audienceMatchPolicy", f"'{policy}': the only policy is {MATCH_ANY}")
    if len(audiences) > 1 and policy != MATCH_ANY:
        w.fail(f"{ip}.audienceMatchPolicy", f"must be {MATCH_ANY} when more than one audience is given",
               hint=f"add audienceMatchPolicy: {MATCH_ANY}")
    issuer = Issuer(url, audiences, discovery, ca, policy)

    rules = []
    claims_seen: set[str] = set()
    for j, rule in enumerate(w.items(v.get("claimValidationRules"), f"{path}.claimValidationRules")):
        rp = f"{path}.claimValidationRules[{j}]"
        r = w.mapping(rule, rp, ("claim", "requiredValue", "expression", "message"))
        claim = w.string(r.get("claim"), f"{rp}.claim")
        expr = w.string(r.get("expression"), f"{rp}.expression")
        if claim and expr:
            w.fail(rp, "claim and expression cannot both be set")
        if not claim and not expr:
            w.fail(rp, "claim or expression is required")
        if claim:
            if claim in claims_seen:
                w.fail(f"{rp}.claim", f"'{claim}' is already validated by another rule")
            claims_seen.add(claim)
            if r.get("message"):
                w.fail(f"{rp}.message", "message can only be set with expression")
        if expr:
            if "requiredValue" in r:
                w.fail(f"{rp}.requiredValue", "requiredValue can only be set with claim")
            _compile(w, expr, cel.CLAIMS, cel.BOOL, f"{rp}.expression", compile_cel)
        rules.append(ClaimRule(claim, w.string(r.get("requiredValue"), f"{rp}.requiredValue"), expr,
                               w.string(r.get("message"), f"{rp}.message")))

    mp = f"{path}.claimMappings"
    m = w.mapping(v["claimMappings"], mp, ("username", "groups", "uid", "extra"), required=("username",))
    username = _mapping(w, m["username"], f"{mp}.username", cel.STRING, compile_cel, prefix_required=True)
    groups = _mapping(w, m["groups"], f"{mp}.groups", cel.STRING_OR_LIST, compile_cel) if m.get("groups") else None
    uid = _mapping(w, m["uid"], f"{mp}.uid", cel.STRING, compile_cel, prefix_allowed=False) if m.get("uid") else None
    extra = []
    keys_seen: set[str] = set()
    for j, e in enumerate(w.items(m.get("extra"), f"{mp}.extra")):
        ep = f"{mp}.extra[{j}]"
        ev = w.mapping(e, ep, ("key", "valueExpression"), required=("key", "valueExpression"))
        key = w.string(ev["key"], f"{ep}.key", empty_ok=False)
        if key != key.lower():
            w.fail(f"{ep}.key", f"'{key}' must be lowercase")
        if not _EXTRA_KEY.match(key):
            w.fail(f"{ep}.key", f"'{key}' must be a domain-prefixed path, e.g. example.org/tenant")
        domain = key.split("/", 1)[0]
        if any(domain == d or domain.endswith("." + d) for d in _RESERVED_EXTRA_DOMAINS):
            w.fail(f"{ep}.key", f"'{key}': the domains kubernetes.io and k8s.io are reserved")
        if key in keys_seen:
            w.fail(f"{ep}.key", f"'{key}' is mapped twice")
        keys_seen.add(key)
        expr = w.string(ev["valueExpression"], f"{ep}.valueExpression", empty_ok=False)
        _compile(w, expr, cel.CLAIMS, cel.STRING_OR_LIST, f"{ep}.valueExpression", compile_cel)
        extra.append(ExtraMapping(key, expr))
    if username.expression and cel.references(username.expression, "email"):
        used = [username.expression, *(x.value_expression for x in extra), *(r.expression for r in rules)]
        if not any(cel.references(s, "email_verified") for s in used):
            w.fail(f"{mp}.username.expression", "claims.email_verified must be used in username.expression, "
                   "extra[*].valueExpression or claimValidationRules[*].expression when username.expression "
                   "uses claims.email",
                   hint="e.g. claimValidationRules: [{expression: 'claims.?email_verified.orValue(true) == true'}]")

    user_rules = []
    for j, rule in enumerate(w.items(v.get("userValidationRules"), f"{path}.userValidationRules")):
        rp = f"{path}.userValidationRules[{j}]"
        r = w.mapping(rule, rp, ("expression", "message"), required=("expression",))
        expr = w.string(r["expression"], f"{rp}.expression", empty_ok=False)
        _compile(w, expr, cel.USER, cel.BOOL, f"{rp}.expression", compile_cel)
        user_rules.append(UserRule(expr, w.string(r.get("message"), f"{rp}.message")))
    return JwtAuthenticator(issuer, username, groups, uid, tuple(extra), tuple(rules), tuple(user_rules), path)


def _mapping(w: _Walk, value: Any, path: str, want, compile_cel: bool, *, prefix_required: bool = False,
             prefix_allowed: bool = True) -> ClaimOrExpression:
    keys = ("claim", "prefix", "expression") if prefix_allowed else ("claim", "expression")
    v = w.mapping(value, path, keys)
    claim = w.string(v.get("claim"), f"{path}.claim")
    expr = w.string(v.get("expression"), f"{path}.expression")
    prefix = v.get("prefix")
    if prefix is not None:
        prefix = w.string(prefix, f"{path}.prefix")
    if claim and expr:
        w.fail(path, "claim and expression cannot both be set")
    if not claim and not expr:
        w.fail(path, "claim or expression is required")
    if expr and prefix is not None:
        w.fail(f"{path}.prefix", "prefix can only be set with claim",
               hint="put the prefix in the expression: \"'oidc:' + claims.sub\"")
    if claim and prefix is None and prefix_required:
        w.fail(f"{path}.prefix", "prefix is required when claim is set",
               hint='an empty prefix is allowed: prefix: ""')
    if expr:
        _compile(w, expr, cel.CLAIMS, want, f"{path}.expression", compile_cel)
    return ClaimOrExpression(claim, prefix, expr)


def _compile(w: _Walk, source: str, variable: str, want, path: str, enabled: bool) -> None:
    if not enabled:
        return
    try:
        cel.compile_expression(source, variable, want)
    except cel.CelError as exc:
        w.fail(path, f'"{source}": {exc}')


# --- the file ---------------------------------------------------------------------------------------


def to_document(config: AuthenticationConfig) -> dict:
    out: dict[str, Any] = {"apiVersion": config.api_version, "kind": KIND}
    if config.jwt:
        out["jwt"] = [_authenticator_doc(a) for a in config.jwt]
    if config.anonymous is not None:
        an: dict[str, Any] = {"enabled": config.anonymous.enabled}
        if config.anonymous.paths:
            an["conditions"] = [{"path": p} for p in config.anonymous.paths]
        out["anonymous"] = an
    return out


def _mapping_doc(m: ClaimOrExpression) -> dict:
    out: dict[str, Any] = {}
    if m.claim:
        out["claim"] = m.claim
        if m.prefix is not None:
            out["prefix"] = m.prefix
    if m.expression:
        out["expression"] = m.expression
    return out


def _authenticator_doc(a: JwtAuthenticator) -> dict:
    issuer: dict[str, Any] = {"url": a.issuer.url}
    if a.issuer.discovery_url:
        issuer["discoveryURL"] = a.issuer.discovery_url
    if a.issuer.certificate_authority:
        issuer["certificateAuthority"] = a.issuer.certificate_authority
    issuer["audiences"] = list(a.issuer.audiences)
    if a.issuer.audience_match_policy:
        issuer["audienceMatchPolicy"] = a.issuer.audience_match_policy
    out: dict[str, Any] = {"issuer": issuer}
    if a.claim_rules:
        out["claimValidationRules"] = [
            {"claim": r.claim, "requiredValue": r.required_value} if r.claim
            else {"expression": r.expression, **({"message": r.message} if r.message else {})}
            for r in a.claim_rules]
    mappings: dict[str, Any] = {"username": _mapping_doc(a.username)}
    if a.groups is not None:
        mappings["groups"] = _mapping_doc(a.groups)
    if a.uid is not None:
        mappings["uid"] = _mapping_doc(a.uid)
    if a.extra:
        mappings["extra"] = [{"key": e.key, "valueExpression": e.value_expression} for e in a.extra]
    out["claimMappings"] = mappings
    if a.user_rules:
        out["userValidationRules"] = [{"expression": r.expression, **({"message": r.message} if r.message else {})}
                                      for r in a.user_rules]
    return out


def render(config: AuthenticationConfig) -> bytes:
    """The file kube-apiserver reads (`--authentication-config`); stable bytes for one config.

    JSON, which is YAML too: kube-apiserver's decoder reads either, and the stand-in on a lab host
    reads it with the standard library alone."""
    return (json.dumps(to_document(config), indent=2) + "\n").encode()


def load_document(data: bytes, source: str, service_account_issuers: Sequence[str] = ()) -> AuthenticationConfig:
    """Read a rendered file (the stand-in, verify). ConfigError on anything the server would refuse,
    a JWT issuer that is one of `service_account_issuers` included (upstream's DisallowedIssuers)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ConfigError(source, f"not the JSON k8sboot renders: {exc}") from None
    return parse(doc, root=source, inventory_form=False, service_account_issuers=service_account_issuers)


# --- authentication -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Compiled:
    """An authenticator with its CEL programs compiled once (the API server does it at load)."""

    spec: JwtAuthenticator
    claim_programs: tuple[Any, ...] = ()        # cel.Program or None (claim + requiredValue) per rule
    username: Any = None
    groups: Any = None
    uid: Any = None
    extra: tuple[Any, ...] = ()
    user_programs: tuple[Any, ...] = ()

    @property
    def issuer(self) -> str:
        return self.spec.issuer.url


def compile_config(config: AuthenticationConfig) -> tuple[Compiled, ...]:
    out = []
    for a in config.jwt:
        def prog(src: str, want, variable: str = cel.CLAIMS):
            return cel.compile_expression(src, variable, want) if src else None
        out.append(Compiled(
            a,
            tuple(prog(r.expression, cel.BOOL) for r in a.claim_rules),
            prog(a.username.expression, cel.STRING),
            prog(a.groups.expression, cel.STRING_OR_LIST) if a.groups else None,
            prog(a.uid.expression, cel.STRING) if a.uid else None,
            tuple(prog(e.value_expression, cel.STRING_OR_LIST) for e in a.extra),
            tuple(prog(r.expression, cel.BOOL, cel.USER) for r in a.user_rules)))
    return tuple(out)


# issuer's JWKS as a dict {"keys": [...]}; raises JwksError
KeysFor = Callable[[Compiled], Mapping[str, Any]]


def _fail(reason: Reason, message: str, *, is_error: bool = True) -> AuthResult:
    return AuthResult(None, "", (Failure(JWT, reason, message, is_error=is_error),))


def authenticate(token: str, authenticators: Sequence[Compiled], now: datetime, keys: KeysFor) -> AuthResult:
    """The JWT authenticators on a bearer token: chosen by `iss`; not one of theirs -> ignored."""
    from k8sboot.authn.serviceaccount import parse_jwt

    if not authenticators:
        return _fail(Reason.TOKEN_AUTHENTICATOR_OFF, "no JWT authenticator is configured", is_error=False)
    try:
        parts = parse_jwt(token)
    except MalformedTokenError as exc:
        return _fail(Reason.TOKEN_MALFORMED, f"malformed token: {exc}", is_error=False)
    iss = parts.claims.get("iss")
    chosen = next((a for a in authenticators if a.issuer == iss), None)
    if chosen is None:
        return _fail(Reason.TOKEN_WRONG_ISSUER,
                     f"token issuer {json.dumps(iss)} is none of the JWT authenticators' issuers "
                     f"{json.dumps([a.issuer for a in authenticators])}", is_error=False)
    return _verify(token, parts, chosen, _utc(now), keys)


def _verify(token: str, parts, a: Compiled, now: datetime, keys: KeysFor) -> AuthResult:
    issuer = a.issuer
    alg = parts.header.get("alg")
    if alg not in ALGORITHMS:
        return _fail(Reason.TOKEN_UNSUPPORTED_ALGORITHM,
                     f"oidc: id token signed with unsupported algorithm, expected {json.dumps(list(ALGORITHMS))} "
                     f"got {json.dumps(alg)} (issuer {issuer})")
    try:
        jwks = keys(a)
    except JwksError as exc:
        return _fail(Reason.TOKEN_BAD_SIGNATURE, f"oidc: cannot get the keys of issuer {issuer}: {exc}")
    failure = _signature(token, parts.header, alg, jwks, issuer)
    if failure:
        return failure
    claims = parts.claims
    try:
        auds = _audiences(claims)
    except MalformedTokenError as exc:
        return _fail(Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
    wanted = a.spec.issuer.audiences
    if not set(auds) & set(wanted):
        return _fail(Reason.TOKEN_WRONG_AUDIENCE,
                     f"oidc: expected audience in {json.dumps(list(wanted))} got {json.dumps(list(auds))}")
    failure = _times(claims, now)
    if failure:
        return failure
    for rule, program in zip(a.spec.claim_rules, a.claim_programs):
        if rule.claim:
            got = claims.get(rule.claim)
            if not isinstance(got, str):
                return _fail(Reason.TOKEN_INVALID_CLAIMS,
                             f"oidc: required claim {rule.claim} not present in token" if got is None else
                             f"oidc: claim {rule.claim} is not a string")
            if got != rule.required_value:
                return _fail(Reason.TOKEN_INVALID_CLAIMS,
                             f"oidc: required claim {rule.claim} value does not match. Got = {got}, "
                             f"want = {rule.required_value}")
            continue
        failure = _rule_failure(program, claims, rule.expression, rule.message, "claim validation expression")
        if failure:
            return failure
    user = _user(a, claims)
    if isinstance(user, AuthResult):
        return user
    as_cel = {"username": user.username, "uid": user.uid, "groups": list(user.groups),
              "extra": {k: list(v) for k, v in user.extra.items()}}
    for rule, program in zip(a.spec.user_rules, a.user_programs):
        failure = _rule_failure(program, as_cel, rule.expression, rule.message, "user info validation rule")
        if failure:
            return failure
    return AuthResult(UserInfo(user.username, user.uid, _with_authenticated_group(user.groups), user.extra),
                      f"{JWT} ({issuer})")


def _rule_failure(program, value: Mapping[str, Any], expression: str, message: str, what: str) -> AuthResult | None:
    """A validation rule (claims or the mapped user) that errs or is false, as upstream words it."""
    try:
        ok = program.evaluate(value)
    except cel.CelEvalError as exc:
        return _fail(Reason.TOKEN_INVALID_CLAIMS, f"oidc: error evaluating {what} '{expression}': {exc}")
    if ok:
        return None
    why = f": {message}" if message else ""
    return _fail(Reason.TOKEN_INVALID_CLAIMS,
                 f"oidc: error evaluating {what}: validation expression '{expression}' failed{why}")


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(x, str) for x in aud):
        return tuple(aud)
    if aud is None:
        return ()
    raise MalformedTokenError('"aud" must be a string or a list of strings')


def _times(claims: Mapping[str, Any], now: datetime) -> AuthResult | None:
    from k8sboot.authn.serviceaccount import _numeric_date

    try:
        exp, nbf = _numeric_date(claims, "exp"), _numeric_date(claims, "nbf")
    except MalformedTokenError as exc:
        return _fail(Reason.TOKEN_MALFORMED, f"malformed token: {exc}")
    if exp is None:
        return _fail(Reason.TOKEN_INVALID_CLAIMS, "oidc: token has no exp claim")
    if now > exp:
        return _fail(Reason.TOKEN_EXPIRED, f"oidc: token is expired (Token Expiry: {_rfc3339(exp)})")
    if nbf is not None and now + NBF_SKEW < nbf:
        return _fail(Reason.TOKEN_NOT_YET_VALID,
                     f"oidc: current time {_rfc3339(now)} before the nbf (not before) time: {_rfc3339(nbf)}")
    return None


_PARSED: dict[int, tuple[Any, list]] = {}


def _parsed_keys(jwks: Mapping[str, Any]) -> list:
    """The set's usable keys as PyJWK, parsed once per JWKS object (a warm cache hands the same
    dict to every request); an unusable key is skipped, as go-jose skips it."""
    import jwt as pyjwt

    hit = _PARSED.get(id(jwks))
    if hit is not None and hit[0] is jwks:
        return hit[1]
    keys = []
    for raw in (jwks.get("keys") or []) if isinstance(jwks, Mapping) else []:
        try:
            keys.append(pyjwt.PyJWK(raw))
        except Exception:           # noqa: BLE001 - PyJWT raises several kinds for a bad key
            continue
    if len(_PARSED) > 64:
        _PARSED.clear()
    _PARSED[id(jwks)] = (jwks, keys)
    return keys


def _signature(token: str, header: Mapping[str, Any], alg: str, jwks: Mapping[str, Any],
               issuer: str) -> AuthResult | None:
    import jwt as pyjwt
    from jwt.api_jws import PyJWS

    keys = _parsed_keys(jwks)
    kid = header.get("kid")
    candidates = [k for k in keys if kid is None or k.key_id == kid]
    if not candidates:
        shown = f"with kid {json.dumps(kid)} " if kid is not None else ""
        return _fail(Reason.TOKEN_BAD_SIGNATURE,
                     f"oidc: verify token: failed to verify signature: no key {shown}in the JWKS of {issuer} "
                     f"({len(keys)} key(s))")
    jws = PyJWS(algorithms=[alg])
    for k in candidates:
        try:
            jws.decode_complete(token, key=k.key, algorithms=[alg])
            return None
        except pyjwt.exceptions.InvalidSignatureError:
            continue
        except (pyjwt.exceptions.PyJWTError, TypeError, ValueError):
            continue
    return _fail(Reason.TOKEN_BAD_SIGNATURE,
                 f"oidc: verify token: failed to verify signature: {alg} signature does not verify against "
                 f"the {len(candidates)} matching key(s) of {issuer}")


def _claim_string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) else None


def _user(a: Compiled, claims: Mapping[str, Any]) -> UserInfo | AuthResult:
    spec = a.spec

    def bad(message: str) -> AuthResult:
        return _fail(Reason.TOKEN_INVALID_CLAIMS, f"oidc: {message}")

    def run(program, what: str):
        try:
            return program.evaluate(claims)
        except cel.CelEvalError as exc:
            raise _MappingError(f"error evaluating {what} claim expression '{program.source}': {exc}")

    try:
        if spec.username.claim:
            name = spec.username.claim
            if name not in claims:
                return bad(f"claim not present: {name}")
            value = _claim_string(claims, name)
            if value is None:
                return bad(f"claim {name} is not a string")
            if name == "email":
                verified = claims.get("email_verified")
                if verified is not None and verified is not True:
                    return bad("email not verified" if isinstance(verified, bool)
                               else "email_verified claim is not a boolean")
            username = (spec.username.prefix or "") + value
        else:
            username = run(a.username, "username")
        if not username:
            return bad("username claim expression must not evaluate to an empty string" if spec.username.expression
                       else f"claim {spec.username.claim} is empty")
        groups: list[str] = []
        if spec.groups is not None:
            if spec.groups.claim:
                raw = claims.get(spec.groups.claim)
                if raw is None:
                    raw = []
                elif isinstance(raw, str):
                    raw = [raw]
                elif not (isinstance(raw, list) and all(isinstance(g, str) for g in raw)):
                    return bad(f"claim {spec.groups.claim} is not a string or a list of strings")
                groups = [(spec.groups.prefix or "") + g for g in raw]
            else:
                got = run(a.groups, "groups")
                groups = [got] if isinstance(got, str) else list(got)
        uid = ""
        if spec.uid is not None:
            if spec.uid.claim:
                raw = claims.get(spec.uid.claim)
                if raw is not None and not isinstance(raw, str):
                    return bad(f"claim {spec.uid.claim} is not a string")
                uid = raw or ""
            else:
                uid = run(a.uid, "uid")
        extra: dict[str, tuple[str, ...]] = {}
        for mapping, program in zip(spec.extra, a.extra):
            got = run(program, f"extra[{mapping.key}]")
            values = [got] if isinstance(got, str) else list(got)
            values = [x for x in values if x]
            if values:
                extra[mapping.key] = tuple(values)
    except _MappingError as exc:
        return bad(str(exc))
    return UserInfo(username, uid, tuple(groups), extra)


class _MappingError(Exception):
    pass


# --- the issuer's keys -------------------------------------------------------------------------------


def discovery_url(issuer: Issuer) -> str:
    """Where the discovery document is: discoveryURL, else the issuer URL + /.well-known/..."""
    return issuer.discovery_url or issuer.url.rstrip("/") + "/.well-known/openid-configuration"


def _https_get(url: str, ca_pem: str, timeout: float, *, dial: Any = None) -> bytes:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.read(1 << 20)
    except Exception as exc:
        reason = getattr(exc, "reason", None) or exc
        raise JwksError(f"GET {url}: {reason}") from None


def fetch_jwks(issuer: Issuer, timeout: float = 5.0) -> dict:
    """The issuer's JWKS the way kube-apiserver gets it: the discovery document (whose `issuer` must
    be the issuer URL), then its `jwks_uri`, both over HTTPS trusting certificateAuthority (or the
    system's CAs when there is none)."""
    url = discovery_url(issuer)
    try:
        doc = json.loads(_https_get(url, issuer.certificate_authority, timeout))
    except ValueError as exc:
        raise JwksError(f"{url}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise JwksError(f"{url}: the discovery document is not a JSON object")
    if doc.get("issuer") != issuer.url:
        raise JwksError(f"oidc: issuer did not match the issuer returned by provider, expected "
                        f"{json.dumps(issuer.url)} got {json.dumps(doc.get('issuer'))}")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
        raise JwksError(f"{url}: no https jwks_uri in the discovery document")
    return load_jwks(_https_get(jwks_uri, issuer.certificate_authority, timeout), jwks_uri)


def load_jwks(data: bytes, source: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise JwksError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f'{source}: not a JWK set (a JSON object with "keys")')
    return doc
