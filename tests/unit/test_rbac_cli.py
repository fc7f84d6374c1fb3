"""`k8sboot can-i` as a user runs it: kubectl's yes/no and exit codes, the 401 of whoami, -f files
and their errors (one line, no traceback), --list and --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

# the same temp inventory + test-factory PKI (and its fixtures) as whoami's tests
from test_auth_cli import Cluster, cluster, open_cluster  # noqa: F401

import authn_factory as f  # noqa: E402  (tests/ is on sys.path once test_auth_cli is imported)

from k8sboot.cli import app
from k8sboot.cli.rbac_cmds import resolve_resource
from k8sboot.errors import ExitCode

runner = CliRunner()

POD_READER = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: dev
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bot-reads-pods
  namespace: dev
subjects:
- kind: ServiceAccount
  name: bot
  namespace: authn-demo
- kind: User
  name: jane
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: Role
  name: pod-reader
  apiGroup: rbac.authorization.k8s.io
"""


def can_i(*args):
    res = runner.invoke(app, ["can-i", *args])
    assert "Traceback" not in res.output, res.output
    return res


def _jane(cluster: Cluster) -> Path:
    jane = cluster.client("jane", ("dev",))
    cluster.write("jane-key.pem", jane.key_pem)
    return cluster.write("jane.pem", jane.pem)


@pytest.mark.parametrize("who, args, answer", [
    ("admin", ["list", "pods"], "yes"),
    ("admin", ["delete", "namespaces/kube-system"], "yes"),
    ("admin", ["*", "*", "-A"], "yes"),
    ("admin", ["get", "/metrics"], "yes"),
    ("bot", ["list", "pods", "-n", "authn-demo"], "no"),
    ("bot", ["create", "selfsubjectaccessreviews"], "yes"),
    ("bot", ["create", "selfsubjectaccessreviews.authorization.k8s.io"], "yes"),
    ("bot", ["get", "/healthz"], "yes"),
    ("bot", ["get", "/api"], "yes"),
    ("bot", ["list", "pods", "-n", "dev", "-f", "rbac.yaml"], "yes"),
    ("bot", ["get", "pods/web", "-n", "dev", "-f", "rbac.yaml"], "yes"),
    ("bot", ["get", "pods/web", "-n", "dev", "--subresource", "log", "-f", "rbac.yaml"], "yes"),
    ("bot", ["get", "pods/web", "-n", "dev", "--subresource", "exec", "-f", "rbac.yaml"], "no"),
    ("bot", ["list", "pods", "-n", "prod", "-f", "rbac.yaml"], "no"),
    ("bot", ["delete", "pods/web", "-n", "dev", "-f", "rbac.yaml"], "no"),
    ("bot", ["list", "pods", "-A", "-f", "rbac.yaml"], "no"),
    ("jane", ["list", "po", "-n", "dev", "-f", "rbac.yaml"], "yes"),
    ("jane", ["list", "deployments", "-n", "dev", "-f", "rbac.yaml"], "no"),
])
def test_can_i_answers_like_kubectl(cluster, who, args, answer):
    (cluster.root / "rbac.yaml").write_text(POD_READER)
    cred = {"admin": ["--cert", "pki/admin.pem"], "bot": ["--token", cluster.token()],
            "jane": ["--cert", str(_jane(cluster))]}[who]
    res = can_i(*cred, *args)
    assert res.stdout == f"{answer}\n", res.output
    assert res.exit_code == (0 if answer == "yes" else 1)


@pytest.mark.parametrize("target, answer", [("/version", "yes"), ("/livez", "yes"), ("/api", "no"),
                                            ("/apis/apps/v1", "no")])
def test_anonymous_gets_public_info_only(open_cluster, target, answer):
    res = can_i("--anonymous", "get", target)
    assert (res.stdout, res.exit_code) == (f"{answer}\n", 0 if answer == "yes" else 1)


def test_a_binding_to_a_missing_role_prints_no_with_the_servers_reason(cluster):
    (cluster.root / "rbac.yaml").write_text(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: b}\n"
        "roleRef: {kind: ClusterRole, name: pod-admin, apiGroup: rbac.authorization.k8s.io}\n"
        "subjects: [{kind: ServiceAccount, name: bot, namespace: authn-demo}]\n")
    res = can_i("--token", cluster.token(), "list", "pods", "-f", "rbac.yaml")     # the binding lands in -n default
    assert res.stdout == 'no - RBAC: clusterrole.rbac.authorization.k8s.io "pod-admin" not found\n'
    assert res.exit_code == 1


def test_401_is_whoamis_message_and_exit_code(cluster):
    cert = f.make_client_cert(f.make_ca("Other CA"), "mallory", ("system:masters",))   # not our CA
    path = cluster.write("mallory.pem", cert.pem)
    res = can_i("--cert", str(path), "list", "pods")
    assert res.exit_code == ExitCode.UNAUTHORIZED == 11
    assert res.stdout == "" and res.stderr.startswith("401 Unauthorized: ")
    who = runner.invoke(app, ["whoami", "--cert", str(path)])
    assert who.exit_code == 11 and who.stderr == res.stderr


def test_anonymous_with_anonymous_auth_off_is_401(cluster):
    res = can_i("--anonymous", "get", "/version")
    assert res.exit_code == 11 and res.stderr.startswith("401 Unauthorized: ")


def test_json_is_the_self_subject_access_review(cluster):
    res = can_i("--token", cluster.token(), "list", "pods", "-n", "authn-demo", "--json")
    assert res.exit_code == 1
    body = json.loads(res.stdout)
    assert body["kind"] == "SelfSubjectAccessReview" and body["apiVersion"] == "authorization.k8s.io/v1"
    assert body["spec"] == {"resourceAttributes": {"namespace": "authn-demo", "verb": "list", "resource": "pods"}}
    assert body["status"] == {"allowed": False}


def test_list_prints_kubectls_table(cluster):
    (cluster.root / "rbac.yaml").write_text(POD_READER)
    res = can_i("--token", cluster.token(), "--list", "-n", "dev", "-f", "rbac.yaml")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.splitlines()]
    assert rows[0] == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    assert ["pods", "[]", "[]", "[get", "list]"] in rows
    assert ["pods/log", "[]", "[]", "[get", "list]"] in rows
    assert ["selfsubjectaccessreviews.authorization.k8s.io", "[]", "[]", "[create]"] in rows
    assert ["[/healthz]", "[]", "[get]"] in rows
    assert ["[/openid/v1/jwks]", "[]", "[get]"] in rows     # system:serviceaccounts


def test_list_json_is_the_rules_review(cluster):
    res = can_i("--cert", "pki/admin.pem", "--list", "--json")
    body = json.loads(res.stdout)
    assert body["kind"] == "SelfSubjectRulesReview"
    assert {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]} in body["status"]["resourceRules"]


def test_a_cluster_scoped_resource_in_a_namespace_warns_like_kubectl(cluster):
    res = can_i("--cert", "pki/admin.pem", "get", "nodes")
    assert res.stdout == "yes\n"
    assert "Warning: resource 'nodes' is not namespace scoped" in res.stderr
    res = can_i("--cert", "pki/admin.pem", "get", "clusterroles")
    assert "Warning: resource 'clusterroles' is not namespace scoped in group 'rbac.authorization.k8s.io'" in res.stderr


def test_an_unknown_verb_warns_and_still_answers(cluster):
    res = can_i("--cert", "pki/admin.pem", "frobnicate", "pods")
    assert res.stdout == "yes\n" and "Warning: verb 'frobnicate' is not a known verb" in res.stderr


@pytest.mark.parametrize("arg, expected", [
    ("pods", ("pods", "", True)), ("po", ("pods", "", True)), ("Pod", ("pods", "", True)),
    ("deployments", ("deployments", "apps", True)), ("deploy", ("deployments", "apps", True)),
    ("deployments.apps", ("deployments", "apps", True)),
    ("clusterrolebindings", ("clusterrolebindings", "rbac.authorization.k8s.io", False)),
    ("widgets.example.com", ("widgets", "example.com", None)),
    ("*", ("*", "", None)),
])
def test_resource_names_map_to_their_group(arg, expected):
    assert resolve_resource(arg) == expected


def test_an_unknown_resource_is_a_usage_error_suggesting_resource_dot_group(cluster):
    res = can_i("--cert", "pki/admin.pem", "list", "widgets")
    assert res.exit_code == 2
    assert "unknown resource 'widgets'" in res.output and "RESOURCE.GROUP" in res.output


@pytest.mark.parametrize("content, where, why", [
    ("kind: Role\nmetadata: {name: x\n", "rbac.yaml:3", ""),
    ("kind: Role\nmetadata: {name: x}\nrules: [{resources: [pods]}]\n", "rbac.yaml", "Role 'x': rules[0].verbs"),
    ("kind: RoleBinding\nmetadata: {name: b}\nsubjects: []\n", "rbac.yaml", "RoleBinding 'b': roleRef"),
    ("kind: ClusterRoleBinding\nmetadata: {name: b}\nroleRef: {kind: Role, name: r}\n", "rbac.yaml",
     "roleRef.kind: Unsupported value: 'Role'"),
    ("- just\n- a list\n", "rbac.yaml", "object 1: the object is not a mapping"),
])
def test_a_bad_file_is_one_line_naming_it_and_exit_18(cluster, content, where, why):
    (cluster.root / "rbac.yaml").write_text(content)
    res = can_i("--cert", "pki/admin.pem", "list", "pods", "-f", "rbac.yaml")
    assert res.exit_code == ExitCode.OBJECTS, res.output
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"k8sboot: error: reading RBAC objects from {where}"), res.stderr
    assert why in lines[0] and lines[1].startswith("  hint: ")
    assert res.stdout == ""


def test_a_missing_file_is_named(cluster):
    res = can_i("--cert", "pki/admin.pem", "list", "pods", "-f", "nope.yaml")
    assert res.exit_code == ExitCode.OBJECTS and "reading RBAC objects from nope.yaml: no such file" in res.stderr


def test_other_kinds_in_a_file_are_skipped_with_a_note(cluster):
    (cluster.root / "rbac.yaml").write_text(POD_READER + "---\napiVersion: v1\nkind: ServiceAccount\n"
                                            "metadata: {name: bot, namespace: authn-demo}\n")
    res = can_i("--token", cluster.token(), "list", "pods", "-n", "dev", "-f", "rbac.yaml")
    assert res.stdout == "yes\n"
    assert "skipped 1 object(s) that RBAC does not read (ServiceAccount)" in res.stderr


def test_a_kind_list_is_unwrapped(cluster):
    (cluster.root / "rbac.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: rbac.authorization.k8s.io/v1, kind: ClusterRoleBinding, metadata: {name: b},"
        " roleRef: {kind: ClusterRole, name: view, apiGroup: rbac.authorization.k8s.io},"
        " subjects: [{kind: ServiceAccount, name: bot, namespace: authn-demo}]}\n")
    res = can_i("--token", cluster.token(), "list", "pods", "-A", "-f", "rbac.yaml")
    assert res.stdout == "yes\n", res.output


@pytest.mark.parametrize("args, message", [
    (["list", "pods"], "give exactly one of --cert FILE, --token TOKEN or --anonymous"),
    (["--anonymous", "--cert", "pki/admin.pem", "list", "pods"], "(got --cert and --anonymous)"),
    (["--anonymous", "list"], "give VERB and RESOURCE"),
    (["--anonymous", "--list", "get", "pods"], "--list takes no VERB or RESOURCE"),
    (["--anonymous", "--list", "-A"], "--list cannot be combined"),
    (["--anonymous", "get", "/healthz", "--subresource", "x"], "a non-resource URL takes no --subresource"),
    (["--key", "pki/admin-key.pem", "--anonymous", "get", "pods"], "--key goes with --cert"),
])
def test_usage_errors_exit_2_without_a_traceback(cluster, args, message):
    res = can_i(*args)
    assert res.exit_code == 2 and message in res.output


def test_the_installed_entry_point_answers_and_exits_1_for_no(cluster):
    exe = Path(sys.executable).with_name("k8sboot")
    r = subprocess.run([str(exe), "can-i", "--token", cluster.token(), "list", "pods", "-n", "authn-demo"],
                       capture_output=True, text=True, timeout=60, cwd=cluster.root)
    assert (r.returncode, r.stdout) == (1, "no\n") and "Traceback" not in r.stderr


def test_anonymous_is_answered_with_a_note_that_a_real_server_refuses_kubectls_review(open_cluster):
    res = can_i("--anonymous", "get", "/version")
    assert res.stdout == "yes\n"
    assert ('note: kubectl auth can-i cannot ask this for system:anonymous: the server answers 403 '
            '(selfsubjectaccessreviews.authorization.k8s.io is forbidden: User "system:anonymous" cannot create '
            'resource "selfsubjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope)') in res.stderr
    assert "cannot ask" not in can_i("--token", open_cluster.token(), "get", "/version").stderr


def test_quiet_answers_with_the_exit_code_only(cluster):
    yes = can_i("-q", "--cert", "pki/admin.pem", "list", "pods")
    no = can_i("--quiet", "--token", cluster.token(), "list", "pods")
    assert (yes.exit_code, yes.stdout, no.exit_code, no.stdout) == (0, "", 1, "")
