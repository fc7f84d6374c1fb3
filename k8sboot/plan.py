"""Desired state, observed facts, and the plan between them, for one controller (pure).

pyinfra's shape: `build_desired_files` (what must be on the host: content, mode, owner, path, all
from `k8sboot.layout`), `HostFacts` (what `remote.read_facts` saw: sha256, mode, owner of every
target and the unit's state), `build_host_plan(desired, facts)` (only what differs), and
`build_install_script(plan)` (the one shell command that installs it). No I/O here: tests feed
fake facts and read the plan.
"""

from __future__ import annotations

import difflib
import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from k8sboot import layout

UNIT = layout.UNIT_NAME
TEMP_SUFFIX = ".k8sboot-new"
PREV_SUFFIX = ".k8sboot-prev"
STAGED_MARK = "@@k8sboot:staged"      # printed by the install script once every file is staged

# Left by a `--no-restart` deploy that changed content (and by every install between its renames
# and its restart), so the next deploy restarts and verify reports it; removed by the restart.
RESTART_PENDING = f"{layout.REMOTE_PKI_DIR}/.k8sboot-restart-pending"

KIND_PKI = "pki"
KIND_UNIT = "unit"
KIND_BINARY = "binary"
KIND_CONFIG = "config"
KIND_RECORD = "record"      # k8sboot's own record beside a program's data (etcd's data-dir marker):
                            # the program never reads it, so writing it restarts nothing


# --- desired state -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredFile:
    """A file that must be on the host, byte for byte, with this mode and owner."""

    path: str
    content: bytes = field(repr=False)
    mode: int
    owner: str = layout.OWNER
    group: str = layout.GROUP
    kind: str = KIND_PKI
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.content).hexdigest())

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def directory(self) -> str:
        return self.path.rsplit("/", 1)[0] or "/"

    @property
    def temp_path(self) -> str:
        """Staging name in the target directory: same filesystem, so `mv -f` is one rename."""
        return beside(self.path, TEMP_SUFFIX)

    @property
    def prev_path(self) -> str:
        return beside(self.path, PREV_SUFFIX)


def beside(path: str, suffix: str) -> str:
    """`/d/NAME` -> `/d/.NAME<suffix>`: k8sboot's hidden copies live in the target's directory."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}{suffix}"


@dataclass(frozen=True)
class DesiredDir:
    path: str
    mode: int
    owner: str = layout.OWNER
    group: str = layout.GROUP


PKI_DIR = DesiredDir(layout.REMOTE_PKI_DIR, layout.REMOTE_PKI_DIR_MODE)


@dataclass(frozen=True)
class Component:
    """What one deploy engine needs to know about a program it installs on hosts (kube-apiserver,
    the load balancer's HAProxy, later etcd): its unit, where its files live, the directory that
    holds k8sboot's own bookkeeping (the switch journal, the restart-pending mark), the binary that
    must be there, and how a change is applied: `restart` (a new process reads everything) or
    `reload` (HAProxy: `systemctl reload`, the master re-reads its config, connections survive)."""

    name: str                             # kube-apiserver
    unit: str                             # kube-apiserver.service
    state_dir: DesiredDir                 # made if missing; holds the journal and the pending mark
    binary_path: str                      # must exist and be executable unless the deploy ships it
    binary_hint: str = "pass --binary PATH to upload one"
    unit_path: str | None = None          # the unit file k8sboot renders (None: the package ships it)
    apply: str = "restart"                # restart | reload
    # A command validating the installed config before the service is told about it (`{path}`: the
    # config's path); when it fails, the previous set is put back and nothing is reloaded.
    check_command: str | None = None
    check_kind: str = ""                  # the kind of DesiredFile `check_command` validates
    diff_path: str | None = None          # the file shown as a diff (default: the unit)
    extra_dirs: tuple[DesiredDir, ...] = ()   # more directories made if missing (etcd's data dir)

    @property
    def journal_path(self) -> str:
        return f"{self.state_dir.path}/.k8sboot-switch"

    @property
    def restart_pending_path(self) -> str:
        return f"{self.state_dir.path}/.k8sboot-restart-pending"


APISERVER = Component(name="kube-apiserver", unit=layout.UNIT_NAME, state_dir=PKI_DIR,
                      binary_path=layout.BINARY_PATH, unit_path=layout.UNIT_PATH)


def build_desired_files(pki_files: Mapping[str, bytes], unit_text: str,
                        binary: bytes | None = None,
                        files: Sequence[layout.RemoteFile] = layout.CONTROLLER_FILES) -> tuple[DesiredFile, ...]:
    """Every file a controller gets: the layout's PKI files, the unit, and optionally the binary.

    `pki_files` maps local file names (`ca.pem`, ...) to content; a name the layout ships but the
    mapping lacks is a KeyError (the caller reports it as a missing local file before dialling).
    """
    out = []
    for spec in files:      # layout.CONTROLLER_FILES, or a rotation's (`rotation.controller_files`)
        if spec.local_name in layout.NEVER_UPLOADED:   # layout never lists it; belt and braces
            continue
        out.append(DesiredFile(spec.path, pki_files[spec.local_name], spec.mode, spec.owner, spec.group,
                               KIND_PKI))
    out.append(DesiredFile(layout.UNIT_PATH, unit_text.encode(), layout.UNIT_MODE, kind=KIND_UNIT))
    if binary is not None:
        out.append(DesiredFile(layout.BINARY_PATH, binary, layout.BINARY_MODE, kind=KIND_BINARY))
    return tuple(out)


def desired_paths(*, binary: bool, files: Sequence[layout.RemoteFile] = layout.CONTROLLER_FILES) -> tuple[str, ...]:
    """The target paths of `build_desired_files`, in its order, known before any file is read
    (the facts of a host are read while the files are still being rendered)."""
    paths = [spec.path for spec in files if spec.local_name not in layout.NEVER_UPLOADED]
    paths.append(layout.UNIT_PATH)
    if binary:
        paths.append(layout.BINARY_PATH)
    return tuple(paths)


# --- observed facts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileFact:
    path: str
    exists: bool
    sha256: str | None = None      # None when missing or not hashed (e.g. the binary without --binary)
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    kind: str = "file"             # file | directory | other


@dataclass(frozen=True)
class ServiceFact:
    load_state: str = "not-found"
    active_state: str = "inactive"
    sub_state: str = "dead"
    unit_file_state: str = ""
    result: str = "success"
    main_pid: int = 0
    n_restarts: int = 0
    active_enter_usec: int = 0     # ActiveEnterTimestampMonotonic: changes on every (re)start
    need_daemon_reload: bool = False
    listening: bool = False        # something listens on the secure port
    wait_ms: int | None = None     # how long the host-side wait loop ran (`wait_script`)
    argv: tuple[str, ...] | None = None   # the running MainPID's command line (after a wait)

    @property
    def is_active(self) -> bool:
        return self.active_state == "active"

    @property
    def is_enabled(self) -> bool:
        return self.unit_file_state == "enabled"


@dataclass(frozen=True)
class HostFacts:
    files: Mapping[str, FileFact]
    service: ServiceFact
    unit_text: str | None = None
    sections: Mapping[str, str] = field(default_factory=dict)   # extra command outputs (verify)

    def file(self, path: str) -> FileFact:
        return self.files.get(path) or FileFact(path, exists=False)


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    file: DesiredFile
    reasons: tuple[str, ...]       # "missing", "content", "mode 0644 -> 0600", "owner a:b -> root:root"
    upload: bool                   # content differs or missing; else only chmod/chown in place
    existed: bool


@dataclass(frozen=True)
class DirChange:
    dir: DesiredDir
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class HostPlan:
    changes: tuple[FileChange, ...] = ()
    dirs: tuple[DirChange, ...] = ()
    daemon_reload: bool = False
    enable: bool = False
    restart: bool = False           # restart (or, for a reload component that runs, reload) the unit
    restart_reasons: tuple[str, ...] = ()
    unit_diff: str = ""
    problems: tuple[str, ...] = ()  # facts that make the deploy unable to succeed (e.g. no binary)
    mark_pending: bool = False      # content changed under --no-restart: leave the restart-pending mark
    clear_pending: bool = False     # the restart consumes a restart-pending mark the facts saw
    strays: tuple[str, ...] = ()    # `.k8sboot-new`/`.k8sboot-prev` files a killed run left behind
    component: Component = APISERVER
    reload: bool = False            # apply by `systemctl reload` (the unit runs, the component reloads)
    removals: tuple[str, ...] = ()  # obsolete files on the host, removed in the switch (journalled)
    picked_up: tuple[str, ...] = () # changed files the running server re-reads itself: no restart for them

    @property
    def uploads(self) -> tuple[FileChange, ...]:
        return tuple(c for c in self.changes if c.upload)

    @property
    def fixups(self) -> tuple[FileChange, ...]:
        return tuple(c for c in self.changes if not c.upload)

    @property
    def unit_changed(self) -> bool:
        return any(c.file.kind == KIND_UNIT and c.upload for c in self.changes)

    @property
    def files_changed(self) -> tuple[str, ...]:
        """Names of files whose content, mode or owner changes (the unit included)."""
        return tuple(c.file.name for c in self.changes)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes or self.dirs or self.daemon_reload or self.enable or self.restart
                    or self.mark_pending or self.strays or self.removals)

    @property
    def takes_down(self) -> bool:
        """Whether applying the plan stops the running process for a while (a restart, not a reload)."""
        return self.restart and not self.reload


def _mode(m: int | None) -> str:
    return "none" if m is None else f"{m:04o}"


def compare_file(want: DesiredFile, fact: FileFact) -> tuple[tuple[str, ...], bool]:
    """(reasons, needs_upload) for one file; ((), False) when it is exactly right."""
    if not fact.exists:
        return ("missing",), True
    reasons: list[str] = []
    upload = False
    if fact.kind != "file":
        return (f"not a regular file ({fact.kind})",), True
    if fact.sha256 != want.sha256:
        reasons.append("content")
        upload = True
    if fact.mode != want.mode:
        reasons.append(f"mode {_mode(fact.mode)} -> {_mode(want.mode)}")
    if (fact.owner, fact.group) != (want.owner, want.group):
        reasons.append(f"owner {fact.owner}:{fact.group} -> {want.owner}:{want.group}")
    return tuple(reasons), upload


def unit_diff(current: str | None, desired: str, host: str = "", path: str = layout.UNIT_PATH) -> str:
    """Unified diff of the unit (or config) on the host against the rendered one ('' when equal)."""
    before = (current or "").splitlines(keepends=True)
    after = desired.splitlines(keepends=True)
    label = f"{host}:{path}" if host else path
    diff = difflib.unified_diff(before, after, fromfile=f"{label} (on host)" if current is not None
                                else "/dev/null", tofile=f"{label} (rendered)")
    return "".join(diff)


def stray_paths_of(paths: Sequence[str]) -> tuple[str, ...]:
    """The staging and previous-version names beside each target path (`DesiredFile.temp_path`,
    `prev_path`): what a killed run may leave behind. Known before any file is rendered."""
    return tuple(beside(path, suffix) for path in paths for suffix in (TEMP_SUFFIX, PREV_SUFFIX))


def stray_paths(desired: Sequence[DesiredFile]) -> tuple[str, ...]:
    return stray_paths_of([f.path for f in desired])


def build_host_plan(desired: Sequence[DesiredFile], facts: HostFacts, *, no_restart: bool = False,
                    host: str = "", component: Component = APISERVER,
                    obsolete: Sequence[str] = ()) -> HostPlan:
    """Only what differs: files to upload or fix, and whether to reload, enable, restart.

    Restart when the unit, a referenced file or the binary changed content (not for a mode or
    owner fix: the process already read the bytes), or when the unit is not active. With
    `no_restart`, a running unit is left running; a stopped one is still started (nothing runs
    that could be interrupted). A `reload` component that runs is reloaded instead of restarted.
    Staged or previous copies a killed run left (`strays`) are removed.
    """
    changes: list[FileChange] = []
    for want in desired:
        fact = facts.file(want.path)
        reasons, upload = compare_file(want, fact)
        if reasons:
            changes.append(FileChange(want, reasons, upload, existed=fact.exists))

    dirs: list[DirChange] = []
    for state_dir in (component.state_dir, *component.extra_dirs):
        dfact = facts.file(state_dir.path)
        if not dfact.exists:
            dirs.append(DirChange(state_dir, ("missing",)))
            continue
        reasons = []
        if dfact.kind != "directory":
            reasons.append(f"not a directory ({dfact.kind})")
        if dfact.mode != state_dir.mode:
            reasons.append(f"mode {_mode(dfact.mode)} -> {_mode(state_dir.mode)}")
        if (dfact.owner, dfact.group) != (state_dir.owner, state_dir.group):
            reasons.append(f"owner {dfact.owner}:{dfact.group} -> {state_dir.owner}:{state_dir.group}")
        if reasons:
            dirs.append(DirChange(state_dir, tuple(reasons)))

    problems: list[str] = []
    if not any(w.kind == KIND_BINARY for w in desired):
        binary = facts.file(component.binary_path)
        if not binary.exists:
            problems.append(f"{component.binary_path} is missing on the host ({component.binary_hint})")
        elif binary.mode is not None and not binary.mode & 0o111:
            problems.append(f"{component.binary_path} is not executable (mode {_mode(binary.mode)})")

    # obsolete: files an earlier set shipped that this one no longer names (a finished rotation's
    # second key); removed in the switch, with a `.k8sboot-prev` link like any replaced file
    removals = tuple(p for p in dict.fromkeys(obsolete) if facts.file(p).exists
                     and p not in {w.path for w in desired})
    svc = facts.service
    content_changed = [c for c in changes if c.upload and c.file.kind != KIND_RECORD]
    # a running kube-apiserver re-reads its serving pair by itself (`layout.PICKED_UP_WITHOUT_RESTART`):
    # when nothing else changed, the new files are its whole deploy and nothing restarts
    picked_up = [c for c in content_changed if component is APISERVER and svc.is_active
                 and layout.picked_up_without_restart(c.file.path)]
    content_changed = [c for c in content_changed if c not in picked_up]
    changed_names = [c.file.name for c in content_changed] + [f"{p.rsplit('/', 1)[-1]} removed" for p in removals]
    unit_changed = any(c.file.kind == KIND_UNIT for c in content_changed)
    stale_load = svc.need_daemon_reload and not unit_changed
    # A unit systemd has never loaded needs no daemon-reload: since v246 systemd looks on disk again
    # when the unit dirs changed (the restart command falls back to a reload for older ones). That
    # saves a reload per host on a first deploy (~0.1 s CPU each in PID 1).
    unit_is_new = (component.unit_path is not None and not facts.file(component.unit_path).exists
                   and svc.load_state in ("not-found", ""))
    daemon_reload = (unit_changed and not unit_is_new) or stale_load
    restart_reasons: list[str] = []
    if changed_names and not no_restart:
        restart_reasons.append("changed: " + ", ".join(changed_names))
    if stale_load and not no_restart:
        restart_reasons.append("systemd had not loaded the unit file on disk")
    pending = facts.file(component.restart_pending_path).exists
    if pending and not no_restart:
        restart_reasons.append("a restart was left pending by an earlier deploy")
    reload = (component.apply == "reload" and svc.is_active and bool(restart_reasons)
              and not unit_changed and not stale_load)
    if not svc.is_active:
        restart_reasons.append(f"unit was {svc.active_state}")
    restart = bool(restart_reasons)
    shown_path = component.diff_path or component.unit_path
    shown = next((w for w in desired if w.path == shown_path), None)
    diff = unit_diff(facts.unit_text, shown.content.decode(), host, shown.path) if shown else ""
    strays = tuple(p for p in stray_paths(desired) + stray_paths_of(obsolete) if facts.file(p).exists)
    return HostPlan(
        changes=tuple(changes),
        dirs=tuple(dirs),
        daemon_reload=daemon_reload,
        enable=not svc.is_enabled,
        restart=restart,
        restart_reasons=tuple(restart_reasons),
        unit_diff=diff,
        problems=tuple(problems),
        mark_pending=bool(changed_names or stale_load) and not restart and not pending,
        clear_pending=pending and restart,
        strays=strays,
        component=component,
        reload=reload,
        removals=removals,
        picked_up=tuple(c.file.name for c in picked_up),
    )


# --- commands ------------------------------------------------------------------------------------
#
# An install is two steps, which a parallel deploy sends as one command and a rolling deploy as
# two (staging on every host at once, the switch in waves):
#   stage   the new files land beside their targets as `.NAME.k8sboot-new`, with mode and owner
#   switch  the journal of the set is written, the current files are hard-linked to
#           `.NAME.k8sboot-prev`, the staged ones renamed over them, the journal removed; then the
#           unit is reloaded/restarted and, when asked, waited for.
# A switch cut short (a dead connection, a killed sshd, a reboot) leaves the journal behind: the
# next deploy (`build_recover_script`) puts the whole previous set back from the `.k8sboot-prev`
# links before it plans anything, so a host never runs on a mix of two sets.


def _q(s: str) -> str:
    return shlex.quote(s)


def build_stage_script(plan: HostPlan) -> str:
    """Stage the plan's uploads (a tar on stdin): POSIX shell, umask 077 so a key is never
    readable by others, not even while it is written. A script that stops early (a full disk, a
    read-only directory, a dropped connection: tar reads a truncated archive) removes its staged
    files on the way out; STAGED_MARK on stdout says that every file was staged."""
    lines = ["set -eu", "umask 077"]
    if plan.strays:
        lines.append("rm -f " + " ".join(_q(p) for p in plan.strays))
    for d in plan.dirs:
        # a missing directory is made by root with its mode (mkdir -m ignores the umask): one
        # process; an existing one gets only what differs
        if d.reasons == ("missing",) and (d.dir.owner, d.dir.group) == ("root", "root"):
            lines.append(f"mkdir -p -m {d.dir.mode:04o} {_q(d.dir.path)}")
            continue
        lines.append(f"mkdir -p {_q(d.dir.path)}")
        lines.append(f"chown {d.dir.owner}:{d.dir.group} {_q(d.dir.path)}")
        lines.append(f"chmod {d.dir.mode:04o} {_q(d.dir.path)}")
    uploads = plan.uploads
    if uploads:
        temps = " ".join(_q(c.file.temp_path) for c in uploads)
        lines.append(f"trap 'rm -f {temps}' EXIT")
        lines.append("trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; trap 'exit 143' TERM")
        # (a staged file left by a killed run is replaced: tar unlinks what is in its way)
        # mode and owner come in the archive (`remote.build_tar`): no chown/chmod per install;
        # -m: the host's clock dates the files (verify compares them with the process start)
        lines.append("tar -x -m -f - -C / --same-permissions --same-owner --no-overwrite-dir")
        lines.extend(_owner_and_mode_commands([(c.file, c.file.temp_path) for c in uploads
                                               if (c.file.owner, c.file.group) != ("root", "root")],
                                              modes=False))
        lines.append("trap - EXIT")
    lines.append(f"echo {STAGED_MARK}")
    return "\n".join(lines) + "\n"


def build_unstage_script(plan: HostPlan) -> str:
    """Remove what `build_stage_script` staged (a rolling deploy that stopped before this host)."""
    temps = [c.file.temp_path for c in plan.uploads]
    return ("rm -f " + " ".join(_q(p) for p in temps) + "\n") if temps else ""


def _journal_lines(plan: HostPlan) -> str:
    return ("".join(f"{c.file.path}|{c.file.prev_path}|{1 if c.existed else 0}\n" for c in plan.uploads)
            + "".join(f"{path}|{beside(path, PREV_SUFFIX)}|1\n" for path in plan.removals))


def _restore_function(component: Component) -> str:
    """`restore_set`: put back every file the journal names from its `.k8sboot-prev` link (or
    remove it when it did not exist before), then drop the journal and any staged copies."""
    j = _q(component.journal_path)
    return f"""\
restore_set() {{
  [ -f {j} ] || return 0
  while IFS='|' read -r path prev existed; do
    [ -n "$path" ] || continue
    # (a file not renamed yet is its own prev link: rename(2) between two links of one file
    # changes nothing, so the link is removed after)
    if [ "$existed" = 1 ]; then [ -e "$prev" ] && mv -f "$prev" "$path"; rm -f "$prev"; else rm -f "$path" "$prev"; fi
    rm -f "${{path%/*}}/.${{path##*/}}{TEMP_SUFFIX}"
  done < {j}
  rm -f {j}
}}
"""


def build_recover_script(component: Component = APISERVER) -> str:
    """After a switch that was cut short: the whole previous set back, nothing restarted (the
    plan that follows decides that from the files as they are then)."""
    return "set -u\n" + _restore_function(component) + "restore_set\necho @@k8sboot:recovered\n"


def build_switch_script(plan: HostPlan, *, keep_previous: bool = False) -> str:
    """Switch the host to the staged set (see above), then fix modes/owners and apply the change
    (daemon-reload, enable, reload or restart). With `keep_previous` the `.k8sboot-prev` links stay
    for `build_rollback_script`; without, they go as soon as the set is switched."""
    comp = plan.component
    lines = ["set -eu", "umask 077",
             "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; trap 'exit 143' TERM"]
    uploads = plan.uploads
    if uploads or plan.removals:
        j = _q(comp.journal_path)
        lines.append(_restore_function(comp).rstrip("\n"))
        lines.append(f"printf '%s' {_q(_journal_lines(plan))} > {j}.tmp && mv -f {j}.tmp {j}")
        if plan.restart and not plan.reload:
            # from here until the restart is done, a cut leaves the mark: the next deploy restarts
            lines.append(f": > {_q(comp.restart_pending_path)}")
        for c in uploads:
            f = c.file
            if c.existed:
                lines.append(f"ln -f {_q(f.path)} {_q(f.prev_path)}")
        lines.extend(f"mv -f {_q(c.file.temp_path)} {_q(c.file.path)}" for c in uploads)
        # an obsolete file goes to its prev name (the journal puts it back if the switch is cut)
        lines.extend(f"mv -f {_q(p)} {_q(beside(p, PREV_SUFFIX))}" for p in plan.removals)
        checked = next((c.file for c in uploads if comp.check_command and c.file.kind == comp.check_kind), None)
        if checked is not None:
            check = comp.check_command.format(path=_q(checked.path))
            lines.append(f"if ! out=$({check} 2>&1); then restore_set; echo '@@k8sboot:check-failed'; "
                         "printf '%s\\n' \"$out\" | tail -n 5; exit 3; fi")
        lines.append(f"rm -f {j}")
        if not keep_previous:
            prevs = [c.file.prev_path for c in uploads if c.existed] + [beside(p, PREV_SUFFIX) for p in plan.removals]
            if prevs:
                lines.append("rm -f " + " ".join(_q(p) for p in prevs))
    lines.extend(_owner_and_mode_commands([(c.file, c.file.path) for c in plan.fixups]))
    lines.extend(service_commands(plan))
    return "\n".join(lines) + "\n"


def build_install_script(plan: HostPlan, *, keep_previous: bool = False) -> str:
    """Stage and switch in one command (a parallel deploy: one round trip per host)."""
    return build_stage_script(plan) + build_switch_script(plan, keep_previous=keep_previous)


def _owner_and_mode_commands(files, *, modes: bool = True) -> list[str]:
    """One `chown` per owner and one `chmod` per mode for all of `files` ((DesiredFile, path)
    pairs), not two commands per file: each is a fork on the host (~18 fewer per first deploy).
    A file owned by someone other than root gets its owner by name here, as tar would fall back
    to the archive's numeric id for a name the host lacks."""
    owners: dict[str, list[str]] = {}
    by_mode: dict[str, list[str]] = {}
    for f, path in files:
        owners.setdefault(f"{f.owner}:{f.group}", []).append(_q(path))
        by_mode.setdefault(f"{f.mode:04o}", []).append(_q(path))
    return ([f"chown {who} " + " ".join(paths) for who, paths in owners.items()]
            + ([f"chmod {mode} " + " ".join(paths) for mode, paths in by_mode.items()] if modes else []))


def service_commands(plan: HostPlan) -> list[str]:
    comp = plan.component
    unit = comp.unit
    pending = _q(comp.restart_pending_path)
    out = []
    if plan.enable:
        # --no-reload: `enable` would reload systemd itself; one reload (below, or none) is enough
        out.append(f"systemctl enable -q --no-reload {unit}")
    if plan.daemon_reload:
        out.append("systemctl daemon-reload")
    if plan.mark_pending:
        out.append(f": > {pending}")
    if plan.reload:
        out.append(f"systemctl reload {unit} || echo '@@k8sboot:restart-failed' $?")
    elif plan.restart:
        # a failing start is reported by the state that follows, with the journal; not here
        # (a new unit: an old systemd may need the reload we skipped before it finds the file).
        # The pending mark goes once systemd has run the new process, not before.
        out.append(f"if systemctl restart {unit} || {{ systemctl daemon-reload && systemctl restart {unit}; }}; "
                   f"then rm -f {pending}; else echo '@@k8sboot:restart-failed' $?; fi")
    return out


def build_rollback_script(plan: HostPlan) -> str:
    """Put back what `build_switch_script(keep_previous=True)` replaced, then restart or stop."""
    comp = plan.component
    lines = ["set -u"]
    unit_existed = True
    for c in plan.uploads:
        f = c.file
        if c.existed:
            lines.append(f"[ -e {_q(f.prev_path)} ] && mv -f {_q(f.prev_path)} {_q(f.path)}")
        else:
            lines.append(f"rm -f {_q(f.path)}")
            if f.kind == KIND_UNIT:
                unit_existed = False
    for path in plan.removals:
        lines.append(f"[ -e {_q(beside(path, PREV_SUFFIX))} ] && mv -f {_q(beside(path, PREV_SUFFIX))} {_q(path)}")
    if not unit_existed:
        lines.append(f"systemctl disable -q --now {comp.unit} 2>/dev/null")
        lines.append("systemctl daemon-reload")
        lines.append(f"systemctl reset-failed {comp.unit} 2>/dev/null")
        lines.append(f"rm -f {_q(comp.restart_pending_path)}")
        lines.append("true")
        return "\n".join(lines) + "\n"
    if plan.unit_changed:
        lines.append("systemctl daemon-reload")
    if plan.reload:
        lines.append(f"systemctl reload {comp.unit} || echo '@@k8sboot:restart-failed' $?")
    else:
        lines.append(f"if systemctl restart {comp.unit}; then rm -f {_q(comp.restart_pending_path)}; "
                     "else echo '@@k8sboot:restart-failed' $?; fi")
    return "\n".join(lines) + "\n"


def rollback_restarts(plan: HostPlan) -> bool:
    """Whether the rollback restarts the unit (False when the unit was new and is removed)."""
    return not any(c.file.kind == KIND_UNIT and not c.existed for c in plan.uploads)


def build_cleanup_script(plan: HostPlan) -> str:
    """After a successful deploy with keep_previous: drop the `.k8sboot-prev` copies (old keys)."""
    paths = [c.file.prev_path for c in plan.uploads] + [beside(p, PREV_SUFFIX) for p in plan.removals]
    return ("rm -f " + " ".join(_q(p) for p in paths) + "\n") if paths else ""


# --- reading the service back --------------------------------------------------------------------

SERVICE_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "Result", "MainPID",
                      "NRestarts", "ActiveEnterTimestampMonotonic", "NeedDaemonReload")
STATE_MARK = "@@k8sboot:state"


def _listening_test(port: int) -> str:
    """True (exit 0) when something listens on TCP `port` (IPv4 or IPv6), from /proc alone."""
    return (f"grep -qiE '^ *[0-9]+: [0-9A-F]+:{port:04X} [0-9A-F]+:[0-9A-F]+ 0A ' "
            "/proc/net/tcp /proc/net/tcp6 2>/dev/null")


def service_state_script(port: int, unit: str = UNIT) -> str:
    """Prints the unit's state as `Key=value` lines (parsed by `remote.parse_service`). Listening
    is looked at only for an active unit (`classify_service` reads it for no other), with the
    cheap look first and grep only when it finds nothing."""
    props = ",".join(SERVICE_PROPERTIES)
    return (_listening_scan(port)
            + f"st=$(systemctl show -p {props} {unit} 2>/dev/null); printf '%s\\n' \"$st\"\n"
            + f'case "$st" in *ActiveState=active*) if listening || {_listening_test(port)}; '
              "then echo Listening=yes; else echo Listening=no; fi;; *) echo Listening=no;; esac\n")


def _listening_scan(port: int) -> str:
    """A shell function `listening`: true when something listens on TCP `port` over IPv4, with no
    process. The kernel generates /proc/net/tcp a record per read and lists the listening sockets
    first (their hash table is walked before the established one), so a `read` loop that stops at
    the first socket in another state costs ~0.4 ms; grep -q costs ~4.5 ms when the port listens
    and ~11 ms when not (it reads both files to the end, a walk over the whole established hash
    per read). IPv6 listeners, and a host with sockets listed otherwise, are seen by grep over
    /proc/net/tcp{,6} (`_listening_test`), which the wait loop runs on every fifth look."""
    return f"""\
listening() {{
  while read -r _ l _ s _; do
    case $s in 0A) case $l in *:{port:04X}) return 0;; esac;; st) ;; *) return 1;; esac
  done < /proc/net/tcp
  return 1
}}
"""


def wait_script(port: int, bound: float, unit: str = UNIT) -> str:
    """Poll on the host (no round trip per poll) until the unit is up, or visibly failing, or
    `bound` seconds pass (whole seconds from `date +%s`, so up to one more); then print its state
    after STATE_MARK, from the last look (no extra `systemctl show`).
    After 50 ms, every 20 ms a look at the IPv4 listening sockets with no process (`_listening_scan`, ~1-4 ms
    of a core); `systemctl show` (every property `parse_service` reads, ~8 ms) on a look that
    finds the port listening, and on every tenth look otherwise (a crash or the bound ends the
    wait within ~0.2 s); grep over the whole of /proc/net/tcp{,6} (~11 ms when nothing listens)
    on every 25th look, for what the look does not see (IPv6, or a kernel that lists the sockets
    otherwise). (With both on every fifth look, the loop cost ~50 ms of CPU per start of the lab's
    stand-in: the largest part of an install.) Up = listening on two looks in a row, 20 ms apart,
    with the running MainPID of the first look's `systemctl show` still alive at the second
    (`/proc/PID`, no process). Every way out of the loop follows a
    `systemctl show` (at most one look earlier), so the state printed is fresh. The verdict is
    `classify_service`'s, in Python: this loop only decides when to stop looking."""
    props = ",".join(SERVICE_PROPERTIES)
    return _listening_scan(port) + f"""\
set +e
w0=$(date +%s%N); end=$(( $(date +%s) + {max(1, int(bound + 0.999)) + 1} )); prev=-; pid=-; n=1; nl='
'
sleep 0.05          # no server listens within 50 ms of its start: two looks fewer
while :; do
  up=0
  if listening; then up=1; elif [ $(( n % 25 )) = 0 ] && {_listening_test(port)}; then up=1; fi
  [ $up = 1 ] || prev=-
  # the second look in a row that finds it serving, with the running PID of the first still alive
  [ $up = 1 ] && [ "$prev" != - ] && [ -d "/proc/$prev" ] && break
  if [ $up = 1 ] || [ $(( n % 10 )) = 0 ]; then
    st="$nl$(systemctl show -p {props} {unit} 2>/dev/null)$nl"
    case "$st" in *ActiveState=failed*|*SubState=auto-restart*|*ActiveState=inactive*) break;; esac
    case "$st" in *"${{nl}}NRestarts=0$nl"*) ;; *) break;; esac
    pid=-; case "$st" in *"${{nl}}MainPID="*) pid=${{st#*"${{nl}}MainPID="}}; pid=${{pid%%"$nl"*}};; esac
    case "$st" in *SubState=running*) [ $up = 1 ] && prev=$pid;; *) prev=-;; esac
    [ $(( n % 10 )) = 0 ] && [ "$(date +%s)" -ge "$end" ] && break
  fi
  n=$(( n + 1 ))
  sleep 0.02
done
echo {STATE_MARK}
echo "WaitMs=$(( ($(date +%s%N) - w0) / 1000000 ))"
printf '%s\n' "$st"
if [ $up = 1 ]; then echo Listening=yes; else echo Listening=no; fi
[ "$pid" != - ] && [ "$pid" != 0 ] && [ -r "/proc/$pid/cmdline" ] && echo "Cmdline=$(base64 -w0 "/proc/$pid/cmdline")"
true
"""

UP = "up"
STARTING = "starting"
FAILED = "failed"


def classify_service(svc: ServiceFact) -> tuple[str, str]:
    """(UP | STARTING | FAILED, why) for the unit right after a (re)start.

    `Restart=on-failure` hides a crash: the unit sits in `activating/auto-restart`, not `failed`.
    Up means active/running and serving on the secure port.
    """
    state = f"{svc.active_state}/{svc.sub_state}"
    if svc.load_state not in ("loaded", ""):
        return FAILED, f"unit {svc.load_state}"
    if svc.active_state == "failed":
        return FAILED, f"{state} (result: {svc.result})"
    if svc.active_state == "activating" and svc.sub_state == "auto-restart":
        return FAILED, f"{state}: crashed (result: {svc.result}), systemd restarts it every RestartSec"
    if svc.n_restarts > 0:
        return FAILED, f"{state}: restarted {svc.n_restarts} time(s) by systemd (result: {svc.result})"
    if svc.active_state in ("inactive", "deactivating"):
        return FAILED, f"{state}: exited (result: {svc.result})"
    if svc.active_state == "active" and svc.sub_state == "running":
        if svc.listening:
            return UP, f"{state}, serving"
        return STARTING, f"{state}, not yet serving on the secure port"
    return STARTING, state
