"""The kube-apiserver stand-in on a real lab host, started by a hand-written systemd unit, with
the real PKI from `k8sboot gen-certs`, checked with real kubectl and curl from the workstation.
The stand-in alone, not its storage: the unit keeps its objects in a local directory
(K8SBOOT_STANDIN_DATA_DIR) instead of etcd; the modules that deploy (test_deploy, test_tutorial,
test_etcd_lab) run it on the etcd that `k8sboot deploy-etcd` brings up.

Everything dials 10.240.0.10:6443 only (the lab's controller-0), never anything else.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ISSUER = "https://10.240.0.10:6443"
REQUIRED = ("Error: [service-account-issuer is a required flag, --service-account-signing-key-file "
            "and --service-account-issuer are required flags]")
PKI_FILES = ("ca.pem", "kubernetes.pem", "kubernetes-key.pem", "service-account.pem", "service-account-key.pem")


def unit(address: str, anonymous: bool = True, issuer: str | None = ISSUER, extra: tuple[str, ...] = ()) -> str:
    flags = [
        f"--advertise-address={address}", "--allow-privileged=true",
        f"--anonymous-auth={'true' if anonymous else 'false'}", "--authorization-mode=Node,RBAC",
        "--bind-address=0.0.0.0", "--client-ca-file=/var/lib/kubernetes/ca.pem",
        f"--etcd-servers=https://{address}:2379", "--secure-port=6443",
        "--service-account-key-file=/var/lib/kubernetes/service-account.pem",
        "--service-account-signing-key-file=/var/lib/kubernetes/service-account-key.pem",
        *([f"--service-account-issuer={issuer}"] if issuer else []),
        "--service-cluster-ip-range=10.32.0.0/24",
        "--tls-cert-file=/var/lib/kubernetes/kubernetes.pem",
        "--tls-private-key-file=/var/lib/kubernetes/kubernetes-key.pem", "--v=2", *extra,
    ]
    body = " \\\n  ".join(["/usr/local/bin/kube-apiserver", *flags])
    return ("[Unit]\nDescription=Kubernetes API Server (k8sboot stand-in, hand-written test unit)\n\n"
            f"[Service]\nEnvironment=K8SBOOT_STANDIN_DATA_DIR=/var/lib/kube-apiserver-standin\n"
            f"ExecStart={body}\nRestart=on-failure\nRestartSec=5\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


@pytest.fixture(scope="module")
def workdir(lab_hosts, lab_inventory, lab_tools, tmp_path_factory) -> Path:
    """A tmp cwd with inventory/lab.yaml, pki/ from `k8sboot gen-certs` and admin.kubeconfig."""
    d = tmp_path_factory.mktemp("standin-lab")
    (d / "inventory").mkdir()
    shutil.copy(lab_inventory, d / "inventory" / "lab.yaml")
    lab_tools.k8sboot("gen-certs", "-i", "inventory/lab.yaml", cwd=d)
    lab_tools.k8sboot("kubeconfig", "admin", "-i", "inventory/lab.yaml", cwd=d)
    assert (d / "admin.kubeconfig").exists() and (d / "pki" / "kubernetes.pem").exists()
    return d


@pytest.fixture(scope="module")
def controller(lab_hosts, workdir):
    """controller-0 with the PKI files, on a fresh root (so it runs the stand-in of this source
    tree: the lab installs it at `lab up` and `lab reset`); reset again when the module is done."""
    h = lab_hosts[0]
    h.reset()
    with h.connection() as c:
        c.run("install -d -m 700 /var/lib/kubernetes", hide=True)
        for name in PKI_FILES:
            c.put(str(workdir / "pki" / name), f"/var/lib/kubernetes/{name}")
        c.run("chmod 600 /var/lib/kubernetes/*-key.pem", hide=True)
    yield h
    h.reset()


def start(h, unit_text: str) -> None:
    with h.connection() as c:
        c.put(io.StringIO(unit_text), "/etc/systemd/system/kube-apiserver.service")
        c.run("systemctl daemon-reload && systemctl enable kube-apiserver >/dev/null 2>&1 && "
              "systemctl restart kube-apiserver", hide=True)


def wait_serving(address: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, 6443), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}:6443 after {timeout} s")


def curl(workdir: Path, lab_tools, path: str, *args: str) -> tuple[int, dict]:
    out = workdir / f"body-{uuid.uuid4().hex}"
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-o", str(out), "-w", "%{http_code}",
                        "--cacert", str(workdir / "pki" / "ca.pem"), *args, f"https://10.240.0.10:6443{path}"],
                       capture_output=True, text=True, env=lab_tools.clean_env())
    assert r.returncode == 0, r.stderr
    return int(r.stdout), json.loads(out.read_text())


def whoami_by_token(workdir, lab_tools, tok: str) -> tuple[int, dict]:
    return curl(workdir, lab_tools, "/apis/authentication.k8s.io/v1/selfsubjectreviews", "-X", "POST",
                "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {tok}",
                "-d", '{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}')


@pytest.fixture(scope="module")
def serving(controller):
    """The stand-in with anonymous auth on (the tutorial's 403 demo)."""
    start(controller, unit(controller.address, anonymous=True))
    wait_serving(controller.address)
    return controller


def test_kubectl_auth_whoami_with_the_admin_kubeconfig(serving, workdir, lab_tools):
    r = subprocess.run(["kubectl", "--kubeconfig", str(workdir / "admin.kubeconfig"), "auth", "whoami"],
                       capture_output=True, text=True, timeout=30, env=lab_tools.clean_env())
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln.split(None, 1)[1].strip() for ln in r.stdout.splitlines() if ln.strip()}
    assert lines["Username"] == "admin"
    assert lines["Groups"] == "[system:masters system:authenticated]"
    assert "X509SHA256=" in r.stdout


def test_no_credential_is_403_as_system_anonymous_with_anonymous_auth_on(serving, workdir, lab_tools):
    code, body = curl(workdir, lab_tools, "/api/v1/namespaces/default/pods")
    assert code == 403
    assert body["message"] == ('pods is forbidden: User "system:anonymous" cannot list resource "pods" '
                               'in API group "" in the namespace "default"')
    assert body["reason"] == "Forbidden" and body["code"] == 403


def test_version_says_stand_in(serving, workdir, lab_tools):
    code, body = curl(workdir, lab_tools, "/version")
    assert code == 200 and body["gitVersion"] == "v0.0.0-k8sboot-standin"


def kubectl(workdir: Path, lab_tools, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    """Real kubectl against controller-0 as admin (or with `token` and no other credential); its
    own discovery cache, so nothing a stand-in of another version served is remembered."""
    if token:
        auth = ["--kubeconfig=/dev/null", "--server=https://10.240.0.10:6443",
                f"--certificate-authority={workdir / 'pki' / 'ca.pem'}", f"--token={token}"]
    else:
        auth = ["--kubeconfig", str(workdir / "admin.kubeconfig")]
    return subprocess.run(["kubectl", *auth, "--cache-dir", str(workdir / "kube-cache"), *args],
                          capture_output=True, text=True, timeout=60, env=lab_tools.clean_env())


def test_the_lab_installs_the_stand_in_package_with_what_it_imports(serving):
    listed = serving.run("cd /usr/local/lib/k8sboot-standin/k8sboot && ls *.py */*.py").stdout.split()
    for name in ("authn/__init__.py", "authn/x509.py", "rbac/__init__.py", "rbac/escalation.py", "tokens.py", "errors.py", "standin/__init__.py", "standin/api.py",
                 "standin/storage.py", "standin/tokenrequest.py"):
        assert name in listed
    assert "standin.py" not in listed
    assert serving.run("stat -c %a /var/lib/kube-apiserver-standin").stdout.strip() == "700"


def test_an_offline_minted_token_is_401_as_no_service_account_has_its_uid(serving, workdir, lab_tools):
    """The real server looks the ServiceAccount up: `k8sboot token create` mints a valid
    signature for an account that does not exist here, so the answer is 401, as upstream's."""
    tok = lab_tools.k8sboot("token", "create", "--namespace", "authn-demo", "--service-account", "bot",
                            "--duration", "10m", "-i", "inventory/lab.yaml", cwd=workdir).stdout.strip()
    code, body = whoami_by_token(workdir, lab_tools, tok)
    assert code == 401 and body["reason"] == "Unauthorized"


def test_kubectl_create_token_is_the_service_account_until_it_is_deleted(serving, workdir, lab_tools):
    assert kubectl(workdir, lab_tools, "create", "namespace", "token-demo").stdout == "namespace/token-demo created\n"
    assert kubectl(workdir, lab_tools, "-n", "token-demo", "create", "serviceaccount", "bot").returncode == 0
    r = kubectl(workdir, lab_tools, "-n", "token-demo", "create", "token", "bot", "--duration=10m")
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    code, body = whoami_by_token(workdir, lab_tools, tok)
    assert code == 201
    assert body["status"]["userInfo"]["username"] == "system:serviceaccount:token-demo:bot"
    assert "system:serviceaccounts:token-demo" in body["status"]["userInfo"]["groups"]
    who = kubectl(workdir, lab_tools, "auth", "whoami", token=tok)
    assert "system:serviceaccount:token-demo:bot" in who.stdout, who.stderr
    assert kubectl(workdir, lab_tools, "auth", "can-i", "list", "pods", token=tok).stdout.strip() == "no"
    assert kubectl(workdir, lab_tools, "auth", "can-i", "list", "pods").stdout.strip() == "yes"
    assert kubectl(workdir, lab_tools, "-n", "token-demo", "delete", "serviceaccount", "bot").returncode == 0
    assert whoami_by_token(workdir, lab_tools, tok)[0] == 401
    assert kubectl(workdir, lab_tools, "delete", "namespace", "token-demo").stdout == \
        'namespace "token-demo" deleted\n'


def test_objects_survive_a_restart_of_the_unit(serving, workdir, lab_tools):
    assert kubectl(workdir, lab_tools, "create", "namespace", "kept").returncode == 0
    uid = json.loads(kubectl(workdir, lab_tools, "get", "namespace", "kept", "-o", "json").stdout)["metadata"]["uid"]
    serving.run("systemctl restart kube-apiserver")
    wait_serving(serving.address)
    again = kubectl(workdir, lab_tools, "get", "namespace", "kept", "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["metadata"]["uid"] == uid
    assert kubectl(workdir, lab_tools, "delete", "namespace", "kept").returncode == 0


@pytest.mark.parametrize("method, path, code", [
    ("GET", "/api/v1/namespaces/default/pods", 404), ("POST", "/api/v1/namespaces/default/configmaps", 404),
    ("GET", "/api/v1/nodes", 404), ("GET", "/api/v1/namespaces?watch=true", 405),
    ("DELETE", "/api/v1/namespaces/default/serviceaccounts", 405), ("GET", "/apis/apps/v1/deployments", 404),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", 404),
])
def test_every_unimplemented_path_is_404_or_405_never_2xx(serving, workdir, lab_tools, method, path, code):
    args = ["--cert", str(workdir / "pki" / "admin.pem"), "--key", str(workdir / "pki" / "admin-key.pem"),
            "-X", method, "-H", "Content-Type: application/json"]
    if method == "POST":
        args += ["-d", "{}"]
    out = workdir / f"body-{uuid.uuid4().hex}"
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-o", str(out), "-w", "%{http_code}",
                        "--cacert", str(workdir / "pki" / "ca.pem"), *args, f"https://10.240.0.10:6443{path}"],
                       capture_output=True, text=True, env=lab_tools.clean_env())
    assert r.returncode == 0 and int(r.stdout) == code
    if path.startswith("/api/") or "k8s.io" in path:
        assert "k8sboot stand-in (not Kubernetes)" in out.read_text()


def test_token_for_another_audience_is_401(serving, workdir, lab_tools):
    tok = lab_tools.k8sboot("token", "create", "-n", "authn-demo", "--service-account", "bot", "--duration", "10m",
                            "--audience", "vault", "-i", "inventory/lab.yaml", cwd=workdir).stdout.strip()
    code, body = whoami_by_token(workdir, lab_tools, tok)
    assert code == 401 and body["reason"] == "Unauthorized" and body["message"] == "Unauthorized"


def test_token_from_another_issuer_is_401(serving, workdir, lab_tools):
    other = workdir / "inventory" / "other-issuer.yaml"
    other.write_text((workdir / "inventory" / "lab.yaml").read_text().replace(
        f"service_account_issuer: {ISSUER}", "service_account_issuer: https://other.example:6443"))
    tok = lab_tools.k8sboot("token", "create", "-n", "authn-demo", "--service-account", "bot", "--duration", "10m",
                            "--audience", ISSUER, "-i", str(other), cwd=workdir).stdout.strip()
    code, body = whoami_by_token(workdir, lab_tools, tok)
    assert code == 401 and body["reason"] == "Unauthorized"


def test_expired_token_is_401(serving, workdir, lab_tools):
    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((workdir / "pki" / "service-account-key.pem").read_bytes(), None)
    past = int(time.time()) - 3600
    tok = jwt.encode({"iss": ISSUER, "aud": [ISSUER], "iat": past - 600, "nbf": past - 600, "exp": past,
                      "sub": "system:serviceaccount:authn-demo:bot",
                      "kubernetes.io": {"namespace": "authn-demo", "serviceaccount": {"name": "bot", "uid": "u"}}},
                     key, algorithm="RS256")
    code, body = whoami_by_token(workdir, lab_tools, tok)
    assert code == 401 and body["reason"] == "Unauthorized"


def test_journal_logs_each_request_with_identity_and_decision(serving, workdir, lab_tools):
    """Makes its own requests (anonymous, admin, a bad token), so it passes run alone."""
    assert curl(workdir, lab_tools, "/api/v1/namespaces/default/pods")[0] == 403
    assert kubectl(workdir, lab_tools, "auth", "whoami").returncode == 0
    assert whoami_by_token(workdir, lab_tools, "not-a-token")[0] == 401
    log = serving.run("journalctl -u kube-apiserver --no-pager -o cat").stdout
    assert "STAND-IN" in log and "not Kubernetes" in log
    assert 'user="system:anonymous"' in log and 'decision="forbidden"' in log
    assert 'user="admin"' in log and 'decision="allowed"' in log
    assert 'decision="unauthorized"' in log


def test_no_credential_is_401_with_anonymous_auth_off(serving, workdir, lab_tools):
    start(serving, unit(serving.address, anonymous=False))
    wait_serving(serving.address)
    code, body = curl(workdir, lab_tools, "/api/v1/namespaces/default/pods")
    assert code == 401
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_missing_issuer_flag_fails_the_unit_with_the_real_message(serving):
    start(serving, unit(serving.address, issuer=None))
    deadline = time.monotonic() + 15
    while True:
        log = serving.run("journalctl -u kube-apiserver --no-pager -o cat", warn=True).stdout
        if REQUIRED in log or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert REQUIRED in log
    state = serving.run("systemctl is-active kube-apiserver", warn=True).stdout.strip()
    assert state in ("activating", "failed")        # Restart=on-failure: auto-restart between attempts
    show = serving.run("systemctl show -p ExecMainStatus kube-apiserver").stdout.strip()
    assert show == "ExecMainStatus=1"


def https_get(workdir: Path, address: str, path: str) -> tuple[object, str]:
    """(HTTP status, body) with the admin cert, or "refused" when nothing listens on 6443, or
    "error" for a connection cut while the port closes."""
    ctx = ssl.create_default_context(cafile=str(workdir / "pki" / "ca.pem"))
    ctx.load_cert_chain(workdir / "pki" / "admin.pem", workdir / "pki" / "admin-key.pem")
    conn = http.client.HTTPSConnection(address, 6443, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    except ConnectionRefusedError:
        return "refused", ""
    except (ConnectionResetError, ssl.SSLError, http.client.HTTPException, OSError) as exc:
        return "error", str(exc)
    finally:
        conn.close()


def test_systemctl_stop_fails_readyz_before_the_port_closes_and_the_unit_stops_cleanly(controller, workdir):
    """The shutdown delay as a load balancer sees it from the workstation: after the stop,
    /readyz answers 500 `[-]shutdown failed` (and /livez still 200) for a while, and only then
    is the port closed; the stand-in exits 0, so the unit ends inactive, not failed."""
    h = controller
    start(h, unit(h.address, extra=("--shutdown-delay-duration=3s", "--shutdown-send-retry-after=true")))
    wait_serving(h.address)
    deadline = time.monotonic() + 60              # a lab ready-delay drop-in may hold /readyz a while
    while https_get(workdir, h.address, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "/readyz never passed after the start"
        time.sleep(0.1)
    h.run("systemctl stop --no-block kube-apiserver")      # systemd sends SIGTERM, as on a restart
    samples: list[tuple[object, str, object]] = []         # (readyz status, readyz body, livez status)
    deadline = time.monotonic() + 60
    while not samples or samples[-1][0] != "refused":
        assert time.monotonic() < deadline, f"port 6443 still open a minute after the stop: {samples[-3:]}"
        ready, body = https_get(workdir, h.address, "/readyz")
        live = https_get(workdir, h.address, "/livez")[0]
        samples.append((ready, body, live))
    statuses = [s[0] for s in samples]
    first_failing = statuses.index(500) if 500 in statuses else None
    assert first_failing is not None, f"the port closed without /readyz ever failing first: {statuses}"
    draining = samples[first_failing:-1]
    assert all(s[0] != 200 for s in draining), f"/readyz passed again after failing: {statuses}"
    assert any(s[2] == 200 for s in draining if s[0] == 500), "no /livez 200 while /readyz was failing"
    failing_body = samples[first_failing][1]
    assert failing_body.endswith("[-]shutdown failed: reason withheld\nreadyz check failed\n"), failing_body
    deadline = time.monotonic() + 30
    while True:
        state = h.run("systemctl show -p ActiveState -p Result -p ExecMainStatus kube-apiserver").stdout.split()
        if "ActiveState=inactive" in state or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "ActiveState=inactive" in state and "Result=success" in state and "ExecMainStatus=0" in state, state
    log = h.run("journalctl -u kube-apiserver --no-pager -o cat").stdout
    assert 'name="ShutdownInitiated" shutdownDelayDuration="3s" shutdownSendRetryAfter=true' in log
    assert '"[graceful-termination] apiserver is exiting"' in log
