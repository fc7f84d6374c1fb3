"""The lab's mounts: the state tmpfs, nspawn's tmpfs, one overlay per host.

* `/run/k8sboot-lab` is a tmpfs (device name `k8sboot-lab`): state file, known_hosts, and each
  host's directory, whose overlay upper therefore lives in memory and vanishes with `down`.
* `/run/systemd/nspawn` must be a tmpfs or nspawn refuses to clean its propagation directory
  ("Attempted to remove disk file system ... and we can't allow that"); on a machine where /run
  is not a tmpfs we mount one (device name `k8sboot-nspawn`) and remove it on `down`.
* each host's root: overlay of the cached Debian root (lower, read-only) and its own upper.

Our mounts are recognised by their device names and mount points, so `down` also finds them
after a crash, when no state file says what was made.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from k8sboot.errors import LabError
from k8sboot.lab import plan


@dataclass(frozen=True)
class Mount:
    source: str
    point: str
    fstype: str
    options: str


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def list_mounts() -> list[Mount]:
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            if len(fields) < 5 or len(rfields) < 2:
                continue
            mounts.append(Mount(source=_unescape(rfields[1]), point=_unescape(fields[4]),
                                fstype=rfields[0], options=rfields[2] if len(rfields) > 2 else ""))
    return mounts


def is_mountpoint(path: Path) -> bool:
    p = str(path)
    return any(m.point == p for m in list_mounts())


def fstype_of(path: Path) -> str | None:
    """The fs type of the mount holding `path` (the longest mount-point prefix)."""
    p = str(path)
    best: Mount | None = None
    for m in list_mounts():
        if p == m.point or p.startswith(m.point.rstrip("/") + "/") or m.point == "/":
            if best is None or len(m.point) >= len(best.point):
                best = m
    return best.fstype if best else None


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"{what}: {(r.stderr or r.stdout).strip()}")


def ensure_state_tmpfs() -> bool:
    """The lab's state directory as a tmpfs; True when mounted now."""
    if is_mountpoint(plan.STATE_DIR):
        return False
    plan.STATE_DIR.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev", plan.STATE_FS_NAME, str(plan.STATE_DIR)],
         f"mounting the lab's state tmpfs on {plan.STATE_DIR}")
    return True


def ensure_nspawn_tmpfs() -> bool:
    """/run/systemd/nspawn on tmpfs (nspawn insists); True when we mounted it now."""
    plan.NSPAWN_RUN_DIR.mkdir(parents=True, exist_ok=True)
    if fstype_of(plan.NSPAWN_RUN_DIR) == "tmpfs":
        return False
    _run(["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev", plan.NSPAWN_FS_NAME, str(plan.NSPAWN_RUN_DIR)],
         f"mounting a tmpfs on {plan.NSPAWN_RUN_DIR} for systemd-nspawn")
    return True


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path, name: str) -> None:
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "overlay", name, "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(target)],
         f"mounting the overlay root of {name} on {target}")


def overlay_lower(target: Path) -> str | None:
    for m in list_mounts():
        if m.point == str(target) and m.fstype == "overlay":
            for opt in m.options.split(","):
                if opt.startswith("lowerdir="):
                    return opt[len("lowerdir="):]
    return None


def unmount(point: str | Path) -> None:
    """Unmount; lazily when busy (a process we just killed may still hold it for a moment)."""
    r = subprocess.run(["umount", str(point)], capture_output=True, text=True)
    if r.returncode != 0 and is_mountpoint(Path(point)):
        r = subprocess.run(["umount", "-l", str(point)], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError(f"unmounting {point}: {r.stderr.strip()}")


def unmount_under(path: Path, include_self: bool = True) -> list[str]:
    """Every mount at or below `path`, deepest first; returns the mount points removed."""
    p = str(path)
    points = [m.point for m in list_mounts()
              if m.point.startswith(p.rstrip("/") + "/") or (include_self and m.point == p)]
    done = []
    for point in sorted(set(points), key=len, reverse=True):
        unmount(point)
        done.append(point)
    return done


def lab_mounts() -> list[Mount]:
    """Mounts the lab made: the state tmpfs, anything below it, our nspawn tmpfs."""
    state = str(plan.STATE_DIR)
    return [m for m in list_mounts()
            if m.point == state or m.point.startswith(state + "/")
            or (m.point == str(plan.NSPAWN_RUN_DIR) and m.source == plan.NSPAWN_FS_NAME)]


def run_netns_is_our_mount() -> bool:
    """`ip netns add` turns /run/netns into a (shared) mount of itself the first time."""
    return is_mountpoint(plan.NETNS_DIR)


def remove_run_netns_mount_if_empty() -> bool:
    if not is_mountpoint(plan.NETNS_DIR):
        return False
    try:
        if os.listdir(plan.NETNS_DIR):
            return False
    except OSError:
        return False
    subprocess.run(["umount", str(plan.NETNS_DIR)], capture_output=True)
    return not is_mountpoint(plan.NETNS_DIR)
