"""Request attributes, the minimal Stage 2 (authorization) and the answers the stand-in gives."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

from k8sboot import authn

GIT_VERSION = "v0.0.0-k8sboot-standin"
BANNER = "kube-apiserver STAND-IN by k8sboot (not Kubernetes)"
VERSION_INFO = {
    "major": "0",
    "minor": "0",
    "gitVersion": GIT_VERSION,
    "gitCommit": "k8sboot-standin-not-kubernetes",
    "gitTreeState": "clean",
    "buildDate": "1970-01-01T00:00:00Z",
    "goVersion": f"python{sys.version_info.major}.{sys.version_info.minor} (stand-in, not Go)",
    "compiler": "cpython",
    "platform": f"{sys.platform}/{os.uname().machine if hasattr(os, 'uname') else 'unknown'}",
}



_READ_VERBS = {"GET": "get", "HEAD": "get"}


@dataclass(frozen=True)
class RequestInfo:
    """k8s.io/apiserver's RequestInfo for a method + URL (only what the stand-in needs)."""

    verb: str
    path: str
    is_resource: bool = False
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def parse_request_info(method: str, target: str) -> RequestInfo:
    parts_url = urlsplit(target)
    path = parts_url.path or "/"
    query = parse_qs(parts_url.query)
    lower_verb = {"POST": "post", "PUT": "put", "PATCH": "patch", "DELETE": "delete",
                  "GET": "get", "HEAD": "head", "OPTIONS": "options"}.get(method, method.lower())
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return RequestInfo(verb=lower_verb, path=path)
    if parts[0] == "api":
        if len(parts) < 2:
            return RequestInfo(verb=lower_verb, path=path)
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 3:
            return RequestInfo(verb=lower_verb, path=path)
        group, version, rest = parts[1], parts[2], parts[3:]
    if not rest:
        return RequestInfo(verb=lower_verb, path=path)   # /api/v1, /apis/g/v: discovery, non-resource
    verb = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}.get(method, method.lower())
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("finalize", "status"):
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if verb == "get" and not name:
        verb = "watch" if query.get("watch", ["false"])[0] in ("1", "true") else "list"
    if verb == "delete" and not name:
        verb = "deletecollection"
    return RequestInfo(verb=verb, path=path, is_resource=True, api_group=group, api_version=version,
                       namespace=namespace, resource=resource, subresource=subresource, name=name)


PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version", "/version/")        # system:public-info-viewer
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*")  # system:discovery
SELF_REVIEWS = {("authentication.k8s.io", "selfsubjectreviews"),
                ("authorization.k8s.io", "selfsubjectaccessreviews"),
                ("authorization.k8s.io", "selfsubjectrulesreviews")}       # system:basic-user


def _path_matches(path: str, patterns) -> bool:
    for p in patterns:
        if p.endswith("*") and path.startswith(p[:-1]):
            return True
        if path == p:
            return True
    return False


def authorize(user: authn.UserInfo, info: RequestInfo) -> bool:
    """The default RBAC bootstrap policy, reduced to what a cluster with no other roles grants."""
    groups = set(user.groups)
    if "system:masters" in groups:
        return True
    if not info.is_resource:
        if info.verb != "get":
            return False
        if _path_matches(info.path, PUBLIC_PATHS):
            return True
        return authn.GROUP_AUTHENTICATED in groups and _path_matches(info.path, DISCOVERY_PATHS)
    return (authn.GROUP_AUTHENTICATED in groups and info.verb == "create"
            and (info.api_group, info.resource) in SELF_REVIEWS)


def forbidden_status(user: authn.UserInfo, info: RequestInfo, reason: str = "") -> dict:
    """The API server's 403 Status (responsewriters.Forbidden + errors.NewForbidden)."""
    username = user.username
    if not info.is_resource:
        msg = f'User "{username}" cannot {info.verb} path "{info.path}"'
    else:
        resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
        if info.namespace:
            msg = (f'User "{username}" cannot {info.verb} resource "{resource}" in API group '
                   f'"{info.api_group}" in the namespace "{info.namespace}"')
        else:
            msg = (f'User "{username}" cannot {info.verb} resource "{resource}" in API group '
                   f'"{info.api_group}" at the cluster scope')
    if reason:
        msg = f"{msg}: {reason}"
    details: dict = {}
    if not info.is_resource or not info.resource:
        message = f"forbidden: {msg}"
    else:
        qualified = info.resource + (f".{info.api_group}" if info.api_group else "")
        message = f'{qualified} "{info.name}" is forbidden: {msg}' if info.name else f"{qualified} is forbidden: {msg}"
        if info.name:
            details["name"] = info.name
        if info.api_group:
            details["group"] = info.api_group
        details["kind"] = info.resource
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Forbidden", "details": details, "code": 403}


def not_found_status(info: RequestInfo) -> dict:
    qualified = info.resource + (f".{info.api_group}" if info.api_group else "")
    details = {"name": info.name, **({"group": info.api_group} if info.api_group else {}), "kind": info.resource}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'{qualified} "{info.name}" not found', "reason": "NotFound", "details": details,
            "code": 404}


def success_status(message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "message": message,
            "code": 200}


CORE_RESOURCES = (("pods", "Pod", True), ("services", "Service", True), ("configmaps", "ConfigMap", True),
                  ("secrets", "Secret", True), ("serviceaccounts", "ServiceAccount", True),
                  ("namespaces", "Namespace", False), ("nodes", "Node", False))


def discovery_document(path: str) -> dict | None:
    """Minimal legacy discovery so kubectl can map names for system:masters; None: not served."""
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "authentication.k8s.io",
            "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"}}]}
    if path == "/api/v1":
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for n, k, ns in CORE_RESOURCES]}
    if path == "/apis/authentication.k8s.io/v1":
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authentication.k8s.io/v1",
                "resources": [{"name": "selfsubjectreviews", "singularName": "selfsubjectreview",
                               "namespaced": False, "kind": "SelfSubjectReview", "verbs": ["create"]}]}
    return None


def _list_kind(resource: str) -> str:
    for name, kind, _ in CORE_RESOURCES:
        if name == resource:
            return kind + "List"
    return "List"


def route(info: RequestInfo, user: authn.UserInfo, result: authn.AuthResult, now: datetime) -> tuple[int, object]:
    """An allowed request's answer: (HTTP status, JSON body or text)."""
    path = info.path
    if not info.is_resource:
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"                     # a server with no lifecycle: always healthy
        if path in ("/version", "/version/"):
            return 200, VERSION_INFO
        if path == "/":
            return 200, {"paths": ["/api", "/api/v1", "/apis", "/apis/authentication.k8s.io/v1",
                                   "/healthz", "/livez", "/readyz", "/version"]}
        doc = discovery_document(path.rstrip("/") or "/")
        if doc is not None and info.verb == "get":
            return 200, doc
        return 404, "404 page not found\n"
    if info.api_group == "authentication.k8s.io" and info.resource == "selfsubjectreviews" and info.verb == "create":
        review = result.self_subject_review(now)
        review["apiVersion"] = f"authentication.k8s.io/{info.api_version}"
        return 201, review
    if info.verb in ("list", "watch"):
        return 200, {"kind": _list_kind(info.resource), "apiVersion": info.api_group + "/" + info.api_version
                     if info.api_group else info.api_version, "metadata": {"resourceVersion": "1"}, "items": []}
    if info.verb == "get":
        return 404, not_found_status(info)
    return 200, success_status(f"k8sboot stand-in: {info.verb} {info.resource} accepted, nothing stored "
                               "(this is not Kubernetes: there is no etcd)")


