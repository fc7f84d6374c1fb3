"""No key material and no token in any command's output: every offline command, its --json and
--debug variants (through the installed entry point) and its error paths run, and stdout+stderr
are scanned for PEM private-key headers, the base64 of every key file (whole body, each line,
and the whole PEM as a kubeconfig embeds it), the encryption secret, and JWT shapes.

The only places a secret may appear: `token create`'s stdout (the token, by contract) and the
kubeconfig files (the admin key, by design: they must be 0600).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k8sboot import console
from k8sboot.cli import app
from entry_point import K8SBOOT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# A JWS header is base64url of a JSON object: `{"` gives eyJ, `{ ` eyA, `{\n` ewo.
JWT = re.compile(r"(?:eyJ|eyA|ewo|ew0)[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
PEM_BODY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n(.*?)(?:-----END|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    cwd: Path
    code: int
    stdout: str
    stderr: str
    stdin: str | None = None

    @property
    def name(self) -> str:
        return f"k8sboot {' '.join(self.args)} (in {self.cwd.name})"


def k8sboot(cwd: Path, *args: str, stdin: str | None = None) -> Run:
    """--debug runs go through the installed entry point (its traceback is what a user sees);
    the others run in-process, which is the same code and ten times faster."""
    if args[0] == "--debug":
        proc = subprocess.run([str(K8SBOOT), *args], cwd=cwd, input=stdin, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
        return Run(tuple(args), cwd, proc.returncode, proc.stdout, proc.stderr, stdin)
    console._stdout_console = console._stderr_console = None
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), input=stdin, env={"COLUMNS": "300"})
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return Run(tuple(args), cwd, result.exit_code, result.stdout, result.stderr, stdin)


class Secrets:
    """Every string that must never be printed, harvested from key files as they change."""

    def __init__(self) -> None:
        self.items: set[str] = set()

    def harvest_file(self, path: Path) -> None:
        data = path.read_bytes()
        for m in PEM_BODY.finditer(data):
            lines = [line.strip() for line in m.group(1).decode().splitlines() if line.strip()]
            self.items.update(line for line in lines if len(line) >= 16)
            self.items.add("".join(lines))
        if b"PRIVATE KEY" in data:
            whole = base64.b64encode(data).decode()     # kubeconfig's client-key-data form
            self.items.update(whole[i:i + 64] for i in range(0, len(whole) - 64, 64))
        for m in re.finditer(rb"secret: (\S+)", data):   # encryption-config.yaml
            self.items.add(m.group(1).decode())

    def harvest(self, pki_dir: Path) -> None:
        for path in pki_dir.iterdir():
            if path.is_file() and (path.name.endswith("-key.pem") or path.name.endswith(".yaml")):
                self.harvest_file(path)

    def add(self, text: str) -> None:
        self.items.add(text)


def assert_clean(run: Run, secrets: Secrets, *, stdout_may_hold_the_token: bool = False) -> None:
    streams = {"stderr": run.stderr} if stdout_may_hold_the_token else {"stdout": run.stdout,
                                                                       "stderr": run.stderr}
    for stream, text in streams.items():
        where = f"{run.name}: {stream}"
        assert "PRIVATE KEY-----" not in text, where
        assert "client-key-data" not in text, where
        match = JWT.search(text)
        assert match is None, f"{where}: token-shaped text {match.group(0)[:40]}..."
        for secret in secrets.items:
            assert secret not in text, f"{where}: holds key material ({secret[:12]}...)"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("secrets")
    (root / "inventory").mkdir()
    text = (ROOT / "inventory" / "cluster.yaml").read_text()
    (root / "inventory" / "cluster.yaml").write_text(text)
    (root / "inventory" / "open.yaml").write_text(
        text.replace("anonymous_auth: false", "anonymous_auth: true"))
    (root / "inventory" / "nopki.yaml").write_text(text.replace("dir: pki", "dir: no-pki-here"))
    (root / "inventory" / "broken.yaml").write_text(text.replace("10.0.1.11", "10.0.1.300"))
    assert "dir: pki" in text and "10.0.1.11" in text
    return root


@pytest.fixture(scope="module")
def runs(workspace: Path) -> tuple[list[Run], Secrets, dict]:
    """Run everything once (module scope: ~60 processes); return the runs and the secrets."""
    secrets = Secrets()
    runs: list[Run] = []
    w = workspace

    # Writers, in order, harvesting the keys each one makes (the old ones must not leak either).
    for args in (["gen-certs"], ["gen-certs", "--json"], ["--debug", "gen-certs"],
                 ["gen-certs", "--renew", "admin", "--json"],
                 ["--debug", "gen-certs", "--renew", "service-account"]):
        run = k8sboot(w, *args)
        assert run.code == 0, (run.name, run.stderr)
        runs.append(run)
        secrets.harvest(w / "pki")

    token_run = k8sboot(w, "token", "create", "-n", "authn-demo", "--service-account", "bot")
    assert token_run.code == 0, token_run.stderr
    token = token_run.stdout.strip()
    secrets.add(token)
    secrets.add(token.rsplit(".", 1)[1])                    # the signature alone
    other = k8sboot(w, "token", "create", "-n", "x", "--service-account", "y", "--audience", "vault")
    secrets.add(other.stdout.strip())
    forged = "eyJhbGciOiJub25lIn0." + token.split(".")[1] + "."     # alg none, same claims
    secrets.add(forged.rstrip("."))

    # Broken copies for the error paths, their bad files' key material harvested too.
    def broken(name: str, breakage) -> Path:
        copy = w.parent / f"{w.name}-{name}"
        shutil.copytree(w, copy, symlinks=True)
        breakage(copy / "pki")
        secrets.harvest(copy / "pki")
        return copy

    def truncate(path: Path, keep: int) -> None:
        path.write_bytes(path.read_bytes()[:keep])

    trunc_key = broken("truncated-key", lambda d: truncate(d / "admin-key.pem", 900))
    trunc_sa = broken("truncated-sa", lambda d: truncate(d / "service-account-key.pem", 700))
    bad_enc = broken("bad-encryption", lambda d: (d / "encryption-config.yaml").write_text(
        (d / "encryption-config.yaml").read_text().replace("secret: ", "secret: [")))
    key_as_ca = broken("key-as-ca", lambda d: (d / "ca.pem").write_bytes((d / "ca-key.pem").read_bytes()))

    jobs: list[tuple[Path, list[str], str | None]] = [
        (w, ["certs", "list"], None), (w, ["certs", "list", "--json"], None),
        (w, ["--debug", "certs", "list"], None),
        (w, ["certs", "check-expiration"], None), (w, ["certs", "check-expiration", "--json"], None),
        (w, ["certs", "check-expiration", "--fail-under", "4000"], None),
        (w, ["--debug", "certs", "check-expiration", "--fail-under", "4000"], None),
        (w, ["kubeconfig", "admin"], None),
        (w, ["kubeconfig", "admin", "--out", "second.kubeconfig"], None),
        (w, ["--debug", "kubeconfig", "admin", "--out", "debug.kubeconfig"], None),
        (w, ["kubeconfig", "admin", "--out", "no-such-dir/admin.kubeconfig"], None),
        (w, ["whoami", "--cert", "pki/admin.pem"], None),
        (w, ["whoami", "--cert", "pki/admin.pem", "--key", "pki/admin-key.pem", "--json"], None),
        (w, ["whoami", "--cert", "pki/admin.pem", "--key", "pki/kube-proxy-key.pem"], None),
        (w, ["--debug", "whoami", "--cert", "pki/admin.pem", "--key", "pki/kube-proxy-key.pem"], None),
        (w, ["whoami", "--cert", "pki/admin-key.pem"], None),
        (w, ["--debug", "whoami", "--cert", "pki/admin-key.pem"], None),
        (w, ["whoami", "--cert", "pki/admin.pem", "--key", "pki/admin.pem"], None),
        (w, ["whoami", "--token", token], None), (w, ["whoami", "--token", token, "--json"], None),
        (w, ["whoami", "--token", "-"], token),
        (w, ["whoami", "--token", forged], None), (w, ["whoami", "--token", forged, "--json"], None),
        (w, ["whoami", "--token", other.stdout.strip()], None),
        (w, ["whoami", "--token", token[:-10]], None),
        (w, ["--debug", "whoami", "--token", token[:-10], "--json"], None),
        (w, ["whoami", "--token", "garbage"], None),
        (w, ["whoami", "--anonymous"], None), (w, ["whoami", "--anonymous", "--json"], None),
        (w, ["whoami", "--anonymous", "-i", "inventory/open.yaml", "--json"], None),
        (w, ["token", "decode", token], None), (w, ["token", "decode", "-"], token),
        (w, ["token", "decode", token, "-i", "inventory/cluster.yaml"], None),
        (w, ["token", "decode", forged, "-i", "inventory/cluster.yaml"], None),
        (w, ["token", "decode", token.replace(".", "!", 1)], None),
        (w, ["--debug", "token", "decode", token.replace(".", "!", 1)], None),
        (w, ["token", "create", "-n", "authn-demo", "--service-account", "bot", "-i",
             "inventory/nopki.yaml"], None),
        (w, ["token", "create", "-n", "Bad_NS", "--service-account", "bot"], None),
        (w, ["--debug", "token", "create", "-n", "authn-demo", "--service-account", "bot",
             "--duration", "1h"], None),
        (w, ["inventory", "check"], None), (w, ["inventory", "check", "--json"], None),
        (w, ["inventory", "check", "-i", "inventory/broken.yaml"], None),
        (w, ["--debug", "inventory", "check", "-i", "inventory/broken.yaml"], None),
        (trunc_key, ["gen-certs"], None), (trunc_key, ["--debug", "gen-certs"], None),
        (trunc_key, ["--debug", "certs", "list"], None),
        (trunc_key, ["--debug", "kubeconfig", "admin"], None),
        (trunc_key, ["--debug", "whoami", "--cert", "pki/admin.pem", "--key", "pki/admin-key.pem"], None),
        (trunc_sa, ["--debug", "gen-certs"], None),
        (trunc_sa, ["--debug", "token", "create", "--service-account", "bot"], None),
        (trunc_sa, ["token", "create", "--service-account", "bot"], None),
        (bad_enc, ["gen-certs"], None), (bad_enc, ["--debug", "gen-certs"], None),
        (key_as_ca, ["--debug", "gen-certs"], None),
        (key_as_ca, ["--debug", "whoami", "--cert", "pki/admin.pem"], None),
        (key_as_ca, ["--debug", "kubeconfig", "admin", "--out", "x.kubeconfig"], None),
    ]
    debug = [job for job in jobs if job[1][0] == "--debug"]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        runs += list(pool.map(lambda job: k8sboot(job[0], *job[1], stdin=job[2]), debug))
    runs += [k8sboot(cwd, *args, stdin=stdin) for cwd, args, stdin in jobs if args[0] != "--debug"]
    return runs, secrets, {"token_run": token_run, "other": other, "token": token}


def test_every_command_output_is_free_of_keys_and_tokens(runs):
    all_runs, secrets, _ = runs
    assert len(secrets.items) > 50, "the harvest found the keys"
    for run in all_runs:
        creates_a_token = "create" in run.args and "token" in run.args and run.code == 0
        assert_clean(run, secrets, stdout_may_hold_the_token=creates_a_token)


def test_token_create_prints_the_token_on_stdout_only(runs):
    _, secrets, extra = runs
    for run in (extra["token_run"], extra["other"]):
        assert JWT.fullmatch(run.stdout.strip())
        assert_clean(run, secrets, stdout_may_hold_the_token=True)
        assert run.stderr == ""


def test_the_runs_cover_success_json_debug_and_error_paths(runs):
    all_runs, _, _ = runs
    codes = {run.code for run in all_runs}
    assert {0, 2, 3, 4, 11, 12, 13} <= codes, codes
    # Under --debug an error is a traceback; a verdict (401, exit 11) is not an error.
    debug_errors = [r for r in all_runs if r.args[0] == "--debug" and r.code not in (0, 2, 11)]
    assert len(debug_errors) >= 10
    for run in debug_errors:
        assert "Traceback" in run.stderr, f"{run.name}: --debug shows the traceback"
    for run in all_runs:
        if run.args[0] != "--debug":
            assert "Traceback" not in run.stderr, run.name


def test_debug_tracebacks_show_no_local_variables(runs):
    """Typer's pretty tracebacks would print locals (the key PEM in `creds`, `key_pem`, `data`)
    unless pretty_exceptions_show_locals=False; the frames show source lines only."""
    all_runs, _, _ = runs
    tracebacks = [r for r in all_runs if "Traceback" in r.stderr]
    assert tracebacks
    for run in tracebacks:
        assert not re.search(r"─ locals ─", run.stderr), run.name     # rich's locals panel


def test_kubeconfigs_hold_the_key_by_design_and_are_0600(runs, workspace):
    for name in ("admin.kubeconfig", "second.kubeconfig", "debug.kubeconfig"):
        path = workspace / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert b"client-key-data: " in path.read_bytes()
    assert not (workspace / "no-such-dir").exists()


def test_no_key_file_is_group_or_world_readable_after_any_command(runs, workspace):
    for path in (workspace / "pki").iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name.endswith("-key.pem") or path.name == "encryption-config.yaml":
            assert mode == 0o600, path.name
        else:
            assert mode == 0o644, path.name
    assert stat.S_IMODE((workspace / "pki").stat().st_mode) == 0o700
