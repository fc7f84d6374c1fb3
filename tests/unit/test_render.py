"""k8sboot.render: the unit from the template; golden files; systemd-analyze verify; errors name file:line.

Regenerate the golden files on purpose, then review the diff:
    K8SBOOT_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit/test_render.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot.errors import ExitCode, TemplateError
from k8sboot.render import UNIT_TEMPLATE, packaged_templates_dir, render_all, render_unit, templates_dir_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import make_inventory  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = {
    "kube-apiserver.controller-0.service": dict(),
    "kube-apiserver.controller-1.anonymous.service": dict(anonymous=True),
    "kube-apiserver.controller-2.extra-flags.service": dict(
        extra_flags={"audit-log-path": "/var/log/audit.log", "v": 4,
                     "service-account-extend-token-expiration": False}),
    # TimeoutStopSec follows the inventory's shutdown delay and an extra_flags --request-timeout
    "kube-apiserver.controller-0.long-drain.service": dict(
        apiserver_extra="  shutdown_delay_duration: 1m30s\n", extra_flags={"request-timeout": "2m"}),
}


def _host_of(name: str) -> str:
    return name.split(".")[1]


@pytest.mark.parametrize("golden", sorted(CASES))
def test_rendered_unit_matches_golden_file(golden):
    inv = make_inventory(**CASES[golden])
    text = render_unit(inv, inv.controller(_host_of(golden))).text
    path = GOLDEN / golden
    if os.environ.get("K8SBOOT_REGEN_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; regenerate with K8SBOOT_REGEN_GOLDEN=1 and review"


def test_rendering_is_deterministic():
    inv = make_inventory()
    assert [u.text for u in render_all(inv)] == [u.text for u in render_all(inv)]


def _analyze_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    binary = root / layout.BINARY_PATH.lstrip("/")
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    return root


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not Path("/usr/lib/systemd/system").is_dir(),
                    reason="systemd-analyze is not installed")
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_unit_passes_systemd_analyze_verify(tmp_path, case):
    root = _analyze_root(tmp_path)
    inv = make_inventory(**CASES[case])
    for unit in render_all(inv):
        (root / layout.UNIT_PATH.lstrip("/")).write_text(unit.text)
        proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", layout.UNIT_NAME],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip() == "", proc.stderr     # not even a warning (unknown key, ...)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("case, delay, drain", [("kube-apiserver.controller-0.service", 15, 60),
                                                ("kube-apiserver.controller-0.long-drain.service", 90, 120)])
def test_systemd_waits_longer_than_the_shutdown_delay_and_the_request_drain_before_it_kills(case, delay, drain):
    """What systemd makes of TimeoutStopSec (its own parser): delay + --request-timeout + 15 s."""
    inv = make_inventory(**CASES[case])
    unit = render_unit(inv, inv.controller(_host_of(case)))
    text, flags = unit.text, dict(unit.flags)
    assert flags["shutdown-delay-duration"] == f"{delay}s" and flags["shutdown-send-retry-after"] == "true"
    (span,) = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("TimeoutStopSec=")]
    out = subprocess.run(["systemd-analyze", "timespan", span], capture_output=True, text=True, check=True).stdout
    (usec,) = [int(line.split(":")[1]) for line in out.splitlines() if line.strip().startswith("\u03bcs:")]
    assert usec == (delay + drain + 15) * 1_000_000


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    root = _analyze_root(tmp_path)
    (root / layout.BINARY_PATH.lstrip("/")).unlink()
    inv = make_inventory()
    (root / layout.UNIT_PATH.lstrip("/")).write_text(render_unit(inv, inv.controllers[0]).text)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", layout.UNIT_NAME],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "not executable" in proc.stderr


def test_packaged_templates_are_found():
    assert (packaged_templates_dir() / UNIT_TEMPLATE).is_file()


def _user_templates(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "tpl"
    d.mkdir()
    (d / UNIT_TEMPLATE).write_text(text)
    return d


def test_a_users_template_dir_is_used(tmp_path):
    d = _user_templates(tmp_path, "# mine {{ host.name }}\nExecStart={{ binary_path }} {{ exec_args | join(' ') }}\n")
    inv = make_inventory()
    text = render_unit(inv, inv.controllers[0], templates_dir_for(inv, d)).text
    assert text.startswith("# mine controller-0\nExecStart=/usr/local/bin/kube-apiserver --advertise-address=")


def test_inventory_templates_setting_is_used(tmp_path):
    d = _user_templates(tmp_path, "X={{ cluster_name }}\n")
    inv = make_inventory(apiserver_extra=f"  templates: {d}\n")
    assert render_unit(inv, inv.controllers[0]).text == "X=k8s-test\n"


def test_undefined_variable_names_file_and_line(tmp_path):
    d = _user_templates(tmp_path, "[Unit]\n\nExecStart={{ binray_path }}\n")
    inv = make_inventory()
    with pytest.raises(TemplateError) as err:
        render_unit(inv, inv.controllers[0], templates_dir_for(inv, d))
    assert f"{d / UNIT_TEMPLATE}:3:" in str(err.value)
    assert "binray_path" in str(err.value)
    assert err.value.code == ExitCode.TEMPLATE


def test_syntax_error_names_file_and_line(tmp_path):
    d = _user_templates(tmp_path, "a\nb\n{% for x in flags %}\n")
    inv = make_inventory()
    with pytest.raises(TemplateError) as err:
        render_unit(inv, inv.controllers[0], templates_dir_for(inv, d))
    assert f"{d / UNIT_TEMPLATE}:" in str(err.value) and "syntax error" in str(err.value)


def test_error_inside_a_filter_names_file_and_line(tmp_path):
    d = _user_templates(tmp_path, "ok\n{{ flags[99] }}\n")
    inv = make_inventory()
    with pytest.raises(TemplateError, match=r":2:"):
        render_unit(inv, inv.controllers[0], templates_dir_for(inv, d))


def test_missing_user_dir_or_template_is_a_template_error(tmp_path):
    inv = make_inventory()
    with pytest.raises(TemplateError, match="not a directory"):
        templates_dir_for(inv, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TemplateError, match=f"has no {UNIT_TEMPLATE}"):
        templates_dir_for(inv, tmp_path / "empty")
