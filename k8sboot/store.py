"""The local store: the only module that writes files on the workstation.

Directories are created 0700; keys are created 0600 (`O_CREAT|O_EXCL` on a temp name in the
same directory, then `os.replace`), never chmod'ed afterwards; certs are 0644. Every write goes
through a directory file descriptor, so a name can never escape the PKI dir, and a target that is
a symbolic link or a directory is refused before any file is touched. Reading never follows a
symbolic link either (`O_NOFOLLOW`): a PKI file is a regular file inside the PKI dir, so nothing
can be read from, or later uploaded from, outside it. Reading translates every `OSError` into a
`PkiError` naming the path.

A batch of several files (gen-certs) is crash-safe: every file goes to a temp name first, then a
journal (`.k8sboot-pending-write`) lists the renames, then the renames happen with SIGINT/SIGTERM
held back, then the journal goes. A run killed (even by SIGKILL) before the journal is complete
leaves the old files; one killed after it is rolled forward by the next gen-certs
(`finish_interrupted_write`), which also removes any temp file a killed run left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from k8sboot import layout
from k8sboot.errors import LockedError, PkiError

if TYPE_CHECKING:   # k8sboot.pki imports cryptography; store is imported by fast paths too
    from k8sboot.pki import OutputFile, PkiFacts, PkiSpec

MAX_FILE_BYTES = 1 << 20   # a PEM file or config is a few KiB; more means the wrong file
JOURNAL = ".k8sboot-pending-write"   # the renames of a batch being committed (see the module doc)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")


# --- reading ---------------------------------------------------------------------------------


def _describe_link(path: Path) -> str:
    """`a symbolic link to /elsewhere/key.pem, outside pki`, or `a symbolic link to ca.pem`."""
    try:
        target = os.readlink(path)
    except OSError:
        return "a symbolic link"
    parent = path.parent
    target_dir = os.path.dirname(os.path.join(parent, target))
    inside = os.path.realpath(target_dir) == os.path.realpath(parent)
    return f"a symbolic link to {target}" + ("" if inside else f", outside {parent}")


def _not_regular(path: Path, mode: int) -> PkiError:
    if stat.S_ISDIR(mode):
        return PkiError(f"reading {path}: is a directory, where a file should be",
                        hint=f"move the directory {path} away and run again")
    if stat.S_ISLNK(mode):
        return PkiError(f"reading {path}: it is {_describe_link(path)}; k8sboot reads and writes "
                        "PKI files only as regular files inside the PKI directory",
                        hint=f"replace the link with a copy of the file it points to "
                             f"(cp --remove-destination \"$(readlink -f {path})\" {path}), or remove it")
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    return PkiError(f"reading {path}: not a regular file ({kind})",
                    hint=f"remove {path}; k8sboot gen-certs writes regular files")


def read_optional(path: Path) -> bytes | None:
    """The bytes of a regular file, None when it does not exist; PkiError for anything else.

    A symbolic link is refused, never followed, as are FIFOs, sockets and devices.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise PkiError(f"reading {path}: {path.parent} is not a directory") from None
    except OSError as exc:
        raise PkiError(f"reading {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise PkiError(f"reading {path}: permission denied",
                       hint="run as the user that ran k8sboot gen-certs") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:     # replaced by a link since the lstat
            raise _not_regular(path, stat.S_IFLNK) from None
        raise PkiError(f"reading {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise PkiError(f"reading {path}: larger than {MAX_FILE_BYTES // 1024} KiB; "
                               "not a PKI file")
        return b"".join(chunks)
    except OSError as exc:
        raise PkiError(f"reading {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _check_dir(path: Path) -> bool:
    """True when the directory exists, False when it does not; PkiError when it is not a dir."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise PkiError(f"reading {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise PkiError(f"reading {path}: not a directory",
                       hint="pki.dir in the inventory must name a directory")
    return True


def read_pki(spec: PkiSpec, *, require: bool = False,
             only: Collection[str] | None = None) -> PkiFacts:
    """Read and parse every file of a `PkiSpec` that exists (`k8sboot.pki.PkiFacts`).

    With `require`, a missing PKI directory is an error with the hint to run gen-certs.
    `only` limits the reading to the CA and these leaves (the service-account pair and the
    encryption config then read as absent).
    """
    from k8sboot import pki

    directory = spec.dir
    if not _check_dir(directory):
        if require:
            raise PkiError(f"reading {directory}: no such PKI directory",
                           hint="run `k8sboot gen-certs` (with the same -i) to create it")
    else:
        check_no_interrupted_write(directory)

    def pair(cert_file: str, key_file: str):
        cert_path, key_path = directory / cert_file, directory / key_file
        return pki.parse_pair(cert_path, read_optional(cert_path), key_path, read_optional(key_path))

    def maybe(path: Path) -> bytes | None:
        return read_optional(path) if only is None else None

    sa = spec.service_account
    sa_public, sa_key = directory / sa.cert_file, directory / sa.key_file
    return pki.PkiFacts(
        dir=directory,
        ca=pair(spec.ca.cert_file, spec.ca.key_file),
        leaves={leaf.name: pair(leaf.cert_file, leaf.key_file) for leaf in spec.leaves
                if only is None or leaf.name in only},
        service_account=pki.parse_key_pair(sa_public, maybe(sa_public), sa_key, maybe(sa_key)),
        encryption_config=maybe(directory / spec.encryption_config_file),
        etcd_ca=(pair(spec.etcd_ca.cert_file, spec.etcd_ca.key_file) if spec.etcd_ca is not None else None),
    )


# --- locking ---------------------------------------------------------------------------------


@contextlib.contextmanager
def pki_lock(directory: Path, *, create: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on the PKI directory for a read-plan-write cycle.

    Without `create`, a missing directory is not locked (readers). With it (gen-certs), the
    directory is created 0700 first so that two first runs cannot both plan on an empty PKI; if
    the cycle then fails and the directory is still empty, it is removed again.
    """
    created = False
    if not _check_dir(directory):
        if not create:
            yield
            return
        try:
            created = ensure_private_dir(directory)
        except LockedError:          # another first run created it just now: its lock decides
            pass
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PkiError(f"locking {directory}: {exc.strerror}",
                       hint="run as the user that ran k8sboot gen-certs") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"locking {directory}: another k8sboot run is writing the PKI",
                              hint="wait for it to finish, then run again") from None
        try:
            yield
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)          # only succeeds while still empty
            raise
    finally:
        os.close(fd)


# --- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteResult:
    path: Path
    outcome: str        # created | updated | unchanged


def ensure_private_dir(directory: Path) -> bool:
    """Create `directory` with mode 0700 (parents with the default mode); True when created."""
    if _check_dir(directory):
        return False
    if os.path.islink(directory):
        raise PkiError(f"creating {directory}: it is a symbolic link to {os.readlink(directory)}, "
                       "which does not exist",
                       hint=f"remove the link {directory}, or create the directory it points to")
    try:
        if directory.parent != directory:
            os.makedirs(directory.parent, exist_ok=True)
        os.mkdir(directory, layout.PKI_DIR_MODE)
    except FileExistsError:
        raise LockedError(f"creating {directory}: it appeared while k8sboot was working",
                          hint="another k8sboot run may be writing the PKI; run again") from None
    except OSError as exc:
        raise PkiError(f"creating {directory}: {exc.strerror}") from exc
    return True


def _check_name(directory: Path, name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise PkiError(f"writing into {directory}: {name!r} is not a plain file name")


def _check_target(dir_fd: int, directory: Path, name: str) -> os.stat_result | None:
    """Refuse a target that is a symlink or not a regular file; None when it does not exist."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise PkiError(f"writing {directory / name}: it is a symbolic link; refusing to write "
                       "through it", hint="replace the link with the file it points to, or remove it")
    if stat.S_ISDIR(st.st_mode):
        raise PkiError(f"writing {directory / name}: is a directory, where a file should be",
                       hint=f"move the directory {directory / name} away and run again")
    if not stat.S_ISREG(st.st_mode):
        raise PkiError(f"writing {directory / name}: not a regular file")
    return st


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(4)}.tmp"


def _create_temp(dir_fd: int, directory: Path, name: str, data: bytes, mode: int) -> tuple[str, int]:
    """Write `data` to a new file created with `mode` (O_EXCL: never an existing file).

    Returns the temp name and its open descriptor, flock'ed so that `_remove_stale_temps` of a
    concurrent run leaves it alone; the caller closes it once the file is renamed into place.
    """
    temp = _temp_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if mode & 0o077 and stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)   # a public file (cert) narrowed by the umask; keys never get here
        _write_all(fd, data)
    except BaseException as exc:
        os.close(fd)
        _unlink_quietly(dir_fd, temp)
        if isinstance(exc, OSError):
            raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
        raise
    return temp, fd


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer) and make it durable before any rename."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _fsync_dir(dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the few milliseconds of a commit, then deliver them.

    An interrupted gen-certs thus ends with every file of the batch renamed or none of them;
    the signal still ends the run (130/143) right after. Only the main thread can do this.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        pending.append(signum)

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(pending[0])


def _write_journal(dir_fd: int, directory: Path, renames: Sequence[tuple[str, str]]) -> None:
    """The list of renames, written in place and fsync'ed: a truncated journal is not JSON, and
    reads as "not committed" (no rename has happened before it is complete)."""
    data = json.dumps({"renames": [list(pair) for pair in renames]}).encode() + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(JOURNAL, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        raise PkiError(f"writing into {directory}: {directory / JOURNAL} exists: an interrupted "
                       "run left a write unfinished",
                       hint="run `k8sboot gen-certs` again: it finishes that write first") from None
    except OSError as exc:
        raise PkiError(f"writing {directory / JOURNAL}: {exc.strerror}") from exc
    try:
        _write_all(fd, data)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(dir_fd, JOURNAL)
        raise PkiError(f"writing {directory / JOURNAL}: {exc.strerror}") from exc
    os.close(fd)
    _fsync_dir(dir_fd)


def _write_batch(directory: Path, files: Sequence[tuple[str, bytes, int]]) -> None:
    """Every file to a temp name first, then (with a journal when there are several) rename them
    all into place with signals held back, then fsync the dir."""
    for name, _, _ in files:
        _check_name(directory, name)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PkiError(f"writing into {directory}: {exc.strerror}") from exc
    temps: list[tuple[str, str, int]] = []    # (temp, name, fd)
    journal = len(files) > 1
    journal_written = False
    renamed = 0
    try:
        for name, _, _ in files:
            _check_target(dir_fd, directory, name)
        for name, data, mode in files:
            temp, fd = _create_temp(dir_fd, directory, name, data, mode)
            temps.append((temp, name, fd))
        with _signals_held():
            if journal:
                _write_journal(dir_fd, directory, [(t, n) for t, n, _ in temps])
                journal_written = True
            for temp, name, _ in temps:
                try:
                    os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except OSError as exc:
                    if renamed:     # half a batch is in place: leave the journal to finish it
                        raise PkiError(
                            f"writing {directory / name}: {exc.strerror}; {renamed} of "
                            f"{len(temps)} files were already replaced",
                            hint="fix the cause, then run `k8sboot gen-certs` again: it finishes "
                                 "this write before anything else") from exc
                    raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
                renamed += 1
            _fsync_dir(dir_fd)
            if journal:
                _unlink_quietly(dir_fd, JOURNAL)
                _fsync_dir(dir_fd)
    finally:
        for temp, _, fd in temps:
            if not renamed:
                _unlink_quietly(dir_fd, temp)
            os.close(fd)
        if journal_written and not renamed:
            _unlink_quietly(dir_fd, JOURNAL)
        os.close(dir_fd)


def _remove_stale_temps(dir_fd: int, only: str | None = None) -> int:
    """Remove temp files (`.<name>.<8 hex>.tmp`) that no running k8sboot holds; their count."""
    removed = 0
    for entry in os.listdir(dir_fd):
        m = _TEMP_NAME.match(entry)
        if not m or (only is not None and m["name"] != only):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError:
            continue            # gone, or a link/FIFO someone else made: not ours to touch
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue        # a run is writing it right now
            _unlink_quietly(dir_fd, entry)
            removed += 1
        finally:
            os.close(fd)
    return removed


def _read_journal(dir_fd: int, directory: Path) -> list[tuple[str, str]] | None:
    """The renames of a committed journal; None when there is none or it was never completed."""
    try:
        fd = os.open(JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PkiError(f"reading {directory / JOURNAL}: {exc.strerror}",
                       hint=f"remove {directory / JOURNAL} if no k8sboot run is active") from exc
    try:
        raw = os.read(fd, MAX_FILE_BYTES)
    finally:
        os.close(fd)
    try:
        renames = json.loads(raw)["renames"]
        pairs = [(str(t), str(n)) for t, n in renames]
    except (ValueError, KeyError, TypeError):
        return None             # killed while writing it: no rename had started
    for temp, name in pairs:
        m = _TEMP_NAME.match(temp)
        if not m or m["name"] != name:
            raise PkiError(f"reading {directory / JOURNAL}: {temp!r} -> {name!r} is not a rename "
                           "k8sboot makes", hint=f"remove {directory / JOURNAL} and check {directory}")
        _check_name(directory, name)
    return pairs


@dataclass(frozen=True)
class Recovery:
    finished: tuple[str, ...] = ()      # files renamed into place for an interrupted run
    temps_removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.finished or self.temps_removed)


def finish_interrupted_write(directory: Path) -> Recovery:
    """Roll forward a batch whose journal is complete; remove temp files killed runs left.

    Call it under `pki_lock`, before reading. After it, the directory holds each file either as
    it was before the interrupted run or as that run wrote it, and no temp file.
    """
    if not _check_dir(directory):
        return Recovery()
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PkiError(f"reading {directory}: {exc.strerror}") from exc
    finished: list[str] = []
    try:
        pairs = _read_journal(dir_fd, directory)
        if pairs is not None:
            for temp, name in pairs:
                try:
                    st = os.lstat(temp, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue                        # renamed before the run was killed
                if not stat.S_ISREG(st.st_mode):
                    raise PkiError(f"finishing an interrupted write in {directory}: {temp} is "
                                   "not a regular file", hint=f"remove it and {directory / JOURNAL}")
                _check_target(dir_fd, directory, name)
                try:
                    os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except OSError as exc:
                    raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
                finished.append(name)
            _fsync_dir(dir_fd)
        _unlink_quietly(dir_fd, JOURNAL)
        removed = _remove_stale_temps(dir_fd)
        _fsync_dir(dir_fd)
    finally:
        os.close(dir_fd)
    return Recovery(tuple(finished), removed)


def check_no_interrupted_write(directory: Path) -> None:
    """PkiError when a killed gen-certs left a write half-done (readers call this)."""
    try:
        os.lstat(directory / JOURNAL)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PkiError(f"reading {directory}: {exc.strerror}") from exc
    raise PkiError(f"reading {directory}: an interrupted `k8sboot gen-certs` left a write "
                   f"unfinished ({directory / JOURNAL} exists), so some files may not match",
                   hint="run `k8sboot gen-certs` (with the same -i): it finishes that write first")


def write_pki_files(directory: Path, files: Sequence[OutputFile]) -> None:
    """Write `k8sboot.pki.OutputFile`s into the PKI dir (created 0700 if missing), atomically each."""
    if not files:
        return
    ensure_private_dir(directory)
    _write_batch(directory, [(f.name, f.data, f.mode) for f in files])


def write_private_file(path: Path, data: bytes, mode: int = layout.KUBECONFIG_MODE) -> WriteResult:
    """Write one file (a kubeconfig) atomically with `mode`; `unchanged` when identical already."""
    path = Path(path)
    directory = path.parent
    if not _check_dir(directory):
        raise PkiError(f"writing {path}: the directory {directory} does not exist",
                       hint="create it first, or pass another --out")
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PkiError(f"writing {path}: {exc.strerror}") from exc
    try:
        _check_name(directory, path.name)
        st = _check_target(dir_fd, directory, path.name)
        _remove_stale_temps(dir_fd, only=path.name)      # left by a run killed while writing it
    finally:
        os.close(dir_fd)
    if st is not None and stat.S_IMODE(st.st_mode) == mode and read_optional(path) == data:
        return WriteResult(path, "unchanged")
    _write_batch(directory, [(path.name, data, mode)])
    return WriteResult(path, "created" if st is None else "updated")


def file_mode(path: Path) -> int | None:
    """The permission bits of a path (not following a symlink), None when it does not exist."""
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PkiError(f"reading {path}: {exc.strerror}") from exc

