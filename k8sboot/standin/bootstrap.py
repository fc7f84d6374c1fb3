"""What a real control plane has in its store moments after it starts, made at the stand-in's start
(and idempotent, so a restart on the same store changes nothing that is already right):

* the system namespaces default, kube-system, kube-public, kube-node-lease (the apiserver's
  system-namespaces controller), status.phase Active;
* a `default` ServiceAccount in every namespace (kube-controller-manager's serviceaccount
  controller; the stand-in also creates it when a namespace is created);
* the bootstrap RBAC policy (k8sboot.rbac.bootstrap_policy(), the rbac/bootstrap-roles post-start
  hook): missing ClusterRoles and ClusterRoleBindings are created; existing ones annotated
  `rbac.authorization.kubernetes.io/autoupdate: "true"` get the rules or subjects they lack added
  back (upstream's reconcile); others are left as the user made them.

`StoreSource` is the rbac.Source over the store (what the authorizer reads on every request) and
the ServiceAccount lookup, cached as the real server's informers are.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime

from k8sboot import rbac
from k8sboot.standin.log import log, quote
from k8sboot.standin.resources import (NAMESPACES, SERVICE_ACCOUNTS, SYSTEM_NAMESPACES, TYPES,
                                       prepare_create, prepare_update)
from k8sboot.standin.storage import AlreadyExists, Conflict, Store, StorageIOError

_BY_KIND = {t.kind: t for t in TYPES}


def ensure_namespace_content(store: Store, namespace: str, now: datetime) -> None:
    """The `default` ServiceAccount of a namespace, as the serviceaccount controller makes it."""
    if store.get(SERVICE_ACCOUNTS.name, namespace, "default") is None:
        obj = prepare_create(SERVICE_ACCOUNTS, {"metadata": {"name": "default"}}, namespace, now)
        try:
            store.create(SERVICE_ACCOUNTS.name, namespace, "default", obj)
        except AlreadyExists:
            pass


def _union(have: list | None, want: list | None) -> list | None:
    out = list(have or [])
    out.extend(w for w in (want or []) if w not in out)
    return out or have


def ensure_system_objects(store: Store, now: datetime) -> list[str]:
    """Make what is missing (see the module docstring); returns what was created or reconciled,
    e.g. ["namespaces/default", "clusterroles/admin (reconciled)"]. Safe to run by several API
    servers on one etcd at once (every controller starting together): an object another made
    first, or changed meanwhile, is left to it."""
    done = []

    def create(resource: str, name: str, obj: dict) -> None:
        try:
            store.create(resource, "", name, obj)
            done.append(f"{resource}/{name}")
        except AlreadyExists:
            pass                 # another API server on the same etcd made it first: as good

    # one list per kind, not a get per object: with etcd, a restart costs a handful of round
    # trips before the port opens instead of one per bootstrap object
    namespaces = {o["metadata"]["name"] for o in store.list(NAMESPACES.name)}
    for name in SYSTEM_NAMESPACES:
        if name not in namespaces:
            create(NAMESPACES.name, name, prepare_create(NAMESPACES, {"metadata": {"name": name}}, "", now))
            namespaces.add(name)
    accounts = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in store.list(SERVICE_ACCOUNTS.name)}
    for ns in sorted(namespaces):
        if (ns, "default") not in accounts:
            ensure_namespace_content(store, ns, now)
    stored = {kind: {o["metadata"]["name"]: o for o in store.list(rt.name)}
              for kind, rt in ((k, _BY_KIND[k]) for k in ("ClusterRole", "ClusterRoleBinding"))}
    for wanted in rbac.bootstrap_policy():
        rt = _BY_KIND[wanted["kind"]]
        name = wanted["metadata"]["name"]
        current = stored[rt.kind].get(name)
        if current is None:
            create(rt.name, name, prepare_create(rt, wanted, "", now))
            continue
        annotations = current["metadata"].get("annotations") or {}
        if annotations.get("rbac.authorization.kubernetes.io/autoupdate") != "true":
            continue
        field = "rules" if rt.kind == "ClusterRole" else "subjects"
        merged = _union(current.get(field), wanted.get(field))
        if merged != current.get(field):
            updated = dict(current, **{field: merged})
            try:
                store.update(rt.name, "", name, prepare_update(rt, updated, current),
                             current["metadata"].get("resourceVersion"))
                done.append(f"{rt.name}/{name} (reconciled)")
            except Conflict:
                pass             # changed meanwhile (another API server reconciling it): its turn
    return done


class StoreSource:
    """rbac.Source over the store, and the ServiceAccount lookup of token authentication: what
    the real server reads from its informers' caches on every request, kept here the same way.

    A list is read again only when the store's revision has moved past the one it was read at;
    `pinned()` makes one request ask the revision once (with etcd: one round trip per request in
    the steady state, not one per list). When the store cannot be read (etcd down), the lists
    last read are used, as an informer serves its cache while its watch is broken; a list never
    read is empty, as an informer that has not synced (the real server then denies, 403, all but
    system:masters). ClusterRoles with an aggregationRule get the rules of the roles they select
    (the clusterrole-aggregation controller's result)."""

    WARN_EVERY = 10.0                  # seconds between two log lines about an unreadable store

    def __init__(self, store: Store, clock=time.monotonic):
        self.store = store
        self.clock = clock
        self._lists: dict[tuple[str, str], tuple[int, list[dict]]] = {}
        self._aggregated: tuple[int, list[dict]] | None = None
        self._local = threading.local()
        self._warned_at: float | None = None

    @contextmanager
    def pinned(self):
        """Within it (one request, one thread), the store's revision is read at most once."""
        self._local.pinned, self._local.revision = True, None
        try:
            yield self
        finally:
            self._local.pinned, self._local.revision = False, None

    def _revision(self) -> int:
        local = self._local
        if getattr(local, "pinned", False):
            if local.revision is None:
                local.revision = self.store.revision
            return local.revision
        return self.store.revision

    def _list(self, resource: str, namespace: str = "") -> tuple[int, list[dict]]:
        key = (resource, namespace)
        cached = self._lists.get(key)
        try:
            revision = self._revision()
            if cached is not None and cached[0] >= revision:
                return cached
            items, listed_at = self.store.list_with_revision(resource, namespace or None)
        except StorageIOError as exc:
            self._warn(exc)
            return cached if cached is not None else (0, [])
        fresh = (listed_at, items)
        self._lists[key] = fresh
        return fresh

    def _warn(self, exc: StorageIOError) -> None:
        now = self.clock()
        if self._warned_at is None or now - self._warned_at >= self.WARN_EVERY:
            self._warned_at = now
            log(f'"Cannot read the store: RBAC and ServiceAccount lookups answer from what was last read" '
                f'err={quote(str(exc))}', level="W")

    def cluster_roles(self) -> list[dict]:
        revision, roles = self._list("clusterroles")
        aggregated = self._aggregated
        if aggregated is None or aggregated[0] != revision:
            aggregated = (revision, rbac.aggregate_cluster_roles(roles))
            self._aggregated = aggregated
        return list(aggregated[1])

    def cluster_role_bindings(self) -> list[dict]:
        return list(self._list("clusterrolebindings")[1])

    def roles(self, namespace: str) -> list[dict]:
        return list(self._list("roles", namespace)[1])

    def role_bindings(self, namespace: str) -> list[dict]:
        return list(self._list("rolebindings", namespace)[1])

    def service_account_uid(self, namespace: str, name: str) -> str | None:
        """The uid of ServiceAccount namespace/name as last read, or None."""
        for sa in self._list(SERVICE_ACCOUNTS.name, namespace)[1]:
            if sa["metadata"].get("name") == name:
                return sa["metadata"].get("uid")
        return None
