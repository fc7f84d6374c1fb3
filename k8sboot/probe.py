"""HTTPS probes of a controller's secure port: what the API server answers to no credential, to a
bogus bearer token, and to the admin client certificate (SelfSubjectReview).

Only `verify --probe` uses this. TLS is verified against the cluster CA (pki/ca.pem) and the
address dialled; nothing but the controller's address is contacted.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from http.client import HTTPException, HTTPSConnection
from pathlib import Path

SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSR_BODY = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
ANON_PATH = "/api/v1/namespaces/default/pods"
BOGUS_TOKEN = "k8sboot-verify-bogus-token"


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


def request(address: str, port: int, method: str, path: str, ca_file: Path, *, headers=None, body=None,
            cert: Path | None = None, key: Path | None = None, timeout: float = 5.0) -> ProbeAnswer:
    try:
        conn = HTTPSConnection(address, port, context=_context(ca_file, cert, key), timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Accept": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return ProbeAnswer(resp.status, resp.read(65536).decode("utf-8", "replace"))
        finally:
            conn.close()
    except ssl.SSLCertVerificationError as exc:
        return ProbeAnswer(None, error=f"TLS verification failed: {exc.verify_message}")
    except (OSError, HTTPException, ssl.SSLError) as exc:
        return ProbeAnswer(None, error=f"{type(exc).__name__}: {exc}")


def probe_anonymous(address: str, port: int, ca_file: Path, timeout: float = 5.0) -> ProbeAnswer:
    return request(address, port, "GET", ANON_PATH, ca_file, timeout=timeout)


def probe_bogus_token(address: str, port: int, ca_file: Path, timeout: float = 5.0) -> ProbeAnswer:
    return request(address, port, "GET", ANON_PATH, ca_file, timeout=timeout,
                   headers={"Authorization": f"Bearer {BOGUS_TOKEN}"})


def probe_admin(address: str, port: int, ca_file: Path, cert: Path, key: Path,
                timeout: float = 5.0) -> ProbeAnswer:
    return request(address, port, "POST", SSR_PATH, ca_file, cert=cert, key=key, timeout=timeout,
                   body=SSR_BODY, headers={"Content-Type": "application/json"})
