"""deploy-apiserver / render-apiserver orchestration over an in-memory fake of k8sboot.remote.Remote.

The real thing runs in tests/lab/test_deploy.py; here the planning and orchestration logic is
checked fast: what is uploaded, when systemd is touched, what one failing host does to others,
exit codes, and the CLI's output (never a traceback for a user error)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from k8sboot import deploy as D
from k8sboot import layout
from k8sboot import plan as planmod
from k8sboot.cli import app
from k8sboot.errors import ExitCode, K8sbootError, PkiError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import (FakeHost, fake_connector, fake_readyz, healthy_etcd, make_inventory,  # noqa: E402
                            write_fake_pki)

NAMES = ("controller-0", "controller-1", "controller-2")


@pytest.fixture
def lab(tmp_path):
    pki = tmp_path / "pki"
    write_fake_pki(pki)
    hosts = {n: FakeHost(n) for n in NAMES}
    return tmp_path, pki, hosts


def run(inv, fakes, **opts):
    return D.deploy(inv, D.DeployOptions(wait=2, **opts), connect=fake_connector(fakes), readyz=fake_readyz(fakes),
                    etcd_ask=healthy_etcd())


def by_host(report):
    return {r.host: r for r in report.results}


def test_first_deploy_installs_everything_everywhere_and_never_the_ca_key(lab):
    tmp, pki, hosts = lab
    report = run(make_inventory(pki=pki), hosts)
    assert report.ok and report.exit_code() == ExitCode.OK
    for name, h in hosts.items():
        r = by_host(report)[name]
        assert r.outcome == D.DEPLOYED and r.restarted and r.unit_changed and r.state == "active/running"
        assert sorted(h.uploads) == sorted([f.local_name for f in layout.CONTROLLER_FILES] + [layout.UNIT_NAME])
        assert h.commands == ["enable", "restart"]      # a new unit: no daemon-reload needed
        assert h.dirs[layout.REMOTE_PKI_DIR] == (0o700, "root", "root")
        assert not any("ca-key" in p for p in h.files)
        assert h.files["/var/lib/kubernetes/kubernetes-key.pem"][1] == 0o600


def test_second_deploy_uploads_nothing_and_restarts_nothing(lab):
    tmp, pki, hosts = lab
    inv = make_inventory(pki=pki)
    run(inv, hosts)
    before = {n: (list(h.uploads), list(h.commands), h.pid) for n, h in hosts.items()}
    report = run(inv, hosts)
    assert report.ok and report.nothing_changed
    assert all(r.outcome == D.UNCHANGED and not r.restarted and r.message == "already up to date"
               for r in report.results)
    assert {n: (h.uploads, h.commands, h.pid) for n, h in hosts.items()} == before


def test_inventory_change_updates_only_the_unit_and_restarts_every_host(lab):
    tmp, pki, hosts = lab
    run(make_inventory(pki=pki), hosts)
    for h in hosts.values():
        h.uploads.clear()
        h.commands.clear()
    report = run(make_inventory(pki=pki, anonymous=True), hosts)
    for h in hosts.values():
        assert h.uploads == [layout.UNIT_NAME]
        assert h.commands == ["stage", "daemon-reload", "restart"]   # staged at once, switched in its wave
    assert all(r.files_changed == (layout.UNIT_NAME,) and r.restarted for r in report.results)
    # every host served: one at a time, in inventory order
    assert report.strategy == "rolling" and report.waves == [[n] for n in NAMES]
    assert [by_host(report)[n].wave for n in NAMES] == [1, 2, 3]


def test_reissued_cert_uploads_only_that_file_and_restarts_without_daemon_reload(lab):
    tmp, pki, hosts = lab
    inv = make_inventory(pki=pki)
    run(inv, hosts)
    (pki / "kube-apiserver-kubelet-client.pem").write_bytes(b"reissued\n")
    for h in hosts.values():
        h.uploads.clear()
        h.commands.clear()
    run(inv, hosts)
    for h in hosts.values():
        assert h.uploads == ["kube-apiserver-kubelet-client.pem"] and h.commands == ["stage", "restart"]


def test_a_renewed_serving_cert_is_uploaded_and_nothing_restarts(lab):
    """The running server re-reads kubernetes.pem itself (issue 13, point 4)."""
    tmp, pki, hosts = lab
    inv = make_inventory(pki=pki)
    run(inv, hosts)
    (pki / "kubernetes.pem").write_bytes(b"renewed\n")
    for h in hosts.values():
        h.uploads.clear()
        h.commands.clear()
    report = run(inv, hosts)
    for h in hosts.values():
        assert h.uploads == ["kubernetes.pem"] and "restart" not in h.commands
    assert all("no restart" in r.message for r in report.results)


def test_dry_run_changes_nothing_and_reports_the_diff(lab):
    tmp, pki, hosts = lab
    report = run(make_inventory(pki=pki), hosts, dry_run=True)
    assert report.ok
    for h in hosts.values():
        assert h.uploads == [] and h.commands == [] and layout.UNIT_PATH not in h.files
    r = by_host(report)["controller-0"]
    assert r.outcome == D.DRY_RUN and "+  --advertise-address=10.240.0.10 \\" in r.unit_diff
    assert "would upload" in r.message and "would restart" in r.message


def test_hosts_option_touches_only_those_hosts(lab):
    tmp, pki, hosts = lab
    report = run(make_inventory(pki=pki), hosts, hosts=("controller-1",))
    assert [r.host for r in report.results] == ["controller-1"]
    assert hosts["controller-0"].uploads == [] and hosts["controller-2"].uploads == []


def test_unknown_host_in_hosts_option_is_a_usage_error(lab):
    tmp, pki, hosts = lab
    with pytest.raises(K8sbootError, match="controller-9") as err:
        run(make_inventory(pki=pki), hosts, hosts=("controller-9",))
    assert err.value.code == ExitCode.USAGE


def test_incomplete_local_pki_fails_before_any_change_and_lets_every_host_go(lab):
    """The hosts are dialled while the local files are read; a local error ends every connection
    (and its lock) before anything is installed."""
    tmp, pki, hosts = lab
    (pki / "service-account-key.pem").unlink()
    opened: list = []
    with pytest.raises(PkiError, match="service-account-key.pem"):
        D.deploy(make_inventory(pki=pki), D.DeployOptions(wait=2), connect=fake_connector(hosts, opened),
                 readyz=fake_readyz(hosts), etcd_ask=healthy_etcd())
    assert all(h.commands == [] and h.uploads == [] and not h.locked for h in hosts.values())
    assert all(r.closed for r in opened)


def test_facts_are_read_for_exactly_the_files_that_are_then_planned():
    """`desired_paths` is what a host is asked about before the files exist locally."""
    from deploy_helpers import fake_pki_files

    for binary in (None, b"\x7fELF"):
        files = planmod.build_desired_files(fake_pki_files(), "[Unit]\n", binary)
        assert planmod.desired_paths(binary=binary is not None) == tuple(f.path for f in files)


def test_one_failing_host_never_stops_the_others(lab):
    tmp, pki, hosts = lab
    hosts["controller-1"] = FakeHost("controller-1", binary=False)
    report = run(make_inventory(pki=pki), hosts)
    r = by_host(report)
    assert r["controller-1"].outcome == D.FAILED and "kube-apiserver is missing" in r["controller-1"].message
    assert r["controller-0"].ok and r["controller-2"].ok
    assert report.exit_code() == ExitCode.DEPLOY


def test_rollback_on_failure_restores_the_previous_working_state(lab):
    tmp, pki, hosts = lab
    inv = make_inventory(pki=pki)
    run(inv, hosts)
    h = hosts["controller-0"]
    good = dict(h.files)
    # a new unit that references a file the host will not get (extra flag to a missing path)
    bad_inv = make_inventory(pki=pki, extra_flags={"audit-policy-file": "/var/lib/kubernetes/missing.yaml"})
    report = run(bad_inv, hosts, hosts=("controller-0",), rollback_on_failure=True)
    r = by_host(report)["controller-0"]
    assert r.outcome == D.ROLLED_BACK and not r.ok
    assert any("missing.yaml" in line for line in r.journal)
    assert h.files[layout.UNIT_PATH] == good[layout.UNIT_PATH]
    assert h.active == "active" and report.exit_code() == ExitCode.DEPLOY
    assert not any(p.endswith(".k8sboot-prev") for p in h.files)


def test_without_rollback_a_failure_is_left_in_place_and_reported(lab):
    tmp, pki, hosts = lab
    run(make_inventory(pki=pki), hosts)
    bad_inv = make_inventory(pki=pki, extra_flags={"audit-policy-file": "/var/lib/kubernetes/missing.yaml"})
    report = run(bad_inv, hosts, hosts=("controller-0",))
    r = by_host(report)["controller-0"]
    assert r.outcome == D.FAILED and "crashed" in r.message and r.journal


def test_locked_host_is_reported_and_others_proceed(lab):
    tmp, pki, hosts = lab
    hosts["controller-2"].locked = True
    report = run(make_inventory(pki=pki), hosts)
    r = by_host(report)["controller-2"]
    assert r.outcome == D.ERROR and r.code == ExitCode.LOCKED
    assert report.exit_code() == ExitCode.LOCKED
    assert by_host(report)["controller-0"].ok


def test_mode_loosened_on_a_host_is_fixed_without_restart(lab):
    tmp, pki, hosts = lab
    inv = make_inventory(pki=pki)
    run(inv, hosts)
    h = hosts["controller-0"]
    data = h.files["/var/lib/kubernetes/kubernetes-key.pem"][0]
    h.files["/var/lib/kubernetes/kubernetes-key.pem"] = (data, 0o644, "root", "root")
    h.commands.clear()
    report = run(inv, hosts)
    assert h.files["/var/lib/kubernetes/kubernetes-key.pem"][1] == 0o600
    assert h.commands == [] and not by_host(report)["controller-0"].restarted


def test_parallel_bound_is_respected(lab):
    import threading
    import time

    tmp, pki, hosts = lab
    active = []
    peak = []
    lock = threading.Lock()
    base = fake_connector(hosts)

    def connect(host):
        with lock:
            active.append(host.name)
            peak.append(len(active))
        time.sleep(0.05)
        with lock:
            active.remove(host.name)
        return base(host)

    D.deploy(make_inventory(pki=pki), D.DeployOptions(parallel=1, wait=2), connect=connect, readyz=fake_readyz(hosts),
             etcd_ask=healthy_etcd())
    assert max(peak) == 1


def test_interrupt_closes_every_connection_and_ends_at_once_with_interrupted(lab):
    """Ctrl-C while every host is mid-command: each connection is closed (an install in flight
    loses its input, and the host removes what it staged), deploy() raises Interrupted (exit 130)
    with a rerun hint at once instead of finishing the hosts, and nothing was uploaded."""
    import signal
    import threading
    import time

    from deploy_helpers import FakeRemote

    from k8sboot.errors import Interrupted, RemoteError

    tmp, pki, hosts = lab
    started = threading.Semaphore(0)
    remotes = []

    class Stuck(FakeRemote):
        cut = threading.Event()

        def read_facts(self, request, *, lock_wait=None):
            started.release()
            assert self.cut.wait(10), "never closed"
            raise RemoteError(f"{self.name}: the connection closed")

        def close(self):
            self.cut.set()
            super().close()

        def abort(self):              # SshRemote's: cut the socket without queueing behind an upload
            self.aborted = True
            self.close()

    def connect(host):
        remotes.append(Stuck(hosts[host.name]))
        return remotes[-1]

    def interrupt():
        for _ in NAMES:
            started.acquire()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as info:
        D.deploy(make_inventory(pki=pki), D.DeployOptions(wait=2), connect=connect, readyz=fake_readyz(hosts),
                 etcd_ask=healthy_etcd())
    assert time.monotonic() - t0 < 5
    assert info.value.code == ExitCode.INTERRUPTED and "rerun" in info.value.hint
    assert len(remotes) == 3 and all(r.closed and getattr(r, "aborted", False) for r in remotes)
    assert not any(h.uploads for h in hosts.values())


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli(lab, monkeypatch):
    tmp, pki, hosts = lab
    inv_path = tmp / "inv.yaml"
    from deploy_helpers import INVENTORY_YAML
    inv_path.write_text(INVENTORY_YAML.format(pki=pki, anonymous="false", extra=""))
    monkeypatch.setattr(D, "ssh_connector", lambda inventory, **kw: fake_connector(hosts))
    monkeypatch.setattr(D, "health_checker", lambda inventory, port: fake_readyz(hosts))
    monkeypatch.setattr(D, "apiserver_etcd_prober",
                        lambda inventory, timeout=2.0: SimpleNamespace(url=healthy_etcd(), close=lambda: None))
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke, inv_path, hosts


def test_cli_deploy_then_rerun_says_already_up_to_date(cli):
    invoke, inv, hosts = cli
    first = invoke("deploy-apiserver", "--inventory", str(inv))
    assert first.exit_code == 0, first.output
    assert "deployed" in first.output
    second = invoke("deploy-apiserver", "--inventory", str(inv))
    assert second.exit_code == 0 and "already up to date" in second.output


def test_cli_deploy_json(cli):
    invoke, inv, hosts = cli
    res = invoke("deploy-apiserver", "-i", str(inv), "--json")
    doc = json.loads(res.stdout)
    assert doc["ok"] and [h["host"] for h in doc["hosts"]] == list(NAMES)
    assert set(doc["hosts"][0]) >= {"files_changed", "unit_changed", "restarted", "state", "seconds"}


def test_cli_dry_run_prints_the_diff(cli):
    invoke, inv, hosts = cli
    res = invoke("deploy-apiserver", "-i", str(inv), "--dry-run")
    assert res.exit_code == 0
    assert "+++ controller-0:/etc/systemd/system/kube-apiserver.service (rendered)" in res.stdout
    assert all(h.uploads == [] for h in hosts.values())


def test_cli_failure_exit_code_and_no_traceback(cli):
    invoke, inv, hosts = cli
    hosts["controller-1"].files.pop(layout.BINARY_PATH)
    res = invoke("deploy-apiserver", "-i", str(inv))
    assert res.exit_code == ExitCode.DEPLOY
    assert "controller-1" in res.output and "Traceback" not in res.output


def test_cli_unit_that_fails_to_start_is_reported_with_its_journal_lines(cli):
    """A kube-apiserver that crashes on start: the deploy says which host, exits 9, and shows the
    journal lines of the unit (the real binary's `open <path>: no such file or directory`)."""
    invoke, inv, hosts = cli
    assert invoke("deploy-apiserver", "-i", str(inv)).exit_code == 0
    inv.write_text(inv.read_text().replace(
        "ssh:", "  extra_flags:\n    audit-policy-file: /var/lib/kubernetes/missing.yaml\nssh:", 1))
    res = invoke("deploy-apiserver", "-i", str(inv), "--hosts", "controller-0")
    assert res.exit_code == ExitCode.DEPLOY, res.output
    assert "controller-0" in res.stderr and "Traceback" not in res.output
    assert ("journal: kube-apiserver: open /var/lib/kubernetes/missing.yaml: no such file or directory"
            in res.stderr)
    assert hosts["controller-0"].active == "activating"          # left as it is, without --rollback-on-failure


@pytest.mark.parametrize("args,code,needle", [
    (("--hosts", "nope"), ExitCode.USAGE, "not among the controllers"),
    (("--binary", "/nonexistent/kube-apiserver"), ExitCode.USAGE, "--binary"),
    (("--templates", "/nonexistent"), ExitCode.TEMPLATE, "not a directory"),
])
def test_cli_user_errors_have_codes_and_no_traceback(cli, args, code, needle):
    invoke, inv, hosts = cli
    res = invoke("deploy-apiserver", "-i", str(inv), *args)
    assert res.exit_code == code, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_cli_missing_inventory(cli):
    invoke, inv, hosts = cli
    res = invoke("deploy-apiserver", "-i", "/nonexistent.yaml")
    assert res.exit_code == ExitCode.INVENTORY and "Traceback" not in res.output


def test_cli_render_prints_one_unit(cli):
    invoke, inv, hosts = cli
    res = invoke("render-apiserver", "-i", str(inv), "--host", "controller-2")
    assert res.exit_code == 0
    assert "--advertise-address=10.240.0.12" in res.stdout and res.stdout.startswith("# Rendered by k8sboot")


def test_cli_render_out_dir_writes_every_unit(cli, tmp_path):
    invoke, inv, hosts = cli
    out = tmp_path / "units"
    out.mkdir()
    res = invoke("render-apiserver", "-i", str(inv), "--out", str(out))
    assert res.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.kube-apiserver.service" for n in NAMES]
    assert oct((out / "controller-0.kube-apiserver.service").stat().st_mode & 0o777) == "0o644"


def test_cli_help_has_worked_examples():
    runner = CliRunner()
    for cmd in ("render-apiserver", "deploy-apiserver"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Examples:" in res.output and "k8sboot " + cmd in res.output


def test_no_restart_defers_the_restart_to_the_next_deploy(lab):
    tmp, pki, hosts = lab
    run(make_inventory(pki=pki), hosts)
    pids = {n: h.pid for n, h in hosts.items()}
    report = run(make_inventory(pki=pki, anonymous=True), hosts, no_restart=True)
    assert report.ok and all(not r.restarted and r.unit_changed for r in report.results)
    assert {n: h.pid for n, h in hosts.items()} == pids
    later = run(make_inventory(pki=pki, anonymous=True), hosts)
    assert all(r.restarted and r.files_changed == () for r in later.results)
    assert all("pending" in r.restart_reasons[0] for r in later.results)
    assert all(h.pid != pids[n] for n, h in hosts.items())
    assert run(make_inventory(pki=pki, anonymous=True), hosts).nothing_changed
