"""The API load balancer (HAProxy on the inventory's `load_balancers:` hosts), as data (pure).

`render_haproxy_config` formats the values computed here through `templates/haproxy.cfg.j2`
(with `k8sboot.render`'s Jinja set-up: StrictUndefined, every template problem a `TemplateError`
naming `file:line`); `lb_files` turns the config and the PKI bytes into the `DesiredFile`s an LB
host must hold, so the deploy engine installs them exactly like a controller's files. Nothing here
writes a file, dials a host or reads the clock.

HAProxy runs in TCP mode: TLS passes through untouched, so the API server itself authenticates
every client (certificates, tokens) exactly as without a load balancer. HAProxy opens its own TLS
only for the health check: `GET /readyz` with k8sboot's health client cert (CN
system:k8sboot-health, no group; the bootstrap RBAC's system:public-info-viewer lets it read the
health endpoints and nothing else), verifying each controller's serving cert against the
cluster CA and the controller's name (a SAN of kubernetes.pem).

Health-check timing, and how it meets `apiserver.shutdown_delay_duration`
------------------------------------------------------------------------
HAProxy checks each controller every `CHECK_INTER_MS` (every `CHECK_FASTINTER_MS` once a check has
gone the other way, every `CHECK_DOWNINTER_MS` while it is DOWN); `CHECK_FALL` failed checks in a
row take it out of rotation, `CHECK_RISE` good ones put it back. On SIGTERM the API server fails `/readyz` at
once but keeps serving for `--shutdown-delay-duration` before it closes its port. A failing
`/readyz` answers at once, so HAProxy stops sending new connections to it at most
`inter + (fall-1) × fastinter` (`DOWN_AFTER_MS`, 1.25 s) later; the shutdown delay must be longer than that, or
new connections meet a closed port for the difference (each refused connect is retried on
another controller, `retries` + `option redispatch 1`: slower, not failed). The lab uses 3 s
(1.75 s of margin); the inventory's default is longer still. A host that hangs instead
of answering costs up to `CHECK_TIMEOUT_MS` more per check. After a restart a controller is back
in rotation `downinter + (rise-1) × fastinter` (`UP_AFTER_MS`, 0.75 s) after it is ready: a rolling
deploy waits for that (HAProxy's own view) before it takes the next controller down.
`check_lb_inventory` reports an inventory whose shutdown delay is too short.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from k8sboot import layout, pki, render
from k8sboot.errors import InventoryError, PkiError
from k8sboot.model import Host, Inventory
from k8sboot.plan import KIND_PKI, DesiredDir, DesiredFile

HAPROXY_TEMPLATE = "haproxy.cfg.j2"
FRONTEND = "kube-apiserver"
BACKEND = "kube-apiserver"
HEALTH_URI = "/readyz"
HEALTH_EXPECT_STATUS = 200

# Health-check timing: the one place (see the module docstring for how it meets the shutdown delay).
CHECK_INTER_MS = 1000                           # a steady server (UP, or DOWN for long) is checked this often
CHECK_FASTINTER_MS = 250                        # ... and this often once a check has gone the other way
CHECK_DOWNINTER_MS = 500                        # a DOWN server: seen ready again sooner
CHECK_FALL = 2
CHECK_RISE = 2
CHECK_TIMEOUT_MS = 2000                         # a check that gets no answer fails after this
# /readyz failing -> out of rotation, at most: the first failed check, then fall-1 fast ones
DOWN_AFTER_MS = CHECK_INTER_MS + (CHECK_FALL - 1) * CHECK_FASTINTER_MS
# /readyz ok again -> back in rotation, at most (a rolling deploy waits for it between waves)
UP_AFTER_MS = CHECK_DOWNINTER_MS + (CHECK_RISE - 1) * CHECK_FASTINTER_MS

CONNECT_TIMEOUT_MS = 5000
# A watch may stay quiet between events; kube-apiserver ends it after --min-request-timeout
# (1800 s, randomised up to 2x): never cut a connection that has been idle for less than that.
IDLE_TIMEOUT_MS = 3600 * 1000

KIND_CONFIG = "config"                          # DesiredFile.kind of haproxy.cfg: reload, not restart
# Validates a config before HAProxy is told about it (`{path}`: the file to check).
CHECK_COMMAND = f"{layout.LB_BINARY_PATH} -c -q -f {{path}}"

LB_DIR = DesiredDir(layout.LB_PKI_DIR, layout.LB_PKI_DIR_MODE)

CA_FILE = layout.cert_file(layout.CA)
HEALTH_CERT_FILE = layout.cert_file(layout.HEALTH_CLIENT)
HEALTH_KEY_FILE = layout.key_file(layout.HEALTH_CLIENT)


@dataclass(frozen=True)
class LbPaths:
    """Where the rendered config tells HAProxy to find its files: the layout's on an LB host;
    other paths only to run HAProxy elsewhere (a test, `haproxy -c` on a workstation)."""

    ca_file: str = layout.LB_CA_PATH
    health_pem: str = layout.LB_HEALTH_PEM_PATH
    stats_socket: str = layout.LB_STATS_SOCKET


LB_PATHS = LbPaths()


# --- HAProxy's view of the controllers (verify, and the rolling deploy between waves) ---------

# HAProxy's own view of its backends, from its stats socket (`show stat`, CSV); socat where the
# host has it, else python3's socket module (Debian and Ubuntu servers have one or the other).
_STATS_PY = ('import socket,sys; c=socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); '
             'c.sendall(b"show stat\\n"); sys.stdout.write(b"".join(iter(lambda: c.recv(65536), b"")).decode())')
LB_STATS_COMMAND = (f"s={layout.LB_STATS_SOCKET}; if command -v socat >/dev/null 2>&1; then "
                    "echo 'show stat' | socat stdio \"unix-connect:$s\"; "
                    f"else python3 -c '{_STATS_PY}' \"$s\"; fi")


def parse_lb_stats(csv_text: str, backend: str) -> dict[str, tuple[str, str]]:
    """{server name: (status, last check)} for the servers of `backend` in `show stat` output."""
    lines = [ln for ln in csv_text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if ln.startswith("# ")), None)
    if header is None:
        return {}
    cols = header[2:].split(",")
    out = {}
    for line in lines:
        if line.startswith("#"):
            continue
        row = dict(zip(cols, line.split(",")))
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
            check = " ".join(x for x in (row.get("check_status", ""), row.get("check_code", ""),
                                         row.get("check_desc", "")) if x)
            out[row["svname"]] = (row.get("status", ""), check)
    return out



# --- the inventory ---------------------------------------------------------------------------


def require_load_balancers(inventory: Inventory) -> tuple[Host, ...]:
    """The inventory's load balancer hosts; InventoryError (file:line) when it has none."""
    if not inventory.load_balancers:
        where = inventory.where("load_balancers")
        said = "load_balancers is empty" if "load_balancers" in inventory.lines else "no load_balancers"
        raise InventoryError(
            f"{where}: {said}: there is no HAProxy host to configure",
            hint="add the load balancer hosts, e.g.\n"
                 "  load_balancers:\n"
                 "    - {name: lb-0, address: 10.240.0.5, internal_ip: 10.240.0.5}\n"
                 "and point cluster.api_endpoint at them (https://<lb address or DNS name>:6443)")
    return inventory.load_balancers


def frontend_port(inventory: Inventory) -> int:
    """The port clients dial: the one in cluster.api_endpoint (443 when it names none)."""
    return urlsplit(inventory.cluster.api_endpoint).port or 443


def _ms(value: int) -> str:
    """HAProxy's time format: `1s`, `1h`, `500ms`."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}ms"


def _server_address(host: Host, port: int) -> str:
    ip = host.internal_ip
    return f"[{ip}]:{port}" if isinstance(ip, ipaddress.IPv6Address) else f"{ip}:{port}"


def check_lb_inventory(inventory: Inventory) -> tuple[str, ...]:
    """Warnings about an inventory behind a load balancer (never raises; empty when sound)."""
    out = []
    delay_ms = inventory.apiserver.shutdown_delay_seconds * 1000
    if inventory.load_balancers and delay_ms <= DOWN_AFTER_MS:
        out.append(
            f"{inventory.where('apiserver.shutdown_delay_duration')}: apiserver.shutdown_delay_duration "
            f"{inventory.apiserver.shutdown_delay_seconds}s is not longer than the load balancer's "
            f"{_ms(DOWN_AFTER_MS)} to take a controller out of rotation (check every "
            f"{_ms(CHECK_INTER_MS)}, down after {CHECK_FALL} failures): clients meet a closed port "
            "while a controller restarts")
    host = inventory.cluster.api_endpoint_host
    controllers = {h.name for h in inventory.controllers} | {h.address for h in inventory.controllers} \
        | {str(h.internal_ip) for h in inventory.controllers}
    if inventory.load_balancers and host in controllers:
        out.append(f"{inventory.where('cluster.api_endpoint')}: cluster.api_endpoint "
                   f"{inventory.cluster.api_endpoint} is a controller, so clients bypass the load "
                   "balancer; point it at the load balancer's address or DNS name")
    return tuple(out)


# --- the config ------------------------------------------------------------------------------


def haproxy_context(inventory: Inventory, paths: LbPaths = LB_PATHS) -> dict:
    """Everything the template may use; a template that asks for more fails (StrictUndefined)."""
    port = inventory.apiserver.secure_port
    return {
        "cluster_name": inventory.cluster.name,
        "api_endpoint": inventory.cluster.api_endpoint,
        "stats_socket": paths.stats_socket,
        "timeouts": {"connect": _ms(CONNECT_TIMEOUT_MS), "client": _ms(IDLE_TIMEOUT_MS),
                     "server": _ms(IDLE_TIMEOUT_MS), "check": _ms(CHECK_TIMEOUT_MS)},
        "frontend": {"name": FRONTEND, "bind": f"*:{frontend_port(inventory)}"},
        "backend": {"name": BACKEND},
        "check": {"uri": HEALTH_URI, "expect_status": HEALTH_EXPECT_STATUS, "inter": _ms(CHECK_INTER_MS),
                  "fastinter": _ms(CHECK_FASTINTER_MS), "downinter": _ms(CHECK_DOWNINTER_MS),
                  "fall": CHECK_FALL, "rise": CHECK_RISE},
        "ca_file": paths.ca_file,
        "crt_file": paths.health_pem,
        "servers": [{"name": h.name, "address": _server_address(h, port), "verifyhost": h.name}
                    for h in inventory.controllers],
    }


def lb_templates_dir(override: Path | None = None) -> Path:
    """A user's template dir (`--templates`) holding haproxy.cfg.j2, else the packaged one.

    The inventory's `apiserver.templates` is the API server unit's alone.
    """
    return render.template_dir_with(HAPROXY_TEMPLATE, override)


def render_haproxy_config(inventory: Inventory, templates_dir: Path | None = None, *,
                          paths: LbPaths = LB_PATHS) -> str:
    """haproxy.cfg for every load balancer host (they are all the same).

    InventoryError when the inventory has no load balancer, TemplateError (file:line) for templates.
    """
    require_load_balancers(inventory)
    directory = templates_dir or lb_templates_dir()
    return render.render_template(directory, HAPROXY_TEMPLATE, haproxy_context(inventory, paths))


# --- the files on a load balancer host -------------------------------------------------------


def lb_desired_paths() -> tuple[str, ...]:
    """The target paths of `lb_files`, in its order, known before any file is read."""
    return (layout.LB_CA_PATH, layout.LB_HEALTH_PEM_PATH, layout.LB_CONFIG_PATH)


def health_pem(cert: bytes, key: bytes) -> bytes:
    """HAProxy's `crt` file: the certificate, then its key, in one PEM."""
    return (cert if cert.endswith(b"\n") else cert + b"\n") + key


def lb_files(inventory: Inventory, pki_files: dict[str, bytes], config_text: str) -> tuple[DesiredFile, ...]:
    """What every load balancer host holds: the CA, the health client's cert+key, haproxy.cfg.

    `pki_files` maps local PKI file names (`ca.pem`, `k8sboot-health.pem`,
    `k8sboot-health-key.pem`) to their bytes. PkiError, before anything is dialled, when one is
    missing or the health cert is not the CA's or not its key's: HAProxy would refuse the config
    or mark every controller down.
    """
    directory = inventory.pki.dir
    for name in (CA_FILE, HEALTH_CERT_FILE, HEALTH_KEY_FILE):
        if name not in pki_files:
            raise PkiError(f"reading {directory / name}: no such file",
                           hint=f"run `k8sboot gen-certs -i {inventory.path}` (it adds the health "
                                "client cert to an existing PKI and changes nothing else)")
    from k8sboot.rotation import split_pem_certs

    cas = [pki.parse_cert(pem, directory / CA_FILE) for pem in split_pem_certs(pki_files[CA_FILE])] or \
        [pki.parse_cert(pki_files[CA_FILE], directory / CA_FILE)]      # a CA rotation's bundle: both
    cert = pki.parse_cert(pki_files[HEALTH_CERT_FILE], directory / HEALTH_CERT_FILE)
    key = pki.parse_private_key(pki_files[HEALTH_KEY_FILE], directory / HEALTH_KEY_FILE)
    renew = f"reissue it with `k8sboot gen-certs --renew {layout.HEALTH_CLIENT}`"
    if not pki.key_matches(cert, key):
        raise PkiError(f"checking {directory / HEALTH_CERT_FILE}: its public key does not match "
                       f"{directory / HEALTH_KEY_FILE}", hint=renew)
    if not any(pki.is_directly_issued_by(cert, ca) for ca in cas):
        raise PkiError(f"checking {directory / HEALTH_CERT_FILE}: not signed by the CA in "
                       f"{directory / CA_FILE}", hint=renew)
    combined = health_pem(pki_files[HEALTH_CERT_FILE], pki_files[HEALTH_KEY_FILE])
    return (
        DesiredFile(layout.LB_CA_PATH, pki_files[CA_FILE], layout.LB_CA_MODE, kind=KIND_PKI),
        DesiredFile(layout.LB_HEALTH_PEM_PATH, combined, layout.LB_HEALTH_PEM_MODE, kind=KIND_PKI),
        DesiredFile(layout.LB_CONFIG_PATH, config_text.encode(), layout.LB_CONFIG_MODE, kind=KIND_CONFIG),
    )
