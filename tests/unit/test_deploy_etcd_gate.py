"""deploy-apiserver asks its etcd before it changes any host (issue 12, point 5).

Every --etcd-servers URL gets GET /health from the workstation with etcd's CA and the API server's
own apiserver-etcd-client pair, once per deploy and only when some host has something to change.
A quorum of them healthy: one line per member that is not, a warning, and the deploy goes on;
fewer: no host is changed and the exit code is ETCD_UNAVAILABLE (19).

The planning and refusal logic runs over the in-memory FakeRemote; the probe itself against a real
three-member etcd 3.4 on 127.0.0.2-4 with a gen-certs PKI (Debian's binaries, tests/etcd_helpers.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from k8sboot import deploy as D
from k8sboot import etcd, layout
from k8sboot.cli import app
from k8sboot.errors import ExitCode
from k8sboot.inventory import parse_inventory
from k8sboot.probe import ProbeAnswer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py, etcd_helpers.py
from deploy_helpers import INVENTORY_YAML, FakeHost, fake_connector, fake_readyz, write_fake_pki  # noqa: E402

NAMES = ("controller-0", "controller-1", "controller-2")
URLS = ("https://10.240.0.10:2379", "https://10.240.0.11:2379", "https://10.240.0.12:2379")
HEALTHY = ProbeAnswer(200, '{"health":"true","reason":""}')
REFUSED = ProbeAnswer(None, error="ConnectionRefusedError: [Errno 111] Connection refused")
NO_LEADER = ProbeAnswer(503, '{"health":"false","reason":"RAFT NO LEADER"}')


def inventory_text(pki) -> str:
    return INVENTORY_YAML.format(pki=pki, anonymous="false", extra="").replace(
        "etcd_servers: [https://10.240.0.10:2379]", f"etcd_servers: [{', '.join(URLS)}]")


class Members:
    """The etcd answers by URL (healthy unless told otherwise), and every URL asked, in order."""

    def __init__(self, **answers: ProbeAnswer):
        self.answers = {URLS[int(k[-1])]: v for k, v in answers.items()}     # m0=..., m2=...
        self.asked: list[str] = []

    def __call__(self, url: str) -> ProbeAnswer:
        self.asked.append(url)
        return self.answers.get(url, HEALTHY)


@pytest.fixture
def site(tmp_path):
    pki = tmp_path / "pki"
    write_fake_pki(pki)
    hosts = {n: FakeHost(n) for n in NAMES}
    inv = parse_inventory(inventory_text(pki), Path("inv.yaml"))
    return inv, hosts


def run(inv, hosts, members, warnings=None, **opts):
    opts.setdefault("wait", 2)
    return D.deploy(inv, D.DeployOptions(**opts), connect=fake_connector(hosts), readyz=fake_readyz(hosts),
                    etcd_ask=members, warn=(warnings.append if warnings is not None else lambda m: None))


def by_host(report):
    return {r.host: r for r in report.results}


def test_every_etcd_server_is_asked_once_before_the_first_change_and_a_healthy_etcd_lets_the_deploy_go_on(site):
    inv, hosts = site
    members, warnings = Members(), []
    report = run(inv, hosts, members, warnings)
    assert report.ok and report.exit_code() == ExitCode.OK
    assert sorted(members.asked) == sorted(URLS), "one round: each URL once, not once per host"
    assert warnings == []
    assert report.checks["etcd"]["available"] and report.checks["etcd"]["healthy"] == 3


def test_a_rerun_with_nothing_to_change_asks_etcd_nothing(site):
    inv, hosts = site
    run(inv, hosts, Members())
    members = Members(m0=REFUSED, m1=REFUSED, m2=REFUSED)      # etcd is down, but nothing is to be done
    report = run(inv, hosts, members)
    assert report.ok and report.nothing_changed and report.exit_code() == ExitCode.OK
    assert members.asked == [] and "etcd" not in report.checks


def test_one_member_down_is_named_with_its_url_and_why_and_the_deploy_goes_on(site):
    inv, hosts = site
    warnings: list[str] = []
    report = run(inv, hosts, Members(m2=REFUSED), warnings)
    assert report.ok and all(r.outcome == D.DEPLOYED for r in report.results)
    assert warnings == [
        "etcd https://10.240.0.12:2379: connection refused (is etcd running there?)",
        "etcd: 2 of 3 --etcd-servers healthy, quorum needs 2: deploying on (kube-apiserver fails over among "
        "--etcd-servers)",
    ]


def test_no_quorum_refuses_before_any_host_changes_with_its_own_exit_code_and_a_hint(site):
    inv, hosts = site
    warnings: list[str] = []
    report = run(inv, hosts, Members(m0=NO_LEADER, m1=REFUSED, m2=REFUSED), warnings)
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE == 19
    assert all(h.commands == [] and h.uploads == [] and not h.locked for h in hosts.values()), "nothing changed"
    assert all(r.outcome == D.REFUSED and not r.restarted for r in report.results)
    assert warnings[0] == ("etcd https://10.240.0.10:2379: no leader: the member sees no quorum (HTTP 503: health "
                           "false (RAFT NO LEADER))")
    assert warnings[1:] == [f"etcd {u}: connection refused (is etcd running there?)" for u in URLS[1:]]
    assert report.refusal.message == ("etcd is not available to kube-apiserver: 0 of 3 --etcd-servers healthy, "
                                      "quorum needs 2; no kube-apiserver was restarted (it would not become ready "
                                      "without its storage)")
    assert "k8sboot deploy-etcd -i inv.yaml" in report.refusal.hint and "k8sboot verify -i inv.yaml" in report.refusal.hint
    assert report.by_outcome()["old"] == list(NAMES)


def test_no_etcd_check_deploys_without_asking_etcd_and_says_so(site):
    """--no-etcd-check (etcd's client port cannot be reached from the workstation): etcd is not
    asked, the deploy goes on, and a warning says that only the health gate guards the roll."""
    inv, hosts = site
    members = Members(m0=REFUSED, m1=REFUSED, m2=REFUSED)
    warnings: list[str] = []
    report = run(inv, hosts, members, warnings, etcd_check=False)
    assert members.asked == [] and "etcd" not in report.checks
    assert report.exit_code() == ExitCode.OK and all(r.outcome == D.DEPLOYED for r in report.results)
    assert any("--no-etcd-check" in w and "health gate" in w for w in warnings), warnings


def test_one_of_three_healthy_is_no_quorum(site):
    inv, hosts = site
    report = run(inv, hosts, Members(m1=REFUSED, m2=REFUSED))
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE
    assert report.checks["etcd"] == {**report.checks["etcd"], "healthy": 1, "servers": 3, "needed": 2,
                                     "available": False}


def test_only_a_rolling_change_on_serving_hosts_is_refused_too_and_the_roll_never_starts(site):
    inv, hosts = site
    run(inv, hosts, Members())
    pids = {n: h.pid for n, h in hosts.items()}
    changed = parse_inventory(inventory_text(inv.pki.dir).replace("authorization_mode: [Node, RBAC]",
                                                                   "authorization_mode: [Node, RBAC]\n"
                                                                   "  extra_flags: {v: '3'}"), Path("inv.yaml"))
    report = run(changed, hosts, Members(m0=REFUSED, m1=REFUSED))
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE and report.waves == []
    assert {n: h.pid for n, h in hosts.items()} == pids
    assert all("--v=3" not in h.files[layout.UNIT_PATH][0].decode() for h in hosts.values())


def test_dry_run_shows_the_check_and_that_the_deploy_would_be_refused(site):
    inv, hosts = site
    members = Members(m0=REFUSED, m1=REFUSED, m2=REFUSED)
    report = run(inv, hosts, members, dry_run=True)
    assert sorted(members.asked) == sorted(URLS)
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE
    assert all(r.message.startswith("would be refused: etcd is not available") for r in report.results)
    assert all(h.commands == [] and h.uploads == [] for h in hosts.values())


def test_a_plain_http_server_is_named_but_not_counted(tmp_path):
    pki = tmp_path / "pki"
    write_fake_pki(pki)
    text = inventory_text(pki).replace(URLS[2], "http://10.240.0.12:2379")
    inv = parse_inventory(text, Path("inv.yaml"))
    hosts = {n: FakeHost(n) for n in NAMES}
    warnings: list[str] = []
    members = Members()
    report = run(inv, hosts, members, warnings)
    assert report.ok and sorted(members.asked) == sorted(URLS[:2])
    assert warnings == ["etcd http://10.240.0.12:2379: not asked: a plain http:// URL (k8sboot's etcd serves https "
                        "with client certificates only)"]


# --- what the lines say (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, healthy, why", [
    (HEALTHY, True, "healthy"),
    (REFUSED, False, "connection refused (is etcd running there?)"),
    (ProbeAnswer(None, error="TimeoutError: timed out"), False, "no answer within 2s"),
    (ProbeAnswer(None, error="TLS verification failed: unable to get local issuer certificate"), False,
     "TLS: unknown CA: its serving certificate is not signed by pki/etcd-ca.pem (unable to get local issuer "
     "certificate)"),
    (ProbeAnswer(None, error="SSLError: [SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:2580)"),
     False, "TLS: the member refused the client certificate pki/apiserver-etcd-client.pem (not signed by the etcd "
            "CA it trusts)"),
    (NO_LEADER, False, "no leader: the member sees no quorum (HTTP 503: health false (RAFT NO LEADER))"),
    (ProbeAnswer(503, '{"health":"false"}'), False,
     'unhealthy (HTTP 503: {"health":"false"}): it has no leader or cannot reach a quorum of members'),
])
def test_each_failure_is_told_in_the_words_a_user_acts_on(answer, healthy, why):
    text = answer.body if answer.status is not None else answer.error
    assert etcd.explain_answer(answer.status, text, ca="pki/etcd-ca.pem", cert="pki/apiserver-etcd-client.pem",
                               timeout=2) == (healthy, why)


@pytest.mark.parametrize("healthy, total, available", [(3, 3, True), (2, 3, True), (1, 3, False), (0, 3, False),
                                                        (1, 1, True), (0, 1, False), (2, 4, False), (3, 5, True)])
def test_a_quorum_of_the_servers_must_be_healthy(healthy, total, available):
    servers = tuple(etcd.ServerHealth(f"https://e{i}:2379", i < healthy, "x") for i in range(total))
    assert etcd.StorageCheck(servers).available is available


def test_a_client_pair_not_signed_by_etcds_ca_is_reported_offline(tmp_path):
    import etcd_helpers

    pki = etcd_helpers.issue_etcd_pki(tmp_path / "p")
    ca, good, bad = (Path(p).read_bytes() for p in (pki.ca, pki.client, pki.other_client))
    assert etcd.check_client_pair(ca, good, "pki/etcd-ca.pem", "pki/apiserver-etcd-client.pem") is None
    assert etcd.check_client_pair(ca, bad, "pki/etcd-ca.pem", "pki/apiserver-etcd-client.pem") == (
        "pki/apiserver-etcd-client.pem is not signed by pki/etcd-ca.pem: etcd will refuse the API server's "
        "connections with it")
    assert etcd.check_client_pair(b"not a cert", good, "a", "b") is None      # left to the probe


# --- the CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    write_fake_pki(pki)
    hosts = {n: FakeHost(n) for n in NAMES}
    inv = tmp_path / "inv.yaml"
    inv.write_text(inventory_text(pki))
    members = Members()
    closed: list[bool] = []
    monkeypatch.setattr(D, "ssh_connector", lambda inventory, **kw: fake_connector(hosts))
    monkeypatch.setattr(D, "health_checker", lambda inventory, port: fake_readyz(hosts))
    monkeypatch.setattr(D, "apiserver_etcd_prober",
                        lambda inventory, timeout=2.0: SimpleNamespace(url=members, close=lambda: closed.append(True)))

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke, inv, hosts, members, closed


def test_cli_refuses_with_exit_19_one_line_per_member_and_the_hint_and_no_traceback(cli):
    invoke, inv, hosts, members, closed = cli
    members.answers = {u: REFUSED for u in URLS}
    res = invoke("deploy-apiserver", "-i", inv)
    assert res.exit_code == ExitCode.ETCD_UNAVAILABLE, res.output
    assert "Traceback" not in res.output
    for u in URLS:
        assert f"etcd {u}: connection refused (is etcd running there?)" in res.stderr
    assert "etcd is not available to kube-apiserver: 0 of 3 --etcd-servers healthy, quorum needs 2" in res.stderr
    assert f"hint: bring etcd back first: k8sboot deploy-etcd -i {inv}" in res.stderr
    assert res.stderr.count("not available") == 1, "said once, not once per host"
    assert closed == [True], "the prober (and its jump dialer) is closed"
    assert all(h.uploads == [] for h in hosts.values())


def test_cli_json_holds_the_etcd_check_and_the_refusal(cli):
    invoke, inv, hosts, members, _ = cli
    members.answers = {URLS[0]: REFUSED}
    doc = json.loads(invoke("deploy-apiserver", "-i", inv, "--json").stdout)
    assert doc["ok"] and doc["refusal"] is None
    check = doc["checks"]["etcd"]
    assert (check["healthy"], check["servers"], check["needed"], check["available"]) == (2, 3, 2, True)
    assert check["members"][0] == {"url": URLS[0], "healthy": False, "probed": True,
                                   "why": "connection refused (is etcd running there?)"}
    members.answers = {u: REFUSED for u in URLS}
    for n in NAMES:
        hosts[n] = FakeHost(n)         # everything to change again: the check runs
    res = invoke("deploy-apiserver", "-i", inv, "--json", "--dry-run")
    doc = json.loads(res.stdout)
    assert res.exit_code == doc["exit_code"] == 19 and doc["refusal"]["code"] == 19
    assert doc["checks"]["etcd"]["available"] is False


def test_help_lists_the_new_exit_codes():
    res = CliRunner().invoke(app, ["deploy-apiserver", "--help"], terminal_width=200)
    assert "19 etcd" in res.stdout.replace("\n", " ").replace("  ", " ")
    res = CliRunner().invoke(app, ["deploy-etcd", "--help"], terminal_width=200)
    assert "20 a data dir is another cluster's" in res.stdout.replace("\n", " ").replace("  ", " ")


# --- against a real three-member etcd (Debian's 3.4) on 127.0.0.2-4 --------------------------------------


@pytest.fixture
def real_etcd(tmp_path):
    """Three real members on 127.0.0.2-4 (`loopback_etcd`), healthy, and an inventory whose
    --etcd-servers are the three."""
    from deploy_helpers import loopback_etcd

    from k8sboot import health

    urls = [f"https://127.0.0.{i + 2}:2379" for i in range(3)]
    with loopback_etcd(tmp_path, f"apiserver:\n  etcd_servers: [{', '.join(urls)}]\n") as (inv, procs):
        with D.etcd_prober(inv) as ask:
            for h in inv.controllers:
                ready = health.wait_ready(h, D.etcd_health(ask), 30)
                assert ready.ready, (h.name, ready.detail, (tmp_path / f"{h.name}.log").read_text()[-2000:])

        def stop(name: str) -> None:
            procs[name].terminate()
            procs[name].wait(10)

        yield SimpleNamespace(inv=inv, urls=urls, stop=stop, pki=tmp_path / "pki")


def deploy_real(inv, warnings):
    """deploy-apiserver on fresh fake controllers (everything to change), the etcd check for real."""
    hosts = {h.name: FakeHost(h.name) for h in inv.controllers}
    report = D.deploy(inv, D.DeployOptions(wait=2), connect=fake_connector(hosts), readyz=fake_readyz(hosts),
                      warn=warnings.append)
    return report, hosts


def test_real_etcd_all_healthy_with_the_api_servers_own_pair(real_etcd):
    warnings: list[str] = []
    report, _ = deploy_real(real_etcd.inv, warnings)
    assert report.ok, [r.message for r in report.results]
    assert warnings == [] and report.checks["etcd"]["healthy"] == 3


def test_real_etcd_one_member_stopped_is_named_and_the_deploy_goes_on(real_etcd):
    real_etcd.stop("controller-2")
    warnings: list[str] = []
    report, hosts = deploy_real(real_etcd.inv, warnings)
    assert report.ok and all(h.uploads for h in hosts.values())
    assert warnings[0] == "etcd https://127.0.0.4:2379: connection refused (is etcd running there?)"
    assert warnings[1].startswith("etcd: 2 of 3 --etcd-servers healthy, quorum needs 2: deploying on")


def test_real_etcd_all_members_stopped_refuses_and_installs_nothing(real_etcd):
    for name in ("controller-0", "controller-1", "controller-2"):
        real_etcd.stop(name)
    warnings: list[str] = []
    report, hosts = deploy_real(real_etcd.inv, warnings)
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE
    assert all(h.uploads == [] and h.commands == [] for h in hosts.values())
    assert warnings == [f"etcd {u}: connection refused (is etcd running there?)" for u in real_etcd.urls]


def test_real_etcd_two_members_stopped_leave_the_third_without_a_leader_and_the_deploy_refused(real_etcd):
    real_etcd.stop("controller-1")
    real_etcd.stop("controller-2")
    warnings: list[str] = []
    report, hosts = deploy_real(real_etcd.inv, warnings)
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE
    assert all(h.uploads == [] for h in hosts.values())
    assert warnings[0] == ('etcd https://127.0.0.2:2379: unhealthy (HTTP 503: {"health":"false"}): it has no leader '
                           'or cannot reach a quorum of members')           # up, but alone
    assert "1 of 3" not in report.refusal.message and "0 of 3 --etcd-servers healthy" in report.refusal.message


def test_real_etcd_a_wrong_etcd_ca_in_the_local_pki_is_reported_on_every_member(real_etcd):
    """The local etcd-ca.pem is not the CA the members run with (here: the cluster CA in its place):
    the members' certificates are from an unknown CA, and the API server's pair is not signed by it."""
    pki = real_etcd.pki
    (pki / "etcd-ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    warnings: list[str] = []
    report, hosts = deploy_real(real_etcd.inv, warnings)
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE
    assert all(h.uploads == [] for h in hosts.values())
    for u in real_etcd.urls:
        assert any(w.startswith(f"etcd {u}: TLS: unknown CA: its serving certificate is not signed by "
                                f"{pki / 'etcd-ca.pem'}") for w in warnings), warnings
    assert (f"{pki / 'apiserver-etcd-client.pem'} is not signed by {pki / 'etcd-ca.pem'}: etcd will refuse the API "
            "server's connections with it") in warnings


def test_real_etcd_an_api_server_pair_from_another_ca_is_refused_by_the_members(real_etcd, tmp_path):
    """apiserver-etcd-client.pem (and key) replaced by a pair another CA signed: each member refuses it."""
    import etcd_helpers

    other = etcd_helpers.issue_etcd_pki(tmp_path / "other")
    pki = real_etcd.pki
    (pki / "apiserver-etcd-client.pem").write_bytes(Path(other.other_client).read_bytes())
    key = pki / "apiserver-etcd-client-key.pem"
    key.write_bytes(Path(other.other_client_key).read_bytes())
    warnings: list[str] = []
    report, _ = deploy_real(real_etcd.inv, warnings)
    assert report.exit_code() == ExitCode.ETCD_UNAVAILABLE
    for u in real_etcd.urls:
        assert (f"etcd {u}: TLS: the member refused the client certificate {pki / 'apiserver-etcd-client.pem'} "
                "(not signed by the etcd CA it trusts)") in warnings, warnings


# --- the prober: a dial given is used and left open; a jump dialer of its own is closed ---------------


class _Dial:
    def __init__(self):
        self.dialled: list[tuple[str, int]] = []
        self.closed = False

    def __call__(self, address, port, timeout):
        self.dialled.append((address, port))
        raise ConnectionRefusedError(111, "Connection refused")

    def close(self):
        self.closed = True


def _prober_pki(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("etcd-ca.pem", "etcd-healthcheck-client.pem", "etcd-healthcheck-client-key.pem",
                 "apiserver-etcd-client.pem", "apiserver-etcd-client-key.pem"):
        (pki / name).write_text("x")
    return parse_inventory(inventory_text(pki), Path("inv.yaml"))


def test_etcd_prober_dials_through_a_given_dial_and_leaves_it_open(tmp_path, monkeypatch):
    import ssl

    from k8sboot import probe

    monkeypatch.setattr(probe, "_context", lambda *a, **kw: ssl.create_default_context())   # the files are fakes
    inv = _prober_pki(tmp_path)
    dial = _Dial()
    with D.etcd_prober(inv, dial=dial) as prober:
        answer = prober(inv.controller("controller-1"), "health")
        assert answer.status is None and "refused" in answer.error.lower()
        assert prober.url("https://10.240.0.12:2379").status is None
    assert dial.dialled == [("10.240.0.11", 2379), ("10.240.0.12", 2379)]
    assert not dial.closed, "the caller's dial is the caller's to close"


def test_etcd_prober_closes_the_jump_dialer_it_opened(tmp_path, monkeypatch):
    from k8sboot import remote

    inv = _prober_pki(tmp_path)
    opened: list[_Dial] = []
    monkeypatch.setattr(remote, "tcp_dialer", lambda ssh, aliases=None, **kw: opened.append(_Dial()) or opened[-1])
    prober = D.apiserver_etcd_prober(inv)
    assert str(prober.cert).endswith("apiserver-etcd-client.pem")
    prober.close()
    assert len(opened) == 1 and opened[0].closed


def test_etcd_prober_names_a_missing_pki_file():
    from k8sboot.errors import PkiError

    inv = parse_inventory(inventory_text("/nonexistent/pki"), Path("inv.yaml"))
    with pytest.raises(PkiError, match="asking etcd needs /nonexistent/pki/etcd-ca.pem") as err:
        D.etcd_prober(inv)
    assert "gen-certs" in err.value.hint
