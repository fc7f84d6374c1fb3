"""`k8sboot completion bash|zsh|fish`: the shell completion script, as kubectl and kubeadm print it.

The script calls `k8sboot` back with `_K8SBOOT_COMPLETE=complete_<shell>` and the words typed
(Typer's protocol: COMP_WORDS/COMP_CWORD for bash, _TYPER_COMPLETE_ARGS for zsh and fish); `main`
then loads Typer's completion classes, and only then, so start-up without that variable pays
nothing for completion.
"""

from __future__ import annotations

from enum import Enum

import typer

PROG = "k8sboot"
COMPLETE_VAR = "_K8SBOOT_COMPLETE"


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


EPILOG = """\
\b
Examples:
  source <(k8sboot completion bash)                                # this bash session
  k8sboot completion bash > /etc/bash_completion.d/k8sboot         # every bash session
  source <(k8sboot completion zsh)                                 # zsh, after compinit
  k8sboot completion zsh > "${fpath[1]}/_k8sboot"                  # zsh, every session
  k8sboot completion fish > ~/.config/fish/completions/k8sboot.fish
"""


def completion(shell: Shell = typer.Argument(..., metavar="bash|zsh|fish", help="The shell the script is for.")) -> None:
    """Print the shell completion script for k8sboot's commands and options (stdout)."""
    from typer.completion import get_completion_script

    from k8sboot import console

    console.data(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value))


def enable_if_asked(environ) -> None:
    """When a completion script calls back (COMPLETE_VAR set), register Typer's completion
    classes, which answer in the form its scripts read."""
    if environ.get(COMPLETE_VAR):
        from typer.completion import completion_init

        completion_init()


def register(app: typer.Typer) -> None:
    app.command("completion", epilog=EPILOG)(completion)
