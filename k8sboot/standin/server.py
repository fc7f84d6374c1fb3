"""The server: a threading TCP server whose connections are TLS (tls.py) carrying HTTP/1.1
(http.py); each request is admitted by the lifecycle, authenticated by k8sboot.authn, authorized
and answered by api.py, and logged."""

from __future__ import annotations

import io
import json
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from k8sboot import authn, rbac
from k8sboot.standin import authconfig, impersonation
from k8sboot.standin.api import Api, Request, TokenSettings
from k8sboot.standin.authorization import DEFAULT as DEFAULT_MODES
from k8sboot.standin.bootstrap import ensure_system_objects
from k8sboot.standin.flags import Flags
from k8sboot.standin.http import BadRequest, BodyTooLarge, HTTPHandler, read_chunked_body
from k8sboot.standin.lifecycle import (BOOTSTRAP_HOOKS, RETRY_AFTER_MESSAGE, Lifecycle, StorageHealth,
                                       health_answer, health_endpoint)
from k8sboot.standin.log import log, new_audit_id, quote
from k8sboot.standin.storage import DIR_ENV, StorageError, Store, open_store
from k8sboot.standin.tokenrequest import load_signer
from k8sboot.standin.tls import TLSBackend, _Reader, _Writer, make_tls

MAX_BODY = 3 * 1024 * 1024          # the real server's limit for most requests


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(body: object, pretty: bool = False) -> str:
    """JSON as the API server's encoder (Go's encoding/json) writes it: HTML characters and the
    JS line separators escaped as \\u003c..., other non-ASCII as UTF-8, a newline at the end;
    pretty: two-space indent, as for curl."""
    text = json.dumps(body, ensure_ascii=False, indent=2 if pretty else None,
                      separators=(",", ": ") if pretty else (",", ":"))
    for raw, escaped in _GO_ESCAPES.items():
        text = text.replace(raw, escaped)        # outside strings JSON has none of these characters
    return text + "\n"


def pretty_print(target: str, user_agent: str) -> bool:
    """k8s.io/apiserver's isPrettyPrint: `?pretty=` (a Go bool) decides; else curl, Wget and
    browsers get indented JSON, every other client (kubectl, client-go) the compact form."""
    query = parse_qs(urlsplit(target).query)
    if "pretty" in query:
        return query["pretty"][0] in ("1", "t", "T", "TRUE", "true", "True")
    return user_agent.startswith(("curl", "Wget", "Mozilla/5.0"))


class StartupError(Exception):
    """The server cannot start (printed `Error: <message>`, exit 1)."""


class StandinServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], tls: TLSBackend, config: authn.AuthenticatorConfig, api: Api,
                 clock=None, verbosity: int = 0, lifecycle: Lifecycle | None = None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tls = tls
        self.config = config
        self.api = api
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.verbosity = verbosity
        self.lifecycle = lifecycle or Lifecycle()
        self.auth_controller: authconfig.Controller | None = None      # --authentication-config
        self._stop_lock = threading.Lock()
        self._listening = True
        super().__init__(address, StandinHandler)
        self.lifecycle.listening()

    def stop_listening(self) -> None:
        """Leave serve_forever (it must be running) and close the port; connections already
        accepted go on. Idempotent."""
        with self._stop_lock:
            if not self._listening:
                return
            self._listening = False
            self.shutdown()
            self.socket.close()
        host, port = self.server_address[:2]
        log(f'"Stopped listening" address="{host}:{port}"')
        log('"[graceful-termination] shutdown event" name="HTTPServerStoppedListening"')

    def server_close(self) -> None:
        self.lifecycle.closed.set()
        super().server_close()

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.tls.wrap(sock), addr

    def shutdown_request(self, request) -> None:
        request.close()

    def close_request(self, request) -> None:
        request.close()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        log(f'"Connection error" srcIP="{client_address[0]}:{client_address[1]}" err={quote(exc)}', level="E")


class StandinHandler(HTTPHandler):
    server: StandinServer

    def setup(self) -> None:
        self.tls_conn = self.request
        self.ok = True
        try:
            self.tls_conn.handshake(10.0)
        except (OSError, ssl.SSLError) as exc:
            # the real server: "http: TLS handshake error from 10.240.0.1:51234: remote error: ..."
            log(f"http: TLS handshake error from {self.client_address[0]}:{self.client_address[1]}: {exc}")
            self.ok = False
        self.rfile = io.BufferedReader(_Reader(self.tls_conn), 65536)
        self.wfile = io.BufferedWriter(_Writer(self.tls_conn), 65536)

    def handle(self) -> None:
        if self.ok:
            try:
                super().handle()
            except (socket.timeout, ConnectionError, ssl.SSLError):
                self.close_connection = True

    def finish(self) -> None:
        try:
            self.wfile.flush()
        except (OSError, ValueError, ssl.SSLError):
            pass

    def _read_body(self) -> bytes:
        """The body, framed as body_framing decided; BodyTooLarge before reading more than the
        real server's 3 MiB, BadRequest for a malformed chunked body."""
        if self.content_length is None:
            return read_chunked_body(self.rfile, MAX_BODY)
        if self.content_length > MAX_BODY:
            raise BodyTooLarge(MAX_BODY)
        data = self.rfile.read(self.content_length) if self.content_length else b""
        if len(data) < self.content_length:
            raise ConnectionError("the client closed the connection inside the body")
        return data

    def _reply(self, code: int, body: object, audit_id: str, headers: tuple = ()) -> None:
        lifecycle = self.server.lifecycle
        if lifecycle.not_accepting.is_set() and not lifecycle.send_retry_after:
            self.close_connection = True          # the port is closed: no further requests here
        if isinstance(body, (dict, list)):
            data = go_json(body, pretty=pretty_print(self.path, self.headers.get("User-Agent", ""))).encode()
            ctype = "application/json"
        else:
            data = str(body).encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Audit-Id", audit_id)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", ctype)
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _serve(self) -> None:
        lifecycle = self.server.lifecycle
        path, agent = urlsplit(self.path).path, self.headers.get("User-Agent", "")
        refused = lifecycle.admit(path, agent)
        if refused is not None:
            self._refuse(refused)
            return
        try:
            with self.server.api.authorizer_source.pinned():
                self._serve_admitted()
        finally:
            lifecycle.done(path, agent)

    def _refuse(self, code: int) -> None:
        """After the shutdown delay: 429 + Retry-After: 5 (--shutdown-send-retry-after, the real
        WithRetryAfter filter, before authentication) or 503 + Retry-After: 1 (WithWaitGroup, on
        a connection opened before the port closed); the connection is closed after it."""
        audit_id = new_audit_id()
        self.close_connection = True
        if code == 429:
            body, headers = RETRY_AFTER_MESSAGE + "\n", (("Retry-After", "5"),)
        else:
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "apiserver is shutting down", "reason": "ServiceUnavailable", "code": 503}
            headers = (("Retry-After", "1"),)
        log(f'"HTTP" verb={quote(self.command)} URI={quote(self.path)} decision="shutting down" resp={code} '
            f'userAgent={quote(self.headers.get("User-Agent", ""))} audit-ID={quote(audit_id)} '
            f'srcIP="{self.client_address[0]}:{self.client_address[1]}"')
        self._reply(code, body, audit_id, headers)

    def _serve_admitted(self) -> None:
        t0 = time.monotonic()
        audit_id = new_audit_id()
        src = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            body = self._read_body()
        except BadRequest as exc:
            self.close_connection = True
            log(f'"HTTP" verb={quote(self.command)} URI={quote(self.path)} decision="bad request" '
                f'err={quote(exc)} resp={exc.code} audit-ID={quote(audit_id)} srcIP={quote(src)}')
            self.send_response(exc.code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(exc.body.encode())
            self.wfile.flush()
            return
        except BodyTooLarge as exc:
            # k8s.io/apiserver's limitedReadBody: NewRequestEntityTooLargeError, the rest unread
            self.close_connection = True
            log(f'"HTTP" verb={quote(self.command)} URI={quote(self.path)} decision="too large" resp=413 '
                f'audit-ID={quote(audit_id)} srcIP={quote(src)}')
            self._reply(413, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": f"Request entity too large: {exc}", "reason": "RequestEntityTooLarge",
                              "code": 413}, audit_id)
            return
        now = self.server.clock()
        api = self.server.api
        leaf, inter = self.tls_conn.peer_certificates()
        config, authorization = self.server.config, self.headers.get("Authorization")    # one config per request
        if config.jwt and isinstance(config.jwt_keys, authconfig.KeySets):
            token = authn.bearer_token_from_header(authorization)
            if token is not None:
                config.jwt_keys.before(token, config.jwt)      # an unknown kid: the issuer's keys again
        result = authn.authenticate_request(leaf, authorization, config, now, intermediates_der=inter,
                                            service_accounts=api.service_account_uid,
                                            path=urlsplit(self.path).path)
        attrs = rbac.attributes_from_request(self.command, self.path)
        shown_verb = attrs.verb.upper() if attrs.is_resource else self.command
        if not result.authenticated:
            code, reply, headers, decision, who = 401, result.status(), (), "unauthorized", ""
            extra = f" reason={quote(result.reason)}"
        else:
            user = result.user
            who = f" user={quote(user.username)} groups={json.dumps(list(user.groups))} authn={quote(result.authenticator)}"
            code, reply, headers, decision, extra, acting = self._decide(attrs, body, result, now)
            if acting is not None and acting is not user:
                who += f" as={quote(acting.username)} asGroups={json.dumps(list(acting.groups))}"
        latency = (time.monotonic() - t0) * 1000
        log(f'"HTTP" verb={quote(shown_verb)} URI={quote(self.path)}{who} decision={quote(decision)}{extra} '
            f'resp={code} latency="{latency:.1f}ms" userAgent={quote(self.headers.get("User-Agent", ""))} '
            f'audit-ID={quote(audit_id)} srcIP={quote(src)}')
        self._reply(code, reply, audit_id, headers)

    def _decide(self, attrs: rbac.Attributes, body: bytes, result: authn.AuthResult, now: datetime):
        """(code, body, headers, decision, log extra, acting user) for an authenticated request:
        impersonation, then authorization, then the answer."""
        api = self.server.api
        user = result.user
        if impersonation.requested(self.headers):
            acting = impersonation.impersonate(user, self.headers, api.authorizer)
            if isinstance(acting, tuple):
                code, reply = acting
                return code, reply, (), "forbidden" if code == 403 else "bad request", "", None
            user, result = acting, authn.AuthResult(acting, result.authenticator)
        verdict = api.authorizer.authorize(user, attrs)
        if not verdict.allowed:
            extra = f" reason={quote(verdict.reason)}" if verdict.reason else ""
            return 403, rbac.forbidden_status(user, attrs, verdict.reason), (), "forbidden", extra, user
        health = self._health(attrs)
        if health is not None:
            return health[0], health[1], (), "allowed", "", user
        request = Request(self.command, self.path, body, self.headers.get("Content-Type") or "",
                          self.headers.get("Accept") or "")
        answer = api.handle(attrs, request, user, result, now)
        return answer.code, answer.body, answer.headers, "allowed", "", user

    def _health(self, attrs: rbac.Attributes) -> tuple[int, str] | None:
        """/livez, /readyz, /healthz (and /<endpoint>/<check>) from the server's lifecycle."""
        target = None if attrs.is_resource or attrs.verb not in ("get", "head") else health_endpoint(attrs.path)
        if target is None:
            return None
        endpoint, check = target
        lifecycle = self.server.lifecycle
        failing = lifecycle.failing(endpoint)
        checks = lifecycle.checks(endpoint)
        code, text = health_answer(endpoint, failing, urlsplit(self.path).query, check, checks)
        if code == 500 and check is None and self.server.verbosity >= 2:
            # the real server's V(2) line, which carries the reasons the public body withholds
            log(f"{','.join(n for n in checks if n in failing)} check failed: {endpoint} "
                + " ".join(f"[-]{n} failed: {failing[n]}" for n in checks if n in failing))
        return code, text

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve



def open_configured_store(flags: Flags) -> Store:
    """Where the objects live: etcd from --etcd-servers, --etcd-cafile, --etcd-certfile,
    --etcd-keyfile and --etcd-prefix, as the real server; or, when K8SBOOT_STANDIN_DATA_DIR is set
    (tests, a second stand-in on a workstation), a local file store, and then no etcd is dialled."""
    directory = os.environ.get(DIR_ENV)
    try:
        if directory:
            log(f'"Objects in a local directory, not etcd: --etcd-servers is not used" {DIR_ENV}={quote(directory)}',
                level="W")
            return open_store(directory)
        from k8sboot.standin.etcdstore import DEFAULT_PREFIX, EtcdStore    # http.client: only when used

        return EtcdStore(flags.get("etcd-servers") or [], flags.get("etcd-cafile"), flags.get("etcd-certfile"),
                         flags.get("etcd-keyfile"), prefix=flags.get("etcd-prefix") or DEFAULT_PREFIX,
                         health_timeout=flags.etcd_healthcheck_timeout)
    except StorageError as exc:
        raise StartupError(f"opening the stand-in's object store: {exc}") from exc


def build_server(flags: Flags, config: authn.AuthenticatorConfig, port: int | None = None,
                 tls_backend: str | None = None, clock=None, ready_delay: float = 0.0,
                 store: Store | None = None) -> StandinServer:
    """The server, listening (its ready delay starts now); serve_forever serves it. `store`: the
    objects (default: open_configured_store, etcd from the flags). The objects a new control plane
    has are made at start (bootstrap.ensure_system_objects: system namespaces, default
    ServiceAccounts, RBAC policy); while the store cannot take them (etcd down), the server
    starts anyway with the bootstrap hooks failing its health checks, and keeps trying
    (start_bootstrap)."""
    clock = clock or (lambda: datetime.now(timezone.utc))
    store = store if store is not None else open_configured_store(flags)
    health = getattr(store, "health", None)
    storage_health = StorageHealth(health, flags.etcd_healthcheck_timeout / 2) if health is not None else None
    api = Api(store, load_token_settings(flags, config),
              authorization_modes=tuple(flags.get("authorization-mode") or DEFAULT_MODES))
    tls = make_tls(flags.get("tls-cert-file"), flags.get("tls-private-key-file"), flags.get("client-ca-file"),
                   tls_backend)
    address = (flags.bind_address, flags.secure_port if port is None else port)
    lifecycle = Lifecycle(shutdown_delay=flags.shutdown_delay, send_retry_after=flags.shutdown_send_retry_after,
                          request_timeout=flags.request_timeout, ready_delay=ready_delay,
                          storage_health=storage_health)
    if not _bootstrap_once(store, clock, lifecycle):
        _start_bootstrap_retries(store, clock, lifecycle)
    server = StandinServer(address, tls, config, api, clock=clock, verbosity=flags.verbosity, lifecycle=lifecycle)
    controller = authconfig.controller_of(config)
    if controller is not None:
        server.auth_controller = controller
        api.metrics = controller.metrics.text
        controller.keys.stop = lifecycle.closed
        controller.keys.start(config.jwt)          # the issuers' keys, in the background
    return server


BOOTSTRAP_RETRY = 1.0            # seconds between two tries of the bootstrap hooks while the store is down


def _bootstrap_once(store: Store, clock, lifecycle: Lifecycle, quiet: bool = False) -> bool:
    """The bootstrap hooks' work; True when done (then they pass the health checks)."""
    try:
        made = ensure_system_objects(store, clock())
    except StorageError as exc:
        if lifecycle.bootstrap_pending is None or not quiet:
            log(f'"Post-start hooks cannot write the start-up objects yet; retrying" '
                f'hooks={json.dumps(list(BOOTSTRAP_HOOKS))} err={quote(str(exc))}', level="W")
        lifecycle.bootstrap_pending = "not finished"
        return False
    if made:
        log(f'"Created at start, as a new control plane has them" count={len(made)} objects={json.dumps(made)}')
    if lifecycle.bootstrap_pending is not None:
        log(f'"Post-start hooks finished" hooks={json.dumps(list(BOOTSTRAP_HOOKS))}')
    lifecycle.bootstrap_pending = None
    return True


def _start_bootstrap_retries(store: Store, clock, lifecycle: Lifecycle) -> threading.Thread:
    def retry():
        tries = 0
        while not (lifecycle.shutdown_initiated.wait(BOOTSTRAP_RETRY) or lifecycle.closed.is_set()):
            tries += 1
            if _bootstrap_once(store, clock, lifecycle, quiet=tries % 10 != 0):
                return

    thread = threading.Thread(target=retry, name="bootstrap-hooks", daemon=True)
    thread.start()
    return thread


def load_token_settings(flags: Flags, config: authn.AuthenticatorConfig) -> TokenSettings:
    """The TokenRequest signer from --service-account-signing-key-file (None without it)."""
    path = flags.get("service-account-signing-key-file")
    signer = None
    if path and flags.service_account_issuers:
        try:
            with open(path, "rb") as f:
                signer = load_signer(f.read(), flags.service_account_issuers[0])
        except (OSError, ValueError) as exc:
            raise StartupError(f"failed to parse service-account-issuer-key-file: "
                               f"--service-account-signing-key-file {path}: {exc}") from exc
    return TokenSettings(signer, tuple(config.audiences), int(flags.service_account_max_token_expiration))


def load_flag_config(flags: Flags) -> authn.AuthenticatorConfig:
    """The authentication flags with their files read (AuthnConfigError)."""
    return authn.load_authenticator_config(
        client_ca_file=flags.get("client-ca-file"),
        service_account_key_files=flags.service_account_key_files,
        service_account_issuers=flags.service_account_issuers,
        api_audiences=flags.api_audiences,
        anonymous_auth=flags.anonymous_auth)


def load_config(flags: Flags) -> authn.AuthenticatorConfig:
    """load_flag_config, and with --authentication-config the file's JWT authenticators and
    anonymous block (authconfig.Controller; StartupError with the real server's message)."""
    config = load_flag_config(flags)
    path = flags.get(authconfig.FLAG)
    if not path:
        return config
    controller = authconfig.Controller(path, flags.service_account_issuers, flags.given("anonymous-auth"))
    try:
        controller.load_at_start()
    except authconfig.StartError as exc:
        raise StartupError(str(exc)) from None
    return controller.apply(config)


