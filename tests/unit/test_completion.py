"""`k8sboot completion bash|zsh|fish`: the script, sourced in a real bash, completes through the
installed entry point; a shell it does not know is a usage error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k8sboot.cli import app

EXE = Path(sys.executable).with_name("k8sboot")


def _bash_complete(line_words: list[str], cword: int) -> list[str]:
    """Source `k8sboot completion bash` in bash, then do what bash does on TAB: set COMP_WORDS and
    COMP_CWORD and call the function `complete -p k8sboot` names."""
    words = " ".join(f"'{w}'" for w in line_words)
    script = ('source <(k8sboot completion bash) || exit 9\n'
              'func=$(complete -p k8sboot | sed -E "s/.*-F ([^ ]+) .*/\\1/")\n'
              f'COMP_WORDS=({words}); COMP_CWORD={cword}\n'
              '"$func" k8sboot "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {**os.environ, "PATH": f"{EXE.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("_K8SBOOT_COMPLETE", None)
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return [w for w in r.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_script_sourced_in_bash_completes_dep_to_deploy_apiserver():
    got = _bash_complete(["k8sboot", "dep"], 1)
    assert "deploy-apiserver" in got
    assert all(w.startswith("dep") for w in got), got


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_script_completes_a_subcommand_and_an_option():
    assert _bash_complete(["k8sboot", "lab", "sta"], 2) == ["status"]
    assert "--inventory" in _bash_complete(["k8sboot", "verify", "--inv"], 2)


@pytest.mark.parametrize("shell, marks", [
    ("bash", ("complete -o default -F", "_K8SBOOT_COMPLETE=complete_bash", "COMP_CWORD")),
    ("zsh", ("#compdef k8sboot", "_K8SBOOT_COMPLETE=complete_zsh", "compdef ")),
    ("fish", ("complete --command k8sboot", "_K8SBOOT_COMPLETE=complete_fish")),
])
def test_each_shell_gets_its_script_on_stdout(shell, marks):
    res = CliRunner().invoke(app, ["completion", shell])
    assert res.exit_code == 0, res.output
    for mark in marks:
        assert mark in res.stdout


def test_an_unknown_shell_is_a_usage_error_naming_the_choices():
    res = CliRunner().invoke(app, ["completion", "tcsh"])
    assert res.exit_code == 2
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in res.output
    assert "Traceback" not in res.output


def test_an_unknown_shell_through_the_installed_entry_point_exits_2_without_a_traceback():
    r = subprocess.run([str(EXE), "completion", "powershell-9"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "is not one of 'bash', 'zsh', 'fish'" in r.stderr and "Traceback" not in r.stderr
