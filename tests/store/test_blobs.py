"""Body files: writing, durability, abort, and cleanup after a crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mxd.store.blobs import BlobError, BlobFiles, BlobState, FileBlobWriter, is_blob_id
from mxd.store.interfaces import Delivery, MessageProps
from tests.store.helpers import open_store


def test_writer_lifecycle(tmp_path: Path) -> None:
    """A writer fills a tmp file; durability moves it into the fan-out directory;
    writing after sealing fails; a second make_durable is a no-op."""
    files = BlobFiles(tmp_path)
    files.ensure_dirs()
    w = files.new_writer()
    w.write(b"abc")
    w.write(b"def")
    assert w.size == 6 and is_blob_id(w.blob_id)
    assert len(list(files.tmp_dir.iterdir())) == 1
    w.seal()
    with pytest.raises(BlobError):
        w.write(b"more")
    assert files.make_durable([w]) == [None]
    assert w.state is BlobState.DURABLE
    assert files.path(w.blob_id).read_bytes() == b"abcdef"
    assert files.path(w.blob_id).parent.name == w.blob_id[:2]
    assert list(files.tmp_dir.iterdir()) == []
    assert files.make_durable([w]) == [None]
    assert list(files.iter_blob_ids()) == [w.blob_id]


def test_abort_removes_tmp(tmp_path: Path) -> None:
    """abort() removes the tmp file; an aborted writer cannot be made durable."""
    files = BlobFiles(tmp_path)
    files.ensure_dirs()
    w = files.new_writer()
    w.write(b"x")
    w.abort()
    assert list(files.tmp_dir.iterdir()) == []
    with pytest.raises(BlobError):
        w.seal()
    (err,) = files.make_durable([w])
    assert isinstance(err, BlobError)


def test_open_cleans_tmp_and_orphans(data_dir: Path) -> None:
    """At open: tmp leftovers go, body files without a row go, rows with refcount 0 go
    with their file; referenced bodies stay."""
    h = open_store(data_dir)
    a = h.run(h.store.add_account("alice", "{}")).id
    h.deliver_bytes(b"keep me", [Delivery(a)])
    (kept,) = h.run(h.store.list_messages(h.run(h.store.get_mailbox(a, "INBOX")).id))
    w = h.store.new_blob()
    w.write(b"committed, never referenced")
    zero = h.run(h.store.commit_blob(w))
    h.close()
    files = BlobFiles(data_dir)
    (files.tmp_dir / "deadbeef.tmp").write_bytes(b"half a message")
    orphan = "ab" + "0" * 30
    files.path(orphan).write_bytes(b"renamed but never committed")
    stray = files.blob_dir / "ab" / "not-a-blob"
    stray.write_bytes(b"left alone")
    h = open_store(data_dir)
    assert list(files.tmp_dir.iterdir()) == []
    assert not files.path(orphan).exists()
    assert not files.path(zero).exists()
    assert files.path(kept.blob_id).read_bytes() == b"keep me"
    assert stray.exists()
    with sqlite3.connect(data_dir / "mxd.sqlite3") as c:
        assert c.execute("SELECT id FROM blobs").fetchall() == [(kept.blob_id,)]
    h.close()


def test_foreign_writer_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """A writer from another store's files cannot be delivered (its file is elsewhere)."""
    h = open_store(data_dir)
    other = BlobFiles(tmp_path / "other")
    other.ensure_dirs()
    w = other.new_writer()
    with pytest.raises(Exception, match="does not belong"):
        h.store.deliver(w, [Delivery(1)], MessageProps())
    h.close()


def test_make_durable_batch_mixed(tmp_path: Path) -> None:
    """A batch with several writers, a duplicate, an already durable one and an aborted
    one: each gets its own result and good bodies all land in place."""
    files = BlobFiles(tmp_path)
    files.ensure_dirs()
    good = [files.new_writer() for _ in range(5)]
    for i, w in enumerate(good):
        w.write(b"body %d" % i)
        w.seal()
    done = files.new_writer()
    done.write(b"done")
    done.seal()
    assert files.make_durable([done]) == [None]
    bad = files.new_writer()
    bad.abort()
    results = files.make_durable([*good, good[0], done, bad])
    assert results[:7] == [None] * 7
    assert isinstance(results[7], BlobError)
    for i, w in enumerate(good):
        assert files.path(w.blob_id).read_bytes() == b"body %d" % i
    assert list(files.tmp_dir.iterdir()) == []
    files.close()


def test_abort_after_handing_over_is_ignored(data_dir: Path) -> None:
    """A session that aborts a writer already handed to the store (connection lost
    while the delivery commits) does not disturb that delivery."""
    h = open_store(data_dir)
    a = h.run(h.store.add_account("alice", "{}")).id
    w = h.store.new_blob()
    w.write(b"in flight")
    d = h.store.deliver(w, [Delivery(a)], MessageProps())
    w.abort()
    assert h.run(d) == [1]
    w.abort()
    assert h.store.blob_path(w.blob_id).read_bytes() == b"in flight"
    h.close()


def test_second_opener_skips_cleanup(data_dir: Path) -> None:
    """While one store is open, a second opener (an admin command in another process)
    must not remove the first one's bodies in progress: cleanup runs only when alone."""
    first = open_store(data_dir)
    w = first.store.new_blob()
    w.write(b"arriving")
    committed = first.store.new_blob()
    committed.write(b"queued soon")
    blob_id = first.run(first.store.commit_blob(committed))
    second = open_store(data_dir)
    assert first.store.blob_path(blob_id).exists()
    assert len(list((data_dir / "tmp").glob("*.tmp"))) == 1  # (and the pool's list)
    a = second.run(second.store.add_account("bob", "{}")).id
    assert first.run(first.store.get_account("bob")).id == a  # both see one database
    second.close()
    w.write(b" and done")
    assert first.run(first.store.deliver(w, [Delivery(a)], MessageProps())) == [1]
    first.close()
    third = open_store(data_dir)  # alone again: the never-referenced body goes
    assert not third.store.blob_path(blob_id).exists()
    third.close()


def _filled_pool(tmp_path: Path, size: int = 8) -> BlobFiles:
    files = BlobFiles(tmp_path, pool_size=size)
    files.ensure_dirs()
    files.new_writer().abort()  # the first call starts the refill (and uses tmp/)
    files.pooled_ids()  # waits for the refill
    return files


def test_pooled_writer_skips_tmp_and_rename(tmp_path: Path) -> None:
    """With a file pool a new body is written straight into its final file (nothing in
    tmp/), and making it durable needs no directory fsync."""
    files = _filled_pool(tmp_path)
    pooled = files.pooled_ids()
    assert len(pooled) == 8
    w = files.new_writer()
    assert w.blob_id in pooled and is_blob_id(w.blob_id)
    w.write(b"hello")
    w.seal()
    assert list(files.tmp_dir.glob("*.tmp")) == []  # (the pool's list is there)
    synced: list[Path] = []
    import mxd.store.blobs as blobs_mod

    real = blobs_mod.fsync_dir
    blobs_mod.fsync_dir = lambda p: synced.append(p)  # type: ignore[assignment]
    try:
        assert files.make_durable([w]) == [None]
    finally:
        blobs_mod.fsync_dir = real  # type: ignore[assignment]
    assert synced == []
    assert w.durable and files.path(w.blob_id).read_bytes() == b"hello"
    files.close()


def test_pool_directory_is_fsynced_before_handout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pooled file's directory entry is made durable (the fan-out directory is
    fsynced) before the file can be handed to a writer."""
    import mxd.store.blobs as blobs_mod

    synced: list[tuple[Path, set[str]]] = []
    real = blobs_mod.fsync_dir

    def record(p: Path) -> None:
        real(p)
        synced.append((p, {f.name for f in p.iterdir()}))

    monkeypatch.setattr(blobs_mod, "fsync_dir", record)
    files = _filled_pool(tmp_path, size=4)
    handed = [files.new_writer() for _ in range(4)]
    for w in handed:
        assert any(d == files.path(w.blob_id).parent and w.blob_id in names
                   for d, names in synced), f"{w.blob_id} handed out before its dir fsync"
        w.abort()
    files.close()


def test_close_removes_unused_pooled_files_and_abort_removes_used(tmp_path: Path) -> None:
    """An aborted pooled writer removes its file; close removes the pooled files never
    handed out, so only real bodies remain under blobs/."""
    files = _filled_pool(tmp_path, size=4)
    keep = files.new_writer()
    keep.write(b"kept")
    keep.seal()
    assert files.make_durable([keep]) == [None]
    gone = files.new_writer()
    gone.write(b"dropped")
    gone.abort()
    assert not files.path(gone.blob_id).exists()
    files.close()
    assert list(files.iter_blob_ids()) == [keep.blob_id]
    assert files.new_writer().blob_id not in files.pooled_ids()  # closed: no more refills


def test_store_crash_cleanup_removes_pooled_leftovers(data_dir: Path) -> None:
    """Pooled files left by a process that died (no rows point at them) are orphans:
    the next open removes them; acknowledged bodies stay."""
    h = open_store(data_dir)
    a = h.run(h.store.add_account("alice", "{}")).id
    h.deliver_bytes(b"acked", [Delivery(a)])
    leftovers = h.store._files.pooled_ids()
    assert leftovers
    (msg,) = h.run(h.store.list_messages(h.run(h.store.get_mailbox(a, "INBOX")).id))
    h.store._files._pool.clear()  # as if the process died: nothing removes them at close
    h.close()
    assert all(BlobFiles(data_dir).path(b).exists() for b in leftovers)
    h = open_store(data_dir)
    files = BlobFiles(data_dir)
    assert set(files.iter_blob_ids()) == {msg.blob_id}
    h.close()


def test_pool_list_names_the_ids_this_process_may_have_to_remove(tmp_path: Path) -> None:
    """``tmp/<host>-<pid>.pool`` lists the pooled ids not handed out and those handed
    out but not yet durable or aborted (written before the files are made); finished
    ones leave it at the next refill; tmp files carry the process's name too."""
    files = _filled_pool(tmp_path, size=4)
    assert files.pool_list.name == f"{files.proc_name}.pool"
    assert set(files.pool_list.read_text().split()) == files.pooled_ids()
    kept = files.new_writer()
    kept.write(b"in flight")
    done = files.new_writer()
    done.write(b"done")
    done.seal()
    files.make_durable([done])
    gone = files.new_writer()
    gone.abort()
    pooled = files.pooled_ids()  # (waits for a refill the takes started)
    files._write_pool_list([])  # what each refill does first
    assert set(files.pool_list.read_text().split()) == pooled | {kept.blob_id}
    tmp = FileBlobWriter(files, "cd" * 16)
    assert tmp._tmp.name == f"{files.proc_name}.{'cd' * 16}.tmp"
    tmp.abort()
    kept.abort()
    files.close()
    assert not files.pool_list.exists()
