"""Request attributes: k8s.io/apiserver's authorizer.Attributes, and what RequestInfoFactory makes
of a method and a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


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
