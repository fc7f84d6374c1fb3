"""`gen-certs`, `certs list|check-expiration`, `kubeconfig admin`: the PKI on the workstation.

Thin shell: the inventory is loaded, `k8sboot.pki` decides and issues, `k8sboot.store` reads and
writes, `k8sboot.console` prints. Heavy imports (cryptography, yaml) happen inside the commands.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from k8sboot.cli.options import DEFAULT_INVENTORY, inventory_option, json_option

GEN_CERTS_EPILOG = """\
\b
Examples:
  k8sboot gen-certs                             # inventory/cluster.yaml -> pki/
  k8sboot gen-certs -i inventory/lab.yaml --json
  k8sboot gen-certs --renew kubernetes          # new key and cert for the API server
  k8sboot gen-certs --renew admin --renew worker-0
  k8sboot gen-certs --force-new-ca              # replace the CA; reissues every leaf
  openssl x509 -in pki/admin.pem -noout -subject
\b
A second run changes no byte. A leaf whose subject, SANs, usages or key algorithm no longer
match the inventory is reissued by the existing CA; the CA is never replaced without
--force-new-ca; encryption-config.yaml is never regenerated.
"""

CERTS_EPILOG = """\
\b
Examples:
  k8sboot certs list                            # every cert: subject, SANs, issuer, key
  k8sboot certs check-expiration --fail-under 30 || echo "renew soon"
  k8sboot certs check-expiration -i inventory/lab.yaml --json | jq '.[].residual_days'
  k8sboot certs renew kubernetes && k8sboot deploy-apiserver -i inventory/cluster.yaml
  k8sboot certs renew --expiring-within 30d
"""

RENEW_EPILOG = """\
\b
Examples:
  k8sboot certs renew kubernetes                     # the API server's serving cert
  k8sboot deploy-apiserver -i inventory/cluster.yaml # ... then ship it: no restart for the serving pair
  k8sboot certs renew --expiring-within 30d          # every leaf with less than 30 days left
  k8sboot certs renew --expiring-within 720h --dry-run
  k8sboot certs renew admin worker-0 --json
  k8sboot certs renew all                            # every leaf (never a CA, never the SA key)
\b
A renewed leaf is reissued by the same CA, with the same subject, SANs and usages, a new key and
a full validity (never past the CA's own not-after). A CA is not renewed but replaced
(`k8sboot rotate ca`); the service-account key is rotated (`k8sboot rotate service-account-key`).
"""

LIST_EPILOG = """\
\b
Examples:
  k8sboot certs list
  k8sboot certs list -i inventory/lab.yaml --json | jq -r '.[] | .file + " " + .subject'
"""

CHECK_EXPIRATION_EPILOG = """\
\b
Examples:
  k8sboot certs check-expiration                     # WARN under 120 days left, URGENT under 30
  k8sboot certs check-expiration --fail-under 60     # exit 13 when one has < 60 days
  k8sboot certs check-expiration --json
"""

KUBECONFIG_EPILOG = """\
\b
Examples:
  k8sboot kubeconfig admin                          # ./admin.kubeconfig
  k8sboot kubeconfig admin -i inventory/lab.yaml --out lab-admin.kubeconfig
  kubectl --kubeconfig admin.kubeconfig config get-contexts
"""

ADMIN_EPILOG = """\
\b
Examples:
  k8sboot kubeconfig admin
  k8sboot kubeconfig admin --out ~/.kube/k8s-scratch.kubeconfig
  k8sboot kubeconfig admin --server https://10.0.1.10:6443 --out controller-0.kubeconfig   # one controller, not the LB
  kubectl --kubeconfig admin.kubeconfig config view
"""

certs_app = typer.Typer(
    help="Inspect the generated certificates: subjects, SANs, issuer, key match, expiry.",
    epilog=CERTS_EPILOG, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)
kubeconfig_app = typer.Typer(
    help="Write kubeconfig files with embedded credentials from the PKI.",
    epilog=KUBECONFIG_EPILOG, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)

renew_option = typer.Option(
    None, "--renew", metavar="NAME",
    help="Reissue this leaf (new key and cert) even if it is current; repeatable. "
         "Names: admin, kubernetes, kube-apiserver-kubelet-client, kube-controller-manager, "
         "kube-scheduler, kube-proxy, service-account, and each worker's name.",
)
force_new_ca_option = typer.Option(
    False, "--force-new-ca",
    help="Replace the CA (new key) and reissue every leaf. Every kubeconfig and node using the "
         "old CA stops working until it gets the new files.",
)


def _day(value) -> str:
    return value.strftime("%Y-%m-%d") if value is not None else "-"


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


def gen_certs(
    inventory: Path = inventory_option,
    renew: Optional[list[str]] = renew_option,
    force_new_ca: bool = force_new_ca_option,
    as_json: bool = json_option,
) -> None:
    """Create the cluster PKI: what is missing is created, a changed leaf reissued, the rest kept."""
    from datetime import datetime, timezone

    from k8sboot import console, pki, store
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    spec = pki.build_pki_spec(inv)
    renew = list(dict.fromkeys(renew or ()))
    unknown = [name for name in renew if name not in spec.renewable_names]
    if unknown:
        why = ("the CA is replaced only with --force-new-ca" if pki.CA_NAME in unknown
               else f"unknown name {', '.join(map(repr, unknown))}")
        raise typer.BadParameter(f"{why}; valid names: {', '.join(spec.renewable_names)}",
                                 param_hint="'--renew'")
    if inv.rotation is not None and inv.rotation.kind == "ca" and force_new_ca:
        raise typer.BadParameter(f"a CA rotation is in progress (phase {inv.rotation.phase}): a third CA now would "
                                 "lock out every credential the rotation keeps valid; `k8sboot rotate status` "
                                 "shows the next step", param_hint="'--force-new-ca'")
    if inv.rotation is not None and inv.rotation.kind == "service-account-key" and spec.service_account.name in renew:
        raise typer.BadParameter(f"a service-account-key rotation is in progress (phase {inv.rotation.phase}): "
                                 "a new key now would lock out every token the rotation keeps valid; "
                                 "`k8sboot rotate status` shows the next step", param_hint="'--renew'")
    now = datetime.now(timezone.utc)
    with store.pki_lock(spec.dir, create=True):
        recovery = store.finish_interrupted_write(spec.dir)
        facts = store.read_pki(spec)
        plan = pki.plan_pki(spec, facts, now=now, renew=renew, force_new_ca=force_new_ca)
        result = pki.issue_pki(spec, facts, plan, now=now)
        store.write_pki_files(spec.dir, result.files)

    if recovery.finished:
        console.info(f"{spec.dir}/: finished the write of an interrupted run: "
                     f"{', '.join(recovery.finished)}")
    if recovery.temps_removed:
        console.info(f"{spec.dir}/: removed {recovery.temps_removed} temp file(s) left by an "
                     "interrupted run")
    for message in result.warnings:
        console.warn(message)
    dir_mode = store.file_mode(spec.dir)
    if dir_mode is not None and dir_mode & 0o077:
        console.warn(f"{spec.dir}/ is mode {dir_mode:04o}: other users can list it; "
                     f"`chmod 700 {spec.dir}` (k8sboot creates it 0700 but never chmods a dir it finds)")
    if as_json:
        console.json_out({
            "dir": str(spec.dir),
            "files": [{
                "file": row.file, "key_file": row.key_file, "subject": row.subject,
                "sans": list(row.sans),
                "not_after": row.not_after.isoformat() if row.not_after else None,
                "action": row.action.verb, "reason": row.action.reason,
            } for row in result.rows],
            "warnings": list(result.warnings),
        })
    else:
        console.table(
            ["file", "subject", "SANs", "not after", "action"],
            [(row.file, row.subject, "\n".join(row.sans) or "-", _day(row.not_after),
              row.action.describe()) for row in result.rows],
        )
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row.action.verb] = counts.get(row.action.verb, 0) + 1
    if not result.changed:
        summary = f"{spec.dir}/: already up to date, all {len(result.rows)} entries unchanged"
    else:
        summary = f"{spec.dir}/: " + ", ".join(f"{n} {verb}" for verb, n in counts.items())
    console.info(f"{summary}; CA valid until {_when(result.ca_not_after)}")


def _statuses(inventory: Path):
    from datetime import datetime, timezone

    from k8sboot import pki, store
    from k8sboot.inventory import load_inventory

    spec = pki.build_pki_spec(load_inventory(inventory))
    facts = store.read_pki(spec, require=True)
    return spec, pki.check_certs(spec, facts, datetime.now(timezone.utc))


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


# Two thresholds, as cert-manager's renewBefore and kubeadm's 30 days: under 120 days a cert is
# due (WARN: renew it at the next maintenance), under 30 (pki.EXPIRY_WARNING) it is urgent.
RENEW_SOON = 120        # days
URGENT_DAYS = 30        # days: pki.EXPIRY_WARNING (not imported here: cryptography would slow --help)


def _renew_soon(s) -> bool:
    from datetime import timedelta

    return s.present and s.residual is not None and s.residual < timedelta(days=RENEW_SOON)


def _status_json(s) -> dict:
    return {
        "name": s.name, "file": s.file, "present": s.present, "ca": s.is_ca,
        "subject": s.subject, "sans": list(s.sans), "issuer_ok": s.issuer_ok,
        "key_match": s.key_match,
        "not_after": s.not_after.isoformat() if s.not_after else None,
        "residual_days": round(s.residual.total_seconds() / 86400, 2) if s.residual is not None else None,
        "expiring": s.expiring, "expired": s.expired, "renew_soon": _renew_soon(s), "state": _state(s),
    }


def _state(s) -> str:
    """ok | WARN (< 120 days left) | URGENT (< 30 days) | EXPIRED | MISSING."""
    if not s.present:
        return "MISSING"
    if s.expired:
        return "EXPIRED"
    if s.expiring:
        return "URGENT"
    return "WARN" if _renew_soon(s) else "ok"


def _inventory_args(inventory: Path | None) -> str:
    """` -i INV` for a command to suggest, unless INV is the default one."""
    return "" if inventory is None or inventory == DEFAULT_INVENTORY else f" -i {inventory}"


def _report_problems(spec, statuses, inventory: Path | None = None) -> None:
    """Warn about certs due for renewal (under 120 days, urgently under 30) with the command that
    renews them; PkiError for a missing file, a foreign issuer, a wrong key."""
    from k8sboot import console
    from k8sboot.errors import PkiError

    due = [s for s in statuses if _renew_soon(s)]
    for s in due:
        when = ("expired on " + _when(s.not_after) if s.expired
                else f"expires {_when(s.not_after)} ({_residual(s)} left)")
        if s.is_ca:
            fix = "a CA is not renewed but replaced: `k8sboot rotate ca`"
        else:
            fix = (f"renew it now: `k8sboot certs renew{_inventory_args(inventory)} {s.name}`" if s.expiring else
                   f"renew it before {URGENT_DAYS} days are left: `k8sboot certs renew{_inventory_args(inventory)} "
                   f"{s.name}`")
        console.warn(f"{spec.dir / s.file} {when}: {fix}")
    leaves = [s.name for s in due if not s.is_ca]
    if len(leaves) > 1:
        console.warn(f"renew them in one go: k8sboot certs renew{_inventory_args(inventory)} {' '.join(leaves)} "
                     f"(or --expiring-within {RENEW_SOON}d); it says what to deploy next")
    missing = [s.file for s in statuses if not s.present]
    foreign = [s.file for s in statuses if s.present and s.issuer_ok is False]
    keyless = [s.file for s in statuses if s.present and s.key_present is False]
    mismatched = [s.file for s in statuses if s.key_match is False and s.key_present]
    if missing:
        raise PkiError(f"checking {spec.dir}: missing {', '.join(missing)}",
                       hint="run `k8sboot gen-certs` (with the same -i) to create them")
    if keyless:
        raise PkiError(f"checking {spec.dir}: no private key for {', '.join(keyless)} "
                       f"({', '.join(_key_file(spec, f) for f in keyless)} missing)",
                       hint="restore the key from a backup, or reissue with "
                            "`k8sboot gen-certs --renew NAME` (the CA: --force-new-ca)")
    if mismatched:
        raise PkiError(f"checking {spec.dir}: the private key does not match the certificate for "
                       f"{', '.join(mismatched)}",
                       hint="reissue with `k8sboot gen-certs --renew NAME`")
    for ca in (s for s in statuses if s.is_ca):
        if ca.present and ca.issuer_ok is False:
            raise PkiError(f"checking {spec.dir / ca.file}: not a self-signed CA certificate",
                           hint="restore the CA files from a backup; only `k8sboot gen-certs "
                                "--force-new-ca` replaces the CA (and then reissues every leaf)")
    if foreign:
        issuers = {leaf.cert_file: spec.authority(leaf.issuer).cert_file for leaf in spec.leaves}
        named = sorted({issuers.get(f, "ca.pem") for f in foreign})
        raise PkiError(f"checking {spec.dir}: not signed by {' or '.join(str(spec.dir / n) for n in named)}: "
                       f"{', '.join(foreign)}",
                       hint="reissue with `k8sboot gen-certs --renew NAME`")


def _key_file(spec, cert_file: str) -> str:
    """`admin.pem` -> `pki/admin-key.pem` (the service account's public key likewise)."""
    from k8sboot import layout

    return str(spec.dir / layout.key_file(cert_file.removesuffix(".pem")))


def _residual(s) -> str:
    from k8sboot.pki import format_residual

    return format_residual(s.residual)


@certs_app.command("list", epilog=LIST_EPILOG)
def certs_list(inventory: Path = inventory_option, as_json: bool = json_option) -> None:
    """Every certificate of the PKI: subject, SANs, issuer ok, key match, not-after, residual time."""
    from k8sboot import console

    spec, statuses = _statuses(inventory)
    if as_json:
        console.json_out([_status_json(s) for s in statuses])
    else:
        console.table(
            ["file", "subject", "SANs", "issuer ok", "key match", "not after", "residual"],
            [(s.file, s.subject or "-", "\n".join(s.sans) or "-", _yes_no(s.issuer_ok),
              _yes_no(s.key_match), _day(s.not_after) if s.present else "missing",
              _residual(s)) for s in statuses],
            styles={"NO": "red"},
        )
    _report_problems(spec, statuses, inventory)


@certs_app.command("check-expiration", epilog=CHECK_EXPIRATION_EPILOG)
def check_expiration(
    inventory: Path = inventory_option,
    fail_under: Optional[int] = typer.Option(
        None, "--fail-under", metavar="DAYS", min=0,
        help="Exit with code 13 when any certificate has less than DAYS days left."),
    as_json: bool = json_option,
) -> None:
    """Residual time of every certificate, like `kubeadm certs check-expiration`; WARN under 120 days, URGENT under 30."""
    from datetime import timedelta

    from k8sboot import console
    from k8sboot.errors import ExitCode, K8sbootError

    spec, statuses = _statuses(inventory)
    certs = [s for s in statuses if s.name != spec.service_account.name]
    if as_json:
        console.json_out([_status_json(s) for s in certs])
    else:
        console.table(
            ["file", "not after", "residual", "issuer ok", "key match", "status"],
            [(s.file, _day(s.not_after) if s.present else "missing",
              _residual(s), _yes_no(s.issuer_ok), _yes_no(s.key_match), _state(s))
             for s in certs],
            styles={"WARN": "yellow", "URGENT": "bold yellow", "EXPIRED": "bold red", "MISSING": "red",
                    "NO": "red"},
        )
    _report_problems(spec, certs, inventory)
    if fail_under is not None:
        limit = timedelta(days=fail_under)
        below = [s for s in certs if s.present and s.residual < limit]
        if below:
            leaves = [s.name for s in below if not s.is_ca]
            hint = (f"renew with `k8sboot certs renew{_inventory_args(inventory)} {' '.join(leaves)}`" if leaves
                    else "")
            if any(s.is_ca for s in below):
                hint += ("; " if hint else "") + "a CA is replaced with `k8sboot rotate ca`"
            raise K8sbootError(
                f"checking expiration: {len(below)} certificate(s) have less than {fail_under} "
                f"days left: " + ", ".join(f"{s.file} ({_residual(s)})" for s in below),
                hint=hint, code=ExitCode.EXPIRING)


# --- certs renew ----------------------------------------------------------------------------------

ALL = "all"


def _usage(message: str, hint: str):
    from k8sboot.errors import ExitCode, K8sbootError

    return K8sbootError(message, hint=hint, code=ExitCode.USAGE)


def check_renew_names(spec, names) -> list[str]:
    """The leaves to renew for the NAME arguments (`all`: every leaf), in the PKI table's order, or a
    usage error: a CA is replaced, never renewed; the service-account key is rotated; an unknown
    name gets the closest valid one as a hint."""
    import difflib

    leaves = [leaf.name for leaf in spec.leaves]
    cas = [ca.name for ca in spec.authorities]
    wanted: set[str] = set()
    for name in names:
        if name == ALL:
            wanted.update(leaves)
        elif name in cas:
            raise _usage(f"certs renew: {name} is a CA, and a CA is not renewed",
                         "a CA is replaced with `k8sboot rotate ca` (new CA trusted beside the old one, every "
                         "leaf reissued, then the old one dropped: nobody is locked out)")
        elif name == spec.service_account.name:
            raise _usage(f"certs renew: {name} is the ServiceAccount signing key pair, not a certificate",
                         "it is rotated with `k8sboot rotate service-account-key` (tokens signed by the old key "
                         "keep working until the rotation finishes)")
        elif name in leaves:
            wanted.add(name)
        else:
            close = difflib.get_close_matches(name, leaves + cas + [spec.service_account.name, ALL], n=1)
            raise _usage(f"certs renew: unknown certificate {name!r}",
                         (f"did you mean {close[0]!r}? " if close else "") + f"names: {', '.join(leaves)}, or {ALL}")
    return [n for n in leaves if n in wanted]


def parse_within(text: str):
    """`--expiring-within`: `30d`, `720h`, `1d12h` -> timedelta, or a usage error."""
    from k8sboot.tokens import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _usage(f"--expiring-within: {exc}", "e.g. --expiring-within 30d, or 720h") from None


def next_steps(renewed, inventory: Path, has_load_balancers: bool) -> list[tuple[str, str]]:
    """(command, why) that put the renewed files where they are used, from the path tables: a file
    in layout.CONTROLLER_FILES -> deploy-apiserver (no restart when the running server re-reads
    every one of them), layout.ETCD_FILES -> deploy-etcd, the health client -> deploy-lb (HAProxy's
    check presents it), admin -> a new kubeconfig; the rest k8sboot does not deploy."""
    from k8sboot import layout

    def files(name: str) -> set[str]:
        return {layout.cert_file(name), layout.key_file(name)}

    shipped = {f.local_name for f in layout.CONTROLLER_FILES}
    etcd = {f.local_name for f in layout.ETCD_FILES}
    inv = f" -i {inventory}"
    steps = []
    to_etcd = [n for n in renewed if files(n) & etcd]
    if to_etcd:
        steps.append((f"k8sboot deploy-etcd{inv}", f"{', '.join(to_etcd)}: a rolling restart of the etcd members"))
    to_api = [n for n in renewed if files(n) & shipped]
    if to_api:
        changed = sorted(set().union(*(files(n) & shipped for n in to_api)))
        quiet = all(layout.picked_up_without_restart(layout.remote_path(f)) for f in changed)
        steps.append((f"k8sboot deploy-apiserver{inv}",
                      f"{', '.join(to_api)}: " + ("no restart, the running kube-apiservers re-read their serving "
                                                  "cert/key by themselves" if quiet else
                                                  "a rolling restart (kube-apiserver reads these files at start)")))
    if layout.HEALTH_CLIENT in renewed and has_load_balancers:
        steps.append((f"k8sboot deploy-lb{inv}", f"{layout.HEALTH_CLIENT}: the load balancer's health check presents it "
                      "(a reload, not a restart)"))
    if layout.ADMIN in renewed:
        steps.append((f"k8sboot kubeconfig admin{inv}", "admin: a kubeconfig with the new cert (old ones keep working "
                      "until the old cert expires)"))
    handled = {*to_etcd, *to_api, layout.ADMIN, layout.HEALTH_CLIENT, layout.ETCD_HEALTHCHECK_CLIENT}
    by_hand = [n for n in renewed if n not in handled]
    if by_hand:
        steps.append(("", f"{', '.join(by_hand)}: k8sboot does not deploy these; copy NAME.pem and NAME-key.pem "
                      "to where they are used"))
    return steps


def certs_renew(
    names: Optional[list[str]] = typer.Argument(
        None, metavar="[NAME]...",
        help="Leaves to renew: admin, kubernetes, kube-apiserver-kubelet-client, kube-controller-manager, "
             "kube-scheduler, kube-proxy, k8sboot-health, etcd-server, etcd-peer, apiserver-etcd-client, "
             "etcd-healthcheck-client, each worker's name, or all."),
    inventory: Path = inventory_option,
    expiring_within: Optional[str] = typer.Option(
        None, "--expiring-within", metavar="DURATION",
        help="Also renew every leaf with less than this left (or expired): 30d, 720h."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be renewed; write nothing."),
    as_json: bool = json_option,
) -> None:
    """Reissue leaf certificates from the same CA (new key, full validity); then deploy them."""
    from datetime import datetime, timezone

    from k8sboot import console, pki, store
    from k8sboot.errors import PkiError
    from k8sboot.inventory import load_inventory

    if not names and expiring_within is None:
        raise _usage("certs renew: name certs or --expiring-within",
                     "e.g. `k8sboot certs renew kubernetes`, or `k8sboot certs renew --expiring-within 30d`; "
                     "`k8sboot certs check-expiration` shows what is due")
    within = parse_within(expiring_within) if expiring_within is not None else None
    inv = load_inventory(inventory)
    spec = pki.build_pki_spec(inv)
    named = check_renew_names(spec, names or ())
    now = datetime.now(timezone.utc)
    warnings: list[str] = []
    with store.pki_lock(spec.dir):
        if dry_run:
            store.check_no_interrupted_write(spec.dir)
        else:
            store.finish_interrupted_write(spec.dir)
        facts = store.read_pki(spec, require=True)
        due = []
        if within is not None:
            for s in pki.check_certs(spec, facts, now):
                if not s.present or s.residual is None or s.residual >= within:   # the SA pair: no expiry
                    continue
                if s.is_ca:
                    warnings.append(f"{spec.dir / s.file} expires {_when(s.not_after)}, within {expiring_within} too: "
                                    "a CA is not renewed but replaced, with `k8sboot rotate ca`")
                else:
                    due.append(s.name)
        chosen = [leaf.name for leaf in spec.leaves if leaf.name in named or leaf.name in due]
        why = {n: ("named" if n in named else f"< {expiring_within} left") for n in chosen}
        if chosen:
            plan = pki.plan_pki(spec, facts, now=now, renew=chosen)
            others = [a for a in plan.actions if a.changes and a.name not in chosen]
            if others:
                raise PkiError(f"certs renew: {spec.dir} needs more than a renewal: "
                               + "; ".join(f"{a.name}: {a.describe()}" for a in others),
                               hint=f"run `k8sboot gen-certs{_inventory_args(inventory)}` first: it brings the PKI "
                                    "in line with the inventory; then renew")
            result = pki.issue_pki(spec, facts, plan, now=now)
            if not dry_run:
                store.write_pki_files(spec.dir, result.files)
            new_after = {row.file: row.not_after for row in result.rows}
        else:
            new_after = {}

    rows = []
    for name in chosen:
        leaf, fact = spec.leaf(name), facts.leaves[name]
        old = pki.not_after_of(fact.cert) if fact.cert is not None else None
        new = new_after.get(leaf.cert_file)
        rows.append((name, leaf.cert_file, old, new, why[name]))
        if new is not None and (new - now).days < leaf.validity_days - 1:
            warnings.append(f"{spec.dir / leaf.cert_file}: valid only until {_when(new)}, the CA's own not-after "
                            f"(not {leaf.validity_days} days): the CA is replaced with `k8sboot rotate ca`")
    steps = next_steps(chosen, inventory, bool(inv.load_balancers)) if chosen else []
    for message in warnings:
        console.warn(message)
    if as_json:
        console.json_out({
            "dir": str(spec.dir), "dry_run": dry_run,
            "renewed": [{"name": n, "file": f, "old_not_after": o.isoformat() if o else None,
                         "new_not_after": w.isoformat() if w else None, "why": y} for n, f, o, w, y in rows],
            "next": [cmd for cmd, _ in steps if cmd],
            "warnings": warnings,
        })
    elif rows:
        verb = "would renew" if dry_run else "renewed"
        console.table(["name", "file", "old not after", "new not after", "why"],
                      [(n, f, _when(o), _when(w), y) for n, f, o, w, y in rows], title=f"certs renew: {verb}")
    if not chosen:
        soonest = min((s for s in pki.check_certs(spec, facts, now) if s.present and not s.is_ca
                       and s.name != spec.service_account.name), key=lambda s: s.residual, default=None)
        console.info(f"{spec.dir}/: nothing to renew: no leaf expires within {expiring_within}"
                     + (f" (the soonest: {soonest.file}, {_when(soonest.not_after)})" if soonest else ""))
        return
    what = f"{len(chosen)} leaf certificate(s), each with a new key, signed by the same CA"
    if dry_run:
        console.info(f"{spec.dir}/: dry run, nothing written: would renew {what}")
    else:
        console.info(f"{spec.dir}/: renewed {what} (keys 0600)")
    for cmd, reason in steps:
        console.info(f"  next: {cmd}   # {reason}" if cmd else f"  note: {reason}")


def _server_url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    try:
        parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise typer.BadParameter(f"{text!r} is not an https://HOST[:PORT] URL", param_hint="--server")
    return text.rstrip("/")


@kubeconfig_app.command("admin", epilog=ADMIN_EPILOG)
def kubeconfig_admin(
    inventory: Path = inventory_option,
    out: Path = typer.Option(Path("admin.kubeconfig"), "--out", metavar="PATH",
                             help="Where to write it (mode 0600)."),
    server: str = typer.Option(None, "--server", metavar="URL",
                               help="Dial this https URL instead of the inventory's api_endpoint, e.g. one "
                                    "controller behind the load balancer (its serving cert must name it)."),
) -> None:
    """Write admin.kubeconfig: embedded CA, admin cert and key; server = the inventory's API endpoint."""
    from k8sboot import console, kubeconfig, layout, pki, store
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    cluster = inv.cluster if server is None else replace(inv.cluster, api_endpoint=_server_url(server))
    spec = pki.build_pki_spec(inv)
    facts = store.read_pki(spec, require=True, only={"admin"})
    creds = pki.client_credentials(spec, facts, "admin")
    from k8sboot import rotation, rotation_steps

    trust = rotation.trust_name(inv.rotation, layout.cert_file(layout.CA))    # both CAs mid-rotation
    ca_pem = store.read_optional(spec.dir / trust) or creds.ca_pem
    text = kubeconfig.render_admin_kubeconfig(cluster, ca_pem=ca_pem,
                                              cert_pem=creds.cert_pem, key_pem=creds.key_pem)
    result = store.write_private_file(out.expanduser(), text.encode())
    rotation_steps.record_kubeconfig(spec.dir, result.path)       # whom a CA rotation would lock out
    console.info(f"{result.path}: {result.outcome}: cluster/context {cluster.name}, server "
                 f"{cluster.api_endpoint}, user {kubeconfig.admin_user_name(inv.cluster)} "
                 f"({creds.subject}, valid until {_when(creds.not_after)})")
    console.info(f"  try: kubectl --kubeconfig {result.path} config get-contexts")


def register(app: typer.Typer) -> None:
    app.command("gen-certs", epilog=GEN_CERTS_EPILOG)(gen_certs)
    certs_app.command("renew", epilog=RENEW_EPILOG)(certs_renew)
    app.add_typer(certs_app, name="certs")
    app.add_typer(kubeconfig_app, name="kubeconfig")
