"""Request bodies in Kubernetes' protobuf encoding, read into the API's JSON form.

kubectl 1.32 sends built-in kinds as `application/vnd.kubernetes.protobuf` (`kubectl create
namespace`, `create serviceaccount`, `create token`, `create role`, `auth can-i`, ...), and a
real server reads them. The encoding: the 4 bytes `k8s\\0`, then a runtime.Unknown message
(typeMeta {apiVersion=1, kind=2} = 1, raw = 2, contentEncoding = 3, contentType = 4) whose `raw` is
the object's message from the API's generated.proto. Only the kinds the stand-in serves are known
here (their fields as numbered in k8s.io/api 1.32); an unknown field is skipped, as protobuf does.
Pure; ValueError for bytes that are not such a message.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# message -> {field number: (JSON name, type, repeated)}; a type is a scalar name or a message name
_S, _I, _B = "string", "int", "bool"
SCHEMAS: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta", False), 2: ("raw", "bytes", False),
                3: ("contentEncoding", _S, False), 4: ("contentType", _S, False)},
    "TypeMeta": {1: ("apiVersion", _S, False), 2: ("kind", _S, False)},
    "ObjectMeta": {1: ("name", _S, False), 2: ("generateName", _S, False), 3: ("namespace", _S, False),
                   5: ("uid", _S, False), 6: ("resourceVersion", _S, False), 7: ("generation", _I, False),
                   8: ("creationTimestamp", "Time", False), 11: ("labels", "map", True),
                   12: ("annotations", "map", True), 14: ("finalizers", _S, True)},
    "MapEntry": {1: ("key", _S, False), 2: ("value", _S, False)},
    "Time": {1: ("seconds", _I, False), 2: ("nanos", _I, False)},
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False)},
    "NamespaceSpec": {1: ("finalizers", _S, True)},
    "ServiceAccount": {1: ("metadata", "ObjectMeta", False), 2: ("secrets", "ObjectReference", True),
                       3: ("imagePullSecrets", "LocalObjectReference", True),
                       4: ("automountServiceAccountToken", _B, False)},
    "ObjectReference": {1: ("kind", _S, False), 2: ("namespace", _S, False), 3: ("name", _S, False),
                        4: ("uid", _S, False), 5: ("apiVersion", _S, False)},
    "LocalObjectReference": {1: ("name", _S, False)},
    "TokenRequest": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "TokenRequestSpec", False)},
    "TokenRequestSpec": {1: ("audiences", _S, True), 3: ("boundObjectRef", "BoundObjectReference", False),
                         4: ("expirationSeconds", _I, False)},
    "BoundObjectReference": {1: ("kind", _S, False), 2: ("apiVersion", _S, False), 3: ("name", _S, False),
                             4: ("uid", _S, False)},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta", False)},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "SelfSubjectAccessReviewSpec", False)},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes", False),
                                    2: ("nonResourceAttributes", "NonResourceAttributes", False)},
    "ResourceAttributes": {1: ("namespace", _S, False), 2: ("verb", _S, False), 3: ("group", _S, False),
                           4: ("version", _S, False), 5: ("resource", _S, False), 6: ("subresource", _S, False),
                           7: ("name", _S, False)},
    "NonResourceAttributes": {1: ("path", _S, False), 2: ("verb", _S, False)},
    "SelfSubjectRulesReview": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "SelfSubjectRulesReviewSpec", False)},
    "SelfSubjectRulesReviewSpec": {1: ("namespace", _S, False)},
    "Role": {1: ("metadata", "ObjectMeta", False), 2: ("rules", "PolicyRule", True)},
    "ClusterRole": {1: ("metadata", "ObjectMeta", False), 2: ("rules", "PolicyRule", True),
                    3: ("aggregationRule", "AggregationRule", False)},
    "PolicyRule": {1: ("verbs", _S, True), 2: ("apiGroups", _S, True), 3: ("resources", _S, True),
                   4: ("resourceNames", _S, True), 5: ("nonResourceURLs", _S, True)},
    "AggregationRule": {1: ("clusterRoleSelectors", "LabelSelector", True)},
    "LabelSelector": {1: ("matchLabels", "map", True), 2: ("matchExpressions", "LabelSelectorRequirement", True)},
    "LabelSelectorRequirement": {1: ("key", _S, False), 2: ("operator", _S, False), 3: ("values", _S, True)},
    "RoleBinding": {1: ("metadata", "ObjectMeta", False), 2: ("subjects", "Subject", True),
                    3: ("roleRef", "RoleRef", False)},
    "ClusterRoleBinding": {1: ("metadata", "ObjectMeta", False), 2: ("subjects", "Subject", True),
                           3: ("roleRef", "RoleRef", False)},
    "Subject": {1: ("kind", _S, False), 2: ("apiGroup", _S, False), 3: ("name", _S, False),
                4: ("namespace", _S, False)},
    "RoleRef": {1: ("apiGroup", _S, False), 2: ("kind", _S, False), 3: ("name", _S, False)},
    "DeleteOptions": {},
}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of each field: varints as int, length-delimited as bytes."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            value, i = data[i:i + length], i + length
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_message(data: bytes, message: str) -> dict:
    schema = SCHEMAS[message]
    out: dict[str, Any] = {}
    for number, _wire, value in _fields(data):
        if number not in schema:
            continue
        name, kind, repeated = schema[number]
        if kind == _S:
            item: Any = value.decode("utf-8")
        elif kind == "bytes":
            item = bytes(value)
        elif kind == _I:
            item = _signed(value) if isinstance(value, int) else 0
        elif kind == _B:
            item = bool(value)
        elif kind == "map":
            entry = decode_message(value, "MapEntry")
            out.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
            continue
        elif kind == "Time":
            t = decode_message(value, "Time")
            if not t.get("seconds"):
                continue                        # the zero time: JSON writes null, as if absent
            item = datetime.fromtimestamp(t["seconds"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            item = decode_message(value, kind)
        if not repeated and item in ("", 0, False) and not isinstance(item, dict):
            continue                            # gogo writes empty scalars; JSON omits them (omitempty)
        if repeated:
            out.setdefault(name, []).append(item)
        else:
            out[name] = item
    return out


def decode(body: bytes) -> dict:
    """A `k8s\\0` + runtime.Unknown body as the JSON object it stands for (kind and apiVersion
    from its typeMeta). ValueError when it is not one, or of a kind not known here."""
    if not body.startswith(MAGIC):
        raise ValueError("the body does not start with the protobuf magic number k8s\\x00")
    unknown = decode_message(body[len(MAGIC):], "Unknown")
    type_meta = unknown.get("typeMeta") or {}
    kind = type_meta.get("kind", "")
    if kind not in SCHEMAS or kind in ("Unknown", "TypeMeta", "ObjectMeta"):
        raise ValueError(f"no protobuf decoder for kind {kind!r} in the k8sboot stand-in")
    obj = decode_message(unknown.get("raw", b""), kind)
    return {"kind": kind, "apiVersion": type_meta.get("apiVersion", ""), **obj}
