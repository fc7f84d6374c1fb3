"""Shared by the deploy/verify/audit tests: a small inventory, fake PKI bytes, and an in-memory
fake of `k8sboot.remote.Remote` that behaves like a controller with systemd and the stand-in
(starts only when every file its flags reference exists)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from pathlib import Path

from k8sboot import layout
from k8sboot import plan as planmod
from k8sboot.flags import parse_argv_flags, parse_unit_exec_start
from k8sboot.inventory import parse_inventory
from k8sboot.plan import FileFact, HostFacts, ServiceFact

INVENTORY_YAML = """\
cluster:
  name: k8s-test
  api_endpoint: https://10.240.0.10:6443
  service_cidr: 10.32.0.0/24
  cluster_domain: cluster.local
pki:
  dir: {pki}
  subject: {{C: VN, OU: k8s-test}}
apiserver:
  anonymous_auth: {anonymous}
  authorization_mode: [Node, RBAC]
  etcd_servers: [https://10.240.0.10:2379]
{extra}ssh:
  user: root
  known_hosts: /nonexistent/known_hosts
controllers:
  - {{name: controller-0, address: 10.240.0.10}}
  - {{name: controller-1, address: 10.240.0.11}}
  - {{name: controller-2, address: 10.240.0.12}}
"""


def make_inventory(pki="pki", anonymous=False, extra_flags: dict | None = None, path="inv.yaml",
                   apiserver_extra: str = ""):
    extra = apiserver_extra
    if extra_flags:
        extra += "  extra_flags:\n" + "".join(f"    {k}: {v!r}\n" if isinstance(v, str) else f"    {k}: {v}\n"
                                              for k, v in extra_flags.items())
    text = INVENTORY_YAML.format(pki=pki, anonymous=str(anonymous).lower(), extra=extra)
    return parse_inventory(text, Path(path))


def fake_pki_files(tag: str = "") -> dict[str, bytes]:
    return {spec.local_name: f"--- {spec.local_name} {tag} ---\n".encode() for spec in layout.CONTROLLER_FILES}


def write_fake_pki(directory: Path, tag: str = "") -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    files = fake_pki_files(tag)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "ca-key.pem").write_bytes(b"CA KEY - never uploaded\n")
    return files


_pids = itertools.count(100)


class FakeHost:
    """The state of one controller: files (content, mode, owner, group) and the unit."""

    def __init__(self, name: str, *, binary: bool = True, unit_path: str = layout.UNIT_PATH,
                 binary_path: str = layout.BINARY_PATH, pki_dir: str = layout.REMOTE_PKI_DIR):
        self.name = name
        self.unit_path, self.binary_path, self.pki_dir = unit_path, binary_path, pki_dir
        self.files: dict[str, tuple[bytes, int, str, str]] = {}
        self.dirs: dict[str, tuple[int, str, str]] = {"/etc/systemd/system": (0o755, "root", "root"),
                                                      "/usr/local/bin": (0o755, "root", "root")}
        self.executed: list[str] = []     # scripts run with `exec` (e.g. apt-get)
        self.apt_ok = True                # what an apt-get install of the binary does
        if binary:
            self.files[binary_path] = (b"#!stand-in\n", 0o755, "root", "root")
        self.loaded_unit: bytes | None = None
        self.enabled = False
        self.active = "inactive"
        self.sub = "dead"
        self.pid = 0
        self.started = 0
        self.n_restarts = 0
        self.commands: list[str] = []     # what happened, in order
        self.uploads: list[str] = []
        self.locked = False

    # systemd-ish behaviour
    def start(self):
        self.commands.append("restart")
        if self.loaded_unit is None:    # like systemd >= 246: a never-loaded unit is read from disk
            self.loaded_unit = self.files.get(self.unit_path, (None,))[0]
        unit = self.loaded_unit
        argv = parse_unit_exec_start(unit.decode()) if unit else None
        missing = []
        if argv:
            for _, value in parse_argv_flags(argv):
                if value.startswith(self.pki_dir) and value not in self.files:
                    missing.append(value)
        if not argv or missing or argv[0] not in self.files:
            self.active, self.sub, self.pid = "activating", "auto-restart", 0
            self.journal = [f"kube-apiserver: open {m}: no such file or directory" for m in missing] or ["failed"]
        else:
            self.active, self.sub, self.pid = "active", "running", next(_pids)
            self.argv = tuple(argv)
            self.started += 1
            if getattr(self, "data_dir", None):      # etcd: a started member has data
                self.dirs[f"{self.data_dir}/member"] = (0o700, "root", "root")

    def service(self) -> ServiceFact:
        return ServiceFact(load_state="loaded" if self.loaded_unit else "not-found", active_state=self.active,
                           sub_state=self.sub, unit_file_state="enabled" if self.enabled else "disabled",
                           result="success" if self.active == "active" else "exit-code", main_pid=self.pid,
                           n_restarts=0, active_enter_usec=self.started,
                           need_daemon_reload=self.files.get(self.unit_path, (None,))[0] != self.loaded_unit
                           and self.loaded_unit is not None,
                           listening=self.active == "active",
                           argv=getattr(self, "argv", None) if self.active == "active" else None)


class FakeRemote:
    """In-memory implementation of the `Remote` protocol over a FakeHost."""

    def __init__(self, host: FakeHost):
        self.host = host
        self.name = host.name
        self.closed = False

    def read_facts(self, request, *, lock_wait=None):
        h = self.host
        if lock_wait is not None:
            if h.locked:
                from k8sboot.errors import LockedError
                raise LockedError(f"{h.name}: another k8sboot deploy holds the lock")
            h.locked = True
            self._locked = True
        files = {}
        for path in (*request.hashed, *request.stat_only, h.unit_path):
            if path in h.files:
                data, mode, owner, group = h.files[path]
                files[path] = FileFact(path, True, hashlib.sha256(data).hexdigest() if path in request.hashed
                                       else None, mode, owner, group)
        for d in (request.state_dir, *request.stat_only):
            if d in h.dirs:
                mode, owner, group = h.dirs[d]
                files[d] = FileFact(d, True, None, mode, owner, group, kind="directory")
        unit = h.files.get(h.unit_path)
        return HostFacts(files=files, service=h.service(), unit_text=unit[0].decode() if unit else None,
                         sections={name: self._section(command) for name, command in request.sections})

    def _section(self, command: str) -> str:
        """`cat -- PATH 2>/dev/null` answers the file's content (empty when missing); others ''."""
        import re
        import shlex

        m = re.fullmatch(r"cat -- (\S+) 2>/dev/null", command)
        if m is None:
            return ""
        data = self.host.files.get(shlex.split(m.group(1))[0])
        return data[0].decode() if data else ""

    def exec(self, script, *, stdin=None, timeout=120.0, what="running a command"):
        from k8sboot.remote import CommandResult

        h = self.host
        h.executed.append(script)
        if "apt-get install" in script:
            h.commands.append("apt-get install")
            if not h.apt_ok:
                return CommandResult(3, b"@@k8sboot:apt\nE: Unable to locate package etcd-server\n", b"")
            h.files[h.binary_path] = (b"#!etcd\n", 0o755, "root", "root")
        return CommandResult(0, b"", b"")

    def stage(self, plan):
        self._stage(plan)
        self.host.commands.append("stage")

    def _stage(self, plan):
        h = self.host
        for p in plan.strays:
            h.files.pop(p, None)
        for d in plan.dirs:
            h.dirs[d.dir.path] = (d.dir.mode, d.dir.owner, d.dir.group)
        for c in plan.uploads:
            f = c.file
            h.files[f.temp_path] = (f.content, f.mode, f.owner, f.group)

    def unstage(self, plan):
        for c in plan.uploads:
            self.host.files.pop(c.file.temp_path, None)
        self.host.commands.append("unstage")

    def recover(self, component=planmod.APISERVER):
        self.host.commands.append("recover")

    def install(self, plan, *, keep_previous=False, wait=None, port=6443, staged=False, stop_timeout=0.0):
        h = self.host
        if not staged:
            self._stage(plan)
        for c in plan.uploads:
            f = c.file
            if keep_previous and f.path in h.files:
                h.files[f.prev_path] = h.files[f.path]
            h.files[f.path] = h.files.pop(f.temp_path)
            h.uploads.append(f.name)
        for c in plan.fixups:
            data = h.files[c.file.path][0]
            h.files[c.file.path] = (data, c.file.mode, c.file.owner, c.file.group)
        for path in plan.removals:          # an obsolete file (a finished rotation's second key)
            removed = h.files.pop(path, None)
            if keep_previous and removed is not None:
                h.files[planmod.beside(path, planmod.PREV_SUFFIX)] = removed
        if plan.daemon_reload:
            h.commands.append("daemon-reload")
            h.loaded_unit = h.files.get(h.unit_path, (None,))[0]
        if plan.enable:
            h.commands.append("enable")
            h.enabled = True
        if plan.mark_pending:
            h.files[plan.component.restart_pending_path] = (b"", 0o600, "root", "root")
        if plan.restart:
            h.files.pop(plan.component.restart_pending_path, None)
            h.start()
            if wait is not None:
                return h.service()
        return None

    def read_service(self, port=6443):
        return self.host.service()

    def read_journal(self, lines=15, unit=layout.UNIT_NAME):
        return list(getattr(self.host, "journal", []))[-lines:]

    def rollback(self, plan, *, wait=None, port=6443, stop_timeout=0.0):
        h = self.host
        h.commands.append("rollback")
        for c in plan.uploads:
            f = c.file
            if c.existed and f.prev_path in h.files:
                h.files[f.path] = h.files.pop(f.prev_path)
            elif not c.existed:
                h.files.pop(f.path, None)
        if plan.unit_changed:
            h.loaded_unit = h.files.get(h.unit_path, (None,))[0]
        h.start()
        return h.service() if wait is not None else None

    def cleanup(self, plan):
        for c in plan.uploads:
            self.host.files.pop(c.file.prev_path, None)

    def close(self):
        self.closed = True
        if getattr(self, "_locked", False):
            self.host.locked = False


def fake_connector(hosts: dict[str, FakeHost], opened: list | None = None):
    """A connector over the fake hosts; every remote it opens is appended to `opened`, if given."""
    def connect(host):
        remote = FakeRemote(hosts[host.name])
        if opened is not None:
            opened.append(remote)
        return remote
    return connect


def fake_readyz(hosts: dict[str, FakeHost]):
    """The gate's /readyz over the fake hosts: 200 when the unit is active, else no answer."""
    from k8sboot.probe import ProbeAnswer

    def readyz(host):
        if hosts[host.name].active == "active":
            return ProbeAnswer(200, "ok")
        return ProbeAnswer(None, error="ConnectionRefusedError: [Errno 111] Connection refused")
    return readyz


def healthy_etcd(asked: list | None = None):
    """deploy-apiserver's etcd check over no network: every --etcd-servers URL answers
    {"health":"true"}; each URL asked is appended to `asked`, if given."""
    from k8sboot.probe import ProbeAnswer

    def ask(url):
        if asked is not None:
            asked.append(url)
        return ProbeAnswer(200, '{"health":"true","reason":""}')
    return ask


def planned_unit(inventory, name="controller-0") -> str:
    from k8sboot.render import render_unit
    return render_unit(inventory, inventory.controller(name)).text


__all__ = ["make_inventory", "fake_pki_files", "write_fake_pki", "FakeHost", "FakeRemote", "fake_connector",
           "healthy_etcd", "planned_unit", "planmod"]


# --- lab (tests/lab): an inventory for the shared lab hosts, a PKI, the CLI, SSH checks ---------

LAB_INVENTORY = """\
cluster:
  name: k8sboot-deploy-test
  api_endpoint: https://{first}:6443
  service_cidr: 10.32.0.0/24
  cluster_domain: cluster.local
pki:
  dir: {pki}
  subject: {{C: VN, OU: k8sboot-deploy-test}}
apiserver:
  anonymous_auth: {anonymous}
  authorization_mode: [Node, RBAC]
  extra_flags: {extra_flags}       # no etcd_servers: every controller's member (deploy-etcd's)
  shutdown_delay_duration: 1       # the deploy tests restart often; tests/lab/test_rolling.py drains longer
ssh:
  user: {user}
  port: 22
  identity_file: {identity_file}
  known_hosts: {known_hosts}
  sudo: {sudo}
  connect_timeout: 5
{proxy_jump}controllers:
{controllers}"""

WATCHED = tuple(f.path for f in layout.CONTROLLER_FILES) + (layout.UNIT_PATH,)


def fresh_lab_env(lab_hosts, tmp_path_factory, name: str, count: int = 3):
    """A module's LabEnv on `count` controllers with fresh roots and a new PKI; the roots are reset
    again when the module is done (use as `yield from` in a module-scoped fixture)."""
    hosts = list(lab_hosts)[:count]
    assert len(hosts) == count, f"these tests need {count} lab controllers"
    for h in hosts:
        h.reset()
    e = LabEnv(hosts, tmp_path_factory.mktemp(name))
    e.gen_certs()
    return e


def reset_hosts(env) -> None:
    for h in env.hosts:
        h.reset()
    env.etcd_up = False


class LabEnv:
    """One test module's view of the shared lab: its own inventory and PKI in a temp dir."""

    def __init__(self, hosts, tmp: Path):
        from k8sboot.lab import plan as labplan

        self.hosts = list(hosts)
        self.tmp = tmp
        self.pki = tmp / "pki"
        self.identity_file = Path(getattr(self.hosts[0], "key_path", None) or labplan.CLIENT_KEY)
        self.known_hosts = Path(getattr(self.hosts[0], "known_hosts", None) or labplan.KNOWN_HOSTS)
        self.inventory = self.write_inventory()
        self.deploy_args: tuple[str, ...] = ()        # added to every `deploy` (e.g. a --strategy)
        self.etcd_up = False                          # deploy-etcd has run on these roots

    def host(self, name):
        return next(h for h in self.hosts if h.name == name)

    def write_inventory(self, path: Path | None = None, *, anonymous=False, extra_flags: dict | None = None,
                        user="root", sudo=False, known_hosts: Path | None = None, proxy_jump: str | None = None,
                        identity_file: Path | None = None) -> Path:
        path = path or self.tmp / "lab-deploy.yaml"
        extra = "{" + ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {str(v).lower()}"
                                for k, v in (extra_flags or {}).items()) + "}"
        controllers = "".join(f"  - {{name: {h.name}, address: {h.address}, internal_ip: {h.address}}}\n"
                              for h in self.hosts)
        path.write_text(LAB_INVENTORY.format(
            first=self.hosts[0].address, pki=self.pki, anonymous=str(anonymous).lower(), extra_flags=extra,
            user=user, identity_file=identity_file or self.identity_file,
            known_hosts=known_hosts or self.known_hosts, sudo=str(sudo).lower(),
            proxy_jump=f"  proxy_jump: {proxy_jump}\n" if proxy_jump else "", controllers=controllers))
        return path

    def k8sboot(self, *args):
        """Run the CLI in-process; returns the click Result (exit_code, stdout, stderr, output)."""
        from typer.testing import CliRunner

        from k8sboot.cli import app

        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    def gen_certs(self, *args):
        res = self.k8sboot("gen-certs", "-i", self.inventory, *args)
        assert res.exit_code == 0, res.output
        return res

    def ensure_etcd(self) -> None:
        """etcd on every host (`k8sboot deploy-etcd`), once per set of roots: the API server keeps
        its objects there and is not ready without it, and deploy-apiserver checks it first."""
        if not self.etcd_up:
            res = self.k8sboot("deploy-etcd", "-i", self.inventory, "--wait", "60")
            assert res.exit_code == 0, res.output
            self.etcd_up = True

    def deploy(self, *args, inventory: Path | None = None):
        """deploy-apiserver (after deploy-etcd, the first time): (click Result, its --json document)."""
        import json

        self.ensure_etcd()
        res = self.k8sboot("deploy-apiserver", "-i", inventory or self.inventory, "--json", "--wait", "30",
                           *self.deploy_args, *args)
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            doc = None
        return res, doc

    def api(self, host, path: str, timeout: float = 5.0) -> tuple[int | None, str]:
        """GET `path` on `host`'s API server as admin (cert from this env's PKI): (status, body),
        (None, why) when nothing answers."""
        import http.client
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        ctx.load_cert_chain(str(self.pki / "admin.pem"), str(self.pki / "admin-key.pem"))
        try:
            conn = http.client.HTTPSConnection(host.address, 6443, context=ctx, timeout=timeout)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                return r.status, r.read().decode()
            finally:
                conn.close()
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def wait_api(self, host, want: int = 200, path: str = "/readyz?verbose", timeout: float = 60.0):
        """(status, body) of `path` once it answers `want`, or the last answer after `timeout`."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            answer = self.api(host, path)
            if answer[0] == want or time.monotonic() > deadline:
                return answer
            time.sleep(0.3)

    def ssh(self, host, command: str, warn: bool = False) -> str:
        with host.connection() as c:
            r = c.run(command, hide=True, warn=True, in_stream=False)
        if not warn:
            assert r.ok, f"{host.name}: {command}: {r.stderr}"
        return r.stdout

    def snapshot(self, host) -> dict:
        """sha256, mode, owner, inode, mtime of every deployed path, and the unit's start/PID."""
        out = self.ssh(host, "stat -c '%n|%a|%U|%G|%i|%Y' " + " ".join(WATCHED) + " 2>/dev/null; "
                       "sha256sum " + " ".join(WATCHED) + " 2>/dev/null; "
                       f"systemctl show -p ActiveEnterTimestampMonotonic,MainPID,ActiveState {layout.UNIT_NAME}; "
                       "ls -la --time-style=+%s /var/lib/kubernetes /etc/systemd/system 2>/dev/null", warn=True)
        return {"raw": out}

    def service(self, host) -> dict:
        out = self.ssh(host, f"systemctl show -p ActiveState,SubState,MainPID,ActiveEnterTimestampMonotonic,"
                             f"UnitFileState {layout.UNIT_NAME}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def remote_files(self, host) -> dict[str, tuple[str, str, str, str]]:
        """path -> (sha256, mode, owner, group) as the host reports them."""
        out = self.ssh(host, "for f in " + " ".join(WATCHED) + "; do [ -e $f ] && "
                             "echo \"$f $(sha256sum < $f | cut -c1-64) $(stat -c '%a %U %G' $f)\"; done; true")
        files = {}
        for line in out.splitlines():
            path, sha, mode, owner, group = line.split()
            files[path] = (sha, mode, owner, group)
        return files


def expected_files(env: LabEnv, host, inventory: Path | None = None,
                   binary: Path | None = None) -> dict[str, tuple[str, str, str, str]]:
    """What deploying `inventory` (default: the env's) must leave on `host`: path -> (sha256, mode,
    owner, group) of the local PKI bytes and the rendered unit with layout modes, and `binary`."""
    from k8sboot.inventory import load_inventory
    from k8sboot.render import render_unit

    inv = load_inventory(inventory or env.inventory)
    unit = render_unit(inv, inv.controller(host.name)).text.encode()
    out = {}
    for spec in layout.CONTROLLER_FILES:
        data = (env.pki / spec.local_name).read_bytes()
        out[spec.path] = (hashlib.sha256(data).hexdigest(), f"{spec.mode:o}", spec.owner, spec.group)
    out[layout.UNIT_PATH] = (hashlib.sha256(unit).hexdigest(), f"{layout.UNIT_MODE:o}", "root", "root")
    if binary is not None:
        out[layout.BINARY_PATH] = (hashlib.sha256(binary.read_bytes()).hexdigest(), "755", "root", "root")
    return out


# --- a real etcd cluster on loopback (Debian's 3.4, unpacked by tests/etcd_helpers.py) ------------


@contextlib.contextmanager
def loopback_etcd(tmp_path: Path, apiserver_section: str = ""):
    """Three members on 127.0.0.2-4 with the flags deploy-etcd renders (paths moved into tmp_path,
    without the shared 127.0.0.1 client URL, which three members on one machine cannot all bind),
    a gen-certs PKI in tmp_path/pki; yields (inventory, {name: Popen}) and kills them after.
    pytest.skip when the etcd binaries cannot be had."""
    import subprocess

    import pytest
    from typer.testing import CliRunner

    import etcd_helpers
    from k8sboot import etcd
    from k8sboot import flags as flagmod
    from k8sboot.cli import app
    from k8sboot.inventory import load_inventory

    try:
        bins = etcd_helpers.ensure_etcd_binaries()
    except etcd_helpers.EtcdUnavailable as exc:
        pytest.skip(f"no etcd binary: {exc}")
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(f"cluster:\n  name: loop\n  api_endpoint: https://127.0.0.2:6443\n  service_cidr: 10.32.0.0/24\n"
                        f"pki:\n  dir: {tmp_path / 'pki'}\n  key_algorithm: ecdsa-p256\n{apiserver_section}controllers:\n"
                        + "".join(f"  - {{name: controller-{i}, address: 127.0.0.{i + 2}}}\n" for i in range(3)))
    res = CliRunner().invoke(app, ["gen-certs", "-i", str(inv_path)])
    assert res.exit_code == 0, res.output
    inv = load_inventory(inv_path)
    procs: dict = {}
    try:
        for h in inv.controllers:
            argv = [a.replace(layout.ETCD_DIR + "/", f"{tmp_path / 'pki'}/")
                    .replace(etcd.data_dir(inv), str(tmp_path / f"data-{h.name}"))
                    .replace(",https://127.0.0.1:2379", "")
                    for a in flagmod.flags_to_argv(etcd.build_etcd_flags(inv, h))]
            with (tmp_path / f"{h.name}.log").open("w") as log:
                procs[h.name] = subprocess.Popen([str(bins.etcd), *argv], stdout=log, stderr=subprocess.STDOUT)
        yield inv, procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()          # throwaway members: no graceful leader transfer to wait for
        for p in procs.values():
            p.wait(10)


def wait_until_lb_serves(pki: Path, lb: str = "10.240.0.5", timeout: float = 60.0, settle: float = 3.0) -> None:
    """Until the lab's HAProxy answers GET /version with the admin cert (every backend up in its
    view after `rise`), then `settle` seconds more."""
    import ssl
    import time
    from http.client import HTTPSConnection

    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "admin.pem"), str(pki / "admin-key.pem"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = HTTPSConnection(lb, 6443, context=ctx, timeout=2)
            conn.request("GET", "/version")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the load balancer does not serve the API"
        time.sleep(0.3)
    time.sleep(settle)


class BackgroundLoop:
    """A bounded client loop in a thread for the length of a `with` block: subclasses set
    `self.stop = threading.Event()` and define `_run()`, which checks it. Half a second of requests
    before and after the block, so its first and last moments are covered too."""

    join_timeout = 30.0

    def __enter__(self):
        import threading
        import time

        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        import time

        time.sleep(0.5)
        self.stop.set()
        self.thread.join(self.join_timeout)
