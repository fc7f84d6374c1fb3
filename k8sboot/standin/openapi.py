"""The smallest OpenAPI v3 the stand-in can honestly serve: for each group version it serves, the
paths of its stored kinds with their verbs (x-kubernetes-action) and kinds
(x-kubernetes-group-version-kind), and the query parameters the stand-in acts on, among them
`fieldValidation` (which api.py honours: Strict refuses unknown fields, Warn warns). No
component schemas and no strategic-merge-patch request bodies are published, so kubectl computes
apply patches from its own compiled-in types, as it does against a server without OpenAPI.

Why at all: `kubectl apply` (validation on, the default) asks /openapi/v3 whether the server
does field validation; without an answer it wants /openapi/v2 for client-side validation and
stops with `failed to download openapi`. Pure.
"""

from __future__ import annotations

import hashlib
import json

from k8sboot.standin.resources import TYPES, ResourceType

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def _param(name: str) -> dict:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _gvk(rt: ResourceType) -> dict:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _op(rt: ResourceType, action: str, verb: str) -> dict:
    """One operation; kubectl reads the query parameters from the operation (PATCH's tells it
    whether the server validates fields)."""
    return {"description": f"{action} {rt.kind} (k8sboot stand-in)", "operationId": f"{verb}{rt.kind}",
            "parameters": [_param(n) for n in _QUERY],
            "x-kubernetes-action": action, "x-kubernetes-group-version-kind": _gvk(rt),
            "responses": {"200": {"description": "OK"}}}


def _prefix(rt: ResourceType) -> str:
    return f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"


def group_version_document(group: str, version: str) -> dict | None:
    """/openapi/v3/api/v1 or /openapi/v3/apis/<group>/<version>; None when not served."""
    types = [t for t in TYPES if t.group == group and t.version == version]
    if not types:
        return None
    paths = {}
    for rt in types:
        base = _prefix(rt) + ("/namespaces/{namespace}" if rt.namespaced else "") + f"/{rt.name}"
        paths[base] = {"get": _op(rt, "list", "list"), "post": _op(rt, "post", "create")}
        paths[base + "/{name}"] = {"get": _op(rt, "get", "read"), "put": _op(rt, "put", "replace"),
                                   "patch": _op(rt, "patch", "patch"), "delete": _op(rt, "delete", "delete"),
                                   "parameters": [{"name": "name", "in": "path", "required": True,
                                                   "schema": {"type": "string"}}]}
    title = "Kubernetes (k8sboot stand-in: not Kubernetes)"
    return {"openapi": "3.0.0", "info": {"title": title, "version": "v0.0.0-k8sboot-standin"},
            "paths": paths, "components": {"schemas": {}}}


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def root_document() -> dict:
    """/openapi/v3: each served group version and where its document is (with a content hash)."""
    out = {}
    for group, version in dict.fromkeys((t.group, t.version) for t in TYPES):
        doc = json.dumps(group_version_document(group, version), sort_keys=True).encode()
        digest = hashlib.sha512(doc).hexdigest()[:128].upper()
        out[_gv_path(group, version)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"}
    return {"paths": out}


def answer(path: str) -> dict | None:
    """The document for a /openapi/v3... path, None when there is none."""
    if path.rstrip("/") == "/openapi/v3":
        return root_document()
    parts = path.strip("/").split("/")[2:]
    if len(parts) == 2 and parts[0] == "api":
        return group_version_document("", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_document(parts[1], parts[2])
    return None
