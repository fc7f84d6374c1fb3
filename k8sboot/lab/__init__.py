"""`k8sboot lab`: real controller hosts on one Linux machine.

Each host is a `systemd-nspawn --boot` container: real systemd as PID 1, journald, dbus and
sshd, its own network namespace and address on the private bridge `k8sb-br0`
(controller-0 = 10.240.0.10, ...; workers after the controllers; with `--lb` the load balancer
lb-0 = 10.240.0.5 running Debian's HAProxy; with `--idp` the OIDC identity provider idp-0 =
10.240.0.2 running Debian's nginx, see idp.py), and its own overlay over one shared, cached,
debootstrapped Debian bookworm root. The lab writes `inventory/lab.yaml` for the hosts (the lab's
SSH key, an exact known_hosts, strict checking on; api_endpoint = lb-0 when there is one).

    up(controllers, workers, load_balancers, apiserver_ready_delay, idp)
                               boot what is missing, stop what is no longer asked for, wait
                               until every new host's systemd says `running`, set the
                               controllers' ready-delay drop-in, write the inventory
    down()                     remove everything the lab made, from the state file and from what
                               exists (also after a crash or a SIGKILLed `up`)
    status()                   the hosts and their state
    reset(name)                one host with a fresh root (its upper dropped), booted again

This package is the only place that runs systemd-nspawn, ip, mount or writes sysctls. It
prints nothing: progress goes to the `report(topic, message)` callback the CLI passes.

The pitfalls met by the measured recipe, and where each is handled: no system bus (nspawn
`--keep-unit --register=no`, plan.build_nspawn_argv); nspawn's propagate dir must be on tmpfs
(mounts.ensure_nspawn_tmpfs); a 0-byte machine-id (plan.ROOTFS_FILES); one cgroup per host in
unified + name=systemd + memory (cgroups); the inotify instance limit (net.ensure_inotify_limit);
a fixed MAC per address and `ip neigh del` (plan.mac_for, net.remove_netns); zombies counted as
gone (hosts.alive); hostname/resolv.conf copied by debootstrap (plan.ROOTFS_FILES).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from k8sboot.errors import LabError

Report = Callable[[str, str], None]     # (topic: "rootfs" | host name | "lab", message)


@dataclass(frozen=True)
class HostStatus:
    name: str
    role: str
    address: str
    state: str                  # running | degraded | starting | stopped | unreachable | ...
    memory_bytes: int | None
    pid: int | None
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "address": self.address, "state": self.state,
                "memory_bytes": self.memory_bytes, "pid": self.pid, "detail": self.detail}


@dataclass(frozen=True)
class UpResult:
    hosts: tuple[HostStatus, ...]
    started: tuple[str, ...]
    kept: tuple[str, ...]
    stopped: tuple[str, ...]
    rootfs: Path
    rootfs_built: bool
    inventory: Path
    inventory_written: bool
    seconds: float
    boot_seconds: float = 0.0
    apiserver_ready_delay: float = 0.0
    reconfigured: tuple[str, ...] = ()      # running controllers whose ready-delay drop-in changed
    idp: object | None = None               # idp.IdpMaterial with `idp` (issuer, kid, CA path)

    @property
    def changed_nothing(self) -> bool:
        return (not self.started and not self.stopped and not self.rootfs_built and not self.inventory_written
                and not self.reconfigured)


@dataclass(frozen=True)
class DownResult:
    stopped: tuple[str, ...]
    removed: tuple[str, ...]            # what was cleaned: "netns k8sb-controller-0", "bridge k8sb-br0", ...
    notes: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class ResetResult:
    host: HostStatus
    seconds: float


def _quiet(topic: str, message: str) -> None:
    pass


# --- status ------------------------------------------------------------------------------------


def _record_alive(rec) -> bool:
    from k8sboot.lab import hosts

    return bool(rec.pid) and hosts.alive(rec.pid, rec.starttime) and hosts.is_our_nspawn(rec.pid, rec.spec.machine)


def status(query: bool = True) -> list[HostStatus]:
    """The recorded hosts (and stray ones found without a record) with their current state.

    `query`: ask each live host's systemd over SSH (`is-system-running`), in parallel.
    """
    from k8sboot.lab import cgroups, hosts, net, plan
    from k8sboot.lab.state import load_state

    state = load_state()
    records = sorted(state.hosts.values(), key=lambda r: _octet(r.spec.address))
    live = {r.spec.name: _record_alive(r) for r in records}

    def one(rec) -> HostStatus:
        if not live[rec.spec.name]:
            st = "stopped"
        elif query:
            st = hosts.query_state(rec.spec.address)
        else:
            st = "up"
        return HostStatus(rec.spec.name, rec.spec.role, rec.spec.address, st,
                          cgroups.memory_bytes(rec.cgroups) if live[rec.spec.name] else None,
                          rec.pid if live[rec.spec.name] else None)

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(records)))) as ex:
        result = list(ex.map(one, records))
    known = {r.spec.machine for r in records}
    for pid, machine in hosts.find_lab_nspawns().items():
        if machine not in known:
            name = machine[len(plan.PREFIX):]
            result.append(HostStatus(name, "?", "?", "stray", None, pid,
                                     "running without a record: `k8sboot lab down` removes it"))
    for ns in net.list_lab_netns():
        if ns not in {r.spec.netns for r in records} and ns not in {plan.PREFIX + h.name for h in result}:
            result.append(HostStatus(ns[len(plan.PREFIX):], "?", "?", "stray", None, None,
                                     f"network namespace {ns} left over: `k8sboot lab down` removes it"))
    return result


def leases() -> list[dict]:
    """Live leases: who depends on the lab now (see lease.py)."""
    from k8sboot.lab import lease as lease_mod
    from k8sboot.lab.state import load_leases

    return [x for x in load_leases() if lease_mod.live(x)]


def _octet(address: str) -> int:
    try:
        return int(address.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 999


# --- up ----------------------------------------------------------------------------------------


def up(controllers: int = 3, workers: int = 0, mirror: str | None = None,
       inventory: Path | None = None, boot_timeout: float = 90.0,
       report: Report | None = None, lease: str | None = None, lease_holder: int | None = None,
       force: bool = False, load_balancers: int = 0, apiserver_ready_delay: float = 0.0,
       idp: bool = False) -> UpResult:
    """Bring the lab to `controllers` + `workers` + `load_balancers` running hosts (idempotent).

    `idp`: also idp-0, the lab's OIDC identity provider (idp.py); its keys are made in
    plan.IDP_DIR first when missing. Without it a running idp-0 is stopped (its keys stay).

    `apiserver_ready_delay`: seconds the controllers' kube-apiserver stand-in fails /readyz after
    each start (a lab-only drop-in, plan.READY_DELAY_DROPIN; 0 removes it). New hosts get it in
    their root before they boot; running ones over SSH, with a daemon-reload and no restart.
    `lease`: record `lease_holder` (default: this process) as depending on the lab (lease.py);
    `force`: go ahead even when another holder depends on the lab.
    """
    import os

    from k8sboot.lab import cgroups, hosts, mounts, net, plan, prereq, rootfs
    from k8sboot.lab import lease as leases
    from k8sboot.lab.state import (HostRecord, lab_lock, load_leases, load_state, write_known_hosts,
                                   write_leases, write_state)

    report = report or _quiet
    t0 = time.monotonic()
    try:
        specs = plan.build_host_specs(controllers, workers, load_balancers, int(idp))
        plan.check_ready_delay(apiserver_ready_delay)
    except ValueError as exc:
        raise LabError(f"planning the lab: {exc}") from None
    need_build = rootfs.find_rootfs() is None
    prereq.require_prereqs(need_debootstrap=need_build)
    inventory = inventory or plan.INVENTORY_PATH
    standin = hosts.standin_sources()

    root, built = rootfs.ensure_rootfs(mirror, report=lambda text, n: report("rootfs", text))
    standin.update(hosts.standin_bytecode(standin, root))
    with lab_lock():
        mounts.ensure_state_tmpfs()
        plan.HOSTS_DIR.mkdir(mode=0o700, exist_ok=True)
        state = load_state()
        if mounts.ensure_nspawn_tmpfs():
            state.mounted_nspawn_tmpfs = True
        net.ensure_bridge()
        net.ensure_guard_route()
        net.ensure_inotify_limit()

        running = {n: r.spec for n, r in state.hosts.items()
                   if _record_alive(r) and mounts.is_mountpoint(r.spec.root)}
        recorded_dead = {n: r.spec for n, r in state.hosts.items() if n not in running}
        lab_plan = plan.build_lab_plan(specs, running, recorded_dead)
        material = None
        if idp:
            from k8sboot.lab import idp as idp_mod

            material = idp_mod.ensure_material(plan.IDP_DIR)
            if material.created:
                # new keys or a new serving cert: a running idp-0 serves the old ones, boot it again
                lab_plan = plan.LabPlan(
                    keep=tuple(h for h in lab_plan.keep if h.role != "idp"),
                    start=lab_plan.start + tuple(h for h in lab_plan.keep if h.role == "idp"),
                    stop=lab_plan.stop + tuple(h for h in lab_plan.keep if h.role == "idp"))
        # running controllers whose drop-in must change (new hosts get it before they boot)
        resync = [h for h in lab_plan.keep if h.role == "controller"] \
            if state.apiserver_ready_delay != apiserver_ready_delay else []

        # what runs without a record (a SIGKILLed `up` between spawn and record): stop it too
        known_machines = {r.spec.machine for n, r in state.hosts.items() if n in running}
        strays = {pid: m for pid, m in hosts.find_lab_nspawns().items() if m not in known_machines}
        held = load_leases()
        if not lab_plan.changes_nothing or strays or resync:
            leases.check_free(held, f"bring the lab to {_shape(controllers, workers, load_balancers, idp)}", force)
        if lease:
            write_leases(leases.take_lease(held, lease, lease_holder or os.getpid()))
        to_stop = [state.hosts[h.name] for h in lab_plan.stop]
        if to_stop or strays:
            for rec in to_stop:
                report(rec.spec.name, "stopping")
            notes = hosts.stop_hosts(to_stop, hard=False, extra_pids=strays)
            for n in notes:
                report("lab", n)
        for rec in to_stop:
            hosts.remove_host_files(rec.spec, rec.cgroups)
            net.remove_netns(rec.spec)
            del state.hosts[rec.spec.name]
        # leftovers of hosts about to start (crash): their cgroups, mounts, directory
        for spec in lab_plan.start:
            cg = [p / spec.machine for p in cgroups.lab_parents()]
            hosts.kill_cgroup_tree(cg)
            hosts.remove_host_files(spec, [str(c) for c in cg])
        write_state(state)

        had_run_netns = mounts.is_mountpoint(plan.NETNS_DIR)
        net.ensure_netns(list(lab_plan.start))
        if not had_run_netns and mounts.is_mountpoint(plan.NETNS_DIR):
            state.mounted_run_netns = True

        client_public = hosts.ensure_client_key()
        for spec in lab_plan.start:
            extra = idp_mod.host_files(material) if spec.role == "idp" and material else ()
            host_key = hosts.prepare_root(spec, root, client_public, standin, apiserver_ready_delay, extra)
            state.hosts[spec.name] = HostRecord(spec=spec, host_key=host_key, rootfs=str(root))
        write_known_hosts(state)
        write_state(state)
        t_launch = time.monotonic()
        for spec in lab_plan.start:
            pid, starttime, cg = hosts.launch(spec)
            rec = state.hosts[spec.name]
            rec.pid, rec.starttime, rec.cgroups = pid, starttime, cg
            report(spec.name, f"booting (pid {pid})")
        write_state(state)

        # wait for every host (kept ones answer at once)
        def wait(spec):
            rec = state.hosts[spec.name]
            r = hosts.wait_ready(spec, rec, boot_timeout,
                                 on_banner=lambda: report(spec.name, "sshd up, waiting for systemd"))
            report(spec.name, r.state + (f" ({r.detail})" if r.detail else ""))
            return spec, r

        with ThreadPoolExecutor(max_workers=max(1, min(64, len(specs)))) as ex:
            ready = dict((s.name, r) for s, r in ex.map(wait, specs))
        boot_seconds = time.monotonic() - t_launch

        statuses = tuple(
            HostStatus(s.name, s.role, s.address, ready[s.name].state,
                       cgroups.memory_bytes(state.hosts[s.name].cgroups),
                       state.hosts[s.name].pid, ready[s.name].detail)
            for s in specs)
        failed = [h for h in statuses if h.name in {s.name for s in lab_plan.start} and h.state != "running"]
        if failed:
            raise LabError("the lab did not come up: " + "; ".join(
                f"{h.name} is {h.state}" + (f": {h.detail}" if h.detail else "") for h in failed),
                hint="the hosts stay up for inspection (`k8sboot lab status`, "
                     f"console logs in {plan.HOSTS_DIR}/<name>/console.log); `k8sboot lab down` removes them")

        reconfigured = _sync_ready_delay(resync, apiserver_ready_delay, report)
        if state.apiserver_ready_delay != apiserver_ready_delay:
            state.apiserver_ready_delay = apiserver_ready_delay
            write_state(state)

        written = _write_inventory(inventory, plan.render_lab_inventory(specs, idp_ca=plan.IDP_DIR / "ca.pem"))
    return UpResult(hosts=statuses, started=tuple(s.name for s in lab_plan.start),
                    kept=tuple(s.name for s in lab_plan.keep), stopped=tuple(s.name for s in lab_plan.stop),
                    rootfs=root, rootfs_built=built, inventory=inventory, inventory_written=written,
                    seconds=time.monotonic() - t0, boot_seconds=boot_seconds,
                    apiserver_ready_delay=apiserver_ready_delay, reconfigured=reconfigured, idp=material)


def _shape(controllers: int, workers: int, load_balancers: int, idp: bool = False) -> str:
    return f"{controllers} controllers and {workers} workers" + (
        f" behind {load_balancers} load balancer(s)" if load_balancers else "") + (
        " with an identity provider" if idp else "")


def _sync_ready_delay(controllers: list, seconds: float, report: Report) -> tuple[str, ...]:
    """The drop-in on running controllers, in parallel; the names of those that changed. A
    failure raises after all were tried (the state keeps the old value, so the next `up` tries
    again: the host side compares before it writes)."""
    from k8sboot.lab import hosts, plan

    if not controllers:
        return ()

    def one(spec):
        try:
            return spec, hosts.sync_ready_delay(spec, seconds), None
        except LabError as exc:
            return spec, False, exc

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(controllers)))) as ex:
        results = list(ex.map(one, controllers))
    errors = [exc for _, _, exc in results if exc is not None]
    if errors:
        raise errors[0] if len(errors) == 1 else LabError("; ".join(str(e) for e in errors), hint=errors[0].hint)
    changed = tuple(spec.name for spec, did, _ in results if did)
    value = plan.format_seconds(seconds)
    for name in changed:
        report(name, f"kube-apiserver ready delay {value} s (applies at its next restart)"
               if value != "0" else "kube-apiserver ready delay removed (applies at its next restart)")
    return changed


def _write_inventory(path: Path, text: str) -> bool:
    """Write `inventory/lab.yaml` only when its content changes; True when written."""
    import os

    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise LabError(f"writing the lab inventory {path}: {exc.strerror}") from exc
    return True


# --- reset -------------------------------------------------------------------------------------


def reset(name: str, boot_timeout: float = 90.0, report: Report | None = None,
          force: bool = False) -> ResetResult:
    """A fresh root for one host: stop it (no orderly poweroff, its root is dropped anyway),
    drop its overlay upper, write a new identity (new host key in known_hosts), boot, wait."""
    from k8sboot.lab import cgroups, hosts, net, plan, rootfs
    from k8sboot.lab import lease as leases
    from k8sboot.lab.state import lab_lock, load_leases, load_state, write_known_hosts, write_state

    report = report or _quiet
    t0 = time.monotonic()
    with lab_lock():
        state = load_state()
        leases.check_free(load_leases(), f"reset {name}", force)
        rec = state.hosts.get(name)
        if rec is None:
            known = ", ".join(sorted(state.hosts)) or "none (the lab is down)"
            raise LabError(f"resetting {name}: no such lab host (hosts: {known})",
                           hint="`k8sboot lab status` lists the hosts")
        root = Path(rec.rootfs) if rec.rootfs and Path(rec.rootfs).is_dir() else rootfs.find_rootfs()
        if root is None:
            raise LabError(f"resetting {name}: the lab's Debian root is gone", hint="run `k8sboot lab up`")
        spec = rec.spec
        hosts.stop_hosts([rec], hard=True)
        hosts.remove_host_files(spec, rec.cgroups)
        net.ensure_netns([spec])                  # kept across the reset; recreated if it was lost
        client_public = hosts.ensure_client_key()
        extra = ()
        if spec.role == "idp":
            from k8sboot.lab import idp as idp_mod

            extra = idp_mod.host_files(idp_mod.ensure_material(plan.IDP_DIR, spec))
        rec.host_key = hosts.prepare_root(spec, root, client_public, hosts.standin_sources(root),
                                          state.apiserver_ready_delay, extra)
        rec.rootfs = str(root)
        write_known_hosts(state)
        rec.pid, rec.starttime, rec.cgroups = hosts.launch(spec)
        write_state(state)
        report(name, f"booting (pid {rec.pid})")
        r = hosts.wait_ready(spec, rec, boot_timeout)
        if r.state != "running":
            raise LabError(f"resetting {name}: the host is {r.state}: {r.detail}",
                           hint="`k8sboot lab down` then `k8sboot lab up`")
        st = HostStatus(spec.name, spec.role, spec.address, r.state, cgroups.memory_bytes(rec.cgroups), rec.pid)
    return ResetResult(st, time.monotonic() - t0)


# --- down --------------------------------------------------------------------------------------


def down(timeout: float = 10.0, report: Report | None = None, force: bool = False,
         keep_lease: bool = False) -> DownResult:
    """Remove everything the lab made: processes (by PID: SIGTERM = orderly poweroff, then
    SIGKILL after `timeout`), mounts, netns, veths, bridge, guard route, cgroups; restore the
    inotify limit. Works from the state file and from what exists, so also after a crash.
    Leases are released, except the caller's own with `keep_lease`."""
    from k8sboot.lab import cgroups, hosts, mounts, net, plan
    from k8sboot.lab import lease as leases
    from k8sboot.lab.state import lab_lock, load_leases, load_state, write_leases

    report = report or _quiet
    t0 = time.monotonic()
    removed: list[str] = []
    notes: list[str] = []
    with lab_lock():
        state = load_state()
        held = load_leases()
        leases.check_free(held, "take the lab down", force)
        # the caller keeps its own lease only when it asks to (a benchmark between cycles)
        write_leases([x for x in held if keep_lease and leases.live(x) and x.get("pid") in leases.ancestors()])
        records = list(state.hosts.values())
        known = {r.spec.machine for r in records}
        strays = {pid: m for pid, m in hosts.find_lab_nspawns().items() if m not in known}
        live = [r.spec.name for r in records if _record_alive(r)] + sorted(strays.values())
        for name in live:
            report(name, "stopping")
        notes += hosts.stop_hosts(records, timeout=timeout, extra_pids=strays)
        # anything still in our cgroups (found by name, no record needed)
        lab_cgroups = cgroups.find_lab_cgroups()
        hosts.kill_cgroup_tree(lab_cgroups)
        for rec in records:
            notes += hosts.remove_host_files(rec.spec, rec.cgroups)
        for point in mounts.unmount_under(plan.HOSTS_DIR, include_self=False):
            removed.append(f"mount {point}")
        for d in lab_cgroups:
            if cgroups.remove_tree(d):
                removed.append(f"cgroup {d}")
            else:
                notes.append(f"cgroup {d} still busy")
        for rec in records:
            net.remove_netns(rec.spec)
            removed.append(f"netns {rec.spec.netns}")
        for ns in net.list_lab_netns():
            net.remove_netns_by_name(ns)
            removed.append(f"netns {ns}")
        for link in net.list_lab_links():
            if link != plan.BRIDGE:
                net.remove_link(link)
                removed.append(f"link {link}")
        if net.remove_bridge():
            removed.append(f"bridge {plan.BRIDGE}")
        talking = net.lab_sockets()
        if talking:
            # a client still talks to the lab's range: without the guard its packets would
            # leave by the default route; the next `down` removes the guard once they are gone
            notes.append(f"guard route blackhole {plan.GUARD_ROUTE} kept: {len(talking)} socket(s) still "
                         f"talk to the lab network ({'; '.join(talking[:3])})")
        elif net.remove_guard_route():
            removed.append(f"route blackhole {plan.GUARD_ROUTE}")
        original = net.restore_inotify_limit()
        if original is not None:
            removed.append(f"fs.inotify.max_user_instances restored to {original}")
        for point in mounts.unmount_under(plan.STATE_DIR):
            removed.append(f"mount {point}")
        for m in mounts.lab_mounts():
            if m.point == str(plan.NSPAWN_RUN_DIR):
                if hosts.find_any_nspawn():
                    notes.append(f"{m.point} kept: another systemd-nspawn runs")
                else:
                    mounts.unmount(m.point)
                    removed.append(f"mount {m.point}")
        if mounts.remove_run_netns_mount_if_empty():
            removed.append(f"mount {plan.NETNS_DIR}")
        for d in (plan.NETNS_DIR, plan.NSPAWN_RUN_DIR):     # empty dirs we created; recreated on use
            if not mounts.is_mountpoint(d):
                try:
                    d.rmdir()
                except OSError:
                    pass
        try:
            plan.STATE_DIR.rmdir()
        except OSError:
            pass
    stopped = tuple(live)
    return DownResult(stopped=stopped, removed=tuple(removed), notes=tuple(notes),
                      seconds=time.monotonic() - t0)
