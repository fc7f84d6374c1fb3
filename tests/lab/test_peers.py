"""The benchmark's peers really do the job of `k8sboot deploy-apiserver`, on a real lab host.

The comparison in bench/run is only fair if every peer leaves a controller exactly as k8sboot
does. On one lab host (controller-0 of the session's lab), for k8sboot and for each peer — the
KTHW scp/ssh loop, the same with ControlMaster, the naive parallel Fabric script, the Ansible
playbook — from a fresh root (`k8sboot lab reset`):

* every one of the eight files has the local bytes, its mode (keys 0600, certs 0644) and
  root:root; /var/lib/kubernetes is 0700 and holds nothing else; the unit is the rendered one,
  0644; kube-apiserver is active and enabled; no ca-key.pem anywhere on the host;
* then `k8sboot deploy-apiserver --hosts controller-0` finds nothing to do (nothing uploaded,
  nothing restarted): k8sboot itself sees the peer's result as its own.

The tutorial's grep loop prints the three flags. controller-0 is reset after each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]


def _load_bench_lib():
    """bench/lib.py under a name of its own (a bare `lib` could collide with another test helper)."""
    import importlib.util

    name = "k8sboot_bench_lib"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "lib.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


benchlib = _load_bench_lib()

HOST = "controller-0"


class PeerEnv:
    """A working dir with the lab's PKI, the rendered units and the peers' ssh/Ansible configs."""

    def __init__(self, lab_tools, inventory: Path, work: Path):
        self.t = lab_tools
        self.inventory = inventory
        self.work = work
        self.inv = benchlib.read_lab_inventory(inventory)
        self.k8sboot("gen-certs", "-i", str(inventory))
        self.pki = work / self.inv.pki_dir if not self.inv.pki_dir.is_absolute() else self.inv.pki_dir
        self.units = work / "units"
        self.units.mkdir()
        self.k8sboot("render-apiserver", "-i", str(inventory), "--out", str(self.units))
        self.ssh_config = work / "ssh_config"
        self.ssh_config.write_text(benchlib.render_ssh_config(self.inv))
        self.ansible_inventory = work / "ansible-inventory.ini"
        self.ansible_inventory.write_text(benchlib.render_ansible_inventory(self.inv))

    def k8sboot(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.t.k8sboot(*args, cwd=self.work, check=check)

    def run(self, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        full = self.t.clean_env()
        full.update(env or {})
        r = subprocess.run(argv, cwd=self.work, capture_output=True, text=True, timeout=600, env=full,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{argv[0]} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    def unit(self) -> Path:
        return self.units / f"{HOST}.{benchlib.UNIT_NAME}"

    def state(self) -> benchlib.HostState:
        r = self.run(["ssh", "-F", str(self.ssh_config), HOST, benchlib.snapshot_command()])
        return benchlib.parse_snapshot(r.stdout)

    def differences(self) -> list[str]:
        return benchlib.state_differences(self.state(), benchlib.expected_state(self.pki, self.unit()))

    def k8sboot_finds_nothing_to_do(self) -> dict:
        r = self.k8sboot("deploy-apiserver", "-i", str(self.inventory), "--hosts", HOST, "--json")
        doc = json.loads(r.stdout)
        (host,) = doc["hosts"]
        return host


@pytest.fixture(scope="module")
def peers(lab_hosts, lab_inventory, lab_tools, tmp_path_factory):
    hosts = {h.name: h for h in lab_hosts}
    for h in lab_hosts:
        h.reset()
    env = PeerEnv(lab_tools, lab_inventory, tmp_path_factory.mktemp("peers"))
    env.host = hosts[HOST]
    # etcd on every controller: deploy-apiserver checks it before changing a host. Resetting
    # controller-0 between peers takes its member away; two of three keep quorum.
    env.k8sboot("deploy-etcd", "-i", str(lab_inventory), "--wait", "60")
    yield env
    for h in lab_hosts:
        h.reset()


def deploy_with_k8sboot(env: PeerEnv) -> None:
    env.k8sboot("deploy-apiserver", "-i", str(env.inventory), "--hosts", HOST)


def deploy_with_kthw(env: PeerEnv) -> None:
    env.run(["bash", str(ROOT / "bench/peers/kthw_deploy.sh"), "-F", str(env.ssh_config), "-p", str(env.pki),
             "-u", str(env.units), HOST])


def deploy_with_kthw_cm(env: PeerEnv) -> None:
    env.run(["bash", str(ROOT / "bench/peers/kthw_deploy.sh"), "--control-master", "-F", str(env.ssh_config),
             "-p", str(env.pki), "-u", str(env.units), HOST])


def deploy_with_naive_fabric(env: PeerEnv) -> None:
    env.run([sys.executable, str(ROOT / "bench/peers/naive_fabric.py"), "-i", str(env.inventory),
             "-p", str(env.pki), "-u", str(env.units), "--hosts", HOST])


def deploy_with_ansible(env: PeerEnv) -> None:
    playbook = benchlib.ensure_ansible_venv()       # bench/.venv-ansible, built from PyPI once
    control = env.work / "ansible-cp"
    control.mkdir(exist_ok=True)
    try:
        env.run([str(playbook), "-i", str(env.ansible_inventory), "--forks", "1", "--limit", HOST,
                 str(ROOT / "bench/peers/ansible/deploy.yml"),
                 "-e", f"pki_dir={env.pki.resolve()}", "-e", f"units_dir={env.units.resolve()}"],
                env={"ANSIBLE_CONFIG": str(ROOT / "bench/peers/ansible/ansible.cfg"),
                     "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control), "ANSIBLE_LOCAL_TEMP": str(control / "tmp")})
    finally:
        for sock in control.glob("*"):
            if sock.is_socket():
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)


DEPLOYERS = {
    "k8sboot": deploy_with_k8sboot,
    "kthw-loop": deploy_with_kthw,
    "kthw-loop+cm": deploy_with_kthw_cm,
    "naive-fabric": deploy_with_naive_fabric,
    "ansible": deploy_with_ansible,
}


@pytest.mark.parametrize("tool", list(DEPLOYERS))
def test_tool_leaves_the_host_exactly_as_k8sboot_does(peers, tool):
    peers.host.reset()
    before = peers.state()
    assert before.files[benchlib.UNIT_PATH] is None, "the reset host already has a unit"

    DEPLOYERS[tool](peers)

    assert peers.differences() == [], f"{tool} did not do the job of k8sboot deploy-apiserver"
    result = peers.k8sboot_finds_nothing_to_do()
    assert result["ok"], result
    assert result["outcome"] == "up to date", (tool, result)
    assert list(result["files_changed"]) == [] and not result["unit_changed"] and not result["restarted"], result


@pytest.mark.parametrize("tool", ["kthw-loop", "naive-fabric"])
def test_peers_that_always_restart_do_restart_on_a_rerun(peers, tool):
    """The comparison's premise: the KTHW loop and naive Fabric restart every time (k8sboot and
    Ansible do not); the unit's start time moves."""
    def started() -> str:
        r = peers.run(["ssh", "-F", str(peers.ssh_config), HOST,
                       "systemctl show -p ExecMainStartTimestampMonotonic --value kube-apiserver"])
        return r.stdout.strip()

    DEPLOYERS[tool](peers)
    first = started()
    DEPLOYERS[tool](peers)
    assert started() != first
    assert peers.differences() == []


def test_tutorial_grep_loop_prints_the_three_auth_flags(peers):
    deploy_with_k8sboot(peers)
    r = peers.run(["bash", str(ROOT / "bench/peers/grep_loop.sh"), "-F", str(peers.ssh_config), HOST])
    lines = [x for x in r.stdout.splitlines() if not x.startswith("==")]
    assert "--client-ca-file=/var/lib/kubernetes/ca.pem" in lines
    assert "--service-account-key-file=/var/lib/kubernetes/service-account.pem" in lines
    assert any(x.startswith("--anonymous-auth=") for x in lines)


def test_every_peer_ships_what_k8sboot_layout_lists():
    """The peers' file lists (bash, YAML, Python) name the same files as k8sboot.layout."""
    from k8sboot import layout

    names = [f.local_name for f in layout.CONTROLLER_FILES]
    kthw = (ROOT / "bench/peers/kthw_deploy.sh").read_text()
    playbook = (ROOT / "bench/peers/ansible/deploy.yml").read_text()
    for f in layout.CONTROLLER_FILES:
        assert f.local_name in kthw
        assert f"{{name: {f.local_name}, mode: \"{f.mode:04o}\"}}" in playbook
    assert [n for n, _ in benchlib.PKI_FILES] == names
    assert "ca-key.pem" not in kthw and "ca-key.pem" not in playbook
    assert os.access(ROOT / "bench/peers/kthw_deploy.sh", os.X_OK)
