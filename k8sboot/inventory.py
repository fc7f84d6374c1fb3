"""Inventory YAML → `k8sboot.model.Inventory`, validated whole before anything is written or dialled.

Every error is one line naming the file, the line and the key path, e.g.
`inventory/cluster.yaml:14: controllers[1].internal_ip: '10.0.1.300' is not an IP address`,
with a hint. Unknown keys get a "did you mean". YAML anchors/aliases (billion-laughs), duplicate
keys, non-UTF-8 text and oversized files are refused before any value is looked at.
"""

from __future__ import annotations

import dataclasses

import difflib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from k8sboot.errors import InventoryError
from k8sboot.model import (
    KEY_ALGORITHMS,
    ApiserverSpec,
    ClusterSpec,
    EtcdSpec,
    Host,
    Inventory,
    PkiSettings,
    SshSettings,
)

MAX_BYTES = 1 << 20   # an inventory is a few hundred lines; anything larger is a mistake
AUTHORIZATION_MODES = ("AlwaysAllow", "AlwaysDeny", "ABAC", "Webhook", "RBAC", "Node")
SUBJECT_KEYS = ("C", "ST", "L", "OU")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_FLAG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$", re.IGNORECASE)


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate an inventory file; InventoryError (one line, file:line) on any problem."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InventoryError(f"{path}: is a directory, not an inventory file",
                                 hint="pass the YAML file, e.g. -i inventory/cluster.yaml")
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise InventoryError(f"{path}: no such inventory file",
                             hint="pass -i with an existing file, e.g. -i inventory/cluster.yaml, "
                                  "or run `k8sboot lab up` to write inventory/lab.yaml") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror}") from exc
    inventory = parse_inventory(raw, path)
    from k8sboot import rotation

    journal = rotation.load(inventory.pki.dir)
    return dataclasses.replace(inventory, rotation=journal) if journal is not None else inventory


def parse_inventory(raw: bytes | str, path: Path) -> Inventory:
    """Parse inventory text; `path` is used for messages and kept in the model."""
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_BYTES:
        raise InventoryError(f"{path}: the file is larger than {MAX_BYTES // 1024} KiB",
                             hint="an inventory is a few hundred lines; is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InventoryError(f"{path}:{line}: the file is not UTF-8 text (byte 0x{raw[exc.start]:02x})",
                             hint="save the inventory as UTF-8") from None
    root = _compose(text, path)
    return _Reader(path).inventory(root)


# --- YAML → nodes ------------------------------------------------------------------------------


def _compose(text: str, path: Path) -> yaml.Node | None:
    """The node tree, by libyaml when PyYAML has it (~10x faster: the pure-Python scanner was the
    largest part of a deploy's start-up); a file libyaml refuses is parsed again by PyYAML's own
    parser, whose messages the error lines quote, so that they do not depend on the build."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return _compose_with(text, path, fast)
        except InventoryError:
            pass
    return _compose_with(text, path, yaml.SafeLoader)


def _compose_with(text: str, path: Path, loader) -> yaml.Node | None:
    try:
        for event in yaml.parse(text, Loader=loader):
            anchor = getattr(event, "anchor", None)
            if isinstance(event, yaml.AliasEvent) or anchor:
                line = event.start_mark.line + 1
                raise InventoryError(f"{path}:{line}: YAML anchors and aliases are not allowed "
                                     "in an inventory", hint="write the values out in full")
        return yaml.compose(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else "?"
        problem = exc.problem or exc.context or "invalid YAML"
        raise InventoryError(f"{path}:{line}: invalid YAML: {problem}",
                             hint="check indentation and quoting on that line") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: invalid YAML: {exc}") from None


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass(frozen=True)
class _Field:
    key: str
    convert: Callable[[_Reader, yaml.Node, str], Any]
    required: bool = False
    default: Any = None


class _Reader:
    """Walks the node tree with a schema; keeps the line of every key path it reads."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: dict[str, int] = {}

    # -- errors --

    def fail(self, node: yaml.Node | None, key_path: str, message: str, hint: str | None = None):
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        prefix = f"{key_path}: " if key_path else ""
        raise InventoryError(f"{self.path}{line}: {prefix}{message}", hint=hint)

    # -- structure --

    def mapping(self, node: yaml.Node, key_path: str, fields: tuple[_Field, ...]) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key_path, f"must be a mapping, not {_kind(node)}")
        known = {f.key: f for f in fields}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, key_path, "keys must be plain words")
            key = str(key_node.value)
            sub = f"{key_path}.{key}" if key_path else key
            if key in seen:
                self.fail(key_node, sub, f"duplicate key (first at line {seen[key].start_mark.line + 1})")
            seen[key] = key_node
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                self.fail(key_node, sub, "unknown key", hint=hint)
        values: dict[str, Any] = {}
        by_key = {str(k.value): (k, v) for k, v in node.value}
        for f in fields:
            sub = f"{key_path}.{f.key}" if key_path else f.key
            if f.key in by_key:
                key_node, value_node = by_key[f.key]
                self.lines[sub] = key_node.start_mark.line + 1
                if _is_null(value_node) and not f.required:
                    values[f.key] = f.default
                else:
                    values[f.key] = f.convert(self, value_node, sub)
            elif f.required:
                self.fail(node, key_path, f"missing required key '{f.key}'")
            else:
                values[f.key] = f.default
        return values

    def seq(self, node: yaml.Node, key_path: str, item: Callable[[_Reader, yaml.Node, str], Any]) -> tuple:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key_path, f"must be a list, not {_kind(node)}")
        out = []
        for i, child in enumerate(node.value):
            sub = f"{key_path}[{i}]"
            self.lines[sub] = child.start_mark.line + 1
            out.append(item(self, child, sub))
        return tuple(out)

    def scalar(self, node: yaml.Node, key_path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, key_path, f"must be a single value, not {_kind(node)}")
        try:
            return _CONSTRUCTOR.construct_object(node)
        except yaml.YAMLError as exc:
            self.fail(node, key_path, f"cannot read the value: {exc}")

    # -- the document --

    def inventory(self, root: yaml.Node | None) -> Inventory:
        if root is None:
            self.fail(None, "", "the inventory is empty",
                      hint="start from inventory/cluster.yaml")
        top = self.mapping(root, "", (
            _Field("cluster", _cluster, required=True),
            _Field("pki", _pki, default=None),
            _Field("apiserver", _apiserver, default=None),
            _Field("etcd", _etcd, default=None),
            _Field("ssh", _ssh, default=None),
            _Field("controllers", _hosts, required=True),
            _Field("workers", _hosts, default=()),
            _Field("load_balancers", _hosts, default=()),
            _Field("authentication", _plain, default=None),
        ))
        cluster: ClusterSpec = top["cluster"]
        controllers: tuple[Host, ...] = top["controllers"]
        workers: tuple[Host, ...] = top["workers"]
        load_balancers: tuple[Host, ...] = top["load_balancers"]
        if not controllers:
            self.fail(root, "controllers", "at least one controller is needed")
        self._check_unique(root, controllers, workers, load_balancers)
        pki = top["pki"] or _pki_defaults()
        apiserver = top["apiserver"] or ApiserverSpec(etcd_servers=())
        ssh = top["ssh"] or SshSettings()
        etcd = top["etcd"] or EtcdSpec()
        if etcd.data_dir is None and f"/var/lib/etcd/{cluster.name}" == "/var/lib/etcd/default":
            line = self.lines.get("cluster.name")
            raise InventoryError(
                f"{self.path}{':' + str(line) if line else ''}: cluster.name: 'default' would put etcd's data in "
                "/var/lib/etcd/default, the data dir of the member Debian's etcd-server package runs",
                hint="name the cluster otherwise, or set etcd.data_dir (e.g. /var/lib/etcd/k8s)")
        if pki.cert_validity_days > pki.ca_validity_days:
            line = self.lines.get("pki.cert_validity_days")
            raise InventoryError(
                f"{self.path}{':' + str(line) if line else ''}: pki.cert_validity_days: "
                f"{pki.cert_validity_days} days outlives the CA ({pki.ca_validity_days} days)",
                hint="a leaf cannot be valid longer than the CA that signs it")
        authentication = None
        if top["authentication"] is not None:
            authentication, apiserver = self._authentication(top["authentication"], cluster, apiserver)
        return Inventory(path=self.path, cluster=cluster, pki=pki, apiserver=apiserver, ssh=ssh,
                         controllers=controllers, workers=workers, load_balancers=load_balancers,
                         etcd=etcd, authentication=authentication, lines=dict(self.lines))

    def _line_of(self, key_path: str) -> str:
        """`:14` for the key path or its nearest parent that has a line."""
        probe = key_path
        while probe:
            if probe in self.lines:
                return f":{self.lines[probe]}"
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return ""

    def _read_text_file(self, value: str) -> str:
        """A file the inventory names (certificateAuthorityFile), relative to the inventory's dir."""
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = self.path.parent / p
        try:
            return p.read_text()
        except FileNotFoundError:
            raise ValueError(f"{p}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None

    def _authentication(self, data, cluster: ClusterSpec, apiserver: ApiserverSpec):
        """The `authentication:` section, checked as kube-apiserver checks the file it becomes
        (k8sboot.authn.oidc: issuers, audiences, mappings, every CEL expression compiled)."""
        from k8sboot.authn import cel, oidc

        version = parse_kubernetes_version(apiserver.version)
        try:
            config = oidc.parse(data, root="authentication", version=version,
                                service_account_issuers=(cluster.service_account_issuer,),
                                read_file=self._read_text_file)
        except oidc.ConfigError as exc:
            raise InventoryError(f"{self.path}{self._line_of(exc.key_path)}: {exc.key_path}: {exc.message}",
                                 hint=exc.hint) from None
        except cel.CelUnavailable as exc:
            raise InventoryError(f"{self.path}{self._line_of('authentication')}: authentication: {exc}",
                                 hint="reinstall k8sboot's dependencies: make deps") from None
        extra = dict(apiserver.extra_flags)
        for name in extra:
            if name.startswith("oidc-") or name == "authentication-config":
                key = f"apiserver.extra_flags.{name}"
                raise InventoryError(
                    f"{self.path}{self._line_of(key)}: {key}: --{name} cannot be combined with the authentication: "
                    "section (kube-apiserver exits when --authentication-config meets an --oidc-* flag)",
                    hint="move the issuer into authentication.jwt (issuer.url, audiences, claimMappings)")
        if version < (1, 30):
            gates = extra.get("feature-gates", "")
            if "StructuredAuthenticationConfiguration=true" not in gates.replace(" ", ""):
                raise InventoryError(
                    f"{self.path}{self._line_of('apiserver.version')}: apiserver.version: {apiserver.version}: "
                    "structured authentication configuration is alpha in 1.29 and off by default",
                    hint="add apiserver.extra_flags.feature-gates: StructuredAuthenticationConfiguration=true, "
                         "or run 1.30 or later")
        if config.anonymous is not None:
            for key in ("apiserver.anonymous_auth", "apiserver.extra_flags.anonymous-auth"):
                if key in self.lines:
                    raise InventoryError(
                        f"{self.path}{self._line_of(key)}: {key}: cannot be set together with "
                        "authentication.anonymous (kube-apiserver exits: --anonymous-auth cannot be combined "
                        "with the anonymous block)",
                        hint="remove this line: authentication.anonymous.enabled decides")
            apiserver = dataclasses.replace(apiserver, anonymous_auth=config.anonymous.enabled)
        return config, apiserver

    def _check_unique(self, root, controllers, workers, load_balancers=()) -> None:
        groups = [("controllers", controllers), ("workers", workers), ("load_balancers", load_balancers)]
        for attr in ("name", "address", "internal_ip"):
            first: dict[str, str] = {}
            for group, hosts in groups:
                for i, host in enumerate(hosts):
                    value = str(getattr(host, attr))
                    here = f"{group}[{i}].{attr}"
                    if value in first:
                        line = self.lines.get(here)
                        raise InventoryError(
                            f"{self.path}{':' + str(line) if line else ''}: {here}: "
                            f"'{value}' is already used by {first[value]}",
                            hint=f"every host needs its own {attr.replace('_', ' ')}")
                    first[value] = f"{group}[{i}]"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"'{node.value}'"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


# --- value converters: (reader, node, key_path) -> value ------------------------------------------


def _str(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = r.scalar(node, kp)
    if not isinstance(value, str) or not value.strip():
        r.fail(node, kp, f"must be a non-empty string, not {value!r}")
    return value.strip()


def _bool(r: _Reader, node: yaml.Node, kp: str) -> bool:
    value = r.scalar(node, kp)
    if not isinstance(value, bool):
        r.fail(node, kp, f"must be true or false, not {value!r}")
    return value


def _int_range(lo: int, hi: int):
    def convert(r: _Reader, node: yaml.Node, kp: str) -> int:
        value = r.scalar(node, kp)
        if isinstance(value, bool) or not isinstance(value, int):
            r.fail(node, kp, f"must be a whole number, not {value!r}")
        if not lo <= value <= hi:
            r.fail(node, kp, f"{value} is out of range ({lo}..{hi})")
        return value
    return convert


def _number_range(lo: float, hi: float):
    def convert(r: _Reader, node: yaml.Node, kp: str) -> float:
        value = r.scalar(node, kp)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            r.fail(node, kp, f"must be a number of seconds, not {value!r}")
        if not lo <= value <= hi:
            r.fail(node, kp, f"{value} is out of range ({lo}..{hi})")
        return float(value)
    return convert


def _seconds(lo: int, hi: int):
    """Whole seconds: `15`, or a Go duration in hours, minutes, seconds (`15s`, `1m30s`, `24h`)."""
    def convert(r: _Reader, node: yaml.Node, kp: str) -> int:
        value = r.scalar(node, kp)
        if isinstance(value, bool):
            r.fail(node, kp, f"expected seconds, not {value!r}", hint="e.g. 15 or 15s")
        if isinstance(value, int):
            seconds = value
        else:
            m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", str(value).strip())
            if not m or not any(m.groups()):
                r.fail(node, kp, f"'{value}' is not a duration in whole seconds", hint="e.g. 15, 15s, 1m30s or 24h")
            seconds = int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + int(m[3] or 0)
        if not lo <= seconds <= hi:
            r.fail(node, kp, f"{seconds}s is out of range ({lo}s to {hi}s)")
        return seconds
    return convert


def _path(r: _Reader, node: yaml.Node, kp: str) -> Path:
    return Path(_str(r, node, kp)).expanduser()


def _dns_name(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = _str(r, node, kp)
    if len(value) > 253 or not _DNS_NAME.match(value):
        r.fail(node, kp, f"'{value}' is not a valid name",
               hint="use lower-case letters, digits, '-' and '.', e.g. controller-0")
    return value


def _ip(r: _Reader, node: yaml.Node, kp: str):
    value = r.scalar(node, kp)
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        r.fail(node, kp, f"'{value}' is not an IP address")


def _address(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = str(r.scalar(node, kp)).strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or not _DNS_NAME.match(value.lower()):
        r.fail(node, kp, f"'{value}' is not an IP address or host name")
    return value


def _cidr(r: _Reader, node: yaml.Node, kp: str):
    value = str(r.scalar(node, kp)).strip()
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        r.fail(node, kp, f"'{value}' is not a CIDR: {exc}",
               hint="e.g. 10.32.0.0/24 (host bits must be zero)")
    min_prefix = 28 if net.version == 4 else 124
    if net.prefixlen > min_prefix:
        r.fail(node, kp, f"'{value}' is too small: the service range needs at least "
               f"/{min_prefix} ({2 ** (net.max_prefixlen - min_prefix)} addresses)",
               hint="the kubernetes Service takes the first IP and cluster DNS usually the tenth; "
                    "use e.g. 10.32.0.0/24")
    return net


def _url(schemes: tuple[str, ...]):
    def convert(r: _Reader, node: yaml.Node, kp: str) -> str:
        value = _str(r, node, kp)
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            r.fail(node, kp, f"'{value}' is not a URL: {exc}")
        if parts.scheme not in schemes:
            want = " or ".join(f"{s}://" for s in schemes)
            r.fail(node, kp, f"'{value}' must start with {want}",
                   hint="the API server only accepts https issuers and endpoints"
                   if schemes == ("https",) else None)
        if not parts.hostname:
            r.fail(node, kp, f"'{value}' has no host")
        host = parts.hostname
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _DNS_NAME.match(host):
                r.fail(node, kp, f"'{value}': '{host}' is not a valid host name")
        if port == 0:
            r.fail(node, kp, f"'{value}': port 0 is not a port")
        return value
    return convert


_https = _url(("https",))


def _san(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = str(r.scalar(node, kp)).strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    wildcard = value[2:] if value.startswith("*.") else value
    if not wildcard or not _DNS_NAME.match(wildcard.lower()) or re.fullmatch(r"[0-9.]+", value):
        r.fail(node, kp, f"'{value}' is neither an IP address nor a DNS name")
    return value


def _subject(r: _Reader, node: yaml.Node, kp: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, yaml.MappingNode):
        r.fail(node, kp, f"must be a mapping like {{C: VN, OU: k8s-scratch}}, not {_kind(node)}")
    out = []
    seen = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        sub = f"{kp}.{key}"
        if key in seen:
            r.fail(key_node, sub, "duplicate key")
        seen.add(key)
        if key in ("O", "CN"):
            r.fail(key_node, sub, f"{key} cannot be a default: each certificate sets its own",
                   hint="O and CN carry the identity (O=system:masters, CN=admin); "
                        f"allowed defaults: {', '.join(SUBJECT_KEYS)}")
        if key not in SUBJECT_KEYS:
            close = difflib.get_close_matches(key, SUBJECT_KEYS, n=1)
            r.fail(key_node, sub, "unknown subject attribute",
                   hint=f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(SUBJECT_KEYS)}")
        value = _str(r, value_node, sub)
        if key == "C" and not re.fullmatch(r"[A-Z]{2}", value):
            r.fail(value_node, sub, f"'{value}' is not a two-letter country code (e.g. VN)")
        r.lines[sub] = key_node.start_mark.line + 1
        out.append((key, value))
    return tuple(out)


def _key_algorithm(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = _str(r, node, kp).lower()
    if value not in KEY_ALGORITHMS:
        close = difflib.get_close_matches(value, KEY_ALGORITHMS, n=1)
        r.fail(node, kp, f"'{value}' is not supported",
               hint=(f"did you mean '{close[0]}'? " if close else "") + f"one of: {', '.join(KEY_ALGORITHMS)}")
    return value


def _authorization_mode(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = _str(r, node, kp)
    if value not in AUTHORIZATION_MODES:
        close = difflib.get_close_matches(value, AUTHORIZATION_MODES, n=1)
        r.fail(node, kp, f"'{value}' is not an authorization mode",
               hint=(f"did you mean '{close[0]}'? " if close else "") + f"one of: {', '.join(AUTHORIZATION_MODES)}")
    return value


def _extra_flags(r: _Reader, node: yaml.Node, kp: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, yaml.MappingNode):
        r.fail(node, kp, f"must be a mapping of flag: value, not {_kind(node)}")
    out = []
    seen = set()
    for key_node, value_node in node.value:
        name = str(key_node.value).strip()
        bare = name.lstrip("-")
        sub = f"{kp}.{bare}"
        if bare in seen:
            r.fail(key_node, sub, "duplicate flag")
        seen.add(bare)
        if not _FLAG_NAME.match(bare):
            r.fail(key_node, sub, f"'{name}' is not a flag name", hint="e.g. audit-log-path: /var/log/audit.log")
        value = r.scalar(value_node, sub)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif value is None:
            value = ""
        elif not isinstance(value, (str, int, float)):
            r.fail(value_node, sub, f"must be a single value, not {value!r}")
        r.lines[sub] = key_node.start_mark.line + 1
        out.append((bare, str(value)))
    return tuple(out)


def _list_of(item):
    def convert(r: _Reader, node: yaml.Node, kp: str) -> tuple:
        return r.seq(node, kp, item)
    return convert


def _host(r: _Reader, node: yaml.Node, kp: str) -> Host:
    v = r.mapping(node, kp, (
        _Field("name", _dns_name, required=True),
        _Field("address", _address, required=True),
        _Field("internal_ip", _ip, default=None),
    ))
    internal = v["internal_ip"]
    if internal is None:
        try:
            internal = ipaddress.ip_address(v["address"])
        except ValueError:
            r.fail(node, kp, "internal_ip is required when address is a host name")
    return Host(name=v["name"], address=v["address"], internal_ip=internal)


def _hosts(r: _Reader, node: yaml.Node, kp: str) -> tuple[Host, ...]:
    return r.seq(node, kp, _host)


def _cluster(r: _Reader, node: yaml.Node, kp: str) -> ClusterSpec:
    v = r.mapping(node, kp, (
        _Field("name", _dns_name, required=True),
        _Field("api_endpoint", _https, required=True),
        _Field("service_cidr", _cidr, required=True),
        _Field("cluster_domain", _dns_name, default="cluster.local"),
        _Field("service_account_issuer", _https, default=None),
        _Field("api_audiences", _list_of(_str), default=None),
    ))
    issuer = v["service_account_issuer"] or v["api_endpoint"]
    audiences = v["api_audiences"] or (issuer,)
    return ClusterSpec(name=v["name"], api_endpoint=v["api_endpoint"], service_cidr=v["service_cidr"],
                       cluster_domain=v["cluster_domain"], service_account_issuer=issuer,
                       api_audiences=tuple(audiences))


def _pki_defaults() -> PkiSettings:
    return PkiSettings(dir=Path("pki"), subject=())


def _pki(r: _Reader, node: yaml.Node, kp: str) -> PkiSettings:
    v = r.mapping(node, kp, (
        _Field("dir", _path, default=Path("pki")),
        _Field("subject", _subject, default=()),
        _Field("key_algorithm", _key_algorithm, default="rsa-2048"),
        _Field("ca_validity_days", _int_range(1, 36500), default=3650),
        _Field("cert_validity_days", _int_range(1, 36500), default=365),
        _Field("extra_sans", _list_of(_san), default=()),
    ))
    return PkiSettings(**v)


def _apiserver(r: _Reader, node: yaml.Node, kp: str) -> ApiserverSpec:
    v = r.mapping(node, kp, (
        _Field("anonymous_auth", _bool, default=False),
        _Field("authorization_mode", _list_of(_authorization_mode), default=("Node", "RBAC")),
        _Field("etcd_servers", _list_of(_url(("https", "http"))), default=()),
        _Field("extra_flags", _extra_flags, default=()),
        _Field("secure_port", _int_range(1, 65535), default=6443),
        _Field("templates", _path, default=None),
        _Field("shutdown_delay_duration", _seconds(0, 3600), default=15),
        # the real server's bounds: "must be between 1 hour and 2^32 seconds"
        _Field("service_account_max_token_expiration", _seconds(3600, 2**32), default=86400),
        _Field("service_account_extend_token_expiration", _bool, default=False),
        _Field("version", _kubernetes_version, default=DEFAULT_KUBERNETES_VERSION),
    ))
    if not v["authorization_mode"]:
        r.fail(node, f"{kp}.authorization_mode", "must name at least one mode", hint="e.g. [Node, RBAC]")
    v["shutdown_delay_seconds"] = v.pop("shutdown_delay_duration")
    v["service_account_max_token_expiration_seconds"] = v.pop("service_account_max_token_expiration")
    return ApiserverSpec(**v)


_ETCD_DEFAULT_DATA = "/var/lib/etcd/default"
# apiserver.version's default: the release whose API the rendered files follow (1.34 made the
# structured authentication configuration GA, apiserver.config.k8s.io/v1)
DEFAULT_KUBERNETES_VERSION = "1.34"


def parse_kubernetes_version(text: str) -> tuple[int, int]:
    """`1.34`, `v1.34.2` -> (1, 34); ValueError otherwise. (Here, not in k8sboot.authn: reading a
    version must not import the authentication package and its X.509 stack.)"""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(\.\d+)?", str(text).strip())
    if not m:
        raise ValueError(f"'{text}' is not a Kubernetes version like 1.34 or v1.34.2")
    return int(m.group(1)), int(m.group(2))


def _kubernetes_version(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = str(r.scalar(node, kp)).strip()
    try:
        major, minor = parse_kubernetes_version(value)
    except ValueError as exc:
        r.fail(node, kp, str(exc), hint="the kube-apiserver release you run, e.g. 1.34")
    if major != 1 or minor < 20 or minor > 99:
        r.fail(node, kp, f"'{value}' is not a kube-apiserver release k8sboot knows (1.20 or later)")
    return f"{major}.{minor}"


def _plain(r: _Reader, node: yaml.Node, kp: str):
    """A subtree as plain YAML values (mappings, lists, scalars), with the line of every key path
    recorded, for a section validated by a module of its own (`authentication`)."""
    r.lines[kp] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                r.fail(key_node, kp, "keys must be plain words")
            key = str(key_node.value)
            sub = f"{kp}.{key}"
            if key in out:
                r.fail(key_node, sub, "duplicate key")
            out[key] = _plain(r, value_node, sub)
            r.lines[sub] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(r, child, f"{kp}[{i}]") for i, child in enumerate(node.value)]
    return r.scalar(node, kp)


def _etcd_data_dir(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = _str(r, node, kp)
    norm = "/" + "/".join(p for p in value.split("/") if p not in ("", "."))
    if not value.startswith("/") or ".." in value.split("/"):
        r.fail(node, kp, f"'{value}' must be an absolute path without '..'", hint="e.g. /var/lib/etcd/k8s")
    if norm == _ETCD_DEFAULT_DATA:
        r.fail(node, kp, f"'{value}' is the data dir of the member Debian's etcd-server package runs",
               hint="use a directory of its own, e.g. /var/lib/etcd/<cluster name> (the default)")
    if norm.count("/") < 2:
        r.fail(node, kp, f"'{value}' is too close to the root for a data dir", hint="e.g. /var/lib/etcd/k8s")
    return norm


def _etcd(r: _Reader, node: yaml.Node, kp: str) -> EtcdSpec:
    v = r.mapping(node, kp, (
        _Field("data_dir", _etcd_data_dir, default=None),
        _Field("extra_flags", _extra_flags, default=()),
    ))
    return EtcdSpec(**v)


def _user(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = _str(r, node, kp)
    if not _USER.match(value):
        r.fail(node, kp, f"'{value}' is not a user name")
    return value


def _proxy_jump(r: _Reader, node: yaml.Node, kp: str) -> str:
    value = _str(r, node, kp)
    if not re.fullmatch(r"([A-Za-z0-9_.-]+@)?[A-Za-z0-9_.:\[\]-]+", value):
        r.fail(node, kp, f"'{value}' is not [user@]host[:port]")
    return value


def _ssh(r: _Reader, node: yaml.Node, kp: str) -> SshSettings:
    v = r.mapping(node, kp, (
        _Field("user", _user, default=None),                 # None: ~/.ssh/config's User, else root
        _Field("port", _int_range(1, 65535), default=None),  # None: ~/.ssh/config's Port, else 22
        _Field("identity_file", _path, default=None),
        _Field("known_hosts", _path, default=Path("~/.ssh/known_hosts").expanduser()),
        _Field("sudo", _bool, default=False),
        _Field("connect_timeout", _number_range(0.1, 600), default=10.0),
        _Field("proxy_jump", _proxy_jump, default=None),
        _Field("config_file", _path, default=None),
    ))
    return SshSettings(**v)
