"""The health gate a host passes before a rolling deploy moves on (workstation side).

A restarted host passes when its unit is up (the host-side wait: active, running, serving), its
MainPID is new (a restart really happened: never a pass on the old process, as kubeadm's
upgrade also insists), the running process's argv carries the rendered flags, and
`GET /readyz` over HTTPS on its advertised address and secure port answers 200 to a client
certificate that is allowed to read it: k8sboot's own `k8sboot-health` identity
(CN=system:k8sboot-health, no groups: the bootstrap RBAC's `system:public-info-viewer` lets every
authenticated user read /readyz, /livez, /healthz and /version, and nothing else), or the admin
certificate in a PKI made before that identity existed. With `--anonymous-auth=false` an
anonymous /readyz is a 401, so a credential is always sent. Checking from the workstation also
proves the controller is reachable on the address clients and the load balancer use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from k8sboot import layout
from k8sboot.errors import PkiError
from k8sboot.model import Host, Inventory
from k8sboot.plan import ServiceFact

READYZ_PATH = "/readyz"
HEALTH = layout.HEALTH_CLIENT   # the PKI table's name for the health client cert


@dataclass(frozen=True)
class Readiness:
    ready: bool
    status: int | None           # the last HTTP status (None: no answer)
    detail: str                  # the last answer's first failing line, or the connection error
    seconds: float               # how long the gate waited


ReadyzProbe = Callable[[Host], "object"]     # Host -> probe.ProbeAnswer


def credentials(inventory: Inventory) -> tuple[Path, Path, Path]:
    """(ca.pem, cert, key) for the gate: the health identity, else admin; PkiError when neither."""
    from k8sboot import rotation

    pki = Path(inventory.pki.dir)
    ca = pki / rotation.trust_name(getattr(inventory, "rotation", None), layout.cert_file(layout.CA))  # both CAs mid-rotation
    if not ca.is_file():
        raise PkiError(f"the health gate needs {ca} to check the controllers' serving certs",
                       hint=f"run: k8sboot gen-certs -i {inventory.path}")
    for name in (HEALTH, layout.ADMIN):
        cert, key = pki / layout.cert_file(name), pki / layout.key_file(name)
        if cert.is_file() and key.is_file():
            return ca, cert, key
    raise PkiError(f"the health gate needs a client certificate to read /readyz: neither "
                   f"{pki / layout.cert_file(HEALTH)} nor {pki / layout.cert_file(layout.ADMIN)} exists",
                   hint=f"run: k8sboot gen-certs -i {inventory.path}")


def https_readyz(inventory: Inventory, port: int, timeout: float = 2.0, dial=None) -> ReadyzProbe:
    """A probe of each host's /readyz on its internal IP (the advertised address) and `port`."""
    from k8sboot import probe

    ca, cert, key = credentials(inventory)
    extra = {"dial": dial} if dial is not None else {}

    def readyz(host: Host):
        return probe.request(str(host.internal_ip), port, "GET", READYZ_PATH, ca, cert=cert, key=key,
                             timeout=timeout, **extra)

    return readyz


def wait_ready(host: Host, readyz: ReadyzProbe, timeout: float, *, interval: float = 0.1,
               clock=time.monotonic, sleep=time.sleep) -> Readiness:
    """Ask /readyz until it answers 200 or `timeout` passes (at least one look)."""
    t0 = clock()
    while True:
        answer = readyz(host)
        if answer.status == 200:
            return Readiness(True, 200, "ok", clock() - t0)
        if clock() - t0 >= timeout or _permanent(answer):
            return Readiness(False, answer.status, _detail(answer), clock() - t0)
        sleep(interval)


def _permanent(answer) -> bool:
    """An answer waiting cannot change: the serving cert does not verify for this address (a
    missing SAN, another CA), or the gate's own credential is refused (401). A starting server
    refuses connections or answers 500; it never presents another certificate. A 403 is waited
    out: a server that has not loaded its RBAC policy yet (it is still reading etcd, or API
    servers starting together are still writing the bootstrap policy) denies all but
    system:masters for a while."""
    return (answer.status is None and answer.error.startswith("TLS verification failed")) or answer.status == 401


FORBIDDEN_HINT = ("the API server denies the health identity /readyz: its RBAC policy is not loaded, as when "
                  "it has not read etcd since it started (it then authorizes only system:masters: check "
                  "etcd and its --etcd-* flags, k8sboot verify), or the system:public-info-viewer binding "
                  "was removed")


def _detail(answer) -> str:
    if answer.status is None:
        return answer.error or "no answer"
    if answer.status == 403:
        return f"HTTP 403: {FORBIDDEN_HINT}"
    failing = [ln.strip() for ln in (answer.body or "").splitlines() if ln.strip().startswith("[-]")]
    if failing:
        etcd = any(ln.startswith(("[-]etcd failed", "[-]etcd-readiness failed")) for ln in failing)
        return f"HTTP {answer.status}: " + "; ".join(failing[:3]) + (
            " (the API server cannot read etcd: its --etcd-* flags, or the members: k8sboot verify)" if etcd else "")
    first = (answer.body or "").strip().splitlines()[:1]
    return f"HTTP {answer.status}" + (f": {first[0][:200]}" if first else "")


def check_new_process(before: ServiceFact, after: ServiceFact) -> str | None:
    """Why the restart did not produce a new process, or None."""
    if not after.main_pid:
        return "no main process after the restart"
    if before.is_active and before.main_pid and after.main_pid == before.main_pid:
        return f"MainPID {after.main_pid} is the process from before the restart: no restart happened"
    return None


def check_argv(argv: Sequence[str] | None, expected_flags, binary: str = layout.BINARY_PATH) -> str | None:
    """Why the running process's command line differs from the rendered flags, or None."""
    from k8sboot import flags as flagmod
    from k8sboot import verify

    if not argv:
        return "the running process's command line could not be read"
    argv = list(argv)
    if verify._is_interpreter(argv[0]) and binary in argv[1:3]:     # the lab's stand-in: a script
        argv = argv[argv.index(binary, 1):]
    got = flagmod.parse_argv_flags(argv)
    diffs = verify.diff_flags(expected_flags, got)
    if argv[:1] != [binary]:
        diffs.insert(0, f"binary {argv[0]} (expected {binary})")
    return ("the running process differs from the rendered unit: " + "; ".join(diffs[:4])) if diffs else None
