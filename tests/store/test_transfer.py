"""``mxd store migrate`` (mxd.store.transfer): SQLite to PostgreSQL and back keeps every
account, mailbox, message, flag, UID, UIDVALIDITY, modseq, expunged UID and queue entry,
verified by counts and checksums; a non-empty target is refused unless replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mxd.cli import main
from mxd.store.interfaces import Delivery, MessageProps, OutboundMessage, OutboundRecipient
from mxd.store.sqlitequeue import SQLiteQueueStore
from mxd.store.transfer import Endpoint, TransferError, migrate_store, table_digest
from tests.store.helpers import StoreHarness, open_pg_store, open_store


def _fill(h: StoreHarness) -> None:
    s = h.store
    alice = h.run(s.add_account("alice", "{secrets}", ["alice@example.test", "A@Example.Test"]))
    h.run(s.add_account("bob", "{bob}", ["bob@example.test"]))
    h.run(s.set_quota("bob", 12345))
    inbox = h.run(s.get_mailbox(alice.id, "INBOX"))
    for i in range(6):
        h.deliver_bytes(b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i), [Delivery(alice.id)],
                        MessageProps(requiretls=i == 2, mail_from=f"s{i}@x.test"))
    h.run(s.store_flags(inbox.id, [1, 3], frozenset({"\\Seen", "$Work"}), "add"))
    h.run(s.store_flags(inbox.id, [2], frozenset({"\\Deleted"}), "add"))
    h.run(s.expunge(inbox.id))
    h.run(s.create_mailbox(alice.id, "Projects/2026"))
    h.run(s.set_subscribed(alice.id, "Projects/2026", True))
    h.run(s.copy(inbox.id, [3, 4], h.run(s.get_mailbox(alice.id, "Archive")).id))
    qs = SQLiteQueueStore(s) if not hasattr(s, "dsn") else None
    assert qs is not None
    w = s.new_blob()
    w.write(b"Subject: out\r\n\r\nqueued\r\n")
    env = OutboundMessage("alice@example.test", (OutboundRecipient("x@remote.test"),
                                                  OutboundRecipient("y@other.test")))
    h.run(qs.accept(w, [Delivery(alice.id, "Sent")], MessageProps(), env, "QID1"))


def _snapshot(h: StoreHarness) -> dict[str, Any]:
    """What IMAP and the queue see: every mailbox's counters and messages, the queue."""
    s = h.store
    out: dict[str, Any] = {}
    for acct in h.run(s.list_accounts()):
        out[acct.name] = (acct.addresses, h.run(s.get_secrets(acct.name)),
                          h.run(s.get_usage(acct.id)))
        for mb in h.run(s.list_mailboxes(acct.id)):
            msgs = h.run(s.list_messages(mb.id))
            bodies = [s.open_blob(m.blob_id).read() for m in msgs]
            out[f"{acct.name}/{mb.name}"] = (
                mb.uidvalidity, mb.uidnext, mb.highestmodseq, mb.subscribed, mb.special_use,
                [(m.uid, m.modseq, sorted(m.flags), m.internal_date, m.size) for m in msgs],
                bodies, h.run(s.list_vanished(mb.id)))
    return out


def test_sqlite_to_postgresql_and_back(tmp_path: Path, pg_dsn: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI moves a store to PostgreSQL and back; IMAP's view (UIDs, flags, modseqs,
    UIDVALIDITY, bodies, vanished UIDs) and the queue are the same on all three."""
    src = open_store(tmp_path / "sqlite")
    _fill(src)
    before = _snapshot(src)
    src.close()
    blobs = tmp_path / "pgblobs"
    assert main(["store", "migrate", "--from", f"sqlite:{tmp_path / 'sqlite'}",
                 "--to", f"postgresql:{pg_dsn}", "--blob-dir", str(blobs)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "8 messages" in out

    pg = open_pg_store(pg_dsn, blobs)
    try:
        assert _snapshot(pg) == before
        from mxd.store.postgres import PostgresQueueStore

        shown = pg.run(PostgresQueueStore(pg.store).show("QID1"))  # type: ignore[arg-type]
        assert [r.address for r in shown[0].recipients] == ["x@remote.test", "y@other.test"]
        # New rows after the copy get fresh ids and UIDs (the sequences moved on).
        alice = pg.run(pg.store.get_account("alice"))
        [uid] = pg.deliver_bytes(b"Subject: new\r\n\r\n", [Delivery(alice.id)])
        assert uid == before["alice/INBOX"][1]
        pg.run(pg.store.add_account("carol", "{}"))
    finally:
        pg.close()

    back = tmp_path / "sqlite2"
    assert main(["store", "migrate", "--from", f"postgresql:{pg_dsn}", "--to",
                 f"sqlite:{back}", "--blob-dir", str(blobs)]) == 0
    again = open_store(back)
    try:
        snap = _snapshot(again)
        assert snap["alice/Archive"] == before["alice/Archive"]
        assert snap["alice/INBOX"][0] == before["alice/INBOX"][0]  # UIDVALIDITY
        assert "carol" in snap
    finally:
        again.close()


def test_non_empty_target_is_refused_unless_replaced(tmp_path: Path, pg_dsn: str) -> None:
    """A second migration into the same target is refused (nothing changes); with
    replace it empties the target first and the result matches the source again."""
    src = open_store(tmp_path / "sqlite")
    _fill(src)
    src.close()
    a = Endpoint.parse(f"sqlite:{tmp_path / 'sqlite'}", None)
    b = Endpoint.parse(f"postgresql:{pg_dsn}", tmp_path / "blobs")
    first = migrate_store(a, b)
    with pytest.raises(TransferError, match="not empty.*--replace"):
        migrate_store(a, b)
    second = migrate_store(a, b, replace=True)
    assert second == first


def test_checksums_notice_a_difference(tmp_path: Path) -> None:
    """The table checksum changes with any value (so the verification can fail)."""
    import sqlite3

    from mxd.store.transfer import _Side

    h = open_store(tmp_path / "s")
    _fill(h)
    h.close()
    side = _Side(Endpoint.parse(f"sqlite:{tmp_path / 's'}", None), create=False)
    cols = side.columns("messages")
    before = table_digest(side, "messages", "mailbox_id, uid", cols)
    side.close()
    with sqlite3.connect(tmp_path / "s" / "mxd.sqlite3") as c:
        c.execute("UPDATE messages SET flags = ' \\Flagged ' WHERE uid = 1")
    side = _Side(Endpoint.parse(f"sqlite:{tmp_path / 's'}", None), create=False)
    try:
        after = table_digest(side, "messages", "mailbox_id, uid", cols)
    finally:
        side.close()
    assert before[0] == after[0] and before[1] != after[1]


def test_bad_specs_and_old_sources_are_refused(tmp_path: Path) -> None:
    """Unknown kinds, a postgresql side without --blob-dir, a missing store, and a source
    from an older mxd are refused with a message that says what to do."""
    with pytest.raises(TransferError, match="unknown store kind"):
        Endpoint.parse("mysql:x", None)
    with pytest.raises(TransferError, match="--blob-dir"):
        Endpoint.parse("postgresql:dbname=x", None)
    with pytest.raises(TransferError, match="no SQLite store"):
        migrate_store(Endpoint.parse(f"sqlite:{tmp_path / 'none'}", None),
                      Endpoint.parse(f"sqlite:{tmp_path / 'to'}", None))
    import sqlite3

    open_store(tmp_path / "old").close()
    with sqlite3.connect(tmp_path / "old" / "mxd.sqlite3") as c:
        c.execute("UPDATE schema_version SET version = 1 WHERE name = 'store'")
    with pytest.raises(TransferError, match="start this mxd once on the source"):
        migrate_store(Endpoint.parse(f"sqlite:{tmp_path / 'old'}", None),
                      Endpoint.parse(f"sqlite:{tmp_path / 'to'}", None))
