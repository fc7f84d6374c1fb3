"""Render kubeconfig files: pure text from the cluster spec and PEM bytes, nothing written here.

The admin kubeconfig embeds the CA, the client certificate and its key (base64, as
`kubectl config set-cluster --embed-certs` does), points at `cluster.api_endpoint`, and names the
cluster and context after `cluster.name` and the user `admin@<cluster.name>`.
"""

from __future__ import annotations

import base64
import json
import re

from k8sboot.model import ClusterSpec

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@:+-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: str) -> str:
    """A YAML scalar: plain when unambiguous, else a JSON string (which YAML reads the same)."""
    plain = (_PLAIN.match(value) and value.lower() not in _YAML_WORDS
             and not re.fullmatch(r"[0-9._:+-]+", value) and ": " not in value)
    return value if plain else json.dumps(value)


def _b64(pem: bytes) -> str:
    return base64.b64encode(pem).decode("ascii")


def admin_user_name(cluster: ClusterSpec) -> str:
    return f"admin@{cluster.name}"


def render_admin_kubeconfig(cluster: ClusterSpec, *, ca_pem: bytes, cert_pem: bytes,
                            key_pem: bytes) -> str:
    """admin.kubeconfig: embedded CA/cert/key, server = the API endpoint, context = cluster name."""
    name = _scalar(cluster.name)
    user = _scalar(admin_user_name(cluster))
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- cluster:\n"
        f"    certificate-authority-data: {_b64(ca_pem)}\n"
        f"    server: {_scalar(cluster.api_endpoint)}\n"
        f"  name: {name}\n"
        "contexts:\n"
        "- context:\n"
        f"    cluster: {name}\n"
        f"    user: {user}\n"
        f"  name: {name}\n"
        f"current-context: {name}\n"
        "preferences: {}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    client-certificate-data: {_b64(cert_pem)}\n"
        f"    client-key-data: {_b64(key_pem)}\n"
    )
