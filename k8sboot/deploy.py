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

import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k8sboot import layout
from k8sboot import plan as planmod
from k8sboot.errors import ExitCode, Interrupted, K8sbootError, PkiError
from k8sboot.model import Host, Inventory
from k8sboot.plan import DesiredFile, HostPlan, ServiceFact

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


# outcomes
UNCHANGED = "up to date"
DEPLOYED = "deployed"
FAILED = "failed"
ROLLED_BACK = "rolled back"
ERROR = "error"
DRY_RUN = "dry run"


@dataclass
class HostResult:
    host: str
    outcome: str
    ok: bool
    files_changed: tuple[str, ...] = ()
    unit_changed: bool = False
    restarted: bool = False
    state: str = ""
    seconds: float = 0.0
    message: str = ""
    hint: str | None = None
    code: int = 0
    journal: tuple[str, ...] = ()
    unit_diff: str = ""
    restart_reasons: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)   # seconds per phase: connect, facts, ...

    def to_json(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return d


@dataclass
class DeployReport:
    results: list[HostResult] = field(default_factory=list)
    dry_run: bool = False

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
    for spec in layout.CONTROLLER_FILES:
        path = pki_dir / spec.local_name
        data = read_optional(path)
        if data is None:
            missing.append(str(path))
        else:
            out[spec.local_name] = data
    if missing:
        raise PkiError(f"the local PKI is incomplete: missing {', '.join(missing)}",
                       hint=f"run: k8sboot gen-certs -i {inventory.path}")
    return out


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


def prepare_files(inventory: Inventory, options: DeployOptions, hosts: Sequence[Host],
                  templates: Path) -> dict[str, tuple[DesiredFile, ...]]:
    """Every file each host gets, by host name: templates rendered, PKI and --binary read."""
    from k8sboot import render

    units = {h.name: render.render_unit(inventory, h, templates) for h in hosts}
    pki = read_local_pki(inventory)
    binary = read_binary(options.binary) if options.binary else None
    return {name: planmod.build_desired_files(pki, unit.text, binary) for name, unit in units.items()}


def fact_request(paths: Sequence[str], port: int, sections=()) -> "object":
    """What to read on a host: sha256 + stat of `paths` (`planmod.desired_paths`), the rest stat only."""
    from k8sboot.remote import FactRequest

    hashed = tuple(paths)
    stat_only = tuple(p for p in (layout.BINARY_PATH, f"{layout.REMOTE_PKI_DIR}/{layout.key_file(layout.CA)}",
                                  planmod.RESTART_PENDING) if p not in hashed)
    return FactRequest(hashed=hashed, stat_only=stat_only, port=port, sections=tuple(sections))


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


def deploy_host(host: Host, request, files: Callable[[str], tuple[DesiredFile, ...] | None], connect: Connector,
                options: DeployOptions, port: int, progress: Progress = lambda h, m: None,
                clock=time.monotonic) -> HostResult:
    """One host, start to end. `request` (`fact_request`) needs no local files; `files(name)` gives
    the host's desired files, waiting for the local preparation if need be (None: it failed)."""
    t0 = clock()
    name = host.name
    result = HostResult(host=name, outcome=ERROR, ok=False)
    remote = None
    mark = [t0]

    def lap(phase: str) -> None:
        now = clock()
        result.timings[phase] = now - mark[0]
        mark[0] = now

    try:
        progress(name, "connecting")
        remote = connect(host)
        lap("connect")
        progress(name, "reading facts" if options.dry_run else "taking the lock, reading facts")
        facts = remote.read_facts(request, lock_wait=None if options.dry_run else options.lock_wait)
        lap("facts")
        desired = files(name)
        if desired is None:
            result.message = "not deployed: the local preparation failed"
            return result
        if clock() - mark[0] > 0.001:
            lap("local")          # waited for the rendering / PKI reading still running
        plan = planmod.build_host_plan(desired, facts, no_restart=options.no_restart, host=name)
        result.files_changed = plan.files_changed
        result.unit_changed = plan.unit_changed
        result.unit_diff = plan.unit_diff
        result.restart_reasons = plan.restart_reasons
        result.state = _state(facts.service)
        if plan.problems:
            result.outcome, result.message = FAILED, "; ".join(plan.problems)
            result.code = ExitCode.DEPLOY
            return result
        if options.dry_run:
            result.outcome, result.ok = DRY_RUN, True
            result.restarted = plan.restart
            result.message = _summary(plan, would=True)
            return result
        if not plan.has_changes:
            result.outcome, result.ok = UNCHANGED, True
            result.message = "already up to date"
            return result
        progress(name, f"installing {len(plan.uploads)} file(s)" + (", restarting" if plan.restart else ""))
        svc = remote.install(plan, keep_previous=options.rollback_on_failure, wait=options.wait, port=port)
        lap("install")
        if svc is not None and svc.wait_ms is not None:   # split the one command: host-side wait loop
            result.timings["wait"] = min(svc.wait_ms / 1000, result.timings["install"])
            result.timings["install"] -= result.timings["wait"]
        result.restarted = plan.restart
        if svc is None:
            # not restarted (a mode/owner fix, or --no-restart): it runs as it did before we came,
            # and `build_host_plan` restarts any unit that was not active
            svc = facts.service
            verdict, why = (planmod.UP, "running") if svc.is_active else planmod.classify_service(svc)
        else:
            verdict, why = _verdict_after_wait(svc, options.wait)
        result.state = _state(svc)
        if verdict == planmod.UP:
            result.outcome, result.ok = DEPLOYED, True
            result.message = _summary(plan, would=False)
            if options.rollback_on_failure:
                remote.cleanup(plan)
            return result
        result.outcome, result.code = FAILED, ExitCode.DEPLOY
        result.message = f"kube-apiserver did not come up: {why}"
        result.journal = tuple(remote.read_journal())
        if options.rollback_on_failure:
            progress(name, "rolling back")
            svc2 = remote.rollback(plan, wait=options.wait, port=port)
            if svc2 is not None:
                _, why2 = _verdict_after_wait(svc2, options.wait)
                result.state = _state(svc2)
                result.message += f"; rolled back to the previous files: {why2}"
            else:
                result.state = "removed"
                result.message += "; rolled back: the unit was new, so it was removed"
            result.outcome = ROLLED_BACK
        return result
    except K8sbootError as exc:
        result.outcome, result.ok = ERROR, False
        result.message, result.hint, result.code = exc.message, exc.hint, int(exc.code)
        return result
    finally:
        result.seconds = clock() - t0
        if remote is not None:
            remote.close()
        progress(name, f"done: {result.outcome}")


def _summary(plan: HostPlan, *, would: bool) -> str:
    parts = []
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
    if plan.restart:
        parts.append(("would restart" if would else "restarted") + f" ({'; '.join(plan.restart_reasons)})")
    if not parts:
        return "already up to date"
    return "; ".join(parts)


# --- all hosts -----------------------------------------------------------------------------------


def deploy(inventory: Inventory, options: DeployOptions, *, connect: Connector | None = None,
           progress: Progress = lambda h, m: None) -> DeployReport:
    from k8sboot import render

    # the quick local checks before dialling anything; the slower local work runs while dialling
    hosts = select_hosts(inventory, options.hosts)
    check_identity_file(inventory)
    templates = render.templates_dir_for(inventory, options.templates)
    if options.binary is not None and not Path(options.binary).is_file():
        read_binary(options.binary)     # raises, naming the cause
    port = secure_port(inventory, hosts[0])
    request = fact_request(planmod.desired_paths(binary=options.binary is not None), port)
    if connect is None:
        connect = ssh_connector(inventory, accept_new_host_keys=options.accept_new_host_keys)
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

    futures = []
    try:
        futures = [start_daemon(deploy_host, h, request, files, opened.connect, options, port, report_progress,
                                name=f"deploy-{h.name}", limit=limit) for h in hosts]
        try:
            local.set(prepare_files(inventory, options, hosts, templates))   # while the hosts connect
        except BaseException:
            quiet.set()
            local.fail()
            opened.abort()        # a lock taken is released, nothing was changed
            wait_for_futures(futures, timeout=1)   # let the hosts let go; one still dialling is left behind
            raise
        while wait_for_futures(futures, timeout=0.25).not_done:   # wake up often: a signal's handler runs here
            pass
        report.results = [f.result() for f in futures]
    except (KeyboardInterrupt, Interrupted) as exc:
        # Ctrl-C / SIGTERM land here, in the main thread: stop every host where it stands. Closing
        # a connection ends its command's input: an install still receiving its files fails and
        # the host removes what it staged; one already renaming them finishes on the host.
        quiet.set()
        local.fail()
        opened.abort()
        for f in futures:
            f.cancel()
        wait_for_futures(futures, timeout=10)   # the hosts' own cleanup, bounded
        stopped = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        stopped.hint = ("each host holds the old or the new version of every file, never a partial one; "
                        "rerun deploy-apiserver to converge")
        raise stopped from None
    return report


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


def ssh_connector(inventory: Inventory, *, accept_new_host_keys: bool = False) -> Connector:
    from k8sboot import remote

    aliases = {h.name: h.address for h in (*inventory.controllers, *inventory.workers)}

    def connect(host: Host):
        return remote.connect(host, inventory.ssh, accept_new_host_keys=accept_new_host_keys, aliases=aliases)

    return connect
