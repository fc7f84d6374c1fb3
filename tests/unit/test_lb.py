"""k8sboot.lb: the API load balancer's HAProxy config and files.

The rendered config is checked by the real `haproxy -c` (which opens the CA and the combined
health PEM made from a generated PKI), and once by a real HAProxy health-checking TLS backends
that serve the generated kubernetes.pem: the check presents the health client cert, verifies each
controller's name, takes a failing /readyz out of rotation and passes client TLS through.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from certs_helpers import generate
from cryptography import x509

from k8sboot import layout, lb, pki
from k8sboot.errors import ExitCode, InventoryError, PkiError, TemplateError
from k8sboot.inventory import parse_inventory
from k8sboot.model import Host
from k8sboot.plan import KIND_PKI

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
needs_haproxy = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy is not installed "
                                   "(make venv installs it)")

INVENTORY = """\
cluster:
  name: k8s-test
  api_endpoint: {endpoint}
  service_cidr: 10.32.0.0/24
pki:
  dir: pki
  subject: {{C: VN, OU: k8s-test}}
apiserver:
  shutdown_delay_duration: {delay}
controllers:
  - {{name: controller-0, address: 10.240.0.10}}
  - {{name: controller-1, address: 10.240.0.11}}
  - {{name: controller-2, address: 10.240.0.12}}
{lbs}"""
LBS = "load_balancers:\n  - {name: lb-0, address: 10.240.0.5}\n"


def inventory(endpoint="https://10.240.0.5:6443", delay="3s", lbs=LBS):
    return parse_inventory(INVENTORY.format(endpoint=endpoint, delay=delay, lbs=lbs), Path("inv.yaml"))


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]


def pki_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes()
            for name in (lb.CA_FILE, lb.HEALTH_CERT_FILE, lb.HEALTH_KEY_FILE)}


def install_locally(files, target: Path) -> lb.LbPaths:
    """Write lb_files' CA and health PEM under `target` (their modes), and the paths to render with."""
    by_path = {f.path: f for f in files}
    out = {}
    for key, path in (("ca_file", layout.LB_CA_PATH), ("health_pem", layout.LB_HEALTH_PEM_PATH)):
        local = target / Path(path).name
        local.write_bytes(by_path[path].content)
        local.chmod(by_path[path].mode)
        out[key] = str(local)
    return lb.LbPaths(stats_socket=str(target / "admin.sock"), **out)


def haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True)


# --- the config, as text ---------------------------------------------------------------------


def test_server_lines_for_three_controllers():
    config = lb.render_haproxy_config(inventory())
    common = ("check check-ssl verify required ca-file /etc/haproxy/k8sboot/ca.pem "
              "crt /etc/haproxy/k8sboot/k8sboot-health.pem")
    assert lines_starting(config, "server ") == [
        f"server controller-0 10.240.0.10:6443 {common} verifyhost controller-0 inter 1s fastinter 250ms downinter 500ms fall 2 rise 2",
        f"server controller-1 10.240.0.11:6443 {common} verifyhost controller-1 inter 1s fastinter 250ms downinter 500ms fall 2 rise 2",
        f"server controller-2 10.240.0.12:6443 {common} verifyhost controller-2 inter 1s fastinter 250ms downinter 500ms fall 2 rise 2",
    ]


def test_backend_is_tcp_round_robin_with_an_https_readyz_check():
    config = lb.render_haproxy_config(inventory())
    backend = config[config.index("backend kube-apiserver"):]
    for line in ("mode tcp", "balance roundrobin", "option httpchk",
                 "http-check send meth GET uri /readyz", "http-check expect status 200"):
        assert line in [b.strip() for b in backend.splitlines()], line
    assert lines_starting(config, "frontend ") == ["frontend kube-apiserver"]
    assert lines_starting(config, "default_backend") == ["default_backend kube-apiserver"]


def test_defaults_suit_long_running_watches():
    config = lb.render_haproxy_config(inventory())
    assert "mode tcp" in lines_starting(config, "mode")
    assert lines_starting(config, "timeout connect") == ["timeout connect 5s"]
    assert lines_starting(config, "timeout client") == ["timeout client 1h"]
    assert lines_starting(config, "timeout server") == ["timeout server 1h"]
    assert lb.IDLE_TIMEOUT_MS >= 3600 * 1000


@pytest.mark.parametrize("endpoint, bind", [
    ("https://10.240.0.5:6443", "bind *:6443"),
    ("https://api.example.com:8443", "bind *:8443"),      # a DNS name: fine, it is the clients' name
    ("https://api.example.com", "bind *:443"),
])
def test_frontend_binds_the_port_of_the_api_endpoint(endpoint, bind):
    assert lines_starting(lb.render_haproxy_config(inventory(endpoint=endpoint)), "bind") == [bind]


def test_servers_use_the_secure_port_and_bracket_ipv6_addresses():
    inv = inventory()
    inv = dataclasses.replace(
        inv, apiserver=dataclasses.replace(inv.apiserver, secure_port=7443),
        controllers=(dataclasses.replace(inv.controllers[0], internal_ip=ipaddress.ip_address("fd00::10")),
                     *inv.controllers[1:]))
    servers = lines_starting(lb.render_haproxy_config(inv), "server ")
    assert servers[0].startswith("server controller-0 [fd00::10]:7443 check ")
    assert servers[1].startswith("server controller-1 10.240.0.11:7443 check ")


def test_health_timing_is_one_set_of_constants_shorter_than_the_labs_shutdown_delay():
    config = lb.render_haproxy_config(inventory())
    for server in lines_starting(config, "server "):
        assert server.endswith(f"inter {lb.CHECK_INTER_MS // 1000}s fastinter {lb.CHECK_FASTINTER_MS}ms "
                               f"downinter {lb.CHECK_DOWNINTER_MS}ms fall {lb.CHECK_FALL} rise {lb.CHECK_RISE}")
    # HAProxy's rules: one check at `inter`, the rest of a transition at `fastinter`; a DOWN server
    # is checked at `downinter`
    assert lb.DOWN_AFTER_MS == lb.CHECK_INTER_MS + (lb.CHECK_FALL - 1) * lb.CHECK_FASTINTER_MS
    assert lb.UP_AFTER_MS == lb.CHECK_DOWNINTER_MS + (lb.CHECK_RISE - 1) * lb.CHECK_FASTINTER_MS
    assert lb.DOWN_AFTER_MS < 3000       # the lab's apiserver.shutdown_delay_duration


def test_rendering_is_deterministic_and_ends_with_a_newline():
    assert lb.render_haproxy_config(inventory()) == lb.render_haproxy_config(inventory())
    assert lb.render_haproxy_config(inventory()).endswith("\n")


# --- the real haproxy -c ---------------------------------------------------------------------


@needs_haproxy
@pytest.mark.parametrize("internal_ip", ["10.240.0.10", "fd00::10"])
def test_rendered_config_passes_haproxy_check_with_files_from_a_generated_pki(generated_pki, tmp_path,
                                                                             internal_ip):
    inv = dataclasses.replace(inventory(), pki=generated_pki.inventory.pki)
    inv = dataclasses.replace(inv, controllers=(
        dataclasses.replace(inv.controllers[0], internal_ip=ipaddress.ip_address(internal_ip)),
        *inv.controllers[1:]))
    files = lb.lb_files(inv, pki_bytes(generated_pki.dir), "unused")
    paths = install_locally(files, tmp_path)
    proc = haproxy_check(lb.render_haproxy_config(inv, paths=paths), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Configuration file is valid" in proc.stdout


@needs_haproxy
def test_haproxy_check_refuses_a_health_pem_whose_key_is_another(generated_pki, tmp_path):
    """The check above proves something: haproxy -c loads the PEM and compares cert and key."""
    inv = dataclasses.replace(inventory(), pki=generated_pki.inventory.pki)
    paths = install_locally(lb.lb_files(inv, pki_bytes(generated_pki.dir), ""), tmp_path)
    Path(paths.health_pem).write_bytes(generated_pki.path("k8sboot-health.pem").read_bytes()
                                       + generated_pki.path("admin-key.pem").read_bytes())
    proc = haproxy_check(lb.render_haproxy_config(inv, paths=paths), tmp_path)
    assert proc.returncode != 0 and "inconsistencies between private key and certificate" in proc.stderr


# --- errors ----------------------------------------------------------------------------------


def test_no_load_balancers_is_an_inventory_error_naming_the_file():
    with pytest.raises(InventoryError) as err:
        lb.render_haproxy_config(inventory(lbs=""))
    assert str(err.value).startswith("inv.yaml: no load_balancers: ")
    assert "\n" not in str(err.value) and "load_balancers:" in err.value.hint
    assert err.value.code == ExitCode.INVENTORY


def test_an_empty_load_balancers_list_is_an_error_naming_its_line():
    inv = inventory(lbs="load_balancers: []\n")
    with pytest.raises(InventoryError, match=r"^inv\.yaml:14: load_balancers is empty: "):
        lb.require_load_balancers(inv)


def test_require_load_balancers_returns_the_hosts():
    assert [h.name for h in lb.require_load_balancers(inventory())] == ["lb-0"]


def _user_templates(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "tpl"
    d.mkdir()
    (d / lb.HAPROXY_TEMPLATE).write_text(text)
    return d


@pytest.mark.parametrize("text, line, what", [
    ("global\n    log stdout\n    stats socket {{ stats_sockett }}\n", 3, "stats_sockett"),
    ("a\nb\n{% for s in servers %}\n", None, "syntax error"),
    ("ok\n{{ servers[99].name }}\n", 2, "no element 99"),
])
def test_a_broken_template_is_one_line_naming_file_and_line(tmp_path, text, line, what):
    d = _user_templates(tmp_path, text)
    with pytest.raises(TemplateError) as err:
        lb.render_haproxy_config(inventory(), lb.lb_templates_dir(d))
    message = str(err.value)
    assert "\n" not in message and what in message
    assert message.startswith(f"{d / lb.HAPROXY_TEMPLATE}:{line or ''}")
    assert err.value.code == ExitCode.TEMPLATE


def test_a_users_template_dir_is_used_and_must_hold_the_template(tmp_path):
    d = _user_templates(tmp_path, "# {{ cluster_name }} {{ frontend.bind }}\n")
    assert lb.render_haproxy_config(inventory(), lb.lb_templates_dir(d)) == "# k8s-test *:6443\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(TemplateError, match=f"has no {lb.HAPROXY_TEMPLATE}"):
        lb.lb_templates_dir(tmp_path / "empty")
    with pytest.raises(TemplateError, match="not a directory"):
        lb.lb_templates_dir(tmp_path / "nope")


def test_the_packaged_template_is_found():
    assert (lb.lb_templates_dir() / lb.HAPROXY_TEMPLATE).is_file()


# --- the files on a load balancer host -------------------------------------------------------


def test_lb_files_are_the_ca_the_combined_health_pem_and_the_config(generated_pki):
    inv = dataclasses.replace(inventory(), pki=generated_pki.inventory.pki)
    local = pki_bytes(generated_pki.dir)
    files = lb.lb_files(inv, local, "global\n")
    assert [(f.path, f.mode, f.owner, f.group, f.kind) for f in files] == [
        ("/etc/haproxy/k8sboot/ca.pem", 0o644, "root", "root", KIND_PKI),
        ("/etc/haproxy/k8sboot/k8sboot-health.pem", 0o600, "root", "root", KIND_PKI),
        ("/etc/haproxy/haproxy.cfg", 0o644, "root", "root", lb.KIND_CONFIG),
    ]
    assert tuple(f.path for f in files) == lb.lb_desired_paths()
    assert files[0].content == local["ca.pem"]
    assert files[2].content == b"global\n"
    combined = files[1].content
    cert = x509.load_pem_x509_certificate(combined)        # the first block: the certificate
    key = pki.parse_private_key(combined, "combined")     # the key block of the same file
    assert cert.subject.rfc4514_string() == "CN=system:k8sboot-health,OU=k8s-scratch,C=VN"
    assert pki.key_matches(cert, key)
    assert combined == local["k8sboot-health.pem"] + local["k8sboot-health-key.pem"]
    assert (lb.LB_DIR.path, lb.LB_DIR.mode) == ("/etc/haproxy/k8sboot", 0o700)
    assert all(f.directory in (lb.LB_DIR.path, "/etc/haproxy") for f in files)
    assert (generated_pki.dir / "ca-key.pem").read_bytes() not in b"".join(f.content for f in files)


def test_lb_files_without_the_health_cert_say_to_run_gen_certs(generated_pki):
    inv = dataclasses.replace(inventory(), pki=generated_pki.inventory.pki)
    local = pki_bytes(generated_pki.dir)
    del local["k8sboot-health-key.pem"]
    with pytest.raises(PkiError, match="k8sboot-health-key.pem: no such file") as err:
        lb.lb_files(inv, local, "")
    assert "gen-certs" in err.value.hint


def test_lb_files_refuse_a_health_cert_with_another_key_or_from_another_ca(generated_pki, tmp_path,
                                                                          make_inventory):
    inv = dataclasses.replace(inventory(), pki=generated_pki.inventory.pki)
    local = pki_bytes(generated_pki.dir)
    wrong_key = dict(local, **{"k8sboot-health-key.pem": generated_pki.path("admin-key.pem").read_bytes()})
    with pytest.raises(PkiError, match="does not match"):
        lb.lb_files(inv, wrong_key, "")
    other = make_inventory(dir=tmp_path / "other", key_algorithm="ecdsa-p256")
    generate(other)
    foreign = dict(local, **{n: (other.pki.dir / n).read_bytes()
                             for n in ("k8sboot-health.pem", "k8sboot-health-key.pem")})
    with pytest.raises(PkiError, match="not signed by the CA"):
        lb.lb_files(inv, foreign, "")


# --- the inventory around a load balancer ----------------------------------------------------


def test_the_api_endpoint_host_is_a_san_of_the_serving_cert_whatever_it_is():
    for endpoint, san in (("https://10.240.0.5:6443", "IP:10.240.0.5"),
                          ("https://api.k8s.example:6443", "DNS:api.k8s.example")):
        assert san in pki.build_pki_spec(inventory(endpoint=endpoint)).leaf("kubernetes").sans


def test_check_lb_inventory_warns_when_the_shutdown_delay_is_not_longer_than_the_checks_take():
    assert lb.check_lb_inventory(inventory(delay="2s")) == ()
    (warning,) = lb.check_lb_inventory(inventory(delay="1s"))
    assert warning.startswith("inv.yaml:9: apiserver.shutdown_delay_duration 1s is not longer than")
    assert lb.check_lb_inventory(inventory(delay="1s", lbs="")) == ()    # no LB: nothing to say


def test_check_lb_inventory_warns_when_clients_dial_a_controller_directly():
    (warning,) = lb.check_lb_inventory(inventory(endpoint="https://10.240.0.10:6443"))
    assert warning.startswith("inv.yaml:3: cluster.api_endpoint https://10.240.0.10:6443 is a controller")
    assert lb.check_lb_inventory(inventory(endpoint="https://api.k8s.example:6443")) == ()


def test_lb_is_pure_core():
    """No SSH, no subprocess, no printing: the engine and the CLI do the effects."""
    from test_architecture import EFFECTS, PKG, imports_of

    found = imports_of(PKG / "lb.py")
    assert sorted(i for i in found if any(i == e or i.startswith(e + ".") for e in EFFECTS)) == []


# --- a real HAProxy in front of TLS backends -------------------------------------------------


class Backend:
    """A TLS server on 127.0.0.N serving kubernetes.pem, asking for a client cert from ca.pem,
    answering every request with `status` and recording (client CN, request line)."""

    def __init__(self, pki_dir: Path, ip: str, port: int):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki_dir / "kubernetes.pem", pki_dir / "kubernetes-key.pem")
        self.ctx.load_verify_locations(pki_dir / "ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server((ip, port))
        self.status = 200
        self.seen: list[tuple[str, str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.seen.append((cn, request.split(b"\r\n", 1)[0].decode()))
                body = b"ok" if self.status == 200 else b"[-]shutdown failed: reason withheld"
                tls.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                            % (self.status, len(body), body))
        except (ssl.SSLError, OSError, KeyError):
            pass

    def close(self):
        self.listener.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_status(stats_socket: str) -> dict[str, str]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(stats_socket)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == lb.BACKEND
            and r["svname"] not in ("BACKEND", "FRONTEND")}


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@needs_haproxy
def test_a_real_haproxy_checks_readyz_with_the_health_cert_and_passes_client_tls_through(
        generated_pki, tmp_path):
    d = generated_pki.dir
    frontend, secure = _free_port(), _free_port()
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    base = generated_pki.inventory
    inv = dataclasses.replace(
        base, cluster=dataclasses.replace(base.cluster, api_endpoint=f"https://127.0.0.1:{frontend}"),
        apiserver=dataclasses.replace(base.apiserver, secure_port=secure),
        controllers=tuple(Host(f"controller-{i}", ip, ipaddress.ip_address(ip)) for i, ip in enumerate(ips)),
        load_balancers=(Host("lb-0", "127.0.0.1", ipaddress.ip_address("127.0.0.1")),))
    paths = install_locally(lb.lb_files(inv, pki_bytes(d), ""), tmp_path)
    config = lb.render_haproxy_config(inv, paths=paths)
    if os.geteuid() != 0:                     # chroot and user switch need root; the rest is the same
        config = "\n".join(line for line in config.splitlines()
                           if line.strip().split(" ")[0] not in ("chroot", "user", "group")) + "\n"
    (tmp_path / "haproxy.cfg").write_text(config)
    backends = [Backend(d, ip, secure) for ip in ips]
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: Path(paths.stats_socket).exists(), 5), (tmp_path / "haproxy.log").read_text()
        up = _wait_for(lambda: all(b.seen for b in backends)
                       and set(_server_status(paths.stats_socket).values()) == {"UP"})
        assert up, _server_status(paths.stats_socket)
        for b in backends:
            assert b.seen[0] == ("system:k8sboot-health", "GET /readyz HTTP/1.0")

        backends[1].status = 500              # SIGTERM: /readyz fails, the port stays open
        down = _wait_for(lambda: _server_status(paths.stats_socket)["controller-1"].startswith("DOWN"),
                         (lb.DOWN_AFTER_MS + lb.CHECK_INTER_MS) / 1000 + 2)
        assert down, _server_status(paths.stats_socket)

        # a client's TLS goes through untouched: the controller's cert, the client's own cert
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        ctx.load_cert_chain(d / "admin.pem", d / "admin-key.pem")
        before = {i: len(b.seen) for i, b in enumerate(backends)}
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", frontend), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    assert tls.getpeercert()["subject"][-1] == (("commonName", "kubernetes"),)
                    tls.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert tls.recv(12).startswith(b"HTTP/1.1")
        served = [b.seen[before[i]:] for i, b in enumerate(backends)]
        requests = [s for seen in served for s in seen if s[1].startswith("GET /version")]
        assert requests == [("admin", "GET /version HTTP/1.1")] * 4
        assert not [s for s in served[1] if s[1].startswith("GET /version")], "a DOWN server got traffic"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for b in backends:
            b.close()
