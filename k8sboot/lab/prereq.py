"""What the lab needs from this machine, checked before anything is made.

`check_prereqs` returns findings (it never raises); `require_prereqs` turns them into one
PrereqError naming everything missing and the exact fix (the apt command for the missing tools).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from k8sboot.errors import PrereqError

# tool -> Debian package that ships it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ssh": "openssh-client",
    "ip": "iproute2",
    "mount": "mount",
}


@dataclass(frozen=True)
class Finding:
    what: str              # "root", "linux", "systemd-nspawn", "overlayfs", ...
    problem: str
    package: str | None = None
    fix: str | None = None


def _has_overlayfs() -> bool:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return False
    if any(line.split()[-1] == "overlay" for line in text.splitlines() if line.strip()):
        return True
    return Path("/sys/module/overlay").exists()


def check_prereqs(need_debootstrap: bool = True, which=shutil.which, euid: int | None = None,
                  platform: str | None = None, overlayfs: bool | None = None) -> list[Finding]:
    """Everything missing for the lab; empty when all is there. Parameters allow pure tests."""
    platform = platform or sys.platform
    if not platform.startswith("linux"):
        return [Finding("linux", f"the lab needs Linux (this is {platform})",
                        fix="run the lab on a Linux machine or VM")]
    findings = []
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        findings.append(Finding("root", "the lab needs root (namespaces, mounts, cgroups)",
                                fix="run it as root, e.g. `sudo k8sboot lab up`"))
    for tool, package in TOOLS.items():
        if tool == "debootstrap" and not need_debootstrap:
            continue
        if not which(tool) and not any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/usr/sbin", "/sbin")):
            findings.append(Finding(tool, f"{tool} is not installed", package=package))
    if not (_has_overlayfs() if overlayfs is None else overlayfs):
        findings.append(Finding("overlayfs", "the kernel has no overlay filesystem",
                                fix="load it: `modprobe overlay` (CONFIG_OVERLAY_FS)"))
    return findings


def render_fix(findings: list[Finding]) -> str:
    packages = sorted({f.package for f in findings if f.package})
    fixes = [f.fix for f in findings if f.fix]
    if packages:
        fixes.append("apt-get install " + " ".join(packages))
    return "; ".join(fixes)


def require_prereqs(need_debootstrap: bool = True) -> None:
    findings = check_prereqs(need_debootstrap=need_debootstrap)
    if findings:
        raise PrereqError("the lab cannot run on this machine: " + "; ".join(f.problem for f in findings),
                          hint=render_fix(findings))
