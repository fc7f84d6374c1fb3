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


def test_default_render_passes_every_flag_check():
    """k8sboot renders --service-account-extend-token-expiration=false by default (1.2.30), so
    the tutorial's inventory audits with no FAIL."""
    got = by_id(A.check_flags(rendered(), "c0"))
    assert set(got) == {"1.2.1", "1.2.2", "1.2.4", "1.2.5", "1.2.21", "1.2.22", "1.2.23", "1.2.24", "1.2.25",
                        "1.2.26", "1.2.30"}
    assert {k for k, f in got.items() if f.status != A.PASS} == set()


def test_extend_token_expiration_true_in_the_inventory_fails_1_2_30_and_says_which_key():
    got = by_id(A.check_flags(rendered(apiserver_extra="  service_account_extend_token_expiration: true\n"), "c0"))
    assert got["1.2.30"].status == A.FAIL
    assert "apiserver.service_account_extend_token_expiration: false" in got["1.2.30"].fix


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
    assert A.worst(A.check_flags(rendered(), "x")) == A.PASS
    assert A.worst(A.check_flags(rendered(anonymous=True), "x")) == A.WARN
    assert A.worst(A.check_flags((), "x")) == A.FAIL


# --- CIS 2 (etcd), outcomes from the benchmark's text: 2.1-2.6 Automated (a miss FAILs), 2.7 Manual ---

def etcd_rendered():
    from k8sboot.etcd import build_etcd_flags

    inv = make_inventory()
    return build_etcd_flags(inv, inv.controllers[0])


APISERVER_CA = "/var/lib/kubernetes/ca.pem"
ETCD_IDS = ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7"]


def etcd_check(flags, **kw):
    kw.setdefault("apiserver_client_ca", APISERVER_CA)
    return by_id(A.check_etcd_flags(flags, "c0", **kw))


def without(flags, *names):
    return tuple((k, v) for k, v in flags if k not in names)


def test_the_rendered_etcd_member_passes_2_1_to_2_7():
    got = etcd_check(etcd_rendered(), ca_digests={APISERVER_CA: "a" * 64, "/etc/etcd/etcd-ca.pem": "b" * 64})
    assert list(got) == ETCD_IDS
    assert {f.status for f in got.values()} == {A.PASS}, [f for f in got.values() if f.status != A.PASS]
    assert "contents differ" in got["2.7"].reason


@pytest.mark.parametrize("change,cis,status", [
    # 2.1 / 2.4: both files set (kube-bench: bin_op and)
    (lambda f: without(f, "cert-file"), "2.1", A.FAIL),
    (lambda f: without(f, "key-file"), "2.1", A.FAIL),
    (lambda f: without(f, "peer-cert-file"), "2.4", A.FAIL),
    (lambda f: without(f, "peer-key-file"), "2.4", A.FAIL),
    # 2.2 / 2.5: set to true; etcd's default is false, so absent fails
    (lambda f: without(f, "client-cert-auth"), "2.2", A.FAIL),
    (lambda f: without(f, "client-cert-auth") + (("client-cert-auth", "false"),), "2.2", A.FAIL),
    (lambda f: without(f, "peer-client-cert-auth"), "2.5", A.FAIL),
    (lambda f: without(f, "peer-client-cert-auth") + (("peer-client-cert-auth", "True"),), "2.5", A.PASS),
    # 2.3 / 2.6: not set, or set to false
    (lambda f: f + (("auto-tls", "true"),), "2.3", A.FAIL),
    (lambda f: f + (("auto-tls", "false"),), "2.3", A.PASS),
    (lambda f: f + (("peer-auto-tls", "true"),), "2.6", A.FAIL),
    (lambda f: f + (("peer-auto-tls", "false"),), "2.6", A.PASS),
    # 2.7: Manual in CIS: a CA shared with the API server's client CA is a WARN; no CA at all a FAIL
    (lambda f: without(f, "trusted-ca-file") + (("trusted-ca-file", APISERVER_CA),), "2.7", A.WARN),
    (lambda f: without(f, "trusted-ca-file"), "2.7", A.FAIL),
])
def test_etcd_checks_table(change, cis, status):
    got = etcd_check(change(etcd_rendered()))[cis]
    assert got.status == status
    assert bool(got.fix) == (status != A.PASS)


def test_bare_boolean_flags_on_a_command_line_count_as_set():
    """`etcd --client-cert-auth --auto-tls` as ps shows it: the bare flag is true (Go's bool flags)."""
    from k8sboot.flags import parse_argv_flags

    flags = parse_argv_flags(["/usr/bin/etcd", "--cert-file=/c", "--key-file=/k", "--client-cert-auth",
                              "--auto-tls", "--peer-auto-tls=false"])
    got = etcd_check(flags)
    assert [got[i].status for i in ("2.1", "2.2", "2.3", "2.6")] == [A.PASS, A.PASS, A.FAIL, A.PASS]
    assert "self-signed" in got["2.3"].reason and "remove --auto-tls" in got["2.3"].fix


def test_the_same_ca_under_another_name_is_seen_by_its_digest():
    got = etcd_check(etcd_rendered(), ca_digests={APISERVER_CA: "a" * 64, "/etc/etcd/etcd-ca.pem": "a" * 64})["2.7"]
    assert got.status == A.WARN and "same CA" in got.reason and "admin" in got.reason
    assert "etcd-ca.pem" in got.fix
    unknown = etcd_check(etcd_rendered(), apiserver_client_ca=None)["2.7"]
    assert unknown.status == A.WARN and "cannot compare" in unknown.reason


def test_run_audit_checks_every_rendered_member_beside_the_api_server(tmp_path):
    from deploy_helpers import write_fake_pki

    from k8sboot.verify import run_audit

    pki = tmp_path / "pki"
    write_fake_pki(pki)
    (pki / "etcd-ca.pem").write_bytes(b"another CA\n")
    report = run_audit(make_inventory(pki=pki), now=NOW)
    etcd = [f for f in report.findings if f.id in ETCD_IDS]
    assert len(etcd) == 3 * 7 and {f.status for f in etcd} == {A.PASS}
    assert {f.subject for f in etcd} == {"controller-0 (rendered)", "controller-1 (rendered)",
                                         "controller-2 (rendered)"}
    assert {"1.2.23", "1.2.26"} <= {f.id for f in report.findings}
    (pki / "etcd-ca.pem").write_bytes((pki / "ca.pem").read_bytes())     # one CA for both
    seven = [f for f in run_audit(make_inventory(pki=pki), now=NOW).findings if f.id == "2.7"]
    assert {f.status for f in seven} == {A.WARN}
