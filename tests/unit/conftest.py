"""Fixtures for the unit tests, reusable by every test module.

- `make_inventory(**changes)`: the example cluster (inventory/cluster.yaml) as an `Inventory`
  built directly, with `pki.dir` under the test's tmp_path; keyword changes replace fields of
  `pki` (`key_algorithm=...`) or of the inventory (`controllers=...`).
- `cluster_inventory`: `make_inventory()`.
- `generated_pki`: a complete rsa-2048 PKI for `cluster_inventory`, copied (with its modes) from
  one generated per session, since RSA key generation is the slow part.
- `inventory_file` / `in_tmp_cwd`: a copy of inventory/cluster.yaml under tmp_path, with the
  working directory changed there so that `pki.dir: pki` resolves inside tmp_path.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/certs_helpers.py

from certs_helpers import example_inventory, generate  # noqa: E402

from k8sboot.model import Inventory  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_INVENTORY = ROOT / "inventory" / "cluster.yaml"


@dataclass(frozen=True)
class GeneratedPki:
    dir: Path
    inventory: Inventory

    def path(self, name: str) -> Path:
        return self.dir / name


@pytest.fixture
def make_inventory(tmp_path):
    def make(**changes) -> Inventory:
        return example_inventory(tmp_path / "pki", **changes)
    return make


@pytest.fixture
def cluster_inventory(make_inventory) -> Inventory:
    return make_inventory()


@pytest.fixture(scope="session")
def _pki_template(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pki-template")
    old = os.umask(0o022)
    try:
        generate(example_inventory(base / "pki"))
    finally:
        os.umask(old)
    return base / "pki"


@pytest.fixture
def generated_pki(tmp_path, _pki_template, cluster_inventory) -> GeneratedPki:
    target = tmp_path / "pki"
    shutil.copytree(_pki_template, target)          # copy2 + copystat keep every mode
    return GeneratedPki(dir=target, inventory=cluster_inventory)


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def inventory_file(in_tmp_cwd) -> Path:
    """inventory/cluster.yaml copied under tmp_path (cwd); returns the relative path."""
    (in_tmp_cwd / "inventory").mkdir()
    shutil.copy(EXAMPLE_INVENTORY, in_tmp_cwd / "inventory" / "cluster.yaml")
    return Path("inventory/cluster.yaml")
