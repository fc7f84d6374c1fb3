"""Files written under a user-supplied path never follow a symbolic link out of the PKI dir.

gen-certs writes only regular files inside pki.dir (a link there is refused when read, before
anything is written, and rename(2) would replace a link rather than write through it);
`kubeconfig admin --out` refuses a link as its target. A hard link is never written through
either: every file is replaced by rename, so another name of the old inode keeps its bytes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from certs_helpers import openssl
from typer.testing import CliRunner

from k8sboot import console
from k8sboot.cli import app
from k8sboot.errors import ExitCode


@pytest.fixture(autouse=True)
def _fresh_console(monkeypatch):
    monkeypatch.setattr(console, "_stdout_console", None)
    monkeypatch.setattr(console, "_stderr_console", None)


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def workspace(generated_pki, inventory_file, tmp_path) -> Path:
    assert run("gen-certs").exit_code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    return tmp_path


def no_temp_files(*dirs: Path) -> bool:
    return not any(n.endswith(".tmp") for d in dirs for n in os.listdir(d))


@pytest.mark.parametrize("name", ["admin-key.pem", "admin.pem", "ca-key.pem", "encryption-config.yaml"])
def test_renewing_through_a_link_out_of_the_pki_dir_is_refused_and_the_target_kept(workspace, name):
    pki, outside = workspace / "pki", workspace / "outside"
    target = outside / name
    target.write_bytes((pki / name).read_bytes())
    (pki / name).unlink()
    (pki / name).symlink_to(target)
    before = target.read_bytes()
    for args in (["gen-certs", "--renew", "admin"], ["gen-certs", "--force-new-ca"], ["gen-certs"]):
        result = run(*args)
        assert result.exit_code == ExitCode.PKI, (args, result.output)
        assert f"reading pki/{name}: it is a symbolic link to {target}, outside pki" in result.stderr
    assert target.read_bytes() == before
    assert (pki / name).is_symlink() and no_temp_files(pki, outside)


def test_a_link_replaced_by_the_file_it_pointed_to_works_again(workspace):
    pki, outside = workspace / "pki", workspace / "outside"
    (outside / "admin.pem").write_bytes((pki / "admin.pem").read_bytes())
    (pki / "admin.pem").unlink()
    (pki / "admin.pem").symlink_to(outside / "admin.pem")
    result = run("certs", "list")
    assert result.exit_code == ExitCode.PKI
    hint = result.stderr.split("hint: replace the link with a copy of the file it points to (", 1)[1]
    subprocess.run(hint.split("), or remove it", 1)[0], shell=True, check=True)   # as the hint says
    assert not (pki / "admin.pem").is_symlink()
    assert run("certs", "list").exit_code == 0


def test_a_hard_link_to_a_key_elsewhere_is_never_written_through(workspace):
    pki, outside = workspace / "pki", workspace / "outside"
    os.link(pki / "admin-key.pem", outside / "admin-key.pem")
    before = (outside / "admin-key.pem").read_bytes()
    assert run("gen-certs", "--renew", "admin").exit_code == 0
    assert (outside / "admin-key.pem").read_bytes() == before, "the other name keeps the old key"
    assert (pki / "admin-key.pem").read_bytes() != before
    assert os.stat(pki / "admin-key.pem").st_nlink == 1


def test_a_symlinked_pki_dir_is_the_users_choice_and_gets_regular_files(inventory_file, tmp_path):
    real = tmp_path / "vault" / "pki"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "pki").symlink_to(real)
    assert run("gen-certs").exit_code == 0
    assert (tmp_path / "pki").is_symlink()
    assert all(p.is_file() and not p.is_symlink() for p in real.iterdir())
    assert openssl("verify", "-CAfile", "pki/ca.pem", "pki/admin.pem").returncode == 0


@pytest.mark.parametrize("link_to", ["file", "dangling", "pki-key"])
def test_kubeconfig_out_that_is_a_symlink_is_refused_and_nothing_is_written(workspace, link_to):
    pki, outside = workspace / "pki", workspace / "outside"
    target = {"file": outside / "kubeconfig", "dangling": outside / "nothing-here",
              "pki-key": pki / "ca-key.pem"}[link_to]
    if link_to == "file":
        target.write_bytes(b"precious\n")
    before = target.read_bytes() if target.exists() else None
    (workspace / "admin.kubeconfig").symlink_to(target)
    result = run("kubeconfig", "admin")
    assert result.exit_code == ExitCode.PKI, result.output
    assert "admin.kubeconfig: it is a symbolic link; refusing to write through it" in result.stderr
    assert (target.read_bytes() if target.exists() else None) == before
    assert no_temp_files(workspace, outside, pki)


def test_kubeconfig_out_over_a_hard_link_replaces_only_its_own_name(workspace):
    other = workspace / "outside" / "shared.kubeconfig"
    other.write_bytes(b"someone else's kubeconfig\n")
    os.link(other, workspace / "admin.kubeconfig")
    assert run("kubeconfig", "admin").exit_code == 0
    assert other.read_bytes() == b"someone else's kubeconfig\n"
    assert b"client-key-data" in (workspace / "admin.kubeconfig").read_bytes()
    assert os.stat(workspace / "admin.kubeconfig").st_mode & 0o777 == 0o600


def test_token_create_does_not_sign_with_a_key_linked_from_outside_the_pki_dir(workspace):
    pki, outside = workspace / "pki", workspace / "outside"
    (pki / "service-account-key.pem").rename(outside / "sa-key.pem")
    (pki / "service-account-key.pem").symlink_to(outside / "sa-key.pem")
    result = run("token", "create", "--service-account", "bot")
    assert result.exit_code == ExitCode.PKI and result.stdout == ""
    assert "reading pki/service-account-key.pem: it is a symbolic link to" in result.stderr
