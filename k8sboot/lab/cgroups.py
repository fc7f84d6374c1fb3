"""Each host's own cgroups: `<hierarchy>/.../k8sboot-lab/<machine>`.

nspawn splits the cgroup it starts in into `supervisor/` and `payload/`; two hosts started from
the same cgroup would share `payload/`, and each host's systemd would see (and stop) the other's
processes. So every nspawn is moved, before it execs, into a cgroup of its own in every hierarchy
nspawn and systemd use: on a hybrid machine (v1 controllers, `name=systemd`, cgroup2 under
`unified/`) that is `unified/`, `systemd/` and `memory/` (under the caller's own memory cgroup,
which also gives the per-host memory figure); on a pure cgroup2 machine, `/sys/fs/cgroup/k8sboot-lab`
with the memory controller enabled for its children (not exercised on the reference machine).

`down` finds our cgroups from the state file and by name (`k8sboot-lab`) in every hierarchy.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from k8sboot.lab import plan

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> str:
    """This process's cgroup path in a v1 hierarchy (`memory`), or in v2 (`""` = the 0:: line)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return path
                if controller == "" and ctrls == "":
                    return path
    except OSError:
        pass
    return "/"


def is_pure_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def lab_parents() -> list[Path]:
    """The `k8sboot-lab` directories under which each host gets its own cgroup."""
    parents: list[Path] = []
    if is_pure_v2():
        return [CGROUP_ROOT / plan.CGROUP_NAME]
    if (CGROUP_ROOT / "unified" / "cgroup.procs").exists():
        parents.append(CGROUP_ROOT / "unified" / plan.CGROUP_NAME)
    if (CGROUP_ROOT / "systemd" / "cgroup.procs").exists():
        parents.append(CGROUP_ROOT / "systemd" / plan.CGROUP_NAME)
    if (CGROUP_ROOT / "memory" / "cgroup.procs").exists():
        own = _own_path("memory").strip("/")
        parents.append(CGROUP_ROOT / "memory" / own / plan.CGROUP_NAME if own
                       else CGROUP_ROOT / "memory" / plan.CGROUP_NAME)
    return parents


def create_host_cgroups(machine: str) -> list[Path]:
    dirs = []
    for parent in lab_parents():
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
            if is_pure_v2():
                _enable_memory_v2(parent)
        d = parent / machine
        d.mkdir(exist_ok=True)
        dirs.append(d)
    return dirs


def _enable_memory_v2(parent: Path) -> None:
    try:
        with open(parent / "cgroup.subtree_control", "w") as f:
            f.write("+memory")
    except OSError:
        pass   # no memory figure, the lab still works


def memory_bytes(dirs: list[str] | list[Path]) -> int | None:
    """The host's memory charge (v1 memory.usage_in_bytes or v2 memory.current), page cache included."""
    for d in map(Path, dirs):
        for name in ("memory.usage_in_bytes", "memory.current"):
            try:
                return int((d / name).read_text())
            except (OSError, ValueError):
                continue
    return None


def pids_in(dirs: list[str] | list[Path]) -> set[int]:
    """Every process in these cgroups and their sub-cgroups (the host's systemd makes its own)."""
    pids: set[int] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for root, _subdirs, _files in os.walk(d):
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
    return pids


def remove_tree(d: Path, timeout: float = 3.0) -> bool:
    """rmdir the cgroup and its children, deepest first; retry while the kernel still frees them."""
    if not d.is_dir():
        return True
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        for root, subdirs, _files in os.walk(d, topdown=False):
            try:
                os.rmdir(root)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    busy = True
                else:
                    raise
        if not busy or not d.exists():
            return not d.exists()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def find_lab_cgroups(max_depth: int = 5) -> list[Path]:
    """Every `k8sboot-lab` cgroup directory in every mounted hierarchy (for cleanup after a crash)."""
    found: list[Path] = []
    bases = [CGROUP_ROOT] if is_pure_v2() else [
        p for p in (CGROUP_ROOT / n for n in ("unified", "systemd", "memory")) if p.is_dir()]
    for base in bases:
        base_depth = len(base.parts)
        for root, subdirs, _files in os.walk(base):
            depth = len(Path(root).parts) - base_depth
            if plan.CGROUP_NAME in subdirs:
                found.append(Path(root) / plan.CGROUP_NAME)
            # never descend into our own trees or too deep
            subdirs[:] = [s for s in subdirs if s != plan.CGROUP_NAME] if depth < max_depth else []
    return found
