"""The inventory as frozen dataclasses: what every other module reads.

`k8sboot.inventory` builds these from YAML (with file:line errors); tests may build them
directly. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

KEY_ALGORITHMS = ("rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256")


@dataclass(frozen=True)
class Host:
    name: str
    address: str                       # what SSH dials (IP or DNS name)
    internal_ip: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    api_endpoint: str                  # https URL clients dial
    service_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    cluster_domain: str
    service_account_issuer: str        # https URL; default: api_endpoint
    api_audiences: tuple[str, ...]     # default: (issuer,)

    @property
    def api_endpoint_host(self) -> str:
        return urlsplit(self.api_endpoint).hostname or ""

    @property
    def kubernetes_service_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """First usable IP of the service range: the `kubernetes` Service's ClusterIP, a SAN."""
        return self.service_cidr.network_address + 1


@dataclass(frozen=True)
class PkiSettings:
    dir: Path
    subject: tuple[tuple[str, str], ...]   # (("C", "VN"), ("OU", "k8s-scratch")) in file order
    key_algorithm: str = "rsa-2048"
    ca_validity_days: int = 3650
    cert_validity_days: int = 365
    extra_sans: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiserverSpec:
    anonymous_auth: bool = False
    authorization_mode: tuple[str, ...] = ("Node", "RBAC")
    etcd_servers: tuple[str, ...] = ()
    extra_flags: tuple[tuple[str, str], ...] = ()   # (("audit-log-path", "/var/log/audit.log"),)
    secure_port: int = 6443
    templates: Path | None = None                   # a user's own template dir
    # --shutdown-delay-duration, seconds: after SIGTERM /readyz fails while the server keeps
    # serving, so a load balancer takes it out of rotation before the port closes
    shutdown_delay_seconds: int = 15
    # ServiceAccount token lifetimes (--service-account-max-token-expiration, seconds, and
    # --service-account-extend-token-expiration): bounded by default, so that a token signed by a
    # retired key has surely expired a known time later (an SA-key rotation can finish) and CIS
    # 1.2.30 passes. A kubelet asks for 1 h tokens and renews them at 80 %: 24 h leaves it room.
    service_account_max_token_expiration_seconds: int = 86400
    service_account_extend_token_expiration: bool = False
    # the kube-apiserver release the cluster runs (`apiserver.version`): what the rendered files
    # may use, e.g. the AuthenticationConfiguration's apiVersion (v1alpha1 1.29, v1beta1 1.30, v1 1.34)
    version: str = "1.34"


@dataclass(frozen=True)
class EtcdSpec:
    """The inventory's optional `etcd:` section (one member per controller, `k8sboot deploy-etcd`)."""

    data_dir: str | None = None                     # None: /var/lib/etcd/<cluster name>
    extra_flags: tuple[tuple[str, str], ...] = ()   # may add flags; may not touch TLS, names or URLs


@dataclass(frozen=True)
class SshSettings:
    # None: not in the inventory, so ~/.ssh/config (or config_file) decides for each host, as
    # with ssh(1); then root and 22. The remote layer resolves them (`remote.ssh_endpoint`).
    user: str | None = None
    port: int | None = None
    identity_file: Path | None = None
    known_hosts: Path = Path("~/.ssh/known_hosts")
    sudo: bool = False
    connect_timeout: float = 10.0
    proxy_jump: str | None = None                   # "user@host:port" or a host name
    config_file: Path | None = None                 # ~/.ssh/config by default when it exists

    @property
    def user_or_default(self) -> str:
        """The user when neither the inventory nor an ssh config names one: root."""
        return self.user or "root"

    @property
    def port_or_default(self) -> int:
        """The port when neither the inventory nor an ssh config names one: 22."""
        return self.port or 22


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: ClusterSpec
    pki: PkiSettings
    apiserver: ApiserverSpec
    ssh: SshSettings
    controllers: tuple[Host, ...]
    workers: tuple[Host, ...] = ()
    load_balancers: tuple[Host, ...] = ()         # HAProxy hosts in front of every controller's secure port
    etcd: EtcdSpec = EtcdSpec()
    # the `authentication:` section as k8sboot.authn.oidc.AuthenticationConfig (JWT authenticators,
    # anonymous block), rendered to --authentication-config; None: no structured authentication
    authentication: object | None = field(default=None, compare=False)
    # the trust-root rotation in progress (`pki/rotation.yaml`, k8sboot.rotation.Rotation), or None:
    # every command that renders or checks kube-apiserver's flags renders its phase
    rotation: object | None = field(default=None, compare=False)
    # 1-based line of each key path, for messages about a valid file ("controllers[1].name": 14)
    lines: dict[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def where(self, key_path: str) -> str:
        """`inventory/cluster.yaml:14` for a key path, or just the file when unknown."""
        line = self.lines.get(key_path)
        return f"{self.path}:{line}" if line else str(self.path)

    def controller(self, name: str) -> Host:
        for host in self.controllers:
            if host.name == name:
                return host
        raise KeyError(name)
