"""Trust-root rotations as a small journal in the PKI dir: what each phase renders and ships.

A rotation replaces a root of authentication without a moment in which a credential that should
still work gets 401. Each is a few phases; each phase is a local change of the PKI dir, written
in ONE atomic batch together with the journal `pki/rotation.yaml` (so the journal never says
more or less than the files), then a rolling, health-gated deploy of every controller. The
journal says where things stand (`k8sboot rotate status`); every command that renders or checks
the kube-apiserver flags (`render-apiserver`, `deploy-apiserver`, `verify`, `audit`, `whoami`,
`token create`) reads it through `Inventory.rotation`, so they all render the current phase.

ServiceAccount signing key (`rotate service-account-key`), the new pair is `service-account-<n>`:

    phase    --service-account-key-file         --service-account-signing-key-file
    start    service-account.pem, -<n>.pem      service-account-key.pem     (old signs)
    switch   service-account.pem, -<n>.pem      service-account-<n>-key.pem (new signs)
    finish   service-account.pem (now the new)  service-account-key.pem (the new), -<n> removed

Issuer (`rotate issuer start --to URL`), `--service-account-issuer` repeated, never sorted (the
first one signs, every one is accepted, as kube-apiserver does since 1.22):

    start [old, new]    switch [new, old]    finish [new]

Why three phases and not two: a rolling restart has a moment in which some API servers run the
new flags and some the old. If the first phase already signed with the new key (or issuer), a
token minted by a restarted server would get 401 from one not restarted yet, through the same
load balancer. Trust first everywhere, then sign, then drop the old once every token it signed
has expired (`finish_not_before`).

Pure, except `load` and `write_batch_with` (the PKI dir's files) and the clock passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from k8sboot import layout
from k8sboot.errors import ExitCode, K8sbootError

JOURNAL_FILE = "rotation.yaml"
RETIRED_DIR = "retired"

SERVICE_ACCOUNT_KEY = "service-account-key"
ISSUER = "issuer"
CA = "ca"
KINDS = (SERVICE_ACCOUNT_KEY, ISSUER, CA)
PHASES = {SERVICE_ACCOUNT_KEY: ("start", "switch", "finish"), ISSUER: ("start", "switch", "finish"),
          CA: ("start", "reissue", "finish")}

# A CA rotation keeps both CAs trusted between `start` and `finish`: every trust store k8sboot writes
# (kube-apiserver's --client-ca-file and --kubelet-certificate-authority, its --etcd-cafile, etcd's
# --trusted-ca-file and --peer-trusted-ca-file, the load balancer's CA, kubeconfigs) gets a bundle,
# new CA first. The bundles are files of the PKI dir, written with the journal; the hosts get them
# under the usual names (ca.pem, etcd-ca.pem), so no flag changes.
TRUST_FILES = {layout.cert_file(layout.CA): "ca-trust.pem", layout.cert_file(layout.ETCD_CA): "etcd-ca-trust.pem"}
NEW_SUFFIX = "-new"         # start: ca-new.pem / ca-new-key.pem (the next CA, not signing yet)
OLD_SUFFIX = "-old"         # reissue: ca-old.pem (the previous CA's cert, still trusted until finish)

PREPARED = "prepared"      # the local files are changed; the controllers may not run it yet
DEPLOYED = "deployed"      # every controller was deployed with this phase and turned ready

# kube-apiserver: --service-account-extend-token-expiration makes admission-injected tokens live
# "up to 1 year", ignoring --service-account-max-token-expiration
EXTENDED_TOKEN_LIFETIME = timedelta(days=365)
# `audit` warns on a rotation left half-done longer than this
STALE_AFTER = timedelta(days=14)


class RotationError(K8sbootError):
    code = ExitCode.ROTATION


@dataclass(frozen=True)
class Rotation:
    """The journal: one rotation in progress."""

    kind: str
    phase: str
    state: str                       # PREPARED | DEPLOYED
    started: datetime
    updated: datetime
    old: str                         # SA key: "SHA256:<hex>" of the public key; issuer: the URL
    new: str
    name: str = ""                   # SA key: the new pair's name, service-account-<n>
    signing_stopped: datetime | None = None   # when the last server stopped signing with the old
    etcd_old: str = ""               # CA: etcd's CA, old and new certificate fingerprints
    etcd_new: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES[self.kind]

    def at(self, phase: str, state: str, now: datetime) -> "Rotation":
        return replace(self, phase=phase, state=state, updated=now)

    # --- the journal file ---------------------------------------------------------------------

    def to_yaml(self) -> bytes:
        doc = {"kind": self.kind, "phase": self.phase, "state": self.state,
               "started": _iso(self.started), "updated": _iso(self.updated), "old": self.old, "new": self.new}
        if self.name:
            doc["name"] = self.name
        if self.signing_stopped is not None:
            doc["signing_stopped"] = _iso(self.signing_stopped)
        if self.etcd_old:
            doc["etcd_old"], doc["etcd_new"] = self.etcd_old, self.etcd_new
        return ("# k8sboot rotation journal: written by `k8sboot rotate`, read by every command that\n"
                "# renders kube-apiserver's flags. Do not edit; `k8sboot rotate status` explains it.\n"
                + yaml.safe_dump(doc, sort_keys=False)).encode()


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise RotationError(f"{where}: {value!r} is not a time like 2026-12-05T02:00:00Z",
                            hint=_JOURNAL_HINT) from None


_JOURNAL_HINT = ("the journal is written by `k8sboot rotate`; restore it from a backup of the PKI dir, "
                 "or see `k8sboot rotate status`")


def parse(raw: bytes, path: Path) -> Rotation:
    """The journal's text -> Rotation; RotationError naming path:line on anything wrong."""
    try:
        node = yaml.compose(raw.decode("utf-8"))
        doc = yaml.safe_load(raw)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise RotationError(f"{path}{':' + str(line + 1) if line is not None else ''}: not a readable "
                            "rotation journal", hint=_JOURNAL_HINT) from None
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}

    def where(key: str) -> str:
        return f"{path}:{lines[key]}" if key in lines else str(path)

    if not isinstance(doc, dict):
        raise RotationError(f"{path}: not a rotation journal (a mapping with kind, phase, ...)", hint=_JOURNAL_HINT)
    for key in ("kind", "phase", "state", "started", "updated", "old", "new"):
        if doc.get(key) in (None, ""):
            raise RotationError(f"{where(key) if key in lines else path}: the journal has no {key}", hint=_JOURNAL_HINT)
    kind = str(doc["kind"])
    if kind not in PHASES:
        raise RotationError(f"{where('kind')}: unknown rotation kind {kind!r}",
                            hint=f"kinds: {', '.join(PHASES)}; " + _JOURNAL_HINT)
    phase = str(doc["phase"])
    if phase not in PHASES[kind]:
        raise RotationError(f"{where('phase')}: {kind} has no phase {phase!r}",
                            hint=f"phases: {', '.join(PHASES[kind])}")
    state = str(doc["state"])
    if state not in (PREPARED, DEPLOYED):
        raise RotationError(f"{where('state')}: state {state!r} is not {PREPARED} or {DEPLOYED}", hint=_JOURNAL_HINT)
    name = str(doc.get("name") or "")
    if kind == SERVICE_ACCOUNT_KEY and not _is_key_name(name):
        raise RotationError(f"{where('name') if 'name' in lines else path}: the new key's name must be "
                            f"service-account-<n>, not {name!r}", hint=_JOURNAL_HINT)
    stopped = doc.get("signing_stopped")
    return Rotation(kind=kind, phase=phase, state=state, started=_time(doc["started"], where("started")),
                    updated=_time(doc["updated"], where("updated")), old=str(doc["old"]), new=str(doc["new"]),
                    name=name, signing_stopped=_time(stopped, where("signing_stopped")) if stopped else None,
                    etcd_old=str(doc.get("etcd_old") or ""), etcd_new=str(doc.get("etcd_new") or ""), path=path)


def _is_key_name(name: str) -> bool:
    prefix = layout.SERVICE_ACCOUNT + "-"
    return name.startswith(prefix) and name[len(prefix):].isdigit() and not name[len(prefix):].startswith("0")


def load(pki_dir: Path) -> Rotation | None:
    """The rotation in progress in this PKI dir, or None."""
    path = Path(pki_dir) / JOURNAL_FILE
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None                 # (a PKI dir that is not one: the PKI's own reader says so)
    except PermissionError as exc:
        import os

        if not os.access(pki_dir, os.X_OK):
            return None             # the PKI dir itself is closed: its own reader says so, and stops
        from k8sboot.errors import PkiError

        raise PkiError(f"reading {path}: {exc.strerror}", hint="run as the user that ran k8sboot gen-certs") from exc
    except OSError as exc:
        from k8sboot.errors import PkiError

        raise PkiError(f"reading {path}: {exc.strerror}", hint="run as the user that ran k8sboot gen-certs") from exc
    return parse(raw, path)


# --- what a phase renders ---------------------------------------------------------------------


def key_fingerprint(public_pem: bytes) -> str:
    """SHA256 of the public key's DER (SubjectPublicKeyInfo), for the journal and messages."""
    from cryptography.hazmat.primitives import serialization

    from k8sboot import pki

    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError:
        key = pki.parse_private_key(public_pem, "key").public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _remote(name: str, mode: int) -> layout.RemoteFile:
    return layout.RemoteFile(name, f"{layout.REMOTE_PKI_DIR}/{name}", mode)


def extra_controller_files(rotation: Rotation | None) -> tuple[layout.RemoteFile, ...]:
    """The files a phase ships besides `layout.CONTROLLER_FILES` (the second SA key pair)."""
    if rotation is None or rotation.kind != SERVICE_ACCOUNT_KEY or rotation.phase == "finish":
        return ()
    return (_remote(layout.cert_file(rotation.name), layout.CERT_MODE),
            _remote(layout.key_file(rotation.name), layout.KEY_MODE))


def trust_name(rotation: Rotation | None, cert_name: str) -> str:
    """The local file a trust store gets for CA `cert_name` (ca.pem | etcd-ca.pem): the bundle of
    both CAs while a CA rotation keeps both, else the CA itself."""
    if rotation is not None and rotation.kind == CA and rotation.phase != "finish" and cert_name in TRUST_FILES:
        return TRUST_FILES[cert_name]
    return cert_name


def _trusting(rotation: Rotation | None, files: Sequence[layout.RemoteFile]) -> tuple[layout.RemoteFile, ...]:
    return tuple(replace(f, local_name=trust_name(rotation, f.local_name)) for f in files)


def controller_files(rotation: Rotation | None) -> tuple[layout.RemoteFile, ...]:
    """Every file a controller gets in this phase, in the path table's order (the second key pair
    right after the first; a CA rotation's bundles in place of ca.pem and etcd-ca.pem)."""
    extra = extra_controller_files(rotation)
    out: list[layout.RemoteFile] = []
    for f in _trusting(rotation, layout.CONTROLLER_FILES):
        out.append(f)
        if f.local_name == layout.key_file(layout.SERVICE_ACCOUNT):
            out.extend(extra)
    return tuple(out)


def etcd_files(rotation: Rotation | None) -> tuple[layout.RemoteFile, ...]:
    """What every etcd member gets in this phase (etcd-ca.pem: the bundle during a CA rotation)."""
    return _trusting(rotation, layout.ETCD_FILES)


def split_pem_certs(data: bytes) -> list[bytes]:
    """The PEM certificates of a bundle, in order."""
    import re

    return [m.group(0) + b"\n" for m in re.finditer(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                                                     data, re.S)]


def cert_fingerprint(pem: bytes) -> str:
    """SHA256 of a certificate's DER, for the journal."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def obsolete_paths(rotation: Rotation | None) -> tuple[str, ...]:
    """Controller paths an earlier phase shipped and this one removes (finish: the second pair)."""
    if rotation is None or rotation.kind != SERVICE_ACCOUNT_KEY or rotation.phase != "finish":
        return ()
    return tuple(f"{layout.REMOTE_PKI_DIR}/{n}" for n in (layout.cert_file(rotation.name), layout.key_file(rotation.name)))


def service_account_files(rotation: Rotation | None) -> tuple[tuple[str, ...], str]:
    """(local names of the public keys trusted, local name of the signing key) in this phase."""
    cert, key = layout.cert_file(layout.SERVICE_ACCOUNT), layout.key_file(layout.SERVICE_ACCOUNT)
    if rotation is None or rotation.kind != SERVICE_ACCOUNT_KEY or rotation.phase == "finish":
        return (cert,), key
    trusted = (cert, layout.cert_file(rotation.name))
    return trusted, (layout.key_file(rotation.name) if rotation.phase == "switch" else key)


def issuers(rotation: Rotation | None, configured: str) -> tuple[str, ...]:
    """--service-account-issuer values, in order (the first signs). Never sorted."""
    if rotation is None or rotation.kind != ISSUER:
        return (configured,)
    return {"start": (rotation.old, rotation.new), "switch": (rotation.new, rotation.old),
            "finish": (rotation.new,)}[rotation.phase]


def apply_to_flags(rotation: Rotation | None, flags: list[tuple[str, str]], configured_issuer: str) -> list[tuple[str, str]]:
    """The rendered flags with this phase's service-account key files and issuers, in place of
    the single ones (each repeated flag stays where the single one was)."""
    trusted, signing = service_account_files(rotation)
    wanted = {
        "service-account-key-file": [f"{layout.REMOTE_PKI_DIR}/{n}" for n in trusted],
        "service-account-signing-key-file": [f"{layout.REMOTE_PKI_DIR}/{signing}"],
        "service-account-issuer": list(issuers(rotation, configured_issuer)),
    }
    out: list[tuple[str, str]] = []
    for name, value in flags:
        if name in wanted:
            out.extend((name, v) for v in wanted.pop(name))
        elif name not in ("service-account-key-file", "service-account-signing-key-file", "service-account-issuer"):
            out.append((name, value))
    return out


def phase_flags(rotation: Rotation, phase: str) -> dict[str, tuple[str, ...]]:
    """The rotated flags' values in `phase` (for telling which phase a running server is in)."""
    at = replace(rotation, phase=phase)
    if rotation.kind == ISSUER:
        return {"service-account-issuer": issuers(at, rotation.old)}
    trusted, signing = service_account_files(at)
    return {"service-account-key-file": tuple(f"{layout.REMOTE_PKI_DIR}/{n}" for n in trusted),
            "service-account-signing-key-file": (f"{layout.REMOTE_PKI_DIR}/{signing}",)}


def running_phase(rotation: Rotation, running: Sequence[tuple[str, str]]) -> str | None:
    """Which phase of `rotation` a server runs, from its argv's flags; None when none matches.
    The state before `start` is reported as "before start"."""
    got: dict[str, tuple[str, ...]] = {}
    for name, value in running:
        if name in ("service-account-key-file", "service-account-signing-key-file", "service-account-issuer"):
            got[name] = got.get(name, ()) + (value,)
    for phase in rotation.phases:
        if phase == "finish" and rotation.kind == SERVICE_ACCOUNT_KEY:
            continue          # same flags as before `start`: told apart by the file's content only
        if all(got.get(k, ()) == v for k, v in phase_flags(rotation, phase).items()):
            return phase
    if rotation.kind == ISSUER:
        before = {"service-account-issuer": (rotation.old,)}
    else:
        before = {"service-account-key-file": (f"{layout.REMOTE_PKI_DIR}/{layout.cert_file(layout.SERVICE_ACCOUNT)}",),
                  "service-account-signing-key-file": (f"{layout.REMOTE_PKI_DIR}/{layout.key_file(layout.SERVICE_ACCOUNT)}",)}
    if all(got.get(k, ()) == v for k, v in before.items()):
        return "finish" if rotation.kind == SERVICE_ACCOUNT_KEY and rotation.phase == "finish" else "before start"
    return None


# --- how long the old root must stay trusted ---------------------------------------------------


def longest_token_lifetime(max_token_expiration_seconds: int, extend: bool) -> timedelta:
    """The longest lifetime of a token the API server signs, from its flags as rendered."""
    longest = timedelta(seconds=max_token_expiration_seconds)
    return max(longest, EXTENDED_TOKEN_LIFETIME) if extend else longest


def finish_not_before(rotation: Rotation, lifetime: timedelta) -> datetime | None:
    """The earliest time `finish` loses no token: the moment the last server stopped signing with
    the old key/issuer plus the longest token lifetime. None: `switch` is not deployed yet."""
    if rotation.signing_stopped is None:
        return None
    return rotation.signing_stopped + lifetime


def next_key_name(pki_dir: Path) -> str:
    """`service-account-<n>`: the first n with no such pair in the PKI dir nor in retired/."""
    n = 1
    while any((Path(pki_dir) / d / layout.cert_file(f"{layout.SERVICE_ACCOUNT}-{n}")).exists()
              or (Path(pki_dir) / d / layout.key_file(f"{layout.SERVICE_ACCOUNT}-{n}")).exists()
              for d in (".", RETIRED_DIR)):
        n += 1
    return f"{layout.SERVICE_ACCOUNT}-{n}"


def retired_name(file_name: str, when: datetime) -> str:
    """`service-account.pem` retired at 2026-12-05T02:00:00Z -> `service-account.20261205T020000Z.pem`."""
    stem, dot, ext = file_name.rpartition(".")
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stem}.{stamp}.{ext}" if dot else f"{file_name}.{stamp}"
