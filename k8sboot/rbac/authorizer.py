"""The RBAC authorizer (plugin/pkg/auth/authorizer/rbac, pkg/registry/rbac/validation/rule.go,
pkg/apis/rbac/v1/evaluation_helpers.go) over a source of objects, and the privileged-groups
authorizer the real server puts before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence

from k8sboot.rbac.attributes import Attributes
from k8sboot.rbac.names import GROUP_MASTERS, RBAC_GROUP, RBAC_KINDS, SERVICE_ACCOUNT_USER_PREFIX
from k8sboot.rbac.policy import _name, _namespace, _rule, aggregate_cluster_roles

if TYPE_CHECKING:  # a user is duck-typed: .username and .groups
    from k8sboot.authn import UserInfo


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
