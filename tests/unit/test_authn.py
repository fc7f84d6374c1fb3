"""k8sboot.authn: every accept and every 401 reason of Stage 1, as kube-apiserver decides them.

Runs under the workstation venv and under cryptography 38.0.4 / PyJWT 2.6.0 (the lab hosts'):
imports nothing from k8sboot but `authn`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/authn_factory.py

import authn_factory as f  # noqa: E402
from authn_factory import ISSUER, NOW  # noqa: E402

from k8sboot import authn  # noqa: E402
from k8sboot.authn import AuthenticatorConfig, Reason  # noqa: E402


@pytest.fixture(scope="module")
def ca():
    return f.make_ca()


@pytest.fixture(scope="module")
def admin(ca):
    return f.make_client_cert(ca, "admin", ("system:masters",))


@pytest.fixture(scope="module")
def sa_key():
    return f.private_key("rsa", "sa")


@pytest.fixture(scope="module")
def config(ca, sa_key):
    return AuthenticatorConfig(
        client_ca=(ca.cert,),
        service_account_keys=(sa_key.public_key(),),
        service_account_issuers=(ISSUER,),
        anonymous_auth=False,
    )


def with_anonymous(config, on=True):
    return AuthenticatorConfig(config.client_ca, config.service_account_keys,
                               config.service_account_issuers, config.api_audiences, on)


def assert_401(result, reason: Reason, *fragments: str):
    assert not result.authenticated, result
    assert result.user is None
    assert result.reason_code is reason, result.reason
    for fragment in fragments:
        assert fragment in result.reason


# --- x509 ----------------------------------------------------------------------------------------


def test_admin_cert_gives_cn_as_username_o_as_group_and_x509sha256_credential_id(admin, config):
    result = authn.authenticate_cert(admin.der, config, NOW)
    assert result.authenticated and result.authenticator == "x509"
    assert result.user.username == "admin"
    assert result.user.groups == ("system:masters", "system:authenticated")
    assert result.user.extra == {
        "authentication.kubernetes.io/credential-id": (f"X509SHA256={hashlib.sha256(admin.der).hexdigest()}",)}
    assert result.user.uid == ""


def test_credential_id_equals_openssl_sha256_fingerprint(admin, config, tmp_path):
    (tmp_path / "admin.pem").write_bytes(admin.pem)
    out = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "admin.pem"), "-noout",
                          "-fingerprint", "-sha256"], capture_output=True, text=True, check=True).stdout
    openssl_hex = out.strip().split("=", 1)[1].replace(":", "").lower()
    result = authn.authenticate_cert(admin.der, config, NOW)
    assert result.user.extra[authn.CREDENTIAL_ID_KEY] == (f"X509SHA256={openssl_hex}",)


def test_every_organization_becomes_a_group_in_subject_order(ca, config):
    cert = f.make_client_cert(ca, "alice", ("dev", "ops", "system:nodes"))
    result = authn.authenticate_cert(cert.der, config, NOW)
    assert result.user.groups == ("dev", "ops", "system:nodes", "system:authenticated")


def test_system_authenticated_is_not_added_twice(ca, config):
    cert = f.make_client_cert(ca, "bob", ("system:authenticated",))
    assert authn.authenticate_cert(cert.der, config, NOW).user.groups == ("system:authenticated",)


def test_last_common_name_wins_like_go(ca, config):
    cert = f.make_client_cert(ca, subject=[("CN", "first"), ("O", "g"), ("CN", "second")])
    assert authn.authenticate_cert(cert.der, config, NOW).user.username == "second"


def test_cert_from_another_ca_with_the_same_name_is_unknown_authority_with_hint(config):
    rogue_ca = f.make_ca("Kubernetes", key=f.private_key("rsa", "rogue"))
    cert = f.make_client_cert(rogue_ca, "admin")
    result = authn.authenticate_cert(cert.der, config, NOW)
    # Go's UnknownAuthorityError names the candidate by its CN alone (tests/unit/test_go_oracle.py)
    assert_401(result, Reason.CERT_UNKNOWN_AUTHORITY, "certificate signed by unknown authority",
               '(possibly because of "crypto/rsa: verification error" while trying to verify candidate '
               'authority certificate "Kubernetes")', "CN=admin")
    assert result.failures[0].is_error


def test_cert_from_a_differently_named_ca_is_unknown_authority(config):
    other = f.make_ca("Other CA", key=f.private_key("rsa", "rogue"))
    result = authn.authenticate_cert(f.make_client_cert(other, "admin").der, config, NOW)
    assert_401(result, Reason.CERT_UNKNOWN_AUTHORITY, "signed by unknown authority")
    assert "possibly because" not in result.reason


def test_expired_cert_is_its_own_reason(ca, config):
    cert = f.make_client_cert(ca, not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(seconds=1))
    assert_401(authn.authenticate_cert(cert.der, config, NOW), Reason.CERT_EXPIRED,
               "certificate has expired", "is after")


def test_not_yet_valid_cert_is_its_own_reason(ca, config):
    cert = f.make_client_cert(ca, not_before=NOW + timedelta(hours=1))
    assert_401(authn.authenticate_cert(cert.der, config, NOW), Reason.CERT_NOT_YET_VALID,
               "not yet valid", "is before")


def test_cert_is_valid_at_the_exact_second_of_not_after(ca, config):
    cert = f.make_client_cert(ca, not_after=NOW)
    assert authn.authenticate_cert(cert.der, config, NOW).authenticated


def test_expiry_is_checked_before_the_issuer_like_go(config):
    rogue = f.make_ca("Other", key=f.private_key("rsa", "rogue"))
    cert = f.make_client_cert(rogue, not_after=NOW - timedelta(days=1),
                              not_before=NOW - timedelta(days=2))
    assert authn.authenticate_cert(cert.der, config, NOW).reason_code is Reason.CERT_EXPIRED


def test_server_auth_only_cert_is_incompatible_key_usage(ca, config):
    cert = f.make_client_cert(ca, "kubernetes", (), eku=("serverAuth",))
    assert_401(authn.authenticate_cert(cert.der, config, NOW), Reason.CERT_INCOMPATIBLE_USAGE,
               "incompatible key usage", "clientAuth")


def test_cert_with_client_and_server_auth_is_accepted(ca, config):
    cert = f.make_client_cert(ca, "system:node:worker-0", ("system:nodes",),
                              eku=("clientAuth", "serverAuth"))
    assert authn.authenticate_cert(cert.der, config, NOW).user.username == "system:node:worker-0"


def test_cert_without_any_eku_extension_is_accepted_like_go_x509(ca, config):
    cert = f.make_client_cert(ca, "legacy", (), eku=None)
    assert authn.authenticate_cert(cert.der, config, NOW).authenticated


def test_cert_with_any_extended_key_usage_is_accepted(ca, config):
    cert = f.make_client_cert(ca, "anything", (), eku=("any",))
    assert authn.authenticate_cert(cert.der, config, NOW).authenticated


def test_ca_restricted_to_server_auth_cannot_vouch_for_client_certs():
    server_only_ca = f.make_ca("Server CA", eku=("serverAuth",), key=f.private_key("rsa", "ca2"))
    cfg = AuthenticatorConfig(client_ca=(server_only_ca.cert,))
    cert = f.make_client_cert(server_only_ca, "admin")
    assert_401(authn.authenticate_cert(cert.der, cfg, NOW), Reason.CERT_INCOMPATIBLE_USAGE)


def test_cert_without_common_name_is_ignored_not_an_error(ca, config):
    cert = f.make_client_cert(ca, None, ("system:masters",))
    result = authn.authenticate_cert(cert.der, config, NOW)
    assert not result.authenticated
    assert result.failures[0].reason is Reason.CERT_EMPTY_COMMON_NAME
    assert result.failures[0].is_error is False
    assert "empty Common Name" in result.reason


def test_empty_cn_cert_with_anonymous_off_is_401_naming_the_empty_cn(ca, config):
    cert = f.make_client_cert(ca, None, ("system:masters",))
    result = authn.authenticate_request(cert.der, None, config, NOW)
    assert_401(result, Reason.CERT_EMPTY_COMMON_NAME, "empty Common Name", "anonymous auth is off")


def test_empty_cn_cert_with_anonymous_on_is_anonymous_like_the_real_server(ca, config):
    # x509.CommonNameUserConversion returns (nil, false, nil) for an empty CN: not an error,
    # so union.NewFailOnError falls through to the anonymous authenticator.
    cert = f.make_client_cert(ca, None, ("system:masters",))
    result = authn.authenticate_request(cert.der, None, with_anonymous(config), NOW)
    assert result.user.username == "system:anonymous"
    assert result.failures[0].reason is Reason.CERT_EMPTY_COMMON_NAME


def test_chain_through_a_presented_intermediate_verifies(ca, config):
    inter = f.make_ca("Intermediate", parent=ca, key=f.private_key("rsa", "inter"))
    cert = f.make_client_cert(inter, "carol", ("team",))
    assert authn.authenticate_cert(cert.der, config, NOW, intermediates_der=[inter.der]).authenticated
    assert_401(authn.authenticate_cert(cert.der, config, NOW), Reason.CERT_UNKNOWN_AUTHORITY)


def test_intermediate_that_is_not_a_ca_cannot_sign(ca, config):
    not_ca = f.make_ca("Not a CA", parent=ca, key=f.private_key("rsa", "inter"), is_ca=False)
    cert = f.make_client_cert(not_ca, "mallory")
    result = authn.authenticate_cert(cert.der, config, NOW, intermediates_der=[not_ca.der])
    assert_401(result, Reason.CERT_UNKNOWN_AUTHORITY, "cannot sign")


def test_ca_without_key_cert_sign_cannot_sign(ca):
    ca_no_sign = f.make_ca("No Sign", key=f.private_key("rsa", "ca3"), key_cert_sign=False)
    cert = f.make_client_cert(ca_no_sign, "admin")
    cfg = AuthenticatorConfig(client_ca=(ca_no_sign.cert,))
    assert_401(authn.authenticate_cert(cert.der, cfg, NOW), Reason.CERT_UNKNOWN_AUTHORITY)


def test_expired_ca_is_reported_as_go_reports_it_the_expiry_error_itself_naming_the_ca():
    # Go's buildChains returns the last candidate's isValid error when no chain is found: the CA's
    # expiry, not "unknown authority" (the oracle agrees: tests/unit/test_go_oracle.py)
    old_ca = f.make_ca("Old CA", key=f.private_key("rsa", "ca4"), not_before=NOW - timedelta(days=20),
                       not_after=NOW - timedelta(days=1))
    cert = f.make_client_cert(old_ca, "admin")
    cfg = AuthenticatorConfig(client_ca=(old_ca.cert,))
    assert_401(authn.authenticate_cert(cert.der, cfg, NOW), Reason.CERT_EXPIRED,
               "x509: certificate has expired or is not yet valid: current time 2025-06-01T12:00:00Z is "
               "after 2025-05-31T12:00:00Z", 'authority certificate "Old CA"')


def test_second_ca_of_a_bundle_is_trusted(ca):
    other = f.make_ca("Second", key=f.private_key("rsa", "ca5"))
    bundle = authn.parse_client_ca(ca.pem + other.pem)
    cfg = AuthenticatorConfig(client_ca=bundle)
    assert authn.authenticate_cert(f.make_client_cert(other, "dave").der, cfg, NOW).authenticated


def test_ecdsa_ca_and_ecdsa_client_cert_verify():
    ec_ca = f.make_ca("EC CA", key=f.private_key("ec", "ca"))
    cert = f.make_client_cert(ec_ca, "admin", key=f.private_key("ec", "leaf"))
    cfg = AuthenticatorConfig(client_ca=(ec_ca.cert,))
    assert authn.authenticate_cert(cert.der, cfg, NOW).user.username == "admin"


def test_ed25519_ca_signature_verifies():
    ed_ca = f.make_ca("Ed CA", key=f.private_key("ed25519", "ca"))
    cert = f.make_client_cert(ed_ca, "admin")
    cfg = AuthenticatorConfig(client_ca=(ed_ca.cert,))
    assert authn.authenticate_cert(cert.der, cfg, NOW).authenticated


def test_the_ca_cert_itself_presented_as_client_cert_is_accepted_like_go(ca, config):
    # Go's Verify: a cert that is itself in the root pool is its own chain; no EKU -> any usage.
    result = authn.authenticate_cert(ca.der, config, NOW)
    assert result.user.username == "Kubernetes"


def test_unparseable_client_cert_is_malformed(config):
    assert_401(authn.authenticate_cert(b"\x30\x03garbage", config, NOW), Reason.CERT_MALFORMED)


def test_no_client_ca_configured_ignores_the_cert(admin):
    result = authn.authenticate_request(admin.der, None, AuthenticatorConfig(anonymous_auth=True), NOW)
    assert result.user.username == "system:anonymous"
    assert result.failures[0].reason is Reason.CERT_AUTHENTICATOR_OFF


def test_naive_clock_is_taken_as_utc(admin, config):
    assert authn.authenticate_cert(admin.der, config, NOW.replace(tzinfo=None)).authenticated


def test_validity_helpers_return_aware_utc(admin):
    assert authn.cert_not_valid_before(admin.cert).tzinfo is not None
    assert authn.cert_not_valid_after(admin.cert) > authn.cert_not_valid_before(admin.cert)


# --- ServiceAccount JWT -------------------------------------------------------------------------


def test_rs256_service_account_token_authenticates_with_sa_groups_uid_and_jti(config):
    token = f.sign_token(f.sa_claims(uid="uid-1", jti="abc"))
    result = authn.authenticate_token(token, config, NOW)
    assert result.authenticated and result.authenticator == "serviceaccount"
    assert result.user.username == "system:serviceaccount:authn-demo:bot"
    assert result.user.uid == "uid-1"
    assert result.user.groups == ("system:serviceaccounts", "system:serviceaccounts:authn-demo",
                                  "system:authenticated")
    assert result.user.extra == {"authentication.kubernetes.io/credential-id": ("JTI=abc",)}


def test_token_without_jti_has_no_credential_id(config):
    result = authn.authenticate_token(f.sign_token(f.sa_claims(jti=None)), config, NOW)
    assert result.authenticated and result.user.extra == {}


def test_pod_and_node_bound_token_carries_pod_and_node_extras(config):
    claims = f.sa_claims()
    claims["kubernetes.io"]["pod"] = {"name": "web-0", "uid": "pod-uid"}
    claims["kubernetes.io"]["node"] = {"name": "worker-0", "uid": "node-uid"}
    extra = authn.authenticate_token(f.sign_token(claims), config, NOW).user.extra
    assert extra[authn.POD_NAME_KEY] == ("web-0",) and extra[authn.POD_UID_KEY] == ("pod-uid",)
    assert extra[authn.NODE_NAME_KEY] == ("worker-0",) and extra[authn.NODE_UID_KEY] == ("node-uid",)


def test_es256_token_verifies_with_a_p256_key():
    key = f.private_key("ec", "sa")
    cfg = AuthenticatorConfig(service_account_keys=(key.public_key(),), service_account_issuers=(ISSUER,))
    token = f.sign_token(f.sa_claims(), key)
    assert authn.authenticate_token(token, cfg, NOW).authenticated


def test_token_signed_by_another_key_is_bad_signature(config):
    token = f.sign_token(f.sa_claims(), f.private_key("rsa", "other"))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_BAD_SIGNATURE,
               "does not verify")


def test_token_with_one_payload_byte_changed_is_bad_signature(config):
    token = f.sign_token(f.sa_claims(name="bot"))
    header, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    tampered = raw.replace(b'"bot"', b'"bou"', 1)
    assert sum(a != b for a, b in zip(raw, tampered)) == 1 and len(tampered) == len(raw)
    forged = ".".join((header, f.b64url(tampered), sig))
    assert_401(authn.authenticate_token(forged, config, NOW), Reason.TOKEN_BAD_SIGNATURE)


def test_token_with_one_signature_byte_changed_is_bad_signature(config):
    token = f.sign_token(f.sa_claims())
    header, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    forged = ".".join((header, payload, f.b64url(bytes(raw))))
    assert_401(authn.authenticate_token(forged, config, NOW), Reason.TOKEN_BAD_SIGNATURE)


def test_token_from_another_issuer_is_wrong_issuer(config):
    token = f.sign_token(f.sa_claims(iss="https://evil.example:6443"))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_WRONG_ISSUER,
               '"https://evil.example:6443"', ISSUER)


def test_issuer_is_checked_before_the_signature_like_the_real_server(config):
    token = f.sign_token(f.sa_claims(iss="https://evil"), f.private_key("rsa", "other"))
    assert authn.authenticate_token(token, config, NOW).reason_code is Reason.TOKEN_WRONG_ISSUER


def test_second_issuer_of_the_list_is_accepted(sa_key):
    cfg = AuthenticatorConfig(service_account_keys=(sa_key.public_key(),),
                              service_account_issuers=(ISSUER, "https://new"))
    token = f.sign_token(f.sa_claims(iss="https://new", aud=["https://new"]))
    assert authn.authenticate_token(token, cfg, NOW).authenticated


def test_token_for_another_audience_is_wrong_audience(config):
    token = f.sign_token(f.sa_claims(aud=["vault"]))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_WRONG_AUDIENCE,
               '["vault"]', ISSUER)


def test_audience_as_a_single_string_is_accepted(config):
    assert authn.authenticate_token(f.sign_token(f.sa_claims(aud=ISSUER)), config, NOW).authenticated


def test_one_matching_audience_among_several_is_enough(config):
    token = f.sign_token(f.sa_claims(aud=["vault", ISSUER]))
    assert authn.authenticate_token(token, config, NOW).authenticated


def test_token_without_aud_gets_the_api_audiences_like_the_real_server(config):
    assert authn.authenticate_token(f.sign_token(f.sa_claims(aud=None)), config, NOW).authenticated


def test_explicit_api_audiences_replace_the_issuer_default(sa_key):
    cfg = AuthenticatorConfig(service_account_keys=(sa_key.public_key(),),
                              service_account_issuers=(ISSUER,), api_audiences=("api",))
    assert cfg.audiences == ("api",)
    assert_401(authn.authenticate_token(f.sign_token(f.sa_claims()), cfg, NOW),
               Reason.TOKEN_WRONG_AUDIENCE)
    assert authn.authenticate_token(f.sign_token(f.sa_claims(aud=["api"])), cfg, NOW).authenticated


def test_expired_token_is_expired(config):
    token = f.sign_token(f.sa_claims(now=NOW - timedelta(minutes=20)))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_EXPIRED, "has expired")


def test_token_expired_within_the_60s_leeway_is_still_accepted(config):
    token = f.sign_token(f.sa_claims(now=NOW - timedelta(minutes=10, seconds=59)))
    assert authn.authenticate_token(token, config, NOW).authenticated
    token = f.sign_token(f.sa_claims(now=NOW - timedelta(minutes=11, seconds=1)))
    assert authn.authenticate_token(token, config, NOW).reason_code is Reason.TOKEN_EXPIRED


def test_token_with_nbf_in_the_future_is_not_yet_valid(config):
    later = int((NOW + timedelta(minutes=5)).timestamp())
    token = f.sign_token(f.sa_claims(nbf=later, iat=int(NOW.timestamp())))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_NOT_YET_VALID, "not valid yet")


def test_token_with_nbf_inside_the_leeway_is_accepted(config):
    token = f.sign_token(f.sa_claims(nbf=int(NOW.timestamp()) + 30))
    assert authn.authenticate_token(token, config, NOW).authenticated


def test_token_issued_in_the_future_is_refused(config):
    token = f.sign_token(f.sa_claims(iat=int(NOW.timestamp()) + 600, nbf=None))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_ISSUED_IN_FUTURE)


def test_wrong_audience_is_reported_before_expiry_like_the_real_server(config):
    token = f.sign_token(f.sa_claims(aud=["x"], now=NOW - timedelta(hours=2)))
    assert authn.authenticate_token(token, config, NOW).reason_code is Reason.TOKEN_WRONG_AUDIENCE


@pytest.mark.parametrize("token, fragment", [
    ("garbage", "3 dot-separated segments"),
    ("", "empty"),
    ("aGVhZGVy.cGF5bG9hZA", "got 2"),
    ("a.b.c.d", "got 4"),
    ("!!!.???.***", "not base64url"),
    ("eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln", "payload is not JSON"),
    ("bm90LWpzb24.e30.c2ln", "header is not JSON"),
    ("eyJhbGciOiJSUzI1NiJ9.WzFd.c2ln", "payload is not a JSON object"),
    ("e30.e30.c2ln", 'no "alg"'),
    ("A" * (authn.MAX_TOKEN_BYTES + 1), "more than an HTTP header can carry"),
])
def test_malformed_tokens_are_malformed(config, token, fragment):
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_MALFORMED, fragment)


def test_non_numeric_exp_is_malformed(config):
    token = f.sign_token(f.sa_claims(exp="tomorrow"))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_MALFORMED, '"exp"')


def test_alg_none_token_is_refused_as_unsigned(config):
    token = f.raw_token({"alg": "none", "typ": "JWT"}, f.sa_claims())
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_UNSUPPORTED_ALGORITHM,
               '"none"', "unsigned")


def test_hs256_token_keyed_with_the_public_key_is_refused(config, sa_key):
    # The classic confusion attack: HMAC-SHA256 with the server's public key PEM as the secret.
    header, claims = {"alg": "HS256", "typ": "JWT"}, f.sa_claims()
    unsigned = f.raw_token(header, claims).rsplit(".", 1)[0]
    secret = f.public_pem(sa_key)
    forged = unsigned + "." + f.b64url(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())
    assert_401(authn.authenticate_token(forged, config, NOW), Reason.TOKEN_UNSUPPORTED_ALGORITHM,
               '"HS256"', "HMAC", "never used as an HMAC secret")


@pytest.mark.parametrize("alg", ["EdDSA", "ES256K", "RS1", "RSA-OAEP"])
def test_algorithms_go_jose_cannot_verify_with_an_rsa_or_ecdsa_key_are_refused(config, alg):
    token = f.raw_token({"alg": alg}, f.sa_claims(), b"x" * 64)
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_UNSUPPORTED_ALGORITHM, alg)


def test_es256_token_when_only_rsa_keys_are_configured_is_bad_signature(config):
    token = f.sign_token(f.sa_claims(), f.private_key("ec", "sa"))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_BAD_SIGNATURE, "RSA")


def test_token_signed_by_the_second_configured_key_is_accepted(sa_key):
    other = f.private_key("rsa", "other")
    cfg = AuthenticatorConfig(service_account_keys=(sa_key.public_key(), other.public_key()),
                              service_account_issuers=(ISSUER,))
    assert authn.authenticate_token(f.sign_token(f.sa_claims(), other), cfg, NOW).authenticated


def test_token_without_kubernetes_io_claims_is_invalid_claims(config):
    token = f.sign_token(f.sa_claims(**{"kubernetes.io": None}))
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_INVALID_CLAIMS, "kubernetes.io")


def test_sub_disagreeing_with_kubernetes_io_is_ignored_like_upstream(config):
    # upstream's bound-token validator never reads `sub`: ServiceAccountInfo is built from the
    # kubernetes.io claims, and the username from its namespace and name
    token = f.sign_token(f.sa_claims(sub="system:serviceaccount:kube-system:admin"))
    result = authn.authenticate_token(token, config, NOW)
    assert result.authenticated and result.user.username == "system:serviceaccount:authn-demo:bot"


def test_token_failure_messages_never_contain_the_token(config):
    token = f.sign_token(f.sa_claims(aud=["x"]))
    result = authn.authenticate_token(token, config, NOW)
    assert token not in result.reason and token.split(".")[2] not in result.reason


# --- key and CA files ---------------------------------------------------------------------------


def test_sa_keys_are_read_from_public_private_and_certificate_pem(sa_key, ca):
    pem = (f.public_pem(sa_key) + f.key_pem(f.private_key("ec", "sa")) + ca.pem
           + b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n")
    keys = authn.parse_service_account_keys(pem)
    assert len(keys) == 3


def test_sa_key_file_without_keys_is_a_config_error():
    with pytest.raises(authn.AuthnConfigError, match="does not contain any valid RSA or ECDSA"):
        authn.parse_service_account_keys(b"hello")


def test_load_authenticator_config_reads_the_flag_files(tmp_path, ca, sa_key):
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "sa.pem").write_bytes(f.public_pem(sa_key))
    cfg = authn.load_authenticator_config(client_ca_file=tmp_path / "ca.pem",
                                          service_account_key_files=[tmp_path / "sa.pem"],
                                          service_account_issuers=[ISSUER], anonymous_auth=False)
    assert cfg.client_ca == (ca.cert,) and len(cfg.service_account_keys) == 1
    assert cfg.audiences == (ISSUER,) and cfg.anonymous_auth is False


def test_missing_flag_file_is_a_config_error_naming_the_path(tmp_path):
    with pytest.raises(authn.AuthnConfigError) as info:
        authn.load_authenticator_config(client_ca_file=tmp_path / "nope.pem")
    assert info.value.missing and info.value.path == str(tmp_path / "nope.pem")
    assert str(tmp_path / "nope.pem") in str(info.value)


def test_ca_file_without_certificates_is_a_config_error():
    with pytest.raises(authn.AuthnConfigError, match="unable to load client CA file"):
        authn.parse_client_ca(b"not a pem")


# --- the union ----------------------------------------------------------------------------------


def test_valid_cert_wins_over_a_valid_token(admin, config):
    result = authn.authenticate_request(admin.der, "Bearer " + f.sign_token(f.sa_claims()), config, NOW)
    assert result.authenticator == "x509" and result.user.username == "admin"


def test_rejected_cert_then_valid_token_authenticates_as_the_service_account(config):
    rogue = f.make_client_cert(f.make_ca("Other", key=f.private_key("rsa", "rogue")), "admin")
    result = authn.authenticate_request(rogue.der, "Bearer " + f.sign_token(f.sa_claims()), config, NOW)
    assert result.authenticator == "serviceaccount"
    assert result.failures[0].reason is Reason.CERT_UNKNOWN_AUTHORITY


def test_rejected_cert_with_anonymous_on_is_still_401(config):
    rogue = f.make_client_cert(f.make_ca("Other", key=f.private_key("rsa", "rogue")), "admin")
    result = authn.authenticate_request(rogue.der, None, with_anonymous(config), NOW)
    assert_401(result, Reason.CERT_UNKNOWN_AUTHORITY)


def test_rejected_token_with_anonymous_on_is_still_401(config):
    token = f.sign_token(f.sa_claims(iss="https://evil"))
    result = authn.authenticate_request(None, f"Bearer {token}", with_anonymous(config), NOW)
    assert_401(result, Reason.TOKEN_WRONG_ISSUER)


def test_both_credentials_rejected_reports_both_reasons(ca, config):
    expired = f.make_client_cert(ca, not_before=NOW - timedelta(days=3), not_after=NOW - timedelta(days=1))
    token = f.sign_token(f.sa_claims(aud=["x"]))
    result = authn.authenticate_request(expired.der, f"Bearer {token}", config, NOW)
    assert result.reason_code is Reason.CERT_EXPIRED
    assert "has expired" in result.reason and "audiences" in result.reason


def test_no_credential_with_anonymous_on_is_system_anonymous(config):
    result = authn.authenticate_request(None, None, with_anonymous(config), NOW)
    assert result.authenticator == "anonymous"
    assert result.user == authn.UserInfo("system:anonymous", groups=("system:unauthenticated",))


def test_no_credential_with_anonymous_off_is_401(config):
    result = authn.authenticate_request(None, None, config, NOW)
    assert_401(result, Reason.ANONYMOUS_DISABLED, "anonymous auth is off")
    assert authn.anonymous(config).reason_code is Reason.ANONYMOUS_DISABLED


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", "Token abc", ""])
def test_authorization_header_that_is_not_a_bearer_token_is_no_credential(config, header):
    assert authn.bearer_token_from_header(header) is None
    result = authn.authenticate_request(None, header, with_anonymous(config), NOW)
    assert result.user.username == "system:anonymous"


def test_bearer_scheme_is_case_insensitive_and_header_is_trimmed(config):
    token = f.sign_token(f.sa_claims())
    assert authn.bearer_token_from_header(f"  bearer {token}  ") == token
    assert authn.authenticate_request(None, f"BEARER {token}", config, NOW).authenticated


# --- what the stand-in serves -------------------------------------------------------------------


def test_self_subject_review_has_the_api_shape(admin, config):
    review = authn.authenticate_cert(admin.der, config, NOW).self_subject_review(NOW)
    assert review["kind"] == "SelfSubjectReview" and review["apiVersion"] == "authentication.k8s.io/v1"
    assert review["metadata"]["creationTimestamp"] == "2025-06-01T12:00:00Z"
    info = review["status"]["userInfo"]
    assert info["username"] == "admin" and "uid" not in info
    assert info["groups"] == ["system:masters", "system:authenticated"]
    assert list(info["extra"]) == ["authentication.kubernetes.io/credential-id"]
    json.dumps(review)


def test_service_account_review_includes_the_uid(config):
    result = authn.authenticate_token(f.sign_token(f.sa_claims(uid="u-1")), config, NOW)
    assert result.user.to_json()["uid"] == "u-1"


def test_401_status_is_the_api_servers_and_reason_only_on_request(config):
    result = authn.authenticate_request(None, None, config, NOW)
    assert result.status() == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "message": "Unauthorized",
                               "reason": "Unauthorized", "code": 401}
    causes = result.status(include_reason=True)["details"]["causes"]
    assert causes == [{"reason": "anonymous_disabled", "message": result.reason}]
    with pytest.raises(ValueError):
        result.self_subject_review()


def test_summary_is_one_log_line(admin, config):
    assert authn.authenticate_cert(admin.der, config, NOW).summary() == \
        'authenticated user="admin" groups=[system:masters system:authenticated] by x509'
    assert authn.authenticate_request(None, None, config, NOW).summary().startswith("401 Unauthorized: ")


def test_inspect_token_evaluates_every_check_separately(config):
    token = f.sign_token(f.sa_claims(iss="https://evil", aud=["x"], now=NOW - timedelta(hours=1)))
    report = authn.inspect_token(token, config, NOW)
    assert report.malformed is None and report.algorithm is None and report.signature is None
    assert report.issuer.reason is Reason.TOKEN_WRONG_ISSUER
    assert report.audience.reason is Reason.TOKEN_WRONG_AUDIENCE
    assert report.validity.reason is Reason.TOKEN_EXPIRED
    assert report.result.reason_code is Reason.TOKEN_WRONG_ISSUER


def test_inspect_token_of_garbage_reports_malformed_only(config):
    report = authn.inspect_token("nope", config, NOW)
    assert report.parts is None and report.malformed.reason is Reason.TOKEN_MALFORMED


# --- the package's own contract -----------------------------------------------------------------

AUTHN_FILES = sorted(Path(authn.__file__).parent.glob("*.py"))


def test_authn_imports_only_stdlib_cryptography_and_jwt():
    import ast

    modules = set()
    for node in (n for path in AUTHN_FILES for n in ast.walk(ast.parse(path.read_text()))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
    roots = {m.split(".")[0] for m in modules if not m.startswith("k8sboot.authn.")}
    allowed = set(sys.stdlib_module_names) | {"cryptography", "jwt", "cel_expr_python"}   # CEL: copied into the lab root
    assert roots <= allowed, roots - allowed


@pytest.mark.parametrize("path", AUTHN_FILES, ids=lambda p: p.name)
def test_authn_uses_no_api_missing_from_cryptography_38(path):
    source = path.read_text()
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    body = code.split('"""', 2)[2]          # skip the module docstring
    assert "verify_directly_issued_by" not in body
    assert "load_pem_x509_certificates" not in body
    assert "signature_algorithm_parameters" not in body
    for attr in ("not_valid_before_utc", "not_valid_after_utc"):
        # only through getattr with a fallback
        assert f".{attr}" not in body


@pytest.mark.parametrize("depth", [authn.MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_claims_are_malformed_not_a_recursion_error(config, depth):
    import base64

    def seg(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    token = seg('{"alg":"RS256"}') + "." + seg('{"a":' + "[" * depth + "]" * depth + "}") + ".c2ln"
    assert_401(authn.authenticate_token(token, config, NOW), Reason.TOKEN_MALFORMED,
               f"nests more than {authn.MAX_JSON_DEPTH} levels")
    with pytest.raises(authn.MalformedTokenError):
        authn.parse_jwt(token)
