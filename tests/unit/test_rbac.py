"""RBAC as kube-apiserver decides it: the bootstrap policy, the authorizer, the reviews kubectl
sends. Expected answers come from the upstream policy (bootstrappolicy/policy.go and its testdata)
and the RBAC docs, never from this module's output."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from k8sboot import rbac
from k8sboot.cli import rbac_cmds
from k8sboot.authn import UserInfo

ROOT = Path(__file__).resolve().parents[2]

ADMIN = UserInfo("admin", groups=("system:masters", "system:authenticated"))
BOT = UserInfo("system:serviceaccount:authn-demo:bot",
               groups=("system:serviceaccounts", "system:serviceaccounts:authn-demo", "system:authenticated"))
ANON = UserInfo("system:anonymous", groups=("system:unauthenticated",))
JANE = UserInfo("jane", groups=("dev", "system:authenticated"))


def res(verb, resource, namespace="", name="", group="", subresource=""):
    return rbac.Attributes(verb=verb, is_resource=True, api_group=group, namespace=namespace, resource=resource,
                           subresource=subresource, name=name)


def url(verb, path):
    return rbac.Attributes(verb=verb, path=path)


def role(name, namespace, *rules, kind="Role"):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": list(rules)}


def binding(name, namespace, role_name, *subjects, role_kind="Role", kind="RoleBinding"):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
            "subjects": list(subjects)}


def rule(verbs, groups=("",), resources=(), names=(), urls=()):
    out = {"verbs": list(verbs)}
    if resources:
        out["apiGroups"] = list(groups)
        out["resources"] = list(resources)
    if names:
        out["resourceNames"] = list(names)
    if urls:
        out["nonResourceURLs"] = list(urls)
    return out


USER_JANE = {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"}

# The RBAC docs' first example: a Role "pod-reader" in "default" (get, watch, list pods) bound to jane.
POD_READER = [
    role("pod-reader", "default", rule(["get", "watch", "list"], resources=["pods"])),
    binding("read-pods", "default", "pod-reader", USER_JANE),
]


def decide(user, attrs, extra=()):
    return rbac.Authorizer(rbac.StaticSource(rbac.bootstrap_policy() + list(extra))).authorize(user, attrs)


# --- can-i, table-driven ------------------------------------------------------------------------

CASES = [
    # system:masters: yes to everything (the privileged-groups authorizer, then cluster-admin)
    ("admin-delete-ns", ADMIN, res("delete", "namespaces", name="kube-system"), (), True),
    ("admin-any-verb", ADMIN, res("escalate", "clusterroles", group="rbac.authorization.k8s.io"), (), True),
    ("admin-url", ADMIN, url("post", "/anything/at/all"), (), True),
    # a fresh ServiceAccount: only system:basic-user, system:discovery, system:public-info-viewer
    ("sa-list-pods", BOT, res("list", "pods", "authn-demo"), (), False),
    ("sa-ssar", BOT, res("create", "selfsubjectaccessreviews", group="authorization.k8s.io"), (), True),
    ("sa-ssrr", BOT, res("create", "selfsubjectrulesreviews", group="authorization.k8s.io"), (), True),
    ("sa-whoami", BOT, res("create", "selfsubjectreviews", group="authentication.k8s.io"), (), True),
    ("sa-healthz", BOT, url("get", "/healthz"), (), True),
    ("sa-api", BOT, url("get", "/api"), (), True),
    ("sa-apis-group", BOT, url("get", "/apis/apps/v1"), (), True),
    ("sa-post-api", BOT, url("post", "/api"), (), False),
    ("sa-metrics", BOT, url("get", "/metrics"), (), False),
    ("sa-jwks", BOT, url("get", "/openid/v1/jwks"), (), True),     # system:serviceaccounts
    ("sa-jwks-slash", BOT, url("get", "/openid/v1/jwks/"), (), True),      # kubernetes#117455
    ("jane-jwks", JANE, url("get", "/openid/v1/jwks"), (), False),
    # system:unauthenticated: system:public-info-viewer only
    ("anon-version", ANON, url("get", "/version"), (), True),
    ("anon-livez", ANON, url("get", "/livez"), (), True),
    ("anon-api", ANON, url("get", "/api"), (), False),
    ("anon-ssar", ANON, res("create", "selfsubjectaccessreviews", group="authorization.k8s.io"), (), False),
    # the docs' pod-reader Role + RoleBinding
    ("role-get-there", JANE, res("get", "pods", "default", name="web"), POD_READER, True),
    ("role-list-there", JANE, res("list", "pods", "default"), POD_READER, True),
    ("role-other-ns", JANE, res("list", "pods", "prod"), POD_READER, False),
    ("role-cluster-wide", JANE, res("list", "pods"), POD_READER, False),
    ("role-delete", JANE, res("delete", "pods", "default", name="web"), POD_READER, False),
    ("role-other-user", BOT, res("list", "pods", "default"), POD_READER, False),
    ("role-subresource-not-implied", JANE, res("get", "pods", "default", name="web", subresource="log"),
     POD_READER, False),
]


@pytest.mark.parametrize("user, attrs, extra, allowed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_can_i(user, attrs, extra, allowed):
    assert decide(user, attrs, extra).allowed is allowed


def test_system_masters_is_allowed_by_the_privileged_groups_authorizer_with_no_reason():
    assert decide(ADMIN, res("list", "pods", "default")) == rbac.Decision(True, "")


def test_rbac_alone_names_the_binding_that_allows_as_upstream():
    d = rbac.RBACAuthorizer(rbac.StaticSource(rbac.bootstrap_policy())).authorize(ADMIN, res("list", "pods"))
    assert d.allowed
    assert d.reason == ('RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole "cluster-admin" '
                        'to Group "system:masters"')


def test_a_role_binding_reason_names_binding_slash_namespace():
    d = decide(JANE, res("get", "pods", "default", name="x"), POD_READER)
    assert d.reason == 'RBAC: allowed by RoleBinding "read-pods/default" of Role "pod-reader" to User "jane"'


def test_nothing_allows_and_nothing_failed_gives_an_empty_reason():
    assert decide(BOT, res("list", "pods", "authn-demo")) == rbac.Decision(False, "")


def test_a_binding_to_a_missing_cluster_role_gives_the_listers_not_found_as_the_reason():
    extra = [binding("jane-view", "", "no-such-role", USER_JANE, role_kind="ClusterRole", kind="ClusterRoleBinding")]
    d = decide(JANE, res("list", "pods", "default"), extra)
    assert d == rbac.Decision(False, 'RBAC: clusterrole.rbac.authorization.k8s.io "no-such-role" not found')


def test_two_missing_roles_are_aggregated_in_brackets():
    extra = [binding("a", "default", "gone", USER_JANE),
             binding("b", "", "gone-too", USER_JANE, role_kind="ClusterRole", kind="ClusterRoleBinding")]
    d = decide(JANE, res("list", "pods", "default"), extra)
    assert d.reason == ('RBAC: [clusterrole.rbac.authorization.k8s.io "gone-too" not found, '
                        'role.rbac.authorization.k8s.io "gone" not found]')


def test_a_missing_role_does_not_stop_another_binding_from_allowing():
    extra = [binding("broken", "default", "gone", USER_JANE), *POD_READER]
    assert decide(JANE, res("list", "pods", "default"), extra).allowed


def test_resource_names_restrict_to_those_names_and_never_allow_list():
    extra = [role("one-cm", "default", rule(["get", "update", "list"], resources=["configmaps"], names=["app"])),
             binding("b", "default", "one-cm", USER_JANE)]
    assert decide(JANE, res("get", "configmaps", "default", name="app"), extra).allowed
    assert not decide(JANE, res("get", "configmaps", "default", name="other"), extra).allowed
    assert not decide(JANE, res("list", "configmaps", "default"), extra).allowed


@pytest.mark.parametrize("resources, subresource, allowed", [
    (["pods/log"], "log", True),
    (["pods/log"], "", False),               # pods/log does not grant pods
    (["pods"], "log", False),                # pods does not grant pods/log
    (["*/log"], "log", True),
    (["*/log"], "status", False),
    (["*"], "log", True),
    (["*"], "", True),
])
def test_subresources(resources, subresource, allowed):
    extra = [role("r", "default", rule(["get"], resources=resources)), binding("b", "default", "r", USER_JANE)]
    assert decide(JANE, res("get", "pods", "default", name="web", subresource=subresource), extra).allowed is allowed


@pytest.mark.parametrize("urls, path, allowed", [
    (["/logs/*"], "/logs/kube-apiserver.log", True),
    (["/logs/*"], "/logs/", True),
    (["/logs/*"], "/logs", False),
    (["/logs"], "/logs/x", False),
    (["*"], "/anything", True),
    (["/metrics"], "/metrics", True),
])
def test_non_resource_urls_with_a_trailing_star(urls, path, allowed):
    extra = [role("logs", "", rule(["get"], urls=urls), kind="ClusterRole"),
             binding("logs", "", "logs", USER_JANE, role_kind="ClusterRole", kind="ClusterRoleBinding")]
    assert decide(JANE, url("get", path), extra).allowed is allowed


def test_non_resource_urls_are_only_granted_by_cluster_role_bindings():
    extra = [role("logs", "", rule(["get"], urls=["/logs/*"]), kind="ClusterRole"),
             binding("logs", "default", "logs", USER_JANE, role_kind="ClusterRole")]
    assert not decide(JANE, url("get", "/logs/x"), extra).allowed


def test_api_groups_and_star():
    extra = [role("deploy", "default", rule(["get"], groups=["apps"], resources=["deployments"])),
             role("any", "prod", rule(["get"], groups=["*"], resources=["deployments"])),
             binding("b", "default", "deploy", USER_JANE), binding("c", "prod", "any", USER_JANE)]
    assert decide(JANE, res("get", "deployments", "default", name="d", group="apps"), extra).allowed
    assert not decide(JANE, res("get", "deployments", "default", name="d", group="extensions"), extra).allowed
    assert decide(JANE, res("get", "deployments", "prod", name="d", group="extensions"), extra).allowed


def test_a_cluster_role_bound_in_a_namespace_grants_only_there():
    extra = [binding("jane-edit", "dev", "edit", USER_JANE, role_kind="ClusterRole")]
    assert decide(JANE, res("create", "deployments", "dev", group="apps"), extra).allowed
    assert not decide(JANE, res("create", "deployments", "prod", group="apps"), extra).allowed
    assert not decide(JANE, res("create", "roles", "dev", group="rbac.authorization.k8s.io"), extra).allowed


@pytest.mark.parametrize("subject, namespace, allowed", [
    ({"kind": "ServiceAccount", "name": "bot", "namespace": "authn-demo"}, "authn-demo", True),
    ({"kind": "ServiceAccount", "name": "bot"}, "authn-demo", True),           # defaults to the binding's ns
    ({"kind": "ServiceAccount", "name": "bot", "namespace": "other"}, "authn-demo", False),
    ({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:serviceaccounts:authn-demo"},
     "authn-demo", True),
    ({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "system:serviceaccount:authn-demo:bot"},
     "authn-demo", True),
])
def test_service_account_subjects(subject, namespace, allowed):
    extra = [binding("bot-view", namespace, "view", subject, role_kind="ClusterRole")]
    assert decide(BOT, res("list", "pods", namespace), extra).allowed is allowed


def test_a_service_account_subject_without_namespace_in_a_cluster_role_binding_matches_nobody():
    extra = [binding("b", "", "view", {"kind": "ServiceAccount", "name": "bot"}, role_kind="ClusterRole",
                     kind="ClusterRoleBinding")]
    assert not decide(BOT, res("list", "pods", "authn-demo"), extra).allowed


def test_service_account_subject_is_described_name_slash_namespace():
    extra = [binding("bot-view", "authn-demo", "view", {"kind": "ServiceAccount", "name": "bot"},
                     role_kind="ClusterRole")]
    assert decide(BOT, res("list", "pods", "authn-demo"), extra).reason == (
        'RBAC: allowed by RoleBinding "bot-view/authn-demo" of ClusterRole "view" to ServiceAccount '
        '"bot/authn-demo"')


# --- the bootstrap policy -------------------------------------------------------------------------


def _by_name(kind):
    return {o["metadata"]["name"]: o for o in rbac.bootstrap_policy() if o["kind"] == kind}


def test_cluster_admin_binding_is_the_tutorials_line():
    crb = _by_name("ClusterRoleBinding")["cluster-admin"]
    assert f'{crb["roleRef"]["kind"]}/{crb["roleRef"]["name"]} <- ' \
           f'{crb["subjects"][0]["kind"]}/{crb["subjects"][0]["name"]}' == "ClusterRole/cluster-admin <- Group/system:masters"
    assert crb["apiVersion"] == "rbac.authorization.k8s.io/v1"


@pytest.mark.parametrize("name, subjects", [
    ("cluster-admin", ["system:masters"]),
    ("system:discovery", ["system:authenticated"]),
    ("system:basic-user", ["system:authenticated"]),
    ("system:public-info-viewer", ["system:authenticated", "system:unauthenticated"]),
])
def test_bootstrap_bindings_as_upstream(name, subjects):
    crb = _by_name("ClusterRoleBinding")[name]
    assert [s["name"] for s in crb["subjects"]] == subjects
    assert all(s["kind"] == "Group" and s["apiGroup"] == "rbac.authorization.k8s.io" for s in crb["subjects"])
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}


def test_every_bootstrap_object_is_labelled_and_autoupdated_like_upstreams():
    for obj in rbac.bootstrap_policy():
        assert obj["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
        assert obj["metadata"]["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}


def test_cluster_admin_rules_are_upstreams():
    assert _by_name("ClusterRole")["cluster-admin"]["rules"] == [
        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, {"verbs": ["*"], "nonResourceURLs": ["*"]}]


def test_aggregated_roles_keep_their_aggregation_rule_and_labels():
    roles = _by_name("ClusterRole")
    assert roles["admin"]["aggregationRule"] == {"clusterRoleSelectors": [
        {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}}]}
    assert roles["edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert roles["view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "aggregationRule" not in roles["cluster-admin"]


@pytest.mark.parametrize("role_name, verb, resource, group, allowed", [
    ("view", "list", "pods", "", True),
    ("view", "get", "secrets", "", False),               # view never reads secrets
    ("view", "create", "pods", "", False),
    ("edit", "get", "secrets", "", True),
    ("edit", "create", "deployments", "apps", True),
    ("edit", "list", "pods", "", True),                   # via view, aggregated into edit
    ("edit", "create", "serviceaccounts/token", "", True),
    ("edit", "create", "roles", "rbac.authorization.k8s.io", False),
    ("admin", "create", "roles", "rbac.authorization.k8s.io", True),
    ("admin", "delete", "pods", "", True),                # via edit, aggregated into admin
    ("admin", "create", "localsubjectaccessreviews", "authorization.k8s.io", True),
    ("admin", "delete", "namespaces", "", False),
])
def test_user_facing_roles_grant_what_upstream_aggregates_into_them(role_name, verb, resource, group, allowed):
    extra = [binding("b", "dev", role_name, USER_JANE, role_kind="ClusterRole")]
    resource, _, sub = resource.partition("/")
    attrs = res(verb, resource, "dev", name="x" if sub else "", group=group, subresource=sub)
    assert decide(JANE, attrs, extra).allowed is allowed


def test_a_user_cluster_role_labelled_aggregate_to_view_extends_view_edit_and_admin():
    crd_reader = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                  "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                  "rules": [rule(["get"], groups=["example.com"], resources=["widgets"])]}
    for role_name in ("view", "edit", "admin"):
        extra = [crd_reader, binding("b", "dev", role_name, USER_JANE, role_kind="ClusterRole")]
        assert decide(JANE, res("get", "widgets", "dev", name="w", group="example.com"), extra).allowed, role_name


def test_bootstrap_policy_returns_fresh_objects():
    first = rbac.bootstrap_policy()
    first[0]["metadata"]["name"] = "changed"
    assert rbac.bootstrap_policy()[0]["metadata"]["name"] != "changed"


# --- request attributes (RequestInfoFactory) -------------------------------------------------------


@pytest.mark.parametrize("method, target, expected", [
    ("GET", "/api/v1/namespaces/default/pods", ("list", "", "default", "pods", "", "")),
    ("GET", "/api/v1/namespaces/default/pods?watch=true", ("watch", "", "default", "pods", "", "")),
    ("GET", "/api/v1/namespaces/default/pods?watch=1", ("watch", "", "default", "pods", "", "")),
    ("GET", "/api/v1/namespaces/default/pods?watch=false", ("list", "", "default", "pods", "", "")),
    ("GET", "/api/v1/pods", ("list", "", "", "pods", "", "")),
    ("GET", "/api/v1/namespaces/default/pods/web", ("get", "", "default", "pods", "web", "")),
    ("HEAD", "/api/v1/namespaces/default/pods/web", ("get", "", "default", "pods", "web", "")),
    ("GET", "/api/v1/namespaces/default/pods/web/log", ("get", "", "default", "pods", "web", "log")),
    ("GET", "/api/v1/namespaces/kube-system", ("get", "", "kube-system", "namespaces", "kube-system", "")),
    ("PUT", "/api/v1/namespaces/x/finalize", ("update", "", "x", "namespaces", "x", "finalize")),
    ("GET", "/api/v1/namespaces/x/status", ("get", "", "x", "namespaces", "x", "status")),
    ("DELETE", "/api/v1/namespaces/default/pods", ("deletecollection", "", "default", "pods", "", "")),
    ("DELETE", "/api/v1/namespaces/default/pods/web", ("delete", "", "default", "pods", "web", "")),
    ("PATCH", "/apis/apps/v1/namespaces/x/deployments/d/scale", ("patch", "apps", "x", "deployments", "d", "scale")),
    ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
     ("create", "authentication.k8s.io", "", "selfsubjectreviews", "", "")),
    ("POST", "/api/v1/namespaces/authn-demo/serviceaccounts/bot/token",
     ("create", "", "authn-demo", "serviceaccounts", "bot", "token")),
    ("GET", "/api/v1/watch/namespaces/default/pods", ("watch", "", "default", "pods", "", "")),
    ("GET", "/api/v1/proxy/namespaces/default/pods/web/extra", ("proxy", "", "default", "pods", "web", "")),
    ("GET", "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dweb",
     ("list", "", "default", "pods", "web", "")),
    ("GET", "/api/v1/namespaces/default/configmaps/a%2Eb", ("get", "", "default", "configmaps", "a.b", "")),
])
def test_attributes_from_request(method, target, expected):
    a = rbac.attributes_from_request(method, target)
    assert a.is_resource
    assert (a.verb, a.api_group, a.namespace, a.resource, a.name, a.subresource) == expected


@pytest.mark.parametrize("method, target, verb", [
    ("GET", "/", "get"), ("GET", "/healthz", "get"), ("GET", "/version", "get"), ("GET", "/api", "get"),
    ("GET", "/apis", "get"), ("GET", "/api/v1", "get"), ("GET", "/apis/apps/v1", "get"),
    ("HEAD", "/healthz", "head"), ("POST", "/api", "post"), ("GET", "/logs/kube-apiserver.log", "get"),
])
def test_non_resource_requests_keep_the_lowercased_method_and_path(method, target, verb):
    a = rbac.attributes_from_request(method, target + "?x=1")
    assert not a.is_resource and a.verb == verb and a.path == target


# --- the 403 body ----------------------------------------------------------------------------------


def test_forbidden_status_is_the_api_servers():
    body = rbac.forbidden_status(ANON, rbac.attributes_from_request("GET", "/api/v1/namespaces/default/pods"))
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'pods is forbidden: User "system:anonymous" cannot list resource "pods" in API '
                               'group "" in the namespace "default"',
                    "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}
    nodes = rbac.forbidden_status(ANON, rbac.attributes_from_request("GET", "/api/v1/nodes/n1"))
    assert nodes["message"] == ('nodes "n1" is forbidden: User "system:anonymous" cannot get resource "nodes" '
                                'in API group "" at the cluster scope')
    assert nodes["details"] == {"name": "n1", "kind": "nodes"}
    root = rbac.forbidden_status(ANON, rbac.attributes_from_request("GET", "/"))
    assert root["message"] == 'forbidden: User "system:anonymous" cannot get path "/"' and root["details"] == {}


def test_forbidden_status_appends_the_rbac_reason_and_names_the_group():
    attrs = rbac.attributes_from_request("GET", "/apis/apps/v1/namespaces/dev/deployments/d")
    body = rbac.forbidden_status(JANE, attrs, 'RBAC: clusterrole.rbac.authorization.k8s.io "x" not found')
    assert body["message"] == ('deployments.apps "d" is forbidden: User "jane" cannot get resource "deployments" '
                               'in API group "apps" in the namespace "dev": RBAC: '
                               'clusterrole.rbac.authorization.k8s.io "x" not found')
    assert body["details"] == {"name": "d", "group": "apps", "kind": "deployments"}


# --- SelfSubjectAccessReview / SelfSubjectRulesReview -------------------------------------------------


def _authz(extra=()):
    return rbac.Authorizer(rbac.StaticSource(rbac.bootstrap_policy() + list(extra)))


def test_ssar_for_kubectl_can_i_list_pods_as_a_fresh_service_account():
    review = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
              "spec": {"resourceAttributes": {"namespace": "authn-demo", "verb": "list", "resource": "pods"}}}
    assert rbac.self_subject_access_review(BOT, review, _authz()) == {
        "kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": {"resourceAttributes": {"namespace": "authn-demo", "verb": "list", "resource": "pods"}},
        "status": {"allowed": False}}


def test_ssar_allowed_by_rbac_carries_the_reason_and_system_masters_none():
    review = {"spec": {"resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods",
                                              "name": "web"}}}
    assert rbac.self_subject_access_review(JANE, review, _authz(POD_READER))["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "read-pods/default" of Role "pod-reader" to User "jane"'}
    assert rbac.self_subject_access_review(ADMIN, review, _authz())["status"] == {"allowed": True}


def test_ssar_non_resource_url():
    review = {"spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}}
    body = rbac.self_subject_access_review(ANON, review, _authz())
    assert body["spec"] == {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}
    assert body["status"]["allowed"] is True


@pytest.mark.parametrize("spec, field", [
    ({}, "spec.resourceAttributes"),
    ({"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/", "verb": "get"}},
     "spec.nonResourceAttributes"),
])
def test_ssar_without_exactly_one_attributes_is_invalid(spec, field):
    with pytest.raises(rbac.ReviewError) as err:
        rbac.self_subject_access_review(JANE, {"spec": spec}, _authz())
    assert err.value.status["code"] == 422 and err.value.status["reason"] == "Invalid"
    assert err.value.status["details"]["causes"][0]["field"] == field


def test_ssrr_lists_the_rules_that_apply_and_does_not_echo_the_spec():
    body = rbac.self_subject_rules_review(JANE, {"spec": {"namespace": "default"}}, _authz(POD_READER))
    assert body["kind"] == "SelfSubjectRulesReview" and body["spec"] == {}
    status = body["status"]
    assert status["incomplete"] is False and "evaluationError" not in status
    assert {"verbs": ["get", "watch", "list"], "apiGroups": [""], "resources": ["pods"]} in status["resourceRules"]
    assert {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]} in status["resourceRules"]
    assert {"verbs": ["get"], "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"]} \
        in status["nonResourceRules"]


def test_ssrr_elsewhere_omits_the_role_binding_and_reports_missing_roles():
    extra = [binding("broken", "", "gone", USER_JANE, role_kind="ClusterRole", kind="ClusterRoleBinding")]
    status = rbac.self_subject_rules_review(JANE, {"spec": {"namespace": "prod"}}, _authz(POD_READER + extra))["status"]
    assert all(r["resources"] != ["pods"] for r in status["resourceRules"])
    assert status["evaluationError"] == 'clusterrole.rbac.authorization.k8s.io "gone" not found'
    assert status["incomplete"] is False


def test_ssrr_without_namespace_is_the_servers_400():
    with pytest.raises(rbac.ReviewError) as err:
        rbac.self_subject_rules_review(JANE, {"spec": {}}, _authz())
    assert err.value.status == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "no namespace on request", "reason": "BadRequest", "code": 400}


# --- kubectl's rendering (cli/rbac_cmds.py, from the review bodies) ----------------------------------------------------------------------------


def test_render_can_i_is_kubectls_line():
    assert rbac_cmds.render_can_i(rbac.Decision(True, "RBAC: allowed by x")) == "yes\n"
    assert rbac_cmds.render_can_i(rbac.Decision(False, "")) == "no\n"
    assert rbac_cmds.render_can_i(rbac.Decision(False, "RBAC: x")) == "no - RBAC: x\n"


def test_list_table_for_cluster_admin_sorts_like_kubectl():
    text = rbac_cmds.render_rules_table(_authz().rules_for(ADMIN, "default"))
    lines = text.splitlines()
    assert lines[0].split() == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    assert lines[1].split() == ["*.*", "[]", "[]", "[*]"]
    assert lines[2].split() == ["[*]", "[]", "[*]"]
    assert lines[3].split() == ["selfsubjectreviews.authentication.k8s.io", "[]", "[]", "[create]"]
    # Go's tabwriter: columns padded by 3 after the widest cell
    assert lines[0].index("Non-Resource URLs") == len("selfsubjectaccessreviews.authorization.k8s.io") + 3


def test_list_table_merges_verbs_of_one_resource_and_shows_names_and_subresources():
    extra = [role("r", "default", rule(["get"], resources=["pods"]), rule(["list"], resources=["pods"]),
                  rule(["get"], groups=["apps"], resources=["deployments/scale"], names=["d"])),
             binding("b", "default", "r", USER_JANE)]
    rows = [line.split() for line in rbac_cmds.render_rules_table(_authz(extra).rules_for(JANE, "default")).splitlines()]
    assert ["pods", "[]", "[]", "[get", "list]"] in rows
    assert ["deployments.apps/scale", "[]", "[d]", "[get]"] in rows


# --- the shape: pure, stdlib only, runs on a lab host's python ----------------------------------------


def test_rbac_imports_only_the_standard_library_and_nothing_from_k8sboot():
    roots = set()
    for node in (n for p in (ROOT / "k8sboot" / "rbac").glob("*.py") for n in ast.walk(ast.parse(p.read_text()))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                not node.module.startswith("k8sboot.rbac."):
            roots.add(node.module.split(".")[0])
    # k8sboot appears only under TYPE_CHECKING (for the UserInfo annotation)
    assert roots - set(sys.stdlib_module_names) <= {"k8sboot"}
    runtime = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                              "import k8sboot.rbac, k8sboot.rbac.escalation; "
                              "print(sorted(m for m in sys.modules if m.startswith('k8sboot') and "
                              "not m.startswith('k8sboot.rbac.')))",
                              str(ROOT)], capture_output=True, text=True, check=True)
    assert runtime.stdout.strip() == "['k8sboot', 'k8sboot.rbac']"


def test_system_masters_needs_no_binding_at_all():
    assert rbac.Authorizer(rbac.StaticSource([])).authorize(ADMIN, res("delete", "nodes", name="n")).allowed
    assert not rbac.RBACAuthorizer(rbac.StaticSource([])).authorize(ADMIN, res("delete", "nodes", name="n")).allowed


@pytest.mark.parametrize("obj, problem", [
    (role("r", "dev", rule(["get"], resources=["pods"])), None),
    (binding("b", "dev", "r", USER_JANE), None),
    ({"kind": "Role", "metadata": {}}, "metadata.name: Required value"),
    (role("r", "dev", {"resources": ["pods"], "apiGroups": [""]}), "rules[0].verbs: Required value"),
    (role("r", "dev", {"verbs": ["get"], "resources": ["pods"]}), "rules[0].apiGroups: Required value"),
    (role("r", "dev", rule(["get"], urls=["/x"])), "rules[0].nonResourceURLs: Invalid value: namespaced rules"),
    (binding("b", "", "r", USER_JANE, kind="ClusterRoleBinding"), "roleRef.kind: Unsupported value: 'Role'"),
    (binding("b", "dev", "r", {"kind": "Robot", "name": "x"}), "subjects[0].kind: Unsupported value: 'Robot'"),
    (binding("b", "", "view", {"kind": "ServiceAccount", "name": "x"}, role_kind="ClusterRole",
             kind="ClusterRoleBinding"), "subjects[0].namespace: Required value"),
    ({"kind": "Pod"}, "kind: 'Pod' is not one of Role, ClusterRole, RoleBinding, ClusterRoleBinding"),
    ("text", "the object is not a mapping"),
])
def test_check_object_says_what_makes_an_rbac_object_unusable(obj, problem):
    problems = rbac.check_object(obj)
    if problem is None:
        assert problems == []
    else:
        assert problems and problems[0].startswith(problem), problems


def test_rbac_alone_decides_under_the_lab_hosts_python(tmp_path):
    """The rbac package and k8sboot's empty __init__, alone, under /usr/bin/python3 (Debian's 3.11, no
    PyYAML): what a lab host runs."""
    py = "/usr/bin/python3"
    if not Path(py).exists():
        pytest.skip("/usr/bin/python3 is not installed")
    lib = tmp_path / "lib" / "k8sboot"
    lib.mkdir(parents=True)
    (lib / "rbac").mkdir()
    for path in [ROOT / "k8sboot" / "__init__.py", *(ROOT / "k8sboot" / "rbac").glob("*.py")]:
        (lib / path.relative_to(ROOT / "k8sboot")).write_bytes(path.read_bytes())
    code = (
        "import json\n"
        "from k8sboot import rbac\n"
        "from k8sboot.rbac import escalation\n"
        "class U:\n    def __init__(s, n, g): s.username, s.groups = n, g\n"
        "a = rbac.Authorizer(rbac.StaticSource(rbac.bootstrap_policy()))\n"
        "bot = U('system:serviceaccount:authn-demo:bot', ('system:serviceaccounts', 'system:authenticated'))\n"
        "out = [a.authorize(bot, rbac.attributes_from_request('GET', p)).allowed for p in\n"
        "       ('/api/v1/namespaces/authn-demo/pods', '/healthz')]\n"
        "out.append(rbac.self_subject_access_review(U('admin', ('system:masters',)),\n"
        "           {'spec': {'resourceAttributes': {'verb': 'list', 'resource': 'pods'}}}, a)['status'])\n"
        "print(json.dumps(out))\n")
    r = subprocess.run([py, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'lib')!r})\n" + code],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [False, True, {"allowed": True}]
