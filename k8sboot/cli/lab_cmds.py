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

    with _Progress(controllers + workers + int(lb)) as progress:
        result = lab.up(controllers=controllers, workers=workers, mirror=mirror, inventory=inventory,
                        boot_timeout=timeout, report=progress, lease=os.environ.get(LEASE_ENV) or None,
                        lease_holder=os.getppid(), force=force, load_balancers=int(lb),
                        apiserver_ready_delay=ready_delay)
    if as_json:
        console.json_out({
            "hosts": [h.to_dict() for h in result.hosts], "started": list(result.started),
            "kept": list(result.kept), "stopped": list(result.stopped), "rootfs": str(result.rootfs),
            "rootfs_built": result.rootfs_built, "inventory": str(result.inventory),
            "inventory_written": result.inventory_written, "seconds": round(result.seconds, 3),
            "boot_seconds": round(result.boot_seconds, 3),
            "apiserver_ready_delay": result.apiserver_ready_delay, "reconfigured": list(result.reconfigured)})
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


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
