"""The lab's OIDC identity provider (`k8sboot lab up --idp`, k8sboot/lab/idp.py) without root or
a lab: idp-0's place in the address plan, the idp's keys and their modes, the JWKS checked against
RFC 7638 as the RFC defines the thumbprint (and its own example) and loaded by PyJWT, the ID tokens
`lab idp token` mints, the discovery document, nginx's config checked and served by the real nginx
(Debian's, installed by `make deps`), the CEL library copied into the lab's root and imported by
Debian's /usr/bin/python3, and the inventory section."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from typer.testing import CliRunner

from k8sboot.cli import app
from k8sboot.errors import ExitCode, LabError
from k8sboot.lab import hosts, idp, plan, rootfs
from k8sboot.lab.plan import RootfsRecipe, build_host_specs, build_lab_plan
from k8sboot.lab.state import HostRecord, LabState

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
needs_nginx = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (make deps installs it)")
SYSTEM_PYTHON = "/usr/bin/python3"
ISSUER = "https://10.240.0.2"
runner = CliRunner()


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> idp.IdpMaterial:
    return idp.ensure_material(tmp_path_factory.mktemp("idp") / "idp")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rfc7638_rsa_thumbprint(e: str, n: str) -> str:
    """RFC 7638 section 3: the required members of an RSA key, e, kty, n, in lexicographic order,
    no whitespace; SHA-256; base64url without padding. Written out here, not imported."""
    members = '{"e":"' + e + '","kty":"RSA","n":"' + n + '"}'
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode("utf-8")).digest()).decode().rstrip("=")


# --- the address plan ----------------------------------------------------------------------------


def test_idp_0_is_at_2_below_the_lb_and_no_other_host_moves():
    specs = build_host_specs(3, 1, 1, 1)
    assert [(h.name, h.role, h.address) for h in specs] == [
        ("idp-0", "idp", "10.240.0.2"), ("lb-0", "lb", "10.240.0.5"), ("controller-0", "controller", "10.240.0.10"),
        ("controller-1", "controller", "10.240.0.11"), ("controller-2", "controller", "10.240.0.12"),
        ("worker-0", "worker", "10.240.0.13")]
    assert specs[1:] == build_host_specs(3, 1, 1) and specs[2:] == build_host_specs(3, 1)
    h = specs[0]
    assert (h.veth, h.netns, h.machine, h.mac) == ("k8sbv2", "k8sb-idp-0", "k8sb-idp-0", "02:00:0a:f0:00:02")
    assert str(plan.GATEWAY) == "10.240.0.1" != h.address
    addrs = [x.address for x in build_host_specs(plan.MAX_HOSTS, 0, plan.MAX_LBS, plan.MAX_IDPS)]
    assert len(set(addrs)) == len(addrs) and str(plan.GATEWAY) not in addrs
    assert plan.parse_nspawn_machine(plan.build_nspawn_argv(h)) == "k8sb-idp-0"
    assert "idp-0" in plan.__doc__ and "10.240.0.2" in plan.__doc__       # the network rule says so


@pytest.mark.parametrize("idps", [-1, plan.MAX_IDPS + 1])
def test_impossible_idp_counts_are_refused(idps):
    with pytest.raises(ValueError, match="identity provider"):
        build_host_specs(1, 0, 0, idps)


def test_up_with_idp_only_starts_idp_0_and_up_without_it_only_stops_idp_0():
    without = build_host_specs(3, 0, 1)
    with_idp = build_host_specs(3, 0, 1, 1)
    p = build_lab_plan(with_idp, {h.name: h for h in without})
    assert [h.name for h in p.start] == ["idp-0"] and not p.stop and len(p.keep) == 4
    p = build_lab_plan(without, {h.name: h for h in with_idp})
    assert [h.name for h in p.stop] == ["idp-0"] and not p.start and len(p.keep) == 4
    assert build_lab_plan(with_idp, {h.name: h for h in with_idp}).changes_nothing


def test_nginx_is_in_every_root_disabled_and_enabled_only_on_idp_0():
    r = RootfsRecipe()
    assert "nginx" in r.packages
    assert "nginx.service" in r.disable and "nginx.service" not in r.enable + r.mask
    link = ("/etc/systemd/system/multi-user.target.wants/nginx.service", "/lib/systemd/system/nginx.service")
    i, lb, c0, w0 = build_host_specs(1, 1, 1, 1)
    assert plan.ROLE_LINKS.get(i.role) == (link,)
    for other in (lb, c0, w0):
        assert link not in plan.ROLE_LINKS.get(other.role, ())
    assert plan.build_role_files(i) == ()        # no stand-in drop-ins on idp-0


def test_prepare_root_puts_no_stand_in_on_idp_0_and_its_files_with_their_modes(tmp_path, monkeypatch, material):
    """prepare_root on a plain directory (the overlay mount stubbed): idp-0 gets nginx's config,
    the serving pair (key 0600), the two documents and nginx's link, and no kube-apiserver."""
    spec = plan.host_spec("idp", 0, 0)
    root = tmp_path / "root"
    (root / "root").mkdir(parents=True)          # what the lower root has
    monkeypatch.setattr(plan, "HOSTS_DIR", tmp_path)
    monkeypatch.setattr(hosts.mounts, "is_mountpoint", lambda p: True)
    monkeypatch.setattr(type(spec), "root", property(lambda self: root))
    monkeypatch.setattr(type(spec), "dir", property(lambda self: tmp_path))
    old = os.umask(0o077)            # a strict umask must not hide the documents from nginx's workers
    try:
        hosts.prepare_root(spec, tmp_path / "lower", "ssh-ed25519 AAAA test", {"standin/x.py": b""},
                           extra_files=idp.host_files(material))
    finally:
        os.umask(old)
    assert not (root / "usr/local/bin/kube-apiserver").exists()
    assert not (root / plan.STANDIN_LIB.lstrip("/")).exists()
    mode = lambda p: (root / p.lstrip("/")).stat().st_mode & 0o777     # noqa: E731
    assert mode(idp.TLS_KEY) == 0o600 and mode(idp.TLS_CERT) == 0o644 and mode(idp.NGINX_CONF) == 0o644
    assert mode(idp.WEB_ROOT + idp.DISCOVERY_PATH) == 0o644 and mode(idp.WEB_ROOT + idp.JWKS_PATH) == 0o644
    for d in (idp.WEB_ROOT, idp.WEB_ROOT + "/.well-known", idp.WEB_ROOT + "/openid", idp.WEB_ROOT + "/openid/v1"):
        assert mode(d) == 0o755, d
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/nginx.service") == \
        "/lib/systemd/system/nginx.service"
    assert json.loads((root / (idp.WEB_ROOT + idp.JWKS_PATH).lstrip("/")).read_text()) == material.jwks


# --- the keys on this machine --------------------------------------------------------------------


def test_keys_are_0600_from_the_moment_they_exist_and_made_only_once(tmp_path, monkeypatch):
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    d = tmp_path / "idp"
    m = idp.ensure_material(d)
    monkeypatch.setattr(os, "open", real_open)
    assert set(m.created) == {"ca.pem", "ca-key.pem", "signing-key.pem", "jwks.json", "serving.pem", "serving-key.pem"}
    assert d.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
    assert modes == {"ca.pem": 0o644, "ca-key.pem": 0o600, "signing-key.pem": 0o600, "jwks.json": 0o644,
                     "serving.pem": 0o644, "serving-key.pem": 0o600}
    for name in ("ca-key.pem", "signing-key.pem", "serving-key.pem"):
        made = [(f, mode) for p, f, mode in opened if Path(p).name.startswith(f".{name}.")]
        assert made and all(f & os.O_CREAT and f & os.O_EXCL and mode == 0o600 for f, mode in made), (name, made)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    again = idp.ensure_material(d)
    assert again.created == () and again.kid == m.kid
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    os.chmod(d / "signing-key.pem", 0o644)                    # loosened by someone: tightened again
    idp.ensure_material(d)
    assert (d / "signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_the_signing_key_is_rsa_2048_and_the_ca_key_never_leaves_this_machine(material):
    signing = load_pem_private_key((material.directory / "signing-key.pem").read_bytes(), None)
    assert signing.key_size == 2048
    secrets = [(material.directory / n).read_bytes() for n in ("ca-key.pem", "signing-key.pem")]
    files = idp.host_files(material)
    assert sorted(p for p, _, _ in files) == sorted([
        "/etc/nginx/nginx.conf", "/etc/nginx/k8sboot-idp/tls.crt", "/etc/nginx/k8sboot-idp/tls.key",
        "/var/www/k8sboot-idp/.well-known/openid-configuration", "/var/www/k8sboot-idp/openid/v1/jwks"])
    for _, _, content in files:
        for secret in secrets:
            assert secret not in content
            assert b"PRIVATE KEY" not in content or content == material.serving_key_pem


def test_a_serving_cert_of_another_ca_or_address_is_replaced(tmp_path):
    d = tmp_path / "idp"
    first = idp.ensure_material(d)
    (d / "ca.pem").unlink()                                   # a new CA: the serving cert must follow
    second = idp.ensure_material(d)
    assert {"ca.pem", "ca-key.pem", "serving.pem", "serving-key.pem"} <= set(second.created)
    assert "signing-key.pem" not in second.created and second.kid == first.kid
    later = dt.datetime.now(dt.timezone.utc) + idp.SERVING_VALIDITY - dt.timedelta(days=1)
    third = idp.ensure_material(d, now=later)                 # about to expire: renewed
    assert set(third.created) == {"serving.pem", "serving-key.pem"}


def test_the_serving_cert_is_the_cas_with_the_ip_san_and_python_ssl_accepts_it_for_that_ip_only(material):
    ca = x509.load_pem_x509_certificate(material.ca_pem)
    cert = x509.load_pem_x509_certificate(material.serving_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.240.0.2"]
    # a real TLS handshake on loopback, the client asking for 10.240.0.2 (hostname check on the IP SAN)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(material.directory / "serving.pem", material.directory / "serving-key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = ssl.create_default_context(cafile=str(material.ca_file))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client.wrap_socket(raw, server_hostname="10.240.0.2") as s:
            assert s.getpeercert()["subjectAltName"][0] == ("IP Address", "10.240.0.2")
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            client.wrap_socket(raw, server_hostname="10.240.0.3")
    t.join(5)
    listener.close()


# --- the JWKS and the discovery document ---------------------------------------------------------


def test_the_thumbprint_matches_rfc_7638s_own_example():
    # RFC 7638 section 3.1: this RSA key's thumbprint is NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
         "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
         "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
         "kEgU8awapJzKnqDKgw")
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert idp.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert rfc7638_rsa_thumbprint("AQAB", n) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_jwks_is_one_rs256_signing_key_whose_kid_is_its_rfc_7638_thumbprint(material):
    jwks = json.loads((material.directory / "jwks.json").read_text())
    assert jwks == material.jwks and list(jwks) == ["keys"] and len(jwks["keys"]) == 1
    key = jwks["keys"][0]
    assert set(key) == {"kty", "n", "e", "use", "alg", "kid"}          # no private member (d, p, q, ...)
    assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    assert "=" not in key["n"] + key["e"] and key["e"] == "AQAB"
    assert key["kid"] == rfc7638_rsa_thumbprint(key["e"], key["n"]) == material.kid
    public = load_pem_private_key((material.directory / "signing-key.pem").read_bytes(), None).public_key()
    assert int.from_bytes(b64url_decode(key["n"]), "big") == public.public_numbers().n
    assert b64url_decode(key["n"])[0] != 0                             # RFC 7518 6.3.1.1: no leading zero
    keyset = jwt.PyJWKSet.from_dict(jwks)
    assert keyset[material.kid].key_id == material.kid and keyset[material.kid].algorithm_name == "RS256"


def test_the_discovery_document_names_the_issuer_and_its_jwks(material):
    doc = material.discovery
    assert doc["issuer"] == ISSUER == idp.default_issuer()
    assert doc["jwks_uri"] == "https://10.240.0.2/openid/v1/jwks"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["response_types_supported"] and doc["subject_types_supported"] == ["public"]
    path = dict((p, c) for p, _, c in idp.host_files(material))["/var/www/k8sboot-idp/.well-known/openid-configuration"]
    assert json.loads(path) == doc


# --- ID tokens -----------------------------------------------------------------------------------


def verify(token: str, material, **kw) -> dict:
    keyset = jwt.PyJWKSet.from_dict(material.jwks)
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, keyset[kid].key, algorithms=["RS256"], issuer=ISSUER,
                      audience=kw.pop("audience", "k8sboot-lab"), **kw)


def test_a_minted_token_verifies_with_the_jwks_and_carries_the_claims(material):
    token = idp.mint_token("alice", directory=material.directory, email="alice@example.com", groups=["dev", "ops"],
                           claims={"hd": "example.com"})
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": material.kid, "typ": "JWT"}
    claims = verify(token, material)
    assert claims["sub"] == "alice" and claims["iss"] == ISSUER and claims["aud"] == "k8sboot-lab"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["groups"] == ["dev", "ops"] and claims["hd"] == "example.com"
    assert claims["iat"] == claims["nbf"] and claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 5


def test_an_expired_token_fails_exp_and_a_future_one_fails_nbf(material):
    expired = idp.mint_token("bob", directory=material.directory, expired=True)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(expired, material)
    claims = verify(expired, material, options={"verify_exp": False})        # only exp is wrong
    assert claims["exp"] < time.time() - 60
    later = idp.mint_token("bob", directory=material.directory,
                           not_before=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10))
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(later, material)


def test_another_key_or_audience_does_not_verify(material, tmp_path):
    other = idp.ensure_material(tmp_path / "other")
    token = idp.mint_token("eve", directory=other.directory)
    keyset = jwt.PyJWKSet.from_dict(material.jwks)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, keyset[material.kid].key, algorithms=["RS256"], audience="k8sboot-lab")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(idp.mint_token("eve", directory=material.directory, audiences=("other",)), material)


def test_build_claims_audiences_email_verified_and_claims_that_win():
    now = dt.datetime(2026, 12, 5, 7, 0, tzinfo=dt.timezone.utc)
    c = idp.build_claims("s", audiences=("a", "b"), now=now, ttl=dt.timedelta(hours=1))
    assert c == {"iss": ISSUER, "sub": "s", "aud": ["a", "b"], "iat": 1796454000, "nbf": 1796454000,
                 "exp": 1796457600}
    assert "email_verified" not in c and "email" not in c and "groups" not in c
    assert idp.build_claims("s", email="x@y", email_verified=False, now=now)["email_verified"] is False
    assert idp.build_claims("s", email_verified=True, now=now)["email_verified"] is True
    assert idp.build_claims("s", groups=[], now=now)["groups"] == []
    assert idp.build_claims("s", claims={"iss": "https://evil"}, now=now)["iss"] == "https://evil"
    assert idp.build_claims("s", issuer="https://x.example", now=now)["iss"] == "https://x.example"
    for bad in ({"sub": ""}, {"audiences": ()}):
        with pytest.raises(ValueError):
            idp.build_claims(**{"sub": "s", **bad})


def test_claim_and_time_parsing():
    assert idp.parse_claim("n=3") == ("n", 3)
    assert idp.parse_claim('roles=["a","b"]') == ("roles", ["a", "b"])
    assert idp.parse_claim("ok=true") == ("ok", True)
    assert idp.parse_claim("team=blue") == ("team", "blue")
    assert idp.parse_claim("url=https://a=b") == ("url", "https://a=b")
    with pytest.raises(ValueError):
        idp.parse_claim("novalue")
    now = dt.datetime(2026, 12, 5, 7, 0, tzinfo=dt.timezone.utc)
    assert idp.parse_time("10m", now) == now + dt.timedelta(minutes=10) == idp.parse_time("+10m", now)
    assert idp.parse_time("-5m", now) == now - dt.timedelta(minutes=5)
    assert idp.parse_time("1796454000", now) == now
    assert idp.parse_time("2026-12-05T08:00:00Z", now) == now + dt.timedelta(hours=1)
    for bad in ("soon", "2026-12-05T08:00:00"):
        with pytest.raises(ValueError):
            idp.parse_time(bad, now)


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def lab_with_idp(monkeypatch, material):
    """The CLI sees a lab whose state records a live idp-0 and whose keys are `material`'s."""
    spec = plan.host_spec("idp", 0, 0)
    state = LabState(hosts={"idp-0": HostRecord(spec=spec, pid=os.getpid(), starttime=None)})
    monkeypatch.setattr("k8sboot.lab.state.load_state", lambda *a, **kw: state)
    monkeypatch.setattr(plan, "IDP_DIR", material.directory)
    return material


def test_lab_idp_token_without_an_idp_is_one_line_and_exit_code_lab(monkeypatch):
    monkeypatch.setattr("k8sboot.lab.state.load_state", lambda *a, **kw: LabState())
    for args in (["lab", "idp", "token", "--sub", "alice"], ["lab", "idp", "show"]):
        result = runner.invoke(app, args)
        assert result.exit_code == ExitCode.LAB == 15, result.output
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert lines == ["k8sboot: error: the lab has no identity provider: bring it up with "
                         "`sudo k8sboot lab up --idp`"]


def test_lab_idp_token_prints_only_a_token_that_verifies(lab_with_idp):
    m = lab_with_idp
    result = runner.invoke(app, ["lab", "idp", "token", "--sub", "alice", "--email", "alice@example.com",
                                 "--groups", "dev,ops", "--aud", "k8sboot-lab", "--aud", "other",
                                 "--claim", "level=3", "--claim", "team=blue", "--ttl", "1h"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    claims = verify(token, m)
    assert claims["aud"] == ["k8sboot-lab", "other"] and claims["groups"] == ["dev", "ops"]
    assert claims["level"] == 3 and claims["team"] == "blue" and claims["exp"] - claims["nbf"] == 3600
    assert claims["email_verified"] is True
    no = runner.invoke(app, ["lab", "idp", "token", "--sub", "a", "--email", "a@x", "--no-email-verified"])
    assert verify(no.stdout.strip(), m)["email_verified"] is False


def test_lab_idp_token_json_expired_and_not_before(lab_with_idp):
    m = lab_with_idp
    result = runner.invoke(app, ["lab", "idp", "token", "--sub", "bob", "--json", "--expired"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"token", "claims"} and out["claims"]["sub"] == "bob"
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(out["token"], m)
    assert verify(out["token"], m, options={"verify_exp": False}) == out["claims"]
    later = runner.invoke(app, ["lab", "idp", "token", "--sub", "bob", "--not-before", "10m"]).stdout.strip()
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(later, m)
    other = runner.invoke(app, ["lab", "idp", "token", "--sub", "bob", "--issuer", "https://elsewhere"]).stdout.strip()
    with pytest.raises(jwt.InvalidIssuerError):
        verify(other, m)
    for bad in (["--ttl", "soon"], ["--not-before", "whenever"], ["--claim", "x"]):
        r = runner.invoke(app, ["lab", "idp", "token", "--sub", "bob", *bad])
        assert r.exit_code == ExitCode.USAGE and r.stdout == "", r.output


def test_lab_idp_show_prints_issuer_ca_kid_and_the_inventory_snippet(lab_with_idp):
    m = lab_with_idp
    result = runner.invoke(app, ["lab", "idp", "show"])
    assert result.exit_code == 0, result.output
    assert "https://10.240.0.2" in result.stdout and str(m.ca_file) in result.stdout and m.kid in result.stdout
    snippet = result.stdout[result.stdout.index("authentication:"):]
    assert snippet == (
        "authentication:\n"
        "  jwt:\n"
        "    - issuer:\n"
        "        url: https://10.240.0.2\n"
        "        audiences: [k8sboot-lab]\n"
        f"        certificateAuthorityFile: {m.ca_file}\n"
        "      claimMappings:\n"
        '        username: {claim: email, prefix: ""}\n'
        '        groups: {claim: groups, prefix: "oidc:"}\n')
    as_json = json.loads(runner.invoke(app, ["lab", "idp", "show", "--json"]).stdout)
    assert as_json["kid"] == m.kid and as_json["certificate_authority_file"] == str(m.ca_file)
    assert yaml.safe_load(as_json["inventory"]) == {"authentication": {"jwt": [{
        "issuer": {"url": "https://10.240.0.2", "audiences": ["k8sboot-lab"],
                   "certificateAuthorityFile": str(m.ca_file)},
        "claimMappings": {"username": {"claim": "email", "prefix": ""},
                          "groups": {"claim": "groups", "prefix": "oidc:"}}}]}}


# --- the inventory -------------------------------------------------------------------------------


def test_the_inventory_names_the_idp_with_lab_up_idp_only(monkeypatch):
    from k8sboot.inventory import parse_inventory

    with_idp = build_host_specs(3, 0, 1, 1)
    ca = Path("/var/lib/k8sboot/lab/idp/ca.pem")
    assert plan.INVENTORY_AUTHENTICATION is True
    monkeypatch.setattr(plan, "INVENTORY_AUTHENTICATION", False)
    text = plan.render_lab_inventory(with_idp, idp_ca=ca)
    assert text == plan.render_lab_inventory(build_host_specs(3, 0, 1))     # idp-0 is in no host list
    assert "10.240.0.2" not in text and "authentication" not in text
    inv = parse_inventory(text, "lab.yaml")
    assert [h.name for h in inv.controllers] == ["controller-0", "controller-1", "controller-2"]
    monkeypatch.setattr(plan, "INVENTORY_AUTHENTICATION", True)
    on = plan.render_lab_inventory(with_idp, idp_ca=ca)
    assert on == text + plan.render_idp_authentication("https://10.240.0.2", ca)
    assert yaml.safe_load(on)["authentication"]["jwt"][0]["issuer"]["certificateAuthorityFile"] == str(ca)
    assert plan.render_lab_inventory(build_host_specs(3, 0, 1), idp_ca=ca) == text    # no idp: no section


# --- nginx, for real -------------------------------------------------------------------------------


def nginx_site(tmp_path: Path, material, cert: Path | None = None, key: Path | None = None,
               listen: str = "127.0.0.1:0", user: str = "root") -> Path:
    """idp-0's files laid out under `tmp_path` and its nginx.conf pointing at them."""
    files = dict((p, c) for p, _, c in idp.host_files(material))
    site = tmp_path / "www"
    for p in (idp.DISCOVERY_PATH, idp.JWKS_PATH):
        dest = site / p.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(files[idp.WEB_ROOT + p])
    (tmp_path / "tls.crt").write_bytes(files[idp.TLS_CERT])
    (tmp_path / "tls.key").write_bytes(files[idp.TLS_KEY])
    (tmp_path / "temp").mkdir(exist_ok=True)
    conf = idp.render_nginx_conf(cert=str(cert or tmp_path / "tls.crt"), key=str(key or tmp_path / "tls.key"),
                                 root=str(site), pid=str(tmp_path / "nginx.pid"),
                                 error_log=str(tmp_path / "error.log"), access_log=str(tmp_path / "access.log"),
                                 temp_dir=str(tmp_path / "temp"), user=user, listen=listen)
    (tmp_path / "nginx.conf").write_text(conf)
    return tmp_path / "nginx.conf"


def nginx_t(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-c", str(conf), "-e", str(conf.parent / "error.log")],
                          capture_output=True, text=True, timeout=30)


@needs_nginx
def test_idp_0s_nginx_conf_passes_the_real_nginx_t_and_a_wrong_key_fails_it(tmp_path, material):
    default = idp.render_nginx_conf()
    assert "listen 443 ssl;" in default and "ssl_certificate /etc/nginx/k8sboot-idp/tls.crt;" in default
    assert "root /var/www/k8sboot-idp;" in default and "default_type application/json;" in default
    good = nginx_t(nginx_site(tmp_path / "good", material, listen="127.0.0.1:8443"))
    assert good.returncode == 0 and "test is successful" in good.stderr, good.stderr
    other = idp.ensure_material(tmp_path / "other")
    wrong = nginx_site(tmp_path / "wrong", material, key=other.directory / "serving-key.pem", listen="127.0.0.1:8443")
    bad = nginx_t(wrong)
    assert bad.returncode != 0 and "key values mismatch" in bad.stderr, bad.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_nginx
def test_the_real_nginx_serves_both_documents_as_json_and_nothing_else(tmp_path, material):
    if os.geteuid() != 0:
        pytest.skip("runs nginx as root (its config names `user root`)")
    port = free_port()
    conf = nginx_site(tmp_path, material, listen=f"127.0.0.1:{port}")
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-e", str(tmp_path / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=str(material.ca_file))
        ctx.check_hostname = False        # dialled on 127.0.0.1; the IP SAN check is the test above
        got = {}
        for path in (idp.DISCOVERY_PATH, idp.JWKS_PATH, "/", "/openid/v1/jwks.json", "/.well-known/"):
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
            c.request("GET", path)
            r = c.getresponse()
            got[path] = (r.status, r.getheader("Content-Type"), r.read())
            c.close()
        assert got[idp.DISCOVERY_PATH][:2] == (200, "application/json")
        assert json.loads(got[idp.DISCOVERY_PATH][2]) == material.discovery
        assert got[idp.JWKS_PATH][:2] == (200, "application/json")
        assert json.loads(got[idp.JWKS_PATH][2]) == material.jwks
        assert [got[p][0] for p in ("/", "/openid/v1/jwks.json", "/.well-known/")] == [404, 404, 404]
    finally:
        proc.terminate()
        proc.wait(10)


# --- the CEL library in the lab's root -----------------------------------------------------------


def test_the_recipe_hash_includes_the_cel_expr_python_version():
    r = rootfs.current_recipe()
    version = rootfs.vendored_package_dir()[0]
    assert r.vendored == (("cel-expr-python", version),)
    assert f'"vendored":[["cel-expr-python","{version}"]]' in r.to_json()
    assert replace(r, vendored=(("cel-expr-python", version + ".post1"),)).hash != r.hash
    assert r.hash != RootfsRecipe().hash


def test_the_launcher_puts_the_vendored_packages_on_the_stand_ins_path():
    lines = plan.STANDIN_LAUNCHER.splitlines()
    lib = lines.index('sys.path.insert(0, "/usr/local/lib/k8sboot-standin")')
    assert lines[lib + 1].startswith(f'sys.path.insert(1, "{plan.STANDIN_DEPS}")')
    assert plan.STANDIN_DEPS == "/usr/local/lib/k8sboot-standin-deps"


def test_only_what_the_stand_in_needs_is_copied_and_debians_python3_imports_it(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/python3.11").mkdir(parents=True)
    (root / "usr/lib/python3.11/os.py").write_text("")
    version, source = rootfs.vendored_package_dir()
    copied = rootfs.copy_vendored(root, "cel-expr-python", version)
    names = sorted(Path(c).name.split(".")[0] + Path(c).suffix for c in copied)
    assert names == ["cel.pyi", "cel.so", "ext_optional.pyi", "ext_optional.so", "ext_strings.pyi", "ext_strings.so"]
    deps = Path(str(root) + plan.STANDIN_DEPS)
    size = sum(p.stat().st_size for p in deps.rglob("*") if p.is_file())
    whole = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert size < 0.7 * whole
    assert all(p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644) for p in deps.rglob("*"))
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} (Debian's python3, as on the lab hosts) is missing: make deps installs it")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from cel_expr_python import cel\n"
            "from cel_expr_python.ext import ext_strings, ext_optional\n"
            "env = cel.NewEnv(variables={'claims': cel.Type.Map(cel.Type.STRING, cel.Type.DYN)},\n"
            "                 extensions=[ext_strings.ExtStrings(), ext_optional.ExtOptional()])\n"
            "print(env.compile('claims.sub').eval(data={'claims': {'sub': 'alice'}}).value())\n"
            "print(env.compile(\"claims.email.lowerAscii()\").eval(data={'claims': {'email': 'A@X'}}).value())\n"
            "print(env.compile(\"claims.?groups.orValue(['none'])[0]\").eval(data={'claims': {}}).value())\n")
    r = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code, str(deps)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["alice", "a@x", "none"]


def test_a_missing_cel_package_is_one_lab_error_line_with_the_fix():
    with pytest.raises(LabError) as info:
        rootfs.vendored_package_dir("no-such-dist-k8sboot", "no_such_pkg_k8sboot")
    assert info.value.code == ExitCode.LAB and "\n" not in str(info.value)
    assert "no-such-dist-k8sboot" in str(info.value) and "make deps" in info.value.hint


def test_the_lab_inventory_with_idp_loads_and_trusts_idp_0(tmp_path):
    """What `lab up --idp` writes is an inventory k8sboot accepts: idp-0 the JWT issuer, its CA
    inlined from the file, the audience `lab idp token` mints for."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from k8sboot.inventory import parse_inventory

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k8sboot lab idp CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    inv = parse_inventory(plan.render_lab_inventory(build_host_specs(3, 0, 1, 1), idp_ca=ca), tmp_path / "lab.yaml")
    assert inv.authentication.issuers == ("https://10.240.0.2",)
    issuer = inv.authentication.jwt[0].issuer
    assert issuer.audiences == (plan.IDP_AUDIENCE,) and issuer.certificate_authority == ca.read_text()
