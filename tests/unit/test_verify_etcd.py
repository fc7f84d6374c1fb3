"""verify and audit --remote on etcd: each member's files, unit and argv from the fake hosts' facts,
and its /health and member list from real HTTPS servers on 127.0.0.1 presenting the certificates
`k8sboot gen-certs` makes (etcd's CA, etcd-server.pem, and the health-check client cert required).
The real thing (3 members of real etcd on lab hosts) is tests/lab/test_etcd_verify.py."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k8sboot import audit as A
from k8sboot import deploy as D
from k8sboot import layout
from k8sboot import verify as V
from k8sboot import verify_etcd as VE
from k8sboot.cli import app
from k8sboot.errors import ExitCode
from k8sboot.flags import tutorial_grep
from k8sboot.inventory import load_inventory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import (INVENTORY_YAML, FakeHost, FakeRemote, fake_connector, fake_readyz,  # noqa: E402
                            healthy_etcd)

NAMES = ("controller-0", "controller-1", "controller-2")
IPS = {"controller-0": "10.240.0.10", "controller-1": "10.240.0.11", "controller-2": "10.240.0.12"}
DATA_DIR = "/var/lib/etcd/k8s-test"


@pytest.fixture(scope="module")
def inv(tmp_path_factory):
    """The test inventory with a real PKI from `k8sboot gen-certs` (etcd's CA and certs included)."""
    tmp = tmp_path_factory.mktemp("etcd-verify")
    path = tmp / "inv.yaml"
    path.write_text(INVENTORY_YAML.format(pki=tmp / "pki", anonymous="false", extra=""))
    result = CliRunner().invoke(app, ["gen-certs", "-i", str(path)])
    assert result.exit_code == 0, result.output
    return load_inventory(path)


# --- real HTTPS members on 127.0.0.1 -------------------------------------------------------------


class Member:
    """An HTTPS server answering as an etcd member's client port: TLS with `cert`, a client cert
    signed by `client_ca` required; GET /health and POST /v3/cluster/member/list as set."""

    def __init__(self, pki: Path, cert: str = "etcd-server", client_ca: str = "etcd-ca.pem"):
        self.health = (200, '{"health":"true","reason":""}')
        self.members = [{"ID": str(i + 1), "name": n, "peerURLs": [f"https://{IPS[n]}:2380"],
                         "clientURLs": [f"https://{IPS[n]}:2379"]} for i, n in enumerate(NAMES)]
        self.clients: list[str] = []            # the CN of each client cert presented
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}-key.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / client_ca)
        member = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status, body):
                cn = dict(x[0] for x in self.connection.getpeercert()["subject"]).get("commonName")
                member.clients.append(cn)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(*member.health) if self.path == "/health" else self.answer(404, "{}")

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v3/cluster/member/list":
                    self.answer(200, json.dumps({"header": {"cluster_id": "1"}, "members": member.members}))
                else:
                    self.answer(404, "{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *a: None       # a refused handshake is part of some tests
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def members(inv):
    started = {n: Member(Path(inv.pki.dir)) for n in NAMES}
    yield started
    for m in started.values():
        m.close()


def dialer(members, stopped=()):
    """verify's `dial` with each member's 10.240.0.x:2379 at its server on 127.0.0.1 (TLS is still
    checked against 10.240.0.x); a stopped member refuses, as a port nobody listens on does."""
    by_ip = {IPS[n]: m for n, m in members.items()}

    def dial(address, port, timeout):
        assert port == layout.ETCD_CLIENT_PORT
        name = next(n for n, ip in IPS.items() if ip == address)
        if name in stopped:
            raise ConnectionRefusedError(111, "Connection refused")
        return socket.create_connection(("127.0.0.1", by_ip[address].port), timeout)

    return dial


# --- fake controllers running kube-apiserver and etcd ------------------------------------------


class BothUnits:
    """One controller's remote with two units: kube-apiserver's facts from one fake host, etcd's
    from another (FakeHost models one unit)."""

    def __init__(self, api: FakeHost, etcd: FakeHost):
        self.api, self.etcd = FakeRemote(api), FakeRemote(etcd)
        self.name = api.name

    def read_facts(self, request, *, lock_wait=None):
        if request.unit == layout.ETCD_UNIT_NAME:
            facts = self.etcd.read_facts(request, lock_wait=lock_wait)
            # the facts script's `cmdline` section, as a real host answers it (the running member's
            # /proc/PID/cmdline): a real service section carries no argv
            facts = replace(facts, service=replace(facts.service, argv=None))
            if any(name == "cmdline" for name, _ in request.sections) and facts.service.main_pid:
                argv = self.etcd.host.argv
                facts = replace(facts, sections={**facts.sections, "cmdline": base64.b64encode(
                    b"\0".join(a.encode() for a in argv) + b"\0").decode()})
            return facts
        facts = self.api.read_facts(request, lock_wait=lock_wait)
        if not request.sections or facts.unit_text is None:
            return facts
        # verify's shell sections as a deployed controller answers them (the fake leaves them empty)
        h = self.api.host
        argv = list(h.argv)
        sections = {**facts.sections, "grep": "\n".join(tutorial_grep(facts.unit_text)),
                    "execstart": f"ExecStart={{ path={argv[0]} ; argv[]={' '.join(argv)} ; ignore_errors=no ; }}",
                    "cmdline": base64.b64encode(b"\0".join(a.encode() for a in argv) + b"\0").decode(),
                    "is-enabled": "enabled" if h.enabled else "disabled", "is-active": h.active,
                    "ca": base64.b64encode(h.files["/var/lib/kubernetes/ca.pem"][0]).decode()}
        return replace(facts, sections=sections)

    def close(self):
        self.api.close()
        self.etcd.close()


def etcd_host(name: str) -> FakeHost:
    h = FakeHost(name, unit_path=layout.ETCD_UNIT_PATH, binary_path=layout.ETCD_PACKAGE_BINARY,
                 pki_dir=layout.ETCD_DIR)
    h.data_dir = DATA_DIR
    return h


@pytest.fixture
def hosts(inv):
    """Three controllers with kube-apiserver and etcd deployed by k8sboot (on the fakes)."""
    api = {n: FakeHost(n) for n in NAMES}
    etcd = {n: etcd_host(n) for n in NAMES}
    assert D.deploy(inv, D.DeployOptions(wait=2), connect=fake_connector(api), readyz=fake_readyz(api),
                    etcd_ask=healthy_etcd()).exit_code() == 0
    report = D.deploy_etcd(inv, D.DeployOptions(wait=2), connect=fake_connector(etcd),
                           ask=lambda h, what: fake_health(etcd, h))
    assert report.exit_code() == 0, [r.message for r in report.results]
    return api, etcd


def fake_health(etcd, host):
    """deploy-etcd's gate on the fakes: a running member is healthy."""
    from k8sboot.probe import ProbeAnswer

    if etcd[host.name].active == "active":
        return ProbeAnswer(200, '{"health":"true"}')
    return ProbeAnswer(None, error="ConnectionRefusedError: [Errno 111] Connection refused")


def connector(api, etcd):
    return lambda host: BothUnits(api[host.name], etcd[host.name])


def ready_api(host):
    """The API servers' /readyz?verbose: ready, etcd ok (these tests are about the members)."""
    from k8sboot.probe import ProbeAnswer

    return ProbeAnswer(200, "[+]ping ok\n[+]log ok\n[+]etcd ok\n[+]etcd-readiness ok\nreadyz check passed\n")


def run_verify(inv, api, etcd, members, stopped=(), readyz=ready_api):
    ask = VE.asker(inv, dialer(members, stopped), 2.0)
    return V.verify(inv, V.VerifyOptions(), connect=connector(api, etcd), etcd_ask=ask, readyz=readyz)


def etcd_checks(host_result):
    return {c.check: c for c in host_result.checks
            if c.check.startswith("etcd") or "/etc/etcd" in c.check or "etcd.service" in c.check
            or DATA_DIR in c.check}


# --- tests -------------------------------------------------------------------------------------


def test_each_member_is_asked_over_https_with_the_health_check_cert_and_all_is_ok(inv, hosts, members):
    report = run_verify(inv, *hosts, members)
    assert report.exit_code() == ExitCode.OK, [(h.host, c) for h in report.hosts for c in h.checks if c.status != "OK"]
    for h in report.hosts:
        got = etcd_checks(h)
        assert {"etcd health", "etcd member list", "etcd is-active", "etcd is-enabled",
                "file /etc/etcd/etcd-server-key.pem", "file /etc/systemd/system/etcd.service",
                "dir /etc/etcd", f"dir {DATA_DIR}"} <= set(got)
        assert any(k.startswith("etcd process") and k.endswith(": flags") for k in got)
        assert {c.status for c in got.values()} == {V.OK}
        assert got["etcd member list"].detail == "3 members = the inventory's controllers"
    assert all(m.clients == ["kube-etcd-healthcheck-client"] * 2 for m in members.values()), \
        [m.clients for m in members.values()]
    doc = report.to_json()
    assert any(c["check"] == "etcd health" for c in doc["hosts"][0]["checks"])


def test_the_api_servers_own_etcd_check_is_read_and_a_failing_one_is_drift_naming_etcd(inv, hosts, members):
    """verify asks each running API server's /readyz?verbose: an API server that cannot read etcd
    (wrong --etcd-cafile, say) while every member is healthy is drift, and the line says etcd."""
    from k8sboot.probe import ProbeAnswer

    asked = []

    def unready_on_1(host):
        asked.append(host.name)
        if host.name == "controller-1":
            return ProbeAnswer(500, "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n"
                                    "[-]etcd-readiness failed: reason withheld\nreadyz check failed\n")
        return ready_api(host)

    report = run_verify(inv, *hosts, members, readyz=unready_on_1)
    assert tuple(sorted(asked)) == NAMES and report.exit_code() == ExitCode.DRIFT
    by = {h.host: {c.check: c for c in h.checks} for h in report.hosts}
    assert by["controller-0"]["API server /readyz"].status == V.OK
    bad = by["controller-1"]["API server /readyz"]
    assert bad.status == V.DRIFT and "[-]etcd failed" in bad.detail and "cannot read etcd" in bad.detail
    assert by["controller-1"]["etcd health"].status == V.OK           # the member itself is fine


def test_a_stopped_member_is_named_and_verify_exits_10(inv, hosts, members):
    api, etcd = hosts
    h = etcd["controller-1"]
    h.active, h.sub, h.pid = "inactive", "dead", 0
    report = run_verify(inv, api, etcd, members, stopped=("controller-1",))
    assert report.exit_code() == ExitCode.DRIFT
    by = {r.host: etcd_checks(r) for r in report.hosts}
    assert by["controller-1"]["etcd is-active"].status == V.DRIFT
    assert by["controller-1"]["etcd health"].status == V.DRIFT
    assert "Connection refused" in by["controller-1"]["etcd health"].detail
    assert by["controller-1"]["etcd process"].status == V.SKIP
    for name in ("controller-0", "controller-2"):
        assert {c.status for c in by[name].values()} == {V.OK}, name
    assert not any(c.status == V.DRIFT for c in report.hosts[0].checks)


def test_unhealthy_member_and_a_member_list_unlike_the_inventory_are_drift(inv, hosts, members):
    members["controller-2"].health = (503, '{"health":"false","reason":"RAFT NO LEADER"}')
    listed = members["controller-0"].members
    listed[1]["peerURLs"] = ["https://10.240.0.99:2380"]
    listed.append({"ID": "9", "name": "stray", "peerURLs": ["https://10.9.9.9:2380"]})
    del listed[2]
    report = run_verify(inv, *hosts, members)
    assert report.exit_code() == ExitCode.DRIFT
    by = {r.host: etcd_checks(r) for r in report.hosts}
    health = by["controller-2"]["etcd health"]
    assert health.status == V.DRIFT and "HTTP 503" in health.detail and "RAFT NO LEADER" in health.detail
    listing = by["controller-0"]["etcd member list"]
    assert listing.status == V.DRIFT
    assert "controller-2 missing" in listing.detail and "stray not in the inventory" in listing.detail
    assert "controller-1: peer URLs https://10.240.0.99:2380 (expected https://10.240.0.11:2380)" in listing.detail
    assert by["controller-1"]["etcd member list"].status == V.OK


def test_a_member_serving_a_cert_of_another_ca_fails_tls(inv, hosts, members):
    members["controller-0"].close()
    members["controller-0"] = Member(Path(inv.pki.dir), cert="kubernetes")     # the cluster CA's serving cert
    report = run_verify(inv, *hosts, members)
    health = etcd_checks(report.hosts[0])["etcd health"]
    assert health.status == V.DRIFT and "TLS verification failed" in health.detail


def test_an_edited_unit_a_loose_key_and_a_changed_flag_are_drift(inv, hosts, members):
    api, etcd = hosts
    h = etcd["controller-0"]
    text, mode, owner, group = h.files[layout.ETCD_UNIT_PATH]
    h.files[layout.ETCD_UNIT_PATH] = (text.replace(b"--client-cert-auth=true", b"--client-cert-auth=false"),
                                      mode, owner, group)
    key = "/etc/etcd/etcd-peer-key.pem"
    h.files[key] = (*h.files[key][:1], 0o644, *h.files[key][2:])
    h.argv = tuple(a if a != "--client-cert-auth=true" else "--client-cert-auth=false" for a in h.argv)
    got = etcd_checks(run_verify(inv, api, etcd, members).hosts[0])
    assert got["file /etc/systemd/system/etcd.service"].status == V.DRIFT
    assert "edited by hand" in got["file /etc/systemd/system/etcd.service"].detail
    assert got[f"file {key}"].status == V.DRIFT and "mode 0644 -> 0600" in got[f"file {key}"].detail
    flags = next(c for k, c in got.items() if k.startswith("etcd process"))
    assert flags.status == V.DRIFT and "--client-cert-auth=false (expected true)" in flags.detail


def test_no_etcd_anywhere_is_one_warn_line_and_changes_nothing_else(inv, members):
    api = {n: FakeHost(n) for n in NAMES}
    D.deploy(inv, D.DeployOptions(wait=2), connect=fake_connector(api), readyz=fake_readyz(api),
             etcd_ask=healthy_etcd())
    asked = []
    none = {n: etcd_host(n) for n in NAMES}      # no etcd unit, no data: never deployed
    report = V.verify(inv, V.VerifyOptions(), connect=connector(api, none), readyz=ready_api,
                      etcd_ask=lambda h, what: asked.append(h.name))
    assert report.exit_code() == ExitCode.OK and asked == []
    warns = [(h.host, c) for h in report.hosts for c in h.checks if c.status == VE.WARN]
    assert len(warns) == 1 and warns[0][1].check == "etcd" and warns[0][1].detail == VE.NOT_DEPLOYED
    assert not any(c.check.startswith("etcd ") for h in report.hosts for c in h.checks)


# --- audit --remote ------------------------------------------------------------------------------


def test_audit_remote_passes_2_1_to_2_7_on_deployed_members_and_fails_an_edited_one(inv, hosts):
    api, etcd = hosts
    report = V.run_audit(inv, remote=True, connect=connector(api, etcd))
    remote = [f for f in report.findings if f.id.startswith("2.") and f.subject.endswith("(remote)")]
    assert len(remote) == 3 * 7 and {f.status for f in remote} == {A.PASS}, [f for f in remote if f.status != A.PASS]
    assert "contents differ" in next(f for f in remote if f.id == "2.7").reason
    h = etcd["controller-2"]
    text, *rest = h.files[layout.ETCD_UNIT_PATH]
    h.files[layout.ETCD_UNIT_PATH] = (text.replace(b"--client-cert-auth=true", b"--auto-tls=true"), *rest)
    report = V.run_audit(inv, remote=True, connect=connector(api, etcd))
    bad = {f.id: f for f in report.findings if f.subject == "controller-2 (remote)" and f.status != A.PASS
           and f.id.startswith("2.")}
    assert set(bad) == {"2.2", "2.3"} and report.exit_code() == ExitCode.AUDIT


def test_audit_remote_without_etcd_warns_once_per_host_and_keeps_its_exit_code(inv):
    api = {n: FakeHost(n) for n in NAMES}
    D.deploy(inv, D.DeployOptions(wait=2), connect=fake_connector(api), readyz=fake_readyz(api),
             etcd_ask=healthy_etcd())
    report = V.run_audit(inv, remote=True, connect=fake_connector(api))
    etcd = [f for f in report.findings if f.id == "k8sboot.etcd" or (f.id.startswith("2.") and "remote" in f.subject)]
    assert [(f.id, f.status) for f in etcd] == [("k8sboot.etcd", A.WARN)] * 3
    assert "not deployed" in etcd[0].reason and "deploy-etcd" in etcd[0].fix
    merged = [f for f in A.merge_subjects(report.findings) if f.id == "k8sboot.etcd"]
    assert len(merged) == 1 and merged[0].subject == "controller-0, controller-1, controller-2 (remote)"


def test_member_list_names_a_member_added_but_never_started_by_its_peer_url(inv):
    body = json.dumps({"members": [
        {"name": "controller-0", "peerURLs": ["https://10.240.0.10:2380"]},
        {"name": "controller-1", "peerURLs": ["https://10.240.0.11:2380"]},
        {"peerURLs": ["https://10.240.0.12:2380"]}, {"peerURLs": ["https://10.7.7.7:2380"]}]})
    got = VE.check_members("controller-0", inv, 200, body)[0]
    assert got.status == V.DRIFT
    assert got.detail == ("controller-2 added but never started; a member at https://10.7.7.7:2380 added but "
                          "never started")
    assert VE.check_members("controller-0", inv, 200, "<html>")[0].status == V.DRIFT


def test_a_controller_without_its_member_while_the_others_run_etcd_is_drift(inv, hosts, members):
    api, etcd = hosts
    del etcd["controller-2"].files[layout.ETCD_UNIT_PATH]
    report = run_verify(inv, api, etcd, members)
    assert report.exit_code() == ExitCode.DRIFT
    got = etcd_checks(report.hosts[2])
    assert got["etcd"].status == V.DRIFT and "etcd.service is missing" in got["etcd"].detail
    assert not any(c.status == VE.WARN for h in report.hosts for c in h.checks)


def test_cli_audit_json_and_table_carry_the_etcd_checks(inv):
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "-i", str(inv.path), "--json"])
    doc = json.loads(res.stdout)
    etcd = {f["id"]: f["status"] for f in doc["findings"] if f["id"].startswith("2.")}
    assert etcd == {i: "PASS" for i in ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7")}
    res = runner.invoke(app, ["audit", "-i", str(inv.path)], env={"COLUMNS": "300"})
    assert "2.7" in res.output and "controller-0, controller-1, controller-2 (rendered)" in res.output
    assert "Traceback" not in res.output


def test_the_drift_line_names_the_command_that_repairs_what_drifted():
    from types import SimpleNamespace as NS

    from k8sboot.cli.deploy_cmds import _repairs

    def host(kind, *drifted):
        return NS(kind=kind, checks=[NS(check=c, status="DRIFT") for c in drifted])

    assert _repairs([host("controller", "etcd is-active", "file /etc/etcd/etcd-server.pem")]) == ["deploy-etcd"]
    assert _repairs([host("controller", "file /var/lib/kubernetes/ca.pem")]) == ["deploy-apiserver"]
    assert _repairs([host("controller", "etcd health", "is-active"),
                     host("load balancer", "file /etc/haproxy/haproxy.cfg")]) == ["deploy-etcd", "deploy-apiserver",
                                                                                  "deploy-lb"]
    # an API server unready only because its etcd is down is put back by deploy-etcd alone; one
    # that cannot read a healthy etcd (a wrong --etcd-cafile) is the API server's to fix
    assert _repairs([host("controller", "etcd health", "API server /readyz")]) == ["deploy-etcd"]
    assert _repairs([host("controller", "API server /readyz")]) == ["deploy-apiserver"]
