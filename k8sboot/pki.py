"""The cluster PKI as data: specs from the inventory, issuance in memory, checks of what exists.

Pure: nothing here writes a file, prints, or reads the clock. `build_pki_spec` turns an
`Inventory` into one `CertSpec` per row of the DESIGN table; `plan_pki` compares the specs with
what `k8sboot.store.read_pki` found on disk and decides every action (or raises `PkiError`)
before anything is issued; `issue_pki` generates keys and certificates and returns the bytes to
write. The issuer-signature check is done by hand over `tbs_certificate_bytes` so that it also
works with the cryptography 38 that Debian ships (no `verify_directly_issued_by` there).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8sboot import layout
from k8sboot.errors import PkiError
from k8sboot.model import Inventory

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

BACKDATE = timedelta(minutes=5)      # tolerate clocks a little behind the workstation's
EXPIRY_WARNING = timedelta(days=30)  # like kubeadm: warn when a cert has less than this left

CLIENT_AUTH = "clientAuth"
SERVER_AUTH = "serverAuth"
_EKU_OIDS = {CLIENT_AUTH: ExtendedKeyUsageOID.CLIENT_AUTH, SERVER_AUTH: ExtendedKeyUsageOID.SERVER_AUTH}
_EKU_NAMES = {oid: name for name, oid in _EKU_OIDS.items()}

# Subject attributes in the order openssl prints them: the inventory's defaults (C, ST, L, OU)
# are merged around each cert's own O and CN, so admin reads C=VN, O=system:masters, OU=..., CN=admin.
_SUBJECT_ORDER = ("C", "ST", "L", "O", "OU", "CN")
_NAME_OIDS = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
}

_KEY_USAGE_NAMES = (
    ("digital_signature", "digitalSignature"), ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"), ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"), ("key_cert_sign", "keyCertSign"), ("crl_sign", "cRLSign"),
)

CA_NAME = layout.CA
ETCD_CA_NAME = layout.ETCD_CA
SERVICE_ACCOUNT_NAME = layout.SERVICE_ACCOUNT

# Verbs of the gen-certs table.
CREATED = "created"
REISSUED = "reissued"
RENEWED = "renewed"
UNCHANGED = "unchanged"


# --- specs: what the inventory asks for -------------------------------------------------------


@dataclass(frozen=True)
class CertSpec:
    """One certificate and its key, as the DESIGN table describes it."""

    name: str                                  # file stem: "admin" -> admin.pem, admin-key.pem
    subject: tuple[tuple[str, str], ...]       # RDNs in order: (("C", "VN"), ..., ("CN", "admin"))
    key_algorithm: str
    validity_days: int
    is_ca: bool = False
    eku: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    ip_sans: tuple[IPAddress, ...] = ()
    issuer: str = CA_NAME                      # the name of the CA that signs it (ca | etcd-ca)

    @property
    def cert_file(self) -> str:
        return layout.cert_file(self.name)

    @property
    def key_file(self) -> str:
        return layout.key_file(self.name)

    @property
    def sans(self) -> tuple[str, ...]:
        """`DNS:kubernetes`, `IP:10.32.0.1`, ... as openssl prints them."""
        return tuple(f"DNS:{d}" for d in self.dns_sans) + tuple(f"IP:{ip}" for ip in self.ip_sans)

    @property
    def key_usage(self) -> frozenset[str]:
        if self.is_ca:
            return frozenset({"digitalSignature", "keyCertSign", "cRLSign"})
        if self.key_algorithm.startswith("rsa-"):
            return frozenset({"digitalSignature", "keyEncipherment"})
        return frozenset({"digitalSignature"})   # keyEncipherment means nothing for an EC key


@dataclass(frozen=True)
class KeyPairSpec:
    """A bare key pair (the service-account signing key): public PKIX PEM + private PEM."""

    name: str
    key_algorithm: str

    @property
    def cert_file(self) -> str:       # the public key; named like a cert in the tutorial
        return layout.cert_file(self.name)

    @property
    def key_file(self) -> str:
        return layout.key_file(self.name)


@dataclass(frozen=True)
class PkiSpec:
    dir: Path
    ca: CertSpec
    leaves: tuple[CertSpec, ...]
    service_account: KeyPairSpec
    encryption_config_file: str = layout.ENCRYPTION_CONFIG_FILE
    etcd_ca: CertSpec | None = None            # etcd's own CA (None: a spec built by hand, one CA)

    @property
    def authorities(self) -> tuple[CertSpec, ...]:
        """Every CA of the PKI, the cluster CA first."""
        return (self.ca,) + ((self.etcd_ca,) if self.etcd_ca is not None else ())

    def authority(self, name: str) -> CertSpec:
        for ca in self.authorities:
            if ca.name == name:
                return ca
        raise KeyError(name)

    @property
    def renewable_names(self) -> tuple[str, ...]:
        """Names `--renew` accepts: every leaf and the service-account pair (never the CA)."""
        return tuple(leaf.name for leaf in self.leaves) + (self.service_account.name,)

    def leaf(self, name: str) -> CertSpec:
        for spec in self.leaves:
            if spec.name == name:
                return spec
        raise KeyError(name)


def build_subject(defaults: Iterable[tuple[str, str]],
                  own: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Merge the inventory's subject defaults with a cert's own O/CN, in openssl's order.

    An attribute the cert sets itself replaces the default of the same type.
    """
    own = tuple(own)
    own_types = {t for t, _ in own}
    merged = [(t, v) for t, v in defaults if t not in own_types] + list(own)
    for t, _ in merged:
        if t not in _NAME_OIDS:
            raise PkiError(f"building the subject: unknown attribute {t!r}",
                           hint=f"allowed: {', '.join(_SUBJECT_ORDER)}")
    return tuple(sorted(merged, key=lambda tv: _SUBJECT_ORDER.index(tv[0])))


def _split_sans(values: Iterable[str]) -> tuple[list[str], list[IPAddress]]:
    dns: list[str] = []
    ips: list[IPAddress] = []
    for value in values:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            if value and value not in dns:
                dns.append(value)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def apiserver_sans(inventory: Inventory) -> tuple[list[str], list[IPAddress]]:
    """The kubernetes.pem SAN list: every name a client may dial the API server by."""
    cluster = inventory.cluster
    values: list[str] = []
    for host in inventory.controllers:
        values += [host.name, str(host.internal_ip)]
    values += [str(cluster.kubernetes_service_ip), "127.0.0.1",
               "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               f"kubernetes.default.svc.{cluster.cluster_domain}"]
    if cluster.api_endpoint_host:
        values.append(cluster.api_endpoint_host)
    values += list(inventory.pki.extra_sans)
    return _split_sans(values)


def etcd_sans(inventory: Inventory) -> tuple[list[str], list[IPAddress]]:
    """etcd-server.pem's and etcd-peer.pem's SANs: every member's name and internal IP (peers and
    kube-apiserver dial the IP), 127.0.0.1 and localhost (etcdctl on a member)."""
    values: list[str] = []
    for host in inventory.controllers:
        values += [host.name, str(host.internal_ip)]
    values += ["127.0.0.1", "localhost"]
    return _split_sans(values)


def build_pki_spec(inventory: Inventory) -> PkiSpec:
    """One CertSpec per row of the DESIGN PKI table, one per worker included."""
    pki = inventory.pki
    alg = pki.key_algorithm
    days = pki.cert_validity_days

    def leaf(name: str, cn: str, orgs: Sequence[str] = (), eku: tuple[str, ...] = (CLIENT_AUTH,),
             dns: Sequence[str] = (), ips: Sequence[IPAddress] = (), issuer: str = CA_NAME) -> CertSpec:
        own = tuple(("O", o) for o in orgs) + (("CN", cn),)
        return CertSpec(name=name, subject=build_subject(pki.subject, own), key_algorithm=alg,
                        validity_days=days, eku=eku, dns_sans=tuple(dns), ip_sans=tuple(ips),
                        issuer=issuer)

    api_dns, api_ips = apiserver_sans(inventory)
    etcd_dns, etcd_ips = etcd_sans(inventory)
    leaves = [
        leaf(layout.ADMIN, "admin", ["system:masters"]),
        leaf(layout.APISERVER, "kubernetes", eku=(SERVER_AUTH, CLIENT_AUTH), dns=api_dns, ips=api_ips),
        leaf(layout.KUBELET_CLIENT, "kube-apiserver-kubelet-client"),
        leaf(layout.CONTROLLER_MANAGER, "system:kube-controller-manager",
             ["system:kube-controller-manager"]),
        leaf(layout.SCHEDULER, "system:kube-scheduler", ["system:kube-scheduler"]),
        leaf(layout.PROXY, "system:kube-proxy", ["system:node-proxier"]),
        # k8sboot's own health client: the deploy's /readyz gate and the load balancer's HTTPS
        # health check present it. No O, so its only group is system:authenticated (least
        # privilege): the real kube-apiserver's bootstrap RBAC binds the ClusterRole
        # system:public-info-viewer (GET /healthz, /livez, /readyz, /version) to
        # system:authenticated, so it reads exactly the health endpoints and nothing else.
        # A workstation credential (and the LB's): never uploaded to the controllers.
        leaf(layout.HEALTH_CLIENT, "system:k8sboot-health"),
        # etcd's PKI, signed by etcd-ca alone (see layout.ETCD_CA): one serving and one peer
        # cert for every member (as kubernetes.pem serves every controller), kube-apiserver's
        # client cert (no O: etcd has no groups) and k8sboot's health-check client.
        leaf(layout.ETCD_SERVER, "etcd-server", eku=(SERVER_AUTH, CLIENT_AUTH), dns=etcd_dns, ips=etcd_ips,
             issuer=ETCD_CA_NAME),
        leaf(layout.ETCD_PEER, "etcd-peer", eku=(SERVER_AUTH, CLIENT_AUTH), dns=etcd_dns, ips=etcd_ips,
             issuer=ETCD_CA_NAME),
        leaf(layout.APISERVER_ETCD_CLIENT, "kube-apiserver-etcd-client", issuer=ETCD_CA_NAME),
        leaf(layout.ETCD_HEALTHCHECK_CLIENT, "kube-etcd-healthcheck-client", issuer=ETCD_CA_NAME),
    ]
    reserved = {spec.name for spec in leaves} | {CA_NAME, ETCD_CA_NAME, SERVICE_ACCOUNT_NAME}
    for i, worker in enumerate(inventory.workers):
        if worker.name in reserved:
            raise PkiError(f"{inventory.where(f'workers[{i}].name')}: worker name '{worker.name}' "
                           f"would overwrite {layout.cert_file(worker.name)}",
                           hint="rename the worker: its certificate is named after it")
        leaves.append(leaf(worker.name, f"system:node:{worker.name}", ["system:nodes"],
                           eku=(CLIENT_AUTH, SERVER_AUTH), dns=[worker.name], ips=[worker.internal_ip]))
    ca = CertSpec(name=CA_NAME, subject=build_subject(pki.subject, (("CN", "Kubernetes"),)),
                  key_algorithm=alg, validity_days=pki.ca_validity_days, is_ca=True)
    etcd_ca = CertSpec(name=ETCD_CA_NAME, subject=build_subject(pki.subject, (("CN", "etcd-ca"),)),
                       key_algorithm=alg, validity_days=pki.ca_validity_days, is_ca=True, issuer=ETCD_CA_NAME)
    return PkiSpec(dir=pki.dir, ca=ca, leaves=tuple(leaves),
                   service_account=KeyPairSpec(SERVICE_ACCOUNT_NAME, alg), etcd_ca=etcd_ca)


# --- keys ------------------------------------------------------------------------------------


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise PkiError(f"generating a key: unsupported algorithm {algorithm!r}",
                   hint="use rsa-2048, rsa-3072, rsa-4096 or ecdsa-p256")


def generate_keys(algorithms: Sequence[str]) -> list[PrivateKey]:
    """Several keys at once; RSA prime search runs in OpenSSL without the GIL, so use threads.

    Daemon threads, not a ThreadPoolExecutor: on Ctrl-C or SIGTERM the run must end now, and an
    executor's workers are joined at exit, each finishing its key first (seconds for rsa-4096).
    """
    slow = sum(1 for a in algorithms if a.startswith("rsa-"))
    workers = min(os.cpu_count() or 1, slow)
    if workers < 2:
        return [generate_key(a) for a in algorithms]
    import queue
    import signal
    import threading

    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: queue.SimpleQueue = queue.SimpleQueue()
    for item in enumerate(algorithms):
        todo.put(item)

    def work() -> None:
        while True:
            try:
                i, algorithm = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, generate_key(algorithm), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                done.put((i, None, exc))

    # SIGINT/SIGTERM held back while the workers start: a handler raising inside Thread.start()
    # leaves a half-started thread that prints a traceback at exit. The workers inherit the mask,
    # so the signals, delivered once it is lifted, always land in this thread, below.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for n in range(workers):
            threading.Thread(target=work, name=f"k8sboot-keygen-{n}", daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    keys: list[PrivateKey | None] = [None] * len(algorithms)
    try:
        for _ in algorithms:
            while True:
                try:
                    i, key, exc = done.get(timeout=0.05)   # a short wait: signals get through
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
            keys[i] = key
    except BaseException:
        while True:                     # nothing new starts; the keys in progress are dropped
            try:
                todo.get_nowait()
            except queue.Empty:
                break
        raise
    return keys  # type: ignore[return-value]


def key_algorithm_of(key: PublicKey | PrivateKey) -> str:
    """`rsa-2048`, `ecdsa-p256`, or a description of a key k8sboot would not generate."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"rsa-{key.key_size}"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return "ecdsa-p256" if key.curve.name == "secp256r1" else f"ecdsa-{key.curve.name}"
    return type(key).__name__


def _spki(key: PublicKey | PrivateKey) -> bytes:
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(public: x509.Certificate | PublicKey, key: PrivateKey) -> bool:
    """Does this private key belong to this certificate (or public key)?"""
    if isinstance(public, x509.Certificate):
        public = public.public_key()
    return _spki(public) == _spki(key)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- issuing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """A CA able to sign: its certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey


def _x509_name(subject: Iterable[tuple[str, str]]) -> x509.Name:
    return x509.Name([x509.NameAttribute(_NAME_OIDS[t], v) for t, v in subject])


def _key_usage(names: frozenset[str]) -> x509.KeyUsage:
    flags = {attr: name in names for attr, name in _KEY_USAGE_NAMES}
    return x509.KeyUsage(encipher_only=False, decipher_only=False, **flags)


def issue_ca(spec: CertSpec, key: PrivateKey, now: datetime) -> x509.Certificate:
    """A self-signed CA: CA:TRUE critical, keyCertSign + cRLSign, SHA-256, backdated 5 minutes."""
    name = _x509_name(spec.subject)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=spec.validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(spec.key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def issue_leaf(spec: CertSpec, public: PublicKey, ca: Authority, now: datetime) -> x509.Certificate:
    """A leaf signed by `ca`; it never outlives the CA."""
    not_after = min(now + timedelta(days=spec.validity_days), not_after_of(ca.cert))
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_x509_name(spec.subject))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(spec.key_usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_EKU_OIDS[e] for e in spec.eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(aki, critical=False)
    )
    if spec.dns_sans or spec.ip_sans:
        general = [x509.DNSName(d) for d in spec.dns_sans] + [x509.IPAddress(i) for i in spec.ip_sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    if not is_directly_issued_by(cert, ca.cert):
        raise PkiError(f"issuing {spec.cert_file}: the CA key does not make signatures that the CA "
                       "certificate verifies (a damaged or foreign ca-key.pem)",
                       hint="restore ca-key.pem from a backup, or replace the CA with --force-new-ca")
    return cert


def generate_encryption_secret() -> bytes:
    return os.urandom(32)


def render_encryption_config(secret: bytes) -> bytes:
    """The tutorial's EncryptionConfiguration: aescbc with one 32-byte key, then identity."""
    if len(secret) != 32:
        raise PkiError("rendering the encryption config: aescbc needs a 32-byte key")
    encoded = base64.b64encode(secret).decode()
    return (
        "kind: EncryptionConfiguration\n"
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "resources:\n"
        "  - resources:\n"
        "      - secrets\n"
        "    providers:\n"
        "      - aescbc:\n"
        "          keys:\n"
        "            - name: key1\n"
        f"              secret: {encoded}\n"
        "      - identity: {}\n"
    ).encode()


# --- reading what exists ---------------------------------------------------------------------


def parse_cert(data: bytes, path: Path | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"reading {path}: not a PEM certificate (truncated or garbage)",
                       hint=f"restore {path} from a backup, or remove it and its key and run "
                            "k8sboot gen-certs") from exc


def _load_private_key(data: bytes):
    # OpenSSL's RSA consistency check costs ~35 ms per 2048-bit key: 0.35 s for a PKI read.
    # Skip it: every key is compared with its certificate, and every signature the CA key makes
    # is verified with ca.pem before it is written (`issue_leaf`). cryptography 38 has no flag.
    try:
        return serialization.load_pem_private_key(data, password=None,
                                                  unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:
        if "unsafe_skip_rsa_key_validation" not in str(exc):
            raise
        return serialization.load_pem_private_key(data, password=None)


def parse_private_key(data: bytes, path: Path | str) -> PrivateKey:
    try:
        key = _load_private_key(data)
    except TypeError as exc:
        raise PkiError(f"reading {path}: the key is encrypted; k8sboot needs an unencrypted key",
                       hint=f"decrypt it, e.g. openssl pkey -in {path} -out {path}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"reading {path}: not a PEM private key (truncated or garbage)",
                       hint=f"restore {path} from a backup, or remove it and its certificate "
                            "and run k8sboot gen-certs") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise PkiError(f"reading {path}: {_key_kind(key)} key; k8sboot uses RSA or ECDSA keys",
                       hint=f"remove {path} and its certificate and run k8sboot gen-certs")
    return key


def _key_kind(key) -> str:
    """`an Ed25519`, `a DSA`, ... for a key type k8sboot does not use."""
    name = type(key).__name__.removeprefix("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"{'an' if name[:1].upper() in 'AEIOU' else 'a'} {name}"


def parse_public_key(data: bytes, path: Path | str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"reading {path}: not a PEM public key (truncated or garbage)",
                       hint=f"restore {path} from a backup; it is the public half of "
                            f"{layout.key_file(SERVICE_ACCOUNT_NAME)}") from exc
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise PkiError(f"reading {path}: {_key_kind(key)} key; k8sboot uses RSA or ECDSA keys")
    return key


def check_encryption_config(data: bytes, path: Path | str) -> None:
    """Raise unless `data` looks like an EncryptionConfiguration (it is never regenerated)."""
    import yaml

    hint = (f"restore {path} from a backup: it is never regenerated, since etcd data encrypted "
            "with its key would become unreadable")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise PkiError(f"reading {path}: not YAML ({exc.__class__.__name__})", hint=hint) from exc
    if not isinstance(doc, dict) or doc.get("kind") != "EncryptionConfiguration":
        raise PkiError(f"reading {path}: not an EncryptionConfiguration", hint=hint)


@dataclass(frozen=True)
class PairFact:
    """What is on disk for one cert (or public key) and its private key; None when absent."""

    cert_path: Path
    key_path: Path
    cert: x509.Certificate | None = None
    key: PrivateKey | None = None

    @property
    def exists(self) -> bool:
        return self.cert is not None or self.key is not None


@dataclass(frozen=True)
class KeyPairFact:
    public_path: Path
    key_path: Path
    public: PublicKey | None = None
    key: PrivateKey | None = None

    @property
    def exists(self) -> bool:
        return self.public is not None or self.key is not None


@dataclass(frozen=True)
class PkiFacts:
    """Everything `k8sboot.store.read_pki` found for a spec, parsed."""

    dir: Path
    ca: PairFact
    leaves: Mapping[str, PairFact]
    service_account: KeyPairFact
    encryption_config: bytes | None = None
    etcd_ca: PairFact | None = None

    def authority(self, name: str) -> PairFact | None:
        return self.ca if name == CA_NAME else self.etcd_ca if name == ETCD_CA_NAME else None


def parse_pair(cert_path: Path, cert_data: bytes | None,
               key_path: Path, key_data: bytes | None) -> PairFact:
    return PairFact(
        cert_path=cert_path, key_path=key_path,
        cert=parse_cert(cert_data, cert_path) if cert_data is not None else None,
        key=parse_private_key(key_data, key_path) if key_data is not None else None,
    )


def parse_key_pair(public_path: Path, public_data: bytes | None,
                   key_path: Path, key_data: bytes | None) -> KeyPairFact:
    return KeyPairFact(
        public_path=public_path, key_path=key_path,
        public=parse_public_key(public_data, public_path) if public_data is not None else None,
        key=parse_private_key(key_data, key_path) if key_data is not None else None,
    )


# --- inspecting certificates -----------------------------------------------------------------


def not_after_of(cert: x509.Certificate) -> datetime:
    value = getattr(cert, "not_valid_after_utc", None)      # cryptography >= 42
    return value if value is not None else cert.not_valid_after.replace(tzinfo=timezone.utc)


def not_before_of(cert: x509.Certificate) -> datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=timezone.utc)


def subject_of(name: x509.Name) -> tuple[tuple[str, str], ...]:
    return tuple((attr.rfc4514_attribute_name, str(attr.value)) for attr in name)


def format_subject(subject: Iterable[tuple[str, str]]) -> str:
    """`C=VN, O=system:masters, OU=k8s-scratch, CN=admin` (the order in the cert)."""
    return ", ".join(f"{t}={v}" for t, v in subject)


def sans_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out = []
    for general in ext:
        if isinstance(general, x509.DNSName):
            out.append(f"DNS:{general.value}")
        elif isinstance(general, x509.IPAddress):
            out.append(f"IP:{general.value}")
        elif isinstance(general, x509.UniformResourceIdentifier):
            out.append(f"URI:{general.value}")
        elif isinstance(general, x509.RFC822Name):
            out.append(f"email:{general.value}")
        else:
            out.append(f"othername:{general!r}")
    return tuple(out)


def eku_of(cert: x509.Certificate) -> frozenset[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(_EKU_NAMES.get(oid, oid.dotted_string) for oid in ext)


def key_usage_of(cert: x509.Certificate) -> frozenset[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(name for attr, name in _KEY_USAGE_NAMES if getattr(ext, attr))


def is_ca_cert(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def is_directly_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name matches and the issuer's public key verifies the signature over the TBS bytes.

    Written out (rather than `Certificate.verify_directly_issued_by`, cryptography >= 40) so that
    it works on the cryptography 38 that Debian bookworm ships.
    """
    if cert.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            pad = getattr(cert, "signature_algorithm_parameters", None)   # PSS, cryptography >= 41
            if not isinstance(pad, (padding.PKCS1v15, padding.PSS)):
                pad = padding.PKCS1v15()
            public.verify(cert.signature, cert.tbs_certificate_bytes, pad, cert.signature_hash_algorithm)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes,
                          ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            public.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def spec_differences(spec: CertSpec, cert: x509.Certificate) -> tuple[str, ...]:
    """How an existing cert differs from its spec, one phrase per aspect; () when it matches."""
    out = []
    have_subject = subject_of(cert.subject)
    if have_subject != spec.subject:
        out.append(f"subject changed: {format_subject(have_subject)} -> {format_subject(spec.subject)}")
    have_sans, want_sans = sans_of(cert), spec.sans
    if set(have_sans) != set(want_sans):
        changes = [f"+{s}" for s in want_sans if s not in have_sans]
        changes += [f"-{s}" for s in have_sans if s not in want_sans]
        out.append("SANs changed: " + " ".join(changes))
    have_alg = key_algorithm_of(cert.public_key())
    if have_alg != spec.key_algorithm:
        out.append(f"key algorithm changed: {have_alg} -> {spec.key_algorithm}")
    have_usage = key_usage_of(cert) | eku_of(cert) | ({"CA:TRUE"} if is_ca_cert(cert) else set())
    want_usage = spec.key_usage | set(spec.eku) | ({"CA:TRUE"} if spec.is_ca else set())
    if have_usage != want_usage:
        changes = [f"+{u}" for u in sorted(want_usage - have_usage)]
        changes += [f"-{u}" for u in sorted(have_usage - want_usage)]
        out.append("usages changed: " + " ".join(changes))
    return tuple(out)


# --- planning: decide every action before issuing or writing anything ------------------------


@dataclass(frozen=True)
class Action:
    name: str            # spec name: "ca", "admin", "worker-0", "service-account", "encryption-config"
    verb: str            # created | reissued | renewed | unchanged
    reason: str = ""     # "SANs changed: +DNS:controller-3 +IP:10.0.1.13"

    @property
    def changes(self) -> bool:
        return self.verb != UNCHANGED

    def describe(self) -> str:
        return f"{self.verb} ({self.reason})" if self.reason else self.verb


ENCRYPTION_CONFIG_NAME = "encryption-config"


@dataclass(frozen=True)
class PkiPlan:
    actions: tuple[Action, ...]
    warnings: tuple[str, ...] = ()

    def action(self, name: str) -> Action:
        for a in self.actions:
            if a.name == name:
                return a
        raise KeyError(name)


def _renew_hint(name: str) -> str:
    return (f"restore the missing or matching file from a backup, or issue a new pair with "
            f"`k8sboot gen-certs --renew {name}`")


def _check_pair_consistent(fact: PairFact, hint: str, what: str = "the certificate") -> None:
    """Raise unless the cert and key are both there and belong together."""
    if fact.cert is not None and fact.key is None:
        raise PkiError(f"reading {fact.cert_path}: {what} has no key ({fact.key_path} is missing)",
                       hint=hint)
    if fact.key is not None and fact.cert is None:
        raise PkiError(f"reading {fact.key_path}: the key has no certificate "
                       f"({fact.cert_path} is missing)", hint=hint)
    if fact.cert is not None and fact.key is not None and not key_matches(fact.cert, fact.key):
        raise PkiError(f"checking {fact.cert_path}: its public key does not match {fact.key_path}",
                       hint=hint)


def plan_pki(spec: PkiSpec, facts: PkiFacts, *, now: datetime, renew: Iterable[str] = (),
             force_new_ca: bool = False) -> PkiPlan:
    """Decide created / reissued / renewed / unchanged for every file, or raise PkiError.

    Nothing is issued here, so a refusal leaves every file as it was.
    """
    renew = set(renew)
    unknown = renew - set(spec.renewable_names)
    if unknown:
        raise PkiError(f"--renew: unknown name(s) {', '.join(sorted(unknown))}",
                       hint=f"valid names: {', '.join(spec.renewable_names)}")
    actions: list[Action] = []
    warnings: list[str] = []

    # Each CA (the cluster's, etcd's): created if missing, replaced only with --force-new-ca, which
    # replaces every CA and reissues every leaf.
    ca_facts: dict[str, PairFact] = {}
    new_cas: set[str] = set()
    for ca_spec in spec.authorities:
        ca_fact = facts.authority(ca_spec.name) or PairFact(spec.dir / ca_spec.cert_file,
                                                            spec.dir / ca_spec.key_file)
        ca_facts[ca_spec.name] = ca_fact
        ca_hint = ("restore the CA files from a backup; only `k8sboot gen-certs --force-new-ca` "
                   "replaces the CA (and then reissues every leaf)")
        if force_new_ca:
            actions.append(Action(ca_spec.name, REISSUED if ca_fact.exists else CREATED,
                                  "--force-new-ca" if ca_fact.exists else ""))
            new_cas.add(ca_spec.name)
        elif not ca_fact.exists:
            issued = [facts.leaves[leaf.name].cert_path.name for leaf in spec.leaves
                      if leaf.issuer == ca_spec.name and leaf.name in facts.leaves
                      and facts.leaves[leaf.name].cert is not None]
            if issued:
                raise PkiError(f"reading {facts.dir}: {ca_fact.cert_path} and {ca_fact.key_path} are "
                               f"missing, but certificates they issued exist ({', '.join(issued)})",
                               hint=ca_hint)
            actions.append(Action(ca_spec.name, CREATED))
            new_cas.add(ca_spec.name)
        else:
            _check_pair_consistent(ca_fact, ca_hint, "the CA certificate")
            if not is_ca_cert(ca_fact.cert):
                raise PkiError(f"checking {ca_fact.cert_path}: not a CA certificate (no CA:TRUE)",
                               hint=ca_hint)
            differs = spec_differences(ca_spec, ca_fact.cert)
            if differs:
                warnings.append(f"{ca_fact.cert_path} differs from the inventory ({'; '.join(differs)}); "
                                "kept: only --force-new-ca replaces the CA, and it reissues every leaf")
            actions.append(Action(ca_spec.name, UNCHANGED))

    for leaf in spec.leaves:
        fact = facts.leaves[leaf.name]
        ca_fact = ca_facts[leaf.issuer]
        if leaf.name in renew:
            actions.append(Action(leaf.name, RENEWED, "--renew"))
            continue
        if leaf.issuer in new_cas:
            actions.append(Action(leaf.name, REISSUED if fact.exists else CREATED,
                                  "new CA" if fact.exists else ""))
            continue
        if not fact.exists:
            actions.append(Action(leaf.name, CREATED))
            continue
        _check_pair_consistent(fact, _renew_hint(leaf.name))
        if not is_directly_issued_by(fact.cert, ca_fact.cert):
            raise PkiError(
                f"checking {fact.cert_path}: not signed by the CA in {ca_fact.cert_path} "
                f"(its issuer: {format_subject(subject_of(fact.cert.issuer)) or 'empty'})",
                hint=f"restore the {ca_fact.cert_path.name} that issued it, or reissue it from this CA with "
                     f"`k8sboot gen-certs --renew {leaf.name}`")
        differs = spec_differences(leaf, fact.cert)
        if differs:
            actions.append(Action(leaf.name, REISSUED, "; ".join(differs)))
            continue
        if not_after_of(fact.cert) <= now:
            warnings.append(f"{fact.cert_path} expired on {not_after_of(fact.cert):%Y-%m-%d}; "
                            f"renew it with `k8sboot gen-certs --renew {leaf.name}`")
        actions.append(Action(leaf.name, UNCHANGED))

    for ca_spec in spec.authorities:
        ca_fact = ca_facts[ca_spec.name]
        if ca_spec.name in new_cas or not_after_of(ca_fact.cert) > now:
            continue
        fix = "replace the CA with `k8sboot gen-certs --force-new-ca` (reissues every leaf)"
        stale = [a.name for a in actions if a.changes and a.name in
                 {leaf.name for leaf in spec.leaves if leaf.issuer == ca_spec.name}]
        if stale:
            raise PkiError(f"issuing {', '.join(stale)}: the CA in {ca_fact.cert_path} expired on "
                           f"{not_after_of(ca_fact.cert):%Y-%m-%d}, so they would be born expired",
                           hint=fix)
        raise PkiError(f"checking {ca_fact.cert_path}: the CA expired on "
                       f"{not_after_of(ca_fact.cert):%Y-%m-%d}, so TLS refuses every certificate "
                       "it signed", hint=fix + ", then deploy again")

    sa, sa_fact = spec.service_account, facts.service_account
    if sa.name in renew:
        actions.append(Action(sa.name, RENEWED, "--renew; tokens signed by the old key stop working"))
    elif not sa_fact.exists:
        actions.append(Action(sa.name, CREATED))
    else:
        hint = (f"restore it from a backup, or make a new pair with `k8sboot gen-certs --renew "
                f"{sa.name}` (every ServiceAccount token signed by the old key stops working)")
        if sa_fact.public is not None and sa_fact.key is None:
            raise PkiError(f"reading {sa_fact.public_path}: the public key has no private key "
                           f"({sa_fact.key_path} is missing)", hint=hint)
        if sa_fact.key is not None and sa_fact.public is None:
            raise PkiError(f"reading {sa_fact.key_path}: the private key has no public key "
                           f"({sa_fact.public_path} is missing)", hint=hint)
        if not key_matches(sa_fact.public, sa_fact.key):
            raise PkiError(f"checking {sa_fact.public_path}: it is not the public half of "
                           f"{sa_fact.key_path}", hint=hint)
        have = key_algorithm_of(sa_fact.key)
        if have != sa.key_algorithm:
            warnings.append(f"{sa_fact.key_path} is {have}, the inventory says {sa.key_algorithm}; "
                            f"kept (tokens stay valid): `--renew {sa.name}` replaces it")
        actions.append(Action(sa.name, UNCHANGED))

    if facts.encryption_config is None:
        actions.append(Action(ENCRYPTION_CONFIG_NAME, CREATED))
    else:
        check_encryption_config(facts.encryption_config, facts.dir / spec.encryption_config_file)
        actions.append(Action(ENCRYPTION_CONFIG_NAME, UNCHANGED))
    return PkiPlan(actions=tuple(actions), warnings=tuple(warnings))


# --- issuing the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    name: str       # a file name inside the PKI dir
    data: bytes
    mode: int


@dataclass(frozen=True)
class PkiRow:
    """One line of the gen-certs table."""

    file: str
    subject: str
    sans: tuple[str, ...]
    not_after: datetime | None
    action: Action
    key_file: str | None = None


@dataclass(frozen=True)
class PkiResult:
    files: tuple[OutputFile, ...]
    rows: tuple[PkiRow, ...]
    warnings: tuple[str, ...] = ()
    ca_not_after: datetime | None = None

    @property
    def changed(self) -> bool:
        return bool(self.files)


def issue_pki(spec: PkiSpec, facts: PkiFacts, plan: PkiPlan, *, now: datetime) -> PkiResult:
    """Generate what the plan asks for, in memory; the files come back key first, then cert."""
    key_specs: list[tuple[str, str]] = []   # (name, algorithm) of every key to generate
    for action in plan.actions:
        if not action.changes or action.name == ENCRYPTION_CONFIG_NAME:
            continue
        if action.name in {ca.name for ca in spec.authorities}:
            key_specs.append((action.name, spec.authority(action.name).key_algorithm))
        elif action.name == spec.service_account.name:
            key_specs.append((action.name, spec.service_account.key_algorithm))
        else:
            key_specs.append((action.name, spec.leaf(action.name).key_algorithm))
    keys = dict(zip((n for n, _ in key_specs), generate_keys([a for _, a in key_specs])))

    files: list[OutputFile] = []
    rows: list[PkiRow] = []

    def emit(key_name: str, key: PrivateKey, cert_name: str, cert_data: bytes) -> None:
        files.append(OutputFile(key_name, key_pem(key), layout.KEY_MODE))
        files.append(OutputFile(cert_name, cert_data, layout.CERT_MODE))

    authorities: dict[str, Authority] = {}
    ca_rows: dict[str, PkiRow] = {}
    for ca_spec in spec.authorities:
        ca_action = plan.action(ca_spec.name)
        if ca_action.changes:
            key = keys[ca_spec.name]
            authority = Authority(issue_ca(ca_spec, key, now), key)
            emit(ca_spec.key_file, authority.key, ca_spec.cert_file, cert_pem(authority.cert))
        else:
            ca_fact = facts.authority(ca_spec.name)
            authority = Authority(ca_fact.cert, ca_fact.key)
        authorities[ca_spec.name] = authority
        ca_rows[ca_spec.name] = PkiRow(ca_spec.cert_file, format_subject(subject_of(authority.cert.subject)), (),
                                       not_after_of(authority.cert), ca_action, ca_spec.key_file)
    ca = authorities[CA_NAME]
    rows.append(ca_rows.pop(CA_NAME))

    for leaf in spec.leaves:
        if leaf.issuer in ca_rows:        # another CA's row goes right before the first cert it signs
            rows.append(ca_rows.pop(leaf.issuer))
        action = plan.action(leaf.name)
        if action.changes:
            key = keys[leaf.name]
            cert = issue_leaf(leaf, key.public_key(), authorities[leaf.issuer], now)
            emit(leaf.key_file, key, leaf.cert_file, cert_pem(cert))
        else:
            cert = facts.leaves[leaf.name].cert
        rows.append(PkiRow(leaf.cert_file, format_subject(subject_of(cert.subject)), sans_of(cert),
                           not_after_of(cert), action, leaf.key_file))

    rows.extend(ca_rows.values())         # a CA that signed nothing (never, with build_pki_spec)
    sa = spec.service_account
    action = plan.action(sa.name)
    if action.changes:
        key = keys[sa.name]
        emit(sa.key_file, key, sa.cert_file, public_key_pem(key))
    else:
        key = facts.service_account.key
    rows.append(PkiRow(sa.cert_file, f"key pair ({key_algorithm_of(key)})", (), None, action,
                       sa.key_file))

    action = plan.action(ENCRYPTION_CONFIG_NAME)
    if action.changes:
        files.append(OutputFile(spec.encryption_config_file,
                                render_encryption_config(generate_encryption_secret()),
                                layout.KEY_MODE))
    rows.append(PkiRow(spec.encryption_config_file, "aescbc key (never regenerated)", (), None, action))
    return PkiResult(files=tuple(files), rows=tuple(rows), warnings=plan.warnings,
                     ca_not_after=not_after_of(ca.cert))


# --- status of an existing PKI (certs list / check-expiration) -------------------------------


@dataclass(frozen=True)
class CertStatus:
    """One row of `certs list`: what a file holds and whether it is sound."""

    name: str
    file: str
    present: bool
    is_ca: bool = False
    subject: str = ""
    sans: tuple[str, ...] = ()
    issuer_ok: bool | None = None        # None: not applicable (key pair) or nothing to check
    key_match: bool | None = None
    not_after: datetime | None = None
    residual: timedelta | None = None
    key_present: bool | None = None      # None: nothing to pair (a missing cert without key)

    @property
    def expired(self) -> bool:
        return self.residual is not None and self.residual <= timedelta(0)

    @property
    def expiring(self) -> bool:
        return self.residual is not None and self.residual < EXPIRY_WARNING


def _cert_status(name: str, fact: PairFact, ca_cert: x509.Certificate | None, now: datetime,
                 is_ca: bool = False) -> CertStatus:
    if fact.cert is None:
        return CertStatus(name, fact.cert_path.name, present=False, is_ca=is_ca,
                          key_match=None if fact.key is None else False,
                          key_present=None if fact.key is None else True)
    cert = fact.cert
    issuer_ok = is_directly_issued_by(cert, ca_cert) if ca_cert is not None else False
    return CertStatus(
        name, fact.cert_path.name, present=True, is_ca=is_ca,
        subject=format_subject(subject_of(cert.subject)), sans=sans_of(cert),
        issuer_ok=issuer_ok, key_match=fact.key is not None and key_matches(cert, fact.key),
        not_after=not_after_of(cert), residual=not_after_of(cert) - now,
        key_present=fact.key is not None,
    )


def check_certs(spec: PkiSpec, facts: PkiFacts, now: datetime) -> tuple[CertStatus, ...]:
    """A status per cert of the spec (CA first) and the service-account pair; never raises."""
    out = []
    ca_certs = {}
    for ca_spec in spec.authorities:
        fact = facts.authority(ca_spec.name) or PairFact(spec.dir / ca_spec.cert_file, spec.dir / ca_spec.key_file)
        ca_certs[ca_spec.name] = fact.cert
        out.append(_cert_status(ca_spec.name, fact, fact.cert, now, is_ca=True))
    out += [_cert_status(leaf.name, facts.leaves[leaf.name], ca_certs[leaf.issuer], now) for leaf in spec.leaves]
    sa = facts.service_account
    out.append(CertStatus(
        spec.service_account.name, sa.public_path.name, present=sa.public is not None,
        subject=f"key pair ({key_algorithm_of(sa.key or sa.public)})" if sa.exists else "",
        key_match=(key_matches(sa.public, sa.key) if sa.public is not None and sa.key is not None
                   else (False if sa.exists else None)),
        key_present=(sa.key is not None) if sa.exists else None,
    ))
    return tuple(out)


def format_residual(residual: timedelta | None) -> str:
    """kubeadm-style residual time: `9y`, `364d`, `23h`, `expired`."""
    if residual is None:
        return "-"
    seconds = residual.total_seconds()
    if seconds <= 0:
        return "expired"
    days = residual.days
    if days >= 730:
        return f"{days // 365}y"
    if days >= 2:
        return f"{days}d"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h"
    return f"{max(1, int(seconds // 60))}m"


# --- the admin credentials for a kubeconfig -----------------------------------------------------


@dataclass(frozen=True)
class ClientCredentials:
    """PEM bytes for a kubeconfig: the CA, a client cert and its key, checked together."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    subject: str = ""
    not_after: datetime | None = None


def client_credentials(spec: PkiSpec, facts: PkiFacts, name: str = layout.ADMIN) -> ClientCredentials:
    """The CA and `name`'s cert/key, or PkiError saying what is missing or inconsistent."""
    hint = "run `k8sboot gen-certs` first"
    if facts.ca.cert is None:
        raise PkiError(f"reading {facts.ca.cert_path}: no such file", hint=hint)
    fact = facts.leaves[name]
    if fact.cert is None or fact.key is None:
        missing = fact.cert_path if fact.cert is None else fact.key_path
        raise PkiError(f"reading {missing}: no such file", hint=hint)
    if not key_matches(fact.cert, fact.key):
        raise PkiError(f"checking {fact.cert_path}: its public key does not match {fact.key_path}",
                       hint=_renew_hint(name))
    if not is_directly_issued_by(fact.cert, facts.ca.cert):
        raise PkiError(f"checking {fact.cert_path}: not signed by the CA in {facts.ca.cert_path}",
                       hint=f"reissue it with `k8sboot gen-certs --renew {name}`")
    return ClientCredentials(ca_pem=cert_pem(facts.ca.cert), cert_pem=cert_pem(fact.cert),
                             key_pem=key_pem(fact.key),
                             subject=format_subject(subject_of(fact.cert.subject)),
                             not_after=not_after_of(fact.cert))
