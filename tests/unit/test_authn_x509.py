"""authn's x509 decisions that Go's crypto/x509 makes, checked without the Go toolchain. Expected
texts are Go's own errors (crypto/x509 verify.go, x509.go, constraints.go); test_go_oracle.py asks
Go itself about the same certificates when a toolchain is installed."""

from __future__ import annotations

import ipaddress
import sys
from datetime import timedelta
from pathlib import Path

from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent))       # the corpus builder

from test_go_oracle import NOW, ROOT, UNKNOWN_CRITICAL, _inter, _root, issue, leaf  # noqa: E402

from k8sboot import authn  # noqa: E402
from k8sboot.authn import AuthenticatorConfig, Reason  # noqa: E402


def judge(chain, roots=(ROOT,)):
    config = AuthenticatorConfig(client_ca=tuple(r.cert for r in roots), anonymous_auth=True)
    return authn.authenticate_cert(chain[0].der, config, NOW, intermediates_der=[c.der for c in chain[1:]])


def test_sha1_signed_system_masters_cert_is_refused_as_go_refuses_it():
    result = judge([leaf(cn="old-admin", sign_hash="sha1")])
    assert not result.authenticated and result.reason_code is Reason.CERT_UNKNOWN_AUTHORITY
    assert ('x509: certificate signed by unknown authority (possibly because of "x509: cannot verify '
            'signature: insecure algorithm SHA1-RSA" while trying to verify candidate authority certificate '
            '"Kubernetes")') in result.reason


def test_sha1_signed_cert_is_401_even_with_anonymous_auth_on():
    result = authn.authenticate_request(leaf(sign_hash="sha1").der, None,
                                        AuthenticatorConfig(client_ca=(ROOT.cert,), anonymous_auth=True), NOW)
    assert not result.authenticated and result.status()["code"] == 401


def test_md5_signed_cert_is_refused():
    assert "insecure algorithm MD5-RSA" in judge([leaf(sign_hash="md5")]).reason


def test_unhandled_critical_extension_is_reported_before_expiry():
    result = judge([leaf(extra=[UNKNOWN_CRITICAL], not_after=NOW - timedelta(days=1))])
    assert result.reason_code is Reason.CERT_UNHANDLED_CRITICAL_EXTENSION
    assert result.reason.endswith(": x509: unhandled critical extension")


def test_validity_is_checked_before_the_chain():
    result = judge([leaf(_root("Other CA"), not_after=NOW - timedelta(days=1))])
    assert result.reason_code is Reason.CERT_EXPIRED


def test_dns_san_outside_the_cas_name_constraints_is_refused():
    root = _root("Constrained", name_constraints=x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None))
    assert judge([leaf(root, sans=[x509.DNSName("a.example.com")])], (root,)).authenticated
    result = judge([leaf(root, sans=[x509.DNSName("example.com.evil.test")])], (root,))
    assert result.reason_code is Reason.CERT_NAME_NOT_AUTHORIZED
    assert result.reason.endswith('x509: a root or intermediate certificate is not authorized to sign for this '
                                  'name: DNS name "example.com.evil.test" is not permitted by any constraint')


def test_leading_period_dns_constraint_needs_a_subdomain():
    root = _root("Dotted", name_constraints=x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(".example.com")], excluded_subtrees=None))
    assert judge([leaf(root, sans=[x509.DNSName("a.example.com")])], (root,)).authenticated
    assert not judge([leaf(root, sans=[x509.DNSName("example.com")])], (root,)).authenticated


def test_excluded_ip_range_refuses_an_ip_san_inside_it():
    root = _root("NoTen", name_constraints=x509.NameConstraints(
        permitted_subtrees=None, excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))]))
    result = judge([leaf(root, sans=[x509.IPAddress(ipaddress.ip_address("10.9.9.9"))])], (root,))
    assert 'IP address "10.9.9.9" is excluded by constraint "10.0.0.0/8"' in result.reason


def test_path_length_exceeded_is_gos_error_naming_the_ca():
    root = _root("PathLen0", path_length=0)
    inter = _inter("under-pathlen0", root)
    result = judge([leaf(inter), inter], (root,))
    assert result.reason_code is Reason.CERT_CHAIN_INVALID
    assert "x509: too many intermediates for path length constraint" in result.reason
    assert 'authority certificate "PathLen0"' in result.reason


def test_critical_subject_key_identifier_is_malformed_as_go_cannot_parse_it():
    result = judge([leaf(extra=[(x509.SubjectKeyIdentifier(b"\x01" * 20), True)])])
    assert result.reason_code is Reason.CERT_MALFORMED
    assert "x509: subject key identifier incorrectly marked critical" in result.reason


def test_ed25519_issued_chain_and_a_presented_intermediate_twice_still_verify():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    root = issue("Ed root", ca=True, key=ed25519.Ed25519PrivateKey.generate())
    inter = issue("Ed inter", root, ca=True, key=ed25519.Ed25519PrivateKey.generate())
    assert judge([leaf(inter), inter, inter], (root,)).authenticated
