"""gen-certs under Ctrl-C, SIGTERM and SIGKILL: never a partial file, never a temp file left for
good, and a rerun always converges to a complete, valid PKI with the same CA.

- SIGINT / SIGTERM are sent to the installed entry point while it generates rsa-3072 keys for
  `--force-new-ca` over an existing PKI (pinned to one CPU so that key generation lasts):
  exit 130 / 143, one `interrupted by ...` line, the old PKI byte-identical, then a rerun passes
  `openssl verify`.
- SIGKILL lands at random moments of ≥ 50 fresh runs (ecdsa-p256, delays spread over a whole
  run), and, deterministically, at every rename of the commit and at a sample of the other
  write-phase system calls (a forked gen-certs that kills itself). After each: the next
  gen-certs ends 0 with every file, no temp file or journal, every leaf verified by openssl,
  and the CA that was there if ca.pem and ca-key.pem had both been written.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from certs_helpers import edit_inventory, openssl
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from k8sboot import console, store
from k8sboot.cli import app
from k8sboot.errors import ExitCode, PkiError
from entry_point import K8SBOOT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LEAVES = ["admin", "kubernetes", "kube-apiserver-kubelet-client", "kube-controller-manager",
          "kube-scheduler", "kube-proxy", "k8sboot-health", "etcd-server", "etcd-peer", "apiserver-etcd-client",
          "etcd-healthcheck-client", "worker-0"]
ALL_FILES = sorted(["ca.pem", "ca-key.pem", "etcd-ca.pem", "etcd-ca-key.pem", "service-account.pem",
                    "service-account-key.pem",
                    "encryption-config.yaml", *(f"{n}.pem" for n in LEAVES),
                    *(f"{n}-key.pem" for n in LEAVES)])
SIGKILL_TRIALS = 60


def workspace(root: Path, algorithm: str) -> Path:
    (root / "inventory").mkdir(parents=True)
    inv = root / "inventory" / "cluster.yaml"
    shutil.copy(ROOT / "inventory" / "cluster.yaml", inv)
    edit_inventory(inv, "key_algorithm: rsa-2048", f"key_algorithm: {algorithm}")
    return root


def gen_certs_in_process(cwd: Path, *args: str):
    console._stdout_console = console._stderr_console = None
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, ["gen-certs", *args])
    finally:
        os.chdir(old)


def pki_state(pki: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pki.iterdir())} if pki.is_dir() else {}


def leftovers(pki: Path) -> list[str]:
    return [n for n in (os.listdir(pki) if pki.is_dir() else ())
            if n.endswith(".tmp") or n == store.JOURNAL]


def load_key(path: Path):
    # the RSA consistency check costs ~0.1 s per 3072-bit key; the key-to-cert match is the check
    return serialization.load_pem_private_key(path.read_bytes(), None,
                                              unsafe_skip_rsa_key_validation=True)


def assert_complete_and_valid(pki: Path) -> None:
    """Every file, no temp file or journal, every leaf issued by ca.pem, every key its cert's."""
    assert sorted(os.listdir(pki)) == ALL_FILES, sorted(os.listdir(pki))
    etcd = [n for n in LEAVES if "etcd" in n]
    out = openssl("verify", "-CAfile", str(pki / "ca.pem"), *(str(pki / f"{n}.pem") for n in LEAVES if n not in etcd))
    assert out.returncode == 0, out.stdout + out.stderr
    out = openssl("verify", "-CAfile", str(pki / "etcd-ca.pem"), *(str(pki / f"{n}.pem") for n in etcd))
    assert out.returncode == 0, out.stdout + out.stderr
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    for name in ["ca", "etcd-ca", *LEAVES]:
        cert = x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
        key = load_key(pki / f"{name}-key.pem")
        assert (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
                == key.public_key().public_bytes(serialization.Encoding.DER, spki)), name
    sa_pub = serialization.load_pem_public_key((pki / "service-account.pem").read_bytes())
    sa_key = load_key(pki / "service-account-key.pem")
    assert (sa_pub.public_bytes(serialization.Encoding.DER, spki)
            == sa_key.public_key().public_bytes(serialization.Encoding.DER, spki))
    for path in pki.iterdir():
        mode = path.stat().st_mode & 0o777
        assert mode == (0o600 if path.name.endswith(("-key.pem", ".yaml")) else 0o644), path.name


def ca_pair_if_written(pki: Path) -> bytes | None:
    """ca.pem when both it and ca-key.pem exist and belong together, else None."""
    try:
        cert = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
        key = load_key(pki / "ca-key.pem")
    except (OSError, ValueError):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    same = (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            == key.public_key().public_bytes(serialization.Encoding.DER, spki))
    return (pki / "ca.pem").read_bytes() if same else None


def rerun_converges(root: Path, ca_before: bytes | None, *, then_idempotent: bool = True) -> None:
    result = gen_certs_in_process(root)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert_complete_and_valid(root / "pki")
    if ca_before is not None:
        assert (root / "pki" / "ca.pem").read_bytes() == ca_before, "the CA was replaced"
    if then_idempotent:
        again = gen_certs_in_process(root)
        assert again.exit_code == 0 and "already up to date" in again.stderr, again.output


@pytest.fixture
def fast_tmp(tmp_path):
    """A directory on tmpfs when there is one: gen-certs fsyncs every file, and hundreds of runs
    on a busy disk would spend their time waiting for it."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="k8sboot-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- SIGINT and SIGTERM ------------------------------------------------------------------------


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def spawn(cwd: Path, *args: str, one_cpu: bool = False) -> subprocess.Popen:
    return subprocess.Popen([str(K8SBOOT), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"},
                            preexec_fn=_one_cpu if one_cpu else None)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_generating_keys(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the key-generation threads exist (or, with one CPU reported, the process has used
    clearly more CPU than start-up takes): the signal then lands in the middle of the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gen-certs ended before its keys were being generated"
        try:
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
            if threads > 1 or _cpu_seconds(proc.pid) > 1.0:
                return
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.002)
    raise AssertionError("gen-certs never started generating keys")


@pytest.fixture(scope="module")
def slow_pki(tmp_path_factory) -> Path:
    """A complete rsa-3072 PKI: `--force-new-ca` on it generates ten 3072-bit keys on one CPU,
    seconds of work to interrupt."""
    root = workspace(tmp_path_factory.mktemp("slow"), "rsa-3072")
    assert gen_certs_in_process(root).exit_code == 0
    return root


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("after", [0.0, 0.3], ids=["as-key-generation-starts", "during-it"])
def test_an_interrupted_force_new_ca_keeps_the_old_pki_and_a_rerun_converges(slow_pki, tmp_path,
                                                                            signum, code, after):
    shutil.copytree(slow_pki, tmp_path, dirs_exist_ok=True)
    pki = tmp_path / "pki"
    before = pki_state(pki)
    proc = spawn(tmp_path, "gen-certs", "--force-new-ca", one_cpu=True)
    wait_until_generating_keys(proc)
    time.sleep(after)
    assert proc.poll() is None, "gen-certs ended before the signal"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    name = signal.Signals(signum).name
    assert stderr == f"k8sboot: error: interrupted by {name}\n", stderr
    assert stdout == ""
    assert leftovers(pki) == []
    assert pki_state(pki) == before, "an interrupted run changes no byte"
    rerun_converges(tmp_path, before["ca.pem"])


def test_an_interrupted_first_run_leaves_no_pki_dir_and_a_rerun_creates_it(tmp_path):
    workspace(tmp_path, "rsa-3072")
    proc = spawn(tmp_path, "gen-certs", one_cpu=True)
    wait_until_generating_keys(proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr == "k8sboot: error: interrupted by SIGINT\n", stderr
    assert not (tmp_path / "pki").exists(), "the empty dir made for the lock is removed again"
    rerun_converges(tmp_path, None, then_idempotent=False)


def test_sigterm_while_the_command_line_is_parsed_is_interrupted_too(monkeypatch, capsys):
    """main() handles SIGTERM from its first line, before the command's own handler is set."""
    import k8sboot.cli as cli

    def sigterm_during_parsing():
        signal.raise_signal(signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "app", sigterm_during_parsing)
    monkeypatch.setattr(cli, "_leave", sys.exit)       # main() ends the process with os._exit
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_.value.code == 143
    assert capsys.readouterr().err == "k8sboot: error: interrupted by SIGTERM\n"


# --- SIGKILL at random moments ----------------------------------------------------------------


def _run_until_the_pki_dir_appears(root: Path) -> tuple[subprocess.Popen, float]:
    """Spawn gen-certs and return once it has made pki/ (under its lock, before reading)."""
    t0 = time.monotonic()
    proc = spawn(root, "gen-certs")
    while not (root / "pki").exists() and proc.poll() is None and time.monotonic() - t0 < 30:
        time.sleep(0.0005)
    return proc, time.monotonic() - t0


def test_sigkill_at_random_moments_of_50_runs_always_reruns_to_a_complete_pki_with_the_same_ca(
        fast_tmp):
    """Half the kills land anywhere in a run (mostly start-up), half in the part after pki/ is
    made (read, plan, issue, write, report), where a kill could leave something half-done."""
    tmp_path = fast_tmp
    rng = random.Random(os.environ.get("K8SBOOT_KILL_SEED", "issue-6"))
    timing = workspace(tmp_path / "timing", "ecdsa-p256")
    proc, made_dir = _run_until_the_pki_dir_appears(timing)
    t0 = time.monotonic()
    proc.communicate(timeout=60)
    tail = time.monotonic() - t0
    assert proc.returncode == 0
    plan = [("anywhere", rng.uniform(0.0, (made_dir + tail) * 1.1)) if i % 2 else
            ("after-dir", rng.uniform(0.0, tail * 1.2)) for i in range(SIGKILL_TRIALS)]

    def trial(i: int) -> tuple[Path, str, float, int]:
        root = workspace(tmp_path / f"trial-{i:02d}", "ecdsa-p256")
        phase, delay = plan[i]
        if phase == "anywhere":
            p = spawn(root, "gen-certs")
        else:
            p, _ = _run_until_the_pki_dir_appears(root)
        time.sleep(delay)
        p.kill()
        p.communicate(timeout=60)
        return root, phase, delay, p.returncode

    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2))) as pool:
        results = list(pool.map(trial, range(SIGKILL_TRIALS)))
    killed = 0
    for root, phase, delay, returncode in results:
        pki = root / "pki"
        killed += returncode == -signal.SIGKILL
        for name, data in pki_state(pki).items():
            assert data or name.startswith("."), f"{name} is empty after a kill {phase} +{delay:.3f}s"
        rerun_converges(root, ca_pair_if_written(pki), then_idempotent=False)
    assert killed >= SIGKILL_TRIALS // 2, f"only {killed} runs were killed before they ended"


# --- SIGKILL at every step of the write phase, deterministically --------------------------------

_TRACKED = ("open", "write", "fsync", "replace", "unlink", "close")


def _count_write_calls(root: Path) -> list[str]:
    """Which tracked os calls a fresh gen-certs makes once its keys are issued, in order."""
    calls: list[str] = []
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # child: run gen-certs, report calls
        os.close(r)
        try:
            _patch_write_phase(lambda name: calls.append(name))
            gen_certs_in_process(root)
            os.write(w, "\n".join(calls).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    shutil.rmtree(root / "pki")
    return data.decode().split("\n")


def _patch_write_phase(on_call) -> None:
    """Route the tracked os functions through `on_call` once write_pki_files starts."""
    active = {"on": False}
    real_write = store.write_pki_files

    def writing(*a, **k):
        active["on"] = True
        return real_write(*a, **k)

    store.write_pki_files = writing
    for name in _TRACKED:
        real = getattr(os, name)

        def wrapper(*a, _real=real, _name=name, **k):
            if active["on"]:
                on_call(_name)
            return _real(*a, **k)

        setattr(os, name, wrapper)


def _kill_at(root: Path, step: int) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            seen = [0]

            def maybe_die(name):
                seen[0] += 1
                if seen[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)

            _patch_write_phase(maybe_die)
            gen_certs_in_process(root)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def write_steps(tmp_path_factory) -> list[str]:
    root = workspace(tmp_path_factory.mktemp("count"), "ecdsa-p256")
    calls = _count_write_calls(root)
    assert calls.count("replace") == len(ALL_FILES)
    return calls


def _steps_to_kill_at(calls: list[str]) -> list[int]:
    """Every rename, plus every 6th other call (1-based positions)."""
    return [i + 1 for i, name in enumerate(calls) if name == "replace" or i % 6 == 0]


def test_sigkill_at_every_rename_and_a_sample_of_the_write_phase_calls_converges(write_steps, fast_tmp):
    tmp_path = fast_tmp
    steps = _steps_to_kill_at(write_steps)
    assert len(steps) >= 30
    for step in steps:
        root = workspace(tmp_path / f"step-{step:03d}", "ecdsa-p256")
        code = _kill_at(root, step)
        assert code == -signal.SIGKILL, f"step {step} ({write_steps[step - 1]}): exit {code}"
        pki = root / "pki"
        files = [n for n in os.listdir(pki) if not n.startswith(".")]
        assert len(files) in (0, len(ALL_FILES)) or (pki / store.JOURNAL).exists(), (
            f"step {step}: half a batch without a journal: {sorted(files)}")
        if (pki / store.JOURNAL).exists():          # readers refuse until gen-certs finishes it
            with pytest.raises(PkiError, match="an interrupted `k8sboot gen-certs` left a write"):
                store.check_no_interrupted_write(pki)
        rerun_converges(root, ca_pair_if_written(pki), then_idempotent=False)


def test_the_process_ends_with_its_code_and_every_byte_of_its_output():
    """main() leaves with os._exit (no interpreter teardown): stdout and stderr are flushed first,
    the exit code is the command's, and a reader that goes away early gets no traceback."""
    repo = Path(__file__).resolve().parents[2]
    example = repo / "inventory" / "cluster.yaml"
    ok = subprocess.run([sys.executable, "-m", "k8sboot", "inventory", "check", "-i", str(example), "--json"],
                        capture_output=True, text=True, cwd=repo)
    assert ok.returncode == 0 and json.loads(ok.stdout)        # the whole document, parsed
    bad = subprocess.run([sys.executable, "-m", "k8sboot", "inventory", "check", "-i", str(repo / "nope.yaml")],
                         capture_output=True, text=True, cwd=repo)
    assert bad.returncode == ExitCode.INVENTORY and bad.stderr.startswith("k8sboot: error: ")
    usage = subprocess.run([sys.executable, "-m", "k8sboot", "no-such-command"], capture_output=True, text=True)
    assert usage.returncode == ExitCode.USAGE
    head = subprocess.run(f"{sys.executable} -m k8sboot inventory check -i {example} --json | head -c 1",
                          shell=True, capture_output=True, text=True, cwd=repo)
    assert head.stdout == "{" and "Traceback" not in head.stderr
