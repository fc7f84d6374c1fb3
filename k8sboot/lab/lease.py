"""Who is using the lab, so that one test session or benchmark does not take it from another.

The lab is one per machine. A process that depends on it (the pytest fixture, a benchmark) takes
a *lease*: `k8sboot lab up` run with `K8SBOOT_LAB_LEASE=<description>` in its environment records
its caller (the parent process) as a holder. While a holder lives, `down`, `reset` and an `up`
that would stop or boot hosts are refused (exit 17, LOCKED) for every process that is not the
holder or one of its descendants, unless `--force` (which also drops the other holders' leases).
A lease ends when its holder exits, or with a `lab down` run without K8SBOOT_LAB_LEASE; a
`lab down` run with it keeps the caller's lease, so a benchmark that cycles `up`/`down` keeps the
lab between cycles. Leases live in /run/lock (plan.LEASE_FILE), outside the lab's tmpfs.
"""

from __future__ import annotations

import os

from k8sboot.errors import LockedError
from k8sboot.lab import hosts

LEASE_ENV = "K8SBOOT_LAB_LEASE"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2:].split()[1])


def ancestors(pid: int | None = None) -> set[int]:
    """This process and every ancestor up to PID 1."""
    pid = os.getpid() if pid is None else pid
    chain: set[int] = set()
    while pid and pid not in chain:
        chain.add(pid)
        pid = _ppid(pid) or 0
    return chain


def live(lease: dict) -> bool:
    return hosts.alive(lease.get("pid"), lease.get("starttime"))


def foreign_leases(leases: list[dict]) -> list[dict]:
    mine = ancestors()
    return [x for x in leases if live(x) and x.get("pid") not in mine]


def describe(lease: dict) -> str:
    cmd = lease.get("cmdline") or "?"
    return f"PID {lease.get('pid')} (`{cmd[:80]}`, lease '{lease.get('description', '')}')"


def check_free(leases: list[dict], doing: str, force: bool = False) -> None:
    """LockedError when another live holder depends on the lab (and `force` is not given)."""
    others = foreign_leases(leases)
    if others and not force:
        raise LockedError(f"cannot {doing}: the lab is in use by " + ", ".join(describe(x) for x in others),
                          hint="wait until it has finished, or pass --force to take the lab from it")


def take_lease(leases: list[dict], description: str, holder: int) -> list[dict]:
    """The leases with `holder` added (once); leases of dead holders are dropped."""
    kept = [x for x in leases if live(x) and x.get("pid") != holder]
    st = hosts.proc_stat(holder)
    if st is None:
        return kept
    cmdline = " ".join(hosts.proc_cmdline(holder))
    return [*kept, {"pid": holder, "starttime": st[1], "description": description, "cmdline": cmdline}]
