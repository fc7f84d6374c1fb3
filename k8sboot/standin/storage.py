"""Where the stand-in keeps API objects: one narrow interface, and a file store behind it.

The interface is what an API server asks of etcd, no more: get / list / create / update / delete
an object by (resource, namespace, name), each write stamping the next resourceVersion of one
counter for the whole store, each write atomic. etcdstore.EtcdStore is the same interface on a
real etcd (what the stand-in uses, from its --etcd-* flags); nothing above these modules knows
where objects live. The file store serves tests and a stand-in started with
K8SBOOT_STANDIN_DATA_DIR (which then claims no etcd check).

`FileStore(directory)`: objects as JSON files, `<dir>/<resource>/<namespace or "_cluster">/<name>.json`
(the name percent-encoded), and the counter in `<dir>/revision`. The directory is created
root-only (0700) and files 0600 at creation; each write goes to a temporary file in the same
directory, is fsynced, renamed over the old one, and the directory fsynced, so a crash leaves the
old object or the new one, never a mix. Objects are also kept in memory (one process serves one
store; reads never touch the disk). Thread-safe: one lock around every write.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from typing import Protocol
from urllib.parse import quote, unquote

DEFAULT_DIR = "/var/lib/kube-apiserver-standin"
DIR_ENV = "K8SBOOT_STANDIN_DATA_DIR"          # tests and a second stand-in on one host set another dir
CLUSTER_SCOPE = "_cluster"                    # the namespace directory of cluster-scoped objects


class StorageError(Exception):
    """A write the store refuses; api.py turns it into the API server's Status."""


class NotFound(StorageError):
    pass


class AlreadyExists(StorageError):
    pass


class Conflict(StorageError):
    """An update that names a resourceVersion other than the stored one."""


class StorageIOError(StorageError):
    """The disk refused (the message names the path)."""


class Store(Protocol):
    """The five calls (and the counter) an API server needs of its storage."""

    def get(self, resource: str, namespace: str, name: str) -> dict | None: ...
    def list(self, resource: str, namespace: str | None = None) -> list[dict]: ...
    def list_with_revision(self, resource: str, namespace: str | None = None) -> tuple[list[dict], int]: ...
    def create(self, resource: str, namespace: str, name: str, obj: dict) -> dict: ...
    def update(self, resource: str, namespace: str, name: str, obj: dict,
               resource_version: str | None = None) -> dict: ...
    def delete(self, resource: str, namespace: str, name: str) -> dict: ...
    @property
    def revision(self) -> int: ...


def _key(resource: str, namespace: str, name: str) -> tuple[str, str, str]:
    return resource, namespace or "", name


class FileStore:
    """The Store on a local directory (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._revision = 0
        self._ensure_dir(directory)
        self._load()

    # --- reads ----------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        obj = self._objects.get(_key(resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Objects of `resource` (in `namespace`; None: every namespace) in etcd's key order:
        namespace, then name."""
        return self.list_with_revision(resource, namespace)[0]

    def list_with_revision(self, resource: str, namespace: str | None = None) -> tuple[list[dict], int]:
        """(the objects, the revision they were read at: the list's resourceVersion)."""
        with self._lock:
            keys = sorted(k for k in self._objects
                          if k[0] == resource and (namespace is None or k[1] == namespace))
            return [copy.deepcopy(self._objects[k]) for k in keys], self._revision

    # --- writes ---------------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, name: str, obj: dict) -> dict:
        with self._lock:
            key = _key(resource, namespace, name)
            if key in self._objects:
                raise AlreadyExists(f"{resource} {namespace}/{name}")
            return self._write(key, obj)

    def update(self, resource: str, namespace: str, name: str, obj: dict,
               resource_version: str | None = None) -> dict:
        with self._lock:
            key = _key(resource, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise NotFound(f"{resource} {namespace}/{name}")
            if resource_version and resource_version != current["metadata"].get("resourceVersion"):
                raise Conflict(f"{resource} {namespace}/{name}")
            return self._write(key, obj)

    def delete(self, resource: str, namespace: str, name: str) -> dict:
        with self._lock:
            key = _key(resource, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise NotFound(f"{resource} {namespace}/{name}")
            self._next_revision()
            path = self._path(key)
            try:
                os.unlink(path)
                self._fsync_dir(os.path.dirname(path))
            except OSError as exc:
                raise StorageIOError(f"deleting {path}: {exc.strerror}") from exc
            del self._objects[key]
            return copy.deepcopy(current)

    # --- disk -----------------------------------------------------------------------------------

    def _next_revision(self) -> str:
        """The counter is written before the object it stamps: after a crash it is never behind
        an object on disk, so a resourceVersion is never handed out twice."""
        self._revision += 1
        self._atomic_write(os.path.join(self.directory, "revision"), f"{self._revision}\n".encode())
        return str(self._revision)

    def _write(self, key: tuple[str, str, str], obj: dict) -> dict:
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["resourceVersion"] = self._next_revision()
        path = self._path(key)
        self._ensure_dir(os.path.dirname(path))
        self._atomic_write(path, json.dumps(stored, separators=(",", ":"), sort_keys=False).encode())
        self._objects[key] = stored
        return copy.deepcopy(stored)

    def _path(self, key: tuple[str, str, str]) -> str:
        resource, namespace, name = key
        return os.path.join(self.directory, resource, quote(namespace, safe="") or CLUSTER_SCOPE,
                            quote(name, safe="") + ".json")

    def _atomic_write(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._fsync_dir(os.path.dirname(path))
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageIOError(f"writing {path}: {exc.strerror}") from exc

    @staticmethod
    def _fsync_dir(directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _ensure_dir(directory: str) -> None:
        """The directory and any missing parent, each created 0700 (os.makedirs gives its mode
        to the last one only)."""
        missing = []
        path = os.path.abspath(directory)
        while not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise StorageIOError(f"creating {path}: {exc.strerror}") from exc

    def _load(self) -> None:
        """Every object on disk into memory; the counter is the largest of the counter file and
        the objects' resourceVersions. Temporary files of an interrupted write are removed."""
        top = self.directory
        try:
            with open(os.path.join(top, "revision"), "rb") as f:
                self._revision = int(f.read().strip() or b"0")
        except FileNotFoundError:
            self._revision = 0
        except (OSError, ValueError) as exc:
            raise StorageIOError(f"reading {os.path.join(top, 'revision')}: {exc}") from exc
        for resource in sorted(os.listdir(top)):
            rdir = os.path.join(top, resource)
            if not os.path.isdir(rdir):
                if ".tmp." in resource:
                    os.unlink(rdir)
                continue
            for ns_dir in sorted(os.listdir(rdir)):
                ndir = os.path.join(rdir, ns_dir)
                namespace = "" if ns_dir == CLUSTER_SCOPE else unquote(ns_dir)
                for file in sorted(os.listdir(ndir)):
                    path = os.path.join(ndir, file)
                    if ".tmp." in file:
                        os.unlink(path)
                        continue
                    if not file.endswith(".json"):
                        continue
                    try:
                        with open(path, "rb") as f:
                            obj = json.loads(f.read())
                    except (OSError, ValueError) as exc:
                        raise StorageIOError(f"reading {path}: {exc}") from exc
                    self._objects[(resource, namespace, unquote(file[:-5]))] = obj
                    rv = obj.get("metadata", {}).get("resourceVersion", "0")
                    self._revision = max(self._revision, int(rv) if str(rv).isdigit() else 0)


def open_store(directory: str | None = None) -> FileStore:
    """The file store in `directory`, else $K8SBOOT_STANDIN_DATA_DIR, else DEFAULT_DIR."""
    return FileStore(directory or os.environ.get(DIR_ENV) or DEFAULT_DIR)
