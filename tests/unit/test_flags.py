"""k8sboot.flags: the kube-apiserver command line, computed once, from the layout's paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot.errors import ExitCode, InventoryError
from k8sboot.flags import (AUTH_FLAGS, TUTORIAL_GREP_COMMAND, auth_subset, build_apiserver_flags,
                           parse_argv_flags, parse_proc_cmdline, parse_systemctl_exec_start,
                           parse_unit_exec_start, systemd_escape_arg, tutorial_grep)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import make_inventory, planned_unit  # noqa: E402

# DESIGN.md's list ("On each controller"), with the two graceful-stop flags of its "Day 2" section
DESIGN_ORDER = [
    "advertise-address", "allow-privileged", "anonymous-auth", "authorization-mode", "bind-address",
    "client-ca-file", "enable-admission-plugins", "encryption-provider-config", "etcd-cafile",
    "etcd-certfile", "etcd-keyfile", "etcd-servers", "kubelet-certificate-authority",
    "kubelet-client-certificate", "kubelet-client-key", "runtime-config", "secure-port",
    "service-account-key-file", "service-account-signing-key-file", "service-account-issuer",
    "service-account-extend-token-expiration", "service-account-max-token-expiration", "service-cluster-ip-range", "service-node-port-range", "shutdown-delay-duration",
    "shutdown-send-retry-after", "tls-cert-file", "tls-private-key-file", "v",
]


def flags_of(inv, host="controller-1"):
    return build_apiserver_flags(inv, inv.controller(host))


def test_flags_are_exactly_the_design_list_in_order():
    assert [name for name, _ in flags_of(make_inventory())] == DESIGN_ORDER


def test_values_come_from_the_inventory_and_the_host():
    f = dict(flags_of(make_inventory(), "controller-1"))
    assert f["advertise-address"] == "10.240.0.11"
    assert f["service-account-issuer"] == "https://10.240.0.10:6443"
    assert f["service-cluster-ip-range"] == "10.32.0.0/24"
    assert f["etcd-servers"] == "https://10.240.0.10:2379"
    assert f["authorization-mode"] == "Node,RBAC"
    assert f["secure-port"] == "6443"
    assert f["enable-admission-plugins"] == ("NamespaceLifecycle,NodeRestriction,LimitRanger,ServiceAccount,"
                                             "DefaultStorageClass,ResourceQuota")


@pytest.mark.parametrize("anonymous,expected", [(False, "false"), (True, "true")])
def test_anonymous_auth_is_always_explicit(anonymous, expected):
    assert dict(flags_of(make_inventory(anonymous=anonymous)))["anonymous-auth"] == expected


def test_every_file_flag_points_into_the_layout_and_is_shipped():
    shipped = {f.path for f in layout.CONTROLLER_FILES}
    for name, value in flags_of(make_inventory()):
        if value.startswith("/"):
            assert value in shipped, f"--{name}={value} is not in layout.CONTROLLER_FILES"
    assert not any("ca-key" in v for _, v in flags_of(make_inventory()))


def test_issuer_and_signing_key_are_always_rendered():
    f = dict(flags_of(make_inventory()))
    assert f["service-account-signing-key-file"] == "/var/lib/kubernetes/service-account-key.pem"
    assert f["service-account-key-file"] == "/var/lib/kubernetes/service-account.pem"
    assert f["service-account-issuer"]


def test_extra_flags_add_new_flags_at_the_end():
    f = flags_of(make_inventory(extra_flags={"audit-log-path": "/var/log/audit.log", "profiling": False}))
    assert f[-2:] == (("audit-log-path", "/var/log/audit.log"), ("profiling", "false"))


def test_extra_flags_may_change_a_non_auth_flag_in_place():
    f = flags_of(make_inventory(extra_flags={"v": 4}))
    assert [n for n, _ in f] == DESIGN_ORDER
    assert dict(f)["v"] == "4"


@pytest.mark.parametrize("flag", ["anonymous-auth", "client-ca-file", "service-account-key-file",
                                  "tls-cert-file", "authorization-mode", "service-account-issuer"])
def test_extra_flags_may_not_override_an_auth_flag(flag):
    inv = make_inventory(extra_flags={flag: "x"})
    with pytest.raises(InventoryError) as err:
        flags_of(inv)
    msg = str(err.value)
    assert f"apiserver.extra_flags.{flag}" in msg and "inv.yaml:" in msg
    assert err.value.code == ExitCode.INVENTORY


def test_extra_flags_may_not_drop_an_auth_flag_with_an_empty_value():
    with pytest.raises(InventoryError, match="drop the authentication flag --client-ca-file"):
        flags_of(make_inventory(extra_flags={"client-ca-file": ""}))


def test_restating_an_auth_flag_with_the_same_value_is_allowed():
    inv = make_inventory(extra_flags={"anonymous-auth": False})
    assert dict(flags_of(inv))["anonymous-auth"] == "false"


def test_dropping_a_rendered_non_auth_flag_is_refused():
    with pytest.raises(InventoryError, match="would drop --v"):
        flags_of(make_inventory(extra_flags={"v": ""}))


def test_audiences_flag_only_when_they_differ_from_the_issuer():
    inv = make_inventory(apiserver_extra="")
    assert "api-audiences" not in dict(flags_of(inv))


def test_without_etcd_servers_every_controller_s_etcd_member_is_dialled():
    """The members `k8sboot deploy-etcd` runs, one per controller, on its internal IP: an API
    server then survives the loss of any one of them (KTHW lists all three the same way)."""
    from dataclasses import replace
    inv = make_inventory()
    inv = replace(inv, apiserver=replace(inv.apiserver, etcd_servers=()))
    assert dict(flags_of(inv))["etcd-servers"] == ",".join(
        f"https://{h.internal_ip}:2379" for h in inv.controllers)
    assert len(inv.controllers) == 3
    with pytest.raises(InventoryError, match="etcd_servers"):
        build_apiserver_flags(replace(inv, controllers=()), inv.controllers[0])


def test_tutorial_grep_on_the_rendered_unit_prints_the_three_flags():
    text = planned_unit(make_inventory())
    assert tutorial_grep(text) == [
        "--anonymous-auth=false",
        "--client-ca-file=/var/lib/kubernetes/ca.pem",
        "--service-account-key-file=/var/lib/kubernetes/service-account.pem",
    ]
    assert TUTORIAL_GREP_COMMAND == ('grep -oE "\\-\\-(client-ca-file|service-account-key-file|anonymous-auth)'
                                     '[^ ]*" /etc/systemd/system/kube-apiserver.service')


def test_unit_exec_start_parses_back_to_the_same_flags():
    inv = make_inventory(extra_flags={"audit-log-path": "/var/log/a b%.log"})
    text = planned_unit(inv)
    argv = parse_unit_exec_start(text)
    assert argv[0] == layout.BINARY_PATH
    assert parse_argv_flags(argv) == flags_of(inv, "controller-0")


def test_systemd_escaping():
    assert systemd_escape_arg("--a=b") == "--a=b"
    assert systemd_escape_arg("--a=50%") == "--a=50%%"
    assert systemd_escape_arg("--a=$HOME") == "--a=$$HOME"
    assert systemd_escape_arg("--a=x y") == '"--a=x y"'


def test_systemctl_show_and_proc_cmdline_parsers():
    show = ("ExecStart={ path=/usr/local/bin/kube-apiserver ; argv[]=/usr/local/bin/kube-apiserver "
            "--anonymous-auth=false --v=2 ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; "
            "pid=0 ; code=(null) ; status=0/0 }")
    assert parse_systemctl_exec_start(show) == ["/usr/local/bin/kube-apiserver", "--anonymous-auth=false", "--v=2"]
    assert parse_systemctl_exec_start("ExecStart=") is None
    assert parse_proc_cmdline(b"/bin/x\0--a=1\0--b=2\0") == ["/bin/x", "--a=1", "--b=2"]
    assert parse_argv_flags(["/bin/x", "--a", "1", "--b", "--c=3"]) == (("a", "1"), ("b", "true"), ("c", "3"))


def test_auth_subset_names_every_auth_flag():
    subset = auth_subset(flags_of(make_inventory()))
    assert set(subset) == set(AUTH_FLAGS) - {"api-audiences"} | {"service-account-extend-token-expiration",
                                                                  "service-account-max-token-expiration"}


@pytest.mark.parametrize("setting, max_exp, extend", [
    ("", "24h", "false"),                                           # bounded by default (CIS 1.2.30)
    ("  service_account_max_token_expiration: 90m\n", "90m", "false"),
    ("  service_account_max_token_expiration: 7200\n", "2h", "false"),
    ("  service_account_extend_token_expiration: true\n  service_account_max_token_expiration: 8760h\n",
     "8760h", "true"),
])
def test_token_lifetimes_come_from_the_inventory(setting, max_exp, extend):
    f = dict(flags_of(make_inventory(apiserver_extra=setting)))
    assert f["service-account-max-token-expiration"] == max_exp
    assert f["service-account-extend-token-expiration"] == extend


@pytest.mark.parametrize("setting, fragment", [
    ("  service_account_max_token_expiration: 30m\n", "1800s is out of range (3600s to 4294967296s)"),
    ("  service_account_max_token_expiration: 1d\n", "'1d' is not a duration in whole seconds"),
])
def test_token_lifetime_errors_name_the_line_and_the_bounds(setting, fragment):
    with pytest.raises(InventoryError, match="apiserver.service_account_max_token_expiration") as exc:
        make_inventory(apiserver_extra=setting)
    assert fragment in str(exc.value) and ":" in str(exc.value).split(" ")[0]


def test_extra_flags_may_restate_but_not_change_a_token_lifetime():
    same = flags_of(make_inventory(extra_flags={"service-account-max-token-expiration": "24h"}))
    assert dict(same)["service-account-max-token-expiration"] == "24h"
    with pytest.raises(InventoryError, match="comes from the inventory's apiserver section") as exc:
        flags_of(make_inventory(extra_flags={"service-account-max-token-expiration": "48h"}))
    assert "apiserver.service_account_max_token_expiration" in exc.value.hint


@pytest.mark.parametrize("setting, rendered", [("", "15s"), ("  shutdown_delay_duration: 3\n", "3s"),
                                               ("  shutdown_delay_duration: 1m30s\n", "90s"),
                                               ("  shutdown_delay_duration: 0s\n", "0s")])
def test_the_shutdown_delay_comes_from_the_inventory_and_retry_after_is_always_on(setting, rendered):
    f = dict(flags_of(make_inventory(apiserver_extra=setting)))
    assert f["shutdown-delay-duration"] == rendered
    assert f["shutdown-send-retry-after"] == "true"


def test_extra_flags_may_change_the_stop_durations_in_place():
    f = flags_of(make_inventory(extra_flags={"shutdown-delay-duration": "1m30s", "request-timeout": "500ms",
                                             "shutdown-send-retry-after": False}))
    assert dict(f)["shutdown-delay-duration"] == "1m30s" and dict(f)["shutdown-send-retry-after"] == "false"
    assert f[-1] == ("request-timeout", "500ms")


@pytest.mark.parametrize("flag, value", [("shutdown-delay-duration", "15"), ("shutdown-delay-duration", "1d"),
                                         ("shutdown-delay-duration", "-1s"), ("request-timeout", "5ns"),
                                         ("request-timeout", "soon")])
def test_a_stop_duration_kube_apiserver_or_systemd_cannot_read_is_an_inventory_error(flag, value):
    with pytest.raises(InventoryError) as err:
        flags_of(make_inventory(extra_flags={flag: value}))
    assert "inv.yaml:" in str(err.value)
    assert f"apiserver.extra_flags.{flag}: '{value}' is not a duration" in str(err.value)
    assert err.value.code == ExitCode.INVENTORY
