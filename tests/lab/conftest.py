"""Session fixture `lab_hosts`: three real controller hosts from `k8sboot lab up`.

Each host is a systemd-nspawn container with real systemd and sshd (see k8sboot/lab). The
fixture runs the installed `k8sboot lab up --controllers 3` once per session (an already running
3-host lab is reused and left running), yields `LabHost` objects and runs `k8sboot lab down` at
the end if it started the lab (`K8SBOOT_LAB_KEEP=1` keeps it up for debugging).

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
    from k8sboot.lab import plan

    return [LabHost(h["name"], h["address"], str(plan.CLIENT_KEY), str(plan.KNOWN_HOSTS))
            for h in up_json["hosts"]]


LOCKED = 17     # k8sboot.errors.ExitCode.LOCKED: another process holds the lab


def lab_up(inventory: Path, controllers: int = N_CONTROLLERS, wait: float = 0.0) -> dict:
    """`k8sboot lab up --json`; with `wait`, retry while another session holds the lab."""
    deadline = time.monotonic() + wait
    while True:
        r = k8sboot("lab", "up", "--controllers", str(controllers), "--inventory", str(inventory), "--json",
                    check=False)
        if r.returncode == LOCKED and time.monotonic() < deadline:
            time.sleep(2)
            continue
        if r.returncode != 0:
            raise AssertionError(f"k8sboot lab up exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        return json.loads(r.stdout)


class LabTools:
    """The helpers above as a fixture, so test modules never import conftest by name."""

    N_CONTROLLERS = N_CONTROLLERS
    K8SBOOT = K8SBOOT
    LabHost = LabHost
    inotify_before: int | None = None      # the limit before the fixture brought the lab up

    k8sboot = staticmethod(k8sboot)
    clean_env = staticmethod(clean_env)
    hosts_from = staticmethod(hosts_from)
    lab_up = staticmethod(lab_up)


@pytest.fixture(scope="session")
def lab_tools() -> type[LabTools]:
    return LabTools


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lab") / "inventory" / "lab.yaml"


@pytest.fixture(scope="session")
def lab_hosts(lab_inventory):
    why = lab_unavailable()
    if why:
        skip_or_fail(why)
    from k8sboot.lab import net

    result = lab_up(lab_inventory, wait=float(os.environ.get("K8SBOOT_LAB_WAIT", "900")))
    started_here = bool(result["started"])
    # the limit before the lab: what `up` saved when it raised it (another session may have
    # had a lab up just before ours, so reading the sysctl before our `up` proves nothing)
    try:
        inotify_before = int(net.INOTIFY_SAVED.read_text())
    except (OSError, ValueError):
        inotify_before = net.read_inotify_limit()           # was high enough: left alone
    if started_here:
        LabTools.inotify_before = inotify_before
    hosts = hosts_from(result)
    try:
        yield hosts
    finally:
        if started_here and os.environ.get("K8SBOOT_LAB_KEEP") != "1":
            env = clean_env()
            del env["K8SBOOT_LAB_LEASE"]          # the last down releases our lease
            k8sboot("lab", "down", check=False, env=env)
            after = net.read_inotify_limit()
            assert after == inotify_before, f"inotify limit {after}, was {inotify_before} before the lab"
