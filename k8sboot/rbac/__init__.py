"""Stage 2 of every API request, offline: may this user do this, as kube-apiserver's RBAC decides it.

One implementation for `k8sboot can-i` on the workstation and for the lab's kube-apiserver
stand-in on the hosts. Like `authn`, this package is copied as-is onto lab hosts that have only
Debian bookworm's python3 (3.11) and no PyYAML: it imports only the standard library and nothing
from k8sboot outside itself (a user is anything with `.username` and `.groups`, such as
`authn.UserInfo`). RBAC
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

Modules::

    names       API groups, privileged and implicit groups, bootstrap labels, RBAC kinds
    attributes  Attributes and attributes_from_request
    policy      the bootstrap policy, aggregation, check_object
    authorizer  sources, rule evaluation, RBACAuthorizer, privileged groups, Authorizer
    reviews     the 403 Status, SelfSubjectAccessReview, SelfSubjectRulesReview
    escalation  the escalation check on writes of RBAC objects (imported on its own:
                `from k8sboot.rbac import escalation`; the stand-in's storage applies it)

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
    SERVICE_ACCOUNT_USER_PREFIX,
)
from k8sboot.rbac.attributes import Attributes, attributes_from_request
from k8sboot.rbac.policy import aggregate_cluster_roles, bootstrap_policy, check_object
from k8sboot.rbac.authorizer import (
    Authorizer,
    Decision,
    RBACAuthorizer,
    RulesResult,
    Source,
    StaticSource,
    privileged_groups_authorize,
    rule_allows,
)
from k8sboot.rbac.reviews import (
    ReviewError,
    access_review_attributes,
    forbidden_status,
    self_subject_access_review,
    self_subject_rules_review,
)

__all__ = [
    "AUTHORIZATION_GROUP",
    "AUTOUPDATE_ANNOTATION",
    "BOOTSTRAP_LABELS",
    "GROUP_AUTHENTICATED",
    "GROUP_MASTERS",
    "GROUP_SERVICE_ACCOUNTS",
    "GROUP_UNAUTHENTICATED",
    "RBAC_API_VERSION",
    "RBAC_GROUP",
    "RBAC_KINDS",
    "SERVICE_ACCOUNT_USER_PREFIX",
    "Attributes",
    "attributes_from_request",
    "aggregate_cluster_roles",
    "bootstrap_policy",
    "check_object",
    "Authorizer",
    "Decision",
    "RBACAuthorizer",
    "RulesResult",
    "Source",
    "StaticSource",
    "privileged_groups_authorize",
    "rule_allows",
    "ReviewError",
    "access_review_attributes",
    "forbidden_status",
    "self_subject_access_review",
    "self_subject_rules_review",
]
