"""What the stand-in answers to an authenticated, authorized request: routing by the request's
attributes (k8sboot.rbac.attributes_from_request), discovery of exactly what is implemented, the
stored kinds' handlers (create / get / list / update / patch / delete over storage.Store), the
TokenRequest, and the self-subject reviews. Everything else gets the real server's answer for
what it does not serve (404 / 405 Status with a cause naming the stand-in), never a success.
Pure apart from the store it is handed; the clock and the request come in as arguments."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from k8sboot import authn, rbac
from k8sboot.rbac import escalation
from k8sboot.standin import resources as res
from k8sboot.standin import openapi, protobuf, tokenrequest
from k8sboot.standin.authorization import ModeChain
from k8sboot.standin.bootstrap import StoreSource, ensure_namespace_content
from k8sboot.standin.resources import NAMESPACES, SERVICE_ACCOUNTS, ResourceType
from k8sboot.standin.storage import AlreadyExists, Conflict, NotFound, Store, StorageIOError

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
STANDIN_CAUSE = "k8sboot stand-in (not Kubernetes): not implemented here"
BODY_TYPES = ("application/json", "application/vnd.kubernetes.protobuf")   # no YAML: Debian's python has none


def _what(attrs: rbac.Attributes) -> str:
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    group = f".{attrs.api_group}" if attrs.api_group else ""
    return f"{attrs.verb} {resource}{group}"


def unknown_resource_status(attrs: rbac.Attributes) -> dict:
    """What the real server answers for a path under a served group version that names no resource
    it serves (go-restful's 404, turned into a Status by the apiserver's ServiceErrorHandler:
    NewGenericServerResponse(404) with the go-restful message as a cause), plus a cause naming the
    stand-in. kubectl prints `Error from server (NotFound): the server could not find the requested
    resource`."""
    return res.status(404, "NotFound", "the server could not find the requested resource", {
        "causes": [{"reason": "UnexpectedServerResponse", "message": "404: Page Not Found"},
                   {"reason": "UnexpectedServerResponse", "message": f"{STANDIN_CAUSE}: {_what(attrs)}"}]})


def method_not_allowed_status(attrs: rbac.Attributes) -> dict:
    """A served resource, a verb it does not serve: go-restful's 405 as the real server writes it
    (NewGenericServerResponse(405)), plus a cause naming the stand-in. kubectl prints `Error from
    server (MethodNotAllowed): the server does not allow this method on the requested resource`."""
    return res.status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {
        "causes": [{"reason": "UnexpectedServerResponse", "message": "405: Method Not Allowed"},
                   {"reason": "UnexpectedServerResponse", "message": f"{STANDIN_CAUSE}: {_what(attrs)}"}]})


# --- what is served ---------------------------------------------------------------------------------

_REVIEWS = {
    ("authentication.k8s.io", "selfsubjectreviews"): "SelfSubjectReview",
    ("authorization.k8s.io", "selfsubjectaccessreviews"): "SelfSubjectAccessReview",
    ("authorization.k8s.io", "selfsubjectrulesreviews"): "SelfSubjectRulesReview",
}


def _review_entry(group: str, name: str) -> dict:
    return {"name": name, "singularName": name[:-1], "namespaced": False, "kind": _REVIEWS[(group, name)],
            "verbs": ["create"]}


# (group, version) -> the APIResource entries of its discovery document, in upstream's order.
SERVED: dict[tuple[str, str], list[dict]] = {
    ("", "v1"): [res.NAMESPACES.discovery(), res.SERVICE_ACCOUNTS.discovery(),
                 {"name": "serviceaccounts/token", "singularName": "", "namespaced": True,
                  "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}],
    ("authentication.k8s.io", "v1"): [_review_entry("authentication.k8s.io", "selfsubjectreviews")],
    ("authorization.k8s.io", "v1"): [_review_entry("authorization.k8s.io", "selfsubjectaccessreviews"),
                                     _review_entry("authorization.k8s.io", "selfsubjectrulesreviews")],
    (res.RBAC, "v1"): [t.discovery() for t in res.TYPES if t.group == res.RBAC],
}
_GROUP_ORDER = [g for g, _ in SERVED if g]


def discovery_document(path: str) -> dict | None:
    """Discovery of what the stand-in serves (and nothing else); None: not a discovery path."""
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}

    def group_doc(g: str) -> dict:
        versions = [{"groupVersion": f"{g}/{v}", "version": v} for gg, v in SERVED if gg == g]
        return {"name": g, "versions": versions, "preferredVersion": versions[0]}

    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in _GROUP_ORDER]}
    parts = path.strip("/").split("/")
    if parts[0] == "apis" and len(parts) == 2 and parts[1] in _GROUP_ORDER:
        return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(parts[1])}
    if parts[0] == "api" and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        return None
    entries = SERVED.get((group, version))
    if entries is None:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": [dict(e) for e in entries]}


def root_paths() -> list[str]:
    return sorted(["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version",
                   *(f"/apis/{g}" for g in _GROUP_ORDER), *(f"/apis/{g}/{v}" for g, v in SERVED if g)])


# The stand-in's /metrics holds only what it measures (the authentication config controller's
# metrics, upstream's names); a Prometheus comment line says so, never passing for the real set.
METRICS_PREAMBLE = "# k8sboot kube-apiserver stand-in (not Kubernetes): only the metrics it implements\n"


# --- requests and answers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    body: bytes = b""
    content_type: str = ""
    accept: str = ""

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclass(frozen=True)
class Answer:
    code: int
    body: Any
    headers: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class TokenSettings:
    signer: tokenrequest.Signer | None
    audiences: tuple[str, ...]
    max_expiration: int = 0            # --service-account-max-token-expiration in seconds (0: none)


class Api:
    """The resource handlers over one store; `authorizer` is what the server asks first."""

    def __init__(self, store: Store, tokens: TokenSettings, new_id: Callable[[], str] = res.new_uid,
                 authorization_modes: tuple[str, ...] = ("Node", "RBAC")):
        self.store = store
        self.tokens = tokens
        self.new_id = new_id
        self.authorizer_source = StoreSource(store)
        self.authorizer = ModeChain(authorization_modes, self.authorizer_source)
        self.metrics: Callable[[], str] | None = None      # the Prometheus text of what the stand-in measures

    def service_account_uid(self, namespace: str, name: str) -> str | None:
        """authn's `service_accounts` lookup: the stored ServiceAccount's uid, or None (read as the
        real server reads it, from a cache kept current with the store: bootstrap.StoreSource)."""
        return self.authorizer_source.service_account_uid(namespace, name)

    def handle(self, attrs: rbac.Attributes, request: Request, user: authn.UserInfo,
               result: authn.AuthResult, now: datetime) -> Answer:
        if not attrs.is_resource:
            return self._non_resource(attrs)
        entries = SERVED.get((attrs.api_group, attrs.api_version))
        if entries is None:
            # A group version the stand-in does not serve (apps/v1, batch/v1, a CRD's group): the
            # real server's unknown-resource Status, naming the stand-in. (For a group no server
            # has, the real one writes Go's plain `404 page not found`; kubectl prints the same
            # NotFound message for both, and this way every gap of the stand-in says what it is.)
            return Answer(404, unknown_resource_status(attrs))
        if (attrs.api_group, attrs.resource) in _REVIEWS and not attrs.subresource and not attrs.name:
            if attrs.verb != "create":
                return Answer(405, method_not_allowed_status(attrs))
            return self._review(attrs, request, user, result, now)
        rt = res.BY_RESOURCE.get((attrs.api_group, attrs.api_version, attrs.resource))
        if rt is None:
            return Answer(404, unknown_resource_status(attrs))
        if attrs.subresource:
            if rt is SERVICE_ACCOUNTS and attrs.subresource == "token" and attrs.name:
                if attrs.verb != "create":
                    return Answer(405, method_not_allowed_status(attrs))
                return self._token(attrs, request, now)
            return Answer(404, unknown_resource_status(attrs))
        if attrs.verb not in res.VERBS or attrs.verb in ("update", "patch") and not attrs.name:
            return Answer(405, method_not_allowed_status(attrs))   # watch, deletecollection, PUT on a list
        if "dryRun" in request.query:
            return Answer(400, res.bad_request("dryRun is not implemented by the k8sboot stand-in "
                                               "(not Kubernetes): nothing was changed"))
        namespace = attrs.namespace if rt.namespaced else ""
        if rt.namespaced and not namespace and attrs.verb != "list":
            return Answer(404, unknown_resource_status(attrs))     # e.g. /api/v1/serviceaccounts/x
        try:
            handler = getattr(self, f"_{attrs.verb}")
            return handler(rt, namespace, attrs, request, now, user)
        except StorageIOError as exc:
            return Answer(500, res.status(500, "InternalError", f"Internal error occurred: {exc}"))

    # --- non-resource ----------------------------------------------------------------------------

    def _non_resource(self, attrs: rbac.Attributes) -> Answer:
        path = attrs.path
        if path in ("/healthz", "/livez", "/readyz"):
            return Answer(200, "ok")
        if path in ("/version", "/version/"):
            return Answer(200, VERSION_INFO)
        if path == "/metrics" and attrs.verb == "get":
            return Answer(200, METRICS_PREAMBLE + (self.metrics() if self.metrics is not None else ""))
        if path == "/" and attrs.verb == "get":
            return Answer(200, {"paths": root_paths()})
        doc = discovery_document(path.rstrip("/") or "/")
        if doc is None and path.startswith("/openapi/v3"):
            doc = openapi.answer(path)
        if doc is not None and attrs.verb == "get":
            return Answer(200, doc)
        return Answer(404, "404 page not found\n")

    # --- reviews and tokens -----------------------------------------------------------------------

    def _review(self, attrs, request: Request, user, result, now) -> Answer:
        if attrs.resource == "selfsubjectreviews":
            review = result.self_subject_review(now)
            review["apiVersion"] = f"authentication.k8s.io/{attrs.api_version}"
            return Answer(201, review)
        body = _decode(request)
        if isinstance(body, Answer):
            return body
        try:
            if attrs.resource == "selfsubjectaccessreviews":
                return Answer(201, rbac.self_subject_access_review(user, body, self.authorizer, attrs.api_version))
            return Answer(201, rbac.self_subject_rules_review(user, body, self.authorizer, attrs.api_version))
        except rbac.ReviewError as exc:
            return Answer(exc.status.get("code", 400), exc.status)

    def _token(self, attrs, request: Request, now) -> Answer:
        body = _decode(request)
        if isinstance(body, Answer):
            return body
        problem = tokenrequest.check_request(body, attrs.name, attrs.namespace)
        if problem:
            return Answer(422, problem)
        sa = self.store.get(SERVICE_ACCOUNTS.name, attrs.namespace, attrs.name)
        if sa is None:
            return Answer(404, res.not_found(SERVICE_ACCOUNTS, attrs.name))
        if self.tokens.signer is None:
            return Answer(500, res.status(500, "InternalError", "Internal error occurred: no signing key"))
        issued = tokenrequest.issue(body, sa, self.tokens.audiences, self.tokens.signer, now, self.new_id(),
                                    self.tokens.max_expiration)
        if isinstance(issued, dict):
            return Answer(issued["code"], issued)
        return Answer(201, issued.body, tuple(warning_header(w) for w in issued.warnings))

    # --- the stored kinds ---------------------------------------------------------------------------

    def _namespace_missing(self, rt: ResourceType, namespace: str) -> Answer | None:
        """NamespaceLifecycle admission: no writes into a namespace that does not exist."""
        if rt.namespaced and self.store.get(NAMESPACES.name, "", namespace) is None:
            return Answer(404, res.not_found(NAMESPACES, namespace))
        return None

    def _get(self, rt, namespace, attrs, request: Request, now, user) -> Answer:
        obj = self.store.get(rt.name, namespace, attrs.name)
        if obj is None:
            return Answer(404, res.not_found(rt, attrs.name))
        if res.wants_table(request.accept):
            return Answer(200, res.table(rt, [obj], now, obj["metadata"].get("resourceVersion", ""),
                                         _include_object(request)))
        return Answer(200, obj)

    def _list(self, rt, namespace, attrs, request: Request, now, user) -> Answer:
        query = request.query
        try:
            labels = res.parse_label_selector(query.get("labelSelector", [""])[0])
            fields = res.parse_field_selector(query.get("fieldSelector", [""])[0])
        except res.SelectorError as exc:
            return Answer(400, res.bad_request(str(exc)))
        listed, at = self.store.list_with_revision(rt.name, namespace if rt.namespaced and namespace else None)
        revision = str(at)
        items = [o for o in listed
                 if res.labels_match(labels, o["metadata"].get("labels") or {}) and res.fields_match(fields, o)]
        if res.wants_table(request.accept):
            return Answer(200, res.table(rt, items, now, revision, _include_object(request)))
        return Answer(200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                            "metadata": {"resourceVersion": revision},
                            "items": [res.as_list_item(o) for o in items]})

    def _create(self, rt, namespace, attrs, request: Request, now, user) -> Answer:
        if attrs.name:
            return Answer(405, method_not_allowed_status(attrs))   # POST to a named object
        body = _decode(request, rt)
        if isinstance(body, Answer):
            return body
        meta = body.get("metadata") or {}
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            return Answer(400, res.bad_request("the namespace of the provided object does not match the "
                                               "namespace sent on the request"))
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + self.new_id().replace("-", "")[:5]
            body.setdefault("metadata", {})["name"] = name
        checked = _validated(rt, body, request, "create")
        if isinstance(checked, Answer):
            return checked
        return self._store_new(rt, namespace, name, checked[0], now, user, checked[1])

    def _store_new(self, rt, namespace, name, body, now, user, warnings: tuple = ()) -> Answer:
        problem = res.validate_name(rt, name)
        if problem:
            return Answer(422, problem)
        missing = self._namespace_missing(rt, namespace)
        if missing:
            return missing
        obj = res.prepare_create(rt, body, namespace, now)
        errors = res.rbac_errors(rt, obj)
        if errors:
            return Answer(422, res.invalid(rt.group, rt.kind, name, errors))
        refused = self._escalation(rt, namespace, obj, user)
        if refused:
            return refused
        try:
            stored = self.store.create(rt.name, namespace, name, obj)
        except AlreadyExists:
            return Answer(409, res.already_exists(rt, name))
        if rt is NAMESPACES:
            ensure_namespace_content(self.store, name, now)
        return Answer(201, stored, warnings)

    def _update(self, rt, namespace, attrs, request: Request, now, user) -> Answer:
        body = _decode(request, rt)
        if isinstance(body, Answer):
            return body
        meta = body.get("metadata") or {}
        if meta.get("name") != attrs.name:
            return Answer(400, res.bad_request(f"the name of the object ({meta.get('name', '')}) does not match "
                                               f"the name on the URL ({attrs.name})"))
        checked = _validated(rt, body, request, "update")
        if isinstance(checked, Answer):
            return checked
        body, warnings = checked
        current = self.store.get(rt.name, namespace, attrs.name)
        if current is None:
            if rt.group == res.RBAC:                    # the RBAC strategies AllowCreateOnUpdate
                return self._store_new(rt, namespace, attrs.name, body, now, user, warnings)
            return Answer(404, res.not_found(rt, attrs.name))
        return self._replace(rt, namespace, attrs.name, body, current, meta.get("resourceVersion"), user, warnings)

    def _patch(self, rt, namespace, attrs, request: Request, now, user) -> Answer:
        ctype = request.content_type.split(";")[0].strip().lower()
        if ctype not in res.PATCH_TYPES:
            return Answer(415, res.unsupported_media_type(ctype, res.PATCH_TYPES))
        try:
            patch = json.loads(request.body or b"null")
        except ValueError as exc:
            return Answer(400, res.bad_request(f"error decoding patch: {exc}"))
        if not isinstance(patch, dict):
            return Answer(400, res.bad_request("error decoding patch: the patch is not a JSON object"))
        current = self.store.get(rt.name, namespace, attrs.name)
        if current is None:
            return Answer(404, res.not_found(rt, attrs.name))
        patched = res.merge_patch(current, patch, strategic=ctype == res.STRATEGIC_MERGE_PATCH)
        checked = _validated(rt, patched, request, "patch")
        if isinstance(checked, Answer):
            return checked
        rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch.get("metadata"), dict) else None
        return self._replace(rt, namespace, attrs.name, checked[0], current, rv, user, checked[1])

    def _replace(self, rt, namespace, name, body, current, resource_version, user, warnings: tuple = ()) -> Answer:
        obj = res.prepare_update(rt, body, current)
        errors = res.rbac_errors(rt, obj, current)
        if errors:
            return Answer(422, res.invalid(rt.group, rt.kind, name, errors))
        refused = self._escalation(rt, namespace, obj, user, current)
        if refused:
            return refused
        try:
            return Answer(200, self.store.update(rt.name, namespace, name, obj, resource_version), warnings)
        except Conflict:
            return Answer(409, res.conflict(rt, name))
        except NotFound:
            return Answer(404, res.not_found(rt, name))

    def _delete(self, rt, namespace, attrs, request: Request, now, user) -> Answer:
        current = self.store.get(rt.name, namespace, attrs.name)
        if current is None:
            return Answer(404, res.not_found(rt, attrs.name))
        if rt is NAMESPACES:
            if attrs.name in res.IMMORTAL_NAMESPACES:
                return Answer(403, res.forbidden(rt, attrs.name, "this namespace may not be deleted"))
            return self._delete_namespace(current, now)
        try:
            gone = self.store.delete(rt.name, namespace, attrs.name)
        except NotFound:
            return Answer(404, res.not_found(rt, attrs.name))
        if rt is SERVICE_ACCOUNTS and attrs.name == "default":
            ensure_namespace_content(self.store, namespace, now)     # the controller makes it again
        return Answer(200, res.deleted_status(rt, gone))

    def _escalation(self, rt: ResourceType, namespace: str, obj: dict, user, current: dict | None = None
                    ) -> Answer | None:
        """RBAC's escalation check on a write of an RBAC object (k8sboot/rbac/escalation.py)."""
        if rt.group != res.RBAC:
            return None
        refused = escalation.check_write(user, rt.kind, namespace, obj, self.authorizer, self._role_rules, current)
        if refused is None:
            return None
        code, why = refused
        name = obj["metadata"]["name"]
        if code == 404:
            ref_rt = res.BY_RESOURCE[(res.RBAC, "v1", why)]
            return Answer(404, res.not_found(ref_rt, (obj.get("roleRef") or {}).get("name", "")))
        return Answer(403, res.forbidden(rt, name, why))

    def _role_rules(self, ref: dict, namespace: str) -> list[dict] | None:
        if ref.get("kind") == "ClusterRole":          # as aggregated
            role = next((r for r in self.authorizer_source.cluster_roles()
                         if r["metadata"]["name"] == ref.get("name")), None)
        else:
            role = self.store.get("roles", namespace, ref.get("name", ""))
        return None if role is None else list(role.get("rules") or [])

    def _delete_namespace(self, current: dict, now: datetime) -> Answer:
        """As upstream answers: the Namespace, phase Terminating with a deletionTimestamp (its
        `kubernetes` finalizer pending). What the namespace controller then does happens here at
        once: every object in it is deleted, then the namespace, so a following GET is a 404."""
        name = current["metadata"]["name"]
        terminating = json.loads(json.dumps(current))
        meta = terminating["metadata"]
        meta["deletionTimestamp"] = res.rfc3339(now)
        terminating["metadata"] = res._ordered_meta(meta)
        terminating["status"] = {"phase": "Terminating"}
        for rt in res.TYPES:
            if rt.namespaced:
                for obj in self.store.list(rt.name, name):
                    try:
                        self.store.delete(rt.name, name, obj["metadata"]["name"])
                    except NotFound:
                        pass
        try:
            self.store.delete(NAMESPACES.name, "", name)
        except NotFound:
            pass
        return Answer(200, terminating)


def _validated(rt: ResourceType, obj: dict, request: Request, verb: str) -> tuple[dict, tuple] | Answer:
    """The object without unknown fields and the Warning headers; or the 400 for Strict."""
    directive = res.field_validation(request.query)
    if directive == "Invalid":
        return Answer(400, res.bad_request(f"fieldValidation must be one of Ignore, Warn, Strict; got "
                                           f"{request.query['fieldValidation'][0]!r}"))
    clean, unknown = res.strip_unknown_fields(obj, rt.kind)
    if not unknown or directive == "Ignore":
        return clean, ()
    problems = [f'unknown field "{u}"' for u in unknown]
    if directive == "Strict":
        why = "strict decoding error: " + ", ".join(problems)
        if verb != "patch":
            why = f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {why}'
        return Answer(400, res.bad_request(why))
    return clean, tuple(warning_header(p) for p in problems)


def warning_header(text: str) -> tuple[str, str]:
    """RFC 7234 `Warning: 299 - "<text>"` as the API server writes it (quotes escaped)."""
    return "Warning", '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _include_object(request: Request) -> str:
    return request.query.get("includeObject", ["Metadata"])[0] or "Metadata"


def _decode(request: Request, rt: ResourceType | None = None) -> dict | Answer:
    """The JSON body as a dict; 415 for another media type (no YAML here), 400 for bad JSON or
    a kind/apiVersion other than the resource's."""
    ctype = request.content_type.split(";")[0].strip().lower()
    if ctype and ctype not in BODY_TYPES:
        return Answer(415, res.unsupported_media_type(ctype, BODY_TYPES))
    kind = rt.kind if rt else "the request"
    try:
        body = protobuf.decode(request.body) if ctype == protobuf.CONTENT_TYPE else json.loads(request.body or b"{}")
    except ValueError as exc:
        return Answer(400, res.bad_request(f"the object provided is unrecognized (must be of type {kind}): "
                                           f"couldn't get version/kind; json parse error: {exc}"))
    if not isinstance(body, dict):
        return Answer(400, res.bad_request(f"the object provided is unrecognized (must be of type {kind})"))
    if rt is not None:
        if body.get("kind") not in (None, "", rt.kind) or body.get("apiVersion") not in (None, "", rt.api_version):
            return Answer(400, res.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version "
                f"({rt.api_version})" if body.get("kind") in (None, "", rt.kind) else
                f"the object provided is unrecognized (must be of type {rt.kind}): "
                f"{body.get('kind')} in version \"{body.get('apiVersion')}\" cannot be handled as a {rt.kind}"))
    return body
