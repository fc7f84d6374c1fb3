"""k8sboot.remote's scripts and parsers, run through a real local `sh` (no SSH, no paramiko)."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import tarfile

import pytest

from k8sboot import layout
from k8sboot import plan as P
from k8sboot.remote import (FactRequest, build_tar, facts_script, known_hosts_name, parse_facts, parse_jump,
                            parse_service, split_sections)
from k8sboot.verify import SECTIONS


def run_sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not shutil.which("sha256sum"), reason="coreutils missing")
def test_fact_script_runs_and_parses_with_base64_sections_and_missing_files():
    request = FactRequest(hashed=("/etc/hostname", "/nonexistent/k8sboot-file"), stat_only=("/etc",),
                          sections=(*SECTIONS, ("raw", "printf 'no newline'"), ("b64", "base64 -w0 /etc/hostname")))
    text = run_sh(facts_script(request))
    facts = parse_facts(text, request)
    host = facts.file("/etc/hostname")
    assert host.exists and host.kind == "file" and len(host.sha256) == 64 and host.mode is not None
    assert not facts.file("/nonexistent/k8sboot-file").exists
    assert facts.file("/etc").kind == "directory" and facts.file("/etc").sha256 is None
    assert facts.sections["raw"] == "no newline"
    assert base64.b64decode(facts.sections["b64"]) == open("/etc/hostname", "rb").read()
    assert set(facts.sections) == {name for name, _ in request.sections}


def test_parse_facts_refuses_truncated_output():
    with pytest.raises(ValueError):
        parse_facts("@@k8sboot:files\n", FactRequest(hashed=()))


def test_unit_text_round_trips_exactly():
    unit = "[Service]\nExecStart=/x \\\n  --a=1\n# no trailing newline"
    text = ("@@k8sboot:stat\n" f"{layout.UNIT_PATH}|regular file|644|root|root\n" "@@k8sboot:unit\n"
            + base64.b64encode(unit.encode()).decode() + "\n@@k8sboot:end\n")
    facts = parse_facts(text, FactRequest(hashed=(layout.UNIT_PATH,)))
    assert facts.unit_text == unit


def test_parse_service():
    svc = parse_service("ActiveState=activating\nSubState=auto-restart\nNRestarts=2\nMainPID=0\n"
                        "UnitFileState=enabled\nNeedDaemonReload=yes\nListening=no\nLoadState=loaded\n")
    assert (svc.active_state, svc.sub_state, svc.n_restarts, svc.is_enabled, svc.need_daemon_reload,
            svc.listening) == ("activating", "auto-restart", 2, True, True, False)
    assert P.classify_service(svc)[0] == P.FAILED


def test_split_sections_ignores_text_before_the_first_marker():
    assert split_sections("junk\n@@k8sboot:a\n1\n2\n@@k8sboot:end\n") == {"a": "1\n2", "end": ""}


def test_tar_holds_temp_names_with_each_files_final_mode_and_owner():
    desired = P.build_desired_files({f.local_name: b"x" for f in layout.CONTROLLER_FILES}, "unit\n")
    plan = P.build_host_plan(desired, P.HostFacts(files={}, service=P.ServiceFact()))
    with tarfile.open(fileobj=io.BytesIO(build_tar(plan.uploads))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [c.file.temp_path.lstrip("/") for c in plan.uploads]
    assert [m.mode for m in members] == [c.file.mode for c in plan.uploads]
    assert all(m.uid == 0 and (m.uname, m.gname) == ("root", "root") and m.isfile() for m in members)
    assert all("/." in "/" + m.name and m.name.endswith(".k8sboot-new") for m in members)
    keys = [m for m in members if m.name.endswith("-key.pem.k8sboot-new")]
    assert keys and all(m.mode == 0o600 for m in keys)


def _scratch_install(root, plan):
    """The install script's file part rooted in `root` (paths rewritten, no chown/systemctl, and
    tar keeps the archive's owner only when we are root)."""
    import os

    script = P.build_install_script(plan)
    script = script.replace(" /var/lib", f" {root}/var/lib").replace(" /etc/", f" {root}/etc/")
    script = script.replace("-C /", f"-C {root}")
    if os.geteuid() != 0:
        script = script.replace(" --same-owner", " --no-same-owner")
    return "\n".join(line for line in script.splitlines() if not line.startswith(("chown", "systemctl")))


@pytest.mark.skipif(not shutil.which("tar"), reason="tar missing")
def test_install_script_really_installs_into_a_scratch_root(tmp_path):
    """Run the install script's file part for real, rooted in tmp_path (paths rewritten)."""
    root = tmp_path
    desired = P.build_desired_files({f.local_name: f"data {f.local_name}\n".encode()
                                     for f in layout.CONTROLLER_FILES}, "unit\n")
    plan = P.build_host_plan(desired, P.HostFacts(files={}, service=P.ServiceFact()))
    (root / "etc/systemd/system").mkdir(parents=True)
    subprocess.run(["sh", "-c", _scratch_install(root, plan)], input=build_tar(plan.uploads), check=True)
    for f in desired:
        path = root / f.path.lstrip("/")
        assert path.read_bytes() == f.content
        assert path.stat().st_mode & 0o7777 == f.mode
    assert (root / "var/lib/kubernetes").stat().st_mode & 0o777 == 0o700
    assert not list(root.rglob("*.k8sboot-new"))


def test_jump_specs_and_known_hosts_names():
    assert parse_jump("controller-0", "root", 22, {"controller-0": "10.240.0.10"}).address == "10.240.0.10"
    j = parse_jump("ops@bastion:2222", "root")
    assert (j.user, j.address, j.port) == ("ops", "bastion", 2222)
    assert parse_jump("[fd00::1]:2200", "root").port == 2200
    assert known_hosts_name("10.0.0.1", 22) == "10.0.0.1"
    assert known_hosts_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"


def _fake_systemctl(tmp_path, show_output: str):
    """A `systemctl` on PATH that answers every `show` with `show_output` (the wait loop's view)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "systemctl"
    script.write_text(f"#!/bin/sh\ncat <<'X'\n{show_output}\nX\n")
    script.chmod(0o755)
    import os
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run_wait(tmp_path, show_output: str, port: int, bound: float = 1.0):
    import time
    env = _fake_systemctl(tmp_path, show_output)
    t0 = time.monotonic()
    out = subprocess.run(["sh", "-c", "set -eu\n" + P.wait_script(port, bound)], capture_output=True, text=True,
                         env=env, check=True).stdout
    _, mark, tail = out.partition(P.STATE_MARK + "\n")
    assert mark, out
    return parse_service(tail), time.monotonic() - t0


@pytest.mark.skipif(not __import__("os").path.exists("/proc/net/tcp"), reason="needs /proc/net/tcp")
def test_wait_script_stops_once_up_twice_with_the_same_pid(tmp_path):
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        port = listener.getsockname()[1]
        alive = __import__("os").getpid()       # a process that exists, as the unit's MainPID
        svc, seconds = _run_wait(tmp_path, f"ActiveState=active\nSubState=running\nNRestarts=0\nMainPID={alive}\n"
                                 "LoadState=loaded", port)
        gone, seconds_gone = _run_wait(tmp_path, "ActiveState=active\nSubState=running\nNRestarts=0\n"
                                       "MainPID=2147483647\nLoadState=loaded", port)
    finally:
        listener.close()
    assert svc.listening and P.classify_service(svc)[0] == P.UP
    assert seconds < 0.9      # two polls, not the whole bound
    assert seconds_gone > 0.9  # the reported MainPID is not alive: never called up, the bound ends it


@pytest.mark.skipif(not __import__("os").path.exists("/proc/net/tcp"), reason="needs /proc/net/tcp")
def test_wait_script_never_calls_a_changing_pid_up(tmp_path):
    """Listening, running, but a new MainPID on every look (a restart between looks): not stable,
    so the loop runs to its bound rather than stopping on a single look."""
    import os
    import socket
    import time
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\nprintf 'ActiveState=active\\nSubState=running\\nNRestarts=0\\n"
                                       "MainPID=%s\\nLoadState=loaded\\n' \"$(date +%N)\"\n")
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        t0 = time.monotonic()
        subprocess.run(["sh", "-c", P.wait_script(listener.getsockname()[1], 1)], env=env, check=True,
                       capture_output=True)
        seconds = time.monotonic() - t0
    finally:
        listener.close()
    assert seconds > 0.9


def test_wait_script_stops_at_once_on_a_crash_loop(tmp_path):
    svc, seconds = _run_wait(tmp_path, "ActiveState=activating\nSubState=auto-restart\nNRestarts=0\n"
                             "MainPID=0\nLoadState=loaded\nResult=exit-code", 1, bound=5)
    assert P.classify_service(svc)[0] == P.FAILED and seconds < 1


def test_wait_script_gives_up_after_the_bound_when_never_serving(tmp_path):
    svc, seconds = _run_wait(tmp_path, "ActiveState=active\nSubState=running\nNRestarts=0\nMainPID=42\n"
                             "LoadState=loaded", 1, bound=1)
    assert P.classify_service(svc)[0] == P.STARTING and 0.9 < seconds < 3.5


@pytest.mark.skipif(not shutil.which("tar"), reason="tar missing")
def test_install_cut_short_replaces_nothing_and_removes_what_it_staged(tmp_path):
    """A connection that drops mid-upload: tar reads a truncated archive and fails; the trap
    removes the staged files, every target keeps its old bytes, STAGED_MARK never printed."""
    root = tmp_path
    desired = P.build_desired_files({f.local_name: f"new {f.local_name}\n".encode() * 200
                                     for f in layout.CONTROLLER_FILES}, "unit\n")
    plan = P.build_host_plan(desired, P.HostFacts(files={}, service=P.ServiceFact()))
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "var/lib/kubernetes").mkdir(parents=True)
    for f in desired:
        (root / f.path.lstrip("/")).write_bytes(b"old\n")
    tar = build_tar(plan.uploads)
    r = subprocess.run(["sh", "-c", _scratch_install(root, plan)], input=tar[:len(tar) // 3], capture_output=True)
    assert r.returncode != 0 and P.STAGED_MARK.encode() not in r.stdout
    assert not list(root.rglob("*.k8sboot-new"))
    assert all((root / f.path.lstrip("/")).read_bytes() == b"old\n" for f in desired)


@pytest.mark.parametrize("stdout,stderr,message,hint", [
    ("", "tar: var/lib/kubernetes/.kubernetes.pem.k8sboot-new: Cannot write: No space left on device\n"
         "tar: Exiting with failure status due to previous errors\n",
     "c-0: installing files: no space left on device in /var/lib/kubernetes (writing kubernetes.pem); "
     "no file was replaced", "df -h /var/lib/kubernetes"),
    ("", "tar: etc/systemd/system/.kube-apiserver.service.k8sboot-new: Cannot open: Read-only file system\n",
     "c-0: installing files: read-only file system in /etc/systemd/system (writing kube-apiserver.service); "
     "no file was replaced", "remount /etc/systemd/system read-write on c-0"),
    (P.STAGED_MARK + "\n", "mv: cannot move '/var/lib/kubernetes/.ca.pem.k8sboot-new' to "
                           "'/var/lib/kubernetes/ca.pem': Permission denied\n",
     "c-0: installing files: permission denied in /var/lib/kubernetes (writing ca.pem); the renames had begun: "
     "each file is the old or the new version", "ssh.sudo: true"),
])
def test_install_failures_name_the_host_the_directory_and_the_cause(stdout, stderr, message, hint):
    from k8sboot.remote import explain_install_failure

    got, got_hint = explain_install_failure("c-0", stdout, stderr)
    assert got == message and hint in got_hint


def test_an_unknown_install_failure_is_left_to_the_generic_message():
    from k8sboot.remote import explain_install_failure

    assert explain_install_failure("c-0", "", "systemctl: something else\n") is None


def test_facts_as_a_non_root_user_without_sudo_are_refused_with_what_to_set():
    import os

    from k8sboot.errors import RemoteError
    from k8sboot.remote import ROOT_CHECK, check_root

    with pytest.raises(RemoteError) as info:
        check_root("@@k8sboot:not-root\nplain\n1000\n@@k8sboot:end\n", "c-0", "plain")
    assert info.value.message.startswith("c-0: connected as plain (uid 1000), not root, and ssh.sudo is off")
    assert "ssh.sudo: true" in info.value.hint
    out = run_sh(ROOT_CHECK + "echo @@k8sboot:end\n")
    assert ("@@k8sboot:not-root" in out) == (os.geteuid() != 0)
    if os.geteuid() == 0:
        check_root(out, "c-0", "root")     # root: no error


@pytest.mark.parametrize("raised", ["Error reading SSH protocol banner", "No existing session"])
def test_a_port_that_accepts_but_never_speaks_ssh_is_a_bounded_connect_error(raised):
    """paramiko says either, depending on which of its two waits (banner, handshake) ends first."""
    import paramiko

    from k8sboot.errors import ConnectError
    from k8sboot.model import SshSettings
    from k8sboot.remote import _translate_connect

    err = _translate_connect(paramiko.SSHException(raised), "c-0 (10.0.0.1:22)", SshSettings(connect_timeout=3),
                             "root", "10.0.0.1", 22)
    assert isinstance(err, ConnectError)
    assert err.message == ("c-0 (10.0.0.1:22): no SSH handshake within 3s: the port accepts connections but no "
                           "SSH server answers")
    assert "ssh.connect_timeout" in err.hint


def test_a_command_whose_connection_dies_says_so_with_a_rerun_hint():
    from k8sboot.errors import RemoteError
    from k8sboot.remote import SshRemote

    class Dead:
        user = "root"

        class transport:
            @staticmethod
            def open_session(timeout):
                raise EOFError()

            @staticmethod
            def is_active():
                return False

    with pytest.raises(RemoteError) as info:
        SshRemote("c-0", Dead(), sudo=False).exec("true", what="installing files")
    assert info.value.message == "c-0: installing files: the connection closed before the command finished"
    assert "old or the new version" in info.value.hint and "rerun" in info.value.hint


def test_ssh_connections_turn_nagle_off_so_a_small_message_never_waits_for_a_delayed_ack():
    """paramiko leaves Nagle on: every command then waited ~40 ms for the peer's delayed ACK."""
    import socket

    from k8sboot.remote import dial

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        sock = dial("127.0.0.1", listener.getsockname()[1], 2)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sock.close()
    finally:
        listener.close()


def test_a_closed_ssh_port_is_connection_refused_naming_the_host_and_what_to_check(tmp_path):
    import ipaddress
    import socket

    from k8sboot import remote
    from k8sboot.errors import ConnectError, ExitCode
    from k8sboot.model import Host, SshSettings

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                      # nothing listens there now
    ssh = SshSettings(port=port, known_hosts=tmp_path / "known_hosts", connect_timeout=3)
    with pytest.raises(ConnectError) as info:
        remote.connect(Host("c-0", "127.0.0.1", ipaddress.ip_address("127.0.0.1")), ssh)
    assert info.value.message == f"c-0 (127.0.0.1:{port}): connection refused"
    assert f"port {port}" in info.value.hint and info.value.code == ExitCode.CONNECT


@pytest.mark.skipif(not __import__("os").path.exists("/proc/net/tcp"), reason="needs /proc/net/tcp")
def test_the_cheap_listening_look_sees_a_listener_among_established_connections():
    """The shell look agrees with a full parse of /proc/net/tcp (any IPv4 address, LISTEN state),
    with established connections on the machine; other tests' servers may hold any port number
    on other addresses, so each answer is checked against that parse, not assumed."""
    import socket

    def truth(port: int) -> bool:
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        return any(r[3] == "0A" and int(r[1].rsplit(":", 1)[1], 16) == port for r in rows)

    def look(port: int) -> bool:
        return subprocess.run(["sh", "-c", P._listening_scan(port) + "listening\n"]).returncode == 0

    def agree(port: int) -> bool:
        """look == truth, judged only when the truth held still around the look: another
        process may start or stop listening on that port number between two reads."""
        for _ in range(20):
            before, seen, after = truth(port), look(port), truth(port)
            if before == after:
                return seen == before
        raise AssertionError(f"port {port}: the machine's listeners never held still")

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [listener.accept()[0] for _ in clients]
    try:
        assert look(port) and truth(port)
        ephemeral = clients[0].getsockname()[1]          # an established connection's port
        assert agree(ephemeral)
    finally:
        for s in (*clients, *accepted, listener):
            s.close()
    assert agree(port)


def _ssh_config(tmp_path, text: str):
    from k8sboot.model import SshSettings

    config = tmp_path / "ssh_config"
    config.write_text(text)
    return SshSettings(config_file=config, known_hosts=tmp_path / "known_hosts", connect_timeout=3)


def test_ssh_config_user_and_port_apply_when_the_inventory_is_silent(tmp_path):
    from dataclasses import replace

    from k8sboot.remote import ssh_endpoint

    ssh = _ssh_config(tmp_path, "Host ctl-*\n  User ops\n  Port 2222\nHost bastion\n  User jumper\n")
    assert ssh_endpoint(ssh, "ctl-0") == ("ops", 2222)
    assert ssh_endpoint(ssh, "bastion") == ("jumper", 22)
    assert ssh_endpoint(ssh, "10.0.0.9") == ("root", 22)                    # no block: root and 22
    assert ssh_endpoint(replace(ssh, user="admin"), "ctl-0") == ("admin", 2222)   # the inventory's wins
    assert ssh_endpoint(replace(ssh, port=2200), "ctl-0") == ("ops", 2200)
    assert ssh_endpoint(ssh, "ctl-0", "me", 2022) == ("me", 2022)         # a jump spec's user@host:port wins


def test_a_jump_host_without_user_or_port_takes_them_from_its_own_ssh_config_block(tmp_path):
    from dataclasses import replace

    from k8sboot.remote import Jump, _inventory_jump

    ssh = _ssh_config(tmp_path, "Host 10.240.0.10\n  User jumper\n  Port 2022\n")
    aliases = {"controller-0": "10.240.0.10"}
    assert _inventory_jump(replace(ssh, proxy_jump="controller-0"), aliases) == Jump("jumper", "10.240.0.10", 2022)
    assert _inventory_jump(replace(ssh, proxy_jump="ops@controller-0:22"), aliases) == Jump("ops", "10.240.0.10", 22)
    assert _inventory_jump(replace(ssh, proxy_jump="bastion", user="deployer"), {}) == Jump("deployer", "bastion", 22)


def test_a_bad_port_in_the_ssh_config_is_a_connect_error_naming_the_file(tmp_path):
    from k8sboot.errors import ConnectError
    from k8sboot.remote import ssh_endpoint

    ssh = _ssh_config(tmp_path, "Host ctl-0\n  Port twenty\n")
    with pytest.raises(ConnectError, match=r"ctl-0: the ssh config \(.*ssh_config\) gives Port 'twenty'"):
        ssh_endpoint(ssh, "ctl-0")


def test_connect_dials_the_port_the_ssh_config_names_when_the_inventory_has_none(tmp_path):
    """End to end without a server: the refusal names the ssh config's port, not 22."""
    import ipaddress
    import socket

    from k8sboot import remote
    from k8sboot.errors import ConnectError
    from k8sboot.model import Host

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                      # nothing listens there now
    ssh = _ssh_config(tmp_path, f"Host 127.0.0.1\n  Port {port}\n")
    with pytest.raises(ConnectError) as info:
        remote.connect(Host("c-0", "127.0.0.1", ipaddress.ip_address("127.0.0.1")), ssh)
    assert info.value.message == f"c-0 (127.0.0.1:{port}): connection refused"


def test_each_connection_gets_its_own_fabric_config_over_one_parsed_ssh_config(tmp_path):
    """Hosts are dialled in parallel threads: a Connection's config must be its own (invoke's
    Config re-merges itself when written to), while the ssh_config is parsed once and shared."""
    from k8sboot.model import SshSettings
    from k8sboot.remote import _fabric_config

    config = tmp_path / "ssh_config"
    config.write_text("Host c-*\n  User deployer\n  Port 2222\n")
    ssh = SshSettings(config_file=config, known_hosts=tmp_path / "known_hosts")
    one, two = _fabric_config(ssh, own=True), _fabric_config(ssh, own=True)
    assert one is not two and one is not _fabric_config(ssh)
    assert one.base_ssh_config is two.base_ssh_config is _fabric_config(ssh).base_ssh_config
    assert one.base_ssh_config.lookup("c-0")["user"] == "deployer"
    rules = len(_fabric_config(ssh).base_ssh_config._config)
    _fabric_config(ssh, own=True)
    assert len(_fabric_config(ssh).base_ssh_config._config) == rules      # not parsed again
    one.connect_kwargs["look_for_keys"] = False                           # a write to one config
    assert "look_for_keys" not in two.connect_kwargs
