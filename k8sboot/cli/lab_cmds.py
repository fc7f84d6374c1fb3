"""`k8sboot lab up | down | status | reset`: real controller hosts on this machine (Linux, root)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from k8sboot.cli.options import json_option

lab_app = typer.Typer(
    name="lab",
    help="A local lab of real controller hosts (systemd-nspawn, real systemd and sshd) on this "
    "machine, and inventory/lab.yaml for them. Linux and root only.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

UP_EPILOG = """\
\b
Examples:
  sudo k8sboot lab up                      # 3 controllers at 10.240.0.10-12
  sudo k8sboot lab up --controllers 1      # shrink: stops controller-1 and controller-2
  sudo k8sboot lab up -c 3 -w 1            # plus worker-0 at 10.240.0.13
  sudo k8sboot lab up --lb                 # plus lb-0 at 10.240.0.5 (HAProxy); api_endpoint = lb-0
  sudo k8sboot lab up --lb --apiserver-ready-delay 2   # the stand-in is ready 2 s after each start
  sudo k8sboot lab up                      # again without --lb: stops lb-0, removes the delay
  sudo k8sboot lab up --lb --idp           # plus idp-0 at 10.240.0.2: OIDC discovery + JWKS (nginx)
  sudo k8sboot lab up --mirror URL        # another Debian mirror (default: your apt sources)
  ssh -i /var/lib/k8sboot/lab/id_ed25519 -o UserKnownHostsFile=/run/k8sboot-lab/known_hosts root@10.240.0.10
"""


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


def _host_rows(hosts) -> list[list[str]]:
    return [[h.name, h.role, h.address, h.state, _mib(h.memory_bytes)] for h in hosts]


_STATE_STYLES = {"running": "green", "degraded": "yellow", "stopped": "red", "unreachable": "red",
                 "exited": "red", "stray": "yellow"}


class _Progress:
    """Rich progress on a terminal, plain lines otherwise (CI logs)."""

    def __init__(self, total_hosts: int):
        from k8sboot import console

        self.console = console
        self.tty = sys.stderr.isatty()
        self.total = total_hosts
        self.ready: set[str] = set()
        self.steps = 0
        self.t0 = time.monotonic()
        self.progress = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=console.progress_console(), transient=True)
            self.rootfs_task = None
            self.hosts_task = None

    def __enter__(self):
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def __call__(self, topic: str, message: str) -> None:
        if topic == "rootfs":
            self.steps += 1
            if self.progress:
                if self.rootfs_task is None:
                    self.rootfs_task = self.progress.add_task("Debian root", total=None)
                self.progress.update(self.rootfs_task, description=f"Debian root: {message[:60]}",
                                     completed=self.steps)
            elif self.steps == 1 or self.steps % 50 == 0 or not message.startswith(
                    ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")):
                self.console.info(f"lab: rootfs [{time.monotonic() - self.t0:5.1f}s] {message}")
            return
        if message.startswith("running"):
            self.ready.add(topic)
        if self.progress:
            if self.hosts_task is None:
                self.hosts_task = self.progress.add_task("hosts running", total=self.total)
            self.progress.update(self.hosts_task, completed=len(self.ready),
                                 description=f"hosts running (last: {topic} {message[:40]})")
        else:
            self.console.info(f"lab: [{time.monotonic() - self.t0:5.1f}s] {topic}: {message}")


@lab_app.command("up", epilog=UP_EPILOG)
def up_cmd(
    controllers: int = typer.Option(3, "--controllers", "-c", min=1, max=200, help="Number of controller hosts."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, max=199, help="Number of worker hosts (after the controllers)."),
    lb: bool = typer.Option(False, "--lb", help="Add the load balancer lb-0 (10.240.0.5, Debian's HAProxy with its "
                            "default config until `k8sboot deploy-lb`) and make it the inventory's api_endpoint. "
                            "Without it, a running lb-0 is stopped."),
    idp: bool = typer.Option(False, "--idp", help="Add the OIDC identity provider idp-0 (10.240.0.2, Debian's nginx "
                             "serving discovery and the JWKS over HTTPS from the lab's own idp CA; tokens: "
                             "`k8sboot lab idp token`). Without it, a running idp-0 is stopped."),
    ready_delay: float = typer.Option(0.0, "--apiserver-ready-delay", min=0, max=3600, metavar="SECONDS",
                                      help="Lab only: the kube-apiserver stand-in on every controller fails /readyz "
                                      "for this long after each start (a systemd drop-in; on running hosts it "
                                      "applies at the next restart). 0 removes it."),
    mirror: str = typer.Option(None, "--mirror", metavar="URL",
                               help="Debian mirror for the lab's root (default: this machine's apt sources)."),
    inventory: Path = typer.Option(Path("inventory/lab.yaml"), "--inventory", "-i", metavar="PATH",
                                   help="Where to write the lab's inventory."),
    timeout: float = typer.Option(90.0, "--timeout", min=1, help="Seconds to wait for each host's systemd."),
    force: bool = typer.Option(False, "--force", help="Change the lab even while another process holds a lease on it."),
    as_json: bool = json_option,
) -> None:
    """Boot the lab's hosts (idempotent; a larger count adds hosts) and write the inventory.

    With K8SBOOT_LAB_LEASE=<why> in the environment, the calling process takes a lease: until it
    exits, other processes cannot take the lab down or change it (without --force).
    """
    import os

    from k8sboot import console, lab
    from k8sboot.lab.lease import LEASE_ENV

    with _Progress(controllers + workers + int(lb) + int(idp)) as progress:
        result = lab.up(controllers=controllers, workers=workers, mirror=mirror, inventory=inventory,
                        boot_timeout=timeout, report=progress, lease=os.environ.get(LEASE_ENV) or None,
                        lease_holder=os.getppid(), force=force, load_balancers=int(lb),
                        apiserver_ready_delay=ready_delay, idp=idp)
    if as_json:
        console.json_out({
            "hosts": [h.to_dict() for h in result.hosts], "started": list(result.started),
            "kept": list(result.kept), "stopped": list(result.stopped), "rootfs": str(result.rootfs),
            "rootfs_built": result.rootfs_built, "inventory": str(result.inventory),
            "inventory_written": result.inventory_written, "seconds": round(result.seconds, 3),
            "boot_seconds": round(result.boot_seconds, 3),
            "apiserver_ready_delay": result.apiserver_ready_delay, "reconfigured": list(result.reconfigured),
            "idp": _idp_dict(result.idp) if result.idp else None})
        return
    console.table(["name", "role", "address", "state", "memory"], _host_rows(result.hosts),
                  title="k8sboot lab", styles=_STATE_STYLES)
    if result.changed_nothing:
        console.info(f"lab: already up to date ({len(result.hosts)} hosts running); {result.inventory} unchanged")
        return
    parts = [f"started {len(result.started)}", f"kept {len(result.kept)}"]
    if result.stopped:
        parts.append(f"stopped {len(result.stopped)} ({', '.join(result.stopped)})")
    if result.reconfigured:
        parts.append(f"ready delay set on {len(result.reconfigured)}")
    console.info(f"lab: {len(result.hosts)} hosts running ({', '.join(parts)}) in {result.seconds:.1f} s"
                 + (f", Debian root built: {result.rootfs}" if result.rootfs_built else ""))
    if result.apiserver_ready_delay and (result.started or result.reconfigured):
        console.info(f"lab: the controllers' kube-apiserver is ready {result.apiserver_ready_delay:g} s after each "
                     "start (lab-only drop-in; running ones take it at their next restart)")
    if "lb-0" in result.started:
        console.info(f"lab: lb-0 runs HAProxy with Debian's default config until `k8sboot deploy-lb -i {result.inventory}`")
    if result.idp and "idp-0" in result.started:
        console.info(f"lab: idp-0 serves {result.idp.issuer}/.well-known/openid-configuration (CA "
                     f"{result.idp.ca_file}); an ID token: k8sboot lab idp token --sub alice --email alice@example.com")
    console.info(f"lab: inventory {'written' if result.inventory_written else 'unchanged'}: {result.inventory}"
                 f" (try: k8sboot gen-certs -i {result.inventory})")


@lab_app.command("down")
def down_cmd(
    timeout: float = typer.Option(10.0, "--timeout", min=0, help="Seconds of orderly poweroff before SIGKILL."),
    force: bool = typer.Option(False, "--force", help="Take the lab down even while another process holds a lease on it."),
    as_json: bool = json_option,
) -> None:
    """Remove everything the lab made (processes, mounts, netns, bridge, route, cgroups, limits)."""
    import os

    from k8sboot import console, lab
    from k8sboot.lab.lease import LEASE_ENV

    # with K8SBOOT_LAB_LEASE set, the caller keeps its lease (it cycles up/down); else released
    result = lab.down(timeout=timeout, force=force, keep_lease=bool(os.environ.get(LEASE_ENV)))
    if as_json:
        console.json_out({"stopped": list(result.stopped), "removed": list(result.removed),
                          "notes": list(result.notes), "seconds": round(result.seconds, 3)})
        return
    for note in result.notes:
        console.warn(note)
    if not result.stopped and not result.removed:
        console.info("lab: nothing to remove (the lab is down)")
        return
    console.info(f"lab: down in {result.seconds:.1f} s: stopped {len(result.stopped)} hosts"
                 + (f" ({', '.join(result.stopped)})" if result.stopped else "")
                 + f", removed {len(result.removed)} items")


@lab_app.command("status")
def status_cmd(as_json: bool = json_option) -> None:
    """The lab's hosts and what their systemd says."""
    from k8sboot import console, lab

    hosts = lab.status()
    if as_json:
        console.json_out([h.to_dict() for h in hosts])
        return
    from k8sboot.lab.lease import describe

    for held in lab.leases():
        console.info(f"lab: in use by {describe(held)}")
    if not hosts:
        console.info("lab: no hosts (the lab is down); start it with `k8sboot lab up`")
        return
    console.table(["name", "role", "address", "state", "memory"], _host_rows(hosts), title="k8sboot lab",
                  styles=_STATE_STYLES)
    for h in hosts:
        if h.detail:
            console.warn(f"{h.name}: {h.detail}")


@lab_app.command("reset")
def reset_cmd(
    name: str = typer.Argument(..., metavar="NAME", help="The host, e.g. controller-0."),
    timeout: float = typer.Option(90.0, "--timeout", min=1, help="Seconds to wait for the host's systemd."),
    force: bool = typer.Option(False, "--force", help="Reset even while another process holds a lease on the lab."),
    as_json: bool = json_option,
) -> None:
    """Give one host a fresh root (its changes dropped, a new host key) and boot it again."""
    from k8sboot import console, lab

    result = lab.reset(name, boot_timeout=timeout, force=force)
    if as_json:
        console.json_out({"host": result.host.to_dict(), "seconds": round(result.seconds, 3)})
        return
    console.info(f"lab: {name} reset in {result.seconds:.1f} s ({result.host.state}, {result.host.address})")


TUTORIAL_EPILOG = """\
\b
Examples:
  make demo && make tutorial               # the lab, deployed; then the article's commands
  k8sboot lab tutorial                     # the same: each command, then what it printed
  k8sboot lab tutorial --json              # [{command, output, rc, ok}, ...]
"""


@lab_app.command("tutorial", epilog=TUTORIAL_EPILOG)
def tutorial_cmd(
    inventory: Path = typer.Option(Path("inventory/lab.yaml"), "-i", "--inventory", metavar="INV",
                                   help="The lab's inventory (written by `k8sboot lab up`)."),
    as_json: bool = json_option,
) -> None:
    """Run the tutorial's commands verbatim against the lab's controller-0 and print them with
    their output, as the article shows them (needs `make demo` first; cleans up after itself)."""
    from k8sboot import console
    from k8sboot.errors import ExitCode
    from k8sboot.lab import tutorial

    ran = tutorial.Runner(Path.cwd(), inventory, say=console.info).run()
    if as_json:
        console.json_out([r.to_dict() for r in ran])
    else:
        sys.stdout.write(tutorial.render(ran))
    failed = [r for r in ran if not r.ok]
    if failed or len(ran) < len(tutorial.steps("controller-0")):
        where = f"`{failed[0].command}` exited {failed[0].rc}" if failed else "it stopped early"
        console.error(f"tutorial: {where}", "the transcript above shows its output")
        raise typer.Exit(ExitCode.FAILURE)
    console.info(f"tutorial: {len(ran)} commands ran as the article shows them; namespace "
                 f"{tutorial.NAMESPACE} deleted")


# --- lab idp -------------------------------------------------------------------------------------

idp_app = typer.Typer(
    name="idp",
    help="The lab's OIDC identity provider idp-0 (`k8sboot lab up --idp`): mint ID tokens, show how to trust it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
lab_app.add_typer(idp_app, name="idp")

IDP_TOKEN_EPILOG = """\
\b
Examples:
  TOK=$(sudo k8sboot lab idp token --sub alice --email alice@example.com --groups dev,ops)
  sudo k8sboot lab idp token --sub bob --aud k8sboot-lab --aud other --ttl 1h
  sudo k8sboot lab idp token --sub carol --claim hd=example.com --claim 'roles=["admin"]'
  sudo k8sboot lab idp token --sub dave --expired            # exp 5 minutes ago: a verifier says 401
  sudo k8sboot lab idp token --sub erin --not-before 10m     # not valid for another 10 minutes
  sudo k8sboot lab idp token --sub alice --json              # {"token": ..., "claims": {...}}
"""


def _idp_dict(material) -> dict:
    return {"issuer": material.issuer, "address": material.address, "kid": material.kid,
            "certificate_authority_file": str(material.ca_file),
            "discovery_url": material.issuer + "/.well-known/openid-configuration",
            "jwks_uri": material.discovery["jwks_uri"]}


@idp_app.command("token", epilog=IDP_TOKEN_EPILOG)
def idp_token_cmd(
    sub: str = typer.Option(..., "--sub", metavar="SUBJECT", help="The `sub` claim."),
    email: str = typer.Option(None, "--email", metavar="EMAIL", help="The `email` claim."),
    email_verified: bool = typer.Option(None, "--email-verified/--no-email-verified",
                                        help="The `email_verified` claim (default: true when --email is given)."),
    groups: str = typer.Option(None, "--groups", metavar="A,B", help="The `groups` claim, a list (comma-separated; "
                               "'' for an empty list)."),
    audiences: list[str] = typer.Option(None, "--aud", metavar="AUD",
                                        help="An audience; repeat for several (default: k8sboot-lab)."),
    claims: list[str] = typer.Option(None, "--claim", metavar="KEY=VALUE",
                                     help="Any claim; VALUE as JSON when it parses (3, true, [\"a\"], {...}), else a "
                                     "string. Repeatable; wins over the options above."),
    ttl: str = typer.Option("10m", "--ttl", metavar="DURATION", help="Lifetime from iat/nbf: 90s, 10m, 1h, 1d."),
    not_before: str = typer.Option(None, "--not-before", metavar="WHEN",
                                   help="The `nbf` claim: a duration from now (10m; -5m for the past), Unix "
                                   "seconds or an RFC 3339 time (default: now)."),
    expired: bool = typer.Option(False, "--expired", help="A token that expired 5 minutes ago."),
    issuer: str = typer.Option(None, "--issuer", metavar="URL", help="The `iss` claim (default: the idp's, "
                               "https://10.240.0.2)."),
    as_json: bool = json_option,
) -> None:
    """Mint an RS256 ID token signed with idp-0's key (header kid = its JWKS kid); prints only the token."""
    import datetime as dt

    from k8sboot import console
    from k8sboot.lab import idp, plan
    from k8sboot.tokens import parse_duration

    now = dt.datetime.now(dt.timezone.utc)
    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--ttl'") from None
    try:
        nbf = idp.parse_time(not_before, now) if not_before is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--not-before'") from None
    extra = {}
    for text in claims or ():
        try:
            key, value = idp.parse_claim(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--claim'") from None
        extra[key] = value
    group_list = None if groups is None else [g.strip() for g in groups.split(",") if g.strip()]
    host = idp.require_lab_idp()
    try:
        body = idp.build_claims(sub, audiences=tuple(audiences or (plan.IDP_AUDIENCE,)), email=email,
                                email_verified=email_verified, groups=group_list, claims=extra, ttl=lifetime,
                                not_before=nbf, expired=expired, issuer=issuer or plan.idp_issuer(host), now=now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    token = idp.sign(body, plan.IDP_DIR)
    if as_json:
        console.json_out({"token": token, "claims": body})
    else:
        console.data(token)


@idp_app.command("show")
def idp_show_cmd(as_json: bool = json_option) -> None:
    """The idp's issuer URL, CA file and JWKS kid, and the inventory section that trusts it."""
    from k8sboot import console
    from k8sboot.lab import idp, plan

    host = idp.require_lab_idp()
    issuer = plan.idp_issuer(host)
    ca = plan.IDP_DIR / idp.CA_FILE
    kid = idp.kid(plan.IDP_DIR)
    snippet = plan.render_idp_authentication(issuer, ca)
    if as_json:
        console.json_out({"issuer": issuer, "address": host.address, "certificate_authority_file": str(ca),
                          "kid": kid, "discovery_url": issuer + idp.DISCOVERY_PATH,
                          "jwks_uri": issuer + idp.JWKS_PATH, "inventory": snippet})
        return
    console.data(f"issuer:         {issuer}\n"
                 f"discovery:      {issuer}{idp.DISCOVERY_PATH}\n"
                 f"jwks_uri:       {issuer}{idp.JWKS_PATH}\n"
                 f"CA file:        {ca}\n"
                 f"JWKS kid:       {kid}\n"
                 f"\n# inventory (paste at the top level):\n{snippet}")


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
