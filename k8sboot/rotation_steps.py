"""The phases of a rotation as steps: check the order, change the local PKI in one batch with the
journal, deploy every controller (rolling, health-gated), then mark the phase deployed.

Each phase is safe to run again: its local step looks at the journal and the files' fingerprints
and writes only what is not there yet, and the deploy changes only what differs. A run killed at
any moment leaves either the journal of the phase before (run the phase again) or this phase's
journal in state `prepared` with the files that go with it (run it again: it deploys). The PKI
dir's write journal (k8sboot.store) makes the local batch all-or-nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from k8sboot import layout, rotation
from k8sboot.errors import ExitCode, K8sbootError, PkiError
from k8sboot.model import Inventory
from k8sboot.pki import OutputFile
from k8sboot.rotation import DEPLOYED, ISSUER, PREPARED, SERVICE_ACCOUNT_KEY, Rotation, RotationError


@dataclass
class PhasePlan:
    """What one phase will do, shown before it does it (and with --dry-run, instead)."""

    kind: str
    phase: str
    journal: Rotation                        # the journal once the local step is written
    writes: list[OutputFile] = field(default_factory=list)      # into the PKI dir (with the journal)
    retired: list[OutputFile] = field(default_factory=list)     # into pki/retired/ first
    cleanup: list[str] = field(default_factory=list)            # PKI dir names removed once deployed
    remove_now: list[str] = field(default_factory=list)         # removed right after the batch (copied)
    changes: list[str] = field(default_factory=list)            # what changes, in words
    breaks: list[str] = field(default_factory=list)             # who gets 401 after this phase
    resumed: bool = False                    # the journal is already at this phase (a re-run)
    forced: list[str] = field(default_factory=list)             # what --force overrode

    def to_json(self) -> dict:
        return {"kind": self.kind, "phase": self.phase, "resumed": self.resumed, "changes": self.changes,
                "breaks": self.breaks, "forced": self.forced,
                "files": [f.name for f in self.writes if f.name != rotation.JOURNAL_FILE],
                "retired": [f"{rotation.RETIRED_DIR}/{f.name}" for f in self.retired],
                "journal": {"phase": self.journal.phase, "state": self.journal.state}}


def _read(pki_dir: Path, name: str) -> bytes:
    from k8sboot.store import read_optional

    data = read_optional(pki_dir / name)
    if data is None:
        raise PkiError(f"reading {pki_dir / name}: no such file",
                       hint="run `k8sboot gen-certs` first; a rotation replaces an existing PKI")
    return data


def _journal_file(journal: Rotation) -> OutputFile:
    return OutputFile(rotation.JOURNAL_FILE, journal.to_yaml(), layout.CERT_MODE)     # no secret in it


def _order(current: Rotation | None, kind: str, phase: str) -> Rotation | None:
    """The journal this phase may follow; RotationError when it may not run now."""
    phases = rotation.PHASES[kind]
    if current is not None and current.kind != kind:
        article = "an" if current.kind[0] in "aeiou" else "a"
        raise RotationError(f"{article} {current.kind} rotation is in progress (phase {current.phase}, {current.state}); "
                            "one rotation at a time",
                            hint=f"finish it first: k8sboot rotate {current.kind} "
                                 f"{_next_phase(current) or current.phase}; `k8sboot rotate status` shows where it stands")
    index = phases.index(phase)
    if current is None:
        if index == 0:
            return None
        raise RotationError(f"no {kind} rotation is in progress: `{phase}` comes after "
                            f"`{' → '.join(phases[:index])}`", hint=f"start with: k8sboot rotate {kind} {phases[0]}")
    have = phases.index(current.phase)
    if have == index:
        return current                        # a re-run: resume
    if have > index:
        raise RotationError(f"the {kind} rotation is already at phase {current.phase}; {phase} comes before it",
                            hint="phases only go forward; `k8sboot rotate status` shows the next step")
    if have < index - 1:
        raise RotationError(f"the {kind} rotation is at phase {current.phase}: run "
                            f"{phases[have + 1]} before {phase}", hint=f"k8sboot rotate {kind} {phases[have + 1]}")
    if current.state != DEPLOYED:
        raise RotationError(f"phase {current.phase} of the {kind} rotation is not on every controller yet "
                            f"(journal: {current.state}); {phase} would lock out credentials on the others",
                            hint=f"run `k8sboot rotate {kind} {current.phase}` again: it deploys what is missing")
    return current


def _next_phase(current: Rotation) -> str | None:
    if current.state != DEPLOYED:
        return current.phase
    i = current.phases.index(current.phase)
    return current.phases[i + 1] if i + 1 < len(current.phases) else None


def next_step(current: Rotation) -> str:
    """The command that moves this rotation on."""
    phase = _next_phase(current)
    if phase is None:
        return f"k8sboot rotate {current.kind} finish (again: it cleans up)"
    if current.state != DEPLOYED:
        return f"k8sboot rotate {current.kind} {phase} (again: it deploys what is missing)"
    return f"k8sboot rotate {current.kind} {phase}" + (" --to URL" if phase == "start" and current.kind == ISSUER else "")


def _lifetime(inventory: Inventory):
    api = inventory.apiserver
    return rotation.longest_token_lifetime(api.service_account_max_token_expiration_seconds,
                                           api.service_account_extend_token_expiration)


def _finish_gate(plan: PhasePlan, inventory: Inventory, current: Rotation, now: datetime, force: bool,
                 what: str) -> None:
    lifetime = _lifetime(inventory)
    not_before = rotation.finish_not_before(current, lifetime)
    extend = inventory.apiserver.service_account_extend_token_expiration
    source = ("--service-account-extend-token-expiration=true (injected tokens live up to a year)" if extend else
              f"--service-account-max-token-expiration={_duration(lifetime)}")
    breaks = (f"tokens {what} get 401 (kubectl --token, projected tokens a kubelet has not refreshed, "
              "tokens from `k8sboot token create`)")
    if not_before is not None and now >= not_before:
        plan.changes.append(f"every token {what} has expired (signing stopped {_iso(current.signing_stopped)}, "
                            f"longest lifetime {_duration(lifetime)} from {source})")
        return
    plan.breaks.append(breaks)
    if not force:
        raise RotationError(
            f"finish refused: tokens {what} may still be valid until {_iso(not_before)} "
            f"(signing stopped {_iso(current.signing_stopped)} + the longest token lifetime {_duration(lifetime)}, "
            f"from {source})",
            hint=f"run finish after {_iso(not_before)}; --force finishes now and every such token gets 401")
    plan.forced.append(f"finishing before {_iso(not_before)}: " + breaks)


def _iso(t: datetime | None) -> str:
    return "-" if t is None else rotation._iso(t)      # the journal's own time format


def _duration(delta) -> str:
    from k8sboot.flags import go_duration

    return go_duration(int(delta.total_seconds()))


# --- service-account key ---------------------------------------------------------------------------


def plan_service_account_key(inventory: Inventory, phase: str, *, now: datetime, force: bool = False) -> PhasePlan:
    pki_dir = Path(inventory.pki.dir)
    current = _order(inventory.rotation, SERVICE_ACCOUNT_KEY, phase)
    cert, key = layout.cert_file(layout.SERVICE_ACCOUNT), layout.key_file(layout.SERVICE_ACCOUNT)
    if phase == "start":
        if current is not None:                       # resume: the pair is there, the journal says so
            _check_pair(pki_dir, current.name, current.new)
            return PhasePlan(SERVICE_ACCOUNT_KEY, phase, current, resumed=True,
                             changes=[f"(re-run) every controller trusts {current.name} beside the current key"])
        from k8sboot import pki

        old_fp = rotation.key_fingerprint(_read(pki_dir, cert))
        new_key = pki.generate_key(inventory.pki.key_algorithm)
        name = rotation.next_key_name(pki_dir)
        public = pki.public_key_pem(new_key)
        journal = Rotation(SERVICE_ACCOUNT_KEY, "start", PREPARED, now, now, old_fp,
                           rotation.key_fingerprint(public), name)
        return PhasePlan(SERVICE_ACCOUNT_KEY, phase, journal,
                         writes=[OutputFile(layout.cert_file(name), public, layout.CERT_MODE),
                                 OutputFile(layout.key_file(name), pki.key_pem(new_key), layout.KEY_MODE),
                                 _journal_file(journal)],
                         changes=[f"new key pair {layout.cert_file(name)} / {layout.key_file(name)} "
                                  f"({inventory.pki.key_algorithm}, {journal.new[:23]}…)",
                                  f"every controller: --service-account-key-file={cert} and ={layout.cert_file(name)} "
                                  f"(both trusted); still signs with {key}",
                                  "rolling restart of every kube-apiserver (it reads these files at start only)"])
    _check_pair(pki_dir, current.name, current.new)
    if phase == "switch":
        if current.phase == "switch":
            return PhasePlan(SERVICE_ACCOUNT_KEY, phase, current, resumed=True,
                             changes=[f"(re-run) every controller signs with {layout.key_file(current.name)}"])
        journal = current.at("switch", PREPARED, now)
        return PhasePlan(SERVICE_ACCOUNT_KEY, phase, journal, writes=[_journal_file(journal)],
                         changes=[f"every controller: --service-account-signing-key-file={layout.key_file(current.name)} "
                                  "(new tokens signed with the new key; both keys still trusted)",
                                  "rolling restart of every kube-apiserver"])
    # finish
    if current.phase == "finish":
        plan = PhasePlan(SERVICE_ACCOUNT_KEY, phase, current, resumed=True,
                         changes=[f"(re-run) {cert} is the new key; the old one is in {rotation.RETIRED_DIR}/"],
                         cleanup=[layout.cert_file(current.name), layout.key_file(current.name)])
        if rotation.key_fingerprint(_read(pki_dir, cert)) != current.new:
            raise RotationError(f"{pki_dir / cert} is not the new key {current.new[:23]}… the journal names",
                                hint="restore the PKI dir from a backup; the old key is in "
                                     f"{pki_dir / rotation.RETIRED_DIR}")
        return plan
    plan = PhasePlan(SERVICE_ACCOUNT_KEY, phase, current.at("finish", PREPARED, now),
                     cleanup=[layout.cert_file(current.name), layout.key_file(current.name)])
    _finish_gate(plan, inventory, current, now, force, f"signed by the old key ({current.old[:23]}…)")
    old_cert, old_key = _read(pki_dir, cert), _read(pki_dir, key)
    if rotation.key_fingerprint(old_cert) != current.old:
        raise RotationError(f"{pki_dir / cert} is not the old key {current.old[:23]}… the journal names",
                            hint="restore the PKI dir from a backup")
    plan.retired = [OutputFile(rotation.retired_name(cert, current.started), old_cert, layout.KEY_MODE),
                    OutputFile(rotation.retired_name(key, current.started), old_key, layout.KEY_MODE)]
    plan.writes = [OutputFile(cert, _read(pki_dir, layout.cert_file(current.name)), layout.CERT_MODE),
                   OutputFile(key, _read(pki_dir, layout.key_file(current.name)), layout.KEY_MODE),
                   _journal_file(plan.journal)]
    plan.changes = [f"{cert} / {key} become the new pair; the old pair is kept in "
                    f"{rotation.RETIRED_DIR}/{plan.retired[0].name} / {plan.retired[1].name} (0600)",
                    f"every controller: --service-account-key-file={cert} alone (the old key is no longer trusted); "
                    f"{layout.cert_file(current.name)} and {layout.key_file(current.name)} are removed from the hosts",
                    "rolling restart of every kube-apiserver"] + plan.changes
    return plan


def _check_pair(pki_dir: Path, name: str, fingerprint: str) -> None:
    data = _read(pki_dir, layout.cert_file(name))
    if rotation.key_fingerprint(data) != fingerprint:
        raise RotationError(f"{pki_dir / layout.cert_file(name)} is not the key the journal names ({fingerprint[:23]}…)",
                            hint="it was replaced after the rotation started; restore it from a backup")
    from k8sboot import pki

    private = pki.parse_private_key(_read(pki_dir, layout.key_file(name)), pki_dir / layout.key_file(name))
    if rotation.key_fingerprint(pki.public_key_pem(private)) != fingerprint:
        raise RotationError(f"{pki_dir / layout.key_file(name)} does not belong to {layout.cert_file(name)}",
                            hint="restore both from a backup")


# --- issuer ------------------------------------------------------------------------------------------


def check_issuer_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as exc:
        raise K8sbootError(f"--to {url}: not a URL ({exc})", code=ExitCode.USAGE) from None
    if parts.scheme != "https" or not parts.hostname:
        raise K8sbootError(f"--to {url}: the issuer must be an https:// URL with a host",
                           hint="kube-apiserver only accepts https issuers, e.g. https://api.example.com:6443",
                           code=ExitCode.USAGE)
    return url


def plan_issuer(inventory: Inventory, phase: str, *, now: datetime, to: str | None = None,
                force: bool = False) -> PhasePlan:
    current = _order(inventory.rotation, ISSUER, phase)
    configured = inventory.cluster.service_account_issuer
    where = inventory.where("cluster.service_account_issuer")
    if phase == "start":
        if current is not None:
            if to is not None and to != current.new:
                raise RotationError(f"the issuer rotation in progress goes to {current.new}, not {to}",
                                    hint="finish it first, or re-run start with the same --to")
            return PhasePlan(ISSUER, phase, current, resumed=True,
                             changes=[f"(re-run) every controller accepts {current.old} and {current.new}"])
        if to is None:
            raise K8sbootError("rotate issuer start needs --to URL (the new issuer)", code=ExitCode.USAGE,
                               hint="e.g. k8sboot rotate issuer start --to https://api.example.com:6443")
        check_issuer_url(to)
        if to == configured:
            raise RotationError(f"{where}: the inventory already says service_account_issuer: {to}",
                                hint="keep the issuer the cluster runs in the inventory until `rotate issuer "
                                     "finish`; --to names the new one")
        journal = Rotation(ISSUER, "start", PREPARED, now, now, configured, to)
        return PhasePlan(ISSUER, phase, journal, writes=[_journal_file(journal)],
                         changes=[f"every controller: --service-account-issuer={configured} "
                                  f"--service-account-issuer={to} (the first signs; both accepted)",
                                  "rolling restart of every kube-apiserver"])
    if configured not in (current.old, current.new):
        raise RotationError(f"{where}: service_account_issuer {configured} is neither the old ({current.old}) "
                            f"nor the new ({current.new}) issuer of the rotation in progress",
                            hint=f"set it to {current.new}")
    if phase == "switch":
        if current.phase == "switch":
            return PhasePlan(ISSUER, phase, current, resumed=True,
                             changes=[f"(re-run) every controller signs as {current.new}"])
        journal = current.at("switch", PREPARED, now)
        return PhasePlan(ISSUER, phase, journal, writes=[_journal_file(journal)],
                         changes=[f"every controller: --service-account-issuer={current.new} "
                                  f"--service-account-issuer={current.old} (tokens now say iss: {current.new})",
                                  "rolling restart of every kube-apiserver"])
    if configured != current.new:
        raise RotationError(f"{where}: finish needs the inventory to name the new issuer: it says {configured}",
                            hint=f"set cluster.service_account_issuer: {current.new} in {inventory.path}, "
                                 "then run finish again")
    if current.phase == "finish":
        return PhasePlan(ISSUER, phase, current, resumed=True,
                         changes=[f"(re-run) every controller accepts {current.new} only"])
    plan = PhasePlan(ISSUER, phase, current.at("finish", PREPARED, now))
    _finish_gate(plan, inventory, current, now, force, f"issued by {current.old}")
    plan.writes = [_journal_file(plan.journal)]
    plan.changes = [f"every controller: --service-account-issuer={current.new} alone", 
                    "rolling restart of every kube-apiserver"] + plan.changes
    return plan


# --- the CA (and etcd's CA with it) ------------------------------------------------------------------


def _named(name: str, suffix: str) -> tuple[str, str]:
    """(`ca-new.pem`, `ca-new-key.pem`) for ("ca", "-new")."""
    return layout.cert_file(name + suffix), layout.key_file(name + suffix)


def _bundle(*pems: bytes) -> bytes:
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in pems)


def plan_ca(inventory: Inventory, phase: str, *, now: datetime, force: bool = False) -> PhasePlan:
    """start: a new CA and a new etcd CA (not signing yet), every trust store a bundle new + old.
    reissue: the new CAs become pki/ca.pem and pki/etcd-ca.pem; every leaf of the PKI table is
    re-signed by them with its own key (the service-account key is no certificate: untouched);
    the old CA certs stay trusted as ca-old.pem / etcd-ca-old.pem, their keys are retired.
    finish: the bundles are reduced to the new CAs; the old CA certs are retired."""
    from k8sboot import pki
    from k8sboot.store import read_pki

    pki_dir = Path(inventory.pki.dir)
    current = _order(inventory.rotation, rotation.CA, phase)
    spec = pki.build_pki_spec(inventory)
    cas = [(spec.ca, ""), (spec.etcd_ca, "etcd_")]
    if phase == "start":
        if current is not None:
            for ca, field_ in cas:
                if rotation.cert_fingerprint(_read(pki_dir, _named(ca.name, rotation.NEW_SUFFIX)[0])) != \
                        getattr(current, f"{field_}new"):
                    raise RotationError(f"{pki_dir / _named(ca.name, rotation.NEW_SUFFIX)[0]} is not the new CA the "
                                        "journal names", hint="restore the PKI dir from a backup")
            return PhasePlan(rotation.CA, phase, current, resumed=True,
                             changes=["(re-run) every trust store holds both CAs"])
        keys = pki.generate_keys([ca.key_algorithm for ca, _ in cas])
        writes, fps = [], {}
        for (ca, field_), key in zip(cas, keys):
            cert = pki.cert_pem(pki.issue_ca(ca, key, now))
            old = _read(pki_dir, ca.cert_file)
            cert_name, key_name = _named(ca.name, rotation.NEW_SUFFIX)
            writes += [OutputFile(key_name, pki.key_pem(key), layout.KEY_MODE),
                       OutputFile(cert_name, cert, layout.CERT_MODE),
                       OutputFile(rotation.TRUST_FILES[ca.cert_file], _bundle(cert, old), layout.CERT_MODE)]
            fps[f"{field_}old"], fps[f"{field_}new"] = rotation.cert_fingerprint(old), rotation.cert_fingerprint(cert)
        journal = Rotation(rotation.CA, "start", PREPARED, now, now, fps["old"], fps["new"],
                           etcd_old=fps["etcd_old"], etcd_new=fps["etcd_new"])
        return PhasePlan(rotation.CA, phase, journal, writes=writes + [_journal_file(journal)],
                         changes=[f"new CA {_named('ca', rotation.NEW_SUFFIX)[0]} and etcd CA "
                                  f"{_named(layout.ETCD_CA, rotation.NEW_SUFFIX)[0]} ({inventory.pki.key_algorithm}); "
                                  "neither signs anything yet",
                                  "every trust store becomes a bundle new + old: kube-apiserver's --client-ca-file, "
                                  "--kubelet-certificate-authority and --etcd-cafile, etcd's --trusted-ca-file and "
                                  "--peer-trusted-ca-file, the load balancer's CA, kubeconfigs written from now on",
                                  "rolling restarts: etcd, then kube-apiserver; the load balancer reloads"])
    if phase == "reissue":
        if current.phase == "reissue":
            if rotation.cert_fingerprint(_read(pki_dir, layout.cert_file(layout.CA))) != current.new:
                raise RotationError(f"{pki_dir / 'ca.pem'} is not the new CA the journal names",
                                    hint="restore the PKI dir from a backup")
            return PhasePlan(rotation.CA, phase, current, resumed=True,
                             changes=["(re-run) every leaf is signed by the new CA"],
                             remove_now=[n for ca, _ in cas for n in _named(ca.name, rotation.NEW_SUFFIX)])
        facts = read_pki(spec)
        plan = PhasePlan(rotation.CA, phase, current.at("reissue", PREPARED, now),
                         remove_now=[n for ca, _ in cas for n in _named(ca.name, rotation.NEW_SUFFIX)])
        authorities = {}
        for ca, field_ in cas:
            new_cert_name, new_key_name = _named(ca.name, rotation.NEW_SUFFIX)
            new_cert_pem, new_key_pem = _read(pki_dir, new_cert_name), _read(pki_dir, new_key_name)
            if rotation.cert_fingerprint(new_cert_pem) != getattr(current, f"{field_}new"):
                raise RotationError(f"{pki_dir / new_cert_name} is not the new CA the journal names",
                                    hint="restore the PKI dir from a backup")
            old_cert_pem, old_key_pem = _read(pki_dir, ca.cert_file), _read(pki_dir, ca.key_file)
            authorities[ca.name] = pki.Authority(pki.parse_cert(new_cert_pem, pki_dir / new_cert_name),
                                                 pki.parse_private_key(new_key_pem, pki_dir / new_key_name))
            plan.retired.append(OutputFile(rotation.retired_name(ca.key_file, current.started), old_key_pem,
                                           layout.KEY_MODE))
            plan.writes += [OutputFile(ca.key_file, new_key_pem, layout.KEY_MODE),
                            OutputFile(ca.cert_file, new_cert_pem, layout.CERT_MODE),
                            OutputFile(_named(ca.name, rotation.OLD_SUFFIX)[0], old_cert_pem, layout.CERT_MODE),
                            OutputFile(rotation.TRUST_FILES[ca.cert_file], _bundle(new_cert_pem, old_cert_pem),
                                       layout.CERT_MODE)]
        for leaf in spec.leaves:
            fact = facts.leaves.get(leaf.name)
            if fact is None or fact.cert is None or fact.key is None:
                continue          # a leaf the PKI does not have (yet): gen-certs issues it from the new CA
            cert = pki.issue_leaf(leaf, fact.key.public_key(), authorities[leaf.issuer], now)
            plan.writes.append(OutputFile(leaf.cert_file, pki.cert_pem(cert), layout.CERT_MODE))
        plan.writes.append(_journal_file(plan.journal))
        n = sum(1 for f in plan.writes if f.name in {leaf.cert_file for leaf in spec.leaves})
        plan.changes = [f"pki/ca.pem and pki/etcd-ca.pem become the new CAs; the old certs stay trusted as "
                        "ca-old.pem / etcd-ca-old.pem, the old keys go to pki/retired/ (0600)",
                        f"{n} leaf certificates re-signed by the new CAs with their own keys (serving certs "
                        "included; the service-account key is untouched, so no token breaks)",
                        "rolling restarts: etcd (new serving and peer certs), then kube-apiserver; the load "
                        "balancer reloads (new health cert)",
                        "kubeconfigs: write them again (`k8sboot kubeconfig admin`): the new client cert"]
        plan.breaks = lockouts(inventory, "reissue", current)
        return plan
    # finish
    if current.phase == "finish":
        return PhasePlan(rotation.CA, phase, current, resumed=True,
                         changes=["(re-run) every trust store holds the new CA only"],
                         cleanup=_ca_finish_cleanup())
    plan = PhasePlan(rotation.CA, phase, current.at("finish", PREPARED, now), cleanup=_ca_finish_cleanup())
    for ca, _ in cas:
        old_name = _named(ca.name, rotation.OLD_SUFFIX)[0]
        plan.retired.append(OutputFile(rotation.retired_name(ca.cert_file, current.started),
                                       _read(pki_dir, old_name), layout.KEY_MODE))
    plan.writes = [_journal_file(plan.journal)]
    plan.changes = ["every trust store holds the new CAs only; the old CA certs go to pki/retired/ (0600)",
                    "rolling restarts: etcd, then kube-apiserver; the load balancer reloads"]
    plan.breaks = lockouts(inventory, "finish", current)
    return plan


def _ca_finish_cleanup() -> list[str]:
    return [_named("ca", rotation.OLD_SUFFIX)[0], _named(layout.ETCD_CA, rotation.OLD_SUFFIX)[0],
            *rotation.TRUST_FILES.values()]


# --- who is locked out: the kubeconfigs k8sboot wrote ----------------------------------------------------

KUBECONFIG_RECORD = "kubeconfigs.txt"      # in the PKI dir: one absolute path per kubeconfig k8sboot wrote


def record_kubeconfig(pki_dir: Path, path: Path) -> None:
    """Remember a kubeconfig k8sboot wrote, so a CA rotation can say whom it locks out."""
    from k8sboot.store import read_optional, write_private_file

    record = Path(pki_dir) / KUBECONFIG_RECORD
    known = (read_optional(record) or b"").decode().splitlines()
    entry = str(Path(path).expanduser().resolve())
    if entry not in known:
        write_private_file(record, ("\n".join([*known, entry]) + "\n").encode(), mode=layout.CERT_MODE)


def lockouts(inventory: Inventory, phase: str, journal: Rotation) -> list[str]:
    """The kubeconfigs k8sboot wrote that this phase locks out: after `reissue`, those trusting only
    the old CA (the servers present certs of the new one: a TLS error); after `finish`, those whose
    client cert the old CA signed (401)."""
    import base64

    import yaml as _yaml

    from k8sboot.store import read_optional

    record = read_optional(Path(inventory.pki.dir) / KUBECONFIG_RECORD)
    out = []
    for line in (record or b"").decode().splitlines():
        path = Path(line)
        try:
            doc = _yaml.safe_load(path.read_bytes())
            cluster = doc["clusters"][0]["cluster"]
            user = doc["users"][0]["user"]
            trusted = {rotation.cert_fingerprint(c) for c in
                       rotation.split_pem_certs(base64.b64decode(cluster["certificate-authority-data"]))}
            client = base64.b64decode(user["client-certificate-data"])
        except (OSError, TypeError, KeyError, IndexError, ValueError, _yaml.YAMLError):
            continue           # gone or not one k8sboot wrote any more
        if phase == "reissue" and journal.new not in trusted:
            out.append(f"{path}: trusts only the old CA: TLS errors once the servers present new certs "
                       "(write it again with `k8sboot kubeconfig admin`)")
        if phase == "finish" and not _signed_by(client, Path(inventory.pki.dir) / layout.cert_file(layout.CA)):
            out.append(f"{path}: its client cert is the old CA's: 401 once only the new CA is trusted "
                       "(write it again with `k8sboot kubeconfig admin`)")
    return out


def _signed_by(cert_pem: bytes, ca_path: Path) -> bool:
    from k8sboot import pki
    from k8sboot.errors import K8sbootError

    try:
        ca = pki.parse_cert(_read(ca_path.parent, ca_path.name), ca_path)
        return pki.is_directly_issued_by(pki.parse_cert(cert_pem, "kubeconfig"), ca)
    except K8sbootError:
        return False


def plan_phase(inventory: Inventory, kind: str, phase: str, *, now: datetime, to: str | None = None,
               force: bool = False) -> PhasePlan:
    if kind == rotation.CA:
        if to is not None:
            raise K8sbootError("--to is for `rotate issuer start`", code=ExitCode.USAGE)
        return plan_ca(inventory, phase, now=now, force=force)
    if kind == SERVICE_ACCOUNT_KEY:
        if to is not None:
            raise K8sbootError("--to is for `rotate issuer start`", code=ExitCode.USAGE)
        return plan_service_account_key(inventory, phase, now=now, force=force)
    return plan_issuer(inventory, phase, now=now, to=to, force=force)


# --- writing ------------------------------------------------------------------------------------------


def write_local(inventory: Inventory, plan: PhasePlan) -> None:
    """The phase's local step: retired copies first (their own dir, 0700), then the PKI files
    and the journal in one batch. Nothing to write on a re-run."""
    from k8sboot.store import write_pki_files

    pki_dir = Path(inventory.pki.dir)
    if plan.retired:
        write_pki_files(pki_dir / rotation.RETIRED_DIR, plan.retired)
    if plan.writes:
        write_pki_files(pki_dir, plan.writes)
    _unlink(pki_dir, plan.remove_now)


def _unlink(pki_dir: Path, names) -> None:
    import os

    for name in names:
        try:
            os.unlink(pki_dir / name)
        except FileNotFoundError:
            pass


def mark_deployed(inventory: Inventory, journal: Rotation, now: datetime) -> Rotation:
    """Every controller runs the phase: the journal says so (switch: signing with the old stopped now)."""
    from k8sboot.store import write_pki_files

    done = replace(journal, state=DEPLOYED, updated=now)
    if journal.phase == "switch" and journal.signing_stopped is None:
        done = replace(done, signing_stopped=now)
    write_pki_files(Path(inventory.pki.dir), [_journal_file(done)])
    return done


def close(inventory: Inventory, plan: PhasePlan, now: datetime) -> Path:
    """After a deployed finish: the journal kept as retired/rotation-<kind>.<started>.yaml, the
    second pair's files (now copies of the current pair) removed. Safe to repeat."""
    from k8sboot.store import write_pki_files

    pki_dir = Path(inventory.pki.dir)
    done = replace(plan.journal, state=DEPLOYED, updated=now)
    name = rotation.retired_name(f"rotation-{done.kind}.yaml", done.started)
    write_pki_files(pki_dir / rotation.RETIRED_DIR, [OutputFile(name, done.to_yaml(), layout.KEY_MODE)])
    _unlink(pki_dir, (*plan.cleanup, rotation.JOURNAL_FILE))
    return pki_dir / rotation.RETIRED_DIR / name


def last_finished(pki_dir: Path) -> Rotation | None:
    """The most recent finished rotation kept in retired/, for `rotate status`."""
    best = None
    for path in sorted((Path(pki_dir) / rotation.RETIRED_DIR).glob("rotation-*.yaml")):
        try:
            r = rotation.parse(path.read_bytes(), path)
        except (OSError, RotationError):
            continue
        if best is None or r.updated > best.updated:
            best = r
    return best
