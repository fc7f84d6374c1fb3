#!/usr/bin/env python3
"""A naive parallel Fabric deploy: what one writes in an afternoon instead of k8sboot.

All controllers at once (one thread and one SSH connection per host). Each host: upload every
file (the eight PKI files and the rendered unit) over SFTP to a staging directory, then one
command that installs them with the right modes, daemon-reload, enable, restart, and waits until
the unit is active. No fact reads, no diff: it uploads everything and restarts every time.
Same job and same end state as `k8sboot deploy-apiserver`; strict host keys from the inventory.

usage: naive_fabric.py -i inventory/lab.yaml -p PKI_DIR -u UNITS_DIR [--hosts a,b]
       (UNITS_DIR/HOST.kube-apiserver.service from `k8sboot render-apiserver --out UNITS_DIR`)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lib  # noqa: E402  (bench/lib.py)

STAGING = "/root/.naive-fabric-staging"


def install_script() -> str:
    lines = ["set -e",
             f"mkdir -p {lib.REMOTE_PKI_DIR}", f"chmod {lib.REMOTE_PKI_DIR_MODE:o} {lib.REMOTE_PKI_DIR}"]
    for name, mode in lib.PKI_FILES:
        lines.append(f"install -o root -g root -m {mode:04o} {STAGING}/{name} {lib.REMOTE_PKI_DIR}/{name}")
    lines += [f"install -o root -g root -m {lib.UNIT_MODE:04o} {STAGING}/{lib.UNIT_NAME} {lib.UNIT_PATH}",
              f"rm -rf {STAGING}",
              "systemctl daemon-reload",
              "systemctl enable kube-apiserver 2>/dev/null",
              "systemctl restart kube-apiserver",
              "for i in $(seq 1 100); do systemctl is-active --quiet kube-apiserver && exit 0; sleep 0.1; done",
              'echo "kube-apiserver not active: $(systemctl is-active kube-apiserver)" >&2; exit 1']
    return "\n".join(lines)


def deploy(inv: lib.LabInventory, host: lib.LabHost, pki: Path, units: Path) -> float:
    import paramiko
    from fabric import Config, Connection

    t0 = time.perf_counter()
    c = Connection(host.address, user=inv.user, port=inv.port, connect_timeout=15,
                   config=Config(overrides={"run": {"in_stream": False}, "load_ssh_configs": False}),
                   connect_kwargs={"key_filename": str(inv.identity_file), "look_for_keys": False,
                                   "allow_agent": False})
    c.client.load_host_keys(str(inv.known_hosts))
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        c.run(f"mkdir -p -m 0700 {STAGING}", hide=True)
        for name, _mode in lib.PKI_FILES:
            c.put(str(pki / name), f"{STAGING}/{name}")
        c.put(str(units / f"{host.name}.{lib.UNIT_NAME}"), f"{STAGING}/{lib.UNIT_NAME}")
        c.run("bash -c " + shlex.quote(install_script()), hide=True)
    finally:
        c.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--inventory", required=True, type=Path)
    ap.add_argument("-p", "--pki", required=True, type=Path)
    ap.add_argument("-u", "--units", required=True, type=Path)
    ap.add_argument("--hosts", help="comma-separated host names (default: every controller)")
    args = ap.parse_args(argv)
    inv = lib.read_lab_inventory(args.inventory)
    hosts = inv.hosts
    if args.hosts:
        wanted = set(args.hosts.split(","))
        hosts = tuple(h for h in hosts if h.name in wanted)
    failed = 0
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = {h.name: pool.submit(deploy, inv, h, args.pki, args.units) for h in hosts}
        for name, fut in futures.items():
            try:
                print(f"{name}: deployed in {fut.result():.2f} s")
            except Exception as exc:  # noqa: BLE001 - one host failing never hides the others
                failed += 1
                print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
