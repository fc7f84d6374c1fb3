"""`kube-apiserver` (the stand-in's entry point): flags, start-up checks, the server, signals."""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import threading

from k8sboot import authn
from k8sboot.standin.api import BANNER, GIT_VERSION, VERSION_INFO
from k8sboot.standin.flags import FlagError, check_files, check_signing_key, parse_flags, render_errors, validate_flags
from k8sboot.standin.lifecycle import READY_DELAY_ENV, STARTING_HOOKS, begin_graceful_shutdown, format_seconds, parse_ready_delay
from k8sboot.standin.reload import RELOAD_INTERVAL_ENV, Reloader, parse_interval
from k8sboot.standin.log import log, quote
from k8sboot.standin.server import StartupError, build_server, load_config
from k8sboot.standin.tls import _openssl_reason

USAGE = f"""\
{BANNER}

The Kubernetes API server validates and configures data for the api objects. THIS IS A STAND-IN,
not Kubernetes: for the k8sboot lab it implements kube-apiserver's flags, Stage-1 authentication
(x509 client certificates, ServiceAccount tokens checked against stored ServiceAccounts,
anonymous), impersonation, RBAC with the bootstrap policy, and stores Namespaces,
ServiceAccounts, ClusterRoles, ClusterRoleBindings, Roles and RoleBindings in etcd, as the real
server keys them; TokenRequest, self-subject reviews, discovery, health. It runs no controllers and
serves no watch. Anything else is answered 404/405 as the real server answers what it does not
serve, naming the stand-in.

Usage:
  kube-apiserver [flags]

Flags used by the stand-in (every kube-apiserver 1.32 flag is accepted):
      --advertise-address ip, --bind-address ip (default 0.0.0.0), --secure-port int (default 6443)
      --tls-cert-file string, --tls-private-key-file string
      --client-ca-file string
      --anonymous-auth (default true)
      --authentication-config string (AuthenticationConfiguration as JSON: JWT authenticators with
          CEL, anonymous block; reloaded while running; not with --oidc-*)
      --service-account-issuer stringArray, --service-account-key-file stringArray,
      --service-account-signing-key-file string, --api-audiences strings,
      --service-account-max-token-expiration duration
      --etcd-servers strings (required), --etcd-cafile, --etcd-certfile, --etcd-keyfile string,
      --etcd-prefix string (default "/registry"), --etcd-healthcheck-timeout duration (default 2s)
      --shutdown-delay-duration duration (default 0s), --shutdown-send-retry-after,
      --request-timeout duration (default 1m0s: also bounds the drain at shutdown)
      --version version[=true]

Environment:
  K8SBOOT_STANDIN_DATA_DIR=<dir>  keep objects in this local directory (created 0700) instead of
                                  etcd (tests); no etcd is dialled and /readyz has no etcd check
  K8SBOOT_STANDIN_RELOAD_INTERVAL=<seconds>  how often --tls-cert-file, --tls-private-key-file,
                                  --client-ca-file and --authentication-config are read again (default 60, as the real server;
                                  2 on k8sboot lab controllers, from a lab-only drop-in)
  K8SBOOT_STANDIN_READY_DELAY=<seconds>  (k8sboot lab) keeps /readyz failing that long after the
                                  port opens
"""


def _store_name(server) -> str:
    store = server.api.store
    servers = getattr(store, "servers", None)
    return "etcd " + ",".join(servers) if servers else f"files {getattr(store, 'directory', '?')}"


def _fail(message: str) -> int:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags = parse_flags(argv)
    except FlagError as exc:
        return _fail(str(exc))
    if flags.get("help"):
        sys.stdout.write(USAGE)
        return 0
    if flags.get("version") == "raw":
        sys.stdout.write(json.dumps(VERSION_INFO, indent=2) + "\n")
        return 0
    if flags.get("version"):
        sys.stdout.write(f"Kubernetes {GIT_VERSION} ({BANNER})\n")
        return 0
    log(f'"{BANNER}" version={quote(GIT_VERSION)} python={quote(sys.version.split()[0])}')
    for name, raw in flags.order:
        if flags.verbosity >= 1:
            log(f"FLAG: --{name}={quote(raw)}")
    errors = validate_flags(flags)
    if errors:
        return _fail(render_errors(errors))
    try:
        ready_delay = parse_ready_delay(os.environ.get(READY_DELAY_ENV))
        reload_interval = parse_interval(os.environ.get(RELOAD_INTERVAL_ENV))
    except ValueError as exc:
        return _fail(str(exc))
    problem = check_files(flags) or check_signing_key(flags.get("service-account-signing-key-file"))
    if problem:
        return _fail(problem)
    try:
        config = load_config(flags)
    except (authn.AuthnConfigError, StartupError) as exc:
        return _fail(str(exc))
    try:
        server = build_server(flags, config, ready_delay=ready_delay)
    except StartupError as exc:
        return _fail(str(exc))
    except (ssl.SSLError, ValueError) as exc:
        return _fail(f"unable to load server certificate: {exc}")
    except OSError as exc:
        if exc.errno is not None and exc.strerror:
            addr = f"{flags.bind_address}:{flags.secure_port}"
            return _fail(f"failed to listen on {addr}: listen tcp {addr}: bind: {exc.strerror.lower()}")
        return _fail(f"unable to load server certificate: {exc}")
    except Exception as exc:   # noqa: BLE001 - pyOpenSSL's errors when loading the key pair
        return _fail(f"unable to load server certificate: {_openssl_reason(exc)}")

    Reloader(server, flags, reload_interval).start()     # --tls-cert-file & co. read again, as the real one
    if server.auth_controller is not None:               # --authentication-config too
        server.auth_controller.start_watching(server, reload_interval)
    lifecycle = server.lifecycle
    terminating: list[threading.Thread] = []

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if lifecycle.shutdown_initiated.is_set():
            # as the real binary (SetupSignalContext): a second signal exits 1 at once, no drain
            log(f'"Received a second signal, exiting at once" signal={quote(name)}', level="W")
            lifecycle.second_signal.set()
            os._exit(1)
        log(f'"Received signal, shutting down" signal={quote(name)}')
        terminating.append(begin_graceful_shutdown(server))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = server.server_address[:2]
    log(f'"Serving securely (k8sboot stand-in, not Kubernetes)" address="{flags.bind_address}:{port}" '
        f'tls={quote(server.tls.name)} clientCA={quote(flags.get("client-ca-file") or "")} '
        f'anonymousAuth={str(flags.anonymous_auth).lower()} issuers={json.dumps(flags.service_account_issuers)} '
        f'audiences={json.dumps(list(config.audiences))} saKeys={len(config.service_account_keys)} '
        f'shutdownDelayDuration="{format_seconds(flags.shutdown_delay)}" '
        f'shutdownSendRetryAfter={str(flags.shutdown_send_retry_after).lower()} store={quote(_store_name(server))}')
    if ready_delay:
        log(f'"Ready delay (k8sboot lab): /readyz fails until it has passed" '
            f'{READY_DELAY_ENV}={quote(os.environ[READY_DELAY_ENV])} delay="{format_seconds(ready_delay)}" '
            f'failing={json.dumps(list(STARTING_HOOKS))}')
        done = threading.Timer(max(0.0, lifecycle.ready_at - lifecycle.clock()), log,
                               args=('"Ready delay (k8sboot lab) has passed: post-start hooks finished"',))
        done.daemon = True
        done.start()
    try:
        server.serve_forever(poll_interval=0.5)      # returns when the graceful termination stops listening
        for thread in terminating:
            thread.join()                            # the drain; a second signal still ends it at once
    finally:
        server.server_close()
    return 0

