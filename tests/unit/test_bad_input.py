"""Bad input, data-driven: broken PKI folders, templates and tokens (tests/corpus/).

Every case runs the real commands (CliRunner, or the installed entry point where a case needs
another user) and must end with its area's exit code, exactly one `k8sboot: error:` line that
names where the problem is (file, and line for templates), no traceback, and the whole working
tree unchanged, byte for byte and mode for mode. The inventory corpus has its own test
(test_inventory.py); `test_the_corpus_covers_enough_bad_inputs` counts all four.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from certs_helpers import example_inventory, generate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from typer.testing import CliRunner

from k8sboot import console, tokens
from k8sboot.cli import app
from k8sboot.errors import ExitCode
from entry_point import K8SBOOT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
PKI_CASES = yaml.safe_load((CORPUS / "pki" / "cases.yaml").read_text())
TOKEN_CASES = yaml.safe_load((CORPUS / "tokens" / "cases.yaml").read_text())
TEMPLATE_CASES = sorted(p.name for p in (CORPUS / "templates").iterdir() if p.is_dir())
INVENTORY_CASES = sorted((CORPUS / "inventory").glob("*.yaml"))
ISSUER = "https://10.0.1.10:6443"        # inventory/cluster.yaml's issuer and API audience

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_console(monkeypatch):
    monkeypatch.setattr(console, "_stdout_console", None)
    monkeypatch.setattr(console, "_stderr_console", None)


def test_the_corpus_covers_enough_bad_inputs():
    counts = {"inventory": len(INVENTORY_CASES), "pki": len(PKI_CASES), "templates": len(TEMPLATE_CASES),
              "tokens": len(TOKEN_CASES)}
    assert counts["inventory"] >= 40
    assert counts["pki"] + counts["templates"] + counts["tokens"] >= 30, counts
    names = [c["name"] for c in PKI_CASES] + [c["name"] for c in TOKEN_CASES]
    assert len(names) == len(set(names)), "case names are unique"


# --- helpers ---------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: kind, mode, bytes (files), target (links). Never opens a FIFO."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, path.read_bytes())
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return out


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """Exactly one `k8sboot: error:` line holding every fragment; other lines hint or warn."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("k8sboot: error: ")]
    assert len(errors) == 1, stderr
    for line in lines:
        assert line.startswith(("k8sboot: error: ", "  hint: ", "k8sboot: warning: ")), stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


class Outcome:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr


def invoke(args: list[str], *, input: str | None = None) -> Outcome:
    result = runner.invoke(app, args, input=input, env={"COLUMNS": "300"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def _drop_file_permission_override() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding
    set, so that even root (the CI user) is refused a mode-000 file, as any user is."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def invoke_without_dac_override(args: list[str], cwd: Path) -> Outcome:
    """The installed entry point, in `cwd`, unable to bypass file modes even as root."""
    proc = subprocess.run([str(K8SBOOT), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "300"},
                          preexec_fn=_drop_file_permission_override if os.geteuid() == 0 else None)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


# --- PKI folders -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory) -> Path:
    """A complete PKI for the same inventory, made by another CA."""
    base = tmp_path_factory.mktemp("foreign")
    generate(example_inventory(base / "pki"))
    return base / "pki"


@pytest.fixture(scope="session")
def expired_pki(tmp_path_factory) -> Path:
    """The same PKI made 800 days ago with a 365-day CA: the CA and every leaf have expired."""
    base = tmp_path_factory.mktemp("expired")
    inv = example_inventory(base / "pki", ca_validity_days=365, cert_validity_days=365)
    generate(inv, now=datetime.now(timezone.utc) - timedelta(days=800))
    return base / "pki"


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


def apply_step(step: dict, root: Path, foreign: Path, expired: Path, sockets: list) -> None:
    d = root / "pki"
    (kind, arg), = step.items()
    if kind == "remove":
        (d / arg).unlink()
    elif kind == "write":
        data = bytes.fromhex(arg["hex"]) if "hex" in arg else arg["text"].encode()
        (d / arg["file"]).write_bytes(data)
    elif kind == "truncate":
        path = d / arg["file"]
        path.write_bytes(path.read_bytes()[:arg["bytes"]])
    elif kind == "copy":
        (d / arg["to"]).write_bytes((d / arg["from"]).read_bytes())
    elif kind == "foreign":
        for name in arg:
            (d / name).write_bytes((foreign / name).read_bytes())
    elif kind == "expired":
        shutil.rmtree(d)
        shutil.copytree(expired, d)
    elif kind == "mkdir":
        (d / arg).unlink()
        (d / arg).mkdir()
    elif kind == "symlink":
        path, to = d / arg["file"], arg["to"]
        if to == "outside":
            outside = root / "outside"
            outside.mkdir(exist_ok=True)
            shutil.copy2(path, outside / path.name)
            target: str | Path = outside / path.name
        elif to == "dangling":
            target = root / "nowhere" / path.name
        else:
            target = to
        path.unlink()
        path.symlink_to(target)
    elif kind == "fifo":
        (d / arg).unlink()
        os.mkfifo(d / arg)
    elif kind == "socket":
        (d / arg).unlink()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(d / arg))
        sockets.append(sock)
    elif kind == "huge":
        line = b"A" * 63 + b"\n"
        (d / arg).write_bytes(b"-----BEGIN CERTIFICATE-----\n" + line * (2 * 16384 + 1))
    elif kind == "unreadable":
        (d / arg).chmod(0)
    elif kind == "der":
        cert = x509.load_pem_x509_certificate((d / arg).read_bytes())
        (d / arg).write_bytes(cert.public_bytes(serialization.Encoding.DER))
    elif kind == "tamper_signature":
        der = bytearray(x509.load_pem_x509_certificate((d / arg).read_bytes())
                        .public_bytes(serialization.Encoding.DER))
        der[-1] ^= 0x01                       # the last byte of the signature BIT STRING
        x509.load_der_x509_certificate(bytes(der))   # still parses: only the signature is wrong
        (d / arg).write_bytes(_pem(bytes(der), "CERTIFICATE"))
    elif kind == "encrypt_key":
        key = serialization.load_pem_private_key((d / arg).read_bytes(), password=None)
        (d / arg).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse battery staple")))
    elif kind == "ed25519_key":
        key = ed25519.Ed25519PrivateKey.generate()
        (d / arg).write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    elif kind == "pki_dir":
        shutil.rmtree(d)
        if arg == "file":
            d.write_text("not a directory\n")
        else:
            d.symlink_to(root / "nowhere" / "pki")
    else:
        raise AssertionError(f"unknown step {kind}")


COMMANDS = {"gen-certs": ["gen-certs"], "certs list": ["certs", "list"],
            "kubeconfig admin": ["kubeconfig", "admin"]}


@pytest.mark.parametrize("case", PKI_CASES, ids=[c["name"] for c in PKI_CASES])
def test_a_broken_pki_folder_is_one_line_exit_4_and_nothing_changes(case, generated_pki, inventory_file,
                                                                    foreign_pki, expired_pki, tmp_path):
    assert invoke(["gen-certs"]).code == 0, "the starting PKI is complete and current"
    sockets: list = []
    try:
        for step in case["steps"]:
            apply_step(step, tmp_path, foreign_pki, expired_pki, sockets)
        unreadable = any("unreadable" in step for step in case["steps"])
        before = tree(tmp_path)
        for command, fragment in case["expect"].items():
            args = COMMANDS[command]
            out = invoke_without_dac_override(args, tmp_path) if unreadable else invoke(args)
            assert out.code == ExitCode.PKI, (command, out.code, out.stderr)
            line = assert_one_error_line(out.stderr, fragment)
            assert case["where"] in line or command != "gen-certs", line
            assert "pki" in line, "names the PKI dir or file"
            assert tree(tmp_path) == before, f"{command} changed the tree"
        assert not (tmp_path / "admin.kubeconfig").exists()
    finally:
        for sock in sockets:
            sock.close()


def test_every_pki_case_runs_gen_certs_and_most_run_certs_list_and_kubeconfig():
    assert all("gen-certs" in c["expect"] for c in PKI_CASES)
    assert sum("certs list" in c["expect"] for c in PKI_CASES) >= 30
    assert sum("kubeconfig admin" in c["expect"] for c in PKI_CASES) >= 10


# --- templates -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATE_CASES)
def test_a_broken_template_is_exit_5_naming_file_and_line_and_writes_no_unit(name, inventory_file, tmp_path):
    src = CORPUS / "templates" / name
    expect = yaml.safe_load((src / "expect.yaml").read_text())
    templates = tmp_path / "templates"
    shutil.copytree(src, templates)
    (tmp_path / "units").mkdir()
    before = tree(tmp_path)
    out = invoke(["render-apiserver", "--templates", str(templates), "--out", "units"])
    assert out.code == ExitCode.TEMPLATE, out.stderr
    if expect.get("file", "kube-apiserver.service.j2") is None:
        where = f"--templates: {templates} "                  # no file to point into
    elif expect["line"] is None:
        where = f"{templates}/kube-apiserver.service.j2"
    else:
        where = f"{templates}/kube-apiserver.service.j2:{expect['line']}: "
    assert_one_error_line(out.stderr, where, expect["says"])
    assert out.stdout == ""
    assert tree(tmp_path) == before


def test_a_templates_dir_that_does_not_exist_is_exit_5(inventory_file, tmp_path):
    out = invoke(["render-apiserver", "--templates", str(tmp_path / "nope")])
    assert out.code == ExitCode.TEMPLATE
    assert_one_error_line(out.stderr, f"--templates: {tmp_path / 'nope'} is not a directory")


# --- tokens ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _seg(obj) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(spec) -> dict:
    claims = tokens.build_claims("authn-demo", "bot", timedelta(hours=1), [ISSUER], ISSUER,
                                 datetime.now(timezone.utc))
    if isinstance(spec, dict):
        for name in spec.get("drop", ()):
            del claims[name]
        claims.update(spec.get("set", {}))
    return claims


def build_token(case: dict, pki_dir: Path, other_key) -> str:
    if "raw" in case:
        token = case["raw"] * case.get("repeat", 1)
        return token + "A" * max(0, case.get("pad_to", 0) - len(token))
    header = _seg(case["header"])
    if "raw_payload_nesting" in case:
        n = case["raw_payload_nesting"]
        payload = _b64(('{"a":' + "[" * n + "]" * n + "}").encode())
    else:
        payload = _seg(_claims(case["claims"]))
    signing_input = f"{header}.{payload}".encode()
    sign = case.get("sign")
    if "signature" in case:
        signature = case["signature"]
    elif sign == "none":
        signature = ""
    elif sign == "hs256-public-key":
        secret = (pki_dir / "service-account.pem").read_bytes()
        signature = _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    else:
        key = (other_key if sign == "other" else
               serialization.load_pem_private_key((pki_dir / "service-account-key.pem").read_bytes(), None))
        signature = _b64(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))
    return f"{header}.{payload}.{signature}"


@pytest.fixture(scope="module")
def other_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _run_token_command(args: list[str], token: str, via_stdin: bool) -> Outcome:
    return invoke([*args, "-"], input=token) if via_stdin else invoke([*args, token])


@pytest.mark.parametrize("case", TOKEN_CASES, ids=[c["name"] for c in TOKEN_CASES])
def test_a_bad_token_is_401_for_whoami_and_12_or_a_failed_verdict_for_decode(case, generated_pki,
                                                                            inventory_file, tmp_path,
                                                                            other_rsa_key):
    token = build_token(case, generated_pki.dir, other_rsa_key)
    via_stdin = case.get("via") == "stdin"
    before = tree(tmp_path)

    out = _run_token_command(["whoami", "--token"], token, via_stdin)
    assert out.code == ExitCode.UNAUTHORIZED, out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [out.stderr.strip()], "one line"
    assert out.stderr.startswith("401 Unauthorized: ") and case["whoami"] in out.stderr, out.stderr

    decode = case["decode"]
    out2 = _run_token_command(["token", "decode", "-i", "inventory/cluster.yaml"], token, via_stdin)
    assert out2.code == decode["exit"], out2.stderr
    if decode["exit"] == ExitCode.TOKEN:
        assert_one_error_line(out2.stderr, "decoding the token: ", decode["says"])
        assert out2.stdout == ""
    else:
        assert "Traceback" not in out2.stderr
        header, claims = out2.stdout.split("\n}\n", 1)
        assert json.loads(header + "}") == case["header"]
        assert isinstance(json.loads(claims), dict)
        [verdict] = out2.stderr.splitlines()
        assert decode["verdict"] in verdict and verdict.endswith("=> the API server would answer 401")

    signature = token.rsplit(".", 1)[-1]
    for printed in (out.stdout + out.stderr, out2.stdout + out2.stderr):
        for secret in (token, signature):
            assert len(secret) < 16 or secret not in printed, "the token is never echoed"
    assert tree(tmp_path) == before
