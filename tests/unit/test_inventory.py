"""The inventory loader: what a valid file gives, and one clear line for every broken one."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from k8sboot.cli import app
from k8sboot.errors import ExitCode, InventoryError
from k8sboot.inventory import MAX_BYTES, load_inventory, parse_inventory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventory" / "cluster.yaml"
CORPUS = sorted((ROOT / "tests" / "corpus" / "inventory").glob("*.yaml"))


def expected(path: Path) -> tuple[int, str]:
    """Each corpus file starts with `# expect: LINE: MESSAGE-PREFIX` (LINE 0: no line number)."""
    head = path.read_bytes().split(b"\n", 1)[0].decode()
    m = re.match(r"# expect: (\d+): (.*)", head)
    assert m, f"{path.name} lacks its '# expect:' header"
    return int(m[1]), m[2]


def test_example_inventory_reads_as_the_tutorial_cluster():
    inv = load_inventory(EXAMPLE)
    assert inv.cluster.name == "k8s-scratch"
    assert inv.cluster.api_endpoint == "https://10.0.1.10:6443"
    assert inv.cluster.service_cidr == ipaddress.ip_network("10.32.0.0/24")
    assert str(inv.cluster.kubernetes_service_ip) == "10.32.0.1"
    assert inv.cluster.service_account_issuer == "https://10.0.1.10:6443"
    assert inv.cluster.api_audiences == ("https://10.0.1.10:6443",)
    assert inv.pki.subject == (("C", "VN"), ("OU", "k8s-scratch"))
    assert inv.pki.key_algorithm == "rsa-2048"
    assert inv.apiserver.anonymous_auth is False
    assert inv.apiserver.authorization_mode == ("Node", "RBAC")
    assert [h.name for h in inv.controllers] == ["controller-0", "controller-1", "controller-2"]
    assert [str(h.internal_ip) for h in inv.controllers] == ["10.0.1.10", "10.0.1.11", "10.0.1.12"]
    assert [h.name for h in inv.workers] == ["worker-0"]
    assert inv.ssh.identity_file == Path("~/.ssh/id_ed25519").expanduser()
    assert inv.where("controllers[1].internal_ip") == f"{EXAMPLE}:27"


def test_minimal_inventory_gets_the_documented_defaults(tmp_path):
    f = tmp_path / "min.yaml"
    f.write_text("cluster:\n  name: mini\n  api_endpoint: https://api.example.test:6443\n"
                 "  service_cidr: 10.96.0.0/12\ncontrollers:\n  - {name: c0, address: 192.0.2.10}\n")
    inv = load_inventory(f)
    assert inv.workers == ()
    assert inv.cluster.cluster_domain == "cluster.local"
    assert inv.cluster.service_account_issuer == "https://api.example.test:6443"
    assert inv.cluster.api_endpoint_host == "api.example.test"
    assert str(inv.controllers[0].internal_ip) == "192.0.2.10"
    assert inv.pki.dir == Path("pki") and inv.pki.ca_validity_days == 3650
    assert inv.pki.cert_validity_days == 365
    assert inv.apiserver.secure_port == 6443 and inv.apiserver.anonymous_auth is False
    assert inv.ssh.user is None and inv.ssh.port is None and inv.ssh.sudo is False   # ~/.ssh/config decides
    assert inv.ssh.user_or_default == "root" and inv.ssh.port_or_default == 22


@pytest.mark.parametrize("lines, user, port", [
    ("", None, None),
    ("  user: ops\n", "ops", None),
    ("  port: 2222\n", None, 2222),
    ("  user: ops\n  port: 2222\n", "ops", 2222),
    ("  user: ~\n  port: ~\n", None, None),          # null, as if absent
    ("  user: root\n  port: 22\n", "root", 22),     # said out loud: kept, so it overrides ~/.ssh/config
])
def test_ssh_user_and_port_are_none_unless_the_inventory_sets_them(tmp_path, lines, user, port):
    f = tmp_path / "inv.yaml"
    f.write_text("cluster:\n  name: mini\n  api_endpoint: https://api.example.test:6443\n"
                 "  service_cidr: 10.96.0.0/12\ncontrollers:\n  - {name: c0, address: 192.0.2.10}\n"
                 "ssh:\n  sudo: false\n" + lines)
    inv = load_inventory(f)
    assert (inv.ssh.user, inv.ssh.port) == (user, port)


def test_host_given_by_name_needs_an_internal_ip(tmp_path):
    f = tmp_path / "dns.yaml"
    f.write_text("cluster:\n  name: mini\n  api_endpoint: https://api.example.test:6443\n"
                 "  service_cidr: 10.96.0.0/12\ncontrollers:\n  - {name: c0, address: c0.example.test}\n")
    with pytest.raises(InventoryError, match=r"dns.yaml:6: controllers\[0\]: internal_ip is required"):
        load_inventory(f)


def test_extra_flags_keep_order_and_stringify_booleans(tmp_path):
    text = EXAMPLE.read_text().replace(
        "extra_flags: {}", "extra_flags: {audit-log-path: /var/log/audit.log, profiling: false}")
    inv = parse_inventory(text, Path("x.yaml"))
    assert inv.apiserver.extra_flags == (("audit-log-path", "/var/log/audit.log"), ("profiling", "false"))


def test_corpus_has_enough_broken_inventories():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_broken_inventory_gives_one_line_with_file_and_line(path):
    line, message = expected(path)
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    text = str(err.value)
    want = f"{path}:{line}: {message}" if line else f"{path}: {message}"
    assert text.startswith(want)
    assert "\n" not in text
    assert err.value.code == ExitCode.INVENTORY


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_broken_inventory_on_the_command_line_exits_3_without_traceback(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inventory", "check", "-i", str(path)])
    assert result.exit_code == ExitCode.INVENTORY
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[0].startswith(f"k8sboot: error: {path}")
    assert all(ln.startswith("  hint: ") for ln in lines[1:])
    assert list(tmp_path.iterdir()) == []


def test_huge_inventory_is_refused_before_parsing(tmp_path):
    f = tmp_path / "huge.yaml"
    f.write_bytes(b"# padding\n" * (MAX_BYTES // 10 + 10))
    with pytest.raises(InventoryError, match="larger than 1024 KiB"):
        load_inventory(f)


def test_missing_file_and_directory_are_clear_errors(tmp_path):
    with pytest.raises(InventoryError, match="no such inventory file"):
        load_inventory(tmp_path / "nope.yaml")
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


def test_inventory_check_prints_hosts_and_json():
    result = CliRunner().invoke(app, ["inventory", "check", "-i", str(EXAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    assert '"kubernetes_service_ip": "10.32.0.1"' in result.stdout
    assert '"name": "controller-2"' in result.stdout


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_any_bytes_give_an_inventory_or_our_error(raw):
    try:
        parse_inventory(raw, Path("fuzz.yaml"))
    except InventoryError:
        pass


_yamlish = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
              st.sampled_from(["10.0.1.10", "10.32.0.0/24", "https://10.0.1.10:6443", "controller-0"])),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["cluster", "name", "api_endpoint", "service_cidr", "controllers",
                                         "address", "internal_ip", "pki", "ssh", "port", "workers",
                                         "apiserver", "extra_flags", "subject", "C"]), children, max_size=5)),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yamlish)
def test_any_yaml_structure_gives_an_inventory_or_our_error(doc):
    import yaml

    try:
        parse_inventory(yaml.safe_dump(doc), Path("fuzz.yaml"))
    except InventoryError:
        pass
