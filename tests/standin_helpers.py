"""The kube-apiserver stand-in under test: independent PKI material (cryptography and PyJWT
directly, not the project's PKI code), its command line, a server running in-process on
127.0.0.1, and a kubeconfig for real kubectl against it. Shared by tests/unit/test_standin*.py."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8sboot import standin

ISSUER = "https://10.240.0.10:6443"


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    return x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca, cn: str, orgs=(), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), ips=(), valid=True):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    start, end = (now - timedelta(minutes=5), now + timedelta(days=1)) if valid else \
        (now - timedelta(days=3), now - timedelta(days=1))
    b = (x509.CertificateBuilder().subject_name(_name(cn, orgs)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False))
    if ips:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(i)) for i in ips]),
                            critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def make_pki(d: Path, ca_name: str = "Test Cluster CA") -> Path:
    """A cluster CA (named `ca_name`), the server cert for 127.0.0.1, client certs (admin in
    system:masters, jane in dev, an expired one, carol under an intermediate, mallory from another
    CA) and an RSA service-account key pair, as files in `d`."""
    ca = _ca(ca_name)
    other = _ca("Other CA")
    files = {"ca.pem": _pem(ca[1])}
    for name, (key, cert) in {
        "kubernetes": _leaf(ca, "kubernetes", eku=(ExtendedKeyUsageOID.SERVER_AUTH,), ips=("127.0.0.1",)),
        "admin": _leaf(ca, "admin", orgs=("system:masters",)),
        "jane": _leaf(ca, "jane", orgs=("dev",)),
        "expired": _leaf(ca, "old", valid=False),
        "mallory": _leaf(other, "mallory", orgs=("system:masters",)),
    }.items():
        files[f"{name}.pem"] = _pem(cert)
        files[f"{name}-key.pem"] = _key_pem(key)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    inter_cert = (x509.CertificateBuilder().subject_name(_name("Test Intermediate CA")).issuer_name(ca[1].subject)
                  .public_key(inter_key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                 critical=True)
                  .sign(ca[0], hashes.SHA256()))
    carol_key, carol = _leaf((inter_key, inter_cert), "carol", orgs=("dev",))
    files["carol-chain.pem"] = _pem(carol) + _pem(inter_cert)       # the leaf, then its intermediate
    files["carol-key.pem"] = _key_pem(carol_key)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["service-account-key.pem"] = _key_pem(sa)
    files["service-account.pem"] = sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def token(pki: Path, *, iss=ISSUER, aud=(ISSUER,), exp_in=600, ns="authn-demo", sa="bot", key_file=None,
          uid: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": list(aud), "iat": now, "nbf": now, "exp": now + exp_in,
              "sub": f"system:serviceaccount:{ns}:{sa}", "jti": str(uuid.uuid4()),
              "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": uid or str(uuid.uuid4())}}}
    key = serialization.load_pem_private_key((key_file or pki / "service-account-key.pem").read_bytes(), None)
    return jwt.encode(claims, key, algorithm="RS256")


def base_argv(pki: Path, **over) -> list[str]:
    flags = {
        "etcd-servers": "https://127.0.0.1:2379", "bind-address": "127.0.0.1", "secure-port": "6443",
        "tls-cert-file": pki / "kubernetes.pem", "tls-private-key-file": pki / "kubernetes-key.pem",
        "client-ca-file": pki / "ca.pem", "service-account-key-file": pki / "service-account.pem",
        "service-account-signing-key-file": pki / "service-account-key.pem",
        "service-account-issuer": ISSUER, "authorization-mode": "Node,RBAC",
    }
    flags.update(over)
    return [f"--{k}={v}" for k, v in flags.items() if v is not None]


def backends():
    out = ["python-ssl"]
    try:
        import OpenSSL.SSL  # noqa: F401
        out.append("pyopenssl")
    except ImportError:
        pass
    return out


class Running:
    """The stand-in in this process on a free port. Its objects: a FileStore in `store_dir` (a new
    temp dir by default), or, with `etcd=True`, wherever its flags say, as the binary opens them
    (--etcd-servers and the --etcd-* TLS files: pass them in `over`)."""

    def __init__(self, pki: Path, backend: str, ready_delay: float = 0.0, store_dir: Path | None = None,
                 etcd: bool = False, **over):
        flags = standin.parse_flags(base_argv(pki, **over))
        assert standin.validate_flags(flags) == []
        self.pki = pki
        self.store_dir = None if etcd else store_dir or Path(tempfile.mkdtemp(prefix="standin-store-"))
        self.server_flags = flags
        self.server = standin.build_server(flags, standin.load_config(flags), port=0,
                                           tls_backend="ssl" if backend == "python-ssl" else "pyopenssl",
                                           ready_delay=ready_delay,
                                           store=None if etcd else standin.FileStore(str(self.store_dir)))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, cert: str | None = None, bearer: str | None = None,
                body: bytes | None = None, headers: dict | None = None,
                content_type: str = "application/json") -> tuple[int, object]:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        if cert:
            ctx.load_cert_chain(self.pki / f"{cert}.pem", self.pki / f"{cert}-key.pem")
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
        headers = dict(headers or {})
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        ctype = r.getheader("Content-Type", "")
        return r.status, json.loads(data) if ctype.startswith("application/json") else data.decode()

    def service_account(self, ns: str = "authn-demo", name: str = "bot") -> str:
        """Create the namespace (if missing) and the ServiceAccount as admin; its uid."""
        code, _ = self.request("POST", "/api/v1/namespaces", cert="admin",
                               body=json.dumps({"metadata": {"name": ns}}).encode())
        assert code in (201, 409)
        code, body = self.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", cert="admin",
                                  body=json.dumps({"metadata": {"name": name}}).encode())
        assert code == 201, body
        return body["metadata"]["uid"]

    def whoami(self, **kw) -> tuple[int, object]:
        return self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                            body=b'{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}', **kw)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class socket_port:
    """A free TCP port on 127.0.0.1 (closed again before use)."""

    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()




# --- real kubectl against a Running stand-in ---------------------------------------------------------

KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or ""


def write_kubeconfig(path: Path, pki: Path, port: int, user: str | None = "admin", token: str | None = None) -> Path:
    """A kubeconfig for https://127.0.0.1:<port> trusting the test CA, as `user` (a client cert
    from make_pki), or with a bearer token, or with no credential at all (user None)."""
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    if token:
        creds = {"token": token}
    elif user:
        creds = {"client-certificate-data": b64(f"{user}.pem"), "client-key-data": b64(f"{user}-key.pem")}
    else:
        creds = {}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "standin",
              "clusters": [{"name": "standin", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                           "certificate-authority-data": b64("ca.pem")}}],
              "users": [{"name": "u", "user": creds}],
              "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "u"}}]}
    path.write_text(json.dumps(config))           # JSON is YAML: kubectl reads it
    return path


class Kubectl:
    """Real kubectl (1.28+) against one stand-in, with its own discovery cache directory."""

    def __init__(self, workdir: Path, pki: Path, port: int):
        self.workdir, self.pki, self.port = workdir, pki, port
        self.cache = workdir / "kube-cache"
        self.admin = write_kubeconfig(workdir / "admin.kubeconfig", pki, port)

    def run(self, *args: str, kubeconfig: Path | None = None, token: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        config = kubeconfig or self.admin
        if token:
            config = write_kubeconfig(self.workdir / f"token-{uuid.uuid4().hex}.kubeconfig", self.pki, self.port,
                                      token=token)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        return subprocess.run([KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(self.cache), *args],
                              capture_output=True, text=True, timeout=60, input=stdin, env=env, cwd=self.workdir)

    def ok(self, *args: str, **kw) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r.stdout
