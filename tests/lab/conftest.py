"""Session fixture `lab_hosts`: three real controller hosts from `k8sboot lab up`.

Each host is a systemd-nspawn container with real systemd and sshd (see k8sboot/lab). The
fixture runs the installed `k8sboot lab up --controllers 3 --lb` once per session (an already
running lab of that shape is reused and left running), yields `LabHost` objects for the three
controllers and runs `k8sboot lab down` at the end if it started a controller
(`K8SBOOT_LAB_KEEP=1` keeps it up for debugging); if it only added lb-0 to a running lab, it
removes lb-0 again at the end.

The session's lab always has its load balancer lb-0 (10.240.0.5, HAProxy): `lab up` without
`--lb` stops lb-0, so one shape for the whole session is the only way a test that needs the LB
and a test that does not can share the lab. `lab_lb` gives the LB host and `lab_lb_inventory`
(what `lab up --lb` wrote: api_endpoint = lb-0). `lab_inventory` stays what `lab up` without
`--lb` writes (api_endpoint = controller-0, no load_balancers), byte for byte: most tests dial
controller-0 directly and have no HAProxy config behind lb-0. `lab_tools.lab_up` keeps both
files up to date and passes `--lb` unless told `lb=False`.

The lab is one per machine: the fixture takes a lease on it (K8SBOOT_LAB_LEASE), so another
session cannot take it down meanwhile, and it waits (K8SBOOT_LAB_WAIT, default 900 s) while
another session holds it.

Without root (or without systemd-nspawn, debootstrap, ...) the lab tests skip with the reason;
when `CI=true` (set by .ci/run) or `K8SBOOT_LAB_REQUIRED=1`, that is a failure instead.

The inventory the lab writes goes to a session temp dir (`lab_inventory`), not into the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8SBOOT = str(Path(sys.executable).with_name("k8sboot"))
N_CONTROLLERS = 3


def k8sboot(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed entry point; stdout/stderr captured as text."""
    r = subprocess.run([K8SBOOT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=env or clean_env())
    if check and r.returncode != 0:
        raise AssertionError(f"k8sboot {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def clean_env() -> dict:
    """The environment without proxies (lab traffic goes straight to 10.240.0.0/24), with the
    lease: `lab up` records this pytest process as depending on the lab, so another session's
    `lab down` is refused while we run (see k8sboot/lab/lease.py)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "10.240.0.0/24,127.0.0.1,localhost"
    env["K8SBOOT_LAB_LEASE"] = "pytest tests/lab"
    return env


@dataclass
class LabHost:
    name: str
    address: str
    key_path: str
    known_hosts: str
    role: str = "controller"          # controller | worker | lb

    def connection(self):
        """Fabric, strict host keys: only the key in the lab's known_hosts is accepted."""
        import paramiko
        from fabric import Config, Connection

        # in_stream=False: under pytest's capture, invoke must not read stdin
        c = Connection(self.address, user="root", connect_timeout=10,
                       config=Config(overrides={"run": {"in_stream": False}}),
                       connect_kwargs={"key_filename": self.key_path, "look_for_keys": False,
                                       "allow_agent": False})
        c.client.load_host_keys(self.known_hosts)
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return c

    def run(self, cmd: str, warn: bool = False):
        """Run one command over SSH; returns invoke's Result (stdout, stderr, exited)."""
        with self.connection() as c:
            return c.run(cmd, hide=True, warn=warn)

    def reset(self) -> None:
        """A fresh root for this host (its changes dropped), booted again."""
        k8sboot("lab", "reset", self.name)


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (systemd-nspawn, namespaces, mounts)"
    from k8sboot.lab import prereq, rootfs

    findings = prereq.check_prereqs(need_debootstrap=rootfs.find_rootfs() is None)
    if findings:
        return "the lab cannot run here: " + "; ".join(f.problem for f in findings) + \
               f" ({prereq.render_fix(findings)})"
    return None


def lab_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("K8SBOOT_LAB_REQUIRED") == "1"


def skip_or_fail(why: str):
    if lab_required():
        pytest.fail(f"lab tests cannot run, and CI requires them: {why}", pytrace=False)
    pytest.skip(why)


def hosts_from(up_json: dict) -> list[LabHost]:
    """Every host of a `lab up --json` result (the LB too), in its order (by address)."""
    from k8sboot.lab import plan

    return [LabHost(h["name"], h["address"], str(plan.CLIENT_KEY), str(plan.KNOWN_HOSTS), h["role"])
            for h in up_json["hosts"]]


LOCKED = 17     # k8sboot.errors.ExitCode.LOCKED: another process holds the lab


def lb_inventory_for(inventory: Path) -> Path:
    """Where `lab_up(inventory)` has `lab up --lb` write its inventory: beside `inventory`."""
    return inventory.with_name(f"{inventory.stem}-lb{inventory.suffix}")


def write_direct_inventory(inventory: Path, up_json: dict) -> bool:
    """`inventory` as `k8sboot lab up` without --lb writes it for the same controllers and
    workers (api_endpoint = controller-0); only when its content changes. True when written."""
    from k8sboot.lab import plan

    roles = [h["role"] for h in up_json["hosts"]]
    text = plan.render_lab_inventory(plan.build_host_specs(roles.count("controller"), roles.count("worker")))
    try:
        if inventory.read_text() == text:
            return False
    except OSError:
        pass
    inventory.parent.mkdir(parents=True, exist_ok=True)
    inventory.write_text(text)
    return True


def lab_up(inventory: Path, controllers: int = N_CONTROLLERS, wait: float = 0.0, *, workers: int = 0,
           lb: bool = True, ready_delay: float = 0.0, idp: bool = False) -> dict:
    """`k8sboot lab up --json`; with `wait`, retry while another session holds the lab.

    `lb` (the default: the session's shape, see above): `--lb`, its inventory written to
    `lb_inventory_for(inventory)` and `inventory` kept as the inventory without the LB;
    `inventory_written` in the result is true when either file changed. `lb=False`: plain
    `lab up` into `inventory`, which stops lb-0. `ready_delay`: `--apiserver-ready-delay`
    (0, the CLI's default, removes the drop-in). `idp`: `--idp` (idp-0, the lab's OIDC identity
    provider; without it a running idp-0 is stopped: see the `lab_idp` fixture).
    """
    deadline = time.monotonic() + wait
    target = lb_inventory_for(inventory) if lb else inventory
    args = ["lab", "up", "--controllers", str(controllers), "--workers", str(workers),
            "--apiserver-ready-delay", str(ready_delay), "--inventory", str(target), "--json"]
    if lb:
        args.append("--lb")
    if idp:
        args.append("--idp")
    while True:
        r = k8sboot(*args, check=False)
        if r.returncode == LOCKED and time.monotonic() < deadline:
            time.sleep(2)
            continue
        if r.returncode != 0:
            raise AssertionError(f"k8sboot {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        result = json.loads(r.stdout)
        if lb:
            result["lb_inventory"] = str(target)
            result["inventory_written"] = write_direct_inventory(inventory, result) or result["inventory_written"]
        return result


@dataclass
class LabLb:
    """The lab's load balancer and the inventory that names it (see `lab_lb`)."""

    host: LabHost                     # lb-0, 10.240.0.5, reachable over SSH with strict host keys
    inventory: Path                   # api_endpoint https://10.240.0.5:6443, load_balancers: [lb-0]
    controllers: list[LabHost]


class LabTools:
    """The helpers above as a fixture, so test modules never import conftest by name."""

    N_CONTROLLERS = N_CONTROLLERS
    K8SBOOT = K8SBOOT
    LabHost = LabHost
    LabLb = LabLb
    inotify_before: int | None = None      # the limit before the fixture brought the lab up

    k8sboot = staticmethod(k8sboot)
    clean_env = staticmethod(clean_env)
    hosts_from = staticmethod(hosts_from)
    lab_up = staticmethod(lab_up)
    lb_inventory_for = staticmethod(lb_inventory_for)


@pytest.fixture(scope="session")
def lab_tools() -> type[LabTools]:
    return LabTools


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lab") / "inventory" / "lab.yaml"


@pytest.fixture(scope="session")
def lab_lb_inventory(lab_inventory) -> Path:
    """What `lab up --lb` wrote for the session's lab (api_endpoint = lb-0)."""
    return lb_inventory_for(lab_inventory)


@pytest.fixture(scope="session")
def lab_hosts(lab_inventory):
    """The three controllers of the session's lab (which also runs lb-0, see above)."""
    why = lab_unavailable()
    if why:
        skip_or_fail(why)
    from k8sboot.lab import net

    result = lab_up(lab_inventory, wait=float(os.environ.get("K8SBOOT_LAB_WAIT", "900")))
    started_here = any(h["name"] in result["started"] for h in result["hosts"] if h["role"] != "lb")
    # a lab that ran before us without its LB: leave it as we found it
    added_lb_only = not started_here and any(n.startswith("lb-") for n in result["started"])
    # the limit before the lab: what `up` saved when it raised it (another session may have
    # had a lab up just before ours, so reading the sysctl before our `up` proves nothing)
    try:
        inotify_before = int(net.INOTIFY_SAVED.read_text())
    except (OSError, ValueError):
        inotify_before = net.read_inotify_limit()           # was high enough: left alone
    if started_here:
        LabTools.inotify_before = inotify_before
    hosts = [h for h in hosts_from(result) if h.role == "controller"]
    try:
        yield hosts
    finally:
        if added_lb_only and os.environ.get("K8SBOOT_LAB_KEEP") != "1":
            k8sboot("lab", "up", "--controllers", str(N_CONTROLLERS), "--inventory",
                    str(lab_inventory.with_name("lab-restored.yaml")), check=False)
        if started_here and os.environ.get("K8SBOOT_LAB_KEEP") != "1":
            env = clean_env()
            del env["K8SBOOT_LAB_LEASE"]          # the last down releases our lease
            k8sboot("lab", "down", check=False, env=env)
            after = net.read_inotify_limit()
            assert after == inotify_before, f"inotify limit {after}, was {inotify_before} before the lab"


@pytest.fixture(scope="session")
def lab_lb(lab_hosts, lab_lb_inventory) -> LabLb:
    """The session's load balancer: lb-0 (10.240.0.5) running, Debian's HAProxy enabled and
    active on it (with the package's default config until a test deploys one), no HAProxy on any
    controller, and the inventory `lab up --lb` wrote for it. Every `lab_tools.lab_up` of the
    session keeps lb-0; a test that stops it (`lb=False`, `lab down`) brings it back before it
    ends. A test that changes lb-0's config should `lab_lb.host.reset()` when done."""
    from k8sboot.lab import plan

    lb = plan.build_host_specs(1, 0, 1)[0]
    host = LabHost(lb.name, lb.address, str(plan.CLIENT_KEY), str(plan.KNOWN_HOSTS), role="lb")
    assert lab_lb_inventory.exists(), f"lab_hosts did not bring the lab up with --lb ({lab_lb_inventory})"
    return LabLb(host=host, inventory=lab_lb_inventory, controllers=list(lab_hosts))


@dataclass
class LabIdp:
    """The lab's OIDC identity provider (see `lab_idp`)."""

    host: LabHost                     # idp-0, 10.240.0.2, nginx on 443
    issuer: str                       # https://10.240.0.2
    ca_file: Path                     # the idp CA on this machine (/var/lib/k8sboot/lab/idp/ca.pem)
    directory: Path                   # its keys: k8sboot.lab.idp.mint_token(..., directory=...)
    kid: str                          # the JWKS kid
    up_result: dict                   # what `lab up --idp --json` said


@pytest.fixture(scope="module")
def lab_idp(lab_hosts, lab_inventory) -> LabIdp:
    """idp-0 added to the session's lab (`lab up --lb --idp`) for one test module, and removed
    again after it (`lab up --lb`: the session's shape; the idp's keys stay). Module-scoped because
    any later `lab_tools.lab_up` without `idp=True` stops idp-0."""
    from k8sboot.lab import idp, plan

    result = lab_up(lab_inventory, idp=True, wait=float(os.environ.get("K8SBOOT_LAB_WAIT", "900")))
    spec = idp.default_host()
    host = LabHost(spec.name, spec.address, str(plan.CLIENT_KEY), str(plan.KNOWN_HOSTS), role="idp")
    try:
        yield LabIdp(host=host, issuer=plan.idp_issuer(spec), ca_file=plan.IDP_DIR / idp.CA_FILE,
                     directory=plan.IDP_DIR, kid=idp.kid(plan.IDP_DIR), up_result=result)
    finally:
        if os.environ.get("K8SBOOT_LAB_KEEP") != "1":
            lab_up(lab_inventory)
