"""verify's view of etcd on the controllers: each member as `deploy-etcd` renders it, running, healthy,
and listing exactly the inventory's controllers.

Per controller, from one fact read over the same SSH connection as kube-apiserver's: the unit and
/etc/etcd's files against `etcd.etcd_files` (sha256, mode, owner), /etc/etcd and the data dir 0700,
is-enabled/is-active, and the running process's argv against `etcd.build_etcd_flags`. Then, from
the workstation over HTTPS with etcd's CA and the etcd-healthcheck-client cert (through the jump
host when there is one, as `verify --probe`): the member's GET /health and its member list (the v3
JSON gateway), compared with the inventory's names and peer URLs. The comparisons (`check_*`) are
pure; a controller without an etcd unit is "not deployed", and when none has one verify says so in
one WARN line and checks nothing else of etcd.
"""

from __future__ import annotations

import base64

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from k8sboot import etcd, layout, rotation
from k8sboot import flags as flagmod
from k8sboot import plan as planmod
from k8sboot.model import Host, Inventory
from k8sboot.plan import DesiredFile, HostFacts

OK = "OK"
DRIFT = "DRIFT"
SKIP = "SKIP"
WARN = "WARN"          # not drift: verify's exit code does not change

NOT_DEPLOYED = "not deployed (k8sboot deploy-etcd)"


def fact_request(inventory: Inventory):
    """What to read on a controller for its etcd member (both possible binaries stat'ed)."""
    from k8sboot.deploy import component_request

    comp = etcd.component(inventory)
    cmdline = (f"pid=$(systemctl show -p MainPID --value {comp.unit}); "
               f"if [ \"${{pid:-0}}\" -gt 0 ]; then base64 -w0 /proc/$pid/cmdline; fi")
    return component_request(comp, etcd.desired_paths(binary=False), layout.ETCD_CLIENT_PORT,
                             sections=(("cmdline", cmdline),), extra=(layout.ETCD_UPLOADED_BINARY,))


def deployed(facts: HostFacts) -> bool:
    return facts.file(layout.ETCD_UNIT_PATH).exists


def binary_of(facts: HostFacts) -> str:
    """The binary the host's unit runs when it is one deploy-etcd installs, else Debian's."""
    argv = flagmod.parse_unit_exec_start(facts.unit_text) if facts.unit_text else None
    return layout.ETCD_UPLOADED_BINARY if argv and argv[0] == layout.ETCD_UPLOADED_BINARY else \
        layout.ETCD_PACKAGE_BINARY


def running_argv(facts: HostFacts) -> list[str] | None:
    """The member's /proc/PID/cmdline, read with the facts (the `cmdline` section)."""
    raw = facts.sections.get("cmdline", "").strip()
    if not facts.service.main_pid or not raw:
        return None
    try:
        return flagmod.parse_proc_cmdline(base64.b64decode(raw))
    except ValueError:
        return None


def check_etcd_host(host: str, desired: Sequence[DesiredFile], expected: flagmod.Flags, binary: str,
                    facts: HostFacts, data_dir: str) -> list:
    """The member's files, directories, unit state and running argv, from its facts."""
    from k8sboot.verify import Check, diff_flags

    checks = []
    for want in desired:
        fact = facts.file(want.path)
        reasons, _ = planmod.compare_file(want, fact)
        detail = ", ".join(reasons) or f"{want.mode:04o} {want.owner}:{want.group}, sha256 matches"
        if reasons and want.kind == planmod.KIND_UNIT and "content" in reasons:
            detail += ": edited by hand or rendered from another inventory (deploy-etcd puts it back)"
        checks.append(Check(host, "file " + want.path, DRIFT if reasons else OK, detail,
                            f"sha256:{want.sha256[:12]} {want.mode:04o} {want.owner}:{want.group}",
                            f"sha256:{(fact.sha256 or '-')[:12]} {fact.mode or 0:04o} {fact.owner}:{fact.group}"
                            if fact.exists else "missing"))
    for path, mode in ((layout.ETCD_DIR, layout.ETCD_DIR_MODE), (data_dir, layout.ETCD_DATA_DIR_MODE)):
        d = facts.file(path)
        ok = d.exists and d.kind == "directory" and d.mode == mode and (d.owner, d.group) == ("root", "root")
        checks.append(Check(host, "dir " + path, OK if ok else DRIFT,
                            f"{d.mode or 0:04o} {d.owner}:{d.group}" if d.exists else "missing",
                            f"{mode:04o} root:root"))
    svc = facts.service
    checks.append(Check(host, "etcd is-enabled", OK if svc.unit_file_state == "enabled" else DRIFT,
                        svc.unit_file_state or "unknown", "enabled", svc.unit_file_state))
    checks.append(Check(host, "etcd is-active", OK if svc.is_active else DRIFT,
                        f"{svc.active_state}/{svc.sub_state}", "active", svc.active_state))
    argv = running_argv(facts)
    if svc.is_active and argv:
        diff = diff_flags(expected, flagmod.parse_argv_flags(argv))
        if argv[:1] != [binary]:
            diff.insert(0, f"binary {argv[:1]} (expected {binary})")
        checks.append(Check(host, f"etcd process {svc.main_pid}: flags", DRIFT if diff else OK,
                            "; ".join(diff) or f"{len(expected)} flags as rendered",
                            " ".join(flagmod.flags_to_argv(expected)), " ".join(argv[1:])))
    else:
        checks.append(Check(host, "etcd process", SKIP, f"not running ({svc.active_state})"))
    return checks


def check_health(host: str, status: int | None, body: str) -> list:
    from k8sboot.verify import Check

    ok, why = etcd.parse_health(status, body)
    return [Check(host, "etcd health", OK if ok else DRIFT,
                  f"GET {etcd.HEALTH_PATH}: " + ('{"health":"true"}' if ok else why), '{"health":"true"}',
                  body.strip()[:200] if status is not None else body)]


def check_members(host: str, inventory: Inventory, status: int | None, body: str) -> list:
    """The member list `host` answers against the inventory's controllers (names and peer URLs)."""
    from k8sboot.verify import Check

    want = {h.name: etcd.peer_url(h) for h in inventory.controllers}
    expected = ", ".join(f"{n}={u}" for n, u in want.items())
    members = etcd.parse_member_list(body) if status == 200 else None
    if members is None:
        why = f"HTTP {status}: {body.strip()[:200]}" if status is not None else body
        return [Check(host, "etcd member list", DRIFT, f"POST {etcd.MEMBER_LIST_PATH}: {why}", expected, "")]
    by_url = {u: n for n, u in want.items()}
    got, unstarted = {}, []
    for m in members:
        name = m.name or next((by_url[u] for u in m.peer_urls if u in by_url), "")
        unstarted += [] if m.name else [name or f"a member at {', '.join(m.peer_urls) or 'no URL'}"]
        if name:
            got[name] = m
    problems = [f"{n} added but never started" for n in unstarted]
    problems += [f"{n} missing" for n in want if n not in got]
    problems += [f"{n} not in the inventory ({', '.join(m.peer_urls)})" for n, m in got.items() if n not in want]
    problems += [f"{n}: peer URLs {', '.join(m.peer_urls) or 'none'} (expected {want[n]})"
                 for n, m in got.items() if n in want and tuple(m.peer_urls) != (want[n],)]
    actual = ", ".join(f"{n}={','.join(m.peer_urls)}" for n, m in got.items())
    return [Check(host, "etcd member list", DRIFT if problems else OK,
                  "; ".join(problems) or f"{len(got)} members = the inventory's controllers", expected, actual)]


def not_deployed(host: str) -> list:
    from k8sboot.verify import Check

    return [Check(host, "etcd", WARN, NOT_DEPLOYED)]


def missing_member(host: str) -> list:
    """A controller without an etcd unit while others have one: its member is missing."""
    from k8sboot.verify import Check

    return [Check(host, "etcd", DRIFT, f"{layout.ETCD_UNIT_PATH} is missing while other controllers run etcd: "
                  "run k8sboot deploy-etcd", layout.ETCD_UNIT_PATH, "missing")]


# --- the reading side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalEtcd:
    """What the workstation holds for the comparison: etcd's PKI files and the template dir, or
    why they cannot be had (only reported for hosts where etcd is deployed)."""

    pki: dict[str, bytes]
    templates: Path | None
    error: str = ""


def read_local(inventory: Inventory, templates: Path | None) -> LocalEtcd:
    from k8sboot.errors import K8sbootError
    from k8sboot.store import read_optional

    pki_dir = Path(inventory.pki.dir)
    files = rotation.etcd_files(inventory.rotation)          # etcd-ca.pem: a CA rotation's bundle
    pki = {f.local_name: data for f in files if (data := read_optional(pki_dir / f.local_name)) is not None}
    try:
        return LocalEtcd(pki, etcd.templates_dir(templates))
    except K8sbootError as exc:
        return LocalEtcd(pki, None, exc.message)


Ask = Callable[[Host, str], object]     # (member, "health" | "members") -> probe.ProbeAnswer


def asker(inventory: Inventory, dial, timeout: float) -> Ask | None:
    """HTTPS to a member's client port with etcd's CA and the health-check client cert, through
    `dial` (verify's, jump host aware, closed by verify): deploy's `EtcdProber`; None when the
    local PKI lacks one of them."""
    from k8sboot.deploy import etcd_prober
    from k8sboot.errors import PkiError

    try:
        return etcd_prober(inventory, timeout, dial=dial)
    except PkiError:
        return None


def verify_member(inventory: Inventory, host: Host, facts: HostFacts, local: LocalEtcd, ask: Ask | None) -> list:
    """Every etcd check of one controller whose facts show an etcd unit."""
    from k8sboot.errors import K8sbootError
    from k8sboot.verify import Check

    checks: list = []
    binary = binary_of(facts)
    if local.error:
        checks.append(Check(host.name, "etcd files and unit", SKIP, f"not compared: {local.error}"))
    else:
        try:
            unit = etcd.render_etcd_unit(inventory, host, binary, local.templates)
            desired = etcd.etcd_files(local.pki, unit.text, None, Path(inventory.pki.dir),
                                      rotation.etcd_files(inventory.rotation))
        except K8sbootError as exc:
            checks.append(Check(host.name, "etcd files and unit", SKIP, f"not compared: {exc.message}"
                                + (f" ({exc.hint})" if exc.hint else "")))
        else:
            checks += check_etcd_host(host.name, desired, unit.flags, binary, facts, etcd.data_dir(inventory))
    if ask is None:
        checks.append(Check(host.name, "etcd health", SKIP, "the local PKI has no etcd-ca.pem and "
                            "etcd-healthcheck-client.pem/-key.pem: run k8sboot gen-certs"))
        return checks
    answer = ask(host, "health")
    checks += check_health(host.name, answer.status, answer.body if answer.status is not None else answer.error)
    answer = ask(host, "members")
    checks += check_members(host.name, inventory, answer.status,
                            answer.body if answer.status is not None else answer.error)
    return checks
