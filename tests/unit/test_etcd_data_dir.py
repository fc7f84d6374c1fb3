"""deploy-etcd never starts a member on another cluster's data dir (issue 12, point 5).

etcd reads --initial-cluster* only while its data dir is empty: on a data dir another cluster made it
would join that cluster, or stop with "cluster ID mismatch". deploy-etcd writes k8sboot-member.json
(cluster name, initial-cluster-token, member name) into the data dir with the member's files and
reads it back with the facts; a marker of another cluster or member, or a member/ dir with no marker
and no etcd unit of this cluster, refuses that host and changes no member (exit 20). A data dir
deploy-etcd made is accepted on every rerun, and one it made before the marker existed gets it
without a restart. Over the in-memory FakeRemote (tests/deploy_helpers.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k8sboot import deploy as D
from k8sboot import etcd, layout
from k8sboot.cli import app
from k8sboot.errors import ExitCode
from k8sboot.inventory import parse_inventory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deploy_helpers import INVENTORY_YAML, fake_connector  # noqa: E402
from test_etcd import DATA_DIR, NAMES, FakeEtcd, etcd_host, write_etcd_pki  # noqa: E402

MARKER = f"{DATA_DIR}/{etcd.DATA_DIR_MARKER}"


def inventory(pki, name="k8s-test"):
    text = INVENTORY_YAML.format(pki=pki, anonymous="false", extra="").replace("name: k8s-test", f"name: {name}")
    return parse_inventory(text, Path("inv.yaml"))


@pytest.fixture
def site(tmp_path):
    pki = tmp_path / "pki"
    write_etcd_pki(pki)
    return inventory(pki), {n: etcd_host(n) for n in NAMES}


def run(inv, hosts, **opts):
    opts.setdefault("wait", 2)
    return D.deploy_etcd(inv, D.DeployOptions(**opts), connect=fake_connector(hosts), ask=FakeEtcd(hosts))


def by_host(report):
    return {r.host: r for r in report.results}


def another_clusters_data(host, *, marker: bytes | None):
    """`host`'s data dir as another cluster left it: member/ (and that cluster's marker, if given)."""
    host.dirs[DATA_DIR] = (0o700, "root", "root")
    host.dirs[f"{DATA_DIR}/member"] = (0o700, "root", "root")
    if marker is not None:
        host.files[MARKER] = (marker, 0o600, "root", "root")


def nothing_changed(hosts) -> bool:
    return all(h.uploads == [] and h.commands == [] and not h.locked for h in hosts.values())


def test_a_marker_of_another_cluster_refuses_that_host_and_changes_no_member(site):
    inv, hosts = site
    other = inventory(inv.pki.dir, name="other")
    another_clusters_data(hosts["controller-1"], marker=etcd.render_marker(other, other.controller("controller-1")))
    report = run(inv, hosts)
    assert report.exit_code() == ExitCode.ETCD_FOREIGN_DATA == 20
    assert nothing_changed(hosts)
    bad = by_host(report)["controller-1"]
    assert bad.message == ("controller-1: the etcd data dir /var/lib/etcd/k8s-test was made for another cluster or "
                           "member (k8sboot-member.json: cluster other, initial_cluster_token etcd-other, member "
                           "controller-1; this inventory: cluster k8s-test, initial_cluster_token etcd-k8s-test, "
                           "member controller-1)")
    assert "cluster ID mismatch" in bad.hint
    assert "mv /var/lib/etcd/k8s-test /var/lib/etcd/k8s-test.old" in bad.hint and "etcd.data_dir" in bad.hint
    for name in ("controller-0", "controller-2"):
        r = by_host(report)[name]
        assert r.outcome == D.REFUSED and r.message == (
            "not changed: the etcd data dir on controller-1 is another cluster's; no member is changed until that is "
            "resolved")


def test_another_members_marker_is_refused_too(site):
    """controller-0's data dir copied onto controller-1: same cluster and token, another member."""
    inv, hosts = site
    another_clusters_data(hosts["controller-1"], marker=etcd.render_marker(inv, inv.controller("controller-0")))
    report = run(inv, hosts)
    assert report.exit_code() == ExitCode.ETCD_FOREIGN_DATA and nothing_changed(hosts)
    assert "member controller-0; this inventory: " in by_host(report)["controller-1"].message


def test_a_member_dir_without_our_marker_or_unit_is_foreign(site):
    inv, hosts = site
    another_clusters_data(hosts["controller-2"], marker=None)
    report = run(inv, hosts)
    assert report.exit_code() == ExitCode.ETCD_FOREIGN_DATA and nothing_changed(hosts)
    assert by_host(report)["controller-2"].message == (
        "controller-2: the etcd data dir /var/lib/etcd/k8s-test holds a member (member/) that this cluster's "
        "deploy-etcd did not make (no k8sboot-member.json, and no etcd unit of ours with "
        "--initial-cluster-token=etcd-k8s-test and --data-dir=/var/lib/etcd/k8s-test)")


def test_no_package_is_installed_on_any_host_when_one_data_dir_is_foreign(site):
    inv, _ = site
    hosts = {n: etcd_host(n, binary=False) for n in NAMES}
    another_clusters_data(hosts["controller-0"], marker=b"{not json")
    report = run(inv, hosts)
    assert report.exit_code() == ExitCode.ETCD_FOREIGN_DATA
    assert "(k8sboot-member.json: unreadable; " in by_host(report)["controller-0"].message
    assert all(h.executed == [] and layout.ETCD_PACKAGE_BINARY not in h.files for h in hosts.values())


def test_dry_run_says_the_deploy_would_be_refused(site):
    inv, hosts = site
    another_clusters_data(hosts["controller-1"], marker=None)
    report = run(inv, hosts, dry_run=True)
    assert report.exit_code() == ExitCode.ETCD_FOREIGN_DATA and nothing_changed(hosts)
    assert by_host(report)["controller-0"].message.startswith("would be refused: the etcd data dir on controller-1")


def test_a_data_dir_deploy_etcd_made_is_accepted_on_every_rerun(site):
    inv, hosts = site
    assert run(inv, hosts).ok
    assert all(MARKER in h.files and f"{DATA_DIR}/member" in h.dirs for h in hosts.values())
    report = run(inv, hosts)
    assert report.ok and report.nothing_changed
    text = INVENTORY_YAML.format(pki=inv.pki.dir, anonymous="false", extra="") + \
        "etcd:\n  extra_flags: {heartbeat-interval: 150}\n"
    report = run(parse_inventory(text, Path("inv.yaml")), hosts)
    assert report.ok and report.strategy == "rolling"        # a flag change rolls as before: the marker is ours
    assert all(r.outcome == D.DEPLOYED and r.restarted for r in report.results)


def test_a_member_deployed_before_the_marker_existed_is_accepted_and_gets_it_without_a_restart(site):
    inv, hosts = site
    assert run(inv, hosts).ok
    for h in hosts.values():
        del h.files[MARKER]          # as deploy-etcd left it before k8sboot-member.json: member/, our unit
    pids = {n: h.pid for n, h in hosts.items()}
    before = {n: len(h.commands) for n, h in hosts.items()}
    report = run(inv, hosts)
    assert report.ok and report.exit_code() == ExitCode.OK
    for name, h in hosts.items():
        r = by_host(report)[name]
        assert r.outcome == D.DEPLOYED and r.files_changed == (etcd.DATA_DIR_MARKER,) and not r.restarted
        assert h.pid == pids[name] and "restart" not in h.commands[before[name]:]
        assert json.loads(h.files[MARKER][0])["member"] == name
    assert run(inv, hosts).nothing_changed


def test_a_pre_marker_member_under_another_clusters_unit_is_foreign(site):
    """member/ without a marker, and the installed unit has another --initial-cluster-token."""
    inv, hosts = site
    other = inventory(inv.pki.dir, name="other")
    h = hosts["controller-0"]
    another_clusters_data(h, marker=None)
    h.files[layout.ETCD_UNIT_PATH] = (etcd.render_etcd_unit(other, other.controller("controller-0")).text.encode(),
                                      0o644, "root", "root")
    report = run(inv, hosts)
    assert report.exit_code() == ExitCode.ETCD_FOREIGN_DATA and nothing_changed(hosts)


@pytest.mark.parametrize("has_member, marker, unit, foreign", [
    (False, "", None, False),                      # a new data dir
    (True, "OURS", None, False),                   # ours
    (False, "OURS", None, False),                  # ours, etcd never got to start
    (True, "", "OUR UNIT", False),                 # ours from before the marker
    (True, "", None, True),                        # someone else's member
    (True, "", "OTHER UNIT", True),
    (False, '{"cluster": "other"}', None, True),   # a marker of another cluster, even without member/
])
def test_check_data_dir_table(has_member, marker, unit, foreign):
    inv = inventory("pki")
    host = inv.controller("controller-1")
    other = inventory("pki", name="other")
    marker = etcd.render_marker(inv, host).decode() if marker == "OURS" else marker
    unit = {"OUR UNIT": etcd.render_etcd_unit(inv, host).text,
            "OTHER UNIT": etcd.render_etcd_unit(other, other.controller("controller-1")).text}.get(unit)
    why = etcd.check_data_dir(inv, host, has_member=has_member, marker=marker, unit_text=unit)
    assert (why is not None) == foreign


def test_cli_foreign_data_dir_is_one_line_with_its_hint_and_exit_20(tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    write_etcd_pki(pki)
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY_YAML.format(pki=pki, anonymous="false", extra=""))
    hosts = {n: etcd_host(n) for n in NAMES}
    another_clusters_data(hosts["controller-2"], marker=None)
    monkeypatch.setattr(D, "ssh_connector", lambda inventory, **kw: fake_connector(hosts))
    fake = FakeEtcd(hosts)
    fake.close = lambda: None
    monkeypatch.setattr(D, "etcd_prober", lambda inventory, *a, **kw: fake)
    res = CliRunner().invoke(app, ["deploy-etcd", "-i", str(inv)], catch_exceptions=False)
    assert res.exit_code == ExitCode.ETCD_FOREIGN_DATA, res.output
    assert "Traceback" not in res.output
    assert "controller-2: the etcd data dir /var/lib/etcd/k8s-test holds a member (member/)" in res.stderr
    assert "hint: etcd would ignore --initial-cluster on it" in res.stderr
    assert "the etcd data dir on controller-2 is another cluster's; no member is changed" in res.stderr
    assert nothing_changed(hosts)
