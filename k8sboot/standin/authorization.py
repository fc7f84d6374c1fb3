"""--authorization-mode as k8s.io/apiserver's union authorizer runs it: the privileged-groups
authorizer (system:masters) first, then each mode in the order given; the first to allow wins,
AlwaysDeny ends the chain with "Everything is forbidden.", and without a decision the reasons
are joined by newlines. Modes: AlwaysAllow (the real binary's default when the flag is absent),
AlwaysDeny, Node (no opinion: the stand-in has no nodes or pods for it to decide on), RBAC
(k8sboot.rbac over the store). ABAC and Webhook are not implemented: the stand-in refuses to
start with them rather than decide differently. Pure."""

from __future__ import annotations

from typing import Any, Sequence

from k8sboot import rbac

IMPLEMENTED = ("AlwaysAllow", "AlwaysDeny", "Node", "RBAC")
UPSTREAM = ("AlwaysAllow", "AlwaysDeny", "ABAC", "Webhook", "RBAC", "Node")
DEFAULT = ("AlwaysAllow",)


def check_modes(modes: Sequence[str]) -> str | None:
    """The start-up error for --authorization-mode (upstream's own messages first), or None."""
    seen = set()
    for mode in modes:
        if mode not in UPSTREAM:
            return f'authorization-mode "{mode}" is not a valid mode'
        if mode in seen:
            return f'authorization-mode {mode} has mode specified more than once'
        seen.add(mode)
    missing = [m for m in modes if m not in IMPLEMENTED]
    if missing:
        return (f"the k8sboot stand-in (not Kubernetes) does not implement --authorization-mode "
                f"{', '.join(missing)} (it implements {', '.join(IMPLEMENTED)})")
    return None


_EVERYTHING = rbac.RulesResult(({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},),
                               ({"verbs": ["*"], "nonResourceURLs": ["*"]},))


class ModeChain:
    """authorize(user, attrs) -> rbac.Decision and rules_for(user, namespace) -> rbac.RulesResult,
    as the server's authorizer and rule resolver for the given modes."""

    def __init__(self, modes: Sequence[str], source: Any):
        self.modes = tuple(modes) or DEFAULT
        self.rbac = rbac.RBACAuthorizer(source)

    def authorize(self, user: Any, attrs: rbac.Attributes) -> rbac.Decision:
        first = rbac.privileged_groups_authorize(user, attrs)
        if first.allowed:
            return first
        reasons = []
        for mode in self.modes:
            if mode == "AlwaysAllow":
                return rbac.Decision(True, "")
            if mode == "AlwaysDeny":
                return rbac.Decision(False, "\n".join([*reasons, "Everything is forbidden."]), denied=True)
            if mode == "RBAC":
                decision = self.rbac.authorize(user, attrs)
                if decision.allowed:
                    return decision
                if decision.reason:
                    reasons.append(decision.reason)
        return rbac.Decision(False, "\n".join(reasons))

    def rules_for(self, user: Any, namespace: str) -> rbac.RulesResult:
        if "system:masters" in user.groups or "AlwaysAllow" in self.modes:
            return _EVERYTHING
        if "RBAC" in self.modes:
            return self.rbac.rules_for(user, namespace)
        return rbac.RulesResult()
