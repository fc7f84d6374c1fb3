"""One source for every path, mode and owner, local and remote.

The unit's flags, the upload list, `verify` and `audit` all read these values, so a file that the
unit references cannot be forgotten by the upload (KTHW#787) and a mode cannot differ between
the writer and the checker. Names follow the tutorial series (`ca.pem`, `admin-key.pem`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- local workstation -------------------------------------------------------------------------

PKI_DIR_MODE = 0o700
KEY_MODE = 0o600
CERT_MODE = 0o644
KUBECONFIG_MODE = 0o600

CA = "ca"
ADMIN = "admin"
APISERVER = "kubernetes"
SERVICE_ACCOUNT = "service-account"
KUBELET_CLIENT = "kube-apiserver-kubelet-client"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
PROXY = "kube-proxy"
# k8sboot's own health client (the deploy's /readyz gate and the load balancer's health check):
# a workstation credential, never in CONTROLLER_FILES.
HEALTH_CLIENT = "k8sboot-health"
# etcd's own PKI, under a CA of its own (kubeadm's layout, CIS 2.7): with --client-cert-auth etcd
# trusts every cert its CA signed, so under the cluster CA admin.pem, every kubelet and kube-proxy
# could read and write etcd directly.
ETCD_CA = "etcd-ca"
ETCD_SERVER = "etcd-server"                       # every member's serving cert (one for all)
ETCD_PEER = "etcd-peer"                           # every member's peer cert, server and client
APISERVER_ETCD_CLIENT = "apiserver-etcd-client"   # kube-apiserver's client cert to etcd
ETCD_HEALTHCHECK_CLIENT = "etcd-healthcheck-client"   # the deploy gate's (workstation only)
ENCRYPTION_CONFIG_FILE = "encryption-config.yaml"
# --authentication-config (issue 14): rendered from the inventory's authentication: section, not a
# PKI-dir file; shipped with the PKI files through the same path table
AUTHENTICATION_CONFIG_FILE = "authentication-config.yaml"


def cert_file(name: str) -> str:
    """`admin` -> `admin.pem` (for the service account: the public key, PKIX PEM)."""
    return f"{name}.pem"


def key_file(name: str) -> str:
    """`admin` -> `admin-key.pem`."""
    return f"{name}-key.pem"


# --- on each controller ------------------------------------------------------------------------

REMOTE_PKI_DIR = "/var/lib/kubernetes"
REMOTE_PKI_DIR_MODE = 0o700
UNIT_NAME = "kube-apiserver.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
UNIT_MODE = 0o644
BINARY_PATH = "/usr/local/bin/kube-apiserver"
BINARY_MODE = 0o755
OWNER = "root"
GROUP = "root"
SECURE_PORT = 6443
LOCK_PATH = "/run/lock/k8sboot-deploy.lock"


@dataclass(frozen=True)
class RemoteFile:
    """A file k8sboot installs on every controller, and the local file it comes from."""

    local_name: str   # file name in the local PKI dir
    path: str         # absolute path on the controller
    mode: int
    owner: str = OWNER
    group: str = GROUP

    @property
    def is_secret(self) -> bool:
        return self.mode & 0o077 == 0 and self.mode & 0o100 == 0


def _remote(local_name: str, mode: int) -> RemoteFile:
    return RemoteFile(local_name, f"{REMOTE_PKI_DIR}/{local_name}", mode)


# What every controller needs, in the order the tutorial lists it. Never ca-key.pem.
CONTROLLER_FILES: tuple[RemoteFile, ...] = (
    _remote(cert_file(CA), CERT_MODE),
    _remote(cert_file(APISERVER), CERT_MODE),
    _remote(key_file(APISERVER), KEY_MODE),
    _remote(cert_file(SERVICE_ACCOUNT), CERT_MODE),
    _remote(key_file(SERVICE_ACCOUNT), KEY_MODE),
    _remote(cert_file(KUBELET_CLIENT), CERT_MODE),
    _remote(key_file(KUBELET_CLIENT), KEY_MODE),
    _remote(ENCRYPTION_CONFIG_FILE, KEY_MODE),
    _remote(cert_file(ETCD_CA), CERT_MODE),
    _remote(cert_file(APISERVER_ETCD_CLIENT), CERT_MODE),
    _remote(key_file(APISERVER_ETCD_CLIENT), KEY_MODE),
)

# Only with an `authentication:` section in the inventory (deploy.controller_files adds it). Not a
# secret (issuer URLs, audiences, CA certs), but root's alone like the other config files.
AUTHENTICATION_CONFIG = _remote(AUTHENTICATION_CONFIG_FILE, KEY_MODE)
# Files rendered from the inventory rather than read from the PKI dir.
RENDERED_FILES = frozenset({AUTHENTICATION_CONFIG_FILE})

# Keyed by local file name, for the flags module: `remote_path("ca.pem")`.
_BY_LOCAL = {f.local_name: f for f in (*CONTROLLER_FILES, AUTHENTICATION_CONFIG)}


def remote_path(local_name: str) -> str:
    """Where a PKI file lives on a controller; KeyError for a file that is never shipped."""
    return _BY_LOCAL[local_name].path


# Which files the running kube-apiserver reads again by itself, without a restart (issue 13,
# point 4), beside the path table above. Only the serving pair: the DynamicServingCertificate
# controller re-reads --tls-cert-file/--tls-private-key-file (a file watch, and a resync about
# every minute). ca.pem is re-read for --client-ca-file too, but the same file is
# --kubelet-certificate-authority, which is read once at start-up: a new ca.pem needs a restart.
# Every other file (service-account keys, the kubelet client pair, the encryption config without
# --encryption-provider-config-automatic-reload, etcd's CA and client pair) is read once.
#   local name -> the flag(s) that read it and whether a running server picks a new copy up
PICKED_UP_WITHOUT_RESTART: dict[str, str] = {
    cert_file(APISERVER): "--tls-cert-file (re-read about every minute)",
    key_file(APISERVER): "--tls-private-key-file (re-read about every minute)",
    # the authentication config controller watches the file and re-reads it (1.30+; the
    # apiserver_authentication_config_controller_* metrics show each reload and the file's hash)
    AUTHENTICATION_CONFIG_FILE: "--authentication-config (re-read when it changes)",
}
READ_AT_START: dict[str, str] = {
    cert_file(CA): "--client-ca-file is re-read, but --kubelet-certificate-authority is read at start",
    cert_file(SERVICE_ACCOUNT): "--service-account-key-file",
    key_file(SERVICE_ACCOUNT): "--service-account-signing-key-file",
    cert_file(KUBELET_CLIENT): "--kubelet-client-certificate",
    key_file(KUBELET_CLIENT): "--kubelet-client-key",
    ENCRYPTION_CONFIG_FILE: "--encryption-provider-config (no automatic reload rendered)",
    cert_file(ETCD_CA): "--etcd-cafile",
    cert_file(APISERVER_ETCD_CLIENT): "--etcd-certfile",
    key_file(APISERVER_ETCD_CLIENT): "--etcd-keyfile",
}


def picked_up_without_restart(remote_path_: str) -> bool:
    """Whether a running kube-apiserver reads a new copy of this controller path by itself."""
    name = remote_path_.rsplit("/", 1)[-1]
    return remote_path_.startswith(REMOTE_PKI_DIR + "/") and name in PICKED_UP_WITHOUT_RESTART


# Files that must never leave the workstation.
NEVER_UPLOADED = frozenset({key_file(CA), key_file(ETCD_CA)})


# --- on each load balancer (`load_balancers:` hosts, HAProxy in TCP mode) ---------------------
#
# HAProxy reads its config and every cert as root before it drops to user haproxy, so the
# directory and the health key are root's alone. `crt` takes the certificate and its key in one
# file, hence the combined PEM. Never ca-key.pem, never a controller's key.

LB_UNIT_NAME = "haproxy.service"                 # Debian's unit; `systemctl reload` = graceful
LB_BINARY_PATH = "/usr/sbin/haproxy"
LB_CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
LB_CONFIG_MODE = 0o644
LB_PKI_DIR = "/etc/haproxy/k8sboot"
LB_PKI_DIR_MODE = 0o700
LB_CA_PATH = f"{LB_PKI_DIR}/{cert_file(CA)}"     # verifies the controllers' serving certs
LB_CA_MODE = CERT_MODE
LB_HEALTH_PEM_PATH = f"{LB_PKI_DIR}/{cert_file(HEALTH_CLIENT)}"   # cert + key: the check's client cert
LB_HEALTH_PEM_MODE = KEY_MODE
LB_STATS_SOCKET = "/run/haproxy/admin.sock"      # `show servers state`: is every backend up


# --- etcd on each controller (`k8sboot deploy-etcd`) --------------------------------------------
#
# One member per controller. Its TLS files live in /etc/etcd (0700, root's alone: etcd runs as
# root from k8sboot's unit, as in the tutorial); its data in /var/lib/etcd/<cluster name>, 0700,
# beside (never over) /var/lib/etcd/default, the data of the member Debian's own unit runs.

ETCD_DIR = "/etc/etcd"
ETCD_DIR_MODE = 0o700
ETCD_UNIT_NAME = "etcd.service"
ETCD_UNIT_PATH = f"/etc/systemd/system/{ETCD_UNIT_NAME}"   # overrides Debian's /lib/systemd/system one
ETCD_PACKAGE = "etcd-server"
ETCD_PACKAGE_BINARY = "/usr/bin/etcd"             # Debian's etcd-server package
ETCD_UPLOADED_BINARY = "/usr/local/bin/etcd"      # `deploy-etcd --binary PATH`
ETCD_DATA_ROOT = "/var/lib/etcd"
ETCD_DATA_DIR_MODE = 0o700
ETCD_DEBIAN_DEFAULT_DATA = f"{ETCD_DATA_ROOT}/default"   # Debian's default member: never ours
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def etcd_data_dir(cluster_name: str) -> str:
    return f"{ETCD_DATA_ROOT}/{cluster_name}"


def _etcd(local_name: str, mode: int) -> RemoteFile:
    return RemoteFile(local_name, f"{ETCD_DIR}/{local_name}", mode)


# What every etcd member holds in ETCD_DIR. Never etcd-ca-key.pem.
ETCD_FILES: tuple[RemoteFile, ...] = (
    _etcd(cert_file(ETCD_CA), CERT_MODE),
    _etcd(cert_file(ETCD_SERVER), CERT_MODE),
    _etcd(key_file(ETCD_SERVER), KEY_MODE),
    _etcd(cert_file(ETCD_PEER), CERT_MODE),
    _etcd(key_file(ETCD_PEER), KEY_MODE),
)
_ETCD_BY_LOCAL = {f.local_name: f for f in ETCD_FILES}


def etcd_path(local_name: str) -> str:
    """Where an etcd PKI file lives on a member; KeyError for one that is never shipped there."""
    return _ETCD_BY_LOCAL[local_name].path
