"""deploy-apiserver under faults on real lab hosts: each test states what must hold afterwards.

Faults are injected from the workstation, which is root and sees the lab hosts from outside:
their processes in /proc (to kill or stop sshd without going through SSH), their root through
the overlay mount (`/run/k8sboot-lab/hosts/<name>/root`, to see staged files the moment they
appear), their veth on the lab bridge (`tc netem`). Deterministic where it matters: "between
facts and install" is a hook in the connector that `deploy()` accepts; "mid upload" and the
signals land when a staged file is seen on a host while a padded `--binary` is still streaming.

One host's fault must stay that host's: these tests run `--strategy parallel` (every host switched
as soon as it is staged, the others carry on). The rolling strategy stops at the first failing host
instead (tests/lab/test_rolling.py); a switch cut between two renames is restored whole by the next
deploy (below), whatever the strategy.

Every test starts and ends with the three hosts converged on the module's current version; a
host that a test dirties (mounts, users, a stopped sshd, netem) is put back in a `finally`, and
the module resets all three hosts at the end. After every test: no `ca-key.pem` anywhere on any
host.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot.errors import ExitCode
from k8sboot.lab import plan as labplan

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import WATCHED, LabEnv, expected_files  # noqa: E402
from linkfaults import Link, impair, leftovers  # noqa: E402   (tests/lab, next to this file)

pytestmark = pytest.mark.lab

PATHS = WATCHED + (layout.BINARY_PATH,)
STAGING_DIRS = (layout.REMOTE_PKI_DIR, "/etc/systemd/system", "/usr/local/bin")
K8SBOOT = str(Path(sys.executable).with_name("k8sboot"))
_versions = itertools.count(3)      # the unit says --v=2 unless told


# --- the module's hosts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(lab_hosts, tmp_path_factory):
    hosts = list(lab_hosts)[:3]
    assert len(hosts) == 3, "these tests need 3 lab controllers"
    e = LabEnv(hosts, tmp_path_factory.mktemp("faults"))
    e.deploy_args = PARALLEL
    e.gen_certs()
    e.launcher = e.ssh(hosts[0], f"base64 -w0 {layout.BINARY_PATH}")   # the stand-in's launcher
    try:
        res, doc = e.deploy()
        assert res.exit_code == 0, res.output
        e.current = e.inventory
        yield e
    finally:
        for h in hosts:
            h.reset()


@pytest.fixture(autouse=True)
def no_ca_key_on_any_host(env):
    yield
    def find(host):
        return host.name, env.ssh(host, "find / -xdev -name ca-key.pem 2>/dev/null; "
                                        f"find {layout.REMOTE_PKI_DIR} -name ca-key.pem 2>/dev/null; true")
    with ThreadPoolExecutor(3) as pool:
        for name, found in pool.map(find, env.hosts):
            assert found.strip() == "", f"{name}: ca-key.pem on the host: {found}"


# --- helpers -----------------------------------------------------------------------------------

PARALLEL = ("--strategy", "parallel")


def new_version(env, renew=("kubernetes",), **inventory) -> Path:
    """A change to deploy: a new unit (--v=N, N in the file name vN.yaml) and the named leaves
    reissued (new key and cert); `inventory` goes to `LabEnv.write_inventory`."""
    n = next(_versions)
    for name in renew:
        env.gen_certs("--renew", name)
    return env.write_inventory(env.tmp / f"v{n}.yaml", extra_flags={"v": n}, **inventory)


def verbosity(inventory: Path) -> str:
    return inventory.stem.removeprefix("v")


def padded_binary(env, size: int, tag: str) -> Path:
    """The stand-in's launcher, padded with comment lines to `size` bytes: a big upload that still runs."""
    import base64

    head = base64.b64decode(env.launcher) + f"\n# k8sboot fault test {tag}\n".encode()
    line = b"#" * 79 + b"\n"
    data = head + line * ((size - len(head)) // len(line))
    path = env.tmp / f"kube-apiserver-{tag}"
    path.write_bytes(data)
    return path


def expected(env, host, inventory: Path, binary: Path | None = None) -> dict[str, tuple[str, str, str, str]]:
    """path -> (sha256, mode, owner, group) that deploying `inventory` must leave on `host`."""
    return expected_files(env, host, inventory, binary)


def state(env, host) -> dict[str, tuple[str, str, str, str]]:
    """path -> (sha256, mode, owner, group) as the host itself reports them (its own mounts)."""
    out = env.ssh(host, "for f in " + " ".join(PATHS) + "; do [ -e $f ] && "
                        "echo \"$f $(sha256sum < $f | cut -c1-64) $(stat -c '%a %U %G' $f)\"; done; true")
    return {line.split()[0]: tuple(line.split()[1:]) for line in out.splitlines()}


def staged_files(env, host) -> list[str]:
    """Temp (.k8sboot-new) and rollback (.k8sboot-prev) files left in the target directories."""
    out = env.ssh(host, "find " + " ".join(STAGING_DIRS) + " -maxdepth 1 \\( -name '*.k8sboot-new' "
                        "-o -name '*.k8sboot-prev' \\) 2>/dev/null; true")
    return out.split()


def assert_old_or_new(got: dict, old: dict, new: dict, host) -> None:
    """Every file is byte for byte the old or the new version, never a mix or a partial one."""
    for path in sorted(set(old) | set(new)):
        allowed = {old.get(path), new.get(path, old.get(path))}
        assert got.get(path) in allowed, f"{host.name}:{path} is neither the old nor the new version: {got.get(path)}"


def assert_converged(env, inventory: Path, binary: Path | None = None) -> None:
    for host in env.hosts:
        want = expected(env, host, inventory, binary)
        got = state(env, host)
        assert {p: got.get(p) for p in want} == want, host.name
        assert env.service(host)["ActiveState"] == "active", host.name
        assert staged_files(env, host) == [], host.name


def by_host(doc) -> dict:
    return {h["host"]: h for h in doc["hosts"]}


def rerun_converges(env, inventory: Path, *args, binary: Path | None = None) -> dict:
    res, doc = env.deploy(*args, *(("--binary", binary) if binary else ()), inventory=inventory)
    assert res.exit_code == 0, res.output
    assert_converged(env, inventory, binary)
    env.current = inventory
    return by_host(doc)


def deploy_in_process(env, inventory: Path, wrap=None, **options):
    """`k8sboot.deploy.deploy` with the real SSH connector, optionally wrapped per host."""
    from k8sboot import deploy as deploymod
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    base = deploymod.ssh_connector(inv)
    connect = base if wrap is None else (lambda host: wrap(host, base(host)))
    options.setdefault("wait", 30.0)
    options.setdefault("strategy", "parallel")
    return deploymod.deploy(inv, deploymod.DeployOptions(**options), connect=connect)


class Hooked:
    """A real remote whose steps can run a callback first (after read_facts / before install)."""

    def __init__(self, remote, after_facts=None, before_install=None):
        self._remote = remote
        self._after_facts = after_facts
        self._before_install = before_install

    def __getattr__(self, name):
        return getattr(self._remote, name)

    def read_facts(self, *args, **kwargs):
        facts = self._remote.read_facts(*args, **kwargs)
        if self._after_facts:
            self._after_facts()
        return facts

    def install(self, *args, **kwargs):
        if self._before_install:
            self._before_install()
        return self._remote.install(*args, **kwargs)


# --- the hosts from outside: processes, root, link -----------------------------------------------


def host_processes(host) -> list[tuple[int, str, str]]:
    """(pid, comm, cmdline) of every process of a lab host, read from the workstation's /proc."""
    machine = labplan.PREFIX + host.name
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                cgroup = f.read()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if f"/{machine}/" in cgroup or f"/{machine}\n" in cgroup:
            found.append((int(entry), comm, cmdline))
    return found


def kill_sshd(host) -> list[int]:
    """SIGKILL every sshd of the host (listener and sessions); systemd restarts the listener."""
    pids = [pid for pid, comm, _ in host_processes(host) if comm == "sshd"]
    assert pids, f"{host.name}: no sshd process found"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def wait_for_sshd(host, timeout: float = 20.0) -> None:
    from k8sboot.lab.hosts import ssh_banner

    deadline = time.monotonic() + timeout
    while not ssh_banner(host.address, timeout=0.5):
        assert time.monotonic() < deadline, f"{host.name}: sshd did not come back"
        time.sleep(0.1)


def host_root(host) -> Path:
    return labplan.HOSTS_DIR / host.name / "root"


def staged_now(host) -> list[str]:
    """Staged temp files visible right now through the host's overlay root (no SSH, no delay)."""
    found = []
    for d in STAGING_DIRS:
        try:
            found += [f"{d}/{n}" for n in os.listdir(host_root(host) / d.lstrip("/")) if n.endswith(".k8sboot-new")]
        except OSError:
            pass
    return found


def wait_until(predicate, timeout: float, what: str, step: float = 0.002):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(step)


def veth(host) -> str:
    """The workstation side of the host's veth on the lab bridge (k8sbv10 for 10.240.0.10)."""
    name = f"{labplan.VETH_PREFIX}{host.address.rsplit('.', 1)[1]}"
    assert Path("/sys/class/net", name).exists(), f"{host.name}: no link {name}"
    return name


@contextmanager
def netem(hosts, delay_ms: int, loss_pct: float = 0.0):
    """Delay (and loss) from the workstation toward these hosts: `tc netem` on their veths, or its
    user-space stand-in where the kernel lacks sch_netem (tests/lab/linkfaults.py); yields which.
    Checked in effect (a TCP handshake takes the delay) and gone afterwards."""
    links = [Link(h.address, veth(h)) for h in hosts]
    try:
        with impair(links, delay_ms, loss_pct) as how:
            if not loss_pct:
                import socket

                t0 = time.monotonic()
                socket.create_connection((hosts[0].address, 22), timeout=10).close()
                assert time.monotonic() - t0 >= delay_ms / 1000 * 0.9, f"{how}: no delay toward {hosts[0].name}"
            yield how
    finally:
        assert leftovers(links) == [], leftovers(links)


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run([K8SBOOT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def popen_cli(*args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.Popen([K8SBOOT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


# --- sshd killed in the middle of a deploy -------------------------------------------------------


@pytest.mark.parametrize("moment", ["between facts and install", "mid upload"])
def test_sshd_killed_mid_deploy_fails_that_host_only_and_a_rerun_converges(env, moment):
    """Afterwards: the two other hosts run the new version; the victim reports one clear error
    naming it; every file on it is the old or the new version, no staged file is left; a rerun
    converges all three."""
    victim = env.host("controller-1")
    old = {h.name: state(env, h) for h in env.hosts}
    inventory = new_version(env, renew=("kubernetes", "service-account"))
    binary = padded_binary(env, 8 << 20, moment.replace(" ", "-")) if moment == "mid upload" else None
    killed: list[int] = []

    def wrap(host, remote):
        if host.name != victim.name or moment != "between facts and install":
            return remote
        return Hooked(remote, before_install=lambda: killed.extend(kill_sshd(victim)))

    if moment == "between facts and install":
        report = deploy_in_process(env, inventory, wrap=wrap)
    else:
        with netem([victim], 20), ThreadPoolExecutor(1) as pool:
            future = pool.submit(deploy_in_process, env, inventory, binary=binary)
            # the padded binary is the tar's last member: PKI files are staged, the binary streams
            staged_binary = "/usr/local/bin/.kube-apiserver.k8sboot-new"
            wait_until(lambda: future.done() or staged_binary in staged_now(victim), 60, "the staged binary")
            assert not future.done(), "the deploy ended before the binary was staged on the victim"
            killed.extend(kill_sshd(victim))
            report = future.result(timeout=120)
    assert killed, "sshd was never killed"
    results = {r.host: r for r in report.results}
    assert report.exit_code() == ExitCode.DEPLOY
    bad = results[victim.name]
    assert bad.outcome == "error" and not bad.ok and bad.code == ExitCode.REMOTE, bad
    assert "the connection closed before the command finished" in bad.message and "rerun" in bad.hint, bad
    print(f"[fault] sshd killed {moment} on {victim.name}: {bad.message} (hint: {bad.hint})")
    assert bad.message.startswith(f"{victim.name}: "), bad.message
    assert "Traceback" not in bad.message and len(bad.message.splitlines()) == 1, bad.message
    for host in env.hosts:
        if host is not victim:
            assert results[host.name].outcome == "deployed", results[host.name]
            want = expected(env, host, inventory, binary)
            assert {p: v for p, v in state(env, host).items() if p in want} == want, host.name
    wait_for_sshd(victim)
    new = expected(env, victim, inventory, binary)
    wait_until(lambda: not staged_files(env, victim), 5, f"staged files to go on {victim.name}", step=0.2)
    assert_old_or_new(state(env, victim), old[victim.name], new, victim)
    assert env.service(victim)["ActiveState"] == "active"
    after = rerun_converges(env, inventory, binary=binary)
    assert after[victim.name]["outcome"] == "deployed"
    assert all(after[h.name]["outcome"] == "up to date" for h in env.hosts if h is not victim), after


# --- filesystem full, read-only unit dir ---------------------------------------------------------


FILL = (f"set -e; d={layout.REMOTE_PKI_DIR}; rm -rf /root/k8sboot-save; cp -a $d /root/k8sboot-save; "
        "mount -t tmpfs -o size=64k,mode=0700 k8sboot-test-full $d; cp -a /root/k8sboot-save/. $d/; "
        "dd if=/dev/zero of=$d/.filler bs=4k 2>/dev/null || true; rm -rf /root/k8sboot-save")
UNFILL = f"umount {layout.REMOTE_PKI_DIR}"
READ_ONLY = "set -e; mount --bind /etc/systemd/system /etc/systemd/system; " \
            "mount -o remount,bind,ro /etc/systemd/system"
READ_WRITE = "umount /etc/systemd/system"


@pytest.mark.parametrize("fault", ["pki filesystem full", "read-only unit dir"])
def test_write_failure_on_one_host_leaves_its_previous_files_and_unit_running(env, fault):
    """Afterwards: the victim reports a clear error naming the host and the directory; its files
    are all the previous version, nothing staged is left, the unit still runs the previous
    version (same PID, same start); the other hosts are deployed; a rerun converges."""
    victim = env.host("controller-2")
    setup, undo, where, why = {
        "pki filesystem full": (FILL, UNFILL, layout.REMOTE_PKI_DIR, "no space left"),
        "read-only unit dir": (READ_ONLY, READ_WRITE, "/etc/systemd/system", "read-only file system"),
    }[fault]
    old = state(env, victim)
    svc = env.service(victim)
    inventory = new_version(env)
    env.ssh(victim, setup)
    try:
        res, doc = env.deploy(inventory=inventory)
        assert res.exit_code == ExitCode.DEPLOY, res.output
        bad = by_host(doc)[victim.name]
        assert bad["outcome"] == "error", bad
        assert bad["message"].startswith(f"{victim.name}: ") and where in bad["message"], bad["message"]
        assert why in bad["message"].lower(), bad["message"]
        assert "Traceback" not in res.output
        print(f"[fault] {fault} on {victim.name}: {bad['message']} (hint: {bad['hint']})")
        for host in env.hosts:
            if host is not victim:
                assert by_host(doc)[host.name]["outcome"] == "deployed"
        assert state(env, victim) == old
        assert staged_files(env, victim) == []
        assert env.service(victim) == svc           # same PID, same start, still active
    finally:
        env.ssh(victim, undo)
    after = rerun_converges(env, inventory)
    assert after[victim.name]["outcome"] == "deployed"


# --- a non-root user without sudo ----------------------------------------------------------------


def test_non_root_user_without_sudo_is_refused_before_any_change(env, tmp_path):
    """Afterwards: a clear error naming the host, the user and what to set (host code REMOTE); nothing
    changed on the host (files, unit, process); --dry-run says the same instead of planning a
    full upload."""
    victim = env.host("controller-0")
    user = "plain"
    env.ssh(victim, f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh {user}; "
                    f"mkdir -p /home/{user}/.ssh && cp /root/.ssh/authorized_keys /home/{user}/.ssh/ && "
                    f"chown -R {user}:{user} /home/{user}/.ssh && chmod 700 /home/{user}/.ssh")
    try:
        old, svc = state(env, victim), env.service(victim)
        plain = new_version(env, renew=(), user=user, sudo=False)
        for extra in ((), ("--dry-run",)):
            res, doc = env.deploy("--hosts", victim.name, *extra, inventory=plain)
            assert res.exit_code == ExitCode.DEPLOY and by_host(doc)[victim.name]["code"] == ExitCode.REMOTE, res.output
            msg = by_host(doc)[victim.name]["message"]
            assert msg.startswith(f"{victim.name}: ") and user in msg and "root" in msg, msg
            assert "sudo" in (by_host(doc)[victim.name]["hint"] or ""), doc
        print(f"[fault] non-root user without sudo: {msg} (hint: {by_host(doc)[victim.name]['hint']})")
        assert state(env, victim) == old and env.service(victim) == svc
        assert staged_files(env, victim) == []
    finally:
        env.ssh(victim, f"userdel -r {user} 2>/dev/null; true")


# --- a host that accepts TCP and never answers SSH -----------------------------------------------


def test_host_that_accepts_tcp_but_never_answers_ssh_times_out_alone(env, tmp_path):
    """Afterwards: the stalled host fails within its bound (ssh.connect_timeout, plus a margin)
    with a clear connection error naming it and no traceback; the two others are deployed."""
    victim = env.host("controller-0")
    timeout = 3
    inventory = new_version(env, renew=())
    stalled = tmp_path / "stalled.yaml"
    stalled.write_text(inventory.read_text().replace("connect_timeout: 5", f"connect_timeout: {timeout}"))
    assert f"connect_timeout: {timeout}" in stalled.read_text()
    listener = [pid for pid, comm, cmd in host_processes(victim) if comm == "sshd" and "[listener]" in cmd]
    assert len(listener) == 1, host_processes(victim)
    os.kill(listener[0], signal.SIGSTOP)     # the kernel still accepts; nobody sends a banner
    try:
        t0 = time.monotonic()
        proc = run_cli("deploy-apiserver", "-i", stalled, "--json", "--wait", "30", *PARALLEL, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        os.kill(listener[0], signal.SIGCONT)
    assert proc.returncode == ExitCode.CONNECT, proc.stderr     # the only failure is a connection failure
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    bad = by_host(doc)[victim.name]
    assert bad["outcome"] == "error" and bad["code"] == ExitCode.CONNECT, bad
    assert bad["message"].startswith(f"{victim.name} ({victim.address}:22)"), bad["message"]
    assert f"{timeout}s" in bad["message"], bad["message"]
    assert bad["seconds"] <= timeout + 2.5, bad
    print(f"[fault] sshd accepts TCP, sends no banner: {bad['message']} after {bad['seconds']:.2f}s "
          f"(whole deploy {elapsed:.2f}s)")
    for host in env.hosts:
        if host is not victim:
            assert by_host(doc)[host.name]["outcome"] == "deployed", doc
    assert elapsed < 30, elapsed
    wait_for_sshd(victim)
    rerun_converges(env, inventory)


# --- SIGINT / SIGTERM during deploy -------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_deploy_leaves_no_partial_file_and_a_rerun_converges(env, signum):
    """Afterwards: exit 130 (SIGINT) / 143 (SIGTERM) with one "interrupted" line and no
    traceback, promptly; on every host no staged file is left and every target is the old or the
    new version; a rerun converges."""
    old = {h.name: state(env, h) for h in env.hosts}
    inventory = new_version(env, renew=("kube-apiserver-kubelet-client",))
    binary = padded_binary(env, 4 << 20, f"signal-{signum.name}")
    with netem(env.hosts, 50):
        proc = popen_cli("deploy-apiserver", "-i", inventory, "--binary", binary, "--wait", "30", *PARALLEL)
        try:
            wait_until(lambda: proc.poll() is not None or any(staged_now(h) for h in env.hosts), 60,
                       "a staged file on some host")
            assert proc.poll() is None, "the deploy ended before anything was staged"
            proc.send_signal(signum)
            t0 = time.monotonic()
            out, err = proc.communicate(timeout=60)
            reaction = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    code = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}[signum]
    assert proc.returncode == code, (proc.returncode, err)
    assert f"interrupted by {signum.name}" in err and "Traceback" not in err, err
    assert reaction < 3, f"{signum.name}: took {reaction:.1f}s to stop"     # not after the upload
    print(f"[fault] {signum.name} mid-upload: exit {proc.returncode} after {reaction:.2f}s: {err.strip().splitlines()[-2:]}")
    for host in env.hosts:
        wait_until(lambda: not staged_files(env, host), 10, f"staged files to go on {host.name}", step=0.2)
        assert_old_or_new(state(env, host), old[host.name], expected(env, host, inventory, binary), host)
    rerun_converges(env, inventory, binary=binary)


# --- two deploys at once ------------------------------------------------------------------------


def flock_waiters(host, wait: str) -> list[int]:
    return [pid for pid, comm, cmd in host_processes(host)
            if comm == "flock" and f"-w {wait} " in cmd and layout.LOCK_PATH in cmd]


def test_two_deploys_at_once_never_interleave(env):
    """Afterwards: while deploy A holds the per-host lock (paused by a hook after reading facts),
    deploy B with --lock-wait 1 exits LOCKED naming every host and changes nothing; deploy C
    with a long --lock-wait waits, and runs only after A: its facts show A's unit (its diff goes
    from A's --v to C's), and the hosts end on C's version."""
    inv_a = new_version(env, renew=())
    inv_c = new_version(env, renew=())
    paused = threading.Barrier(len(env.hosts) + 1, timeout=60)
    release = threading.Event()

    def wrap(host, remote):
        def hold():
            paused.wait()
            assert release.wait(90), "deploy A was never released"
        return Hooked(remote, after_facts=hold)

    with ThreadPoolExecutor(1) as pool:
        a = pool.submit(deploy_in_process, env, inv_a, wrap=wrap, lock_wait=30.0)
        c = None
        try:
            paused.wait()                              # A holds the lock on all three hosts
            before = {h.name: state(env, h) for h in env.hosts}
            b = run_cli("deploy-apiserver", "-i", inv_c, "--lock-wait", "1", "--json", *PARALLEL, timeout=60)
            assert b.returncode == ExitCode.LOCKED, b.stderr
            for h in by_host(json.loads(b.stdout)).values():
                assert h["outcome"] == "error" and h["code"] == ExitCode.LOCKED, h
                assert h["message"] == (f"{h['host']}: another k8sboot deploy holds {layout.LOCK_PATH} "
                                        "(waited 1s)"), h["message"]
            assert {h.name: state(env, h) for h in env.hosts} == before
            c = popen_cli("deploy-apiserver", "-i", inv_c, "--lock-wait", "77", "--wait", "30", "--json", *PARALLEL)
            for host in env.hosts:                     # C is queued on every host's lock
                wait_until(lambda: flock_waiters(host, "77"), 30, f"deploy C waiting on {host.name}", step=0.05)
            assert c.poll() is None
        finally:
            release.set()
        report_a = a.result(timeout=120)
    assert report_a.ok and all(r.outcome == "deployed" for r in report_a.results), report_a.results
    out, err = c.communicate(timeout=120)
    assert c.returncode == 0, err
    for h in json.loads(out)["hosts"]:
        assert h["outcome"] == "deployed" and h["files_changed"] == [layout.UNIT_NAME], h
        changed = [ln.split()[:2] for ln in h["unit_diff"].splitlines() if ln[:1] in "-+" and "--v=" in ln]
        assert changed == [["-", f"--v={verbosity(inv_a)}"], ["+", f"--v={verbosity(inv_c)}"]], h["unit_diff"]
    assert_converged(env, inv_c)
    env.current = inv_c


# --- the unit fails after a change: --rollback-on-failure ---------------------------------------


def test_a_serving_key_that_does_not_match_its_cert_is_refused_before_any_host_changes(env):
    """The serving pair is picked up without a restart, so a start failure could not reveal a
    mismatched key: deploy refuses it locally (exit 4) and no host changes."""
    before = {h.name: (state(env, h), env.service(h)["MainPID"]) for h in env.hosts}
    key = env.pki / "kubernetes-key.pem"
    saved = key.read_bytes()
    key.write_bytes((env.pki / "kube-apiserver-kubelet-client-key.pem").read_bytes())
    try:
        res, doc = env.deploy("--rollback-on-failure", "--wait", "15", inventory=env.current)
    finally:
        key.write_bytes(saved)
    assert res.exit_code == ExitCode.PKI, res.output
    assert "kubernetes-key.pem: it is not the key of" in res.output and "no host was changed" in res.output
    assert {h.name: (state(env, h), env.service(h)["MainPID"]) for h in env.hosts} == before


@pytest.mark.parametrize("change", ["flag the binary refuses"])
def test_rollback_on_failure_restores_files_and_a_running_unit(env, change):
    """Afterwards: every host reports "rolled back" with the journal's reason; its files are the
    previous ones byte for byte, no .k8sboot-prev/-new is left, and the unit is active again with
    a new PID and a later start than before the deploy."""
    before = {h.name: (state(env, h), env.service(h)) for h in env.hosts}
    key = env.pki / "kubernetes-key.pem"
    saved = key.read_bytes()
    inventory = env.write_inventory(env.tmp / "refused.yaml",
                                    extra_flags={"encryption-provider-config": "/var/lib/kubernetes/none.yaml"})
    try:
        res, doc = env.deploy("--rollback-on-failure", "--wait", "15", inventory=inventory)
    finally:
        key.write_bytes(saved)
    assert res.exit_code == ExitCode.DEPLOY, res.output
    for host in env.hosts:
        h = by_host(doc)[host.name]
        assert h["outcome"] == "rolled back" and h["state"] == "active/running", h
        assert h["journal"], h
        old_files, old_svc = before[host.name]
        assert state(env, host) == old_files
        assert staged_files(env, host) == []
        svc = env.service(host)
        assert svc["ActiveState"] == "active" and svc["MainPID"] != old_svc["MainPID"]
        assert int(svc["ActiveEnterTimestampMonotonic"]) > int(old_svc["ActiveEnterTimestampMonotonic"])
    res, doc = env.deploy(inventory=env.current)
    assert res.exit_code == 0 and all(h["outcome"] == "up to date" for h in doc["hosts"]), res.output


# --- key modes at every instant -----------------------------------------------------------------

WATCHER = r"""
import os, sys, time
d, log_path, stop = sys.argv[1], sys.argv[2], sys.argv[3]
seen, loops, end = set(), 0, time.time() + 120
with open(log_path, "w") as log:
    while time.time() < end and not os.path.exists(stop):
        loops += 1
        try:
            for e in os.scandir(d):
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                key = (e.name, st.st_mode & 0o7777, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    log.write("%o %s\n" % (st.st_mode & 0o7777, e.name))
                    log.flush()
        except FileNotFoundError:
            pass
    log.write("loops %d\n" % loops)
"""


def secret_name(name: str) -> str | None:
    """The layout file a (possibly staged) name in the PKI dir stands for, if it is a secret."""
    base = name.lstrip(".")
    for suffix in (".k8sboot-new", ".k8sboot-prev"):
        base = base.removesuffix(suffix)
    spec = next((s for s in layout.CONTROLLER_FILES if s.local_name == base), None)
    return base if spec is not None and spec.is_secret else None


def test_key_files_are_never_readable_by_group_or_others_during_a_deploy(env):
    """Afterwards: a watcher inside the host, scanning /var/lib/kubernetes in a tight loop during
    a deploy that reissues every key (with --rollback-on-failure, so the .k8sboot-prev links
    appear too), saw staged key files, and never a key file (staged, previous or final) with a
    group or other permission bit."""
    victim = env.host("controller-2")
    log, stop = "/tmp/k8sboot-watch.log", "/tmp/k8sboot-watch.stop"
    env.ssh(victim, f"rm -f {log} {stop}; cat > /tmp/k8sboot-watch.py <<'EOF'\n{WATCHER}\nEOF\n"
                    f"setsid nohup python3 /tmp/k8sboot-watch.py {layout.REMOTE_PKI_DIR} {log} {stop} "
                    ">/dev/null 2>&1 < /dev/null &")
    inventory = new_version(env, renew=("kubernetes", "service-account", "kube-apiserver-kubelet-client"))
    binary = padded_binary(env, 2 << 20, "watch")      # streams last: the staged keys wait for it
    try:
        wait_until(lambda: env.ssh(victim, f"test -s {log} && echo yes; true").strip(), 10, "the watcher")
        res, doc = env.deploy("--rollback-on-failure", "--binary", binary, inventory=inventory)
        assert res.exit_code == 0, res.output
    finally:
        env.ssh(victim, f"touch {stop}")
    text = wait_until(lambda: (lambda t: t if "loops " in t else "")(env.ssh(victim, f"cat {log}")), 10,
                      "the watcher's log")
    env.ssh(victim, f"rm -f {log} {stop} /tmp/k8sboot-watch.py")
    seen = [line.split(" ", 1) for line in text.splitlines() if not line.startswith("loops ")]
    staged_keys = [name for mode, name in seen if name.endswith(".k8sboot-new") and secret_name(name)]
    assert staged_keys, f"the watcher never saw a staged key file: {text}"
    assert any(name.endswith(".k8sboot-prev") for _, name in seen), text
    exposed = [(mode, name) for mode, name in seen if secret_name(name) and int(mode, 8) & 0o077]
    assert exposed == [], exposed
    assert_converged(env, inventory, binary)
    env.current = inventory


# --- latency and loss ---------------------------------------------------------------------------


def test_deploy_is_correct_under_latency_and_loss_and_reports_its_time(env, capsys, record_property):
    """Afterwards: with 100 ms delay and 5 % loss toward one host, the deploy of a changed unit and
    a reissued cert ends 0 and every host holds exactly the new version; its time (and the same
    kind of deploy without netem, for comparison) is printed and recorded; the qdisc is gone."""
    victim = env.host("controller-1")
    times = {}
    for label in ("100 ms delay, 5 % loss toward controller-1", "no delay, no loss"):
        inventory = new_version(env, renew=("kubernetes",))
        with netem([victim], 100, 5) if label.startswith("100") else nullcontext("-") as how:
            label += f" ({how})" if how != "-" else ""
            t0 = time.monotonic()
            res, doc = env.deploy(inventory=inventory)
            times[label] = (time.monotonic() - t0, {h["host"]: h["seconds"] for h in doc["hosts"]})
        assert res.exit_code == 0, res.output
        assert all(h["outcome"] == "deployed" for h in doc["hosts"]), doc
        assert_converged(env, inventory)
        env.current = inventory
    with capsys.disabled():
        for label, (total, per_host) in times.items():
            hosts = ", ".join(f"{n} {s:.2f}s" for n, s in sorted(per_host.items()))
            print(f"\n[results] deploy-apiserver, 3 hosts, unit + 1 cert changed, {label}: {total:.2f}s ({hosts})")
    for label, (total, _) in times.items():
        record_property(f"deploy seconds, {label}", round(total, 3))


# --- a switch cut between two renames ------------------------------------------------------------


def _switch_cut_after_renames(env, host, inventory: Path, renames: int) -> None:
    """Stage `inventory`'s files on `host`, then run its switch script only up to its `renames`-th
    rename: what a connection, sshd or the host dying at that instant leaves (the journal, the
    `.k8sboot-prev` links, some files new and the rest old)."""
    from k8sboot import deploy as deploymod
    from k8sboot import plan as planmod
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    options = deploymod.DeployOptions()
    job = deploymod.apiserver_job(inv, options, inv.controllers, _templates(inv), readyz=None)
    desired = job.prepare()[host.name]
    remote = deploymod.ssh_connector(inv)(inv.controller(host.name))
    try:
        facts = remote.read_facts(job.request)
        plan = planmod.build_host_plan(desired, facts, host=host.name)
        assert len(plan.uploads) > renames, plan.files_changed
        remote.stage(plan)
        lines = planmod.build_switch_script(plan).splitlines()
        moves = [i for i, line in enumerate(lines) if line.startswith("mv -f ") and planmod.TEMP_SUFFIX in line]
        result = remote.exec("\n".join(lines[:moves[renames - 1] + 1]) + "\n", what="a switch cut short")
        assert result.rc == 0, result.err
    finally:
        remote.close()


def _templates(inv):
    from k8sboot import render

    return render.templates_dir_for(inv, None)


def test_a_switch_cut_between_two_renames_is_restored_whole_then_the_deploy_converges(env):
    """The files are a mix of two sets after the cut; the journal says which: `recover` puts the
    whole previous set back (byte for byte, no staged or previous copy left), and a deploy started
    on a cut host restores first, then installs the new set and restarts."""
    from k8sboot import deploy as deploymod
    from k8sboot import plan as planmod
    from k8sboot.inventory import load_inventory

    victim = env.host("controller-1")
    old = state(env, victim)
    inventory = new_version(env, renew=("kubernetes", "service-account"))
    new = expected(env, victim, inventory)
    _switch_cut_after_renames(env, victim, inventory, renames=2)
    mixed = state(env, victim)
    assert mixed != old and {p: mixed.get(p) for p in new} != new, "the cut left no mix to repair"
    assert env.ssh(victim, f"ls {planmod.APISERVER.journal_path}").strip() == planmod.APISERVER.journal_path
    assert "restart pending" in env.ssh(victim, f"ls {planmod.APISERVER.restart_pending_path} >/dev/null && "
                                                "echo restart pending; true")

    inv = load_inventory(inventory)
    remote = deploymod.ssh_connector(inv)(inv.controller(victim.name))
    try:
        remote.recover()
    finally:
        remote.close()
    assert state(env, victim) == old
    assert staged_files(env, victim) == [] and "journal" not in env.ssh(
        victim, f"[ -e {planmod.APISERVER.journal_path} ] && echo journal; true")

    _switch_cut_after_renames(env, victim, inventory, renames=3)
    after = rerun_converges(env, inventory)
    assert any("restored the previous set" in r for r in after[victim.name]["restart_reasons"]), after[victim.name]
    assert after[victim.name]["restarted"]
