"""The stand-in's objects, TokenRequest and RBAC, checked with REAL kubectl (1.28+) on 127.0.0.1
against a stand-in started in-process, and its pure parts (storage, names, patches, protobuf
bodies, tokens, field validation) without a socket.

Expected strings are what kubectl prints against a real kube-apiserver 1.32 (apimachinery's
error constructors and validation messages), and the JSON shapes in tests/fixtures/standin/ are
written from the upstream API reference, not recorded from the stand-in.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from k8sboot import standin
from k8sboot.standin import protobuf, resources, tokenrequest
from k8sboot.standin.storage import AlreadyExists, Conflict, FileStore, NotFound
from k8sboot.tokens import key_id

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/standin_helpers.py
from standin_helpers import ISSUER, KUBECTL, Kubectl, Running, backends, make_pki  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "standin"
needs_kubectl = pytest.mark.skipif(not KUBECTL, reason="kubectl is not installed (make kubectl)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("standin-api-pki"))


@pytest.fixture
def running(pki, tmp_path):
    r = Running(pki, backends()[-1], store_dir=tmp_path / "store")
    yield r
    r.stop()


@pytest.fixture
def kubectl(running, pki, tmp_path) -> Kubectl:
    return Kubectl(tmp_path, pki, running.port)


def decode_jwt(token: str) -> tuple[dict, dict]:
    def part(s: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    head, claims, _ = token.split(".")
    return part(head), part(claims)


# --- real kubectl: namespaces and ServiceAccounts ----------------------------------------------------


@needs_kubectl
def test_kubectl_creates_lists_gets_and_deletes_namespaces_and_service_accounts(kubectl):
    assert kubectl.ok("create", "namespace", "authn-demo") == "namespace/authn-demo created\n"
    assert kubectl.ok("-n", "authn-demo", "create", "serviceaccount", "bot") == "serviceaccount/bot created\n"
    table = kubectl.ok("get", "namespaces").splitlines()
    assert table[0].split() == ["NAME", "STATUS", "AGE"]
    assert [ln.split()[:2] for ln in table[1:]] == [["authn-demo", "Active"], ["default", "Active"],
                                                   ["kube-node-lease", "Active"], ["kube-public", "Active"],
                                                   ["kube-system", "Active"]]
    sas = kubectl.ok("-n", "authn-demo", "get", "serviceaccounts").splitlines()
    assert sas[0].split() == ["NAME", "SECRETS", "AGE"]
    assert [ln.split()[:2] for ln in sas[1:]] == [["bot", "0"], ["default", "0"]]   # the controller's default
    got = json.loads(kubectl.ok("-n", "authn-demo", "get", "sa", "bot", "-o", "json"))
    assert got["metadata"]["name"] == "bot" and got["metadata"]["namespace"] == "authn-demo"
    assert kubectl.ok("-n", "authn-demo", "delete", "serviceaccount", "bot") == 'serviceaccount "bot" deleted\n'
    assert kubectl.ok("delete", "namespace", "authn-demo") == 'namespace "authn-demo" deleted\n'
    gone = kubectl.run("-n", "authn-demo", "get", "serviceaccount", "default")
    assert gone.returncode == 1          # kubectl 1.32 looks the namespace up after a 404 and names it
    assert gone.stderr == 'Error from server (NotFound): namespaces "authn-demo" not found\n'


@needs_kubectl
@pytest.mark.parametrize("args, stderr", [
    (("create", "namespace", "default"), 'Error from server (AlreadyExists): namespaces "default" already exists\n'),
    (("-n", "default", "create", "serviceaccount", "default"),
     'error: failed to create serviceaccount: serviceaccounts "default" already exists\n'),
    (("get", "namespace", "nope"), 'Error from server (NotFound): namespaces "nope" not found\n'),
    (("-n", "default", "get", "serviceaccount", "nope"),
     'Error from server (NotFound): serviceaccounts "nope" not found\n'),
    (("get", "clusterrole", "nope"),
     'Error from server (NotFound): clusterroles.rbac.authorization.k8s.io "nope" not found\n'),
    (("delete", "namespace", "nope"), 'Error from server (NotFound): namespaces "nope" not found\n'),
    (("-n", "nope", "create", "serviceaccount", "bot"),
     'error: failed to create serviceaccount: namespaces "nope" not found\n'),
    (("create", "namespace", "Bad_Name"),
     'The Namespace "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 label '
     "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric "
     "character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')\n"),
    (("-n", "default", "create", "serviceaccount", "Bot"),
     'error: failed to create serviceaccount: ServiceAccount "Bot" is invalid: metadata.name: Invalid value: "Bot": '
     "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
     "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
     "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')\n"),
])
def test_kubectl_prints_the_real_servers_errors(kubectl, args, stderr):
    r = kubectl.run(*args)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == stderr


@needs_kubectl
def test_the_bootstrap_policy_is_there_as_the_tutorial_reads_it(kubectl):
    line = kubectl.ok("get", "clusterrolebinding", "cluster-admin", "-o",
                      "jsonpath={.roleRef.kind}/{.roleRef.name} <- {.subjects[0].kind}/{.subjects[0].name}")
    assert line == "ClusterRole/cluster-admin <- Group/system:masters"
    names = kubectl.ok("get", "clusterroles", "-o", "name").split()
    for role in ("cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user",
                 "system:public-info-viewer"):
        assert f"clusterrole.rbac.authorization.k8s.io/{role}" in names


@needs_kubectl
def test_objects_survive_a_restart_of_the_stand_in(pki, tmp_path):
    store = tmp_path / "store"
    first = Running(pki, backends()[-1], store_dir=store)
    try:
        k = Kubectl(tmp_path, pki, first.port)
        k.ok("create", "namespace", "authn-demo")
        k.ok("-n", "authn-demo", "create", "serviceaccount", "bot")
        uid = json.loads(k.ok("-n", "authn-demo", "get", "sa", "bot", "-o", "json"))["metadata"]["uid"]
    finally:
        first.stop()
    second = Running(pki, backends()[-1], store_dir=store)        # a new server on the same store
    try:
        k = Kubectl(tmp_path, pki, second.port)
        again = json.loads(k.ok("-n", "authn-demo", "get", "sa", "bot", "-o", "json"))
        assert again["metadata"]["uid"] == uid
        assert k.run("create", "namespace", "authn-demo").stderr == \
            'Error from server (AlreadyExists): namespaces "authn-demo" already exists\n'
    finally:
        second.stop()


# --- real kubectl: TokenRequest ---------------------------------------------------------------------


@needs_kubectl
def test_kubectl_create_token_then_whoami_with_it_and_401_once_the_service_account_is_deleted(kubectl, pki):
    kubectl.ok("create", "namespace", "authn-demo")
    kubectl.ok("-n", "authn-demo", "create", "serviceaccount", "bot")
    sa = json.loads(kubectl.ok("-n", "authn-demo", "get", "sa", "bot", "-o", "json"))
    before = int(time.time())
    tok = kubectl.ok("-n", "authn-demo", "create", "token", "bot", "--duration=10m").strip()
    header, claims = decode_jwt(tok)
    public = serialization.load_pem_public_key((pki / "service-account.pem").read_bytes())
    assert header == {"alg": "RS256", "kid": key_id(public)}
    assert list(claims) == ["aud", "exp", "iat", "iss", "jti", "kubernetes.io", "nbf", "sub"]
    assert claims["iss"] == ISSUER and claims["aud"] == [ISSUER]              # --api-audiences: the issuers
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"] and claims["iat"] >= before - 1
    assert claims["sub"] == "system:serviceaccount:authn-demo:bot"
    assert claims["kubernetes.io"] == {"namespace": "authn-demo",
                                       "serviceaccount": {"name": "bot", "uid": sa["metadata"]["uid"]}}
    jwt.decode(tok, public, algorithms=["RS256"], audience=ISSUER)             # PyJWT verifies it too
    who = kubectl.ok("auth", "whoami", token=tok)
    rows = {ln.split()[0]: ln.split(None, 1)[1].strip() for ln in who.splitlines()[1:] if ln.strip()}
    assert rows["Username"] == "system:serviceaccount:authn-demo:bot"
    assert rows["Groups"] == "[system:serviceaccounts system:serviceaccounts:authn-demo system:authenticated]"
    kubectl.ok("-n", "authn-demo", "delete", "serviceaccount", "bot")
    r = kubectl.run("auth", "whoami", token=tok)
    assert r.returncode == 1 and r.stderr == "error: You must be logged in to the server (Unauthorized)\n"
    kubectl.ok("-n", "authn-demo", "create", "serviceaccount", "bot")           # same name, new uid: still 401
    assert kubectl.run("auth", "whoami", token=tok).returncode == 1


@needs_kubectl
@pytest.mark.parametrize("args, stderr", [
    (("-n", "default", "create", "token", "nope"), 'error: failed to create token: serviceaccounts "nope" not found\n'),
    (("-n", "default", "create", "token", "default", "--duration=1m"),
     'error: failed to create token: TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: '
     "Invalid value: 60: may not specify a duration less than 10 minutes\n"),
])
def test_kubectl_create_token_errors_are_the_real_servers(kubectl, args, stderr):
    r = kubectl.run(*args)
    assert r.returncode == 1 and r.stderr == stderr


def test_the_token_request_answer_has_the_upstream_shape_with_the_requested_audience(running):
    running.service_account()
    code, body = running.request("POST", "/api/v1/namespaces/authn-demo/serviceaccounts/bot/token", cert="admin",
                                 body=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                  "spec": {"expirationSeconds": 600}}).encode())
    assert code == 201
    assert_shape(body, "token-request-created.json")
    created = datetime.strptime(body["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    expires = datetime.strptime(body["status"]["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert (expires - created).total_seconds() == 600
    code, body = running.request("POST", "/api/v1/namespaces/authn-demo/serviceaccounts/bot/token", cert="admin",
                                 body=b'{"spec":{"audiences":["vault"]}}')
    assert code == 201 and body["spec"]["audiences"] == ["vault"] and body["spec"]["expirationSeconds"] == 3600
    assert decode_jwt(body["status"]["token"])[1]["aud"] == ["vault"]
    assert running.whoami(bearer=body["status"]["token"])[0] == 401            # not for this API server


# --- real kubectl: RBAC -------------------------------------------------------------------------------

ROLE_YAML = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: sa-reader
  namespace: authn-demo
rules:
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: [{verbs}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bot-reads-sas
  namespace: authn-demo
subjects:
- kind: ServiceAccount
  name: bot
  namespace: authn-demo
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: sa-reader
"""


@needs_kubectl
def test_kubectl_apply_of_a_role_and_binding_grants_exactly_what_it_says(kubectl, tmp_path):
    kubectl.ok("create", "namespace", "authn-demo")
    kubectl.ok("-n", "authn-demo", "create", "serviceaccount", "bot")
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text(ROLE_YAML.format(verbs='"get", "list"'))
    assert kubectl.ok("apply", "-f", str(manifest)) == ("role.rbac.authorization.k8s.io/sa-reader created\n"
                                                        "rolebinding.rbac.authorization.k8s.io/bot-reads-sas created\n")
    assert kubectl.ok("apply", "-f", str(manifest)) == ("role.rbac.authorization.k8s.io/sa-reader unchanged\n"
                                                        "rolebinding.rbac.authorization.k8s.io/bot-reads-sas unchanged\n")
    tok = kubectl.ok("-n", "authn-demo", "create", "token", "bot").strip()

    def can_i(verb: str, resource: str, ns: str = "authn-demo") -> str:
        r = kubectl.run("auth", "can-i", verb, resource, "-n", ns, token=tok)
        return r.stdout.strip()

    table = {(v, r, ns): can_i(v, r, ns) for v, r, ns in [
        ("get", "serviceaccounts", "authn-demo"), ("list", "serviceaccounts", "authn-demo"),
        ("delete", "serviceaccounts", "authn-demo"), ("create", "serviceaccounts", "authn-demo"),
        ("get", "serviceaccounts", "default"), ("list", "roles", "authn-demo")]}
    assert table == {("get", "serviceaccounts", "authn-demo"): "yes", ("list", "serviceaccounts", "authn-demo"): "yes",
                     ("delete", "serviceaccounts", "authn-demo"): "no", ("create", "serviceaccounts", "authn-demo"): "no",
                     ("get", "serviceaccounts", "default"): "no", ("list", "roles", "authn-demo"): "no"}
    manifest.write_text(ROLE_YAML.format(verbs='"get", "list", "delete"'))       # rules are replaced
    assert kubectl.ok("apply", "-f", str(manifest)).splitlines()[0] == \
        "role.rbac.authorization.k8s.io/sa-reader configured"
    assert can_i("delete", "serviceaccounts") == "yes"
    assert kubectl.ok("-n", "authn-demo", "get", "serviceaccounts", token=tok).splitlines()[0].split() == \
        ["NAME", "SECRETS", "AGE"]
    denied = kubectl.run("get", "namespaces", token=tok)
    assert denied.returncode == 1 and denied.stderr == (
        'Error from server (Forbidden): namespaces is forbidden: User "system:serviceaccount:authn-demo:bot" '
        'cannot list resource "namespaces" in API group "" at the cluster scope\n')
    # the same answers through impersonation by the admin (system:masters may impersonate)
    assert kubectl.ok("auth", "can-i", "delete", "sa", "-n", "authn-demo",
                      "--as=system:serviceaccount:authn-demo:bot").strip() == "yes"
    assert kubectl.run("auth", "can-i", "create", "sa", "-n", "authn-demo",
                       "--as=system:serviceaccount:authn-demo:bot").stdout.strip() == "no"


@needs_kubectl
def test_can_i_list_pods_is_yes_for_the_admin_and_no_for_a_fresh_service_account(kubectl):
    kubectl.ok("create", "namespace", "authn-demo")
    kubectl.ok("-n", "authn-demo", "create", "serviceaccount", "fresh")
    assert kubectl.run("auth", "can-i", "list", "pods").stdout.strip() == "yes"
    tok = kubectl.ok("-n", "authn-demo", "create", "token", "fresh").strip()
    r = kubectl.run("auth", "can-i", "list", "pods", token=tok)
    assert r.stdout.strip() == "no" and r.returncode == 1
    rules = kubectl.ok("auth", "can-i", "--list", "-n", "authn-demo", token=tok)
    assert "selfsubjectaccessreviews.authorization.k8s.io" in rules and "serviceaccounts" not in rules


def test_impersonation_needs_the_impersonate_verb(running):
    running.service_account()
    code, body = running.request("GET", "/api/v1/namespaces", cert="jane",
                                 headers={"Impersonate-User": "admin", "Impersonate-Group": "system:masters"})
    assert code == 403
    assert body["message"] == ('users "admin" is forbidden: User "jane" cannot impersonate resource "users" '
                               'in API group "" at the cluster scope')
    code, body = running.request("GET", "/api/v1/namespaces", cert="admin", headers={"Impersonate-Group": "x"})
    assert code == 400 and body["message"] == "requested [groups] without impersonating a user"


# --- JSON shapes against fixtures written from the API reference ---------------------------------------


def assert_shape(actual, fixture: str) -> None:
    """Same keys in the same order and the same values as the fixture, except "<any>" (any
    value) and the stand-in's own extra cause (a second UnexpectedServerResponse naming it)."""
    _same_shape(actual, json.loads((FIXTURES / fixture).read_text()), "")


def _same_shape(actual, expected, path: str) -> None:
    if expected == "<any>":
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r}"
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for k in expected:
            _same_shape(actual[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: {actual!r}"
        if path.endswith(".causes") and len(actual) == len(expected) + 1:
            assert "k8sboot stand-in (not Kubernetes)" in actual[-1]["message"]
            actual = actual[:-1]
        assert len(actual) == len(expected), f"{path}: {actual!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _same_shape(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def test_answers_have_the_real_servers_json_shapes(running):
    ns = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "authn-demo"}}).encode()
    code, body = running.request("POST", "/api/v1/namespaces", cert="admin", body=ns)
    assert code == 201
    assert_shape(body, "namespace-created.json")
    assert running.request("POST", "/api/v1/namespaces", cert="admin", body=ns)[1] == \
        json.loads((FIXTURES / "status-already-exists.json").read_text())
    code, body = running.request("GET", "/api/v1/namespaces?fieldSelector=metadata.name%3Dauthn-demo", cert="admin")
    assert code == 200
    assert_shape(body, "namespace-list.json")
    code, body = running.request("POST", "/api/v1/namespaces/authn-demo/serviceaccounts", cert="admin",
                                 body=b'{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"bot"}}')
    assert code == 201
    assert_shape(body, "serviceaccount-created.json")
    assert running.request("GET", "/api/v1/namespaces/authn-demo/serviceaccounts/nope", cert="admin") == \
        (404, json.loads((FIXTURES / "status-not-found.json").read_text()))
    assert running.request("GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/authn-demo/roles/nope",
                           cert="admin") == (404, json.loads((FIXTURES / "status-not-found-rbac.json").read_text()))
    for fixture, path, name in (("status-invalid-namespace.json", "/api/v1/namespaces", "Bad_Name"),
                                ("status-invalid-serviceaccount.json",
                                 "/api/v1/namespaces/authn-demo/serviceaccounts", "Bot")):
        code, body = running.request("POST", path, cert="admin", body=json.dumps({"metadata": {"name": name}}).encode())
        assert (code, body) == (422, json.loads((FIXTURES / fixture).read_text()))
    code, body = running.request("POST", "/api/v1/namespaces/authn-demo/serviceaccounts/bot/token", cert="admin",
                                 body=b'{"spec":{"expirationSeconds":60}}')
    assert (code, body) == (422, json.loads((FIXTURES / "status-invalid-token-request.json").read_text()))
    code, body = running.request("DELETE", "/api/v1/namespaces/authn-demo/serviceaccounts/bot", cert="admin")
    assert code == 200
    assert_shape(body, "serviceaccount-deleted.json")
    code, body = running.request("DELETE", "/api/v1/namespaces/authn-demo", cert="admin")
    assert code == 200
    assert_shape(body, "namespace-deleted.json")
    assert running.request("GET", "/api/v1/namespaces/authn-demo", cert="admin")[0] == 404
    code, body = running.request("GET", "/api/v1/pods", cert="admin")
    assert code == 404
    assert_shape(body, "status-unknown-resource.json")


# --- field validation, patches, updates ----------------------------------------------------------------


def test_strict_field_validation_refuses_unknown_fields_and_warn_drops_them(running):
    running.service_account()
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "verbz": ["x"]}], "extra": 1}
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/authn-demo/roles"
    code, body = running.request("POST", path + "?fieldValidation=Strict", cert="admin", body=json.dumps(role).encode())
    assert code == 400 and body["reason"] == "BadRequest"
    assert body["message"] == ('Role in version "v1" cannot be handled as a Role: strict decoding error: '
                               'unknown field "rules[0].verbz", unknown field "extra"')
    code, body = running.request("POST", path, cert="admin", body=json.dumps(role).encode())
    assert code == 201 and "extra" not in body and body["rules"] == [
        {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]


def test_a_merge_patch_replaces_rules_and_an_update_with_a_stale_resource_version_conflicts(running):
    running.service_account()
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/authn-demo/roles"
    role = {"metadata": {"name": "r"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}
    code, created = running.request("POST", path, cert="admin", body=json.dumps(role).encode())
    patch = {"rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["secrets"]}],
             "metadata": {"labels": {"a": "b"}}}
    code, patched = running.request("PATCH", path + "/r", cert="admin", body=json.dumps(patch).encode(),
                                    content_type="application/strategic-merge-patch+json")
    assert code == 200 and patched["rules"] == patch["rules"] and patched["metadata"]["labels"] == {"a": "b"}
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    code, body = running.request("PATCH", path + "/r", cert="admin", body=b"[]",
                                 content_type="application/json-patch+json")
    assert code == 415 and body["reason"] == "UnsupportedMediaType"
    stale = dict(created, rules=[])
    code, body = running.request("PUT", path + "/r", cert="admin", body=json.dumps(stale).encode())
    assert code == 409 and body["reason"] == "Conflict" and body["message"] == (
        'Operation cannot be fulfilled on roles.rbac.authorization.k8s.io "r": the object has been modified; '
        "please apply your changes to the latest version and try again")


def test_dry_run_and_watch_are_refused_never_pretended(running):
    code, body = running.request("POST", "/api/v1/namespaces?dryRun=All", cert="admin", body=b'{"metadata":{"name":"x"}}')
    assert code == 400 and "dryRun is not implemented by the k8sboot stand-in" in body["message"]
    assert running.request("GET", "/api/v1/namespaces/x", cert="admin")[0] == 404
    assert running.request("GET", "/api/v1/namespaces?watch=true", cert="admin")[0] == 405


# --- storage ------------------------------------------------------------------------------------------


def test_the_file_store_is_root_only_atomic_and_keeps_its_counter_across_restarts(tmp_path):
    d = tmp_path / "store"
    s = FileStore(str(d))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    a = s.create("namespaces", "", "a", {"metadata": {"name": "a"}})
    b = s.create("serviceaccounts", "a", "bot", {"metadata": {"name": "bot", "namespace": "a"}})
    assert (a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]) == ("1", "2")
    with pytest.raises(AlreadyExists):
        s.create("namespaces", "", "a", {"metadata": {"name": "a"}})
    with pytest.raises(Conflict):
        s.update("namespaces", "", "a", {"metadata": {"name": "a"}}, resource_version="999")
    s.delete("serviceaccounts", "a", "bot")
    with pytest.raises(NotFound):
        s.delete("serviceaccounts", "a", "bot")
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    dirs = [p for p in d.rglob("*") if p.is_dir()]
    assert dirs and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in dirs)
    (d / "namespaces" / "_cluster" / "a.json.tmp.1.2").write_text("{half")    # a write cut by a crash
    again = FileStore(str(d))
    assert again.get("namespaces", "", "a")["metadata"]["resourceVersion"] == "1"
    assert again.get("serviceaccounts", "a", "bot") is None
    c = again.create("namespaces", "", "c", {"metadata": {"name": "c"}})
    assert c["metadata"]["resourceVersion"] == "4"             # never a number handed out before
    assert not list(d.rglob("*.tmp.*"))
    assert [o["metadata"]["name"] for o in again.list("namespaces")] == ["a", "c"]


def test_rbac_names_with_colons_are_stored_and_found_again(tmp_path):
    s = FileStore(str(tmp_path))
    s.create("clusterroles", "", "system:basic-user", {"metadata": {"name": "system:basic-user"}})
    assert FileStore(str(tmp_path)).get("clusterroles", "", "system:basic-user") is not None


# --- names, ages, tables -------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, name, errors", [
    ("label", "authn-demo", []),
    ("label", "a" * 64, ["must be no more than 63 characters"]),
    ("label", "a.b", ["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                      "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
                      "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]),
    ("subdomain", "bot.v1", []),
    ("path-segment", "system:masters", []),
    ("path-segment", "..", ["may not be '..'"]),
    ("path-segment", "a/b%", ["may not contain '/'", "may not contain '%'"]),
])
def test_names_are_validated_with_apimachinerys_messages(rule, name, errors):
    assert resources.name_errors(rule, name) == errors


@pytest.mark.parametrize("seconds, shown", [(0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (600, "10m"),
                                            (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"),
                                            (50 * 3600, "2d2h"), (400 * 86400, "400d"), (-5, "<invalid>")])
def test_ages_are_kubectls_human_durations(seconds, shown):
    assert resources.human_duration(seconds) == shown


def test_kubectl_gets_a_table_when_it_asks_for_one():
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    assert resources.wants_table(accept) and not resources.wants_table("application/json")


# --- protobuf bodies (kubectl 1.32 sends built-in kinds as protobuf) -------------------------------------


def _pb_field(number: int, value) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def test_a_protobuf_token_request_and_role_read_as_their_json():
    meta = _pb_field(1, "bot") + _pb_field(2, "") + _pb_field(3, "")           # gogo writes empty strings
    spec = _pb_field(1, "vault") + _pb_field(1, "other") + _pb_field(4, 600)
    raw = _pb_field(1, meta) + _pb_field(2, spec) + _pb_field(99, "unknown field: skipped")
    body = protobuf.MAGIC + _pb_field(1, _pb_field(1, "authentication.k8s.io/v1") + _pb_field(2, "TokenRequest")) + \
        _pb_field(2, raw)
    assert protobuf.decode(body) == {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                                     "metadata": {"name": "bot"},
                                     "spec": {"audiences": ["vault", "other"], "expirationSeconds": 600}}
    rule = _pb_field(1, "get") + _pb_field(2, "") + _pb_field(3, "pods")
    role = _pb_field(1, _pb_field(1, "r") + _pb_field(11, _pb_field(1, "k") + _pb_field(2, "v"))) + _pb_field(2, rule)
    body = protobuf.MAGIC + _pb_field(1, _pb_field(1, "rbac.authorization.k8s.io/v1") + _pb_field(2, "Role")) + \
        _pb_field(2, role)
    assert protobuf.decode(body)["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]
    assert protobuf.decode(body)["metadata"] == {"name": "r", "labels": {"k": "v"}}
    with pytest.raises(ValueError):
        protobuf.decode(b"{}")


# --- tokens --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curve, alg", [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"),
                                        (ec.SECP521R1(), "ES512")])
def test_ec_signing_keys_sign_with_the_algorithm_of_their_curve(curve, alg):
    key = ec.generate_private_key(curve)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = tokenrequest.load_signer(pem, ISSUER)
    sa = {"metadata": {"name": "bot", "namespace": "ns", "uid": "u-1"}}
    issued = tokenrequest.issue({"spec": {"expirationSeconds": 7200}}, sa, (ISSUER,), signer,
                                datetime(2026, 1, 1, tzinfo=timezone.utc), "jti-1", max_expiration=3600)
    assert issued.warnings == ("requested expiration of 7200 seconds shortened to 3600 seconds",)
    assert issued.body["spec"]["expirationSeconds"] == 3600
    header, claims = decode_jwt(issued.body["status"]["token"])
    assert header == {"alg": alg, "kid": key_id(key.public_key())}
    assert claims["exp"] - claims["iat"] == 3600 and claims["jti"] == "jti-1"
    jwt.decode(issued.body["status"]["token"], key.public_key(), algorithms=[alg], audience=ISSUER,
               options={"verify_exp": False})


def test_a_max_token_expiration_outside_its_range_is_refused_with_the_real_message():
    flags = standin.parse_flags(["--service-account-max-token-expiration=30m"])
    assert "the service-account-max-token-expiration must be between 1 hour and 2^32 seconds" in \
        standin.validate_flags(flags)
    assert standin.parse_flags(["--service-account-max-token-expiration=24h"]).service_account_max_token_expiration \
        == 86400


# --- what the control plane's controllers and admission would do ------------------------------------


@needs_kubectl
def test_the_system_namespaces_may_not_be_deleted_and_a_deleted_default_account_comes_back(kubectl):
    r = kubectl.run("delete", "namespace", "default")
    assert r.returncode == 1
    assert r.stderr == 'Error from server (Forbidden): namespaces "default" is forbidden: this namespace may not be deleted\n'
    before = json.loads(kubectl.ok("-n", "default", "get", "sa", "default", "-o", "json"))["metadata"]["uid"]
    assert kubectl.ok("-n", "default", "delete", "sa", "default") == 'serviceaccount "default" deleted\n'
    after = json.loads(kubectl.ok("-n", "default", "get", "sa", "default", "-o", "json"))["metadata"]["uid"]
    assert after != before                                   # made again, as the serviceaccount controller does


@needs_kubectl
def test_label_selectors_select(kubectl):
    for name, team in (("a", "red"), ("b", "blue"), ("c", None)):
        kubectl.ok("create", "namespace", name)
        if team:
            kubectl.ok("label", "namespace", name, f"team={team}")
    def names(selector: str) -> list[str]:
        return kubectl.ok("get", "namespaces", "-l", selector, "-o", "name").split()

    assert names("team=red") == ["namespace/a"]
    assert names("team in (red,blue)") == ["namespace/a", "namespace/b"]
    assert names("team notin (red),kubernetes.io/metadata.name in (a,b,c)") == ["namespace/b", "namespace/c"]
    assert names("!team,kubernetes.io/metadata.name=c") == ["namespace/c"]


@needs_kubectl
def test_rbac_objects_are_validated_as_upstream_validates_them(kubectl, tmp_path):
    kubectl.ok("create", "namespace", "authn-demo")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n"
                   "metadata: {name: bad, namespace: authn-demo}\n"
                   "subjects: [{kind: Robot, name: x}, {kind: User, name: jane}]\n"
                   "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\n")
    r = kubectl.run("apply", "-f", str(bad))
    assert r.returncode == 1 and r.stderr == (
        'The RoleBinding "bad" is invalid: subjects[0].kind: Unsupported value: "Robot": supported values: '
        '"ServiceAccount", "User", "Group"\n')                        # a User's apiGroup is defaulted
    r = kubectl.run("-n", "authn-demo", "create", "role", "r", "--verb=get", "--resource=serviceaccounts")
    assert r.returncode == 0
    r = kubectl.run("-n", "authn-demo", "create", "rolebinding", "rb", "--role=r", "--user=jane")
    assert r.returncode == 0
    r = kubectl.run("-n", "authn-demo", "patch", "rolebinding", "rb", "--type=merge", "-p",
                    '{"roleRef":{"name":"other"}}')
    assert r.returncode == 1 and r.stderr == (
        'The RoleBinding "rb" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", '
        'Kind:"Role", Name:"other"}: cannot change roleRef\n')


def test_a_rule_without_verbs_or_resources_is_invalid(running):
    running.service_account()
    role = {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]}
    code, body = running.request("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/authn-demo/roles",
                                 cert="admin", body=json.dumps(role).encode())
    assert code == 422 and body["message"] == (
        'Role.rbac.authorization.k8s.io "r" is invalid: [rules[0].verbs: Required value: verbs must contain at least '
        "one value, rules[0].resources: Required value: resource rules must supply at least one resource, "
        'rules[1].nonResourceURLs: Invalid value: []string{"/x"}: namespaced rules cannot apply to non-resource URLs]')
    assert [c["reason"] for c in body["details"]["causes"]] == ["FieldValueRequired", "FieldValueRequired",
                                                               "FieldValueInvalid"]


def test_a_user_may_only_grant_what_they_hold(running):
    """RBAC's escalation check: a namespace admin (ClusterRole admin via a RoleBinding) may bind
    `view` and make a Role within their rights, but not grant what they lack (nodes, a binding to
    cluster-admin); system:masters may do anything."""
    running.service_account()
    rb = {"metadata": {"name": "jane-admin"}, "subjects": [{"kind": "User", "name": "jane"}],
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"}}
    base = "/apis/rbac.authorization.k8s.io/v1/namespaces/authn-demo"
    assert running.request("POST", base + "/rolebindings", cert="admin", body=json.dumps(rb).encode())[0] == 201

    def as_jane(kind: str, obj: dict) -> tuple[int, dict]:
        return running.request("POST", f"{base}/{kind}", cert="jane", body=json.dumps(obj).encode())

    ok_role = {"metadata": {"name": "reader"}, "rules": [{"verbs": ["get", "list"], "apiGroups": [""],
                                                         "resources": ["serviceaccounts"]}]}
    assert as_jane("roles", ok_role)[0] == 201
    too_much = {"metadata": {"name": "nodes"}, "rules": [{"verbs": ["get", "list"], "apiGroups": [""],
                                                         "resources": ["nodes"]}]}
    code, body = as_jane("roles", too_much)
    assert code == 403 and body["message"] == (
        'roles.rbac.authorization.k8s.io "nodes" is forbidden: user "jane" (groups=["dev" "system:authenticated"]) '
        'is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["nodes"], Verbs:["get" "list"]}')
    view = {"metadata": {"name": "v"}, "subjects": [{"kind": "User", "name": "bob"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}
    assert as_jane("rolebindings", view)[0] == 201
    root = dict(view, metadata={"name": "root"}, roleRef=dict(view["roleRef"], name="cluster-admin"))
    code, body = as_jane("rolebindings", root)
    assert code == 403 and body["message"].startswith(
        'rolebindings.rbac.authorization.k8s.io "root" is forbidden: user "jane" (groups=["dev" '
        '"system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n')
    missing = dict(view, metadata={"name": "m"}, roleRef=dict(view["roleRef"], kind="Role", name="nope"))
    code, body = as_jane("rolebindings", missing)
    assert code == 404 and body["message"] == 'roles.rbac.authorization.k8s.io "nope" not found'
    assert running.request("POST", base + "/roles", cert="admin", body=json.dumps(too_much).encode())[0] == 201


@pytest.mark.parametrize("modes, error", [
    ("Node,Webhook", "the k8sboot stand-in (not Kubernetes) does not implement --authorization-mode Webhook "
                     "(it implements AlwaysAllow, AlwaysDeny, Node, RBAC)"),
    ("RBAC,Magic", 'authorization-mode "Magic" is not a valid mode'),
    ("RBAC,RBAC", "authorization-mode RBAC has mode specified more than once"),
])
def test_authorization_modes_it_cannot_honour_stop_the_start(modes, error):
    assert error in standin.validate_flags(standin.parse_flags([f"--authorization-mode={modes}"]))


@pytest.mark.parametrize("modes, jane_lists_namespaces, reason", [
    ("AlwaysAllow", 200, None),
    ("Node,RBAC", 403, None),
    ("RBAC,AlwaysDeny", 403, "Everything is forbidden."),
])
def test_the_authorization_modes_decide_in_order(pki, tmp_path, modes, jane_lists_namespaces, reason):
    running = Running(pki, backends()[-1], store_dir=tmp_path / "store", **{"authorization-mode": modes})
    try:
        code, body = running.request("GET", "/api/v1/namespaces", cert="jane")
        assert code == jane_lists_namespaces
        if reason:
            assert body["message"].endswith(f"at the cluster scope: {reason}")
        assert running.request("GET", "/api/v1/namespaces", cert="admin")[0] == 200     # system:masters first
    finally:
        running.stop()
