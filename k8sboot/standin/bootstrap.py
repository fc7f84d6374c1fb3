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

`StoreSource` is the rbac.Source over the store: what the authorizer reads on every request.
"""

from __future__ import annotations

from datetime import datetime

from k8sboot import rbac
from k8sboot.standin.resources import (NAMESPACES, SERVICE_ACCOUNTS, SYSTEM_NAMESPACES, TYPES,
                                       prepare_create, prepare_update)
from k8sboot.standin.storage import AlreadyExists, Store

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
    e.g. ["namespaces/default", "clusterroles/admin (reconciled)"]."""
    done = []
    for name in SYSTEM_NAMESPACES:
        if store.get(NAMESPACES.name, "", name) is None:
            store.create(NAMESPACES.name, "", name, prepare_create(NAMESPACES, {"metadata": {"name": name}}, "", now))
            done.append(f"namespaces/{name}")
    for ns in store.list(NAMESPACES.name):
        ensure_namespace_content(store, ns["metadata"]["name"], now)
    for wanted in rbac.bootstrap_policy():
        rt = _BY_KIND[wanted["kind"]]
        name = wanted["metadata"]["name"]
        current = store.get(rt.name, "", name)
        if current is None:
            store.create(rt.name, "", name, prepare_create(rt, wanted, "", now))
            done.append(f"{rt.name}/{name}")
            continue
        annotations = current["metadata"].get("annotations") or {}
        if annotations.get("rbac.authorization.kubernetes.io/autoupdate") != "true":
            continue
        field = "rules" if rt.kind == "ClusterRole" else "subjects"
        merged = _union(current.get(field), wanted.get(field))
        if merged != current.get(field):
            updated = dict(current, **{field: merged})
            store.update(rt.name, "", name, prepare_update(rt, updated, current))
            done.append(f"{rt.name}/{name} (reconciled)")
    return done


class StoreSource:
    """rbac.Source over the store. ClusterRoles with an aggregationRule get the rules of the roles
    they select (the clusterrole-aggregation controller's result), recomputed when the store has
    changed since the last request."""

    def __init__(self, store: Store):
        self.store = store
        self._cache: tuple[int, list[dict]] | None = None

    def cluster_roles(self) -> list[dict]:
        revision = self.store.revision
        cached = self._cache
        if cached is None or cached[0] != revision:
            cached = (revision, rbac.aggregate_cluster_roles(self.store.list("clusterroles")))
            self._cache = cached
        return list(cached[1])

    def cluster_role_bindings(self) -> list[dict]:
        return self.store.list("clusterrolebindings")

    def roles(self, namespace: str) -> list[dict]:
        return self.store.list("roles", namespace)

    def role_bindings(self, namespace: str) -> list[dict]:
        return self.store.list("rolebindings", namespace)

