"""The Store (storage.py) over a real etcd 3.4+, through etcd's v3 JSON gateway over HTTPS with a
client certificate, the way kube-apiserver keeps its objects there:

* keys `<prefix>/<resource>/<namespace>/<name>`, cluster-scoped `<prefix>/<resource>/<name>`,
  prefix `--etcd-prefix` (default `/registry`) and upstream's resource prefixes (the stand-in's
  kinds are stored under their plural: `/registry/namespaces/NAME`,
  `/registry/serviceaccounts/NS/NAME`, `/registry/clusterroles/NAME`,
  `/registry/rolebindings/NS/NAME`);
* values: the object's JSON without `metadata.resourceVersion` (upstream clears it before
  storing); an object read back gets etcd's `mod_revision` as its resourceVersion;
* create: a Txn `create_revision(key) == 0` then put, else AlreadyExists; update: a Txn
  `mod_revision(key) == <resourceVersion>` when one is given (else `version(key) > 0`) then put,
  else Conflict (NotFound when the key is gone); delete: a Txn `version(key) > 0` then delete with
  `prev_kv`, the object answered being the one deleted. Each write is one Txn, so etcd applies it
  whole or not at all: never a partial write;
* list: one range over the prefix (`range_end` = the prefix with its last byte + 1), in etcd's key
  order; `list_with_revision` also gives the range's header revision, the list's resourceVersion;
  `revision`: the cluster's current revision (a range's header);
* `health()`: kube-apiserver's `etcd` livez/readyz check, a quorum read of `<prefix>/health` with
  a timeout (`--etcd-healthcheck-timeout`, 2 s), answering (ok, reason) with upstream's reasons.

Servers are the `--etcd-servers` URLs, tried in order: a connection refused, unreachable or refused
by TLS moves on to the next one, and the one that answered is tried first next time. Requests go
over keep-alive connections (a few idle ones kept per server) with a timeout. A read that fails
after it was sent is retried on the next server; a write is not (etcd may have applied it), and
says so. Every failure is a StorageIOError naming the server(s) (the API server's 500
`Internal error occurred: ...`). Standard library only: it runs under Debian's python3 on lab hosts.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import select
import socket
import ssl
import threading
import time
from typing import Sequence
from urllib.parse import urlsplit

from k8sboot.standin.storage import AlreadyExists, Conflict, NotFound, StorageIOError

DEFAULT_PREFIX = "/registry"                 # kube-apiserver's --etcd-prefix
DEFAULT_TIMEOUT = 10.0                       # one request, seconds
DEFAULT_HEALTH_TIMEOUT = 2.0                 # --etcd-healthcheck-timeout (storagebackend.DefaultHealthcheckTimeout)
MAX_IDLE = 4                                 # idle keep-alive connections kept per server
NOT_ESTABLISHED = "etcd client connection not yet established"
DEADLINE_EXCEEDED = "context deadline exceeded"

# Where upstream's registry stores a resource when the key prefix is not its plural.
_UPSTREAM_PREFIX = {"nodes": "minions", "services": "services/specs", "endpoints": "services/endpoints",
                    "replicationcontrollers": "controllers"}

# ObjectMeta's fields before resourceVersion (Go's struct order): where it goes back on a read.
_META_BEFORE_RV = ("name", "generateName", "namespace", "selfLink", "uid")


# --- keys and values (pure) -----------------------------------------------------------------------


def resource_prefix(resource: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`/registry/serviceaccounts`: where every object of `resource` lives."""
    return f"{prefix.rstrip('/')}/{_UPSTREAM_PREFIX.get(resource, resource)}"


def etcd_key(resource: str, namespace: str, name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`/registry/serviceaccounts/NS/NAME`, or `/registry/namespaces/NAME` (no namespace)."""
    base = resource_prefix(resource, prefix)
    return f"{base}/{namespace}/{name}" if namespace else f"{base}/{name}"


def prefix_range_end(key: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd: the first key after every key starting with `key`."""
    end = bytearray(key)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"                             # every key
    end[-1] += 1
    return bytes(end)


def encode_object(obj: dict) -> bytes:
    """The stored value: the object's JSON, without metadata.resourceVersion (etcd's revision is it)."""
    stored = copy.deepcopy(obj)
    meta = stored.get("metadata")
    if isinstance(meta, dict):
        meta.pop("resourceVersion", None)
    return json.dumps(stored, separators=(",", ":")).encode()


def decode_object(value: bytes, mod_revision: int, key: str = "") -> dict:
    """The object of a stored value, its resourceVersion `mod_revision` in ObjectMeta's place."""
    try:
        obj = json.loads(value)
    except ValueError as exc:
        raise StorageIOError(f"decoding etcd key {key}: {exc}") from exc
    if not isinstance(obj, dict):
        raise StorageIOError(f"decoding etcd key {key}: not a JSON object")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    out: dict = {}
    placed = False
    for k, v in meta.items():
        if k == "resourceVersion":
            continue
        if not placed and k not in _META_BEFORE_RV:
            out["resourceVersion"] = str(mod_revision)
            placed = True
        out[k] = v
    if not placed:
        out["resourceVersion"] = str(mod_revision)
    obj["metadata"] = out
    return obj


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _rev(header_or_kv: dict, field: str = "revision") -> int:
    return int(header_or_kv.get(field) or 0)    # the gateway writes int64 as strings, omits zeros


# --- errors as upstream words them ------------------------------------------------------------------

_VERIFY_REASONS = {                  # OpenSSL verify codes → Go's crypto/x509 words
    2: "x509: certificate signed by unknown authority",
    19: "x509: certificate signed by unknown authority",
    20: "x509: certificate signed by unknown authority",
    21: "x509: certificate signed by unknown authority",
    10: "x509: certificate has expired or is not yet valid",
    9: "x509: certificate has expired or is not yet valid",
}
_ALERT_REASONS = {                   # a TLS alert from etcd → Go's `remote error: tls: ...`
    "ALERT_BAD_CERTIFICATE": "remote error: tls: bad certificate",
    "ALERT_UNKNOWN_CA": "remote error: tls: unknown certificate authority",
    "ALERT_CERTIFICATE_REQUIRED": "remote error: tls: certificate required",
    "ALERT_CERTIFICATE_EXPIRED": "remote error: tls: expired certificate",
    "ALERT_HANDSHAKE_FAILURE": "remote error: tls: handshake failure",
}


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        words = _VERIFY_REASONS.get(exc.verify_code)
        detail = exc.verify_message or exc.reason or str(exc)
        return f"{words} ({detail})" if words else f"x509: {detail}"
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason or "EOF" in str(exc):
        # TLS 1.3: etcd verifies our certificate after our side of the handshake, and a refusal
        # reaches us as the connection closing
        return "tls: etcd closed the connection in the TLS handshake (EOF): it did not accept the client certificate"
    for marker, words in _ALERT_REASONS.items():
        if reason.endswith(marker):
            return words
    return f"tls: {reason.lower().replace('_', ' ') if reason else exc}"


class _Failure(Exception):
    """One server failed. kind: "connect" (not reached: nothing was sent), "tls" (refused by TLS:
    nothing was processed), "timeout", "io" (after the request was sent), "etcd" (etcd answered
    an error)."""

    def __init__(self, kind: str, text: str, reused: bool = False):
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.reused = reused                     # on a kept-alive connection


class EtcdError(StorageIOError):
    """Every server failed: `failures` is [(server URL, kind, text)]."""

    def __init__(self, message: str, failures: list[tuple[str, str, str]]):
        super().__init__(message)
        self.failures = failures


# --- the connection pool ------------------------------------------------------------------------


class _Server:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise StorageIOError(f"--etcd-servers: {url!r} is not an http(s)://host:port URL")
        self.url = url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        try:
            self.port = parts.port or (443 if self.https else 80)
        except ValueError as exc:
            raise StorageIOError(f"--etcd-servers: {url!r}: {exc}") from exc
        self.idle: list[http.client.HTTPConnection] = []

    def dial_text(self, exc: OSError) -> str:
        """Go's dial error: `dial tcp 127.0.0.1:2379: connect: connection refused`."""
        why = (exc.strerror or str(exc) or type(exc).__name__).lower()
        return f"dial tcp {self.host}:{self.port}: connect: {why}"


class EtcdStore:
    """The Store on etcd (see the module docstring). Thread-safe; no connection is made until the
    first call."""

    def __init__(self, servers: str | Sequence[str], cafile: str | None = None, certfile: str | None = None,
                 keyfile: str | None = None, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT,
                 health_timeout: float = DEFAULT_HEALTH_TIMEOUT, max_idle: int = MAX_IDLE):
        urls = [s.strip() for s in (servers.split(",") if isinstance(servers, str) else servers) if s.strip()]
        if not urls:
            raise StorageIOError("--etcd-servers must be specified")
        self._servers = [_Server(u) for u in urls]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.max_idle = max_idle
        self._context = self._tls_context(cafile, certfile, keyfile) \
            if any(s.https for s in self._servers) else None
        self._lock = threading.Lock()
        self._preferred = 0                      # the server that answered last
        self._established = False                # some server has answered once

    @property
    def servers(self) -> list[str]:
        return [s.url for s in self._servers]

    @staticmethod
    def _tls_context(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
        """The client's TLS: etcd's CA (else the system's), and our certificate and key."""
        path = cafile
        try:
            context = ssl.create_default_context(cafile=cafile)
            if certfile or keyfile:
                path = certfile or keyfile
                context.load_cert_chain(certfile or "", keyfile or None)
        except FileNotFoundError as exc:
            raise StorageIOError(f"etcd client TLS: open {path}: no such file or directory") from exc
        except ssl.SSLError as exc:                  # (an OSError too) not PEM, or key and cert do not match
            raise StorageIOError(f"etcd client TLS: {path}: {exc.reason or exc}") from exc
        except OSError as exc:
            raise StorageIOError(f"etcd client TLS: open {path}: {(exc.strerror or str(exc)).lower()}") from exc
        return context

    # --- the Store -------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        reply = self._call("/v3/kv/range", {"key": _b64(self._health_key()), "count_only": True}, idempotent=True)
        return _rev(reply.get("header") or {})

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        key = etcd_key(resource, namespace, name, self.prefix)
        reply = self._call("/v3/kv/range", {"key": _b64(key)}, idempotent=True)
        kvs = reply.get("kvs") or []
        return decode_object(_unb64(kvs[0].get("value")), _rev(kvs[0], "mod_revision"), key) if kvs else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Objects of `resource` (in `namespace`; None or "": every one) in etcd's key order."""
        return self.list_with_revision(resource, namespace)[0]

    def list_with_revision(self, resource: str, namespace: str | None = None) -> tuple[list[dict], int]:
        """(the objects, the revision they were read at: the list's resourceVersion)."""
        base = resource_prefix(resource, self.prefix) + "/"
        start = (base + namespace + "/" if namespace else base).encode()
        reply = self._call("/v3/kv/range", {"key": _b64(start), "range_end": _b64(prefix_range_end(start))},
                           idempotent=True)
        items = [decode_object(_unb64(kv.get("value")), _rev(kv, "mod_revision"), _unb64(kv.get("key")).decode())
                 for kv in reply.get("kvs") or []]
        return items, _rev(reply.get("header") or {})

    def create(self, resource: str, namespace: str, name: str, obj: dict) -> dict:
        key = etcd_key(resource, namespace, name, self.prefix)
        value = encode_object(obj)
        reply = self._txn([{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                          [{"request_put": {"key": _b64(key), "value": _b64(value)}}], [])
        if not reply.get("succeeded"):
            raise AlreadyExists(f"{resource} {namespace}/{name}")
        return decode_object(value, _rev(reply.get("header") or {}), key)

    def update(self, resource: str, namespace: str, name: str, obj: dict,
               resource_version: str | None = None) -> dict:
        key = etcd_key(resource, namespace, name, self.prefix)
        value = encode_object(obj)
        if resource_version:
            mod = int(resource_version) if str(resource_version).isdigit() else -1   # -1: never a mod_revision
            compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod)}
        else:
            compare = {"key": _b64(key), "target": "VERSION", "result": "GREATER", "version": "0"}
        reply = self._txn([compare], [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
                          [{"request_range": {"key": _b64(key), "keys_only": True}}])
        if not reply.get("succeeded"):
            found = ((reply.get("responses") or [{}])[0].get("response_range") or {}).get("kvs")
            if found:
                raise Conflict(f"{resource} {namespace}/{name}")
            raise NotFound(f"{resource} {namespace}/{name}")
        return decode_object(value, _rev(reply.get("header") or {}), key)

    def delete(self, resource: str, namespace: str, name: str) -> dict:
        key = etcd_key(resource, namespace, name, self.prefix)
        reply = self._txn([{"key": _b64(key), "target": "VERSION", "result": "GREATER", "version": "0"}],
                          [{"request_delete_range": {"key": _b64(key), "prev_kv": True}}], [])
        prev = ((reply.get("responses") or [{}])[0].get("response_delete_range") or {}).get("prev_kvs") \
            if reply.get("succeeded") else None
        if not prev:
            raise NotFound(f"{resource} {namespace}/{name}")
        return decode_object(_unb64(prev[0].get("value")), _rev(prev[0], "mod_revision"), key)

    # --- health ----------------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """kube-apiserver's `etcd` check: a quorum read of `<prefix>/health` within health_timeout.
        (True, "ok"), or (False, reason) as upstream logs it: `etcd client connection not yet
        established` (no server ever answered and none can be reached), `error getting data from
        etcd: context deadline exceeded` (a server answered before; now none does in time), or
        `error getting data from etcd: <server>: <TLS or etcd error>`."""
        try:
            self._call("/v3/kv/range", {"key": _b64(self._health_key())}, idempotent=True,
                       timeout=self.health_timeout)
        except EtcdError as exc:
            return False, self._health_reason(exc.failures)
        except StorageIOError as exc:
            return False, f"error getting data from etcd: {exc}"
        return True, "ok"

    def _health_reason(self, failures: list[tuple[str, str, str]]) -> str:
        told = [f for f in failures if f[1] in ("tls", "etcd")]
        if told:
            return f"error getting data from etcd: {told[0][0]}: {told[0][2]}"
        if not self._established and all(f[1] in ("connect", "timeout") for f in failures):
            return NOT_ESTABLISHED
        return f"error getting data from etcd: {DEADLINE_EXCEEDED}"

    def _health_key(self) -> str:
        return f"{self.prefix}/health"

    def close(self) -> None:
        """Close the idle connections (the store stays usable: new ones are made)."""
        with self._lock:
            conns = [c for s in self._servers for c in s.idle]
            for s in self._servers:
                s.idle.clear()
        for c in conns:
            c.close()

    # --- the wire ----------------------------------------------------------------------------------

    def _txn(self, compare: list, success: list, failure: list) -> dict:
        body: dict = {"compare": compare, "success": success}
        if failure:
            body["failure"] = failure
        return self._call("/v3/kv/txn", body, idempotent=False)

    def _call(self, path: str, body: dict, *, idempotent: bool, timeout: float | None = None) -> dict:
        """POST `body` to the first server that takes it; see the module docstring for failover."""
        payload = json.dumps(body).encode()
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        with self._lock:
            first = self._preferred
        order = list(range(first, len(self._servers))) + list(range(first))
        failures: list[tuple[str, str, str]] = []
        for index in order:
            server = self._servers[index]
            left = deadline - time.monotonic()
            if left <= 0:
                failures.append((server.url, "timeout", DEADLINE_EXCEEDED))
                break
            try:
                reply = self._post(server, path, payload, left, idempotent)
            except _Failure as exc:
                failures.append((server.url, exc.kind, exc.text))
                if exc.kind in ("connect", "tls") or (idempotent and exc.kind in ("timeout", "io")):
                    continue
                break
            with self._lock:
                self._preferred = index
                self._established = True
            return reply
        message = "; ".join(f"{url}: {text}" for url, _, text in failures)
        if not idempotent and failures and failures[-1][1] in ("timeout", "io"):
            message += " (the write may or may not have been applied)"
        raise EtcdError(f"etcd {message}", failures)

    def _take(self, server: _Server, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """An idle keep-alive connection that etcd has not closed (unless `fresh`), else a new
        one; (conn, reused)."""
        while not fresh:
            with self._lock:
                conn = server.idle.pop() if server.idle else None
            if conn is None:
                break
            sock = conn.sock
            try:
                readable = sock is not None and select.select([sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = True
            if sock is None or readable:                 # closed by etcd (or unexpected bytes)
                conn.close()
                continue
            return conn, True
        if server.https:
            conn = http.client.HTTPSConnection(server.host, server.port, context=self._context,
                                               timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(server.host, server.port, timeout=self.timeout)
        return conn, False

    def _give_back(self, server: _Server, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(server.idle) < self.max_idle:
                server.idle.append(conn)
                return
        conn.close()

    def _post(self, server: _Server, path: str, payload: bytes, timeout: float, idempotent: bool) -> dict:
        """One request to one server; a read that failed on a reused keep-alive connection (etcd
        closed it as we sent) is sent once more on a new connection."""
        try:
            return self._post_once(server, path, payload, timeout, fresh=False)
        except _Failure as exc:
            if not (idempotent and exc.kind == "io" and exc.reused):
                raise
        return self._post_once(server, path, payload, timeout, fresh=True)

    def _post_once(self, server: _Server, path: str, payload: bytes, timeout: float, fresh: bool) -> dict:
        conn, reused = self._take(server, fresh)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        if not reused:
            try:
                conn.connect()
            except ssl.SSLError as exc:
                conn.close()
                raise _Failure("tls", _tls_reason(exc)) from exc
            except (socket.timeout, TimeoutError) as exc:
                conn.close()
                raise _Failure("timeout", DEADLINE_EXCEEDED) from exc
            except OSError as exc:
                conn.close()
                raise _Failure("connect", server.dial_text(exc)) from exc
        try:
            conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except ssl.SSLError as exc:
            conn.close()
            # TLS 1.3: etcd's refusal of our certificate arrives as an alert on the first read,
            # before it reads a request.
            raise _Failure("tls" if not reused else "io", _tls_reason(exc), reused) from exc
        except (socket.timeout, TimeoutError) as exc:
            conn.close()
            raise _Failure("timeout", DEADLINE_EXCEEDED) from exc
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise _Failure("io", f"{text}".lower(), reused) from exc
        if resp.will_close:
            conn.close()
        else:
            self._give_back(server, conn)
        try:
            reply = json.loads(data or b"{}")
        except ValueError as exc:
            raise _Failure("etcd", f"HTTP {resp.status}: not JSON: {data[:200]!r}") from exc
        if resp.status != 200 or not isinstance(reply, dict) or "error" in reply:
            why = reply.get("message") or reply.get("error") if isinstance(reply, dict) else None
            raise _Failure("etcd", why or f"HTTP {resp.status} {resp.reason}")
        return reply
