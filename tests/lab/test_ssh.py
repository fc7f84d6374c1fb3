"""SSH on real lab hosts: strict host keys (unknown, changed, trust on first use), a non-root user
with sudo, a jump host (also for verify --probe), User/Port from an ssh config file, and a
command whose stderr outgrows the channel window."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from k8sboot.errors import ExitCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import LabEnv, expected_files  # noqa: E402

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(lab_hosts, tmp_path_factory):
    hosts = list(lab_hosts)[:3]
    for h in hosts:          # a fresh start; also refuses (LOCKED) while another session holds the lab
        h.reset()
    e = LabEnv(hosts, tmp_path_factory.mktemp("ssh"))
    e.gen_certs()
    e.ensure_etcd()          # what the API servers store in, and what deploy-apiserver checks first
    e.dirty = set()
    yield e
    for h in hosts:          # every host: etcd runs on all of them
        h.reset()


def test_unknown_host_key_is_refused_with_the_keyscan_line(env, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = env.write_inventory(tmp_path / "inv.yaml", known_hosts=known)
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-0", "--dry-run")
    assert res.exit_code == ExitCode.HOST_KEY, res.output
    h = env.hosts[0]
    assert "host key not in" in res.output
    assert f"ssh-keyscan -p 22 {h.address} >> {known}" in res.output
    assert known.read_text() == "" and "Traceback" not in res.output


def test_changed_host_key_is_refused_with_the_ssh_keygen_line_even_with_accept_new(env, tmp_path):
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    h = env.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text(f"{h.address} {key.with_suffix('.pub').read_text().split()[0]} "
                     f"{key.with_suffix('.pub').read_text().split()[1]}\n")
    inv = env.write_inventory(tmp_path / "inv.yaml", known_hosts=known)
    for extra in ((), ("--accept-new-host-keys",)):
        res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-0", "--dry-run", *extra)
        assert res.exit_code == ExitCode.HOST_KEY, res.output
        assert "HOST KEY CHANGED" in res.output
        assert f"ssh-keygen -f {known} -R '{h.address}'" in res.output


def test_accept_new_host_keys_trusts_on_first_use_once(env, tmp_path):
    known = tmp_path / "sub" / "known_hosts"
    inv = env.write_inventory(tmp_path / "inv.yaml", known_hosts=known)
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--dry-run", "--accept-new-host-keys")
    assert res.exit_code == 0, res.output
    lines = known.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(h.address for h in env.hosts)
    assert (known.stat().st_mode & 0o777) == 0o600
    real = {line.split()[0]: line.split()[2] for line in env.known_hosts.read_text().splitlines() if line.strip()}
    for line in lines:
        assert line.split()[2] == real[line.split()[0]]      # the hosts' real keys were recorded
    again = env.k8sboot("deploy-apiserver", "-i", inv, "--dry-run")       # no flag needed now
    assert again.exit_code == 0, again.output
    assert known.read_text().splitlines() == lines                        # nothing added twice


def _make_sudo_user(env, host, user: str, nopasswd: bool = True):
    env.dirty.add(host.name)
    rule = "NOPASSWD: ALL" if nopasswd else "ALL"
    env.ssh(host, f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh {user}; "
                  f"mkdir -p /home/{user}/.ssh && cp /root/.ssh/authorized_keys /home/{user}/.ssh/ && "
                  f"chown -R {user}:{user} /home/{user}/.ssh && chmod 700 /home/{user}/.ssh && "
                  f"echo '{user} ALL=(ALL) {rule}' > /etc/sudoers.d/{user} && chmod 0440 /etc/sudoers.d/{user}")


def test_non_root_user_with_sudo_deploys_root_owned_files(env, tmp_path):
    host = env.host("controller-2")
    _make_sudo_user(env, host, "deployer")
    inv = env.write_inventory(tmp_path / "inv.yaml", user="deployer", sudo=True)
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-2", "--json")
    assert res.exit_code == 0, res.output
    assert env.remote_files(host) == expected_files(env, host)
    assert env.service(host)["ActiveState"] == "active"
    again = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-2")
    assert again.exit_code == 0 and "already up to date" in again.output
    res = env.k8sboot("verify", "-i", inv, "--host", "controller-2")
    assert res.exit_code == 0, res.output
    # the user cannot read the keys itself: everything went through sudo
    out = env.ssh(host, "su deployer -c 'cat /var/lib/kubernetes/kubernetes-key.pem' 2>&1; true")
    assert "Permission denied" in out


def test_sudo_that_wants_a_password_is_a_clear_error(env, tmp_path):
    host = env.host("controller-2")
    _make_sudo_user(env, host, "asker", nopasswd=False)
    inv = env.write_inventory(tmp_path / "inv.yaml", user="asker", sudo=True)
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-2")
    assert res.exit_code != 0
    assert "sudo -n failed" in res.output and "NOPASSWD" in res.output and "Traceback" not in res.output


def test_jump_host_controller_0_to_controller_1(env, tmp_path):
    jump, target = env.host("controller-0"), env.host("controller-1")
    env.dirty.update({jump.name, target.name})
    inv = env.write_inventory(tmp_path / "inv.yaml", proxy_jump="controller-0")
    since = env.ssh(target, "date +%s").strip()
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-1", "--json")
    assert res.exit_code == 0, res.output
    log = env.ssh(target, f"journalctl --since @{since} -u ssh.service --no-pager -o cat; true")
    assert f"Accepted publickey for root from {jump.address}" in log, log
    assert env.service(target)["ActiveState"] == "active"


def test_ssh_config_host_alias_and_identity_file_are_respected(env, tmp_path):
    target = env.host("controller-1")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host ctl-one\n  HostName {target.address}\n  IdentityFile {env.identity_file}\n"
                      "  IdentitiesOnly yes\n")
    inv = env.write_inventory(tmp_path / "inv.yaml")
    text = inv.read_text().replace(f"identity_file: {env.identity_file}\n", f"config_file: {config}\n")
    text = text.replace(f"{{name: controller-1, address: {target.address},", "{name: controller-1, address: ctl-one,")
    inv.write_text(text)
    assert "ctl-one" in text and "identity_file" not in text
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-1", "--dry-run")
    assert res.exit_code == 0, res.output


def test_unreachable_host_times_out_with_a_connect_error(env, tmp_path):
    inv_text = env.inventory.read_text()
    inv = tmp_path / "inv.yaml"
    inv.write_text(inv_text.replace(f"address: {env.hosts[2].address}", "address: 10.240.0.251"))
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-2", "--dry-run")
    assert res.exit_code == ExitCode.CONNECT, res.output
    assert "controller-2 (10.240.0.251:22)" in res.output and "Traceback" not in res.output


# --- one SshRemote, straight through k8sboot.remote.connect --------------------------------------


def _remote(env, host, **ssh):
    from k8sboot import remote
    from k8sboot.model import Host, SshSettings

    settings = SshSettings(user="root", identity_file=env.identity_file, known_hosts=env.known_hosts,
                           connect_timeout=5, **ssh)
    return remote.connect(Host(host.name, host.address, ipaddress.ip_address(host.address)), settings)


MIB = 1 << 20
# stdout, then 8 MiB on stderr (4x paramiko's 2 MiB channel window), then stdout again
LOUD = (f"head -c {MIB} /dev/zero | tr '\\0' o; head -c {8 * MIB} /dev/zero | tr '\\0' e >&2; "
        f"head -c {MIB // 2} /dev/zero | tr '\\0' O")


def test_a_command_writing_mib_to_stderr_between_its_stdout_is_read_whole_on_both(env):
    """Reading stdout to its end first stalled here: stderr filled the window, the command blocked
    writing it and stdout never ended (the bound, `timeout`, then said "timed out")."""
    r = _remote(env, env.hosts[0])
    try:
        result = r.exec(LOUD + "; exit 3", timeout=30, what="writing a lot to stderr")
    finally:
        r.close()
    assert result.rc == 3
    assert result.stdout == b"o" * MIB + b"O" * (MIB // 2)
    assert result.stderr == b"e" * (8 * MIB)


def test_the_deploy_lock_read_goes_past_mib_of_stderr_and_its_error_path_reads_them_whole(env):
    from k8sboot.errors import RemoteError

    r = _remote(env, env.hosts[0])
    try:     # the lock held, facts read up to the end mark, with stderr in between
        text = r._lock_and_read(LOUD + "; echo; echo @@k8sboot:end\n", wait=5)
        assert text == "o" * MIB + "O" * (MIB // 2) + "\n@@k8sboot:end\n"
    finally:
        r.close()
    r = _remote(env, env.hosts[0])
    try:     # no end mark: the error path waits for the exit and reads all of stderr
        with pytest.raises(RemoteError) as info:
            r._lock_and_read(LOUD + "; echo last words >&2; exit 4\n", wait=5)
    finally:
        r.close()
    assert "failed (exit 4)" in info.value.message and info.value.message.endswith("last words")


# --- User and Port from an ssh config file when the inventory names neither ----------------------


def _silent_inventory(env, path: Path, config: Path, known_hosts: Path, *, sudo: bool) -> Path:
    """The env's inventory without ssh.user/ssh.port, with ssh.config_file."""
    inv = env.write_inventory(path, known_hosts=known_hosts, sudo=sudo)
    text = inv.read_text().replace("  user: root\n", "").replace("  port: 22\n", "")
    text = text.replace("ssh:\n", f"ssh:\n  config_file: {config}\n", 1)
    assert "\n  user:" not in text and "\n  port:" not in text
    inv.write_text(text)
    return inv


def test_user_and_port_come_from_the_ssh_config_file_when_the_inventory_is_silent(env, tmp_path):
    host = env.host("controller-2")
    _make_sudo_user(env, host, "deployer")
    env.ssh(host, "printf 'Port 22\\nPort 2222\\n' > /etc/ssh/sshd_config.d/k8sboot-test.conf && "
                  "systemctl restart ssh.service")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host {host.address}\n  User deployer\n  Port 2222\n")
    # known_hosts knows the host only as [address]:2222: a connection to port 22 would be refused
    known = tmp_path / "known_hosts"
    keys = [line.split(None, 1)[1] for line in env.known_hosts.read_text().splitlines()
            if line.split() and line.split()[0] == host.address]
    known.write_text("".join(f"[{host.address}]:2222 {k}\n" for k in keys))
    args = ("deploy-apiserver", "--hosts", "controller-2", "--dry-run")

    # without sudo, the fact command's root check names who the connection logged in as
    res = env.k8sboot(*args, "-i", _silent_inventory(env, tmp_path / "a.yaml", config, known, sudo=False))
    assert res.exit_code != 0 and "connected as deployer" in res.output, res.output
    assert "Traceback" not in res.output
    # deployer with sudo: through
    res = env.k8sboot(*args, "-i", _silent_inventory(env, tmp_path / "b.yaml", config, known, sudo=True))
    assert res.exit_code == 0, res.output
    # the inventory's own ssh.user wins over the config's User (the config's Port still applies)
    explicit = tmp_path / "c.yaml"
    text = _silent_inventory(env, explicit, config, known, sudo=False).read_text()
    explicit.write_text(text.replace("ssh:\n", "ssh:\n  user: root\n", 1))
    res = env.k8sboot(*args, "-i", explicit)
    assert res.exit_code == 0, res.output


# --- verify --probe through the jump host --------------------------------------------------------


@contextlib.contextmanager
def _no_direct_https(address: str, port: int = 6443):
    """The workstation's own packets to address:port refused (the jump host's are not: they
    never pass this machine's OUTPUT chain), as on a network where only the bastion reaches it."""
    rule = ["OUTPUT", "-o", "k8sb-br0", "-d", address, "-p", "tcp", "--dport", str(port),
            "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(["iptables-legacy", "-w", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables-legacy", "-w", "-D", *rule], capture_output=True)


def test_verify_probe_dials_through_the_jump_host(env, tmp_path):
    import json

    jump, target = env.host("controller-0"), env.host("controller-1")
    env.dirty.update({jump.name, target.name})
    inv = env.write_inventory(tmp_path / "inv.yaml", proxy_jump="controller-0")
    res = env.k8sboot("deploy-apiserver", "-i", inv, "--hosts", "controller-1", "--wait", "30")
    assert res.exit_code == 0, res.output
    with _no_direct_https(target.address):
        direct = env.k8sboot("verify", "-i", env.inventory, "--host", "controller-1", "--probe", "--json")
        res = env.k8sboot("verify", "-i", inv, "--host", "controller-1", "--probe", "--json")
    # without the jump host the probes cannot get there: the rule works
    probes = {c["check"]: c for c in json.loads(direct.stdout)["hosts"][0]["checks"] if c["check"].startswith("probe")}
    assert probes["probe: no credential"]["actual"] == "None", probes
    # through it, every probe gets its answer
    assert res.exit_code == 0, res.output
    probes = {c["check"]: c for c in json.loads(res.stdout)["hosts"][0]["checks"] if c["check"].startswith("probe")}
    assert probes["probe: no credential"]["actual"] == "401"
    assert probes["probe: bogus bearer token"]["actual"] == "401"
    assert probes["probe: admin cert (SelfSubjectReview)"]["actual"] == "admin"
