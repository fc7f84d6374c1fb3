"""The PKI commands as a user runs them: gen-certs, certs list/check-expiration, kubeconfig admin.

Each test runs in its own working directory holding a copy of inventory/cluster.yaml, so
`pki.dir: pki` lands in tmp_path. Every user error: its exit code, one line, no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from certs_helpers import edit_inventory, load_cert, openssl, snapshot
from typer.testing import CliRunner

from k8sboot import console, store
from k8sboot.cli import app
from k8sboot.errors import ExitCode

ETCD_LEAF_FILES = ["etcd-server.pem", "etcd-peer.pem", "apiserver-etcd-client.pem", "etcd-healthcheck-client.pem"]
LEAF_FILES = ["admin.pem", "kubernetes.pem", "kube-apiserver-kubelet-client.pem",
              "kube-controller-manager.pem", "kube-scheduler.pem", "kube-proxy.pem", "k8sboot-health.pem",
              *ETCD_LEAF_FILES, "worker-0.pem"]
# etcd's CA is listed right before the certs it signs
CLUSTER_LEAF_FILES = [n for n in LEAF_FILES if n not in ETCD_LEAF_FILES]
ALL_ROWS = ["ca.pem", *LEAF_FILES[:7], "etcd-ca.pem", *LEAF_FILES[7:], "service-account.pem", "encryption-config.yaml"]

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_console(monkeypatch):
    """console.py caches its rich Consoles; a fresh one per test reads COLUMNS=300 (no folding)."""
    monkeypatch.setattr(console, "_stdout_console", None)
    monkeypatch.setattr(console, "_stderr_console", None)


def run(*args: str):
    result = runner.invoke(app, list(args), env={"COLUMNS": "300"})   # no folding in tables
    assert "Traceback" not in result.output, result.output
    return result


def gen_json(*args: str) -> dict:
    result = run("gen-certs", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def actions(doc: dict) -> dict[str, str]:
    return {f["file"]: f["action"] for f in doc["files"]}


@pytest.fixture
def pki_dir(inventory_file) -> Path:
    """A fresh PKI made by `k8sboot gen-certs` in the test's working directory."""
    result = run("gen-certs")
    assert result.exit_code == 0, result.output
    return Path("pki")


@pytest.fixture
def existing_pki(inventory_file, generated_pki, in_tmp_cwd) -> Path:
    """The session's rsa-2048 PKI, copied to ./pki by `generated_pki` (faster than generating)."""
    assert generated_pki.dir == in_tmp_cwd / "pki"
    return Path("pki")


# --- gen-certs -------------------------------------------------------------------------------


def test_gen_certs_creates_every_file_and_ends_with_a_table(inventory_file):
    result = run("gen-certs")
    assert result.exit_code == 0, result.output
    for header in ("file", "subject", "SANs", "not after", "action"):
        assert header in result.stdout
    for name in ALL_ROWS:
        assert name in result.stdout
    assert result.stdout.count("created") == len(ALL_ROWS)
    assert f"pki/: {len(ALL_ROWS)} created; CA valid until" in result.stderr
    assert "PRIVATE KEY" not in result.output


def test_gen_certs_json_lists_file_subject_sans_not_after_and_action(inventory_file):
    doc = gen_json()
    assert [f["file"] for f in doc["files"]] == ALL_ROWS
    admin = doc["files"][1]
    assert admin["subject"] == "C=VN, O=system:masters, OU=k8s-scratch, CN=admin"
    assert admin["key_file"] == "admin-key.pem" and admin["action"] == "created"
    assert admin["not_after"].startswith(str(load_cert(Path("pki/admin.pem")).not_valid_after_utc.year))
    assert "IP:10.32.0.1" in doc["files"][2]["sans"]


def test_a_second_run_changes_no_byte_and_reports_unchanged_for_each(pki_dir):
    before = snapshot(pki_dir)
    doc = gen_json()
    assert set(actions(doc).values()) == {"unchanged"}
    assert snapshot(pki_dir) == before, "bytes, modes and mtimes are all unchanged"
    result = run("gen-certs")
    assert "already up to date" in result.stderr


def test_gen_certs_output_passes_openssl_checks(pki_dir):
    out = openssl("x509", "-in", "pki/admin.pem", "-noout", "-subject")
    assert out.stdout == "subject=C = VN, O = system:masters, OU = k8s-scratch, CN = admin\n"
    out = openssl("verify", "-CAfile", "pki/ca.pem", *(f"pki/{n}" for n in CLUSTER_LEAF_FILES))
    assert out.returncode == 0 and out.stdout.count(": OK") == len(CLUSTER_LEAF_FILES), out.stdout + out.stderr
    out = openssl("verify", "-CAfile", "pki/etcd-ca.pem", *(f"pki/{n}" for n in ETCD_LEAF_FILES))
    assert out.returncode == 0 and out.stdout.count(": OK") == len(ETCD_LEAF_FILES), out.stdout + out.stderr


def test_modes_of_every_file_and_the_dir(pki_dir):
    assert store.file_mode(pki_dir) == 0o700
    for p in pki_dir.iterdir():
        secret = p.name.endswith("-key.pem") or p.name == "encryption-config.yaml"
        assert store.file_mode(p) == (0o600 if secret else 0o644), p.name


def test_adding_a_controller_reissues_the_apiserver_cert_with_the_new_sans(existing_pki, inventory_file):
    before = snapshot(existing_pki)
    edit_inventory(inventory_file, "workers:",
                   "  - {name: controller-3, address: 10.0.1.13, internal_ip: 10.0.1.13}\nworkers:")
    result = run("gen-certs")
    assert result.exit_code == 0, result.output
    assert "reissued (SANs changed: +DNS:controller-3 +IP:10.0.1.13)" in " ".join(result.stdout.split())
    after = snapshot(existing_pki)
    changed = sorted(n for n in after if after[n] != before.get(n))
    assert changed == ["etcd-peer-key.pem", "etcd-peer.pem", "etcd-server-key.pem", "etcd-server.pem",
                       "kubernetes-key.pem", "kubernetes.pem"]
    from certs_helpers import san_strings
    assert {"DNS:controller-3", "IP:10.0.1.13"} <= san_strings(load_cert(existing_pki / "kubernetes.pem"))


def test_a_changed_key_algorithm_reissues_every_leaf_as_ecdsa(existing_pki, inventory_file):
    edit_inventory(inventory_file, "key_algorithm: rsa-2048", "key_algorithm: ecdsa-p256")
    doc = gen_json()
    assert all(actions(doc)[n] == "reissued" for n in LEAF_FILES)
    assert "key algorithm changed: rsa-2048 -> ecdsa-p256" in doc["files"][1]["reason"]
    assert actions(doc)["ca.pem"] == "unchanged"
    assert any("service-account-key.pem is rsa-2048" in w for w in doc["warnings"])
    out = openssl("verify", "-CAfile", "pki/ca.pem", "pki/admin.pem")
    assert out.returncode == 0


def test_renew_forces_one_leaf_and_leaves_the_others(existing_pki):
    before = snapshot(existing_pki)
    doc = gen_json("--renew", "kube-proxy")
    assert actions(doc)["kube-proxy.pem"] == "renewed"
    assert sum(a != "unchanged" for a in actions(doc).values()) == 1
    after = snapshot(existing_pki)
    assert sorted(n for n in after if after[n] != before[n]) == ["kube-proxy-key.pem", "kube-proxy.pem"]


def test_renew_with_an_unknown_name_is_a_usage_error_listing_valid_names(existing_pki):
    before = snapshot(existing_pki)
    result = run("gen-certs", "--renew", "kube-nope")
    assert result.exit_code == ExitCode.USAGE
    assert "unknown name 'kube-nope'" in result.output
    assert "valid names: admin, kubernetes" in result.output and "worker-0" in result.output
    assert snapshot(existing_pki) == before


def test_renew_ca_points_at_force_new_ca(existing_pki):
    result = run("gen-certs", "--renew", "ca")
    assert result.exit_code == ExitCode.USAGE
    assert "only with --force-new-ca" in result.output


def test_force_new_ca_replaces_the_ca_and_reissues_every_leaf(existing_pki):
    old_ca = (existing_pki / "ca.pem").read_bytes()
    doc = gen_json("--force-new-ca")
    assert actions(doc)["ca.pem"] == actions(doc)["etcd-ca.pem"] == "reissued"
    assert all(actions(doc)[n] == "reissued" for n in LEAF_FILES)
    assert actions(doc)["service-account.pem"] == actions(doc)["encryption-config.yaml"] == "unchanged"
    assert (existing_pki / "ca.pem").read_bytes() != old_ca
    out = openssl("verify", "-CAfile", "pki/ca.pem", *(f"pki/{n}" for n in CLUSTER_LEAF_FILES))
    assert out.returncode == 0, out.stdout
    out = openssl("verify", "-CAfile", "pki/etcd-ca.pem", *(f"pki/{n}" for n in ETCD_LEAF_FILES))
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "admin-key.pem").unlink(), "admin.pem: the certificate has no key"),
    (lambda d: (d / "admin.pem").unlink(), "admin-key.pem: the key has no certificate"),
    (lambda d: (d / "admin-key.pem").write_bytes((d / "kube-proxy-key.pem").read_bytes()),
     "admin.pem: its public key does not match pki/admin-key.pem"),
    (lambda d: (d / "ca-key.pem").unlink(), "pki/ca.pem: the CA certificate has no key"),
    (lambda d: (d / "worker-0.pem").write_bytes(b"garbage"), "pki/worker-0.pem: not a PEM certificate"),
    (lambda d: ((d / "kube-proxy.pem").unlink(), (d / "kube-proxy.pem").mkdir()),
     "pki/kube-proxy.pem: is a directory, where a file should be"),
])
def test_a_broken_pki_is_refused_with_one_line_exit_4_and_nothing_overwritten(existing_pki, breakage,
                                                                               message):
    breakage(existing_pki)
    before = snapshot(existing_pki)
    result = run("gen-certs")
    assert result.exit_code == ExitCode.PKI
    assert result.stdout == ""
    assert result.stderr.startswith("k8sboot: error: ")
    assert message in " ".join(result.stderr.split())
    assert "hint:" in result.stderr
    assert snapshot(existing_pki) == before


def test_a_leaf_from_another_ca_is_refused(existing_pki, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree("inventory", other / "inventory")
    cwd = os.getcwd()
    os.chdir(other)
    try:
        edit_inventory(Path("inventory/cluster.yaml"), "key_algorithm: rsa-2048", "key_algorithm: ecdsa-p256")
        assert run("gen-certs").exit_code == 0
    finally:
        os.chdir(cwd)
    for name in ("admin.pem", "admin-key.pem"):
        (existing_pki / name).write_bytes((other / "pki" / name).read_bytes())
    before = snapshot(existing_pki)
    result = run("gen-certs")
    assert result.exit_code == ExitCode.PKI
    assert "pki/admin.pem: not signed by the CA in pki/ca.pem" in result.stderr
    assert snapshot(existing_pki) == before
    assert run("gen-certs", "--renew", "admin").exit_code == 0
    assert openssl("verify", "-CAfile", "pki/ca.pem", "pki/admin.pem").returncode == 0


def test_a_broken_inventory_is_exit_3_and_writes_nothing(inventory_file):
    edit_inventory(inventory_file, "internal_ip: 10.0.1.11", "internal_ip: 10.0.1.300")
    result = run("gen-certs")
    assert result.exit_code == ExitCode.INVENTORY
    assert "inventory/cluster.yaml:" in result.stderr
    assert not Path("pki").exists()


def test_the_installed_entry_point_runs_gen_certs(inventory_file):
    exe = Path(sys.executable).with_name("k8sboot")
    out = subprocess.run([str(exe), "gen-certs"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "admin.pem" in out.stdout and "created" in out.stdout
    again = subprocess.run([str(exe), "gen-certs", "--json"], capture_output=True, text=True, timeout=60)
    assert {f["action"] for f in json.loads(again.stdout)["files"]} == {"unchanged"}


# --- certs list / check-expiration -----------------------------------------------------------


def test_certs_list_shows_subject_sans_issuer_key_match_and_residual(existing_pki):
    result = run("certs", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["file"]: r for r in json.loads(result.stdout)}
    assert list(rows) == ["ca.pem", "etcd-ca.pem", *LEAF_FILES, "service-account.pem"]
    assert rows["etcd-server.pem"]["issuer_ok"] is True and rows["etcd-ca.pem"]["ca"] is True
    admin = rows["admin.pem"]
    assert admin["subject"] == "C=VN, O=system:masters, OU=k8s-scratch, CN=admin"
    assert admin["issuer_ok"] is True and admin["key_match"] is True
    assert 364 < admin["residual_days"] <= 365
    assert "DNS:kubernetes.default.svc.cluster.local" in rows["kubernetes.pem"]["sans"]
    table = run("certs", "list")
    assert table.exit_code == 0
    for header in ("file", "subject", "SANs", "issuer ok", "key match", "not after", "residual"):
        assert header in table.stdout
    assert "364d" in table.stdout and "9y" in table.stdout


def test_check_expiration_passes_when_every_cert_has_more_days_than_asked(existing_pki):
    result = run("certs", "check-expiration", "--fail-under", "30")
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "WARN" not in result.stdout


def test_check_expiration_exits_13_when_a_cert_is_below_fail_under(existing_pki):
    result = run("certs", "check-expiration", "--fail-under", "400")
    assert result.exit_code == ExitCode.EXPIRING
    assert f"{len(LEAF_FILES)} certificate(s) have less than 400 days left" in result.stderr
    assert "admin.pem (364d)" in result.stderr


def test_check_expiration_is_urgent_under_30_days_and_suggests_certs_renew(inventory_file):
    edit_inventory(inventory_file, "cert_validity_days: 365", "cert_validity_days: 10")
    assert run("gen-certs").exit_code == 0
    result = run("certs", "check-expiration")
    assert result.exit_code == 0
    assert result.stdout.count("URGENT") == len(LEAF_FILES) and "WARN" not in result.stdout
    err = " ".join(result.stderr.split())
    assert "warning: pki/admin.pem expires" in err and "renew it now: `k8sboot certs renew admin`" in err
    assert "gen-certs --renew" not in err
    assert "renew them in one go: k8sboot certs renew admin kubernetes" in err
    doc = json.loads(run("certs", "check-expiration", "--json").stdout)
    states = {r["file"]: (r["state"], r["expiring"], r["renew_soon"]) for r in doc}
    assert states["admin.pem"] == ("URGENT", True, True)
    assert states["ca.pem"] == ("ok", False, False)


def test_check_expiration_warns_under_120_days_and_not_at_120(inventory_file):
    edit_inventory(inventory_file, "cert_validity_days: 365", "cert_validity_days: 100")
    assert run("gen-certs").exit_code == 0
    result = run("certs", "check-expiration", "-i", str(inventory_file))
    assert result.exit_code == 0
    assert result.stdout.count("WARN") == len(LEAF_FILES) and "URGENT" not in result.stdout
    err = " ".join(result.stderr.split())
    assert "renew it before 30 days are left: `k8sboot certs renew kube-proxy`" in err   # the default -i: not repeated
    doc = {r["file"]: r for r in json.loads(run("certs", "check-expiration", "--json").stdout)}
    assert (doc["admin.pem"]["state"], doc["admin.pem"]["expiring"], doc["admin.pem"]["renew_soon"]) == \
        ("WARN", False, True)
    edit_inventory(inventory_file, "cert_validity_days: 100", "cert_validity_days: 121")
    assert run("certs", "renew", "all").exit_code == 0
    again = run("certs", "check-expiration")
    assert "WARN" not in again.stdout and "warning" not in again.stderr


def test_check_expiration_fail_under_hint_names_certs_renew_and_the_inventory(existing_pki, inventory_file,
                                                                              tmp_path):
    other = Path("inventory/other.yaml")
    shutil.copy(inventory_file, other)
    result = run("certs", "check-expiration", "--fail-under", "400", "-i", str(other))
    assert result.exit_code == ExitCode.EXPIRING
    assert "hint: renew with `k8sboot certs renew -i inventory/other.yaml admin kubernetes" in result.stderr
    ca = run("certs", "check-expiration", "--fail-under", "4000")
    assert "a CA is replaced with `k8sboot rotate ca`" in ca.stderr


def test_certs_commands_without_a_pki_dir_say_run_gen_certs(inventory_file):
    for args in (["certs", "list"], ["certs", "check-expiration"], ["kubeconfig", "admin"]):
        result = run(*args)
        assert result.exit_code == ExitCode.PKI, args
        assert "k8sboot: error: reading pki: no such PKI directory" in result.stderr
        assert "hint: run `k8sboot gen-certs`" in result.stderr


def test_certs_list_reports_a_missing_cert_and_a_wrong_key_with_exit_4(existing_pki):
    (existing_pki / "kube-proxy.pem").unlink()
    (existing_pki / "kube-proxy-key.pem").unlink()
    result = run("certs", "list")
    assert result.exit_code == ExitCode.PKI
    assert "missing" in result.stdout
    assert "missing kube-proxy.pem" in result.stderr
    run("gen-certs")
    (existing_pki / "admin-key.pem").write_bytes((existing_pki / "kube-proxy-key.pem").read_bytes())
    result = run("certs", "list", "--json")
    assert result.exit_code == ExitCode.PKI
    assert {r["file"]: r["key_match"] for r in json.loads(result.stdout)}["admin.pem"] is False


# --- kubeconfig admin ------------------------------------------------------------------------


def test_kubeconfig_admin_writes_a_0600_file_kubectl_reads(existing_pki):
    result = run("kubeconfig", "admin")
    assert result.exit_code == 0, result.output
    assert "admin.kubeconfig: created" in result.stderr
    assert "PRIVATE KEY" not in result.output and "client-key-data" not in result.output
    assert store.file_mode(Path("admin.kubeconfig")) == 0o600
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "config", "get-contexts", "--kubeconfig", "admin.kubeconfig"],
                             capture_output=True, text=True)
        assert "k8s-scratch" in out.stdout and "admin@k8s-scratch" in out.stdout, out.stderr
        view = subprocess.run([kubectl, "config", "view", "--kubeconfig", "admin.kubeconfig"],
                              capture_output=True, text=True)
        assert "server: https://10.0.1.10:6443" in view.stdout, view.stderr
    again = run("kubeconfig", "admin")
    assert "admin.kubeconfig: unchanged" in again.stderr


def test_kubeconfig_admin_out_writes_elsewhere(existing_pki, tmp_path):
    (tmp_path / "out").mkdir()
    result = run("kubeconfig", "admin", "--out", str(tmp_path / "out" / "k.kubeconfig"))
    assert result.exit_code == 0, result.output
    assert store.file_mode(tmp_path / "out" / "k.kubeconfig") == 0o600
    assert not Path("admin.kubeconfig").exists()


def test_kubeconfig_admin_server_dials_one_controller_instead_of_the_endpoint(existing_pki):
    result = run("kubeconfig", "admin", "--server", "https://10.0.1.11:6443", "--out", "c1.kubeconfig")
    assert result.exit_code == 0, result.output
    assert "server https://10.0.1.11:6443" in result.stderr
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (make deps installs it)"
    view = subprocess.run([kubectl, "config", "view", "--kubeconfig", "c1.kubeconfig", "-o",
                           "jsonpath={.clusters[0].cluster.server}"], capture_output=True, text=True)
    assert view.stdout == "https://10.0.1.11:6443", view.stderr


@pytest.mark.parametrize("server", ["http://10.0.1.11:6443", "10.0.1.11:6443", "https://10.0.1.11:6443/api",
                                    "https://10.0.1.11:99999"])
def test_kubeconfig_admin_server_must_be_an_https_host_and_port(existing_pki, server):
    result = run("kubeconfig", "admin", "--server", server)
    assert result.exit_code == ExitCode.USAGE and "--server" in result.output
    assert not Path("admin.kubeconfig").exists()


def test_kubeconfig_admin_refuses_a_mismatched_admin_key(existing_pki):
    (existing_pki / "admin-key.pem").write_bytes((existing_pki / "kube-proxy-key.pem").read_bytes())
    result = run("kubeconfig", "admin")
    assert result.exit_code == ExitCode.PKI
    assert "admin.pem: its public key does not match" in result.stderr
    assert not Path("admin.kubeconfig").exists()


# --- certs renew -----------------------------------------------------------------------------


def renew_json(*args: str) -> dict:
    result = run("certs", "renew", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_renew_kubernetes_reissues_its_pair_from_the_same_ca_and_says_deploy_without_restart(existing_pki):
    before = snapshot(existing_pki)
    old = load_cert(existing_pki / "kubernetes.pem")
    result = run("certs", "renew", "kubernetes")
    assert result.exit_code == 0, result.output
    after = snapshot(existing_pki)
    assert sorted(n for n in after if after[n] != before[n]) == ["kubernetes-key.pem", "kubernetes.pem"]
    new = load_cert(existing_pki / "kubernetes.pem")
    assert new.serial_number != old.serial_number and new.public_key() != old.public_key()     # a new key
    assert new.subject == old.subject and new.issuer == old.issuer
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName) == \
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert openssl("verify", "-CAfile", "pki/ca.pem", "pki/kubernetes.pem").returncode == 0
    assert store.file_mode(existing_pki / "kubernetes-key.pem") == 0o600
    assert after["ca.pem"] == before["ca.pem"] and after["ca-key.pem"] == before["ca-key.pem"]
    for header in ("name", "old not after", "new not after"):
        assert header in result.stdout
    assert "kubernetes.pem" in result.stdout and "named" in result.stdout
    err = " ".join(result.stderr.split())
    assert "next: k8sboot deploy-apiserver -i inventory/cluster.yaml # kubernetes: no restart" in err
    assert "deploy-etcd" not in err and "deploy-lb" not in err


def test_renew_json_gives_old_and_new_not_after_and_the_next_commands(existing_pki):
    from datetime import datetime, timedelta, timezone

    old = load_cert(existing_pki / "etcd-server.pem")
    doc = renew_json("etcd-server", "admin", "kube-apiserver-kubelet-client")
    assert doc["dry_run"] is False and doc["dir"] == "pki"
    assert [r["name"] for r in doc["renewed"]] == ["admin", "kube-apiserver-kubelet-client", "etcd-server"]
    etcd = doc["renewed"][2]
    assert etcd["file"] == "etcd-server.pem" and etcd["why"] == "named"
    old_after = getattr(old, "not_valid_after_utc", None) or old.not_valid_after.replace(tzinfo=timezone.utc)
    assert datetime.fromisoformat(etcd["old_not_after"]) == old_after
    new_after = datetime.fromisoformat(etcd["new_not_after"])
    assert abs(new_after - (datetime.now(timezone.utc) + timedelta(days=365))) < timedelta(minutes=2)
    assert doc["next"] == ["k8sboot deploy-etcd -i inventory/cluster.yaml",
                           "k8sboot deploy-apiserver -i inventory/cluster.yaml",
                           "k8sboot kubeconfig admin -i inventory/cluster.yaml"]
    assert openssl("verify", "-CAfile", "pki/etcd-ca.pem", "pki/etcd-server.pem").returncode == 0


def test_renew_dry_run_writes_nothing_and_says_what_it_would_renew(existing_pki):
    before = snapshot(existing_pki)
    doc = renew_json("--dry-run", "kube-proxy")
    assert doc["dry_run"] is True and [r["name"] for r in doc["renewed"]] == ["kube-proxy"]
    table = run("certs", "renew", "--dry-run", "kube-proxy")
    assert table.exit_code == 0 and "would renew" in table.stdout and "dry run, nothing written" in table.stderr
    assert snapshot(existing_pki) == before


def test_renew_expiring_within_takes_only_the_leaves_due_in_days_or_hours(existing_pki, inventory_file):
    edit_inventory(inventory_file, "cert_validity_days: 365", "cert_validity_days: 10")
    assert run("gen-certs", "--renew", "admin", "--renew", "worker-0").exit_code == 0
    edit_inventory(inventory_file, "cert_validity_days: 10", "cert_validity_days: 365")
    before = snapshot(existing_pki)
    for within in ("30d", "720h"):
        doc = renew_json("--dry-run", "--expiring-within", within)
        assert [(r["name"], r["why"]) for r in doc["renewed"]] == [("admin", f"< {within} left"),
                                                                     ("worker-0", f"< {within} left")]
    assert snapshot(existing_pki) == before
    doc = renew_json("--expiring-within", "30d", "kube-proxy")
    assert [(r["name"], r["why"]) for r in doc["renewed"]] == [
        ("admin", "< 30d left"), ("kube-proxy", "named"), ("worker-0", "< 30d left")]
    again = run("certs", "renew", "--expiring-within", "30d")
    assert again.exit_code == 0 and again.stdout == ""
    assert "nothing to renew: no leaf expires within 30d" in again.stderr


def test_renew_expiring_within_never_touches_a_ca_and_says_so(existing_pki):
    before = snapshot(existing_pki)
    result = run("certs", "renew", "--expiring-within", "3650d", "--dry-run")
    assert result.exit_code == 0
    err = " ".join(result.stderr.split())
    assert "pki/ca.pem expires" in err and "within 3650d too: a CA is not renewed but replaced, with " \
        "`k8sboot rotate ca`" in err
    assert "ca.pem" not in [line.split()[1] for line in result.stdout.splitlines() if line.startswith("│")]
    assert snapshot(existing_pki) == before


@pytest.mark.parametrize("args, message, hint", [
    ([], "certs renew: name certs or --expiring-within", "k8sboot certs renew --expiring-within 30d"),
    (["kubernets"], "certs renew: unknown certificate 'kubernets'", "did you mean 'kubernetes'?"),
    (["admin", "nobody-at-all"], "unknown certificate 'nobody-at-all'", "names: admin, kubernetes"),
    (["ca"], "ca is a CA, and a CA is not renewed", "k8sboot rotate ca"),
    (["etcd-ca"], "etcd-ca is a CA, and a CA is not renewed", "k8sboot rotate ca"),
    (["service-account"], "the ServiceAccount signing key pair, not a certificate",
     "k8sboot rotate service-account-key"),
    (["--expiring-within", "soon"], "--expiring-within: 'soon' is not a duration", "e.g. --expiring-within 30d"),
    (["--expiring-within", "0d"], "--expiring-within: '0d': the duration must be longer than 0s", "720h"),
])
def test_renew_refuses_bad_names_and_durations_with_exit_2_and_writes_nothing(existing_pki, args, message, hint):
    before = snapshot(existing_pki)
    result = run("certs", "renew", *args)
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    err = " ".join(result.stderr.split())
    assert err.startswith("k8sboot: error: ") and message in err and "hint: " in err and hint in err
    assert snapshot(existing_pki) == before


def test_renew_refuses_when_the_pki_needs_more_than_a_renewal(existing_pki, inventory_file):
    edit_inventory(inventory_file, "internal_ip: 10.0.1.11", "internal_ip: 10.0.1.21")   # the API server's SANs
    before = snapshot(existing_pki)
    result = run("certs", "renew", "admin")
    assert result.exit_code == ExitCode.PKI
    err = " ".join(result.stderr.split())
    assert "needs more than a renewal: kubernetes: reissued (SANs changed" in err
    assert "hint: run `k8sboot gen-certs` first" in err
    assert snapshot(existing_pki) == before


def test_renew_without_a_pki_says_run_gen_certs(inventory_file):
    result = run("certs", "renew", "admin")
    assert result.exit_code == ExitCode.PKI and "hint: run `k8sboot gen-certs`" in result.stderr


def test_next_steps_follow_the_path_tables():
    from k8sboot.cli.pki_cmds import next_steps

    inv = Path("inventory/lab.yaml")
    assert next_steps(["kubernetes"], inv, False) == [(
        "k8sboot deploy-apiserver -i inventory/lab.yaml",
        "kubernetes: no restart, the running kube-apiservers re-read their serving cert/key by themselves")]
    steps = dict(next_steps(["kubernetes", "apiserver-etcd-client", "k8sboot-health", "etcd-peer", "kube-proxy",
                             "etcd-healthcheck-client"], inv, True))
    assert list(steps) == ["k8sboot deploy-etcd -i inventory/lab.yaml", "k8sboot deploy-apiserver -i inventory/lab.yaml",
                           "k8sboot deploy-lb -i inventory/lab.yaml", ""]
    assert "a rolling restart (kube-apiserver reads these files at start)" in steps[
        "k8sboot deploy-apiserver -i inventory/lab.yaml"]
    assert steps[""].startswith("kube-proxy: k8sboot does not deploy these")
    assert next_steps(["k8sboot-health"], inv, False) == []          # no LB: a workstation credential only
    assert next_steps(["etcd-healthcheck-client"], inv, True) == []


def test_renew_thresholds_match_the_pki_module():
    from datetime import timedelta

    from k8sboot import pki
    from k8sboot.cli import pki_cmds

    assert timedelta(days=pki_cmds.URGENT_DAYS) == pki.EXPIRY_WARNING and pki_cmds.RENEW_SOON == 120


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["gen-certs"], ["certs"], ["certs", "list"], ["certs", "check-expiration"],
                                  ["certs", "renew"], ["kubeconfig"], ["kubeconfig", "admin"]])
def test_every_pki_command_help_shows_worked_examples_line_by_line(args):
    result = run(*args, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    example_lines = [line for line in result.stdout.splitlines() if line.strip().startswith("k8sboot ")]
    assert len(example_lines) >= 2, "each example keeps its own line"


def test_gen_certs_warns_about_a_pki_dir_others_can_read(inventory_file):
    Path("pki").mkdir(mode=0o755)
    os.chmod("pki", 0o755)
    result = run("gen-certs")
    assert result.exit_code == 0
    assert "pki/ is mode 0755" in result.stderr and "chmod 700 pki" in result.stderr
    assert store.file_mode(Path("pki/admin-key.pem")) == 0o600
