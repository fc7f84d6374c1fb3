"""The kube-apiserver command line for one controller, computed in Python (pure).

`build_apiserver_flags(inventory, host)` returns the ordered `(flag, value)` pairs exactly as
DESIGN.md lists them; every file path comes from `k8sboot.layout`, the same values the upload
list is built from. The unit template only formats these pairs.

`apiserver.extra_flags` may add flags and may change a non-authentication flag (e.g. `v: 4`), but
may never change or drop an authentication flag: that is an `InventoryError` naming the key,
because a silently different `--anonymous-auth` or `--client-ca-file` is exactly what k8sboot
exists to prevent. The two durations the unit's `TimeoutStopSec` is made of
(`--shutdown-delay-duration`, `--request-timeout`) may be changed too, but must be durations both
kube-apiserver and systemd read (`15s`, `1m30s`, `500ms`).

Graceful stop: `--shutdown-delay-duration` (the inventory's `apiserver.shutdown_delay_duration`)
keeps a stopping API server serving with /readyz failing so load balancers take it out first, and
`--shutdown-send-retry-after=true` makes new requests after that delay a 429 with Retry-After
(clients retry elsewhere) while requests in flight drain, instead of a refused connection.

Also here: the tutorial's grep (`grep -oE "\\-\\-(client-ca-file|...)[^ ]*"`) as a pure function, and
parsers for the three places flags are read back on a host (the unit's ExecStart, `systemctl show
-p ExecStart`, `/proc/PID/cmdline`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from k8sboot import layout
from k8sboot.errors import InventoryError
from k8sboot.model import Host, Inventory

Flags = tuple[tuple[str, str], ...]

# Durations rendered into the unit twice: as the flag and inside TimeoutStopSec (systemd sums the
# parts), so an extra_flags value must be a Go duration that systemd also parses: no `ns`, no sign.
STOP_DURATION_FLAGS = ("shutdown-delay-duration", "request-timeout")
_STOP_DURATION = re.compile(r"0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:h|m|s|ms|us|\u00b5s|\u03bcs))+")

ADMISSION_PLUGINS = ("NamespaceLifecycle", "NodeRestriction", "LimitRanger", "ServiceAccount",
                     "DefaultStorageClass", "ResourceQuota")
SERVICE_NODE_PORT_RANGE = "30000-32767"

# Flags that decide who a request is (Stage 1) or which identity the API server presents, and the
# authorization mode that turns an identity into 401-vs-403. extra_flags may not touch them.
AUTH_FLAGS: tuple[str, ...] = (
    "anonymous-auth",
    "authorization-mode",
    "client-ca-file",
    "kubelet-certificate-authority",
    "kubelet-client-certificate",
    "kubelet-client-key",
    "service-account-key-file",
    "service-account-signing-key-file",
    "service-account-issuer",
    "api-audiences",
    "tls-cert-file",
    "tls-private-key-file",
)

# Authentication flags k8sboot does not render: extra_flags may add them (audit reports them).
AUTHENTICATION_EXTRAS = ("token-auth-file", "authentication-config", "oidc-issuer-url",
                         "authentication-token-webhook-config-file", "enable-bootstrap-token-auth",
                         "requestheader-client-ca-file", "service-account-lookup",
                         "service-account-extend-token-expiration",
                         "service-account-max-token-expiration")

# The tutorial's check, verbatim: grep -oE "\-\-(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*"
TUTORIAL_GREP_FLAGS = ("client-ca-file", "service-account-key-file", "anonymous-auth")
TUTORIAL_GREP_PATTERN = r"\-\-(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*"
TUTORIAL_GREP_COMMAND = f'grep -oE "{TUTORIAL_GREP_PATTERN}" {layout.UNIT_PATH}'
_TUTORIAL_RE = re.compile(r"--(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def default_etcd_servers(inventory: Inventory) -> tuple[str, ...]:
    """Without apiserver.etcd_servers: every controller's etcd member, as `k8sboot deploy-etcd`
    runs them (https://<internal_ip>:2379), so no API server depends on one member alone."""
    from k8sboot import etcd

    if not inventory.controllers:
        raise InventoryError(f"{inventory.where('apiserver')}: apiserver.etcd_servers: kube-apiserver needs at "
                             "least one etcd server (--etcd-servers) and there is no controller to run one",
                             hint="e.g. etcd_servers: [https://10.0.1.10:2379]")
    return tuple(etcd.client_url(h) for h in inventory.controllers)


def build_apiserver_flags(inventory: Inventory, host: Host) -> Flags:
    """The kube-apiserver flags for `host`, in DESIGN.md order, with `extra_flags` merged."""
    pki = layout.remote_path
    cluster, api = inventory.cluster, inventory.apiserver
    etcd_servers = api.etcd_servers or default_etcd_servers(inventory)
    ca = pki(layout.cert_file(layout.CA))
    flags: list[tuple[str, str]] = [
        ("advertise-address", str(host.internal_ip)),
        ("allow-privileged", "true"),
        ("anonymous-auth", _bool(api.anonymous_auth)),
        ("authorization-mode", ",".join(api.authorization_mode)),
        ("bind-address", "0.0.0.0"),
        ("client-ca-file", ca),
        ("enable-admission-plugins", ",".join(ADMISSION_PLUGINS)),
        ("encryption-provider-config", pki(layout.ENCRYPTION_CONFIG_FILE)),
        ("etcd-cafile", pki(layout.cert_file(layout.ETCD_CA))),
        ("etcd-certfile", pki(layout.cert_file(layout.APISERVER_ETCD_CLIENT))),
        ("etcd-keyfile", pki(layout.key_file(layout.APISERVER_ETCD_CLIENT))),
        ("etcd-servers", ",".join(etcd_servers)),
        ("kubelet-certificate-authority", ca),
        ("kubelet-client-certificate", pki(layout.cert_file(layout.KUBELET_CLIENT))),
        ("kubelet-client-key", pki(layout.key_file(layout.KUBELET_CLIENT))),
        ("runtime-config", "api/all=true"),
        ("secure-port", str(api.secure_port)),
        ("service-account-key-file", pki(layout.cert_file(layout.SERVICE_ACCOUNT))),
        ("service-account-signing-key-file", pki(layout.key_file(layout.SERVICE_ACCOUNT))),
        ("service-account-issuer", cluster.service_account_issuer),
        ("service-account-extend-token-expiration", _bool(api.service_account_extend_token_expiration)),
        ("service-account-max-token-expiration", go_duration(api.service_account_max_token_expiration_seconds)),
        ("service-cluster-ip-range", str(cluster.service_cidr)),
        ("service-node-port-range", SERVICE_NODE_PORT_RANGE),
        ("shutdown-delay-duration", f"{api.shutdown_delay_seconds}s"),
        ("shutdown-send-retry-after", "true"),
        ("tls-cert-file", pki(layout.cert_file(layout.APISERVER))),
        ("tls-private-key-file", pki(layout.key_file(layout.APISERVER))),
        ("v", "2"),
    ]
    if tuple(cluster.api_audiences) != (cluster.service_account_issuer,):
        at = next(i for i, (name, _) in enumerate(flags) if name == "service-account-issuer")
        flags.insert(at + 1, ("api-audiences", ",".join(cluster.api_audiences)))
    auth = inventory.authentication
    if auth is not None:
        # structured authentication (issue 14): the file replaces --oidc-*; with its anonymous block
        # the API server refuses --anonymous-auth, so the block alone decides
        at = next(i for i, (name, _) in enumerate(flags) if name == "anonymous-auth")
        flags.insert(at + 1, ("authentication-config", pki(layout.AUTHENTICATION_CONFIG_FILE)))
        if getattr(auth, "anonymous", None) is not None:
            del flags[at]
    if inventory.rotation is not None:
        # a rotation's phase (pki/rotation.yaml): the service-account key files and issuers repeated
        from k8sboot import rotation

        flags = rotation.apply_to_flags(inventory.rotation, flags, cluster.service_account_issuer)
    return tuple(_merge_extra_flags(inventory, flags))


def go_duration(seconds: int) -> str:
    """Whole seconds as a short Go duration: 86400 -> 24h, 5400 -> 90m, 45 -> 45s."""
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


# Flags rendered from an inventory key of their own: extra_flags may restate, not change them.
KEYED_FLAGS = {
    "service-account-max-token-expiration": "set apiserver.service_account_max_token_expiration instead (e.g. 24h)",
    "service-account-extend-token-expiration": "set apiserver.service_account_extend_token_expiration instead",
}


def _merge_extra_flags(inventory: Inventory, flags: list[tuple[str, str]]) -> list[tuple[str, str]]:
    index = {name: i for i, (name, _) in enumerate(flags)}
    for raw_name, value in inventory.apiserver.extra_flags:
        name = raw_name.lstrip("-")
        key_path = f"apiserver.extra_flags.{name}"
        where = inventory.where(key_path)
        if name in AUTH_FLAGS:
            current = flags[index[name]][1] if name in index else None
            if current is not None and value == current:
                continue   # restating the rendered value changes nothing
            what = "drop" if value == "" else "override"
            raise InventoryError(
                f"{where}: {key_path}: would {what} the authentication flag --{name}"
                + (f" (k8sboot renders --{name}={current})" if current is not None else ""),
                hint=_AUTH_HINTS.get(name, "authentication flags come from the inventory's cluster/"
                                            "apiserver settings and the PKI layout; remove this key"))
        if name in KEYED_FLAGS and value != dict(flags).get(name):
            raise InventoryError(
                f"{where}: {key_path}: --{name} comes from the inventory's apiserver section "
                f"(k8sboot renders --{name}={dict(flags).get(name)})", hint=KEYED_FLAGS[name])
        if name in STOP_DURATION_FLAGS and value != "" and not _STOP_DURATION.fullmatch(value):
            raise InventoryError(
                f"{where}: {key_path}: '{value}' is not a duration for --{name} (the unit's "
                "TimeoutStopSec is made of it)",
                hint="a Go duration such as 15s, 1m30s or 500ms"
                     + (", or set apiserver.shutdown_delay_duration instead" if name == "shutdown-delay-duration"
                        else ""))
        set_extra_flag(flags, index, name, value, where, key_path)
    return flags


def set_extra_flag(flags: list, index: dict, name: str, value: str, where: str, key_path: str) -> None:
    """An inventory extra flag laid over the rendered ones: it replaces the rendered value in place
    (an empty value may not drop a flag k8sboot always renders), or is appended."""
    if name in index:
        if value == "":
            raise InventoryError(
                f"{where}: {key_path}: an empty value would drop --{name}, which k8sboot always renders",
                hint=f"remove the key, or give --{name} a value")
        flags[index[name]] = (name, value)
    else:
        index[name] = len(flags)
        flags.append((name, value))


_AUTH_HINTS = {
    "anonymous-auth": "set apiserver.anonymous_auth: true|false instead",
    "authorization-mode": "set apiserver.authorization_mode instead, e.g. [Node, RBAC]",
    "service-account-issuer": "set cluster.service_account_issuer instead",
    "api-audiences": "set cluster.api_audiences instead",
}


def format_flag(name: str, value: str) -> str:
    """`--name=value` exactly as the API server receives it."""
    return f"--{name}={value}"


def flags_to_argv(flags: Iterable[tuple[str, str]]) -> list[str]:
    return [format_flag(name, value) for name, value in flags]


def systemd_escape_arg(arg: str) -> str:
    """One ExecStart word: `%` and `$` escaped, quoted when it holds whitespace, quotes or `\\`."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", escaped) or escaped == "":
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def tutorial_grep(unit_text: str) -> list[str]:
    """What the tutorial's `grep -oE` prints for this unit text, line by line, match by match."""
    out: list[str] = []
    for line in unit_text.splitlines():
        out.extend(m.group(0) for m in _TUTORIAL_RE.finditer(line))
    return out


# --- reading flags back --------------------------------------------------------------------------


def parse_argv_flags(argv: Sequence[str]) -> Flags:
    """`['/usr/local/bin/kube-apiserver', '--a=1', '--b', '2', '--c']` -> (('a','1'),('b','2'),('c','true'))."""
    out: list[tuple[str, str]] = []
    args = list(argv[1:]) if argv and not argv[0].startswith("-") else list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if not eq:
            if i < len(args) and not args[i].startswith("-"):
                value = args[i]
                i += 1
            else:
                value = "true"
        out.append((name, value))
    return tuple(out)


def parse_unit_exec_start(unit_text: str) -> list[str] | None:
    """The argv of the unit file's (last) `ExecStart=`, continuations joined, quotes removed.

    Implements the subset of systemd's unquoting that a unit may use: double and single quotes,
    backslash escapes, `%%` and `$$`. None when the unit has no ExecStart.
    """
    logical: list[str] = []
    buf = ""
    for raw in unit_text.splitlines():
        stripped = raw.strip()
        if not buf and (stripped.startswith("#") or stripped.startswith(";")):
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        logical.append(buf + raw)
        buf = ""
    if buf:
        logical.append(buf)
    exec_line = None
    for line in logical:
        key, eq, value = line.strip().partition("=")
        if eq and key.strip() == "ExecStart":
            exec_line = value.strip()
    if exec_line is None:
        return None
    exec_line = exec_line.lstrip("-@:+!")
    return [w.replace("%%", "%").replace("$$", "$") for w in _split_words(exec_line)]


def _split_words(text: str) -> list[str]:
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
            else:
                cur.append(ch)
        elif ch in "\"'":
            quote = ch
            in_word = True
        elif ch.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        elif ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            in_word = True
            i += 2
            continue
        else:
            cur.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


def parse_systemctl_exec_start(show_output: str) -> list[str] | None:
    """argv from `systemctl show -p ExecStart`: `ExecStart={ path=... ; argv[]=A B C ; ignore_errors=no ; ... }`."""
    m = re.search(r"argv\[\]=(.*?) ; ignore_errors=", show_output, re.S)
    if not m:
        return None
    return m.group(1).split()


def parse_proc_cmdline(raw: bytes) -> list[str]:
    """argv from /proc/PID/cmdline (NUL separated)."""
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def auth_subset(flags: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The authentication flags among `flags` (last one wins), for comparison and display."""
    names = set(AUTH_FLAGS) | set(AUTHENTICATION_EXTRAS)
    return {name: value for name, value in flags if name in names}
