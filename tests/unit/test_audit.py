"""k8sboot.audit: CIS authentication checks as pure functions over flags, files and cert summaries."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from k8sboot import audit as A
from k8sboot.flags import build_apiserver_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import make_inventory  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def by_id(findings):
    return {f.id: f for f in findings}


def rendered(**kw):
    inv = make_inventory(**kw)
    return build_apiserver_flags(inv, inv.controllers[0])


def test_default_render_passes_every_flag_check_but_1_2_30():
    got = by_id(A.check_flags(rendered(), "c0"))
    assert set(got) == {"1.2.1", "1.2.2", "1.2.4", "1.2.5", "1.2.21", "1.2.22", "1.2.23", "1.2.24", "1.2.25",
                        "1.2.26", "1.2.30"}
    assert {k for k, f in got.items() if f.status != A.PASS} == {"1.2.30"}
    assert "extra_flags" in got["1.2.30"].fix


def test_extend_token_expiration_false_passes_1_2_30():
    got = by_id(A.check_flags(rendered(extra_flags={"service-account-extend-token-expiration": False}), "c0"))
    assert got["1.2.30"].status == A.PASS


def test_anonymous_true_is_a_warning_as_cis_marks_it_manual():
    f = by_id(A.check_flags(rendered(anonymous=True), "c0"))["1.2.1"]
    assert f.status == A.WARN and "system:anonymous" in f.reason and "anonymous_auth: false" in f.fix


@pytest.mark.parametrize("flags,cis,status", [
    ((("token-auth-file", "/x.csv"),), "1.2.2", A.FAIL),
    ((), "1.2.1", A.WARN),                                   # absent: the default is true
    ((("service-account-lookup", "false"),), "1.2.21", A.FAIL),
    ((("kubelet-client-certificate", "/a"),), "1.2.4", A.FAIL),
    ((("kubelet-client-certificate", "/a"), ("kubelet-client-key", "/b")), "1.2.4", A.PASS),
    ((), "1.2.5", A.FAIL), ((), "1.2.22", A.FAIL), ((), "1.2.23", A.FAIL), ((), "1.2.24", A.FAIL),
    ((), "1.2.25", A.FAIL), ((), "1.2.26", A.FAIL), ((), "1.2.30", A.FAIL),
])
def test_flag_checks_table(flags, cis, status):
    assert by_id(A.check_flags(flags, "x"))[cis].status == status


def test_planned_files_pass_1_1_19_to_21():
    got = by_id(A.check_files(A.planned_remote_files(), "layout"))
    assert [got[i].status for i in ("1.1.19", "1.1.20", "1.1.21")] == [A.PASS] * 3


def test_loose_key_and_wrong_owner_fail():
    files = [A.FileObservation("/var/lib/kubernetes/kubernetes-key.pem", True, 0o644, "root", "root", secret=True),
             A.FileObservation("/var/lib/kubernetes/ca.pem", True, 0o666, "nobody", "root")]
    got = A.check_files(files, "controller-0 (remote)")
    assert by_id(got)["1.1.19"].status == A.FAIL and "nobody" in by_id(got)["1.1.19"].reason
    assert by_id(got)["1.1.20"].status == A.FAIL and "0666" in by_id(got)["1.1.20"].reason
    assert by_id(got)["1.1.21"].status == A.FAIL and "kubernetes-key.pem (0644)" in by_id(got)["1.1.21"].reason


def cert(name, cn, orgs=(), days=365):
    return A.CertSummary(f"pki/{name}.pem", cn, tuple(orgs), NOW + timedelta(days=days))


def test_admin_in_system_masters_is_a_warning_others_fail():
    got = A.check_certs([cert("admin", "admin", ["system:masters"]),
                         cert("rogue", "rogue", ["system:masters"]), cert("ca", "Kubernetes")], NOW)
    masters = [f for f in got if f.id == "5.1.7"]
    assert {(f.subject, f.status) for f in masters} == {("pki/admin.pem", A.WARN), ("pki/rogue.pem", A.FAIL)}


def test_expiry_within_30_days_warns_and_expired_fails():
    got = A.check_certs([cert("a", "a", days=10), cert("b", "b", days=-1), cert("c", "c", days=200)], NOW)
    exp = {f.subject: f.status for f in got if f.id == "k8sboot.expiry"}
    assert exp == {"pki/a.pem": A.WARN, "pki/b.pem": A.FAIL}


def test_no_certs_is_a_warning_to_run_gen_certs():
    assert A.check_certs([], NOW)[0].status == A.WARN


def test_issuer_differing_between_controllers_fails():
    got = A.check_consistency({"c0": [("service-account-issuer", "https://a:6443")],
                               "c1": [("service-account-issuer", "https://b:6443")]})
    assert got[0].status == A.FAIL and "c0=https://a:6443" in got[0].reason
    same = A.check_consistency({"c0": [("service-account-issuer", "https://a")], "c1": [("service-account-issuer",
                                                                                           "https://a")]},
                               {"c0": "ab" * 32, "c1": "ab" * 32})
    assert [f.status for f in same] == [A.PASS, A.PASS]
    diff_key = A.check_consistency({}, {"c0": "ab" * 32, "c1": None})
    assert diff_key[0].status == A.FAIL


def test_merge_subjects_groups_identical_findings():
    fs = A.check_flags(rendered(), "controller-0 (rendered)") + A.check_flags(rendered(), "controller-1 (rendered)")
    merged = A.merge_subjects(fs)
    assert len(merged) == len(fs) // 2
    assert merged[0].subject == "controller-0, controller-1 (rendered)"


def test_worst():
    assert A.worst([]) == A.PASS
    assert A.worst(A.check_flags(rendered(), "x")) == A.FAIL
