"""Shared helpers of the benchmark harness (`bench/run`) and the peer test.

Pure parts (unit-tested in tests/unit/test_bench_lib.py): statistics over samples, the A B A B
alternation loop, ratios pair by pair, markdown tables, number formatting. Effect parts, kept
small: timing a subprocess, describing the machine, reading the lab inventory, writing the ssh
config and the Ansible inventory the peers use, and building the separate Ansible venv.

Nothing here imports k8sboot: the harness drives k8sboot only through its documented CLI.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
ANSIBLE_DIR = PEERS_DIR / "ansible"
ANSIBLE_VENV = BENCH_DIR / ".venv-ansible"
ANSIBLE_REQUIREMENT = "ansible-core~=2.19.0"

# What every deploy tool must leave on each controller (DESIGN.md "On each controller"), in the
# order the tutorial lists them; modes as k8sboot.layout has them (keys 0600, certs 0644).
# The peer test checks this list against k8sboot.layout, so the two cannot drift apart.
PKI_FILES: tuple[tuple[str, int], ...] = (
    ("ca.pem", 0o644),
    ("kubernetes.pem", 0o644),
    ("kubernetes-key.pem", 0o600),
    ("service-account.pem", 0o644),
    ("service-account-key.pem", 0o600),
    ("kube-apiserver-kubelet-client.pem", 0o644),
    ("kube-apiserver-kubelet-client-key.pem", 0o600),
    ("encryption-config.yaml", 0o600),
    ("etcd-ca.pem", 0o644),
    ("apiserver-etcd-client.pem", 0o644),
    ("apiserver-etcd-client-key.pem", 0o600),
)
REMOTE_PKI_DIR = "/var/lib/kubernetes"
REMOTE_PKI_DIR_MODE = 0o700
UNIT_NAME = "kube-apiserver.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
UNIT_MODE = 0o644


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


# --- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    min: float
    max: float

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy these samples were."""
        return (self.max - self.min) / self.median if self.median else 0.0


def summarize(samples: Sequence[float]) -> Stats:
    if not samples:
        raise ValueError("no samples")
    return Stats(n=len(samples), median=statistics.median(samples), min=min(samples), max=max(samples))


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    """median(a) / median(b): the headline "a is r x b"."""
    mb = statistics.median(b)
    if mb <= 0:
        raise ValueError("the baseline median is not positive")
    return statistics.median(a) / mb


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i] for the runs of the same round (run next to each other, so they share the
    machine's state at that moment); as many as the shorter list."""
    return [x / y for x, y in zip(a, b) if y > 0]


@dataclass(frozen=True)
class PairRatio:
    a: str
    b: str
    ratio: float            # median(a) / median(b)
    paired_min: float       # min and max of the round-by-round ratios a[i]/b[i]
    paired_max: float


def pair_ratios(results: Mapping[str, Sequence[float]], subject: str | None = None) -> list[PairRatio]:
    """Every pair of tools (in the order given), or only `subject` against each other tool."""
    names = [n for n, s in results.items() if s]
    pairs: list[tuple[str, str]] = []
    if subject is not None and subject in names:
        pairs = [(subject, other) for other in names if other != subject]
    else:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    out = []
    for a, b in pairs:
        paired = paired_ratios(results[a], results[b]) or [ratio_of_medians(results[a], results[b])]
        out.append(PairRatio(a, b, ratio_of_medians(results[a], results[b]), min(paired), max(paired)))
    return out


# --- alternation -----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    tool: str
    round: int
    seconds: float | None
    error: str | None = None


@dataclass
class Alternation:
    """The samples of one comparison, filled in run order (A B A B ...)."""

    order: list[RunRecord] = field(default_factory=list)

    def samples(self, tool: str) -> list[float]:
        return [r.seconds for r in self.order if r.tool == tool and r.seconds is not None]

    def as_dict(self) -> dict[str, list[float]]:
        tools = list(dict.fromkeys(r.tool for r in self.order))
        return {t: self.samples(t) for t in tools}

    def errors(self) -> list[RunRecord]:
        return [r for r in self.order if r.error]


def alternate(runners: Mapping[str, Callable[[], float]], rounds: int,
              before_each: Callable[[str, int], None] | None = None,
              after_each: Callable[[str, int, float], None] | None = None,
              on_error: str = "record") -> Alternation:
    """Run every tool once per round, in the same order each round: A B C A B C ...

    `runner()` returns the seconds it measured (only the tool's own work); `before_each(tool,
    round)` prepares the hosts untimed (reset for a first deploy, a renewed cert for a change);
    `after_each(tool, round, seconds)` may check the result, untimed. With on_error="record" a
    failing run is recorded with its message and the others go on; "raise" stops at once.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    alt = Alternation()
    for rnd in range(rounds):
        for tool, runner in runners.items():
            try:
                if before_each:
                    before_each(tool, rnd)
                seconds = runner()
                if after_each:
                    after_each(tool, rnd, seconds)
                alt.order.append(RunRecord(tool, rnd, seconds))
            except BenchError as exc:
                if on_error == "raise":
                    raise
                alt.order.append(RunRecord(tool, rnd, None, str(exc)))
    return alt


# --- formatting ----------------------------------------------------------------------------------


def fmt_seconds(x: float | None) -> str:
    """0.0123 -> '12 ms'; 0.456 -> '0.456 s'; 3.21 -> '3.21 s'; 103.4 -> '103 s'."""
    if x is None:
        return "–"
    if x < 0.1:
        return f"{x * 1000:.0f} ms" if x >= 0.0095 else f"{x * 1000:.1f} ms"
    if x < 1:
        return f"{x:.3f} s"
    if x < 10:
        return f"{x:.2f} s"
    if x < 100:
        return f"{x:.1f} s"
    return f"{x:.0f} s"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "–"
    if r < 0.1:
        return f"{r:.3g}×"      # 0.0603×, 0.023×: enough digits to judge a 0.06 goal
    return f"{r:.2f}×"


def fmt_stats(s: Stats | None) -> str:
    """'0.52 s (0.50–0.61 s, n=3)' – median first, then the range."""
    if s is None:
        return "–"
    return f"{fmt_seconds(s.median)} ({fmt_seconds(s.min)}–{fmt_seconds(s.max)}, n={s.n})"


def _cell(x: object) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
             align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; align per column: 'l', 'r' or 'c' (default: first l, others r)."""
    headers = list(headers)
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row {r!r} has {len(r)} cells, the header {len(headers)}")
    align = list(align) if align else ["l"] + ["r"] * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def stats_by_count_table(results: Mapping[int, Mapping[str, Sequence[float]]],
                         tools: Sequence[str]) -> str:
    """Rows = tools, columns = host counts, cells = 'median (min–max, n)'."""
    counts = sorted(results)
    rows = []
    for tool in tools:
        cells = []
        for n in counts:
            samples = results[n].get(tool) or []
            cells.append(fmt_stats(summarize(samples)) if samples else "–")
        if any(c != "–" for c in cells):
            rows.append([tool, *cells])
    return md_table(["tool", *[f"{n} host{'s' if n != 1 else ''}" for n in counts]], rows)


def ratio_by_count_table(results: Mapping[int, Mapping[str, Sequence[float]]],
                         subject: str | None = None) -> str:
    """Rows = pairs 'a / b', columns = host counts, cells = 'r× (paired min–max)'."""
    counts = sorted(results)
    table: dict[tuple[str, str], dict[int, PairRatio]] = {}
    for n in counts:
        for pr in pair_ratios(results[n], subject):
            table.setdefault((pr.a, pr.b), {})[n] = pr
    rows = []
    for (a, b), by_n in table.items():
        cells = []
        for n in counts:
            pr = by_n.get(n)
            cells.append("–" if pr is None else
                         f"**{fmt_ratio(pr.ratio)}** ({fmt_ratio(pr.paired_min)}–{fmt_ratio(pr.paired_max)})")
        rows.append([f"{a} / {b}", *cells])
    return md_table(["pair (median a / median b)", *[f"{n} host{'s' if n != 1 else ''}" for n in counts]],
                    rows)


# --- goals -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    measured: float | None     # the ratio (or seconds) measured, None when not measured
    limit: float
    unit: str = "×"            # '×' for ratios, 's' for seconds

    @property
    def met(self) -> bool | None:
        return None if self.measured is None else self.measured <= self.limit

    def row(self, verdicts: Mapping[bool | None, str] | None = None) -> list[str]:
        fmt = fmt_ratio if self.unit == "×" else fmt_seconds
        verdict = (verdicts or {None: "not measured", True: "met", False: "**missed**"})[self.met]
        return [self.text, f"≤ {fmt(self.limit)}", fmt(self.measured), verdict]


def goals_table(goals: Sequence[Goal], heading: str = "goal (issue 5)",
                verdicts: Mapping[bool | None, str] | None = None) -> str:
    return md_table([heading, "limit", "measured", "verdict"], [g.row(verdicts) for g in goals],
                    align=["l", "r", "r", "l"])


# --- effects: timing, the machine ---------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    stdout: str
    stderr: str
    returncode: int


def run_timed(argv: Sequence[str], *, cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
              timeout: float = 900, check: bool = True, what: str | None = None) -> Timed:
    """Run argv, measure its wall time (start of the process to its exit), capture its output.

    check=True: a non-zero exit raises BenchError with the command and the tail of its output.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what or argv[0]}: timed out after {timeout:.0f} s: {shlex.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise BenchError(f"{what or argv[0]}: not found: {exc.filename}") from exc
    seconds = time.perf_counter() - t0
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout.strip().splitlines()[-10:]) + (proc.stderr.strip().splitlines()[-10:]))
        raise BenchError(f"{what or argv[0]} exited {proc.returncode}: {shlex.join(argv)}\n{tail}")
    return Timed(seconds, proc.stdout, proc.stderr, proc.returncode)


def machine_info() -> dict[str, str]:
    """What the results were measured on: cores, memory, CPU, kernel, OS, load, tool versions."""
    info: dict[str, str] = {}
    info["cores"] = str(os.cpu_count())
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal:")))
        info["memory"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        info["memory"] = "?"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "?"
    info["kernel"] = platform.release()
    try:
        osr = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        info["os"] = osr.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        info["os"] = "?"
    try:
        info["load average at start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    info["python"] = platform.python_version()
    try:
        info["openssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    except OSError:
        info["openssh"] = "?"
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return info


def git_describe(repo: Path = REPO) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# --- the other benchmark scripts, and the lab's other users ----------------------------------------


def load_script(name: str, path: Path):
    """A benchmark script without a .py suffix (bench/run), imported as module `name`."""
    import importlib.util
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def wait_for_lab(others: Callable[[], list[str]], wait: float, log: Callable[[str], None],
                 adopt_idle_after: float | None = None, poll: float = 15) -> str | None:
    """Wait (at most `wait` s) until `others()` finds no other user of the lab; None when it is free,
    else what still uses it. With adopt_idle_after, a lab that is up with no lease and no lab test
    running is nobody's: after that many seconds it counts as free."""
    deadline = time.monotonic() + wait
    idle_since = None
    while (signs := others()):
        if adopt_idle_after is not None and all(x.startswith("a lab is up") for x in signs):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > adopt_idle_after:
                log("a lab is up, but nobody holds a lease on it: using it")
                return None
        else:
            idle_since = None
        if time.monotonic() > deadline:
            return "\n  ".join(signs)
        log("waiting for the lab: " + "; ".join(signs))
        time.sleep(poll)
    return None


# --- the lab inventory and what the peers read ---------------------------------------------------


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str


@dataclass(frozen=True)
class LabInventory:
    path: Path
    hosts: tuple[LabHost, ...]     # the controllers, in inventory order
    user: str
    port: int
    identity_file: Path
    known_hosts: Path
    pki_dir: Path                  # as written in the inventory (relative to the working dir)


def read_lab_inventory(path: Path) -> LabInventory:
    """The parts of inventory/lab.yaml (DESIGN.md schema) the peers need: hosts and ssh settings."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    ssh = data.get("ssh") or {}
    hosts = tuple(LabHost(str(h["name"]), str(h["address"])) for h in data.get("controllers") or ())
    if not hosts:
        raise BenchError(f"{path}: no controllers")
    return LabInventory(
        path=Path(path), hosts=hosts, user=str(ssh.get("user", "root")), port=int(ssh.get("port", 22)),
        identity_file=Path(os.path.expanduser(str(ssh.get("identity_file", "~/.ssh/id_ed25519")))),
        known_hosts=Path(os.path.expanduser(str(ssh.get("known_hosts", "~/.ssh/known_hosts")))),
        pki_dir=Path(str((data.get("pki") or {}).get("dir", "pki"))),
    )


def render_ssh_config(inv: LabInventory) -> str:
    """What a KTHW reader has in ~/.ssh/config: one `Host controller-N` block per host. Only the
    address, user, key and known_hosts are set; everything else stays at OpenSSH's defaults
    (strict host-key checking, as the inventory asks)."""
    out = ["# Written by bench/run from the lab inventory; used by the KTHW-style peers.\n"]
    for h in inv.hosts:
        out.append(
            f"Host {h.name}\n"
            f"  HostName {h.address}\n"
            f"  User {inv.user}\n"
            f"  Port {inv.port}\n"
            f"  IdentityFile {inv.identity_file}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {inv.known_hosts}\n"
            f"  GlobalKnownHostsFile /dev/null\n"
            f"  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n"
            f"  LogLevel ERROR\n")
    return "".join(out)


def render_ansible_inventory(inv: LabInventory) -> str:
    """An Ansible INI inventory for the same hosts, same key, same known_hosts (strict)."""
    lines = ["# Written by bench/run from the lab inventory (bench/peers/ansible/deploy.yml reads it).",
             "[controllers]"]
    for h in inv.hosts:
        lines.append(f"{h.name} ansible_host={h.address}")
    lines += ["", "[controllers:vars]",
              f"ansible_user={inv.user}",
              f"ansible_port={inv.port}",
              f"ansible_ssh_private_key_file={inv.identity_file}",
              "ansible_python_interpreter=/usr/bin/python3",
              "ansible_ssh_common_args='-F /dev/null -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
              f"-o UserKnownHostsFile={inv.known_hosts} -o GlobalKnownHostsFile=/dev/null'",
              ""]
    return "\n".join(lines)


def ensure_ansible_venv(venv: Path = ANSIBLE_VENV, log: Callable[[str], None] | None = None) -> Path:
    """`<venv>/bin/ansible-playbook`, building the venv from PyPI first if it is missing.

    A separate venv: Ansible is a peer being measured, never a dependency of k8sboot.
    """
    playbook = venv / "bin" / "ansible-playbook"
    if playbook.exists():
        return playbook
    if log:
        log(f"building {venv} with {ANSIBLE_REQUIREMENT} from PyPI (once)")
    run_timed([sys.executable, "-m", "venv", str(venv)], what="python -m venv", timeout=300)
    run_timed([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
               ANSIBLE_REQUIREMENT], what="pip install ansible-core", timeout=900)
    if not playbook.exists():
        raise BenchError(f"{playbook} is missing after pip install {ANSIBLE_REQUIREMENT}")
    return playbook


def close_control_masters(control_dir: Path) -> None:
    """Close the SSH masters Ansible left running (ControlPersist), so the next run starts cold."""
    import shutil

    for sock in sorted(Path(control_dir).glob("*")):
        if sock.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench-master"],
                           capture_output=True, timeout=30)
    shutil.rmtree(control_dir, ignore_errors=True)


def run_ansible_playbook(ansible_playbook: Path, inventory: Path, playbook: Path, forks: int,
                         extra_vars: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 3600) -> Timed:
    """ansible-playbook as the peers run it (peers/ansible/ansible.cfg: pipelining, ControlPersist),
    with a fresh ANSIBLE_SSH_CONTROL_PATH_DIR, whose masters are closed afterwards (untimed): every
    run starts cold, as a k8sboot command does."""
    import tempfile

    control_dir = Path(tempfile.mkdtemp(prefix="ansible-cp-", dir="/tmp"))
    env = {"ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
           "ANSIBLE_LOCAL_TEMP": str(control_dir / "tmp"),
           "ANSIBLE_NOCOLOR": "1"}
    argv = [str(ansible_playbook), "-i", str(inventory), "--forks", str(forks), str(playbook)]
    for key, value in extra_vars.items():
        argv += ["-e", f"{key}={value}"]
    try:
        return run_timed(argv, cwd=cwd, env=env, timeout=timeout, what=f"ansible-playbook {playbook.name}")
    finally:
        close_control_masters(control_dir)


# --- what a deploy left on a host: one ssh command, parsed, compared --------------------------------


@dataclass(frozen=True)
class HostJob:
    """What one deploy job leaves on every controller: its files (remote path, local file, mode),
    its directories (the first one is listed whole: nothing else may be in it), its unit, its
    service, and the names that must never be found on a host (CA keys, workstation-only keys)."""

    service: str
    unit_path: str
    files: tuple[tuple[str, str, int], ...]
    dirs: tuple[tuple[str, int], ...]
    never: tuple[str, ...] = ("ca-key.pem",)
    unit_mode: int = UNIT_MODE
    host_files: tuple[tuple[str, int], ...] = ()    # (remote path, mode): bytes that differ per host

    @property
    def listed_dir(self) -> str:
        return self.dirs[0][0]


# deploy-apiserver's job (DESIGN.md "On each controller")
APISERVER_JOB = HostJob(
    service="kube-apiserver", unit_path=UNIT_PATH,
    files=tuple((f"{REMOTE_PKI_DIR}/{name}", name, mode) for name, mode in PKI_FILES),
    dirs=((REMOTE_PKI_DIR, REMOTE_PKI_DIR_MODE),))

# deploy-etcd's job (k8sboot.layout's etcd part; bench/etcd compares them before it starts):
# etcd's CA, serving and peer pairs in /etc/etcd (0700), the unit, the data dir (0700, the
# cluster's name under /var/lib/etcd); never etcd's CA key nor the workstation's health-check pair.
ETCD_DIR = "/etc/etcd"
ETCD_DIR_MODE = 0o700
ETCD_FILES: tuple[tuple[str, int], ...] = (
    ("etcd-ca.pem", 0o644),
    ("etcd-server.pem", 0o644),
    ("etcd-server-key.pem", 0o600),
    ("etcd-peer.pem", 0o644),
    ("etcd-peer-key.pem", 0o600),
)
ETCD_UNIT_PATH = "/etc/systemd/system/etcd.service"
ETCD_DATA_DIR_MODE = 0o700


def etcd_job(data_dir: str, marker: str | None = None) -> HostJob:
    """data_dir: the member's, /var/lib/etcd/<cluster name> unless the inventory's etcd.data_dir says;
    marker: the name of the record deploy-etcd writes there (0600), when this k8sboot writes one."""
    return HostJob(
        host_files=((f"{data_dir}/{marker}", 0o600),) if marker else (),
        service="etcd", unit_path=ETCD_UNIT_PATH,
        files=tuple((f"{ETCD_DIR}/{name}", name, mode) for name, mode in ETCD_FILES),
        dirs=((ETCD_DIR, ETCD_DIR_MODE), (data_dir, ETCD_DATA_DIR_MODE)),
        never=("ca-key.pem", "etcd-ca-key.pem", "etcd-healthcheck-client-key.pem", "etcd-healthcheck-client.pem"))


def snapshot_command(job: HostJob = APISERVER_JOB) -> str:
    """One shell command printing what the deploy job leaves on a controller:
    `F <path> <mode-octal> <owner>:<group> <sha256>` per target (or `F <path> missing`),
    `D <dir> <mode> <owner>:<group>` per directory, `L <every name in the first dir>`,
    `S active|... enabled|...`, `CAKEY present|absent` (any of the job's `never` names)."""
    paths = [path for path, _, _ in job.files] + [path for path, _ in job.host_files] + [job.unit_path]
    dirs = [d for d, _ in job.dirs]
    names = " -o ".join(f"-name {shlex.quote(n)}" for n in job.never)
    find = f"find / -xdev -name {shlex.quote(job.never[0])}" if len(job.never) == 1 else \
        f"find / -xdev \\( {names} \\)"
    return (
        f"for f in {' '.join(paths)}; do "
        'if [ -f "$f" ]; then echo "F $f $(stat -c \'%a %U:%G\' "$f") $(sha256sum < "$f" | cut -d" " -f1)"; '
        'else echo "F $f missing"; fi; done; '
        f"for d in {' '.join(dirs)}; do "
        'if [ -d "$d" ]; then echo "D $d $(stat -c \'%a %U:%G\' "$d")"; else echo "D $d missing"; fi; done; '
        f'echo "L $(ls -A {job.listed_dir} 2>/dev/null | tr "\\n" " ")"; '
        f'echo "S $(systemctl is-active {job.service} 2>/dev/null) $(systemctl is-enabled {job.service} 2>/dev/null)"; '
        f'if {find} -print -quit 2>/dev/null | grep -q .; then echo "CAKEY present"; '
        'else echo "CAKEY absent"; fi'
    )


@dataclass(frozen=True)
class HostState:
    files: dict[str, tuple[str, str, str] | None]   # path -> (mode octal, owner:group, sha256) or None
    pki_dir: tuple[str, str] | None                 # the first (listed) dir: (mode, owner:group)
    active: str
    enabled: str
    ca_key_present: bool
    listing: tuple[str, ...] | None = None          # every name in the first dir (None: not read)
    dirs: dict[str, tuple[str, str] | None] = field(default_factory=dict)    # every dir -> (mode, owner)
    service: str = APISERVER_JOB.service


def parse_snapshot(text: str) -> HostState:
    files: dict[str, tuple[str, str, str] | None] = {}
    dirs: dict[str, tuple[str, str] | None] = {}
    active = enabled = "?"
    ca_key = False
    listing: tuple[str, ...] | None = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "F" and len(parts) >= 3:
            files[parts[1]] = None if parts[2] == "missing" else (parts[2], parts[3], parts[4])
        elif parts[0] == "D" and len(parts) >= 3:
            dirs[parts[1]] = None if parts[2] == "missing" else (parts[2], parts[3])
        elif parts[0] == "S":
            active = parts[1] if len(parts) > 1 else "?"
            enabled = parts[2] if len(parts) > 2 else "?"
        elif parts[0] == "L":
            listing = tuple(sorted(parts[1:]))
        elif parts[0] == "CAKEY":
            ca_key = parts[1:2] == ["present"]
    first = next(iter(dirs.values()), None)
    return HostState(files, first, active, enabled, ca_key, listing, dirs)


def sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_state(pki_dir: Path, unit_file: Path, job: HostJob = APISERVER_JOB,
                   host_files: Mapping[str, Path] | None = None) -> HostState:
    """What every tool must leave: the local bytes, the layout's modes, root:root, active, enabled.
    host_files: the local file of each of the job's per-host files (remote path -> local path)."""
    files: dict[str, tuple[str, str, str] | None] = {}
    for path, name, mode in job.files:
        files[path] = (f"{mode:o}", "root:root", sha256_file(pki_dir / name))
    for path, mode in job.host_files:
        files[path] = (f"{mode:o}", "root:root", sha256_file((host_files or {})[path]))
    files[job.unit_path] = (f"{job.unit_mode:o}", "root:root", sha256_file(unit_file))
    dirs = {d: (f"{mode:o}", "root:root") for d, mode in job.dirs}
    listed = tuple(sorted(path.rsplit("/", 1)[1] for path, _, _ in job.files
                          if path.rsplit("/", 1)[0] == job.listed_dir))
    return HostState(files, dirs[job.listed_dir], "active", "enabled", False, listed, dirs, job.service)


def state_differences(got: HostState, want: HostState) -> list[str]:
    """Human-readable differences; empty when the host is exactly as the job should leave it."""
    diffs = []
    for path, w in want.files.items():
        g = got.files.get(path)
        if g is None:
            diffs.append(f"{path}: missing")
            continue
        for label, gv, wv in (("mode", g[0], w[0]), ("owner", g[1], w[1]), ("sha256", g[2], w[2])):
            if gv != wv:
                diffs.append(f"{path}: {label} {gv[:16]} != {wv[:16]}")
    want_dirs = want.dirs or {REMOTE_PKI_DIR: want.pki_dir}
    got_dirs = got.dirs or {REMOTE_PKI_DIR: got.pki_dir}
    for d, w in want_dirs.items():
        if got_dirs.get(d) != w:
            diffs.append(f"{d}: {got_dirs.get(d)} != {w}")
    if got.active != want.active:
        diffs.append(f"{want.service} is {got.active}, not {want.active}")
    if got.enabled != want.enabled:
        diffs.append(f"{want.service} is {got.enabled}, not {want.enabled}")
    if got.ca_key_present:
        diffs.append("ca-key.pem found on the host" if want.service == APISERVER_JOB.service else
                     "a CA key or the workstation's health-check pair found on the host")
    if want.listing is not None and got.listing is not None and got.listing != want.listing:
        extra = sorted(set(got.listing) - set(want.listing))
        if extra:
            diffs.append(f"{next(iter(want_dirs))}: unexpected entries {extra}")
    return diffs



# --- etcd for the API server benches ------------------------------------------------------------------
#
# The lab's stand-in keeps its objects in etcd, as kube-apiserver does: without etcd it starts but
# never turns ready, and `k8sboot deploy-apiserver` refuses to change a host while fewer than a quorum
# of its --etcd-servers are healthy. So every bench that deploys the API server first runs etcd,
# untimed and the same for every tool (set-up, like the PKI): `k8sboot deploy-etcd` on the first
# min(3, N) controllers only (etcd advises 3-7 members; a member per controller at 30 hosts would be
# absurd and slow), from an inventory listing just those, and the API server's inventory names
# exactly those members in apiserver.etcd_servers (k8sboot's default is every controller's member).

ETCD_MEMBERS = 3
ETCD_REGISTRY_PREFIX = "/registry"           # the stand-in's --etcd-prefix (kube-apiserver's default)


def etcd_client_url(host: Mapping) -> str:
    """A controller's etcd client URL as deploy-etcd serves it: https://<internal_ip>:2379."""
    ip = str(host.get("internal_ip") or host["address"])
    return f"https://[{ip}]:2379" if ":" in ip else f"https://{ip}:2379"


def etcd_inventories(text: str, members: int = ETCD_MEMBERS) -> tuple[str, str, tuple[str, ...]]:
    """The lab inventory's text -> (the API server's inventory: apiserver.etcd_servers = the client
    URLs of the first min(members, N) controllers; the etcd inventory: the same with only those
    controllers; their names). Pure: YAML in, YAML out (the lab's comments are not kept)."""
    import yaml

    data = yaml.safe_load(text)
    controllers = list(data.get("controllers") or ())
    if not controllers:
        raise BenchError("the lab inventory has no controllers")
    chosen = controllers[:max(1, min(members, len(controllers)))]
    apiserver = dict(data.get("apiserver") or {})
    apiserver["etcd_servers"] = [etcd_client_url(h) for h in chosen]
    api = {**data, "apiserver": apiserver}
    etcd = {**api, "controllers": chosen}
    names = tuple(str(h["name"]) for h in chosen)
    head = ("# Written by bench/ from the lab inventory: the API server's etcd is the members on "
            f"{', '.join(names)} (k8sboot deploy-etcd -i <the etcd inventory>).\n")

    def dump(doc) -> str:
        return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)

    return dump(api), dump(etcd), names


def etcd_clear_command(prefix: str = ETCD_REGISTRY_PREFIX) -> str:
    """Run on a member: delete every object the API server stored (`etcdctl del --prefix`), so that a
    first deploy on wiped hosts starts from an empty store, as one on reset hosts (a new etcd) does."""
    return ("ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/etcd-ca.pem "
            "--cert=/etc/etcd/etcd-server.pem --key=/etc/etcd/etcd-server-key.pem --command-timeout=10s "
            f"del --prefix {shlex.quote(prefix)} >/dev/null")


@dataclass
class ApiserverEtcd:
    """etcd for an API-server bench: `prepare()` once the lab is up (rewrites the lab inventory, the
    API server's, in place with the explicit etcd_servers, and writes the etcd inventory beside it),
    `deploy()` before the API server is first deployed and after every host reset, untimed."""

    k8sboot: Sequence[str]                  # argv of the k8sboot being measured
    inventory: Path                         # the lab inventory, used as the API server's
    cwd: Path                               # where the inventory's relative pki.dir is
    members: tuple[str, ...] = ()

    @property
    def etcd_inventory(self) -> Path:
        return self.inventory.with_name(self.inventory.stem + "-etcd.yaml")

    data_dir: str = ""

    def prepare(self, members: int = ETCD_MEMBERS) -> tuple[str, ...]:
        import yaml

        text = Path(self.inventory).read_text()
        api, etcd, self.members = etcd_inventories(text, members)
        data = yaml.safe_load(text)
        self.data_dir = str((data.get("etcd") or {}).get("data_dir") or f"/var/lib/etcd/{data['cluster']['name']}")
        Path(self.inventory).write_text(api)
        self.etcd_inventory.write_text(etcd)
        return self.members

    @property
    def job(self) -> HostJob:
        """What deploy-etcd leaves on a member: a wipe of it (Lab.wipe_all) makes room for a new
        cluster, e.g. when a grown lab's members are others than the last count's."""
        return etcd_job(self.data_dir)

    def deploy(self, timeout: float = 600) -> float:
        """`k8sboot deploy-etcd -i <etcd inventory>` (untimed set-up: the seconds are for the log)."""
        return run_timed([*self.k8sboot, "deploy-etcd", "-i", str(self.etcd_inventory)], cwd=self.cwd,
                         timeout=timeout, what="k8sboot deploy-etcd (set-up, untimed)").seconds


# verify checks each controller's etcd member against the inventory (one member per controller):
# with etcd on the first 3 of more controllers it reports the others' missing members and the
# members' smaller cluster as drift. These checks are about that set-up, not the API server's job.
ETCD_CHECK_PATHS = ("/etc/etcd", "/var/lib/etcd", ETCD_UNIT_PATH)


def drift_beyond_etcd(verify_json: Mapping) -> list[str]:
    """`k8sboot verify --json` -> the drifted checks that are not etcd's (host: check: detail)."""
    out = []
    for h in verify_json.get("hosts") or ():
        if h.get("error"):
            out.append(f"{h.get('host')}: {h['error']}")
        for c in h.get("checks") or ():
            if c.get("status") != "DRIFT":
                continue
            name = str(c.get("check", ""))
            target = name.split(" ", 1)[1] if name.startswith(("file ", "dir ")) else ""
            if name.startswith("etcd") or any(target.startswith(p) for p in ETCD_CHECK_PATHS):
                continue
            out.append(f"{h.get('host')}: {name}: {c.get('detail', '')}")
    return out


def apiservers_not_ready(addresses: Sequence[str], pki_dir: Path, timeout: float = 60,
                         port: int = 6443) -> list[str]:
    """Wait (at most `timeout` s) until every address answers GET /readyz 200 (the k8sboot-health
    client cert, the cluster CA); the ones that never did, with their last answer. Part of the
    end state every tool must leave: an API server that serves, with its etcd."""
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    ctx.load_cert_chain(str(pki_dir / "k8sboot-health.pem"), str(pki_dir / "k8sboot-health-key.pem"))
    last = {a: "no answer" for a in addresses}
    waiting = list(addresses)
    deadline = time.monotonic() + timeout
    while waiting:
        for a in list(waiting):
            conn = http.client.HTTPSConnection(a, port, context=ctx, timeout=3)
            try:
                conn.request("GET", "/readyz?verbose")
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                if resp.status == 200:
                    waiting.remove(a)
                else:
                    failed = [x.strip() for x in body.splitlines() if x.startswith("[-]")]
                    last[a] = f"HTTP {resp.status} {' '.join(failed)[:200]}"
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                last[a] = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                conn.close()
        if waiting and time.monotonic() > deadline:
            break
        if waiting:
            time.sleep(0.2)
    return [f"{a}: /readyz {last[a]}" for a in waiting]


# --- trust-root rotations (issue 13, bench/rotate) ------------------------------------------------------
#
# The unit flags each phase of `k8sboot rotate service-account-key|issuer` leaves on every controller
# (and the by-hand scripts bench/peers/manual_rotate_*.sh must leave too): bench/rotate reads every
# host's unit after each phase and compares. Pure: text in, differences out.

SA_PUBLIC = f"{REMOTE_PKI_DIR}/service-account.pem"
SA_KEY = f"{REMOTE_PKI_DIR}/service-account-key.pem"
SA_NEW_PUBLIC = f"{REMOTE_PKI_DIR}/service-account-1.pem"
SA_NEW_KEY = f"{REMOTE_PKI_DIR}/service-account-1-key.pem"
ROTATION_PHASES = ("start", "switch", "finish")
# the CA rotation's phases (`k8sboot rotate ca`, bench/peers/manual_rotate_ca.sh): no flag changes,
# the trust files become bundles (start), every leaf is re-signed (reissue), the bundles go (finish)
CA_ROTATION_PHASES = ("start", "reissue", "finish")


def rotation_phases(kind: str) -> tuple[str, ...]:
    """The phases of a rotation kind, in order (service-account-key, issuer, ca)."""
    return CA_ROTATION_PHASES if kind == "ca" else ROTATION_PHASES


def sa_key_rotation_flags(phase: str) -> dict[str, list[str]]:
    """The service-account flags of a phase ("before" = the canonical pair): repeated values in order."""
    both = [SA_PUBLIC, SA_NEW_PUBLIC]
    table = {
        "before": {"service-account-key-file": [SA_PUBLIC], "service-account-signing-key-file": [SA_KEY]},
        "start": {"service-account-key-file": both, "service-account-signing-key-file": [SA_KEY]},
        "switch": {"service-account-key-file": both, "service-account-signing-key-file": [SA_NEW_KEY]},
        # finish: the canonical names again, holding the new pair; the -1 files gone from the host
        "finish": {"service-account-key-file": [SA_PUBLIC], "service-account-signing-key-file": [SA_KEY]},
    }
    if phase not in table:
        raise ValueError(f"unknown phase {phase!r}")
    return table[phase]


def issuer_rotation_flags(phase: str, old: str, new: str) -> dict[str, list[str]]:
    """--service-account-issuer of a phase: the first one signs, the others are still accepted;
    the order is the point (never sorted)."""
    table = {"before": [old], "start": [old, new], "switch": [new, old], "finish": [new]}
    if phase not in table:
        raise ValueError(f"unknown phase {phase!r}")
    return {"service-account-issuer": table[phase]}


def unit_flag_values(unit_text: str, names: Iterable[str]) -> dict[str, list[str]]:
    """The values of these flags on the unit's ExecStart (`--name=value` or `--name value`, the
    continuation lines joined), repeated flags in order; a flag that is absent maps to []."""
    wanted = {n.lstrip("-"): [] for n in names}
    lines, in_exec = [], False
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not in_exec and not line.startswith("ExecStart="):
            continue
        in_exec = True
        cont = line.endswith("\\")
        lines.append(line[:-1] if cont else line)
        if not cont:
            break
    tokens = shlex.split(" ".join(lines)[len("ExecStart="):]) if lines else []
    for i, tok in enumerate(tokens):
        if not tok.startswith("--"):
            continue
        name, eq, value = tok[2:].partition("=")
        if name in wanted:
            if not eq:
                value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else ""
            wanted[name].append(value)
    return wanted


def flag_differences(unit_text: str, want: Mapping[str, Sequence[str]]) -> list[str]:
    """Human-readable differences between the unit's flags and `want` (name -> values in order)."""
    got = unit_flag_values(unit_text, want)
    return [f"--{name}: {got[name]} != {list(values)}" for name, values in want.items()
            if got[name] != list(values)]


HOLDER_MARK = "held-by-bench"


def lab_users_besides_holder(signs: Sequence[str], mark: str = HOLDER_MARK) -> list[str]:
    """Signs of other lab users (run.others_using_lab) without the placeholder process whose command
    line says it holds the lab for a benchmark (`pytest tests/lab held-by-bench`): other sessions'
    lab tests wait while it runs, the benchmark under it must not wait for it."""
    return [s for s in signs if mark not in s]


if __name__ == "__main__":
    # Reproduce a peer by hand:  python3 bench/lib.py ssh-config inventory/lab.yaml > ssh_config
    #                            python3 bench/lib.py ansible-inventory inventory/lab.yaml > hosts.ini
    if len(sys.argv) != 3 or sys.argv[1] not in ("ssh-config", "ansible-inventory"):
        sys.exit("usage: bench/lib.py ssh-config|ansible-inventory INVENTORY")
    _inv = read_lab_inventory(Path(sys.argv[2]))
    sys.stdout.write(render_ssh_config(_inv) if sys.argv[1] == "ssh-config" else render_ansible_inventory(_inv))
