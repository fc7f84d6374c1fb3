"""The shape STYLE.md asks for, kept true by walking the imports: a pure core, thin effect
modules, one printer, and a fast `--help` that loads no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "k8sboot"

# Pure core: no printing, no SSH, no subprocess, no terminal UI.
PURE = ["model", "layout", "errors", "pki", "authn", "flags", "plan", "audit", "kubeconfig", "tokens", "rollout",
        "lb", "etcd"]
EFFECTS = {"fabric", "paramiko", "invoke", "subprocess", "rich", "typer", "k8sboot.console",
           "k8sboot.store", "k8sboot.remote", "k8sboot.lab"}
# The only importers of the SSH stack.
SSH_MODULES = {"fabric", "paramiko", "invoke"}
SSH_ALLOWED = {"remote.py"}
# Printing happens in console.py (the stand-in writes its journal lines to stderr, never print()).
PRINT_ALLOWED = {"console.py"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def all_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("name", [n for n in PURE if (PKG / f"{n}.py").exists()])
def test_pure_core_module_has_no_effects(name):
    found = imports_of(PKG / f"{name}.py")
    bad = sorted(i for i in found if any(i == e or i.startswith(e + ".") for e in EFFECTS))
    assert bad == [], f"k8sboot/{name}.py imports {bad}"


def test_only_remote_imports_the_ssh_stack():
    offenders = []
    for path in all_modules():
        if path.name in SSH_ALLOWED:
            continue
        found = imports_of(path)
        if any(i.split(".")[0] in SSH_MODULES for i in found):
            offenders.append(str(path.relative_to(PKG)))
    assert offenders == []


def test_only_console_prints():
    offenders = []
    for path in all_modules():
        if path.name in PRINT_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert offenders == []


def test_authn_runs_on_a_lab_host_with_only_stdlib_cryptography_jwt_and_cel():
    # Debian's python3-cryptography and python3-jwt, and the CEL library the lab copies into its
    # root from the venv (k8sboot/lab: the stand-in's JWT authenticators); nothing else, not yaml
    imports = {i for path in (PKG / "authn").glob("*.py") for i in imports_of(path)}
    roots = {i.split(".")[0] for i in imports if not i.startswith("k8sboot.authn")}
    assert roots - set(sys.stdlib_module_names) <= {"cryptography", "jwt", "cel_expr_python"}


def test_help_loads_no_heavy_library():
    code = (
        "import sys\n"
        "from k8sboot.cli import app\n"
        "try:\n    app(['--help'], prog_name='k8sboot')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('cryptography', 'fabric', 'paramiko', 'jinja2', 'yaml', 'jwt') if m in sys.modules]\n"
        "sys.stderr.write(repr(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "[]"


def test_test_files_have_unique_basenames():
    """tests/ has no __init__.py, so pytest imports test files by basename: two alike break collection."""
    tests = PKG.parent / "tests"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
