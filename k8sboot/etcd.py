"""etcd on the controllers, as data (pure): one member per controller, its flags, its unit, its files.

`build_etcd_flags(inventory, host)` computes the member's command line (the tutorial's flags: the
member's name, TLS for clients and peers from etcd's own CA with client-cert-auth on both, URLs on
the internal IP and 127.0.0.1, the initial cluster from the inventory's controllers, the data dir)
and merges `etcd.extra_flags` under the same rules as `apiserver.extra_flags`: a flag may be added
or a tuning value changed, but none of what makes the member who it is (name, URLs, cluster, data
dir) or what secures it (TLS files, client/peer cert auth, no auto-TLS) may be changed or dropped.
`render_etcd_unit` formats them through `templates/etcd.service.j2`; `etcd_files` turns the unit
and the PKI bytes into the `DesiredFile`s a member holds, so the deploy engine installs them as it
installs kube-apiserver's.

`--initial-cluster-state` is always `new`: etcd reads every `--initial-cluster*` flag only while a
member's data dir is empty, so a member bootstrapped with the others keeps `new` for ever (a flip
to `existing` would restart every member once for nothing). A member that must JOIN a running
cluster (the cluster does not list it) needs `etcdctl member add` first and `existing`:
`check_join` says so and the deploy refuses it, rather than start a second cluster.

Also here: the answer of a member's `/health` (`parse_health`), the quorum arithmetic of a roll
(`check_quorum`) and the member list of the v3 JSON gateway (`parse_member_list`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from k8sboot import flags as flagmod
from k8sboot import layout, render
from k8sboot.errors import InventoryError, PkiError
from k8sboot.model import Host, Inventory
from k8sboot.plan import KIND_BINARY, KIND_PKI, KIND_UNIT, Component, DesiredDir, DesiredFile

ETCD_TEMPLATE = "etcd.service.j2"
HEALTH_PATH = "/health"
MEMBER_LIST_PATH = "/v3/cluster/member/list"     # etcd >= 3.4's gRPC gateway (POST, JSON)
INITIAL_CLUSTER_STATE = "new"

# Flags k8sboot computes that extra_flags may not change or drop: identity and URLs come from the
# inventory, TLS from the PKI layout (CIS 2.1-2.6: cert/key files, client-cert-auth, no auto-tls,
# peer TLS, peer client auth, no peer auto-tls).
PROTECTED_FLAGS: tuple[str, ...] = (
    "name", "data-dir", "initial-cluster", "initial-cluster-state", "initial-cluster-token",
    "initial-advertise-peer-urls", "listen-peer-urls", "listen-client-urls", "advertise-client-urls",
    "cert-file", "key-file", "peer-cert-file", "peer-key-file", "trusted-ca-file", "peer-trusted-ca-file",
    "client-cert-auth", "peer-client-cert-auth", "auto-tls", "peer-auto-tls",
)
_HINTS = {
    "data-dir": "set etcd.data_dir instead",
    "name": "the member's name is the controller's name in the inventory",
    "auto-tls": "etcd's auto-TLS makes self-signed certs nobody verifies (CIS 2.4); k8sboot ships etcd-server.pem",
    "peer-auto-tls": "etcd's peer auto-TLS makes self-signed certs nobody verifies (CIS 2.6); k8sboot ships "
                     "etcd-peer.pem",
}

DATA_DIR_MEMBER = "member"          # what etcd writes inside its data dir once it has bootstrapped


def data_dir(inventory: Inventory) -> str:
    return inventory.etcd.data_dir or layout.etcd_data_dir(inventory.cluster.name)


def _url(ip, port: int) -> str:
    host = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    return f"https://{host}:{port}"


def peer_url(host: Host) -> str:
    return _url(host.internal_ip, layout.ETCD_PEER_PORT)


def client_url(host: Host) -> str:
    return _url(host.internal_ip, layout.ETCD_CLIENT_PORT)


def initial_cluster(inventory: Inventory) -> str:
    return ",".join(f"{h.name}={peer_url(h)}" for h in inventory.controllers)


def build_etcd_flags(inventory: Inventory, host: Host) -> flagmod.Flags:
    """The etcd member's flags on `host`, in the tutorial's order, with `etcd.extra_flags` merged."""
    path = layout.etcd_path
    loopback = _url(ipaddress.ip_address("::1" if isinstance(host.internal_ip, ipaddress.IPv6Address)
                                         else "127.0.0.1"), layout.ETCD_CLIENT_PORT)
    flags: list[tuple[str, str]] = [
        ("name", host.name),
        ("cert-file", path(layout.cert_file(layout.ETCD_SERVER))),
        ("key-file", path(layout.key_file(layout.ETCD_SERVER))),
        ("peer-cert-file", path(layout.cert_file(layout.ETCD_PEER))),
        ("peer-key-file", path(layout.key_file(layout.ETCD_PEER))),
        ("trusted-ca-file", path(layout.cert_file(layout.ETCD_CA))),
        ("peer-trusted-ca-file", path(layout.cert_file(layout.ETCD_CA))),
        ("peer-client-cert-auth", "true"),
        ("client-cert-auth", "true"),
        ("initial-advertise-peer-urls", peer_url(host)),
        ("listen-peer-urls", peer_url(host)),
        ("listen-client-urls", f"{client_url(host)},{loopback}"),
        ("advertise-client-urls", client_url(host)),
        ("initial-cluster-token", f"etcd-{inventory.cluster.name}"),
        ("initial-cluster", initial_cluster(inventory)),
        ("initial-cluster-state", INITIAL_CLUSTER_STATE),
        ("data-dir", data_dir(inventory)),
    ]
    index = {name: i for i, (name, _) in enumerate(flags)}
    for name, value in inventory.etcd.extra_flags:
        key_path = f"etcd.extra_flags.{name}"
        where = inventory.where(key_path)
        if name in PROTECTED_FLAGS:
            current = flags[index[name]][1] if name in index else None
            if current is not None and value == current:
                continue
            what = "drop" if value == "" else "override" if current is not None else "set"
            raise InventoryError(
                f"{where}: {key_path}: would {what} --{name}"
                + (f" (k8sboot renders --{name}={current})" if current is not None else ""),
                hint=_HINTS.get(name, "identity, URLs and TLS of each member come from the inventory and the PKI "
                                      "layout; remove this key"))
        flagmod.set_extra_flag(flags, index, name, value, where, key_path)
    return tuple(flags)


@dataclass(frozen=True)
class RenderedEtcdUnit:
    host: Host
    flags: flagmod.Flags
    text: str


def templates_dir(override: Path | None = None) -> Path:
    """A user's template dir (`--templates`) holding etcd.service.j2, else the packaged one."""
    return render.template_dir_with(ETCD_TEMPLATE, override)


def render_etcd_unit(inventory: Inventory, host: Host, binary_path: str = layout.ETCD_PACKAGE_BINARY,
                     directory: Path | None = None) -> RenderedEtcdUnit:
    flags = build_etcd_flags(inventory, host)
    context = {
        "host": {"name": host.name, "internal_ip": str(host.internal_ip)},
        "cluster_name": inventory.cluster.name,
        "binary_path": binary_path,
        "exec_args": [flagmod.systemd_escape_arg(a) for a in flagmod.flags_to_argv(flags)],
    }
    text = render.render_template(directory or templates_dir(), ETCD_TEMPLATE, context)
    return RenderedEtcdUnit(host, flags, text)


# --- the component and its files ---------------------------------------------------------------

ETCD_DIR = DesiredDir(layout.ETCD_DIR, layout.ETCD_DIR_MODE)
BINARY_HINT = (f"k8sboot installs Debian's {layout.ETCD_PACKAGE} when it is missing; elsewhere pass --binary PATH "
               "with an etcd release binary")


def component(inventory: Inventory, *, uploaded_binary: bool = False) -> Component:
    return Component(name="etcd", unit=layout.ETCD_UNIT_NAME, state_dir=ETCD_DIR,
                     binary_path=layout.ETCD_UPLOADED_BINARY if uploaded_binary else layout.ETCD_PACKAGE_BINARY,
                     binary_hint=BINARY_HINT, unit_path=layout.ETCD_UNIT_PATH,
                     extra_dirs=(DesiredDir(data_dir(inventory), layout.ETCD_DATA_DIR_MODE),))


def desired_paths(*, binary: bool) -> tuple[str, ...]:
    paths = [f.path for f in layout.ETCD_FILES] + [layout.ETCD_UNIT_PATH]
    if binary:
        paths.append(layout.ETCD_UPLOADED_BINARY)
    return tuple(paths)


def etcd_files(pki_files: Mapping[str, bytes], unit_text: str, binary: bytes | None = None,
               pki_dir: Path | None = None,
               files: Sequence[layout.RemoteFile] = layout.ETCD_FILES) -> tuple[DesiredFile, ...]:
    """What every member holds: etcd's CA, serving and peer pairs, the unit, optionally the binary.
    PkiError (naming the file) when one is missing: run gen-certs."""
    missing = [f.local_name for f in files if f.local_name not in pki_files]
    if missing:
        where = ", ".join(str((pki_dir or Path("pki")) / m) for m in missing)
        raise PkiError(f"the local PKI has no etcd files: missing {where}",
                       hint="run `k8sboot gen-certs -i INV` (it adds etcd's CA and certs to an existing PKI "
                            "and changes nothing else)")
    out = [DesiredFile(f.path, pki_files[f.local_name], f.mode, f.owner, f.group, KIND_PKI) for f in files]
    out.append(DesiredFile(layout.ETCD_UNIT_PATH, unit_text.encode(), layout.UNIT_MODE, kind=KIND_UNIT))
    if binary is not None:
        out.append(DesiredFile(layout.ETCD_UPLOADED_BINARY, binary, layout.BINARY_MODE, kind=KIND_BINARY))
    return tuple(out)


# --- Debian's package --------------------------------------------------------------------------

APT_INSTALL_MARK = "@@k8sboot:apt"


def apt_install_script() -> str:
    """Install Debian's etcd-server without letting its postinst start Debian's own etcd.service
    (a default member on localhost, data in /var/lib/etcd/default): a policy-rc.d that denies
    every start while apt runs (only when the host has none). On failure: the last lines of
    apt's output after APT_INSTALL_MARK, exit 3."""
    pkg = layout.ETCD_PACKAGE
    return f"""\
set -u
command -v apt-get >/dev/null 2>&1 || {{ echo {APT_INSTALL_MARK}; echo "apt-get not found: not a Debian host"; exit 3; }}
pol=/usr/sbin/policy-rc.d; made=0
if [ ! -e "$pol" ]; then printf '#!/bin/sh\\nexit 101\\n' > "$pol" && chmod 755 "$pol" && made=1; fi
trap '[ "$made" = 1 ] && rm -f "$pol"' EXIT
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! apt-get install -y -q --no-install-recommends {pkg} >"$log" 2>&1; then
  apt-get update -q >>"$log" 2>&1
  if ! apt-get install -y -q --no-install-recommends {pkg} >>"$log" 2>&1; then
    echo {APT_INSTALL_MARK}; grep -E '^(E|W):' "$log" | tail -n 3; tail -n 1 "$log"; rm -f "$log"; exit 3
  fi
fi
rm -f "$log"
"""


# --- health, quorum, members -------------------------------------------------------------------


def parse_health(status: int | None, body: str) -> tuple[bool, str]:
    """(healthy, why) from a member's GET /health answer: `{"health":"true"}` and 200 only."""
    if status is None:
        return False, body or "no answer"
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status == 200 and isinstance(doc, dict) and doc.get("health") == "true":
        return True, "healthy"
    reason = doc.get("reason") if isinstance(doc, dict) else None
    return False, f"HTTP {status}: " + (f"{body.strip()[:200]}" if not reason else f"health false ({reason})")


def quorum(members: int) -> int:
    return members // 2 + 1


def check_quorum(healthy: Sequence[str], members: Sequence[str], going_down: Sequence[str]) -> str | None:
    """Why taking `going_down` out would lose quorum, or None. A single member has no quorum to
    keep: etcd is unavailable while it restarts, whatever the order."""
    if len(members) <= 1:
        return None
    left = [m for m in healthy if m not in going_down]
    need = quorum(len(members))
    if len(left) >= need:
        return None
    sick = [m for m in members if m not in healthy]
    return (f"taking etcd down on {', '.join(going_down)} would leave {len(left)} of {len(members)} members healthy "
            f"and quorum needs {need}" + (f" (not healthy now: {', '.join(sick)})" if sick else ""))


@dataclass(frozen=True)
class Member:
    name: str                  # '' for a member added but never started
    peer_urls: tuple[str, ...]


def parse_member_list(body: str) -> tuple[Member, ...] | None:
    """The members in the v3 gateway's answer to POST /v3/cluster/member/list; None if not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        return None
    return tuple(Member(str(m.get("name", "")), tuple(m.get("peerURLs") or ())) for m in doc["members"]
                 if isinstance(m, dict))


def check_join(host: Host, members: Sequence[Member] | None) -> str | None:
    """Why `host`, whose data dir is empty, must not start with `--initial-cluster-state=new`, given
    the member list of the running cluster (None: no member answered, the cluster is being born)."""
    if members is None:
        return None
    url = peer_url(host)
    for m in members:
        if url in m.peer_urls:
            if not m.name:
                return None        # a bootstrap member that never started: `new` completes it
            return (f"its etcd data dir is empty but the running cluster knows member {m.name} at {url}: its data "
                    "is lost, and starting it would not rejoin (remove it with `etcdctl member remove ID`, add it "
                    "back with `etcdctl member add`; deploy-etcd does not do that yet)")
    return (f"it has no etcd data and the running cluster does not list {url}: it must join with `etcdctl member "
            f"add {host.name} --peer-urls={url}` and --initial-cluster-state=existing, which deploy-etcd does not "
            "do yet; it refuses rather than start a second cluster")


# --- the API server's etcd, before deploy-apiserver restarts anything ----------------------------


@dataclass(frozen=True)
class ServerHealth:
    """One `--etcd-servers` URL as the workstation found it, with the API server's own client pair."""

    url: str
    healthy: bool
    why: str                   # "healthy", or what is wrong in a user's words
    probed: bool = True        # False: not asked (an http:// URL: k8sboot's members serve https only)

    def to_json(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "why": self.why, "probed": self.probed}


def explain_answer(status: int | None, text: str, *, ca: str, cert: str, timeout: float) -> tuple[bool, str]:
    """(healthy, why) for a member's GET /health answer (`text`: the body, or the error when there
    was no answer), in the words a user acts on: which side of TLS refused what, refused, no leader."""
    if status is not None:
        ok, why = parse_health(status, text)
        if not ok and "NO LEADER" in why.upper():
            return False, f"no leader: the member sees no quorum ({why})"
        if not ok and status == 503 and '"health":"false"' in text.replace(" ", ""):
            # etcd 3.4 says no more than this when it has no leader or its reads time out
            return False, f"unhealthy ({why}): it has no leader or cannot reach a quorum of members"
        return ok, why
    low = text.lower()
    if "tls verification failed" in low and ("mismatch" in low or "doesn't match" in low):
        return False, f"TLS: its serving certificate does not name this address ({text})"
    if "tls verification failed" in low:
        return False, f"TLS: unknown CA: its serving certificate is not signed by {ca} ({text.split(': ', 1)[-1]})"
    if "alert" in low and any(w in low for w in ("bad certificate", "unknown ca", "certificate required",
                                                 "certificate unknown", "decrypt error")):
        return False, (f"TLS: the member refused the client certificate {cert} (not signed by the etcd CA it "
                       "trusts)")
    if "refused" in low:
        return False, "connection refused (is etcd running there?)"
    if "timed out" in low or "timeout" in low:
        return False, f"no answer within {timeout:g}s"
    return False, text or "no answer"


def check_client_pair(ca_pem: bytes, cert_pem: bytes, ca_name: str, cert_name: str) -> str | None:
    """Why etcd (trusting `ca_pem`) would refuse the client cert `cert_pem`, or None. Offline: the
    signature only; a file that is not a certificate is left to the probe."""
    from k8sboot import pki
    from k8sboot.errors import K8sbootError

    from k8sboot.rotation import split_pem_certs

    try:
        cas = [pki.parse_cert(pem, ca_name) for pem in split_pem_certs(ca_pem)] or [pki.parse_cert(ca_pem, ca_name)]
        cert = pki.parse_cert(cert_pem, cert_name)
    except K8sbootError:
        return None
    if not any(pki.is_directly_issued_by(cert, ca) for ca in cas):      # (a rotation's bundle: any)
        return (f"{cert_name} is not signed by {ca_name}: etcd will refuse the API server's connections "
                "with it")
    return None


@dataclass(frozen=True)
class StorageCheck:
    """deploy-apiserver's look at its etcd before restarting anything: every `--etcd-servers` URL's
    GET /health with etcd's CA and the API server's apiserver-etcd-client pair. A quorum of the
    URLs healthy: the deploy goes on (kube-apiserver fails over among them); fewer: it refuses."""

    servers: tuple[ServerHealth, ...]
    pair_problem: str | None = None

    @property
    def probed(self) -> tuple[ServerHealth, ...]:
        return tuple(s for s in self.servers if s.probed)

    @property
    def healthy(self) -> tuple[ServerHealth, ...]:
        return tuple(s for s in self.probed if s.healthy)

    @property
    def needed(self) -> int:
        return quorum(len(self.probed)) if self.probed else 0

    @property
    def available(self) -> bool:
        return not self.probed or len(self.healthy) >= self.needed

    def lines(self) -> list[str]:
        """One line per server that is not healthy (and the pair, when etcd would refuse it)."""
        out = [f"etcd {s.url}: {s.why}" for s in self.servers if not s.healthy]
        if self.pair_problem:
            out.append(self.pair_problem)
        return out

    def summary(self) -> str:
        return (f"{len(self.healthy)} of {len(self.probed)} --etcd-servers healthy"
                + (f", quorum needs {self.needed}" if len(self.probed) > 1 else ""))

    def to_json(self) -> dict:
        return {"available": self.available, "healthy": len(self.healthy), "servers": len(self.probed),
                "needed": self.needed, "pair_problem": self.pair_problem,
                "members": [s.to_json() for s in self.servers]}


# --- a member's data dir: ours, or another cluster's -------------------------------------------

DATA_DIR_MARKER = "k8sboot-member.json"    # written by deploy-etcd into the data dir with the member's files


def marker_path(inventory: Inventory) -> str:
    return f"{data_dir(inventory)}/{DATA_DIR_MARKER}"


def cluster_token(inventory: Inventory) -> str:
    return dict(build_etcd_flags(inventory, inventory.controllers[0]))["initial-cluster-token"]


def render_marker(inventory: Inventory, host: Host) -> bytes:
    """Who made the data dir: cluster, initial-cluster-token, member. Stable for a member's life
    (the member set is left out: adding a controller changes no existing member's data)."""
    doc = {"cluster": inventory.cluster.name, "initial_cluster_token": cluster_token(inventory),
           "member": host.name, "written_by": "k8sboot deploy-etcd"}
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


def marker_file(inventory: Inventory, host: Host) -> DesiredFile:
    """The marker as a file of the set; k8sboot's record only: etcd never reads it, so writing it
    restarts nothing (etcd logs one "found invalid file/dir" warning for it at start)."""
    from k8sboot.plan import KIND_RECORD

    return DesiredFile(marker_path(inventory), render_marker(inventory, host), layout.KEY_MODE, kind=KIND_RECORD)


def check_data_dir(inventory: Inventory, host: Host, *, has_member: bool, marker: str,
                   unit_text: str | None) -> str | None:
    """Why `host`'s data dir is another cluster's, or None (empty, ours, or ours from before the
    marker: a member/ dir under k8sboot's own unit with this cluster's token and data dir). etcd
    reads --initial-cluster* only while a data dir is empty: on another cluster's data it would
    join that cluster, or fail with "cluster ID mismatch"."""
    where = data_dir(inventory)
    want = json.loads(render_marker(inventory, host))
    fields = ("cluster", "initial_cluster_token", "member")
    if marker.strip():
        try:
            got = json.loads(marker)
        except ValueError:
            got = None
        if isinstance(got, dict) and all(got.get(k) == want[k] for k in fields):
            return None
        seen = (", ".join(f"{k} {got.get(k, '?')}" for k in fields) if isinstance(got, dict)
                else "unreadable")
        return (f"the etcd data dir {where} was made for another cluster or member ({DATA_DIR_MARKER}: {seen}; "
                f"this inventory: " + ", ".join(f"{k} {want[k]}" for k in fields) + ")")
    if not has_member:
        return None
    if unit_text:
        argv = flagmod.parse_unit_exec_start(unit_text)
        flags = dict(flagmod.parse_argv_flags(argv)) if argv else {}
        if (flags.get("initial-cluster-token") == want["initial_cluster_token"] and flags.get("data-dir") == where
                and flags.get("name") == host.name):
            return None       # deployed before the marker existed: the plan writes it
    return (f"the etcd data dir {where} holds a member (member/) that this cluster's deploy-etcd did not make "
            f"(no {DATA_DIR_MARKER}, and no etcd unit of ours with --initial-cluster-token="
            f"{want['initial_cluster_token']} and --data-dir={where})")


def foreign_data_hint(inventory: Inventory, host: Host) -> str:
    where = data_dir(inventory)
    return (f"etcd would ignore --initial-cluster on it and join that cluster or fail with \"cluster ID mismatch\": "
            f"move it away on {host.name} (mv {where} {where}.old), or set etcd.data_dir in {inventory.path} to "
            "another directory; then rerun deploy-etcd")
