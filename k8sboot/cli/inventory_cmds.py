"""`k8sboot inventory check`: validate an inventory and show what k8sboot read from it."""

from __future__ import annotations

from pathlib import Path

import typer

from k8sboot.cli.options import inventory_option, json_option

inventory_app = typer.Typer(
    help="Validate inventory files.",
    no_args_is_help=True,
    epilog="\b\nExamples:\n  k8sboot inventory check -i inventory/cluster.yaml\n"
           "  k8sboot inventory check -i inventory/lab.yaml --json | jq .controllers",
)


@inventory_app.command(
    "check",
    epilog="\b\nExamples:\n  k8sboot inventory check                       # inventory/cluster.yaml\n"
           "  k8sboot inventory check -i inventory/lab.yaml --json",
)
def check(inventory: Path = inventory_option, as_json: bool = json_option) -> None:
    """Validate the whole inventory (nothing is written or dialled) and print what was read."""
    from k8sboot import console
    from k8sboot.inventory import load_inventory

    inv = load_inventory(inventory)
    hosts = [("controller", h) for h in inv.controllers] + [("worker", h) for h in inv.workers]
    if as_json:
        console.json_out({
            "inventory": str(inv.path),
            "cluster": {
                "name": inv.cluster.name, "api_endpoint": inv.cluster.api_endpoint,
                "service_cidr": str(inv.cluster.service_cidr),
                "kubernetes_service_ip": str(inv.cluster.kubernetes_service_ip),
                "cluster_domain": inv.cluster.cluster_domain,
                "service_account_issuer": inv.cluster.service_account_issuer,
                "api_audiences": list(inv.cluster.api_audiences),
            },
            "anonymous_auth": inv.apiserver.anonymous_auth,
            "apiserver_version": inv.apiserver.version,
            "authentication": None if inv.authentication is None else {
                "apiVersion": inv.authentication.api_version,
                "jwt_issuers": list(inv.authentication.issuers),
                "anonymous": None if inv.authentication.anonymous is None else {
                    "enabled": inv.authentication.anonymous.enabled,
                    "paths": list(inv.authentication.anonymous.paths)}},
            "pki_dir": str(inv.pki.dir), "key_algorithm": inv.pki.key_algorithm,
            "controllers": [_host(h) for h in inv.controllers],
            "workers": [_host(h) for h in inv.workers],
        })
        return
    console.table(["role", "name", "address", "internal IP"],
                  [(role, h.name, h.address, str(h.internal_ip)) for role, h in hosts])
    console.info(f"{inv.path}: valid: cluster {inv.cluster.name}, {len(inv.controllers)} controller(s), "
                 f"{len(inv.workers)} worker(s); endpoint {inv.cluster.api_endpoint}, "
                 f"issuer {inv.cluster.service_account_issuer}, "
                 f"anonymous auth {'on' if inv.apiserver.anonymous_auth else 'off'}")
    if inv.authentication is not None:
        issuers = ", ".join(inv.authentication.issuers) or "none"
        console.info(f"authentication: {inv.authentication.api_version} (kube-apiserver {inv.apiserver.version}), "
                     f"{len(inv.authentication.issuers)} JWT issuer(s): {issuers}; every CEL expression compiles")


def _host(h) -> dict:
    return {"name": h.name, "address": h.address, "internal_ip": str(h.internal_ip)}


def register(app: typer.Typer) -> None:
    app.add_typer(inventory_app, name="inventory")
