"""The local store: the only module that writes files on the workstation.

Directories are created 0700; keys are created 0600 (`O_CREAT|O_EXCL` on a temp name in the
same directory, then `os.replace`), never chmod'ed afterwards; certs are 0644. Every write goes
through a directory file descriptor, so a name can never escape the PKI dir, and a target that is
a symbolic link or a directory is refused before any file is touched. Reading translates every
`OSError` into a `PkiError` naming the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from k8sboot import layout
from k8sboot.errors import LockedError, PkiError

if TYPE_CHECKING:   # k8sboot.pki imports cryptography; store is imported by fast paths too
    from k8sboot.pki import OutputFile, PkiFacts, PkiSpec

MAX_FILE_BYTES = 1 << 20   # a PEM file or config is a few KiB; more means the wrong file


# --- reading ---------------------------------------------------------------------------------


def read_optional(path: Path) -> bytes | None:
    """The bytes of a regular file, None when it does not exist; PkiError for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise PkiError(f"reading {path}: {path.parent} is not a directory") from None
    except PermissionError:
        raise PkiError(f"reading {path}: permission denied",
                       hint="run as the user that ran k8sboot gen-certs") from None
    except OSError as exc:
        raise PkiError(f"reading {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise PkiError(f"reading {path}: is a directory, where a file should be",
                           hint=f"move the directory {path} away and run again")
        if not stat.S_ISREG(st.st_mode):
            raise PkiError(f"reading {path}: not a regular file")
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
    )


# --- locking ---------------------------------------------------------------------------------


@contextlib.contextmanager
def pki_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on the PKI directory (when it exists) for a read-plan-write cycle."""
    if not _check_dir(directory):
        yield
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"locking {directory}: another k8sboot run is writing the PKI",
                              hint="wait for it to finish, then run again") from None
        yield
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


def _create_temp(dir_fd: int, directory: Path, name: str, data: bytes, mode: int) -> str:
    """Write `data` to a new file created with `mode` (O_EXCL: never an existing file)."""
    temp = f".{name}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
    try:
        if mode & 0o077 and stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)   # a public file (cert) narrowed by the umask; keys never get here
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(dir_fd, temp)
        raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
    os.close(fd)
    return temp


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _write_batch(directory: Path, files: Sequence[tuple[str, bytes, int]]) -> None:
    """Every file to a temp name first, then rename them all into place, then fsync the dir."""
    for name, _, _ in files:
        _check_name(directory, name)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PkiError(f"writing into {directory}: {exc.strerror}") from exc
    temps: list[tuple[str, str]] = []
    try:
        for name, _, _ in files:
            _check_target(dir_fd, directory, name)
        for name, data, mode in files:
            temps.append((_create_temp(dir_fd, directory, name, data, mode), name))
        for temp, name in temps:
            try:
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                raise PkiError(f"writing {directory / name}: {exc.strerror}") from exc
        temps.clear()
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        for temp, _ in temps:
            _unlink_quietly(dir_fd, temp)
        os.close(dir_fd)


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

