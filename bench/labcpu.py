"""Where the CPU of a deploy goes on the lab hosts: their cgroups, summed over the hosts.

The lab puts each host under `<cgroup root>/k8sboot-lab/k8sb-<name>/` (unified hierarchy:
/sys/fs/cgroup/unified/ on a hybrid machine, /sys/fs/cgroup/ on a pure v2 one); the host's own
systemd makes `payload/init.scope` (PID 1), `payload/system.slice/<unit>` for its services, and
`payload/user.slice` for logged-in sessions. `cpu.stat`'s usage_usec counts a cgroup and all of
its children, also those already removed (an SSH session's scope), so two snapshots around a
command give what that command cost the hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PARTS = {
    "stand-in": ("payload/system.slice/kube-apiserver.service",),
    "sshd + commands": ("payload/system.slice/ssh.service", "payload/user.slice"),
    "PID 1": ("payload/init.scope",),
}
ALL = "all"


def lab_root() -> Path | None:
    for root in (Path("/sys/fs/cgroup/unified/k8sboot-lab"), Path("/sys/fs/cgroup/k8sboot-lab")):
        if (root / "cpu.stat").exists():
            return root
    return None


def usage_usec(cgroup: Path) -> int:
    """usage_usec of one cgroup (0 when it does not exist, e.g. a unit not started yet)."""
    try:
        text = (cgroup / "cpu.stat").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    return 0


def snapshot(root: Path | None = None) -> dict[str, int]:
    """usage_usec per part (PARTS, and ALL: everything in the hosts), summed over the hosts."""
    root = root or lab_root()
    out = {name: 0 for name in (*PARTS, ALL)}
    if root is None:
        return out
    for host in sorted(root.glob("k8sb-*")):
        out[ALL] += usage_usec(host)
        for name, paths in PARTS.items():
            out[name] += sum(usage_usec(host / p) for p in paths)
    return out


def spent(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """Seconds of CPU per part between two snapshots, with "other" = ALL minus the parts."""
    d = {name: max(0, after[name] - before[name]) / 1e6 for name in before}
    d["other"] = max(0.0, d[ALL] - sum(d[name] for name in PARTS))
    return d
