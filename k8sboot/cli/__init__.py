"""The root Typer app: one small Typer per command group, registered here.

The error boundary lives in `K8sbootGroup.invoke`: a `K8sbootError` becomes one line on stderr
and its exit code; Ctrl-C and SIGTERM become "interrupted" with 130/143; `--debug` re-raises.
Command modules import heavy libraries inside their functions so `--help` starts fast.
"""

from __future__ import annotations

import os
import signal
import sys

import typer
from typer.core import TyperGroup

from k8sboot import __version__
from k8sboot.errors import ExitCode, Interrupted, K8sbootError

EPILOG = """\
\b
Examples:
  k8sboot gen-certs -i inventory/cluster.yaml        # the whole PKI in pki/
  k8sboot whoami --cert pki/admin.pem                # who the API server says you are
  k8sboot can-i --cert pki/admin.pem list pods       # what RBAC lets you do
  k8sboot lab up --controllers 3                     # real controller hosts on this machine
  k8sboot deploy-apiserver --inventory inventory/lab.yaml
  k8sboot verify -i inventory/lab.yaml --host controller-0
"""

_debug = False


class K8sbootGroup(TyperGroup):
    """Translates our errors and signals into one clear line and a distinct exit code."""

    def invoke(self, ctx):
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            raise Interrupted(signum)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread (e.g. under a test runner's thread)
            previous = None
        try:
            return super().invoke(ctx)
        except K8sbootError as exc:
            if _debug:
                raise
            from k8sboot import console

            console.error(exc.message, exc.hint)
            raise typer.Exit(int(exc.code)) from None
        except KeyboardInterrupt:
            if _debug:
                raise
            from k8sboot import console

            console.error("interrupted by SIGINT")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


app = typer.Typer(
    cls=K8sbootGroup,
    name="k8sboot",
    help="Bootstrap a self-hosted Kubernetes control plane the hard way: PKI, kube-apiserver "
    "units over SSH, proof of what runs, and who the API server says you are.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,   # locals can hold private keys
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"k8sboot {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    global _debug
    _debug = debug


def _register() -> None:
    from k8sboot.cli import (auth_cmds, completion_cmds, deploy_cmds, inventory_cmds, lab_cmds, pki_cmds,
                             rbac_cmds, rotate_cmds)

    for module in (pki_cmds, auth_cmds, rbac_cmds, deploy_cmds, rotate_cmds, lab_cmds, inventory_cmds,
                   completion_cmds):
        module.register(app)


_register()


def main() -> None:
    def on_sigterm(signum, frame):      # from the start: SIGTERM while parsing is "interrupted" too
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    from k8sboot.cli import completion_cmds

    completion_cmds.enable_if_asked(os.environ)     # a completion script calling back; else nothing
    try:
        app()
        code = 0
    except SystemExit as exc:    # how the app ends, with its code
        code = _exit_code(exc)
    except K8sbootError as exc:  # raised outside a command, or re-raised by --debug
        if _debug:
            raise                # --debug: the traceback (typer prints it, without locals)
        from k8sboot import console

        console.error(exc.message, exc.hint)
        code = int(exc.code)
    _leave(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    from k8sboot import console

    console.info(str(exc.code))           # sys.exit("message"): said on stderr, as Python would
    return 1


def _leave(code: int) -> None:
    """Flush and end the process without the interpreter's teardown, which costs ~130 ms once
    Fabric, paramiko and cryptography are loaded (measured on a deploy). Nothing is lost: every
    file k8sboot writes is closed (and fsynced) before its command returns, and host threads still
    winding down after an error hold nothing to save."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):    # a closed pipe: nothing more can be said there
            pass
    os._exit(code)
