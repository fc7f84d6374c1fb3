"""deploy-apiserver: push the PKI files and the unit to every controller, in parallel.

Nothing on a host changes before everything local is validated and rendered (local PKI files
present, templates render, --hosts known, --binary readable): the hosts are dialled and their facts
read while that runs (it needs no network, and a connection spends most of its time waiting on the
host), and a local error closes every connection before any change. Per host, in a thread bounded
by `--parallel`: connect → take the deploy lock and read facts (one command) → plan → install only
what differs (one command) → daemon-reload / enable / restart only when needed (same command) →
wait, bounded, until the unit is up (active, running, serving on the secure port), or report why
not with the journal's last lines and, with --rollback-on-failure, put the previous files back.
One host failing never stops the others. Progress goes to a callback (the CLI draws it).
"""

from __future__ import annotations

import shlex
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k8sboot import flags as flagmod
from k8sboot import health, layout, rollout
from k8sboot import plan as planmod
from k8sboot.errors import ExitCode, Interrupted, K8sbootError, PkiError
from k8sboot.model import Host, Inventory
from k8sboot.plan import Component, DesiredFile, HostPlan, ServiceFact

Progress = Callable[[str, str], None]
Connector = Callable[[Host], "object"]   # Host -> remote.Remote


@dataclass(frozen=True)
class DeployOptions:
    hosts: tuple[str, ...] = ()           # empty: every controller
    parallel: int = 0                     # 0: all at once
    dry_run: bool = False
    no_restart: bool = False
    rollback_on_failure: bool = False
    binary: Path | None = None
    accept_new_host_keys: bool = False
    lock_wait: float = 30.0
    wait: float = 60.0                    # bound on "until the unit is up"
    templates: Path | None = None
    strategy: str | None = None           # rolling | parallel; None: rolling when a serving host restarts
    max_unavailable: int = 1              # hosts a rolling wave takes down at once
    ready_timeout: float = 120.0          # bound on "until /readyz answers 200" (a real API server: 5-60 s)
    etcd_check: bool = True               # deploy-apiserver: ask etcd before the first change (etcd_gate)


# outcomes
UNCHANGED = "up to date"
DEPLOYED = "deployed"
FAILED = "failed"
ROLLED_BACK = "rolled back"
ERROR = "error"
DRY_RUN = "dry run"
STAGED = "staged"               # between the phases only: staged, waiting for its wave
PLANNED = "planned"             # between the phases only: planned, waiting for every host's plan
REFUSED = "refused"             # a check before the first change on any host said no: nothing changed
NOT_REACHED = "not reached"     # the roll stopped before this host: old files, old process


@dataclass
class HostResult:
    host: str
    outcome: str
    ok: bool
    files_changed: tuple[str, ...] = ()
    unit_changed: bool = False
    restarted: bool = False
    reloaded: bool = False         # a reload component (HAProxy) re-read its config; nothing restarted
    state: str = ""
    seconds: float = 0.0
    message: str = ""
    hint: str | None = None
    code: int = 0
    journal: tuple[str, ...] = ()
    unit_diff: str = ""
    restart_reasons: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)   # seconds per phase: connect, facts, ...
    pid_before: int = 0            # MainPID before the deploy (0: not running)
    pid_after: int = 0             # MainPID after the restart (0: not restarted)
    wave: int | None = None        # the rolling wave that switched this host (None: at once)
    ready_seconds: float | None = None   # how long /readyz took to answer 200 after the restart

    def to_json(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return d


@dataclass
class DeployReport:
    results: list[HostResult] = field(default_factory=list)
    dry_run: bool = False
    strategy: str = rollout.PARALLEL
    waves: list[list[str]] = field(default_factory=list)    # host names per rolling wave
    warning: str | None = None       # said before acting: the change takes the whole API down
    notes: list[str] = field(default_factory=list)      # e.g. a load balancer that could not be asked
    stopped_by: str | None = None    # the host whose failure stopped the roll
    checks: dict = field(default_factory=dict)       # what was checked before any change (e.g. "etcd")
    refusal: "Refusal | None" = None  # why no host was changed (each host with changes is REFUSED)

    def by_outcome(self) -> dict[str, list[str]]:
        """new / old / rolled back / failed: which hosts run which set after the deploy."""
        out: dict[str, list[str]] = {"new": [], "old": [], "rolled back": [], "failed": []}
        for r in self.results:
            if r.outcome in (DEPLOYED, UNCHANGED):
                out["new"].append(r.host)
            elif r.outcome in (NOT_REACHED, DRY_RUN, REFUSED):
                out["old"].append(r.host)
            elif r.outcome == ROLLED_BACK:
                out["rolled back"].append(r.host)
            else:
                out["failed"].append(r.host)
        return out

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def nothing_changed(self) -> bool:
        return all(r.outcome == UNCHANGED for r in self.results)

    def exit_code(self) -> ExitCode:
        """0 when every host ended as intended; a single shared cause's own code (e.g. HOST_KEY
        when every failure is an unknown host key); DEPLOY otherwise."""
        failed = [r for r in self.results if not r.ok]
        if not failed:
            return ExitCode.OK
        if self.refusal is not None:
            return ExitCode(self.refusal.code)      # nothing was changed anywhere: the refusal's own code
        codes = {r.code for r in failed}
        if len(codes) == 1 and all(r.outcome == ERROR for r in failed):
            code = codes.pop()
            if code in (ExitCode.HOST_KEY, ExitCode.CONNECT, ExitCode.LOCKED):
                return ExitCode(code)
        return ExitCode.DEPLOY


# --- preparation (no network) --------------------------------------------------------------------


def select_hosts(inventory: Inventory, names: Sequence[str]) -> tuple[Host, ...]:
    if not names:
        return inventory.controllers
    known = {h.name: h for h in inventory.controllers}
    unknown = [n for n in names if n not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        raise K8sbootError(f"--hosts: {', '.join(unknown)} not among the controllers of {inventory.path}",
                           hint=(f"did you mean {close[0]}? " if close else "")
                           + "controllers: " + ", ".join(known), code=ExitCode.USAGE)
    return tuple(known[n] for n in dict.fromkeys(names))


def read_local_pki(inventory: Inventory) -> dict[str, bytes]:
    """The PKI files every controller gets, read from the local PKI dir; all missing ones named."""
    from k8sboot.store import check_no_interrupted_write, read_optional

    pki_dir = Path(inventory.pki.dir)
    check_no_interrupted_write(pki_dir)    # never ship a key beside the wrong half-written cert
    out: dict[str, bytes] = {}
    missing = []
    for spec in controller_files(inventory):
        if spec.local_name in layout.RENDERED_FILES:
            out[spec.local_name] = rendered_file(inventory, spec.local_name)
            continue
        path = pki_dir / spec.local_name
        data = read_optional(path)
        if data is None:
            missing.append(str(path))
        else:
            out[spec.local_name] = data
    if missing:
        raise PkiError(f"the local PKI is incomplete: missing {', '.join(missing)}",
                       hint=f"run: k8sboot gen-certs -i {inventory.path}")
    check_shipped_pairs(pki_dir, out)
    return out


# The cert/key pairs a controller gets. A mismatched pair is refused before any host changes: the
# serving pair is picked up without a restart (layout.PICKED_UP_WITHOUT_RESTART), so no start
# failure would reveal it until the next restart, which would then not come up.
SHIPPED_PAIRS = (layout.APISERVER, layout.KUBELET_CLIENT, layout.APISERVER_ETCD_CLIENT)


def check_shipped_pairs(pki_dir: Path, files: dict[str, bytes]) -> None:
    from k8sboot import pki

    for name in SHIPPED_PAIRS:
        cert_name, key_name = layout.cert_file(name), layout.key_file(name)
        if cert_name not in files or key_name not in files or not all(
                b"-----BEGIN" in files[n] for n in (cert_name, key_name)):
            continue          # (not PEM at all: left to the host's start, as before; tests use stand-ins)
        cert = pki.parse_cert(files[cert_name], pki_dir / cert_name)
        key = pki.parse_private_key(files[key_name], pki_dir / key_name)
        if not pki.key_matches(cert, key):
            raise PkiError(f"checking {pki_dir / key_name}: it is not the key of {pki_dir / cert_name}; "
                           "no host was changed",
                           hint=f"restore it from a backup, or reissue both: k8sboot certs renew {name}")


def read_binary(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise K8sbootError(f"--binary {path}: {exc.strerror}", code=ExitCode.USAGE) from exc
    if not data:
        raise K8sbootError(f"--binary {path}: the file is empty", code=ExitCode.USAGE)
    return data


def check_identity_file(inventory: Inventory) -> None:
    ident = inventory.ssh.identity_file
    if ident is not None and not Path(ident).expanduser().is_file():
        raise K8sbootError(f"{inventory.where('ssh.identity_file')}: ssh.identity_file {ident} does not exist",
                           hint="point it at your private key, or remove it to use ssh-agent",
                           code=ExitCode.CONNECT)


def secure_port(inventory: Inventory, host: Host) -> int:
    """The port the unit serves on (`secure-port` after extra_flags), from the flags alone."""
    from k8sboot import flags as flagmod

    flags = dict(flagmod.build_apiserver_flags(inventory, host))
    return int(flags.get("secure-port", inventory.apiserver.secure_port))


def controller_files(inventory: Inventory) -> tuple[layout.RemoteFile, ...]:
    """The path table's controller files, with a rotation's second key pair while it needs one."""
    from k8sboot import rotation

    files = rotation.controller_files(inventory.rotation)
    if inventory.authentication is not None:
        files = (*files, layout.AUTHENTICATION_CONFIG)
    return files


def rendered_file(inventory: Inventory, local_name: str) -> bytes:
    """A controller file made from the inventory rather than read from the PKI dir."""
    if local_name == layout.AUTHENTICATION_CONFIG_FILE and inventory.authentication is not None:
        from k8sboot.authn import oidc

        return oidc.render(inventory.authentication)
    raise KeyError(local_name)


def apiserver_fact_request(inventory: Inventory, *, binary: bool, sections=()) -> "object":
    """What deploy and verify read on a controller: the phase's files, and the obsolete ones."""
    from k8sboot import rotation

    paths = planmod.desired_paths(binary=binary, files=controller_files(inventory))
    return fact_request(paths, secure_port(inventory, inventory.controllers[0]), sections,
                        obsolete=rotation.obsolete_paths(inventory.rotation))


def component_request(component: Component, paths: Sequence[str], port: int, sections=(),
                      extra: Sequence[str] = ()) -> "object":
    """What to read on a host for `component`: sha256 + stat of `paths` (the targets, known before
    any file is rendered); stat only of its binary, bookkeeping (journal, pending mark), the
    staged and previous copies a killed run may have left, and `extra`."""
    from k8sboot.remote import FactRequest

    hashed = tuple(paths)
    others = (component.binary_path, *extra, *(d.path for d in component.extra_dirs),
              component.restart_pending_path, component.journal_path, *planmod.stray_paths_of(hashed))
    return FactRequest(hashed=hashed, stat_only=tuple(dict.fromkeys(p for p in others if p not in hashed)),
                       port=port, sections=tuple(sections), unit=component.unit,
                       text_path=component.diff_path or component.unit_path, state_dir=component.state_dir.path)


def fact_request(paths: Sequence[str], port: int, sections=(), obsolete: Sequence[str] = ()) -> "object":
    """kube-apiserver's facts (`planmod.desired_paths`), whether ca-key.pem is on the host, and
    the files a rotation's phase removes (`obsolete`, and their staged/previous copies)."""
    return component_request(planmod.APISERVER, paths, port, sections,
                             extra=(f"{layout.REMOTE_PKI_DIR}/{layout.key_file(layout.CA)}", *obsolete,
                                    *planmod.stray_paths_of(obsolete)))


class LocalWork:
    """The local preparation's result, handed to the host threads that started before it ended."""

    def __init__(self):
        self._done = threading.Event()
        self._value = None

    def set(self, value) -> None:
        self._value = value
        self._done.set()

    def fail(self) -> None:
        self._done.set()

    def get(self):
        """The value, once set; None when the preparation failed (the main thread reports why)."""
        self._done.wait()
        return self._value


def start_daemon(fn, *args, name: str, limit: threading.Semaphore | None = None) -> Future:
    """`fn(*args)` in a daemon thread (at most `limit`'s count at once): a host still dialling
    never keeps the process alive after a local error was reported."""
    fut: Future = Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            if limit is None:
                fut.set_result(fn(*args))
            else:
                with limit:
                    fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            fut.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


# --- one host ------------------------------------------------------------------------------------


def _verdict_after_wait(svc: ServiceFact, bound: float) -> tuple[str, str]:
    """The host-side wait stops when the unit is up, failing, or out of time: say which."""
    verdict, why = planmod.classify_service(svc)
    if verdict == planmod.STARTING:
        return planmod.FAILED, f"not up after {bound:g}s: {why}"
    return verdict, why


def _state(svc: ServiceFact) -> str:
    return f"{svc.active_state}/{svc.sub_state}"


@dataclass
class Job:
    """One component's deploy, as the engine sees it: the hosts, what to read on them, the local
    work that yields each host's desired files (run while the hosts are dialled), and the gate."""

    component: Component
    hosts: tuple[Host, ...]
    request: object                          # remote.FactRequest
    port: int                                # the port the host-side wait looks at
    prepare: Callable[[], dict[str, tuple[DesiredFile, ...]]]
    expected_flags: Callable[[str], object] | None = None   # host name -> rendered flags (argv gate)
    readyz: health.ReadyzProbe | None = None                 # None: no HTTP gate (e.g. HAProxy)
    stop_timeout: float = 0.0                # how long stopping the old process may take (its drain)
    load_balancers: tuple[Host, ...] = ()    # a rolling wave waits until these balance the host again
    lb_watch: "LbWatch | None" = None        # set by run_job while waves run
    health_path: str = "/readyz"             # what `readyz` asks, for messages
    tls_hint: str = (" (the serving cert kubernetes.pem does not cover this address: run gen-certs to "
                     "reissue it with the inventory's controllers, then deploy again)")
    # After the facts, before the plan: may replace `run.facts` (e.g. after installing a package)
    # and returns why the host must not be deployed, or None.
    before_plan: Callable[["HostRun", DeployOptions, Progress], str | None] | None = None
    # Before a wave takes serving hosts down: why it must not (the roll stops there), or None.
    before_wave: Callable[[Sequence[str]], str | None] | None = None
    # After every host's plan, before the first change on any (also in --dry-run, where it only
    # reports): (runs, the runs with changes, report, warn) -> why no host may change, or None. Set,
    # it makes every host with changes wait for the others' plans; hosts with nothing to change
    # never trigger it.
    before_changes: Callable[[Sequence["HostRun"], Sequence["HostRun"], "DeployReport", Callable[[str], None]],
                             "Refusal | None"] | None = None
    # Per host, after `before_changes` let it go, before its first change (e.g. a package install);
    # may replace `run.facts` (the plan is then made again).
    before_install: Callable[["HostRun", DeployOptions, Progress], None] | None = None
    command: str = "deploy-apiserver"        # what to rerun, for messages
    # Seconds between the first starts of hosts installed at once, in inventory order (host i waits
    # i x this before its install): etcd members of a new cluster started in the same instant
    # stall one another (each asks the others' peer ports, bound but not serving yet, and waits up
    # to 1 s for each), while starts a few tens of ms apart form the cluster at once.
    start_stagger: float = 0.0
    # Paths an earlier set shipped that this one removes (a finished rotation's second key pair).
    obsolete: tuple[str, ...] = ()


@dataclass
class HostRun:
    """One host between the phases of a deploy."""

    host: Host
    result: HostResult
    remote: object = None
    facts: planmod.HostFacts | None = None
    plan: HostPlan | None = None
    waiting: bool = False                    # staged; switches in a wave
    t0: float = 0.0
    desired: tuple[DesiredFile, ...] = ()
    work_before_changes: bool = False        # a hook has work for `before_install` (e.g. a package)


@dataclass(frozen=True)
class Refusal:
    """Why a deploy changed no host at all (a check before the first change)."""

    message: str
    hint: str | None
    code: ExitCode

    def to_json(self) -> dict:
        return {"message": self.message, "hint": self.hint, "code": int(self.code)}


class _Laps:
    def __init__(self, result: HostResult, clock):
        self.result, self.clock, self.mark = result, clock, clock()

    def __call__(self, phase: str) -> None:
        now = self.clock()
        self.result.timings[phase] = self.result.timings.get(phase, 0.0) + now - self.mark
        self.mark = now


def _fail_from(result: HostResult, exc: K8sbootError) -> None:
    result.outcome, result.ok = ERROR, False
    result.message, result.hint, result.code = exc.message, exc.hint, int(exc.code)


def prepare_host(job: Job, host: Host, files: Callable[[str], tuple[DesiredFile, ...] | None], connect: Connector,
                 options: DeployOptions, progress: Progress = lambda h, m: None, clock=time.monotonic) -> HostRun:
    """Phase 1 for one host: connect, lock, facts (restoring a whole set first if an earlier switch
    was cut short), plan; then either the whole install at once (nothing serving is taken down) or
    only the staging, and the host waits for its wave with the connection (and lock) held."""
    name = host.name
    run = HostRun(host, HostResult(host=name, outcome=ERROR, ok=False), t0=clock())
    result = run.result
    lap = _Laps(result, clock)
    keep_open = False
    try:
        progress(name, "connecting")
        run.remote = connect(host)
        lap("connect")
        progress(name, "reading facts" if options.dry_run else "taking the lock, reading facts")
        facts = run.remote.read_facts(job.request, lock_wait=None if options.dry_run else options.lock_wait)
        if facts.file(job.component.journal_path).exists and not options.dry_run:
            progress(name, "restoring the previous set (an earlier switch was cut short)")
            run.remote.recover(job.component)
            facts = run.remote.read_facts(job.request)
            result.restart_reasons += ("restored the previous set left half-switched by an interrupted deploy",)
        run.facts = facts
        lap("facts")
        if job.before_plan is not None:
            why = job.before_plan(run, options, progress)
            facts = run.facts
            lap("facts")
            if why:
                result.outcome, result.message = FAILED, why
                result.code = result.code or ExitCode.DEPLOY      # the hook may have set its own
                result.state = _state(facts.service)
                return run
        desired = files(name)
        if desired is None:
            result.message = "not deployed: the local preparation failed"
            return run
        if clock() - lap.mark > 0.001:
            lap("local")          # waited for the rendering / PKI reading still running
        run.desired = desired
        restart_reasons = result.restart_reasons
        _plan(job, run, options)
        result.restart_reasons += restart_reasons
        plan = run.plan
        if plan.problems:
            result.outcome, result.message = FAILED, "; ".join(plan.problems)
            result.code = ExitCode.DEPLOY
            return run
        if job.before_changes is not None and (plan.has_changes or run.work_before_changes) and not options.dry_run:
            result.outcome, result.ok = PLANNED, True
            progress(name, "planned; waiting for the other hosts' plans")
            keep_open = True
            return run
        keep_open = _proceed(job, run, options, progress, clock)
        return run
    except K8sbootError as exc:
        _fail_from(result, exc)
        return run
    finally:
        if not keep_open:
            _finish(run, clock, progress)


def _plan(job: Job, run: HostRun, options: DeployOptions) -> None:
    """The host's plan from its facts and desired files, and what the result shows of it."""
    facts, result = run.facts, run.result
    plan = planmod.build_host_plan(run.desired, facts, no_restart=options.no_restart, host=run.host.name,
                                   component=job.component, obsolete=job.obsolete)
    run.plan = plan
    result.files_changed = plan.files_changed
    result.unit_changed = plan.unit_changed
    result.unit_diff = plan.unit_diff
    result.restart_reasons = plan.restart_reasons
    result.state = _state(facts.service)
    result.pid_before = facts.service.main_pid
    candidate = rollout.Candidate(run.host.name, facts.service.is_active, plan.takes_down)
    run.waiting = rollout.waits_for_wave(candidate, options.strategy) and not plan.problems


def _proceed(job: Job, run: HostRun, options: DeployOptions, progress: Progress, clock) -> bool:
    """After the plan (and any check before changes): report a dry run or no change, stage for a
    wave, or install at once. True when the connection stays open (staged, waiting for its wave)."""
    plan, result, name = run.plan, run.result, run.host.name
    if options.dry_run:
        result.outcome, result.ok = DRY_RUN, True
        result.restarted = plan.restart
        result.message = _summary(plan, would=True)
        return False
    if not plan.has_changes:
        result.outcome, result.ok = UNCHANGED, True
        result.message = "already up to date"
        return False
    if run.waiting:
        lap = _Laps(result, clock)
        progress(name, f"staging {len(plan.uploads)} file(s)")
        run.remote.stage(plan)
        lap("stage")
        result.outcome, result.ok = STAGED, True
        progress(name, "staged; waiting for its wave")
        return True
    delay = start_delay(job, run)
    if delay:
        time.sleep(delay)
    switch_host(job, run, options, progress, clock, staged=False)
    return False


def start_delay(job: Job, run: HostRun) -> float:
    """How long `run`'s host waits before its install: `job.start_stagger` x its place among the
    job's hosts, for a first start only (a restart of a serving member is in a wave of its own)."""
    if not job.start_stagger or not run.plan.restart or run.facts.service.is_active:
        return 0.0
    return job.hosts.index(run.host) * job.start_stagger


def _resume_held(job: Job, run: HostRun, options: DeployOptions, progress: Progress) -> None:
    """A host held after its plan, let go by `before_changes`: its own step before changes, then on."""
    keep_open = False
    try:
        if job.before_install is not None:
            facts = run.facts
            job.before_install(run, options, progress)
            if run.facts is not facts:
                # the result's reasons are the plan's, then the hooks' own: keep the hooks'
                extra = run.result.restart_reasons[len(run.plan.restart_reasons):]
                _plan(job, run, options)
                run.result.restart_reasons += extra
                if run.plan.problems:
                    run.result.outcome, run.result.ok = FAILED, False
                    run.result.message, run.result.code = "; ".join(run.plan.problems), ExitCode.DEPLOY
                    return
        keep_open = _proceed(job, run, options, progress, time.monotonic)
    except K8sbootError as exc:
        _fail_from(run.result, exc)
    finally:
        if not keep_open:
            _finish(run, time.monotonic, progress)


def _refuse(run: HostRun, refusal: Refusal, *, dry_run: bool, progress: Progress) -> None:
    result = run.result
    result.outcome, result.ok, result.code = REFUSED, False, int(refusal.code)
    result.restarted = False
    result.message = ("would be refused: " if dry_run else "not changed: ") + refusal.message
    result.hint = refusal.hint
    if run.remote is not None:
        _finish(run, time.monotonic, progress)


def _finish(run: HostRun, clock, progress: Progress) -> None:
    run.result.seconds = clock() - run.t0
    if run.remote is not None:
        run.remote.close()
        run.remote = None
    progress(run.host.name, f"done: {run.result.outcome}")


def switch_host(job: Job, run: HostRun, options: DeployOptions, progress: Progress = lambda h, m: None,
                clock=time.monotonic, *, staged: bool) -> None:
    """Install (or only switch, when `staged`), then gate; on a failed gate, the journal and, with
    --rollback-on-failure, the previous set back (gated again)."""
    name, plan, remote, result = run.host.name, run.plan, run.remote, run.result
    lap = _Laps(result, clock)
    progress(name, (f"switching {len(plan.uploads)} staged file(s)" if staged
                    else f"installing {len(plan.uploads)} file(s)")
             + (", reloading" if plan.reload else ", restarting" if plan.restart else ""))
    svc = remote.install(plan, keep_previous=options.rollback_on_failure, wait=options.wait, port=job.port,
                         staged=staged, stop_timeout=job.stop_timeout)
    lap("install")
    if svc is not None and svc.wait_ms is not None:   # split the one command: host-side wait loop
        result.timings["wait"] = min(svc.wait_ms / 1000, result.timings["install"])
        result.timings["install"] -= result.timings["wait"]
    result.restarted, result.reloaded = plan.restart and not plan.reload, plan.reload
    if svc is None:
        # not restarted (a mode/owner fix, or --no-restart): it runs as it did before we came,
        # and `build_host_plan` restarts any unit that was not active
        svc = run.facts.service
        verdict, why = (planmod.UP, "running") if svc.is_active else planmod.classify_service(svc)
    else:
        verdict, why = _verdict_after_wait(svc, options.wait)
        result.pid_after = svc.main_pid
    result.state = _state(svc)
    if verdict == planmod.UP and plan.restart:
        why = _gate(job, run, svc, options, progress, clock)
        lap("ready")
        verdict = planmod.UP if why is None else planmod.FAILED
    if verdict == planmod.UP:
        result.outcome, result.ok = DEPLOYED, True
        result.message = _summary(plan, would=False)
        if options.rollback_on_failure:
            remote.cleanup(plan)
        return
    result.outcome, result.ok, result.code = FAILED, False, ExitCode.DEPLOY
    result.message = f"{job.component.name} did not come up: {why}"
    result.journal = tuple(remote.read_journal(unit=job.component.unit))
    if options.rollback_on_failure:
        progress(name, "rolling back")
        svc2 = remote.rollback(plan, wait=options.wait, port=job.port, stop_timeout=job.stop_timeout)
        if svc2 is None:
            result.state = "removed"
            result.message += "; rolled back: the unit was new, so it was removed"
        else:
            verdict2, why2 = _verdict_after_wait(svc2, options.wait)
            result.state = _state(svc2)
            result.pid_after = svc2.main_pid
            if verdict2 == planmod.UP and job.readyz is not None:
                ready = health.wait_ready(run.host, job.readyz, options.ready_timeout)
                why2 = f"ready again ({ready.seconds:.1f}s)" if ready.ready else f"not ready: {ready.detail}"
            result.message += f"; rolled back to the previous files: {why2}"
        result.outcome = ROLLED_BACK
        lap("rollback")


def _gate(job: Job, run: HostRun, svc: ServiceFact, options: DeployOptions, progress: Progress, clock) -> str | None:
    """Why the restarted host fails its gate, or None: a new process, the rendered argv, /readyz."""
    if not run.plan.reload:
        why = health.check_new_process(run.facts.service, svc)
        if why:
            return why
        if job.expected_flags is not None:
            why = health.check_argv(svc.argv, job.expected_flags(run.host.name), job.component.binary_path)
            if why:
                return why
    if job.readyz is None:
        return None
    progress(run.host.name, f"waiting for {job.health_path}")
    ready = health.wait_ready(run.host, job.readyz, options.ready_timeout)
    run.result.ready_seconds = ready.seconds
    if not ready.ready:
        where = f"GET {job.health_path} on {run.host.internal_ip}:{job.port}"
        if ready.seconds < options.ready_timeout:       # an answer that waiting cannot change
            why = f"{where}: {ready.detail}"
            if "TLS verification failed" in ready.detail:
                why += job.tls_hint
            return why
        return f"{where} did not answer 200 within {options.ready_timeout:g}s: {ready.detail}"
    if job.lb_watch is not None and run.waiting:
        # the next wave takes another controller out: first this one must be back in rotation
        progress(run.host.name, "waiting until the load balancers send it traffic again")
        t0 = clock()
        why = job.lb_watch.wait_up(run.host, options.ready_timeout)
        run.result.timings["lb"] = clock() - t0
        if why:
            return why
    return None


def _summary(plan: HostPlan, *, would: bool) -> str:
    parts = []
    if plan.strays:
        parts.append(("would remove " if would else "removed ") + f"{len(plan.strays)} leftover staged/previous "
                     "file(s) of an interrupted deploy")
    if plan.uploads:
        parts.append(("would upload " if would else "uploaded ") + ", ".join(c.file.name for c in plan.uploads))
    if plan.fixups:
        parts.append(("would fix " if would else "fixed ") + "; ".join(
            f"{c.file.name} ({', '.join(c.reasons)})" for c in plan.fixups))
    for d in plan.dirs:
        parts.append(("would fix " if would else "fixed ") + f"{d.dir.path} ({', '.join(d.reasons)})")
    if plan.daemon_reload:
        parts.append(("would " if would else "") + "daemon-reload")
    if plan.enable:
        parts.append(("would " if would else "") + "enable")
    if plan.removals:
        parts.append(("would remove " if would else "removed ") + ", ".join(p.rsplit("/", 1)[-1] for p in plan.removals)
                     + " (no longer used)")
    if plan.reload:
        parts.append(("would reload" if would else "reloaded") + f" ({'; '.join(plan.restart_reasons)})")
    elif plan.restart:
        parts.append(("would restart" if would else "restarted") + f" ({'; '.join(plan.restart_reasons)})")
    elif plan.picked_up:
        parts.append(f"no restart: the running server re-reads {', '.join(plan.picked_up)} itself (about every minute)")
    if not parts:
        return "already up to date"
    return "; ".join(parts)


# --- all hosts -----------------------------------------------------------------------------------


def apiserver_job(inventory: Inventory, options: DeployOptions, hosts: Sequence[Host], templates: Path,
                  readyz: health.ReadyzProbe | None) -> Job:
    from k8sboot import render

    from k8sboot import rotation

    port = secure_port(inventory, hosts[0])
    files = controller_files(inventory)
    obsolete = rotation.obsolete_paths(inventory.rotation)
    request = fact_request(planmod.desired_paths(binary=options.binary is not None, files=files), port,
                           obsolete=obsolete)
    rendered: dict[str, object] = {}

    def prepare() -> dict[str, tuple[DesiredFile, ...]]:
        units = {h.name: render.render_unit(inventory, h, templates) for h in hosts}
        rendered.update(units)
        pki = read_local_pki(inventory)
        binary = read_binary(options.binary) if options.binary else None
        return {name: planmod.build_desired_files(pki, unit.text, binary, files) for name, unit in units.items()}

    # a restart waits for the old process to drain: the shutdown delay, then up to the request
    # timeout (1m) for requests in flight (the unit's TimeoutStopSec is the same sum + 15 s)
    stop = inventory.apiserver.shutdown_delay_seconds + 60 + 15
    return Job(planmod.APISERVER, tuple(hosts), request, port, prepare,
               expected_flags=lambda name: rendered[name].flags, readyz=readyz, stop_timeout=stop,
               load_balancers=inventory.load_balancers, obsolete=obsolete)


def health_checker(inventory: Inventory, port: int) -> health.ReadyzProbe:
    """The gate's /readyz probe (replaced in unit tests, which have no API server to ask)."""
    from k8sboot import remote

    dialer = getattr(remote, "tcp_dialer", None)
    dial = dialer(inventory.ssh, _aliases(inventory)) if dialer is not None else None
    return health.https_readyz(inventory, port, dial=dial)


def deploy(inventory: Inventory, options: DeployOptions, *, connect: Connector | None = None,
           progress: Progress = lambda h, m: None, readyz: health.ReadyzProbe | None = None,
           warn: Callable[[str], None] = lambda message: None,
           etcd_ask: Callable[[str], "object"] | None = None) -> DeployReport:
    """deploy-apiserver: the rendered unit and the PKI files on every selected controller; before
    the first change on any, its etcd is checked (`etcd_gate`; `etcd_ask`: URL -> GET /health
    answer, by default `apiserver_etcd_prober`'s)."""
    from k8sboot import render

    # the quick local checks before dialling anything; the slower local work runs while dialling
    hosts = select_hosts(inventory, options.hosts)
    check_identity_file(inventory)
    templates = render.templates_dir_for(inventory, options.templates)
    if options.binary is not None and not Path(options.binary).is_file():
        read_binary(options.binary)     # raises, naming the cause
    if readyz is None and not options.dry_run:
        readyz = health_checker(inventory, secure_port(inventory, hosts[0]))
    job = apiserver_job(inventory, options, hosts, templates, readyz)
    job.before_changes = issuer_gate(inventory)
    if options.etcd_check:
        job.before_changes = chain_gates(job.before_changes, etcd_gate(inventory, etcd_ask))
    elif not options.dry_run:
        warn("etcd not checked (--no-etcd-check): a restarted API server that cannot read etcd stops the roll "
             "at its health gate")
    if options.strategy == rollout.PARALLEL and not options.dry_run:
        warning = rollout.outage_warning(len(inventory.controllers), len(hosts), options.strategy,
                                         options.max_unavailable)
        if warning:
            warn(warning)       # before anything is dialled: a parallel switch happens as hosts are ready
    return run_job(job, options, n_controllers=len(inventory.controllers),
                   connect=connect or ssh_connector(inventory, accept_new_host_keys=options.accept_new_host_keys),
                   progress=progress, warn=warn)


def apiserver_etcd_prober(inventory: Inventory, timeout: float = 2.0) -> EtcdProber:
    """etcd as kube-apiserver will see it: etcd's CA and the API server's own apiserver-etcd-client
    pair from the local PKI (the files deploy-apiserver ships), from the workstation."""
    return etcd_prober(inventory, timeout, client=layout.APISERVER_ETCD_CLIENT)


def etcd_servers(inventory: Inventory) -> tuple[str, ...]:
    """The --etcd-servers kube-apiserver is rendered with (apiserver.etcd_servers, after extra_flags)."""
    from k8sboot import flags as flagmod

    value = dict(flagmod.build_apiserver_flags(inventory, inventory.controllers[0])).get("etcd-servers", "")
    return tuple(u.strip() for u in value.split(",") if u.strip())


def check_apiserver_etcd(inventory: Inventory, ask: Callable[[str], "object"], timeout: float = 2.0):
    """One round of parallel GET /health, one per --etcd-servers URL, and the local client pair
    against etcd's CA (offline) -> etcd.StorageCheck."""
    from k8sboot import etcd
    from k8sboot.store import read_optional

    from k8sboot import rotation

    pki_dir = Path(inventory.pki.dir)
    ca = pki_dir / rotation.trust_name(inventory.rotation, layout.cert_file(layout.ETCD_CA))
    cert = pki_dir / layout.cert_file(layout.APISERVER_ETCD_CLIENT)
    urls = etcd_servers(inventory)
    asked = {u: start_daemon(ask, u, name=f"etcd-check-{u}") for u in urls if u.lower().startswith("https://")}
    _wait(list(asked.values()))
    servers = []
    for url in urls:
        if url not in asked:
            servers.append(etcd.ServerHealth(url, False, "not asked: a plain http:// URL (k8sboot's etcd serves "
                                                         "https with client certificates only)", probed=False))
            continue
        answer = asked[url].result()
        ok, why = etcd.explain_answer(answer.status, answer.body if answer.status is not None else answer.error,
                                      ca=str(ca), cert=str(cert), timeout=timeout)
        servers.append(etcd.ServerHealth(url, ok, why))
    ca_pem, cert_pem = read_optional(ca), read_optional(cert)
    pair = (etcd.check_client_pair(ca_pem, cert_pem, str(ca), str(cert))
            if ca_pem is not None and cert_pem is not None else None)
    return etcd.StorageCheck(tuple(servers), pair)


def etcd_gate(inventory: Inventory, ask: Callable[[str], "object"] | None = None, timeout: float = 2.0):
    """deploy-apiserver's `before_changes`: its etcd, as the API server will reach it. One line per
    --etcd-servers URL that is not healthy; a quorum of them healthy: a warning and the deploy goes
    on (kube-apiserver fails over among them); fewer: no host is changed (ETCD_UNAVAILABLE)."""

    def before_changes(runs, changing, report: DeployReport, warn: Callable[[str], None]) -> Refusal | None:
        prober = None
        asking = ask
        if asking is None:
            prober = apiserver_etcd_prober(inventory, timeout)
            asking = prober.url
        try:
            check = check_apiserver_etcd(inventory, asking, timeout)
        finally:
            if prober is not None:
                prober.close()
        report.checks["etcd"] = check.to_json()
        for line in check.lines():
            warn(line)
        if check.available:
            if check.probed and len(check.healthy) < len(check.probed):
                warn(f"etcd: {check.summary()}: deploying on (kube-apiserver fails over among --etcd-servers)")
            return None
        return Refusal(f"etcd is not available to kube-apiserver: {check.summary()}; no kube-apiserver was "
                       "restarted (it would not become ready without its storage)",
                       hint=f"bring etcd back first: k8sboot deploy-etcd -i {inventory.path}, check it with "
                            f"k8sboot verify -i {inventory.path}, then rerun deploy-apiserver",
                       code=ExitCode.ETCD_UNAVAILABLE)

    return before_changes


def issuer_gate(inventory: Inventory):
    """deploy-apiserver's `before_changes`: an issuer the controllers sign with that the new flags
    would no longer accept. Every ServiceAccount token carries its issuer (`iss`); changing
    cluster.service_account_issuer in the inventory alone would give every one of them 401 at
    once. `k8sboot rotate issuer` changes it in phases instead; this refuses the shortcut."""
    from k8sboot import rotation

    rendered = rotation.issuers(inventory.rotation, inventory.cluster.service_account_issuer)

    def before_changes(runs, changing, report: DeployReport, warn: Callable[[str], None]) -> Refusal | None:
        for run in runs:
            text = run.facts.unit_text if run.facts is not None else None
            argv = flagmod.parse_unit_exec_start(text) if text else None
            running = [v for k, v in flagmod.parse_argv_flags(argv or []) if k == "service-account-issuer"]
            if running and running[0] not in rendered:
                return Refusal(
                    f"{run.host.name} signs ServiceAccount tokens as --service-account-issuer={running[0]}, which "
                    f"{inventory.where('cluster.service_account_issuer')} no longer accepts "
                    f"({', '.join(rendered)}): every token issued so far would get 401",
                    hint=f"put back service_account_issuer: {running[0]}, then change it without an outage: "
                         f"k8sboot rotate issuer start --to {rendered[0]} -i {inventory.path}",
                    code=ExitCode.ROTATION)
        return None

    return before_changes


def chain_gates(*gates):
    """Several `before_changes` checks in order: the first refusal wins."""
    def before_changes(runs, changing, report, warn):
        for gate in gates:
            refusal = gate(runs, changing, report, warn)
            if refusal is not None:
                return refusal
        return None

    return before_changes


def run_job(job: Job, options: DeployOptions, *, n_controllers: int, connect: Connector,
            progress: Progress = lambda h, m: None, warn: Callable[[str], None] = lambda m: None) -> DeployReport:
    """The engine: phase 1 on every host at once (facts, plan, staging, or the whole install where
    nothing serving is taken down), then the waves; the first host that fails stops the roll."""
    hosts = job.hosts
    workers = options.parallel if options.parallel > 0 else len(hosts)
    limit = threading.Semaphore(max(1, workers))
    report = DeployReport(dry_run=options.dry_run)
    opened = OpenConnections(connect)
    local = LocalWork()
    quiet = threading.Event()     # after a local error or an interrupt: hosts still winding down say nothing

    def report_progress(host: str, message: str) -> None:
        if not quiet.is_set():
            progress(host, message)

    def files(name: str):
        desired = local.get()
        return None if desired is None else desired[name]

    futures: list[Future] = []
    runs: list[HostRun] = []
    try:
        futures = [start_daemon(prepare_host, job, h, files, opened.connect, options, report_progress,
                                name=f"deploy-{h.name}", limit=limit) for h in hosts]
        try:
            local.set(job.prepare())   # while the hosts connect
        except BaseException:
            quiet.set()
            local.fail()
            opened.abort()        # a lock taken is released, nothing was changed
            wait_for_futures(futures, timeout=1)   # let the hosts let go; one still dialling is left behind
            raise
        _wait(futures)
        runs = [f.result() for f in futures]
        if job.before_changes is not None:
            changing = [r for r in runs if r.plan is not None and (r.plan.has_changes or r.work_before_changes)
                        and r.result.outcome in (PLANNED, DRY_RUN)]
            refusal = job.before_changes(runs, changing, report, warn) if changing else None
            if refusal is not None:
                report.refusal = refusal
                for r in changing:
                    _refuse(r, refusal, dry_run=options.dry_run, progress=report_progress)
            held = [r for r in runs if r.result.outcome == PLANNED]
            futures = [start_daemon(_resume_held, job, r, options, report_progress, name=f"deploy-{r.host.name}",
                                    limit=limit) for r in held]
            _wait(futures)
            for f in futures:
                f.result()
        waiting = [r for r in runs if r.waiting and r.result.outcome in (STAGED, DRY_RUN)]
        candidates = [rollout.Candidate(r.host.name, r.facts.service.is_active, True) for r in waiting]
        waves = rollout.build_waves(candidates, options.max_unavailable)
        report.waves = [list(w) for w in waves]
        report.strategy = (options.strategy or (rollout.ROLLING if waves else rollout.PARALLEL))
        if options.dry_run or not waves:
            return report
        if job.load_balancers:
            job.lb_watch = LbWatch(job.load_balancers, opened.connect)
        warning = _outage(runs, waves, n_controllers, report.strategy)
        if warning:
            warn(warning)
        report.warning = warning
        by_name = {r.host.name: r for r in runs}
        failed = [r.host.name for r in runs if not r.result.ok]
        refused: tuple[str, str] | None = None      # (host, why) when a wave was not allowed to start
        for i, wave in enumerate(waves):
            if failed:
                report.stopped_by = failed[0]
                break
            group = [by_name[n] for n in wave]
            if job.before_wave is not None and any(r.facts.service.is_active for r in group):
                why = job.before_wave(wave)
                if why:
                    report.stopped_by = wave[0]
                    refused = (wave[0], why)
                    break
            for r in group:
                r.result.wave = i + 1
            wave_futures = [start_daemon(_switch_and_finish, job, r, options, report_progress,
                                         name=f"switch-{r.host.name}", limit=limit) for r in group]
            futures = wave_futures
            _wait(wave_futures)
            for f in wave_futures:
                f.result()
            failed = [r.host.name for r in group if not r.result.ok]
        else:
            if failed:
                report.stopped_by = failed[0]
        for r in waiting:
            if r.result.outcome == STAGED:       # never reached: remove what was staged
                _not_reached(r, report.stopped_by, report_progress)
                if refused is not None and r.host.name == refused[0]:
                    r.result.message = f"not restarted: {refused[1]}; the roll stops here (old files and process kept)"
                    r.result.hint = ("make the other members healthy first, then rerun; --strategy parallel "
                                     "restarts every member at once instead (unavailable meanwhile)")
        return report
    except (KeyboardInterrupt, Interrupted) as exc:
        # Ctrl-C / SIGTERM land here, in the main thread: stop every host where it stands. Closing
        # a connection ends its command's input: an install still receiving its files fails and
        # the host removes what it staged; one already renaming them finishes on the host (and a
        # switch cut between two renames is restored whole by the next deploy, from its journal).
        quiet.set()
        local.fail()
        opened.abort()
        for f in futures:
            f.cancel()
        wait_for_futures(futures, timeout=10)   # the hosts' own cleanup, bounded
        stopped = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        stopped.hint = ("each host holds the old or the new version of every file, never a partial one; "
                        f"rerun {job.command} to converge")
        raise stopped from None
    finally:
        report.results = [r.result for r in runs] if runs else report.results
        for r in runs:
            if r.remote is not None:
                _finish(r, time.monotonic, lambda h, m: None)
        if job.lb_watch is not None:
            report.notes.extend(job.lb_watch.notes)
            job.lb_watch.close()
            job.lb_watch = None


class LbWatch:
    """The load balancers' own view of the controllers during a roll (HAProxy's `show stat` over
    SSH): a restarted controller is back in rotation, UP in every LB that balances it, before the
    next wave takes another one out. With 2 controllers this closes the window where the one
    restarted is still rising in the LB (rise x inter) while the other is already marked down."""

    def __init__(self, lbs: Sequence[Host], connect: Connector, interval: float = 0.25):
        self.lbs, self.connect, self.interval = tuple(lbs), connect, interval
        self.notes: list[str] = []
        self._remotes: dict[str, object] = {}
        self._skip: set[str] = set()
        self._lock = threading.Lock()

    def _servers(self, lb_host: Host) -> dict[str, tuple[str, str]]:
        from k8sboot import lb

        with self._lock:
            remote = self._remotes.get(lb_host.name)
            if remote is None:
                remote = self._remotes[lb_host.name] = self.connect(lb_host)
            out = remote.exec(lb.LB_STATS_COMMAND, what="reading HAProxy's view of the controllers",
                              timeout=15).out
        return lb.parse_lb_stats(out, lb.BACKEND)

    def wait_up(self, host: Host, timeout: float, clock=time.monotonic, sleep=time.sleep) -> str | None:
        """None once every LB that lists `host` has it UP; why not, after `timeout`. An LB that
        cannot be asked, or that does not balance this host, is noted and not waited for."""
        deadline = clock() + timeout
        pending = [h for h in self.lbs if h.name not in self._skip]
        last: dict[str, str] = {}
        while pending:
            for lb_host in list(pending):
                try:
                    servers = self._servers(lb_host)
                except K8sbootError as exc:
                    self._skip.add(lb_host.name)
                    self.notes.append(f"{lb_host.name}: {exc.message}; the roll did not wait for it")
                    pending.remove(lb_host)
                    continue
                status = servers.get(host.name)
                if status is None:
                    pending.remove(lb_host)      # not in its config (deploy-lb not run yet): nothing to wait for
                elif status[0].startswith("UP"):
                    pending.remove(lb_host)
                else:
                    last[lb_host.name] = " ".join(x for x in status if x)
            if not pending:
                return None
            if clock() >= deadline:
                return (f"ready, but not back in rotation within {timeout:g}s: "
                        + "; ".join(f"{n} sees it {s}" for n, s in last.items()))
            sleep(self.interval)
        return None

    def close(self) -> None:
        for remote in self._remotes.values():
            remote.close()
        self._remotes.clear()


def _wait(futures: Sequence[Future]) -> None:
    while wait_for_futures(futures, timeout=0.25).not_done:   # wake up often: a signal's handler runs here
        pass


def _switch_and_finish(job: Job, run: HostRun, options: DeployOptions, progress: Progress) -> None:
    try:
        switch_host(job, run, options, progress, staged=True)
    except K8sbootError as exc:
        _fail_from(run.result, exc)
    finally:
        _finish(run, time.monotonic, progress)


def _not_reached(run: HostRun, stopped_by: str | None, progress: Progress) -> None:
    result = run.result
    try:
        run.remote.unstage(run.plan)
    except K8sbootError:
        pass      # the staged copies are strays the next deploy removes
    result.outcome, result.ok, result.code = NOT_REACHED, False, ExitCode.DEPLOY
    result.restarted = False
    result.message = (f"not reached: the roll stopped at {stopped_by}; old files and old process kept "
                      "(rerun after the fix to resume)")
    _finish(run, time.monotonic, progress)


def _outage(runs: Sequence[HostRun], waves, n_controllers: int, strategy: str) -> str | None:
    """Say so before acting when some wave leaves no controller serving."""
    serving = {r.host.name for r in runs if r.facts is not None and r.facts.service.is_active}
    unselected = n_controllers - len(runs)     # not in --hosts: assumed serving
    for wave in waves:
        left = unselected + len(serving - set(wave))
        if left <= 0 and serving & set(wave):
            if n_controllers == 1:
                return ("there is one controller: the API is unavailable while kube-apiserver restarts on it "
                        "(add controllers behind a load balancer to keep it up)")
            why = ("--strategy parallel" if strategy == rollout.PARALLEL
                   else f"--max-unavailable covers every serving controller ({', '.join(wave)})")
            return f"{why}: every serving controller restarts at once, so the API is unavailable until one is ready"
    return None


# --- deploy-lb: the same engine, another component -------------------------------------------------

def _haproxy() -> Component:
    from k8sboot import lb

    return Component(name="haproxy", unit=layout.LB_UNIT_NAME, binary_path=layout.LB_BINARY_PATH,
                     state_dir=lb.LB_DIR, binary_hint="install it: apt-get install haproxy", apply="reload",
                     check_command=lb.CHECK_COMMAND, check_kind=lb.KIND_CONFIG, diff_path=layout.LB_CONFIG_PATH)


def lb_request(paths: Sequence[str], port: int, sections=()) -> "object":
    return component_request(_haproxy(), paths, port, sections)


def lb_job(inventory: Inventory, options: DeployOptions, templates: Path | None = None) -> Job:
    """HAProxy on every `load_balancers:` host: its config (a change is checked with `haproxy -c`
    on the host, then applied by `systemctl reload`: established connections survive), the
    cluster CA and the health client cert+key its /readyz checks present."""
    from k8sboot import lb
    from k8sboot.store import check_no_interrupted_write, read_optional

    all_lbs = lb.require_load_balancers(inventory)
    if options.hosts:
        known = {h.name: h for h in all_lbs}
        unknown = [n for n in options.hosts if n not in known]
        if unknown:
            raise K8sbootError(f"--hosts: {', '.join(unknown)} not among the load_balancers of {inventory.path}",
                               hint="load balancers: " + ", ".join(known), code=ExitCode.USAGE)
        hosts = tuple(known[n] for n in dict.fromkeys(options.hosts))
    else:
        hosts = all_lbs
    port = lb.frontend_port(inventory)

    def prepare() -> dict[str, tuple[DesiredFile, ...]]:
        text = lb.render_haproxy_config(inventory, templates)
        pki_dir = Path(inventory.pki.dir)
        check_no_interrupted_write(pki_dir)
        from k8sboot import rotation

        trust = rotation.trust_name(inventory.rotation, lb.CA_FILE)     # a CA rotation's bundle
        pki = {name: data for name, source in ((lb.CA_FILE, trust), (lb.HEALTH_CERT_FILE, lb.HEALTH_CERT_FILE),
                                               (lb.HEALTH_KEY_FILE, lb.HEALTH_KEY_FILE))
               if (data := read_optional(pki_dir / source)) is not None}
        files = lb.lb_files(inventory, pki, text)
        return {h.name: files for h in hosts}

    return Job(_haproxy(), hosts, lb_request(lb.lb_desired_paths(), port), port, prepare)


def deploy_lb(inventory: Inventory, options: DeployOptions, *, connect: Connector | None = None,
              progress: Progress = lambda h, m: None) -> DeployReport:
    check_identity_file(inventory)
    job = lb_job(inventory, options, options.templates)
    return run_job(job, options, n_controllers=len(job.hosts),
                   connect=connect or ssh_connector(inventory, accept_new_host_keys=options.accept_new_host_keys),
                   progress=progress)


# --- deploy-etcd: the same engine, one etcd member per controller -----------------------------------


EtcdProbe = Callable[[Host, str], "object"]     # (member, "health" | "members") -> probe.ProbeAnswer
MARKER_SECTION = "etcd-marker"                  # the facts' copy of the data dir's k8sboot-member.json


class EtcdProber:
    """HTTPS to etcd members' client ports from the workstation, with etcd's CA and a client pair of
    the local PKI (k8sboot's etcd-healthcheck-client by default): GET /health, or the v3 member list
    (POST). Through `dial` when given (the caller's, left open), else through ssh.proxy_jump when
    set, with a jump dialer of its own that `close()` closes."""

    def __init__(self, inventory: Inventory, timeout: float = 2.0, *, dial=None,
                 client: str = layout.ETCD_HEALTHCHECK_CLIENT):
        from k8sboot import rotation

        pki_dir = Path(inventory.pki.dir)
        self.ca = pki_dir / rotation.trust_name(inventory.rotation, layout.cert_file(layout.ETCD_CA))
        self.cert = pki_dir / layout.cert_file(client)
        self.key = pki_dir / layout.key_file(client)
        for path in (self.ca, self.cert, self.key):
            if not path.is_file():
                raise PkiError(f"asking etcd needs {path}", hint=f"run: k8sboot gen-certs -i {inventory.path}")
        self.timeout = timeout
        self._own = None
        if dial is None:
            from k8sboot import remote

            dial = self._own = remote.tcp_dialer(inventory.ssh, _aliases(inventory))
        self.dial = dial

    def at(self, address: str, port: int, what: str = "health"):
        """`what` ("health" | "members") of the member at address:port -> probe.ProbeAnswer."""
        from k8sboot import etcd, probe

        extra = {"dial": self.dial} if self.dial is not None else {}
        if what == "members":
            return probe.request(address, port, "POST", etcd.MEMBER_LIST_PATH, self.ca, cert=self.cert,
                                 key=self.key, body=b"{}", headers={"Content-Type": "application/json"},
                                 timeout=self.timeout, **extra)
        return probe.request(address, port, "GET", etcd.HEALTH_PATH, self.ca, cert=self.cert, key=self.key,
                             timeout=self.timeout, **extra)

    def url(self, url: str, what: str = "health"):
        """The same for an --etcd-servers URL (https://ADDRESS:PORT, 2379 when no port)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return self.at(parts.hostname or "", parts.port or layout.ETCD_CLIENT_PORT, what)

    def __call__(self, host: Host, what: str):
        return self.at(str(host.internal_ip), layout.ETCD_CLIENT_PORT, what)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None

    def __enter__(self) -> "EtcdProber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def etcd_prober(inventory: Inventory, timeout: float = 2.0, *, dial=None,
                client: str = layout.ETCD_HEALTHCHECK_CLIENT) -> EtcdProber:
    """See `EtcdProber` (PkiError when the local PKI lacks etcd's CA or the client pair)."""
    return EtcdProber(inventory, timeout, dial=dial, client=client)


def etcd_health(ask: EtcdProbe) -> health.ReadyzProbe:
    """The per-member gate: 200 only for `{"health":"true"}` (a member without a leader answers 503,
    or 200 with health false on some versions: both are not ready)."""
    from k8sboot import etcd
    from k8sboot.probe import ProbeAnswer

    def readyz(host: Host):
        answer = ask(host, "health")
        ok, why = etcd.parse_health(answer.status, answer.body if answer.status is not None else answer.error)
        if ok:
            return answer
        if answer.status is None:
            return answer
        return ProbeAnswer(answer.status if answer.status != 200 else 503, why)

    return readyz


# Measured with ten real etcd 3.4 members on loopback: started in the same instant they were all
# healthy after 1.5-6.4 s; 20-50 ms apart, after 0.5-0.8 s.
ETCD_START_STAGGER = 0.03


def etcd_job(inventory: Inventory, options: DeployOptions, ask: EtcdProbe | None,
             clock=time.monotonic, sleep=time.sleep) -> Job:
    """One etcd member per selected controller: /etc/etcd's TLS files, the unit, the data dir;
    Debian's etcd-server installed where the binary is missing (unless --binary); a restarted
    member gated on a new MainPID with the rendered argv and GET /health {"health":"true"}; before
    a wave takes a serving member down, the others must keep quorum (waited for, bounded)."""
    from dataclasses import replace

    from k8sboot import etcd
    from k8sboot.errors import RemoteError
    from k8sboot.plan import FileFact

    hosts = select_hosts(inventory, options.hosts)
    uploaded = options.binary is not None
    comp = etcd.component(inventory, uploaded_binary=uploaded)
    directory = etcd.templates_dir(options.templates)
    data_dir = etcd.data_dir(inventory)
    member_dir = f"{data_dir}/{etcd.DATA_DIR_MEMBER}"
    marker = etcd.marker_path(inventory)
    request = component_request(comp, (*etcd.desired_paths(binary=uploaded), marker), layout.ETCD_CLIENT_PORT,
                                sections=((MARKER_SECTION, f"cat -- {shlex.quote(marker)} 2>/dev/null"),),
                                extra=(member_dir, layout.ETCD_DEBIAN_DEFAULT_DATA))
    rendered: dict[str, object] = {}
    packages: set[str] = set()       # hosts that get Debian's package before their first change

    def prepare() -> dict[str, tuple[DesiredFile, ...]]:
        from k8sboot.store import check_no_interrupted_write, read_optional

        units = {h.name: etcd.render_etcd_unit(inventory, h, comp.binary_path, directory) for h in hosts}
        rendered.update(units)
        pki_dir = Path(inventory.pki.dir)
        check_no_interrupted_write(pki_dir)
        from k8sboot import rotation

        files = rotation.etcd_files(inventory.rotation)     # etcd-ca.pem: a CA rotation's bundle
        pki = {f.local_name: data for f in files if (data := read_optional(pki_dir / f.local_name)) is not None}
        binary = read_binary(options.binary) if uploaded else None
        return {name: (*etcd.etcd_files(pki, unit.text, binary, pki_dir, files),
                       etcd.marker_file(inventory, inventory.controller(name)))
                for name, unit in units.items()}

    def before_plan(run: HostRun, opts: DeployOptions, progress: Progress) -> str | None:
        facts, name = run.facts, run.host.name
        unit_text = facts.unit_text if facts.file(layout.ETCD_UNIT_PATH).exists else None
        why = etcd.check_data_dir(inventory, run.host, has_member=facts.file(member_dir).exists,
                                  marker=facts.sections.get(MARKER_SECTION, ""), unit_text=unit_text)
        if why:
            run.result.code = ExitCode.ETCD_FOREIGN_DATA
            run.result.hint = etcd.foreign_data_hint(inventory, run.host)
            return f"{name}: {why}"
        if not uploaded and not facts.file(comp.binary_path).exists:
            # planned as if installed; installed (before_install) only once no host refused
            files = dict(facts.files)
            files[comp.binary_path] = FileFact(comp.binary_path, True, mode=0o755, owner="root", group="root")
            run.facts = replace(facts, files=files)
            if opts.dry_run:
                run.result.restart_reasons += (f"would install Debian's {layout.ETCD_PACKAGE} with apt-get",)
            else:
                packages.add(name)
                run.work_before_changes = True
        adjust(run)
        if not run.facts.file(member_dir).exists and ask is not None and len(inventory.controllers) > 1:
            members = None
            for other in inventory.controllers:
                if other.name == name:
                    continue
                answer = ask(other, "members")
                if answer.status == 200:
                    members = etcd.parse_member_list(answer.body)
                    if members is not None:
                        break
            why = etcd.check_join(run.host, members)
            if why:
                return f"{name}: {why}"
        return None

    def before_install(run: HostRun, opts: DeployOptions, progress: Progress) -> None:
        name = run.host.name
        if name not in packages:
            return
        progress(name, f"installing Debian's {layout.ETCD_PACKAGE} with apt-get")
        res = run.remote.exec(etcd.apt_install_script(), what=f"installing {layout.ETCD_PACKAGE}", timeout=900)
        if res.rc != 0:
            detail = res.out.partition(etcd.APT_INSTALL_MARK)[2].strip().splitlines()
            raise RemoteError(f"{name}: installing Debian's {layout.ETCD_PACKAGE} with apt-get failed: "
                              + (" | ".join(detail[-2:]) or f"exit {res.rc}"),
                              hint="pass --binary PATH with an etcd release binary (it goes to /usr/local/bin/etcd)")
        run.result.restart_reasons += (f"installed Debian's {layout.ETCD_PACKAGE}",)
        run.facts = run.remote.read_facts(request)
        adjust(run, again=True)

    def adjust(run: HostRun, again: bool = False) -> None:
        """Debian's own etcd.service and its default member's data, as the plan must see them."""
        facts = run.facts
        if facts.service.is_active and not facts.file(layout.ETCD_UNIT_PATH).exists:
            # Debian's own etcd.service runs (the package's default member on localhost): no member
            # of this cluster serves here, so nothing is kept up by waiting for a wave
            run.facts = facts = replace(facts, service=replace(facts.service, active_state="inactive",
                                                               sub_state="dead"))
            if not again:
                run.result.restart_reasons += ("Debian's own etcd.service ran here (its default member): "
                                               "replaced by this cluster's",)
        if (not again and facts.file(layout.ETCD_DEBIAN_DEFAULT_DATA).exists
                and not facts.file(layout.ETCD_UNIT_PATH).exists):
            run.result.restart_reasons += (f"{layout.ETCD_DEBIAN_DEFAULT_DATA} (the data of Debian's default "
                                           "member) is left as it is: never used, never deleted",)

    def before_changes(runs, changing, report: DeployReport, warn: Callable[[str], None]) -> Refusal | None:
        foreign = [r.host.name for r in runs if r.result.code == ExitCode.ETCD_FOREIGN_DATA]
        if not foreign:
            return None
        return Refusal(f"the etcd data dir on {', '.join(foreign)} is another cluster's; no member is changed "
                       "until that is resolved", hint=None, code=ExitCode.ETCD_FOREIGN_DATA)

    def before_wave(wave: Sequence[str]) -> str | None:
        names = [h.name for h in inventory.controllers]
        deadline = clock() + min(options.ready_timeout, 30.0)
        def healthy(h: Host) -> bool:
            answer = ask(h, "health")
            return etcd.parse_health(answer.status, answer.body)[0]

        while True:
            healthy_now = [h.name for h in inventory.controllers if healthy(h)]
            why = etcd.check_quorum(healthy_now, names, wave)
            if why is None or clock() >= deadline:
                return why
            sleep(0.25)

    return Job(comp, tuple(hosts), request, layout.ETCD_CLIENT_PORT, prepare,
               expected_flags=lambda name: rendered[name].flags,
               readyz=etcd_health(ask) if ask is not None else None,
               health_path=etcd.HEALTH_PATH,
               tls_hint=(" (etcd-server.pem does not cover this address: run gen-certs to reissue it with the "
                         "inventory's controllers, then deploy-etcd again)"),
               before_plan=before_plan, before_wave=before_wave if ask is not None else None,
               before_changes=before_changes, before_install=before_install, command="deploy-etcd",
               start_stagger=ETCD_START_STAGGER)


def deploy_etcd(inventory: Inventory, options: DeployOptions, *, connect: Connector | None = None,
                progress: Progress = lambda h, m: None, ask: EtcdProbe | None = None,
                warn: Callable[[str], None] = lambda message: None) -> DeployReport:
    """deploy-etcd: one etcd member per selected controller, on the deploy engine."""
    select_hosts(inventory, options.hosts)
    check_identity_file(inventory)
    if options.binary is not None and not Path(options.binary).is_file():
        read_binary(options.binary)     # raises, naming the cause
    from k8sboot import etcd

    for h in inventory.controllers:
        etcd.build_etcd_flags(inventory, h)     # extra_flags errors before anything is dialled
    prober = None
    if ask is None:
        ask = prober = etcd_prober(inventory)
    try:
        job = etcd_job(inventory, options, ask)
        return run_job(job, options, n_controllers=len(inventory.controllers),
                       connect=connect or ssh_connector(inventory, accept_new_host_keys=options.accept_new_host_keys),
                       progress=progress, warn=warn)
    finally:
        if prober is not None:
            prober.close()


class OpenConnections:

    """The connector, keeping every open remote so that an interrupt can close them all."""

    def __init__(self, connect: Connector):
        self._connect = connect
        self._lock = threading.Lock()
        self._open: list = []
        self._aborted = False

    def connect(self, host: Host):
        remote = self._connect(host)
        with self._lock:
            if not self._aborted:
                self._open.append(remote)
                return remote
        remote.close()
        raise K8sbootError(f"{host.name}: interrupted before any change")

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            remotes, self._open = self._open, []
        for remote in remotes:
            try:
                (getattr(remote, "abort", None) or remote.close)()   # SshRemote: without waiting
            except Exception:  # noqa: BLE001 - closing what an interrupt cut short
                pass


def _aliases(inventory: Inventory) -> dict[str, str]:
    return {h.name: h.address for h in (*inventory.controllers, *inventory.workers, *inventory.load_balancers)}


def ssh_connector(inventory: Inventory, *, accept_new_host_keys: bool = False) -> Connector:
    from k8sboot import remote

    aliases = _aliases(inventory)

    def connect(host: Host):
        return remote.connect(host, inventory.ssh, accept_new_host_keys=accept_new_host_keys, aliases=aliases)

    return connect
