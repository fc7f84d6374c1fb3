"""render-apiserver, deploy-apiserver, verify, audit; `register(app)` adds them to the root app.

Heavy imports (jinja2, fabric, rich, cryptography) happen inside the functions so `--help` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from k8sboot.cli.options import inventory_option, json_option

RENDER_EPILOG = """\
\b
Examples:
  k8sboot render-apiserver -i inventory/cluster.yaml --host controller-0
  k8sboot render-apiserver -i inventory/cluster.yaml --out build/units   # one file per controller
  k8sboot render-apiserver --templates my-templates/                     # your copy of the template
  k8sboot render-apiserver --authentication-config   # the AuthenticationConfiguration file (authentication:)
\b
The unit is rendered offline: the flags are computed from the inventory (--advertise-address is
the host's internal IP; issuer, service CIDR, etcd and auth flags from the inventory;
--anonymous-auth always explicit) and every file path from the one layout the deploy uses.
"""

DEPLOY_EPILOG = """\
\b
Examples:
  k8sboot deploy-apiserver --inventory inventory/cluster.yaml
  k8sboot deploy-apiserver -i inventory/lab.yaml --dry-run          # diff per host, touches nothing
  k8sboot deploy-apiserver -i inventory/lab.yaml --hosts controller-0,controller-1
  k8sboot deploy-apiserver -i inventory/cluster.yaml --binary ./kube-apiserver --rollback-on-failure
  k8sboot deploy-apiserver -i inventory/lab.yaml --json | jq '.hosts[].state'
  k8sboot deploy-apiserver -i inventory/lab.yaml --max-unavailable 2 --ready-timeout 300
\b
Per host, in parallel: connect (strict host keys) -> take the deploy lock and read sha256, mode and
owner of every target and the unit's state -> upload only what differs (staged in the target dir).
Then the switch (rename into place, daemon-reload if the unit changed, enable, restart if anything
changed): at once where nothing serves yet (a first deploy), else --strategy rolling (the default
when a serving kube-apiserver must restart): --max-unavailable hosts per wave, each host gated on a
new process with the rendered flags answering GET /readyz 200 over HTTPS (the k8sboot-health
client cert) before the next wave. The first host that fails stops the roll: hosts not reached keep
their old files and process. A second run with nothing changed touches nothing.
\b
Before the first change on any host (and in --dry-run), when some host has something to change,
every --etcd-servers URL is asked GET /health from the workstation with etcd's CA and the API
server's own apiserver-etcd-client pair: one line per member that is unreachable or unhealthy; a
quorum of them healthy and the deploy goes on; fewer, and no host is changed (exit 19).
\b
Exit codes: 0 every host ended active and as intended; 9 some host did not; 7 every failure was an
unknown/changed host key; 6 every failure was a connection failure; 17 a host was locked; 19 etcd
had no healthy quorum for kube-apiserver, nothing was changed.
"""

VERIFY_EPILOG = """\
\b
Examples:
  k8sboot verify -i inventory/lab.yaml --host controller-0
  k8sboot verify -i inventory/cluster.yaml --probe          # also HTTPS: 401/403/admin
  k8sboot verify -i inventory/cluster.yaml --json
\b
Checks over SSH, on each controller: the tutorial's grep of the unit; every auth flag in the unit
file, in `systemctl show -p ExecStart` and in the running process's command line against the
render; every deployed file's sha256, mode and owner against the local PKI and the layout; the CA
fingerprint; no ca-key.pem; is-enabled / is-active.
\b
Exit codes: 0 nothing drifted; 10 drift (files, modes, unit, flags, service, probe); 6/7/8 a host
could not be checked (connection, host key, remote command).
"""

AUDIT_EPILOG = """\
\b
Examples:
  k8sboot audit -i inventory/cluster.yaml
  k8sboot audit -i inventory/lab.yaml --remote             # the hosts' units, files and modes
  k8sboot audit -i inventory/cluster.yaml --json
\b
CIS Kubernetes Benchmark checks that concern authentication: 1.2.1, 1.2.2, 1.2.4, 1.2.5,
1.2.21-1.2.26, 1.2.30, 1.1.19-1.1.21, 5.1.7; etcd's 2.1-2.7 on each member; plus certs in system:masters other than admin,
leaves expiring within 30 days, and an issuer that differs between controllers. Exit 14 on FAIL.
"""


def _split_hosts(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(h.strip() for h in value.split(",") if h.strip())


def render_apiserver(
    inventory: Path = inventory_option,
    host: str | None = typer.Option(None, "--host", metavar="H", help="Only this controller."),
    out: Path | None = typer.Option(None, "--out", metavar="DIR",
                                    help="Write <host>.kube-apiserver.service files here instead of stdout."),
    templates: Path | None = typer.Option(None, "--templates", metavar="DIR",
                                          help="Your own template dir (default: inventory, then packaged)."),
    authentication_config: bool = typer.Option(False, "--authentication-config",
                                               help="Print the --authentication-config file rendered from the "
                                                    "inventory's authentication: section instead of the unit."),
) -> None:
    """Render the kube-apiserver unit for one or every controller, offline."""
    from k8sboot import console
    from k8sboot.deploy import select_hosts
    from k8sboot.inventory import load_inventory
    from k8sboot.render import render_all, templates_dir_for

    inv = load_inventory(inventory)
    auth_file = None
    if inv.authentication is not None:
        from k8sboot import layout as _layout
        from k8sboot.deploy import rendered_file

        auth_file = rendered_file(inv, _layout.AUTHENTICATION_CONFIG_FILE)
    if authentication_config:
        if auth_file is None:
            from k8sboot.errors import ExitCode, K8sbootError

            raise K8sbootError(f"{inv.path}: the inventory has no authentication: section, so kube-apiserver gets "
                               "no --authentication-config", hint="see README, \"Log in with OIDC\"",
                               code=ExitCode.USAGE)
        console.data(auth_file.decode().rstrip("\n"))
        return
    hosts = select_hosts(inv, (host,) if host else ())
    units = render_all(inv, templates_dir_for(inv, templates), hosts)
    if out is None:
        for unit in units:
            if len(units) > 1:
                console.data(f"# --- {unit.host.name}: {unit.template.name} ---")
            console.data(unit.text.rstrip("\n"))
        return
    from k8sboot import layout
    from k8sboot.store import write_private_file

    for unit in units:
        path = Path(out) / f"{unit.host.name}.{layout.UNIT_NAME}"
        result = write_private_file(path, unit.text.encode(), mode=layout.UNIT_MODE)
        console.info(f"{result.outcome} {path}")
    if auth_file is not None:
        path = Path(out) / layout.AUTHENTICATION_CONFIG_FILE
        result = write_private_file(path, auth_file, mode=layout.AUTHENTICATION_CONFIG.mode)
        console.info(f"{result.outcome} {path}")


def deploy_apiserver(
    inventory: Path = inventory_option,
    hosts: str | None = typer.Option(None, "--hosts", metavar="A,B", help="Only these controllers."),
    parallel: int = typer.Option(0, "--parallel", min=0, help="Hosts at once (default: all)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Connect and read facts; print the unit diff and "
                                 "the files that would change per host; change nothing."),
    no_restart: bool = typer.Option(False, "--no-restart", help="Do not restart a running kube-apiserver "
                                    "(a stopped one is still started)."),
    rollback_on_failure: bool = typer.Option(False, "--rollback-on-failure",
                                             help="Keep the previous files; if the unit fails to come up, "
                                                  "put them back and restart."),
    binary: Path | None = typer.Option(None, "--binary", metavar="PATH",
                                       help="Upload this kube-apiserver binary to /usr/local/bin (0755)."),
    accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys",
                                              help="Trust unknown host keys on first use and add them to "
                                                   "known_hosts (a changed key is still refused)."),
    lock_wait: float = typer.Option(30.0, "--lock-wait", metavar="SECONDS",
                                    help="How long to wait for another deploy's lock on a host."),
    wait: float = typer.Option(60.0, "--wait", metavar="SECONDS",
                               help="How long to wait for kube-apiserver to come up."),
    templates: Path | None = typer.Option(None, "--templates", metavar="DIR", help="Your own template dir."),
    strategy: str | None = typer.Option(None, "--strategy", metavar="rolling|parallel",
                                        help="How serving controllers restart (default: rolling when one "
                                             "serves, parallel on a first deploy)."),
    max_unavailable: int = typer.Option(1, "--max-unavailable", min=1, metavar="N",
                                        help="Controllers a rolling wave restarts at once."),
    ready_timeout: float = typer.Option(120.0, "--ready-timeout", metavar="SECONDS",
                                        help="How long a restarted controller may take to answer /readyz 200."),
    no_etcd_check: bool = typer.Option(False, "--no-etcd-check",
                                       help="Do not ask etcd before changing hosts (when etcd's client port "
                                            "cannot be reached from here); the health gate still stops the "
                                            "roll at the first API server that does not turn ready."),
    json_: bool = json_option,
) -> None:
    """Push the PKI files and the kube-apiserver unit to every controller, idempotently, without an outage."""
    from k8sboot import console
    from k8sboot.deploy import DeployOptions, deploy
    from k8sboot.inventory import load_inventory

    from k8sboot.errors import ExitCode, K8sbootError
    from k8sboot.rollout import STRATEGIES

    if strategy is not None and strategy not in STRATEGIES:
        raise K8sbootError(f"--strategy {strategy}: not one of {', '.join(STRATEGIES)}", code=ExitCode.USAGE)
    inv = load_inventory(inventory)
    options = DeployOptions(hosts=_split_hosts(hosts), parallel=parallel, dry_run=dry_run, no_restart=no_restart,
                            rollback_on_failure=rollback_on_failure, binary=binary,
                            accept_new_host_keys=accept_new_host_keys, lock_wait=lock_wait, wait=wait,
                            templates=templates, strategy=strategy, max_unavailable=max_unavailable,
                            ready_timeout=ready_timeout, etcd_check=not no_etcd_check)
    with _ProgressView(console, enabled=True) as view:
        report = deploy(inv, options, progress=view.update, warn=lambda m: console.warn(m))
    _print_deploy_report(console, report, json_)
    code = report.exit_code()
    if code:
        raise typer.Exit(int(code))


class _ProgressView:
    """Live per-host status on stderr: a rich Live table on a terminal, plain lines otherwise."""

    def __init__(self, console, enabled: bool = True):
        import sys
        import threading

        self.console = console
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.state: dict[str, str] = {}
        self.lock = threading.Lock()
        self.live = None

    def __enter__(self):
        if self.tty:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console.progress_console(), refresh_per_second=10,
                             transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

    def _render(self):
        from rich.table import Table

        t = Table.grid(padding=(0, 2))
        for host, msg in self.state.items():
            t.add_row(host, msg)
        return t

    def update(self, host: str, message: str) -> None:
        with self.lock:
            self.state[host] = message
            if self.live is not None:
                self.live.update(self._render())
            elif self.enabled and (message.startswith("done") or message.startswith("connecting")):
                self.console.info(f"{host}: {message}")


def _print_deploy_report(console, report, json_: bool, command: str = "deploy-apiserver") -> None:
    if json_:
        console.json_out({"ok": report.ok, "dry_run": report.dry_run, "exit_code": int(report.exit_code()),
                          "strategy": report.strategy, "waves": report.waves, "warning": report.warning,
                          "stopped_by": report.stopped_by, "sets": report.by_outcome(), "notes": report.notes,
                          "checks": report.checks,
                          "refusal": report.refusal.to_json() if report.refusal is not None else None,
                          "hosts": [r.to_json() for r in report.results]})
        return
    if report.dry_run:
        for r in report.results:
            if r.unit_diff:
                console.data(r.unit_diff.rstrip("\n"))
    rows = []
    for r in report.results:
        files = ", ".join(r.files_changed) if len(r.files_changed) <= 3 else \
            f"{len(r.files_changed)} files (--json lists them)"
        restarted = ("would" if report.dry_run else "yes") if r.restarted else "no"
        if r.reloaded:
            restarted = "reloaded"
        if r.restarted and r.ready_seconds is not None:
            restarted += f" (ready {r.ready_seconds:.1f}s)"
        rows.append((r.host, files or "-", "yes" if r.unit_changed else "no", restarted,
                     "-" if r.wave is None else str(r.wave), r.state or "-", f"{r.seconds:.2f}s", r.outcome))
    title = f"{command} --dry-run (nothing was changed)" if report.dry_run else command
    if report.waves:
        title += f" ({'would roll' if report.dry_run else report.strategy}: {len(report.waves)} wave(s))"
    console.table(("host", "files changed", "unit changed", "restarted", "wave", "state", "time", "outcome"), rows,
                  title=title, styles={"failed": "bold red", "error": "bold red", "rolled back": "yellow",
                                       "deployed": "green", "up to date": "green", "not reached": "yellow"})
    for r in report.results:
        if r.outcome == "refused":
            continue            # said once, below
        if not r.ok:
            console.error(r.message if r.message.startswith(r.host) else f"{r.host}: {r.message}", r.hint)
            for line in r.journal:
                console.info(f"  journal: {line}")
        elif report.dry_run:
            console.info(f"{r.host}: {r.message}")
    for note in report.notes:
        console.warn(note)
    if report.refusal is not None:
        console.error(("--dry-run: the deploy would be refused: " if report.dry_run else "")
                      + report.refusal.message, report.refusal.hint)
        return
    if not report.dry_run and report.nothing_changed:
        console.info("already up to date: nothing uploaded, nothing restarted")
    elif not report.dry_run and not report.ok and len(report.results) > 1:
        sets = report.by_outcome()
        console.info("after this deploy: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sets.items() if v)
                     + (f" (the roll stopped at {report.stopped_by})" if report.stopped_by else ""))


def verify_cmd(
    inventory: Path = inventory_option,
    host: str | None = typer.Option(None, "--host", metavar="H",
                                    help="Only this controller (comma-separated list allowed)."),
    probe: bool = typer.Option(False, "--probe", help="Also send HTTPS requests to each secure port: no "
                               "credential (401/403), a bogus token (401), the admin cert (SelfSubjectReview)."),
    accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys",
                                              help="Trust unknown host keys on first use."),
    templates: Path | None = typer.Option(None, "--templates", metavar="DIR", help="Your own template dir."),
    all_checks: bool = typer.Option(False, "--all", help="Show every check, not only drift and a summary."),
    json_: bool = json_option,
) -> None:
    """Prove over SSH that each controller runs what render-apiserver and gen-certs give."""
    from k8sboot import console
    from k8sboot.inventory import load_inventory
    from k8sboot.verify import OK, SKIP, VerifyOptions, verify

    inv = load_inventory(inventory)
    report = verify(inv, VerifyOptions(hosts=_split_hosts(host), probe=probe,
                                       accept_new_host_keys=accept_new_host_keys, templates=templates))
    if json_:
        console.json_out(report.to_json())
    else:
        for h in report.hosts:
            if h.error or h.kind != "controller":
                continue
            console.data(f"{h.host}$ grep -oE \"\\-\\-(client-ca-file|service-account-key-file|anonymous-auth)"
                         f"[^ ]*\" /etc/systemd/system/kube-apiserver.service")
            console.data(h.grep_output or "(no output)")
        rows = []
        for h in report.hosts:
            shown = [c for c in h.checks if all_checks or c.status not in (OK, SKIP) or c.check in (
                "tutorial grep", "unit ExecStart: auth flags", "systemctl show ExecStart: auth flags",
                "CA fingerprint", "is-enabled", "is-active", "haproxy is-active") or c.check.startswith(("probe", "backend"))
                or c.check.endswith(" rotation")          # the phase a controller runs, mid-rotation
                or (c.check.startswith("process") and "auth" in c.check)]
            for c in shown:
                rows.append((h.host, c.check, c.status, c.detail))
            hidden = len(h.checks) - len(shown)
            if hidden:
                rows.append((h.host, f"{hidden} more checks", "OK", "files sha256/mode/owner, other flags "
                             "(--all shows them)"))
        console.table(("host", "check", "status", "detail"), rows, title="verify",
                      styles={"OK": "green", "DRIFT": "bold red", "SKIP": "dim", "WARN": "yellow"})
        for h in report.hosts:
            if h.error:
                console.error(h.error if h.error.startswith(h.host) else f"{h.host}: {h.error}", h.hint)
        drifted = [h for h in report.hosts if h.drifted]
        if drifted:
            console.info(f"drift on {', '.join(h.host for h in drifted)}: run "
                         + " and ".join(f"`k8sboot {cmd} -i {inventory}`" for cmd in _repairs(drifted))
                         + " to repair")
        elif not any(h.error for h in report.hosts):
            n_lb = sum(1 for h in report.hosts if h.kind != "controller")
            console.info(f"no drift on {len(report.hosts) - n_lb} controller(s)"
                         + (f" and {n_lb} load balancer(s)" if n_lb else ""))
    code = report.exit_code()
    if code:
        raise typer.Exit(int(code))


def _repairs(drifted) -> list[str]:
    """The commands that put drifted hosts back: by what drifted (etcd checks, an LB, the API server)."""
    commands = []
    for h in drifted:
        bad = [c.check for c in h.checks if c.status == "DRIFT"]
        if h.kind != "controller":
            commands.append("deploy-lb")
            continue
        etcd_bad = [c for c in bad if "etcd" in c]
        api_bad = [c for c in bad if "etcd" not in c]
        if etcd_bad:
            commands.append("deploy-etcd")
        # an API server that is unready because its etcd is down is put back by deploy-etcd alone
        if (api_bad and not (etcd_bad and api_bad == ["API server /readyz"])) or not bad:
            commands.append("deploy-apiserver")
    order = ("deploy-etcd", "deploy-apiserver", "deploy-lb")
    return [c for c in order if c in commands]


def audit_cmd(
    inventory: Path = inventory_option,
    remote: bool = typer.Option(False, "--remote", help="Also audit each controller's unit, files and modes."),
    hosts: str | None = typer.Option(None, "--hosts", metavar="A,B", help="Only these controllers."),
    accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys",
                                              help="Trust unknown host keys on first use."),
    templates: Path | None = typer.Option(None, "--templates", metavar="DIR", help="Your own template dir."),
    json_: bool = json_option,
) -> None:
    """CIS Benchmark authentication and etcd checks on the rendered flags, the PKI and (--remote) the hosts."""
    from k8sboot import console
    from k8sboot.inventory import load_inventory
    from k8sboot.verify import run_audit

    inv = load_inventory(inventory)
    report = run_audit(inv, remote=remote, hosts=_split_hosts(hosts), templates=templates,
                       accept_new_host_keys=accept_new_host_keys)
    if json_:
        console.json_out(report.to_json())
    else:
        from k8sboot.audit import merge_subjects

        rows = [(f.id, f.status, f.subject, f.reason, f.fix or "-") for f in merge_subjects(report.findings)]
        console.table(("CIS", "status", "where", "reason", "fix"), rows, title="audit (CIS Kubernetes Benchmark: "
                      "authentication and etcd)",
                      styles={"PASS": "green", "WARN": "yellow", "FAIL": "bold red"})
        for h in report.errors:
            console.error(h.error if h.error.startswith(h.host) else f"{h.host}: {h.error}", h.hint)
        counts = {s: sum(1 for f in report.findings if f.status == s) for s in ("PASS", "WARN", "FAIL")}
        console.info(f"{counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    code = report.exit_code()
    if code:
        raise typer.Exit(int(code))


DEPLOY_LB_EPILOG = """\
\b
Examples:
  k8sboot deploy-lb -i inventory/lab.yaml               # the lab's lb-0 (k8sboot lab up --lb)
  k8sboot deploy-lb -i inventory/cluster.yaml --dry-run # the config diff per LB host
\b
Per `load_balancers:` host, in parallel, with the same engine as deploy-apiserver: HAProxy's config
(TCP mode in front of every controller's secure port, an HTTPS /readyz health check per controller
with the k8sboot-health client cert), the cluster CA and that cert+key, uploaded only when they
differ. The new config is checked on the host with `haproxy -c` before HAProxy hears of it (a
refused config puts the previous files back), then applied with `systemctl reload`: established
client connections are not cut. A second run changes nothing.
"""


def deploy_lb_cmd(
    inventory: Path = inventory_option,
    hosts: str | None = typer.Option(None, "--hosts", metavar="A,B", help="Only these load balancers."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read facts, print the config diff; change nothing."),
    accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys",
                                              help="Trust unknown host keys on first use (a changed key is "
                                                   "still refused)."),
    lock_wait: float = typer.Option(30.0, "--lock-wait", metavar="SECONDS",
                                    help="How long to wait for another deploy's lock on a host."),
    templates: Path | None = typer.Option(None, "--templates", metavar="DIR", help="Your own template dir."),
    json_: bool = json_option,
) -> None:
    """Push the HAProxy config for the API load balancer to the inventory's load_balancers hosts."""
    from k8sboot import console
    from k8sboot.deploy import DeployOptions, deploy_lb
    from k8sboot.inventory import load_inventory

    from k8sboot.lb import check_lb_inventory

    inv = load_inventory(inventory)
    for warning in check_lb_inventory(inv):
        console.warn(warning)
    options = DeployOptions(hosts=_split_hosts(hosts), dry_run=dry_run, accept_new_host_keys=accept_new_host_keys,
                            lock_wait=lock_wait, templates=templates, wait=30.0)
    with _ProgressView(console, enabled=True) as view:
        report = deploy_lb(inv, options, progress=view.update)
    _print_deploy_report(console, report, json_, command="deploy-lb")
    code = report.exit_code()
    if code:
        raise typer.Exit(int(code))


DEPLOY_ETCD_EPILOG = """\
\b
Examples:
  k8sboot deploy-etcd -i inventory/lab.yaml                  # one member per controller
  k8sboot deploy-etcd -i inventory/cluster.yaml --dry-run    # the unit diff per host, touches nothing
  k8sboot deploy-etcd -i inventory/cluster.yaml --binary ./etcd   # an etcd release, to /usr/local/bin/etcd
\b
Per controller, with the same engine as deploy-apiserver: etcd's CA, serving and peer certs in
/etc/etcd (0700), the unit /etc/systemd/system/etcd.service (it overrides Debian's), the data dir
/var/lib/etcd/<cluster name> (0700). Where /usr/bin/etcd is missing, Debian's etcd-server is
installed with apt-get (its own etcd.service is never started). A first deploy starts every
member at once (they need each other for quorum); a change restarts one member at a time, each
gated on a new process with the rendered flags answering GET /health {"health":"true"} (the
etcd-healthcheck-client cert), and no member goes down unless the others keep quorum. A second
run changes nothing. Run it before deploy-apiserver.
\b
A member's data dir made by another cluster (another cluster name, initial-cluster-token or member
name in the k8sboot-member.json deploy-etcd writes there, or a member/ dir that no unit of this
cluster made) is refused before any member is changed: etcd would join that cluster or fail with
"cluster ID mismatch".
\b
Exit codes: 0 every member ended active and healthy; 9 some did not (or the roll stopped to keep
quorum); 20 a data dir is another cluster's, nothing was changed; 7/6/17 as for deploy-apiserver.
"""


def deploy_etcd_cmd(
    inventory: Path = inventory_option,
    hosts: str | None = typer.Option(None, "--hosts", metavar="A,B", help="Only these controllers' members."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read facts, print the unit diff; change nothing."),
    rollback_on_failure: bool = typer.Option(False, "--rollback-on-failure",
                                             help="Keep the previous files; if a member fails to come up, put "
                                                  "them back and restart it."),
    binary: Path | None = typer.Option(None, "--binary", metavar="PATH",
                                       help="Upload this etcd binary to /usr/local/bin/etcd (0755) instead of "
                                            "using Debian's etcd-server."),
    accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys",
                                              help="Trust unknown host keys on first use (a changed key is still "
                                                   "refused)."),
    lock_wait: float = typer.Option(30.0, "--lock-wait", metavar="SECONDS",
                                    help="How long to wait for another deploy's lock on a host."),
    wait: float = typer.Option(90.0, "--wait", metavar="SECONDS", help="How long to wait for etcd to come up."),
    templates: Path | None = typer.Option(None, "--templates", metavar="DIR",
                                          help="Your own template dir (with etcd.service.j2)."),
    strategy: str | None = typer.Option(None, "--strategy", metavar="rolling|parallel",
                                        help="How serving members restart (default: rolling when one serves, "
                                             "all at once on a first deploy)."),
    ready_timeout: float = typer.Option(120.0, "--ready-timeout", metavar="SECONDS",
                                        help="How long a restarted member may take to be healthy."),
    json_: bool = json_option,
) -> None:
    """Deploy one etcd member per controller, idempotently, restarting one member at a time."""
    from k8sboot import console
    from k8sboot.deploy import DeployOptions, deploy_etcd
    from k8sboot.errors import ExitCode, K8sbootError
    from k8sboot.inventory import load_inventory
    from k8sboot.rollout import STRATEGIES

    if strategy is not None and strategy not in STRATEGIES:
        raise K8sbootError(f"--strategy {strategy}: not one of {', '.join(STRATEGIES)}", code=ExitCode.USAGE)
    inv = load_inventory(inventory)
    options = DeployOptions(hosts=_split_hosts(hosts), dry_run=dry_run, rollback_on_failure=rollback_on_failure,
                            binary=binary, accept_new_host_keys=accept_new_host_keys, lock_wait=lock_wait,
                            wait=wait, templates=templates, strategy=strategy, max_unavailable=1,
                            ready_timeout=ready_timeout)
    with _ProgressView(console, enabled=True) as view:
        report = deploy_etcd(inv, options, progress=view.update, warn=lambda m: console.warn(m))
    _print_deploy_report(console, report, json_, command="deploy-etcd")
    code = report.exit_code()
    if code:
        raise typer.Exit(int(code))


def register(app: typer.Typer) -> None:
    app.command("render-apiserver", epilog=RENDER_EPILOG)(render_apiserver)
    app.command("deploy-apiserver", epilog=DEPLOY_EPILOG)(deploy_apiserver)
    app.command("deploy-lb", epilog=DEPLOY_LB_EPILOG)(deploy_lb_cmd)
    app.command("deploy-etcd", epilog=DEPLOY_ETCD_EPILOG)(deploy_etcd_cmd)
    app.command("verify", epilog=VERIFY_EPILOG)(verify_cmd)
    app.command("audit", epilog=AUDIT_EPILOG)(audit_cmd)
