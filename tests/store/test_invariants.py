"""Random sequences of store operations keep the store's invariants (seeded, repeatable)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.store import names
from mxd.store.blobs import BlobFiles
from mxd.store.interfaces import Delivery
from tests.store.helpers import StoreHarness, open_store


def _check_invariants(data_dir: Path, pooled: set[str] | None = None) -> None:
    """``pooled``: the open store's pre-created, unused body files (no rows yet)."""
    conn = sqlite3.connect(data_dir / "mxd.sqlite3")
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        counts = dict(conn.execute("SELECT blob_id, count(*) FROM messages GROUP BY blob_id"))
        refcounts = dict(conn.execute("SELECT id, refcount FROM blobs"))
        assert refcounts == counts, "refcounts equal the number of message rows"
        used = dict(conn.execute("SELECT id, used_bytes FROM accounts"))
        actual = dict(conn.execute(
            "SELECT a.id, coalesce(sum(m.size), 0) FROM accounts a LEFT JOIN mailboxes b "
            "ON b.account_id = a.id LEFT JOIN messages m ON m.mailbox_id = b.id GROUP BY a.id"))
        assert used == actual, "used_bytes equals the sum of message sizes"
        files = BlobFiles(data_dir)
        on_disk = set(files.iter_blob_ids()) - (pooled or set())
        assert on_disk == set(refcounts), "one file per blob row"
        for mailbox_id, uidnext, highest in conn.execute(
                "SELECT id, uidnext, highestmodseq FROM mailboxes"):
            row = conn.execute("SELECT max(uid), max(modseq) FROM messages WHERE mailbox_id = ?",
                               (mailbox_id,)).fetchone()
            if row[0] is not None:
                assert row[0] < uidnext and row[1] <= highest
            vrow = conn.execute("SELECT max(uid), max(modseq) FROM vanished WHERE mailbox_id = ?",
                                (mailbox_id,)).fetchone()
            if vrow[0] is not None:
                assert vrow[0] < uidnext and vrow[1] <= highest
            both = conn.execute(
                "SELECT count(*) FROM vanished v JOIN messages m USING (mailbox_id, uid) "
                "WHERE mailbox_id = ?", (mailbox_id,)).fetchone()[0]
            assert both == 0, "an expunged UID is never live again"
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_keep_invariants(data_dir: Path, seed: int) -> None:
    """Deliver/copy/move/flag/expunge/delete in random order: refcounts stay exact, every
    blob row has its file and no file lacks a row, UIDs stay below UIDNEXT, modseqs at
    most HIGHESTMODSEQ, expunged UIDs never come back, and storage use is exact."""
    rng = random.Random(seed)
    h: StoreHarness = open_store(data_dir, inline=True)
    s = h.store
    a = h.run(s.add_account("alice", "{}")).id
    boxes = ["INBOX", "Archive", "Trash", "Work"]
    h.run(s.create_mailbox(a, "Work"))
    ids = {n: h.run(s.get_mailbox(a, n)).id for n in boxes}
    last_highest = {n: 0 for n in boxes}
    for _ in range(150):
        op = rng.choice(["deliver", "deliver", "copy", "move", "flag", "expunge", "recreate"])
        src, dst = rng.sample(boxes, 2)
        uids = [m.uid for m in h.run(s.list_messages(ids[src]))]
        pick = rng.sample(uids, min(len(uids), rng.randrange(1, 4))) if uids else [1]
        if op == "deliver":
            targets = [Delivery(a, b) for b in rng.sample(boxes, rng.randrange(1, 3))]
            h.deliver_bytes(rng.randbytes(rng.randrange(1, 500)), targets)
        elif op == "copy":
            h.run(s.copy(ids[src], pick, ids[dst]))
        elif op == "move":
            h.run(s.move(ids[src], pick, ids[dst]))
        elif op == "flag":
            mode = rng.choice(["set", "add", "remove"])
            h.run(s.store_flags(ids[src], pick, frozenset({"\\Deleted"}), mode))
        elif op == "expunge":
            h.run(s.expunge(ids[src], pick if rng.random() < 0.5 else None))
        elif op == "recreate" and src == "Work":
            old = h.run(s.get_mailbox_by_id(ids["Work"])).uidvalidity
            h.run(s.delete_mailbox(a, "Work"))
            info = h.run(s.create_mailbox(a, "Work"))
            assert info.uidvalidity != old
            ids["Work"] = info.id
            last_highest["Work"] = 0
        for n in boxes:
            highest = h.run(s.get_mailbox_by_id(ids[n])).highestmodseq
            assert highest >= last_highest[n], "HIGHESTMODSEQ never goes down"
            last_highest[n] = highest
    _check_invariants(data_dir, s._files.pooled_ids())
    h.close()
    _check_invariants(data_dir)  # close removed the unused pooled files
    h = open_store(data_dir, inline=True)
    _check_invariants(data_dir)
    h.close()


@given(st.text(min_size=1, max_size=30))
def test_mailbox_name_normalisation_is_idempotent(name: str) -> None:
    """A stored name normalises to itself."""
    try:
        once = names.normalize_mailbox_name(name)
    except names.InvalidMailboxName:
        return
    assert names.normalize_mailbox_name(once) == once
