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
* Health and graceful restarts, as the real server (k8s.io/apiserver's healthz handler and
  lifecycle signals). `/livez`, `/healthz`, `/readyz` answer `ok`; `?verbose` lists the real 1.32
  check names (`[+]ping ok` ... `readyz check passed`; no etcd checks: there is no etcd); a failing
  endpoint always lists them, `[-]<check> failed: reason withheld`, then `readyz check failed`, HTTP
  500 (the reasons go to the journal at --v=2). On SIGTERM or SIGINT: /readyz fails at once
  (`[-]shutdown failed`) while /livez stays ok and every request is still served for
  `--shutdown-delay-duration` (Go duration, default 0s); then, with `--shutdown-send-retry-after`,
  new requests other than health probes get 429, `Retry-After: 5`, `Connection: close` and `The
  apiserver is shutting down, please try again later.` while requests in flight drain, then the
  port closes; without it the port closes at once and requests in flight drain. The drain is
  bounded by `--request-timeout` (default 1m0s); then exit 0. A second signal exits 1 at once.
  Start-up: `K8SBOOT_STANDIN_READY_DELAY=<seconds>` (a lab-only systemd drop-in sets it) keeps
  /readyz failing that long after the port opens, naming unfinished post-start hooks
  (`[-]poststarthook/rbac/bootstrap-roles failed: reason withheld`), as a real server does while
  it fills its caches; /livez stays ok meanwhile (the real one also lists those hooks in /livez
  unless --livez-grace-period covers them).

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
import re
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

BOOL, STRING, INT, ARRAY, SLICE, DURATION = "bool", "string", "int", "stringArray", "stringSlice", "duration"

# kube-apiserver 1.32 flags (name -> pflag type). Bools never take the next argument. The durations
# the stand-in acts on are parsed as Go durations (seconds); other duration flags are kept as given.
FLAG_TYPES: dict[str, str] = {
    # generic
    "advertise-address": STRING, "cors-allowed-origins": SLICE, "default-not-ready-toleration-seconds": INT,
    "default-unreachable-toleration-seconds": INT, "enable-priority-and-fairness": BOOL,
    "external-hostname": STRING, "feature-gates": STRING, "goaway-chance": STRING, "livez-grace-period": STRING,
    "max-mutating-requests-inflight": INT, "max-requests-inflight": INT, "min-request-timeout": INT,
    "request-timeout": DURATION, "shutdown-delay-duration": DURATION, "shutdown-send-retry-after": BOOL,
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

    @property
    def shutdown_delay(self) -> float:
        """--shutdown-delay-duration in seconds (the real binary's default: 0s)."""
        return self.get("shutdown-delay-duration", 0.0)

    @property
    def shutdown_send_retry_after(self) -> bool:
        return self.get("shutdown-send-retry-after", False)

    @property
    def request_timeout(self) -> float:
        """--request-timeout in seconds (default 1m0s): also what bounds the drain at shutdown."""
        return self.get("request-timeout", 60.0)


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


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*)(\.[0-9]*)?([^0-9.]*)")
_MAX_DURATION = (2**63 - 1) / 1e9          # Go's time.Duration is int64 nanoseconds


def _go_quote(s: str) -> str:
    """Go's time.quote: non-ASCII and control bytes as \\xNN, `"` and `\\` escaped."""
    out = []
    for ch in s:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    return '"' + "".join(out) + '"'


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds: `15s`, `1m30s`, `1.5h`, `300ms`, `-2s`, `0`. ValueError
    with Go's message (`time: invalid duration "x"`, `time: missing unit in duration "15"`, `time:
    unknown unit "d" in duration "1d"`) for anything else."""
    invalid = ValueError(f"time: invalid duration {_go_quote(text)}")
    s, sign = text, 1.0
    if s[:1] in ("-", "+"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise invalid
    total = 0.0
    while s:
        if s[0] not in ".0123456789":
            raise invalid
        m = _DURATION_PART.match(s)
        whole, frac, unit = m[1], m[2] or "", m[3]
        if not whole and len(frac) < 2:
            raise invalid                                   # "." or ".s": no digits at all
        if not unit:
            raise ValueError(f"time: missing unit in duration {_go_quote(text)}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(text)}")
        total += float((whole or "0") + (frac if len(frac) > 1 else "")) * _DURATION_UNITS[unit]
        s = s[m.end():]
    if total > _MAX_DURATION:
        raise invalid
    return sign * total


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
        elif kind == DURATION:
            try:
                values[name] = parse_go_duration(raw)
            except ValueError as exc:
                raise FlagError(f'invalid argument "{raw}" for "--{name}" flag: {exc}') from None
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
    if flags.request_timeout < 0:                   # ServerRunOptions.Validate, first as in the real one
        errors.append("--request-timeout can not be negative value")
    if flags.shutdown_delay < 0:
        errors.append("--shutdown-delay-duration can not be negative value")
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


# --- health checks and the server's life: start-up readiness, graceful termination -------------
# The real 1.32 server's checks, in its order (`kubectl get --raw '/readyz?verbose'`), without
# `etcd` and `etcd-readiness`: the stand-in has no etcd, so it claims no etcd check. /livez and
# /healthz list the same checks minus the readiness-only ones (informer-sync, shutdown).

_HOOKS_AND_AUTOREGISTER = (
    *(f"poststarthook/{h}" for h in (
        "start-apiserver-admission-initializer", "generic-apiserver-start-informers",
        "priority-and-fairness-config-consumer", "priority-and-fairness-filter",
        "storage-object-count-tracker-hook", "start-apiextensions-informers", "start-apiextensions-controllers",
        "crd-informer-synced", "start-system-namespaces-controller",
        "start-cluster-authentication-info-controller", "start-kube-apiserver-identity-lease-controller",
        "start-kube-apiserver-identity-lease-garbage-collector", "start-legacy-token-tracking-controller",
        "start-service-ip-repair-controllers", "rbac/bootstrap-roles", "scheduling/bootstrap-system-priority-classes",
        "priority-and-fairness-config-producer", "bootstrap-controller", "start-kubernetes-service-cidr-controller",
        "aggregator-reload-proxy-client-cert", "start-kube-aggregator-informers",
        "apiservice-status-local-available-controller", "apiservice-status-remote-available-controller",
        "apiservice-registration-controller", "apiservice-discovery-controller", "kube-apiserver-autoregistration")),
    "autoregister-completion",
    "poststarthook/apiservice-openapi-controller", "poststarthook/apiservice-openapiv3-controller",
)
HEALTH_CHECKS = {
    "livez": ("ping", "log", *_HOOKS_AND_AUTOREGISTER),
    "healthz": ("ping", "log", *_HOOKS_AND_AUTOREGISTER),
    "readyz": ("ping", "log", "informer-sync", *_HOOKS_AND_AUTOREGISTER, "shutdown"),
}
# What a real server is still doing in its first seconds after a restart (the hooks that wait for
# caches and the bootstrap policy): /readyz names them until K8SBOOT_STANDIN_READY_DELAY has passed.
STARTING_HOOKS = ("poststarthook/start-apiextensions-controllers", "poststarthook/crd-informer-synced",
                  "poststarthook/rbac/bootstrap-roles")
READY_DELAY_ENV = "K8SBOOT_STANDIN_READY_DELAY"
SHUTTING_DOWN = "process is shutting down"                 # the shutdown check's error (log only)
RETRY_AFTER_MESSAGE = "The apiserver is shutting down, please try again later."
# requests the real server keeps serving once it no longer accepts new ones (WithRetryAfter)
RETRY_AFTER_EXEMPT_PREFIXES = ("/readyz", "/livez", "/healthz", "/metrics")


def health_endpoint(path: str) -> tuple[str, str | None] | None:
    """("readyz", None) for /readyz, ("readyz", "shutdown") for /readyz/shutdown; None otherwise."""
    name, _, check = path.strip("/").partition("/")
    if name not in HEALTH_CHECKS or path.endswith("/") and not check:
        return None
    return name, (check or None)


def health_answer(endpoint: str, failing: dict, query: str = "", check: str | None = None) -> tuple[int, str]:
    """The real healthz handler's answer (k8s.io/apiserver/pkg/server/healthz) for `endpoint`
    given the failing checks ({name: reason}): `ok`; with `?verbose` one `[+]name ok` line per
    check and `<endpoint> check passed`; on failure always the lines, `[-]name failed: reason
    withheld` (the reason goes to the log only: the endpoint is public), `<endpoint> check
    failed` and HTTP 500. `?exclude=name` skips a check. `/<endpoint>/<check>` answers for one."""
    checks = HEALTH_CHECKS[endpoint]
    if check is not None:
        if check not in checks:
            return 404, "404 page not found\n"
        if check in failing:
            return 500, f"internal server error: {failing[check]}\n"
        return 200, "ok"
    params = parse_qs(query, keep_blank_values=True)
    excluded = set(params.get("exclude", []))
    lines = []
    failed = False
    for name in checks:
        if name in excluded:
            excluded.discard(name)
            lines.append(f"[+]{name} excluded: ok")
        elif name in failing:
            failed = True
            lines.append(f"[-]{name} failed: reason withheld")
        else:
            lines.append(f"[+]{name} ok")
    if excluded:
        lines.append("warn: some health checks cannot be excluded: no matches for "
                     + ",".join(f'"{n}"' for n in sorted(excluded)))
    if failed:
        return 500, "\n".join(lines) + f"\n{endpoint} check failed\n"
    if "verbose" not in params:
        return 200, "ok"
    return 200, "\n".join(lines) + f"\n{endpoint} check passed\n"


def exempt_from_retry_after(path: str, user_agent: str) -> bool:
    """Health probes (and the server's own loopback client) are served to the end."""
    return path.startswith(RETRY_AFTER_EXEMPT_PREFIXES) or user_agent.startswith("kube-apiserver/")


def parse_ready_delay(raw: str | None) -> float:
    """K8SBOOT_STANDIN_READY_DELAY: seconds (a float, 0 when unset); ValueError otherwise."""
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{READY_DELAY_ENV}={_q(raw)}: want a number of seconds, 0 or more "
                         "(the k8sboot lab's ready delay)")
    return value


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


class Lifecycle:
    """Where the server is in its life, as the real binary's lifecycle signals say it
    (k8s.io/apiserver genericapiserver.go): listening; ready once the ready delay has passed;
    ShutdownInitiated (SIGTERM: /readyz fails, everything is still served);
    AfterShutdownDelayDuration = NotAcceptingNewRequest (new requests other than health probes
    get 429 + Retry-After with --shutdown-send-retry-after, else the port closes); then
    InFlightRequestsDrained (bounded by --request-timeout) and the process exits."""

    def __init__(self, shutdown_delay: float = 0.0, send_retry_after: bool = False,
                 request_timeout: float = 60.0, ready_delay: float = 0.0, clock=time.monotonic):
        self.shutdown_delay = shutdown_delay
        self.send_retry_after = send_retry_after
        self.request_timeout = request_timeout
        self.ready_delay = ready_delay
        self.clock = clock
        self.ready_at: float | None = None
        self.shutdown_initiated = threading.Event()
        self.not_accepting = threading.Event()
        self.second_signal = threading.Event()
        self._in_flight = 0
        self._lock = threading.Condition()

    def listening(self) -> None:
        """The port is open: the ready delay starts now."""
        self.ready_at = self.clock() + self.ready_delay

    def failing(self, endpoint: str) -> dict:
        """{check: reason} of the checks `endpoint` fails now (/livez and /healthz: none)."""
        if endpoint != "readyz":
            return {}
        out = {}
        if self.ready_at is None or self.clock() < self.ready_at:
            out.update((hook, "not finished") for hook in STARTING_HOOKS)
        if self.shutdown_initiated.is_set():
            out["shutdown"] = SHUTTING_DOWN
        return out

    def admit(self, path: str, user_agent: str) -> int | None:
        """None: serve the request (counted in flight until `done`, unless a health probe);
        429 or 503: refuse it, the server no longer accepts new requests."""
        exempt = exempt_from_retry_after(path, user_agent)
        with self._lock:
            if self.not_accepting.is_set() and not exempt:
                return 429 if self.send_retry_after else 503
            if not exempt:
                self._in_flight += 1
        return None

    def done(self, path: str, user_agent: str) -> None:
        if not exempt_from_retry_after(path, user_agent):
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    @property
    def in_flight(self) -> int:
        """Admitted requests not answered yet (health probes are not counted)."""
        with self._lock:
            return self._in_flight

    def stop_accepting(self) -> None:
        with self._lock:
            self.not_accepting.set()

    def wait_drained(self, timeout: float) -> bool:
        """True once no admitted request is in flight; False when `timeout` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout)


def _graceful_termination(server: "StandinServer") -> None:
    """After ShutdownInitiated: the delay, then stop accepting, drain, stop listening."""
    lc = server.lifecycle
    if lc.second_signal.wait(lc.shutdown_delay):
        return
    log('"[graceful-termination] shutdown event" name="AfterShutdownDelayDuration"')
    lc.stop_accepting()
    log('"[graceful-termination] shutdown event" name="NotAcceptingNewRequest"')
    if not lc.send_retry_after:
        server.stop_listening()                 # new connections are refused from now on
    if lc.wait_drained(lc.request_timeout):
        log('"[graceful-termination] shutdown event" name="InFlightRequestsDrained"')
    else:
        log(f'"[graceful-termination] requests still in flight after --request-timeout, leaving them" '
            f'timeout="{_seconds(lc.request_timeout)}"', level="W")
    if lc.send_retry_after:
        server.stop_listening()                 # with 429s until the drain was done
    log('"[graceful-termination] apiserver is exiting"')


def begin_graceful_shutdown(server: "StandinServer") -> threading.Thread:
    """ShutdownInitiated now (/readyz fails from this call on), the rest in a thread that ends when
    the server has stopped listening and drained; `serve_forever` has returned by then."""
    lc = server.lifecycle
    lc.shutdown_initiated.set()
    log(f'"[graceful-termination] shutdown event" name="ShutdownInitiated" '
        f'shutdownDelayDuration="{_seconds(lc.shutdown_delay)}" '
        f'shutdownSendRetryAfter={str(lc.send_retry_after).lower()}')
    thread = threading.Thread(target=_graceful_termination, args=(server,), name="graceful-termination",
                              daemon=True)
    thread.start()
    return thread


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
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
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
                 clock=None, verbosity: int = 0, lifecycle: Lifecycle | None = None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tls = tls
        self.config = config
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.verbosity = verbosity
        self.lifecycle = lifecycle or Lifecycle()
        self._stop_lock = threading.Lock()
        self._listening = True
        super().__init__(address, StandinHandler)
        self.lifecycle.listening()

    def stop_listening(self) -> None:
        """Leave serve_forever (it must be running) and close the port; connections already
        accepted go on. Idempotent."""
        with self._stop_lock:
            if not self._listening:
                return
            self._listening = False
            self.shutdown()
            self.socket.close()
        host, port = self.server_address[:2]
        log(f'"Stopped listening" address="{host}:{port}"')
        log('"[graceful-termination] shutdown event" name="HTTPServerStoppedListening"')

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

    def _reply(self, code: int, body: object, audit_id: str, headers: tuple = ()) -> None:
        lifecycle = self.server.lifecycle
        if lifecycle.not_accepting.is_set() and not lifecycle.send_retry_after:
            self.close_connection = True          # the port is closed: no further requests here
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
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _serve(self) -> None:
        lifecycle = self.server.lifecycle
        path, agent = urlsplit(self.path).path, self.headers.get("User-Agent", "")
        refused = lifecycle.admit(path, agent)
        if refused is not None:
            self._refuse(refused)
            return
        try:
            self._serve_admitted()
        finally:
            lifecycle.done(path, agent)

    def _refuse(self, code: int) -> None:
        """After the shutdown delay: 429 + Retry-After: 5 (--shutdown-send-retry-after, the real
        WithRetryAfter filter, before authentication) or 503 + Retry-After: 1 (WithWaitGroup, on
        a connection opened before the port closed); the connection is closed after it."""
        audit_id = new_audit_id()
        self.close_connection = True
        if code == 429:
            body, headers = RETRY_AFTER_MESSAGE + "\n", (("Retry-After", "5"),)
        else:
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "apiserver is shutting down", "reason": "ServiceUnavailable", "code": 503}
            headers = (("Retry-After", "1"),)
        log(f'"HTTP" verb={_q(self.command)} URI={_q(self.path)} decision="shutting down" resp={code} '
            f'userAgent={_q(self.headers.get("User-Agent", ""))} audit-ID={_q(audit_id)} '
            f'srcIP="{self.client_address[0]}:{self.client_address[1]}"')
        self._reply(code, body, audit_id, headers)

    def _serve_admitted(self) -> None:
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
                code, reply = self._health(info) or route(info, user, result, now)
                decision = "allowed"
            else:
                code, reply, decision = 403, forbidden_status(user, info), "forbidden"
        latency = (time.monotonic() - t0) * 1000
        log(f'"HTTP" verb={_q(shown_verb)} URI={_q(self.path)}{who} decision={_q(decision)}{extra} '
            f'resp={code} latency="{latency:.1f}ms" userAgent={_q(self.headers.get("User-Agent", ""))} '
            f'audit-ID={_q(audit_id)} srcIP={_q(src)}')
        self._reply(code, reply, audit_id)

    def _health(self, info: RequestInfo) -> tuple[int, str] | None:
        """/livez, /readyz, /healthz (and /<endpoint>/<check>) from the server's lifecycle."""
        target = None if info.is_resource or info.verb not in ("get", "head") else health_endpoint(info.path)
        if target is None:
            return None
        endpoint, check = target
        failing = self.server.lifecycle.failing(endpoint)
        code, text = health_answer(endpoint, failing, urlsplit(self.path).query, check)
        if code == 500 and check is None and self.server.verbosity >= 2:
            # the real server's V(2) line, which carries the reasons the public body withholds
            log(f"{','.join(n for n in HEALTH_CHECKS[endpoint] if n in failing)} check failed: {endpoint} "
                + " ".join(f"[-]{n} failed: {failing[n]}" for n in HEALTH_CHECKS[endpoint] if n in failing))
        return code, text

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
      --shutdown-delay-duration duration (default 0s), --shutdown-send-retry-after,
      --request-timeout duration (default 1m0s: also bounds the drain at shutdown)
      --version version[=true]

Environment (k8sboot lab only): K8SBOOT_STANDIN_READY_DELAY=<seconds> keeps /readyz failing that
long after the port opens.
"""


def build_server(flags: Flags, config: authn.AuthenticatorConfig, port: int | None = None,
                 tls_backend: str | None = None, clock=None, ready_delay: float = 0.0) -> StandinServer:
    """The server, listening (its ready delay starts now); serve_forever serves it."""
    tls = make_tls(flags.get("tls-cert-file"), flags.get("tls-private-key-file"), flags.get("client-ca-file"),
                   tls_backend)
    address = (flags.bind_address, flags.secure_port if port is None else port)
    lifecycle = Lifecycle(shutdown_delay=flags.shutdown_delay, send_retry_after=flags.shutdown_send_retry_after,
                          request_timeout=flags.request_timeout, ready_delay=ready_delay)
    return StandinServer(address, tls, config, clock=clock, verbosity=flags.verbosity, lifecycle=lifecycle)


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
    try:
        ready_delay = parse_ready_delay(os.environ.get(READY_DELAY_ENV))
    except ValueError as exc:
        return _fail(str(exc))
    problem = check_files(flags) or check_signing_key(flags.get("service-account-signing-key-file"))
    if problem:
        return _fail(problem)
    try:
        config = load_config(flags)
    except authn.AuthnConfigError as exc:
        return _fail(str(exc))
    try:
        server = build_server(flags, config, ready_delay=ready_delay)
    except (ssl.SSLError, ValueError) as exc:
        return _fail(f"unable to load server certificate: {exc}")
    except OSError as exc:
        if exc.errno is not None and exc.strerror:
            addr = f"{flags.bind_address}:{flags.secure_port}"
            return _fail(f"failed to listen on {addr}: listen tcp {addr}: bind: {exc.strerror.lower()}")
        return _fail(f"unable to load server certificate: {exc}")
    except Exception as exc:   # noqa: BLE001 - pyOpenSSL's errors when loading the key pair
        return _fail(f"unable to load server certificate: {_openssl_reason(exc)}")

    lifecycle = server.lifecycle
    terminating: list[threading.Thread] = []

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if lifecycle.shutdown_initiated.is_set():
            # as the real binary (SetupSignalContext): a second signal exits 1 at once, no drain
            log(f'"Received a second signal, exiting at once" signal={_q(name)}', level="W")
            lifecycle.second_signal.set()
            os._exit(1)
        log(f'"Received signal, shutting down" signal={_q(name)}')
        terminating.append(begin_graceful_shutdown(server))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = server.server_address[:2]
    log(f'"Serving securely (k8sboot stand-in, not Kubernetes)" address="{flags.bind_address}:{port}" '
        f'tls={_q(server.tls.name)} clientCA={_q(flags.get("client-ca-file") or "")} '
        f'anonymousAuth={str(flags.anonymous_auth).lower()} issuers={json.dumps(flags.service_account_issuers)} '
        f'audiences={json.dumps(list(config.audiences))} saKeys={len(config.service_account_keys)} '
        f'shutdownDelayDuration="{_seconds(flags.shutdown_delay)}" '
        f'shutdownSendRetryAfter={str(flags.shutdown_send_retry_after).lower()}')
    if ready_delay:
        log(f'"Ready delay (k8sboot lab): /readyz fails until it has passed" '
            f'{READY_DELAY_ENV}={_q(os.environ[READY_DELAY_ENV])} delay="{_seconds(ready_delay)}" '
            f'failing={json.dumps(list(STARTING_HOOKS))}')
        done = threading.Timer(max(0.0, lifecycle.ready_at - lifecycle.clock()), log,
                               args=('"Ready delay (k8sboot lab) has passed: post-start hooks finished"',))
        done.daemon = True
        done.start()
    try:
        server.serve_forever(poll_interval=0.5)      # returns when the graceful termination stops listening
        for thread in terminating:
            thread.join()                            # the drain; a second signal still ends it at once
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
