"""k8sboot.tokens: minted tokens carry the TokenRequest claims, verify with authn and with openssl."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/authn_factory.py

import authn_factory as f  # noqa: E402
from authn_factory import ISSUER, NOW  # noqa: E402

from k8sboot import authn, tokens  # noqa: E402
from k8sboot.errors import PkiError, TokenError  # noqa: E402


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def segments(token: str) -> tuple[dict, dict, bytes]:
    h, p, s = token.split(".")
    return json.loads(b64decode(h)), json.loads(b64decode(p)), b64decode(s)


def mint(key=None, **kw):
    key = key or f.private_key("rsa", "sa")
    args = dict(namespace="authn-demo", service_account="bot", duration=timedelta(minutes=10),
                audiences=[ISSUER], issuer=ISSUER, signing_key_pem=f.key_pem(key), now=NOW)
    args.update(kw)
    return tokens.mint_token(**args)


def config_for(key, **kw):
    return authn.AuthenticatorConfig(service_account_keys=(key.public_key(),),
                                     service_account_issuers=(ISSUER,), **kw)


# --- mint ---------------------------------------------------------------------------------------


def test_minted_token_has_the_claims_the_tutorial_decodes():
    header, claims, _ = segments(mint(duration=timedelta(minutes=10), audiences=["a", "b"]))
    assert header["alg"] == "RS256" and set(header) == {"alg", "kid"}
    assert list(claims) == ["aud", "exp", "iat", "iss", "jti", "kubernetes.io", "nbf", "sub"]
    assert claims["aud"] == ["a", "b"]
    assert claims["iat"] == claims["nbf"] == int(NOW.timestamp())
    assert claims["exp"] - claims["iat"] == 600
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "system:serviceaccount:authn-demo:bot"
    uuid.UUID(claims["jti"])
    assert claims["kubernetes.io"] == {"namespace": "authn-demo", "serviceaccount": {
        "name": "bot", "uid": tokens.service_account_uid("authn-demo", "bot")}}


def test_repeated_tokens_for_one_service_account_share_the_uid_but_not_the_jti():
    (_, a, _), (_, b, _) = segments(mint()), segments(mint())
    assert a["kubernetes.io"]["serviceaccount"]["uid"] == b["kubernetes.io"]["serviceaccount"]["uid"]
    assert a["jti"] != b["jti"]
    assert tokens.service_account_uid("authn-demo", "bot") != tokens.service_account_uid("other", "bot")


def test_kid_is_base64url_sha256_of_the_der_public_key_computed_by_openssl(tmp_path):
    key = f.private_key("rsa", "sa")
    (tmp_path / "sa.pem").write_bytes(f.public_pem(key))
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(tmp_path / "sa.pem"), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert segments(mint(key))[0]["kid"] == expected == tokens.key_id(key.public_key())


def test_minted_rs256_token_authenticates_through_authn():
    key = f.private_key("rsa", "sa")
    result = authn.authenticate_token(mint(key), config_for(key), NOW)
    assert result.user.username == "system:serviceaccount:authn-demo:bot"
    assert result.user.uid == tokens.service_account_uid("authn-demo", "bot")
    assert result.user.extra[authn.CREDENTIAL_ID_KEY][0].startswith("JTI=")


def test_openssl_verifies_the_rs256_signature_exactly_as_authn_does(tmp_path):
    key = f.private_key("rsa", "sa")
    token = mint(key)
    (tmp_path / "pub.pem").write_bytes(f.public_pem(key))

    def openssl_verifies(tok: str) -> bool:
        head, payload, sig = tok.split(".")
        (tmp_path / "input").write_bytes(f"{head}.{payload}".encode())
        (tmp_path / "sig.bin").write_bytes(b64decode(sig))
        proc = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                               "-signature", str(tmp_path / "sig.bin"), str(tmp_path / "input")],
                              capture_output=True, text=True)
        assert ("Verified OK" in proc.stdout) == (proc.returncode == 0)
        return proc.returncode == 0

    def authn_verifies(tok: str) -> bool:
        return authn.authenticate_token(tok, config_for(key), NOW).authenticated

    head, payload, sig = token.split(".")
    tampered_payload = f.b64url(b64decode(payload).replace(b'"bot"', b'"bou"'))
    other_key_token = mint(f.private_key("rsa", "other"))
    cases = {
        "genuine": (token, True),
        "payload byte changed": (f"{head}.{tampered_payload}.{sig}", False),
        "signed by another key": (other_key_token, False),
    }
    for name, (tok, expected) in cases.items():
        assert openssl_verifies(tok) is expected, name
        assert authn_verifies(tok) is expected, name


def test_es256_round_trip_with_a_p256_key_and_openssl_agrees(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = f.private_key("ec", "sa")
    token = mint(key)
    header, _, raw_sig = segments(token)
    assert header["alg"] == "ES256" and len(raw_sig) == 64
    assert authn.authenticate_token(token, config_for(key), NOW).authenticated
    # JWS carries r||s; openssl wants DER
    der_sig = encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))
    (tmp_path / "pub.pem").write_bytes(f.public_pem(key))
    (tmp_path / "sig.der").write_bytes(der_sig)
    (tmp_path / "input").write_bytes(token.rsplit(".", 1)[0].encode())
    proc = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                           "-signature", str(tmp_path / "sig.der"), str(tmp_path / "input")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_minted_token_expires_after_its_duration_plus_leeway():
    key = f.private_key("rsa", "sa")
    token = mint(key, duration=timedelta(minutes=10))
    assert authn.authenticate_token(token, config_for(key), NOW + timedelta(minutes=10, seconds=60)).authenticated
    late = authn.authenticate_token(token, config_for(key), NOW + timedelta(minutes=11, seconds=1))
    assert late.reason_code is authn.Reason.TOKEN_EXPIRED


@pytest.mark.parametrize("curve, alg, size, digest", [
    ("secp384r1", "ES384", 48, "-sha384"), ("secp521r1", "ES512", 66, "-sha512")])
def test_p384_and_p521_keys_sign_es384_and_es512_like_kube_apiserver(tmp_path, curve, alg, size, digest):
    # pkg/serviceaccount/jwt.go signerFromECDSAPrivateKey: P-384 -> ES384, P-521 -> ES512; go-jose
    # writes r||s padded to the curve's byte size (48, 66)
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = ec.generate_private_key(getattr(ec, curve.upper())())
    token = mint(key)
    header, _, raw_sig = segments(token)
    assert header["alg"] == alg and len(raw_sig) == 2 * size
    assert authn.authenticate_token(token, config_for(key), NOW).authenticated
    der_sig = encode_dss_signature(int.from_bytes(raw_sig[:size], "big"), int.from_bytes(raw_sig[size:], "big"))
    (tmp_path / "pub.pem").write_bytes(f.public_pem(key))
    (tmp_path / "sig.der").write_bytes(der_sig)
    (tmp_path / "input").write_bytes(token.rsplit(".", 1)[0].encode())
    proc = subprocess.run(["openssl", "dgst", digest, "-verify", str(tmp_path / "pub.pem"),
                           "-signature", str(tmp_path / "sig.der"), str(tmp_path / "input")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_key_on_a_curve_kube_apiserver_cannot_sign_with_is_a_pki_error():
    # upstream: "unknown private key curve, must be 256, 384, or 521"
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(PkiError, match="secp256k1 cannot sign"):
        mint(ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(PkiError, match="cannot sign"):
        mint(f.private_key("ed25519", "sa"))


def test_garbage_signing_key_is_a_pki_error_without_key_material():
    with pytest.raises(PkiError) as info:
        mint(signing_key_pem=b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert "AAAA" not in str(info.value) and "gen-certs" in info.value.hint


@pytest.mark.parametrize("kw, fragment", [
    ({"namespace": "Authn_Demo"}, "not a valid namespace"),
    ({"service_account": "Bot!"}, "not a valid ServiceAccount name"),
    ({"audiences": []}, "at least one audience"),
    ({"duration": timedelta(0)}, "longer than 0s"),
])
def test_bad_mint_arguments_are_value_errors(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        mint(**kw)


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("10m", 600), ("1h", 3600), ("3600s", 3600), ("1d", 86400), ("1h30m", 5400), (" 2H ", 7200),
])
def test_durations_parse(text, seconds):
    assert tokens.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "-5m", "1.5h", "0s", "ten minutes", "99999d"])
def test_bad_durations_are_value_errors_that_show_the_forms(text):
    with pytest.raises(ValueError):
        tokens.parse_duration(text)


def test_format_duration_reads_like_kubectl():
    assert tokens.format_duration(timedelta(minutes=9, seconds=58)) == "9m58s"
    assert tokens.format_duration(timedelta(hours=2, seconds=5)) == "2h0m5s"
    assert tokens.format_duration(timedelta(seconds=-62)) == "-1m2s"


# --- decode -------------------------------------------------------------------------------------


def test_decode_shows_header_and_claims_and_a_passing_verdict():
    key = f.private_key("rsa", "sa")
    report = tokens.decode_token(mint(key), config_for(key), NOW)
    assert report.header["alg"] == "RS256" and report.claims["sub"].endswith(":bot")
    verdict = tokens.render_verdict(report, "pki/service-account.pem", NOW)
    assert verdict.startswith("signature: OK (RS256) against pki/service-account.pem; iss: OK; aud: OK; "
                              "exp: OK (expires in 10m0s)")
    # a real server also looks the ServiceAccount up (pkg/serviceaccount/claims.go): say so
    uid = tokens.service_account_uid("authn-demo", "bot")
    assert verdict.endswith(" => the API server accepts it as system:serviceaccount:authn-demo:bot if "
                            f"ServiceAccount authn-demo/bot exists with uid {uid} (it looks the account "
                            "up; k8sboot cannot, offline)")


def test_decode_of_a_foreign_expired_token_says_each_check_that_fails():
    key = f.private_key("rsa", "sa")
    token = mint(f.private_key("rsa", "other"), issuer="https://evil", audiences=["vault"])
    report = tokens.decode_token(token, config_for(key), NOW + timedelta(hours=1))
    verdict = tokens.render_verdict(report, "pki/service-account.pem", NOW + timedelta(hours=1))
    for fragment in ("signature: FAILED", "iss: FAILED", "aud: FAILED", "exp/nbf: FAILED",
                     "would answer 401", "token kid"):
        assert fragment in verdict
    assert token not in verdict


def test_decode_without_config_only_decodes():
    report = tokens.decode_token(mint(), None, NOW)
    assert report.inspection is None
    assert "not checked" in tokens.render_verdict(report, "x", NOW)
    assert json.loads(report.render_json().split("\n}\n", 1)[0] + "\n}")["alg"] == "RS256"


@pytest.mark.parametrize("garbage", ["hello", "a.b", "!!.??.**", ""])
def test_decode_of_garbage_is_a_token_error(garbage):
    with pytest.raises(TokenError, match="decoding the token"):
        tokens.decode_token(garbage, None, NOW)
