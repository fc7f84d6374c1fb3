"""k8sboot.probe.request's `dial`: the TCP connection comes from the caller (the jump host's
dialer in verify --probe and the health gate), TLS and HTTP stay the same. A real TLS server on
127.0.0.1 with the generated PKI's serving cert (its SANs hold 127.0.0.1)."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k8sboot import layout, probe


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b'{"path": "%s"}' % self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_server(generated_pki):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(generated_pki.path(layout.cert_file(layout.APISERVER)),
                        generated_pki.path(layout.key_file(layout.APISERVER)))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], generated_pki.path(layout.cert_file(layout.CA))
    server.shutdown()
    server.server_close()


def test_a_request_with_dial_connects_through_it_and_speaks_tls_and_http_as_without(tls_server):
    port, ca = tls_server
    calls = []

    def dial(address, p, timeout):
        calls.append((address, p, timeout))
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)

    answer = probe.request("127.0.0.1", port, "GET", "/readyz", ca, timeout=3.0, dial=dial)
    assert (answer.status, answer.json()) == (200, {"path": "/readyz"})
    assert calls == [("127.0.0.1", port, 3.0)]
    assert probe.request("127.0.0.1", port, "GET", "/livez", ca).status == 200      # without: direct


def test_the_certificate_is_checked_against_the_address_asked_for_not_where_dial_went(tls_server):
    port, ca = tls_server
    answer = probe.request("10.99.0.1", port, "GET", "/", ca, timeout=3.0,
                           dial=lambda a, p, t: socket.create_connection(("127.0.0.1", port), timeout=t))
    assert answer.status is None and "TLS verification failed" in answer.error
    assert "10.99.0.1" in answer.error


def test_a_dial_that_fails_is_an_answer_with_the_error_not_an_exception(tls_server):
    port, ca = tls_server

    def dial(address, p, timeout):
        raise ConnectionRefusedError("via 10.240.0.10:22: Connection refused")

    answer = probe.probe_anonymous("127.0.0.1", port, ca, 3.0, dial=dial)
    assert answer.status is None
    assert answer.error == "ConnectionRefusedError: via 10.240.0.10:22: Connection refused"
