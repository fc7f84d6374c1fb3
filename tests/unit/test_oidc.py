"""Structured authentication configuration (issue 14): the inventory's `authentication:` section,
the file it renders, and the JWT authenticators, offline.

Expected answers come from the upstream documentation ("Authenticating", section "Using
Authentication Configuration", kubernetes.io, 1.30-1.34), not from our output: its example
configuration and its three worked tokens (a user mapped by CEL; a token whose lifetime breaks a
claim validation rule; a username that a user validation rule refuses), and the field rules of
the API reference (apiserver.config.k8s.io/v1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from k8sboot import authn
from k8sboot.authn import oidc
from k8sboot.errors import InventoryError
from k8sboot.inventory import parse_inventory

REPO = Path(__file__).resolve().parents[2]

# --- the documentation's example ------------------------------------------------------------------

# the docs' worked token (claims verbatim) and the moment it is valid at
DOC_CLAIMS = {
    "aud": "kubernetes",
    "exp": 1703232949,
    "iat": 1701107233,
    "iss": "https://example.com",
    "jti": "7c337942807e73caa2c30c868ac0ce910bce02ddcbfebe8c23b8b5f27ad62873",
    "nbf": 1701107233,
    "roles": "user,admin",
    "sub": "auth",
    "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db4a",
    "username": "foo",
}
DOC_NOW = datetime.fromtimestamp(1701107233 + 60, tz=timezone.utc)

# the docs' configuration for that token (claimMappings with CEL, as in "Examples" 1)
DOC_MAPPINGS = """\
      claimMappings:
        username:
          expression: 'claims.username + ":external-user"'
        groups:
          expression: 'claims.roles.split(",")'
        uid:
          expression: 'claims.sub'
        extra:
        - key: 'example.com/tenant'
          valueExpression: 'claims.tenant'
"""


def inventory_text(authentication: str, *, apiserver: str = "", cluster_extra: str = "") -> str:
    return (textwrap.dedent("""\
        cluster:
          name: demo
          api_endpoint: https://10.0.0.5:6443
          service_cidr: 10.32.0.0/24
        """) + cluster_extra + "controllers:\n  - {name: c0, address: 10.0.0.10}\n"
            + (f"apiserver:\n{apiserver}" if apiserver else "") + "authentication:\n" + authentication)


def jwt_section(rules: str = "", mappings: str = DOC_MAPPINGS, issuer: str = "https://example.com",
                audiences: str = "[kubernetes]", user_rules: str = "", issuer_extra: str = "") -> str:
    return (f"  jwt:\n  - issuer:\n      url: {issuer}\n      audiences: {audiences}\n{issuer_extra}"
            + rules + mappings + user_rules).replace("\n      claimMappings", "\n    claimMappings") \
        .replace("\n        username", "\n      username").replace("\n        groups", "\n      groups") \
        .replace("\n        uid", "\n      uid").replace("\n        extra", "\n      extra")


def load(text: str, path: str = "inv.yaml"):
    return parse_inventory(text, Path(path))


class Issuer:
    """An RSA signing key and its JWKS, the way an identity provider publishes them."""

    def __init__(self, url: str = "https://example.com", kid: str = "k1", key=None):
        self.url, self.kid = url, kid
        self.key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alg = pyjwt.algorithms.ECAlgorithm if isinstance(self.key, ec.EllipticCurvePrivateKey) \
            else pyjwt.algorithms.RSAAlgorithm
        jwk = json.loads(alg.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, use="sig")
        self.jwks = {"keys": [jwk]}

    def token(self, claims: dict, *, alg: str = "RS256", kid: str | None = "default") -> str:
        headers = {"kid": self.kid if kid == "default" else kid} if kid is not None else {}
        return pyjwt.encode(claims, self.key, algorithm=alg, headers=headers)


ISSUER = Issuer()


def authenticate(inv, token: str, now: datetime = DOC_NOW, issuer: Issuer = ISSUER):
    compiled = oidc.compile_config(inv.authentication)
    return oidc.authenticate(token, compiled, now, lambda a: issuer.jwks)


# --- the documentation's worked examples ------------------------------------------------------------


def test_the_docs_example_token_maps_to_the_docs_user():
    inv = load(inventory_text(jwt_section()))
    result = authenticate(inv, ISSUER.token(DOC_CLAIMS))
    assert result.authenticated, result.reason
    # "username: foo:external-user, uid: auth, groups: [user, admin], extra: example.com/tenant"
    # (+ system:authenticated, which the API server adds to every authenticated user)
    assert result.user.username == "foo:external-user"
    assert result.user.uid == "auth"
    assert result.user.groups == ("user", "admin", "system:authenticated")
    assert dict(result.user.extra) == {"example.com/tenant": ("72f988bf-86f1-41af-91ab-2d7cd011db4a",)}


def test_the_docs_lifetime_rule_refuses_the_docs_token():
    rules = ("    claimValidationRules:\n    - expression: 'claims.exp - claims.nbf <= 86400'\n"
             "      message: total token lifetime must not exceed 24 hours\n")
    inv = load(inventory_text(jwt_section(rules=rules)))
    result = authenticate(inv, ISSUER.token(DOC_CLAIMS))
    assert not result.authenticated
    assert "claims.exp - claims.nbf <= 86400" in result.reason
    assert "total token lifetime must not exceed 24 hours" in result.reason


def test_the_docs_user_rule_refuses_a_system_username():
    mappings = "    claimMappings:\n      username:\n        expression: 'claims.username'\n"
    user_rules = ("    userValidationRules:\n    - expression: \"!user.username.startsWith('system:')\"\n"
                  "      message: 'username cannot used reserved system: prefix'\n")
    inv = load(inventory_text(jwt_section(mappings=mappings, user_rules=user_rules)))
    assert authenticate(inv, ISSUER.token(DOC_CLAIMS)).user.username == "foo"
    refused = authenticate(inv, ISSUER.token({**DOC_CLAIMS, "username": "system:foo"}))
    assert not refused.authenticated
    assert "username cannot used reserved system: prefix" in refused.reason


# --- a table of configs x tokens ----------------------------------------------------------------------

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
T = int(NOW.timestamp())
BASE = {"iss": "https://example.com", "aud": "kubernetes", "sub": "jane", "iat": T - 60, "exp": T + 600,
        "email": "jane@example.com", "email_verified": True, "groups": ["dev", "ops"], "hd": "example.com"}

PREFIXED = ("    claimMappings:\n      username: {claim: sub, prefix: 'oidc:'}\n"
            "      groups: {claim: groups, prefix: 'oidc:'}\n      uid: {claim: sub}\n")
EMAIL = "    claimMappings:\n      username: {claim: email, prefix: ''}\n"
HD_RULE = "    claimValidationRules:\n    - {claim: hd, requiredValue: example.com}\n"

# (case, mappings, rules, claims changes, expected username or "401: fragment")
CASES = [
    ("prefix on username and groups", PREFIXED, "", {}, ("oidc:jane", ("oidc:dev", "oidc:ops", "system:authenticated"), "jane")),
    ("groups claim as a single string", PREFIXED, "", {"groups": "dev"}, ("oidc:jane", ("oidc:dev", "system:authenticated"), "jane")),
    ("no groups claim: only system:authenticated", PREFIXED, "", {"groups": None}, ("oidc:jane", ("system:authenticated",), "jane")),
    ("email claim, verified", EMAIL, "", {}, ("jane@example.com", ("system:authenticated",), "")),
    ("email claim without email_verified", EMAIL, "", {"email_verified": None}, ("jane@example.com", ("system:authenticated",), "")),
    ("email claim, not verified", EMAIL, "", {"email_verified": False}, "401: email not verified"),
    ("wrong audience", PREFIXED, "", {"aud": "other"}, '401: expected audience in ["kubernetes"] got ["other"]'),
    ("audience list with ours", PREFIXED, "", {"aud": ["other", "kubernetes"]}, ("oidc:jane", ("oidc:dev", "oidc:ops", "system:authenticated"), "jane")),
    ("expired", PREFIXED, "", {"exp": T - 1}, "401: token is expired"),
    ("not yet valid beyond the 5 min skew", PREFIXED, "", {"nbf": T + 301}, "401: before the nbf"),
    ("nbf within the 5 min skew", PREFIXED, "", {"nbf": T + 299}, ("oidc:jane", ("oidc:dev", "oidc:ops", "system:authenticated"), "jane")),
    ("required claim value", PREFIXED, HD_RULE, {"hd": "evil.com"}, "401: required claim hd value does not match"),
    ("required claim missing", PREFIXED, HD_RULE, {"hd": None}, "401: required claim hd not present"),
    ("username claim missing", PREFIXED, "", {"sub": None}, "401: claim not present: sub"),
]


@pytest.mark.parametrize("case,mappings,rules,changes,want", CASES, ids=[c[0] for c in CASES])
def test_table(case, mappings, rules, changes, want):
    inv = load(inventory_text(jwt_section(rules=rules, mappings=mappings)))
    claims = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    result = authenticate(inv, ISSUER.token(claims), NOW)
    if isinstance(want, str):
        assert not result.authenticated
        assert want.removeprefix("401: ") in result.reason
    else:
        assert result.authenticated, result.reason
        assert (result.user.username, result.user.groups, result.user.uid) == want


def test_signature_by_another_key_or_kid_is_refused():
    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    other = Issuer(kid="k1")                         # same kid, another key
    bad = authenticate(inv, other.token(BASE), NOW)
    assert not bad.authenticated and "failed to verify signature" in bad.reason
    unknown_kid = authenticate(inv, ISSUER.token(BASE, kid="nope"), NOW)
    assert not unknown_kid.authenticated and 'no key with kid "nope"' in unknown_kid.reason
    no_kid = authenticate(inv, ISSUER.token(BASE, kid=None), NOW)
    assert no_kid.authenticated, no_kid.reason      # no kid: every key of the set is tried


def test_unsigned_and_hmac_tokens_are_refused():
    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    hs = pyjwt.encode(BASE, "secret-of-32-bytes-at-least-0123456789", algorithm="HS256", headers={"kid": "k1"})
    result = authenticate(inv, hs, NOW)
    assert not result.authenticated and "HS256" in result.reason


def test_a_token_of_another_issuer_is_left_to_the_other_authenticators():
    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    result = authenticate(inv, ISSUER.token({**BASE, "iss": "https://elsewhere.example"}), NOW)
    assert not result.authenticated and not any(f.is_error for f in result.failures)


def test_every_valid_signing_algorithm_is_verified_with_an_authentication_config():
    """kube-apiserver allows oidc.AllValidSigningAlgorithms() with --authentication-config: an
    ES256 (P-256) issuer key verifies; HS256 never does (see above)."""
    issuer = Issuer(key=ec.generate_private_key(ec.SECP256R1()))
    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    assert authenticate(inv, issuer.token(BASE, alg="ES256"), NOW, issuer).user.username == "oidc:jane"
    assert authenticate(inv, ISSUER.token(BASE, alg="PS256"), NOW).user.username == "oidc:jane"


def test_the_union_accepts_oidc_tokens_after_service_accounts_and_keeps_the_reason():
    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = authn.AuthenticatorConfig(service_account_keys=(key.public_key(),),
                                       service_account_issuers=("https://10.0.0.5:6443",),
                                       anonymous_auth=False, jwt=oidc.compile_config(inv.authentication),
                                       jwt_keys=lambda a: ISSUER.jwks)
    ok = authn.authenticate_request(None, f"Bearer {ISSUER.token(BASE)}", config, NOW)
    assert ok.user.username == "oidc:jane"
    bad = authn.authenticate_request(None, f"Bearer {ISSUER.token({**BASE, 'aud': 'x'})}", config, NOW)
    assert not bad.authenticated and "expected audience" in bad.reason
    assert "--service-account-issuer" not in bad.reason     # not the SA authenticator's business


# --- the inventory's errors: one line, file:line, nothing deployed ---------------------------------------

BAD = [
    ("CEL does not compile", jwt_section(mappings="    claimMappings:\n      username: {expression: 'claims.sub +'}\n"),
     13, "claimMappings.username.expression", "Syntax error"),
    ("CEL undeclared reference", jwt_section(mappings="    claimMappings:\n      username: {expression: 'claim.sub'}\n"),
     13, "claimMappings.username.expression", "undeclared reference to 'claim.sub'"),
    ("CEL wrong type for username", jwt_section(mappings="    claimMappings:\n      username: {expression: 'claims.sub == \"x\"'}\n"),
     13, "claimMappings.username.expression", "must evaluate to string"),
    ("http issuer", jwt_section(issuer="http://example.com", mappings=PREFIXED), 10, "issuer.url", "URL scheme must be https"),
    ("issuer with a query", jwt_section(issuer="https://example.com/?x=1", mappings=PREFIXED), 10, "issuer.url", "query"),
    ("two audiences without MatchAny", jwt_section(audiences="[a, b]", mappings=PREFIXED), None, "audienceMatchPolicy", "MatchAny"),
    ("username claim without prefix", jwt_section(mappings="    claimMappings:\n      username: {claim: sub}\n"),
     13, "claimMappings.username", "prefix is required"),
    ("prefix beside an expression", jwt_section(mappings="    claimMappings:\n      username: {expression: claims.sub, prefix: x}\n"),
     13, "claimMappings.username", "prefix can only be set with claim"),
    ("reserved extra key", jwt_section(mappings=PREFIXED + "      extra:\n      - {key: kubernetes.io/x, valueExpression: claims.sub}\n"),
     None, "extra[0].key", "reserved"),
    ("extra key not domain-prefixed", jwt_section(mappings=PREFIXED + "      extra:\n      - {key: tenant, valueExpression: claims.sub}\n"),
     None, "extra[0].key", "domain-prefixed"),
    ("email expression without email_verified",
     jwt_section(mappings="    claimMappings:\n      username: {expression: claims.email}\n"),
     None, "username.expression", "claims.email_verified must be used"),
    ("issuer equals the SA issuer", jwt_section(issuer="https://10.0.0.5:6443", mappings=PREFIXED), 10, "issuer.url",
     "ServiceAccount token issuer"),
    ("unknown key", jwt_section(mappings=PREFIXED.replace("uid:", "uuid:")), None, "claimMappings.uuid", "unknown key"),
]


@pytest.mark.parametrize("case,section,line,key,fragment", BAD, ids=[b[0] for b in BAD])
def test_inventory_errors_name_file_line_and_key(case, section, line, key, fragment):
    with pytest.raises(InventoryError) as err:
        load(inventory_text(section))
    message = str(err.value)
    assert message.startswith("inv.yaml:"), message
    if line is not None:
        assert message.startswith(f"inv.yaml:{line}:"), message
    assert key in message
    if fragment:
        assert fragment in message


def test_rule_that_is_not_a_bool_names_its_type():
    section = jwt_section(rules="    claimValidationRules:\n    - expression: \"'x' + claims.sub\"\n", mappings=PREFIXED)
    with pytest.raises(InventoryError, match="must evaluate to bool, but its type is string"):
        load(inventory_text(section))


@pytest.mark.parametrize("apiserver,fragment", [
    ("  version: '1.28'\n", "no structured authentication configuration"),
    ("  version: '1.29'\n", "alpha in 1.29"),
    ("  extra_flags:\n    oidc-issuer-url: https://example.com\n", "cannot be combined"),
    ("  extra_flags:\n    authentication-config: /etc/x.yaml\n", "cannot be combined"),
])
def test_versions_and_flags_the_api_server_would_refuse(apiserver, fragment):
    with pytest.raises(InventoryError, match=fragment):
        load(inventory_text(jwt_section(mappings=PREFIXED), apiserver=apiserver))


def test_api_version_follows_apiserver_version():
    for version, api_version in (("1.29", "v1alpha1"), ("1.30", "v1beta1"), ("1.33", "v1beta1"), ("1.34", "v1"),
                                 ("v1.35.1", "v1")):
        gates = "  extra_flags:\n    feature-gates: StructuredAuthenticationConfiguration=true\n" \
            if version == "1.29" else ""
        inv = load(inventory_text(jwt_section(mappings=PREFIXED), apiserver=f"  version: '{version}'\n{gates}"))
        assert inv.authentication.api_version == f"apiserver.config.k8s.io/{api_version}"


def test_anonymous_block_needs_132_and_excludes_anonymous_auth():
    anon = "  anonymous:\n    enabled: true\n    conditions:\n    - path: /livez\n"
    inv = load(inventory_text(anon))
    assert inv.authentication.anonymous.paths == ("/livez",) and inv.apiserver.anonymous_auth is True
    with pytest.raises(InventoryError, match="no anonymous block"):
        load(inventory_text(anon, apiserver="  version: '1.31'\n"))
    with pytest.raises(InventoryError, match=r"inv.yaml:\d+: apiserver.anonymous_auth: cannot be set together"):
        load(inventory_text(anon, apiserver="  anonymous_auth: false\n"))


def test_certificate_authority_file_is_inlined_and_checked(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp-ca")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime(2026, 1, 1)).not_valid_after(datetime(2036, 1, 1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (tmp_path / "idp-ca.pem").write_text(pem)
    extra = "      certificateAuthorityFile: idp-ca.pem\n"
    inv = parse_inventory(inventory_text(jwt_section(mappings=PREFIXED, issuer_extra=extra)), tmp_path / "inv.yaml")
    assert inv.authentication.jwt[0].issuer.certificate_authority == pem
    doc = json.loads(oidc.render(inv.authentication))
    assert doc["jwt"][0]["issuer"]["certificateAuthority"] == pem and "certificateAuthorityFile" not in doc["jwt"][0]["issuer"]
    (tmp_path / "idp-ca.pem").write_text("not a cert")
    with pytest.raises(InventoryError, match=r"inv.yaml:\d+: authentication.jwt\[0\].issuer.certificateAuthorityFile: holds no PEM"):
        parse_inventory(inventory_text(jwt_section(mappings=PREFIXED, issuer_extra=extra)), tmp_path / "inv.yaml")


# --- the file and the unit -------------------------------------------------------------------------------


def test_the_rendered_file_reads_back_to_the_same_config_and_upstream_field_names():
    inv = load(inventory_text(jwt_section(rules=HD_RULE)))
    data = oidc.render(inv.authentication)
    doc = json.loads(data)
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1" and doc["kind"] == "AuthenticationConfiguration"
    a = doc["jwt"][0]
    assert a["issuer"] == {"url": "https://example.com", "audiences": ["kubernetes"]}
    assert a["claimValidationRules"] == [{"claim": "hd", "requiredValue": "example.com"}]
    assert a["claimMappings"]["username"] == {"expression": 'claims.username + ":external-user"'}
    assert a["claimMappings"]["extra"] == [{"key": "example.com/tenant", "valueExpression": "claims.tenant"}]
    assert oidc.load_document(data, "authentication-config.yaml") == inv.authentication
    import yaml

    assert yaml.safe_load(data) == doc          # JSON is YAML: what kube-apiserver's decoder reads


def test_the_unit_gets_the_flag_and_the_anonymous_block_replaces_anonymous_auth():
    from k8sboot import flags

    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    f = dict(flags.build_apiserver_flags(inv, inv.controllers[0]))
    assert f["authentication-config"] == "/var/lib/kubernetes/authentication-config.yaml"
    assert f["anonymous-auth"] == "false"
    anon = load(inventory_text("  anonymous:\n    enabled: false\n"))
    f = dict(flags.build_apiserver_flags(anon, anon.controllers[0]))
    assert "anonymous-auth" not in f and "authentication-config" in f


def test_a_change_of_the_file_alone_restarts_nothing():
    """The authentication config controller re-reads the file (1.30+): a new issuer or rule is
    uploaded and the running kube-apiserver keeps serving; a new unit flag still restarts."""
    import hashlib

    from k8sboot import deploy, layout
    from k8sboot import plan as P
    from k8sboot.plan import FileFact, HostFacts, ServiceFact

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from deploy_helpers import fake_pki_files  # noqa: E402

    inv = load(inventory_text(jwt_section(mappings=PREFIXED)))
    files = deploy.controller_files(inv)
    assert layout.AUTHENTICATION_CONFIG in files and layout.AUTHENTICATION_CONFIG.mode == 0o600
    pki = {**fake_pki_files(), layout.AUTHENTICATION_CONFIG_FILE: deploy.rendered_file(inv, "authentication-config.yaml")}
    from k8sboot import render

    unit = render.render_unit(inv, inv.controllers[0], render.templates_dir_for(inv, None)).text
    desired = P.build_desired_files(pki, unit, None, files)
    running = ServiceFact(load_state="loaded", active_state="active", sub_state="running",
                          unit_file_state="enabled", main_pid=42, active_enter_usec=1, listening=True)

    def facts(**overrides):
        have = {f.path: FileFact(f.path, True, f.sha256, f.mode, f.owner, f.group) for f in desired}
        have[P.PKI_DIR.path] = FileFact(P.PKI_DIR.path, True, None, 0o700, "root", "root", kind="directory")
        have[layout.BINARY_PATH] = FileFact(layout.BINARY_PATH, True, None, 0o755, "root", "root")
        have.update(overrides)
        return HostFacts(files=have, service=running, unit_text=unit)

    path = layout.AUTHENTICATION_CONFIG.path
    old = FileFact(path, True, hashlib.sha256(b"{}").hexdigest(), 0o600, "root", "root")
    plan = P.build_host_plan(desired, facts(**{path: old}))
    assert [c.file.path for c in plan.uploads] == [path]
    assert not plan.restart and plan.picked_up
    assert "systemctl restart" not in P.build_install_script(plan)
    key = "/var/lib/kubernetes/service-account.pem"
    both = P.build_host_plan(desired, facts(**{path: old, key: FileFact(key, True, "0" * 64, 0o644, "root", "root")}))
    assert both.restart


# --- the CLI, as a user runs it --------------------------------------------------------------------------


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "k8sboot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("oidc-cli")
    now = int(datetime.now(timezone.utc).timestamp())
    (d / "inv.yaml").write_text(inventory_text(jwt_section(rules=HD_RULE, mappings=PREFIXED)).replace(
        "cluster:\n", "pki:\n  dir: pki\ncluster:\n", 1))
    assert run_cli("gen-certs", "-i", "inv.yaml", cwd=d).returncode == 0
    (d / "jwks.json").write_text(json.dumps(ISSUER.jwks))
    claims = {**BASE, "iat": now - 10, "exp": now + 600}
    (d / "good.jwt").write_text(ISSUER.token(claims))
    (d / "evil.jwt").write_text(ISSUER.token({**claims, "hd": "evil.com"}))
    return d


def test_whoami_token_prints_the_kubectl_table(cli_dir):
    out = run_cli("whoami", "-i", "inv.yaml", "--token", (cli_dir / "good.jwt").read_text(), "--jwks", "jwks.json",
                  cwd=cli_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ATTRIBUTE", "VALUE"]
    assert lines[1].split() == ["Username", "oidc:jane"]
    assert lines[2].split() == ["UID", "jane"]
    assert lines[3].split(None, 1) == ["Groups", "[oidc:dev oidc:ops system:authenticated]"]


def test_whoami_token_401_names_the_rule_and_exits_11(cli_dir):
    out = run_cli("whoami", "-i", "inv.yaml", "--token", (cli_dir / "evil.jwt").read_text(), "--jwks", "jwks.json",
                  cwd=cli_dir)
    assert out.returncode == 11
    assert "401 Unauthorized: oidc: required claim hd value does not match" in out.stderr
    assert (cli_dir / "evil.jwt").read_text() not in out.stderr + out.stdout       # never echo a token


def test_whoami_without_reachable_issuer_says_so(cli_dir):
    out = run_cli("whoami", "-i", "inv.yaml", "--token", (cli_dir / "good.jwt").read_text(), cwd=cli_dir)
    assert out.returncode == 11
    assert "cannot get the keys of issuer https://example.com" in out.stderr


def test_inventory_check_refuses_a_bad_expression_in_one_line(tmp_path):
    (tmp_path / "inv.yaml").write_text(inventory_text(jwt_section(
        mappings="    claimMappings:\n      username: {expression: 'claim.sub'}\n")))
    out = run_cli("inventory", "check", "-i", "inv.yaml", cwd=tmp_path)
    assert out.returncode == 3
    assert "Traceback" not in out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("k8sboot: error: inv.yaml:13: authentication.jwt[0].claimMappings.username.expression:")
    assert "undeclared reference to 'claim.sub'" in first


# --- verify's proof: the hash the running server reports ---------------------------------------------

# upstream's exposition (k8s.io/apiserver .../authenticationconfig/metrics, metrics_test.go format)
METRICS_TEXT = """\
# HELP apiserver_authentication_config_controller_automatic_reloads_total [BETA] Total number of automatic reloads of authentication configuration split by status and apiserver identity.
# TYPE apiserver_authentication_config_controller_automatic_reloads_total counter
apiserver_authentication_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:14f9d63e669337ac6bfda2e2162915ee6a6067743eddd4e5c374b572f951ff37",status="success"} 1
# HELP apiserver_authentication_config_controller_last_config_info [ALPHA] Information about the last applied authentication configuration with hash as label, split by apiserver identity.
# TYPE apiserver_authentication_config_controller_last_config_info gauge
apiserver_authentication_config_controller_last_config_info{apiserver_id_hash="sha256:14f9d63e669337ac6bfda2e2162915ee6a6067743eddd4e5c374b572f951ff37",hash="HASH"} 1
"""


def test_verify_compares_the_applied_hash_with_the_rendered_file():
    import hashlib

    from k8sboot import pickup
    from k8sboot.probe import ProbeAnswer

    local = b'{"apiVersion": "apiserver.config.k8s.io/v1"}\n'
    want = "sha256:" + hashlib.sha256(local).hexdigest()
    assert pickup.config_hash(local) == want
    ok = pickup.check_authentication_config("c0", ProbeAnswer(200, METRICS_TEXT.replace("HASH", want)), local,
                                            True, 0.0, 1000.0)
    assert ok.status == "OK"
    other = METRICS_TEXT.replace("HASH", "sha256:" + "0" * 64)
    assert pickup.check_authentication_config("c0", ProbeAnswer(200, other), local, True, 990.0, 1000.0).status == "WARN"
    late = pickup.check_authentication_config("c0", ProbeAnswer(200, other), local, True, 100.0, 1000.0)
    assert late.status == "DRIFT" and "did not load" in late.detail
    assert pickup.check_authentication_config("c0", ProbeAnswer(200, other), local, False, 100.0, 1000.0).status == "DRIFT"
    older = pickup.check_authentication_config("c0", ProbeAnswer(200, "# nothing\n"), local, True, 0.0, 1000.0)
    assert older.status == "WARN" and "before 1.34" in older.detail
    assert pickup.check_authentication_config("c0", ProbeAnswer(403, ""), local, True, 0.0, 1000.0).status == "WARN"
    # a label elsewhere that merely contains the hash is not the applied config
    assert pickup.applied_config_hash(f'some_metric{{note="{want}"}} 1\n') is None


def test_an_inventory_without_authentication_does_not_load_the_authn_package():
    """apiserver.version is read by the inventory itself: every command reading an inventory that
    names its release would otherwise import k8sboot.authn and its X.509 stack (~30 ms)."""
    text = inventory_text("").replace("authentication:\n", "apiserver:\n  version: 'v1.33.2'\n")
    code = ("import sys; from pathlib import Path; from k8sboot.inventory import parse_inventory; "
            f"inv = parse_inventory({text!r}, Path('inv.yaml')); "
            "print(inv.apiserver.version, 'k8sboot.authn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.split() == ["1.33", "False"], out.stderr
