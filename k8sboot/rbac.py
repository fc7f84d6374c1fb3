"""Stage 2 of every API request, offline: may this user do this, as kube-apiserver's RBAC decides it.

One implementation for `k8sboot can-i` on the workstation and for the lab's kube-apiserver
stand-in on the hosts. Like `authn.py`, this file is copied as-is onto lab hosts that have only
Debian bookworm's python3 (3.11) and no PyYAML: it imports only the standard library and nothing
from k8sboot (a user is anything with `.username` and `.groups`, such as `authn.UserInfo`). RBAC
objects are plain dicts in the API's JSON form. Pure: no I/O, no clock.

Public API
----------
Request attributes (k8s.io/apiserver's authorizer.Attributes and RequestInfoFactory)::

    Attributes(verb, is_resource=False, path="", api_group="", api_version="", namespace="",
               resource="", subresource="", name="")                     # frozen
    attributes_from_request(method, target) -> Attributes                # method + URL → attributes

Policy::

    bootstrap_policy() -> list[dict]      # the ClusterRoles and ClusterRoleBindings the real server
                                          # creates at start (the ones users meet), aggregated
    aggregate_cluster_roles(objects) -> list[dict]   # the clusterrole-aggregation controller's result

Decisions::

    StaticSource(objects)                 # Roles, ClusterRoles, RoleBindings, ClusterRoleBindings
        .cluster_roles() / .cluster_role_bindings() / .roles(ns) / .role_bindings(ns) -> list[dict]
    RBACAuthorizer(source).authorize(user, attrs) -> Decision(allowed, reason)
    RBACAuthorizer(source).rules_for(user, namespace) -> RulesResult
    privileged_groups_authorize(user, attrs) -> Decision      # system:masters, before RBAC
    Authorizer(source)                    # what the server runs: privileged groups, then RBAC
    rule_allows(attrs, rule) -> bool

Responses::

    forbidden_status(user, attrs, reason="") -> dict          # the 403 Status body
    self_subject_access_review(user, review, authorizer) -> dict   # POST selfsubjectaccessreviews
    self_subject_rules_review(user, review, authorizer) -> dict    # POST selfsubjectrulesreviews
        both answer 201 with the body; they raise ReviewError(.status: the Status body) for a
        review the real server refuses (422 Invalid, 400 BadRequest)
    access_review_attributes(spec) -> Attributes              # what a review's spec asks about
    check_object(obj) -> list[str]                            # why an RBAC object is unusable

What kubectl prints from these answers lives with `k8sboot can-i` (cli/rbac_cmds.py).

Semantics (kube-apiserver's, from plugin/pkg/auth/authorizer/rbac/rbac.go,
pkg/registry/rbac/validation/rule.go and pkg/apis/rbac/v1/evaluation_helpers.go):

- Rules are additive; there is no deny. ClusterRoleBindings are visited first, then the
  RoleBindings of the request's namespace (none for a cluster-scoped request). The first rule that
  allows ends the visit, and the reason names its binding: `RBAC: allowed by ClusterRoleBinding
  "cluster-admin" of ClusterRole "cluster-admin" to Group "system:masters"`. Bindings are visited in
  the source's order (the real server's informer cache has none to promise).
- A binding whose role cannot be found is an error that does not stop the visit; a request that
  nothing allows then carries `RBAC: <errors>` as its reason, e.g. `RBAC: clusterrole.rbac.
  authorization.k8s.io "x" not found` (several errors: `RBAC: [e1, e2]`, as Go's aggregate prints).
- A ServiceAccount subject without a namespace takes the RoleBinding's namespace; it then matches
  the user `system:serviceaccount:<ns>:<name>`.
- The real server puts the privileged-groups authorizer before RBAC: a member of system:masters is
  allowed with the reason "" whatever the bindings say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:  # a user is duck-typed: .username and .groups
    from k8sboot.authn import UserInfo

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API_VERSION = f"{RBAC_GROUP}/v1"
AUTHORIZATION_GROUP = "authorization.k8s.io"
GROUP_MASTERS = "system:masters"
GROUP_AUTHENTICATED = "system:authenticated"
GROUP_UNAUTHENTICATED = "system:unauthenticated"
GROUP_SERVICE_ACCOUNTS = "system:serviceaccounts"
SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:"
BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
AUTOUPDATE_ANNOTATION = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")


# --- request attributes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """k8s.io/apiserver's authorizer.Attributes, without the user (passed beside it)."""

    verb: str
    is_resource: bool = False
    path: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


_API_PREFIXES = ("api", "apis")
_GROUPLESS_PREFIXES = ("api",)
_SPECIAL_VERBS = ("proxy", "watch")
_SPECIAL_VERBS_NO_SUBRESOURCES = ("proxy",)
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                 "DELETE": "delete"}
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _watch_requested(values: list[str]) -> bool:
    """ListOptions.watch as the parameter codec reads it (strconv.ParseBool; garbage → watch unless
    it says false, as RequestInfoFactory's fallback does)."""
    if not values:
        return False
    value = values[0]
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    return value.lower() not in ("false", "0")


def _name_from_field_selector(values: list[str]) -> str:
    """`fieldSelector=metadata.name=NAME` on a list names one object (RequiresExactMatch)."""
    if not values:
        return ""
    for term in values[0].split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and not key.endswith("!") and key.strip() == "metadata.name":
                value = value.strip()
                valid = value and value not in (".", "..") and "/" not in value and "%" not in value
                return value if valid else ""
    return ""


def attributes_from_request(method: str, target: str) -> Attributes:
    """k8s.io/apiserver's RequestInfoFactory.NewRequestInfo for a method and request target."""
    url = urlsplit(target)
    path = unquote(url.path)            # Go's URL.Path is the decoded path
    non_resource = Attributes(verb=method.lower(), path=path)
    parts = path.strip("/").split("/") if path.strip("/") else []
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in _GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:      # upstream: an error ("unable to determine kind and namespace")
            return Attributes(verb=parts[0], is_resource=True, path=path, api_group=group,
                              api_version=version)
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method, "")
    namespace = ""
    if parts[0] == "namespaces":
        if len(parts) > 1:
            namespace = parts[1]
            if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
                parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in _SPECIAL_VERBS_NO_SUBRESOURCES else ""
    if not name and verb == "get":
        query = parse_qs(url.query, keep_blank_values=True)
        verb = "watch" if _watch_requested(query.get("watch", [])) else "list"
        name = _name_from_field_selector(query.get("fieldSelector", []))
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(verb=verb, is_resource=True, path=path, api_group=group, api_version=version,
                      namespace=namespace, resource=resource, subresource=subresource, name=name)


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


# --- where the authorizer reads objects --------------------------------------------------------------


class Source(Protocol):
    """What the authorizer reads: the stand-in's storage, or StaticSource offline."""

    def cluster_roles(self) -> list[dict]: ...
    def cluster_role_bindings(self) -> list[dict]: ...
    def roles(self, namespace: str) -> list[dict]: ...
    def role_bindings(self, namespace: str) -> list[dict]: ...


class StaticSource:
    """RBAC objects from a list (bootstrap_policy() + files, or a test's table). ClusterRoles with
    an aggregationRule get their aggregated rules, as on a live server. Objects of other kinds are
    ignored."""

    def __init__(self, objects: Iterable[dict]):
        objs = aggregate_cluster_roles(o for o in objects if isinstance(o, dict) and o.get("kind") in RBAC_KINDS)
        self._by_kind: dict[str, list[dict]] = {kind: [] for kind in RBAC_KINDS}
        for obj in objs:
            self._by_kind[obj["kind"]].append(obj)

    def cluster_roles(self) -> list[dict]:
        return list(self._by_kind["ClusterRole"])

    def cluster_role_bindings(self) -> list[dict]:
        return list(self._by_kind["ClusterRoleBinding"])

    def roles(self, namespace: str) -> list[dict]:
        return [r for r in self._by_kind["Role"] if _namespace(r) == namespace]

    def role_bindings(self, namespace: str) -> list[dict]:
        return [b for b in self._by_kind["RoleBinding"] if _namespace(b) == namespace]


# --- rule evaluation (pkg/apis/rbac/v1/evaluation_helpers.go) -----------------------------------------


def _verb_matches(rule: Mapping[str, Any], verb: str) -> bool:
    return any(v == "*" or v == verb for v in rule.get("verbs") or ())


def _api_group_matches(rule: Mapping[str, Any], group: str) -> bool:
    return any(g == "*" or g == group for g in rule.get("apiGroups") or ())


def _resource_matches(rule: Mapping[str, Any], combined: str, subresource: str) -> bool:
    for r in rule.get("resources") or ():
        if r == "*" or r == combined:
            return True
        if subresource and len(r) == len(subresource) + 2 and r.startswith("*/") and r.endswith(subresource):
            return True
    return False


def _resource_name_matches(rule: Mapping[str, Any], name: str) -> bool:
    names = rule.get("resourceNames") or ()
    return not names or name in names


def _non_resource_url_matches(rule: Mapping[str, Any], path: str) -> bool:
    for url in rule.get("nonResourceURLs") or ():
        if url == "*" or url == path:
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def rule_allows(attrs: Attributes, rule: Mapping[str, Any]) -> bool:
    """RuleAllows: one PolicyRule against the request."""
    if attrs.is_resource:
        combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (_verb_matches(rule, attrs.verb) and _api_group_matches(rule, attrs.api_group)
                and _resource_matches(rule, combined, attrs.subresource)
                and _resource_name_matches(rule, attrs.name))
    return _verb_matches(rule, attrs.verb) and _non_resource_url_matches(rule, attrs.path)


# --- the authorizer (plugin/pkg/auth/authorizer/rbac + pkg/registry/rbac/validation/rule.go) ---------


@dataclass(frozen=True)
class Decision:
    """authorizer.Decision with its reason; `denied` is never set by RBAC (it has no deny)."""

    allowed: bool
    reason: str = ""
    denied: bool = False
    evaluation_error: str = ""


@dataclass(frozen=True)
class RulesResult:
    """RulesFor: the rules that apply, and the errors met finding them (as one aggregate string)."""

    resource_rules: tuple[dict, ...] = ()
    non_resource_rules: tuple[dict, ...] = ()
    incomplete: bool = False
    evaluation_error: str = ""


def _aggregate_error(errors: Sequence[str]) -> str:
    """utilerrors.NewAggregate(errs).Error(): one error as it is; several de-duplicated in [a, b]."""
    if not errors:
        return ""
    if len(errors) == 1:
        return errors[0]
    seen: list[str] = []
    for e in errors:
        if e not in seen:
            seen.append(e)
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


def _describe_subject(subject: Mapping[str, Any], binding_namespace: str) -> str:
    kind, name = subject.get("kind", ""), subject.get("name", "")
    if kind == "ServiceAccount":
        return f'{kind} "{name}/{subject.get("namespace") or binding_namespace}"'
    return f'{kind} "{name}"'


def _applies_to_user(user: UserInfo, subject: Mapping[str, Any], namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name", "")
    if kind == "User":
        return user.username == name
    if kind == "Group":
        return name in tuple(user.groups)
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        if not sa_namespace:
            return False
        return user.username == f"{SERVICE_ACCOUNT_USER_PREFIX}{sa_namespace}:{name}"
    return False


def _first_applying_subject(user: UserInfo, binding: Mapping[str, Any], namespace: str) -> dict | None:
    for subject in binding.get("subjects") or ():
        if isinstance(subject, Mapping) and _applies_to_user(user, subject, namespace):
            return dict(subject)
    return None


class RBACAuthorizer:
    """RBAC over a Source; `authorize` and `rules_for` as the real RBACAuthorizer."""

    def __init__(self, source: Source):
        self.source = source

    def role_reference_rules(self, role_ref: Mapping[str, Any], binding_namespace: str) -> list[dict]:
        """GetRoleReferenceRules; raises LookupError with the lister's message when it is missing."""
        kind, name = role_ref.get("kind"), role_ref.get("name", "")
        if kind == "Role":
            for role in self.source.roles(binding_namespace):
                if _name(role) == name:
                    return list(role.get("rules") or [])
            raise LookupError(f'role.{RBAC_GROUP} "{name}" not found')
        if kind == "ClusterRole":
            for role in self.source.cluster_roles():
                if _name(role) == name:
                    return list(role.get("rules") or [])
            raise LookupError(f'clusterrole.{RBAC_GROUP} "{name}" not found')
        raise LookupError(f'unsupported role reference kind: "{kind}"')

    def visit_rules_for(self, user: UserInfo, namespace: str):
        """VisitRulesFor as a generator of (source description, rule, error); one of rule/error."""
        for binding in self.source.cluster_role_bindings():
            subject = _first_applying_subject(user, binding, "")
            if subject is None:
                continue
            role_ref = binding.get("roleRef") or {}
            try:
                rules = self.role_reference_rules(role_ref, "")
            except LookupError as exc:
                yield None, None, str(exc)
                continue
            described = (f'ClusterRoleBinding "{_name(binding)}" of {role_ref.get("kind", "")} '
                         f'"{role_ref.get("name", "")}" to {_describe_subject(subject, "")}')
            for rule in rules:
                yield described, rule, None
        if not namespace:
            return
        for binding in self.source.role_bindings(namespace):
            subject = _first_applying_subject(user, binding, namespace)
            if subject is None:
                continue
            role_ref = binding.get("roleRef") or {}
            try:
                rules = self.role_reference_rules(role_ref, namespace)
            except LookupError as exc:
                yield None, None, str(exc)
                continue
            described = (f'RoleBinding "{_name(binding)}/{_namespace(binding) or namespace}" of '
                         f'{role_ref.get("kind", "")} "{role_ref.get("name", "")}" to '
                         f'{_describe_subject(subject, _namespace(binding) or namespace)}')
            for rule in rules:
                yield described, rule, None

    def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        errors: list[str] = []
        for described, rule, error in self.visit_rules_for(user, attrs.namespace):
            if rule is not None and rule_allows(attrs, rule):
                return Decision(True, f"RBAC: allowed by {described}")
            if error:
                errors.append(error)
        return Decision(False, f"RBAC: {_aggregate_error(errors)}" if errors else "")

    def rules_for(self, user: UserInfo, namespace: str) -> RulesResult:
        resource_rules: list[dict] = []
        non_resource_rules: list[dict] = []
        errors: list[str] = []
        for _, rule, error in self.visit_rules_for(user, namespace):
            if error:
                errors.append(error)
            if rule is None:
                continue
            if rule.get("resources"):
                resource_rules.append(_rule(rule.get("verbs") or [], rule.get("apiGroups") or [],
                                            rule.get("resources") or [], rule.get("resourceNames") or []))
            if rule.get("nonResourceURLs"):
                non_resource_rules.append(_rule(rule.get("verbs") or [], urls=rule.get("nonResourceURLs") or []))
        return RulesResult(tuple(resource_rules), tuple(non_resource_rules), False, _aggregate_error(errors))


def privileged_groups_authorize(user: UserInfo, attrs: Attributes,
                                groups: Sequence[str] = (GROUP_MASTERS,)) -> Decision:
    """authorizerfactory.NewPrivilegedGroups(system:masters): allowed, reason "", whatever RBAC says."""
    return Decision(any(g in groups for g in user.groups), "")


class Authorizer:
    """The chain the real server runs for --authorization-mode=RBAC (Node grants nothing to a
    non-node user): the privileged groups, then RBAC. The first allow wins; otherwise no opinion,
    with the reasons joined by newlines, as the union authorizer does."""

    def __init__(self, source: Source):
        self.rbac = RBACAuthorizer(source)

    def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        first = privileged_groups_authorize(user, attrs)
        if first.allowed:
            return first
        return self.rbac.authorize(user, attrs)

    def rules_for(self, user: UserInfo, namespace: str) -> RulesResult:
        return self.rbac.rules_for(user, namespace)


# --- response bodies -------------------------------------------------------------------------------


def forbidden_status(user: UserInfo, attrs: Attributes, reason: str = "") -> dict:
    """The API server's 403 Status (responsewriters.Forbidden + errors.NewForbidden)."""
    username = user.username
    if not attrs.is_resource:
        msg = f'User "{username}" cannot {attrs.verb} path "{attrs.path}"'
    else:
        resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
        if attrs.namespace:
            msg = (f'User "{username}" cannot {attrs.verb} resource "{resource}" in API group '
                   f'"{attrs.api_group}" in the namespace "{attrs.namespace}"')
        else:
            msg = (f'User "{username}" cannot {attrs.verb} resource "{resource}" in API group '
                   f'"{attrs.api_group}" at the cluster scope')
    if reason:
        msg = f"{msg}: {reason}"
    details: dict = {}
    if not attrs.is_resource or not attrs.resource:
        message = f"forbidden: {msg}"
    else:
        qualified = attrs.resource + (f".{attrs.api_group}" if attrs.api_group else "")
        message = f'{qualified} "{attrs.name}" is forbidden: {msg}' if attrs.name else f"{qualified} is forbidden: {msg}"
        if attrs.name:
            details["name"] = attrs.name
        if attrs.api_group:
            details["group"] = attrs.api_group
        details["kind"] = attrs.resource
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Forbidden", "details": details, "code": 403}


class ReviewError(ValueError):
    """A review the real server refuses before authorizing anything; `status` is its Status body."""

    def __init__(self, status: dict):
        super().__init__(status.get("message", ""))
        self.status = status


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


_RESOURCE_ATTRIBUTE_FIELDS = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
_NON_RESOURCE_ATTRIBUTE_FIELDS = ("path", "verb")


def _echo(obj: Any, fields: Sequence[str]) -> dict:
    """A sub-object as the server decodes and re-encodes it: known string fields, empty ones omitted."""
    src = obj if isinstance(obj, Mapping) else {}
    return {k: str(src[k]) for k in fields if src.get(k)}


def _invalid_review(kind: str, field_path: str, message: str) -> ReviewError:
    full = f'{kind}.{AUTHORIZATION_GROUP} "" is invalid: {field_path}: Invalid value: "null": {message}'
    return ReviewError(_status(422, "Invalid", full, {
        "group": AUTHORIZATION_GROUP, "kind": kind,
        "causes": [{"reason": "FieldValueInvalid", "message": f'Invalid value: "null": {message}',
                    "field": field_path}]}))


def access_review_attributes(spec: Mapping[str, Any]) -> Attributes:
    """The attributes a SelfSubjectAccessReview's spec asks about (ResourceAttributesFrom /
    NonResourceAttributesFrom; an empty version means "*")."""
    resource = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if resource is not None and non_resource is not None:
        raise _invalid_review("SelfSubjectAccessReview", "spec.nonResourceAttributes",
                              "cannot be specified in combination with resourceAttributes")
    if resource is None and non_resource is None:
        raise _invalid_review("SelfSubjectAccessReview", "spec.resourceAttributes",
                              "exactly one of nonResourceAttributes or resourceAttributes must be specified")
    if resource is not None:
        r = _echo(resource, _RESOURCE_ATTRIBUTE_FIELDS)
        return Attributes(verb=r.get("verb", ""), is_resource=True, api_group=r.get("group", ""),
                          api_version=r.get("version") or "*", namespace=r.get("namespace", ""),
                          resource=r.get("resource", ""), subresource=r.get("subresource", ""),
                          name=r.get("name", ""))
    n = _echo(non_resource, _NON_RESOURCE_ATTRIBUTE_FIELDS)
    return Attributes(verb=n.get("verb", ""), path=n.get("path", ""))


def self_subject_access_review(user: UserInfo, review: Mapping[str, Any], authorizer: Any,
                               api_version: str = "v1") -> dict:
    """The body of a 201 answer to POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews:
    the spec as decoded, and status.allowed (always), denied/reason/evaluationError when set.
    `kubectl auth can-i` prints "yes", or "no" plus " - <reason>" and " - <evaluationError>"."""
    spec = review.get("spec") if isinstance(review, Mapping) else None
    spec = spec if isinstance(spec, Mapping) else {}
    attrs = access_review_attributes(spec)
    decision = authorizer.authorize(user, attrs)
    echoed: dict[str, Any] = {}
    if spec.get("resourceAttributes") is not None:
        echoed["resourceAttributes"] = _echo(spec["resourceAttributes"], _RESOURCE_ATTRIBUTE_FIELDS)
    else:
        echoed["nonResourceAttributes"] = _echo(spec["nonResourceAttributes"], _NON_RESOURCE_ATTRIBUTE_FIELDS)
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.denied:
        status["denied"] = True
    if decision.reason:
        status["reason"] = decision.reason
    if decision.evaluation_error:
        status["evaluationError"] = decision.evaluation_error
    return {"kind": "SelfSubjectAccessReview", "apiVersion": f"{AUTHORIZATION_GROUP}/{api_version}",
            "metadata": {"creationTimestamp": None}, "spec": echoed, "status": status}


def self_subject_rules_review(user: UserInfo, review: Mapping[str, Any], authorizer: Any,
                              api_version: str = "v1") -> dict:
    """The body of a 201 answer to POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews. As
    the real REST handler, the spec is not echoed, and a review without spec.namespace is a 400."""
    spec = review.get("spec") if isinstance(review, Mapping) else None
    namespace = spec.get("namespace") if isinstance(spec, Mapping) else None
    if not namespace or not isinstance(namespace, str):
        raise ReviewError(_status(400, "BadRequest", "no namespace on request"))
    result = authorizer.rules_for(user, namespace)
    status: dict[str, Any] = {"resourceRules": [dict(r) for r in result.resource_rules],
                              "nonResourceRules": [dict(r) for r in result.non_resource_rules],
                              "incomplete": result.incomplete}
    if result.evaluation_error:
        status["evaluationError"] = result.evaluation_error
    return {"kind": "SelfSubjectRulesReview", "apiVersion": f"{AUTHORIZATION_GROUP}/{api_version}",
            "metadata": {"creationTimestamp": None}, "spec": {}, "status": status}


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
