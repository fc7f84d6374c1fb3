"""The lab's network: one bridge, one network namespace + veth per host, a guard route.

Only addresses of 10.240.0.0/24 are ever configured, and only on links this module creates:
the bridge `k8sb-br0` (10.240.0.1/24, the workstation side) and, inside each host's netns,
`eth0` with the host's address and a fixed MAC (so the workstation's ARP entry stays valid when
a host is reset). Hosts get no default route and IPv6 is off in every netns, on the bridge and
on its ports. `ip route blackhole 10.240.0.0/16` in the workstation's namespace guards the range
when the bridge is gone. IP forwarding is never touched.

Also here: the per-user inotify instance limit (each booted systemd holds ~7; the default 128
stops the ~18th host), raised on `up` and restored on `down`.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

from k8sboot.errors import LabError
from k8sboot.lab import plan
from k8sboot.lab.plan import HostSpec

INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_SAVED = plan.STATE_DIR / "inotify.orig"


def _ip(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(["ip", *args], input=input, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise LabError("configuring the lab network: `ip` is missing", hint="apt-get install iproute2") from exc
    if check and r.returncode != 0:
        what = "ip " + " ".join(args) if input is None else f"ip {' '.join(args)} <<< {input.strip()!r}"
        raise LabError(f"configuring the lab network: `{what}` failed: {r.stderr.strip()}")
    return r


def _write_sysctl(path: str | Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def disable_ipv6(link: str) -> None:
    p = Path("/proc/sys/net/ipv6/conf", link, "disable_ipv6")
    if p.exists():
        _write_sysctl(p, "1")


def ensure_bridge() -> bool:
    """The bridge with the workstation's lab address; True when created now."""
    created = False
    if not link_exists(plan.BRIDGE):
        _ip("link", "add", plan.BRIDGE, "type", "bridge")
        created = True
    disable_ipv6(plan.BRIDGE)
    addrs = _ip("-o", "-4", "addr", "show", "dev", plan.BRIDGE).stdout
    if f" {plan.GATEWAY}/{plan.NETWORK.prefixlen} " not in addrs:
        _ip("addr", "replace", f"{plan.GATEWAY}/{plan.NETWORK.prefixlen}", "dev", plan.BRIDGE)
    _ip("link", "set", plan.BRIDGE, "up")
    return created


def ensure_guard_route() -> None:
    _ip("route", "replace", "blackhole", str(plan.GUARD_ROUTE))


def guard_route_exists() -> bool:
    out = _ip("route", "show", "type", "blackhole", check=False).stdout
    return any(line.split()[1:2] == [str(plan.GUARD_ROUTE)] for line in out.splitlines())


def remove_guard_route() -> bool:
    if not guard_route_exists():
        return False
    _ip("route", "del", "blackhole", str(plan.GUARD_ROUTE), check=False)
    return True


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def _hex_addr(field: str) -> tuple[str, int]:
    ip_hex, port_hex = field.split(":")
    ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
    return ip, int(port_hex, 16)


def lab_sockets() -> list[str]:
    """Sockets of this network namespace still talking to the lab's range (that could send).

    While one exists, removing the guard route would let its packets leave by the default route.
    TIME_WAIT, FIN_WAIT2, CLOSE and LISTEN sockets send nothing on their own and are not counted.
    """
    found = []
    for proto in ("tcp", "udp"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 4:
                continue
            (lip, lport), (rip, rport) = _hex_addr(f[1]), _hex_addr(f[2])
            state = _TCP_STATES.get(f[3], f[3]) if proto == "tcp" else "connected"
            if rport == 0 or state in ("TIME_WAIT", "FIN_WAIT2", "CLOSE", "LISTEN"):
                continue
            if ipaddress.IPv4Address(rip) in plan.GUARD_ROUTE:
                found.append(f"{proto} {lip}:{lport} -> {rip}:{rport} ({state})")
    return found


def remove_bridge() -> bool:
    if not link_exists(plan.BRIDGE):
        return False
    _ip("neigh", "flush", "dev", plan.BRIDGE, check=False)
    _ip("link", "del", plan.BRIDGE, check=False)
    return True


def netns_exists(name: str) -> bool:
    return (plan.NETNS_DIR / name).exists()


def list_lab_netns() -> list[str]:
    try:
        return sorted(n for n in os.listdir(plan.NETNS_DIR) if n.startswith(plan.PREFIX))
    except FileNotFoundError:
        return []


def list_lab_links() -> list[str]:
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    return sorted(n for n in names if n == plan.BRIDGE or n.startswith(plan.VETH_PREFIX))


def _netns_ready(host: HostSpec) -> bool:
    return netns_exists(host.netns) and link_exists(host.veth)


def ensure_netns(hosts: list[HostSpec]) -> list[HostSpec]:
    """Each host's netns with eth0 = its address/24 on the bridge. Returns the hosts set up now."""
    todo = [h for h in hosts if not _netns_ready(h)]
    if not todo:
        return []
    for h in todo:                     # a half-made namespace from a killed run: start over
        remove_netns(h)
    batch = []
    for h in todo:
        batch.append(f"netns add {h.netns}")
        batch.append(f"link add {h.veth} type veth peer name eth0 address {h.mac} netns {h.netns}")
    _ip("-batch", "-", input="\n".join(batch) + "\n")
    for h in todo:
        disable_ipv6(h.veth)
    _ip("-batch", "-", input="".join(f"link set {h.veth} master {plan.BRIDGE} up\n" for h in todo))
    # inside each namespace: IPv6 off everywhere, lo up, the address, eth0 up; no default route
    procs = []
    for h in todo:
        inner = (f"link set lo up\naddr add {h.address}/{plan.NETWORK.prefixlen} dev eth0\n"
                 "link set eth0 up\n")
        script = ("for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > \"$f\"; done; "
                  "exec ip -batch -")
        p = subprocess.Popen(["ip", "netns", "exec", h.netns, "sh", "-c", script],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((h, p, inner))
    errors = []
    for h, p, inner in procs:
        _, err = p.communicate(inner)
        if p.returncode != 0:
            errors.append(f"{h.name}: {err.strip()}")
    if errors:
        raise LabError("configuring the lab network: " + "; ".join(errors))
    return todo


def remove_netns(host: HostSpec) -> None:
    """The host's veth, its ARP entry on the bridge and its namespace; quiet when absent."""
    if link_exists(host.veth):
        _ip("link", "del", host.veth, check=False)
    if link_exists(plan.BRIDGE):
        _ip("neigh", "del", host.address, "dev", plan.BRIDGE, check=False)
    if netns_exists(host.netns):
        _ip("netns", "del", host.netns, check=False)


def remove_netns_by_name(name: str) -> None:
    _ip("netns", "del", name, check=False)


def remove_link(name: str) -> None:
    _ip("link", "del", name, check=False)


def read_inotify_limit() -> int:
    return int(INOTIFY_SYSCTL.read_text().strip())


def ensure_inotify_limit() -> int | None:
    """Raise fs.inotify.max_user_instances to the lab's need; the original is kept for `down`."""
    current = read_inotify_limit()
    if current >= plan.INOTIFY_INSTANCES:
        return None
    if not INOTIFY_SAVED.exists():
        INOTIFY_SAVED.write_text(f"{current}\n")
    _write_sysctl(INOTIFY_SYSCTL, str(plan.INOTIFY_INSTANCES))
    return current


def restore_inotify_limit() -> int | None:
    """Put back the limit saved by `ensure_inotify_limit`; returns it (None: nothing saved)."""
    try:
        original = int(INOTIFY_SAVED.read_text().strip())
    except (OSError, ValueError):
        return None
    _write_sysctl(INOTIFY_SYSCTL, str(original))
    INOTIFY_SAVED.unlink(missing_ok=True)
    return original
