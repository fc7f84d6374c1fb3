"""k8sboot.store: modes at creation, atomic writes, refusals, and reading with clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from certs_helpers import snapshot

from k8sboot import layout, pki, store
from k8sboot.errors import LockedError, PkiError
from k8sboot.pki import OutputFile


def files(*names: str) -> list[OutputFile]:
    return [OutputFile(n, f"data of {n}\n".encode(),
                       layout.KEY_MODE if n.endswith("-key.pem") else layout.CERT_MODE) for n in names]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_creates_the_dir_0700_keys_0600_and_certs_0644(tmp_path, umask_022):
    d = tmp_path / "nested" / "pki"
    store.write_pki_files(d, files("admin-key.pem", "admin.pem"))
    assert store.file_mode(d) == 0o700
    assert store.file_mode(d / "admin-key.pem") == 0o600
    assert store.file_mode(d / "admin.pem") == 0o644
    assert (d / "admin.pem").read_bytes() == b"data of admin.pem\n"


def test_certs_are_0644_even_under_a_strict_umask_and_keys_stay_0600(tmp_path):
    old = os.umask(0o077)
    try:
        store.write_pki_files(tmp_path / "pki", files("a-key.pem", "a.pem"))
    finally:
        os.umask(old)
    assert store.file_mode(tmp_path / "pki" / "a.pem") == 0o644
    assert store.file_mode(tmp_path / "pki" / "a-key.pem") == 0o600


def test_keys_are_created_with_their_mode_exclusively_and_never_chmodded(tmp_path, monkeypatch):
    opened, chmodded = [], []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *, dir_fd=None):
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: chmodded.append(mode))
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmodded.append(a))
    store.write_pki_files(tmp_path / "pki", files("admin-key.pem"))
    creates = [(p, f, m) for p, f, m in opened if f & os.O_CREAT]
    assert len(creates) == 1
    path, flags, mode = creates[0]
    assert path.startswith(".admin-key.pem.") and path.endswith(".tmp"), "temp name in the same dir"
    assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and mode == 0o600
    assert chmodded == []


def test_a_second_write_replaces_the_file_atomically_and_leaves_no_temp(tmp_path):
    d = tmp_path / "pki"
    store.write_pki_files(d, files("admin.pem"))
    inode = (d / "admin.pem").stat().st_ino
    store.write_pki_files(d, [OutputFile("admin.pem", b"new\n", 0o644)])
    assert (d / "admin.pem").read_bytes() == b"new\n"
    assert (d / "admin.pem").stat().st_ino != inode, "renamed into place, not rewritten in place"
    assert sorted(p.name for p in d.iterdir()) == ["admin.pem"]


def test_writing_through_a_symlink_is_refused_and_nothing_is_written(tmp_path):
    d = tmp_path / "pki"
    store.write_pki_files(d, files("ca.pem"))
    outside = tmp_path / "outside.pem"
    outside.write_bytes(b"precious\n")
    (d / "admin.pem").symlink_to(outside)
    before = snapshot(d)
    with pytest.raises(PkiError, match="admin.pem: it is a symbolic link; refusing to write through it"):
        store.write_pki_files(d, files("ca.pem", "admin.pem"))
    assert outside.read_bytes() == b"precious\n"
    assert snapshot(d) == before, "the batch is checked before the first file is written"


@pytest.mark.parametrize("name", ["../escape.pem", "sub/admin.pem", "..", ""])
def test_names_that_leave_the_pki_dir_are_refused(tmp_path, name):
    with pytest.raises(PkiError, match="is not a plain file name"):
        store.write_pki_files(tmp_path / "pki", [OutputFile(name, b"x", 0o644)])
    assert not (tmp_path / "escape.pem").exists()


def test_a_directory_where_a_file_should_be_is_refused_when_writing(tmp_path):
    d = tmp_path / "pki"
    (d / "admin.pem").mkdir(parents=True)
    with pytest.raises(PkiError, match=r"admin.pem: is a directory, where a file should be"):
        store.write_pki_files(d, files("admin-key.pem", "admin.pem"))
    assert not (d / "admin-key.pem").exists()


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    d = tmp_path / "pki"
    d.mkdir(mode=0o700)

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(PkiError, match=r"writing .*/a-key\.pem: No space left on device"):
        store.write_pki_files(d, files("a-key.pem", "a.pem"))
    assert list(d.iterdir()) == []


def test_a_pki_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "pki").write_text("not a dir")
    with pytest.raises(PkiError, match="pki: not a directory"):
        store.write_pki_files(tmp_path / "pki", files("a.pem"))


def test_read_optional_returns_none_for_a_missing_file(tmp_path):
    assert store.read_optional(tmp_path / "nope.pem") is None


def test_reading_a_directory_where_a_file_should_be_names_the_path(tmp_path):
    (tmp_path / "ca.pem").mkdir()
    with pytest.raises(PkiError, match=r"reading .*ca.pem: is a directory, where a file should be"):
        store.read_optional(tmp_path / "ca.pem")


def test_reading_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "ca.pem")
    with pytest.raises(PkiError, match="not a regular file"):
        store.read_optional(tmp_path / "ca.pem")


def test_read_pki_of_a_missing_dir_reads_as_empty_or_fails_with_a_gen_certs_hint(cluster_inventory):
    spec = pki.build_pki_spec(cluster_inventory)
    facts = store.read_pki(spec)
    assert not facts.ca.exists and not any(f.exists for f in facts.leaves.values())
    with pytest.raises(PkiError, match="no such PKI directory") as err:
        store.read_pki(spec, require=True)
    assert "k8sboot gen-certs" in err.value.hint


def test_read_pki_names_the_garbage_file(generated_pki):
    generated_pki.path("worker-0.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(PkiError, match=r"reading .*worker-0.pem: not a PEM certificate"):
        store.read_pki(pki.build_pki_spec(generated_pki.inventory))


def test_read_pki_with_only_reads_just_the_ca_and_those_leaves(generated_pki):
    generated_pki.path("worker-0.pem").write_text("garbage")
    facts = store.read_pki(pki.build_pki_spec(generated_pki.inventory), only={"admin"})
    assert set(facts.leaves) == {"admin"} and facts.ca.cert is not None


def test_the_pki_lock_refuses_a_second_holder(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    with store.pki_lock(d):
        with pytest.raises(LockedError, match="another k8sboot run"):
            with store.pki_lock(d):
                pass
    with store.pki_lock(d):
        pass


def test_a_private_file_is_created_0600_and_then_reported_unchanged(tmp_path, umask_022):
    path = tmp_path / "admin.kubeconfig"
    assert store.write_private_file(path, b"one\n").outcome == "created"
    assert store.file_mode(path) == 0o600
    mtime = path.stat().st_mtime_ns
    assert store.write_private_file(path, b"one\n").outcome == "unchanged"
    assert path.stat().st_mtime_ns == mtime
    assert store.write_private_file(path, b"two\n").outcome == "updated"
    assert path.read_bytes() == b"two\n"


def test_a_world_readable_private_file_is_replaced_by_a_0600_one(tmp_path):
    path = tmp_path / "admin.kubeconfig"
    path.write_bytes(b"same\n")
    path.chmod(0o644)
    assert store.write_private_file(path, b"same\n").outcome == "updated"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_private_file_in_a_missing_dir_or_through_a_symlink_is_refused(tmp_path):
    with pytest.raises(PkiError, match="does not exist"):
        store.write_private_file(tmp_path / "no" / "admin.kubeconfig", b"x")
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "link.kubeconfig").symlink_to(target)
    with pytest.raises(PkiError, match="symbolic link"):
        store.write_private_file(tmp_path / "link.kubeconfig", b"x")
    assert target.read_bytes() == b"keep"


def test_file_mode_does_not_follow_symlinks(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "f").chmod(0o600)
    (tmp_path / "l").symlink_to(tmp_path / "f")
    assert store.file_mode(tmp_path / "l") == 0o777
    assert store.file_mode(Path(tmp_path / "missing")) is None


# --- reading never follows a link; crash-safe batches ------------------------------------------


def test_reading_refuses_a_symlink_out_of_the_pki_dir_and_names_where_it_points(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    outside = tmp_path / "elsewhere-key.pem"
    outside.write_bytes(b"not for us\n")
    (d / "admin-key.pem").symlink_to(outside)
    with pytest.raises(PkiError, match=rf"reading .*admin-key.pem: it is a symbolic link to "
                                       rf"{outside}, outside {d}") as err:
        store.read_optional(d / "admin-key.pem")
    assert "not for us" not in str(err.value) and "cp --remove-destination" in err.value.hint


def test_reading_refuses_a_symlink_inside_the_pki_dir_and_a_dangling_one(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    (d / "ca.pem").write_bytes(b"x")
    (d / "admin.pem").symlink_to("ca.pem")
    (d / "admin-key.pem").symlink_to("missing-key.pem")
    with pytest.raises(PkiError, match=r"admin.pem: it is a symbolic link to ca.pem;"):
        store.read_optional(d / "admin.pem")
    with pytest.raises(PkiError, match=r"admin-key.pem: it is a symbolic link to missing-key.pem"):
        store.read_optional(d / "admin-key.pem")


def test_a_symlinked_pki_dir_itself_is_the_users_choice_and_is_followed(tmp_path):
    real = tmp_path / "vault" / "pki"
    store.write_pki_files(real, files("ca-key.pem", "ca.pem"))
    (tmp_path / "pki").symlink_to(real)
    assert store.read_optional(tmp_path / "pki" / "ca.pem") == b"data of ca.pem\n"
    store.write_pki_files(tmp_path / "pki", files("admin.pem"))
    assert (real / "admin.pem").is_file() and not (real / "admin.pem").is_symlink()


def test_a_socket_is_not_a_regular_file(tmp_path):
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "ca.pem"))
        with pytest.raises(PkiError, match=r"ca.pem: not a regular file \(a socket\)"):
            store.read_optional(tmp_path / "ca.pem")


def test_a_rename_never_follows_a_link_planted_after_the_check(tmp_path, monkeypatch):
    """Defence in depth: even if a link appears between the check and the rename, rename(2)
    replaces the link itself; the file it points to outside the PKI dir is untouched."""
    d = tmp_path / "pki"
    d.mkdir()
    outside = tmp_path / "outside.pem"
    outside.write_bytes(b"precious\n")
    real_check = store._check_target

    def check_then_plant(dir_fd, directory, name):
        st = real_check(dir_fd, directory, name)
        os.symlink(outside, name, dir_fd=dir_fd)
        return st

    monkeypatch.setattr(store, "_check_target", check_then_plant)
    store.write_pki_files(d, files("admin-key.pem", "admin.pem"))
    assert outside.read_bytes() == b"precious\n"
    assert not (d / "admin.pem").is_symlink() and (d / "admin.pem").read_bytes() == b"data of admin.pem\n"


def test_a_batch_leaves_neither_temp_nor_journal(tmp_path):
    d = tmp_path / "pki"
    store.write_pki_files(d, files("a-key.pem", "a.pem", "b-key.pem", "b.pem"))
    assert sorted(p.name for p in d.iterdir()) == ["a-key.pem", "a.pem", "b-key.pem", "b.pem"]


def _journal(d: Path, pairs) -> None:
    import json

    (d / store.JOURNAL).write_text(json.dumps({"renames": [list(p) for p in pairs]}))


def test_a_complete_journal_is_rolled_forward_and_stale_temps_removed(tmp_path):
    d = tmp_path / "pki"
    store.write_pki_files(d, files("ca-key.pem", "ca.pem"))
    # a run killed after ca-key.pem was renamed, before ca.pem was
    (d / "ca-key.pem").write_bytes(b"new key\n")
    (d / ".ca.pem.0123abcd.tmp").write_bytes(b"new cert\n")
    (d / ".admin.pem.deadbeef.tmp").write_bytes(b"from an even older run\n")
    _journal(d, [(".ca-key.pem.89abcdef.tmp", "ca-key.pem"), (".ca.pem.0123abcd.tmp", "ca.pem")])
    spec_dir_readers = pytest.raises(PkiError, match="an interrupted `k8sboot gen-certs` left a write")
    with spec_dir_readers:
        store.check_no_interrupted_write(d)
    recovery = store.finish_interrupted_write(d)
    assert recovery.finished == ("ca.pem",) and recovery.temps_removed == 1
    assert (d / "ca.pem").read_bytes() == b"new cert\n" and (d / "ca-key.pem").read_bytes() == b"new key\n"
    assert sorted(p.name for p in d.iterdir()) == ["ca-key.pem", "ca.pem"]
    store.check_no_interrupted_write(d)
    assert not store.finish_interrupted_write(d).changed


def test_a_truncated_journal_means_nothing_was_renamed_so_the_old_files_stay(tmp_path):
    d = tmp_path / "pki"
    store.write_pki_files(d, files("ca-key.pem", "ca.pem"))
    before = snapshot(d)
    (d / ".ca.pem.0123abcd.tmp").write_bytes(b"new cert\n")
    (d / store.JOURNAL).write_text('{"renames": [[".ca.pem.0123abcd.tmp", "ca.p')
    recovery = store.finish_interrupted_write(d)
    assert recovery.finished == () and recovery.temps_removed == 1
    assert snapshot(d) == before


def test_a_journal_naming_files_outside_the_dir_is_refused(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    _journal(d, [(".x.0123abcd.tmp", "../x")])
    with pytest.raises(PkiError, match="is not a rename k8sboot makes"):
        store.finish_interrupted_write(d)


def test_a_temp_file_held_by_a_running_writer_is_left_alone(tmp_path):
    import fcntl

    d = tmp_path / "pki"
    d.mkdir()
    busy = d / ".ca.pem.0123abcd.tmp"
    busy.write_bytes(b"being written")
    with open(busy, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert store.finish_interrupted_write(d).temps_removed == 0
    assert store.finish_interrupted_write(d).temps_removed == 1


def test_a_failed_rename_after_the_first_keeps_the_journal_so_the_next_run_finishes(tmp_path, monkeypatch):
    d = tmp_path / "pki"
    d.mkdir(mode=0o700)
    real_replace, calls = os.replace, []

    def second_fails(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_replace(*a, **k)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(PkiError, match=r"a.pem: Input/output error; 1 of 2 files were already") as err:
        store.write_pki_files(d, files("a-key.pem", "a.pem"))
    assert "run `k8sboot gen-certs` again" in err.value.hint
    monkeypatch.setattr(os, "replace", real_replace)
    assert store.finish_interrupted_write(d).finished == ("a.pem",)
    assert sorted(p.name for p in d.iterdir()) == ["a-key.pem", "a.pem"]


def test_sigint_during_the_renames_is_held_until_the_batch_is_complete(tmp_path, monkeypatch):
    import signal

    d = tmp_path / "pki"
    d.mkdir(mode=0o700)
    real_replace = os.replace
    sent = []

    def interrupt_first(*a, **k):
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)      # Ctrl-C between two renames
        return real_replace(*a, **k)

    monkeypatch.setattr(os, "replace", interrupt_first)
    with pytest.raises(KeyboardInterrupt):
        store.write_pki_files(d, files("a-key.pem", "a.pem", "b-key.pem", "b.pem"))
    assert sorted(p.name for p in d.iterdir()) == ["a-key.pem", "a.pem", "b-key.pem", "b.pem"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_pki_lock_with_create_makes_the_dir_0700_and_removes_it_again_if_nothing_was_written(tmp_path):
    d = tmp_path / "pki"
    with pytest.raises(KeyboardInterrupt):
        with store.pki_lock(d, create=True):
            assert store.file_mode(d) == 0o700
            raise KeyboardInterrupt
    assert not d.exists()
    with store.pki_lock(d, create=True):
        store.write_pki_files(d, files("a.pem"))
    assert (d / "a.pem").exists()


def test_a_dangling_symlink_as_the_pki_dir_is_a_clear_error(tmp_path):
    (tmp_path / "pki").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PkiError, match=r"creating .*pki: it is a symbolic link to .*nowhere, which "
                                       "does not exist"):
        store.write_pki_files(tmp_path / "pki", files("a.pem"))
    assert not (tmp_path / "nowhere").exists()


def test_a_private_file_write_removes_the_temp_a_killed_run_left_for_the_same_name(tmp_path):
    stale = tmp_path / ".admin.kubeconfig.0123abcd.tmp"
    stale.write_bytes(b"client-key-data: secret")
    other = tmp_path / ".other.0123abcd.tmp"
    other.write_bytes(b"not ours to judge")
    store.write_private_file(tmp_path / "admin.kubeconfig", b"new\n")
    assert not stale.exists() and other.exists()
