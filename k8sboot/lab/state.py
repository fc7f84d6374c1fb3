"""What the lab made, recorded in `/run/k8sboot-lab/lab.json`, and the lock around every change.

The state file is a record, never the only source of truth: `down` also looks at what exists
(netns named `k8sb-*`, nspawn processes of our machines, our cgroups and mounts), so a crash or
a SIGKILL between an effect and its record still leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k8sboot.errors import LockedError
from k8sboot.lab import plan
from k8sboot.lab.plan import HostSpec


@dataclass
class HostRecord:
    spec: HostSpec
    pid: int | None = None
    starttime: int | None = None          # /proc/<pid>/stat field 22: guards against PID reuse
    cgroups: list[str] = field(default_factory=list)
    host_key: str | None = None           # "ssh-ed25519 AAAA..." (the known_hosts line's key)
    rootfs: str | None = None


@dataclass
class LabState:
    hosts: dict[str, HostRecord] = field(default_factory=dict)
    mounted_nspawn_tmpfs: bool = False
    mounted_run_netns: bool = False       # /run/netns was not a mount before our first netns
    apiserver_ready_delay: float = 0.0    # seconds in every controller's ready-delay drop-in (0: none)

    def to_json(self) -> str:
        return json.dumps({
            "version": 1,
            "mounted_nspawn_tmpfs": self.mounted_nspawn_tmpfs,
            "mounted_run_netns": self.mounted_run_netns,
            "apiserver_ready_delay": self.apiserver_ready_delay,
            "hosts": {n: {**asdict(r), "spec": asdict(r.spec)} for n, r in self.hosts.items()},
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw = json.loads(text)
        hosts = {}
        for name, r in raw.get("hosts", {}).items():
            spec = HostSpec(**r["spec"])
            hosts[name] = HostRecord(spec=spec, pid=r.get("pid"), starttime=r.get("starttime"),
                                     cgroups=list(r.get("cgroups", [])), host_key=r.get("host_key"),
                                     rootfs=r.get("rootfs"))
        return cls(hosts=hosts, mounted_nspawn_tmpfs=bool(raw.get("mounted_nspawn_tmpfs")),
                   mounted_run_netns=bool(raw.get("mounted_run_netns")),
                   apiserver_ready_delay=float(raw.get("apiserver_ready_delay") or 0.0))


def load_state(path: Path = plan.STATE_FILE) -> LabState:
    """The recorded state; an empty one when there is none or it cannot be read."""
    try:
        return LabState.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return LabState()


def write_state(state: LabState, path: Path = plan.STATE_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def write_known_hosts(state: LabState, path: Path = plan.KNOWN_HOSTS) -> None:
    """Exactly one line per live host, written atomically (readers never see half a file)."""
    entries = {r.spec.address: r.host_key for r in state.hosts.values() if r.host_key}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(plan.render_known_hosts(entries))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_leases(path: Path = plan.LEASE_FILE) -> list[dict]:
    """Recorded leases (live or not); kept outside the state tmpfs, so they outlive `down`."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [dict(x) for x in raw if isinstance(x, dict)] if isinstance(raw, list) else []


def write_leases(leases: list[dict], path: Path = plan.LEASE_FILE) -> None:
    if not leases:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(leases, indent=2))
    os.replace(tmp, path)


@contextlib.contextmanager
def lab_lock(path: Path = plan.LOCK_FILE, wait: bool = True):
    """One lab change at a time on this machine (`up`, `down`, `reset`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError("another `k8sboot lab` command is changing the lab",
                              hint=f"wait for it to finish (lock: {path})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
