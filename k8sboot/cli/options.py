"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_INVENTORY = Path("inventory/cluster.yaml")

inventory_option = typer.Option(
    DEFAULT_INVENTORY, "-i", "--inventory", metavar="INV",
    help="The inventory YAML file (see inventory/cluster.yaml).",
)
json_option = typer.Option(False, "--json", help="Print JSON on stdout instead of a table.")
