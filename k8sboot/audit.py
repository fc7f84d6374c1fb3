"""CIS Kubernetes Benchmark checks that concern authentication, as pure functions (`check_*`).

Inputs are already-read values: a kube-apiserver or etcd flag list (rendered, or parsed from a
host's unit), file observations (mode/owner), certificate summaries and the time `now`. Each check
returns `Finding`s (PASS/WARN/FAIL with the CIS ID, the reason and the fix) and never raises for a
failed check. IDs as in kube-bench's cis-1.9..1.12 (`1.2.30` exists in cis-1.11/1.12 only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from k8sboot import layout

PASS = "PASS"
WARN = "WARN"
FAIL = "FAIL"

EXPIRY_WARN_DAYS = 30
MASTERS = "system:masters"


@dataclass(frozen=True)
class Finding:
    id: str            # "1.2.1" (CIS) or "k8sboot.*" for k8sboot's own checks
    status: str        # PASS | WARN | FAIL
    subject: str       # "controller-0 (rendered)", "controller-1 (remote)", "pki/admin.pem", ...
    title: str
    reason: str
    fix: str = ""


def _flags_dict(flags: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in flags}


def _present(f: Mapping[str, str], *names: str) -> list[str]:
    return [n for n in names if not f.get(n)]


def check_flags(flags: Iterable[tuple[str, str]], subject: str) -> list[Finding]:
    """1.2.1, 1.2.2, 1.2.4, 1.2.5, 1.2.21-1.2.26, 1.2.30 on one kube-apiserver command line."""
    f = _flags_dict(flags)
    out: list[Finding] = []

    def add(cis: str, ok: bool, title: str, reason_ok: str, reason_bad: str, fix: str, bad: str = FAIL):
        out.append(Finding(cis, PASS if ok else bad, subject, title, reason_ok if ok else reason_bad,
                           "" if ok else fix))

    anon = f.get("anonymous-auth")
    add("1.2.1", anon == "false", "--anonymous-auth is false",
        "--anonymous-auth=false: requests without a credential get 401",
        ("--anonymous-auth=true: requests without a credential are system:anonymous (RBAC then decides; "
         "the tutorial's 403 demo)" if anon == "true" else
         "--anonymous-auth is not set: the anonymous block of --authentication-config decides "
         "(authentication.anonymous in the inventory)" if "authentication-config" in f else
         "--anonymous-auth is not set: the API server's default is true"),
        "set apiserver.anonymous_auth: false (note: unauthenticated /livez,/readyz probes then get 401)",
        bad=WARN)   # CIS marks 1.2.1 Manual: kube-bench reports WARN
    add("1.2.2", "token-auth-file" not in f, "--token-auth-file is not set",
        "no static token file", f"--token-auth-file={f.get('token-auth-file')}: static tokens never expire and "
        "cannot be revoked without a restart", "remove token-auth-file from apiserver.extra_flags")
    missing = _present(f, "kubelet-client-certificate", "kubelet-client-key")
    add("1.2.4", not missing, "--kubelet-client-certificate and --kubelet-client-key are set",
        "the API server authenticates to kubelets with its own client cert",
        f"missing {', '.join('--' + m for m in missing)}: logs/exec reach kubelets as system:anonymous",
        "k8sboot renders both; remove any override")
    add("1.2.5", bool(f.get("kubelet-certificate-authority")), "--kubelet-certificate-authority is set",
        "kubelet serving certs are verified against the cluster CA",
        "missing --kubelet-certificate-authority: kubelet serving certs are not verified",
        "k8sboot renders it; remove any override")
    lookup = f.get("service-account-lookup", "true")
    add("1.2.21", lookup == "true", "--service-account-lookup is true",
        "ServiceAccount tokens are checked against etcd (deleted accounts stop working)"
        if "service-account-lookup" in f else "--service-account-lookup unset (default true)",
        f"--service-account-lookup={lookup}: tokens of deleted ServiceAccounts keep working",
        "remove service-account-lookup from apiserver.extra_flags")
    add("1.2.22", bool(f.get("service-account-key-file")), "--service-account-key-file is set",
        f"tokens are verified with {f.get('service-account-key-file')}",
        "missing --service-account-key-file", "k8sboot renders it; remove any override")
    missing = _present(f, "etcd-certfile", "etcd-keyfile")
    add("1.2.23", not missing, "--etcd-certfile and --etcd-keyfile are set",
        "the API server authenticates to etcd with a client cert",
        f"missing {', '.join('--' + m for m in missing)}", "k8sboot renders both; remove any override")
    missing = _present(f, "tls-cert-file", "tls-private-key-file")
    add("1.2.24", not missing, "--tls-cert-file and --tls-private-key-file are set",
        "the secure port serves kubernetes.pem", f"missing {', '.join('--' + m for m in missing)}",
        "k8sboot renders both; remove any override")
    add("1.2.25", bool(f.get("client-ca-file")), "--client-ca-file is set",
        f"client certs are verified against {f.get('client-ca-file')}",
        "missing --client-ca-file: client certificate authentication is off", "k8sboot renders it")
    add("1.2.26", bool(f.get("etcd-cafile")), "--etcd-cafile is set",
        "etcd's serving cert is verified", "missing --etcd-cafile", "k8sboot renders it")
    ext = f.get("service-account-extend-token-expiration")
    add("1.2.30", ext == "false", "--service-account-extend-token-expiration is false",
        "projected tokens expire when they say",
        ("--service-account-extend-token-expiration is not set: the default (true) extends injected tokens "
         "up to a year" if ext is None else f"--service-account-extend-token-expiration={ext}"),
        "set in the inventory: apiserver.service_account_extend_token_expiration: false (k8sboot's default)")
    return out


_TRUE = ("1", "t", "T", "TRUE", "true", "True")      # what Go's strconv.ParseBool reads as true
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def check_etcd_flags(flags: Iterable[tuple[str, str]], subject: str, *, apiserver_client_ca: str | None = None,
                     ca_digests: Mapping[str, str | None] | None = None) -> list[Finding]:
    """CIS 2.1-2.7 on one etcd member's command line (kube-bench's cis-1.9+ etcd.yaml).

    2.1-2.6 are Automated: a miss is a FAIL. 2.7 (a CA for etcd of its own) is Manual in the
    benchmark: a shared CA is a WARN, as kube-bench reports Manual checks, and a missing
    --trusted-ca-file a FAIL. `apiserver_client_ca`: the API server's --client-ca-file;
    `ca_digests`: sha256 by path of the CA files, when known, so that the same CA under two
    names is seen too."""
    f = _flags_dict(flags)
    out: list[Finding] = []
    fix_tls = "k8sboot renders it from the PKI layout; remove any override of the unit and run k8sboot deploy-etcd"

    def add(cis: str, ok: bool, title: str, reason_ok: str, reason_bad: str, fix: str, bad: str = FAIL):
        out.append(Finding(cis, PASS if ok else bad, subject, title, reason_ok if ok else reason_bad,
                           "" if ok else fix))

    def pair(cis: str, cert: str, key: str, what: str) -> None:
        missing = _present(f, cert, key)
        add(cis, not missing, f"--{cert} and --{key} are set", f"{what} over TLS with {f.get(cert)}",
            f"missing {', '.join('--' + m for m in missing)}: {what} in clear text", fix_tls)

    def is_true(cis: str, name: str, title_what: str, bad_what: str) -> None:
        value = f.get(name)
        add(cis, value in _TRUE, f"--{name} is true", f"--{name}={value}: {title_what}",
            (f"--{name} is not set (etcd's default is false)" if value is None else f"--{name}={value}")
            + f": {bad_what}", f"set --{name}=true ({fix_tls})")

    def not_true(cis: str, name: str, what: str) -> None:
        value = f.get(name)
        ok = value is None or value in _FALSE
        add(cis, ok, f"--{name} is not true", f"--{name} is not set" if value is None else f"--{name}={value}",
            f"--{name}={value}: etcd {what} with a self-signed certificate that no one verifies",
            f"remove --{name} ({fix_tls})")

    pair("2.1", "cert-file", "key-file", "clients reach etcd")
    is_true("2.2", "client-cert-auth", "clients need a certificate signed by --trusted-ca-file",
            "any client that reaches port 2379 reads and writes every object, Secrets included")
    not_true("2.3", "auto-tls", "serves clients")
    pair("2.4", "peer-cert-file", "peer-key-file", "members replicate")
    is_true("2.5", "peer-client-cert-auth", "peers need a certificate signed by --peer-trusted-ca-file",
            "anyone who reaches port 2380 can join the cluster as a peer")
    not_true("2.6", "peer-auto-tls", "talks to its peers")

    trusted = f.get("trusted-ca-file")
    digests = ca_digests or {}
    title = "a unique Certificate Authority is used for etcd"
    if not trusted:
        add("2.7", False, title, "", "--trusted-ca-file is not set: client certificates are not verified", fix_tls)
    elif apiserver_client_ca is None:
        add("2.7", False, title, "", f"--trusted-ca-file={trusted}, but the API server's --client-ca-file is not "
            "known here: cannot compare", "run k8sboot audit --remote on the controllers", bad=WARN)
    else:
        same_path = trusted == apiserver_client_ca
        a, b = digests.get(trusted), digests.get(apiserver_client_ca)
        same_ca = same_path or (a is not None and a == b)
        add("2.7", not same_ca, title,
            f"--trusted-ca-file={trusted} is not the API server's --client-ca-file ({apiserver_client_ca})"
            + (", and their contents differ" if a is not None and b is not None else ""),
            f"--trusted-ca-file={trusted} is " + ("the API server's --client-ca-file" if same_path else
                                                  f"the same CA as the API server's --client-ca-file "
                                                  f"{apiserver_client_ca}")
            + ": every certificate the Kubernetes CA signs (admin, kubelets, kube-proxy) can read and write etcd",
            "give etcd a CA of its own: k8sboot gen-certs issues pki/etcd-ca.pem, k8sboot deploy-etcd uses it",
            bad=WARN)   # CIS marks 2.7 Manual: kube-bench reports WARN
    return out


@dataclass(frozen=True)
class FileObservation:
    path: str
    exists: bool
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    secret: bool = False            # a key or the encryption config: 0600
    directory: bool = False


def planned_remote_files() -> list[FileObservation]:
    """What deploy will install, from the layout (the same values it uses)."""
    out = [FileObservation(layout.REMOTE_PKI_DIR, True, layout.REMOTE_PKI_DIR_MODE, layout.OWNER, layout.GROUP,
                           directory=True)]
    out += [FileObservation(f.path, True, f.mode, f.owner, f.group, secret=f.is_secret)
            for f in layout.CONTROLLER_FILES]
    return out


def check_files(files: Sequence[FileObservation], subject: str) -> list[Finding]:
    """1.1.19 ownership root:root, 1.1.20 certs 0644 or stricter, 1.1.21 keys 0600 or stricter."""
    out: list[Finding] = []
    present = [f for f in files if f.exists]
    missing = [f.path for f in files if not f.exists]
    wrong_owner = [f"{f.path} ({f.owner}:{f.group})" for f in present if (f.owner, f.group) != ("root", "root")]
    out.append(Finding("1.1.19", FAIL if wrong_owner else PASS, subject,
                       "PKI directory and files owned by root:root",
                       "not root:root: " + ", ".join(wrong_owner) if wrong_owner else
                       f"{len(present)} paths owned by root:root",
                       "run k8sboot deploy-apiserver (it chowns to root:root)" if wrong_owner else ""))
    certs = [f for f in present if not f.secret and not f.directory]
    loose = [f"{f.path} ({f.mode:04o})" for f in certs if f.mode is not None and f.mode & ~0o644]
    out.append(Finding("1.1.20", FAIL if loose else PASS, subject, "certificate files 0644 or stricter",
                       "too open: " + ", ".join(loose) if loose else f"{len(certs)} certificates 0644 or stricter",
                       "run k8sboot deploy-apiserver (it sets 0644)" if loose else ""))
    keys = [f for f in present if f.secret]
    loose = [f"{f.path} ({f.mode:04o})" for f in keys if f.mode is not None and f.mode & ~0o600]
    out.append(Finding("1.1.21", FAIL if loose else PASS, subject, "key files 0600 or stricter",
                       "too open: " + ", ".join(loose) if loose else f"{len(keys)} keys 0600 or stricter",
                       "run k8sboot deploy-apiserver (it sets 0600)" if loose else ""))
    dirs = [f for f in present if f.directory and f.mode is not None and f.mode & ~0o700]
    if dirs:
        out.append(Finding("1.1.21", FAIL, subject, "PKI directory 0700",
                           "too open: " + ", ".join(f"{d.path} ({d.mode:04o})" for d in dirs),
                           "run k8sboot deploy-apiserver (it sets 0700)"))
    if missing:
        out.append(Finding("k8sboot.files", FAIL, subject, "every file the unit references is present",
                           "missing: " + ", ".join(missing), "run k8sboot deploy-apiserver"))
    return out


@dataclass(frozen=True)
class CertSummary:
    file: str                      # "pki/admin.pem"
    common_name: str
    organizations: tuple[str, ...]
    not_after: datetime
    is_ca: bool = False


def check_certs(certs: Sequence[CertSummary], now: datetime) -> list[Finding]:
    """5.1.7 (system:masters), certs in system:masters other than admin, expiry within 30 days."""
    out: list[Finding] = []
    if not certs:
        return [Finding("k8sboot.pki", WARN, "pki/", "the local PKI exists", "no certificate found in the PKI dir",
                        "run k8sboot gen-certs -i INV")]
    for c in certs:
        if MASTERS not in c.organizations:
            continue
        if c.common_name == layout.ADMIN:
            out.append(Finding("5.1.7", WARN, c.file, "avoid use of the system:masters group",
                               "the admin cert (CN=admin, O=system:masters, as in the tutorial) bypasses RBAC "
                               "and cannot be revoked short of replacing the CA",
                               "keep it offline for break-glass; for daily use issue a user in a group bound to "
                               "cluster-admin by a ClusterRoleBinding (kubeadm >= 1.29: kubeadm:cluster-admins)"))
        else:
            out.append(Finding("5.1.7", FAIL, c.file, "only admin is in system:masters",
                               f"CN={c.common_name} is in system:masters: it bypasses every authorization check",
                               "reissue it without O=system:masters (k8sboot gen-certs --renew NAME)"))
    if not any(MASTERS in c.organizations for c in certs):
        out.append(Finding("5.1.7", PASS, "pki/", "avoid use of the system:masters group",
                           "no certificate in system:masters"))
    horizon = now + timedelta(days=EXPIRY_WARN_DAYS)
    for c in certs:
        left = c.not_after - now
        if c.not_after <= now:
            out.append(Finding("k8sboot.expiry", FAIL, c.file, "certificate is valid",
                               f"expired on {c.not_after:%Y-%m-%d}",
                               "k8sboot gen-certs --renew NAME, then deploy-apiserver"))
        elif c.not_after <= horizon:
            out.append(Finding("k8sboot.expiry", WARN, c.file, f"more than {EXPIRY_WARN_DAYS} days left",
                               f"expires {c.not_after:%Y-%m-%d} ({left.days} days left)",
                               "k8sboot gen-certs --renew NAME, then deploy-apiserver"))
    if certs and not any(c.not_after <= horizon for c in certs):
        soonest = min(certs, key=lambda c: c.not_after)
        out.append(Finding("k8sboot.expiry", PASS, "pki/", f"no certificate expires within {EXPIRY_WARN_DAYS} days",
                           f"soonest: {soonest.file} on {soonest.not_after:%Y-%m-%d}"))
    return out


def check_consistency(per_host_flags: Mapping[str, Iterable[tuple[str, str]]],
                      per_host_sa_key: Mapping[str, str | None] | None = None) -> list[Finding]:
    """The issuer and the service-account key must be the same on every controller (KTHW#759)."""
    out: list[Finding] = []
    issuers = {host: _flags_dict(flags).get("service-account-issuer") for host, flags in per_host_flags.items()}
    distinct = set(issuers.values())
    if len(distinct) > 1:
        out.append(Finding("k8sboot.issuer", FAIL, "all controllers", "one --service-account-issuer everywhere",
                           "issuers differ: " + ", ".join(f"{h}={v}" for h, v in issuers.items()),
                           "tokens minted by one API server are rejected by another: redeploy every controller"))
    elif distinct:
        out.append(Finding("k8sboot.issuer", PASS, "all controllers", "one --service-account-issuer everywhere",
                           f"{distinct.pop()} on {len(issuers)} controller(s)"))
    if per_host_sa_key:
        keys = set(per_host_sa_key.values())
        ok = len(keys) == 1 and None not in keys
        out.append(Finding("k8sboot.sa-key", PASS if ok else FAIL, "all controllers",
                           "the same service-account key on every controller",
                           "identical" if ok else "differs: " + ", ".join(
                               f"{h}={(v or 'missing')[:12]}" for h, v in per_host_sa_key.items()),
                           "" if ok else "run k8sboot deploy-apiserver on every controller"))
    return out


def check_rotation(journal, now: datetime, stale_after: timedelta | None = None) -> list[Finding]:
    """A rotation left half-done (pki/rotation.yaml) for more than `stale_after` (two weeks): a WARN.
    Half-done is not broken, but two roots stay trusted, and an old key someone may have copied
    stays valid, for as long as it stands."""
    from k8sboot import rotation, rotation_steps

    if journal is None:
        return []
    stale_after = stale_after or rotation.STALE_AFTER
    age = now - journal.updated
    where = f"pki/{rotation.JOURNAL_FILE}"
    title = f"no rotation left half-done for more than {stale_after.days} days"
    state = f"{journal.kind} rotation at phase {journal.phase} ({journal.state}) since {rotation_steps._iso(journal.updated)}"
    if age > stale_after:
        return [Finding("k8sboot.rotation", WARN, where, title, f"{state}: {age.days} days",
                        f"{rotation_steps.next_step(journal)}: the old root stays trusted until finish")]
    return [Finding("k8sboot.rotation", PASS, where, title, state)]


def merge_subjects(findings: Iterable[Finding]) -> list[Finding]:
    """One row for findings that differ only by subject: `controller-0, controller-1 (rendered)`."""
    order: list[tuple] = []
    groups: dict[tuple, list[str]] = {}
    for f in findings:
        key = (f.id, f.status, f.title, f.reason, f.fix)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(f.subject)
    out = []
    for key in order:
        subjects = list(dict.fromkeys(groups[key]))
        suffixes = {s.rsplit(" ", 1)[-1] for s in subjects if " (" in s}
        if len(subjects) > 1 and len(suffixes) == 1 and all(" (" in s for s in subjects):
            subject = ", ".join(s.rsplit(" ", 1)[0] for s in subjects) + " " + suffixes.pop()
        else:
            subject = ", ".join(subjects)
        out.append(Finding(key[0], key[1], subject, key[2], key[3], key[4]))
    return out


def worst(findings: Iterable[Finding]) -> str:
    statuses = {f.status for f in findings}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS
