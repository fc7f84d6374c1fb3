"""Rotations offline: the journal, what each phase renders, the order of phases, the finish gate,
the local PKI steps, the CLI's confirmations, and deploy over the in-memory fake remote.

Expected flag values come from the kube-apiserver reference (v1.32):
  --service-account-key-file: "The specified file can contain multiple keys, and the flag can be
      specified multiple times with different files."
  --service-account-issuer: "When this flag is specified multiple times, the first is used to
      generate tokens and all are used to determine which issuers are accepted."
  --service-account-extend-token-expiration: "admission injected tokens would be extended up to
      1 year ... ignoring value of service-account-max-token-expiration."
The real server runs these flags in tests/lab/test_rotate_lab.py (the lab's stand-in and kubectl).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k8sboot import deploy as D
from k8sboot import flags as flagmod
from k8sboot import layout, rotation, rotation_steps
from k8sboot.cli import app
from k8sboot.errors import ExitCode, K8sbootError
from k8sboot.inventory import load_inventory
from k8sboot.rotation import DEPLOYED, PREPARED, Rotation, RotationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deploy_helpers import (FakeHost, fake_connector, fake_readyz, healthy_etcd, make_inventory,  # noqa: E402
                            write_fake_pki)

T0 = datetime(2026, 12, 5, 2, 0, tzinfo=timezone.utc)
K = "/var/lib/kubernetes"


def sa_journal(phase="start", state=DEPLOYED, stopped=None) -> Rotation:
    return Rotation(rotation.SERVICE_ACCOUNT_KEY, phase, state, T0, T0, "SHA256:aa", "SHA256:bb",
                    "service-account-1", stopped)


def issuer_journal(phase="start", state=DEPLOYED, old="https://z.example:6443", new="https://a.example:6443",
                   stopped=None) -> Rotation:
    return Rotation(rotation.ISSUER, phase, state, T0, T0, old, new, signing_stopped=stopped)


def rendered(inv, journal):
    inv = dataclasses.replace(inv, rotation=journal)
    return [(k, v) for k, v in flagmod.build_apiserver_flags(inv, inv.controllers[0])
            if k.startswith("service-account-") and k not in ("service-account-max-token-expiration",
                                                              "service-account-extend-token-expiration")]


# --- what each phase renders ----------------------------------------------------------------------


@pytest.mark.parametrize("phase, expected", [
    (None, [("service-account-key-file", f"{K}/service-account.pem"),
            ("service-account-signing-key-file", f"{K}/service-account-key.pem")]),
    ("start", [("service-account-key-file", f"{K}/service-account.pem"),
               ("service-account-key-file", f"{K}/service-account-1.pem"),
               ("service-account-signing-key-file", f"{K}/service-account-key.pem")]),
    ("switch", [("service-account-key-file", f"{K}/service-account.pem"),
                ("service-account-key-file", f"{K}/service-account-1.pem"),
                ("service-account-signing-key-file", f"{K}/service-account-1-key.pem")]),
    ("finish", [("service-account-key-file", f"{K}/service-account.pem"),
                ("service-account-signing-key-file", f"{K}/service-account-key.pem")]),
])
def test_service_account_key_phases_render_the_key_files_repeated(phase, expected):
    inv = make_inventory()
    got = rendered(inv, sa_journal(phase) if phase else None)
    assert [kv for kv in got if kv[0] != "service-account-issuer"] == expected


@pytest.mark.parametrize("phase, expected", [
    ("start", ["https://z.example:6443", "https://a.example:6443"]),     # the old one signs
    ("switch", ["https://a.example:6443", "https://z.example:6443"]),    # the new one signs
    ("finish", ["https://a.example:6443"]),
])
def test_issuer_phases_repeat_the_flag_in_signing_order_never_sorted(phase, expected):
    """kops once sorted the issuers, so the wrong one signed: z.example sorts after a.example."""
    got = [v for k, v in rendered(make_inventory(), issuer_journal(phase)) if k == "service-account-issuer"]
    assert got == expected


def test_a_phase_ships_the_second_pair_and_finish_removes_it():
    start = rotation.controller_files(sa_journal("start"))
    names = [f.local_name for f in start]
    at = names.index("service-account-key.pem")
    assert names[at + 1:at + 3] == ["service-account-1.pem", "service-account-1-key.pem"]
    modes = {f.local_name: f.mode for f in start}
    assert modes["service-account-1-key.pem"] == 0o600 and modes["service-account-1.pem"] == 0o644
    assert rotation.controller_files(sa_journal("finish")) == layout.CONTROLLER_FILES
    assert rotation.obsolete_paths(sa_journal("finish")) == (f"{K}/service-account-1.pem", f"{K}/service-account-1-key.pem")
    assert rotation.obsolete_paths(sa_journal("switch")) == ()


def test_running_phase_is_read_back_from_a_servers_flags():
    j = sa_journal("switch")
    argv = ["/usr/local/bin/kube-apiserver", f"--service-account-key-file={K}/service-account.pem",
            f"--service-account-key-file={K}/service-account-1.pem",
            f"--service-account-signing-key-file={K}/service-account-key.pem", "--service-account-issuer=https://x"]
    assert rotation.running_phase(j, flagmod.parse_argv_flags(argv)) == "start"
    argv[3] = f"--service-account-signing-key-file={K}/service-account-1-key.pem"
    assert rotation.running_phase(j, flagmod.parse_argv_flags(argv)) == "switch"
    plain = [a for a in argv if "service-account-1.pem" not in a]
    plain[2] = f"--service-account-signing-key-file={K}/service-account-key.pem"
    assert rotation.running_phase(j, flagmod.parse_argv_flags(plain)) == "before start"


# --- the journal ---------------------------------------------------------------------------------------


def test_the_journal_round_trips_and_a_broken_one_names_its_line(tmp_path):
    j = dataclasses.replace(sa_journal("switch", stopped=T0 + timedelta(hours=1)), path=tmp_path / "rotation.yaml")
    assert rotation.parse(j.to_yaml(), tmp_path / "rotation.yaml") == j
    bad = j.to_yaml().replace(b"phase: switch", b"phase: rewind")
    with pytest.raises(RotationError) as err:
        rotation.parse(bad, Path("pki/rotation.yaml"))
    line = next(i for i, ln in enumerate(bad.decode().splitlines(), 1) if ln.startswith("phase:"))
    assert err.value.message.startswith(f"pki/rotation.yaml:{line}: service-account-key has no phase 'rewind'")
    assert err.value.code == ExitCode.ROTATION


# --- the order of phases -------------------------------------------------------------------------------


def test_phases_go_forward_one_at_a_time_and_only_once_deployed():
    inv = make_inventory()
    with pytest.raises(RotationError, match="no issuer rotation is in progress"):
        rotation_steps.plan_issuer(inv, "switch", now=T0)
    prepared = dataclasses.replace(inv, rotation=issuer_journal("start", PREPARED))
    with pytest.raises(RotationError, match="not on every controller yet"):
        rotation_steps.plan_issuer(prepared, "switch", now=T0)
    started = dataclasses.replace(inv, rotation=issuer_journal("start"))
    with pytest.raises(RotationError, match="run switch before finish"):
        rotation_steps.plan_issuer(started, "finish", now=T0)
    with pytest.raises(RotationError, match="an issuer rotation is in progress .phase start, deployed.; "
                                            "one rotation at a time"):
        rotation_steps.plan_service_account_key(started, "start", now=T0)
    switched = dataclasses.replace(inv, rotation=issuer_journal("switch"))
    with pytest.raises(RotationError, match="already at phase switch"):
        rotation_steps.plan_issuer(switched, "start", now=T0)


def test_issuer_start_needs_a_new_https_url():
    inv = make_inventory()
    with pytest.raises(K8sbootError, match="needs --to"):
        rotation_steps.plan_issuer(inv, "start", now=T0)
    with pytest.raises(K8sbootError, match="https://"):
        rotation_steps.plan_issuer(inv, "start", now=T0, to="http://a.example")
    with pytest.raises(RotationError, match="already says"):
        rotation_steps.plan_issuer(inv, "start", now=T0, to=inv.cluster.service_account_issuer)


def test_issuer_finish_needs_the_inventory_to_name_the_new_issuer_and_the_tokens_to_have_expired():
    inv = make_inventory()
    old = inv.cluster.service_account_issuer
    new = "https://a.example:6443"
    stopped = T0
    j = issuer_journal("switch", old=old, new=new, stopped=stopped)
    with pytest.raises(RotationError, match="finish needs the inventory to name the new issuer"):
        rotation_steps.plan_issuer(dataclasses.replace(inv, rotation=j), "finish", now=T0 + timedelta(days=2))
    moved = dataclasses.replace(inv, rotation=j, cluster=dataclasses.replace(inv.cluster, service_account_issuer=new,
                                                                            api_audiences=(new,)))
    with pytest.raises(RotationError, match=r"finish refused: .*2026-12-06T02:00:00Z"):
        rotation_steps.plan_issuer(moved, "finish", now=T0 + timedelta(hours=23))
    forced = rotation_steps.plan_issuer(moved, "finish", now=T0 + timedelta(hours=23), force=True)
    assert forced.breaks and f"issued by {old}" in forced.breaks[0] and forced.forced
    fine = rotation_steps.plan_issuer(moved, "finish", now=T0 + timedelta(hours=24))
    assert not fine.breaks and fine.journal.phase == "finish"


@pytest.mark.parametrize("max_seconds, extend, wait", [
    (86400, False, timedelta(hours=24)),
    (3600, False, timedelta(hours=1)),
    (3600, True, timedelta(days=365)),        # injected tokens live up to a year, whatever the max
])
def test_the_longest_token_lifetime_comes_from_the_rendered_flags(max_seconds, extend, wait):
    assert rotation.longest_token_lifetime(max_seconds, extend) == wait


# --- the local steps of the service-account key ------------------------------------------------------------


@pytest.fixture
def real_pki(tmp_path):
    """A real PKI made by gen-certs, and an inventory file pointing at it."""
    inv_path = tmp_path / "inv.yaml"
    text = Path("inventory/cluster.yaml").read_text()
    import re

    inv_path.write_text(re.sub(r"(?m)^(\s*dir:).*$", rf"\1 {tmp_path / 'pki'}", text, count=1))
    result = CliRunner().invoke(app, ["gen-certs", "-i", str(inv_path)])
    assert result.exit_code == 0, result.output
    return inv_path, tmp_path / "pki"


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_start_writes_the_pair_and_journal_together_keys_0600_and_a_rerun_changes_nothing(real_pki):
    inv_path, pki = real_pki
    r = invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--no-deploy", "--yes")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(pki / "service-account-1-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki / "rotation.yaml").st_mode) == 0o644      # fingerprints, no secret
    j = rotation.load(pki)
    assert (j.kind, j.phase, j.state, j.name) == ("service-account-key", "start", PREPARED, "service-account-1")
    assert j.old == rotation.key_fingerprint((pki / "service-account.pem").read_bytes())
    assert j.new == rotation.key_fingerprint((pki / "service-account-1.pem").read_bytes())
    before = {p.name: p.read_bytes() for p in pki.iterdir() if p.is_file()}
    again = invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--no-deploy", "--yes")
    assert again.exit_code == 0 and "(re-run)" in again.output
    assert {p.name: p.read_bytes() for p in pki.iterdir() if p.is_file()} == before


def test_nothing_is_written_without_yes_off_a_terminal_nor_with_dry_run(real_pki):
    inv_path, pki = real_pki
    before = sorted(p.name for p in pki.iterdir())
    r = invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--no-deploy")
    assert r.exit_code == ExitCode.USAGE and "--yes" in r.output
    d = invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--dry-run")
    assert d.exit_code == 0 and "nothing was changed" in d.output
    assert sorted(p.name for p in pki.iterdir()) == before


def test_finish_retires_the_old_pair_and_makes_the_new_one_canonical(real_pki):
    inv_path, pki = real_pki
    assert invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--no-deploy", "--yes").exit_code == 0
    inv = load_inventory(inv_path)
    rotation_steps.mark_deployed(inv, inv.rotation, T0)
    assert invoke("rotate", "service-account-key", "switch", "-i", str(inv_path), "--no-deploy", "--yes").exit_code == 0
    inv = load_inventory(inv_path)
    rotation_steps.mark_deployed(inv, inv.rotation, datetime.now(timezone.utc))
    old_pub, old_key = (pki / "service-account.pem").read_bytes(), (pki / "service-account-key.pem").read_bytes()
    new_pub = (pki / "service-account-1.pem").read_bytes()
    early = invoke("rotate", "service-account-key", "finish", "-i", str(inv_path), "--no-deploy", "--yes")
    assert early.exit_code == ExitCode.ROTATION and "finish refused" in early.output and "--force" in early.output
    assert (pki / "service-account.pem").read_bytes() == old_pub          # refused: nothing changed
    r = invoke("rotate", "service-account-key", "finish", "-i", str(inv_path), "--no-deploy", "--yes", "--force")
    assert r.exit_code == 0, r.output
    assert "get 401" in r.output
    assert (pki / "service-account.pem").read_bytes() == new_pub
    retired = {p.name: p for p in (pki / "retired").iterdir()}
    kept = [p for n, p in retired.items() if n.startswith("service-account-key.")]
    assert len(kept) == 1 and kept[0].read_bytes() == old_key
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in retired.values())
    assert stat.S_IMODE(os.stat(pki / "retired").st_mode) == 0o700
    j = rotation.load(pki)
    assert (j.phase, j.state) == ("finish", PREPARED)
    # the flags are the canonical ones again, and the tools sign with the new key
    inv = load_inventory(inv_path)
    assert rotation.service_account_files(inv.rotation) == (("service-account.pem",), "service-account-key.pem")


def test_token_create_signs_with_the_phases_key_and_whoami_trusts_both(real_pki):
    inv_path, pki = real_pki
    before = invoke("token", "create", "-i", str(inv_path), "-n", "default", "--service-account", "bot").output.strip()
    assert invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--no-deploy", "--yes").exit_code == 0
    inv = load_inventory(inv_path)
    rotation_steps.mark_deployed(inv, inv.rotation, T0)
    assert invoke("rotate", "service-account-key", "switch", "-i", str(inv_path), "--no-deploy", "--yes").exit_code == 0
    after = invoke("token", "create", "-i", str(inv_path), "-n", "default", "--service-account", "bot").output.strip()
    import jwt

    assert jwt.get_unverified_header(before)["kid"] != jwt.get_unverified_header(after)["kid"]
    # PyJWT (an independent verifier) with each public key: `after` verifies only with the new one
    new_pub = (pki / "service-account-1.pem").read_bytes()
    jwt.decode(after, new_pub, algorithms=["RS256"], options={"verify_aud": False})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(after, (pki / "service-account.pem").read_bytes(), algorithms=["RS256"],
                   options={"verify_aud": False})
    for token in (before, after):
        r = invoke("whoami", "--token", token, "-i", str(inv_path))
        assert r.exit_code == 0 and "system:serviceaccount:default:bot" in r.output, r.output


# --- deploy over the fake remote -----------------------------------------------------------------------------


NAMES = ("controller-0", "controller-1", "controller-2")


def run(inv, fakes):
    return D.deploy(inv, D.DeployOptions(wait=2), connect=fake_connector(fakes), readyz=fake_readyz(fakes),
                    etcd_ask=healthy_etcd())


def test_start_ships_the_second_pair_and_finish_removes_it_from_every_host(tmp_path):
    pki = tmp_path / "pki"
    write_fake_pki(pki)
    (pki / "service-account-1.pem").write_bytes(b"--- new public ---\n")
    (pki / "service-account-1-key.pem").write_bytes(b"--- new private ---\n")
    hosts = {n: FakeHost(n) for n in NAMES}
    inv = make_inventory(pki=pki)
    assert run(inv, hosts).ok
    assert run(dataclasses.replace(inv, rotation=sa_journal("start")), hosts).ok
    for h in hosts.values():
        assert h.files[f"{K}/service-account-1-key.pem"][1] == 0o600
        assert f"{K}/service-account-1.pem" in h.files
    report = run(dataclasses.replace(inv, rotation=sa_journal("finish")), hosts)
    assert report.ok
    for h in hosts.values():
        assert f"{K}/service-account-1.pem" not in h.files and f"{K}/service-account-1-key.pem" not in h.files
    assert all("service-account-1.pem removed" in ";".join(r.restart_reasons) for r in report.results)
    again = run(dataclasses.replace(inv, rotation=sa_journal("finish")), hosts)
    assert again.nothing_changed


def test_changing_the_issuer_in_the_inventory_alone_is_refused_before_any_host_changes(tmp_path):
    pki = tmp_path / "pki"
    write_fake_pki(pki)
    hosts = {n: FakeHost(n) for n in NAMES}
    inv = make_inventory(pki=pki)
    assert run(inv, hosts).ok
    files_before = {n: dict(h.files) for n, h in hosts.items()}
    moved = dataclasses.replace(inv, cluster=dataclasses.replace(inv.cluster, service_account_issuer="https://new.example",
                                                                api_audiences=("https://new.example",)))
    report = run(moved, hosts)
    assert not report.ok and report.exit_code() == ExitCode.ROTATION
    assert "rotate issuer start --to https://new.example" in report.refusal.hint
    assert {n: dict(h.files) for n, h in hosts.items()} == files_before
    # through the rotation's first phase the same change is fine: both issuers are accepted
    started = dataclasses.replace(inv, rotation=issuer_journal("start", old=inv.cluster.service_account_issuer,
                                                               new="https://new.example"))
    assert run(started, hosts).ok


# --- audit ---------------------------------------------------------------------------------------


def test_audit_warns_on_a_rotation_left_half_done_for_more_than_two_weeks():
    from k8sboot import audit

    assert audit.check_rotation(None, T0) == []
    fresh = audit.check_rotation(sa_journal("switch"), T0 + timedelta(days=3))
    assert [f.status for f in fresh] == [audit.PASS]
    stale = audit.check_rotation(sa_journal("switch"), T0 + timedelta(days=15))
    assert [f.status for f in stale] == [audit.WARN]
    assert "15 days" in stale[0].reason and "rotate service-account-key finish" in stale[0].fix


def test_gen_certs_will_not_renew_the_service_account_key_in_the_middle_of_its_rotation(real_pki):
    inv_path, pki = real_pki
    assert invoke("rotate", "service-account-key", "start", "-i", str(inv_path), "--no-deploy", "--yes").exit_code == 0
    before = (pki / "service-account-key.pem").read_bytes()
    r = invoke("gen-certs", "-i", str(inv_path), "--renew", "service-account")
    assert r.exit_code == ExitCode.USAGE and "rotation is in progress" in r.output
    assert (pki / "service-account-key.pem").read_bytes() == before


# --- the CA ---------------------------------------------------------------------------------------------

from test_go_oracle import oracle  # noqa: E402,F401 - Go's crypto/x509 as the judge (a fixture)


def _advance(inv_path: Path, phase: str, *extra) -> None:
    """Run a CA phase offline (--no-deploy) and record it deployed, as a successful deploy would."""
    r = invoke("rotate", "ca", phase, "-i", str(inv_path), "--no-deploy", "--yes", *extra)
    assert r.exit_code == 0, r.output
    inv = load_inventory(inv_path)
    rotation_steps.mark_deployed(inv, inv.rotation, datetime.now(timezone.utc))


def _openssl_verify(ca: Path, cert: Path) -> bool:
    import subprocess

    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True).returncode == 0


def test_ca_rotation_end_to_end_offline_trust_bundles_reissue_and_lockouts(real_pki, tmp_path, oracle):  # noqa: F811
    inv_path, pki = real_pki
    k0 = tmp_path / "k0.kubeconfig"
    assert invoke("kubeconfig", "admin", "-i", str(inv_path), "--out", str(k0)).exit_code == 0
    old_ca, old_etcd_ca = (pki / "ca.pem").read_bytes(), (pki / "etcd-ca.pem").read_bytes()
    keys_before = {p.name: p.read_bytes() for p in pki.glob("*-key.pem")}

    # start: new CAs, not signing; every trust store a bundle, new CA first
    _advance(inv_path, "start")
    new_ca = (pki / "ca-new.pem").read_bytes()
    assert rotation.split_pem_certs((pki / "ca-trust.pem").read_bytes()) == [new_ca, old_ca]
    assert rotation.split_pem_certs((pki / "etcd-ca-trust.pem").read_bytes())[1] == old_etcd_ca
    assert stat.S_IMODE(os.stat(pki / "ca-new-key.pem").st_mode) == 0o600
    inv = load_inventory(inv_path)
    shipped = {f.path: f.local_name for f in rotation.controller_files(inv.rotation)}
    assert shipped[f"{K}/ca.pem"] == "ca-trust.pem" and shipped[f"{K}/etcd-ca.pem"] == "etcd-ca-trust.pem"
    assert {f.path: f.local_name for f in rotation.etcd_files(inv.rotation)}["/etc/etcd/etcd-ca.pem"] == \
        "etcd-ca-trust.pem"
    k1 = tmp_path / "k1.kubeconfig"
    assert invoke("kubeconfig", "admin", "-i", str(inv_path), "--out", str(k1)).exit_code == 0
    # Go judges K1's trust: the old serving cert verifies against the bundle, as it will the new one
    import base64

    import yaml

    k1_ca = tmp_path / "k1-ca.pem"
    k1_ca.write_bytes(base64.b64decode(yaml.safe_load(k1.read_text())["clusters"][0]["cluster"]
                                       ["certificate-authority-data"]))
    assert oracle(k1_ca, pki / "kubernetes.pem", "server").startswith("ok")

    # reissue: every leaf re-signed by the new CAs with its own key; lists K0 (old trust only)
    dry = invoke("rotate", "ca", "reissue", "-i", str(inv_path), "--dry-run")
    assert str(k0) in dry.output and "trusts only the old CA" in dry.output and str(k1) not in dry.output
    _advance(inv_path, "reissue")
    assert (pki / "ca.pem").read_bytes() == new_ca and (pki / "ca-old.pem").read_bytes() == old_ca
    assert not (pki / "ca-new.pem").exists() and not (pki / "ca-new-key.pem").exists()
    assert {p.name: p.read_bytes() for p in pki.glob("*-key.pem")
            if p.name not in ("ca-key.pem", "etcd-ca-key.pem")} == \
        {n: b for n, b in keys_before.items() if n not in ("ca-key.pem", "etcd-ca-key.pem")}
    spec_leaves = [p.name for p in pki.glob("*.pem") if not p.name.endswith("-key.pem")
                   and p.name not in ("ca.pem", "ca-old.pem", "ca-trust.pem", "etcd-ca.pem", "etcd-ca-old.pem",
                                      "etcd-ca-trust.pem", "service-account.pem")]
    etcd_leaves = {"etcd-server.pem", "etcd-peer.pem", "apiserver-etcd-client.pem", "etcd-healthcheck-client.pem"}
    for name in spec_leaves:
        ca = pki / ("etcd-ca.pem" if name in etcd_leaves else "ca.pem")
        assert _openssl_verify(ca, pki / name), name
        assert not _openssl_verify(pki / "ca-old.pem", pki / name), name
    k0_ca = tmp_path / "k0-ca.pem"
    k0_ca.write_bytes(base64.b64decode(yaml.safe_load(k0.read_text())["clusters"][0]["cluster"]
                                       ["certificate-authority-data"]))
    assert oracle(k0_ca, pki / "kubernetes.pem", "server").startswith("rejected")   # K0: a TLS error
    assert oracle(k1_ca, pki / "kubernetes.pem", "server").startswith("ok")         # K1: still fine
    # the old admin cert (K1's) is still accepted by the bundle the API server trusts
    old_admin = tmp_path / "old-admin.pem"
    old_admin.write_bytes(base64.b64decode(yaml.safe_load(k1.read_text())["users"][0]["user"]
                                           ["client-certificate-data"]))
    assert oracle(pki / "ca-trust.pem", old_admin) == "ok username=admin groups=system:masters"
    assert stat.S_IMODE(os.stat(pki / "retired").st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in (pki / "retired").iterdir())
    # gen-certs agrees: every leaf is the CA's, nothing to do
    again = invoke("gen-certs", "-i", str(inv_path), "--json")
    import json

    assert {f["action"] for f in json.loads(again.stdout)["files"]} == {"unchanged"}

    # finish: K0 and K1 carry old client certs -> listed; K2 (written after reissue) is not
    k2 = tmp_path / "k2.kubeconfig"
    assert invoke("kubeconfig", "admin", "-i", str(inv_path), "--out", str(k2)).exit_code == 0
    dry = invoke("rotate", "ca", "finish", "-i", str(inv_path), "--dry-run")
    assert f"{k1}: its client cert is the old CA's: 401" in dry.output and str(k2) not in dry.output
    assert oracle(pki / "ca.pem", old_admin).startswith("rejected")                 # K1 after finish: 401
    _advance(inv_path, "finish")
    inv = load_inventory(inv_path)
    assert {f.path: f.local_name for f in rotation.controller_files(inv.rotation)}[f"{K}/ca.pem"] == "ca.pem"
    retired = sorted(p.name for p in (pki / "retired").iterdir())
    assert any(n.startswith("ca.") for n in retired) and any(n.startswith("etcd-ca.") for n in retired)


def test_gen_certs_will_not_make_a_third_ca_in_the_middle_of_a_ca_rotation(real_pki):
    inv_path, pki = real_pki
    _advance(inv_path, "start")
    before = (pki / "ca.pem").read_bytes()
    r = invoke("gen-certs", "-i", str(inv_path), "--force-new-ca")
    assert r.exit_code == ExitCode.USAGE and "CA rotation is in progress" in r.output
    assert (pki / "ca.pem").read_bytes() == before


def test_token_create_refuses_a_lifetime_the_api_server_would_never_issue(real_pki):
    """kube-apiserver caps a TokenRequest at --service-account-max-token-expiration (24h here): a
    longer local token would also outlive the wait of a key rotation's finish."""
    inv_path, _ = real_pki
    args = ("token", "create", "-i", str(inv_path), "-n", "default", "--service-account", "bot", "--duration")
    refused = invoke(*args, "25h")
    assert refused.exit_code == ExitCode.USAGE and "--service-account-max-token-expiration=24h" in refused.output
    assert invoke(*args, "24h").exit_code == 0


def _facts_running(argv: list[str], extra_files=()):
    import base64

    from k8sboot.plan import FileFact, HostFacts, ServiceFact

    cmdline = base64.b64encode("\0".join(argv).encode() + b"\0").decode()
    files = {p: FileFact(p, True, "x", 0o644, "root", "root") for p in extra_files}
    return HostFacts(files=files, service=ServiceFact(load_state="loaded", active_state="active", main_pid=7),
                     sections={"cmdline": cmdline})


def test_verify_names_the_phase_each_controller_runs_and_a_lagging_one():
    from k8sboot import verify as V

    journal = sa_journal("switch")
    switch = ["/usr/local/bin/kube-apiserver", f"--service-account-key-file={K}/service-account.pem",
              f"--service-account-key-file={K}/service-account-1.pem",
              f"--service-account-signing-key-file={K}/service-account-1-key.pem"]
    [ok] = V.check_rotation("controller-0", journal, _facts_running(switch))
    assert ok.status == V.OK and "runs phase switch" in ok.detail
    lagging = switch[:3] + [f"--service-account-signing-key-file={K}/service-account-key.pem"]
    [drift] = V.check_rotation("controller-1", journal, _facts_running(lagging))
    assert drift.status == V.DRIFT and "runs phase start, behind the journal's switch" in drift.detail
    assert "k8sboot rotate service-account-key switch" in drift.detail
    # after finish the second pair must be gone from the host
    checks = V.check_rotation("controller-2", sa_journal("finish"),
                              _facts_running(switch[:2] + [f"--service-account-signing-key-file={K}/service-account-key.pem"],
                                             extra_files=(f"{K}/service-account-1.pem",)))
    assert [c.status for c in checks] == [V.DRIFT, V.OK]
    assert V.check_rotation("controller-0", None, _facts_running(switch)) == []


def test_a_ca_reissue_killed_at_random_moments_ends_like_an_uninterrupted_one(real_pki, tmp_path):
    """SIGKILL of `rotate ca reissue` (its local step: the new CAs swapped in, every leaf re-signed,
    the old keys retired, all in one batch with the journal) at random moments, then the same
    command again: the PKI dir is the one an uninterrupted run leaves."""
    import random
    import shutil
    import signal
    import subprocess
    import time

    inv_path, pki = real_pki
    _advance(inv_path, "start")
    saved = tmp_path / "saved"
    shutil.copytree(pki, saved)
    entry = str(Path(sys.executable).with_name("k8sboot"))
    cmd = [entry, "rotate", "ca", "reissue", "-i", str(inv_path), "--no-deploy", "--yes"]
    seed = int(time.time())
    rng = random.Random(seed)
    killed_midway = 0
    for attempt in range(10):
        shutil.rmtree(pki)
        shutil.copytree(saved, pki)
        new_ca = (pki / "ca-new.pem").read_bytes()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.01, 0.25)         # the whole run takes ~0.2 s here
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_midway += proc.returncode == -signal.SIGKILL
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        where = f"seed {seed}, attempt {attempt}, killed after {delay:.2f}s"
        assert again.returncode == 0, f"{where}: {again.stderr}"
        j = rotation.load(pki)
        assert (j.phase, j.state) == ("reissue", PREPARED), where
        assert (pki / "ca.pem").read_bytes() == new_ca, where
        assert not (pki / "ca-new.pem").exists() and not list(pki.glob(".*k8sboot*")), where
        for name in ("admin.pem", "kubernetes.pem", "k8sboot-health.pem"):
            assert _openssl_verify(pki / "ca.pem", pki / name), (where, name)
        for name in ("etcd-server.pem", "apiserver-etcd-client.pem"):
            assert _openssl_verify(pki / "etcd-ca.pem", pki / name), (where, name)
        assert rotation.split_pem_certs((pki / "ca-trust.pem").read_bytes())[0] == new_ca, where
    assert killed_midway, f"seed {seed}: no run was killed before it ended (all delays too long)"
