"""The tutorial, verbatim, on lab hosts: `k8sboot lab tutorial` runs the article's commands with
real ssh, openssl, kubectl, jq and curl against controller-0 (deployed by `deploy-apiserver` from a
PKI made by `gen-certs`), and every printed output is compared with what the article prints for a
real kube-apiserver — hashes, times, uids and IPs masked. Then what the tutorial's next chapter
relies on: objects that survive a restart, a deleted ServiceAccount's token refused, a Role and
RoleBinding that grant exactly what they say, and no fake success for anything not implemented.

The expected outputs are written from the article, upstream's API reference and kubectl's own
printers (auth whoami's table, `create`'s `<kind>/<name> created`, `delete`'s `"<name>" deleted`,
can-i's yes/no), never from the stand-in's output.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

API = "https://10.240.0.10:6443"          # controller-0: the tutorial talks to it alone
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def workdir(lab_hosts, lab_inventory, lab_tools, tmp_path_factory) -> Path:
    """A cwd as after `make demo`: inventory/lab.yaml, pki/, admin.kubeconfig, etcd and the API
    server deployed on every controller (fresh roots: the stand-in of this tree, an empty etcd)."""
    for h in list(lab_hosts)[:3]:
        h.reset()
    d = tmp_path_factory.mktemp("tutorial")
    (d / "inventory").mkdir()
    shutil.copy(lab_inventory, d / "inventory" / "lab.yaml")
    lab_tools.k8sboot("gen-certs", "-i", "inventory/lab.yaml", cwd=d)
    lab_tools.k8sboot("kubeconfig", "admin", "-i", "inventory/lab.yaml", "--server", API, cwd=d)
    lab_tools.k8sboot("deploy-etcd", "-i", "inventory/lab.yaml", cwd=d)
    lab_tools.k8sboot("deploy-apiserver", "-i", "inventory/lab.yaml", cwd=d)
    yield d
    for h in list(lab_hosts)[:3]:
        h.reset()


@pytest.fixture(scope="module")
def transcript(workdir, lab_tools) -> list[dict]:
    r = lab_tools.k8sboot("lab", "tutorial", "--json", cwd=workdir, check=False)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    ran = json.loads(r.stdout)
    assert all(step["ok"] for step in ran)
    return ran


def output_of(transcript, command_start: str) -> str:
    found = [s for s in transcript if s["command"].startswith(command_start)]
    assert len(found) == 1, f"no single step starting {command_start!r}: {[s['command'] for s in transcript]}"
    return found[0]["output"]


def table(text: str) -> list[tuple[str, str]]:
    """kubectl auth whoami's two columns, however wide kubectl pads them."""
    return [tuple(re.split(r"\s{2,}", line.strip(), maxsplit=1)) for line in text.splitlines()]


def kubectl(workdir, lab_tools, *args, token: str | None = None, stdin: str | None = None):
    base = ["kubectl", "--kubeconfig", str(workdir / "admin.kubeconfig")]
    if token is not None:
        base = ["kubectl", "--kubeconfig=/dev/null", f"--server={API}",
                f"--certificate-authority={workdir / 'pki' / 'ca.pem'}", f"--token={token}"]
    return subprocess.run([*base, *args], capture_output=True, text=True, input=stdin, timeout=60,
                          env=lab_tools.clean_env(), cwd=workdir)


# --- the article, command by command -------------------------------------------------------------


def test_the_tutorial_ran_every_command_in_the_articles_order(transcript):
    assert [s["command"].split()[0] for s in transcript] == [
        "ssh", "openssl", "kubectl", "kubectl", "kubectl", "kubectl", "TOK=$(kubectl", "kubectl", "jq", "curl",
        "kubectl", "kubectl", "kubectl"]


def test_grep_on_controller_0_prints_the_three_auth_flags(transcript):
    assert output_of(transcript, "ssh controller-0").splitlines() == [
        "--anonymous-auth=true",
        "--client-ca-file=/var/lib/kubernetes/ca.pem",
        "--service-account-key-file=/var/lib/kubernetes/service-account.pem",
    ]


def test_the_admin_subject_is_system_masters(transcript):
    assert output_of(transcript, "openssl x509") == "subject=C = VN, O = system:masters, OU = k8sboot-lab, CN = admin"


def test_auth_whoami_as_admin(transcript):
    rows = table(output_of(transcript, "kubectl auth whoami"))
    assert rows[:3] == [("ATTRIBUTE", "VALUE"), ("Username", "admin"),
                        ("Groups", "[system:masters system:authenticated]")]
    assert rows[3][0] == "Extra: authentication.kubernetes.io/credential-id"
    assert re.fullmatch(r"\[X509SHA256=[0-9a-f]{64}\]", rows[3][1])
    assert len(rows) == 4


def test_cluster_admin_binding_is_what_makes_system_masters_powerful(transcript):
    assert output_of(transcript, "kubectl get clusterrolebinding cluster-admin") == \
        "ClusterRole/cluster-admin <- Group/system:masters"


def test_namespace_and_serviceaccount_are_created(transcript):
    assert output_of(transcript, "kubectl create namespace authn-demo") == "namespace/authn-demo created"
    assert output_of(transcript, "kubectl -n authn-demo create serviceaccount bot") == "serviceaccount/bot created"
    assert output_of(transcript, "TOK=$(kubectl -n authn-demo create token bot") == ""


def test_whoami_with_the_issued_token_is_the_service_account(transcript):
    rows = table(output_of(transcript, "kubectl --kubeconfig=/dev/null --server=https://10.240.0.10:6443 "
                                       "--certificate-authority=pki/ca.pem --token=\"$TOK\" auth whoami"))
    assert rows[0] == ("ATTRIBUTE", "VALUE")
    assert rows[1] == ("Username", "system:serviceaccount:authn-demo:bot")
    assert rows[2][0] == "UID" and re.fullmatch(UUID, rows[2][1])
    assert rows[3] == ("Groups", "[system:serviceaccounts system:serviceaccounts:authn-demo system:authenticated]")
    assert rows[4][0] == "Extra: authentication.kubernetes.io/credential-id"
    assert re.fullmatch(rf"\[JTI={UUID}\]", rows[4][1])


def test_the_decoded_claims_are_a_bound_token_for_the_service_account(transcript):
    claims_text = output_of(transcript, "jq -R")
    claims = json.loads(claims_text)
    # the API server's claims are a Go map: json.Marshal writes its keys sorted
    assert list(claims) == ["aud", "exp", "iat", "iss", "jti", "kubernetes.io", "nbf", "sub"]
    assert claims["aud"] == [API] and claims["iss"] == API
    assert claims["sub"] == "system:serviceaccount:authn-demo:bot"
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"]
    assert re.fullmatch(UUID, claims["jti"])
    sa = claims["kubernetes.io"]
    assert sa["namespace"] == "authn-demo" and sa["serviceaccount"]["name"] == "bot"
    assert re.fullmatch(UUID, sa["serviceaccount"]["uid"]) and set(sa) == {"namespace", "serviceaccount"}


def test_the_anonymous_curl_is_the_real_403_body(transcript):
    assert output_of(transcript, "curl -s --cacert pki/ca.pem") == textwrap.dedent("""\
        {
          "kind": "Status",
          "apiVersion": "v1",
          "metadata": {},
          "status": "Failure",
          "message": "pods is forbidden: User \\"system:anonymous\\" cannot list resource \\"pods\\" in API group \\"\\" in the namespace \\"default\\"",
          "reason": "Forbidden",
          "details": {
            "kind": "pods"
          },
          "code": 403
        }""")


# The one line the article does not print: kubectl checks discovery before it asks, and the
# stand-in serves no pods, so it says so (stderr) - then RBAC answers exactly as upstream's would.
NO_PODS = "Warning: the server doesn't have a resource type 'pods'"


def test_rbac_says_yes_to_the_admin_and_no_to_the_fresh_service_account(transcript):
    assert output_of(transcript, "kubectl auth can-i list pods").splitlines() == [NO_PODS, "", "yes"]
    bot = [s for s in transcript if s["command"].endswith("auth can-i list pods -n authn-demo")]
    assert len(bot) == 1 and bot[0]["output"].splitlines() == [NO_PODS, "", "no"] and bot[0]["rc"] == 1


def test_the_namespace_is_deleted_at_the_end(transcript, workdir, lab_tools):
    assert output_of(transcript, "kubectl delete namespace authn-demo") == 'namespace "authn-demo" deleted'
    r = kubectl(workdir, lab_tools, "get", "namespace", "authn-demo")
    assert r.returncode == 1 and r.stderr.strip() == \
        'Error from server (NotFound): namespaces "authn-demo" not found'


def test_controller_0_is_back_on_the_lab_inventory_after_the_tutorial(transcript, workdir, lab_tools):
    r = lab_tools.k8sboot("verify", "-i", "inventory/lab.yaml", "--host", "controller-0", cwd=workdir, check=False)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


# --- the next chapter: objects, tokens and RBAC as a user relies on them ------------------------


@pytest.fixture
def demo(transcript, workdir, lab_tools):
    """A namespace with a ServiceAccount `reader` and its token; deleted afterwards."""
    assert kubectl(workdir, lab_tools, "create", "namespace", "team-a").returncode == 0
    assert kubectl(workdir, lab_tools, "-n", "team-a", "create", "serviceaccount", "reader").returncode == 0
    tok = kubectl(workdir, lab_tools, "-n", "team-a", "create", "token", "reader").stdout.strip()
    assert tok.count(".") == 2
    yield tok
    kubectl(workdir, lab_tools, "delete", "namespace", "team-a", "--ignore-not-found")


def test_objects_survive_a_restart_of_the_api_server(demo, workdir, lab_tools, lab_hosts):
    before = kubectl(workdir, lab_tools, "-n", "team-a", "get", "serviceaccount", "reader", "-o", "json")
    assert before.returncode == 0, before.stderr
    h = lab_hosts[0]
    with h.connection() as c:
        c.run("systemctl restart kube-apiserver", hide=True)
    deadline = time.monotonic() + 30
    while True:
        after = kubectl(workdir, lab_tools, "-n", "team-a", "get", "serviceaccount", "reader", "-o", "json")
        if after.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert after.returncode == 0, after.stderr
    old, new = json.loads(before.stdout)["metadata"], json.loads(after.stdout)["metadata"]
    assert (new["uid"], new["resourceVersion"], new["creationTimestamp"]) == \
        (old["uid"], old["resourceVersion"], old["creationTimestamp"])
    whoami = kubectl(workdir, lab_tools, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", token=demo)
    assert whoami.stdout == "system:serviceaccount:team-a:reader", whoami.stderr


def test_a_deleted_service_accounts_token_is_refused_with_401(demo, workdir, lab_tools):
    ok = kubectl(workdir, lab_tools, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", token=demo)
    assert ok.returncode == 0 and ok.stdout == "system:serviceaccount:team-a:reader"
    assert kubectl(workdir, lab_tools, "-n", "team-a", "delete", "serviceaccount", "reader").stdout.strip() == \
        'serviceaccount "reader" deleted'
    refused = kubectl(workdir, lab_tools, "auth", "whoami", token=demo)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: You must be logged in to the server (Unauthorized)"
    # a new account of the same name has a new uid: the old token stays refused
    assert kubectl(workdir, lab_tools, "-n", "team-a", "create", "serviceaccount", "reader").returncode == 0
    assert kubectl(workdir, lab_tools, "auth", "whoami", token=demo).returncode == 1


ROLE_YAML = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: team-a
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["app-config"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: read-pods
  namespace: team-a
subjects:
- kind: ServiceAccount
  name: reader
  namespace: team-a
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pod-reader
"""

# (can-i arguments, answer) — what the Role above grants, and nothing else
CAN_I = [
    (("list", "pods", "-n", "team-a"), "yes"),
    (("get", "pods", "--subresource=log", "-n", "team-a"), "yes"),
    (("watch", "pods", "-n", "team-a"), "yes"),
    (("delete", "pods", "-n", "team-a"), "no"),
    (("create", "pods", "-n", "team-a"), "no"),
    (("list", "pods", "-n", "default"), "no"),
    (("create", "pods", "--subresource=exec", "-n", "team-a"), "no"),
    (("get", "pods", "--subresource=status", "-n", "team-a"), "no"),
    (("get", "configmaps/app-config", "-n", "team-a"), "yes"),       # TYPE/NAME: resourceNames
    (("get", "configmaps/other", "-n", "team-a"), "no"),
    (("list", "configmaps", "-n", "team-a"), "no"),
    (("list", "secrets", "-n", "team-a"), "no"),
    (("list", "namespaces"), "no"),
]


def test_a_role_and_binding_applied_with_kubectl_grant_exactly_what_they_say(demo, workdir, lab_tools):
    applied = kubectl(workdir, lab_tools, "apply", "-f", "-", stdin=ROLE_YAML)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["role.rbac.authorization.k8s.io/pod-reader created",
                                           "rolebinding.rbac.authorization.k8s.io/read-pods created"]
    answers = {args: kubectl(workdir, lab_tools, "auth", "can-i", *args, token=demo).stdout.strip()
               for args, _ in CAN_I}
    assert answers == {args: want for args, want in CAN_I}
    again = kubectl(workdir, lab_tools, "apply", "-f", "-", stdin=ROLE_YAML)
    assert again.stdout.splitlines() == ["role.rbac.authorization.k8s.io/pod-reader unchanged",
                                         "rolebinding.rbac.authorization.k8s.io/read-pods unchanged"], again.stderr
    widened = kubectl(workdir, lab_tools, "apply", "-f", "-",
                      stdin=ROLE_YAML.replace('verbs: ["get", "list", "watch"]', 'verbs: ["get", "list", "watch", "delete"]'))
    assert widened.stdout.splitlines()[0] == "role.rbac.authorization.k8s.io/pod-reader configured", widened.stderr
    assert kubectl(workdir, lab_tools, "auth", "can-i", "delete", "pods", "-n", "team-a", token=demo).stdout.strip() == "yes"


def test_nothing_unimplemented_answers_success(transcript, workdir, lab_tools):
    """Writes and reads of resources the stand-in does not keep: the real server's 404/405, never 2xx."""
    ca = str(workdir / "pki" / "ca.pem")
    cert, key = str(workdir / "pki" / "admin.pem"), str(workdir / "pki" / "admin-key.pem")
    cases = [("POST", "/api/v1/namespaces/default/pods"), ("GET", "/api/v1/namespaces/default/pods"),
             ("GET", "/apis/apps/v1/namespaces/default/deployments"), ("DELETE", "/api/v1/nodes/worker-0"),
             ("PUT", "/api/v1/namespaces/default/configmaps/x"), ("GET", "/apis/example.com/v1/widgets")]
    for method, path in cases:
        r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", ca, "--cert", cert,
                            "--key", key, "-X", method, "-H", "Content-Type: application/json", "-d", "{}",
                            "-o", "/dev/stderr", "-w", "%{http_code}", f"{API}{path}"],
                           capture_output=True, text=True, env=lab_tools.clean_env())
        assert r.stdout in ("404", "405"), f"{method} {path}: {r.stdout} {r.stderr}"
        body = json.loads(r.stderr)
        assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == int(r.stdout)
        assert "stand-in" in json.dumps(body), body
    pods = kubectl(workdir, lab_tools, "get", "pods")
    assert pods.returncode == 1 and "created" not in pods.stdout
