"""The kube-apiserver command line as pflag/cobra read it: kube-apiserver 1.32's flags (name ->
type), `--flag=value` and `--flag value`, bools that never take the next argument, repeatable and
comma-list flags, Go durations; the real binary's validation and start-up file checks, with its
messages. Pure except `check_files` / `check_signing_key`, which read the files named by flags."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from k8sboot.standin.authorization import check_modes

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
    "etcd-db-metric-poll-interval": STRING, "etcd-healthcheck-timeout": DURATION, "etcd-keyfile": STRING,
    "etcd-prefix": STRING, "etcd-readycheck-timeout": DURATION, "etcd-servers": SLICE,
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
    "service-account-lookup": BOOL, "service-account-max-token-expiration": DURATION, "token-auth-file": STRING,
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
    def service_account_max_token_expiration(self) -> float:
        """--service-account-max-token-expiration in seconds (0: no cap, the default)."""
        return self.get("service-account-max-token-expiration", 0.0)

    @property
    def etcd_healthcheck_timeout(self) -> float:
        """--etcd-healthcheck-timeout in seconds (default 2s): the etcd check's deadline."""
        return self.get("etcd-healthcheck-timeout", 2.0) or 2.0

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
    max_exp = flags.service_account_max_token_expiration
    if max_exp and not 3600 <= max_exp <= 1 << 32:
        errors.append("the service-account-max-token-expiration must be between 1 hour and 2^32 seconds")
    if not flags.get("etcd-servers"):
        errors.append("--etcd-servers must be specified")
    port = flags.secure_port
    if not 1 <= port <= 65535:
        errors.append(f"--secure-port {port} must be between 1 and 65535, inclusive. It cannot be turned off with 0")
    if not flags.service_account_issuers:
        errors.append("service-account-issuer is a required flag")
    if not flags.get("service-account-signing-key-file") or not flags.service_account_issuers:
        errors.append("--service-account-signing-key-file and --service-account-issuer are required flags")
    if flags.get("authentication-config") and any(flags.given(n) for n in FLAG_TYPES if n.startswith("oidc-")):
        errors.append("authentication-config file and oidc-* flags are mutually exclusive")
    problem = check_modes(flags.get("authorization-mode") or ())
    if problem:
        errors.append(problem)
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


