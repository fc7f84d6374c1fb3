"""k8sboot.plan: desired files + fake facts -> the plan and its commands (no SSH)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from k8sboot import layout
from k8sboot import plan as P
from k8sboot.plan import FileFact, HostFacts, ServiceFact

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import fake_pki_files, make_inventory, planned_unit  # noqa: E402

UNIT_TEXT = planned_unit(make_inventory())
DESIRED = P.build_desired_files(fake_pki_files(), UNIT_TEXT)
RUNNING = ServiceFact(load_state="loaded", active_state="active", sub_state="running", unit_file_state="enabled",
                      main_pid=42, active_enter_usec=1, listening=True)


def facts_matching(desired=DESIRED, service=RUNNING, **overrides) -> HostFacts:
    """A host exactly as desired; `overrides` maps a path to a FileFact (or None: missing)."""
    files = {f.path: FileFact(f.path, True, f.sha256, f.mode, f.owner, f.group) for f in desired}
    files[P.PKI_DIR.path] = FileFact(P.PKI_DIR.path, True, None, 0o700, "root", "root", kind="directory")
    files[layout.BINARY_PATH] = FileFact(layout.BINARY_PATH, True, None, 0o755, "root", "root")
    for path, fact in overrides.items():
        if fact is None:
            files.pop(path, None)
        else:
            files[path] = fact
    unit = next(f for f in desired if f.kind == P.KIND_UNIT)
    unit_fact = files.get(layout.UNIT_PATH)
    unit_text = None if unit_fact is None else (unit.content.decode() if unit_fact.sha256 == unit.sha256
                                                else "# edited by hand\n")
    return HostFacts(files=files, service=service, unit_text=unit_text)


def fact(path, content=b"x", mode=0o600, owner="root", group="root"):
    return FileFact(path, True, hashlib.sha256(content).hexdigest(), mode, owner, group)


KEY = "/var/lib/kubernetes/kube-apiserver-kubelet-client-key.pem"   # read once, at start
SERVING_KEY = "/var/lib/kubernetes/kubernetes-key.pem"              # re-read by a running server
CERT = "/var/lib/kubernetes/ca.pem"

CASES = [
    # name, facts, expected (uploads, fixups, daemon_reload, enable, restart)
    ("nothing differs", facts_matching(), ((), (), False, False, False)),
    ("key content differs", facts_matching(**{KEY: fact(KEY)}), (("kube-apiserver-kubelet-client-key.pem",), (), False, False, True)),
    ("key missing", facts_matching(**{KEY: None}), (("kube-apiserver-kubelet-client-key.pem",), (), False, False, True)),
    ("key mode loosened", facts_matching(**{KEY: FileFact(KEY, True, next(f.sha256 for f in DESIRED if f.path == KEY),
                                                          0o644, "root", "root")}),
     ((), ("kube-apiserver-kubelet-client-key.pem",), False, False, False)),
    ("cert owner wrong", facts_matching(**{CERT: FileFact(CERT, True, next(f.sha256 for f in DESIRED if f.path == CERT),
                                                          0o644, "nobody", "root")}),
     ((), ("ca.pem",), False, False, False)),
    ("unit differs", facts_matching(**{layout.UNIT_PATH: fact(layout.UNIT_PATH, b"old", 0o644)}),
     (("kube-apiserver.service",), (), True, False, True)),
    ("unit stopped", facts_matching(service=ServiceFact(load_state="loaded", active_state="inactive",
                                                        unit_file_state="enabled")),
     ((), (), False, False, True)),
    ("unit disabled", facts_matching(service=ServiceFact(load_state="loaded", active_state="active",
                                                         sub_state="running", unit_file_state="disabled")),
     ((), (), False, True, False)),
    ("unit file not reloaded", facts_matching(service=ServiceFact(load_state="loaded", active_state="active",
                                                                  sub_state="running", unit_file_state="enabled",
                                                                  need_daemon_reload=True)),
     ((), (), True, False, True)),
]


@pytest.mark.parametrize("name,facts,expected", CASES, ids=[c[0] for c in CASES])
def test_plan_table(name, facts, expected):
    plan = P.build_host_plan(DESIRED, facts)
    got = (tuple(c.file.name for c in plan.uploads), tuple(c.file.name for c in plan.fixups),
           plan.daemon_reload, plan.enable, plan.restart)
    assert got == expected


def test_first_deploy_on_an_empty_host_uploads_everything_and_creates_the_dir():
    facts = HostFacts(files={layout.BINARY_PATH: FileFact(layout.BINARY_PATH, True, None, 0o755, "root", "root")},
                      service=ServiceFact())
    plan = P.build_host_plan(DESIRED, facts)
    assert {c.file.path for c in plan.uploads} == {f.path for f in DESIRED}
    assert [d.dir.path for d in plan.dirs] == ["/var/lib/kubernetes"]
    assert plan.enable and plan.restart
    assert not plan.daemon_reload          # systemd never loaded it: no reload needed (fallback in restart)
    assert "daemon-reload && systemctl restart" in P.build_install_script(plan)
    assert plan.unit_diff.startswith("--- /dev/null")


def test_desired_files_follow_the_layout_and_never_include_the_ca_key():
    paths = [f.path for f in DESIRED]
    assert paths == [f.path for f in layout.CONTROLLER_FILES] + [layout.UNIT_PATH]
    assert not any("ca-key" in p for p in paths)
    modes = {f.name: f.mode for f in DESIRED}
    assert modes["kube-apiserver-kubelet-client-key.pem"] == 0o600 and modes["ca.pem"] == 0o644
    assert modes["kube-apiserver.service"] == 0o644


def test_binary_is_desired_only_with_binary_bytes():
    with_binary = P.build_desired_files(fake_pki_files(), UNIT_TEXT, b"\x7fELF")
    assert with_binary[-1].path == layout.BINARY_PATH and with_binary[-1].mode == 0o755


def test_missing_binary_is_a_problem_unless_uploaded():
    facts = facts_matching(**{layout.BINARY_PATH: None})
    assert P.build_host_plan(DESIRED, facts).problems
    with_binary = P.build_desired_files(fake_pki_files(), UNIT_TEXT, b"\x7fELF")
    assert not P.build_host_plan(with_binary, facts).problems


def test_no_restart_leaves_a_running_unit_but_starts_a_stopped_one():
    changed = facts_matching(**{KEY: fact(KEY)})
    assert not P.build_host_plan(DESIRED, changed, no_restart=True).restart
    stopped = facts_matching(service=ServiceFact(load_state="loaded", active_state="failed", unit_file_state="enabled"))
    assert P.build_host_plan(DESIRED, stopped, no_restart=True).restart


def test_unit_diff_shows_the_change():
    facts = facts_matching(**{layout.UNIT_PATH: fact(layout.UNIT_PATH, b"old", 0o644)})
    diff = P.build_host_plan(DESIRED, facts, host="controller-0").unit_diff
    assert "controller-0:/etc/systemd/system/kube-apiserver.service (on host)" in diff
    assert "-# edited by hand" in diff and "+  --anonymous-auth=false \\" in diff


def test_install_script_stages_in_the_target_dir_with_umask_077_then_renames():
    """tar writes each staged file under umask 077 (so 0600 while written) and then gives it the
    mode and owner the archive carries (`remote.build_tar`); no chown/chmod; renames after."""
    facts = facts_matching(**{KEY: None, layout.UNIT_PATH: fact(layout.UNIT_PATH, b"old", 0o644)})
    plan = P.build_host_plan(DESIRED, facts)
    script = P.build_install_script(plan)
    lines = script.splitlines()
    assert lines[:2] == ["set -eu", "umask 077"]
    tar_at = lines.index("tar -x -m -f - -C / --same-permissions --same-owner --no-overwrite-dir")
    mv_key = lines.index("mv -f /var/lib/kubernetes/.kube-apiserver-kubelet-client-key.pem.k8sboot-new /var/lib/kubernetes/kube-apiserver-kubelet-client-key.pem")
    assert tar_at < min(i for i, line in enumerate(lines) if line.startswith("mv -f "))
    assert not any(line.startswith(("chmod", "chown")) for line in lines)
    assert lines.index("systemctl daemon-reload") > mv_key
    assert lines[-1].startswith("if systemctl restart kube-apiserver.service")
    assert "ca-key" not in script
    # the journal of the set is written before the first rename and removed after the last
    journal = f"{P.PKI_DIR.path}/.k8sboot-switch"
    written = next(i for i, line in enumerate(lines) if line.endswith(f"> {journal}.tmp && mv -f {journal}.tmp {journal}"))
    assert written < mv_key < lines.index(f"rm -f {journal}") < lines.index("systemctl daemon-reload")
    # the pending mark covers the window between the renames and the restart
    assert lines.index(f": > {P.RESTART_PENDING}") < mv_key


def test_a_restart_consumes_the_pending_mark_it_saw():
    facts = facts_matching(**{P.RESTART_PENDING: fact(P.RESTART_PENDING, b"", 0o600)})
    plan = P.build_host_plan(DESIRED, facts)
    assert plan.restart and plan.clear_pending
    restart = P.build_install_script(plan).splitlines()[-1]
    # removed once systemd has restarted the unit, never before (a cut in between keeps it)
    assert restart.startswith("if systemctl restart") and f"then rm -f {P.RESTART_PENDING};" in restart


def test_install_script_keeps_previous_versions_for_rollback():
    facts = facts_matching(**{KEY: fact(KEY)})
    plan = P.build_host_plan(DESIRED, facts)
    script = P.build_install_script(plan, keep_previous=True)
    assert ("ln -f /var/lib/kubernetes/kube-apiserver-kubelet-client-key.pem "
            "/var/lib/kubernetes/.kube-apiserver-kubelet-client-key.pem.k8sboot-prev\n") in script
    # without keep_previous the links go as soon as the set is switched (old keys do not linger)
    plain = P.build_install_script(plan)
    assert "rm -f /var/lib/kubernetes/.kube-apiserver-kubelet-client-key.pem.k8sboot-prev\n" in plain
    rollback = P.build_rollback_script(plan)
    assert "mv -f /var/lib/kubernetes/.kube-apiserver-kubelet-client-key.pem.k8sboot-prev /var/lib/kubernetes/kube-apiserver-kubelet-client-key.pem" in rollback
    assert "restart" in rollback
    assert P.build_cleanup_script(plan) == "rm -f /var/lib/kubernetes/.kube-apiserver-kubelet-client-key.pem.k8sboot-prev\n"


def test_mode_fix_only_script_has_no_tar():
    key_sha = next(f.sha256 for f in DESIRED if f.path == KEY)
    plan = P.build_host_plan(DESIRED, facts_matching(**{KEY: FileFact(KEY, True, key_sha, 0o644, "root", "root")}))
    script = P.build_install_script(plan)
    assert "tar" not in script and f"chmod 0600 {KEY}" in script and "restart" not in script


@pytest.mark.parametrize("svc,verdict", [
    (ServiceFact("loaded", "active", "running", listening=True), P.UP),
    (ServiceFact("loaded", "active", "running", listening=False), P.STARTING),
    (ServiceFact("loaded", "activating", "start"), P.STARTING),
    (ServiceFact("loaded", "activating", "auto-restart", result="exit-code"), P.FAILED),
    (ServiceFact("loaded", "failed", "failed", result="exit-code"), P.FAILED),
    (ServiceFact("loaded", "inactive", "dead"), P.FAILED),
    (ServiceFact("loaded", "active", "running", n_restarts=2, listening=True), P.FAILED),
    (ServiceFact("not-found", "inactive", "dead"), P.FAILED),
])
def test_classify_service(svc, verdict):
    assert P.classify_service(svc)[0] == verdict


def test_rollback_restarts_unless_the_unit_was_new():
    changed_key = P.build_host_plan(DESIRED, facts_matching(**{KEY: fact(KEY)}))
    assert P.rollback_restarts(changed_key)
    first = P.build_host_plan(DESIRED, HostFacts(files={}, service=ServiceFact()))
    assert not P.rollback_restarts(first)
    assert "disable -q --now" in P.build_rollback_script(first)


def test_no_restart_leaves_a_pending_mark_that_the_next_deploy_honours():
    changed = facts_matching(**{KEY: fact(KEY)})
    plan = P.build_host_plan(DESIRED, changed, no_restart=True)
    assert not plan.restart and plan.mark_pending
    assert f": > {P.RESTART_PENDING}" in P.build_install_script(plan)
    later = facts_matching(**{P.RESTART_PENDING: FileFact(P.RESTART_PENDING, True, None, 0o600, "root", "root")})
    again = P.build_host_plan(DESIRED, later)
    assert again.restart and "pending" in again.restart_reasons[0]
    script = P.build_install_script(again)
    assert f"then rm -f {P.RESTART_PENDING};" in script
    assert P.build_host_plan(DESIRED, later, no_restart=True).has_changes is False


# --- restart only when needed (issue 13, point 4) ---------------------------------------------------

SERVING_CERT = "/var/lib/kubernetes/kubernetes.pem"


def test_a_new_serving_pair_alone_is_uploaded_without_a_restart():
    """kube-apiserver re-reads --tls-cert-file/--tls-private-key-file by itself: a renewed serving
    cert is its own deploy, and the running process keeps serving (same PID)."""
    plan = P.build_host_plan(DESIRED, facts_matching(**{SERVING_KEY: fact(SERVING_KEY),
                                                        SERVING_CERT: fact(SERVING_CERT, mode=0o644)}))
    assert {c.file.name for c in plan.uploads} == {"kubernetes.pem", "kubernetes-key.pem"}
    assert not plan.restart and not plan.mark_pending and plan.picked_up
    script = P.build_install_script(plan)
    assert "systemctl restart" not in script and "mv -f /var/lib/kubernetes/.kubernetes.pem.k8sboot-new" in script


def test_the_serving_pair_with_anything_read_at_start_restarts():
    plan = P.build_host_plan(DESIRED, facts_matching(**{SERVING_KEY: fact(SERVING_KEY), KEY: fact(KEY)}))
    assert plan.restart and "kube-apiserver-kubelet-client-key.pem" in plan.restart_reasons[0]


def test_ca_pem_is_read_at_start_through_the_kubelet_ca_flag():
    ca = "/var/lib/kubernetes/ca.pem"
    assert P.build_host_plan(DESIRED, facts_matching(**{ca: fact(ca, mode=0o644)})).restart


def test_a_stopped_server_is_started_even_when_only_the_serving_pair_changed():
    stopped = facts_matching(service=ServiceFact(load_state="loaded", active_state="failed",
                                                 unit_file_state="enabled"), **{SERVING_KEY: fact(SERVING_KEY)})
    assert P.build_host_plan(DESIRED, stopped).restart


# --- obsolete files (a finished rotation's second key) ---------------------------------------------

OBSOLETE = "/var/lib/kubernetes/service-account-1.pem"


def test_an_obsolete_file_is_removed_in_the_switch_and_restarts():
    facts = facts_matching(**{OBSOLETE: fact(OBSOLETE, mode=0o644)})
    plan = P.build_host_plan(DESIRED, facts, obsolete=(OBSOLETE,))
    assert plan.removals == (OBSOLETE,) and plan.restart and "service-account-1.pem removed" in plan.restart_reasons[0]
    script = P.build_switch_script(plan)
    prev = "/var/lib/kubernetes/.service-account-1.pem.k8sboot-prev"
    assert f"{OBSOLETE}|{prev}|1" in script                    # journalled: a cut switch puts it back
    assert f"mv -f {OBSOLETE} {prev}" in script and f"rm -f {prev}" in script
    assert f"mv -f {prev} {OBSOLETE}" in P.build_rollback_script(plan)
    # absent on the host: nothing to do, no restart
    assert not P.build_host_plan(DESIRED, facts_matching(), obsolete=(OBSOLETE,)).has_changes


def test_an_obsolete_path_that_is_desired_again_is_kept():
    assert P.build_host_plan(DESIRED, facts_matching(), obsolete=(KEY,)).removals == ()
