"""k8sboot.kubeconfig: the admin kubeconfig as text, read back by YAML and by real kubectl."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import shutil
import ssl
import subprocess
import threading

import pytest
import yaml

from k8sboot import kubeconfig, pki, store

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
needs_kubectl = pytest.mark.skipif(not shutil.which(KUBECTL), reason="kubectl is not installed")


def render(inv):
    spec = pki.build_pki_spec(inv)
    creds = pki.client_credentials(spec, store.read_pki(spec, only={"admin"}))
    text = kubeconfig.render_admin_kubeconfig(inv.cluster, ca_pem=creds.ca_pem,
                                              cert_pem=creds.cert_pem, key_pem=creds.key_pem)
    return text, creds


def write(tmp_path, text: str):
    path = tmp_path / "admin.kubeconfig"
    store.write_private_file(path, text.encode())
    return path


def kubectl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=60)


def test_admin_kubeconfig_embeds_ca_cert_and_key_and_points_at_the_api_endpoint(generated_pki):
    text, creds = render(generated_pki.inventory)
    doc = yaml.safe_load(text)
    assert doc["kind"] == "Config" and doc["apiVersion"] == "v1"
    assert doc["current-context"] == "k8s-scratch"
    (cluster,) = doc["clusters"]
    assert cluster["name"] == "k8s-scratch"
    assert cluster["cluster"]["server"] == "https://10.0.1.10:6443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == \
        generated_pki.path("ca.pem").read_bytes()
    (context,) = doc["contexts"]
    assert context == {"name": "k8s-scratch",
                       "context": {"cluster": "k8s-scratch", "user": "admin@k8s-scratch"}}
    (user,) = doc["users"]
    assert user["name"] == "admin@k8s-scratch"
    assert base64.b64decode(user["user"]["client-certificate-data"]) == \
        generated_pki.path("admin.pem").read_bytes()
    key = base64.b64decode(user["user"]["client-key-data"])
    assert pki.key_matches(pki.parse_cert(creds.cert_pem, "admin.pem"), pki.parse_private_key(key, "k"))


@pytest.mark.parametrize("name", ["yes", "null", "1.10", "k8s: prod"])
def test_names_that_yaml_would_retype_are_quoted(generated_pki, name):
    inv = generated_pki.inventory
    inv = dataclasses.replace(inv, cluster=dataclasses.replace(inv.cluster, name=name))
    doc = yaml.safe_load(render(inv)[0])
    assert doc["clusters"][0]["name"] == name and doc["current-context"] == name


def test_an_ipv6_endpoint_reads_back_unchanged(generated_pki):
    inv = generated_pki.inventory
    inv = dataclasses.replace(inv, cluster=dataclasses.replace(inv.cluster,
                                                               api_endpoint="https://[2001:db8::1]:6443"))
    doc = yaml.safe_load(render(inv)[0])
    assert doc["clusters"][0]["cluster"]["server"] == "https://[2001:db8::1]:6443"


@needs_kubectl
def test_real_kubectl_reads_the_kubeconfig_and_lists_its_context(generated_pki, tmp_path):
    path = write(tmp_path, render(generated_pki.inventory)[0])
    view = kubectl("config", "view", "--kubeconfig", str(path), "-o", "json")
    assert view.returncode == 0, view.stderr
    doc = json.loads(view.stdout)
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.0.1.10:6443"
    assert doc["current-context"] == "k8s-scratch"
    contexts = kubectl("config", "get-contexts", "--kubeconfig", str(path))
    assert contexts.returncode == 0, contexts.stderr
    header, row = contexts.stdout.splitlines()
    assert row.split() == ["*", "k8s-scratch", "k8s-scratch", "admin@k8s-scratch"]


class _Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        cn = dict(x[0] for x in self.connection.getpeercert()["subject"])["commonName"]
        body = json.dumps({"major": "1", "minor": "32", "gitVersion": f"v1.32.0+{cn}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@needs_kubectl
def test_real_kubectl_completes_a_mutual_tls_handshake_with_the_apiserver_cert(generated_pki, tmp_path):
    """kubectl's Go TLS stack (the API server's) trusts kubernetes.pem via the embedded CA, on
    the 127.0.0.1 SAN, and presents admin.pem, which the server verifies against ca.pem."""
    d = generated_pki.dir
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "kubernetes.pem", d / "kubernetes-key.pem")
    ctx.load_verify_locations(d / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Version)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = write(tmp_path, render(generated_pki.inventory)[0])
        out = kubectl("--kubeconfig", str(path), "--server", f"https://127.0.0.1:{server.server_port}",
                      "get", "--raw", "/version")
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gitVersion"] == "v1.32.0+admin"
