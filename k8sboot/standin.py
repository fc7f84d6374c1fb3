"""A kube-apiserver STAND-IN for the k8sboot lab. It is NOT Kubernetes.

No real kube-apiserver binary can be downloaded where the lab runs, so `k8sboot lab up` installs
this module on every lab host, launched by `/usr/local/bin/kube-apiserver`. It behaves like the
real binary where k8sboot and its users can observe Stage 1 (authentication) and little else:

* It parses the real binary's flags (pflag rules: `--flag=value` and `--flag value`; bools as
  `--anonymous-auth` or `--anonymous-auth=false`, never consuming the next argument; repeatable
  `--service-account-issuer` and `--service-account-key-file`; comma lists such as
  `--api-audiences`); an unknown flag is `Error: unknown flag: --x`, exit 1, like cobra.
* It refuses to start, exit 1, with the real messages: `--etcd-servers must be specified`;
  without `--service-account-issuer`:
  `Error: [service-account-issuer is a required flag, --service-account-signing-key-file and --service-account-issuer are required flags]`;
  without only the signing key, the second message alone; and when a file named by a flag cannot
  be read (the message names the flag and the path, Go-style `open <path>: <why>`).
* It serves HTTPS on `--bind-address`:`--secure-port` with `--tls-cert-file`/`--tls-private-key-file`
  and authenticates every request with `k8sboot.authn` (the same code as `k8sboot whoami`) per
  `--client-ca-file`, `--service-account-key-file`, `--service-account-issuer`, `--api-audiences`
  (default: the issuers) and `--anonymous-auth` (default true, like the real binary).
* Stage 2 is a minimal stand-in for the default RBAC policy: system:masters may do anything;
  everyone may GET /healthz, /livez, /readyz, /version; system:authenticated may GET discovery
  (/api, /apis, /openapi) and create self-subject reviews; anything else is a 403 with the API
  server's Status JSON (`pods is forbidden: User "system:anonymous" cannot list resource "pods"
  in API group "" in the namespace "default"`). A 401 carries Status reason Unauthorized.
* Served: `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (201, so `kubectl auth whoami`
  prints Username/Groups/Extra), `/version` (gitVersion `v0.0.0-k8sboot-standin`), `/livez`,
  `/readyz`, `/healthz`, minimal discovery; for system:masters, lists are empty (there is no
  etcd), a named object is NotFound, and writes answer a Success Status without storing anything.
* Every request is logged to stderr (the journal) with its identity and decision.

TLS and client certificates. Go's server (the real one) asks for a client certificate without
verifying it in the handshake and leaves the decision to the x509 authenticator, so a certificate
from an unknown CA gets an HTTP 401. Python's `ssl` cannot do that (it verifies whatever it
requests). When pyOpenSSL is importable (Debian's python3-openssl, in the lab's root) the stand-in
uses it the same way as Go: it requests a certificate naming the --client-ca-file CAs, accepts any
in the handshake, and authn decides (exact 401). Without pyOpenSSL it falls back to `ssl` with
CERT_OPTIONAL and the client CA: a certificate that does not verify then fails the TLS handshake
instead of getting a 401 (the one observable difference). `K8SBOOT_STANDIN_TLS=ssl|pyopenssl`
forces a backend. A server certificate is required (the real binary would self-sign one).

Runs on Debian bookworm's python3 with python3-cryptography 38 and python3-jwt 2.6: it imports
the standard library, `k8sboot.authn` and (optionally) OpenSSL only.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
MAX_BODY = 3 * 1024 * 1024          # the real server's limit for most requests
IDLE_TIMEOUT = 60.0

# --- flags -------------------------------------------------------------------------------------

BOOL, STRING, INT, ARRAY, SLICE = "bool", "string", "int", "stringArray", "stringSlice"

# kube-apiserver 1.32 flags (name -> pflag type). Bools never take the next argument.
FLAG_TYPES: dict[str, str] = {
    # generic
    "advertise-address": STRING, "cors-allowed-origins": SLICE, "default-not-ready-toleration-seconds": INT,
    "default-unreachable-toleration-seconds": INT, "enable-priority-and-fairness": BOOL,
    "external-hostname": STRING, "feature-gates": STRING, "goaway-chance": STRING, "livez-grace-period": STRING,
    "max-mutating-requests-inflight": INT, "max-requests-inflight": INT, "min-request-timeout": INT,
    "request-timeout": STRING, "shutdown-delay-duration": STRING, "shutdown-send-retry-after": BOOL,
    "shutdown-watch-termination-grace-period": STRING, "strict-transport-security-directives": SLICE,
    "aggregator-reject-forwarding-redirect": BOOL, "emulated-version": SLICE,
    "cloud-provider": STRING, "cloud-config": STRING,
    # etcd
    "delete-collection-workers": INT, "enable-garbage-collector": BOOL, "encryption-provider-config": STRING,
    "encryption-provider-config-automatic-reload": BOOL, "etcd-cafile": STRING, "etcd-certfile": STRING,
    "etcd-compaction-interval": STRING, "etcd-count-metric-poll-period": STRING,
    "etcd-db-metric-poll-interval": STRING, "etcd-healthcheck-timeout": STRING, "etcd-keyfile": STRING,
    "etcd-prefix": STRING, "etcd-readycheck-timeout": STRING, "etcd-servers": SLICE,
    "etcd-servers-overrides": SLICE, "lease-reuse-duration-seconds": INT, "storage-backend": STRING,
    "storage-media-type": STRING, "watch-cache": BOOL, "watch-cache-sizes": SLICE,
    # secure serving
    "bind-address": STRING, "cert-dir": STRING, "http2-max-streams-per-connection": INT,
    "permit-address-sharing": BOOL, "permit-port-sharing": BOOL, "secure-port": INT,
    "tls-cert-file": STRING, "tls-cipher-suites": SLICE, "tls-min-version": STRING,
    "tls-private-key-file": STRING, "tls-sni-cert-key": ARRAY,
    # auditing
    **{f"audit-log-{n}": t for n, t in (
        ("batch-buffer-size", INT), ("batch-max-size", INT), ("batch-max-wait", STRING),
        ("batch-throttle-burst", INT), ("batch-throttle-enable", BOOL), ("batch-throttle-qps", STRING),
        ("compress", BOOL), ("format", STRING), ("maxage", INT), ("maxbackup", INT), ("maxsize", INT),
        ("mode", STRING), ("path", STRING), ("truncate-enabled", BOOL), ("truncate-max-batch-size", INT),
        ("truncate-max-event-size", INT), ("version", STRING))},
    "audit-policy-file": STRING,
    **{f"audit-webhook-{n}": t for n, t in (
        ("batch-buffer-size", INT), ("batch-max-size", INT), ("batch-max-wait", STRING),
        ("batch-throttle-burst", INT), ("batch-throttle-enable", BOOL), ("batch-throttle-qps", STRING),
        ("config-file", STRING), ("initial-backoff", STRING), ("mode", STRING), ("truncate-enabled", BOOL),
        ("truncate-max-batch-size", INT), ("truncate-max-event-size", INT), ("version", STRING))},
    # features
    "contention-profiling": BOOL, "debug-socket-path": STRING, "profiling": BOOL,
    # authentication
    "anonymous-auth": BOOL, "api-audiences": SLICE, "authentication-config": STRING,
    "authentication-token-webhook-cache-ttl": STRING, "authentication-token-webhook-config-file": STRING,
    "authentication-token-webhook-version": STRING, "client-ca-file": STRING,
    "enable-bootstrap-token-auth": BOOL, "oidc-ca-file": STRING, "oidc-client-id": STRING,
    "oidc-groups-claim": STRING, "oidc-groups-prefix": STRING, "oidc-issuer-url": STRING,
    "oidc-required-claim": STRING, "oidc-signing-algs": SLICE, "oidc-username-claim": STRING,
    "oidc-username-prefix": STRING, "requestheader-allowed-names": SLICE,
    "requestheader-client-ca-file": STRING, "requestheader-extra-headers-prefix": SLICE,
    "requestheader-group-headers": SLICE, "requestheader-username-headers": SLICE,
    "requestheader-uid-headers": SLICE, "service-account-extend-token-expiration": BOOL,
    "service-account-issuer": ARRAY, "service-account-jwks-uri": STRING, "service-account-key-file": ARRAY,
    "service-account-lookup": BOOL, "service-account-max-token-expiration": STRING, "token-auth-file": STRING,
    # authorization
    "authorization-config": STRING, "authorization-mode": SLICE, "authorization-policy-file": STRING,
    "authorization-webhook-cache-authorized-ttl": STRING, "authorization-webhook-cache-unauthorized-ttl": STRING,
    "authorization-webhook-config-file": STRING, "authorization-webhook-version": STRING,
    # API enablement, egress, admission
    "runtime-config": STRING, "egress-selector-config-file": STRING, "admission-control-config-file": STRING,
    "disable-admission-plugins": SLICE, "enable-admission-plugins": SLICE, "admission-control": SLICE,
    # metrics, logs, traces
    "allow-metric-labels": STRING, "allow-metric-labels-manifest": STRING, "disabled-metrics": SLICE,
    "show-hidden-metrics-for-version": STRING, "log-flush-frequency": STRING,
    "log-json-info-buffer-size": STRING, "log-json-split-stream": BOOL, "log-text-info-buffer-size": STRING,
    "log-text-split-stream": BOOL, "logging-format": STRING, "v": INT, "vmodule": STRING,
    "tracing-config-file": STRING,
    # misc
    "allow-privileged": BOOL, "apiserver-count": INT, "enable-aggregator-routing": BOOL,
    "endpoint-reconciler-type": STRING, "event-ttl": STRING, "kubelet-certificate-authority": STRING,
    "kubelet-client-certificate": STRING, "kubelet-client-key": STRING,
    "kubelet-preferred-address-types": SLICE, "kubelet-timeout": STRING, "kubernetes-service-node-port": INT,
    "max-connection-bytes-per-sec": INT, "peer-advertise-ip": STRING, "peer-advertise-port": STRING,
    "peer-ca-file": STRING, "proxy-client-cert-file": STRING, "proxy-client-key-file": STRING,
    "service-account-signing-key-file": STRING, "service-cluster-ip-range": STRING,
    "service-node-port-range": STRING, "enable-logs-handler": BOOL,
    # cobra / version
    "help": BOOL, "version": "version",
}
SHORTHANDS = {"h": "help", "v": "v"}

# Flags naming a file the real binary reads at startup (checked in this order).
FILE_FLAGS = (
    "tls-cert-file", "tls-private-key-file", "client-ca-file", "requestheader-client-ca-file",
    "service-account-key-file", "service-account-signing-key-file", "encryption-provider-config",
    "etcd-cafile", "etcd-certfile", "etcd-keyfile", "kubelet-certificate-authority",
    "kubelet-client-certificate", "kubelet-client-key", "proxy-client-cert-file", "proxy-client-key-file",
    "audit-policy-file", "authorization-policy-file", "token-auth-file", "admission-control-config-file",
    "egress-selector-config-file", "tracing-config-file", "authentication-config", "authorization-config",
    "oidc-ca-file", "peer-ca-file",
)
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


class FlagError(Exception):
    """A command line the real binary would refuse (printed as `Error: <message>`, exit 1)."""


@dataclass(frozen=True)
class Flags:
    """The parsed command line: only the flags given (`given`), with typed values."""

    values: dict = field(default_factory=dict)
    order: tuple = ()                      # (name, raw value) as given, for the FLAG: log lines

    def given(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    @property
    def bind_address(self) -> str:
        return self.get("bind-address", "0.0.0.0")

    @property
    def secure_port(self) -> int:
        return self.get("secure-port", 6443)

    @property
    def anonymous_auth(self) -> bool:
        return self.get("anonymous-auth", True)      # the real binary's default

    @property
    def service_account_issuers(self) -> list:
        return self.get("service-account-issuer", [])

    @property
    def service_account_key_files(self) -> list:
        return self.get("service-account-key-file", [])

    @property
    def api_audiences(self) -> list:
        return self.get("api-audiences", [])

    @property
    def verbosity(self) -> int:
        return self.get("v", 0)


def _parse_bool(name: str, raw: str) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise FlagError(f'invalid argument "{raw}" for "--{name}" flag: strconv.ParseBool: parsing "{raw}": invalid syntax')


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw, 0) if raw.lower().startswith(("0x", "0o", "0b")) else int(raw)
    except ValueError:
        raise FlagError(f'invalid argument "{raw}" for "--{name}" flag: strconv.ParseInt: parsing "{raw}": '
                        "invalid syntax") from None


def parse_flags(argv: list[str]) -> Flags:
    """pflag's rules for kube-apiserver's command line; FlagError with cobra's message."""
    values: dict = {}
    order: list = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            shown = f"--{name}"
            if not name or name.startswith("-") or name.startswith("="):
                raise FlagError(f"bad flag syntax: {arg}")
        else:
            short, eq, raw = arg[1:].partition("=")
            if len(short) != 1:
                # -vN style: pflag reads "-v2" as shorthand v with value 2
                short, raw, eq = short[0], short[1:] + (eq + raw if eq else ""), "="
            if short not in SHORTHANDS:
                raise FlagError(f"unknown shorthand flag: '{short}' in {arg}")
            name, shown = SHORTHANDS[short], f"-{short}"
        kind = FLAG_TYPES.get(name)
        if kind is None:
            raise FlagError(f"unknown flag: {shown}")
        if kind in (BOOL, "version"):
            if not eq:
                raw = "true"
            if kind == "version":
                if raw not in ("raw",) and raw not in _TRUE + _FALSE:
                    raise FlagError(f'invalid argument "{raw}" for "--version" flag: unrecognized version')
                values[name] = "raw" if raw == "raw" else raw in _TRUE
            else:
                values[name] = _parse_bool(name, raw)
            order.append((name, raw))
            continue
        if not eq:
            if i >= len(argv):
                raise FlagError(f"flag needs an argument: {shown}")
            raw = argv[i]
            i += 1
        order.append((name, raw))
        if kind == INT:
            values[name] = _parse_int(name, raw)
        elif kind == ARRAY:
            values.setdefault(name, []).append(raw)
        elif kind == SLICE:
            values.setdefault(name, []).extend(v.strip() for v in raw.split(",") if v.strip())
        else:
            values[name] = raw
    if [a for a in positional if a]:
        args = "[" + " ".join(json.dumps(a) for a in positional) + "]"
        raise FlagError(f'"kube-apiserver" does not take any arguments, got {args}')
    return Flags(values=values, order=tuple(order))


def validate_flags(flags: Flags) -> list[str]:
    """The real binary's validation errors for what the stand-in implements, in its order."""
    errors = []
    if not flags.get("etcd-servers"):
        errors.append("--etcd-servers must be specified")
    port = flags.secure_port
    if not 1 <= port <= 65535:
        errors.append(f"--secure-port {port} must be between 1 and 65535, inclusive. It cannot be turned off with 0")
    if not flags.service_account_issuers:
        errors.append("service-account-issuer is a required flag")
    if not flags.get("service-account-signing-key-file") or not flags.service_account_issuers:
        errors.append("--service-account-signing-key-file and --service-account-issuer are required flags")
    if not flags.get("tls-cert-file") or not flags.get("tls-private-key-file"):
        errors.append("the k8sboot stand-in needs --tls-cert-file and --tls-private-key-file "
                      "(the real binary would self-sign a certificate in --cert-dir)")
    return errors


def render_errors(errors: list[str]) -> str:
    """utilerrors.NewAggregate's text: one error as is, several in brackets."""
    return errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"


def _go_open_error(path: str, exc: OSError) -> str:
    why = (exc.strerror or str(exc)).strip()
    return f"open {path}: {why[:1].lower() + why[1:]}"


def check_files(flags: Flags) -> str | None:
    """The first file named by a flag that cannot be read: `unable to read --flag <path>: open ...`."""
    for name in FILE_FLAGS:
        value = flags.get(name)
        for path in (value if isinstance(value, list) else [value] if value else []):
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as exc:
                return f"unable to read --{name} {path}: {_go_open_error(path, exc)}"
    return None


def check_signing_key(path: str) -> str | None:
    """The signing key must be a PEM private key (the real binary parses it at startup)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        return f"unable to read --service-account-signing-key-file {path}: {_go_open_error(path, exc)}"
    if b"PRIVATE KEY-----" not in text:
        return (f"failed to parse service-account-issuer-key-file: --service-account-signing-key-file "
                f"{path}: data does not contain a private key")
    return None


# --- request attributes and the minimal Stage 2 --------------------------------------------------

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
            return 200, "ok"
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


# --- logging (klog-like lines on stderr: the unit's journal) --------------------------------------

_log_lock = threading.Lock()


def new_audit_id() -> str:
    """A random (version 4) UUID for the Audit-Id header, without importing `uuid` (~3 ms of
    start-up on every lab host)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def log(message: str, level: str = "I", stream=None) -> None:
    now = datetime.now()
    line = f"{level}{now:%m%d %H:%M:%S.%f} {os.getpid():7d} standin.py] {message}\n"
    out = stream or sys.stderr
    with _log_lock:
        out.write(line)
        out.flush()


def _q(s: object) -> str:
    return json.dumps(str(s))


# --- TLS backends --------------------------------------------------------------------------------


class _Writer(io.RawIOBase):
    def __init__(self, conn):
        self._conn = conn

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._conn.sendall(bytes(b))
        return len(b)


class _Reader(io.RawIOBase):
    def __init__(self, conn):
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._conn.recv_into(b)


class _StdlibConn:
    """Python's ssl: verifies the client cert against --client-ca-file in the handshake."""

    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock

    def handshake(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.do_handshake()
        self.sock.settimeout(IDLE_TIMEOUT)

    def peer_certificates(self) -> tuple[bytes | None, tuple[bytes, ...]]:
        return self.sock.getpeercert(binary_form=True), ()

    def recv_into(self, b) -> int:
        try:
            return self.sock.recv_into(b)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            return 0

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _OpenSSLConn:
    """pyOpenSSL over a socket with a timeout: retries WantRead/WantWrite with select()."""

    def __init__(self, conn, sock: socket.socket, SSL):
        self.conn, self.sock, self.SSL = conn, sock, SSL
        self.timeout = IDLE_TIMEOUT

    def _wait(self, for_write: bool) -> None:
        r, w, _ = select.select([] if for_write else [self.sock], [self.sock] if for_write else [], [],
                                self.timeout)
        if not r and not w:
            raise socket.timeout("timed out")

    def _retry(self, fn, *args):
        SSL = self.SSL
        while True:
            try:
                return fn(*args)
            except SSL.WantReadError:
                self._wait(False)
            except SSL.WantWriteError:
                self._wait(True)

    def handshake(self, timeout: float) -> None:
        self.timeout = timeout
        self.sock.settimeout(0)
        try:
            self._retry(self.conn.do_handshake)
        except self.SSL.Error as exc:
            raise ssl.SSLError(f"{_openssl_reason(exc)}") from exc
        self.timeout = IDLE_TIMEOUT

    def peer_certificates(self) -> tuple[bytes | None, tuple[bytes, ...]]:
        from OpenSSL import crypto

        leaf = self.conn.get_peer_certificate()
        if leaf is None:
            return None, ()
        leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
        chain = self.conn.get_peer_cert_chain() or []
        inter = tuple(d for d in (crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain) if d != leaf_der)
        return leaf_der, inter

    def recv_into(self, b) -> int:
        SSL = self.SSL
        try:
            return self._retry(self.conn.recv_into, b)
        except (SSL.ZeroReturnError, SSL.SysCallError, ConnectionResetError):
            return 0

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._retry(self.conn.send, bytes(view[:16384]))
            view = view[n:]

    def close(self) -> None:
        try:
            self.conn.shutdown()
        except Exception:     # noqa: BLE001 - best effort close_notify on a dying connection
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _openssl_reason(exc: Exception) -> str:
    try:
        return "; ".join(e[2] for e in exc.args[0]) or str(exc)
    except Exception:          # noqa: BLE001
        return str(exc) or exc.__class__.__name__


class TLSBackend:
    name = ""

    def wrap(self, sock: socket.socket):
        raise NotImplementedError


class StdlibTLS(TLSBackend):
    name = "python-ssl"

    def __init__(self, cert: str, key: str, client_ca: str | None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        self.ctx = ctx

    def wrap(self, sock: socket.socket):
        return _StdlibConn(self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False))


class OpenSSLTLS(TLSBackend):
    name = "pyopenssl"

    def __init__(self, cert: str, key: str, client_ca: str | None):
        from OpenSSL import SSL

        self.SSL = SSL
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
        ctx.set_session_id(b"k8sboot-standin")
        if client_ca:
            # like Go's tls.RequestClientCert: ask (naming our CAs), accept anything, let authn decide
            ctx.load_client_ca(client_ca.encode())
            ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
        self.ctx = ctx

    def wrap(self, sock: socket.socket):
        conn = self.SSL.Connection(self.ctx, sock)
        conn.set_accept_state()
        return _OpenSSLConn(conn, sock, self.SSL)


def make_tls(cert: str, key: str, client_ca: str | None, backend: str | None = None) -> TLSBackend:
    """pyOpenSSL when importable (or asked for), else Python's ssl; see the module docstring."""
    backend = backend or os.environ.get("K8SBOOT_STANDIN_TLS", "auto")
    if backend in ("auto", "pyopenssl"):
        try:
            import OpenSSL.SSL  # noqa: F401
        except ImportError:
            if backend == "pyopenssl":
                raise
        else:
            return OpenSSLTLS(cert, key, client_ca)
    return StdlibTLS(cert, key, client_ca)


# --- the server ----------------------------------------------------------------------------------


# --- HTTP/1.1 ------------------------------------------------------------------------------------
# What the stand-in needs of HTTP/1.1, answered as Go's net/http (the real server's) answers: a
# request line and a header block within size limits; a body by Content-Length or chunked;
# keep-alive unless `Connection: close` or HTTP/1.0; `100 Continue` for `Expect: 100-continue`;
# and for a request it cannot read, Go's plain-text "400 Bad Request" (431, 505) and a close.
# Python's http.server would cost every lab host ~13 ms of imports at each start (http.client,
# the email package, html, mimetypes), and its error pages are not the API server's.

MAX_LINE = 65536              # bytes in a request line or a header line
MAX_HEADER_LINES = 100
REASONS = {100: "Continue", 200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Request Entity Too Large",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def http_date(when: float | None = None) -> str:
    """The Date header: `Sat, 28 Nov 2026 23:37:09 GMT`."""
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class Headers:
    """A request's header fields; `get` is case-insensitive and gives a repeated field's first
    value, as Go's Header.Get does."""

    def __init__(self):
        self._fields: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self._fields.setdefault(name.lower(), value)

    def get(self, name: str, default=None):
        return self._fields.get(name.lower(), default)


class BadRequest(Exception):
    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code


def read_request_head(rfile) -> tuple[str, str, str, Headers] | None:
    """(method, target, version, headers) of the next request; None when the client closed the
    connection between requests. BadRequest for what cannot be read."""
    line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise BadRequest(431, "request line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise BadRequest(400, "malformed HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, "unsupported protocol version")
    headers = Headers()
    for _ in range(MAX_HEADER_LINES):
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise BadRequest(431, "header line too long")
        if line in (b"\r\n", b"\n"):
            return method, target, version, headers
        if not line:
            raise BadRequest(400, "the header block ended early")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or not set(name) <= _TOKEN:
            raise BadRequest(400, "malformed header line")
        headers.add(name, value.strip(" \t\r\n"))
    raise BadRequest(431, "too many header lines")


class HTTPHandler(socketserver.BaseRequestHandler):
    """One connection: requests one after another, each dispatched to `do_<METHOD>`, which
    answers with send_response / send_header / end_headers and writes the body to wfile."""

    rfile: io.BufferedReader
    wfile: io.BufferedWriter

    def handle(self) -> None:
        self.close_connection = False
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        self._head: list[str] = []
        try:
            head = read_request_head(self.rfile)
        except BadRequest as exc:
            self.close_connection = True
            body = f"{exc.code} {REASONS[exc.code]}"
            self.wfile.write(f"HTTP/1.1 {body}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             f"Connection: close\r\n\r\n{body}".encode())
            self.wfile.flush()
            return
        if head is None:
            self.close_connection = True
            return
        self.command, self.path, self.request_version, self.headers = head
        connection = (self.headers.get("Connection") or "").lower()
        self.close_connection = connection == "close" or (self.request_version == "HTTP/1.0"
                                                          and connection != "keep-alive")
        if (self.headers.get("Expect") or "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.close_connection = True
            self.send_response(405)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "18")
            self.end_headers()
            self.wfile.write(b"Method Not Allowed")
            self.wfile.flush()
            return
        method()

    def send_response(self, code: int) -> None:
        self._head = [f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}", f"Date: {http_date()}"]

    def send_header(self, name: str, value: str) -> None:
        self._head.append(f"{name}: {value}")

    def end_headers(self) -> None:
        if self.close_connection:
            self._head.append("Connection: close")
        self.wfile.write(("\r\n".join(self._head) + "\r\n\r\n").encode("latin-1"))
        self._head = []


class StandinServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], tls: TLSBackend, config: authn.AuthenticatorConfig,
                 clock=None, verbosity: int = 0):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tls = tls
        self.config = config
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.verbosity = verbosity
        super().__init__(address, StandinHandler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.tls.wrap(sock), addr

    def shutdown_request(self, request) -> None:
        request.close()

    def close_request(self, request) -> None:
        request.close()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        log(f'"Connection error" srcIP="{client_address[0]}:{client_address[1]}" err={_q(exc)}', level="E")


class StandinHandler(HTTPHandler):
    server: StandinServer

    def setup(self) -> None:
        self.tls_conn = self.request
        self.ok = True
        try:
            self.tls_conn.handshake(10.0)
        except (OSError, ssl.SSLError) as exc:
            # the real server: "http: TLS handshake error from 10.240.0.1:51234: remote error: ..."
            log(f"http: TLS handshake error from {self.client_address[0]}:{self.client_address[1]}: {exc}")
            self.ok = False
        self.rfile = io.BufferedReader(_Reader(self.tls_conn), 65536)
        self.wfile = io.BufferedWriter(_Writer(self.tls_conn), 65536)

    def handle(self) -> None:
        if self.ok:
            try:
                super().handle()
            except (socket.timeout, ConnectionError, ssl.SSLError):
                self.close_connection = True

    def finish(self) -> None:
        try:
            self.wfile.flush()
        except (OSError, ValueError, ssl.SSLError):
            pass

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > MAX_BODY:
                    return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _reply(self, code: int, body: object, audit_id: str) -> None:
        if isinstance(body, (dict, list)):
            data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
            ctype = "application/json"
        else:
            data = str(body).encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Audit-Id", audit_id)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", ctype)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _serve(self) -> None:
        t0 = time.monotonic()
        audit_id = new_audit_id()
        body = self._read_body()
        src = f"{self.client_address[0]}:{self.client_address[1]}"
        if body is None:
            self.close_connection = True
            self._reply(413, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": "the request body is too large", "reason": "RequestEntityTooLarge",
                              "code": 413}, audit_id)
            return
        now = self.server.clock()
        leaf, inter = self.tls_conn.peer_certificates()
        result = authn.authenticate_request(leaf, self.headers.get("Authorization"), self.server.config, now,
                                            intermediates_der=inter)
        info = parse_request_info(self.command, self.path)
        shown_verb = info.verb.upper() if info.is_resource else self.command
        if not result.authenticated:
            code, reply, decision, who = 401, result.status(), "unauthorized", ""
            extra = f" reason={_q(result.reason)}"
        else:
            user = result.user
            who = f" user={_q(user.username)} groups={json.dumps(list(user.groups))} authn={_q(result.authenticator)}"
            extra = ""
            if authorize(user, info):
                code, reply = route(info, user, result, now)
                decision = "allowed"
            else:
                code, reply, decision = 403, forbidden_status(user, info), "forbidden"
        latency = (time.monotonic() - t0) * 1000
        log(f'"HTTP" verb={_q(shown_verb)} URI={_q(self.path)}{who} decision={_q(decision)}{extra} '
            f'resp={code} latency="{latency:.1f}ms" userAgent={_q(self.headers.get("User-Agent", ""))} '
            f'audit-ID={_q(audit_id)} srcIP={_q(src)}')
        self._reply(code, reply, audit_id)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


# --- main ----------------------------------------------------------------------------------------

USAGE = f"""\
{BANNER}

The Kubernetes API server validates and configures data for the api objects. THIS IS A STAND-IN:
it implements kube-apiserver's flags and Stage-1 authentication (x509 client certificates,
ServiceAccount tokens, anonymous) for the k8sboot lab, with a minimal default authorization. It
stores nothing and runs no controllers.

Usage:
  kube-apiserver [flags]

Flags used by the stand-in (every kube-apiserver 1.32 flag is accepted):
      --advertise-address ip, --bind-address ip (default 0.0.0.0), --secure-port int (default 6443)
      --tls-cert-file string, --tls-private-key-file string
      --client-ca-file string
      --anonymous-auth (default true)
      --service-account-issuer stringArray, --service-account-key-file stringArray,
      --service-account-signing-key-file string, --api-audiences strings
      --etcd-servers strings (required, never dialled)
      --version version[=true]
"""


def build_server(flags: Flags, config: authn.AuthenticatorConfig, port: int | None = None,
                 tls_backend: str | None = None, clock=None) -> StandinServer:
    tls = make_tls(flags.get("tls-cert-file"), flags.get("tls-private-key-file"), flags.get("client-ca-file"),
                   tls_backend)
    address = (flags.bind_address, flags.secure_port if port is None else port)
    return StandinServer(address, tls, config, clock=clock, verbosity=flags.verbosity)


def load_config(flags: Flags) -> authn.AuthenticatorConfig:
    return authn.load_authenticator_config(
        client_ca_file=flags.get("client-ca-file"),
        service_account_key_files=flags.service_account_key_files,
        service_account_issuers=flags.service_account_issuers,
        api_audiences=flags.api_audiences,
        anonymous_auth=flags.anonymous_auth)


def _fail(message: str) -> int:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags = parse_flags(argv)
    except FlagError as exc:
        return _fail(str(exc))
    if flags.get("help"):
        sys.stdout.write(USAGE)
        return 0
    if flags.get("version") == "raw":
        sys.stdout.write(json.dumps(VERSION_INFO, indent=2) + "\n")
        return 0
    if flags.get("version"):
        sys.stdout.write(f"Kubernetes {GIT_VERSION} ({BANNER})\n")
        return 0
    log(f'"{BANNER}" version={_q(GIT_VERSION)} python={_q(sys.version.split()[0])}')
    for name, raw in flags.order:
        if flags.verbosity >= 1:
            log(f"FLAG: --{name}={_q(raw)}")
    errors = validate_flags(flags)
    if errors:
        return _fail(render_errors(errors))
    problem = check_files(flags) or check_signing_key(flags.get("service-account-signing-key-file"))
    if problem:
        return _fail(problem)
    try:
        config = load_config(flags)
    except authn.AuthnConfigError as exc:
        return _fail(str(exc))
    try:
        server = build_server(flags, config)
    except (ssl.SSLError, ValueError) as exc:
        return _fail(f"unable to load server certificate: {exc}")
    except OSError as exc:
        if exc.errno is not None and exc.strerror:
            addr = f"{flags.bind_address}:{flags.secure_port}"
            return _fail(f"failed to listen on {addr}: listen tcp {addr}: bind: {exc.strerror.lower()}")
        return _fail(f"unable to load server certificate: {exc}")
    except Exception as exc:   # noqa: BLE001 - pyOpenSSL's errors when loading the key pair
        return _fail(f"unable to load server certificate: {_openssl_reason(exc)}")

    def stop(signum, frame):
        log(f'"Received signal, shutting down" signal={_q(signal.Signals(signum).name)}')
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log(f'"Serving securely (k8sboot stand-in, not Kubernetes)" address="{flags.bind_address}:{port}" '
        f'tls={_q(server.tls.name)} clientCA={_q(flags.get("client-ca-file") or "")} '
        f'anonymousAuth={str(flags.anonymous_auth).lower()} issuers={json.dumps(flags.service_account_issuers)} '
        f'audiences={json.dumps(list(config.audiences))} saKeys={len(config.service_account_keys)}')
    try:
        server.serve_forever(poll_interval=0.5)
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
