"""ServiceAccount tokens judged as upstream judges them, with expected values from upstream's source:
pkg/serviceaccount/jwt.go hands every --service-account-key-file key to go-jose, which verifies
RS/PS 256/384/512 with an RSA key and ES256/ES384/ES512 with a P-256/P-384/P-521 key (the signature
must be 2 x the curve's byte size); the bound validator (claims.go) never reads `sub`; the legacy
validator (legacy.go) accepts issuer `kubernetes/serviceaccount` with its four private claims, checks
no time claims, requires `sub` to name the same account, and with --service-account-lookup first
gets the Secret ("Token has been invalidated" when it is gone)."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/authn_factory.py

import authn_factory as f  # noqa: E402
from authn_factory import ISSUER, NOW  # noqa: E402

from k8sboot import authn  # noqa: E402
from k8sboot.authn import AuthenticatorConfig, Reason  # noqa: E402

P384 = ec.generate_private_key(ec.SECP384R1())
P521 = ec.generate_private_key(ec.SECP521R1())


def config_for(*keys, **kw):
    return AuthenticatorConfig(service_account_keys=tuple(k.public_key() for k in keys),
                               service_account_issuers=(ISSUER,), **kw)


@pytest.mark.parametrize("key, alg", [(P384, "ES384"), (P521, "ES512")])
def test_es384_and_es512_tokens_with_p384_and_p521_keys_are_accepted(key, alg):
    token = f.sign_token(f.sa_claims(), key, alg=alg)
    result = authn.authenticate_token(token, config_for(key), NOW)
    assert result.authenticated, result.reason
    assert result.user.username == "system:serviceaccount:authn-demo:bot"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_every_rsa_algorithm_go_jose_verifies_is_accepted_with_an_rsa_key(alg):
    key = f.private_key("rsa", "sa")
    assert authn.authenticate_token(f.sign_token(f.sa_claims(), key, alg=alg), config_for(key), NOW).authenticated


def test_es384_token_is_refused_when_only_a_p256_key_could_verify_it():
    token = f.sign_token(f.sa_claims(), P384, alg="ES384")
    result = authn.authenticate_token(token, config_for(f.private_key("ec", "sa")), NOW)
    assert result.reason_code is Reason.TOKEN_BAD_SIGNATURE
    assert "EC secp256r1" in result.reason


def test_es512_token_signed_by_another_p521_key_is_bad_signature():
    token = f.sign_token(f.sa_claims(), ec.generate_private_key(ec.SECP521R1()), alg="ES512")
    assert authn.authenticate_token(token, config_for(P521), NOW).reason_code is Reason.TOKEN_BAD_SIGNATURE


def test_the_username_comes_from_kubernetes_io_not_from_sub():
    claims = f.sa_claims(sub="system:serviceaccount:kube-system:admin", uid="u-9")
    result = authn.authenticate_token(f.sign_token(claims), config_for(f.private_key("rsa", "sa")), NOW)
    assert result.user.username == "system:serviceaccount:authn-demo:bot" and result.user.uid == "u-9"
    assert result.user.groups[1] == "system:serviceaccounts:authn-demo"


def test_a_token_without_sub_is_accepted():
    token = f.sign_token(f.sa_claims(sub=None))
    assert authn.authenticate_token(token, config_for(f.private_key("rsa", "sa")), NOW).authenticated


# --- legacy secret-based tokens ------------------------------------------------------------------


def legacy_claims(**overrides):
    """What LegacyClaims() writes: iss, sub and the four kubernetes.io/serviceaccount/* claims."""
    claims = {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "authn-demo",
        "kubernetes.io/serviceaccount/secret.name": "bot-token-5v2cp",
        "kubernetes.io/serviceaccount/service-account.name": "bot",
        "kubernetes.io/serviceaccount/service-account.uid": "0ecb5560-7d43-4883-ae85-d07cf635d2d2",
        "sub": "system:serviceaccount:authn-demo:bot",
    }
    for k, v in overrides.items():
        if v is None:
            claims.pop(k)
        else:
            claims[k] = v
    return claims


LEGACY = "kubernetes.io/serviceaccount/"


def test_legacy_secret_based_token_is_accepted_with_the_service_account_key():
    # the configured issuer is another one: upstream always adds the legacy issuer's authenticator
    result = authn.authenticate_token(f.sign_token(legacy_claims()), config_for(f.private_key("rsa", "sa")), NOW)
    assert result.authenticated, result.reason
    assert result.user.username == "system:serviceaccount:authn-demo:bot"
    assert result.user.uid == "0ecb5560-7d43-4883-ae85-d07cf635d2d2"
    assert result.user.groups == ("system:serviceaccounts", "system:serviceaccounts:authn-demo",
                                  "system:authenticated")
    assert result.user.extra == {}


def test_legacy_token_has_no_time_claims_and_none_are_checked():
    claims = legacy_claims(exp=int((NOW - timedelta(days=400)).timestamp()))
    assert authn.authenticate_token(f.sign_token(claims), config_for(f.private_key("rsa", "sa")), NOW).authenticated


def test_legacy_token_signed_by_another_key_is_bad_signature():
    token = f.sign_token(legacy_claims(), f.private_key("rsa", "other"))
    result = authn.authenticate_token(token, config_for(f.private_key("rsa", "sa")), NOW)
    assert result.reason_code is Reason.TOKEN_BAD_SIGNATURE


def test_legacy_token_for_another_audience_is_refused():
    token = f.sign_token(legacy_claims(aud=["vault"]))
    result = authn.authenticate_token(token, config_for(f.private_key("rsa", "sa")), NOW)
    assert result.reason_code is Reason.TOKEN_WRONG_AUDIENCE


@pytest.mark.parametrize("drop, message", [
    ("sub", "sub claim is missing"),
    (LEGACY + "namespace", "namespace claim is missing"),
    (LEGACY + "secret.name", "secretName claim is missing"),
    (LEGACY + "service-account.name", "serviceAccountName claim is missing"),
    (LEGACY + "service-account.uid", "serviceAccountUID claim is missing"),
])
def test_legacy_token_missing_a_claim_is_refused_with_upstreams_message(drop, message):
    token = f.sign_token(legacy_claims(**{drop: None}))
    result = authn.authenticate_token(token, config_for(f.private_key("rsa", "sa")), NOW)
    assert result.reason_code is Reason.TOKEN_INVALID_CLAIMS and message in result.reason


@pytest.mark.parametrize("sub", ["system:serviceaccount:kube-system:bot", "system:serviceaccount:authn-demo:x",
                                 "admin", "system:serviceaccount:authn-demo:bot:extra"])
def test_legacy_token_whose_sub_names_another_account_is_sub_claim_is_invalid(sub):
    token = f.sign_token(legacy_claims(sub=sub))
    result = authn.authenticate_token(token, config_for(f.private_key("rsa", "sa")), NOW)
    assert result.reason_code is Reason.TOKEN_INVALID_CLAIMS and "sub claim is invalid" in result.reason


def test_legacy_token_with_a_lookup_fails_because_no_secret_is_stored():
    # --service-account-lookup (default true): the Secret holding the token must exist
    token = f.sign_token(legacy_claims())
    result = authn.authenticate_token(token, config_for(f.private_key("rsa", "sa")), NOW,
                                      service_accounts=lambda ns, name: "0ecb5560-7d43-4883-ae85-d07cf635d2d2")
    assert result.reason_code is Reason.TOKEN_INVALIDATED
    assert result.reason.startswith("Token has been invalidated")
    assert "Secret authn-demo/bot-token-5v2cp" in result.reason and "stores no Secrets" in result.reason
    assert result.status()["message"] == "Unauthorized"


def test_inspection_of_a_legacy_token_reports_no_validity_check():
    ins = authn.inspect_token(f.sign_token(legacy_claims()), config_for(f.private_key("rsa", "sa")), NOW)
    assert ins.issuer is None and ins.validity is None and ins.claims is None and ins.result.authenticated


# --- what a real server additionally requires ----------------------------------------------------


def test_lookup_requirement_names_the_account_and_uid():
    assert authn.lookup_requirement(f.sa_claims(uid="u-1")) == "ServiceAccount authn-demo/bot exists with uid u-1"


def test_lookup_requirement_of_a_pod_bound_token_names_the_pod_not_the_node():
    claims = f.sa_claims(uid="u-1")
    claims["kubernetes.io"]["pod"] = {"name": "web-0", "uid": "p-1"}
    claims["kubernetes.io"]["node"] = {"name": "worker-0", "uid": "n-1"}
    assert authn.lookup_requirement(claims) == ("ServiceAccount authn-demo/bot exists with uid u-1 and "
                                                "Pod authn-demo/web-0 exists with uid p-1")


def test_lookup_requirement_of_a_node_bound_token_names_the_node():
    claims = f.sa_claims(uid="u-1")
    claims["kubernetes.io"]["node"] = {"name": "worker-0", "uid": "n-1"}
    assert authn.lookup_requirement(claims).endswith(" and Node worker-0 exists with uid n-1")


def test_lookup_requirement_of_a_legacy_token_names_its_secret():
    assert authn.lookup_requirement(legacy_claims()) == (
        "Secret authn-demo/bot-token-5v2cp exists and holds this very token, and ServiceAccount "
        "authn-demo/bot exists with uid 0ecb5560-7d43-4883-ae85-d07cf635d2d2")
