"""TLS for the stand-in: pyOpenSSL when importable (asks for a client certificate and accepts any,
as Go's tls.RequestClientCert, so authn decides and answers 401) or Python's `ssl` (verifies in
the handshake); each connection exposes the peer's leaf and intermediates as DER for authn."""

from __future__ import annotations

import io
import os
import select
import socket
import ssl

IDLE_TIMEOUT = 60.0


class _Writer(io.RawIOBase):
    def __init__(self, conn):
        self._conn = conn

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._conn.sendall(bytes(b))
        return len(b)


class _Reader(io.RawIOBase):
    def __init__(self, conn):
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._conn.recv_into(b)


class _StdlibConn:
    """Python's ssl: verifies the client cert against --client-ca-file in the handshake."""

    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock

    def handshake(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.do_handshake()
        self.sock.settimeout(IDLE_TIMEOUT)

    def peer_certificates(self) -> tuple[bytes | None, tuple[bytes, ...]]:
        """The leaf and the intermediates the client sent. Python 3.11's ssl has no public call
        for the chain (SSLSocket.get_unverified_chain is 3.13); its C object has had one since
        3.10 (`_sslobj.get_unverified_chain()`, the leaf first on the server side), present in
        Debian bookworm's 3.11. Without it (another interpreter) authn gets the leaf alone."""
        leaf = self.sock.getpeercert(binary_form=True)
        if leaf is None:
            return None, ()
        chain_of = getattr(self.sock, "get_unverified_chain", None) or \
            getattr(getattr(self.sock, "_sslobj", None), "get_unverified_chain", None)
        chain = (chain_of() or []) if chain_of else []
        ders = (c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain)
        return leaf, tuple(d for d in ders if d != leaf)

    def recv_into(self, b) -> int:
        try:
            return self.sock.recv_into(b)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            return 0

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _OpenSSLConn:
    """pyOpenSSL over a socket with a timeout: retries WantRead/WantWrite with select()."""

    def __init__(self, conn, sock: socket.socket, SSL):
        self.conn, self.sock, self.SSL = conn, sock, SSL
        self.timeout = IDLE_TIMEOUT

    def _wait(self, for_write: bool) -> None:
        r, w, _ = select.select([] if for_write else [self.sock], [self.sock] if for_write else [], [],
                                self.timeout)
        if not r and not w:
            raise socket.timeout("timed out")

    def _retry(self, fn, *args):
        SSL = self.SSL
        while True:
            try:
                return fn(*args)
            except SSL.WantReadError:
                self._wait(False)
            except SSL.WantWriteError:
                self._wait(True)

    def handshake(self, timeout: float) -> None:
        self.timeout = timeout
        self.sock.settimeout(0)
        try:
            self._retry(self.conn.do_handshake)
        except self.SSL.Error as exc:
            raise ssl.SSLError(f"{_openssl_reason(exc)}") from exc
        self.timeout = IDLE_TIMEOUT

    def peer_certificates(self) -> tuple[bytes | None, tuple[bytes, ...]]:
        from OpenSSL import crypto

        leaf = self.conn.get_peer_certificate()
        if leaf is None:
            return None, ()
        leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
        chain = self.conn.get_peer_cert_chain() or []
        inter = tuple(d for d in (crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain) if d != leaf_der)
        return leaf_der, inter

    def recv_into(self, b) -> int:
        SSL = self.SSL
        try:
            return self._retry(self.conn.recv_into, b)
        except (SSL.ZeroReturnError, SSL.SysCallError, ConnectionResetError):
            return 0

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._retry(self.conn.send, bytes(view[:16384]))
            view = view[n:]

    def close(self) -> None:
        try:
            self.conn.shutdown()
        except Exception:     # noqa: BLE001 - best effort close_notify on a dying connection
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _openssl_reason(exc: Exception) -> str:
    try:
        return "; ".join(e[2] for e in exc.args[0]) or str(exc)
    except Exception:          # noqa: BLE001
        return str(exc) or exc.__class__.__name__


class TLSBackend:
    name = ""

    def wrap(self, sock: socket.socket):
        raise NotImplementedError


class StdlibTLS(TLSBackend):
    name = "python-ssl"

    def __init__(self, cert: str, key: str, client_ca: str | None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        self.ctx = ctx

    def wrap(self, sock: socket.socket):
        return _StdlibConn(self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False))


class OpenSSLTLS(TLSBackend):
    name = "pyopenssl"

    def __init__(self, cert: str, key: str, client_ca: str | None):
        from OpenSSL import SSL

        self.SSL = SSL
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
        ctx.set_session_id(b"k8sboot-standin")
        if client_ca:
            # like Go's tls.RequestClientCert: ask (naming our CAs), accept anything, let authn decide
            ctx.load_client_ca(client_ca.encode())
            ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
        self.ctx = ctx

    def wrap(self, sock: socket.socket):
        conn = self.SSL.Connection(self.ctx, sock)
        conn.set_accept_state()
        return _OpenSSLConn(conn, sock, self.SSL)


def make_tls(cert: str, key: str, client_ca: str | None, backend: str | None = None) -> TLSBackend:
    """pyOpenSSL when importable (or asked for), else Python's ssl; see the module docstring."""
    backend = backend or os.environ.get("K8SBOOT_STANDIN_TLS", "auto")
    if backend in ("auto", "pyopenssl"):
        try:
            import OpenSSL.SSL  # noqa: F401
        except ImportError:
            if backend == "pyopenssl":
                raise
        else:
            return OpenSSLTLS(cert, key, client_ca)
    return StdlibTLS(cert, key, client_ca)


