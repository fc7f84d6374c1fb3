"""HTTPS probes of a controller's secure port: what the API server answers to no credential, to a
bogus bearer token, and to the admin client certificate (SelfSubjectReview).

`verify --probe` and the deploy's health gate use this. TLS is verified against the cluster CA
(pki/ca.pem) and the address dialled; nothing but the controller's address is contacted.

Every request takes an optional `dial(address, port, timeout) -> socket.socket`, used instead of
`socket.create_connection` to open the TCP connection under TLS: with `ssh.proxy_jump` set,
`remote.tcp_dialer` gives one that goes through the jump host. It raises OSError as
`create_connection` does; the TLS handshake, the certificate check against `address` and HTTP
are the same either way.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPSConnection
from pathlib import Path

SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSR_BODY = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
ANON_PATH = "/api/v1/namespaces/default/pods"
BOGUS_TOKEN = "k8sboot-verify-bogus-token"

Dial = Callable[[str, int, float], socket.socket]     # (address, port, timeout) -> a connected socket


@dataclass(frozen=True)
class ProbeAnswer:
    status: int | None          # HTTP status, None when the request could not be made
    body: str = ""
    error: str = ""

    def json(self) -> dict:
        try:
            doc = json.loads(self.body)
            return doc if isinstance(doc, dict) else {}
        except ValueError:
            return {}


def _context(ca_file: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class _DialledHTTPSConnection(HTTPSConnection):
    """HTTPS over a socket from `dial` (TLS verified against the address, as HTTPSConnection does)."""

    def __init__(self, address: str, port: int, *, context: ssl.SSLContext, timeout: float, dial: Dial):
        super().__init__(address, port, context=context, timeout=timeout)
        self._tls = context
        self._dial = dial

    def connect(self) -> None:
        raw = self._dial(self.host, self.port, self.timeout)
        try:
            raw.settimeout(self.timeout)
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def request(address: str, port: int, method: str, path: str, ca_file: Path, *, headers=None, body=None,
            cert: Path | None = None, key: Path | None = None, timeout: float = 5.0,
            dial: Dial | None = None, max_body: int = 65536) -> ProbeAnswer:
    """One HTTPS request to `address:port`; never raises for a failed connection or TLS check
    (`ProbeAnswer.status` None and `.error` say why). `dial`: see the module docstring. The body is
    read up to `max_body` bytes (a real /metrics is a few MiB)."""
    try:
        context = _context(ca_file, cert, key)
        if dial is None:
            conn = HTTPSConnection(address, port, context=context, timeout=timeout)
        else:
            conn = _DialledHTTPSConnection(address, port, context=context, timeout=timeout, dial=dial)
        try:
            conn.request(method, path, body=body, headers={"Accept": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return ProbeAnswer(resp.status, resp.read(max_body).decode("utf-8", "replace"))
        finally:
            conn.close()
    except ssl.SSLCertVerificationError as exc:
        return ProbeAnswer(None, error=f"TLS verification failed: {exc.verify_message}")
    except (OSError, HTTPException, ssl.SSLError) as exc:
        return ProbeAnswer(None, error=f"{type(exc).__name__}: {exc}")


def probe_anonymous(address: str, port: int, ca_file: Path, timeout: float = 5.0, *,
                    dial: Dial | None = None) -> ProbeAnswer:
    return request(address, port, "GET", ANON_PATH, ca_file, timeout=timeout, dial=dial)


def probe_bogus_token(address: str, port: int, ca_file: Path, timeout: float = 5.0, *,
                      dial: Dial | None = None) -> ProbeAnswer:
    return request(address, port, "GET", ANON_PATH, ca_file, timeout=timeout, dial=dial,
                   headers={"Authorization": f"Bearer {BOGUS_TOKEN}"})


def probe_admin(address: str, port: int, ca_file: Path, cert: Path, key: Path,
                timeout: float = 5.0, *, dial: Dial | None = None) -> ProbeAnswer:
    return request(address, port, "POST", SSR_PATH, ca_file, cert=cert, key=key, timeout=timeout, dial=dial,
                   body=SSR_BODY, headers={"Content-Type": "application/json"})
