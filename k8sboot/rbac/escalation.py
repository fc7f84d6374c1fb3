"""RBAC's escalation check, as the policy-based RBAC storage applies it on every write of a Role,
ClusterRole or binding (pkg/registry/rbac/{role,clusterrole,rolebinding,clusterrolebinding}/
policybased and pkg/registry/rbac/validation/policy_comparator.go): a user may only grant what
they already hold. Allowed at once for system:masters (EscalationAllowed), for a role when the
authorizer allows the verb `escalate` on it, for a binding when it allows `bind` on the role
referenced; otherwise each rule granted, broken down to one verb, group, resource and name,
must be covered by one of the user's own rules in that namespace, else 403:
`<resource> "<name>" is forbidden: user "<u>" (groups=[...]) is attempting to grant RBAC
permissions not currently held:\\n{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
Pure: the authorizer and the roles are passed in.
"""

from __future__ import annotations

from typing import Any, Callable

from k8sboot.rbac.attributes import Attributes
from k8sboot.rbac.authorizer import RulesResult
from k8sboot.rbac.names import RBAC_GROUP

MASTERS = "system:masters"
FULL_AUTHORITY = [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, {"verbs": ["*"], "nonResourceURLs": ["*"]}]


def breakdown(rule: dict) -> list[dict]:
    """BreakdownRule: one rule per group x resource x verb (x name), and per URL x verb."""
    out = []
    verbs = rule.get("verbs") or []
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in verbs:
                names = rule.get("resourceNames") or []
                for name in names or [None]:
                    sub = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                    if name is not None:
                        sub["resourceNames"] = [name]
                    out.append(sub)
    for url in rule.get("nonResourceURLs") or []:
        for verb in verbs:
            out.append({"nonResourceURLs": [url], "verbs": [verb]})
    return out


def _has(values: list, value: str) -> bool:
    return value in values


def _has_all(values: list, wanted: list) -> bool:
    return all(w in values for w in wanted)


def _resources_cover(owner: list, servant: list) -> bool:
    if "*" in owner or _has_all(owner, servant):
        return True
    for resource in servant:
        if resource in owner:
            continue
        if "/" in resource and f"{resource.split('/', 1)[0]}/*" in owner:
            continue
        if "/" in resource and f"*/{resource.split('/', 1)[1]}" in owner:
            continue
        return False
    return True


def _url_covers(owner: list, path: str) -> bool:
    return any(o == path or (o.endswith("*") and path.startswith(o.rstrip("*"))) for o in owner)


def rule_covers(owner: dict, sub: dict) -> bool:
    """ruleCovers."""
    verbs = owner.get("verbs") or []
    groups = owner.get("apiGroups") or []
    verb_ok = "*" in verbs or _has_all(verbs, sub.get("verbs") or [])
    group_ok = "*" in groups or _has_all(groups, sub.get("apiGroups") or [])
    resource_ok = _resources_cover(owner.get("resources") or [], sub.get("resources") or [])
    url_ok = all(_url_covers(owner.get("nonResourceURLs") or [], u) for u in sub.get("nonResourceURLs") or [])
    owner_names, sub_names = owner.get("resourceNames") or [], sub.get("resourceNames") or []
    names_ok = not owner_names if not sub_names else (not owner_names or _has_all(owner_names, sub_names))
    return verb_ok and group_ok and resource_ok and names_ok and url_ok


def uncovered(owner_rules: list[dict], rules: list[dict]) -> list[dict]:
    """Covers: the broken-down rules no owner rule covers."""
    return [sub for rule in rules for sub in breakdown(rule) if not any(rule_covers(o, sub) for o in owner_rules)]


def compact(rules: list[dict]) -> list[dict]:
    """CompactRules: simple resource rules (one group, one resource, no names) of the same group
    and resource become one rule with all their verbs."""
    out: list[dict] = []
    simple: dict[tuple[str, str], dict] = {}
    for rule in rules:
        if len(rule.get("apiGroups") or []) == 1 and len(rule.get("resources") or []) == 1 and \
                not rule.get("resourceNames") and not rule.get("nonResourceURLs"):
            key = (rule["apiGroups"][0], rule["resources"][0])
            if key in simple:
                simple[key]["verbs"].extend(v for v in rule["verbs"] if v not in simple[key]["verbs"])
                continue
            simple[key] = {"apiGroups": list(rule["apiGroups"]), "resources": list(rule["resources"]),
                           "verbs": list(rule["verbs"])}
            out.append(simple[key])
        else:
            out.append(rule)
    return out


def _go_q(values: list) -> str:
    return "[" + " ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "]"


def compact_string(rule: dict) -> str:
    """rbacv1helpers.CompactString: `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`."""
    parts = [f"{label}:{_go_q(rule[key])}" for label, key in (
        ("APIGroups", "apiGroups"), ("Resources", "resources"), ("NonResourceURLs", "nonResourceURLs"),
        ("ResourceNames", "resourceNames"), ("Verbs", "verbs")) if rule.get(key)]
    return "{" + ", ".join(parts) + "}"


def escalation_error(user: Any, owner: RulesResult, rules: list[dict]) -> str | None:
    """ConfirmNoEscalation's error text, None when the user's rules cover `rules`."""
    owner_rules = [dict(r) for r in owner.resource_rules] + [dict(r) for r in owner.non_resource_rules]
    missing = uncovered(owner_rules, rules)
    if not missing:
        return None
    lines = sorted({compact_string(r) for r in compact(missing)})
    msg = (f'user "{user.username}" (groups={_go_q(list(user.groups))}) is attempting to grant RBAC permissions '
           "not currently held:\n" + "\n".join(lines))
    if owner.evaluation_error:
        msg += f"; resolution errors: [{owner.evaluation_error}]"
    return msg


def check_write(user: Any, kind: str, namespace: str, obj: dict, authorizer: Any,
                role_rules: Callable[[dict, str], list[dict] | None], current: dict | None = None
                ) -> tuple[int, str] | None:
    """None when `user` may write `obj` (a Role, ClusterRole, RoleBinding or ClusterRoleBinding),
    else (403, why), or (404, "roles"/"clusterroles") for a binding to a role that does not exist. `role_rules(ref,
    namespace)` gives the rules of a roleRef (None: not found)."""
    if MASTERS in user.groups:
        return None
    resource = {"Role": "roles", "ClusterRole": "clusterroles", "RoleBinding": "rolebindings",
                "ClusterRoleBinding": "clusterrolebindings"}[kind]
    name = obj["metadata"]["name"]
    if kind in ("Role", "ClusterRole"):
        if current is not None and current.get("rules") == obj.get("rules") and \
                current.get("aggregationRule") == obj.get("aggregationRule"):
            return None
        escalate = Attributes(verb="escalate", is_resource=True, api_group=RBAC_GROUP, resource=resource,
                                   namespace=namespace, name=name)
        if authorizer.authorize(user, escalate).allowed:
            return None
        why = escalation_error(user, authorizer.rules_for(user, namespace), list(obj.get("rules") or []))
        if why:
            return 403, why
        if kind == "ClusterRole" and obj.get("aggregationRule") and \
                escalation_error(user, authorizer.rules_for(user, namespace), FULL_AUTHORITY):
            return 403, "must have cluster-admin privileges to use the aggregationRule"
        return None
    if current is not None and current.get("roleRef") == obj.get("roleRef"):
        return None
    ref = obj.get("roleRef") or {}
    ref_resource = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
    bind = Attributes(verb="bind", is_resource=True, api_group=RBAC_GROUP, resource=ref_resource,
                           namespace=namespace, name=ref.get("name", ""))
    if authorizer.authorize(user, bind).allowed:
        return None
    rules = role_rules(ref, namespace)
    if rules is None:
        return 404, ref_resource                   # the roleRef's role does not exist
    return (403, why) if (why := escalation_error(user, authorizer.rules_for(user, namespace), rules)) else None
