"""verify: prove over SSH that what runs on each controller is what render/gen-certs give.

Per host, one command reads everything (`remote.read_facts` with extra sections): the tutorial's
grep of the unit, `systemctl show -p ExecStart`, the running process's `/proc/PID/cmdline`,
`is-enabled`/`is-active`, sha256/mode/owner of every deployed file and the remote ca.pem. The
comparison (`check_host`) is pure; `--probe` adds HTTPS requests to the secure port. Each
controller's etcd member is checked too (`verify_etcd`), when one is deployed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k8sboot import flags as flagmod
from k8sboot import layout
from k8sboot import plan as planmod
from k8sboot import verify_etcd
from k8sboot.errors import ExitCode, K8sbootError, PkiError
from k8sboot.model import Host, Inventory
from k8sboot.plan import DesiredFile, HostFacts

OK = "OK"
DRIFT = "DRIFT"
ERROR = "ERROR"
SKIP = "SKIP"
INFO = "INFO"

CA_KEY_REMOTE = f"{layout.REMOTE_PKI_DIR}/{layout.key_file(layout.CA)}"

def sections(files: Sequence[layout.RemoteFile] = layout.CONTROLLER_FILES) -> tuple[tuple[str, str], ...]:
    """The commands verify runs on a controller besides the facts (`files`: the phase's files)."""
    return (
    ("grep", flagmod.TUTORIAL_GREP_COMMAND),
    ("execstart", f"systemctl show -p ExecStart {layout.UNIT_NAME}"),
    ("cmdline", f"pid=$(systemctl show -p MainPID --value {layout.UNIT_NAME}); "
                f"if [ \"${{pid:-0}}\" -gt 0 ]; then base64 -w0 /proc/$pid/cmdline; fi"),
    ("is-enabled", f"systemctl is-enabled {layout.UNIT_NAME}"),
    ("is-active", f"systemctl is-active {layout.UNIT_NAME}"),
    ("ca", f"base64 -w0 {layout.remote_path(layout.cert_file(layout.CA))}"),
    # the running process's start and every deployed file's mtime, both in seconds since the epoch
    # to the centisecond: now - (uptime - the process's start in clock ticks since boot). A file
    # newer than the process has not been read by it.
    ("started", f"pid=$(systemctl show -p MainPID --value {layout.UNIT_NAME}); "
                f"if [ \"${{pid:-0}}\" -gt 0 ] && [ -r /proc/$pid/stat ]; then "
                "t=$(sed 's/.*) //' /proc/$pid/stat | cut -d' ' -f20); "
                "awk -v t=\"$t\" -v hz=\"$(getconf CLK_TCK)\" -v now=\"$(date +%s.%N)\" "
                "'{printf \"start %.3f\\n\", now - ($1 - t / hz)}' /proc/uptime; fi; "
                "stat -c '%.9Y %n' " + " ".join(f.path for f in files) + f" {layout.UNIT_PATH} "
                "2>/dev/null || true"),
    )


SECTIONS = sections()


# --- load balancers -------------------------------------------------------------------------------

def check_lb_host(host: str, desired: Sequence[DesiredFile], facts: HostFacts, controllers: Sequence[str],
                  backend: str) -> list[Check]:
    """The config and files as rendered, HAProxy active, every controller UP in its view."""
    checks = []
    for want in desired:
        reasons, _ = planmod.compare_file(want, facts.file(want.path))
        detail = ", ".join(reasons) or f"{want.mode:04o} {want.owner}:{want.group}, sha256 matches"
        if reasons and want.path == layout.LB_CONFIG_PATH and "content" in reasons:
            detail += ": edited by hand or rendered from another inventory (deploy-lb puts it back)"
        checks.append(Check(host, "file " + want.path, DRIFT if reasons else OK, detail))
    svc = facts.service
    checks.append(Check(host, "haproxy is-active", OK if svc.is_active else DRIFT,
                        f"{svc.active_state}/{svc.sub_state}"))
    from k8sboot import lb

    servers = lb.parse_lb_stats(facts.sections.get("stats", ""), backend)
    for name in controllers:
        status, last = servers.get(name, ("absent", "not in the running config"))
        checks.append(Check(host, f"backend {name}", OK if status.startswith("UP") else DRIFT,
                            f"{status}" + (f" (last check: {last})" if last else "")))
    return checks


def verify_lb_host(inventory: Inventory, host: Host, connect, templates: Path | None) -> "HostVerification":
    from k8sboot import deploy as deploymod
    from k8sboot import lb

    t0 = time.monotonic()
    result = HostVerification(host.name, kind="load balancer")
    remote = None
    try:
        job = deploymod.lb_job(inventory, deploymod.DeployOptions(hosts=(host.name,)), templates)
        request = deploymod.lb_request(lb.lb_desired_paths(), job.port, (("stats", lb.LB_STATS_COMMAND),))
        remote = connect(host)
        facts = remote.read_facts(request)
        desired = job.prepare()[host.name]
        result.checks = check_lb_host(host.name, desired, facts, [c.name for c in inventory.controllers],
                                      lb.BACKEND)
    except K8sbootError as exc:
        result.error, result.hint, result.code = exc.message, exc.hint, int(exc.code)
    finally:
        if remote is not None:
            remote.close()
    result.seconds = time.monotonic() - t0
    return result


def check_restart_pending(host: str, started: str, margin: float = 0.25) -> Check | None:
    """A deployed file modified after the running process started: the process has not read it
    (a `--no-restart` deploy, an edit by hand, a deploy cut before its restart). `margin`: the
    start is known to ~10 ms; a deploy renames its files well before it restarts."""
    start = None
    newer = []
    rows = []
    for line in started.splitlines():
        when, _, what = line.strip().partition(" ")
        try:
            value = float(what if when == "start" else when)
        except ValueError:
            continue
        if when == "start":
            start = value
        elif what:
            rows.append((value, what))
    if start is None:
        return None
    # (the serving pair is re-read by the running server: whether it was is the presented cert's check)
    newer = [path.rsplit("/", 1)[-1] for when, path in rows
             if when > start + margin and not layout.picked_up_without_restart(path)]
    if not newer:
        return Check(host, "process newer than its files", OK, "the running process started after every file changed")
    return Check(host, "restart pending", DRIFT,
                 f"the running process is older than {', '.join(newer)}: it has not read them; "
                 "deploy-apiserver restarts it")


@dataclass(frozen=True)
class Check:
    host: str
    check: str
    status: str
    detail: str = ""
    expected: str = ""
    actual: str = ""


@dataclass
class HostVerification:
    host: str
    checks: list[Check] = field(default_factory=list)
    grep_output: str = ""
    error: str = ""
    hint: str | None = None
    code: int = 0
    seconds: float = 0.0
    kind: str = "controller"           # controller | load balancer

    @property
    def drifted(self) -> bool:
        return any(c.status == DRIFT for c in self.checks)


@dataclass
class VerifyReport:
    hosts: list[HostVerification]

    def exit_code(self) -> ExitCode:
        errors = [h for h in self.hosts if h.error]
        if errors:
            codes = {h.code for h in errors}
            return ExitCode(codes.pop()) if len(codes) == 1 else ExitCode.REMOTE
        if any(h.drifted for h in self.hosts):
            return ExitCode.DRIFT
        return ExitCode.OK

    def to_json(self) -> dict:
        return {"ok": self.exit_code() == ExitCode.OK, "exit_code": int(self.exit_code()),
                "hosts": [{"host": h.host, "error": h.error or None, "grep": h.grep_output.splitlines(),
                           "drifted": h.drifted, "seconds": round(h.seconds, 3), "kind": h.kind,
                           "checks": [asdict(c) for c in h.checks]} for h in self.hosts]}


# --- pure comparison -----------------------------------------------------------------------------


def pem_fingerprint(pem: bytes) -> str | None:
    """SHA256 fingerprint (AA:BB:...) of the first certificate in a PEM blob; None if there is none."""
    m = re.search(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not m:
        return None
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except ValueError:
        return None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def diff_flags(expected: Sequence[tuple[str, str]], actual: Sequence[tuple[str, str]],
               only: set[str] | None = None) -> list[str]:
    """Human-readable differences between two flag lists (optionally only some flag names)."""
    want = {k: v for k, v in expected if only is None or k in only}
    got = {k: v for k, v in actual if only is None or k in only}
    out = []
    for name, value in want.items():
        if name not in got:
            out.append(f"--{name} missing (expected {value})")
        elif got[name] != value:
            out.append(f"--{name}={got[name]} (expected {value})")
    for name, value in got.items():
        if name not in want:
            out.append(f"--{name}={value} not rendered")
    return out


def _argv_check(host: str, label: str, argv: list[str] | None, expected_argv: list[str],
                expected_flags: flagmod.Flags) -> list[Check]:
    if argv is None:
        return [Check(host, label, DRIFT, "no ExecStart/argv found", " ".join(expected_argv), "")]
    flags = flagmod.parse_argv_flags(argv)
    auth_names = set(flagmod.AUTH_FLAGS) | set(flagmod.AUTHENTICATION_EXTRAS)
    auth = diff_flags(expected_flags, flags, auth_names)
    other = diff_flags(expected_flags, flags, None)
    other = [d for d in other if d not in auth]
    if argv[:1] != expected_argv[:1]:
        other.insert(0, f"binary {argv[:1]} (expected {expected_argv[0]})")
    checks = [Check(host, f"{label}: auth flags", DRIFT if auth else OK,
                    "; ".join(auth) or f"{len(flagmod.auth_subset(expected_flags))} auth flags as rendered",
                    " ".join(f"--{k}={v}" for k, v in flagmod.auth_subset(expected_flags).items()),
                    " ".join(f"--{k}={v}" for k, v in flagmod.auth_subset(flags).items()))]
    checks.append(Check(host, f"{label}: other flags", DRIFT if other else OK,
                        "; ".join(other) or "as rendered"))
    return checks


def _is_interpreter(path: str) -> bool:
    return bool(re.fullmatch(r"(python[0-9.]*|sh|bash|dash|perl|env)", path.rsplit("/", 1)[-1]))


def check_host(host: str, desired: Sequence[DesiredFile], expected_flags: flagmod.Flags, facts: HostFacts,
               local_ca_pem: bytes | None) -> tuple[list[Check], str]:
    """Every check for one host from its facts; returns (checks, the tutorial grep's output)."""
    checks: list[Check] = []
    unit = next(f for f in desired if f.kind == planmod.KIND_UNIT)
    expected_text = unit.content.decode()
    expected_argv = [layout.BINARY_PATH, *flagmod.flags_to_argv(expected_flags)]

    # 1. the tutorial's grep, exactly as the series runs it
    grep_out = facts.sections.get("grep", "").strip("\n")
    want_grep = flagmod.tutorial_grep(expected_text)
    got_grep = [ln for ln in grep_out.splitlines() if ln.strip()]
    checks.append(Check(host, "tutorial grep", OK if got_grep == want_grep else DRIFT,
                        " ".join(got_grep) or "no output", "\n".join(want_grep), grep_out))

    # 2. the unit file and its flags
    if facts.unit_text is None:
        checks.append(Check(host, "unit file", DRIFT, f"{layout.UNIT_PATH} is missing"))
    else:
        same = facts.unit_text == expected_text
        diff = planmod.unit_diff(facts.unit_text, expected_text, host) if not same else ""
        changed = sum(1 for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---")))
        checks.append(Check(host, "unit file", OK if same else DRIFT,
                            "identical to render" if same else f"differs from render ({changed} lines): "
                            "edited by hand or rendered from another inventory", "", diff))
        checks.extend(_argv_check(host, "unit ExecStart", flagmod.parse_unit_exec_start(facts.unit_text),
                                  expected_argv, expected_flags))

    # 3. what systemd will run (catches an edit without daemon-reload, or a drop-in)
    show = facts.sections.get("execstart", "")
    checks.extend(_argv_check(host, "systemctl show ExecStart", flagmod.parse_systemctl_exec_start(show),
                              expected_argv, expected_flags))

    # 4. what runs
    active = facts.sections.get("is-active", "").strip() or facts.service.active_state
    cmdline_b64 = facts.sections.get("cmdline", "").strip()
    if facts.service.main_pid and cmdline_b64:
        try:
            argv = flagmod.parse_proc_cmdline(base64.b64decode(cmdline_b64))
        except ValueError:
            argv = None
        label = f"process {facts.service.main_pid}"
        if argv and _is_interpreter(argv[0]) and layout.BINARY_PATH in argv[1:3]:
            label += f" (a script run by {argv[0]})"      # e.g. the lab's stand-in: #!/usr/bin/python3
            argv = argv[argv.index(layout.BINARY_PATH, 1):]
        checks.extend(_argv_check(host, label, argv, expected_argv, expected_flags))
    else:
        checks.append(Check(host, "running process", SKIP, f"not running ({active})"))

    # 5. files: sha256, mode, owner of everything deploy installs
    for want in desired:
        if want.kind == planmod.KIND_UNIT:
            label = "file " + layout.UNIT_PATH
        else:
            label = "file " + want.path
        reasons, _ = planmod.compare_file(want, facts.file(want.path))
        fact = facts.file(want.path)
        actual = (f"sha256:{fact.sha256[:12] if fact.sha256 else '-'} {fact.mode or 0:04o} {fact.owner}:{fact.group}"
                  if fact.exists else "missing")
        checks.append(Check(host, label, DRIFT if reasons else OK,
                            ", ".join(reasons) or f"{want.mode:04o} {want.owner}:{want.group}, sha256 matches",
                            f"sha256:{want.sha256[:12]} {want.mode:04o} {want.owner}:{want.group}", actual))
    d = facts.file(planmod.PKI_DIR.path)
    dir_ok = d.exists and d.kind == "directory" and d.mode == planmod.PKI_DIR.mode and (d.owner, d.group) == (
        planmod.PKI_DIR.owner, planmod.PKI_DIR.group)
    checks.append(Check(host, "dir " + planmod.PKI_DIR.path, OK if dir_ok else DRIFT,
                        f"{d.mode or 0:04o} {d.owner}:{d.group}" if d.exists else "missing",
                        f"{planmod.PKI_DIR.mode:04o} root:root"))
    ca_key = facts.file(CA_KEY_REMOTE)
    checks.append(Check(host, "no ca-key.pem on the host", DRIFT if ca_key.exists else OK,
                        f"{CA_KEY_REMOTE} is present: the CA key must never leave the workstation; remove it"
                        if ca_key.exists else "absent"))

    pending_check = check_restart_pending(host, facts.sections.get("started", ""))
    if pending_check is not None and not facts.file(planmod.RESTART_PENDING).exists:
        checks.append(pending_check)
    if facts.file(planmod.RESTART_PENDING).exists:
        checks.append(Check(host, "restart pending", DRIFT,
                            "a --no-restart deploy changed files the running kube-apiserver has not read; "
                            "run deploy-apiserver without --no-restart"))

    # 6. CA fingerprint
    remote_ca_b64 = facts.sections.get("ca", "").strip()
    try:
        remote_fp = pem_fingerprint(base64.b64decode(remote_ca_b64)) if remote_ca_b64 else None
    except ValueError:
        remote_fp = None
    local_fp = pem_fingerprint(local_ca_pem) if local_ca_pem else None
    if remote_fp is None:
        checks.append(Check(host, "CA fingerprint", DRIFT, "no CA certificate on the host", local_fp or "", ""))
    else:
        checks.append(Check(host, "CA fingerprint", OK if remote_fp == local_fp else DRIFT,
                            f"SHA256 {remote_fp}" + ("" if remote_fp == local_fp else
                                                     f" (local pki/ca.pem: {local_fp})"),
                            local_fp or "", remote_fp))

    # 7. unit state
    enabled = facts.sections.get("is-enabled", "").strip() or facts.service.unit_file_state
    checks.append(Check(host, "is-enabled", OK if enabled == "enabled" else DRIFT, enabled, "enabled", enabled))
    state = f"{active} ({facts.service.active_state}/{facts.service.sub_state}"
    state += f", {facts.service.n_restarts} restarts)" if facts.service.n_restarts else ")"
    checks.append(Check(host, "is-active", OK if active == "active" else DRIFT, state, "active", active))
    return checks, grep_out


def running_flags(facts: HostFacts) -> flagmod.Flags | None:
    """The running kube-apiserver's flags from /proc/PID/cmdline (a script's own argv dropped)."""
    cmdline_b64 = facts.sections.get("cmdline", "").strip()
    if not (facts.service.main_pid and cmdline_b64):
        return None
    try:
        argv = flagmod.parse_proc_cmdline(base64.b64decode(cmdline_b64))
    except ValueError:
        return None
    if argv and _is_interpreter(argv[0]) and layout.BINARY_PATH in argv[1:3]:
        argv = argv[argv.index(layout.BINARY_PATH, 1):]
    return flagmod.parse_argv_flags(argv)


def check_rotation(host: str, journal, facts: HostFacts) -> list[Check]:
    """With a rotation in progress: the phase this controller's running server is in (from its
    flags), against the journal's; files left by an earlier phase that this one removed."""
    from k8sboot import rotation

    if journal is None:
        return []
    checks = []
    for path in rotation.obsolete_paths(journal):
        if facts.file(path).exists:
            checks.append(Check(host, "file " + path, DRIFT, f"left from phase {journal.phases[0]}-"
                                f"{journal.phases[-2]} of the {journal.kind} rotation; `finish` removes it",
                                "absent", "present"))
    if journal.kind == rotation.CA:
        # no flag changes: the phase is in the files (ca.pem a bundle or not), which the file checks
        # compare with the journal's, and the restart check proves the running server read them
        return checks + [Check(host, "ca rotation", OK, f"phase {journal.phase} ({journal.state}): the CA files "
                               "are compared above")]
    flags = running_flags(facts)
    if flags is None:
        return checks + [Check(host, f"{journal.kind} rotation", SKIP, "kube-apiserver is not running")]
    phase = rotation.running_phase(journal, flags)
    want = f"{journal.phase}" + ("" if journal.state == rotation.DEPLOYED else f" ({journal.state})")
    if phase == journal.phase:
        return checks + [Check(host, f"{journal.kind} rotation", OK, f"runs phase {phase}, as the journal", want, phase)]
    behind = phase is not None and phase != "before start" and journal.phases.index(phase) < journal.phases.index(
        journal.phase) or phase == "before start"
    detail = (f"runs phase {phase}, behind the journal's {journal.phase}" if behind and phase
              else f"runs flags of no phase of this rotation (journal: {journal.phase})")
    return checks + [Check(host, f"{journal.kind} rotation", DRIFT,
                           detail + f"; run `k8sboot rotate {journal.kind} {journal.phase}` again", want, phase or "?")]


def check_probe(host: str, anonymous_auth: bool, anon, bogus, admin) -> list[Check]:
    """Compare the three HTTPS answers with what --anonymous-auth and Stage 1 dictate."""
    out = []
    want_anon = 403 if anonymous_auth else 401
    why = "--anonymous-auth=true: system:anonymous is authenticated, then forbidden" if anonymous_auth else \
        "--anonymous-auth=false: no credential is a 401"
    out.append(Check(host, "probe: no credential", OK if anon.status == want_anon else DRIFT,
                     f"HTTP {anon.status} ({why})" if anon.status else anon.error, str(want_anon), str(anon.status)))
    out.append(Check(host, "probe: bogus bearer token", OK if bogus.status == 401 else DRIFT,
                     f"HTTP {bogus.status} (a credential no authenticator accepts is always 401)" if bogus.status
                     else bogus.error, "401", str(bogus.status)))
    if admin is None:
        out.append(Check(host, "probe: admin cert", SKIP, "pki/admin.pem or admin-key.pem missing"))
    else:
        info = admin.json().get("status", {}).get("userInfo", {})
        user = info.get("username")
        ok = admin.status in (200, 201) and user == "admin"
        detail = (f"HTTP {admin.status}: Username {user}, Groups {','.join(info.get('groups', []))}"
                  if admin.status else admin.error)
        out.append(Check(host, "probe: admin cert (SelfSubjectReview)", OK if ok else DRIFT, detail, "admin",
                         str(user)))
    return out


READYZ_VERBOSE = "/readyz?verbose"
ETCD_CHECKS = ("[-]etcd failed", "[-]etcd-readiness failed")


def check_readyz(host: str, answer) -> list[Check]:
    """The running API server's own word (`GET /readyz?verbose` as the health identity): ready,
    or which checks fail. A failing `etcd` check says that the server cannot read its storage:
    its --etcd-* flags or the members (the etcd checks of this report say which)."""
    if answer.status is None:
        return [Check(host, "API server /readyz", DRIFT, f"no answer: {answer.error}", "200", "")]
    if answer.status == 403:
        from k8sboot.health import FORBIDDEN_HINT

        return [Check(host, "API server /readyz", DRIFT, f"HTTP 403: {FORBIDDEN_HINT}", "200", "403")]
    lines = [ln.strip() for ln in (answer.body or "").splitlines()]
    failing = [ln for ln in lines if ln.startswith("[-]")]
    if answer.status == 200:
        etcd = "etcd ok" if "[+]etcd ok" in lines else "no etcd check listed"
        return [Check(host, "API server /readyz", OK, f"ready, {sum(ln.startswith('[+]') for ln in lines)} checks "
                      f"passed ({etcd})", "200", "200")]
    detail = f"HTTP {answer.status}: " + ("; ".join(failing[:4]) or (lines[:1] or [""])[0][:200])
    if any(ln.startswith(ETCD_CHECKS) for ln in failing):
        detail += (" — the API server cannot read etcd: check its --etcd-servers, --etcd-cafile, "
                   "--etcd-certfile/--etcd-keyfile and the etcd members (k8sboot deploy-etcd)")
    return [Check(host, "API server /readyz", DRIFT, detail, "200", str(answer.status))]


# --- over SSH ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyOptions:
    hosts: tuple[str, ...] = ()
    probe: bool = False
    accept_new_host_keys: bool = False
    templates: Path | None = None
    probe_timeout: float = 5.0


def verify(inventory: Inventory, options: VerifyOptions, *, connect=None, etcd_ask=None,
           readyz=None, pickup=None) -> VerifyReport:
    """Every host in parallel. As in deploy, the hosts are dialled and their facts read while the
    units are rendered and the local PKI read (a local error closes every connection). `etcd_ask`:
    the HTTPS to etcd members (`verify_etcd.asker`, by default over verify's dialer); `readyz`:
    Host -> the answer of a running API server's /readyz?verbose (by default HTTPS as the
    health identity, over verify's dialer)."""
    from k8sboot import deploy as deploymod
    from k8sboot import render, rotation
    from k8sboot.store import read_optional

    lb_names = {h.name for h in inventory.load_balancers}
    lbs = tuple(h for h in inventory.load_balancers if not options.hosts or h.name in options.hosts)
    names = tuple(n for n in options.hosts if n not in lb_names)
    hosts = deploymod.select_hosts(inventory, names) if names or not options.hosts else ()
    deploymod.check_identity_file(inventory)
    templates = render.templates_dir_for(inventory, options.templates)
    port = deploymod.secure_port(inventory, (hosts or inventory.controllers)[0])
    files = deploymod.controller_files(inventory)        # the path table, and a rotation's second key
    request = deploymod.fact_request(planmod.desired_paths(binary=False, files=files), port, sections(files),
                                     obsolete=rotation.obsolete_paths(inventory.rotation))
    pki_dir = Path(inventory.pki.dir)
    admin_cert, admin_key = pki_dir / layout.cert_file(layout.ADMIN), pki_dir / layout.key_file(layout.ADMIN)
    if connect is None:
        connect = deploymod.ssh_connector(inventory, accept_new_host_keys=options.accept_new_host_keys)
    opened = deploymod.OpenConnections(connect)
    local = deploymod.LocalWork()
    dial = _probe_dialer(inventory, options)     # None: dial directly (--probe and etcd's HTTPS)
    etcd_request = verify_etcd.fact_request(inventory)
    if etcd_ask is None:
        etcd_ask = verify_etcd.asker(inventory, dial, options.probe_timeout)
    etcd_deployed: dict[str, bool] = {}

    def prepare() -> dict:
        pki = deploymod.read_local_pki(inventory)
        units = {h.name: render.render_unit(inventory, h, templates) for h in hosts}
        return {"pki": pki, "units": units,
                "desired": {h.name: planmod.build_desired_files(pki, units[h.name].text, None, files) for h in hosts},
                "have_admin": read_optional(admin_cert) is not None and read_optional(admin_key) is not None,
                "etcd": verify_etcd.read_local(inventory, options.templates),
                "readyz": readyz if readyz is not None else readyz_probe()}

    def readyz_probe():
        from k8sboot import health

        try:
            ca, cert, key = health.credentials(inventory)
        except PkiError:
            return None                  # no client cert to read /readyz with: gen-certs says so elsewhere
        from k8sboot import probe

        def ask(host: Host):
            return probe.request(str(host.internal_ip), port, "GET", READYZ_VERBOSE, ca, cert=cert, key=key,
                                 timeout=options.probe_timeout, dial=dial)
        return ask

    def one(host: Host) -> HostVerification:
        t0 = time.monotonic()
        result = HostVerification(host.name)
        remote = None
        try:
            remote = opened.connect(host)
            facts = remote.read_facts(request)
            etcd_facts = remote.read_facts(etcd_request)
            remote.close()
            remote = None
            ready = local.get()
            if ready is None:
                result.error = "not verified: the local preparation failed"
                return result
            desired = ready["desired"][host.name]
            result.checks, result.grep_output = check_host(host.name, desired, ready["units"][host.name].flags,
                                                           facts, ready["pki"][rotation.trust_name(
                                                               inventory.rotation, layout.cert_file(layout.CA))])
            result.checks += check_rotation(host.name, inventory.rotation, facts)
            etcd_deployed[host.name] = verify_etcd.deployed(etcd_facts)
            if etcd_deployed[host.name]:
                result.checks += verify_etcd.verify_member(inventory, host, etcd_facts, ready["etcd"], etcd_ask)
            if facts.service.is_active and ready["readyz"] is not None:
                result.checks += check_readyz(host.name, ready["readyz"](host))
            # the serving cert the server presents and the client CA it trusts (k8sboot/pickup.py):
            # `pickup(host, facts, local_pki) -> [Check]`; by default over TLS whenever verify's own
            # /readyz probe runs (a caller with its own /readyz answers, a test, brings these too)
            if facts.service.is_active and (pickup is not None or (readyz is None and ready["readyz"] is not None)):
                if pickup is None:
                    from k8sboot import pickup as pickupmod

                    result.checks += pickupmod.probe_host(inventory, host, port, facts, ready["pki"], dial=dial,
                                                          timeout=options.probe_timeout)
                else:
                    result.checks += pickup(host, facts, ready["pki"])
        except K8sbootError as exc:
            result.error, result.hint, result.code = exc.message, exc.hint, int(exc.code)
        finally:
            if remote is not None:
                remote.close()
        if options.probe and not result.error:
            from k8sboot import probe

            ca = pki_dir / rotation.trust_name(inventory.rotation, layout.cert_file(layout.CA))
            anon = probe.probe_anonymous(host.address, port, ca, options.probe_timeout, dial=dial)
            bogus = probe.probe_bogus_token(host.address, port, ca, options.probe_timeout, dial=dial)
            admin = probe.probe_admin(host.address, port, ca, admin_cert, admin_key, options.probe_timeout,
                                      dial=dial) if local.get()["have_admin"] else None
            result.checks.extend(check_probe(host.name, inventory.apiserver.anonymous_auth, anon, bogus, admin))
        result.seconds = time.monotonic() - t0
        return result

    futures = [deploymod.start_daemon(one, h, name=f"verify-{h.name}") for h in hosts]
    futures += [deploymod.start_daemon(verify_lb_host, inventory, h, opened.connect, options.templates,
                                       name=f"verify-{h.name}") for h in lbs]
    try:
        try:
            local.set(prepare())
        except BaseException:
            local.fail()
            opened.abort()
            wait_for_futures(futures, timeout=1)
            raise
        report = VerifyReport([f.result() for f in futures])
        controllers = [h for h in report.hosts if h.kind == "controller" and not h.error]
        if controllers and not any(etcd_deployed.values()):
            controllers[0].checks += verify_etcd.not_deployed(controllers[0].host)
        elif controllers:
            for h in controllers:
                if not etcd_deployed.get(h.host, True):
                    h.checks += verify_etcd.missing_member(h.host)
        return report
    finally:
        if dial is not None:
            dial.close()


def _probe_dialer(inventory: Inventory, options: VerifyOptions):
    """The probes' way to the hosts: through ssh.proxy_jump when set (the hosts may be reachable
    only from there, as SSH is), else None: straight from the workstation."""
    from k8sboot import remote

    aliases = {h.name: h.address for h in (*inventory.controllers, *inventory.workers)}
    return remote.tcp_dialer(inventory.ssh, aliases, accept_new_host_keys=options.accept_new_host_keys)


# --- audit: the reading side (local PKI, and each host with --remote) ----------------------------


def read_cert_summaries(pki_dir: Path) -> list:
    """Every certificate in the local PKI dir, summarised for `audit.check_certs`."""
    from cryptography import x509

    from k8sboot import audit, pki
    from k8sboot.store import read_optional

    out = []
    if not pki_dir.is_dir():
        return out
    for path in sorted(pki_dir.glob("*.pem")):
        if path.name.endswith("-key.pem"):
            continue
        data = read_optional(path)
        if not data or b"BEGIN CERTIFICATE" not in data:
            continue
        cert = pki.parse_cert(data, path)
        subject = pki.subject_of(cert.subject)
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        out.append(audit.CertSummary(
            file=str(path), common_name=next((v for k, v in subject if k == "CN"), ""),
            organizations=tuple(v for k, v in subject if k == "O"), not_after=pki.not_after_of(cert), is_ca=is_ca))
    return out


@dataclass
class AuditReport:
    findings: list
    errors: list[HostVerification] = field(default_factory=list)

    def exit_code(self) -> ExitCode:
        from k8sboot import audit

        if self.errors:
            codes = {h.code for h in self.errors}
            return ExitCode(codes.pop()) if len(codes) == 1 else ExitCode.REMOTE
        return ExitCode.AUDIT if audit.worst(self.findings) == audit.FAIL else ExitCode.OK

    def to_json(self) -> dict:
        return {"ok": self.exit_code() == ExitCode.OK, "exit_code": int(self.exit_code()),
                "findings": [asdict(f) for f in self.findings],
                "errors": [{"host": h.host, "error": h.error, "hint": h.hint} for h in self.errors]}


def run_audit(inventory: Inventory, *, remote: bool = False, hosts: tuple[str, ...] = (), now=None,
              templates: Path | None = None, accept_new_host_keys: bool = False, connect=None) -> AuditReport:
    """Audit the rendered flags (kube-apiserver's, and etcd's for CIS 2.1-2.7), the layout's planned
    files and the local PKI; with `remote`, also each controller's actual unit flags (both units),
    file modes and owners, and the SA key's sameness. A host without an etcd unit is one WARN."""
    from datetime import datetime, timezone

    from k8sboot import audit
    from k8sboot import deploy as deploymod
    from k8sboot import etcd, render
    from k8sboot.remote import FactRequest

    now = now or datetime.now(timezone.utc)
    selected = deploymod.select_hosts(inventory, hosts)
    tdir = render.templates_dir_for(inventory, templates)
    rendered = {h.name: render.render_unit(inventory, h, tdir).flags for h in selected}
    findings: list = []
    for name, flags in rendered.items():
        findings += audit.check_flags(flags, f"{name} (rendered)")
    findings += audit.check_files(audit.planned_remote_files(), "layout (planned)")
    findings += audit.check_certs(read_cert_summaries(Path(inventory.pki.dir)), now)
    findings += audit.check_consistency(rendered)
    findings += audit.check_rotation(inventory.rotation, now)
    local_digests = _local_ca_digests(Path(inventory.pki.dir))
    for h in selected:
        findings += audit.check_etcd_flags(etcd.build_etcd_flags(inventory, h), f"{h.name} (rendered)",
                                           apiserver_client_ca=dict(rendered[h.name]).get("client-ca-file"),
                                           ca_digests=local_digests)
    report = AuditReport(findings)
    if not remote:
        return report
    if connect is None:
        connect = deploymod.ssh_connector(inventory, accept_new_host_keys=accept_new_host_keys)
    paths = tuple(f.path for f in layout.CONTROLLER_FILES) + (layout.UNIT_PATH,)
    request = FactRequest(hashed=paths, stat_only=(CA_KEY_REMOTE,))

    etcd_request = FactRequest(hashed=(layout.ETCD_UNIT_PATH, ETCD_CA_REMOTE), unit=layout.ETCD_UNIT_NAME,
                               text_path=layout.ETCD_UNIT_PATH, state_dir=layout.ETCD_DIR)

    def one(host: Host):
        r = None
        try:
            r = connect(host)
            return host, r.read_facts(request), r.read_facts(etcd_request), None
        except K8sbootError as exc:
            return host, None, None, HostVerification(host.name, error=exc.message, hint=exc.hint, code=int(exc.code))
        finally:
            if r is not None:
                r.close()

    with ThreadPoolExecutor(max_workers=max(1, len(selected)), thread_name_prefix="audit") as pool:
        results = list(pool.map(one, selected))
    remote_flags, sa_keys = {}, {}
    for host, facts, etcd_facts, err in results:
        if err is not None:
            report.errors.append(err)
            continue
        subject = f"{host.name} (remote)"
        argv = flagmod.parse_unit_exec_start(facts.unit_text) if facts.unit_text is not None else None
        if argv is None:
            findings.append(audit.Finding("k8sboot.unit", audit.FAIL, subject, "kube-apiserver unit present",
                                          f"{layout.UNIT_PATH} missing or without ExecStart",
                                          "run k8sboot deploy-apiserver"))
        else:
            flags = flagmod.parse_argv_flags(argv)
            remote_flags[host.name] = flags
            findings += audit.check_flags(flags, subject)
        observed = [audit.FileObservation(planmod.PKI_DIR.path, facts.file(planmod.PKI_DIR.path).exists,
                                          facts.file(planmod.PKI_DIR.path).mode,
                                          facts.file(planmod.PKI_DIR.path).owner,
                                          facts.file(planmod.PKI_DIR.path).group, directory=True)]
        for spec in layout.CONTROLLER_FILES:
            fact = facts.file(spec.path)
            observed.append(audit.FileObservation(spec.path, fact.exists, fact.mode, fact.owner, fact.group,
                                                  secret=spec.is_secret))
        findings += audit.check_files(observed, subject)
        if facts.file(CA_KEY_REMOTE).exists:
            findings.append(audit.Finding("k8sboot.ca-key", audit.FAIL, subject, "no CA key on controllers",
                                          f"{CA_KEY_REMOTE} is present", f"remove it: rm {CA_KEY_REMOTE}"))
        sa_keys[host.name] = facts.file(layout.remote_path(layout.cert_file(layout.SERVICE_ACCOUNT))).sha256
        client_ca = dict(remote_flags.get(host.name, rendered.get(host.name, ()))).get("client-ca-file")
        findings += _audit_remote_etcd(subject, etcd_facts, client_ca,
                                       {**{p: facts.file(p).sha256 for p in facts.files}, ETCD_CA_REMOTE:
                                        etcd_facts.file(ETCD_CA_REMOTE).sha256})
    if remote_flags or sa_keys:
        findings += audit.check_consistency(remote_flags, sa_keys)
    return report


ETCD_CA_REMOTE = layout.etcd_path(layout.cert_file(layout.ETCD_CA))


def _local_ca_digests(pki_dir: Path) -> dict[str, str | None]:
    """sha256 of the local cluster CA and etcd CA, by the path each has on a controller."""
    from k8sboot.store import read_optional

    out = {}
    for local, remote_path in ((layout.cert_file(layout.CA), layout.remote_path(layout.cert_file(layout.CA))),
                               (layout.cert_file(layout.ETCD_CA), ETCD_CA_REMOTE)):
        data = read_optional(pki_dir / local)
        out[remote_path] = hashlib.sha256(data).hexdigest() if data is not None else None
    return out


def _audit_remote_etcd(subject: str, facts: HostFacts, client_ca: str | None, digests) -> list:
    """CIS 2.1-2.7 on a host's etcd unit as deployed; one WARN when the host has none."""
    from k8sboot import audit

    argv = flagmod.parse_unit_exec_start(facts.unit_text) if facts.file(layout.ETCD_UNIT_PATH).exists and \
        facts.unit_text is not None else None
    if argv is None:
        return [audit.Finding("k8sboot.etcd", audit.WARN, subject, "etcd deployed",
                              f"etcd: not deployed ({layout.ETCD_UNIT_PATH} missing or without ExecStart)",
                              "k8sboot deploy-etcd -i INV")]
    return audit.check_etcd_flags(flagmod.parse_argv_flags(argv), subject,
                                  apiserver_client_ca=client_ca, ca_digests=digests)
