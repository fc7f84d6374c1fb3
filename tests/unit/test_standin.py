"""The kube-apiserver stand-in without root: its flag parsing, its startup refusals, and every
authentication and authorization decision over real TLS on 127.0.0.1 (server in-process).

Certificates and tokens are made here with cryptography and PyJWT directly, so the stand-in is
checked against independent material, not against the project's own PKI code.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from k8sboot import standin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/standin_helpers.py
from standin_helpers import (ISSUER, Running, _key_pem, backends, base_argv, make_pki, socket_port,  # noqa: E402
                             token)

REQUIRED = "[service-account-issuer is a required flag, --service-account-signing-key-file and --service-account-issuer are required flags]"


# --- material --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("standin-pki"))


# --- flag parsing -------------------------------------------------------------------------------


def test_equals_and_space_forms_parse_the_same():
    a = standin.parse_flags(["--secure-port=6443", "--bind-address=0.0.0.0", "--client-ca-file=/x/ca.pem"])
    b = standin.parse_flags(["--secure-port", "6443", "--bind-address", "0.0.0.0", "--client-ca-file", "/x/ca.pem"])
    assert a.values == b.values == {"secure-port": 6443, "bind-address": "0.0.0.0", "client-ca-file": "/x/ca.pem"}


def test_anonymous_auth_defaults_true_like_the_real_binary():
    assert standin.parse_flags([]).anonymous_auth is True


@pytest.mark.parametrize("argv, expected", [
    (["--anonymous-auth"], True),
    (["--anonymous-auth=true"], True),
    (["--anonymous-auth=false"], False),
    (["--anonymous-auth=0"], False),
    (["--anonymous-auth=F"], False),
])
def test_bool_flags(argv, expected):
    assert standin.parse_flags(argv).anonymous_auth is expected


def test_a_bool_flag_never_takes_the_next_argument():
    with pytest.raises(standin.FlagError, match=r'"kube-apiserver" does not take any arguments, got \["false"\]'):
        standin.parse_flags(["--anonymous-auth", "false"])


def test_repeated_issuers_and_key_files_accumulate_and_audiences_split_on_commas():
    f = standin.parse_flags(["--service-account-issuer=https://a", "--service-account-issuer", "https://b",
                             "--service-account-key-file=/k1", "--service-account-key-file=/k2",
                             "--api-audiences=x,y", "--api-audiences", "z"])
    assert f.service_account_issuers == ["https://a", "https://b"]
    assert f.service_account_key_files == ["/k1", "/k2"]
    assert f.api_audiences == ["x", "y", "z"]


@pytest.mark.parametrize("argv, message", [
    (["--insecure-port=8080"], "unknown flag: --insecure-port"),
    (["-x"], "unknown shorthand flag: 'x' in -x"),
    (["--tls-cert-file"], "flag needs an argument: --tls-cert-file"),
    (["--secure-port=abc"], 'invalid argument "abc" for "--secure-port" flag: strconv.ParseInt: parsing "abc": invalid syntax'),
    (["--anonymous-auth=maybe"], 'invalid argument "maybe" for "--anonymous-auth" flag: strconv.ParseBool: parsing "maybe": invalid syntax'),
    # the shutdown flags: Go's time.ParseDuration and strconv.ParseBool messages
    (["--shutdown-delay-duration=15"],
     'invalid argument "15" for "--shutdown-delay-duration" flag: time: missing unit in duration "15"'),
    (["--shutdown-delay-duration=1d"],
     'invalid argument "1d" for "--shutdown-delay-duration" flag: time: unknown unit "d" in duration "1d"'),
    (["--request-timeout=soon"], 'invalid argument "soon" for "--request-timeout" flag: time: invalid duration "soon"'),
    (["--shutdown-send-retry-after=yes"], 'invalid argument "yes" for "--shutdown-send-retry-after" flag: '
                                          'strconv.ParseBool: parsing "yes": invalid syntax'),
    (["--shutdown-delay"], "unknown flag: --shutdown-delay"),
])
def test_bad_command_lines_get_cobras_messages(argv, message):
    with pytest.raises(standin.FlagError) as exc:
        standin.parse_flags(argv)
    assert str(exc.value) == message


def test_the_tutorial_unit_flags_all_parse():
    argv = ["--advertise-address=10.240.0.10", "--allow-privileged=true", "--apiserver-count=3",
            "--audit-log-maxage=30", "--audit-log-path=/var/log/audit.log", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,NodeRestriction", "--encryption-provider-config=/e.yaml",
            "--event-ttl=1h", "--kubelet-certificate-authority=/ca.pem", "--runtime-config=api/all=true",
            "--service-cluster-ip-range=10.32.0.0/24", "--service-node-port-range=30000-32767", "--v=2", "-v=3"]
    f = standin.parse_flags(argv)
    assert f.get("authorization-mode") == ["Node", "RBAC"] and f.verbosity == 3


def test_missing_issuer_gives_the_real_aggregate_message():
    errors = standin.validate_flags(standin.parse_flags(["--etcd-servers=https://e:2379", "--tls-cert-file=c",
                                                         "--tls-private-key-file=k",
                                                         "--service-account-signing-key-file=s"]))
    assert standin.render_errors(errors) == REQUIRED


def test_missing_signing_key_alone_gives_the_single_message():
    errors = standin.validate_flags(standin.parse_flags(["--etcd-servers=https://e:2379", "--tls-cert-file=c",
                                                         "--tls-private-key-file=k",
                                                         f"--service-account-issuer={ISSUER}"]))
    assert standin.render_errors(errors) == \
        "--service-account-signing-key-file and --service-account-issuer are required flags"


def test_main_refuses_without_issuer_exit_1_with_the_real_error_line(pki, capsys):
    rc = standin.main(base_argv(pki, **{"service-account-issuer": None}))
    err = capsys.readouterr().err
    assert rc == 1
    assert f"Error: {REQUIRED}\n" in err


def test_main_refuses_an_unreadable_file_naming_the_flag_and_the_path(pki, capsys):
    rc = standin.main(base_argv(pki, **{"client-ca-file": pki / "nope.pem"}))
    err = capsys.readouterr().err
    assert rc == 1
    assert f"Error: unable to read --client-ca-file {pki / 'nope.pem'}: open {pki / 'nope.pem'}: " \
           "no such file or directory" in err


def test_main_refuses_a_missing_etcd_servers_flag(pki, capsys):
    assert standin.main(base_argv(pki, **{"etcd-servers": None})) == 1
    assert "Error: --etcd-servers must be specified" in capsys.readouterr().err


def test_version_says_stand_in(capsys):
    assert standin.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert "v0.0.0-k8sboot-standin" in out and "not Kubernetes" in out and "STAND-IN" in out


# --- the server over TLS on 127.0.0.1 --------------------------------------------------------------


@pytest.fixture(params=backends())
def server(request, pki):
    running = Running(pki, request.param)
    running.backend = request.param
    yield running
    running.stop()


@pytest.fixture
def closed_server(pki):
    running = Running(pki, backends()[-1], **{"anonymous-auth": "false"})
    yield running
    running.stop()


def test_admin_certificate_is_admin_in_system_masters(server, pki, capsys):
    code, body = server.whoami(cert="admin")
    assert code == 201
    der = x509.load_pem_x509_certificate((pki / "admin.pem").read_bytes()).public_bytes(serialization.Encoding.DER)
    assert body["kind"] == "SelfSubjectReview" and body["apiVersion"] == "authentication.k8s.io/v1"
    assert body["status"]["userInfo"] == {
        "username": "admin", "groups": ["system:masters", "system:authenticated"],
        "extra": {"authentication.kubernetes.io/credential-id": [f"X509SHA256={hashlib.sha256(der).hexdigest()}"]}}
    assert 'user="admin"' in capsys.readouterr().err


def test_no_credential_with_anonymous_on_is_403_as_system_anonymous(server, capsys):
    code, body = server.request("GET", "/api/v1/namespaces/default/pods")
    assert code == 403
    assert body["message"] == ('pods is forbidden: User "system:anonymous" cannot list resource "pods" in API '
                               'group "" in the namespace "default"')
    assert body["reason"] == "Forbidden" and body["code"] == 403
    log = capsys.readouterr().err
    assert 'user="system:anonymous"' in log and 'decision="forbidden"' in log and "resp=403" in log


def test_curl_gets_the_403_indented_as_the_real_server_writes_it_for_curl(server, pki):
    """k8s.io/apiserver pretty-prints for curl/Wget/browsers (isPrettyPrint): the tutorial's curl
    shows this body, byte for byte; kubectl and client-go get the compact form."""
    url = f"https://127.0.0.1:{server.port}/api/v1/namespaces/default/pods"
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "--cacert", str(pki / "ca.pem"), url],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == (
        '{\n  "kind": "Status",\n  "apiVersion": "v1",\n  "metadata": {},\n  "status": "Failure",\n'
        '  "message": "pods is forbidden: User \\"system:anonymous\\" cannot list resource \\"pods\\" in API group '
        '\\"\\" in the namespace \\"default\\"",\n  "reason": "Forbidden",\n  "details": {\n    "kind": "pods"\n'
        '  },\n  "code": 403\n}\n')
    compact = subprocess.run(["curl", "-s", "--noproxy", "*", "-A", "kubectl/v1.32.0", "--cacert",
                              str(pki / "ca.pem"), url + "?pretty=false"], capture_output=True, text=True, timeout=30)
    assert compact.stdout.startswith('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure"')
    assert compact.stdout.count("\n") == 1


def test_json_escapes_html_characters_as_go_does():
    from k8sboot.standin.server import go_json

    assert go_json({"m": "<none> & \u2028 ü"}) == '{"m":"\\u003cnone\\u003e \\u0026 \\u2028 ü"}\n'


def test_anonymous_may_read_version_and_health(server):
    code, body = server.request("GET", "/version")
    assert code == 200 and body["gitVersion"] == "v0.0.0-k8sboot-standin"
    assert server.request("GET", "/livez") == (200, "ok")
    assert server.request("GET", "/readyz") == (200, "ok")


def test_no_credential_with_anonymous_off_is_401(closed_server, capsys):
    code, body = closed_server.request("GET", "/api/v1/namespaces/default/pods")
    assert code == 401
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert closed_server.request("GET", "/livez")[0] == 401
    assert 'decision="unauthorized"' in capsys.readouterr().err


def test_service_account_token_is_the_service_account(server, pki):
    code, body = server.whoami(bearer=token(pki, uid=server.service_account()))
    assert code == 201
    info = body["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:authn-demo:bot"
    assert info["groups"] == ["system:serviceaccounts", "system:serviceaccounts:authn-demo", "system:authenticated"]


@pytest.mark.parametrize("bad", [
    {"aud": ("vault",)},
    {"iss": "https://other.example:6443"},
    {"exp_in": -3600},
])
def test_a_token_for_another_audience_or_issuer_or_expired_is_401_even_with_anonymous_on(server, pki, bad):
    code, body = server.whoami(bearer=token(pki, uid=server.service_account(), **bad))
    assert code == 401 and body["reason"] == "Unauthorized"


def test_a_token_signed_by_another_key_is_401(server, pki, tmp_path):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "k.pem").write_bytes(_key_pem(other))
    assert server.whoami(bearer=token(pki, key_file=tmp_path / "k.pem"))[0] == 401


def test_an_expired_client_certificate_is_401(server):
    if server.backend == "python-ssl":      # Python's ssl checks validity in the handshake
        with pytest.raises((ssl.SSLError, ConnectionError)):
            server.whoami(cert="expired")
    else:
        assert server.whoami(cert="expired")[0] == 401


def test_what_the_stand_in_does_not_serve_is_a_404_for_masters_and_a_403_for_others(server):
    code, body = server.request("GET", "/api/v1/namespaces/default/pods", cert="admin")
    assert code == 404 and body["reason"] == "NotFound"
    assert body["message"] == "the server could not find the requested resource"
    code, body = server.request("GET", "/api/v1/namespaces/default/pods", cert="jane")
    assert code == 403 and body["message"].startswith('pods is forbidden: User "jane" cannot list')
    assert server.whoami(cert="jane")[0] == 201


UNKNOWN = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404}
NOT_ALLOWED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "the server does not allow this method on the requested resource",
               "reason": "MethodNotAllowed", "code": 405}


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/api/v1/namespaces/default/pods", UNKNOWN),
    ("POST", "/api/v1/namespaces/default/pods", UNKNOWN),
    ("PUT", "/api/v1/namespaces/default/configmaps/x", UNKNOWN),
    ("DELETE", "/api/v1/nodes/n1", UNKNOWN),
    ("GET", "/api/v1/secrets", UNKNOWN),
    ("GET", "/api/v1/namespaces?watch=true", NOT_ALLOWED),
    ("DELETE", "/api/v1/namespaces/default/serviceaccounts", NOT_ALLOWED),
    ("GET", "/api/v1/namespaces/default/serviceaccounts/default/token", NOT_ALLOWED),
    ("GET", "/api/v1/namespaces/default/status", UNKNOWN),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", UNKNOWN),
    ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", UNKNOWN),
    ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles?watch=1", NOT_ALLOWED),
    ("PUT", "/api/v1/namespaces", NOT_ALLOWED),
    ("PATCH", "/apis/rbac.authorization.k8s.io/v1/clusterroles", NOT_ALLOWED),
    ("OPTIONS", "/api/v1/namespaces", NOT_ALLOWED),
    ("POST", "/api/v1/namespaces/default", NOT_ALLOWED),
    ("GET", "/apis/authentication.k8s.io/v1/selfsubjectreviews", NOT_ALLOWED),
    ("DELETE", "/apis/authentication.k8s.io/v1/selfsubjectreviews", NOT_ALLOWED),
    ("GET", "/apis/authentication.k8s.io/v1/tokenreviews", UNKNOWN),
])
def test_nothing_unimplemented_ever_answers_a_success(server, method, path, expected):
    """The real server's answers for an unknown resource (404) or verb (405), with a cause that
    names the stand-in: never a Success, never an empty list of something never stored."""
    code, body = server.request(method, path, cert="admin", body=b"{}" if method in ("POST", "PUT") else None)
    assert code == expected["code"]
    causes = body.pop("details")["causes"]
    assert body == expected
    assert causes[0] == {"reason": "UnexpectedServerResponse",
                         "message": "404: Page Not Found" if code == 404 else "405: Method Not Allowed"}
    assert "k8sboot stand-in (not Kubernetes)" in causes[1]["message"]


@pytest.mark.parametrize("path", ["/apis/apps/v1", "/apis/example.com", "/nope"])
def test_a_path_that_is_no_resource_and_not_served_is_gos_plain_404(server, path):
    assert server.request("GET", path, cert="admin") == (404, "404 page not found\n")


@pytest.mark.parametrize("method,path", [("GET", "/apis/apps/v1/namespaces/default/deployments"),
                                         ("POST", "/apis/batch/v1/namespaces/default/jobs"),
                                         ("GET", "/apis/example.com/v1/widgets")])
def test_a_resource_of_a_group_the_stand_in_does_not_serve_is_a_404_naming_the_stand_in(server, method, path):
    code, body = server.request(method, path, cert="admin", body=b"{}" if method == "POST" else None)
    assert code == 404 and body["reason"] == "NotFound"
    assert body["message"] == "the server could not find the requested resource"
    assert "k8sboot stand-in (not Kubernetes)" in body["details"]["causes"][1]["message"]


def test_discovery_lists_only_what_is_implemented(server):
    code, body = server.request("GET", "/apis/authentication.k8s.io/v1", cert="admin")
    assert code == 200 and [(r["name"], r["verbs"]) for r in body["resources"]] == [("selfsubjectreviews",
                                                                                      ["create"])]
    code, body = server.request("GET", "/apis", cert="admin")
    assert [g["name"] for g in body["groups"]] == ["authentication.k8s.io", "authorization.k8s.io",
                                                   "rbac.authorization.k8s.io"]
    code, body = server.request("GET", "/api/v1", cert="admin")
    assert [(r["name"], r["verbs"]) for r in body["resources"]] == [
        ("namespaces", ["create", "delete", "get", "list", "patch", "update"]),
        ("serviceaccounts", ["create", "delete", "get", "list", "patch", "update"]),
        ("serviceaccounts/token", ["create"])]
    code, body = server.request("GET", "/apis/rbac.authorization.k8s.io/v1", cert="admin")
    assert [r["name"] for r in body["resources"]] == ["clusterroles", "clusterrolebindings", "roles", "rolebindings"]
    code, body = server.request("GET", "/apis/authorization.k8s.io/v1", cert="admin")
    assert [r["name"] for r in body["resources"]] == ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]


def test_a_client_certificate_under_an_intermediate_it_sends_is_authenticated_by_both_backends(server, pki):
    """The client sends leaf + intermediate; authn needs the intermediate to reach the client CA.
    pyOpenSSL hands over the peer's chain; Python's ssl through `_sslobj.get_unverified_chain()`."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "carol-chain.pem", pki / "carol-key.pem")
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=REVIEW,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 201, body
    assert body["status"]["userInfo"]["username"] == "carol"


def test_a_certificate_from_another_ca(server):
    """pyOpenSSL: like Go, the handshake accepts it and authn answers 401. Python's ssl verifies
    in the handshake, so the connection fails instead (the documented difference)."""
    if server.backend == "pyopenssl":
        code, body = server.whoami(cert="mallory")
        assert code == 401 and body["message"] == "Unauthorized"
    else:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            server.whoami(cert="mallory")


# --- the files installed on a lab host, under Debian's python3 -----------------------------------


def _debian_python() -> str | None:
    py = "/usr/bin/python3"
    if not os.path.exists(py):
        return None
    r = subprocess.run([py, "-c", "import cryptography, jwt"], capture_output=True)
    return py if r.returncode == 0 else None


def _installed_standin(tmp_path: Path) -> tuple[str, dict]:
    """(python, environment) to run the files the lab copies (hosts.standin_sources), alone, under
    /usr/bin/python3."""
    from k8sboot.lab import hosts

    py = _debian_python()
    if py is None:
        pytest.skip("/usr/bin/python3 with python3-cryptography and python3-jwt is not installed")
    lib = tmp_path / "lib" / "k8sboot"
    for name, data in hosts.standin_sources().items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(data)
    return py, {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "lib"),
                "K8SBOOT_STANDIN_DATA_DIR": str(tmp_path / "store")}


def test_installed_standin_runs_on_the_systems_python(pki, tmp_path):
    """The files the lab copies, alone, under /usr/bin/python3 (Debian's cryptography/jwt)."""
    py, env = _installed_standin(tmp_path)
    r = subprocess.run([py, "-m", "k8sboot.standin", "--version"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "k8sboot-standin" in r.stdout
    with socket_port() as port:
        argv = base_argv(pki, **{"secure-port": str(port)})
    proc = subprocess.Popen([py, "-m", "k8sboot.standin", *argv], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(pki / "admin.pem", pki / "admin-key.pem")
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                conn.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=b"{}")
                r = conn.getresponse()
                body = json.loads(r.read())
                break
            except (ConnectionRefusedError, ssl.SSLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        assert r.status == 201 and body["status"]["userInfo"]["username"] == "admin"

        def call(method: str, path: str, payload: dict | None = None, bearer: str | None = None):
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx if not bearer else
                                            ssl.create_default_context(cafile=str(pki / "ca.pem")), timeout=5)
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
            c.request(method, path, body=json.dumps(payload).encode() if payload is not None else None, headers=headers)
            resp = c.getresponse()
            return resp.status, json.loads(resp.read())

        # the store, TokenRequest (PyJWT 2.6 signing) and the ServiceAccount lookup on Debian's libraries
        assert call("POST", "/api/v1/namespaces", {"metadata": {"name": "authn-demo"}})[0] == 201
        assert call("POST", "/api/v1/namespaces/authn-demo/serviceaccounts", {"metadata": {"name": "bot"}})[0] == 201
        code, issued = call("POST", "/api/v1/namespaces/authn-demo/serviceaccounts/bot/token", {})
        assert code == 201
        code, me = call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {}, bearer=issued["status"]["token"])
        assert code == 201 and me["status"]["userInfo"]["username"] == "system:serviceaccount:authn-demo:bot"
        assert (tmp_path / "store" / "serviceaccounts" / "authn-demo" / "bot.json").exists()
        head = _read_until(proc, "Serving securely")
        if "tls=\"pyopenssl\"" in head:
            # Debian's pyOpenSSL: a certificate from another CA gets the real server's 401
            ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
            ctx.load_cert_chain(pki / "mallory.pem", pki / "mallory-key.pem")
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
            conn.request("GET", "/api/v1/pods")
            r = conn.getresponse()
            assert r.status == 401 and json.loads(r.read())["reason"] == "Unauthorized"
    finally:
        proc.terminate()
        rest = proc.stderr.read()
        proc.wait(timeout=10)
    assert "STAND-IN" in head and 'user="admin"' in rest


def test_installed_standin_answers_concurrent_client_cert_requests_on_debians_libraries(pki, tmp_path):
    """Debian's cryptography 38 refused two threads reading one CA certificate at once ("Already
    borrowed"): the stand-in dropped connections behind the lab's load balancer, whose health
    checks and clients arrive together. Every request of 12 concurrent clients is answered."""
    import threading

    py, env = _installed_standin(tmp_path)
    with socket_port() as port:
        argv = base_argv(pki, **{"secure-port": str(port)})
    log = tmp_path / "standin.log"        # a file: a pipe nobody reads would fill and stall the server
    with open(log, "w") as err:
        proc = subprocess.Popen([py, "-m", "k8sboot.standin", *argv], env=env, stderr=err, text=True)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "admin.pem", pki / "admin-key.pem")
    failures: list[str] = []

    def get() -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        try:
            conn.request("GET", "/version")
            return conn.getresponse().status
        finally:
            conn.close()

    def client() -> None:
        for _ in range(40):
            try:
                status = get()
                if status != 200:
                    failures.append(f"HTTP {status}")
            except OSError as exc:       # http.client's RemoteDisconnected is one
                failures.append(repr(exc))

    try:
        deadline = time.monotonic() + 10
        while "Serving securely" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert failures == [], f"{len(failures)} of 480 requests failed: {failures[:3]}"
    assert "Connection error" not in log.read_text()


def _read_until(proc, marker: str) -> str:
    lines = []
    while True:
        line = proc.stderr.readline()
        lines.append(line)
        if not line or marker in line:
            return "".join(lines)


def test_audit_ids_are_random_version_4_uuids():
    import uuid

    from k8sboot.standin import new_audit_id

    ids = {new_audit_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 and str(uuid.UUID(i)) == i
               for i in ids)


# --- HTTP/1.1 as the real server (Go's net/http) answers it ---------------------------------------


def _raw(server, data: bytes, *, cert: str | None = None) -> bytes:
    """Send raw bytes over TLS and read until the server closes (or 3 s pass)."""
    ctx = ssl.create_default_context(cafile=str(server.pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(server.pki / f"{cert}.pem", server.pki / f"{cert}-key.pem")
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(data)
        out = b""
        try:
            while chunk := tls.recv(65536):
                out += chunk
        except (socket.timeout, ssl.SSLError, ConnectionError):
            pass
    return out


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
    (b"GET /version HTTP/2.0\r\nHost: x\r\n\r\n", b"505 HTTP Version Not Supported"),
    (b"GET /version HTTP/1.1\r\nNo colon here\r\n\r\n", b"400 Bad Request"),
    (b"GET /version HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", b"431 Request Header Fields Too Large"),
])
def test_a_request_it_cannot_read_gets_gos_plain_answer_and_a_close(server, request_bytes, status):
    reply = _raw(server, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in head
    assert body == status


def test_keep_alive_http_1_0_and_an_unknown_method(server):
    two = _raw(server, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2 and two.rstrip().endswith(b"ok")      # both on one connection
    old = _raw(server, b"GET /livez HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in old
    brew = _raw(server, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
    assert brew.startswith(b"HTTP/1.1 405 Method Not Allowed")


def test_expect_100_continue_and_a_chunked_body(server):
    body = b'{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reply = _raw(server, b"POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: x\r\n"
                 b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
                 cert="admin")
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created")
    assert b'"username":"admin"' in reply


GO_400 = b"400 Bad Request"
TOO_LARGE = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": "Request entity too large: limit is 3145728", "reason": "RequestEntityTooLarge",
             "code": 413}
POST_HEAD = b"POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("length", [b"-1", b"-5", b"abc", b"+3", b"0x10", b"", b"1 2", b"99999999999999999999"])
def test_a_bad_content_length_is_gos_400_before_any_body_is_read(server, length):
    """A negative length used to read to EOF; Go's readTransfer refuses it at once."""
    reply = _raw(server, POST_HEAD + b"Content-Length: " + length + b"\r\n\r\n{}", cert="admin")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"Connection: close" in head
    assert body == GO_400


def test_two_different_content_lengths_are_a_400_and_an_unknown_transfer_coding_a_501(server):
    reply = _raw(server, POST_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", cert="admin")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request") and reply.endswith(GO_400)
    reply = _raw(server, POST_HEAD + b"Transfer-Encoding: gzip\r\n\r\n", cert="admin")
    assert reply.startswith(b"HTTP/1.1 501 Not Implemented") and reply.endswith(b"Unsupported transfer encoding")


def _status_of(reply: bytes) -> tuple[bytes, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, json.loads(body)


def test_an_oversized_content_length_is_the_api_servers_413_without_reading_the_body(server):
    """Only the head is sent: the 413 comes without waiting for 4 MiB that never arrive."""
    head, body = _status_of(_raw(server, POST_HEAD + b"Content-Length: 4194304\r\n\r\n", cert="admin"))
    assert head.startswith(b"HTTP/1.1 413 Request Entity Too Large") and b"Connection: close" in head
    assert body == TOO_LARGE


@pytest.mark.parametrize("chunk", [b"400001\r\n", b"ffffffffffffffff\r\n", b"1;ext=1\r\n{\r\n3fffff\r\n"])
def test_a_huge_chunk_is_refused_from_its_size_line_before_its_data(server, chunk):
    head, body = _status_of(_raw(server, POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk, cert="admin"))
    assert head.startswith(b"HTTP/1.1 413 Request Entity Too Large") and body == TOO_LARGE


@pytest.mark.parametrize("chunk", [b"zz\r\n", b"11111111111111111\r\n", b"1" * 5000 + b"\r\n", b"2\r\n{}XX"])
def test_a_malformed_chunked_body_is_a_400(server, chunk):
    reply = _raw(server, POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk, cert="admin")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request") and reply.endswith(GO_400)


def test_header_names_are_case_insensitive_and_the_first_of_a_repeated_field_counts():
    import io as _io

    head = standin.read_request_head(_io.BufferedReader(_io.BytesIO(
        b"GET /x HTTP/1.1\r\nauthorization: Bearer one\r\nAuthorization: Bearer two\r\nHost:  h \r\n\r\n")))
    method, target, version, headers = head
    assert (method, target, version) == ("GET", "/x", "HTTP/1.1")
    assert headers.get("Authorization") == "Bearer one" and headers.get("HOST") == "h"
    assert standin.read_request_head(_io.BufferedReader(_io.BytesIO(b""))) is None     # closed between requests


def test_the_stand_in_imports_only_what_the_lab_installs():
    """Every k8sboot module the package imports is one the lab copies (plan.STANDIN_MODULES and
    STANDIN_PACKAGES), and
    those import nothing else of k8sboot; outside k8sboot: the standard library, cryptography,
    jwt and OpenSSL (Debian's python3-* packages), and cel_expr_python (the CEL library the lab
    copies into its root from the venv, for the JWT authenticators)."""
    import ast

    from k8sboot.lab import plan

    pkg = Path(standin.__file__).parent.parent
    installed = {f"k8sboot.{m[:-3]}" for m in plan.STANDIN_MODULES if m != "__init__.py"}
    packages = tuple(f"k8sboot.{p}" for p in plan.STANDIN_PACKAGES)
    files = [f for p in plan.STANDIN_PACKAGES for f in sorted((pkg / p).glob("*.py"))] + \
        [pkg / m for m in plan.STANDIN_MODULES]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"k8sboot.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and \
                node.module == "k8sboot" else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                root = name.split(".")[0]
                if root == "k8sboot":
                    assert name in installed or name in packages or name.startswith(tuple(f"{p}." for p in packages)), \
                        f"{path.name} imports {name}, which the lab does not install"
                else:
                    assert root in sys.stdlib_module_names or root in ("cryptography", "jwt", "OpenSSL",
                                                                       "cel_expr_python"), \
                        f"{path.name} imports {name}"


def test_the_stand_in_imports_no_http_server():
    """~13 ms of every lab host's start: http.server pulls in http.client and the email package."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import k8sboot.standin; "
            "print(sorted(m for m in ('http.server', 'http.client', 'email.parser', 'mimetypes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2])],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- graceful restarts: shutdown delay, Retry-After, ready delay (as the real server) -------------


@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0), ("0s", 0.0), ("15s", 15.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("300ms", 0.3),
    ("+2s", 2.0), ("-2s", -2.0), (".5s", 0.5), ("1h2m3s", 3723.0),
])
def test_durations_parse_as_gos_time_parse_duration(text, seconds):
    assert standin.parse_go_duration(text) == pytest.approx(seconds)


def test_shutdown_flags_default_like_the_real_binary_and_parse_as_rendered():
    default = standin.parse_flags([])
    assert (default.shutdown_delay, default.shutdown_send_retry_after, default.request_timeout) == (0.0, False, 60.0)
    f = standin.parse_flags(["--shutdown-delay-duration=15s", "--shutdown-send-retry-after=true"])
    assert (f.shutdown_delay, f.shutdown_send_retry_after) == (15.0, True)
    assert standin.parse_flags(["--shutdown-send-retry-after"]).shutdown_send_retry_after is True


def test_a_negative_shutdown_delay_is_refused_with_the_real_message():
    errors = standin.validate_flags(standin.parse_flags(["--shutdown-delay-duration=-1s"]))
    assert errors[0] == "--shutdown-delay-duration can not be negative value"


def test_health_bodies_are_the_real_servers():
    ok = standin.health_answer("readyz", {})
    assert ok == (200, "ok")
    code, body = standin.health_answer("readyz", {"shutdown": "process is shutting down"})
    lines = body.split("\n")
    assert code == 500
    assert lines[:3] == ["[+]ping ok", "[+]log ok", "[+]informer-sync ok"]
    assert lines[-3:] == ["[-]shutdown failed: reason withheld", "readyz check failed", ""]
    assert "process is shutting down" not in body           # the reason is withheld: /readyz is public
    code, verbose = standin.health_answer("livez", {}, "verbose")
    assert code == 200 and verbose.endswith("[+]poststarthook/apiservice-openapiv3-controller ok\nlivez check passed\n")
    assert "[+]shutdown ok" not in verbose and "[+]informer-sync ok" not in verbose
    assert standin.health_answer("readyz", {"shutdown": "x"}, "exclude=shutdown") == (200, "ok")
    code, body = standin.health_answer("readyz", {}, "verbose&exclude=nope")
    assert 'warn: some health checks cannot be excluded: no matches for "nope"\nreadyz check passed\n' in body
    assert standin.health_answer("readyz", {"shutdown": "process is shutting down"}, check="shutdown") == \
        (500, "internal server error: process is shutting down\n")
    assert standin.health_answer("readyz", {}, check="ping") == (200, "ok")
    assert standin.health_answer("readyz", {}, check="etcd")[0] == 404     # no etcd: no etcd check


@pytest.mark.parametrize("raw, seconds", [(None, 0.0), ("", 0.0), ("0", 0.0), ("2", 2.0), ("0.25", 0.25)])
def test_ready_delay_from_the_environment(raw, seconds):
    assert standin.parse_ready_delay(raw) == seconds


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_a_bad_ready_delay_is_refused_at_start(pki, capsys, monkeypatch, raw):
    monkeypatch.setenv(standin.READY_DELAY_ENV, raw)
    assert standin.main(base_argv(pki)) == 1
    assert f'Error: K8SBOOT_STANDIN_READY_DELAY="{raw}": want a number of seconds' in capsys.readouterr().err


def https(port: int, pki: Path, path: str, method: str = "GET", cert: str | None = None,
          body: bytes | None = None) -> tuple[int, dict, str]:
    """One request on a new connection: (status, headers with lower-case names, body text)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}-key.pem")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def refused(port: int) -> bool:
    """True when nothing listens on the port (a connect is refused)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except (ConnectionResetError, socket.timeout):
        return False            # caught while the port was closing: not known to be closed yet
    return False


def eventually(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


REVIEW = b'{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}'


class SlowRequest:
    """A POST whose body is still on its way: in flight on the server until `finish`."""

    def __init__(self, server: "Running"):
        ctx = ssl.create_default_context(cafile=str(server.pki / "ca.pem"))
        ctx.load_cert_chain(server.pki / "admin.pem", server.pki / "admin-key.pem")
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.tls.sendall(b"POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(REVIEW), REVIEW[:9]))
        assert eventually(lambda: server.server.lifecycle.in_flight == 1)

    def finish(self) -> tuple[int, dict, str]:
        self.tls.sendall(REVIEW[9:])
        r = http.client.HTTPResponse(self.tls)
        r.begin()
        try:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
        finally:
            self.tls.close()


@pytest.fixture
def stopping(request, pki):
    """A server with the shutdown flags of request.param; its graceful termination is started
    by the test (`begin`), as SIGTERM does in main."""
    running = Running(pki, backends()[-1], **request.param)
    running.begin = lambda: standin.begin_graceful_shutdown(running.server)
    yield running
    running.stop()


@pytest.mark.parametrize("stopping", [{"shutdown-delay-duration": "1s"}], indirect=True)
def test_on_shutdown_readyz_fails_at_once_while_livez_and_requests_are_served_then_the_port_closes(stopping, pki):
    port = stopping.port
    assert https(port, pki, "/readyz")[0] == 200
    terminator = stopping.begin()
    code, headers, body = https(port, pki, "/readyz")
    assert code == 500 and headers["content-type"] == "text/plain; charset=utf-8"
    assert body.endswith("[-]shutdown failed: reason withheld\nreadyz check failed\n")
    assert https(port, pki, "/livez")[:3:2] == (200, "ok")
    assert https(port, pki, "/healthz")[:3:2] == (200, "ok")
    code, _, body = https(port, pki, "/version", cert="admin")
    assert code == 200 and json.loads(body)["gitVersion"] == "v0.0.0-k8sboot-standin"   # still serving
    terminator.join(30)
    assert not terminator.is_alive()
    assert refused(port)


@pytest.mark.parametrize("stopping", [{"shutdown-delay-duration": "0.2s", "shutdown-send-retry-after": "true"}],
                         indirect=True)
def test_with_send_retry_after_new_requests_get_429_until_the_requests_in_flight_have_drained(stopping, pki):
    port, lifecycle = stopping.port, stopping.server.lifecycle
    slow = SlowRequest(stopping)
    terminator = stopping.begin()
    assert lifecycle.not_accepting.wait(20)                 # the shutdown delay has passed
    for cert in ("admin", None):                            # answered before authentication
        code, headers, body = https(port, pki, "/api/v1/namespaces/default/pods", cert=cert)
        assert code == 429
        assert headers["retry-after"] == "5" and headers["connection"] == "close"
        assert body == "The apiserver is shutting down, please try again later.\n"
    assert https(port, pki, "/readyz")[0] == 500            # probes are still answered
    assert https(port, pki, "/livez")[:3:2] == (200, "ok")
    code, _, body = slow.finish()                           # the request in flight completes
    assert code == 201 and json.loads(body)["status"]["userInfo"]["username"] == "admin"
    terminator.join(30)
    assert not terminator.is_alive() and refused(port)


@pytest.mark.parametrize("stopping", [{"shutdown-delay-duration": "0.2s"}], indirect=True)
def test_without_retry_after_the_port_closes_after_the_delay_and_requests_in_flight_still_finish(stopping):
    slow = SlowRequest(stopping)
    terminator = stopping.begin()
    assert eventually(lambda: refused(stopping.port))
    code, headers, body = slow.finish()
    assert code == 201 and headers["connection"] == "close"
    assert json.loads(body)["status"]["userInfo"]["username"] == "admin"
    terminator.join(30)
    assert not terminator.is_alive()


def test_readyz_names_unfinished_post_start_hooks_until_the_ready_delay_has_passed(pki):
    running = Running(pki, backends()[-1], ready_delay=0.5)
    try:
        code, _, body = https(running.port, pki, "/readyz")
        assert code == 500 and body.endswith("readyz check failed\n")
        assert "[-]poststarthook/start-apiextensions-controllers failed: reason withheld\n" in body
        assert "[+]shutdown ok\n" in body
        assert https(running.port, pki, "/livez")[:3:2] == (200, "ok")
        assert eventually(lambda: https(running.port, pki, "/readyz")[0] == 200)
        assert https(running.port, pki, "/readyz")[2] == "ok"
    finally:
        running.stop()


@pytest.mark.parametrize("who", ["jane", "token", "anonymous"])
def test_health_is_readable_by_any_authenticated_user_and_by_anonymous_when_allowed(pki, who):
    """system:public-info-viewer: a failing /readyz is a 500 with its body, never a 403."""
    running = Running(pki, backends()[-1], ready_delay=3600)
    try:
        kw = {"cert": "jane"} if who == "jane" else \
            {"bearer": token(pki, uid=running.service_account())} if who == "token" else {}
        code, body = running.request("GET", "/readyz", **kw)
        assert code == 500 and "[-]poststarthook/rbac/bootstrap-roles failed: reason withheld" in body
        assert running.request("GET", "/livez", **kw) == (200, "ok")
        assert running.request("GET", "/healthz", **kw) == (200, "ok")
    finally:
        running.stop()


def test_with_anonymous_off_health_needs_a_credential(pki):
    running = Running(pki, backends()[-1], **{"anonymous-auth": "false"})
    try:
        assert running.request("GET", "/readyz")[0] == 401
        assert running.request("GET", "/readyz", cert="jane") == (200, "ok")
        assert running.request("GET", "/readyz/shutdown", cert="jane")[0] == 403    # the checks one by one: not public
        assert running.request("GET", "/readyz/shutdown", cert="admin") == (200, "ok")
    finally:
        running.stop()


# --- the real SIGTERM path: the stand-in as a process ---------------------------------------------


class Process:
    """`python -m k8sboot.standin` on a free port, stderr (its journal) read in the background."""

    def __init__(self, pki: Path, *extra: str, env: dict | None = None):
        self.pki = pki
        with socket_port() as port:
            self.port = port
        argv = base_argv(pki, **{"secure-port": str(port)}) + list(extra)
        store = {"K8SBOOT_STANDIN_DATA_DIR": tempfile.mkdtemp(prefix="standin-store-")}
        self.proc = subprocess.Popen([sys.executable, "-m", "k8sboot.standin", *argv], stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **store, **(env or {})})
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        assert eventually(lambda: self.proc.poll() is not None or not refused(self.port)), "never listened"
        assert self.proc.poll() is None, "".join(self.lines)

    def get(self, path: str) -> tuple[int, str]:
        code, _, body = https(self.port, self.pki, path)
        return code, body

    def log(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_sigterm_fails_readyz_keeps_serving_for_the_delay_then_exits_0(pki):
    p = Process(pki, "--shutdown-delay-duration=1s", "--shutdown-send-retry-after=true")
    try:
        assert p.get("/readyz") == (200, "ok")
        p.proc.send_signal(signal.SIGTERM)
        assert eventually(lambda: p.get("/readyz")[0] == 500)       # before the port closes
        assert p.get("/readyz")[1].endswith("[-]shutdown failed: reason withheld\nreadyz check failed\n")
        assert p.get("/livez") == (200, "ok")
        assert p.proc.wait(30) == 0
        assert refused(p.port)
        log = p.log()
        for event in ("ShutdownInitiated", "AfterShutdownDelayDuration", "NotAcceptingNewRequest",
                      "InFlightRequestsDrained", "HTTPServerStoppedListening"):
            assert f'name="{event}"' in log
        assert 'shutdownDelayDuration="1s" shutdownSendRetryAfter=true' in log
    finally:
        p.kill()


def test_ready_delay_comes_from_the_environment_and_a_second_signal_exits_1_at_once(pki):
    p = Process(pki, "--shutdown-delay-duration=10m", env={standin.READY_DELAY_ENV: "600"})
    try:
        code, body = p.get("/readyz")
        assert code == 500 and "[-]poststarthook/crd-informer-synced failed: reason withheld" in body
        assert p.get("/livez") == (200, "ok")
        assert 'K8SBOOT_STANDIN_READY_DELAY="600" delay="600s"' in p.log()
        p.proc.send_signal(signal.SIGTERM)
        assert eventually(lambda: "[-]shutdown failed" in p.get("/readyz")[1])
        p.proc.send_signal(signal.SIGINT)
        assert p.proc.wait(20) == 1                              # not after the 10 minutes
        assert "Received a second signal, exiting at once" in p.log()
    finally:
        p.kill()
