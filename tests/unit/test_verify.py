"""k8sboot.verify.check_host / check_probe: drift found from facts alone (the lab tests do it over SSH)."""

from __future__ import annotations

import base64
import sys
from dataclasses import replace
from pathlib import Path

from k8sboot import layout
from k8sboot import plan as P
from k8sboot.flags import TUTORIAL_GREP_FLAGS, build_apiserver_flags, flags_to_argv, tutorial_grep
from k8sboot.plan import FileFact, HostFacts, ServiceFact
from k8sboot.probe import ProbeAnswer
from k8sboot.verify import DRIFT, OK, SKIP, check_host, check_probe, pem_fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import fake_pki_files, make_inventory, planned_unit  # noqa: E402

INV = make_inventory()
HOST = INV.controllers[0]
FLAGS = build_apiserver_flags(INV, HOST)
UNIT = planned_unit(INV)
CA_PEM = (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(b"not really DER but bytes") +
          b"-----END CERTIFICATE-----\n")
PKI = {**fake_pki_files(), "ca.pem": CA_PEM}
DESIRED = P.build_desired_files(PKI, UNIT)
ARGV = [layout.BINARY_PATH, *flags_to_argv(FLAGS)]


def good_facts(**changes) -> HostFacts:
    files = {f.path: FileFact(f.path, True, f.sha256, f.mode, f.owner, f.group) for f in DESIRED}
    files[P.PKI_DIR.path] = FileFact(P.PKI_DIR.path, True, None, 0o700, "root", "root", kind="directory")
    sections = {
        "grep": "\n".join(tutorial_grep(UNIT)),
        "execstart": f"ExecStart={{ path={layout.BINARY_PATH} ; argv[]={' '.join(ARGV)} ; ignore_errors=no ; }}",
        "cmdline": base64.b64encode(b"\0".join(a.encode() for a in ARGV) + b"\0").decode(),
        "is-enabled": "enabled", "is-active": "active",
        "ca": base64.b64encode(CA_PEM).decode(),
    }
    facts = HostFacts(files=files, service=ServiceFact("loaded", "active", "running", "enabled", main_pid=7,
                                                        listening=True), unit_text=UNIT, sections=sections)
    return replace(facts, **changes) if changes else facts


def statuses(facts):
    checks, _ = check_host(HOST.name, DESIRED, FLAGS, facts, CA_PEM)
    return {c.check: c.status for c in checks}, checks


def test_a_host_exactly_as_deployed_has_no_drift():
    got, checks = statuses(good_facts())
    assert {s for s in got.values()} == {OK}, [c for c in checks if c.status != OK]
    grep = next(c for c in checks if c.check == "tutorial grep")
    assert grep.actual.splitlines() == ["--anonymous-auth=false", "--client-ca-file=/var/lib/kubernetes/ca.pem",
                                        "--service-account-key-file=/var/lib/kubernetes/service-account.pem"]
    assert len(TUTORIAL_GREP_FLAGS) == 3


def test_edited_file_mode_loosened_unit_edited_and_service_stopped_are_drift():
    facts = good_facts()
    files = dict(facts.files)
    key = "/var/lib/kubernetes/kubernetes-key.pem"
    files[key] = replace(files[key], sha256="0" * 64, mode=0o644)
    edited = UNIT.replace("--anonymous-auth=false", "--anonymous-auth=true")
    sections = {**facts.sections, "grep": "\n".join(tutorial_grep(edited)), "is-active": "inactive",
                "cmdline": ""}
    got, checks = statuses(replace(facts, files=files, unit_text=edited, sections=sections,
                                   service=ServiceFact("loaded", "inactive", "dead", "enabled")))
    assert got[f"file {key}"] == DRIFT
    detail = next(c.detail for c in checks if c.check == f"file {key}")
    assert "content" in detail and "mode 0644 -> 0600" in detail
    assert got["unit file"] == DRIFT and got["tutorial grep"] == DRIFT
    assert got["unit ExecStart: auth flags"] == DRIFT
    assert "--anonymous-auth=true (expected false)" in next(c.detail for c in checks
                                                            if c.check == "unit ExecStart: auth flags")
    assert got["is-active"] == DRIFT and got["running process"] == SKIP


def test_unit_edited_without_daemon_reload_shows_in_systemctl_show_only():
    facts = good_facts()
    argv = [a if not a.startswith("--anonymous-auth") else "--anonymous-auth=true" for a in ARGV]
    sections = {**facts.sections, "execstart": f"ExecStart={{ path=x ; argv[]={' '.join(argv)} ; ignore_errors=no ; }}"}
    got, _ = statuses(replace(facts, sections=sections))
    assert got["systemctl show ExecStart: auth flags"] == DRIFT and got["unit file"] == OK


def test_ca_key_on_host_and_other_ca_are_drift():
    facts = good_facts()
    files = {**facts.files, "/var/lib/kubernetes/ca-key.pem": FileFact("/var/lib/kubernetes/ca-key.pem", True)}
    other = CA_PEM.replace(b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\nAAAA")
    got, _ = statuses(replace(facts, files=files, sections={**facts.sections,
                                                           "ca": base64.b64encode(other).decode()}))
    assert got["no ca-key.pem on the host"] == DRIFT and got["CA fingerprint"] == DRIFT


def test_fingerprint_is_sha256_of_der():
    import hashlib
    fp = pem_fingerprint(CA_PEM)
    assert fp == ":".join(f"{b:02X}" for b in hashlib.sha256(b"not really DER but bytes").digest())


def test_probe_expectations_follow_anonymous_auth():
    admin = ProbeAnswer(201, '{"status":{"userInfo":{"username":"admin","groups":["system:masters"]}}}')
    ok = check_probe("c0", False, ProbeAnswer(401), ProbeAnswer(401), admin)
    assert [c.status for c in ok] == [OK, OK, OK]
    wrong = check_probe("c0", True, ProbeAnswer(401), ProbeAnswer(403), ProbeAnswer(None, error="refused"))
    assert [c.status for c in wrong] == [DRIFT, DRIFT, DRIFT]
    assert check_probe("c0", True, ProbeAnswer(403), ProbeAnswer(401), None)[2].status == SKIP


def test_verify_reads_facts_while_rendering_and_a_local_error_lets_every_host_go(tmp_path):
    """verify dials the hosts while it renders the units and reads the PKI (as deploy does); an
    incomplete local PKI is reported as such, with every connection closed and no host changed."""
    import pytest

    from deploy_helpers import FakeHost, fake_connector, write_fake_pki

    from k8sboot.errors import PkiError
    from k8sboot.verify import VerifyOptions, verify

    pki = tmp_path / "pki"
    write_fake_pki(pki)
    inventory = make_inventory(pki=pki)
    hosts = {h.name: FakeHost(h.name) for h in inventory.controllers}
    report = verify(inventory, VerifyOptions(), connect=fake_connector(hosts))
    assert [r.host for r in report.hosts] == [h.name for h in inventory.controllers]
    assert all(not r.error and r.drifted for r in report.hosts)      # nothing was deployed

    (pki / "kubernetes-key.pem").unlink()
    opened: list = []
    with pytest.raises(PkiError, match="kubernetes-key.pem"):
        verify(inventory, VerifyOptions(), connect=fake_connector(hosts, opened))
    assert all(r.closed for r in opened) and all(h.commands == [] for h in hosts.values())


def test_readyz_check_names_etcd_when_the_api_server_cannot_read_it():
    """What a real 1.32 kube-apiserver answers on /readyz?verbose (k8s.io/apiserver healthz) with
    etcd down: the failing checks, reasons withheld, `readyz check failed`, HTTP 500."""
    from k8sboot.verify import check_readyz

    down = ("[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[-]etcd-readiness failed: reason withheld\n"
            "[+]informer-sync ok\n[+]poststarthook/rbac/bootstrap-roles ok\n[+]shutdown ok\nreadyz check failed\n")
    [c] = check_readyz("controller-0", ProbeAnswer(500, down))
    assert c.status == DRIFT and c.check == "API server /readyz"
    assert c.detail.startswith("HTTP 500: [-]etcd failed: reason withheld; [-]etcd-readiness failed: reason withheld")
    assert "cannot read etcd" in c.detail and "--etcd-cafile" in c.detail

    up = "[+]ping ok\n[+]log ok\n[+]etcd ok\n[+]etcd-readiness ok\n[+]shutdown ok\nreadyz check passed\n"
    [c] = check_readyz("controller-0", ProbeAnswer(200, up))
    assert c.status == OK and "etcd ok" in c.detail

    shutting = "[+]ping ok\n[+]etcd ok\n[-]shutdown failed: reason withheld\nreadyz check failed\n"
    [c] = check_readyz("controller-0", ProbeAnswer(500, shutting))
    assert c.status == DRIFT and "[-]shutdown failed" in c.detail and "cannot read etcd" not in c.detail
    [c] = check_readyz("controller-0", ProbeAnswer(None, error="ConnectionRefusedError: [Errno 111] Connection refused"))
    assert c.status == DRIFT and "Connection refused" in c.detail
