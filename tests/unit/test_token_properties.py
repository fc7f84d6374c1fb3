"""Property tests of the token decoder: whatever the text, authn and `token decode` give a result
or our own error (MalformedTokenError, TokenError, a 401), never another exception.

Strategies reach every stage: arbitrary text, three segments of arbitrary bytes, JSON of any
shape in header and payload, and tokens *correctly signed* by the configured key whose claims
and header fields have hostile types and values, so that the audience, time and claims checks
run on them too. K8SBOOT_FUZZ_EXAMPLES=5000 runs the library properties longer (default 300).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import authn_factory as f
from k8sboot import authn, console, tokens
from k8sboot.cli import app
from k8sboot.errors import ExitCode, TokenError

ROOT = Path(__file__).resolve().parents[2]
NOW = f.NOW
SETTINGS = settings(max_examples=int(os.environ.get("K8SBOOT_FUZZ_EXAMPLES", 300)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
CLI_SETTINGS = settings(max_examples=120, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.function_scoped_fixture])

RSA_KEY = f.private_key("rsa", "sa")
EC_KEY = f.private_key("ec", "sa")
CONFIG = authn.AuthenticatorConfig(
    service_account_keys=(RSA_KEY.public_key(), EC_KEY.public_key()),
    service_account_issuers=(f.ISSUER,), api_audiences=(f.ISSUER,), anonymous_auth=False)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- strategies ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from([f.ISSUER, "system:serviceaccount:a:b", "none", "RS256", "ES256", "HS256", ""]))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20)
CLAIM_NAMES = ["iss", "aud", "exp", "nbf", "iat", "sub", "jti", "kubernetes.io"]
hostile_claims = st.dictionaries(
    st.one_of(st.sampled_from(CLAIM_NAMES), st.text(max_size=8)), json_values, max_size=8)
k8s_claim = st.fixed_dictionaries({}, optional={
    "namespace": json_values, "serviceaccount": st.one_of(json_values, st.fixed_dictionaries(
        {}, optional={"name": json_values, "uid": json_values})),
    "pod": json_values, "node": st.one_of(json_values, st.fixed_dictionaries(
        {}, optional={"name": json_values, "uid": json_values}))})
HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "jku", "x5c", "cty", "zip"]
hostile_headers = st.dictionaries(st.sampled_from(HEADER_NAMES), json_values, max_size=5)


@st.composite
def segments_of_anything(draw) -> str:
    parts = draw(st.lists(st.one_of(st.binary(max_size=60).map(b64), st.text(max_size=20)),
                          min_size=1, max_size=5))
    return ".".join(parts)


@st.composite
def json_segments(draw) -> str:
    header = draw(st.one_of(json_values, hostile_headers))
    payload = draw(st.one_of(json_values, hostile_claims))
    signature = draw(st.binary(max_size=80))
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()),
                     b64(signature)])


@st.composite
def signed_hostile_tokens(draw) -> str:
    """A valid signature by a configured key over hostile claims (and header extras)."""
    claims = f.sa_claims(now=NOW)
    for name in draw(st.lists(st.sampled_from(CLAIM_NAMES), max_size=3, unique=True)):
        claims.pop(name, None)
    claims.update(draw(hostile_claims))
    if draw(st.booleans()):
        claims["kubernetes.io"] = draw(k8s_claim)
    alg = draw(st.sampled_from(["RS256", "ES256"]))
    headers = {k: v for k, v in draw(hostile_headers).items() if k not in ("alg", "b64", "crit")}
    from jwt.exceptions import PyJWTError

    try:
        return f.sign_token(claims, RSA_KEY if alg == "RS256" else EC_KEY, alg=alg, headers=headers)
    except (TypeError, ValueError, PyJWTError):   # PyJWT will not *encode* some (non-str kid)
        assume(False)
        raise


def mutate(token: str, data) -> str:
    """Flip, drop or insert one character, or swap two segments."""
    if not token:
        return token
    i = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    op = data.draw(st.sampled_from(["flip", "drop", "insert", "swap"]))
    if op == "flip":
        return token[:i] + data.draw(st.characters()) + token[i + 1:]
    if op == "drop":
        return token[:i] + token[i + 1:]
    if op == "insert":
        return token[:i] + data.draw(st.sampled_from([".", "=", "\n", " ", "é", "\0"])) + token[i:]
    parts = token.split(".")
    parts.reverse()
    return ".".join(parts)


any_token = st.one_of(st.text(max_size=200), segments_of_anything(), json_segments(),
                      signed_hostile_tokens())


# --- the library -----------------------------------------------------------------------------


def check_library(token: str) -> None:
    try:
        parts = authn.parse_jwt(token)
    except authn.MalformedTokenError:
        parts = None
    else:
        assert isinstance(parts.header, dict) and isinstance(parts.claims, dict)
        assert isinstance(parts.header["alg"], str)
    result = authn.authenticate_token(token, CONFIG, NOW)
    assert isinstance(result, authn.AuthResult)
    assert result.authenticated or (result.reason and result.reason_code is not None)
    result.summary()
    result.status(include_reason=True)
    inspection = authn.inspect_token(token, CONFIG, NOW)
    assert (inspection.malformed is None) == (parts is not None)
    assert inspection.result == result
    request = authn.authenticate_request(None, f"Bearer {token}", CONFIG, NOW)
    if token and token == "".join(token.split()):          # no blank: the header carries it all
        assert request.authenticated == result.authenticated
    # `token decode` forgives blanks around a pasted token; its verdict is the one for that text
    pasted = token.strip()
    try:
        pasted_parts = authn.parse_jwt(pasted)
    except authn.MalformedTokenError:
        pasted_parts = None
    pasted_result = authn.authenticate_token(pasted, CONFIG, NOW)
    try:
        report = tokens.decode_token(token, CONFIG, NOW)
    except TokenError as exc:
        assert exc.code == ExitCode.TOKEN and exc.message.startswith("decoding the token: ")
        assert pasted_parts is None, "decode refuses only what parse_jwt refuses"
        return
    assert report.render_json()
    verdict = tokens.render_verdict(report, "pki/service-account.pem", NOW)
    assert ("=> the API server would answer 401" in verdict) != pasted_result.authenticated, verdict


@SETTINGS
@given(any_token)
@example("")
@example("..")
@example("." * 10)
@example("eyJhbGciOiJSUzI1NiJ9." + b64(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}") + ".c2ln")
@example("eyJhbGciOiJSUzI1NiJ9." + b64(b'{"exp": 1e999, "nbf": -1e999}') + ".c2ln")
@example("eyJhbGciOiJSUzI1NiJ9." + b64(b'{"exp": NaN}') + ".c2ln")
@example("eyJhbGciOiJSUzI1NiJ9." + b64(b'{"iat": ' + b"9" * 5000 + b"}") + ".c2ln")
@example("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
def test_any_token_gives_a_result_or_our_error(token):
    check_library(token)


@SETTINGS
@given(st.one_of(json_segments(), signed_hostile_tokens()), st.data())
def test_any_mutation_of_a_token_gives_a_result_or_our_error(token, data):
    check_library(mutate(token, data))


@settings(max_examples=60, deadline=None)
@given(hostile_claims, st.sampled_from(["RS256", "ES256"]))
def test_a_validly_signed_token_is_accepted_only_with_the_claims_the_api_server_needs(extra, alg):
    claims = {**f.sa_claims(now=NOW), **{k: v for k, v in extra.items() if k not in CLAIM_NAMES}}
    token = f.sign_token(claims, RSA_KEY if alg == "RS256" else EC_KEY, alg=alg)
    result = authn.authenticate_token(token, CONFIG, NOW)
    assert result.authenticated, result.reason
    assert result.user.username == "system:serviceaccount:authn-demo:bot"


# --- the commands ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_cwd(tmp_path_factory):
    """inventory/cluster.yaml and a service-account pair whose key signs `signed_hostile_tokens`."""
    root = tmp_path_factory.mktemp("token-cli")
    (root / "inventory").mkdir()
    shutil.copy(ROOT / "inventory" / "cluster.yaml", root / "inventory" / "cluster.yaml")
    (root / "pki").mkdir(mode=0o700)
    (root / "pki" / "service-account.pem").write_bytes(f.public_pem(RSA_KEY))
    (root / "pki" / "service-account-key.pem").write_bytes(f.key_pem(RSA_KEY))
    old = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(old)


def run_cli(args: list[str], stdin: str | None = None):
    console._stdout_console = console._stderr_console = None
    result = CliRunner().invoke(app, args, input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


cli_tokens = st.one_of(st.text(max_size=120).filter(lambda t: "\0" not in t),
                       json_segments(), signed_hostile_tokens())


@CLI_SETTINGS
@given(cli_tokens)
def test_token_decode_of_anything_exits_0_or_12_without_a_traceback(cli_cwd, token):
    result = run_cli(["token", "decode", "-i", "inventory/cluster.yaml", "-"], stdin=token)
    if not token.strip():
        assert result.exit_code == ExitCode.USAGE
        return
    assert result.exit_code in (0, ExitCode.TOKEN), result.output
    if result.exit_code == ExitCode.TOKEN:
        assert result.stderr.startswith("k8sboot: error: decoding the token: ")
        assert result.stdout == ""
    else:
        assert "=>" in result.stderr


@CLI_SETTINGS
@given(cli_tokens)
def test_whoami_with_any_token_exits_0_or_11_without_a_traceback(cli_cwd, token):
    result = run_cli(["whoami", "--token", "-", "-i", "inventory/cluster.yaml"], stdin=token)
    if not token.strip():
        assert result.exit_code == ExitCode.USAGE
        return
    assert result.exit_code in (0, ExitCode.UNAUTHORIZED), result.output
    if result.exit_code == ExitCode.UNAUTHORIZED:
        assert result.stderr.startswith("401 Unauthorized: ") and result.stdout == ""
    else:
        assert result.stdout.startswith("ATTRIBUTE")


def test_the_cli_fixture_accepts_a_good_token_so_the_properties_reach_every_check(cli_cwd):
    token = f.sign_token(f.sa_claims(now=datetime.now(timezone.utc)), RSA_KEY)
    result = run_cli(["whoami", "--token", token, "-i", "inventory/cluster.yaml"])
    assert result.exit_code == 0 and "system:serviceaccount:authn-demo:bot" in result.stdout
