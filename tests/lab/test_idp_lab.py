"""The lab's OIDC identity provider on real hosts: `k8sboot lab up --lb --idp` boots idp-0
(10.240.0.2, Debian's nginx under systemd), and from this machine a TLS handshake verified with the
idp CA (hostname check on the IP SAN), discovery and the JWKS fetched as an authenticator fetches
them, a token from `k8sboot lab idp token` verified with that JWKS; from controller-0 over SSH,
Debian's python3 compiles and evaluates CEL with the cel_expr_python the stand-in's launcher puts on
its path, and curl reaches the idp with the idp CA (and not without it). `lab up` without --idp
then stops idp-0 alone, and `lab idp token` says the lab has none."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import ssl
from urllib.parse import urlsplit

import jwt
import pytest

from k8sboot.lab import idp as idp_mod
from k8sboot.lab import plan


def https_context(ca_file) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def get(url: str, ctx: ssl.SSLContext) -> tuple[int, str | None, bytes]:
    parts = urlsplit(url)
    c = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=10)
    try:
        c.request("GET", parts.path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        c.close()


def test_lab_up_idp_boots_idp_0_with_nginx_and_nothing_else_moves(lab_idp, lab_hosts, lab_tools):
    result = lab_idp.up_result
    by_name = {h["name"]: h for h in result["hosts"]}
    assert by_name["idp-0"]["address"] == "10.240.0.2" and by_name["idp-0"]["role"] == "idp"
    assert by_name["idp-0"]["state"] == "running"
    assert by_name["lb-0"]["address"] == "10.240.0.5"
    assert [by_name[f"controller-{i}"]["address"] for i in range(3)] == ["10.240.0.10", "10.240.0.11", "10.240.0.12"]
    assert result["idp"]["issuer"] == "https://10.240.0.2" and result["idp"]["kid"] == lab_idp.kid
    status = json.loads(lab_tools.k8sboot("lab", "status", "--json").stdout)
    assert {(h["name"], h["role"], h["address"], h["state"]) for h in status} >= {
        ("idp-0", "idp", "10.240.0.2", "running")}
    h = lab_idp.host
    assert h.run("systemctl is-active nginx.service").stdout.strip() == "active"
    assert h.run("systemctl is-enabled haproxy.service", warn=True).stdout.strip() == "disabled"
    assert h.run("test -e /usr/local/bin/kube-apiserver", warn=True).exited != 0
    listing = h.run("stat -c '%a %U %n' /etc/nginx/k8sboot-idp/* | sort -k3").stdout.split("\n")
    assert [x for x in listing if x] == ["644 root /etc/nginx/k8sboot-idp/tls.crt",
                                         "600 root /etc/nginx/k8sboot-idp/tls.key"]
    # neither the CA key nor the signing key is anywhere on idp-0
    for name in ("ca-key.pem", "signing-key.pem"):
        secret = (lab_idp.directory / name).read_text().splitlines()[1]     # a line of the base64 body
        assert h.run(f"grep -rlF {shlex.quote(secret)} /etc /var/www /root", warn=True).stdout.strip() == ""
    c0 = lab_hosts[0]
    assert c0.run("systemctl is-enabled nginx.service", warn=True).stdout.strip() == "disabled"
    assert c0.run("systemctl is-active nginx.service", warn=True).stdout.strip() == "inactive"
    for path in (lab_idp.directory / n for n in idp_mod.PRIVATE_FILES):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_tls_to_idp_0_verifies_with_the_idp_ca_and_its_ip_san_and_not_with_another_ca(lab_idp, tmp_path):
    ctx = https_context(lab_idp.ca_file)
    with socket.create_connection(("10.240.0.2", 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="10.240.0.2") as s:
            assert ("IP Address", "10.240.0.2") in s.getpeercert()["subjectAltName"]
    with socket.create_connection(("10.240.0.2", 443), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            ctx.wrap_socket(raw, server_hostname="10.240.0.3")
    other = idp_mod.ensure_material(tmp_path / "other")
    with socket.create_connection(("10.240.0.2", 443), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
            https_context(other.ca_file).wrap_socket(raw, server_hostname="10.240.0.2")


def test_discovery_and_jwks_are_served_as_json_and_a_minted_token_verifies_with_the_fetched_jwks(lab_idp, lab_tools):
    ctx = https_context(lab_idp.ca_file)
    status, ctype, body = get("https://10.240.0.2/.well-known/openid-configuration", ctx)
    assert (status, ctype) == (200, "application/json")
    discovery = json.loads(body)
    assert discovery["issuer"] == lab_idp.issuer == "https://10.240.0.2"
    assert discovery["jwks_uri"] == "https://10.240.0.2/openid/v1/jwks"
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    status, ctype, body = get(discovery["jwks_uri"], ctx)
    assert (status, ctype) == (200, "application/json")
    jwks = json.loads(body)
    keyset = jwt.PyJWKSet.from_dict(jwks)
    assert [k["kid"] for k in jwks["keys"]] == [lab_idp.kid]
    assert get("https://10.240.0.2/", ctx)[0] == 404

    token = lab_tools.k8sboot("lab", "idp", "token", "--sub", "alice", "--email", "alice@example.com",
                              "--groups", "dev,ops").stdout.strip()
    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, keyset[kid].key, algorithms=["RS256"], audience="k8sboot-lab",
                        issuer=discovery["issuer"])
    assert claims["sub"] == "alice" and claims["email"] == "alice@example.com" and claims["groups"] == ["dev", "ops"]
    expired = lab_tools.k8sboot("lab", "idp", "token", "--sub", "alice", "--expired").stdout.strip()
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, keyset[kid].key, algorithms=["RS256"], audience="k8sboot-lab")
    # the python API the tests use signs with the same key
    minted = idp_mod.mint_token("bob", directory=lab_idp.directory, audiences=("other",))
    assert jwt.decode(minted, keyset[kid].key, algorithms=["RS256"], audience="other")["sub"] == "bob"
    show = json.loads(lab_tools.k8sboot("lab", "idp", "show", "--json").stdout)
    assert show["kid"] == lab_idp.kid and show["certificate_authority_file"] == str(lab_idp.ca_file)


def test_controller_0s_debian_python3_runs_cel_from_the_stand_ins_path(lab_idp, lab_hosts):
    c0 = lab_hosts[0]
    launcher = c0.run("cat /usr/local/bin/kube-apiserver").stdout
    assert launcher == plan.STANDIN_LAUNCHER
    # exactly the launcher's sys.path lines, then CEL as the stand-in's authenticator uses it
    path_lines = "\n".join(x for x in launcher.splitlines() if x.startswith(("import os, sys", "sys.path.insert")))
    assert plan.STANDIN_DEPS in path_lines
    code = path_lines + "\n" + (
        "from cel_expr_python import cel\n"
        "from cel_expr_python.ext import ext_strings, ext_optional\n"
        "env = cel.NewEnv(variables={'claims': cel.Type.Map(cel.Type.STRING, cel.Type.DYN)},\n"
        "                 extensions=[ext_strings.ExtStrings(), ext_optional.ExtOptional()])\n"
        "claims = {'sub': 'alice', 'email': 'Alice@Example.com'}\n"
        "print(env.compile('claims.sub').eval(data={'claims': claims}).value())\n"
        "print(env.compile('claims.email.lowerAscii()').eval(data={'claims': claims}).value())\n"
        "print(env.compile(\"claims.?groups.orValue(['none'])[0]\").eval(data={'claims': claims}).value())\n"
        "print(cel.__file__)\n")
    r = c0.run(f"/usr/bin/python3 -I -c {shlex.quote(code)}", warn=True)
    assert r.exited == 0, r.stderr
    out = r.stdout.split()
    assert out[:3] == ["alice", "alice@example.com", "none"]
    assert out[3].startswith(plan.STANDIN_DEPS + "/cel_expr_python/cel.cpython-311-")
    # without the launcher's path, Debian's python3 has no CEL: the copy above is what made it work
    bare = c0.run("/usr/bin/python3 -I -c 'import cel_expr_python.cel'", warn=True)
    assert bare.exited != 0 and "ModuleNotFoundError" in bare.stderr
    du = int(c0.run(f"du -sk {plan.STANDIN_DEPS}").stdout.split()[0])
    assert du < 35 * 1024, f"{du} KiB of vendored packages"


def test_controller_0_reaches_the_idp_with_curl_and_the_idp_ca_only(lab_idp, lab_hosts):
    c0 = lab_hosts[0]
    ca = lab_idp.ca_file.read_text()
    c0.run(f"printf %s {shlex.quote(ca)} > /tmp/k8sboot-idp-ca.pem")
    try:
        r = c0.run("curl -sS --fail --cacert /tmp/k8sboot-idp-ca.pem -w '\\n%{content_type}' "
                   "https://10.240.0.2/.well-known/openid-configuration", warn=True)
        assert r.exited == 0, r.stderr
        body, ctype = r.stdout.rsplit("\n", 1)
        assert ctype == "application/json" and json.loads(body)["issuer"] == "https://10.240.0.2"
        r = c0.run("curl -sS --fail --cacert /tmp/k8sboot-idp-ca.pem https://10.240.0.2/openid/v1/jwks", warn=True)
        assert r.exited == 0 and json.loads(r.stdout)["keys"][0]["kid"] == lab_idp.kid
        r = c0.run("curl -sS --fail https://10.240.0.2/.well-known/openid-configuration", warn=True)
        assert r.exited == 60, (r.exited, r.stderr)          # the system's CAs do not know the idp CA
    finally:
        c0.run("rm -f /tmp/k8sboot-idp-ca.pem", warn=True)


def test_lab_up_idp_again_changes_nothing_and_keeps_the_kid(lab_idp, lab_tools, lab_inventory):
    again = lab_tools.lab_up(lab_inventory, idp=True)
    assert again["started"] == [] and again["stopped"] == []
    assert again["idp"]["kid"] == lab_idp.kid


def test_lab_up_without_idp_stops_idp_0_alone_and_token_then_says_there_is_none(lab_idp, lab_tools, lab_inventory):
    """Last in the module: idp-0 is gone afterwards (the fixture's teardown finds nothing to do)."""
    result = lab_tools.lab_up(lab_inventory)
    assert result["stopped"] == ["idp-0"] and result["started"] == []
    assert "idp-0" not in {h["name"] for h in result["hosts"]} and result["idp"] is None
    r = lab_tools.k8sboot("lab", "idp", "token", "--sub", "alice", check=False)
    assert r.returncode == 15 and r.stdout == ""
    assert r.stderr.strip() == ("k8sboot: error: the lab has no identity provider: bring it up with "
                                "`sudo k8sboot lab up --idp`")
    with pytest.raises(OSError):
        socket.create_connection(("10.240.0.2", 443), timeout=3).close()
    assert lab_idp.ca_file.exists() and (lab_idp.directory / "signing-key.pem").exists()    # the keys stay
    socket.create_connection(("10.240.0.10", 22), timeout=5).close()                        # the rest runs on
