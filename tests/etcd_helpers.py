"""A real etcd for tests, on 127.0.0.1 with TLS and client-certificate auth.

- `ensure_etcd_binaries()`: Debian's etcd-server and etcd-client 3.4 unpacked (never installed:
  installing would start the system's etcd.service) into .venv/lib/k8sboot-etcd; the .debs come
  from `apt-get download` into /var/cache/k8sboot/etcd-debs. Idempotent and fast when present.
  `python tests/etcd_helpers.py` does it (what `make test` runs up front).
- `issue_etcd_pki(dir)`: a throwaway CA, etcd's serving cert (SAN 127.0.0.1, localhost), a client
  cert, and another CA with a client cert of its own, written as PEM files.
- `EtcdProcess`: one etcd member on free loopback ports (client and peer), a data dir of its own;
  `start()` waits for GET /health over HTTPS with the client cert; `stop()` ends it by its PID.
- `etcdctl_get_json(...)`: `etcdctl get KEY --write-out=json` decoded, the independent check.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEB_CACHE = Path(os.environ.get("K8SBOOT_ETCD_DEBS", "/var/cache/k8sboot/etcd-debs"))
ETCD_DIR = Path(os.environ.get("K8SBOOT_ETCD_DIR", ROOT / ".venv" / "lib" / "k8sboot-etcd"))
PACKAGES = ("etcd-server", "etcd-client")


class EtcdUnavailable(Exception):
    """The etcd binaries cannot be had here (no apt, no Debian archive): the tests say why."""


@dataclass(frozen=True)
class EtcdBinaries:
    etcd: Path
    etcdctl: Path


def ensure_etcd_binaries() -> EtcdBinaries:
    """etcd and etcdctl from Debian's packages, unpacked under ETCD_DIR (see the module docstring)."""
    bins = EtcdBinaries(ETCD_DIR / "usr" / "bin" / "etcd", ETCD_DIR / "usr" / "bin" / "etcdctl")
    if os.access(bins.etcd, os.X_OK) and os.access(bins.etcdctl, os.X_OK):
        return bins
    debs = _download_debs()
    staging = Path(tempfile.mkdtemp(prefix=".k8sboot-etcd.", dir=ETCD_DIR.parent))
    try:
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], f"unpacking {deb}")
        if ETCD_DIR.exists():
            shutil.rmtree(ETCD_DIR)
        os.replace(staging, ETCD_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (os.access(bins.etcd, os.X_OK) and os.access(bins.etcdctl, os.X_OK)):
        raise EtcdUnavailable(f"unpacking {', '.join(map(str, debs))}: no usr/bin/etcd and etcdctl in them")
    return bins


def _download_debs() -> list[Path]:
    def found() -> list[Path]:
        return [max(DEB_CACHE.glob(f"{p}_*.deb"), default=None) for p in PACKAGES]  # type: ignore[misc]

    debs = found()
    if all(debs):
        return debs  # type: ignore[return-value]
    if shutil.which("apt-get") is None:
        raise EtcdUnavailable("apt-get is not here to download Debian's etcd-server and etcd-client")
    try:
        DEB_CACHE.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EtcdUnavailable(f"creating {DEB_CACHE}: {exc.strerror} (set K8SBOOT_ETCD_DEBS)") from exc
    download = ["apt-get", "download", "-q", *PACKAGES]
    r = subprocess.run(download, cwd=DEB_CACHE, capture_output=True, text=True)
    if r.returncode != 0:               # no package lists yet, or old ones
        _run(["apt-get", "update", "-qq"], "apt-get update")
        _run(download, f"apt-get download in {DEB_CACHE}", cwd=DEB_CACHE)
    debs = found()
    if not all(debs):
        raise EtcdUnavailable(f"apt-get download left no {' and '.join(PACKAGES)} .deb in {DEB_CACHE}")
    return debs  # type: ignore[return-value]


def _run(argv: list[str], doing: str, cwd: Path | None = None) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise EtcdUnavailable(f"{doing}: {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-500:]}")


# --- PKI --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdPki:
    dir: Path

    def __getattr__(self, name: str) -> str:            # pki.ca, pki.server_key, pki.other_client ...
        if name.startswith("_"):
            raise AttributeError(name)
        return str(self.dir / (name.replace("_key", "-key").replace("_", "-") + ".pem"))


def issue_etcd_pki(directory: Path) -> EtcdPki:
    """ca, server(-key), client(-key); other-ca, other-client(-key) signed by other-ca."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(timezone.utc)
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, cert, key) -> None:
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            fd = os.open(directory / f"{name}-key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(cn: str, issuer, issuer_key, eku, sans=()):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(eku), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()), key

    ca_cert, ca_key = ca("etcd-ca")
    write("ca", ca_cert, None)
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    write("server", *leaf("etcd-server", ca_cert, ca_key, both,
                          [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]))
    write("client", *leaf("kube-apiserver-etcd-client", ca_cert, ca_key, [ExtendedKeyUsageOID.CLIENT_AUTH]))
    other_cert, other_key = ca("another-ca")
    write("other-ca", other_cert, None)
    write("other-client", *leaf("kube-apiserver-etcd-client", other_cert, other_key,
                                [ExtendedKeyUsageOID.CLIENT_AUTH]))
    return EtcdPki(directory)


# --- one etcd member -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdProcess:
    """One etcd member on 127.0.0.1 (see the module docstring). Its data dir survives stop/start."""

    def __init__(self, bins: EtcdBinaries, pki: EtcdPki, data_dir: Path, name: str = "standin-test"):
        self.bins = bins
        self.pki = pki
        self.data_dir = data_dir
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [str(self.bins.etcd), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
                "--cert-file", self.pki.server, "--key-file", self.pki.server_key,
                "--client-cert-auth", "--trusted-ca-file", self.pki.ca,
                "--logger", "zap", "--log-level", "warn"]

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd not healthy within {timeout}s: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        ctx.load_cert_chain(self.pki.client, self.pki.client_key)
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", self.client_port, context=ctx, timeout=2)
            conn.request("GET", "/health")
            body = json.loads(conn.getresponse().read())
            conn.close()
            return body.get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bins.etcdctl), "--endpoints", self.url, "--cacert", self.pki.ca,
                               "--cert", self.pki.client, "--key", self.pki.client_key, *args],
                              capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})

    def get_json(self, key: str) -> dict:
        """`etcdctl get KEY --write-out=json`, keys and values base64-decoded to str."""
        r = self.etcdctl("get", key, "--write-out=json")
        if r.returncode != 0:
            raise RuntimeError(f"etcdctl get {key}: {r.stderr}")
        out = json.loads(r.stdout)
        for kv in out.get("kvs") or []:
            kv["key"] = base64.b64decode(kv["key"]).decode()
            kv["value"] = base64.b64decode(kv.get("value", "")).decode()
        return out

    def wipe(self) -> None:
        """Delete every key (between tests sharing one member)."""
        r = self.etcdctl("del", "", "--from-key")
        if r.returncode != 0:
            raise RuntimeError(f"etcdctl del --from-key: {r.stderr}")


if __name__ == "__main__":
    try:
        found = ensure_etcd_binaries()
    except EtcdUnavailable as exc:
        sys.exit(f"etcd for the tests: {exc}")
    sys.stdout.write(f"etcd for the tests: {found.etcd} and {found.etcdctl}\n")
