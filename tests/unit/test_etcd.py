"""deploy-etcd: the member's flags and unit (k8sboot.etcd), the inventory's `etcd:` section, and
the deploy over an in-memory fake of k8sboot.remote.Remote: a first deploy starts every member at
once, a change rolls one member at a time, and a roll that would lose quorum stops.

The real thing (3 members of real etcd on lab hosts) is tests/lab/test_etcd.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k8sboot import deploy as D
from k8sboot import etcd, layout
from k8sboot.errors import ExitCode, InventoryError
from k8sboot.inventory import parse_inventory
from k8sboot.probe import ProbeAnswer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import INVENTORY_YAML, FakeHost, fake_connector, write_fake_pki  # noqa: E402

NAMES = ("controller-0", "controller-1", "controller-2")
DATA_DIR = "/var/lib/etcd/k8s-test"


def inventory(pki="pki", etcd_section: str = "", **kw):
    text = INVENTORY_YAML.format(pki=pki, anonymous="false", extra="")
    return parse_inventory(text + etcd_section, Path("inv.yaml"))


def write_etcd_pki(directory: Path, tag: str = "") -> None:
    write_fake_pki(directory, tag)
    for f in layout.ETCD_FILES:
        (directory / f.local_name).write_bytes(f"--- {f.local_name} {tag} ---\n".encode())
    (directory / "etcd-ca-key.pem").write_bytes(b"ETCD CA KEY - never uploaded\n")


def etcd_host(name: str, *, binary: bool = True) -> FakeHost:
    h = FakeHost(name, binary=binary, unit_path=layout.ETCD_UNIT_PATH, binary_path=layout.ETCD_PACKAGE_BINARY,
                 pki_dir=layout.ETCD_DIR)
    h.data_dir = DATA_DIR
    return h


class FakeEtcd:
    """What the workstation's HTTPS asks of the members: /health per member (healthy when its unit
    runs, unless listed in `unhealthy`), and the member list of a running cluster."""

    def __init__(self, hosts, unhealthy=(), members=None):
        self.hosts, self.unhealthy, self.members = hosts, set(unhealthy), members
        self.asked: list[tuple[str, str]] = []
        self.log = None          # a shared event list: health looks, interleaved with restarts

    def __call__(self, host, what):
        self.asked.append((host.name, what))
        h = self.hosts[host.name]
        if h.active != "active":
            return ProbeAnswer(None, error="ConnectionRefusedError: [Errno 111] Connection refused")
        if what == "members":
            if self.members is None:
                return ProbeAnswer(None, error="ConnectionRefusedError")
            return ProbeAnswer(200, json.dumps({"members": self.members}))
        if host.name in self.unhealthy:
            return ProbeAnswer(503, '{"health":"false","reason":"RAFT NO LEADER"}')
        return ProbeAnswer(200, '{"health":"true","reason":""}')


@pytest.fixture
def cluster(tmp_path):
    pki = tmp_path / "pki"
    write_etcd_pki(pki)
    hosts = {n: etcd_host(n) for n in NAMES}
    return pki, hosts


def run(inv, hosts, ask=None, **opts):
    opts.setdefault("wait", 2)
    return D.deploy_etcd(inv, D.DeployOptions(**opts), connect=fake_connector(hosts), ask=ask or FakeEtcd(hosts))


def by_host(report):
    return {r.host: r for r in report.results}


# --- flags and unit -----------------------------------------------------------------------------


def test_flags_are_the_tutorials_with_etcds_own_pki_and_every_controller_in_the_initial_cluster():
    inv = inventory()
    flags = dict(etcd.build_etcd_flags(inv, inv.controller("controller-1")))
    assert flags["name"] == "controller-1"
    assert flags["cert-file"] == "/etc/etcd/etcd-server.pem" and flags["key-file"] == "/etc/etcd/etcd-server-key.pem"
    assert flags["peer-cert-file"] == "/etc/etcd/etcd-peer.pem"
    assert flags["peer-key-file"] == "/etc/etcd/etcd-peer-key.pem"
    assert flags["trusted-ca-file"] == flags["peer-trusted-ca-file"] == "/etc/etcd/etcd-ca.pem"
    assert flags["client-cert-auth"] == flags["peer-client-cert-auth"] == "true"
    assert flags["initial-advertise-peer-urls"] == flags["listen-peer-urls"] == "https://10.240.0.11:2380"
    assert flags["listen-client-urls"] == "https://10.240.0.11:2379,https://127.0.0.1:2379"
    assert flags["advertise-client-urls"] == "https://10.240.0.11:2379"
    assert flags["initial-cluster"] == ("controller-0=https://10.240.0.10:2380,controller-1=https://10.240.0.11:2380,"
                                        "controller-2=https://10.240.0.12:2380")
    assert flags["initial-cluster-state"] == "new" and flags["data-dir"] == DATA_DIR
    assert flags["initial-cluster-token"] == "etcd-k8s-test"
    assert "auto-tls" not in flags and "peer-auto-tls" not in flags
    # every TLS file the unit names is one deploy-etcd ships
    shipped = {f.path for f in layout.ETCD_FILES}
    assert {v for k, v in flags.items() if k.endswith("-file")} <= shipped


def test_initial_cluster_state_stays_new_whatever_runs():
    """etcd ignores --initial-cluster* once a member has data: `new` is rendered for good (a flip to
    `existing` would restart every member for nothing)."""
    inv = inventory()
    assert all(dict(etcd.build_etcd_flags(inv, h))["initial-cluster-state"] == "new" for h in inv.controllers)


def _analyze_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    binary = root / "usr/bin/etcd"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    return root


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not Path("/usr/lib/systemd/system").is_dir(),
                    reason="systemd-analyze is not installed")
def test_every_rendered_etcd_unit_passes_systemd_analyze_verify(tmp_path):
    root = _analyze_root(tmp_path)
    inv = inventory(etcd_section="etcd:\n  extra_flags: {snapshot-count: 20000, heartbeat-interval: 150}\n")
    for host in inv.controllers:
        unit = etcd.render_etcd_unit(inv, host)
        (root / layout.ETCD_UNIT_PATH.lstrip("/")).write_text(unit.text)
        proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", layout.ETCD_UNIT_NAME],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip() == "", proc.stderr
        assert "Type=notify" in unit.text and "Restart=on-failure" in unit.text
        assert "--snapshot-count=20000" in unit.text and "--heartbeat-interval=150" in unit.text


def test_the_unit_execs_the_uploaded_binary_with_binary():
    inv = inventory()
    unit = etcd.render_etcd_unit(inv, inv.controllers[0], layout.ETCD_UPLOADED_BINARY)
    assert "ExecStart=/usr/local/bin/etcd \\\n" in unit.text


# --- the inventory's etcd: section ------------------------------------------------------------


def test_etcd_data_dir_may_be_set_and_defaults_to_the_cluster_name():
    assert etcd.data_dir(inventory()) == DATA_DIR
    assert etcd.data_dir(inventory(etcd_section="etcd:\n  data_dir: /srv/etcd/k8s/\n")) == "/srv/etcd/k8s"


@pytest.mark.parametrize("section, fragment", [
    ("etcd:\n  data_dri: /srv/etcd\n", "inv.yaml:21: etcd.data_dri: unknown key"),
    ("etcd:\n  data_dir: var/lib/etcd\n", "inv.yaml:21: etcd.data_dir: 'var/lib/etcd' must be an absolute path"),
    ("etcd:\n  data_dir: /var/lib/etcd/default\n", "is the data dir of the member Debian's etcd-server package"),
    ("etcd:\n  data_dir: /var/lib/etcd/x/../default\n", "must be an absolute path without '..'"),
    ("etcd:\n  extra_flags: [a]\n", "etcd.extra_flags: must be a mapping"),
    ("etcd: [1]\n", "inv.yaml:20: etcd: must be a mapping"),
])
def test_etcd_section_errors_name_the_file_line_and_key(section, fragment):
    with pytest.raises(InventoryError) as err:
        inventory(etcd_section=section)
    assert fragment in err.value.message


def test_a_cluster_named_default_would_take_debians_member_data_and_is_refused():
    text = INVENTORY_YAML.format(pki="pki", anonymous="false", extra="").replace("name: k8s-test", "name: default")
    with pytest.raises(InventoryError, match=r"inv.yaml:2: cluster.name: 'default' would put etcd's data in "
                                             r"/var/lib/etcd/default"):
        parse_inventory(text, Path("inv.yaml"))


@pytest.mark.parametrize("flag, value, fragment", [
    ("client-cert-auth", "false", "would override --client-cert-auth (k8sboot renders --client-cert-auth=true)"),
    ("auto-tls", "true", "would set --auto-tls"),
    ("peer-auto-tls", "true", "would set --peer-auto-tls"),
    ("data-dir", "/tmp/x", "would override --data-dir"),
    ("initial-cluster-state", "existing", "would override --initial-cluster-state"),
    ("trusted-ca-file", "''", "would drop --trusted-ca-file"),
])
def test_extra_flags_may_not_touch_identity_urls_or_tls(flag, value, fragment):
    inv = inventory(etcd_section=f"etcd:\n  extra_flags:\n    {flag}: {value}\n")
    with pytest.raises(InventoryError) as err:
        etcd.build_etcd_flags(inv, inv.controllers[0])
    assert err.value.message.startswith(f"inv.yaml:22: etcd.extra_flags.{flag}: ") and fragment in err.value.message


def test_extra_flags_add_and_tune_and_restating_a_rendered_value_is_fine():
    inv = inventory(etcd_section="etcd:\n  extra_flags: {snapshot-count: 20000, client-cert-auth: true}\n")
    flags = etcd.build_etcd_flags(inv, inv.controllers[0])
    assert flags[-1] == ("snapshot-count", "20000") and dict(flags)["client-cert-auth"] == "true"


# --- health, quorum, members (pure) --------------------------------------------------------------


def test_health_is_true_only_for_health_true():
    assert etcd.parse_health(200, '{"health":"true","reason":""}') == (True, "healthy")
    assert not etcd.parse_health(503, '{"health":"false","reason":"RAFT NO LEADER"}')[0]
    assert "RAFT NO LEADER" in etcd.parse_health(503, '{"health":"false","reason":"RAFT NO LEADER"}')[1]
    assert not etcd.parse_health(200, '{"health":"false"}')[0]
    assert not etcd.parse_health(None, "ConnectionRefusedError")[0]


@pytest.mark.parametrize("healthy, down, ok", [
    (["a", "b", "c"], ["a"], True),
    (["b", "c"], ["a"], True),          # a is the sick one being fixed
    (["a", "b"], ["a"], False),         # c is down: taking a leaves b alone
    (["a", "b", "c", "d"], ["a"], True),
    (["a", "b", "c"], ["a", "b"], False),
])
def test_quorum_is_kept_by_the_healthy_members_that_stay(healthy, down, ok):
    members = ["a", "b", "c", "d"] if "d" in healthy else ["a", "b", "c"]
    why = etcd.check_quorum(healthy, members, down)
    assert (why is None) == ok
    if not ok:
        assert why.startswith(f"taking etcd down on {', '.join(down)} would leave ")


def test_a_single_member_has_no_quorum_to_keep():
    assert etcd.check_quorum([], ["a"], ["a"]) is None
    assert "quorum needs 2" in etcd.check_quorum(["a", "b"], ["a", "b"], ["a"])   # two members: never one at a time


def test_join_is_refused_unless_the_cluster_lists_the_member_as_never_started():
    inv = inventory()
    c2 = inv.controller("controller-2")
    listed = [{"name": "controller-0", "peerURLs": ["https://10.240.0.10:2380"]},
              {"name": "", "peerURLs": ["https://10.240.0.12:2380"]}]
    assert etcd.check_join(c2, None) is None                                # nothing runs: bootstrap
    assert etcd.check_join(c2, etcd.parse_member_list(json.dumps({"members": listed}))) is None
    listed[1]["name"] = "controller-2"
    assert "its data is lost" in etcd.check_join(c2, etcd.parse_member_list(json.dumps({"members": listed})))
    why = etcd.check_join(c2, etcd.parse_member_list(json.dumps({"members": listed[:1]})))
    assert "must join with `etcdctl member add controller-2 --peer-urls=https://10.240.0.12:2380`" in why
    assert "rather than start a second cluster" in why


# --- the deploy (FakeRemote) ---------------------------------------------------------------------


def test_first_deploy_starts_every_member_at_once_with_its_files_and_data_dir(cluster):
    pki, hosts = cluster
    report = run(inventory(pki=pki), hosts)
    assert report.ok and report.exit_code() == ExitCode.OK
    assert report.waves == [] and report.strategy == "parallel"      # nobody serves: no waves
    for name, h in hosts.items():
        r = by_host(report)[name]
        assert r.outcome == D.DEPLOYED and r.restarted and r.wave is None and r.state == "active/running"
        assert sorted(h.uploads) == sorted([f.local_name for f in layout.ETCD_FILES]
                                           + [layout.ETCD_UNIT_NAME, etcd.DATA_DIR_MARKER])
        marker = json.loads(h.files[f"{DATA_DIR}/{etcd.DATA_DIR_MARKER}"][0])
        assert marker["member"] == name and marker["initial_cluster_token"] == "etcd-k8s-test"
        assert h.files[f"{DATA_DIR}/{etcd.DATA_DIR_MARKER}"][1] == 0o600
        assert h.dirs[layout.ETCD_DIR] == (0o700, "root", "root")
        assert h.dirs[DATA_DIR] == (0o700, "root", "root")
        assert h.files["/etc/etcd/etcd-server-key.pem"][1] == h.files["/etc/etcd/etcd-peer-key.pem"][1] == 0o600
        assert not any("ca-key" in p or "healthcheck" in p for p in h.files)
        assert h.commands == ["enable", "restart"]


def test_a_new_clusters_members_start_a_few_tens_of_ms_apart_in_inventory_order(cluster, monkeypatch):
    """Started in the same instant, etcd 3.4 members of a new cluster wait up to 1 s for each
    peer's bound-but-not-yet-serving port (measured: 1.5-6.4 s for ten members, 0.5-0.8 s when
    20-50 ms apart); deploy-etcd staggers the first starts, and only those."""
    pki, hosts = cluster
    delays: dict[str, float] = {}
    real = D.start_delay

    def recorded(job, run):
        delays[run.host.name] = real(job, run)
        return delays[run.host.name]

    monkeypatch.setattr(D, "start_delay", recorded)
    assert run(inventory(pki=pki), hosts).ok
    assert delays == {n: i * D.ETCD_START_STAGGER for i, n in enumerate(NAMES)}
    assert 0.02 <= D.ETCD_START_STAGGER <= 0.05
    delays.clear()            # a flag change on serving members: a roll, nothing staggered
    changed = inventory(pki=pki, etcd_section="etcd:\n  extra_flags: {heartbeat-interval: 150}\n")
    assert run(changed, hosts).ok and set(delays.values()) <= {0.0}


def test_second_deploy_changes_nothing(cluster):
    pki, hosts = cluster
    inv = inventory(pki=pki)
    run(inv, hosts)
    before = {n: (dict(h.files), h.pid) for n, h in hosts.items()}
    report = run(inv, hosts)
    assert report.ok and report.nothing_changed
    assert all(r.outcome == D.UNCHANGED and not r.restarted for r in report.results)
    assert {n: (dict(h.files), h.pid) for n, h in hosts.items()} == before


def test_a_flag_change_rolls_one_member_at_a_time_with_quorum_checked_before_each(cluster):
    pki, hosts = cluster
    run(inventory(pki=pki), hosts)
    events: list[str] = []
    for n, h in hosts.items():
        start = h.start

        def traced(start=start, n=n):
            events.append(f"restart {n}")
            start()
        h.start = traced
    ask = FakeEtcd(hosts)
    original = ask.__call__

    class Traced(FakeEtcd):
        def __call__(self, host, what):
            events.append(f"{what} {host.name}")
            return original(host, what)
    report = run(inventory(pki=pki, etcd_section="etcd:\n  extra_flags: {heartbeat-interval: 150}\n"), hosts,
                 ask=Traced(hosts))
    assert report.ok, [r.message for r in report.results]
    assert report.strategy == "rolling" and report.waves == [["controller-0"], ["controller-1"], ["controller-2"]]
    restarts = [e for e in events if e.startswith("restart")]
    assert restarts == ["restart controller-0", "restart controller-1", "restart controller-2"]
    # before each restart every member's health was looked at; after it, the member's own
    for n in NAMES:
        i = events.index(f"restart {n}")
        assert {f"health {m}" for m in NAMES} <= set(events[max(0, i - 3):i]), events
        assert events[i + 1] == f"health {n}"
    assert all("--heartbeat-interval=150" in h.files[layout.ETCD_UNIT_PATH][0].decode() for h in hosts.values())


def test_a_roll_that_would_lose_quorum_stops_before_taking_any_member_down(cluster):
    pki, hosts = cluster
    run(inventory(pki=pki), hosts)
    pids = {n: h.pid for n, h in hosts.items()}
    ask = FakeEtcd(hosts, unhealthy={"controller-2"})
    report = run(inventory(pki=pki, etcd_section="etcd:\n  extra_flags: {heartbeat-interval: 150}\n"), hosts,
                 ask=ask, ready_timeout=0.3)
    assert not report.ok and report.exit_code() == ExitCode.DEPLOY
    assert report.stopped_by == "controller-0"
    r0 = by_host(report)["controller-0"]
    assert r0.outcome == D.NOT_REACHED and not r0.restarted
    assert r0.message.startswith("not restarted: taking etcd down on controller-0 would leave 1 of 3 members "
                                 "healthy and quorum needs 2 (not healthy now: controller-2)")
    assert "--strategy parallel" in r0.hint
    assert {n: h.pid for n, h in hosts.items()} == pids, "no member was restarted"
    assert all("heartbeat" not in h.files[layout.ETCD_UNIT_PATH][0].decode() for h in hosts.values())


def test_a_missing_binary_is_installed_from_debians_package_and_a_failure_names_the_host(cluster):
    pki, _ = cluster
    hosts = {n: etcd_host(n, binary=False) for n in NAMES}
    hosts["controller-2"].apt_ok = False
    report = run(inventory(pki=pki), hosts)
    r = by_host(report)
    assert r["controller-0"].outcome == D.DEPLOYED and "installed Debian's etcd-server" in r["controller-0"].restart_reasons
    assert hosts["controller-0"].commands[0] == "apt-get install"
    assert "policy-rc.d" in hosts["controller-0"].executed[0]      # Debian's own etcd.service never starts
    bad = r["controller-2"]
    assert not bad.ok and bad.message.startswith("controller-2: installing Debian's etcd-server with apt-get failed: ")
    assert "--binary PATH" in bad.hint


def test_a_binary_gone_from_a_deployed_member_is_installed_again_even_with_nothing_else_to_change(cluster):
    pki, hosts = cluster
    inv = inventory(pki=pki)
    run(inv, hosts)
    del hosts["controller-1"].files[layout.ETCD_PACKAGE_BINARY]
    report = run(inv, hosts)
    assert report.ok, [r.message for r in report.results]
    assert hosts["controller-1"].commands[-1] == "apt-get install"
    assert layout.ETCD_PACKAGE_BINARY in hosts["controller-1"].files
    assert "installed Debian's etcd-server" in by_host(report)["controller-1"].restart_reasons
    assert "apt-get install" not in hosts["controller-0"].commands


def test_dry_run_says_it_would_install_the_package_and_changes_nothing(cluster):
    pki, _ = cluster
    hosts = {n: etcd_host(n, binary=False) for n in NAMES}
    report = run(inventory(pki=pki), hosts, dry_run=True)
    assert report.ok and report.dry_run
    for h in hosts.values():
        assert h.commands == [] and h.uploads == [] and layout.ETCD_PACKAGE_BINARY not in h.files
    assert all("would install Debian's etcd-server with apt-get" in r.restart_reasons for r in report.results)


def test_binary_option_uploads_etcd_to_usr_local_bin_and_the_unit_runs_it(cluster, tmp_path):
    pki, _ = cluster
    hosts = {n: etcd_host(n, binary=False) for n in NAMES}
    binary = tmp_path / "etcd"
    binary.write_bytes(b"\x7fELF etcd\n")
    report = run(inventory(pki=pki), hosts, binary=binary)
    assert report.ok
    for h in hosts.values():
        assert h.files[layout.ETCD_UPLOADED_BINARY][:2] == (b"\x7fELF etcd\n", 0o755)
        assert "ExecStart=/usr/local/bin/etcd" in h.files[layout.ETCD_UNIT_PATH][0].decode()
        assert "apt-get install" not in h.commands


def test_debians_running_default_member_is_replaced_at_once_and_its_data_left_alone(cluster):
    pki, hosts = cluster
    for h in hosts.values():          # Debian's etcd.service runs (no unit of ours yet), with its data
        h.active, h.sub, h.pid, h.loaded_unit = "active", "running", 7, b"[Service]\nExecStart=/usr/bin/etcd\n"
        h.dirs[layout.ETCD_DEBIAN_DEFAULT_DATA] = (0o700, "etcd", "etcd")
    report = run(inventory(pki=pki), hosts)
    assert report.ok and report.waves == [], [r.message for r in report.results]   # nothing of ours served
    for h in hosts.values():
        assert h.dirs[layout.ETCD_DEBIAN_DEFAULT_DATA] == (0o700, "etcd", "etcd")
        assert h.pid != 7 and h.active == "active"
    reasons = by_host(report)["controller-0"].restart_reasons
    assert any("Debian's own etcd.service ran here" in r for r in reasons)
    assert any("/var/lib/etcd/default (the data of Debian's default member) is left as it is" in r for r in reasons)


def test_a_host_that_would_have_to_join_a_running_cluster_is_refused(cluster):
    pki, hosts = cluster
    inv = inventory(pki=pki)
    run(inv, hosts)
    fresh = etcd_host("controller-2")          # reinstalled: no data, nothing running
    hosts["controller-2"] = fresh
    members = [{"name": "controller-0", "peerURLs": ["https://10.240.0.10:2380"]},
               {"name": "controller-1", "peerURLs": ["https://10.240.0.11:2380"]}]
    report = run(inv, hosts, ask=FakeEtcd(hosts, members=members))
    bad = by_host(report)["controller-2"]
    assert not bad.ok and bad.outcome == D.FAILED
    assert bad.message.startswith("controller-2: it has no etcd data and the running cluster does not list "
                                  "https://10.240.0.12:2380: it must join with `etcdctl member add")
    assert fresh.commands == [] and fresh.uploads == []
    assert report.exit_code() == ExitCode.DEPLOY


def test_a_local_pki_without_etcds_files_fails_before_any_change(cluster, tmp_path):
    _, hosts = cluster
    pki = tmp_path / "old-pki"
    write_fake_pki(pki)              # a PKI from before etcd had its own CA
    (pki / "etcd-ca.pem").unlink()
    with pytest.raises(Exception) as err:
        run(inventory(pki=pki), hosts)
    assert "the local PKI has no etcd files" in str(err.value) and "gen-certs" in err.value.hint
    assert all(h.commands == [] and h.uploads == [] for h in hosts.values())


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_deploy_etcd_is_listed_and_its_user_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from k8sboot.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["--help"])
    assert "deploy-etcd" in res.stdout
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY_YAML.format(pki=tmp_path / "pki", anonymous="false", extra="")
                   + "etcd:\n  extra_flags: {peer-auto-tls: true}\n")
    res = runner.invoke(app, ["deploy-etcd", "-i", str(inv)])
    assert res.exit_code == ExitCode.INVENTORY and "Traceback" not in res.output
    assert "etcd.extra_flags.peer-auto-tls: would set --peer-auto-tls" in res.stderr
    res = runner.invoke(app, ["deploy-etcd", "-i", str(inv), "--strategy", "sideways"])
    assert res.exit_code == ExitCode.USAGE and "Traceback" not in res.output


# --- the rendered flags run a real etcd (Debian's 3.4, unpacked by tests/etcd_helpers.py) ----------


def test_the_rendered_flags_run_a_real_three_member_etcd_that_the_gate_and_the_quorum_check_read(tmp_path):
    """Three members on 127.0.0.2-4 with the flags deploy-etcd renders (paths moved into tmp_path,
    and without the shared 127.0.0.1 client URL, which three members on one machine cannot all
    bind), PKI from gen-certs: the workstation's health gate sees each healthy, the member list
    through the v3 gateway is the inventory, and with one member gone the quorum check refuses
    to take another."""
    from deploy_helpers import loopback_etcd

    from k8sboot import health

    with loopback_etcd(tmp_path) as (inv, procs):
        ask = D.etcd_prober(inv)
        gate = D.etcd_health(ask)
        for h in inv.controllers:
            ready = health.wait_ready(h, gate, 30)
            assert ready.ready, (h.name, ready.detail, (tmp_path / f"{h.name}.log").read_text()[-2000:])
        listed = etcd.parse_member_list(ask(inv.controllers[1], "members").body)
        assert sorted((m.name, m.peer_urls) for m in listed) == [
            (f"controller-{i}", (f"https://127.0.0.{i + 2}:2380",)) for i in range(3)]
        procs["controller-2"].terminate()
        procs["controller-2"].wait(10)
        healthy = [h.name for h in inv.controllers if etcd.parse_health(ask(h, "health").status,
                                                                          ask(h, "health").body)[0]]
        assert healthy == ["controller-0", "controller-1"]
        assert etcd.check_quorum(healthy, [h.name for h in inv.controllers], ["controller-0"]) == (
            "taking etcd down on controller-0 would leave 1 of 3 members healthy and quorum needs 2 "
            "(not healthy now: controller-2)")
