"""What the API server answers from RBAC's decisions: the 403 Status, SelfSubjectAccessReview and
SelfSubjectRulesReview (ReviewError for a review the real server refuses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from k8sboot.rbac.attributes import Attributes
from k8sboot.rbac.names import AUTHORIZATION_GROUP

if TYPE_CHECKING:  # a user is duck-typed: .username and .groups
    from k8sboot.authn import UserInfo


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
