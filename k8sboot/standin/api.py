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


STANDIN_CAUSE = "k8sboot stand-in (not Kubernetes): not implemented here"


def unknown_resource_status(info: RequestInfo) -> dict:
    """What the real server answers for a path under a served group version that names no resource
    it serves (go-restful's 404, turned into a Status by the apiserver's ServiceErrorHandler:
    NewGenericServerResponse(404) with the go-restful message as a cause), plus a cause naming the
    stand-in. kubectl prints `Error from server (NotFound): the server could not find the requested
    resource`."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource", "reason": "NotFound",
            "details": {"causes": [{"reason": "UnexpectedServerResponse", "message": "404: Page Not Found"},
                                   {"reason": "UnexpectedServerResponse",
                                    "message": f"{STANDIN_CAUSE}: {_what(info)}"}]},
            "code": 404}


def method_not_allowed_status(info: RequestInfo) -> dict:
    """A served resource, a verb it does not serve: go-restful's 405 as the real server writes it
    (NewGenericServerResponse(405)), plus a cause naming the stand-in. kubectl prints `Error from
    server (MethodNotAllowed): the server does not allow this method on the requested resource`."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server does not allow this method on the requested resource",
            "reason": "MethodNotAllowed",
            "details": {"causes": [{"reason": "UnexpectedServerResponse", "message": "405: Method Not Allowed"},
                                   {"reason": "UnexpectedServerResponse",
                                    "message": f"{STANDIN_CAUSE}: {_what(info)}"}]},
            "code": 405}


def _what(info: RequestInfo) -> str:
    resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
    group = f".{info.api_group}" if info.api_group else ""
    return f"{info.verb} {resource}{group}"


# The group versions the stand-in serves, and in each the resources and the verbs it implements:
# discovery lists exactly these; anything else is a 404 (unknown resource) or 405 (unknown verb).
SERVED: dict[tuple[str, str], tuple[dict, ...]] = {
    ("", "v1"): (),
    ("authentication.k8s.io", "v1"): (
        {"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": False,
         "kind": "SelfSubjectReview", "verbs": ["create"]},),
}


def _served(group: str, version: str) -> tuple[dict, ...] | None:
    return SERVED.get((group, version))


def discovery_document(path: str) -> dict | None:
    """Discovery of what the stand-in serves (and nothing else); None: not a discovery path."""
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = sorted({g for g, _ in SERVED if g})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for gg, v in SERVED if gg == g],
            "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        group, version = parts[1], parts[2]
    elif parts[0] == "apis" and len(parts) == 2 and any(g == parts[1] for g, _ in SERVED):
        g = parts[1]
        versions = [{"groupVersion": f"{g}/{v}", "version": v} for gg, v in SERVED if gg == g]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions,
                "preferredVersion": versions[0]}
    else:
        return None
    resources = _served(group, version)
    if resources is None:
        return None
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": [dict(r) for r in resources]}


def route(info: RequestInfo, user: authn.UserInfo, result: authn.AuthResult, now: datetime) -> tuple[int, object]:
    """An allowed request's answer: (HTTP status, JSON body or text)."""
    path = info.path
    if not info.is_resource:
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"                     # a server with no lifecycle: always healthy
        if path in ("/version", "/version/"):
            return 200, VERSION_INFO
        if path == "/":
            return 200, {"paths": sorted(["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version",
                                          *(f"/apis/{g}" for g, _ in SERVED if g),
                                          *(f"/apis/{g}/{v}" for g, v in SERVED if g)])}
        doc = discovery_document(path.rstrip("/") or "/")
        if doc is not None and info.verb == "get":
            return 200, doc
        return 404, "404 page not found\n"
    resources = _served(info.api_group, info.api_version)
    if resources is None:
        return 404, "404 page not found\n"      # no such group version: Go's plain NotFound
    served = next((r for r in resources if r["name"] == info.resource), None)
    if served is None or info.subresource:
        return 404, unknown_resource_status(info)
    if info.verb not in served["verbs"]:
        return 405, method_not_allowed_status(info)
    if info.api_group == "authentication.k8s.io" and info.resource == "selfsubjectreviews":
        review = result.self_subject_review(now)
        review["apiVersion"] = f"authentication.k8s.io/{info.api_version}"
        return 201, review
    return 405, method_not_allowed_status(info)     # listed but without a handler: never a success
