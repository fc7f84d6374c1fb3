"""`k8sboot rotate service-account-key|issuer PHASE`, `rotate status`: trust roots replaced
without locking anyone out. Thin shell over `k8sboot.rotation_steps` and the rolling deploy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from k8sboot.cli.options import inventory_option, json_option

ROTATE_EPILOG = """\
\b
Examples:
  k8sboot rotate status -i inventory/cluster.yaml
  k8sboot rotate service-account-key start      # new key pair; every controller trusts both
  k8sboot rotate service-account-key switch     # the new key signs; both still trusted
  k8sboot rotate service-account-key finish     # the old key is dropped (after old tokens expired)
  k8sboot rotate issuer start --to https://k8s.example.com:6443
  k8sboot rotate issuer switch
  k8sboot rotate issuer finish                  # after setting cluster.service_account_issuer to it
  k8sboot rotate ca start                       # new CAs; every trust store trusts old + new
  k8sboot rotate ca reissue                     # every leaf re-signed by the new CAs
  k8sboot rotate ca finish                      # the old CAs no longer trusted
\b
Each phase shows what it changes and who would be locked out, asks on a terminal (--yes for
scripts), writes the PKI dir and pki/rotation.yaml in one atomic step, then runs a rolling,
health-gated deploy-apiserver (--no-deploy: you run it). Re-running a phase resumes it: an
interrupted run ends in the same state. One rotation at a time.
"""

phase_argument = typer.Argument(..., metavar="PHASE", help="start | switch | finish")
yes_option = typer.Option(False, "--yes", "-y", help="Do not ask (scripts); accepted by every phase.")
dry_run_option = typer.Option(False, "--dry-run", help="Show what the phase would change; change nothing.")
force_option = typer.Option(False, "--force", help="finish: drop the old root before every token it signed "
                            "has expired (those tokens get 401; the command says which).")
no_deploy_option = typer.Option(False, "--no-deploy", help="Change the local PKI and the journal only; run "
                                "deploy-apiserver yourself, then this phase again to record it.")
host_keys_option = typer.Option(False, "--accept-new-host-keys", help="Trust unknown host keys on first use.")
ready_timeout_option = typer.Option(120.0, "--ready-timeout", metavar="SECONDS",
                                    help="How long a restarted controller may take to turn ready.")
no_etcd_check_option = typer.Option(False, "--no-etcd-check", help="As deploy-apiserver's.")
max_unavailable_option = typer.Option(1, "--max-unavailable", min=1, metavar="N",
                                      help="Controllers a rolling wave restarts at once (etcd members are "
                                           "always restarted one at a time).")


def service_account_key(phase: str = phase_argument, inventory: Path = inventory_option, yes: bool = yes_option,
                        dry_run: bool = dry_run_option, force: bool = force_option,
                        no_deploy: bool = no_deploy_option, accept_new_host_keys: bool = host_keys_option,
                        ready_timeout: float = ready_timeout_option, no_etcd_check: bool = no_etcd_check_option,
                        max_unavailable: int = max_unavailable_option, json_: bool = json_option) -> None:
    """Rotate the ServiceAccount signing key: start | switch | finish."""
    run_phase("service-account-key", phase, inventory, to=None, yes=yes, dry_run=dry_run, force=force,
              no_deploy=no_deploy, accept_new_host_keys=accept_new_host_keys, ready_timeout=ready_timeout,
              etcd_check=not no_etcd_check, max_unavailable=max_unavailable, json_=json_)


def issuer(phase: str = phase_argument, inventory: Path = inventory_option,
           to: Optional[str] = typer.Option(None, "--to", metavar="URL", help="start: the new issuer (https URL)."),
           yes: bool = yes_option, dry_run: bool = dry_run_option, force: bool = force_option,
           no_deploy: bool = no_deploy_option, accept_new_host_keys: bool = host_keys_option,
           ready_timeout: float = ready_timeout_option, no_etcd_check: bool = no_etcd_check_option,
           max_unavailable: int = max_unavailable_option, json_: bool = json_option) -> None:
    """Rotate --service-account-issuer: start --to URL | switch | finish."""
    run_phase("issuer", phase, inventory, to=to, yes=yes, dry_run=dry_run, force=force, no_deploy=no_deploy,
              accept_new_host_keys=accept_new_host_keys, ready_timeout=ready_timeout,
              etcd_check=not no_etcd_check, max_unavailable=max_unavailable, json_=json_)


def run_phase(kind: str, phase: str, inventory: Path, *, to: str | None, yes: bool, dry_run: bool, force: bool,
              no_deploy: bool, accept_new_host_keys: bool, ready_timeout: float, etcd_check: bool,
              json_: bool, max_unavailable: int = 1) -> None:
    from datetime import datetime, timezone

    from k8sboot import console, rotation, rotation_steps
    from k8sboot.errors import ExitCode, K8sbootError
    from k8sboot.inventory import load_inventory
    from k8sboot.store import finish_interrupted_write, pki_lock

    phases = rotation.PHASES[kind]
    if phase not in phases:
        raise K8sbootError(f"rotate {kind}: unknown phase {phase!r}", hint=f"phases, in order: {', '.join(phases)}",
                           code=ExitCode.USAGE)
    inv = load_inventory(inventory)
    pki_dir = Path(inv.pki.dir)
    with pki_lock(pki_dir):
        if not dry_run:
            finish_interrupted_write(pki_dir)
            inv = load_inventory(inventory)
        now = datetime.now(timezone.utc)
        plan = rotation_steps.plan_phase(inv, kind, phase, now=now, to=to, force=force)
        if not json_ or dry_run:
            _show(console, plan, json_)      # --json: one document on stdout, at the end
        if dry_run:
            if not json_:
                console.info("--dry-run: nothing was changed")
            return
        if not plan.resumed or plan.forced:
            _confirm(console, plan, yes)
        rotation_steps.write_local(inv, plan)
        inv = load_inventory(inventory)                  # now with this phase's journal
        if no_deploy:
            console.info(f"phase {phase} written ({pki_dir / rotation.JOURNAL_FILE}: prepared); deploy with: "
                         f"k8sboot deploy-apiserver -i {inventory}, then run `k8sboot rotate {kind} {phase}` "
                         "again to record it")
            if json_:
                console.json_out({**plan.to_json(), "deploy": None})
            return
        code, deployed_all = _deploy(inv, kind, accept_new_host_keys=accept_new_host_keys,
                                     ready_timeout=ready_timeout, etcd_check=etcd_check, json_=json_,
                                     max_unavailable=max_unavailable)
        if not deployed_all:
            if json_:
                console.json_out({**plan.to_json(), "deploy": {"ok": False, "exit_code": int(code)}})
            raise K8sbootError(f"phase {phase} of the {kind} rotation is prepared but not on every controller",
                               hint=f"fix what the deploy reported, then run `k8sboot rotate {kind} {phase}` again "
                                    "(it resumes)", code=code or ExitCode.DEPLOY)
        done = rotation_steps.mark_deployed(inv, inv.rotation, datetime.now(timezone.utc))
        closed = None
        if phase == "finish":
            closed = rotation_steps.close(inv, plan, datetime.now(timezone.utc))
        if json_:
            console.json_out({**plan.to_json(), "journal": {"phase": done.phase, "state": done.state},
                              "deploy": {"ok": True, "exit_code": 0}, "finished": str(closed) if closed else None})
        if closed:
            console.info(f"the {kind} rotation is finished; its journal is kept as {closed}")
        else:
            console.info(f"phase {phase} is on every controller; next: {rotation_steps.next_step(done)}"
                         + _when_finish(inv, done))


def _when_finish(inv, journal) -> str:
    from k8sboot import rotation, rotation_steps

    if rotation_steps._next_phase(journal) != "finish":
        return ""
    lifetime = rotation_steps._lifetime(inv)
    at = rotation.finish_not_before(journal, lifetime)
    return f" (not before {rotation_steps._iso(at)}, when every token signed the old way has expired)" if at else ""


def _deploy(inv, kind: str, *, accept_new_host_keys: bool, ready_timeout: float, etcd_check: bool, json_: bool,
            max_unavailable: int = 1):
    """The phase's rolling deploys. A CA phase changes etcd's trust and certs too: etcd first (its
    members trust the new CA before any client cert of it exists; at reissue they present new certs
    that the API servers already trust), then kube-apiserver, then the load balancers. The first
    that does not end well stops the rest. -> (its exit code, whether every controller got the phase)."""
    import dataclasses

    from k8sboot import console
    from k8sboot.cli.deploy_cmds import _print_deploy_report, _ProgressView
    from k8sboot.deploy import DeployOptions, deploy, deploy_etcd, deploy_lb
    from k8sboot.rotation import CA

    options = DeployOptions(accept_new_host_keys=accept_new_host_keys, ready_timeout=ready_timeout,
                            etcd_check=etcd_check, max_unavailable=max_unavailable)
    steps = [("deploy-apiserver", deploy)]
    if kind == CA:
        steps = [("deploy-etcd", deploy_etcd), *steps] + ([("deploy-lb", deploy_lb)] if inv.load_balancers else [])
    controllers = {h.name for h in inv.controllers}
    # etcd one member at a time, whatever --max-unavailable says: a wave that takes the leader leaves
    # every API server's /readyz failing its etcd check until a new leader is elected (bench/rotate:
    # waves of 3 of 10 members left no controller ready for 3.5 s; one at a time, never fewer than 9)
    etcd_options = dataclasses.replace(options, max_unavailable=1)
    for command, run in steps:
        with _ProgressView(console, enabled=True) as view:
            if run is deploy_lb:
                report = run(inv, options, progress=view.update)
            else:
                report = run(inv, etcd_options if run is deploy_etcd else options, progress=view.update,
                             warn=lambda m: console.warn(m))
        if not json_:
            _print_deploy_report(console, report, False, command)
        code = report.exit_code()
        if code:
            return code, False
        if run is deploy and not {r.host for r in report.results} >= controllers:
            return code, False
    return 0, True


def _show(console, plan, as_json: bool) -> None:
    if as_json:
        console.json_out(plan.to_json())
        return
    rows = [("changes", line) for line in plan.changes]
    rows += [("retired", f"{f.name} (pki/retired/, 0600)") for f in plan.retired]
    rows += [("locked out", line) for line in plan.breaks] or [("locked out", "nobody: every credential "
                                                                "that works now keeps working")]
    rows += [("--force", line) for line in plan.forced]
    console.table(("", "rotate " + plan.kind + " " + plan.phase + (" (re-run)" if plan.resumed else "")), rows,
                  styles={"locked out": "yellow"})


def _confirm(console, plan, yes: bool) -> None:
    from k8sboot.errors import ExitCode, K8sbootError

    if yes:
        return
    if not sys.stdin.isatty():
        raise K8sbootError(f"rotate {plan.kind} {plan.phase}: not asked on a terminal",
                           hint="pass --yes to proceed (or --dry-run to only see the changes)", code=ExitCode.USAGE)
    if not typer.confirm(f"Proceed with rotate {plan.kind} {plan.phase}?", default=False, err=True):
        raise K8sbootError("rotate: not confirmed; nothing was changed", code=ExitCode.USAGE)


def status(inventory: Path = inventory_option, json_: bool = json_option) -> None:
    """Where the rotation in progress stands, and the next step."""
    from k8sboot import console, rotation, rotation_steps
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    journal = inv.rotation
    last = rotation_steps.last_finished(Path(inv.pki.dir))
    if journal is None:
        if json_:
            console.json_out({"in_progress": None, "last_finished": _journal_json(last) if last else None})
            return
        console.info("no rotation in progress" + (f"; the last, {last.kind}, finished {rotation_steps._iso(last.updated)}"
                                                  if last else ""))
        return
    finish_at = rotation.finish_not_before(journal, rotation_steps._lifetime(inv))
    if json_:
        console.json_out({"in_progress": {**_journal_json(journal), "next": rotation_steps.next_step(journal),
                                          "finish_not_before": rotation_steps._iso(finish_at) if finish_at else None},
                          "last_finished": _journal_json(last) if last else None})
        return
    rows = [("kind", journal.kind), ("phase", f"{journal.phase} ({journal.state})"),
            ("phases", " → ".join(journal.phases)), ("started", rotation_steps._iso(journal.started)),
            ("updated", rotation_steps._iso(journal.updated)), ("old", journal.old), ("new", journal.new)]
    if journal.name:
        rows.append(("new pair", f"{layout_names(journal.name)}"))
    if finish_at is not None:
        rows.append(("finish not before", rotation_steps._iso(finish_at)))
    rows.append(("next", rotation_steps.next_step(journal)))
    console.table(("", f"rotation in progress ({Path(inv.pki.dir) / rotation.JOURNAL_FILE})"), rows)


def layout_names(name: str) -> str:
    from k8sboot import layout

    return f"{layout.cert_file(name)} / {layout.key_file(name)}"


def _journal_json(j) -> dict:
    from k8sboot import rotation_steps

    return {"kind": j.kind, "phase": j.phase, "state": j.state, "started": rotation_steps._iso(j.started),
            "updated": rotation_steps._iso(j.updated), "old": j.old, "new": j.new, "name": j.name or None,
            "signing_stopped": rotation_steps._iso(j.signing_stopped) if j.signing_stopped else None}


def ca(phase: str = typer.Argument(..., metavar="PHASE", help="start | reissue | finish"),
       inventory: Path = inventory_option, yes: bool = yes_option, dry_run: bool = dry_run_option,
       no_deploy: bool = no_deploy_option, accept_new_host_keys: bool = host_keys_option,
       ready_timeout: float = ready_timeout_option, no_etcd_check: bool = no_etcd_check_option,
       max_unavailable: int = max_unavailable_option, json_: bool = json_option) -> None:
    """Rotate the cluster CA and etcd's CA: start | reissue | finish."""
    run_phase("ca", phase, inventory, to=None, yes=yes, dry_run=dry_run, force=False, no_deploy=no_deploy,
              accept_new_host_keys=accept_new_host_keys, ready_timeout=ready_timeout,
              etcd_check=not no_etcd_check, max_unavailable=max_unavailable, json_=json_)


rotate_app = typer.Typer(help="Replace a trust root (service-account key, issuer, CA) without locking anyone out.",
                         epilog=ROTATE_EPILOG, no_args_is_help=True, rich_markup_mode=None)
rotate_app.command("service-account-key", epilog=ROTATE_EPILOG)(service_account_key)
rotate_app.command("issuer", epilog=ROTATE_EPILOG)(issuer)
rotate_app.command("ca", epilog=ROTATE_EPILOG)(ca)
rotate_app.command("status", help="Where the rotation in progress stands, and the next step.")(status)


def register(app: typer.Typer) -> None:
    app.add_typer(rotate_app, name="rotate")
