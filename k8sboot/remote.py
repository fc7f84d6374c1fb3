"""The remote layer: the only importer of Fabric and paramiko.

`connect(host, ssh)` opens one SSH connection with the inventory's settings (key file or agent,
port, user, `~/.ssh/config`, a jump host) and strict host-key checking against known_hosts; every
paramiko/socket error becomes a `ConnectError`/`HostKeyError`/`RemoteError` naming the host.

An `SshRemote` does each step in one command: `read_facts` (sha256 + stat of every target, the
unit's state and text, optional extra sections; inside the deploy lock when asked), `install`
(the staged files as one tar on stdin, then `build_install_script`), `read_service`,
`read_journal`, `rollback`, `cleanup`; after a restart, `install` and `rollback` also wait for the
unit on the host, in the same command (`plan.wait_script`). With `sudo: true` each command runs under `sudo -n sh -c`.
`deploy` and `verify` see only this interface, so unit tests use an in-memory fake of it.
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import re
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from k8sboot import layout
from k8sboot import plan as planmod
from k8sboot.errors import ConnectError, HostKeyError, LockedError, RemoteError
from k8sboot.model import Host, SshSettings
from k8sboot.plan import FileFact, HostFacts, HostPlan, ServiceFact

LOCKED_EXIT = 75
_MARK = "@@k8sboot:"
CLOSED_HINT = ("the host holds the old or the new version of each file, never a partial one (an install that "
               "lost its input removes what it staged); rerun to converge")

# paramiko logs a failed handshake with a traceback; with no handler, Python's last-resort handler
# would print it on stderr next to our one-line error (which carries the same facts, translated)
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True)
class FactRequest:
    """What to observe: hashed paths (sha256 + stat), stat-only paths, extra command sections."""

    hashed: tuple[str, ...]
    stat_only: tuple[str, ...] = ()
    port: int = layout.SECURE_PORT
    sections: tuple[tuple[str, str], ...] = ()     # (name, shell command) -> facts.sections[name]
    unit: str = layout.UNIT_NAME                   # whose state is read
    text_path: str = layout.UNIT_PATH              # the file read whole (`facts.unit_text`), for diffs
    state_dir: str = layout.REMOTE_PKI_DIR         # stat'ed as a directory


class Remote(Protocol):
    """One connected controller. Implemented over SSH here and in memory in the unit tests."""

    name: str

    def read_facts(self, request: FactRequest, *, lock_wait: float | None = None) -> HostFacts: ...
    def stage(self, plan: HostPlan) -> None: ...
    def unstage(self, plan: HostPlan) -> None: ...
    def recover(self, component: planmod.Component = planmod.APISERVER) -> None: ...
    def install(self, plan: HostPlan, *, keep_previous: bool = False, wait: float | None = None,
                port: int = layout.SECURE_PORT, staged: bool = False, stop_timeout: float = 0.0
                ) -> ServiceFact | None: ...
    def read_service(self, port: int = layout.SECURE_PORT, unit: str = layout.UNIT_NAME) -> ServiceFact: ...
    def read_journal(self, lines: int = 15, unit: str = layout.UNIT_NAME) -> list[str]: ...
    def rollback(self, plan: HostPlan, *, wait: float | None = None,
                 port: int = layout.SECURE_PORT, stop_timeout: float = 0.0) -> ServiceFact | None: ...
    def cleanup(self, plan: HostPlan) -> None: ...
    def close(self) -> None: ...


# --- scripts (strings; parsing is pure and unit-tested) -----------------------------------------


def _q(s: str) -> str:
    return shlex.quote(s)


def facts_script(request: FactRequest) -> str:
    """One shell script printing every fact, in marked sections; never fails on a missing file."""
    hashed = " ".join(_q(p) for p in request.hashed)
    everything = " ".join(_q(p) for p in _stat_paths(request))
    parts = [
        f"echo {_MARK}files",
        f"sha256sum -- {hashed} 2>/dev/null || true" if hashed else "true",
        f"echo {_MARK}stat",
        f"stat -c '%n|%F|%a|%U|%G' -- {everything} 2>/dev/null || true",
        f"echo {_MARK}service",
        planmod.service_state_script(request.port, request.unit).rstrip("\n"),
        f"echo {_MARK}unit",
        f"base64 -w0 {_q(request.text_path)} 2>/dev/null; echo",
    ]
    for name, command in request.sections:
        parts.append(f"echo {_MARK}{name}")
        parts.append(f"( {command} ) 2>&1 || true; echo")   # a newline even after base64 -w0
    parts.append(f"echo {_MARK}end")
    return "\n".join(parts) + "\n"


def _stat_paths(request: FactRequest) -> tuple[str, ...]:
    seen = dict.fromkeys((*request.hashed, *request.stat_only, request.state_dir, request.text_path))
    return tuple(seen)


def split_sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = line[len(_MARK):].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def parse_service(text: str) -> ServiceFact:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            values[key.strip()] = value.strip()

    def num(key: str) -> int:
        try:
            return int(values.get(key, "0") or 0)
        except ValueError:
            return 0

    return ServiceFact(
        load_state=values.get("LoadState", "not-found"),
        active_state=values.get("ActiveState", "inactive"),
        sub_state=values.get("SubState", "dead"),
        unit_file_state=values.get("UnitFileState", ""),
        result=values.get("Result", ""),
        main_pid=num("MainPID"),
        n_restarts=num("NRestarts"),
        active_enter_usec=num("ActiveEnterTimestampMonotonic"),
        need_daemon_reload=values.get("NeedDaemonReload") == "yes",
        listening=values.get("Listening") == "yes",
        wait_ms=num("WaitMs") if "WaitMs" in values else None,
        argv=_argv(values.get("Cmdline")),
    )


def _argv(b64: str | None) -> tuple[str, ...] | None:
    """`/proc/PID/cmdline` (NUL-separated, base64) as an argv; None when absent or unreadable."""
    if not b64:
        return None
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        return None
    return tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else None


_KINDS = {"regular file": "file", "regular empty file": "file", "directory": "directory"}


def parse_facts(text: str, request: FactRequest) -> HostFacts:
    sections = split_sections(text)
    if "end" not in sections:
        raise ValueError("the fact script's output is incomplete")
    hashes: dict[str, str] = {}
    for line in sections.get("files", "").splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64 and path:
            hashes[path] = digest
    files: dict[str, FileFact] = {}
    for line in sections.get("stat", "").splitlines():
        parts = line.rsplit("|", 4)
        if len(parts) != 5:
            continue
        path, kind, mode, owner, group = parts
        files[path] = FileFact(path=path, exists=True, sha256=hashes.get(path), mode=int(mode, 8) & 0o7777,
                               owner=owner, group=group, kind=_KINDS.get(kind, kind))
    for path in _stat_paths(request):
        files.setdefault(path, FileFact(path, exists=False))
    unit_text = None
    if files[request.text_path].exists:
        unit_text = base64.b64decode(sections.get("unit", "").strip() or b"").decode("utf-8", "replace")
    extra = {name: sections.get(name, "") for name, _ in request.sections}
    return HostFacts(files=files, service=parse_service(sections.get("service", "")), unit_text=unit_text,
                     sections=extra)


# Deploy and verify read 0600 keys and write root-owned files: without root (or sudo), sha256sum
# and stat would fail quietly and every file would look missing. Checked first, in the same command.
ROOT_CHECK = (f'[ "$(id -u)" = 0 ] || {{ echo {_MARK}not-root; id -un; id -u; echo {_MARK}end; exit 0; }}\n')


def check_root(text: str, host: str, user: str) -> None:
    """Raise when the fact command found that it did not run as root (see ROOT_CHECK)."""
    sections = split_sections(text)
    if "not-root" not in sections:
        return
    who = (sections["not-root"].split() + [user, "?"])[:2]
    raise RemoteError(f"{host}: connected as {who[0]} (uid {who[1]}), not root, and ssh.sudo is off: deploying "
                      f"reads and writes root-only files in {layout.REMOTE_PKI_DIR} and runs systemctl",
                      hint=f"connect as root (ssh.user: root), or give {who[0]} passwordless sudo and set "
                           "ssh.sudo: true")


_WHY = {"no space left on device": "no space left on device", "disk quota exceeded": "disk quota exceeded",
        "read-only file system": "read-only file system", "permission denied": "permission denied",
        "operation not permitted": "operation not permitted"}
_TAR_LINE = re.compile(r"^tar: (?P<path>[^:]+): (?P<what>[^:]+): (?P<why>.+)$")
_QUOTED = re.compile(r"'(?P<path>/[^']+)'")


def explain_install_failure(host: str, stdout: str, stderr: str) -> tuple[str, str | None] | None:
    """A failed install's stderr as one line naming the host, the directory and the cause, with a
    hint; None when no known cause is in it. Staged names (`.NAME.k8sboot-new`) become NAME."""
    for line in stderr.splitlines():
        low = line.lower()
        why = next((w for w in _WHY if w in low), None)
        if why is None:
            continue
        m = _TAR_LINE.match(line)
        path = "/" + m["path"].lstrip("/") if m else (_QUOTED.search(line) or {"path": ""})["path"]
        directory, _, name = path.rpartition("/")
        if name.startswith(".") and name.endswith(planmod.TEMP_SUFFIX):
            name = name[1:-len(planmod.TEMP_SUFFIX)]
        where = f"{directory or '/'} (writing {name})" if name else "the target directories"
        replaced = ("no file was replaced" if planmod.STAGED_MARK not in stdout
                    else "the renames had begun: each file is the old or the new version")
        message = f"{host}: installing files: {_WHY[why]} in {where}; {replaced}"
        hint = {"no space left on device": f"free space on {host} (df -h {directory or '/'}), then rerun",
                "disk quota exceeded": f"free space on {host} (df -h {directory or '/'}), then rerun",
                "read-only file system": f"remount {directory or '/'} read-write on {host}, then rerun",
                }.get(why, "connect as root, or set ssh.sudo: true with passwordless sudo")
        return message, hint
    return None


def build_tar(uploads: Sequence[planmod.FileChange]) -> bytes:
    """The staged files as one tar: temp names in the target dirs, each with its final mode and
    owner, which tar sets (as root) once the file is written. Under the install's umask 077 every
    file is created 0600, so a key is never readable by others, not even while it is written."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for change in uploads:
            f = change.file
            info = tarfile.TarInfo(f.temp_path.lstrip("/"))
            info.size = len(f.content)
            info.mode = f.mode
            info.uid = info.gid = 0
            info.uname, info.gname = f.owner, f.group
            info.mtime = now
            tar.addfile(info, io.BytesIO(f.content))
    return buf.getvalue()


# --- host keys -----------------------------------------------------------------------------------


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class _UnknownHostKey(Exception):
    def __init__(self, name: str, key):
        super().__init__(name)
        self.name = name
        self.key = key


_known_hosts_lock = threading.Lock()


def _fingerprint(key) -> str:
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _load_host_keys(client, path: Path) -> None:
    try:
        client.load_host_keys(str(path))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectError(f"cannot read known_hosts {path}: {exc}") from exc
    client._host_keys_filename = None   # never let paramiko rewrite the user's file


def _policy(known_hosts: Path, accept_new: bool):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Strict by default (RejectPolicy's behaviour, with the key kept for the message);
        with --accept-new-host-keys, trust on first use and append the key to known_hosts."""

        def missing_host_key(self, client, hostname, key):
            if not accept_new:
                raise _UnknownHostKey(hostname, key)
            with _known_hosts_lock:
                known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                import os

                fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


# --- connecting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jump:
    user: str | None        # None: not in the spec (`ssh_endpoint` then decides)
    address: str
    port: int | None


def parse_jump(spec: str, default_user: str | None, default_port: int | None = 22,
               aliases: Mapping[str, str] | None = None) -> Jump:
    """`user@host:port`, `host:port`, `host` (an inventory host name resolves to its address);
    what the spec leaves out is `default_user`/`default_port`."""
    user, at, rest = spec.rpartition("@")
    user = user if at else default_user
    port = default_port
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, _, p = rest.partition(":")
        port = int(p)
    else:
        host = rest
    host = (aliases or {}).get(host, host)
    return Jump(user or default_user, host, port)


_configs: dict[str, object] = {}
_config_lock = threading.Lock()


def _fabric_config(ssh: SshSettings, *, own: bool = False):
    """One Fabric Config per ssh config file per process (parsing ssh_config costs time); `own`:
    a new Config over the same parsed ssh_config, for one Connection. invoke's Config re-merges
    its whole dict when a value is set through it, and fabric's clone() parses the ssh_config
    files again into the shared SSHConfig: a Connection's config, read in its host's thread, must
    not be another host's (seen once at 10 hosts: "No attribute or config key found")."""
    from fabric import Config

    key = str(ssh.config_file or "")
    overrides = {"run": {"in_stream": False}, "load_ssh_configs": True}
    with _config_lock:
        cfg = _configs.get(key)
        if cfg is None:
            if ssh.config_file is not None:
                cfg = Config(runtime_ssh_path=str(Path(ssh.config_file).expanduser()), overrides=overrides)
            else:
                cfg = Config(overrides=overrides)
            _configs[key] = cfg
    if not own:
        return cfg
    return Config(overrides=overrides, ssh_config=cfg.base_ssh_config)     # read-only from here on


def ssh_endpoint(ssh: SshSettings, address: str, user: str | None = None,
                 port: int | None = None) -> tuple[str, int]:
    """The user and port to dial `address` with, picked as ssh(1) picks them: `user`/`port` when
    given (a jump spec's `user@host:port`), else the inventory's ssh.user/ssh.port when set, else
    User/Port of the host's block in ~/.ssh/config (or ssh.config_file), else root and 22."""
    if (user or ssh.user) and (port or ssh.port):
        return user or ssh.user, port or ssh.port      # no need to look
    found = _fabric_config(ssh).base_ssh_config.lookup(address)
    raw = port or ssh.port or found.get("port")
    try:
        resolved = int(raw) if raw else ssh.port_or_default
        if not 0 < resolved < 65536:
            raise ValueError(raw)
    except ValueError:
        where = ssh.config_file or "~/.ssh/config"
        raise ConnectError(f"{address}: the ssh config ({where}) gives Port {raw!r}, not a port number") from None
    return user or ssh.user or found.get("user") or ssh.user_or_default, resolved


def _connect_kwargs(ssh: SshSettings) -> dict:
    kwargs: dict = {"banner_timeout": ssh.connect_timeout, "auth_timeout": ssh.connect_timeout}
    if ssh.identity_file is not None:
        kwargs.update(key_filename=[str(Path(ssh.identity_file).expanduser())], look_for_keys=False,
                      allow_agent=True)
    else:
        kwargs.update(look_for_keys=True, allow_agent=True)
    return kwargs


def _describe(name: str, address: str, port: int, via: Jump | None = None) -> str:
    where = f"{address}:{port}"
    label = f"{name} ({where})" if name != address else where
    return label + (f" via {via.address}:{via.port}" if via else "")


def _translate_connect(exc: BaseException, label: str, ssh: SshSettings, user: str, address: str,
                       port: int) -> Exception:
    import paramiko

    known = Path(ssh.known_hosts).expanduser()
    if isinstance(exc, _UnknownHostKey):
        return HostKeyError(
            f"{label}: host key not in {known} (offered {_fingerprint(exc.key)}); refusing to connect",
            hint=f"check that fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run: "
                 f"ssh-keyscan -p {port} {address} >> {known}   (or rerun with --accept-new-host-keys "
                 f"to trust it on first use)")
    if isinstance(exc, paramiko.BadHostKeyException):
        name = known_hosts_name(address, port)
        return HostKeyError(
            f"{label}: HOST KEY CHANGED: known_hosts has {_fingerprint(exc.expected_key)}, the host offers "
            f"{_fingerprint(exc.key)}; refusing to connect (possible man-in-the-middle, or a reinstalled host)",
            hint=f"if the host was reinstalled, remove the old key: ssh-keygen -f {known} -R '{name}' "
                 f"then check the new key and add it")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return ConnectError(f"{label}: the private key {ssh.identity_file} is encrypted",
                            hint="load it into ssh-agent (ssh-add) and retry")
    if isinstance(exc, paramiko.AuthenticationException):
        how = f"key {ssh.identity_file}" if ssh.identity_file else "ssh-agent / default keys"
        return ConnectError(f"{label}: SSH authentication failed for user {user} ({how})",
                            hint=f"the public key must be in ~{user}/.ssh/authorized_keys on the host; "
                                 "set ssh.identity_file or load the key into ssh-agent")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{label}: connection refused",
                            hint=f"is sshd running and listening on port {port}?")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return ConnectError(f"{label}: no route to host", hint="is the host up, and is this its address?")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes == {errno.EHOSTUNREACH}:
            return ConnectError(f"{label}: no route to host",
                                hint="is the host up, and is this its address?")
        return ConnectError(f"{label}: connection refused",
                            hint=f"is sshd running and listening on port {port}?")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectError(f"{label}: SSH connection timed out after {ssh.connect_timeout:g}s",
                            hint="is the host up and reachable? ssh.connect_timeout raises the bound")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"{label}: cannot resolve the address: {exc.strerror}")
    if isinstance(exc, paramiko.ChannelException):
        return ConnectError(f"{label}: the jump host could not open a connection onward: {exc}",
                            hint="check ssh.proxy_jump and that the jump host can reach the target")
    if isinstance(exc, paramiko.SSHException) and ("protocol banner" in str(exc)
                                                   or "No existing session" in str(exc)):
        # the banner wait or the handshake's own bound (both ssh.connect_timeout) ran out first
        return ConnectError(f"{label}: no SSH handshake within {ssh.connect_timeout:g}s: the port accepts "
                            "connections but no SSH server answers",
                            hint="is sshd hung, or another service on this port? ssh.connect_timeout raises "
                                 "the bound")
    if isinstance(exc, paramiko.SSHException):
        return ConnectError(f"{label}: SSH failed: {exc}")
    if isinstance(exc, OSError):
        return ConnectError(f"{label}: {exc.strerror or exc}")
    return ConnectError(f"{label}: {type(exc).__name__}: {exc}")


def dial(address: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection under an SSH session, with TCP_NODELAY. paramiko leaves Nagle on, and
    then each small SSH message that follows another one waits for the peer's delayed ACK: ~40 ms
    per command and per handshake step on Linux (measured in the lab: a trivial command took 47 ms
    with Nagle, 4 ms without; the handshake 73-109 ms, 28-32 ms without)."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def _open_connection(ssh: SshSettings, address: str, port: int | None, user: str | None, *, name: str,
                     accept_new: bool, jumps: Sequence[Jump] = ()):
    """A Fabric Connection, opened, with our host-key policy on it and on every jump hop. A user
    or port that is None comes from `ssh_endpoint` (the ssh config, then root and 22)."""
    from fabric import Connection

    user, port = ssh_endpoint(ssh, address, user, port)
    gateway = False
    via = None
    if jumps:
        hop = jumps[-1]
        via_user, via_port = ssh_endpoint(ssh, hop.address, hop.user, hop.port)
        via = Jump(via_user, hop.address, via_port)
        gateway = _open_connection(ssh, via.address, via.port, via.user, name=via.address,
                                   accept_new=accept_new, jumps=jumps[:-1])
    conn = Connection(address, user=user, port=port, config=_fabric_config(ssh, own=True), gateway=gateway,
                      connect_timeout=max(1, int(round(ssh.connect_timeout))),
                      connect_kwargs=_connect_kwargs(ssh))
    if not jumps:
        # ProxyJump from ~/.ssh/config: build the hops ourselves so they get the strict policy too
        configured = conn.ssh_config.get("proxyjump")
        if configured and configured.lower() != "none":
            hops = [parse_jump(h.strip(), None, None) for h in configured.split(",")]
            return _open_connection(ssh, address, port, user, name=name, accept_new=accept_new, jumps=hops)
        if conn.ssh_config.get("proxycommand"):
            conn.gateway = conn.ssh_config["proxycommand"]
    address = conn.host   # after ssh_config HostName
    _load_host_keys(conn.client, Path(ssh.known_hosts).expanduser())
    conn.client.set_missing_host_key_policy(_policy(Path(ssh.known_hosts).expanduser(), accept_new))
    label = _describe(name, address, port, via)
    try:
        if not conn.gateway:
            conn.connect_kwargs = {**conn.connect_kwargs, "sock": dial(address, conn.port, ssh.connect_timeout)}
        conn.open()
    except Exception as exc:  # noqa: BLE001 - translated below, chained
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
        if isinstance(exc, (ConnectError,)):
            raise
        raise _translate_connect(exc, label, ssh, user, address, port) from exc
    conn.transport.set_keepalive(15)
    return conn


def connect(host: Host, ssh: SshSettings, *, accept_new_host_keys: bool = False,
            aliases: Mapping[str, str] | None = None) -> SshRemote:
    """Connect to one controller with the inventory's SSH settings (and jump host, if any)."""
    user, port = ssh_endpoint(ssh, host.address)
    jumps: list[Jump] = []
    if ssh.proxy_jump:
        jump = _inventory_jump(ssh, aliases)
        if (jump.address, jump.port) != (host.address, port):   # the jump host itself: direct
            jumps.append(jump)
    conn = _open_connection(ssh, host.address, port, user, name=host.name,
                            accept_new=accept_new_host_keys, jumps=jumps)
    return SshRemote(host.name, conn, sudo=ssh.sudo and user != "root")


def _inventory_jump(ssh: SshSettings, aliases: Mapping[str, str] | None) -> Jump:
    """ssh.proxy_jump with its user and port resolved (`ssh_endpoint`)."""
    jump = parse_jump(ssh.proxy_jump, None, None, aliases)
    user, port = ssh_endpoint(ssh, jump.address, jump.user, jump.port)
    return Jump(user, jump.address, port)


# --- TCP through the jump host (verify --probe, the health gate) ---------------------------------


def tcp_dialer(ssh: SshSettings, aliases: Mapping[str, str] | None = None, *,
               accept_new_host_keys: bool = False) -> JumpDialer | None:
    """A `dial(address, port, timeout) -> socket` for HTTPS from the workstation to the hosts,
    through `ssh.proxy_jump` (resolved as `connect` resolves it); None without a jump host, when
    dialling directly is right. The caller closes it (`close()`, or `with`)."""
    if not ssh.proxy_jump:
        return None
    return JumpDialer(ssh, _inventory_jump(ssh, aliases), accept_new_host_keys=accept_new_host_keys)


class JumpDialer:
    """TCP connections opened by the jump host, as `ssh -W` does: one SSH connection to it
    (opened at the first dial with the strict host-key policy of every connection, then shared by
    every thread), and per dial a `direct-tcpip` channel spliced to one end of a socket pair, so
    TLS and http.client get the other end: a real socket. Either side's end closes both."""

    def __init__(self, ssh: SshSettings, jump: Jump, *, accept_new_host_keys: bool = False):
        self.ssh = ssh
        self.jump = jump
        self._accept_new = accept_new_host_keys
        self._lock = threading.Lock()
        self._conn = None
        self._closed = False

    def __call__(self, address: str, port: int, timeout: float) -> socket.socket:
        """A socket connected to address:port through the jump host; OSError when that fails
        (as `socket.create_connection` raises it), with the jump host in the message."""
        import paramiko

        via = f"via {self.jump.address}:{self.jump.port}"
        transport = self._transport(via)
        try:
            chan = transport.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:      # the jump host's own connect failed
            err = ConnectionRefusedError if "refused" in (exc.text or "").lower() else ConnectionError
            raise err(f"{via}: {exc.text or 'the jump host could not connect'}") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._drop(transport)
            if "timeout" in str(exc).lower():
                raise TimeoutError(f"{via}: no channel to {address}:{port} within {timeout:g}s") from exc
            raise ConnectionError(f"{via}: {exc or type(exc).__name__}") from exc
        ours, theirs = socket.socketpair()
        ours.settimeout(timeout)
        threading.Thread(target=_splice, args=(chan, theirs), name=f"jump-{address}:{port}", daemon=True).start()
        return ours

    def _transport(self, via: str):
        with self._lock:
            if self._closed:
                raise ConnectionError(f"{via}: the dialer is closed")
            if self._conn is None or not self._conn.transport.is_active():
                try:
                    self._conn = _open_connection(self.ssh, self.jump.address, self.jump.port, self.jump.user,
                                                  name=self.jump.address, accept_new=self._accept_new)
                except ConnectError as exc:
                    raise ConnectionError(exc.message) from exc
            return self._conn.transport

    def _drop(self, transport) -> None:
        """Forget a connection that failed, so the next dial opens a new one."""
        with self._lock:
            conn = self._conn if self._conn is not None and self._conn.transport is transport else None
            if conn is not None:
                self._conn = None
        if conn is not None:
            _close_connection(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            _close_connection(conn)

    def __enter__(self) -> JumpDialer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_connection(conn) -> None:
    try:
        gateway = conn.gateway
        conn.close()
        if gateway and not isinstance(gateway, str):
            gateway.close()
    except Exception:  # noqa: BLE001 - closing a dead connection
        pass


def _splice(chan, sock: socket.socket) -> None:
    """Copy bytes both ways between a channel and a socket until either side ends, then close
    both (the channel's pollable fileno() wakes on data, EOF and close)."""
    import select

    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(chan.fileno(), select.POLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == sock.fileno():
                    data = sock.recv(65536)
                    if not data:
                        return
                    chan.sendall(data)
                else:
                    data = chan.recv(65536)
                    if not data:
                        return
                    sock.sendall(data)
    except Exception:  # noqa: BLE001 - a side went away: the other learns it from the close
        return
    finally:
        for end in (chan, sock):
            try:
                end.close()
            except (OSError, EOFError, Exception):  # noqa: BLE001 - the jump connection closed first
                pass


# --- the connected host --------------------------------------------------------------------------


class SshRemote:
    """One open SSH connection to a controller; every method is one remote command."""

    def __init__(self, name: str, conn, *, sudo: bool):
        self.name = name
        self.conn = conn
        self.sudo = sudo
        self._lock_channel = None

    # low level

    def _wrap(self, script: str) -> str:
        if self.sudo:
            return f"sudo -n sh -c {_q(script)}"
        return f"sh -c {_q(script)}"

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float = 120.0,
             what: str = "running a command") -> CommandResult:
        """Run `script` (as root: via sudo -n when configured), feed stdin, collect everything."""
        import paramiko

        try:
            chan = self.conn.transport.open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.exec_command(self._wrap(script))
            if stdin:
                view = memoryview(stdin)
                for start in range(0, len(view), 1 << 20):
                    chan.sendall(view[start:start + (1 << 20)])
            chan.shutdown_write()
            out, err = _read_streams(chan, timeout)
            rc = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise RemoteError(f"{self.name}: {what}: timed out") from exc
            transport = getattr(self.conn, "transport", None)
            if isinstance(exc, EOFError) or transport is None or not transport.is_active():
                raise RemoteError(f"{self.name}: {what}: the connection closed before the command finished",
                                  hint=CLOSED_HINT) from exc
            raise RemoteError(f"{self.name}: {what}: {exc or type(exc).__name__}") from exc
        result = CommandResult(rc, out, err)
        self._check_sudo(result, what)
        return result

    def _check_sudo(self, result: CommandResult, what: str) -> None:
        if self.sudo and result.rc != 0 and ("password is required" in result.err
                                            or "sudo: command not found" in result.err
                                            or "sudo: not found" in result.err):
            raise RemoteError(f"{self.name}: {what}: sudo -n failed: {result.err.strip().splitlines()[-1]}",
                              hint=f"give {self.conn.user} passwordless sudo on the host "
                                   "(NOPASSWD in /etc/sudoers.d), or connect as root")

    def _checked(self, script: str, what: str, **kw) -> CommandResult:
        result = self.exec(script, what=what, **kw)
        if result.rc != 0:
            self._raise_failed(result, what)
        return result

    def _raise_failed(self, result: CommandResult, what: str) -> None:
        if result.rc == -1:     # paramiko: no exit status, the channel closed (sshd or the link died)
            raise RemoteError(f"{self.name}: {what}: the connection closed before the command finished",
                              hint=CLOSED_HINT)
        tail = (result.err.strip() or result.out.strip()).splitlines()[-3:]
        raise RemoteError(f"{self.name}: {what} failed (exit {result.rc}): " + " | ".join(tail))

    # the interface

    def read_facts(self, request: FactRequest, *, lock_wait: float | None = None) -> HostFacts:
        script = ("" if self.sudo else ROOT_CHECK) + facts_script(request)
        if lock_wait is None:
            result = self._checked(script, "reading facts", timeout=60)
            text = result.out
        else:
            text = self._lock_and_read(script, lock_wait)
        check_root(text, self.name, self.conn.user)
        try:
            return parse_facts(text, request)
        except ValueError as exc:
            raise RemoteError(f"{self.name}: reading facts: {exc}") from exc

    def _lock_and_read(self, script: str, wait: float) -> str:
        """Take the deploy lock (flock, held until close()) and read the facts inside it."""
        import paramiko

        held = script + "exec cat >/dev/null\n"
        command = (f"flock -w {max(0.0, wait):g} -E {LOCKED_EXIT} {_q(layout.LOCK_PATH)} "
                   f"sh -c {_q(held)}")
        if self.sudo:
            command = f"sudo -n {command}"
        what = "taking the deploy lock and reading facts"
        try:
            chan = self.conn.transport.open_session(timeout=30)
            chan.settimeout(wait + 60)
            chan.exec_command(command)
            end = f"{_MARK}end\n".encode()
            buf, errb = _read_streams(chan, wait + 60, until=end)     # the command stays, holding the lock
            if end not in buf:
                rc = chan.recv_exit_status()
                err = errb.decode("utf-8", "replace")
                chan.close()
                if rc == LOCKED_EXIT:
                    raise LockedError(
                        f"{self.name}: another k8sboot deploy holds {layout.LOCK_PATH} (waited {wait:g}s)",
                        hint="wait for it to finish, or raise --lock-wait")
                self._check_sudo(CommandResult(rc, buf, err.encode()), what)
                raise RemoteError(f"{self.name}: {what} failed (exit {rc}): {err.strip()[-300:]}",
                                  hint="flock comes with util-linux on every Debian/Ubuntu host")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(f"{self.name}: {what}: {exc or type(exc).__name__}") from exc
        self._lock_channel = chan
        return buf.decode("utf-8", "replace")

    def stage(self, plan: HostPlan) -> None:
        """Stage the plan's new files beside their targets (`plan.build_stage_script`); nothing is
        replaced. A rolling deploy stages on every host at once, then switches in waves."""
        payload = build_tar(plan.uploads) if plan.uploads else None
        result = self.exec(planmod.build_stage_script(plan), what="staging files", stdin=payload,
                           timeout=120 + len(payload or b"") / (5 << 20))
        self._check_install(result, "staging files")

    def unstage(self, plan: HostPlan) -> None:
        script = planmod.build_unstage_script(plan)
        if script:
            self._checked(script, "removing the staged files", timeout=60)

    def recover(self, component: planmod.Component = planmod.APISERVER) -> None:
        """Put back the whole previous set after a switch that was cut short (its journal is there)."""
        self._checked(planmod.build_recover_script(component), "restoring the previous set of files", timeout=60)

    def install(self, plan: HostPlan, *, keep_previous: bool = False, wait: float | None = None,
                port: int = layout.SECURE_PORT, staged: bool = False, stop_timeout: float = 0.0
                ) -> ServiceFact | None:
        """Install the plan in one command (stage and switch, or only the switch when `staged`);
        with `wait` and a restart or reload, also wait (on the host) until the unit is up or
        failing, and return its state. `stop_timeout`: how long systemd may take to stop the old
        process (a draining kube-apiserver: its TimeoutStopSec), added to the command's bound."""
        payload = build_tar(plan.uploads) if plan.uploads and not staged else None
        script = (planmod.build_switch_script(plan, keep_previous=keep_previous) if staged
                  else planmod.build_install_script(plan, keep_previous=keep_previous))
        waiting = wait is not None and plan.restart
        if waiting:
            script += planmod.wait_script(port, wait, plan.component.unit)
        size = len(payload or b"")
        result = self.exec(script, what="installing files", stdin=payload,
                           timeout=120 + size / (5 << 20) + (wait or 0) + stop_timeout)
        self._check_install(result, "installing files")
        return self._state_after(result) if waiting else None

    def _check_install(self, result: CommandResult, what: str) -> None:
        if result.rc == 0:
            return
        if "@@k8sboot:check-failed" in result.out:
            detail = result.out.partition("@@k8sboot:check-failed")[2].strip().splitlines()[-3:]
            raise RemoteError(f"{self.name}: the new configuration was refused by its own check, so the previous "
                              f"set was put back and nothing was reloaded: {' | '.join(detail)}",
                              hint="fix the template or inventory (render it offline first), then rerun")
        explained = explain_install_failure(self.name, result.out, result.err)
        if explained:
            raise RemoteError(explained[0], hint=explained[1])
        self._raise_failed(result, what)

    def _state_after(self, result: CommandResult) -> ServiceFact:
        _, mark, tail = result.out.partition(planmod.STATE_MARK + "\n")
        if not mark:
            raise RemoteError(f"{self.name}: waiting for the unit: no state in the output")
        return parse_service(tail)

    def read_service(self, port: int = layout.SECURE_PORT, unit: str = layout.UNIT_NAME) -> ServiceFact:
        return parse_service(self._checked(planmod.service_state_script(port, unit), "reading the unit state",
                                           timeout=30).out)

    def read_journal(self, lines: int = 15, unit: str = layout.UNIT_NAME) -> list[str]:
        result = self.exec(f"journalctl -u {unit} -n {int(lines)} --no-pager -o short-iso "
                           f"--no-hostname 2>&1", what="reading the journal", timeout=30)
        return [ln for ln in result.out.splitlines() if ln.strip() and not ln.startswith("-- ")]

    def rollback(self, plan: HostPlan, *, wait: float | None = None,
                 port: int = layout.SECURE_PORT, stop_timeout: float = 0.0) -> ServiceFact | None:
        script = planmod.build_rollback_script(plan)
        waiting = wait is not None and planmod.rollback_restarts(plan)
        if waiting:
            script += planmod.wait_script(port, wait, plan.component.unit)
        result = self._checked(script, "rolling back", timeout=120 + (wait or 0) + stop_timeout)
        return self._state_after(result) if waiting else None

    def cleanup(self, plan: HostPlan) -> None:
        script = planmod.build_cleanup_script(plan)
        if script:
            self._checked(script, "removing the previous versions", timeout=60)

    def abort(self) -> None:
        """Cut the connection now, from another thread (an interrupt): `close()` would first queue
        behind an upload in flight for paramiko's send lock. The host's command loses its input."""
        transport = getattr(self.conn, "transport", None)
        if transport is not None:
            transport.close()     # closes the socket and every channel; sends nothing
        self.close()

    def close(self) -> None:
        if self._lock_channel is not None:
            try:
                self._lock_channel.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass
            self._lock_channel = None
        try:
            gateway = self.conn.gateway
            self.conn.close()
            if gateway and not isinstance(gateway, str):
                gateway.close()
        except Exception:  # noqa: BLE001
            pass


def _read_streams(chan, timeout: float, *, until: bytes | None = None) -> tuple[bytes, bytes]:
    """A command's stdout and stderr, read together until its EOF (or until stdout holds `until`).

    The two streams share the channel's window: reading stdout to its end before stderr stalls
    the command, and us with it, once the unread stderr has filled the window (2 MiB). So this
    waits on paramiko's pollable `fileno()` (set by data on either stream, by EOF and by close)
    and takes what each stream has buffered. `timeout` bounds each wait with nothing arriving,
    as `settimeout` bounded each `recv`: then `socket.timeout`. A channel closed without EOF (the
    link died) ends the read as EOF does; `recv_exit_status()` then gives -1."""
    import select

    out, err = bytearray(), bytearray()
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    while True:
        ended = chan.eof_received or chan.closed     # read first: every byte is buffered before EOF
        got = False
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            got = True
        if chan.recv_ready():
            start = max(0, len(out) - len(until) + 1) if until else 0
            out += chan.recv(65536)
            got = True
            if until and out.find(until, start) >= 0:
                return bytes(out), bytes(err)
        if got:
            continue
        if ended:
            return bytes(out), bytes(err)
        if not poller.poll(max(1, int(timeout * 1000))):
            raise socket.timeout()
