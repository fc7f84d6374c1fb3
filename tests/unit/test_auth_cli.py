"""`k8sboot whoami` and `k8sboot token create|decode` as a user runs them: output, exit codes,
no traceback, and no token or key material on stderr."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/authn_factory.py

import authn_factory as f  # noqa: E402

from k8sboot import authn  # noqa: E402
from k8sboot.cli import app  # noqa: E402
from k8sboot.cli.auth_cmds import render_whoami_table  # noqa: E402
from k8sboot.errors import ExitCode  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://10.0.1.10:6443"       # inventory/cluster.yaml's service_account_issuer
REAL_NOW = datetime.now(timezone.utc)   # the CLI reads the real clock

runner = CliRunner()


class Cluster:
    """inventory/cluster.yaml in a temp cwd, with a PKI made by the test factory (not k8sboot.pki)."""

    def __init__(self, root: Path, anonymous_auth: bool = False):
        self.root = root
        self.pki = root / "pki"
        self.pki.mkdir()
        (root / "inventory").mkdir()
        text = (ROOT / "inventory" / "cluster.yaml").read_text()
        if anonymous_auth:
            text = text.replace("anonymous_auth: false", "anonymous_auth: true")
        (root / "inventory" / "cluster.yaml").write_text(text)
        self.ca = f.make_ca(not_before=REAL_NOW - timedelta(days=1))
        self.write("ca.pem", self.ca.pem)
        self.admin = self.client("admin", ("system:masters",))
        self.write("admin.pem", self.admin.pem)
        self.write("admin-key.pem", self.admin.key_pem)
        self.sa_key = f.private_key("rsa", "sa")
        self.write("service-account.pem", f.public_pem(self.sa_key))
        self.write("service-account-key.pem", f.key_pem(self.sa_key))

    def write(self, name: str, data: bytes) -> Path:
        path = self.pki / name
        path.write_bytes(data)
        return path

    def client(self, cn, orgs=(), **kw):
        kw.setdefault("not_before", REAL_NOW - timedelta(minutes=5))
        kw.setdefault("not_after", REAL_NOW + timedelta(days=30))
        return f.make_client_cert(self.ca, cn, orgs, **kw)

    def token(self, key=None, **kw) -> str:
        kw.setdefault("now", datetime.now(timezone.utc))   # now, not at import: the suite may run long after
        kw.setdefault("iss", ISSUER)
        kw.setdefault("aud", [ISSUER])
        return f.sign_token(f.sa_claims(**kw), key or self.sa_key)


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Cluster:
    monkeypatch.chdir(tmp_path)
    return Cluster(tmp_path)


@pytest.fixture
def open_cluster(tmp_path, monkeypatch) -> Cluster:
    monkeypatch.chdir(tmp_path)
    return Cluster(tmp_path, anonymous_auth=True)


def run(*args: str, input: str | None = None):
    result = runner.invoke(app, list(args), input=input)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_no_secret(result, *secrets: str):
    for secret in secrets:
        assert secret not in result.stderr
    assert "PRIVATE KEY" not in result.output and "BEGIN" not in result.stderr


# --- whoami --cert --------------------------------------------------------------------------------


def test_whoami_admin_cert_prints_kubectl_auth_whoami_table(cluster):
    result = run("whoami", "--cert", "pki/admin.pem")
    assert result.exit_code == 0, result.output
    fingerprint = hashlib.sha256(cluster.admin.der).hexdigest()
    assert result.stdout == (
        "ATTRIBUTE                                           VALUE\n"
        "Username                                            admin\n"
        "Groups                                              [system:masters system:authenticated]\n"
        f"Extra: authentication.kubernetes.io/credential-id   [X509SHA256={fingerprint}]\n"
    )
    assert result.stderr == ""


def test_whoami_with_the_matching_key_succeeds(cluster):
    assert run("whoami", "--cert", "pki/admin.pem", "--key", "pki/admin-key.pem").exit_code == 0


def test_whoami_with_a_key_of_another_cert_is_a_pki_error_without_key_material(cluster):
    other = f.private_key("rsa", "other")
    cluster.write("other-key.pem", f.key_pem(other))
    result = run("whoami", "--cert", "pki/admin.pem", "--key", "pki/other-key.pem")
    assert result.exit_code == ExitCode.PKI
    assert "pki/other-key.pem does not match pki/admin.pem" in result.stderr
    assert "hint:" in result.stderr
    assert_no_secret(result)


def test_whoami_with_an_unreadable_key_says_so_without_echoing_it(cluster):
    cluster.write("bad-key.pem", b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    result = run("whoami", "--cert", "pki/admin.pem", "--key", "pki/bad-key.pem")
    assert result.exit_code == ExitCode.PKI and "not a PEM private key" in result.stderr
    assert_no_secret(result, "c2VjcmV0")


@pytest.mark.parametrize("case, fragment", [
    ("other_ca", "signed by unknown authority"),
    ("expired", "certificate has expired"),
    ("not_yet_valid", "not yet valid"),
    ("server_auth_only", "incompatible key usage"),
    ("empty_cn", "empty Common Name"),
])
def test_whoami_cert_refusals_are_401_with_the_reason(cluster, case, fragment):
    cert = {
        "other_ca": lambda: f.make_client_cert(f.make_ca(key=f.private_key("rsa", "rogue")), "admin",
                                               not_before=REAL_NOW - timedelta(minutes=5),
                                               not_after=REAL_NOW + timedelta(days=30)),
        "expired": lambda: cluster.client("admin", not_before=REAL_NOW - timedelta(days=3),
                                          not_after=REAL_NOW - timedelta(days=1)),
        "not_yet_valid": lambda: cluster.client("admin", not_before=REAL_NOW + timedelta(days=1),
                                                not_after=REAL_NOW + timedelta(days=3)),
        "server_auth_only": lambda: cluster.client("kubernetes", eku=("serverAuth",)),
        "empty_cn": lambda: cluster.client(None, ("system:masters",)),
    }[case]()
    cluster.write("client.pem", cert.pem)
    result = run("whoami", "--cert", "pki/client.pem")
    assert result.exit_code == ExitCode.UNAUTHORIZED
    assert result.stderr.startswith("401 Unauthorized: ") and fragment in result.stderr
    assert result.stdout == ""


def test_whoami_refuses_a_sha1_signed_system_masters_cert_as_kube_apiserver_does(cluster):
    # the issue's repro: Go's crypto/x509 refuses SHA-1 signatures (InsecureAlgorithmError), so the
    # API server answers 401 to this cert; whoami used to print "Username old-admin"
    from cryptography.hazmat.primitives import hashes, serialization
    from test_go_oracle import _resign_rsa

    cert = cluster.client("old-admin", ("system:masters",))
    sha1 = _resign_rsa(cert.cert, cluster.ca.key, hashes.SHA1())
    cluster.write("old-admin.pem", sha1.public_bytes(serialization.Encoding.PEM))
    result = run("whoami", "--cert", "pki/old-admin.pem")
    assert result.exit_code == ExitCode.UNAUTHORIZED and result.stdout == ""
    assert result.stderr == ("401 Unauthorized: client certificate CN=old-admin: x509: certificate signed by "
                             'unknown authority (possibly because of "x509: cannot verify signature: insecure '
                             'algorithm SHA1-RSA" while trying to verify candidate authority certificate '
                             '"Kubernetes")\n')


def test_whoami_accepts_a_legacy_secret_based_token_and_names_the_secret_a_server_needs(cluster):
    claims = {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:authn-demo:bot",
              "kubernetes.io/serviceaccount/namespace": "authn-demo",
              "kubernetes.io/serviceaccount/secret.name": "bot-token-5v2cp",
              "kubernetes.io/serviceaccount/service-account.name": "bot",
              "kubernetes.io/serviceaccount/service-account.uid": "u-7"}
    result = run("whoami", "--token", f.sign_token(claims, cluster.sa_key))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == ["Username", "system:serviceaccount:authn-demo:bot"]
    assert result.stderr == ("note: the API server accepts this token as system:serviceaccount:authn-demo:bot "
                             "if Secret authn-demo/bot-token-5v2cp exists and holds this very token, and "
                             "ServiceAccount authn-demo/bot exists with uid u-7 (it looks them up; k8sboot "
                             "cannot, offline)\n")


def test_whoami_empty_cn_cert_with_anonymous_on_is_anonymous_and_says_why(open_cluster):
    open_cluster.write("client.pem", open_cluster.client(None, ("system:masters",)).pem)
    result = run("whoami", "--cert", "pki/client.pem")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1].split() == ["Username", "system:anonymous"]
    assert "note:" in result.stderr and "empty Common Name" in result.stderr


def test_whoami_rejected_cert_with_anonymous_on_is_still_401(open_cluster):
    rogue = f.make_client_cert(f.make_ca(key=f.private_key("rsa", "rogue")), "admin",
                               not_before=REAL_NOW - timedelta(minutes=5),
                               not_after=REAL_NOW + timedelta(days=30))
    open_cluster.write("client.pem", rogue.pem)
    assert run("whoami", "--cert", "pki/client.pem").exit_code == ExitCode.UNAUTHORIZED


def test_whoami_json_is_a_self_subject_review(cluster):
    result = run("whoami", "--cert", "pki/admin.pem", "--json")
    doc = json.loads(result.stdout)
    assert doc["kind"] == "SelfSubjectReview"
    assert doc["status"]["userInfo"]["groups"] == ["system:masters", "system:authenticated"]


def test_whoami_json_401_is_the_status_document_with_the_cause(cluster):
    result = run("whoami", "--anonymous", "--json")
    assert result.exit_code == ExitCode.UNAUTHORIZED
    doc = json.loads(result.stdout)
    assert (doc["kind"], doc["code"], doc["reason"], doc["message"]) == ("Status", 401, "Unauthorized", "Unauthorized")
    assert doc["details"]["causes"][0]["reason"] == "anonymous_disabled"


def test_whoami_reads_a_cert_bundle_with_its_intermediate(cluster):
    inter = f.make_ca("Intermediate", parent=cluster.ca, key=f.private_key("rsa", "inter"),
                      not_before=REAL_NOW - timedelta(days=1))
    leaf = f.make_client_cert(inter, "carol", ("team",), not_before=REAL_NOW - timedelta(minutes=5),
                              not_after=REAL_NOW + timedelta(days=30))
    cluster.write("bundle.pem", leaf.pem + inter.pem)
    result = run("whoami", "--cert", "pki/bundle.pem")
    assert result.exit_code == 0 and "carol" in result.stdout


def test_whoami_accepts_a_der_certificate(cluster):
    cluster.write("admin.der", cluster.admin.der)
    assert run("whoami", "--cert", "pki/admin.der").exit_code == 0


# --- whoami --token / --anonymous -------------------------------------------------------------------


def test_whoami_token_prints_the_service_account_identity(cluster):
    result = run("whoami", "--token", cluster.token(uid="u-1", jti="j-1"))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["Username", "system:serviceaccount:authn-demo:bot"]
    assert lines[2].split() == ["UID", "u-1"]
    assert lines[3].endswith("[system:serviceaccounts system:serviceaccounts:authn-demo system:authenticated]")
    assert lines[4].endswith("[JTI=j-1]")
    # offline k8sboot cannot look the ServiceAccount up; a real server does (claims.go): say what it needs
    assert result.stderr == ("note: the API server accepts this token as system:serviceaccount:authn-demo:bot "
                             "if ServiceAccount authn-demo/bot exists with uid u-1 (it looks the account "
                             "up; k8sboot cannot, offline)\n")


def test_whoami_token_from_stdin(cluster):
    result = run("whoami", "--token", "-", input=cluster.token() + "\n")
    assert result.exit_code == 0 and "system:serviceaccount:authn-demo:bot" in result.stdout


def test_whoami_empty_stdin_is_a_usage_error(cluster):
    assert run("whoami", "--token", "-", input="").exit_code == ExitCode.USAGE


@pytest.mark.parametrize("case, fragment", [
    ("bad_signature", "does not verify"),
    ("wrong_issuer", "issuer"),
    ("wrong_audience", "audiences"),
    ("expired", "has expired"),
    ("not_yet_valid", "not valid yet"),
    ("malformed", "malformed token"),
    ("alg_none", '"none"'),
])
def test_whoami_token_refusals_are_401_and_never_echo_the_token(cluster, case, fragment):
    token = {
        "bad_signature": lambda: cluster.token(f.private_key("rsa", "other")),
        "wrong_issuer": lambda: cluster.token(iss="https://evil"),
        "wrong_audience": lambda: cluster.token(aud=["vault"]),
        "expired": lambda: cluster.token(now=REAL_NOW - timedelta(hours=1)),
        "not_yet_valid": lambda: cluster.token(nbf=int((REAL_NOW + timedelta(hours=1)).timestamp())),
        "malformed": lambda: "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2lnbmF0dXJl",
        "alg_none": lambda: f.raw_token({"alg": "none"}, f.sa_claims(now=REAL_NOW)),
    }[case]()
    result = run("whoami", "--token", token)
    assert result.exit_code == ExitCode.UNAUTHORIZED
    assert result.stderr.startswith("401 Unauthorized: ") and fragment in result.stderr
    assert_no_secret(result, token, token.split(".")[-1] or token)
    assert token not in result.stdout


def test_whoami_anonymous_when_the_inventory_allows_it(open_cluster):
    result = run("whoami", "--anonymous")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1:] == [
        "Username    system:anonymous", "Groups      [system:unauthenticated]"]


def test_whoami_anonymous_when_the_inventory_forbids_it_is_401(cluster):
    result = run("whoami", "--anonymous")
    assert result.exit_code == ExitCode.UNAUTHORIZED and "anonymous auth is off" in result.stderr


# --- whoami usage and environment errors ------------------------------------------------------------


@pytest.mark.parametrize("args", [
    [], ["--cert", "pki/admin.pem", "--anonymous"], ["--token", "x", "--anonymous"],
    ["--cert", "pki/admin.pem", "--token", "x"], ["--key", "pki/admin-key.pem", "--anonymous"],
    ["--token", "  "],
])
def test_whoami_needs_exactly_one_credential_kind(cluster, args):
    result = run("whoami", *args)
    assert result.exit_code == ExitCode.USAGE


def test_whoami_without_ca_pem_names_the_path_and_suggests_gen_certs(cluster):
    (cluster.pki / "ca.pem").unlink()
    result = run("whoami", "--cert", "pki/admin.pem")
    assert result.exit_code == ExitCode.PKI
    assert "pki/ca.pem: no such file" in result.stderr and "k8sboot gen-certs" in result.stderr


def test_whoami_token_without_service_account_pem_is_a_pki_error(cluster):
    (cluster.pki / "service-account.pem").unlink()
    result = run("whoami", "--token", cluster.token())
    assert result.exit_code == ExitCode.PKI and "pki/service-account.pem" in result.stderr


def test_whoami_anonymous_needs_no_pki_file(open_cluster):
    for name in ("ca.pem", "service-account.pem"):
        (open_cluster.pki / name).unlink()
    assert run("whoami", "--anonymous").exit_code == 0


def test_whoami_with_a_missing_cert_file_is_a_pki_error(cluster):
    result = run("whoami", "--cert", "pki/nobody.pem")
    assert result.exit_code == ExitCode.PKI and "pki/nobody.pem: no such file" in result.stderr


def test_whoami_with_a_key_passed_as_cert_is_a_pki_error(cluster):
    result = run("whoami", "--cert", "pki/admin-key.pem")
    assert result.exit_code == ExitCode.PKI and "not a PEM or DER X.509 certificate" in result.stderr
    assert_no_secret(result)


def test_whoami_with_a_missing_inventory_is_an_inventory_error(cluster):
    result = run("whoami", "--cert", "pki/admin.pem", "-i", "inventory/none.yaml")
    assert result.exit_code == ExitCode.INVENTORY


def test_whoami_table_pads_like_kubectl_tabwriter():
    user = authn.UserInfo("a", groups=("g",))
    assert render_whoami_table(user) == "ATTRIBUTE   VALUE\nUsername    a\nGroups      [g]\n"


# --- token create -----------------------------------------------------------------------------------


def test_token_create_prints_only_the_token(cluster):
    result = run("token", "create", "--namespace", "authn-demo", "--service-account", "bot",
                 "--duration", "10m")
    assert result.exit_code == 0 and result.stderr == ""
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    config = authn.AuthenticatorConfig(service_account_keys=(cluster.sa_key.public_key(),),
                                       service_account_issuers=(ISSUER,))
    verdict = authn.authenticate_token(token, config, datetime.now(timezone.utc))
    assert verdict.user.username == "system:serviceaccount:authn-demo:bot"
    claims = authn.parse_jwt(token).claims
    assert claims["exp"] - claims["iat"] == 600 and claims["aud"] == [ISSUER]


def test_token_create_then_whoami_round_trip(cluster):
    token = run("token", "create", "-n", "authn-demo", "--service-account", "bot").stdout.strip()
    assert "system:serviceaccount:authn-demo:bot" in run("whoami", "--token", token).stdout


def test_token_create_for_another_audience_gets_401_from_whoami(cluster):
    token = run("token", "create", "--service-account", "bot", "--audience", "vault",
                "--audience", "other").stdout.strip()
    assert authn.parse_jwt(token).claims["aud"] == ["vault", "other"]
    result = run("whoami", "--token", token)
    assert result.exit_code == ExitCode.UNAUTHORIZED and '["vault", "other"]' in result.stderr


@pytest.mark.parametrize("args", [
    ["--duration", "10x"], ["--duration", "0s"], ["--duration", ""], ["-n", "Bad_NS"],
    ["--service-account", "Bot!"], ["--audience", ""],
])
def test_token_create_bad_arguments_are_usage_errors(cluster, args):
    base = {"--service-account": "bot"}
    argv = ["token", "create", *args]
    if "--service-account" not in args:
        argv += ["--service-account", base["--service-account"]]
    result = run(*argv)
    assert result.exit_code == ExitCode.USAGE and result.stdout == ""


def test_token_create_without_the_signing_key_suggests_gen_certs(cluster):
    (cluster.pki / "service-account-key.pem").unlink()
    result = run("token", "create", "--service-account", "bot")
    assert result.exit_code == ExitCode.PKI
    assert "pki/service-account-key.pem: no such file" in result.stderr and "gen-certs" in result.stderr


@pytest.mark.parametrize("curve, alg", [("SECP256R1", "ES256"), ("SECP384R1", "ES384"), ("SECP521R1", "ES512")])
def test_token_create_signs_with_the_algorithm_kube_apiserver_uses_for_the_ecdsa_curve(cluster, curve, alg):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(getattr(ec, curve)())
    cluster.write("service-account-key.pem", f.key_pem(key))
    cluster.write("service-account.pem", f.public_pem(key))
    token = run("token", "create", "--service-account", "bot").stdout.strip()
    assert authn.parse_jwt(token).header["alg"] == alg
    assert run("whoami", "--token", token).exit_code == 0


# --- token decode -----------------------------------------------------------------------------------


def test_token_decode_prints_header_and_claims_and_a_verdict_line(cluster):
    token = cluster.token()
    result = run("token", "decode", token)
    assert result.exit_code == 0
    decoder = json.JSONDecoder()
    header, end = decoder.raw_decode(result.stdout)
    claims, _ = decoder.raw_decode(result.stdout[end:].lstrip())
    assert header["alg"] == "RS256" and claims["sub"] == "system:serviceaccount:authn-demo:bot"
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("signature: OK (RS256) against pki/service-account.pem; iss: OK; aud: OK; exp: OK")
    assert result.stderr.rstrip().endswith(
        "=> the API server accepts it as system:serviceaccount:authn-demo:bot if ServiceAccount "
        f"authn-demo/bot exists with uid {claims['kubernetes.io']['serviceaccount']['uid']} "
        "(it looks the account up; k8sboot cannot, offline)")
    assert token not in result.stderr


def test_token_decode_of_a_foreign_token_says_the_signature_fails(cluster):
    result = run("token", "decode", cluster.token(f.private_key("rsa", "other"), aud=["vault"]))
    assert result.exit_code == 0
    assert "signature: FAILED" in result.stderr and "aud: FAILED" in result.stderr
    assert "would answer 401" in result.stderr


def test_token_decode_from_stdin(cluster):
    result = run("token", "decode", "-", input=cluster.token())
    assert result.exit_code == 0 and "signature: OK" in result.stderr


@pytest.mark.parametrize("garbage", ["garbage", "a.b", "!!!.???.***", "e30.e30"])
def test_token_decode_of_garbage_is_a_one_line_token_error(cluster, garbage):
    result = run("token", "decode", garbage)
    assert result.exit_code == ExitCode.TOKEN
    assert result.stderr.startswith("k8sboot: error: decoding the token: ")
    assert result.stdout == ""


def test_token_decode_without_an_inventory_still_decodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    token = f.sign_token(f.sa_claims())
    result = run("token", "decode", token)
    assert result.exit_code == 0 and "not checked" in result.stderr and '"alg": "RS256"' in result.stdout


def test_token_decode_with_missing_public_key_says_not_found(cluster):
    (cluster.pki / "service-account.pem").unlink()
    result = run("token", "decode", cluster.token())
    assert result.exit_code == 0 and "not found" in result.stderr and "gen-certs" in result.stderr


# --- help and the installed entry point -------------------------------------------------------------


@pytest.mark.parametrize("command", [["whoami"], ["token"], ["token", "create"], ["token", "decode"]])
def test_every_auth_command_help_has_worked_examples(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Examples:" in result.stdout and "k8sboot " in result.stdout


def test_installed_entry_point_runs_whoami(cluster):
    exe = Path(sys.executable).with_name("k8sboot")
    if not exe.exists():
        pytest.skip(f"no installed entry point next to {sys.executable}")
    proc = subprocess.run([str(exe), "whoami", "--cert", "pki/admin.pem"], cwd=cluster.root,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split() == ["Username", "admin"]
