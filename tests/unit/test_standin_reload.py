"""The stand-in reads --tls-cert-file/--tls-private-key-file and --client-ca-file again while it runs,
as the real server's dynamic certificate controllers do: checked with real TLS handshakes and real
client certificates, never by asking the stand-in what it thinks it loaded."""

from __future__ import annotations

import shutil
import ssl
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/standin_helpers.py

from standin_helpers import Running, backends, make_pki  # noqa: E402

from k8sboot.standin.reload import DEFAULT_INTERVAL, Reloader, parse_interval  # noqa: E402


@pytest.fixture
def pkis(tmp_path):
    """`live`: the files the server's flags name (changed by the test); `new`: another PKI whose
    files are copied over them."""
    live, new = tmp_path / "live", tmp_path / "new"
    live.mkdir()
    new.mkdir()
    make_pki(live)
    make_pki(new, ca_name="Test Cluster CA 2")          # a rotation's new CA
    return live, new


def presented(port: int, ca: Path) -> bytes:
    """The serving certificate a fresh TLS handshake gets (verified against `ca`), DER."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


@pytest.mark.parametrize("backend", backends())
def test_a_new_serving_cert_on_disk_is_served_from_the_next_connection_without_a_restart(pkis, backend):
    live, new = pkis
    server = Running(live, backend)
    try:
        reloader = Reloader(server.server, server.server_flags)
        assert reloader.check() == []                                     # nothing changed
        assert presented(server.port, live / "ca.pem") == der(live / "kubernetes.pem")
        for name in ("kubernetes.pem", "kubernetes-key.pem"):
            shutil.copy(new / name, live / name)
        assert reloader.check() == ["serving-cert"]
        assert presented(server.port, new / "ca.pem") == der(new / "kubernetes.pem")
    finally:
        server.stop()


@pytest.mark.parametrize("backend", backends())
def test_a_client_ca_bundle_on_disk_admits_the_new_cas_clients_and_keeps_the_old_ones(pkis, backend):
    live, new = pkis
    server = Running(live, backend)
    try:
        reloader = Reloader(server.server, server.server_flags)
        new_admin = (new / "admin.pem", new / "admin-key.pem")
        shutil.copy(new_admin[0], live / "new-admin.pem")
        shutil.copy(new_admin[1], live / "new-admin-key.pem")
        try:
            code = server.whoami(cert="new-admin")[0]
        except ssl.SSLError:
            code = None              # python-ssl refuses another CA's cert in the handshake (documented)
        assert code in (401, None)                                          # another CA: not admitted
        (live / "ca.pem").write_text((live / "ca.pem").read_text() + (new / "ca.pem").read_text())
        assert reloader.check() == ["client-ca"]
        code, review = server.whoami(cert="new-admin")
        assert code == 201 and review["status"]["userInfo"]["username"] == "admin"
        assert server.whoami(cert="admin")[0] == 201
    finally:
        server.stop()


def test_a_file_that_does_not_load_is_logged_and_the_one_in_use_is_kept(pkis, capfd):
    live, _ = pkis
    server = Running(live, "python-ssl")
    try:
        reloader = Reloader(server.server, server.server_flags)
        good = der(live / "kubernetes.pem")
        (live / "kubernetes.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
        assert reloader.check() == []
        assert "keeping the ones in use" in capfd.readouterr().err
        assert presented(server.port, live / "ca.pem") == good
    finally:
        server.stop()


def test_the_interval_is_a_minute_unless_the_lab_sets_another():
    assert parse_interval(None) == parse_interval("") == DEFAULT_INTERVAL == 60.0
    assert parse_interval("0.5") == 0.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ValueError, match="K8SBOOT_STANDIN_RELOAD_INTERVAL"):
            parse_interval(bad)


def test_the_binary_reloads_on_its_own_at_the_interval_it_is_given(pkis):
    """`python -m k8sboot.standin` as the lab runs it, with a short interval: a serving cert
    replaced on disk is presented a moment later, and the journal says so."""
    import os
    import subprocess
    import time

    from standin_helpers import base_argv, socket_port

    live, new = pkis
    with socket_port() as port:
        pass
    env = {**os.environ, "K8SBOOT_STANDIN_RELOAD_INTERVAL": "0.2", "K8SBOOT_STANDIN_DATA_DIR": str(live / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "k8sboot.standin", *base_argv(live, **{"secure-port": str(port)})],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                presented(port, live / "ca.pem")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the stand-in never served"
                time.sleep(0.1)
        for name in ("kubernetes.pem", "kubernetes-key.pem"):
            shutil.copy(new / name, live / name)
        while True:
            try:
                if presented(port, new / "ca.pem") == der(new / "kubernetes.pem"):
                    break
            except ssl.SSLError:
                pass                     # still the old cert
            assert time.monotonic() < deadline, "the new serving cert was never presented"
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert '"Loaded a new cert/key pair"' in err


def test_a_bad_interval_stops_the_start_with_one_line(pkis):
    import os
    import subprocess

    from standin_helpers import base_argv

    live, _ = pkis
    r = subprocess.run([sys.executable, "-m", "k8sboot.standin", *base_argv(live)], capture_output=True, text=True,
                       env={**os.environ, "K8SBOOT_STANDIN_RELOAD_INTERVAL": "soon"}, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("Error: K8SBOOT_STANDIN_RELOAD_INTERVAL")
