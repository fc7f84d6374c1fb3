"""authn with a ServiceAccount store: tokens pass only as upstream's validator passes them after
its lookups (k8s.io/kubernetes pkg/serviceaccount/claims.go). The expected messages are upstream's
errors: the client's NotFound (`serviceaccounts "bot" not found`), `service account UID (x) does
not match claim (y)`, and `service account token has been invalidated` for a bound object that is
not found. The 401 body stays the real server's generic one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/authn_factory.py

import authn_factory as f  # noqa: E402
from authn_factory import ISSUER, NOW  # noqa: E402

from k8sboot import authn  # noqa: E402
from k8sboot.authn import AuthenticatorConfig, Reason  # noqa: E402

UID = "11ce93d6-5b3c-4a57-9d1e-3f4f0a6b2c11"


@pytest.fixture(scope="module")
def config():
    return AuthenticatorConfig(service_account_keys=(f.private_key("rsa", "sa").public_key(),),
                               service_account_issuers=(ISSUER,), anonymous_auth=True)


def store(**accounts: str):
    """A lookup over {"ns/name": uid}, recording what it was asked."""
    asked: list[tuple[str, str]] = []

    def lookup(namespace: str, name: str) -> str | None:
        asked.append((namespace, name))
        return accounts.get(f"{namespace}/{name}")

    lookup.asked = asked        # type: ignore[attr-defined]
    return lookup


BOT = {"authn-demo/bot": UID}


def test_token_of_a_stored_service_account_with_its_uid_is_accepted(config):
    lookup = store(**BOT)
    result = authn.authenticate_token(f.sign_token(f.sa_claims(uid=UID)), config, NOW,
                                      service_accounts=lookup)
    assert result.authenticated and result.user.username == "system:serviceaccount:authn-demo:bot"
    assert result.user.uid == UID
    assert lookup.asked == [("authn-demo", "bot")]


def test_token_of_a_missing_service_account_is_401_not_found_like_upstream(config):
    result = authn.authenticate_token(f.sign_token(f.sa_claims(uid=UID)), config, NOW,
                                      service_accounts=store())
    assert not result.authenticated
    assert result.reason_code is Reason.TOKEN_SERVICE_ACCOUNT_NOT_FOUND
    assert result.reason.startswith('serviceaccounts "bot" not found')
    assert result.status()["message"] == "Unauthorized"
    assert "details" not in result.status()


def test_token_whose_uid_differs_from_the_stored_account_is_401_uid_mismatch(config):
    other = "0a0a0a0a-0000-4000-8000-000000000000"
    result = authn.authenticate_token(f.sign_token(f.sa_claims(uid=UID)), config, NOW,
                                      service_accounts=store(**{"authn-demo/bot": other}))
    assert result.reason_code is Reason.TOKEN_SERVICE_ACCOUNT_UID_MISMATCH
    assert result.reason.startswith(f"service account UID ({other}) does not match claim ({UID})")


def test_token_without_a_service_account_uid_does_not_match_a_stored_account(config):
    claims = f.sa_claims()
    del claims["kubernetes.io"]["serviceaccount"]["uid"]
    result = authn.authenticate_token(f.sign_token(claims), config, NOW, service_accounts=store(**BOT))
    assert result.reason_code is Reason.TOKEN_SERVICE_ACCOUNT_UID_MISMATCH
    assert f"service account UID ({UID}) does not match claim ()" in result.reason


@pytest.mark.parametrize("bound, shown", [
    ({"pod": {"name": "web-0", "uid": "p"}}, "Pod authn-demo/web-0"),
    ({"secret": {"name": "bot-token", "uid": "s"}}, "Secret authn-demo/bot-token"),
    ({"node": {"name": "worker-0", "uid": "n"}}, "Node worker-0"),
    ({"pod": {"name": "web-0", "uid": "p"}, "node": {"name": "worker-0", "uid": "n"}}, "Pod authn-demo/web-0"),
    ({"secret": {"name": "t", "uid": "s"}, "pod": {"name": "web-0", "uid": "p"}}, "Secret authn-demo/t"),
])
def test_token_bound_to_an_object_that_is_not_stored_is_invalidated(config, bound, shown):
    claims = f.sa_claims(uid=UID)
    claims["kubernetes.io"].update(bound)
    result = authn.authenticate_token(f.sign_token(claims), config, NOW, service_accounts=store(**BOT))
    assert result.reason_code is Reason.TOKEN_INVALIDATED
    assert result.reason.startswith("service account token has been invalidated")
    assert shown in result.reason


def test_bound_object_is_checked_only_after_the_service_account(config):
    claims = f.sa_claims(uid=UID)
    claims["kubernetes.io"]["pod"] = {"name": "web-0", "uid": "p"}
    result = authn.authenticate_token(f.sign_token(claims), config, NOW, service_accounts=store())
    assert result.reason_code is Reason.TOKEN_SERVICE_ACCOUNT_NOT_FOUND


def test_without_a_lookup_the_offline_decision_is_unchanged(config):
    claims = f.sa_claims(uid=UID)
    claims["kubernetes.io"]["pod"] = {"name": "web-0", "uid": "p"}
    assert authn.authenticate_token(f.sign_token(claims), config, NOW).authenticated


def test_lookup_is_not_consulted_for_a_token_that_already_failed(config):
    lookup = store(**BOT)
    token = f.sign_token(f.sa_claims(uid=UID), f.private_key("rsa", "other"))
    result = authn.authenticate_token(token, config, NOW, service_accounts=lookup)
    assert result.reason_code is Reason.TOKEN_BAD_SIGNATURE and lookup.asked == []


def test_request_with_a_token_of_a_deleted_account_is_401_even_with_anonymous_on(config):
    result = authn.authenticate_request(None, "Bearer " + f.sign_token(f.sa_claims(uid=UID)), config,
                                        NOW, service_accounts=store())
    assert not result.authenticated and result.reason_code is Reason.TOKEN_SERVICE_ACCOUNT_NOT_FOUND


def test_request_passes_the_lookup_to_the_token_authenticator(config):
    result = authn.authenticate_request(None, "Bearer " + f.sign_token(f.sa_claims(uid=UID)), config,
                                        NOW, service_accounts=store(**BOT))
    assert result.authenticated and result.authenticator == "serviceaccount"
