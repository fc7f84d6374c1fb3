"""Booting, waiting for and stopping one lab host: systemd-nspawn with real systemd as PID 1.

Per host, in order: its overlay root is mounted (lower = the cached Debian root, upper on the
lab's tmpfs); its identity is written into the root before the boot (hostname, /etc/hosts, a new
ed25519 host key generated here, so known_hosts is exact; the lab key in root's
authorized_keys; the kube-apiserver stand-in on controllers and workers; what its role needs:
haproxy enabled on lb-0, nginx with its config, serving pair and documents on idp-0, the
ready-delay drop-in on controllers); then `systemd-nspawn --boot` is spawned in a new
session, already moved into its own cgroups, with its console in `console.log`. A host is ready
when port 22 answers with an SSH banner and `systemctl is-system-running --wait` says `running`.

Processes are only ever signalled by PID, after checking that the PID still is our nspawn (its
command line names our machine and our state dir; its start time matches the record), or that
it sits in one of the host's own cgroups. A zombie counts as gone: this machine's PID 1 may reap
orphans only every few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8sboot.errors import LabError
from k8sboot.lab import cgroups, mounts, plan
from k8sboot.lab.plan import HostSpec
from k8sboot.lab.state import HostRecord

SPAWN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# --- processes ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0], int(rest[19])


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def reap(pid: int) -> None:
    """Collect our own exited child (no zombie); quiet for a process that is not our child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(pid: int | None, starttime: int | None = None) -> bool:
    """True while `pid` runs (and is the process started at `starttime`); a zombie is gone."""
    if not pid:
        return False
    reap(pid)
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[1] == starttime


def is_our_nspawn(pid: int, machine: str) -> bool:
    return plan.parse_nspawn_machine(proc_cmdline(pid)) == machine


def find_lab_nspawns() -> dict[int, str]:
    """{pid: machine} of every live nspawn that runs one of our machines (from /proc, no record)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        machine = plan.parse_nspawn_machine(proc_cmdline(pid))
        if machine and alive(pid):
            found[pid] = machine
    return found


def find_any_nspawn() -> list[int]:
    """Live systemd-nspawn processes of anyone (to leave /run/systemd/nspawn alone if one runs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = proc_cmdline(int(entry))
            if argv and argv[0].endswith("systemd-nspawn") and alive(int(entry)):
                found.append(int(entry))
    return found


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- keys ---------------------------------------------------------------------------------------


def generate_ed25519(comment: str) -> tuple[bytes, str]:
    """(OpenSSH private key PEM, "ssh-ed25519 AAAA... comment")."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create with its mode from the start (never a chmod after), replacing atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_client_key(path: Path = plan.CLIENT_KEY) -> str:
    """The lab's client key pair (kept across `up`/`down`); returns the public key line."""
    pub = path.with_name(path.name + ".pub")
    if path.exists() and pub.exists():
        return pub.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    private, public = generate_ed25519("k8sboot-lab")
    _write_new(path, private, 0o600)
    _write_new(pub, (public + "\n").encode(), 0o644)
    return public


# --- one host's root ------------------------------------------------------------------------


def standin_sources(rootfs: Path | None = None) -> dict[str, bytes]:
    """The stand-in's modules from this installation of k8sboot: {path under the package dir:
    content}. With `rootfs`, also their byte code when the root's Python is this one's version."""
    import k8sboot

    pkg = Path(k8sboot.__file__).parent
    files = {}
    names = list(plan.STANDIN_MODULES)
    for package in plan.STANDIN_PACKAGES:
        names.extend(sorted(p.relative_to(pkg).as_posix() for p in (pkg / package).glob("*.py")))
    for name in names:
        try:
            files[name] = (pkg / name).read_bytes()
        except OSError as exc:
            raise LabError(f"installing the kube-apiserver stand-in: cannot read {pkg / name}: "
                           f"{exc.strerror}", hint="reinstall k8sboot (pip install -e .)") from exc
    if rootfs is not None:
        files.update(standin_bytecode(files, rootfs))
    return files


def standin_bytecode(sources: dict[str, bytes], rootfs: Path) -> dict[str, bytes]:
    """`__pycache__/NAME.cpython-3XY.pyc` for each module, compiled here once per `lab up`, when
    the root's Python has this interpreter's version (else {}: the host compiles on first start).
    Without it every fresh host compiles ~90 KB of source on the stand-in's first start (~50 ms of
    a shared core per host, in every first deploy after `lab reset`). Hash-checked byte code: the
    host's Python compares it with the source's hash, never with file times."""
    import py_compile
    import sys
    import tempfile

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = sys.implementation.cache_tag
    if not tag or not (rootfs / "usr" / "lib" / f"python{version}").is_dir():
        return {}
    out = {}
    with tempfile.TemporaryDirectory(prefix="k8sboot-standin-") as tmp:
        for name, data in sources.items():
            if not name.endswith(".py"):
                continue
            src = Path(tmp) / name
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            pyc = Path(tmp) / (name + "c")
            py_compile.compile(str(src), cfile=str(pyc), dfile=f"{plan.STANDIN_LIB}/k8sboot/{name}", doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            out[standin_pyc_path(name, tag)] = pyc.read_bytes()
    return out


def standin_pyc_path(name: str, tag: str) -> str:
    """`standin/flags.py` -> `standin/__pycache__/flags.<tag>.pyc` (where Python looks for it)."""
    head, _, base = name.rpartition("/")
    return f"{head + '/' if head else ''}__pycache__/{base[:-3]}.{tag}.pyc"


def _put(root: Path, path: str, data: bytes, mode: int) -> None:
    dest = Path(str(root) + path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_new(dest, data, mode)


def _mkdirs_readable(root: Path, path: str) -> None:
    """The directories of `path` in the root, those made here 0755 whatever the umask."""
    missing = []
    d = Path(str(root) + path)
    while not d.exists() and d != root:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)


def _link(root: Path, path: str, target: str) -> None:
    dest = Path(str(root) + path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    os.symlink(target, dest)


def prepare_root(host: HostSpec, rootfs: Path, client_public: str, standin: dict[str, bytes],
                 ready_delay: float = 0.0, extra_files: tuple[tuple[str, int, bytes], ...] = ()) -> str:
    """Mount the host's overlay and write its identity and its role's files into it; returns its
    host public key. A controller gets its lab-only drop-ins (plan.build_role_files): the stand-in's
    2 s reload interval, and `ready_delay` seconds of ready delay when not 0. `extra_files`
    (path, mode, content): what only this host gets, e.g. idp-0's nginx config, serving pair
    and documents (idp.host_files)."""
    host.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not mounts.is_mountpoint(host.root):
        mounts.mount_overlay(rootfs, host.upper, host.work, host.root, plan.PREFIX + host.name)
    r = host.root
    _put(r, "/etc/hostname", f"{host.name}\n".encode(), 0o644)
    _put(r, "/etc/hosts", f"127.0.0.1 localhost\n{host.address} {host.name}\n".encode(), 0o644)
    ssh_dir = Path(str(r) + "/root/.ssh")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _put(r, "/root/.ssh/authorized_keys", (client_public + "\n").encode(), 0o600)
    private, public = generate_ed25519(f"root@{host.name}")
    _put(r, "/etc/ssh/ssh_host_ed25519_key", private, 0o600)
    _put(r, "/etc/ssh/ssh_host_ed25519_key.pub", (public + "\n").encode(), 0o644)
    if host.role in ("controller", "worker"):   # a load balancer or an idp runs no kube-apiserver
        for name, data in standin.items():
            _put(r, f"{plan.STANDIN_LIB}/k8sboot/{name}", data, 0o644)
        _put(r, "/usr/local/bin/kube-apiserver", plan.STANDIN_LAUNCHER.encode(), 0o755)
    for path, mode, content in plan.build_role_files(host, ready_delay):
        _put(r, path, content.encode(), mode)
    for path, mode, data in extra_files:
        _mkdirs_readable(r, path.rsplit("/", 1)[0])     # e.g. nginx's workers (www-data) read these
        _put(r, path, data, mode)
        os.chmod(Path(str(r) + path), mode)             # exactly `mode`, whatever the umask took away
    for path, target in plan.ROLE_LINKS.get(host.role, ()):
        _link(r, path, target)
    return " ".join(public.split()[:2])


def launch(host: HostSpec) -> tuple[int, int, list[str]]:
    """Spawn the host's nspawn (new session, own cgroups); returns (pid, starttime, cgroup dirs)."""
    cg_dirs = cgroups.create_host_cgroups(host.machine)
    # the shell moves itself into the cgroups, then execs nspawn: nothing runs outside them
    script = 'for c in $K8SB_CGROUPS; do echo $$ > "$c/cgroup.procs" || exit 125; done; exec "$@"'
    env = dict(SPAWN_ENV, K8SB_CGROUPS=" ".join(str(d) for d in cg_dirs))
    argv = ["/bin/sh", "-c", script, "sh", *plan.build_nspawn_argv(host)]
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, str(host.console_log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    try:
        pid = os.posix_spawn("/bin/sh", argv, env, file_actions=actions, setsid=True,
                             setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT,
                                                       signal.SIGTERM, signal.SIGHUP))
    except OSError as exc:
        raise LabError(f"{host.name}: starting systemd-nspawn: {exc}") from exc
    st = proc_stat(pid)
    return pid, (st[1] if st else 0), [str(d) for d in cg_dirs]


def console_tail(host: HostSpec, n: int = 5) -> str:
    try:
        lines = [ln for ln in host.console_log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no console output)"
    return " | ".join(lines[-n:]) or "(no console output)"


# --- readiness ---------------------------------------------------------------------------------


def ssh_banner(address: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def run_ssh(address: str, command: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(plan.ssh_argv(address, command, timeout=min(timeout, 10)),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 124, "", f"timed out after {timeout:.0f} s")


@dataclass
class Readiness:
    state: str               # running | degraded | starting | ... | unreachable | exited
    detail: str = ""
    seconds: float = 0.0


def wait_ready(host: HostSpec, record: HostRecord, timeout: float,
               on_banner: Callable[[], None] | None = None) -> Readiness:
    """Wait for the SSH banner, then for `systemctl is-system-running --wait` (over SSH)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not ssh_banner(host.address, timeout=0.5):
        if not alive(record.pid, record.starttime):
            return Readiness("exited", f"systemd-nspawn exited: {console_tail(host)}",
                             time.monotonic() - t0)
        if time.monotonic() > deadline:
            return Readiness("unreachable", f"no SSH banner on {host.address}:22 after {timeout:.0f} s: "
                             f"{console_tail(host)}", time.monotonic() - t0)
        time.sleep(0.05)
    if on_banner:
        on_banner()
    left = max(5.0, deadline - time.monotonic())
    r = run_ssh(host.address, "systemctl is-system-running --wait", timeout=left)
    state = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if state == "running":
        return Readiness("running", "", time.monotonic() - t0)
    if not state:
        return Readiness("unreachable", f"ssh: {r.stderr.strip()}", time.monotonic() - t0)
    failed = run_ssh(host.address, "systemctl --failed --no-legend --plain", timeout=10).stdout.strip()
    return Readiness(state, f"failed units: {failed}" if failed else "", time.monotonic() - t0)


def sync_ready_delay(host: HostSpec, seconds: float, timeout: float = 20.0) -> bool:
    """Make a running controller's ready-delay drop-in say `seconds` (none for 0), over SSH,
    followed by `daemon-reload`; True when it changed. No restart (plan.render_ready_delay_sync)."""
    r = run_ssh(host.address, plan.render_ready_delay_sync(seconds), timeout=timeout)
    out = r.stdout.strip().splitlines()
    if r.returncode != 0 or not out or out[-1] not in ("changed", "unchanged"):
        why = (r.stderr or r.stdout).strip() or f"exit {r.returncode}"
        raise LabError(f"{host.name}: setting the API server's ready delay ({plan.READY_DELAY_DROPIN}): {why}",
                       hint="`k8sboot lab status`; `k8sboot lab reset " + host.name + "` gives it a fresh root")
    return out[-1] == "changed"


def query_state(address: str, timeout: float = 5.0) -> str:
    r = run_ssh(address, "systemctl is-system-running", timeout=timeout)
    return r.stdout.strip() or "unreachable"


# --- stopping ----------------------------------------------------------------------------------


def signal_nspawn(record: HostRecord, sig: int) -> bool:
    """Signal the host's recorded nspawn if it still is ours; True when signalled."""
    if record.pid and alive(record.pid, record.starttime) and is_our_nspawn(record.pid, record.spec.machine):
        _kill(record.pid, sig)
        return True
    return False


def stop_hosts(records: list[HostRecord], timeout: float = 10.0, hard: bool = False,
               extra_pids: dict[int, str] | None = None) -> list[str]:
    """Stop hosts: SIGTERM to nspawn (an orderly poweroff of the host), SIGKILL after `timeout`.

    `hard` skips the orderly part (a reset drops the root anyway). `extra_pids` are nspawns
    found in /proc without a record. Returns notes about hosts that needed SIGKILL.
    """
    notes = []
    extra_pids = extra_pids or {}
    by_machine = {r.spec.machine: r for r in records}
    targets: dict[int, tuple[int | None, list[str], str]] = {}   # nspawn pid -> (starttime, cgroups, name)
    for r in records:
        if r.pid and alive(r.pid, r.starttime) and is_our_nspawn(r.pid, r.spec.machine):
            targets[r.pid] = (r.starttime, r.cgroups, r.spec.name)
    for pid, machine in extra_pids.items():
        if pid not in targets and is_our_nspawn(pid, machine):
            rec = by_machine.get(machine)
            targets[pid] = (None, rec.cgroups if rec else [], machine)
    if not hard:
        for pid in targets:
            _kill(pid, signal.SIGTERM)      # nspawn turns it into an orderly poweroff of the host
        deadline = time.monotonic() + timeout
        while any(alive(pid) for pid in targets) and time.monotonic() < deadline:
            time.sleep(0.02)
    for pid, (_, cg, name) in targets.items():
        if alive(pid):
            if not hard:
                notes.append(f"{name}: no poweroff within {timeout:.0f} s, killed")
            for p in cgroups.pids_in(cg) - {pid}:
                _kill(p, signal.SIGKILL)
            _kill(pid, signal.SIGKILL)
    # processes left in the hosts' cgroups (their nspawn was killed by someone else): SIGKILL
    all_cg = [c for r in records for c in r.cgroups]
    for p in cgroups.pids_in(all_cg):
        _kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in targets) and not any(alive(p) for p in cgroups.pids_in(all_cg)):
            break
        time.sleep(0.02)
    return notes


def kill_cgroup_tree(dirs: list[Path] | list[str]) -> None:
    """SIGKILL every process in these cgroups (crash cleanup: our hosts' leftovers)."""
    for p in cgroups.pids_in(dirs):
        _kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in cgroups.pids_in(dirs)) and time.monotonic() < deadline:
        time.sleep(0.02)


def remove_host_files(host: HostSpec, cgroup_dirs: list[str]) -> list[str]:
    """After its processes are gone: unmount its root, remove its cgroups and its directory."""
    problems = []
    try:
        mounts.unmount_under(host.dir)
    except LabError as exc:
        problems.append(str(exc))
    for d in cgroup_dirs:
        if not cgroups.remove_tree(Path(d)):
            problems.append(f"{host.name}: cgroup {d} still busy")
    if host.dir.exists() and not mounts.is_mountpoint(host.root):
        shutil.rmtree(host.dir, ignore_errors=True)
    return problems
