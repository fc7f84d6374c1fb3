"""The lab as data: names, addresses, paths, the rootfs recipe, nspawn's command line, the inventory.

Pure functions over frozen dataclasses: nothing here runs a command, touches a file or reads the
clock, so `tests/unit/test_lab_plan.py` covers it without root. The effects live in `net`,
`hosts` and `rootfs`, which take every name and path from here.

Network rule: the lab uses 10.240.0.0/24 only. The workstation side of the bridge is
10.240.0.1; controller-i is 10.240.0.(10+i), workers follow the controllers; the load balancer
lb-0 (`lab up --lb`) is 10.240.0.5, below the controllers, so adding it never moves a host; the
identity provider idp-0 (`lab up --idp`) is 10.240.0.2, below the load balancers (.2 .. .4 are
the idps' range, .5 .. .9 the LBs'), so adding it never moves a host either.
Hosts get no default route and no IPv6; a blackhole route for 10.240.0.0/16 keeps a leftover client from
sending lab traffic anywhere else once the bridge is gone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# --- names and places ---------------------------------------------------------------------------

LAB_CLUSTER_NAME = "k8sboot-lab"
PREFIX = "k8sb-"                                  # netns, machine and cgroup names start with it
BRIDGE = "k8sb-br0"
VETH_PREFIX = "k8sbv"                             # host side of each veth: k8sbv10, k8sbv11, ...
NETWORK = ipaddress.IPv4Network("10.240.0.0/24")
GATEWAY = ipaddress.IPv4Address("10.240.0.1")     # the workstation's address on the bridge
GUARD_ROUTE = ipaddress.IPv4Network("10.240.0.0/16")
FIRST_HOST = 10                                   # controller-0 = 10.240.0.10
MAX_HOSTS = 200                                   # .10 .. .209
FIRST_LB = 5                                      # lb-0 = 10.240.0.5
MAX_LBS = FIRST_HOST - FIRST_LB                   # .5 .. .9
FIRST_IDP = 2                                     # idp-0 = 10.240.0.2 (`lab up --idp`)
MAX_IDPS = FIRST_LB - FIRST_IDP                   # .2 .. .4
ROLES = ("controller", "worker", "lb", "idp")
INOTIFY_INSTANCES = 4096                          # each booted host holds ~7 inotify instances

STATE_DIR = Path("/run/k8sboot-lab")              # a tmpfs: state file, known_hosts, host dirs
STATE_FILE = STATE_DIR / "lab.json"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
HOSTS_DIR = STATE_DIR / "hosts"
LOCK_FILE = Path("/run/lock/k8sboot-lab.lock")    # outside the tmpfs: it outlives `down`
LEASE_FILE = Path("/run/lock/k8sboot-lab.leases.json")   # who depends on the lab (lease.py)
STATE_FS_NAME = "k8sboot-lab"                     # tmpfs "device" names: how `down` finds our mounts
NSPAWN_FS_NAME = "k8sboot-nspawn"
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn")      # nspawn needs it on tmpfs
NETNS_DIR = Path("/run/netns")
LIB_DIR = Path("/var/lib/k8sboot")
ROOTFS_DIR = LIB_DIR / "rootfs"                   # <recipe-hash>/ = one built root
KEY_DIR = LIB_DIR / "lab"                         # the lab's client key (kept across up/down)
CLIENT_KEY = KEY_DIR / "id_ed25519"
# The lab's OIDC identity provider (`lab up --idp`, k8sboot/lab/idp.py): its own small CA, the
# serving pair of idp-0 and the ID-token signing key, kept across `lab down` like the client key,
# so the CA path in an inventory and the tokens minted stay valid over a down/up.
IDP_DIR = KEY_DIR / "idp"
DEBOOTSTRAP_CACHE = Path("/var/cache/k8sboot/debootstrap")
CGROUP_NAME = "k8sboot-lab"                       # /sys/fs/cgroup/<hierarchy>/.../k8sboot-lab/<machine>
READY_MARK = ".k8sboot-rootfs.json"               # written last into a finished root: the recipe
INVENTORY_PATH = Path("inventory/lab.yaml")

# Where the lab installs the kube-apiserver stand-in in each host (at boot, not in the cache).
STANDIN_LIB = "/usr/local/lib/k8sboot-standin"
# Paths under the k8sboot package: the modules the stand-in imports, and the packages it imports
# (every `*.py` in them: the stand-in, authn, rbac). The stand-in runs on the host's
# /usr/bin/python3 from these files alone.
STANDIN_MODULES = ("__init__.py", "tokens.py", "errors.py")
STANDIN_PACKAGES = ("standin", "authn", "rbac")
# The stand-in's third-party Python packages that Debian's python3 lacks, copied at build time
# from this machine's venv into the cached root (ROOTFS_DIR, see rootfs.copy_vendored): a
# sibling of STANDIN_LIB, on the launcher's sys.path. The venv and the lab's Debian python3 are
# both CPython 3.11, so the venv's compiled extension modules load there as they are.
STANDIN_DEPS = "/usr/local/lib/k8sboot-standin-deps"
# cel-expr-python (Google's CEL C++ runtime, `from cel_expr_python import cel`): only what the
# stand-in imports, as globs under the package directory (the whole wheel is ~50 MB; this ~28 MB).
# The package has no __init__.py (a namespace package); the ones listed are copied if a version has them.
CEL_DIST = "cel-expr-python"
CEL_PACKAGE = "cel_expr_python"
CEL_FILES = ("__init__.py", "cel.*.so", "cel.pyi", "ext/__init__.py",
             "ext/ext_strings.*.so", "ext/ext_strings.pyi", "ext/ext_optional.*.so", "ext/ext_optional.pyi")
CEL_REQUIRED = ("cel.*.so", "ext/ext_strings.*.so", "ext/ext_optional.*.so")
STANDIN_LAUNCHER = """\
#!/usr/bin/python3
# kube-apiserver STAND-IN installed by `k8sboot lab up`: not Kubernetes. See k8sboot/standin/.
import os, sys
sys.path.insert(0, "/usr/local/lib/k8sboot-standin")
sys.path.insert(1, "/usr/local/lib/k8sboot-standin-deps")   # cel_expr_python (lab root, plan.STANDIN_DEPS)
from k8sboot.standin import main
code = main(sys.argv[1:])
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)   # nothing left to tidy: skips ~20 ms of interpreter teardown per stop
"""


@dataclass(frozen=True)
class HostSpec:
    """One lab host: everything that names it, derived from its role and index."""

    name: str            # controller-0
    role: str            # controller | worker | lb | idp
    address: str         # 10.240.0.10
    mac: str             # 02:00:0a:f0:00:0a, fixed per address (a reset keeps the ARP entry valid)
    netns: str           # k8sb-controller-0
    veth: str            # k8sbv10 (workstation side; the host side is eth0)
    machine: str         # k8sb-controller-0 (nspawn --machine)

    @property
    def dir(self) -> Path:
        return HOSTS_DIR / self.name

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


def mac_for(address: str) -> str:
    """A locally administered MAC that encodes the IPv4 address: 10.240.0.10 -> 02:00:0a:f0:00:0a."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:00:" + ":".join(f"{b:02x}" for b in octets)


def host_spec(role: str, index: int, position: int) -> HostSpec:
    """The `index`-th host of `role`, at lab `position` (0-based over controllers then workers);
    a load balancer's address comes from its index alone (lb-i = 10.240.0.(5+i)), an identity
    provider's too (idp-i = 10.240.0.(2+i))."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if role == "lb":
        if not 0 <= index < MAX_LBS:
            raise ValueError(f"the lab holds at most {MAX_LBS} load balancers")
        octet = FIRST_LB + index
    elif role == "idp":
        if not 0 <= index < MAX_IDPS:
            raise ValueError(f"the lab holds at most {MAX_IDPS} identity providers")
        octet = FIRST_IDP + index
    else:
        if not 0 <= position < MAX_HOSTS:
            raise ValueError(f"the lab holds at most {MAX_HOSTS} hosts")
        octet = FIRST_HOST + position
    name = f"{role}-{index}"
    address = str(NETWORK.network_address + octet)
    return HostSpec(name=name, role=role, address=address, mac=mac_for(address),
                    netns=PREFIX + name, veth=f"{VETH_PREFIX}{octet}", machine=PREFIX + name)


def build_host_specs(controllers: int, workers: int, load_balancers: int = 0,
                     idps: int = 0) -> tuple[HostSpec, ...]:
    """In address order: idp-0.. at .2.., lb-0.. at .5.., controller-0.. at .10.., then
    worker-0.. right after the controllers."""
    if controllers < 1:
        raise ValueError("the lab needs at least one controller")
    if workers < 0:
        raise ValueError("the number of workers cannot be negative")
    if controllers + workers > MAX_HOSTS:
        raise ValueError(f"the lab holds at most {MAX_HOSTS} hosts ({controllers + workers} asked)")
    if not 0 <= load_balancers <= MAX_LBS:
        raise ValueError(f"the lab holds 0 to {MAX_LBS} load balancers ({load_balancers} asked)")
    if not 0 <= idps <= MAX_IDPS:
        raise ValueError(f"the lab holds 0 to {MAX_IDPS} identity providers ({idps} asked)")
    specs = [host_spec("idp", k, k) for k in range(idps)]
    specs += [host_spec("lb", k, k) for k in range(load_balancers)]
    specs += [host_spec("controller", i, i) for i in range(controllers)]
    specs += [host_spec("worker", j, controllers + j) for j in range(workers)]
    return tuple(specs)


# --- what `up` does to the hosts that exist ------------------------------------------------------


@dataclass(frozen=True)
class LabPlan:
    keep: tuple[HostSpec, ...]       # running, same name and address: untouched
    start: tuple[HostSpec, ...]      # to boot (new, or recorded but no longer running)
    stop: tuple[HostSpec, ...]       # no longer wanted, or wanted at another address

    @property
    def changes_nothing(self) -> bool:
        return not self.start and not self.stop


def build_lab_plan(desired: tuple[HostSpec, ...], running: dict[str, HostSpec],
                   recorded: dict[str, HostSpec] | None = None) -> LabPlan:
    """Compare the hosts asked for with those that run (and those only recorded, e.g. after a crash).

    A running host with the same spec is kept; one whose spec changed (a worker moved because
    controllers were added) is stopped and booted again at its new address; hosts no longer asked
    for are stopped. Recorded-but-dead hosts are cleaned (stop) and, if wanted, booted again.
    """
    recorded = recorded or {}
    wanted = {h.name: h for h in desired}
    keep = tuple(h for h in desired if running.get(h.name) == h)
    start = tuple(h for h in desired if running.get(h.name) != h)
    stop_names = [n for n in running if wanted.get(n) != running[n]]
    stop_names += [n for n in recorded if n not in running and n not in stop_names]
    stop = tuple(running.get(n) or recorded[n] for n in stop_names)
    return LabPlan(keep=keep, start=start, stop=stop)


# --- the Debian root --------------------------------------------------------------------------

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "procps", "iputils-ping",
    # the stand-in; debootstrap does not resolve virtual packages, so name cffi's backend
    "python3", "python3-cryptography", "python3-cffi-backend", "python3-jwt", "python3-openssl",
    "sudo", "ca-certificates", "curl",
    # the load balancer (`lab up --lb`): Debian's HAProxy, the one a real cluster's LB host runs.
    # In every root (one cache for all roles) but disabled there: only lb-0 enables it
    # (ROLE_LINKS), so no controller or worker ever runs it.
    "haproxy",
    # the identity provider (`lab up --idp`): Debian's nginx serving OIDC discovery and the JWKS
    # as static files over HTTPS. Like haproxy: in every root, disabled, enabled only on idp-0.
    "nginx",
    # etcd (`k8sboot deploy-etcd`): Debian's etcd-server (/usr/bin/etcd), the one deploy-etcd installs
    # on a real Debian controller, and etcd-client (etcdctl, for the tests and for learners)
    "etcd-server", "etcd-client",
)
SSHD_CONFIG = """\
# k8sboot lab: key-only root login, fast logins, many parallel sessions (Fabric)
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
MaxSessions 50
HostKey /etc/ssh/ssh_host_ed25519_key
"""
# Files written into the root after debootstrap: (path, mode, content).
ROOTFS_FILES: tuple[tuple[str, int, str], ...] = (
    ("/etc/ssh/sshd_config.d/k8sboot-lab.conf", 0o644, SSHD_CONFIG),
    ("/etc/hostname", 0o644, "k8sboot-lab\n"),    # debootstrap copied the build machine's name
    ("/etc/resolv.conf", 0o644, ""),              # no DNS, no route out; nspawn runs --resolv-conf=off
    ("/etc/machine-id", 0o444, ""),               # 0 bytes: a new id per boot (a lone newline fails)
    ("/etc/hosts", 0o644, "127.0.0.1 localhost\n"),
)
# Removed from the root: baked host keys (each host gets its own before boot), dbus's copy of
# the machine id, apt's downloaded lists and packages, and the data of the default member Debian's
# etcd.service would run (none is made in a chroot; never let one be found there).
ROOTFS_REMOVE_GLOBS = (
    "/etc/ssh/ssh_host_*", "/var/lib/dbus/machine-id", "/var/cache/apt/archives/*.deb",
    "/var/lib/apt/lists/*", "/var/lib/etcd/default",
)
# Units useless or slow in a container.
ROOTFS_MASK = (
    "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
    "fstrim.timer", "getty@tty1.service", "console-getty.service", "systemd-firstboot.service",
    "systemd-networkd-wait-online.service", "systemd-hwdb-update.service", "e2scrub_reap.service",
)
ROOTFS_ENABLE = ("ssh.service",)
# Installed but not started at boot: haproxy's package enables itself; only lb-0 turns it on.
# nginx's likewise; only idp-0 turns it on.
# Debian's etcd.service (a default member on localhost) likewise: `k8sboot deploy-etcd` installs
# its own unit, /etc/systemd/system/etcd.service, and enables that.
ROOTFS_DISABLE = ("haproxy.service", "etcd.service", "nginx.service")
RECIPE_VERSION = 1   # bump when the build steps in rootfs.py change meaning


@dataclass(frozen=True)
class RootfsRecipe:
    suite: str = SUITE
    variant: str = VARIANT
    packages: tuple[str, ...] = PACKAGES
    files: tuple[tuple[str, int, str], ...] = ROOTFS_FILES
    remove_globs: tuple[str, ...] = ROOTFS_REMOVE_GLOBS
    mask: tuple[str, ...] = ROOTFS_MASK
    enable: tuple[str, ...] = ROOTFS_ENABLE
    disable: tuple[str, ...] = ROOTFS_DISABLE
    version: int = RECIPE_VERSION
    # Python packages copied from this machine's venv into STANDIN_DEPS: ((distribution, version),).
    # rootfs.current_recipe() fills it from the installed versions, so a new version builds a new root.
    vendored: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "suite": self.suite, "variant": self.variant, "packages": sorted(self.packages),
            "files": [[p, m, c] for p, m, c in self.files], "remove_globs": list(self.remove_globs),
            "mask": sorted(self.mask), "enable": sorted(self.enable), "disable": sorted(self.disable),
            "version": self.version, "vendored": sorted([d, v] for d, v in self.vendored),
        }, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """What the cache is keyed by: the mirror is not in it (same packages from any mirror)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def directory(self, base: Path = ROOTFS_DIR) -> Path:
        return base / f"{self.suite}-{self.hash}"


def build_debootstrap_argv(recipe: RootfsRecipe, target: Path, mirror: str,
                           cache_dir: Path = DEBOOTSTRAP_CACHE) -> list[str]:
    return ["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
            f"--cache-dir={cache_dir}", "--components=main", recipe.suite, str(target), mirror]


_DEB_LINE = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def parse_apt_mirror(deb822_text: str | None, sources_list_text: str | None) -> str | None:
    """The machine's own Debian mirror: the first non-security `deb` URI of its apt sources.

    deb822 (`/etc/apt/sources.list.d/debian.sources`) first, then one-line `sources.list`.
    """
    for stanza in re.split(r"\n\s*\n", deb822_text or ""):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        suites = fields.get("suites", "").split()
        if any("security" in s for s in suites):
            continue
        for uri in fields.get("uris", "").split():
            if _is_mirror_url(uri) and "security" not in uri:
                return uri
    for line in (sources_list_text or "").splitlines():
        m = _DEB_LINE.match(line)
        if m and "security" not in m.group(1) and "security" not in m.group(2) and _is_mirror_url(m.group(1)):
            return m.group(1)
    return None


def _is_mirror_url(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https", "file") and bool(parts.netloc or parts.path)


def check_mirror_url(uri: str) -> str | None:
    """Why `uri` cannot be a Debian mirror, or None."""
    if not _is_mirror_url(uri):
        return f"'{uri}' is not an http://, https:// or file:// URL"
    return None


# --- what each host gets in its own root, by role ---------------------------------------------

# lb-0 runs Debian's HAProxy with the package's own /etc/haproxy/haproxy.cfg until `k8sboot
# deploy-lb` pushes the real one and reloads it: enabled in lb-0's root before it boots, exactly
# the link `systemctl enable haproxy` makes.
HAPROXY_UNIT = "haproxy.service"
HAPROXY_WANTS_LINK = ("/etc/systemd/system/multi-user.target.wants/haproxy.service",
                      "/lib/systemd/system/haproxy.service")
# idp-0 runs Debian's nginx with the lab's own /etc/nginx/nginx.conf (idp.render_nginx_conf),
# written into its root before it boots with the static files it serves; enabled the same way.
NGINX_UNIT = "nginx.service"
NGINX_WANTS_LINK = ("/etc/systemd/system/multi-user.target.wants/nginx.service",
                    "/lib/systemd/system/nginx.service")
ROLE_LINKS: dict[str, tuple[tuple[str, str], ...]] = {"lb": (HAPROXY_WANTS_LINK,), "idp": (NGINX_WANTS_LINK,)}

# `lab up --apiserver-ready-delay SECONDS`: a lab-only drop-in on every controller that makes the
# kube-apiserver stand-in answer /readyz with a failure for that long after it starts, as a real
# API server does while it fills its caches. Never part of a rendered unit: `k8sboot
# deploy-apiserver` and `verify` know nothing of it (it changes no ExecStart), and it only takes
# effect at the next restart of kube-apiserver.
READY_DELAY_ENV = "K8SBOOT_STANDIN_READY_DELAY"
READY_DELAY_DROPIN = "/etc/systemd/system/kube-apiserver.service.d/k8sboot-lab-ready-delay.conf"
MAX_READY_DELAY = 3600.0


def format_seconds(seconds: float) -> str:
    """`2` for 2.0, `0.25` for 0.25: at most millisecond precision, no exponent."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


def check_ready_delay(seconds: float) -> float:
    """The ready delay as given, or ValueError when it is not 0..MAX_READY_DELAY seconds."""
    if not 0.0 <= seconds <= MAX_READY_DELAY:          # also refuses NaN
        raise ValueError(f"the API server's ready delay must be 0 to {MAX_READY_DELAY:g} seconds, "
                         f"not {seconds!r}")
    return seconds


def render_ready_delay_dropin(seconds: float) -> str | None:
    """The drop-in's text, or None for 0 (no drop-in at all: the stand-in's own default)."""
    value = format_seconds(check_ready_delay(seconds))
    if value == "0":
        return None
    return ("# k8sboot lab only (`k8sboot lab up --apiserver-ready-delay`): the kube-apiserver\n"
            "# stand-in fails /readyz for this many seconds after it starts. Applies at its next start.\n"
            f"[Service]\nEnvironment={READY_DELAY_ENV}={value}\n")


# Every lab controller: the stand-in reads --tls-cert-file/--tls-private-key-file and
# --client-ca-file again every RELOAD_INTERVAL seconds instead of every minute (the real API
# server's resync, and the stand-in's default), so that a renewed serving cert is presented a
# few seconds after `certs renew` + `deploy-apiserver`, and the lab tests that prove it (and
# `verify`'s pick-up check) wait seconds, not a minute. Lab-only, like the ready delay: never part
# of a rendered unit (no ExecStart, so deploy and verify never see it); written into the root
# before the host boots, so it holds from kube-apiserver's first start on. A controller that was
# already running before this drop-in existed gets it (with the stand-in's current code) from
# `k8sboot lab reset NAME`. The variable is k8sboot.standin.reload.RELOAD_INTERVAL_ENV.
RELOAD_INTERVAL_ENV = "K8SBOOT_STANDIN_RELOAD_INTERVAL"
RELOAD_INTERVAL_DROPIN = "/etc/systemd/system/kube-apiserver.service.d/k8sboot-lab-reload-interval.conf"
RELOAD_INTERVAL = 2.0


def render_reload_interval_dropin(seconds: float = RELOAD_INTERVAL) -> str:
    """The reload-interval drop-in's text."""
    return ("# k8sboot lab only: the kube-apiserver stand-in reads its serving cert/key and client CA\n"
            "# again every this many seconds (a real kube-apiserver: about every minute).\n"
            f"[Service]\nEnvironment={RELOAD_INTERVAL_ENV}={format_seconds(seconds)}\n")


def build_role_files(host: HostSpec, ready_delay: float = 0.0) -> tuple[tuple[str, int, str], ...]:
    """(path, mode, content) written into the host's root before it boots, for its role."""
    if host.role != "controller":
        return ()
    files = [(RELOAD_INTERVAL_DROPIN, 0o644, render_reload_interval_dropin())]
    dropin = render_ready_delay_dropin(ready_delay)
    if dropin is not None:
        files.append((READY_DELAY_DROPIN, 0o644, dropin))
    return tuple(files)


def render_ready_delay_sync(seconds: float, path: str = READY_DELAY_DROPIN) -> str:
    """A shell script for a running controller: make the drop-in say `seconds` (or remove it
    for 0), then `systemctl daemon-reload` so that systemd has loaded what is on disk
    (NeedDaemonReload=no: a later deploy sees no stale unit and restarts nothing for it). It
    does nothing when the host already has it, and prints `changed` or `unchanged`. No restart:
    the running kube-apiserver keeps its environment until its next restart."""
    import shlex

    dropin = render_ready_delay_dropin(seconds)
    path = shlex.quote(path)
    if dropin is None:
        return (f"f={path}; if [ ! -e \"$f\" ]; then echo unchanged; exit 0; fi; "
                "rm -f \"$f\" && { rmdir \"${f%/*}\" 2>/dev/null || true; } && "
                "systemctl daemon-reload && echo changed")
    text = shlex.quote(dropin)
    return (f"f={path}; if printf %s {text} | cmp -s - \"$f\"; then echo unchanged; exit 0; fi; "
            f"mkdir -p \"${{f%/*}}\" && printf %s {text} > \"$f.tmp\" && chmod 644 \"$f.tmp\" && "
            "mv -f \"$f.tmp\" \"$f\" && systemctl daemon-reload && echo changed")


# --- systemd-nspawn ----------------------------------------------------------------------------


def build_nspawn_argv(host: HostSpec) -> list[str]:
    """One host: real systemd as PID 1 in our own overlay root and our own netns.

    --keep-unit --register=no: no system bus on a machine whose PID 1 is not systemd (and we
    place the process in its own cgroups ourselves). The netns is configured before the boot, so
    nspawn touches no network; no resolv.conf, timezone or journal link from the workstation.
    """
    return ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--boot",
            "--console=read-only", f"--directory={host.root}", f"--machine={host.machine}",
            f"--hostname={host.name}", f"--network-namespace-path={host.netns_path}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no"]


def parse_nspawn_machine(argv: list[str]) -> str | None:
    """The lab machine a process command line belongs to (`--machine=k8sb-...` under our state dir)."""
    if not argv or not argv[0].endswith("systemd-nspawn"):
        return None
    machine = directory = None
    for arg in argv[1:]:
        if arg.startswith("--machine="):
            machine = arg.split("=", 1)[1]
        elif arg.startswith("--directory="):
            directory = arg.split("=", 1)[1]
    if machine and machine.startswith(PREFIX) and directory and directory.startswith(str(HOSTS_DIR) + "/"):
        return machine
    return None


def ssh_argv(host_address: str, command: str, key: Path = CLIENT_KEY,
             known_hosts: Path = KNOWN_HOSTS, timeout: float = 5.0) -> list[str]:
    """OpenSSH with strict host keys against the lab's known_hosts, ignoring the user's config."""
    return ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={int(max(1, timeout))}", "-o", "LogLevel=ERROR",
            f"root@{host_address}", command]


def render_known_hosts(entries: dict[str, str]) -> str:
    """`address key-type base64` lines, sorted by address: `{"10.240.0.10": "ssh-ed25519 AAAA..."}`."""
    order = sorted(entries, key=lambda a: ipaddress.ip_address(a))
    return "".join(f"{a} {entries[a]}\n" for a in order)


# --- inventory/lab.yaml ------------------------------------------------------------------------

# `lab up --idp` appends an `authentication:` section naming idp-0 as a JWT issuer to the lab's
# inventory (`lab idp show` prints the same section), so `deploy-apiserver -i inventory/lab.yaml`
# gives every controller --authentication-config trusting idp-0
INVENTORY_AUTHENTICATION = True
IDP_AUDIENCE = "k8sboot-lab"                      # `lab idp token`'s default `aud`


def idp_issuer(host: HostSpec) -> str:
    """The identity provider's issuer URL: `https://10.240.0.2` (no port, no path, no slash)."""
    return f"https://{host.address}"


def render_idp_authentication(issuer: str, ca_file: Path | str, audiences: tuple[str, ...] = (IDP_AUDIENCE,)) -> str:
    """The inventory's `authentication:` section for the lab's identity provider: usernames from
    the `email` claim (no prefix), groups from `groups` with the prefix `oidc:`."""
    return (
        "authentication:\n"
        "  jwt:\n"
        "    - issuer:\n"
        f"        url: {issuer}\n"
        f"        audiences: [{', '.join(audiences)}]\n"
        f"        certificateAuthorityFile: {ca_file}\n"
        "      claimMappings:\n"
        '        username: {claim: email, prefix: ""}\n'
        '        groups: {claim: groups, prefix: "oidc:"}\n'
    )


def render_lab_inventory(hosts: tuple[HostSpec, ...], identity_file: Path = CLIENT_KEY,
                         known_hosts: Path = KNOWN_HOSTS, idp_ca: Path | None = None,
                         authentication: bool | None = None) -> str:
    """A full inventory (DESIGN.md schema) for the lab's hosts.

    With an identity provider among `hosts` (`lab up --idp`) and `authentication` (default:
    INVENTORY_AUTHENTICATION), it ends with the `authentication:` section that trusts it
    (render_idp_authentication, `idp_ca` = the idp CA's path on this machine).

    Clients dial the load balancer when the lab has one (`lab up --lb`), else controller-0. The
    service-account issuer stays controller-0's URL either way: it is the `iss` of every token
    minted and, by default, the API audience; if it followed the endpoint, adding or removing the
    lab's LB would invalidate every ServiceAccount token and change every controller's flags.
    """
    controllers = [h for h in hosts if h.role == "controller"]
    workers = [h for h in hosts if h.role == "worker"]
    lbs = [h for h in hosts if h.role == "lb"]
    idps = [h for h in hosts if h.role == "idp"]
    first = controllers[0].address
    issuer = f"https://{first}:6443"
    endpoint = f"https://{lbs[0].address}:6443" if lbs else issuer
    dial = ("  # clients dial the lab's HAProxy on lb-0 (`k8sboot deploy-lb` configures it)\n" if lbs
            else "  # clients dial controller-0 (`k8sboot lab up --lb` puts a load balancer in front)\n")

    def host_lines(group: list[HostSpec]) -> str:
        if not group:
            return " []\n"
        return "\n" + "".join(f"  - {{name: {h.name}, address: {h.address}, internal_ip: {h.address}}}\n"
                              for h in group)

    return (
        "# Generated by `k8sboot lab up`: the lab's hosts on this machine. Do not edit: the next\n"
        "# `k8sboot lab up` rewrites it. The key and known_hosts below are the lab's own.\n"
        "cluster:\n"
        f"  name: {LAB_CLUSTER_NAME}\n"
        f"{dial}"
        f"  api_endpoint: {endpoint}\n"
        "  service_cidr: 10.32.0.0/24\n"
        "  cluster_domain: cluster.local\n"
        "  # controller-0's URL with or without the lab's load balancer: the issuer is in every\n"
        "  # ServiceAccount token (and is the API audience), so `lab up --lb` keeps tokens valid\n"
        f"  service_account_issuer: {issuer}\n"
        "pki:\n"
        "  dir: pki\n"
        f"  subject: {{C: VN, OU: {LAB_CLUSTER_NAME}}}\n"
        "  key_algorithm: rsa-2048\n"
        "  ca_validity_days: 3650\n"
        "  cert_validity_days: 365\n"
        "  extra_sans: []\n"
        "apiserver:\n"
        "  anonymous_auth: false\n"
        "  authorization_mode: [Node, RBAC]\n"
        "  # every controller's etcd member (`k8sboot deploy-etcd`): any one may be down\n"
        f"  etcd_servers: [{', '.join(f'https://{h.address}:2379' for h in controllers)}]\n"
        "  extra_flags: {}\n"
        "  # seconds a stopping API server keeps serving with /readyz failing, so that a load\n"
        "  # balancer takes it out first; the lab's HAProxy checks /readyz fast (down after\n"
        "  # fall x inter, well under 3 s), so 3 s is enough here (a real LB needs more)\n"
        "  shutdown_delay_duration: 3\n"
        "ssh:\n"
        "  user: root\n"
        "  port: 22\n"
        f"  identity_file: {identity_file}\n"
        f"  known_hosts: {known_hosts}\n"
        "  sudo: false\n"
        f"controllers:{host_lines(controllers)}"
        f"workers:{host_lines(workers)}"
        f"load_balancers:{host_lines(lbs)}"
        + (render_idp_authentication(idp_issuer(idps[0]), idp_ca or IDP_DIR / "ca.pem") if idps and
           (INVENTORY_AUTHENTICATION if authentication is None else authentication) else "")
    )
