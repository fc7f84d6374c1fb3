"""RBAC objects: the bootstrap policy the real server creates at start, the clusterrole-aggregation
controller's result, and why an object a user gives is unusable (`check_object`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from k8sboot.rbac.names import (
    AUTHORIZATION_GROUP,
    AUTOUPDATE_ANNOTATION,
    BOOTSTRAP_LABELS,
    GROUP_AUTHENTICATED,
    GROUP_MASTERS,
    GROUP_SERVICE_ACCOUNTS,
    GROUP_UNAUTHENTICATED,
    RBAC_API_VERSION,
    RBAC_GROUP,
    RBAC_KINDS,
)


# --- the bootstrap policy --------------------------------------------------------------------------
# From kubernetes/kubernetes plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go and its
# testdata/cluster-roles.yaml and cluster-role-bindings.yaml (the v1.2x–1.3x generation: basic-user
# includes selfsubjectreviews, edit includes serviceaccounts/token). Only the roles a user meets;
# the controllers', scheduler's and nodes' roles and bindings are left out. The bindings of
# system:monitoring (kubernetes/kubernetes#93311) and system:service-account-issuer-discovery
# (#88344, to system:serviceaccounts) are the server's since 1.19/1.21.

_READ = ["get", "list", "watch"]
_WRITE = ["create", "delete", "deletecollection", "patch", "update"]
_READ_WRITE = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _rule(verbs: Sequence[str], groups: Sequence[str] = (), resources: Sequence[str] = (),
          names: Sequence[str] = (), urls: Sequence[str] = ()) -> dict:
    """A PolicyRule in the API's JSON (field order and omitempty as Go marshals it)."""
    rule: dict[str, Any] = {"verbs": list(verbs)}
    if groups:
        rule["apiGroups"] = list(groups)
    if resources:
        rule["resources"] = list(resources)
    if names:
        rule["resourceNames"] = list(names)
    if urls:
        rule["nonResourceURLs"] = list(urls)
    return rule


def _meta(name: str, labels: Mapping[str, str] | None = None) -> dict:
    return {"name": name, "labels": {**BOOTSTRAP_LABELS, **(labels or {})},
            "annotations": dict(AUTOUPDATE_ANNOTATION)}


def _cluster_role(name: str, rules: list[dict] | None, *, labels: Mapping[str, str] | None = None,
                  aggregate_from: str | None = None) -> dict:
    role: dict[str, Any] = {"apiVersion": RBAC_API_VERSION, "kind": "ClusterRole", "metadata": _meta(name, labels)}
    if aggregate_from:
        role["aggregationRule"] = {"clusterRoleSelectors": [
            {"matchLabels": {f"rbac.authorization.k8s.io/{aggregate_from}": "true"}}]}
    role["rules"] = rules if rules is not None else []
    return role


def _subject(kind: str, name: str, namespace: str = "") -> dict:
    if kind == "ServiceAccount":
        return {"kind": kind, "name": name, "namespace": namespace}
    return {"kind": kind, "apiGroup": RBAC_GROUP, "name": name}


def _cluster_role_binding(name: str, subjects: list[dict], role: str | None = None) -> dict:
    binding: dict[str, Any] = {
        "apiVersion": RBAC_API_VERSION, "kind": "ClusterRoleBinding", "metadata": _meta(name),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role or name}}
    if subjects:
        binding["subjects"] = subjects
    return binding


_AGG_ADMIN = {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}
_AGG_EDIT = {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}
_AGG_VIEW = {"rbac.authorization.k8s.io/aggregate-to-view": "true"}


def _bootstrap_cluster_roles() -> list[dict]:
    return [
        _cluster_role("admin", None, aggregate_from="aggregate-to-admin"),
        _cluster_role("cluster-admin", [
            _rule(["*"], ["*"], ["*"]),
            _rule(["*"], urls=["*"]),
        ]),
        _cluster_role("edit", None, labels=_AGG_ADMIN, aggregate_from="aggregate-to-edit"),
        _cluster_role("system:aggregate-to-admin", [
            _rule(["create"], [AUTHORIZATION_GROUP], ["localsubjectaccessreviews"]),
            _rule(_READ_WRITE, [RBAC_GROUP], ["rolebindings", "roles"]),
        ], labels=_AGG_ADMIN),
        _cluster_role("system:aggregate-to-edit", [
            _rule(_READ, [""], ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets",
                                "services/proxy"]),
            _rule(["impersonate"], [""], ["serviceaccounts"]),
            _rule(_WRITE, [""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]),
            _rule(["create"], [""], ["pods/eviction"]),
            _rule(_WRITE, [""], ["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers",
                                 "replicationcontrollers/scale", "secrets", "serviceaccounts", "services",
                                 "services/proxy"]),
            _rule(["create"], [""], ["serviceaccounts/token"]),
            _rule(_WRITE, ["apps"], ["daemonsets", "deployments", "deployments/rollback", "deployments/scale",
                                     "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"]),
            _rule(_WRITE, ["autoscaling"], ["horizontalpodautoscalers"]),
            _rule(_WRITE, ["batch"], ["cronjobs", "jobs"]),
            _rule(_WRITE, ["extensions"], ["daemonsets", "deployments", "deployments/rollback",
                                           "deployments/scale", "ingresses", "networkpolicies", "replicasets",
                                           "replicasets/scale", "replicationcontrollers/scale"]),
            _rule(_WRITE, ["policy"], ["poddisruptionbudgets"]),
            _rule(_WRITE, ["networking.k8s.io"], ["ingresses", "networkpolicies"]),
            _rule(_READ_WRITE, ["coordination.k8s.io"], ["leases"]),
        ], labels=_AGG_EDIT),
        _cluster_role("system:aggregate-to-view", [
            _rule(_READ, [""], ["configmaps", "endpoints", "persistentvolumeclaims",
                                "persistentvolumeclaims/status", "pods", "replicationcontrollers",
                                "replicationcontrollers/scale", "serviceaccounts", "services",
                                "services/status"]),
            _rule(_READ, [""], ["bindings", "events", "limitranges", "namespaces/status", "pods/log",
                                "pods/status", "replicationcontrollers/status", "resourcequotas",
                                "resourcequotas/status"]),
            _rule(_READ, [""], ["namespaces"]),
            _rule(_READ, ["discovery.k8s.io"], ["endpointslices"]),
            _rule(_READ, ["apps"], ["controllerrevisions", "daemonsets", "daemonsets/status", "deployments",
                                    "deployments/scale", "deployments/status", "replicasets",
                                    "replicasets/scale", "replicasets/status", "statefulsets",
                                    "statefulsets/scale", "statefulsets/status"]),
            _rule(_READ, ["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
            _rule(_READ, ["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
            _rule(_READ, ["extensions"], ["daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                                          "deployments/status", "ingresses", "ingresses/status",
                                          "networkpolicies", "replicasets", "replicasets/scale",
                                          "replicasets/status", "replicationcontrollers/scale"]),
            _rule(_READ, ["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"]),
            _rule(_READ, ["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"]),
        ], labels=_AGG_VIEW),
        _cluster_role("system:auth-delegator", [
            _rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
            _rule(["create"], [AUTHORIZATION_GROUP], ["subjectaccessreviews"]),
        ]),
        _cluster_role("system:basic-user", [
            _rule(["create"], [AUTHORIZATION_GROUP], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
        ]),
        _cluster_role("system:discovery", [
            _rule(["get"], urls=["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                                 "/openapi/*", "/readyz", "/version", "/version/"]),
        ]),
        _cluster_role("system:monitoring", [
            _rule(["get"], urls=["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis",
                                 "/readyz", "/readyz/*"]),
        ]),
        _cluster_role("system:public-info-viewer", [
            _rule(["get"], urls=["/healthz", "/livez", "/readyz", "/version", "/version/"]),
        ]),
        # the trailing-slash forms since kubernetes/kubernetes#117455 (clients generated from the
        # OpenAPI spec ask for them)
        _cluster_role("system:service-account-issuer-discovery", [
            _rule(["get"], urls=["/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                                 "/openid/v1/jwks", "/openid/v1/jwks/"]),
        ]),
        _cluster_role("view", None, labels=_AGG_EDIT, aggregate_from="aggregate-to-view"),
    ]


def _bootstrap_cluster_role_bindings() -> list[dict]:
    group = lambda name: _subject("Group", name)  # noqa: E731
    return [
        _cluster_role_binding("cluster-admin", [group(GROUP_MASTERS)]),
        _cluster_role_binding("system:basic-user", [group(GROUP_AUTHENTICATED)]),
        _cluster_role_binding("system:discovery", [group(GROUP_AUTHENTICATED)]),
        _cluster_role_binding("system:monitoring", [group("system:monitoring")]),
        _cluster_role_binding("system:public-info-viewer", [group(GROUP_AUTHENTICATED),
                                                            group(GROUP_UNAUTHENTICATED)]),
        _cluster_role_binding("system:service-account-issuer-discovery", [group(GROUP_SERVICE_ACCOUNTS)]),
    ]


def bootstrap_policy() -> list[dict]:
    """The ClusterRoles then ClusterRoleBindings kube-apiserver creates at start (rbac/bootstrap-roles),
    with admin, edit and view holding the rules the aggregation controller gives them. Fresh dicts
    on every call: callers may store or change them."""
    return aggregate_cluster_roles(_bootstrap_cluster_roles()) + _bootstrap_cluster_role_bindings()


# --- aggregation (pkg/controller/clusterroleaggregation) ---------------------------------------------


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist).
    An empty selector matches everything, as LabelSelectorAsSelector makes it."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _normal_rule(rule: Mapping[str, Any]) -> tuple:
    return tuple(tuple(rule.get(k) or ()) for k in ("verbs", "apiGroups", "resources", "resourceNames",
                                                        "nonResourceURLs"))


def aggregate_cluster_roles(objects: Iterable[dict]) -> list[dict]:
    """The objects, with each aggregated ClusterRole's rules replaced by the union (first seen first,
    duplicates dropped) of the rules of the ClusterRoles its selectors match, taken in name order, as
    the aggregation controller writes them; repeated until nothing changes (edit feeds admin)."""
    out = [_copy(o) for o in objects]
    roles = [o for o in out if o.get("kind") == "ClusterRole"]
    for _ in range(len(roles) + 1):
        changed = False
        by_name = sorted(roles, key=lambda r: _name(r))
        for role in roles:
            selectors = ((role.get("aggregationRule") or {}).get("clusterRoleSelectors"))
            if not selectors:
                continue
            rules: list[dict] = []
            seen: set[tuple] = set()
            for selector in selectors:
                for other in by_name:
                    if other is role or not _selector_matches(selector, _meta_of(other).get("labels") or {}):
                        continue
                    for rule in other.get("rules") or []:
                        key = _normal_rule(rule)
                        if key not in seen:
                            seen.add(key)
                            rules.append(_copy(rule))
            if [_normal_rule(r) for r in role.get("rules") or []] != [_normal_rule(r) for r in rules]:
                role["rules"] = rules
                changed = True
        if not changed:
            break
    return out


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


def _meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta_of(obj).get("name") or "")


def _namespace(obj: Mapping[str, Any]) -> str:
    return str(_meta_of(obj).get("namespace") or "")


# --- checking objects given by a user ----------------------------------------------------------------

_SUBJECT_KINDS = ("User", "Group", "ServiceAccount")


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _mappings(obj: Mapping[str, Any], key: str, problems: list[str]):
    """(field path, item) for each mapping of the list at `key`; what is not one is a problem."""
    items = obj.get(key)
    if items is not None and not isinstance(items, list):
        problems.append(f"{key}: must be a list")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, Mapping):
            yield f"{key}[{i}]", item
        else:
            problems.append(f"{key}[{i}]: must be a mapping")


def check_object(obj: Any) -> list[str]:
    """What makes an RBAC object unusable, each as `field: problem` (empty: usable). Checks the
    shape the authorizer reads (the real server's validation says more)."""
    if not isinstance(obj, Mapping):
        return ["the object is not a mapping"]
    kind = obj.get("kind")
    if kind not in RBAC_KINDS:
        return [f"kind: {kind!r} is not one of {', '.join(RBAC_KINDS)}"]
    problems: list[str] = []
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta.get("name"):
        problems.append("metadata.name: Required value")
    elif meta.get("namespace") is not None and not isinstance(meta.get("namespace"), str):
        problems.append("metadata.namespace: must be a string")
    if kind in ("Role", "ClusterRole"):
        for where, rule in _mappings(obj, "rules", problems):
            if not rule.get("verbs") or not _string_list(rule.get("verbs")):
                problems.append(f"{where}.verbs: Required value: verbs must contain at least one value")
            for key in ("apiGroups", "resources", "resourceNames", "nonResourceURLs"):
                if rule.get(key) is not None and not _string_list(rule.get(key)):
                    problems.append(f"{where}.{key}: must be a list of strings")
            if rule.get("nonResourceURLs") and (rule.get("resources") or rule.get("apiGroups")):
                problems.append(f"{where}.nonResourceURLs: Invalid value: rules cannot apply to both "
                                "regular resources and non-resource URLs")
            if rule.get("nonResourceURLs") and kind == "Role":
                problems.append(f"{where}.nonResourceURLs: Invalid value: namespaced rules cannot apply to "
                                "non-resource URLs")
            if not rule.get("nonResourceURLs") and rule.get("resources") and not rule.get("apiGroups"):
                problems.append(f"{where}.apiGroups: Required value: resource rules must supply at least "
                                "one api group")
    else:
        ref = obj.get("roleRef")
        if not isinstance(ref, Mapping):
            problems.append("roleRef: Required value")
        else:
            allowed = ("Role", "ClusterRole") if kind == "RoleBinding" else ("ClusterRole",)
            if ref.get("kind") not in allowed:
                problems.append(f"roleRef.kind: Unsupported value: {ref.get('kind')!r}: supported values: "
                                + ", ".join(f'"{k}"' for k in allowed))
            if not isinstance(ref.get("name"), str) or not ref.get("name"):
                problems.append("roleRef.name: Required value")
        for where, subject in _mappings(obj, "subjects", problems):
            if subject.get("kind") not in _SUBJECT_KINDS:
                problems.append(f"{where}.kind: Unsupported value: {subject.get('kind')!r}: supported values: "
                                '"ServiceAccount", "User", "Group"')
            if not isinstance(subject.get("name"), str) or not subject.get("name"):
                problems.append(f"{where}.name: Required value")
            if subject.get("kind") == "ServiceAccount" and kind == "ClusterRoleBinding" and not subject.get("namespace"):
                problems.append(f"{where}.namespace: Required value")
    return problems
