"""`gen-certs`, `certs list|check-expiration`, `kubeconfig admin`: the PKI on the workstation.

Thin shell: the inventory is loaded, `k8sboot.pki` decides and issues, `k8sboot.store` reads and
writes, `k8sboot.console` prints. Heavy imports (cryptography, yaml) happen inside the commands.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from k8sboot.cli.options import inventory_option, json_option

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
  k8sboot certs check-expiration                     # warns for certs with < 30 days left
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


def _status_json(s) -> dict:
    return {
        "name": s.name, "file": s.file, "present": s.present, "ca": s.is_ca,
        "subject": s.subject, "sans": list(s.sans), "issuer_ok": s.issuer_ok,
        "key_match": s.key_match,
        "not_after": s.not_after.isoformat() if s.not_after else None,
        "residual_days": round(s.residual.total_seconds() / 86400, 2) if s.residual is not None else None,
        "expiring": s.expiring, "expired": s.expired,
    }


def _state(s) -> str:
    if not s.present:
        return "MISSING"
    if s.expired:
        return "EXPIRED"
    return "WARN" if s.expiring else "ok"


def _report_problems(spec, statuses) -> None:
    """Warn about expiring certs; PkiError for a missing file, a foreign issuer, a wrong key."""
    from k8sboot import console
    from k8sboot.errors import PkiError

    for s in statuses:
        if s.present and s.expiring:
            fix = "--force-new-ca" if s.is_ca else f"--renew {s.name}"
            when = ("expired on " + _when(s.not_after) if s.expired
                    else f"expires {_when(s.not_after)} ({_residual(s)} left)")
            console.warn(f"{spec.dir / s.file} {when}: renew with `k8sboot gen-certs {fix}`")
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
    _report_problems(spec, statuses)


@certs_app.command("check-expiration", epilog=CHECK_EXPIRATION_EPILOG)
def check_expiration(
    inventory: Path = inventory_option,
    fail_under: Optional[int] = typer.Option(
        None, "--fail-under", metavar="DAYS", min=0,
        help="Exit with code 13 when any certificate has less than DAYS days left."),
    as_json: bool = json_option,
) -> None:
    """Residual time of every certificate, like `kubeadm certs check-expiration`; warns under 30 days."""
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
            styles={"WARN": "yellow", "EXPIRED": "bold red", "MISSING": "red", "NO": "red"},
        )
    _report_problems(spec, certs)
    if fail_under is not None:
        limit = timedelta(days=fail_under)
        below = [s for s in certs if s.present and s.residual < limit]
        if below:
            raise K8sbootError(
                f"checking expiration: {len(below)} certificate(s) have less than {fail_under} "
                f"days left: " + ", ".join(f"{s.file} ({_residual(s)})" for s in below),
                hint="renew with `k8sboot gen-certs --renew NAME` (the CA: --force-new-ca)",
                code=ExitCode.EXPIRING)


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
    from k8sboot import console, kubeconfig, pki, store
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    cluster = inv.cluster if server is None else replace(inv.cluster, api_endpoint=_server_url(server))
    spec = pki.build_pki_spec(inv)
    facts = store.read_pki(spec, require=True, only={"admin"})
    creds = pki.client_credentials(spec, facts, "admin")
    text = kubeconfig.render_admin_kubeconfig(cluster, ca_pem=creds.ca_pem,
                                              cert_pem=creds.cert_pem, key_pem=creds.key_pem)
    result = store.write_private_file(out.expanduser(), text.encode())
    console.info(f"{result.path}: {result.outcome}: cluster/context {cluster.name}, server "
                 f"{cluster.api_endpoint}, user {kubeconfig.admin_user_name(inv.cluster)} "
                 f"({creds.subject}, valid until {_when(creds.not_after)})")
    console.info(f"  try: kubectl --kubeconfig {result.path} config get-contexts")


def register(app: typer.Typer) -> None:
    app.command("gen-certs", epilog=GEN_CERTS_EPILOG)(gen_certs)
    app.add_typer(certs_app, name="certs")
    app.add_typer(kubeconfig_app, name="kubeconfig")
