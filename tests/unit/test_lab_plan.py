"""The lab's pure parts: names and addresses, the plan for `up`, the recipe hash, the mirror from
apt sources, nspawn's command line, the inventory it writes, what each role gets in its root (the
load balancer's HAProxy, the controllers' ready-delay drop-in), the prerequisite findings."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from pathlib import Path

import pytest

from k8sboot.inventory import parse_inventory
from k8sboot.lab import plan, prereq
from k8sboot.lab.plan import RootfsRecipe, build_host_specs, build_lab_plan
from k8sboot.lab.state import HostRecord, LabState


def test_controllers_then_workers_get_consecutive_addresses_from_10():
    specs = build_host_specs(3, 2)
    assert [(h.name, h.address) for h in specs] == [
        ("controller-0", "10.240.0.10"), ("controller-1", "10.240.0.11"), ("controller-2", "10.240.0.12"),
        ("worker-0", "10.240.0.13"), ("worker-1", "10.240.0.14")]


def test_every_address_stays_inside_the_lab_network_and_off_the_gateway():
    specs = build_host_specs(plan.MAX_HOSTS, 0)
    addrs = [ipaddress.IPv4Address(h.address) for h in specs]
    assert all(a in plan.NETWORK for a in addrs)
    assert plan.GATEWAY not in addrs and plan.NETWORK.broadcast_address not in addrs
    assert len(set(addrs)) == len(addrs)


def test_names_fit_the_kernels_limits_and_carry_the_prefix():
    for h in build_host_specs(100, 100):
        assert len(h.veth) <= 15 and h.veth.startswith(plan.VETH_PREFIX)
        assert h.netns.startswith(plan.PREFIX) and h.machine.startswith(plan.PREFIX)
    assert len(plan.BRIDGE) <= 15


def test_mac_is_fixed_per_address_and_locally_administered():
    assert plan.mac_for("10.240.0.10") == "02:00:0a:f0:00:0a"
    first_octet = int(plan.mac_for("10.240.0.200").split(":")[0], 16)
    assert first_octet & 0b10 and not first_octet & 0b1          # local, unicast


@pytest.mark.parametrize("controllers, workers, lbs", [(0, 0, 0), (-1, 0, 0), (1, -1, 0), (150, 51, 0),
                                                      (1, 0, -1), (1, 0, plan.MAX_LBS + 1)])
def test_impossible_counts_are_refused(controllers, workers, lbs):
    with pytest.raises(ValueError):
        build_host_specs(controllers, workers, lbs)


def test_the_load_balancer_is_lb_0_at_5_below_the_controllers_which_do_not_move():
    specs = build_host_specs(3, 1, 1)
    assert [(h.name, h.role, h.address) for h in specs] == [
        ("lb-0", "lb", "10.240.0.5"), ("controller-0", "controller", "10.240.0.10"),
        ("controller-1", "controller", "10.240.0.11"), ("controller-2", "controller", "10.240.0.12"),
        ("worker-0", "worker", "10.240.0.13")]
    lb = specs[0]
    assert (lb.veth, lb.netns, lb.machine, lb.mac) == ("k8sbv5", "k8sb-lb-0", "k8sb-lb-0", "02:00:0a:f0:00:05")
    assert specs[1:] == build_host_specs(3, 1)                      # same hosts, same addresses
    addrs = [h.address for h in build_host_specs(plan.MAX_HOSTS, 0, plan.MAX_LBS)]
    assert len(set(addrs)) == len(addrs) and str(plan.GATEWAY) not in addrs
    assert plan.parse_nspawn_machine(plan.build_nspawn_argv(lb)) == "k8sb-lb-0"


def test_up_with_lb_only_starts_lb_0_and_up_without_it_only_stops_lb_0():
    without = build_host_specs(3, 0)
    with_lb = build_host_specs(3, 0, 1)
    p = build_lab_plan(with_lb, {h.name: h for h in without})
    assert [h.name for h in p.start] == ["lb-0"] and not p.stop and len(p.keep) == 3
    p = build_lab_plan(without, {h.name: h for h in with_lb})
    assert [h.name for h in p.stop] == ["lb-0"] and not p.start and len(p.keep) == 3
    assert build_lab_plan(with_lb, {h.name: h for h in with_lb}).changes_nothing


def test_same_count_again_keeps_everything():
    specs = build_host_specs(3, 0)
    p = build_lab_plan(specs, {h.name: h for h in specs})
    assert p.changes_nothing and [h.name for h in p.keep] == ["controller-0", "controller-1", "controller-2"]


def test_a_larger_count_only_adds_hosts():
    running = {h.name: h for h in build_host_specs(3, 0)}
    p = build_lab_plan(build_host_specs(5, 0), running)
    assert [h.name for h in p.start] == ["controller-3", "controller-4"] and not p.stop
    assert len(p.keep) == 3


def test_a_smaller_count_stops_the_extra_hosts():
    running = {h.name: h for h in build_host_specs(3, 0)}
    p = build_lab_plan(build_host_specs(1, 0), running)
    assert [h.name for h in p.stop] == ["controller-1", "controller-2"] and not p.start


def test_a_worker_whose_address_moves_is_stopped_and_started_again():
    running = {h.name: h for h in build_host_specs(1, 1)}          # worker-0 at .11
    p = build_lab_plan(build_host_specs(2, 1), running)              # worker-0 now at .12
    assert [h.name for h in p.stop] == ["worker-0"]
    assert [(h.name, h.address) for h in p.start] == [("controller-1", "10.240.0.11"), ("worker-0", "10.240.0.12")]


def test_recorded_but_dead_hosts_are_cleaned_and_booted_again():
    specs = build_host_specs(2, 0)
    p = build_lab_plan(specs, running={"controller-0": specs[0]}, recorded={"controller-1": specs[1]})
    assert [h.name for h in p.stop] == ["controller-1"] and [h.name for h in p.start] == ["controller-1"]


def test_recipe_hash_is_stable_and_changes_with_the_recipe():
    r = RootfsRecipe()
    assert r.hash == RootfsRecipe().hash and len(r.hash) == 16
    assert replace(r, packages=r.packages + ("vim",)).hash != r.hash
    assert replace(r, files=r.files + (("/etc/x", 0o644, "x"),)).hash != r.hash
    assert replace(r, version=r.version + 1).hash != r.hash
    assert replace(r, packages=tuple(reversed(r.packages))).hash == r.hash      # order does not matter
    assert r.directory(Path("/base")) == Path(f"/base/bookworm-{r.hash}")


def test_recipe_has_what_the_stand_in_and_the_tests_need():
    need = {"systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "procps", "python3",
            "python3-cryptography", "python3-jwt", "sudo", "ca-certificates", "curl"}
    assert need <= set(plan.PACKAGES)
    files = {p: c for p, _, c in plan.ROOTFS_FILES}
    assert files["/etc/machine-id"] == ""                 # 0 bytes: a lone newline breaks nspawn
    assert files["/etc/resolv.conf"] == ""
    assert "PasswordAuthentication no" in files["/etc/ssh/sshd_config.d/k8sboot-lab.conf"]


def test_etcd_server_and_client_are_in_every_root_with_debians_etcd_service_disabled_and_no_default_data():
    r = RootfsRecipe()
    assert {"etcd-server", "etcd-client"} <= set(r.packages)
    assert "etcd.service" in r.disable and "etcd.service" not in r.enable + r.mask
    assert "/var/lib/etcd/default" in r.remove_globs
    assert not any("etcd" in link for links in plan.ROLE_LINKS.values() for pair in links for link in pair)


def test_haproxy_is_in_every_root_but_disabled_there_and_enabled_only_in_lb_0s():
    r = RootfsRecipe()
    assert "haproxy" in r.packages
    assert "haproxy.service" in r.disable and "haproxy.service" not in r.enable + r.mask
    assert replace(r, disable=()).hash != r.hash                  # part of what the cache is keyed by
    assert '"disable":["etcd.service","haproxy.service","nginx.service"]' in r.to_json()   # nginx: idp-0's
    link = ("/etc/systemd/system/multi-user.target.wants/haproxy.service", "/lib/systemd/system/haproxy.service")
    lb, c0, w0 = (h for h in build_host_specs(1, 1, 1))
    assert plan.ROLE_LINKS.get(lb.role) == (link,)
    assert plan.ROLE_LINKS.get(c0.role, ()) == () and plan.ROLE_LINKS.get(w0.role, ()) == ()


def test_debootstrap_argv_uses_the_given_mirror_and_the_package_cache():
    argv = plan.build_debootstrap_argv(RootfsRecipe(), Path("/t"), "http://mirror.example/debian", Path("/c"))
    assert argv[:2] == ["debootstrap", "--variant=minbase"]
    assert "--cache-dir=/c" in argv and argv[-3:] == ["bookworm", "/t", "http://mirror.example/debian"]


DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize("deb822, sources_list, expected", [
    (DEB822, None, "http://mirror.example/debian"),
    (DEB822.replace("Types: deb\nURIs: http://mirror.example/debian\n", "Types: deb-src\nURIs: http://src/\n"),
     None, None),
    (None, "# comment\ndeb http://security.example/debian-security bookworm-security main\n"
           "deb [arch=amd64] http://lists.example/debian bookworm main\n", "http://lists.example/debian"),
    ("Enabled: no\nTypes: deb\nURIs: http://off/\nSuites: bookworm\n", "deb http://on/debian bookworm main\n",
     "http://on/debian"),
    (None, None, None),
])
def test_mirror_comes_from_the_machines_apt_sources(deb822, sources_list, expected):
    assert plan.parse_apt_mirror(deb822, sources_list) == expected


def test_mirror_url_check():
    assert plan.check_mirror_url("http://m/debian") is None
    assert plan.check_mirror_url("ftp://m/debian") is not None


def test_nspawn_argv_meets_the_recipes_pitfalls():
    h = build_host_specs(1, 0)[0]
    argv = plan.build_nspawn_argv(h)
    for flag in ("--keep-unit", "--register=no", "--boot", "--resolv-conf=off", "--link-journal=no",
                 f"--network-namespace-path=/run/netns/{h.netns}", f"--machine={h.machine}",
                 f"--hostname={h.name}", f"--directory={h.root}"):
        assert flag in argv
    assert plan.parse_nspawn_machine(argv) == h.machine


def test_only_our_nspawns_are_recognised():
    assert plan.parse_nspawn_machine(["/usr/bin/systemd-nspawn", "--machine=k8sb-x", "--directory=/var/lib/m"]) is None
    assert plan.parse_nspawn_machine(["/usr/bin/systemd-nspawn", "--machine=other",
                                      f"--directory={plan.HOSTS_DIR}/x/root"]) is None
    assert plan.parse_nspawn_machine(["sleep", "--machine=k8sb-x"]) is None


def test_ssh_argv_is_strict_and_ignores_the_users_config():
    argv = plan.ssh_argv("10.240.0.10", "true", key=Path("/k"), known_hosts=Path("/kh"))
    joined = " ".join(argv)
    assert "-F /dev/null" in joined and "StrictHostKeyChecking=yes" in joined
    assert "UserKnownHostsFile=/kh" in joined and "BatchMode=yes" in joined and argv[-2:] == ["root@10.240.0.10", "true"]


def test_known_hosts_has_one_line_per_host_in_address_order():
    text = plan.render_known_hosts({"10.240.0.11": "ssh-ed25519 BBB", "10.240.0.9": "ssh-ed25519 AAA",
                                    "10.240.0.10": "ssh-ed25519 CCC"})
    assert text.splitlines() == ["10.240.0.9 ssh-ed25519 AAA", "10.240.0.10 ssh-ed25519 CCC",
                                 "10.240.0.11 ssh-ed25519 BBB"]


def test_inventory_is_a_valid_full_inventory_for_the_lab(tmp_path):
    text = plan.render_lab_inventory(build_host_specs(3, 1), Path("/var/lib/k8sboot/lab/id_ed25519"),
                                     Path("/run/k8sboot-lab/known_hosts"))
    assert text.startswith("# Generated by `k8sboot lab up`")
    inv = parse_inventory(text, tmp_path / "lab.yaml")
    assert inv.cluster.name == "k8sboot-lab"
    assert inv.cluster.api_endpoint == "https://10.240.0.10:6443"
    assert str(inv.cluster.service_cidr) == "10.32.0.0/24" and inv.cluster.cluster_domain == "cluster.local"
    assert inv.pki.dir == Path("pki") and inv.apiserver.anonymous_auth is False
    assert inv.apiserver.etcd_servers == ("https://10.240.0.10:2379", "https://10.240.0.11:2379",
                                          "https://10.240.0.12:2379")
    assert inv.ssh.user == "root" and inv.ssh.sudo is False
    assert inv.ssh.identity_file == Path("/var/lib/k8sboot/lab/id_ed25519")
    assert inv.ssh.known_hosts == Path("/run/k8sboot-lab/known_hosts")
    assert [(h.name, h.address) for h in inv.controllers] == [
        ("controller-0", "10.240.0.10"), ("controller-1", "10.240.0.11"), ("controller-2", "10.240.0.12")]
    assert [(h.name, str(h.internal_ip)) for h in inv.workers] == [("worker-0", "10.240.0.13")]


def test_inventory_with_the_load_balancer_dials_it_and_keeps_the_issuer_on_controller_0(tmp_path):
    text = plan.render_lab_inventory(build_host_specs(3, 0, 1), Path("/k"), Path("/kh"))
    inv = parse_inventory(text, tmp_path / "lab.yaml")
    assert inv.cluster.api_endpoint == "https://10.240.0.5:6443"
    assert inv.cluster.service_account_issuer == "https://10.240.0.10:6443"       # tokens stay valid
    assert inv.cluster.api_audiences == ("https://10.240.0.10:6443",)
    assert [(h.name, h.address, str(h.internal_ip)) for h in inv.load_balancers] == [
        ("lb-0", "10.240.0.5", "10.240.0.5")]
    assert [h.name for h in inv.controllers] == ["controller-0", "controller-1", "controller-2"]
    assert inv.apiserver.shutdown_delay_seconds == 3
    assert inv.apiserver.etcd_servers == ("https://10.240.0.10:2379", "https://10.240.0.11:2379",
                                          "https://10.240.0.12:2379")
    assert "load_balancers:\n  - {name: lb-0, address: 10.240.0.5, internal_ip: 10.240.0.5}\n" in text
    assert "  api_endpoint: https://10.240.0.5:6443\n" in text


def test_inventory_without_the_load_balancer_dials_controller_0_with_the_same_issuer_and_delay(tmp_path):
    with_lb = plan.render_lab_inventory(build_host_specs(3, 0, 1), Path("/k"), Path("/kh"))
    text = plan.render_lab_inventory(build_host_specs(3, 0), Path("/k"), Path("/kh"))
    inv = parse_inventory(text, tmp_path / "lab.yaml")
    assert inv.cluster.api_endpoint == inv.cluster.service_account_issuer == "https://10.240.0.10:6443"
    assert inv.load_balancers == () and inv.apiserver.shutdown_delay_seconds == 3
    # the line tests and users edit by hand, as written; only the endpoint (and its comment) and
    # the load_balancers list differ with the LB
    assert "\n  service_account_issuer: https://10.240.0.10:6443\n" in text
    def body(t: str) -> list[str]:
        return [ln for ln in t.splitlines() if not ln.lstrip().startswith("#")]

    assert [ln for ln in body(text) if ln not in body(with_lb)] == [
        "  api_endpoint: https://10.240.0.10:6443", "load_balancers: []"]


RELOAD_DROPIN = "/etc/systemd/system/kube-apiserver.service.d/k8sboot-lab-reload-interval.conf"


def test_ready_delay_drop_in_is_a_service_environment_line_only_on_controllers():
    lb, c0, w0 = build_host_specs(1, 1, 1)
    files = plan.build_role_files(c0, 2)
    assert [(p, m) for p, m, _ in files] == [
        (RELOAD_DROPIN, 0o644), ("/etc/systemd/system/kube-apiserver.service.d/k8sboot-lab-ready-delay.conf", 0o644)]
    body = [ln for ln in files[1][2].splitlines() if not ln.startswith("#")]
    assert body == ["[Service]", "Environment=K8SBOOT_STANDIN_READY_DELAY=2"]
    assert "ExecStart" not in files[1][2]                 # verify's ExecStart check never sees it
    assert [p for p, _, _ in plan.build_role_files(c0, 0)] == [p for p, _, _ in plan.build_role_files(c0)] == [
        RELOAD_DROPIN]
    assert plan.build_role_files(w0, 2) == () and plan.build_role_files(lb, 2) == ()


def test_every_lab_controller_reloads_its_serving_cert_every_two_seconds_through_a_drop_in_only():
    from k8sboot.standin import reload

    lb, c0, w0 = build_host_specs(1, 1, 1)
    (path, mode, text), = plan.build_role_files(c0)
    assert (path, mode) == (RELOAD_DROPIN, 0o644)
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == ["[Service]", "Environment=K8SBOOT_STANDIN_RELOAD_INTERVAL=2"]
    assert plan.RELOAD_INTERVAL_ENV == reload.RELOAD_INTERVAL_ENV          # the name the stand-in reads
    assert reload.parse_interval(body[1].split("=", 2)[2]) == 2.0
    assert "ExecStart" not in text                     # a rendered unit never holds it: verify never sees it
    assert not any(p == RELOAD_DROPIN for p, _, _ in plan.build_role_files(lb) + plan.build_role_files(w0))
    assert plan.render_ready_delay_dropin(0.25).endswith("Environment=K8SBOOT_STANDIN_READY_DELAY=0.25\n")


@pytest.mark.parametrize("seconds, text", [(0, "0"), (2, "2"), (2.0, "2"), (0.25, "0.25"), (1.5, "1.5"),
                                           (0.0001, "0"), (3600, "3600")])
def test_seconds_are_written_plainly(seconds, text):
    assert plan.format_seconds(seconds) == text


@pytest.mark.parametrize("seconds", [-1, -0.001, 3600.5, float("nan"), float("inf")])
def test_impossible_ready_delays_are_refused(seconds):
    with pytest.raises(ValueError, match="ready delay"):
        plan.render_ready_delay_dropin(seconds)


def _run_sync(tmp_path, seconds):
    """The sync script, run by a real sh on a temp path, with `systemctl` a recorder."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n')
    (bin_dir / "systemctl").chmod(0o755)
    path = tmp_path / "etc" / "kube-apiserver.service.d" / "k8sboot-lab-ready-delay.conf"
    r = subprocess.run(["sh", "-c", plan.render_ready_delay_sync(seconds, str(path))], capture_output=True,
                       text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    log = tmp_path / "systemctl.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return r.stdout.strip(), path, calls


def test_ready_delay_sync_writes_once_reloads_once_and_removes_for_zero(tmp_path):
    out, path, calls = _run_sync(tmp_path, 2)
    assert (out, calls) == ("changed", ["daemon-reload"])
    assert path.read_text() == plan.render_ready_delay_dropin(2) and oct(path.stat().st_mode)[-3:] == "644"
    assert _run_sync(tmp_path, 2)[::2] == ("unchanged", [])            # idempotent: no reload either
    out, _, calls = _run_sync(tmp_path, 0.5)
    assert (out, calls) == ("changed", ["daemon-reload"]) and "DELAY=0.5\n" in path.read_text()
    assert not list(path.parent.glob("*.tmp"))
    out, _, calls = _run_sync(tmp_path, 0)
    assert (out, calls) == ("changed", ["daemon-reload"])
    assert not path.exists() and not path.parent.exists()                # the empty .d dir goes too
    assert _run_sync(tmp_path, 0)[::2] == ("unchanged", [])


def test_ready_delay_removal_keeps_other_drop_ins(tmp_path):
    _run_sync(tmp_path, 2)
    other = tmp_path / "etc" / "kube-apiserver.service.d" / "other.conf"
    other.write_text("[Service]\n")
    assert _run_sync(tmp_path, 0)[0] == "changed"
    assert other.exists()


def test_up_result_counts_a_changed_ready_delay_as_a_change():
    from k8sboot.lab import UpResult

    base = dict(hosts=(), started=(), kept=("controller-0",), stopped=(), rootfs=Path("/r"), rootfs_built=False,
                inventory=Path("i"), inventory_written=False, seconds=0.1)
    assert UpResult(**base).changed_nothing
    assert not UpResult(**base, apiserver_ready_delay=2, reconfigured=("controller-0",)).changed_nothing


def test_state_round_trips():
    specs = build_host_specs(2, 0, 1)
    s = LabState(hosts={h.name: HostRecord(spec=h, pid=100 + i, starttime=5, cgroups=["/sys/fs/cgroup/x"],
                                           host_key="ssh-ed25519 AAA", rootfs="/r")
                        for i, h in enumerate(specs)}, mounted_nspawn_tmpfs=True, apiserver_ready_delay=2.5)
    back = LabState.from_json(s.to_json())
    assert back == s


def test_state_written_before_the_ready_delay_existed_reads_as_no_delay():
    import json

    raw = json.loads(LabState(hosts={}).to_json())
    del raw["apiserver_ready_delay"]
    assert LabState.from_json(json.dumps(raw)).apiserver_ready_delay == 0.0


@pytest.mark.parametrize("kw, problems, fix", [
    (dict(euid=1000), ["root"], "sudo k8sboot lab up"),
    (dict(which=lambda t: None if t in ("systemd-nspawn", "debootstrap") else f"/usr/bin/{t}"),
     ["systemd-nspawn", "debootstrap"], "apt-get install debootstrap systemd-container"),
    (dict(which=lambda t: None if t == "ssh" else f"/usr/bin/{t}"), ["ssh"], "apt-get install openssh-client"),
    (dict(overlayfs=False), ["overlayfs"], "modprobe overlay"),
])
def test_prereq_findings_name_what_is_missing_and_the_fix(kw, problems, fix, monkeypatch):
    monkeypatch.setattr(prereq.os, "access", lambda p, m: False)
    base = dict(euid=0, platform="linux", overlayfs=True, which=lambda t: f"/usr/bin/{t}")
    findings = prereq.check_prereqs(**{**base, **kw})
    assert [f.what for f in findings] == problems
    assert fix in prereq.render_fix(findings)


def test_prereq_on_another_os_says_linux():
    findings = prereq.check_prereqs(platform="darwin")
    assert [f.what for f in findings] == ["linux"]


def test_all_present_is_no_finding():
    assert prereq.check_prereqs(euid=0, platform="linux", overlayfs=True, which=lambda t: f"/usr/bin/{t}") == []


def test_a_lease_protects_the_lab_from_other_processes_only():
    import subprocess

    from k8sboot.errors import LockedError
    from k8sboot.lab import lease

    mine = lease.take_lease([], "this test", os.getpid())
    lease.check_free(mine, "take the lab down")                # the holder itself may
    other = subprocess.Popen(["sleep", "30"])
    try:
        theirs = lease.take_lease(mine, "another session", other.pid)
        assert [x["pid"] for x in theirs] == [os.getpid(), other.pid]
        with pytest.raises(LockedError, match=rf"in use by PID {other.pid} .*lease 'another session'"):
            lease.check_free(theirs, "take the lab down")
        lease.check_free(theirs, "take the lab down", force=True)
    finally:
        other.kill()
        other.wait()
    lease.check_free(theirs, "take the lab down")              # a dead holder's lease is ignored


def test_standin_byte_code_is_hash_checked_against_the_very_source_it_ships_with(tmp_path):
    """Compiled once per `lab up` for a root with this Python: no host compiles ~90 KB of source
    on the stand-in's first start. Hash-checked, so a host never runs byte code of other source."""
    import importlib.util
    import sys

    from k8sboot.lab import hosts

    root = tmp_path / "root"
    (root / "usr" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}").mkdir(parents=True)
    sources = hosts.standin_sources()
    code = hosts.standin_bytecode(sources, root)
    tag = sys.implementation.cache_tag
    assert {"standin/__init__.py", "standin/main.py", "authn/__init__.py", "rbac/escalation.py", "__init__.py"} <= set(sources)
    assert set(code) == {hosts.standin_pyc_path(name, tag) for name in sources}
    assert f"standin/__pycache__/main.{tag}.pyc" in code
    for name, data in sources.items():
        pyc = code[hosts.standin_pyc_path(name, tag)]
        assert pyc[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(pyc[4:8], "little") == 0b11          # hash-based and checked
        assert pyc[8:16] == importlib.util.source_hash(data)
    assert hosts.standin_bytecode(sources, tmp_path / "a-root-with-another-python") == {}


@pytest.mark.parametrize("args", [["--apiserver-ready-delay", "-1"], ["--apiserver-ready-delay", "3601"],
                                  ["--apiserver-ready-delay", "soon"], ["--lb", "yes"]])
def test_lab_up_refuses_a_bad_ready_delay_or_lb_value_before_touching_anything(args):
    from typer.testing import CliRunner

    from k8sboot.cli import app

    res = CliRunner().invoke(app, ["lab", "up", *args])
    assert res.exit_code == 2 and "Traceback" not in res.output
