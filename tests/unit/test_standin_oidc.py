"""The stand-in's --authentication-config, checked as a user sees it: a REAL identity provider over
HTTPS on 127.0.0.1 (http.server + ssl, its own throwaway CA made here with `cryptography`, serving
OIDC discovery and the JWKS), a stand-in started in-process (or as the binary) with an
AuthenticationConfiguration file naming it, and real HTTP requests (http.client) and real
`kubectl --token ... auth whoami`.

Expected identities are written from the upstream documentation's semantics (kubernetes.io,
"Authenticating" > "Using Authentication Configuration"): username = prefix + the claim, groups =
prefix + each entry of the list claim, then `system:authenticated`; uid from its claim; extra from
its CEL valueExpression. Expected metric names, labels, help and hashes are upstream's
(k8s.io/apiserver/pkg/server/options/authenticationconfig/metrics and its test vectors), and the
start-up errors are kube-apiserver's (pkg/kubeapiserver/options/authentication.go)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8sboot import authn
from k8sboot.standin import authconfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/standin_helpers.py
from standin_helpers import KUBECTL, Kubectl, Running, backends, base_argv, make_pki, socket_port  # noqa: E402

needs_kubectl = pytest.mark.skipif(not KUBECTL, reason="kubectl is not installed (make kubectl)")
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db38"


# --- a real identity provider on 127.0.0.1 ---------------------------------------------------------------


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SigningKey:
    def __init__(self, kid: str):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        pub = self.key.public_key().public_numbers()
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": _b64(pub.n), "e": _b64(pub.e)}


class IdP:
    """OIDC discovery + JWKS over HTTPS from a CA of its own; counts JWKS fetches."""

    def __init__(self, workdir: Path):
        now = datetime.now(timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test idp CA")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
              .not_valid_after(now + timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")]))
                .issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        cert_file, key_file = workdir / "idp.pem", workdir / "idp-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)      # keys 0600 from creation
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        self.keys = [SigningKey("key-1")]
        self.jwks_fetches = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": idp.url, "jwks_uri": idp.url + "/keys",
                            "id_token_signing_alg_values_supported": ["RS256"]}
                elif self.path == "/keys":
                    idp.jwks_fetches += 1
                    body = {"keys": [k.jwk() for k in idp.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, key: SigningKey | None = None, **claims) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": "kubernetes", "sub": "119abc", "groups": ["group1", "group2"],
                "hd": "example.com", "tenant": TENANT, "iat": now, "nbf": now, "exp": now + 600}
        body.update(claims)
        key = key or self.keys[0]
        return jwt.encode(body, key.key, algorithm="RS256", headers={"kid": key.kid})

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def auth_config(issuer: str, ca_pem: str, audience: str = "kubernetes", anonymous: dict | None = None) -> bytes:
    """The upstream documentation's example authenticator, for this issuer."""
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1beta1", "kind": "AuthenticationConfiguration",
        "jwt": [{
            "issuer": {"url": issuer, "certificateAuthority": ca_pem, "audiences": [audience]},
            "claimValidationRules": [{"expression": 'claims.hd == "example.com"',
                                      "message": "the hd claim must be set to example.com"}],
            "claimMappings": {
                "username": {"claim": "sub", "prefix": "oidc:"},
                "groups": {"claim": "groups", "prefix": "oidc:"},
                "uid": {"claim": "sub"},
                "extra": [{"key": "example.com/tenant", "valueExpression": "claims.tenant"}],
            },
        }],
    }
    if anonymous is not None:
        doc["anonymous"] = anonymous
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def sha256_label(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("standin-oidc-pki"))


@pytest.fixture
def idp(tmp_path):
    p = IdP(tmp_path)
    yield p
    p.stop()


@pytest.fixture
def config_file(tmp_path, idp) -> Path:
    return write_private(tmp_path / "authentication-config.yaml", auth_config(idp.url, idp.ca_pem))


@pytest.fixture
def running(pki, tmp_path, config_file, idp):
    r = Running(pki, backends()[-1], store_dir=tmp_path / "store", **{"authentication-config": str(config_file)})
    wait_for(lambda: idp.jwks_fetches >= 1)
    wait_for(lambda: r.server.auth_controller.keys.has_keys(r.server.config.jwt[0].spec.issuer))
    yield r
    r.stop()


def user_info(running, token: str) -> dict:
    code, body = running.whoami(bearer=token)
    assert code == 201, body
    return body["status"]["userInfo"]


# --- authentication -------------------------------------------------------------------------------------------


def test_a_good_token_is_the_mapped_user_as_the_documentation_says(running, idp):
    assert user_info(running, idp.token()) == {
        "username": "oidc:119abc",                                      # prefix + sub
        "uid": "119abc",
        "groups": ["oidc:group1", "oidc:group2", "system:authenticated"],   # prefix + each, then authenticated
        "extra": {"example.com/tenant": [TENANT]},
    }


@needs_kubectl
def test_kubectl_auth_whoami_with_the_token(running, idp, pki, tmp_path):
    kubectl = Kubectl(tmp_path, pki, running.port)
    got = json.loads(kubectl.ok("auth", "whoami", "-o", "json", token=idp.token()))
    assert got["status"]["userInfo"] == {"username": "oidc:119abc", "uid": "119abc",
                                         "groups": ["oidc:group1", "oidc:group2", "system:authenticated"],
                                         "extra": {"example.com/tenant": [TENANT]}}
    r = kubectl.run("auth", "whoami", token=idp.token(aud="someone-else"))
    assert r.returncode == 1 and "Unauthorized" in r.stderr


@pytest.mark.parametrize("claims, why", [
    ({"aud": "someone-else"}, "expected audience"),
    ({"exp": int(time.time()) - 60, "iat": int(time.time()) - 700, "nbf": int(time.time()) - 700}, "expired"),
    ({"hd": "evil.example"}, "the hd claim must be set to example.com"),
], ids=["wrong-aud", "expired", "claim-validation-rule"])
def test_a_bad_token_is_401_and_the_journal_says_why_without_the_token(running, idp, capfd, claims, why):
    if "exp" in claims:
        claims = {**claims, "exp": int(time.time()) - 60}
    token = idp.token(**claims)
    code, body = running.whoami(bearer=token)
    assert code == 401 and body["reason"] == "Unauthorized"
    err = capfd.readouterr().err
    assert why in err
    assert token not in err and token.split(".")[2] not in err


def test_a_token_before_the_keys_are_fetched_is_401_at_once_naming_the_issuer(pki, tmp_path, idp, capfd):
    """The issuer's CA is wrong in the file, so its keys can never be fetched: no hang, a 401."""
    (tmp_path / "other").mkdir()
    other = IdP(tmp_path / "other")
    try:
        path = write_private(tmp_path / "authn.json", auth_config(idp.url, other.ca_pem))
        r = Running(pki, backends()[-1], store_dir=tmp_path / "store", **{"authentication-config": str(path)})
        try:
            t0 = time.monotonic()
            code, _ = r.whoami(bearer=idp.token())
            assert code == 401 and time.monotonic() - t0 < 2.0
            wait_for(lambda: "Failed to fetch the issuer's keys" in (capfd.readouterr().err or ""))
            code, _ = r.whoami(bearer=idp.token())
            assert code == 401
            assert "authenticator not initialized" in capfd.readouterr().err
        finally:
            r.stop()
    finally:
        other.stop()


def test_a_new_kid_fetches_the_keys_again_at_most_once_per_interval(running, idp):
    keys = running.server.auth_controller.keys
    assert keys.interval == 10.0
    clock = [time.monotonic() + 3600.0]                         # the server's clock, moved by the test
    keys.clock = lambda: clock[0]
    fetched = idp.jwks_fetches
    for _ in range(5):
        assert running.whoami(bearer=idp.token())[0] == 201
    assert idp.jwks_fetches == fetched                          # warm cache: no fetch per request
    idp.keys.append(SigningKey("key-2"))                        # the IdP rotates its key
    assert user_info(running, idp.token(key=idp.keys[1]))["username"] == "oidc:119abc"
    assert idp.jwks_fetches == fetched + 1
    stranger = SigningKey("key-unknown")                        # a kid nobody publishes
    for _ in range(3):
        assert running.whoami(bearer=idp.token(key=stranger))[0] == 401
    assert idp.jwks_fetches == fetched + 1                      # rate-limited: within 10 s no refetch
    clock[0] += 9.0
    assert running.whoami(bearer=idp.token(key=stranger))[0] == 401
    assert idp.jwks_fetches == fetched + 1
    clock[0] += 1.5
    assert running.whoami(bearer=idp.token(key=stranger))[0] == 401
    assert idp.jwks_fetches == fetched + 2                      # 10 s later: one more look
    assert running.whoami(bearer=idp.token(key=idp.keys[1]))[0] == 201


def test_warm_cache_jwt_authentication_p99_is_under_5_ms(running, idp):
    """The issue's benchmark bound, in-process: the CPU time of this thread per authentication
    (the test machine may be loaded by others: wall-clock outliers there are not ours; the
    wall-clock median is held to the same bound)."""
    config = running.server.config
    token = idp.token()
    header = f"Bearer {token}"
    now = datetime.now(timezone.utc)
    cpu, wall = [], []
    for _ in range(500):
        t0, c0 = time.perf_counter(), time.thread_time()
        config.jwt_keys.before(token, config.jwt)
        result = authn.authenticate_request(None, header, config, now, path="/api")
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
        assert result.authenticated
    cpu.sort()
    wall.sort()
    p99 = cpu[int(len(cpu) * 0.99)]
    assert p99 < 0.005, f"p99 {p99 * 1000:.2f} ms of CPU"
    assert wall[len(wall) // 2] < 0.005, f"median {wall[len(wall) // 2] * 1000:.2f} ms"


# --- reload and metrics ------------------------------------------------------------------------------------------


def scrape(running, cert: str | None = "admin") -> tuple[int, str]:
    code, body = running.request("GET", "/metrics", cert=cert)
    return code, body if isinstance(body, str) else json.dumps(body)


def test_metrics_name_the_file_in_use_from_the_start_and_need_authorization(running, config_file):
    code, text = scrape(running)
    assert code == 200
    info = metric_lines(text, authconfig.LAST_CONFIG)
    assert len(info) == 1 and f'hash="{sha256_label(config_file.read_bytes())}"' in info[0]
    assert info[0].endswith("} 1")
    assert f"# TYPE {authconfig.LAST_CONFIG} gauge" in text
    assert metric_lines(text, authconfig.RELOADS) == []          # no reload yet: no samples, as upstream
    code, body = scrape(running, cert=None)                      # anonymous: RBAC says no
    assert code == 403 and "system:anonymous" in body


def test_a_rewritten_file_is_used_without_a_restart_and_a_broken_one_is_refused(running, idp, config_file, capfd):
    server = running.server
    watcher = server.auth_controller
    old_token = idp.token()
    assert running.whoami(bearer=old_token)[0] == 201
    new = auth_config(idp.url, idp.ca_pem, audience="kubernetes-2")
    config_file.write_bytes(new)
    assert watcher.check(server) == "success"
    assert running.server is server
    assert running.whoami(bearer=old_token)[0] == 401                       # the old audience is gone
    assert user_info(running, idp.token(aud="kubernetes-2"))["username"] == "oidc:119abc"
    text = scrape(running)[1]
    ids = authconfig.sha256_label(authconfig.apiserver_id())
    assert metric_lines(text, authconfig.LAST_CONFIG) == [
        f'{authconfig.LAST_CONFIG}{{apiserver_id_hash="{ids}",hash="{sha256_label(new)}"}} 1']
    assert metric_lines(text, authconfig.RELOADS) == [
        f'{authconfig.RELOADS}{{apiserver_id_hash="{ids}",status="success"}} 1']
    assert '"reloaded authentication config"' in capfd.readouterr().err
    assert watcher.check(server) is None                                     # unchanged: nothing to do

    config_file.write_bytes(new.replace(b'claims.hd == \\"example.com\\"', b'claims.hd == '))   # CEL broken
    assert watcher.check(server) == "failure"
    assert watcher.check(server) is None                                     # tracked: counted once
    err = capfd.readouterr().err
    assert '"failed to validate authentication config"' in err and "claimValidationRules[0].expression" in err
    assert user_info(running, idp.token(aud="kubernetes-2"))["username"] == "oidc:119abc"   # old config kept
    config_file.write_bytes(b"{not json")
    assert watcher.check(server) == "failure"
    assert '"failed to load authentication config"' in capfd.readouterr().err
    text = scrape(running)[1]
    assert metric_lines(text, authconfig.LAST_CONFIG)[0].endswith(f'hash="{sha256_label(new)}"}} 1')
    assert f'{authconfig.RELOADS}{{apiserver_id_hash="{ids}",status="failure"}} 2' in text
    stamp = [line for line in metric_lines(text, authconfig.LAST_TIMESTAMP) if 'status="failure"' in line]
    assert len(stamp) == 1 and abs(float(stamp[0].rsplit(" ", 1)[1]) - time.time()) < 60


def test_the_anonymous_block_replaces_the_flag_and_cannot_change_on_reload(pki, tmp_path, idp):
    path = write_private(tmp_path / "authn.json", auth_config(
        idp.url, idp.ca_pem, anonymous={"enabled": True, "conditions": [{"path": "/livez"}]}))
    r = Running(pki, backends()[-1], store_dir=tmp_path / "store", **{"authentication-config": str(path)})
    try:
        assert r.request("GET", "/livez")[0] == 200                     # anonymous, on a listed path
        assert r.request("GET", "/version")[0] == 401                   # anonymous elsewhere: no
        path.write_bytes(auth_config(idp.url, idp.ca_pem, anonymous={"enabled": True}))
        assert r.server.auth_controller.check(r.server) == "failure"    # upstream: Forbidden on reload
        assert r.request("GET", "/version")[0] == 401
    finally:
        r.stop()


def test_metrics_text_is_upstreams_for_its_test_vectors():
    """k8s.io/apiserver/.../authenticationconfig/metrics/metrics_test.go: the id "testAPIServerID",
    a config "config2", a timestamp 1689101941."""
    m = authconfig.Metrics("testAPIServerID", clock=lambda: 1689101941)
    m.success(authconfig.sha256_label("config2"))
    ids = "sha256:14f9d63e669337ac6bfda2e2162915ee6a6067743eddd4e5c374b572f951ff37"
    assert m.text() == (
        f"# HELP {authconfig.LAST_TIMESTAMP} [BETA] Timestamp of the last automatic reload of authentication "
        "configuration split by status and apiserver identity.\n"
        f"# TYPE {authconfig.LAST_TIMESTAMP} gauge\n"
        f'{authconfig.LAST_TIMESTAMP}{{apiserver_id_hash="{ids}",status="success"}} 1.689101941e+09\n'
        f"# HELP {authconfig.RELOADS} [BETA] Total number of automatic reloads of authentication configuration "
        "split by status and apiserver identity.\n"
        f"# TYPE {authconfig.RELOADS} counter\n"
        f'{authconfig.RELOADS}{{apiserver_id_hash="{ids}",status="success"}} 1\n'
        f"# HELP {authconfig.LAST_CONFIG} [ALPHA] Information about the last applied authentication "
        "configuration with hash as label, split by apiserver identity.\n"
        f"# TYPE {authconfig.LAST_CONFIG} gauge\n"
        f'{authconfig.LAST_CONFIG}{{apiserver_id_hash="{ids}",'
        'hash="sha256:f309dd9c31fe24b3e594d2f9420419c48dfe954523245d5f35dc37739970d881"} 1\n')


# --- the binary -------------------------------------------------------------------------------------------------


def run_binary(pki, tmp_path, *extra, **over) -> subprocess.CompletedProcess:
    env = {**os.environ, "K8SBOOT_STANDIN_DATA_DIR": str(tmp_path / "store")}
    return subprocess.run([sys.executable, "-m", "k8sboot.standin", *base_argv(pki, **over), *extra],
                          capture_output=True, text=True, env=env, timeout=60)


def test_the_binary_refuses_to_start_as_kube_apiserver_does(pki, tmp_path, idp, config_file):
    r = run_binary(pki, tmp_path, f"--authentication-config={config_file}", "--oidc-issuer-url=https://x")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == "Error: authentication-config file and oidc-* flags are mutually exclusive"

    anon = write_private(tmp_path / "anon.json", auth_config(idp.url, idp.ca_pem, anonymous={"enabled": False}))
    r = run_binary(pki, tmp_path, f"--authentication-config={anon}", "--anonymous-auth=true")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == ("Error: anonymous: Forbidden: --anonymous-auth flag cannot be set when "
                                         "anonymous field is configured in authentication configuration file")

    bad = write_private(tmp_path / "bad.json", config_file.read_bytes().replace(b'"claims.tenant"', b'"claims.tenant +"'))
    r = run_binary(pki, tmp_path, f"--authentication-config={bad}")
    assert r.returncode == 1
    last = r.stderr.splitlines()[-1]
    assert last.startswith("Error: invalid authentication configuration: jwt[0].claimMappings.extra[0].valueExpression: ")

    sa = write_private(tmp_path / "sa.json", auth_config(idp.url, idp.ca_pem).replace(idp.url.encode(), b"https://10.240.0.10:6443"))
    r = run_binary(pki, tmp_path, f"--authentication-config={sa}")     # the SA issuer of base_argv
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(
        "Error: invalid authentication configuration: jwt[0].issuer.url: ")

    notjson = write_private(tmp_path / "x.json", b"apiVersion: [")
    r = run_binary(pki, tmp_path, f"--authentication-config={notjson}")
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(
        f'Error: failed to load authentication configuration from file "{notjson}": ')


def test_the_binary_reloads_the_file_on_its_own_with_the_same_pid(pki, tmp_path, idp, config_file):
    with socket_port() as port:
        pass
    env = {**os.environ, "K8SBOOT_STANDIN_RELOAD_INTERVAL": "0.2", "K8SBOOT_STANDIN_DATA_DIR": str(tmp_path / "store")}
    argv = base_argv(pki, **{"secure-port": str(port), "authentication-config": str(config_file)})
    proc = subprocess.Popen([sys.executable, "-m", "k8sboot.standin", *argv], stderr=subprocess.PIPE, text=True, env=env)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "admin.pem", pki / "admin-key.pem")

    bare = ssl.create_default_context(cafile=str(pki / "ca.pem"))          # no client cert: the token alone

    def get(path: str, token: str | None = None) -> tuple[int, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=bare if token else ctx, timeout=5)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("POST" if token else "GET", path, body=b"{}" if token else None, headers=headers)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def config_hash() -> str | None:
        try:
            code, text = get("/metrics")
        except OSError:
            return None
        lines = metric_lines(text, authconfig.LAST_CONFIG)
        return lines[0].split('hash="')[2].split('"')[0] if code == 200 and lines else None

    review = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    tokens = []
    try:
        wait_for(lambda: proc.poll() is not None or config_hash() is not None, 20)
        assert config_hash() == sha256_label(config_file.read_bytes())
        wait_for(lambda: idp.jwks_fetches >= 1)
        pid = proc.pid
        new = auth_config(idp.url, idp.ca_pem, audience="kubernetes-2")
        config_file.write_bytes(new)
        wait_for(lambda: config_hash() == sha256_label(new), 20)
        assert proc.poll() is None and proc.pid == pid
        tokens.append(idp.token(aud="kubernetes-2"))
        tokens.append(idp.token())
        code, body = get(review, tokens[0])
        assert code == 201 and json.loads(body)["status"]["userInfo"]["username"] == "oidc:119abc"
        assert get(review, tokens[1])[0] == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert '"reloaded authentication config"' in err and f'hash="{sha256_label(new)}"' in err
    for token in tokens:
        assert token not in err and token.split(".")[2] not in err
