"""The server's life as the real binary's lifecycle signals describe it (k8s.io/apiserver's healthz
handler and genericapiserver.go): health endpoints and their checks, the lab's start-up ready
delay, and graceful termination (shutdown delay, Retry-After, drain bounded by --request-timeout).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from k8sboot.standin.log import log, quote

if TYPE_CHECKING:
    from k8sboot.standin.server import StandinServer

# The real 1.32 server's checks, in its order (`kubectl get --raw '/readyz?verbose'`). /livez and
# /healthz list the same checks minus the readiness-only ones (etcd-readiness, informer-sync,
# shutdown). `etcd` and `etcd-readiness` are there only when the objects are in etcd
# (--etcd-servers); a stand-in on a local file store (K8SBOOT_STANDIN_DATA_DIR) claims no etcd check.

_HOOKS_AND_AUTOREGISTER = (
    *(f"poststarthook/{h}" for h in (
        "start-apiserver-admission-initializer", "generic-apiserver-start-informers",
        "priority-and-fairness-config-consumer", "priority-and-fairness-filter",
        "storage-object-count-tracker-hook", "start-apiextensions-informers", "start-apiextensions-controllers",
        "crd-informer-synced", "start-system-namespaces-controller",
        "start-cluster-authentication-info-controller", "start-kube-apiserver-identity-lease-controller",
        "start-kube-apiserver-identity-lease-garbage-collector", "start-legacy-token-tracking-controller",
        "start-service-ip-repair-controllers", "rbac/bootstrap-roles", "scheduling/bootstrap-system-priority-classes",
        "priority-and-fairness-config-producer", "bootstrap-controller", "start-kubernetes-service-cidr-controller",
        "aggregator-reload-proxy-client-cert", "start-kube-aggregator-informers",
        "apiservice-status-local-available-controller", "apiservice-status-remote-available-controller",
        "apiservice-registration-controller", "apiservice-discovery-controller", "kube-apiserver-autoregistration")),
    "autoregister-completion",
    "poststarthook/apiservice-openapi-controller", "poststarthook/apiservice-openapiv3-controller",
)
HEALTH_CHECKS = {
    "livez": ("ping", "log", *_HOOKS_AND_AUTOREGISTER),
    "healthz": ("ping", "log", *_HOOKS_AND_AUTOREGISTER),
    "readyz": ("ping", "log", "informer-sync", *_HOOKS_AND_AUTOREGISTER, "shutdown"),
}
ETCD_HEALTH_CHECKS = {
    "livez": ("ping", "log", "etcd", *_HOOKS_AND_AUTOREGISTER),
    "healthz": ("ping", "log", "etcd", *_HOOKS_AND_AUTOREGISTER),
    "readyz": ("ping", "log", "etcd", "etcd-readiness", "informer-sync", *_HOOKS_AND_AUTOREGISTER, "shutdown"),
}
# The post-start hooks that write the objects a new control plane has (bootstrap.py): they wait
# for the store, and fail /livez, /readyz and /healthz until they are done.
BOOTSTRAP_HOOKS = ("poststarthook/start-system-namespaces-controller", "poststarthook/rbac/bootstrap-roles")
# What a real server is still doing in its first seconds after a restart (the hooks that wait for
# caches and the bootstrap policy): /readyz names them until K8SBOOT_STANDIN_READY_DELAY has passed.
STARTING_HOOKS = ("poststarthook/start-apiextensions-controllers", "poststarthook/crd-informer-synced",
                  "poststarthook/rbac/bootstrap-roles")
READY_DELAY_ENV = "K8SBOOT_STANDIN_READY_DELAY"
SHUTTING_DOWN = "process is shutting down"                 # the shutdown check's error (log only)
RETRY_AFTER_MESSAGE = "The apiserver is shutting down, please try again later."
# requests the real server keeps serving once it no longer accepts new ones (WithRetryAfter)
RETRY_AFTER_EXEMPT_PREFIXES = ("/readyz", "/livez", "/healthz", "/metrics")


def health_endpoint(path: str) -> tuple[str, str | None] | None:
    """("readyz", None) for /readyz, ("readyz", "shutdown") for /readyz/shutdown; None otherwise."""
    name, _, check = path.strip("/").partition("/")
    if name not in HEALTH_CHECKS or path.endswith("/") and not check:
        return None
    return name, (check or None)


def health_answer(endpoint: str, failing: dict, query: str = "", check: str | None = None,
                  checks: tuple[str, ...] | None = None) -> tuple[int, str]:
    """The real healthz handler's answer (k8s.io/apiserver/pkg/server/healthz) for `endpoint`
    given the failing checks ({name: reason}): `ok`; with `?verbose` one `[+]name ok` line per
    check and `<endpoint> check passed`; on failure always the lines, `[-]name failed: reason
    withheld` (the reason goes to the log only: the endpoint is public), `<endpoint> check
    failed` and HTTP 500. `?exclude=name` skips a check. `/<endpoint>/<check>` answers for one.
    `checks`: the endpoint's checks (default: HEALTH_CHECKS, a server without etcd)."""
    checks = checks if checks is not None else HEALTH_CHECKS[endpoint]
    if check is not None:
        if check not in checks:
            return 404, "404 page not found\n"
        if check in failing:
            return 500, f"internal server error: {failing[check]}\n"
        return 200, "ok"
    params = parse_qs(query, keep_blank_values=True)
    excluded = set(params.get("exclude", []))
    lines = []
    failed = False
    for name in checks:
        if name in excluded:
            excluded.discard(name)
            lines.append(f"[+]{name} excluded: ok")
        elif name in failing:
            failed = True
            lines.append(f"[-]{name} failed: reason withheld")
        else:
            lines.append(f"[+]{name} ok")
    if excluded:
        lines.append("warn: some health checks cannot be excluded: no matches for "
                     + ",".join(f'"{n}"' for n in sorted(excluded)))
    if failed:
        return 500, "\n".join(lines) + f"\n{endpoint} check failed\n"
    if "verbose" not in params:
        return 200, "ok"
    return 200, "\n".join(lines) + f"\n{endpoint} check passed\n"


def exempt_from_retry_after(path: str, user_agent: str) -> bool:
    """Health probes (and the server's own loopback client) are served to the end."""
    return path.startswith(RETRY_AFTER_EXEMPT_PREFIXES) or user_agent.startswith("kube-apiserver/")


def parse_ready_delay(raw: str | None) -> float:
    """K8SBOOT_STANDIN_READY_DELAY: seconds (a float, 0 when unset); ValueError otherwise."""
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{READY_DELAY_ENV}={quote(raw)}: want a number of seconds, 0 or more "
                         "(the k8sboot lab's ready delay)")
    return value


def format_seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


class Lifecycle:
    """Where the server is in its life, as the real binary's lifecycle signals say it
    (k8s.io/apiserver genericapiserver.go): listening; ready once the ready delay has passed;
    ShutdownInitiated (SIGTERM: /readyz fails, everything is still served);
    AfterShutdownDelayDuration = NotAcceptingNewRequest (new requests other than health probes
    get 429 + Retry-After with --shutdown-send-retry-after, else the port closes); then
    InFlightRequestsDrained (bounded by --request-timeout) and the process exits."""

    def __init__(self, shutdown_delay: float = 0.0, send_retry_after: bool = False,
                 request_timeout: float = 60.0, ready_delay: float = 0.0, clock=time.monotonic,
                 storage_health: "StorageHealth | None" = None):
        self.shutdown_delay = shutdown_delay
        self.storage_health = storage_health
        self.bootstrap_pending: str | None = None     # why the bootstrap hooks have not finished
        self.send_retry_after = send_retry_after
        self.request_timeout = request_timeout
        self.ready_delay = ready_delay
        self.clock = clock
        self.ready_at: float | None = None
        self.shutdown_initiated = threading.Event()
        self.not_accepting = threading.Event()
        self.second_signal = threading.Event()
        self.closed = threading.Event()          # the server is closed: background work ends
        self._in_flight = 0
        self._lock = threading.Condition()

    def listening(self) -> None:
        """The port is open: the ready delay starts now."""
        self.ready_at = self.clock() + self.ready_delay

    def checks(self, endpoint: str) -> tuple[str, ...]:
        """The checks `endpoint` lists, in the real server's order."""
        return (ETCD_HEALTH_CHECKS if self.storage_health is not None else HEALTH_CHECKS)[endpoint]

    def failing(self, endpoint: str) -> dict:
        """{check: reason} of the checks `endpoint` fails now: etcd (every endpoint), the bootstrap
        hooks while the store has not taken the start-up objects (every endpoint), the ready delay
        and shutdown (/readyz only)."""
        out = {}
        if self.storage_health is not None:
            ok, reason = self.storage_health.check()
            if not ok:
                out["etcd"] = reason
                if endpoint == "readyz":
                    out["etcd-readiness"] = reason
        pending = self.bootstrap_pending
        if pending is not None:
            out.update((hook, pending) for hook in BOOTSTRAP_HOOKS)
        if endpoint != "readyz":
            return out
        if self.ready_at is None or self.clock() < self.ready_at:
            out.update((hook, "not finished") for hook in STARTING_HOOKS)
        if self.shutdown_initiated.is_set():
            out["shutdown"] = SHUTTING_DOWN
        return out

    def admit(self, path: str, user_agent: str) -> int | None:
        """None: serve the request (counted in flight until `done`, unless a health probe);
        429 or 503: refuse it, the server no longer accepts new requests."""
        exempt = exempt_from_retry_after(path, user_agent)
        with self._lock:
            if self.not_accepting.is_set() and not exempt:
                return 429 if self.send_retry_after else 503
            if not exempt:
                self._in_flight += 1
        return None

    def done(self, path: str, user_agent: str) -> None:
        if not exempt_from_retry_after(path, user_agent):
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    @property
    def in_flight(self) -> int:
        """Admitted requests not answered yet (health probes are not counted)."""
        with self._lock:
            return self._in_flight

    def stop_accepting(self) -> None:
        with self._lock:
            self.not_accepting.set()

    def wait_drained(self, timeout: float) -> bool:
        """True once no admitted request is in flight; False when `timeout` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout)


class StorageHealth:
    """kube-apiserver's `etcd` check over a store's health(): rate-limited as upstream's
    (storagebackend/factory/etcd3.go newETCD3Check: at most one probe per half the health-check
    timeout, a caller in between gets the last result), so health probes from a load balancer
    never become a load on etcd."""

    def __init__(self, probe, interval: float, clock=time.monotonic):
        self.probe = probe                   # () -> (ok, reason)
        self.interval = interval
        self.clock = clock
        self._last: tuple[float, tuple[bool, str]] | None = None
        self._lock = threading.Lock()

    def check(self) -> tuple[bool, str]:
        with self._lock:
            last = self._last
            if last is not None and self.clock() - last[0] < self.interval:
                return last[1]
            result = self.probe()
            self._last = (self.clock(), result)
            return result


def _graceful_termination(server: "StandinServer") -> None:
    """After ShutdownInitiated: the delay, then stop accepting, drain, stop listening."""
    lc = server.lifecycle
    if lc.second_signal.wait(lc.shutdown_delay):
        return
    log('"[graceful-termination] shutdown event" name="AfterShutdownDelayDuration"')
    lc.stop_accepting()
    log('"[graceful-termination] shutdown event" name="NotAcceptingNewRequest"')
    if not lc.send_retry_after:
        server.stop_listening()                 # new connections are refused from now on
    if lc.wait_drained(lc.request_timeout):
        log('"[graceful-termination] shutdown event" name="InFlightRequestsDrained"')
    else:
        log(f'"[graceful-termination] requests still in flight after --request-timeout, leaving them" '
            f'timeout="{format_seconds(lc.request_timeout)}"', level="W")
    if lc.send_retry_after:
        server.stop_listening()                 # with 429s until the drain was done
    log('"[graceful-termination] apiserver is exiting"')


def begin_graceful_shutdown(server: "StandinServer") -> threading.Thread:
    """ShutdownInitiated now (/readyz fails from this call on), the rest in a thread that ends when
    the server has stopped listening and drained; `serve_forever` has returned by then."""
    lc = server.lifecycle
    lc.shutdown_initiated.set()
    log(f'"[graceful-termination] shutdown event" name="ShutdownInitiated" '
        f'shutdownDelayDuration="{format_seconds(lc.shutdown_delay)}" '
        f'shutdownSendRetryAfter={str(lc.send_retry_after).lower()}')
    thread = threading.Thread(target=_graceful_termination, args=(server,), name="graceful-termination",
                              daemon=True)
    thread.start()
    return thread


