"""The kinds the stand-in stores and what the real API server does with them, as pure functions:
the resource table (discovery's words), name validation with apimachinery's messages, the
defaults its strategies set, the Status errors (AlreadyExists 409, NotFound 404, Invalid 422,
Conflict 409, BadRequest 400, UnsupportedMediaType 415), patches (JSON merge patch; strategic
merge patch for these kinds, whose lists carry no merge keys and so are replaced), list
selectors, and the Table kubectl asks for. No I/O, the clock passed in."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

VERBS = ("create", "delete", "get", "list", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    name: str                 # plural, as in the URL
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    name_rule: str = "subdomain"      # "label" | "subdomain" | "path-segment"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`namespaces`, `roles.rbac.authorization.k8s.io`: how errors name the resource."""
        return f"{self.name}.{self.group}" if self.group else self.name

    @property
    def qualified_kind(self) -> str:
        """`Namespace`, `Role.rbac.authorization.k8s.io`: how Invalid errors name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def discovery(self) -> dict:
        """The APIResource entry of /api/v1 or /apis/<group>/<version>: the verbs implemented."""
        entry: dict[str, Any] = {"name": self.name, "singularName": self.singular, "namespaced": self.namespaced,
                                 "kind": self.kind, "verbs": list(VERBS)}
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        return entry


RBAC = "rbac.authorization.k8s.io"
TYPES = (
    ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, ("ns",), name_rule="label"),
    ResourceType("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",)),
    # RBAC names are path segments (ValidateRBACName = path.IsValidPathSegmentName): `system:masters`
    ResourceType(RBAC, "v1", "clusterroles", "clusterrole", "ClusterRole", False, name_rule="path-segment"),
    ResourceType(RBAC, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False,
                 name_rule="path-segment"),
    ResourceType(RBAC, "v1", "roles", "role", "Role", True, name_rule="path-segment"),
    ResourceType(RBAC, "v1", "rolebindings", "rolebinding", "RoleBinding", True, name_rule="path-segment"),
)
BY_RESOURCE = {(t.group, t.version, t.name): t for t in TYPES}
NAMESPACES = BY_RESOURCE[("", "v1", "namespaces")]
SERVICE_ACCOUNTS = BY_RESOURCE[("", "v1", "serviceaccounts")]
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")     # NamespaceLifecycle admission
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


# --- Status bodies (k8s.io/apimachinery/pkg/api/errors) ---------------------------------------------


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(rt: ResourceType, name: str) -> dict:
    out: dict[str, Any] = {"name": name}
    if rt.group:
        out["group"] = rt.group
    out["kind"] = rt.name
    return out


def not_found(rt: ResourceType, name: str) -> dict:
    return status(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def already_exists(rt: ResourceType, name: str) -> dict:
    return status(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str) -> dict:
    return status(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has '
                  "been modified; please apply your changes to the latest version and try again",
                  _details(rt, name))


def forbidden(rt: ResourceType, name: str, why: str) -> dict:
    """NewForbidden: `<resource> "<name>" is forbidden: <why>`."""
    return status(403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: {why}', _details(rt, name))


def bad_request(message: str) -> dict:
    return status(400, "BadRequest", message)


def _go_quote(value: Any) -> str:
    """field.Error's value as it prints it: strings %q, numbers and bools %v, a []string %#v."""
    if isinstance(value, _GoStruct):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[]string{" + ", ".join(json.dumps(str(v), ensure_ascii=False) for v in value) + "}"
    return str(value)


def invalid(group: str, kind: str, name: str, errors: list[tuple[str, str, Any, str]]) -> dict:
    """NewInvalid: `<Kind>[.<group>] "<name>" is invalid: <field errors>`; each error is (type,
    field, value, detail) with type "Invalid" or "Required"."""
    causes, texts = [], []
    for kind_of_error, field_path, value, detail in errors:
        if kind_of_error == "Required":
            message, reason = f"Required value: {detail}", "FieldValueRequired"
        elif kind_of_error == "Unsupported":
            message, reason = f"Unsupported value: {_go_quote(value)}: {detail}", "FieldValueNotSupported"
        else:
            message, reason = f"Invalid value: {_go_quote(value)}: {detail}", "FieldValueInvalid"
        causes.append({"reason": reason, "message": message, "field": field_path})
        texts.append(f"{field_path}: {message}")
    aggregate = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name} if name else {}        # omitempty
    if group:
        details["group"] = group
    details.update({"kind": kind, "causes": causes})
    return status(422, "Invalid", f'{qualified} "{name}" is invalid: {aggregate}', details)


def unsupported_media_type(content_type: str, accepted: tuple[str, ...]) -> dict:
    return status(415, "UnsupportedMediaType",
                  f"the body of the request was in an unknown format - accepted media types include: "
                  + ", ".join(accepted))


# --- names (k8s.io/apimachinery/pkg/util/validation) -----------------------------------------------

_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _LABEL_FMT + r"(\." + _LABEL_FMT + ")*"
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
              "start and end with an alphanumeric character")
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character")


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    """validation.RegexError, double space and all: `(e.g. 'my-name',  or '123-abc', regex ...)`."""
    text = msg + " (e.g. "
    for i, example in enumerate(examples):
        if i > 0:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def name_errors(rule: str, name: str) -> list[str]:
    """What IsDNS1123Label / IsDNS1123Subdomain / IsValidPathSegmentName say about `name`."""
    if rule == "path-segment":
        for bad in (".", ".."):
            if name == bad:
                return [f"may not be '{bad}'"]
        return [f"may not contain '{c}'" for c in ("/", "%") if c in name]
    errors = []
    limit, fmt = (63, _LABEL_FMT) if rule == "label" else (253, _SUBDOMAIN_FMT)
    if len(name) > limit:
        errors.append(f"must be no more than {limit} characters")
    if not re.fullmatch(fmt, name):
        errors.append(_regex_error(_LABEL_MSG, _LABEL_FMT, "my-name", "123-abc") if rule == "label"
                      else _regex_error(_SUBDOMAIN_MSG, _SUBDOMAIN_FMT, "example.com"))
    return errors


def validate_name(rt: ResourceType, name: str) -> dict | None:
    """The 422 for a bad metadata.name (None when valid)."""
    if not name:
        return invalid(rt.group, rt.kind, "", [("Required", "metadata.name", None,
                                                "name or generateName is required")])
    errors = name_errors(rt.name_rule, name)
    if not errors:
        return None
    return invalid(rt.group, rt.kind, name, [("Invalid", "metadata.name", name, e) for e in errors])


# --- objects ---------------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    import os

    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def prepare_create(rt: ResourceType, obj: dict, namespace: str, now: datetime) -> dict:
    """The object as the registry stores it on create: kind/apiVersion, metadata (uid,
    creationTimestamp; server fields the client sent are dropped), the strategy's defaults."""
    out = copy.deepcopy(obj)
    meta = dict(out.get("metadata") or {})
    for server_field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation",
                         "managedFields", "selfLink"):
        meta.pop(server_field, None)
    meta["uid"] = new_uid()
    meta["resourceVersion"] = ""              # its place in ObjectMeta; the store writes the value
    meta["creationTimestamp"] = rfc3339(now)
    if rt.namespaced:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    out["metadata"] = _ordered_meta(meta)
    out["kind"], out["apiVersion"] = rt.kind, rt.api_version
    return _defaults(rt, out)


def prepare_update(rt: ResourceType, obj: dict, current: dict) -> dict:
    """An update keeps what the server owns (uid, creationTimestamp; the namespace's status)."""
    out = copy.deepcopy(obj)
    meta = dict(out.get("metadata") or {})
    for owned in ("uid", "creationTimestamp", "namespace", "name"):
        if owned in current["metadata"]:
            meta[owned] = current["metadata"][owned]
        else:
            meta.pop(owned, None)
    meta.pop("managedFields", None)
    meta.setdefault("resourceVersion", "")
    out["metadata"] = _ordered_meta(meta)
    out["kind"], out["apiVersion"] = rt.kind, rt.api_version
    if rt is NAMESPACES:
        out["status"] = current.get("status", {"phase": "Active"})
    return _defaults(rt, out)


_META_ORDER = ("name", "generateName", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
               "deletionTimestamp", "labels", "annotations")


def _ordered_meta(meta: dict) -> dict:
    """ObjectMeta's field order, as the API writes it."""
    out = {k: meta[k] for k in _META_ORDER if k in meta}
    out.update((k, v) for k, v in meta.items() if k not in out)
    return out


def _defaults(rt: ResourceType, obj: dict) -> dict:
    if rt is NAMESPACES:
        labels = dict(obj["metadata"].get("labels") or {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]        # the namespace strategy
        obj["metadata"]["labels"] = labels
        obj["metadata"] = _ordered_meta(obj["metadata"])
        spec = dict(obj.get("spec") or {})
        spec.setdefault("finalizers", ["kubernetes"])
        obj["spec"] = spec
        obj["status"] = {"phase": (obj.get("status") or {}).get("phase", "Active")}
    if rt.kind in ("Role", "ClusterRole") and "rules" not in obj:
        obj["rules"] = None                                 # `json:"rules"`, no omitempty: null
    if rt.kind in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj.get("subjects") or []:          # SetDefaults_Subject
            if isinstance(subject, dict) and not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
                subject["apiGroup"] = RBAC
    return _key_order(obj)


def _key_order(obj: dict) -> dict:
    head = {k: obj[k] for k in ("kind", "apiVersion", "metadata") if k in obj}
    head.update((k, v) for k, v in obj.items() if k not in head)
    return head


def as_list_item(obj: dict) -> dict:
    """Items of a typed list carry no kind/apiVersion, as the real server writes them."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def deleted_status(rt: ResourceType, obj: dict) -> dict:
    """The registry's answer to a DELETE that removed the object (finalizeDelete): Success with
    the name, group, the resource as "kind", and the uid."""
    details: dict[str, Any] = {"name": obj["metadata"]["name"]}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.name
    details["uid"] = obj["metadata"].get("uid", "")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


# --- patches ---------------------------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH)


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 JSON merge patch. Strategic (kubectl apply's patch for these kinds): the same,
    since none of their lists has a patch merge key (rules, subjects, finalizers are replaced
    whole), plus the directives: `$patch: delete` removes the map, `$patch: replace` replaces it,
    and `$setElementOrder/...`, `$retainKeys`, `$deleteFromPrimitiveList/...` keys are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic:
        directive = patch.get("$patch")
        if directive == "delete":
            return None
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        else:
            merged = merge_patch(out.get(key), value, strategic)
            if merged is None and strategic:
                out.pop(key, None)
            else:
                out[key] = merged
    return out


# --- list selectors --------------------------------------------------------------------------------


class SelectorError(ValueError):
    """A selector the stand-in cannot evaluate; the message is the 400's."""


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """labels.Parse: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`, joined by
    commas -> [(op, key, values)]; SelectorError for what it cannot read."""
    terms, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    out = []
    for term in (t.strip() for t in terms if t.strip()):
        m = re.fullmatch(r"([^\s!=(),]+)\s+(in|notin)\s*\(([^()]*)\)", term)
        if m:
            out.append((m[2], m[1], tuple(v.strip() for v in m[3].split(",") if v.strip())))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            out.append(("!=", key.strip(), (value.strip(),)))
        elif "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            out.append(("=", key.strip(), (value.strip(),)))
        elif term.startswith("!"):
            out.append(("!", term[1:].strip(), ()))
        elif re.fullmatch(r"[^\s!=(),]+", term):
            out.append(("exists", term, ()))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return out


def labels_match(selector: list[tuple[str, str, tuple[str, ...]]], labels: dict) -> bool:
    for op, key, values in selector:
        have = labels.get(key)
        if op in ("=", "in") and have not in values or op in ("!=", "notin") and have in values and have is not None \
                or op == "exists" and key not in labels or op == "!" and key in labels:
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    """metadata.name and metadata.namespace (what every resource supports upstream)."""
    out = []
    for term in (t.strip() for t in text.split(",") if t.strip()):
        op = "!=" if "!=" in term else "="
        key, _, value = term.partition("!=" if op == "!=" else "=")
        value = value.lstrip("=")
        key = key.strip()
        if key not in ("metadata.name", "metadata.namespace"):
            raise SelectorError(f'field label not supported: {key}')
        out.append((op, key, value.strip()))
    return out


def fields_match(selector: list[tuple[str, str, str]], obj: dict) -> bool:
    meta = obj.get("metadata", {})
    for op, key, value in selector:
        have = meta.get(key.split(".", 1)[1], "")
        if (have == value) != (op == "="):
            return False
    return True


# --- the Table kubectl asks for (Accept: application/json;as=Table;v=v1;g=meta.k8s.io) -------------


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration (the AGE column)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _age(obj: dict, now: datetime) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return human_duration((now - when).total_seconds())


_NAME_COLUMN = {"name": "Name", "type": "string", "format": "name",
                "description": "Name must be unique within a namespace. Is required when creating resources, "
                               "although some resources may allow a client to request the generation of an "
                               "appropriate name automatically. Name is primarily intended for creation "
                               "idempotence and configuration definition. Cannot be updated. More info: "
                               "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
                "priority": 0}


def _column(name: str, description: str, type_: str = "string", priority: int = 0) -> dict:
    return {"name": name, "type": type_, "format": "", "description": description, "priority": priority}


_AGE = _column("Age", "CreationTimestamp is a timestamp representing the server time when this object was "
               "created. It is not guaranteed to be set in happens-before order across separate operations. "
               "Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\n"
               "Populated by the system. Read-only. Null for lists. More info: "
               "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")
_CREATED_AT = _column("Created At", "Time when this role was created.", "date")


def table_columns(rt: ResourceType) -> list[dict]:
    """The columns of pkg/printers/internalversion for these kinds."""
    if rt.kind == "Namespace":
        return [_NAME_COLUMN, _column("Status", "The status of the namespace"), _AGE]
    if rt.kind == "ServiceAccount":
        return [_NAME_COLUMN, _column("Secrets", "Secrets is a list of the secrets in the same namespace that "
                                      "pods running using this ServiceAccount are allowed to use.", "integer"), _AGE]
    if rt.kind in ("Role", "ClusterRole"):
        return [_NAME_COLUMN, _CREATED_AT]
    return [_NAME_COLUMN, _column("Role", "RoleRef is the reference to the role the binding grants."), _AGE,
            _column("Users", "Users in the roleBinding", priority=1),
            _column("Groups", "Groups in the roleBinding", priority=1),
            _column("ServiceAccounts", "ServiceAccounts in the roleBinding", priority=1)]


def _cells(rt: ResourceType, obj: dict, now: datetime) -> list:
    name = obj["metadata"]["name"]
    if rt.kind == "Namespace":
        return [name, (obj.get("status") or {}).get("phase", ""), _age(obj, now)]
    if rt.kind == "ServiceAccount":
        return [name, len(obj.get("secrets") or []), _age(obj, now)]
    if rt.kind in ("Role", "ClusterRole"):
        return [name, obj["metadata"].get("creationTimestamp")]
    ref = obj.get("roleRef") or {}
    subjects = obj.get("subjects") or []

    def of(kind: str) -> str:
        if kind == "ServiceAccount":
            return ", ".join(f"{s.get('namespace', '')}/{s.get('name', '')}" for s in subjects
                             if s.get("kind") == kind)
        return ", ".join(s.get("name", "") for s in subjects if s.get("kind") == kind)

    return [name, f"{ref.get('kind', '')}/{ref.get('name', '')}", _age(obj, now), of("User"), of("Group"),
            of("ServiceAccount")]


def table(rt: ResourceType, objects: list[dict], now: datetime, resource_version: str,
          include_object: str = "Metadata") -> dict:
    """A meta.k8s.io/v1 Table; each row carries the object's metadata (PartialObjectMetadata,
    kubectl's default includeObject=Metadata), the whole object, or nothing."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": _cells(rt, obj, now)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": table_columns(rt), "rows": rows}


def wants_table(accept: str) -> bool:
    """kubectl get asks `application/json;as=Table;v=v1;g=meta.k8s.io, ..., application/json`."""
    for part in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in part.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
    return False


# --- field validation (?fieldValidation=Strict|Warn|Ignore) ---------------------------------------
# The fields of each kind are those its Go struct decodes (the JSON names of protobuf.SCHEMAS,
# plus what the protobuf view leaves out); anything else is an unknown field: dropped as Go's
# decoder drops it, and reported as the real server does (Strict: 400, Warn: a Warning header).

_EXTRA_FIELDS = {
    "ObjectMeta": {"selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences",
                   "managedFields"},
    "Namespace": {"status"}, "TokenRequest": {"status"}, "SelfSubjectAccessReview": {"status"},
    "SelfSubjectRulesReview": {"status"}, "SelfSubjectReview": {"status"},
}


def strip_unknown_fields(obj: dict, message: str, path: str = "") -> tuple[dict, list[str]]:
    """(obj without unknown fields, the unknown fields' paths as upstream writes them:
    `spec.foo`, `rules[0].verbz`)."""
    from k8sboot.standin.protobuf import SCHEMAS

    schema = {name: (kind, repeated) for name, kind, repeated in SCHEMAS[message].values()}
    allowed = set(schema) | _EXTRA_FIELDS.get(message, set()) | ({"kind", "apiVersion"} if not path else set())
    clean: dict = {}
    unknown: list[str] = []
    for key, value in obj.items():
        if key not in allowed:
            unknown.append(f"{path}{key}")
            continue
        kind, repeated = schema.get(key, ("", False))
        if kind in SCHEMAS and kind != "Time":
            if repeated and isinstance(value, list):
                items = []
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        item, more = strip_unknown_fields(item, kind, f"{path}{key}[{i}].")
                        unknown.extend(more)
                    items.append(item)
                value = items
            elif isinstance(value, dict):
                value, more = strip_unknown_fields(value, kind, f"{path}{key}.")
                unknown.extend(more)
        clean[key] = value
    return clean, unknown


def field_validation(query: dict) -> str:
    """The request's fieldValidation directive (the server's default since 1.27: Warn)."""
    value = (query.get("fieldValidation") or ["Warn"])[0] or "Warn"
    return value if value in ("Strict", "Warn", "Ignore") else "Invalid"


# --- RBAC objects (pkg/apis/rbac/validation) ---------------------------------------------------------

_RBAC_GROUP_VALUES = '"rbac.authorization.k8s.io"'


def _rule_errors(rule: Any, namespaced: bool, path: str) -> list[tuple[str, str, Any, str]]:
    rule = rule if isinstance(rule, dict) else {}
    errors: list[tuple[str, str, Any, str]] = []
    if not rule.get("verbs"):
        errors.append(("Required", f"{path}.verbs", None, "verbs must contain at least one value"))
    urls = rule.get("nonResourceURLs") or []
    if urls:
        if namespaced:
            errors.append(("Invalid", f"{path}.nonResourceURLs", urls, "namespaced rules cannot apply to non-resource URLs"))
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            errors.append(("Invalid", f"{path}.nonResourceURLs", urls,
                           "rules cannot apply to both regular resources and non-resource URLs"))
        return errors
    if not rule.get("apiGroups"):
        errors.append(("Required", f"{path}.apiGroups", None, "resource rules must supply at least one api group"))
    if not rule.get("resources"):
        errors.append(("Required", f"{path}.resources", None, "resource rules must supply at least one resource"))
    return errors


def rbac_errors(rt: ResourceType, obj: dict, current: dict | None = None) -> list[tuple[str, str, Any, str]]:
    """ValidateRole / ValidateClusterRole / ValidateRoleBinding / ValidateClusterRoleBinding (and
    the roleRef that an update may not change), as field errors for `invalid`."""
    errors: list[tuple[str, str, Any, str]] = []
    namespaced = rt.namespaced
    if rt.kind in ("Role", "ClusterRole"):
        for i, rule in enumerate(obj.get("rules") or []):
            errors.extend(_rule_errors(rule, namespaced, f"rules[{i}]"))
        return errors
    if rt.kind not in ("RoleBinding", "ClusterRoleBinding"):
        return errors
    ref = obj.get("roleRef") if isinstance(obj.get("roleRef"), dict) else {}
    if ref.get("apiGroup") != RBAC:
        errors.append(("Unsupported", "roleRef.apiGroup", ref.get("apiGroup", ""),
                       f"supported values: {_RBAC_GROUP_VALUES}"))
    kinds = ("ClusterRole", "Role") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        errors.append(("Unsupported", "roleRef.kind", ref.get("kind", ""),
                       "supported values: " + ", ".join(f'"{k}"' for k in kinds)))
    if not ref.get("name"):
        errors.append(("Required", "roleRef.name", None, ""))
    else:
        for msg in name_errors("path-segment", ref["name"]):
            errors.append(("Invalid", "roleRef.name", ref["name"], msg))
    for i, subject in enumerate(obj.get("subjects") or []):
        subject = subject if isinstance(subject, dict) else {}
        path = f"subjects[{i}]"
        if not subject.get("name"):
            errors.append(("Required", f"{path}.name", None, ""))
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                errors.append(("Unsupported", f"{path}.apiGroup", subject["apiGroup"], 'supported values: ""'))
            if not namespaced and not subject.get("namespace"):
                errors.append(("Required", f"{path}.namespace", None, ""))
        elif kind in ("User", "Group"):
            if subject.get("apiGroup") != RBAC:
                errors.append(("Unsupported", f"{path}.apiGroup", subject.get("apiGroup", ""),
                               f"supported values: {_RBAC_GROUP_VALUES}"))
        else:
            errors.append(("Unsupported", f"{path}.kind", kind or "",
                           'supported values: "ServiceAccount", "User", "Group"'))
    if current is not None and current.get("roleRef") != obj.get("roleRef"):
        errors.append(("Invalid", "roleRef", _go_struct(obj.get("roleRef")), "cannot change roleRef"))
    return errors


class _GoStruct(str):
    """A value printed as is (field.Invalid of a struct prints it with %#v)."""


def _go_struct(ref: Any) -> Any:
    ref = ref if isinstance(ref, dict) else {}
    return _GoStruct('rbac.RoleRef{APIGroup:"%s", Kind:"%s", Name:"%s"}' % (ref.get("apiGroup", ""), ref.get("kind", ""),
                                                                         ref.get("name", "")))
