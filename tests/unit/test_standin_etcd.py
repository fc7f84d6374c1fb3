"""EtcdStore (k8sboot/standin/etcdstore.py) against a real etcd 3.4 on 127.0.0.1 with TLS and
client-certificate auth (Debian's binaries, unpacked by tests/etcd_helpers.py), held to the same
contract as FileStore by one table of behaviour tests run over both stores; then what only etcd
has: upstream's keys and values checked with etcdctl, resourceVersion = mod_revision, restarts,
failover, health() and TLS failures, and a run under Debian's /usr/bin/python3."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/etcd_helpers.py

import etcd_helpers  # noqa: E402
from etcd_helpers import EtcdProcess, EtcdUnavailable, free_port, issue_etcd_pki  # noqa: E402
from standin_helpers import Running, base_argv, make_pki  # noqa: E402

from k8sboot import standin  # noqa: E402
from k8sboot.standin import etcdstore, resources as res  # noqa: E402
from k8sboot.standin.bootstrap import ensure_system_objects  # noqa: E402
from k8sboot.standin.etcdstore import EtcdStore  # noqa: E402
from k8sboot.standin.storage import AlreadyExists, Conflict, FileStore, NotFound, StorageIOError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def etcd_bins():
    try:
        return etcd_helpers.ensure_etcd_binaries()
    except EtcdUnavailable as exc:
        pytest.skip(f"no etcd binaries for the EtcdStore tests: {exc}")


@pytest.fixture(scope="session")
def etcd_pki(tmp_path_factory):
    return issue_etcd_pki(tmp_path_factory.mktemp("etcd-pki"))


@pytest.fixture(scope="module")
def shared_etcd(etcd_bins, etcd_pki, tmp_path_factory):
    """One member for the tests that do not stop it; wiped before each test."""
    member = EtcdProcess(etcd_bins, etcd_pki, tmp_path_factory.mktemp("etcd-shared") / "data").start()
    yield member
    member.stop()


@pytest.fixture
def etcd(shared_etcd):
    shared_etcd.wipe()
    return shared_etcd


@pytest.fixture
def own_etcd(etcd_bins, etcd_pki, tmp_path):
    """A member of this test's own, which it may stop and start."""
    member = EtcdProcess(etcd_bins, etcd_pki, tmp_path / "etcd-data").start()
    yield member
    member.stop()


def store_on(member: EtcdProcess, **kw) -> EtcdStore:
    pki = member.pki
    return EtcdStore(member.url, pki.ca, pki.client, pki.client_key, **kw)


@pytest.fixture(params=["FileStore", "EtcdStore"])
def store(request, tmp_path):
    if request.param == "FileStore":
        yield FileStore(str(tmp_path / "store"))
        return
    s = store_on(request.getfixturevalue("etcd"))
    yield s
    s.close()


def ns(name: str) -> dict:
    return res.prepare_create(res.NAMESPACES, {"metadata": {"name": name, "labels": {"team": "a"}}}, "", NOW)


def sa(namespace: str, name: str) -> dict:
    return res.prepare_create(res.SERVICE_ACCOUNTS, {"metadata": {"name": name}}, namespace, NOW)


def rv(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


# --- the contract: one table, both stores ----------------------------------------------------------


def test_a_created_object_reads_back_equal_with_a_resource_version_in_objectmetas_place(store):
    obj = ns("demo")
    made = store.create("namespaces", "", "demo", obj)
    got = store.get("namespaces", "", "demo")
    assert got == made
    assert rv(got) > 0
    assert list(got["metadata"]) == list(obj["metadata"])          # name, uid, resourceVersion, ...
    assert {**got, "metadata": {**got["metadata"], "resourceVersion": ""}} == obj


def test_a_missing_object_is_none(store):
    assert store.get("namespaces", "", "nothing") is None
    assert store.get("serviceaccounts", "nowhere", "default") is None


def test_creating_an_existing_name_is_already_exists_and_leaves_the_first(store):
    first = store.create("serviceaccounts", "demo", "bot", sa("demo", "bot"))
    changed = sa("demo", "bot")
    changed["metadata"]["labels"] = {"second": "yes"}
    with pytest.raises(AlreadyExists):
        store.create("serviceaccounts", "demo", "bot", changed)
    assert store.get("serviceaccounts", "demo", "bot") == first


def test_the_same_name_in_another_namespace_or_resource_is_another_object(store):
    store.create("serviceaccounts", "demo", "bot", sa("demo", "bot"))
    store.create("serviceaccounts", "other", "bot", sa("other", "bot"))
    store.create("roles", "demo", "bot", {"metadata": {"name": "bot", "namespace": "demo"}, "rules": []})
    assert store.get("serviceaccounts", "other", "bot")["metadata"]["namespace"] == "other"
    assert store.get("roles", "demo", "bot")["rules"] == []


def test_every_write_stamps_a_higher_resource_version_and_the_revision_follows(store):
    a = store.create("namespaces", "", "a", ns("a"))
    assert store.revision == rv(a)
    b = store.create("namespaces", "", "b", ns("b"))
    assert rv(b) > rv(a) and store.revision == rv(b)
    b2 = store.update("namespaces", "", "b", b)
    assert rv(b2) > rv(b) and store.revision == rv(b2)
    before = store.revision
    gone = store.delete("namespaces", "", "a")
    assert rv(gone) == rv(a)                        # the object as it was
    assert store.revision > before                  # a delete is a write too


def test_update_with_the_current_resource_version_replaces_and_a_stale_one_is_conflict(store):
    made = store.create("serviceaccounts", "demo", "bot", sa("demo", "bot"))
    first = dict(made, secrets=[{"name": "one"}])
    updated = store.update("serviceaccounts", "demo", "bot", first, made["metadata"]["resourceVersion"])
    assert updated["secrets"] == [{"name": "one"}] and rv(updated) > rv(made)
    with pytest.raises(Conflict):
        store.update("serviceaccounts", "demo", "bot", dict(made, secrets=[]), made["metadata"]["resourceVersion"])
    with pytest.raises(Conflict):
        store.update("serviceaccounts", "demo", "bot", dict(made, secrets=[]), "not-a-number")
    assert store.get("serviceaccounts", "demo", "bot") == updated


def test_update_without_a_resource_version_is_unconditional(store):
    made = store.create("serviceaccounts", "demo", "bot", sa("demo", "bot"))
    store.update("serviceaccounts", "demo", "bot", dict(made, secrets=[{"name": "x"}]))
    last = store.update("serviceaccounts", "demo", "bot", dict(made, secrets=[{"name": "y"}]), "")
    assert store.get("serviceaccounts", "demo", "bot") == last and last["secrets"] == [{"name": "y"}]


@pytest.mark.parametrize("resource_version", [None, "1", "999999"])
def test_updating_a_missing_object_is_not_found(store, resource_version):
    with pytest.raises(NotFound):
        store.update("serviceaccounts", "demo", "ghost", sa("demo", "ghost"), resource_version)
    assert store.get("serviceaccounts", "demo", "ghost") is None


def test_delete_answers_the_object_and_a_second_delete_is_not_found(store):
    made = store.create("clusterroles", "", "reader", {"metadata": {"name": "reader"}, "rules": []})
    assert store.delete("clusterroles", "", "reader") == made
    assert store.get("clusterroles", "", "reader") is None
    with pytest.raises(NotFound):
        store.delete("clusterroles", "", "reader")
    again = store.create("clusterroles", "", "reader", {"metadata": {"name": "reader"}, "rules": []})
    assert rv(again) > rv(made)


def test_list_by_namespace_across_namespaces_and_cluster_scoped(store):
    for namespace, name in [("demo", "b"), ("demo", "a"), ("demo2", "a"), ("other", "c")]:
        store.create("serviceaccounts", namespace, name, sa(namespace, name))
    store.create("roles", "demo", "z", {"metadata": {"name": "z", "namespace": "demo"}})
    for name in ("kube-system", "default"):
        store.create("namespaces", "", name, ns(name))

    def names(items):
        return [(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in items]

    assert names(store.list("serviceaccounts", "demo")) == [("demo", "a"), ("demo", "b")]   # not demo2's
    assert names(store.list("serviceaccounts")) == [("demo", "a"), ("demo", "b"), ("demo2", "a"), ("other", "c")]
    assert names(store.list("namespaces")) == [("", "default"), ("", "kube-system")]
    assert store.list("serviceaccounts", "empty") == []
    assert store.list("clusterrolebindings") == []
    assert store.list("serviceaccounts", "demo")[0] == store.get("serviceaccounts", "demo", "a")


def test_what_a_store_answers_is_a_copy(store):
    made = store.create("namespaces", "", "demo", ns("demo"))
    made["metadata"]["labels"]["team"] = "changed"
    store.get("namespaces", "", "demo")["metadata"]["labels"]["team"] = "changed"
    store.list("namespaces")[0]["metadata"]["labels"]["team"] = "changed"
    assert store.get("namespaces", "", "demo")["metadata"]["labels"]["team"] == "a"


def test_the_start_up_objects_are_made_once_on_either_store(store):
    made = ensure_system_objects(store, NOW)
    assert "namespaces/kube-system" in made and "clusterroles/cluster-admin" in made
    assert ensure_system_objects(store, NOW) == []
    assert store.get("serviceaccounts", "kube-public", "default") is not None


# --- etcd as kube-apiserver uses it, checked with etcdctl ------------------------------------------


@pytest.mark.parametrize("resource, namespace, name, key", [
    ("namespaces", "", "demo", "/registry/namespaces/demo"),
    ("serviceaccounts", "demo", "bot", "/registry/serviceaccounts/demo/bot"),
    ("clusterroles", "", "system:reader", "/registry/clusterroles/system:reader"),
    ("clusterrolebindings", "", "readers", "/registry/clusterrolebindings/readers"),
    ("roles", "demo", "pod-reader", "/registry/roles/demo/pod-reader"),
    ("rolebindings", "demo", "read-pods", "/registry/rolebindings/demo/read-pods"),
])
def test_the_key_is_upstreams_the_value_the_objects_json_and_the_resource_version_its_mod_revision(
        etcd, resource, namespace, name, key):
    s = store_on(etcd)
    obj = {"kind": "X", "apiVersion": "v1",
           "metadata": {"name": name, **({"namespace": namespace} if namespace else {}), "resourceVersion": ""}}
    made = s.create(resource, namespace, name, obj)
    assert etcdstore.etcd_key(resource, namespace, name) == key
    [kv] = etcd.get_json(key)["kvs"]
    assert kv["key"] == key
    stored = json.loads(kv["value"])
    assert "resourceVersion" not in stored["metadata"]           # upstream stores none: it is the revision
    assert stored == {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}
    assert made["metadata"]["resourceVersion"] == str(kv["mod_revision"])
    updated = s.update(resource, namespace, name, made, made["metadata"]["resourceVersion"])
    [kv] = etcd.get_json(key)["kvs"]
    assert updated["metadata"]["resourceVersion"] == str(kv["mod_revision"]) != made["metadata"]["resourceVersion"]
    assert kv["create_revision"] == rv(made) and kv["version"] == 2


def test_the_lists_resource_version_is_the_header_revision_of_its_range(etcd):
    s = store_on(etcd)
    s.create("serviceaccounts", "demo", "a", sa("demo", "a"))
    s.create("namespaces", "", "later", ns("later"))             # another resource moves the revision on
    items, revision = s.list_with_revision("serviceaccounts", "demo")
    header = etcd.get_json("/registry/serviceaccounts/demo/")["header"]["revision"]
    assert revision == header == s.revision > rv(items[0])


def test_the_list_is_in_etcds_key_order(etcd):
    """As kube-apiserver lists: by key bytes, so namespace `a-b` ('-' < '/') comes before `a`.
    (FileStore sorts by (namespace, name) and puts `a` first: the one order the two differ on.)"""
    s = store_on(etcd)
    for namespace in ("a", "a-b"):
        s.create("serviceaccounts", namespace, "x", sa(namespace, "x"))
    assert [o["metadata"]["namespace"] for o in s.list("serviceaccounts")] == ["a-b", "a"]
    keys = etcd.etcdctl("get", "/registry/serviceaccounts/", "--prefix", "--keys-only").stdout.split()
    assert keys == ["/registry/serviceaccounts/a-b/x", "/registry/serviceaccounts/a/x"]


def test_keys_of_other_writers_outside_the_prefix_are_not_listed(etcd):
    assert etcd.etcdctl("put", "/registry/serviceaccountsX/demo/a", "{}").returncode == 0
    assert etcd.etcdctl("put", "/other/serviceaccounts/demo/a", "{}").returncode == 0
    assert store_on(etcd).list("serviceaccounts") == []


def test_a_value_that_is_not_json_is_a_storage_error_naming_the_key(etcd):
    assert etcd.etcdctl("put", "/registry/namespaces/broken", "not json").returncode == 0
    with pytest.raises(StorageIOError, match="/registry/namespaces/broken"):
        store_on(etcd).get("namespaces", "", "broken")


def test_another_prefix_as_etcd_prefix_sets_it(etcd):
    s = store_on(etcd, prefix="/k8sboot")
    s.create("namespaces", "", "demo", ns("demo"))
    assert etcd.get_json("/k8sboot/namespaces/demo")["kvs"]
    assert store_on(etcd).get("namespaces", "", "demo") is None


# --- restarts, failover, failures ---------------------------------------------------------------------


def test_objects_survive_an_etcd_restart_and_the_same_store_goes_on(own_etcd):
    s = store_on(own_etcd)
    made = s.create("serviceaccounts", "demo", "bot", sa("demo", "bot"))
    own_etcd.stop()
    with pytest.raises(StorageIOError):
        s.get("serviceaccounts", "demo", "bot")
    own_etcd.start()
    assert s.get("serviceaccounts", "demo", "bot") == made       # its kept-alive connections were dropped
    assert store_on(own_etcd).get("serviceaccounts", "demo", "bot") == made
    assert rv(s.update("serviceaccounts", "demo", "bot", made, made["metadata"]["resourceVersion"])) > rv(made)


def test_the_second_server_answers_when_the_first_is_down(etcd):
    pki = etcd.pki
    dead = f"https://127.0.0.1:{free_port()}"
    s = EtcdStore(f"{dead},{etcd.url}", pki.ca, pki.client, pki.client_key)
    made = s.create("namespaces", "", "demo", ns("demo"))
    assert s.get("namespaces", "", "demo") == made
    assert s.health() == (True, "ok")
    assert etcd.get_json("/registry/namespaces/demo")["kvs"][0]["mod_revision"] == rv(made)


def test_every_server_down_is_a_storage_error_naming_each_and_nothing_is_written(own_etcd):
    pki = own_etcd.pki
    dead = f"https://127.0.0.1:{free_port()}"
    s = EtcdStore([own_etcd.url, dead], pki.ca, pki.client, pki.client_key)
    s.create("namespaces", "", "kept", ns("kept"))
    own_etcd.stop()
    with pytest.raises(StorageIOError) as err:
        s.create("namespaces", "", "lost", ns("lost"))
    assert own_etcd.url in str(err.value) and dead in str(err.value) and "connection refused" in str(err.value)
    own_etcd.start()
    assert [o["metadata"]["name"] for o in s.list("namespaces")] == ["kept"]


def test_health_is_ok_with_a_quorum_read(etcd):
    assert store_on(etcd).health() == (True, "ok")


def test_health_fails_fast_when_etcd_is_stopped(own_etcd):
    s = store_on(own_etcd)
    assert s.health() == (True, "ok")
    own_etcd.stop()
    started = time.monotonic()
    ok, reason = s.health()
    assert time.monotonic() - started < 3
    assert (ok, reason) == (False, "error getting data from etcd: context deadline exceeded")
    never = store_on(own_etcd)                          # no server ever answered this one
    assert never.health() == (False, "etcd client connection not yet established")


def test_health_is_bounded_by_its_timeout_when_etcd_does_not_answer():
    with socket.socket() as silent:                     # accepts TCP, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        s = EtcdStore(f"https://127.0.0.1:{silent.getsockname()[1]}", health_timeout=0.5)
        started = time.monotonic()
        ok, reason = s.health()
        assert time.monotonic() - started < 3
        assert (ok, reason) == (False, "etcd client connection not yet established")
        with pytest.raises(StorageIOError, match="context deadline exceeded"):
            EtcdStore(f"https://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3).revision


def test_a_client_certificate_from_another_ca_fails_with_the_tls_reason(etcd):
    pki = etcd.pki
    s = EtcdStore(etcd.url, pki.ca, pki.other_client, pki.other_client_key)
    ok, reason = s.health()
    # etcd's alert, or (TLS 1.3, when the alert loses the race with the close) the close itself
    refused = "remote error: tls: bad certificate|tls: etcd closed .* did not accept the client certificate"
    assert not ok and re.fullmatch(rf"error getting data from etcd: {re.escape(etcd.url)}: ({refused})", reason)
    with pytest.raises(StorageIOError, match="tls: "):
        s.create("namespaces", "", "demo", ns("demo"))
    assert etcd.get_json("/registry/namespaces/demo").get("kvs") is None


def test_a_wrong_ca_file_fails_with_unknown_authority(etcd):
    pki = etcd.pki
    s = EtcdStore(etcd.url, pki.other_ca, pki.client, pki.client_key)
    ok, reason = s.health()
    assert not ok
    assert reason.startswith(f"error getting data from etcd: {etcd.url}: x509: certificate signed by unknown authority")
    with pytest.raises(StorageIOError, match=f"etcd {etcd.url}: x509: certificate signed by unknown authority"):
        s.get("namespaces", "", "default")


@pytest.mark.parametrize("bad, where", [
    (dict(servers=""), "--etcd-servers must be specified"),
    (dict(servers="127.0.0.1:2379"), "is not an http(s)://host:port URL"),
    (dict(cafile="/nonexistent/ca.pem"), "open /nonexistent/ca.pem: no such file or directory"),
    (dict(certfile="/nonexistent/c.pem", keyfile="/nonexistent/k.pem"), "open /nonexistent/c.pem"),
    (dict(keyfile="CA"), "etcd client TLS: "),                     # a certificate where the key should be
])
def test_bad_settings_are_refused_at_construction_naming_what(etcd_pki, bad, where):
    bad = {k: etcd_pki.ca if v == "CA" else v for k, v in bad.items()}
    args = dict(servers="https://127.0.0.1:2379", cafile=etcd_pki.ca, certfile=etcd_pki.client,
                keyfile=etcd_pki.client_key)
    with pytest.raises(StorageIOError) as err:
        EtcdStore(**{**args, **bad})
    assert where in str(err.value)


def test_the_store_is_safe_across_threads(etcd):
    s = store_on(etcd, max_idle=2)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                s.create("serviceaccounts", f"ns{i}", f"sa{j}", sa(f"ns{i}", f"sa{j}"))
                assert s.get("serviceaccounts", f"ns{i}", f"sa{j}")["metadata"]["name"] == f"sa{j}"
        except BaseException as exc:          # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(s.list("serviceaccounts")) == 60


# --- pure parts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, end", [(b"/registry/namespaces/", b"/registry/namespaces0"), (b"a\xff", b"b"),
                                      (b"\xff\xff", b"\0")])
def test_the_range_end_of_a_prefix_is_clientv3s(key, end):
    assert etcdstore.prefix_range_end(key) == end


def test_a_decoded_object_gets_its_revision_where_objectmeta_has_it():
    value = json.dumps({"metadata": {"name": "n", "namespace": "d", "uid": "u", "creationTimestamp": "t"}}).encode()
    assert list(etcdstore.decode_object(value, 7)["metadata"].items()) == \
        [("name", "n"), ("namespace", "d"), ("uid", "u"), ("resourceVersion", "7"), ("creationTimestamp", "t")]


# --- under Debian's python, as on a lab host -------------------------------------------------------------


def test_etcdstore_runs_under_debians_python(etcd):
    py = "/usr/bin/python3"
    if not os.path.exists(py):
        pytest.skip("/usr/bin/python3 is not installed")
    pki = etcd.pki
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1])\n"
        "from k8sboot.standin.etcdstore import EtcdStore\n"
        "s = EtcdStore(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])\n"
        "made = s.create('namespaces', '', 'debian', {'metadata': {'name': 'debian'}})\n"
        "print(json.dumps([s.health(), made, s.get('namespaces', '', 'debian'), sys.version_info[:2]]))\n")
    r = subprocess.run([py, "-c", code, str(ROOT), etcd.url, pki.ca, pki.client, pki.client_key],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    health, made, got, version = json.loads(r.stdout)
    assert health == [True, "ok"] and made == got and version[0] == 3
    assert etcd.get_json("/registry/namespaces/debian")["kvs"][0]["mod_revision"] == rv(made)


# --- the stand-in on it, opened from its --etcd-* flags as the binary opens it -------------------------


@pytest.fixture
def standin_pki(tmp_path):
    pki = tmp_path / "standin-pki"
    pki.mkdir()
    make_pki(pki)
    return pki


def on_etcd(member: EtcdProcess, pki: Path, ca: str | None = None, **over) -> Running:
    """The stand-in with --etcd-servers, --etcd-cafile, --etcd-certfile and --etcd-keyfile naming
    `member` and the client pair etcd trusts (`ca`: another --etcd-cafile)."""
    return Running(pki, "python-ssl", etcd=True, **{
        "etcd-servers": member.url, "etcd-cafile": ca or member.pki.ca, "etcd-certfile": member.pki.client,
        "etcd-keyfile": member.pki.client_key, **over})


def health(server: Running, endpoint: str) -> tuple[int, list[str]]:
    code, body = server.request("GET", f"/{endpoint}?verbose", cert="admin")
    return code, body.splitlines()


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(autouse=True)
def no_file_store(monkeypatch):
    monkeypatch.delenv(standin.storage.DIR_ENV, raising=False)


def test_the_stand_in_keeps_its_objects_in_the_etcd_its_flags_name(own_etcd, standin_pki):
    server = on_etcd(own_etcd, standin_pki)
    try:
        code, made = server.request("POST", "/api/v1/namespaces", cert="admin", body=b'{"metadata":{"name":"demo"}}')
        assert code == 201
        [kv] = own_etcd.get_json("/registry/namespaces/demo")["kvs"]
        assert made["metadata"]["resourceVersion"] == str(kv["mod_revision"])
        assert json.loads(kv["value"])["metadata"]["uid"] == made["metadata"]["uid"]
        assert own_etcd.get_json("/registry/serviceaccounts/demo/default")["kvs"]       # the controller's
        assert own_etcd.get_json("/registry/clusterroles/cluster-admin")["kvs"]        # the bootstrap policy
        code, listed = server.request("GET", "/api/v1/namespaces", cert="admin")
        assert code == 200 and "demo" in [i["metadata"]["name"] for i in listed["items"]]
        assert int(listed["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
        # the checks the real 1.32 server lists with etcd, in its order
        code, lines = health(server, "readyz")
        assert code == 200 and lines[:5] == ["[+]ping ok", "[+]log ok", "[+]etcd ok", "[+]etcd-readiness ok",
                                             "[+]informer-sync ok"] and lines[-1] == "readyz check passed"
        code, lines = health(server, "livez")
        assert code == 200 and lines[:3] == ["[+]ping ok", "[+]log ok", "[+]etcd ok"]
        assert "[+]etcd-readiness ok" not in lines
    finally:
        server.stop()


def test_with_etcd_down_the_stand_in_is_unready_naming_etcd_and_answers_500_yet_authenticates_from_its_cache(
        own_etcd, standin_pki):
    server = on_etcd(own_etcd, standin_pki, v="2")
    try:
        server.service_account("demo", "bot")
        code, tok = server.request("POST", "/api/v1/namespaces/demo/serviceaccounts/bot/token", cert="admin",
                                   body=b'{"spec":{"expirationSeconds":600}}')
        assert code == 201
        token = tok["status"]["token"]
        assert server.whoami(bearer=token)[0] == 201
        own_etcd.stop()
        assert wait_for(lambda: health(server, "readyz")[0] == 500)
        code, lines = health(server, "readyz")
        assert "[-]etcd failed: reason withheld" in lines and "[-]etcd-readiness failed: reason withheld" in lines
        assert lines[-1] == "readyz check failed" and "[+]ping ok" in lines
        code, lines = health(server, "livez")
        assert code == 500 and "[-]etcd failed: reason withheld" in lines
        code, status = server.request("GET", "/api/v1/namespaces/demo", cert="admin")
        assert code == 500 and status["reason"] == "InternalError"
        assert status["message"].startswith(f"Internal error occurred: etcd {own_etcd.url}: dial tcp ")
        # as the real server's informers: the ServiceAccount last read still backs its token
        code, review = server.whoami(bearer=token)
        assert code == 201 and review["status"]["userInfo"]["username"] == "system:serviceaccount:demo:bot"
        own_etcd.start()
        assert wait_for(lambda: health(server, "readyz")[0] == 200)
        assert server.request("GET", "/api/v1/namespaces/demo", cert="admin")[0] == 200
    finally:
        server.stop()


def test_a_stand_in_started_before_etcd_serves_unready_then_bootstraps_when_etcd_comes(own_etcd, standin_pki,
                                                                                       capfd):
    own_etcd.stop()
    server = on_etcd(own_etcd, standin_pki)
    try:
        code, lines = health(server, "readyz")
        assert code == 500
        for check in ("etcd", "poststarthook/start-system-namespaces-controller", "poststarthook/rbac/bootstrap-roles"):
            assert f"[-]{check} failed: reason withheld" in lines
        assert "retrying" in capfd.readouterr().err
        own_etcd.start()
        assert wait_for(lambda: health(server, "readyz")[0] == 200)
        assert own_etcd.get_json("/registry/namespaces/kube-system")["kvs"]
        assert own_etcd.get_json("/registry/clusterrolebindings/cluster-admin")["kvs"]
        assert "Post-start hooks finished" in capfd.readouterr().err
    finally:
        server.stop()


def test_a_wrong_etcd_cafile_makes_the_stand_in_unready_and_its_log_says_why(own_etcd, standin_pki, capfd):
    server = on_etcd(own_etcd, standin_pki, ca=own_etcd.pki.other_ca, v="2")
    try:
        code, lines = health(server, "readyz")
        assert code == 500 and "[-]etcd failed: reason withheld" in lines
        err = capfd.readouterr().err
        assert re.search(r"\[-\]etcd failed: error getting data from etcd: https://127\.0\.0\.1:\d+: .*certificate",
                         err), err[-3000:]
        assert not own_etcd.get_json("/registry/namespaces/default").get("kvs")      # nothing was written
    finally:
        server.stop()


def test_rbac_written_through_one_stand_in_binds_at_once_on_another_sharing_its_etcd(own_etcd, standin_pki):
    """Two API servers, one etcd (a control plane of two controllers): each answers from its
    cache, read again whenever etcd's revision has moved, so a grant or a revocation made on
    one holds on the other for the very next request."""
    one, two = on_etcd(own_etcd, standin_pki), on_etcd(own_etcd, standin_pki)
    try:
        one.service_account("demo", "bot")
        code, tok = one.request("POST", "/api/v1/namespaces/demo/serviceaccounts/bot/token", cert="admin",
                                body=b'{"spec":{}}')
        token = tok["status"]["token"]
        assert two.request("GET", "/api/v1/namespaces/demo/serviceaccounts", bearer=token)[0] == 403
        binding = {"metadata": {"name": "bot-view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                   "kind": "ClusterRole", "name": "view"},
                   "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "demo"}]}
        code, _ = one.request("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/demo/rolebindings",
                              cert="admin", body=json.dumps(binding).encode())
        assert code == 201
        assert two.request("GET", "/api/v1/namespaces/demo/serviceaccounts", bearer=token)[0] == 200
        assert one.request("DELETE", "/apis/rbac.authorization.k8s.io/v1/namespaces/demo/rolebindings/bot-view",
                           cert="admin")[0] == 200
        assert two.request("GET", "/api/v1/namespaces/demo/serviceaccounts", bearer=token)[0] == 403
        # deleting the ServiceAccount through one: its token is 401 on the other at once
        assert one.request("DELETE", "/api/v1/namespaces/demo/serviceaccounts/bot", cert="admin")[0] == 200
        assert two.whoami(bearer=token)[0] == 401
    finally:
        one.stop()
        two.stop()


def test_objects_survive_a_restart_of_both_the_stand_in_and_etcd(own_etcd, standin_pki):
    server = on_etcd(own_etcd, standin_pki)
    uid = server.service_account("demo", "bot")
    server.stop()
    own_etcd.stop()
    own_etcd.start()
    again = on_etcd(own_etcd, standin_pki)
    try:
        code, sa = again.request("GET", "/api/v1/namespaces/demo/serviceaccounts/bot", cert="admin")
        assert code == 200 and sa["metadata"]["uid"] == uid
    finally:
        again.stop()


def test_api_servers_starting_together_on_one_etcd_all_finish_the_bootstrap(etcd):
    """Every controller starts its API server at once on a new etcd: each makes the start-up
    objects; one that another made first (AlreadyExists) or changed meanwhile is left to it."""
    errors: list[BaseException] = []
    made: list[list[str]] = []
    start = threading.Barrier(4)

    def boot():
        try:
            start.wait()
            made.append(ensure_system_objects(store_on(etcd), NOW))
        except BaseException as exc:      # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(made) == 4
    everything = [x for m in made for x in m]
    assert len(everything) == len(set(everything)), "an object was created twice"
    assert "clusterrolebindings/system:public-info-viewer" in everything
    assert ensure_system_objects(store_on(etcd), NOW) == []          # complete: nothing left to make
