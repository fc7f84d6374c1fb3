"""bench/lib.py: the statistics, the alternation loop, the ratio and markdown tables the benchmark
report is made of, and the host-state comparison the peer test relies on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_bench_lib():
    """bench/lib.py under a name of its own (a bare `lib` could collide with another test helper)."""
    import importlib.util

    name = "k8sboot_bench_lib"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / "lib.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lib = _load_bench_lib()


# --- statistics -------------------------------------------------------------------------------------


def test_summarize_odd_and_even():
    s = lib.summarize([3.0, 1.0, 2.0])
    assert (s.n, s.median, s.min, s.max) == (3, 2.0, 1.0, 3.0)
    assert lib.summarize([4.0, 1.0, 2.0, 3.0]).median == 2.5
    assert lib.summarize([5.0]).spread == 0.0
    assert lib.summarize([1.0, 2.0, 3.0]).spread == pytest.approx(1.0)


def test_summarize_refuses_no_samples():
    with pytest.raises(ValueError):
        lib.summarize([])


def test_ratio_of_medians_is_robust_to_one_outlier():
    assert lib.ratio_of_medians([1.0, 1.0, 50.0], [2.0, 2.0, 2.0]) == 0.5
    with pytest.raises(ValueError):
        lib.ratio_of_medians([1.0], [0.0])


def test_paired_ratios_pair_by_round_and_skip_zero():
    assert lib.paired_ratios([1.0, 2.0, 3.0], [2.0, 0.0, 3.0]) == [0.5, 1.0]
    assert lib.paired_ratios([1.0, 2.0, 3.0], [1.0]) == [1.0]


def test_pair_ratios_subject_against_each_other_tool():
    results = {"k8sboot": [1.0, 1.0], "kthw": [4.0, 2.0], "ansible": [10.0, 10.0]}
    prs = lib.pair_ratios(results, subject="k8sboot")
    assert [(p.a, p.b) for p in prs] == [("k8sboot", "kthw"), ("k8sboot", "ansible")]
    assert prs[0].ratio == pytest.approx(1 / 3)
    assert (prs[0].paired_min, prs[0].paired_max) == (0.25, 0.5)
    assert prs[1].ratio == pytest.approx(0.1)


def test_pair_ratios_every_pair_without_subject_and_skips_empty():
    results = {"a": [1.0], "b": [2.0], "c": [4.0], "d": []}
    assert [(p.a, p.b) for p in lib.pair_ratios(results)] == [("a", "b"), ("a", "c"), ("b", "c")]
    # an absent subject falls back to every pair
    assert len(lib.pair_ratios(results, subject="k8sboot")) == 3


# --- alternation ------------------------------------------------------------------------------------------


def test_alternate_runs_a_b_c_a_b_c_with_hooks_in_order():
    calls = []

    def runner(name, seconds):
        def run():
            calls.append(("run", name))
            return seconds
        return run

    alt = lib.alternate({"A": runner("A", 1.0), "B": runner("B", 2.0), "C": runner("C", 3.0)}, rounds=2,
                        before_each=lambda t, r: calls.append(("before", t, r)),
                        after_each=lambda t, r, s: calls.append(("after", t, r, s)))
    assert [c[1] for c in calls if c[0] == "run"] == ["A", "B", "C", "A", "B", "C"]
    assert calls[:3] == [("before", "A", 0), ("run", "A"), ("after", "A", 0, 1.0)]
    assert [(r.tool, r.round) for r in alt.order] == [("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 1), ("C", 1)]
    assert alt.as_dict() == {"A": [1.0, 1.0], "B": [2.0, 2.0], "C": [3.0, 3.0]}
    assert alt.errors() == []


def test_alternate_records_a_failed_run_and_goes_on():
    n = {"B": 0}

    def flaky():
        n["B"] += 1
        if n["B"] == 1:
            raise lib.BenchError("host 2 not active")
        return 2.0

    alt = lib.alternate({"A": lambda: 1.0, "B": flaky}, rounds=2)
    assert alt.as_dict() == {"A": [1.0, 1.0], "B": [2.0]}
    (err,) = alt.errors()
    assert (err.tool, err.round, err.error) == ("B", 0, "host 2 not active")


def test_alternate_raise_mode_and_round_check():
    def boom():
        raise lib.BenchError("x")

    with pytest.raises(lib.BenchError):
        lib.alternate({"A": boom}, rounds=1, on_error="raise")
    with pytest.raises(ValueError):
        lib.alternate({"A": lambda: 1.0}, rounds=0)


def test_a_failing_check_counts_as_a_failed_run():
    def check(tool, rnd, seconds):
        if tool == "B":
            raise lib.BenchError("files differ")

    alt = lib.alternate({"A": lambda: 1.0, "B": lambda: 2.0}, rounds=1, after_each=check)
    assert alt.as_dict() == {"A": [1.0], "B": []}
    assert alt.errors()[0].error == "files differ"


# --- formatting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,text", [
    (None, "–"), (0.0042, "4.2 ms"), (0.0123, "12 ms"), (0.456, "0.456 s"), (3.214, "3.21 s"),
    (34.26, "34.3 s"), (103.4, "103 s"),
])
def test_fmt_seconds(x, text):
    assert lib.fmt_seconds(x) == text


def test_fmt_ratio_and_stats():
    assert lib.fmt_ratio(0.4213) == "0.42×"
    assert lib.fmt_ratio(0.0312) == "0.0312×"
    assert lib.fmt_ratio(0.0603) == "0.0603×"
    assert lib.fmt_ratio(None) == "–"
    assert lib.fmt_stats(lib.summarize([0.5, 0.61, 0.52])) == "0.520 s (0.500 s–0.610 s, n=3)"
    assert lib.fmt_stats(None) == "–"


def test_md_table_aligns_and_escapes():
    text = lib.md_table(["tool", "1 host"], [["a|b", 1.5], ["c", "x\ny"]])
    assert text.splitlines() == ["| tool | 1 host |", "| :--- | ---: |", "| a\\|b | 1.5 |", "| c | x y |"]
    assert "| :---: |" in lib.md_table(["x"], [["y"]], align=["c"])
    with pytest.raises(ValueError):
        lib.md_table(["a", "b"], [["only one"]])


def test_stats_by_count_table_has_a_column_per_count_and_drops_unmeasured_tools():
    results = {3: {"k8sboot": [1.0, 2.0, 3.0], "kthw": [4.0]}, 1: {"k8sboot": [0.5]}}
    lines = lib.stats_by_count_table(results, ["k8sboot", "kthw", "ansible"]).splitlines()
    assert lines[0] == "| tool | 1 host | 3 hosts |"
    assert lines[2] == "| k8sboot | 0.500 s (0.500 s–0.500 s, n=1) | 2.00 s (1.00 s–3.00 s, n=3) |"
    assert lines[3] == "| kthw | – | 4.00 s (4.00 s–4.00 s, n=1) |"
    assert len(lines) == 4          # ansible was never measured


def test_ratio_by_count_table_bolds_the_ratio_and_shows_the_paired_range():
    results = {1: {"k8sboot": [1.0, 1.0], "kthw": [2.0, 4.0]}, 10: {"k8sboot": [2.0], "kthw": [8.0]}}
    lines = lib.ratio_by_count_table(results, "k8sboot").splitlines()
    assert lines[0] == "| pair (median a / median b) | 1 host | 10 hosts |"
    assert lines[2] == "| k8sboot / kthw | **0.33×** (0.25×–0.50×) | **0.25×** (0.25×–0.25×) |"


def test_goal_verdicts():
    assert lib.Goal("g", 0.3, 0.4).met is True
    assert lib.Goal("g", 0.5, 0.4).met is False
    assert lib.Goal("g", None, 0.4).met is None
    assert lib.Goal("g", 1.2, 1.5, "s").row() == ["g", "≤ 1.50 s", "1.20 s", "met"]
    table = lib.goals_table([lib.Goal("g", 0.5, 0.4), lib.Goal("h", None, 3.0)])
    assert "| g | ≤ 0.40× | 0.50× | **missed** |" in table
    assert "| h | ≤ 3.00× | – | not measured |" in table
    assert lib.Goal("g", 0.0603, 0.06).row()[1:] == ["≤ 0.06×", "0.0603×", "**missed**"]


# --- the job every tool must do: one list, the same as k8sboot's layout ----------------------------------


def test_pki_files_and_modes_are_k8sboot_layout():
    layout = pytest.importorskip("k8sboot.layout")
    assert [(f.local_name, f.mode) for f in layout.CONTROLLER_FILES] == list(lib.PKI_FILES)
    assert all(f.path == f"{lib.REMOTE_PKI_DIR}/{f.local_name}" for f in layout.CONTROLLER_FILES)
    assert (layout.REMOTE_PKI_DIR, layout.REMOTE_PKI_DIR_MODE) == (lib.REMOTE_PKI_DIR, lib.REMOTE_PKI_DIR_MODE)
    assert (layout.UNIT_PATH, layout.UNIT_MODE) == (lib.UNIT_PATH, lib.UNIT_MODE)
    assert "ca-key.pem" not in dict(lib.PKI_FILES)


def _good_snapshot(pki: Path, unit: Path) -> str:
    lines = [f"F {lib.REMOTE_PKI_DIR}/{n} {m:o} root:root {lib.sha256_file(pki / n)}" for n, m in lib.PKI_FILES]
    lines.append(f"F {lib.UNIT_PATH} 644 root:root {lib.sha256_file(unit)}")
    lines += [f"D {lib.REMOTE_PKI_DIR} 700 root:root",
              "L " + " ".join(n for n, _ in lib.PKI_FILES), "S active enabled", "CAKEY absent"]
    return "\n".join(lines)


@pytest.fixture
def pki_and_unit(tmp_path):
    for name, _ in lib.PKI_FILES:
        (tmp_path / name).write_text(f"content of {name}\n")
    unit = tmp_path / "controller-0.kube-apiserver.service"
    unit.write_text("[Service]\nExecStart=/usr/local/bin/kube-apiserver --anonymous-auth=false\n")
    return tmp_path, unit


def test_a_host_left_exactly_as_the_job_says_has_no_difference(pki_and_unit):
    pki, unit = pki_and_unit
    got = lib.parse_snapshot(_good_snapshot(pki, unit))
    assert lib.state_differences(got, lib.expected_state(pki, unit)) == []


def test_every_kind_of_difference_is_reported(pki_and_unit):
    pki, unit = pki_and_unit
    text = _good_snapshot(pki, unit)
    text = text.replace(f"F {lib.REMOTE_PKI_DIR}/kubernetes-key.pem 600", f"F {lib.REMOTE_PKI_DIR}/kubernetes-key.pem 644")
    text = text.replace(f"F {lib.REMOTE_PKI_DIR}/ca.pem 644 root:root", f"F {lib.REMOTE_PKI_DIR}/ca.pem 644 admin:root")
    text = text.replace(f"F {lib.UNIT_PATH} 644 root:root {lib.sha256_file(unit)}", f"F {lib.UNIT_PATH} 644 root:root {'0' * 64}")
    text = text.replace(f"F {lib.REMOTE_PKI_DIR}/encryption-config.yaml 600 root:root {lib.sha256_file(pki / 'encryption-config.yaml')}",
                        f"F {lib.REMOTE_PKI_DIR}/encryption-config.yaml missing")
    text = text.replace("D /var/lib/kubernetes 700", "D /var/lib/kubernetes 755")
    text = text.replace("S active enabled", "S activating disabled").replace("CAKEY absent", "CAKEY present")
    text = text.replace("L ca.pem", "L .kubernetes.pem.tmp1234 ca.pem")
    diffs = lib.state_differences(lib.parse_snapshot(text), lib.expected_state(pki, unit))
    joined = "\n".join(diffs)
    for needle in ("kubernetes-key.pem: mode 644 != 600", "ca.pem: owner admin:root != root:root",
                   "kube-apiserver.service: sha256", "encryption-config.yaml: missing",
                   "('755', 'root:root') != ('700', 'root:root')", "is activating, not active",
                   "is disabled, not enabled", "ca-key.pem found", "unexpected entries ['.kubernetes.pem.tmp1234']"):
        assert needle in joined, (needle, diffs)


def test_snapshot_command_runs_on_a_bare_machine(tmp_path):
    """The command is plain POSIX sh + coreutils; on a machine without the deploy it says 'missing'."""
    import subprocess

    out = subprocess.run(["sh", "-c", lib.snapshot_command().replace("find / -xdev", f"find {tmp_path} -xdev")],
                         capture_output=True, text=True, timeout=60).stdout
    state = lib.parse_snapshot(out)
    assert set(state.files) == {f"{lib.REMOTE_PKI_DIR}/{n}" for n, _ in lib.PKI_FILES} | {lib.UNIT_PATH}
    assert state.ca_key_present is False


# --- what the peers read --------------------------------------------------------------------------------------


LAB_YAML = """\
cluster: {name: k8sboot-lab, api_endpoint: https://10.240.0.10:6443}
pki: {dir: pki}
ssh:
  user: root
  port: 22
  identity_file: /var/lib/k8sboot/lab/id_ed25519
  known_hosts: /run/k8sboot-lab/known_hosts
controllers:
  - {name: controller-0, address: 10.240.0.10, internal_ip: 10.240.0.10}
  - {name: controller-1, address: 10.240.0.11, internal_ip: 10.240.0.11}
workers: []
"""


def test_lab_inventory_ssh_config_and_ansible_inventory(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB_YAML)
    inv = lib.read_lab_inventory(path)
    assert [h.name for h in inv.hosts] == ["controller-0", "controller-1"]
    assert inv.known_hosts == Path("/run/k8sboot-lab/known_hosts") and inv.pki_dir == Path("pki")
    cfg = lib.render_ssh_config(inv)
    assert "Host controller-1\n  HostName 10.240.0.11\n  User root\n" in cfg
    assert cfg.count("StrictHostKeyChecking yes") == 2
    assert "UserKnownHostsFile /run/k8sboot-lab/known_hosts" in cfg
    ini = lib.render_ansible_inventory(inv)
    assert "controller-0 ansible_host=10.240.0.10" in ini
    assert "StrictHostKeyChecking=yes" in ini and "UserKnownHostsFile=/run/k8sboot-lab/known_hosts" in ini


def test_lab_inventory_without_controllers_is_an_error(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("controllers: []\n")
    with pytest.raises(lib.BenchError):
        lib.read_lab_inventory(path)


def test_run_timed_measures_and_reports_failures():
    t = lib.run_timed([sys.executable, "-c", "print('hi')"])
    assert t.stdout.strip() == "hi" and t.seconds > 0
    with pytest.raises(lib.BenchError, match="exited 3"):
        lib.run_timed([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], what="x")
    with pytest.raises(lib.BenchError, match="not found"):
        lib.run_timed(["/nonexistent/tool"])


def _load_labcpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8sboot_bench_labcpu", BENCH / "labcpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lab_cpu_is_summed_over_hosts_by_part_and_the_rest_is_other(tmp_path):
    """bench/cpu's accounting: usage_usec of each host's cgroups (a part missing counts 0)."""
    labcpu = _load_labcpu()

    def cg(path, usec):
        d = tmp_path / path
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.stat").write_text(f"usage_usec {usec}\nuser_usec 1\nsystem_usec 2\n")

    cg("k8sb-controller-0", 500_000)
    cg("k8sb-controller-0/payload/system.slice/kube-apiserver.service", 120_000)
    cg("k8sb-controller-0/payload/system.slice/ssh.service", 150_000)
    cg("k8sb-controller-0/payload/user.slice", 10_000)
    cg("k8sb-controller-0/payload/init.scope", 30_000)
    cg("k8sb-controller-1", 200_000)
    cg("k8sb-controller-1/payload/system.slice/ssh.service", 100_000)
    cg("not-a-host", 999_000)
    before = {name: 0 for name in (*labcpu.PARTS, labcpu.ALL)}
    after = labcpu.snapshot(tmp_path)
    assert after == {"stand-in": 120_000, "sshd + commands": 260_000, "PID 1": 30_000, labcpu.ALL: 700_000}
    spent = labcpu.spent(before, after)
    assert spent["other"] == pytest.approx(0.29) and spent[labcpu.ALL] == pytest.approx(0.7)
    assert labcpu.usage_usec(tmp_path / "nowhere") == 0


# --- trust-root rotations (bench/rotate) ----------------------------------------------------------------

_UNIT = """\
[Service]
ExecStart=/usr/local/bin/kube-apiserver \\
  --client-ca-file=/var/lib/kubernetes/ca.pem \\
  --service-account-key-file=/var/lib/kubernetes/service-account.pem \\
  --service-account-key-file=/var/lib/kubernetes/service-account-1.pem \\
  --service-account-signing-key-file=/var/lib/kubernetes/service-account-1-key.pem \\
  --service-account-issuer=https://new.example:6443 \\
  --service-account-issuer https://old.example:6443 \\
  --v=2
Restart=on-failure
Environment=X=--service-account-key-file=/not/a/flag
"""


def test_unit_flag_values_keeps_repeats_in_order_and_stops_at_execstart_end():
    got = lib.unit_flag_values(_UNIT, ["service-account-key-file", "--service-account-issuer", "etcd-servers"])
    assert got == {
        "service-account-key-file": ["/var/lib/kubernetes/service-account.pem",
                                     "/var/lib/kubernetes/service-account-1.pem"],
        "service-account-issuer": ["https://new.example:6443", "https://old.example:6443"],
        "etcd-servers": [],
    }
    assert lib.unit_flag_values("[Unit]\nDescription=x\n", ["v"]) == {"v": []}


def test_sa_key_rotation_flags_follow_the_phases():
    assert lib.flag_differences(_UNIT, lib.sa_key_rotation_flags("switch")) == []
    diffs = lib.flag_differences(_UNIT, lib.sa_key_rotation_flags("start"))
    assert diffs == ["--service-account-signing-key-file: ['/var/lib/kubernetes/service-account-1-key.pem'] "
                     "!= ['/var/lib/kubernetes/service-account-key.pem']"]
    assert lib.sa_key_rotation_flags("finish") == lib.sa_key_rotation_flags("before")
    assert len(lib.flag_differences(_UNIT, lib.sa_key_rotation_flags("finish"))) == 2
    with pytest.raises(ValueError):
        lib.sa_key_rotation_flags("promote")


def test_issuer_rotation_flags_keep_the_order():
    old, new = "https://old.example:6443", "https://new.example:6443"
    assert lib.issuer_rotation_flags("start", old, new) == {"service-account-issuer": [old, new]}
    assert lib.flag_differences(_UNIT, lib.issuer_rotation_flags("switch", old, new)) == []
    # the same set in the other order is a difference: the first issuer is the one that signs
    assert lib.flag_differences(_UNIT, lib.issuer_rotation_flags("start", old, new))
    assert lib.issuer_rotation_flags("finish", old, new) == {"service-account-issuer": [new]}


def test_lab_users_besides_holder():
    signs = ["pytest running: 123 pytest tests/lab held-by-bench", "lease held by PID 9 (bench/rotate)",
             "pytest running: 77 python -m pytest tests/lab/test_rotate.py"]
    assert lib.lab_users_besides_holder(signs) == signs[1:]
