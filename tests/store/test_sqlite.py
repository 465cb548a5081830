"""SQLiteStore: accounts, delivery, UIDs, modseqs, flags, copy/move/expunge, mailboxes."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from mxd.store.interfaces import (
    DEFAULT_MAILBOXES,
    AccountExists,
    AddressInUse,
    CannotDeleteInbox,
    Delivery,
    InvalidFlag,
    InvalidMailboxName,
    MailboxChange,
    MailboxExists,
    MailboxHasChildren,
    MessageProps,
    NoSuchAccount,
    NoSuchMailbox,
    SpecialUse,
)
from mxd.store.sqlite import SQLiteStore, StoreSettings
from mxd.store.writer import StoreClosed
from tests.store.helpers import InlineReactor, StoreHarness, open_store, result_of


def _account(h: StoreHarness, name: str = "alice") -> int:
    return h.run(h.store.add_account(name, "{}", [f"{name}@example.test"])).id


def _mbox(h: StoreHarness, account_id: int, name: str = "INBOX") -> int:
    return h.run(h.store.get_mailbox(account_id, name)).id


def _blob_files(data_dir: Path, h: StoreHarness) -> list[Path]:
    assert h.store.data_dir == data_dir
    return h.body_files()


def _refcount(data_dir: Path, blob_id: str) -> int | None:
    with sqlite3.connect(data_dir / "mxd.sqlite3") as c:
        row = c.execute("SELECT refcount FROM blobs WHERE id = ?", (blob_id,)).fetchone()
    return None if row is None else int(row[0])


# -- accounts ---------------------------------------------------------------------------

def test_new_account_gets_default_mailboxes(store: StoreHarness) -> None:
    """A new account has INBOX and the RFC 6154 special-use mailboxes, all subscribed."""
    acct = store.run(store.store.add_account("alice", "{}", ["alice@example.test"]))
    boxes = store.run(store.store.list_mailboxes(acct.id))
    assert {b.name: b.special_use for b in boxes} == DEFAULT_MAILBOXES
    assert all(b.subscribed and b.exists == 0 and b.uidnext == 1 for b in boxes)
    assert len({b.uidvalidity for b in boxes}) == len(boxes)


def test_account_add_get_list_delete(store: StoreHarness) -> None:
    """Accounts can be added, looked up by name and address, listed and deleted."""
    s = store.store
    a = store.run(s.add_account("alice", "secret-a", ["alice@example.test"]))
    store.run(s.add_account("bob", "secret-b"))
    store.run(s.add_address("bob", "bob@example.test"))
    assert store.run(s.get_account("ALICE")) == a  # names compare case-insensitively
    assert store.run(s.account_for_address("bob@example.test")).name == "bob"
    assert store.run(s.account_for_address("nobody@example.test")) is None
    assert [x.name for x in store.run(s.list_accounts())] == ["alice", "bob"]
    store.run(s.set_secrets("alice", "secret-a2"))
    assert store.run(s.get_secrets("alice")) == "secret-a2"
    store.run(s.delete_account("alice"))
    assert store.run(s.get_account("alice")) is None
    assert store.run(s.get_secrets("alice")) is None
    assert store.run(s.account_for_address("alice@example.test")) is None
    store.run(s.remove_address("bob@example.test"))
    assert store.run(s.get_account("bob")).addresses == ()


def test_account_errors(store: StoreHarness) -> None:
    """Duplicate names and addresses, unknown accounts and bad names fail cleanly."""
    s = store.store
    store.run(s.add_account("alice", "{}", ["alice@example.test"]))
    assert isinstance(store.fail(s.add_account("Alice", "{}")), AccountExists)
    assert isinstance(store.fail(s.add_account("carol", "{}", ["alice@example.test"])), AddressInUse)
    assert store.run(s.get_account("carol")) is None  # nothing of the failed add remains
    assert isinstance(store.fail(s.delete_account("nobody")), NoSuchAccount)
    assert isinstance(store.fail(s.set_secrets("nobody", "x")), NoSuchAccount)
    assert isinstance(store.fail(s.add_address("nobody", "n@example.test")), NoSuchAccount)
    assert "invalid account name" in str(store.fail(s.add_account(" x", "{}")))


def test_delete_account_removes_bodies(store: StoreHarness, data_dir: Path) -> None:
    """Deleting an account removes its messages and their body files."""
    a = _account(store)
    store.deliver_bytes(b"m1", [Delivery(a), Delivery(a, "Archive")])
    assert len(_blob_files(data_dir, store)) == 1
    store.run(store.store.delete_account("alice"))
    assert _blob_files(data_dir, store) == []


# -- delivery ---------------------------------------------------------------------------

def test_deliver_to_several_mailboxes_shares_one_blob(store: StoreHarness, data_dir: Path) -> None:
    """One delivery to several mailboxes and accounts stores one file with one reference
    per message, and the content reads back."""
    a, b = _account(store, "alice"), _account(store, "bob")
    body = b"Subject: hi\r\n\r\nhello\r\n" * 100
    props = MessageProps(requiretls=True, mail_from="x@example.org", received_via="ESMTPS")
    uids = store.deliver_bytes(body, [Delivery(a), Delivery(a, "Archive", frozenset({"\\Seen"})),
                                      Delivery(b)], props)
    assert uids == [1, 1, 1]
    files = _blob_files(data_dir, store)
    assert len(files) == 1
    msgs = store.run(store.store.list_messages(_mbox(store, a)))
    assert len(msgs) == 1 and msgs[0].size == len(body)
    assert _refcount(data_dir, msgs[0].blob_id) == 3
    with store.store.open_blob(msgs[0].blob_id) as f:
        assert f.read() == body
    archived = store.run(store.store.list_messages(_mbox(store, a, "Archive")))
    assert archived[0].flags == frozenset({"\\Seen"})
    assert store.run(store.store.get_message_props(_mbox(store, a), 1)) == props
    assert list((data_dir / "tmp").glob("*.tmp")) == []  # no body (the pool list may be)


def test_deliver_to_missing_mailbox_stores_nothing(store: StoreHarness, data_dir: Path) -> None:
    """A delivery with one bad target fails whole: no message, no body file left."""
    a = _account(store)
    w = store.store.new_blob()
    w.write(b"body")
    err = store.fail(store.store.deliver(w, [Delivery(a), Delivery(a, "Nope")], MessageProps()))
    assert isinstance(err, NoSuchMailbox)
    assert store.run(store.store.list_messages(_mbox(store, a))) == []
    assert _blob_files(data_dir, store) == []
    w2 = store.store.new_blob()
    w2.write(b"x")
    assert isinstance(store.fail(store.store.deliver(w2, [Delivery(999)], MessageProps())),
                      NoSuchAccount)


def test_append_to_missing_mailbox_leaves_no_body(store: StoreHarness, data_dir: Path) -> None:
    """APPEND by name to a mailbox that does not exist (the look-up is part of the
    storing operation): NoSuchMailbox, and the body's file is removed, fsynced
    alongside the commit or not."""
    a = _account(store)
    w = store.store.new_blob()
    w.write(b"Subject: lost\r\n\r\nbody\r\n")
    assert isinstance(store.fail(store.store.append_to(a, "Nope", w, frozenset())),
                      NoSuchMailbox)
    assert _blob_files(data_dir, store) == []
    w2 = store.store.new_blob()
    w2.write(b"Subject: kept\r\n\r\nbody\r\n")
    done = store.run(store.store.append_to(a, "INBOX", w2, frozenset()))
    assert done.uid == 1 and len(_blob_files(data_dir, store)) == 1


def test_uids_uidnext_and_modseq(store: StoreHarness) -> None:
    """UIDs ascend from 1, UIDNEXT follows, each change raises HIGHESTMODSEQ and the
    changed messages carry the new value."""
    a = _account(store)
    inbox = _mbox(store, a)
    start = store.run(store.store.get_mailbox_by_id(inbox))
    for i in range(3):
        assert store.deliver_bytes(b"m%d" % i, [Delivery(a)]) == [i + 1]
    info = store.run(store.store.get_mailbox(a, "inbox"))
    assert (info.uidnext, info.exists, info.unseen, info.size) == (4, 3, 3, 6)
    assert info.highestmodseq == start.highestmodseq + 3
    msgs = store.run(store.store.list_messages(inbox))
    assert [m.modseq for m in msgs] == [start.highestmodseq + i for i in (1, 2, 3)]
    changed, failed = store.run(store.store.store_flags(inbox, [2], frozenset({"\\Seen"}), "add"))
    assert failed == [] and [m.uid for m in changed] == [2]
    assert changed[0].modseq == info.highestmodseq + 1
    since = store.run(store.store.list_messages(inbox, since_modseq=info.highestmodseq))
    assert [m.uid for m in since] == [2]
    assert store.run(store.store.get_mailbox_by_id(inbox)).unseen == 2


def test_last_uid_then_out_of_uids_changes_nothing(store: StoreHarness) -> None:
    """RFC 3501 §2.3.1.1: UIDs are 32-bit.  The last one, 4294967295, is given out; the
    delivery after it fails and leaves the mailbox (UIDNEXT, HIGHESTMODSEQ) unchanged."""
    from mxd.store.interfaces import StoreError

    a = _account(store)
    inbox = _mbox(store, a)
    store.run(store.store.transact(lambda conn: conn.execute(
        "UPDATE mailboxes SET uidnext = 4294967295 WHERE id = ?", (inbox,))))
    assert store.deliver_bytes(b"last", [Delivery(a)]) == [4294967295]
    before = store.run(store.store.get_mailbox_by_id(inbox))
    w = store.store.new_blob()
    w.write(b"one too many")
    err = store.fail(store.store.deliver(w, [Delivery(a)], MessageProps()))
    assert isinstance(err, StoreError) and "run out of UIDs" in str(err)
    after = store.run(store.store.get_mailbox_by_id(inbox))
    assert (after.uidnext, after.highestmodseq, after.exists) == (
        before.uidnext, before.highestmodseq, 1) == (2**32, before.highestmodseq, 1)


def test_append_with_date_and_flags(store: StoreHarness) -> None:
    """APPEND keeps the given internal date and flags (\\Recent dropped); bad flags fail."""
    a = _account(store)
    drafts = _mbox(store, a, "Drafts")
    w = store.store.new_blob()
    w.write(b"draft")
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    uid = store.run(store.store.append(drafts, w, frozenset({"\\Draft", "\\Recent"}), when))
    (m,) = store.run(store.store.list_messages(drafts))
    assert (m.uid, m.flags, m.internal_date) == (uid, frozenset({"\\Draft"}), when)
    w2 = store.store.new_blob()
    w2.write(b"x")
    assert isinstance(store.fail(store.store.append(drafts, w2, frozenset({"bad flag"}))), InvalidFlag)
    assert isinstance(store.fail(store.store.append(12345, store.store.new_blob(), frozenset())),
                      NoSuchMailbox)


def test_store_flags_modes_and_unchangedsince(store: StoreHarness) -> None:
    """set/add/remove change only what differs; UNCHANGEDSINCE fails messages modified
    after the given modseq (RFC 7162 §3.1.3) and leaves them alone."""
    a = _account(store)
    inbox = _mbox(store, a)
    for i in range(3):
        store.deliver_bytes(b"m%d" % i, [Delivery(a)])
    s = store.store
    changed, _ = store.run(s.store_flags(inbox, [1, 2, 3], frozenset({"\\Seen", "Work"}), "set"))
    assert len(changed) == 3
    base = changed[0].modseq
    changed, _ = store.run(s.store_flags(inbox, [1, 2, 3], frozenset({"work"}), "add"))
    assert changed == []  # already there: no change, no new modseq
    assert store.run(s.get_mailbox_by_id(inbox)).highestmodseq == base
    changed, _ = store.run(s.store_flags(inbox, [2], frozenset({"\\Flagged"}), "add"))
    assert changed[0].modseq == base + 1
    changed, failed = store.run(s.store_flags(inbox, [1, 2, 3, 99], frozenset({"\\Seen"}), "remove",
                                              unchanged_since=base))
    assert failed == [2]
    assert [m.uid for m in changed] == [1, 3]
    assert all(m.flags == frozenset({"Work"}) for m in changed)
    by_uid = {m.uid: m for m in store.run(s.list_messages(inbox))}
    assert by_uid[2].flags == frozenset({"\\Seen", "Work", "\\Flagged"})
    _, failed = store.run(s.store_flags(inbox, [1], frozenset(), "set", unchanged_since=0))
    assert failed == [1]
    assert isinstance(store.fail(s.store_flags(inbox, [1], frozenset(), "toggle")), Exception)


def test_copy_move_expunge_and_blob_gc(store: StoreHarness, data_dir: Path) -> None:
    """Copy and move share the body; expunge drops references and the file goes with
    the last one; expunged UIDs are kept for VANISHED."""
    a = _account(store)
    s = store.store
    inbox, archive, trash = _mbox(store, a), _mbox(store, a, "Archive"), _mbox(store, a, "Trash")
    store.deliver_bytes(b"one", [Delivery(a, flags=frozenset({"\\Flagged"}))])
    store.deliver_bytes(b"two", [Delivery(a)])
    assert len(_blob_files(data_dir, store)) == 2
    pairs = store.run(s.copy(inbox, [1, 2, 7], archive))
    assert pairs == [(1, 1), (2, 2)]
    assert len(_blob_files(data_dir, store)) == 2
    copied = store.run(s.list_messages(archive))
    assert copied[0].flags == frozenset({"\\Flagged"})
    blob_one = copied[0].blob_id
    assert _refcount(data_dir, blob_one) == 2
    before = store.run(s.get_mailbox_by_id(inbox)).highestmodseq
    assert store.run(s.move(inbox, [1], trash)) == [(1, 1)]
    assert [m.uid for m in store.run(s.list_messages(inbox))] == [2]
    assert store.run(s.list_vanished(inbox, before)) == [1]
    assert _refcount(data_dir, blob_one) == 2
    # expunge only removes \Deleted messages
    assert store.run(s.expunge(trash)) == []
    store.run(s.store_flags(trash, [1], frozenset({"\\Deleted"}), "add"))
    store.run(s.store_flags(archive, [1, 2], frozenset({"\\Deleted"}), "add"))
    assert store.run(s.expunge(trash)) == [1]
    assert _refcount(data_dir, blob_one) == 1 and len(_blob_files(data_dir, store)) == 2
    assert store.run(s.expunge(archive, [1])) == [1]
    assert _refcount(data_dir, blob_one) is None
    assert len(_blob_files(data_dir, store)) == 1
    assert not s.blob_path(blob_one).exists()
    assert store.run(s.expunge(archive)) == [2]
    assert len(_blob_files(data_dir, store)) == 1  # still in INBOX
    # MOVE into the same mailbox gives the message a new UID (RFC 6851, as Dovecot).
    assert store.run(s.move(inbox, [2], inbox)) == [(2, 3)]
    assert [m.uid for m in store.run(s.list_messages(inbox))] == [3]
    assert len(_blob_files(data_dir, store)) == 1


def test_notifications_after_commit(store: StoreHarness) -> None:
    """Listeners hear of deliveries, flag changes, expunges and deletion, after the
    commit, and not after unsubscribing."""
    a = _account(store)
    s = store.store
    work = store.run(s.create_mailbox(a, "Work")).id
    seen: list[MailboxChange] = []
    unsubscribe = s.subscribe(work, seen.append)
    other: list[MailboxChange] = []
    s.subscribe(_mbox(store, a), other.append)
    store.deliver_bytes(b"x", [Delivery(a, "Work")])
    assert [c.kind for c in seen] == ["exists"] and seen[0].uids == (1,)
    store.run(s.store_flags(work, [1], frozenset({"\\Deleted"}), "add"))
    store.run(s.expunge(work))
    assert [c.kind for c in seen] == ["exists", "flags", "expunge"]
    assert seen[-1].highestmodseq == store.run(s.get_mailbox_by_id(work)).highestmodseq
    unsubscribe()
    store.deliver_bytes(b"y", [Delivery(a, "Work")])
    assert len(seen) == 3
    assert other == []
    s.subscribe(work, seen.append)
    store.run(s.delete_mailbox(a, "Work"))
    assert seen[-1].kind == "deleted"


def test_listener_error_does_not_break_delivery(store: StoreHarness) -> None:
    """A listener that raises does not stop the delivery or other listeners."""
    a = _account(store)
    got: list[MailboxChange] = []

    def bad(change: MailboxChange) -> None:
        raise RuntimeError("boom")

    inbox = _mbox(store, a)
    store.store.subscribe(inbox, bad)
    store.store.subscribe(inbox, got.append)
    assert store.deliver_bytes(b"x", [Delivery(a)]) == [1]
    assert len(got) == 1


# -- mailboxes --------------------------------------------------------------------------

def test_create_makes_superiors_and_refuses_duplicates(store: StoreHarness) -> None:
    """CREATE a/b/c creates a and a/b (RFC 3501 §6.3.3); a second CREATE fails."""
    a = _account(store)
    s = store.store
    info = store.run(s.create_mailbox(a, "Lists/Dev/Python/", SpecialUse.ARCHIVE))
    assert info.name == "Lists/Dev/Python" and info.special_use is SpecialUse.ARCHIVE
    assert not info.subscribed
    names_ = {b.name for b in store.run(s.list_mailboxes(a))}
    assert {"Lists", "Lists/Dev", "Lists/Dev/Python"} <= names_
    assert isinstance(store.fail(s.create_mailbox(a, "lists/dev/python".title())), MailboxExists)
    assert isinstance(store.fail(s.create_mailbox(a, "inbox")), MailboxExists)
    assert isinstance(store.fail(s.create_mailbox(a, "a//b")), Exception)
    assert isinstance(store.fail(s.create_mailbox(999, "X")), NoSuchAccount)


def test_delete_rules_and_uidvalidity(store: StoreHarness) -> None:
    """INBOX and mailboxes with inferiors cannot be deleted; a mailbox deleted and
    created again gets a new UIDVALIDITY."""
    a = _account(store)
    s = store.store
    store.run(s.create_mailbox(a, "P/Q"))
    assert isinstance(store.fail(s.delete_mailbox(a, "INBOX")), CannotDeleteInbox)
    assert isinstance(store.fail(s.delete_mailbox(a, "P")), MailboxHasChildren)
    assert isinstance(store.fail(s.delete_mailbox(a, "Nope")), NoSuchMailbox)
    old = store.run(s.get_mailbox(a, "P/Q")).uidvalidity
    store.run(s.delete_mailbox(a, "P/Q"))
    store.run(s.delete_mailbox(a, "P"))
    assert isinstance(store.fail(s.get_mailbox(a, "P")), NoSuchMailbox)
    assert store.run(s.create_mailbox(a, "P/Q")).uidvalidity > old


def test_rename_moves_children(store: StoreHarness) -> None:
    """RENAME takes inferiors along, keeps messages and UIDVALIDITY, creates the new
    superiors, and refuses an existing target or the mailbox's own inferior."""
    a = _account(store)
    s = store.store
    store.run(s.create_mailbox(a, "Work/2023/Q1"))
    store.run(s.create_mailbox(a, "Workshop"))
    store.deliver_bytes(b"q1", [Delivery(a, "Work/2023/Q1")])
    before = store.run(s.get_mailbox(a, "Work/2023/Q1"))
    seen: list[MailboxChange] = []
    s.subscribe(before.id, seen.append)
    store.run(s.rename_mailbox(a, "Work", "Old/Work"))
    names_ = {b.name for b in store.run(s.list_mailboxes(a))}
    assert {"Old", "Old/Work", "Old/Work/2023", "Old/Work/2023/Q1", "Workshop"} <= names_
    assert not any(n == "Work" or n.startswith("Work/") for n in names_)
    after = store.run(s.get_mailbox(a, "Old/Work/2023/Q1"))
    assert (after.id, after.uidvalidity, after.exists) == (before.id, before.uidvalidity, 1)
    assert seen[-1].kind == "renamed"
    assert isinstance(store.fail(s.rename_mailbox(a, "Old", "Workshop")), MailboxExists)
    assert isinstance(store.fail(s.rename_mailbox(a, "Old", "Old/Inner")), Exception)
    assert isinstance(store.fail(s.rename_mailbox(a, "Missing", "X")), NoSuchMailbox)
    store.run(s.create_mailbox(a, "Old/Work/2023/Q1_"))  # LIKE wildcard must not match
    store.run(s.rename_mailbox(a, "Old/Work/2023/Q1", "Q1"))
    assert store.run(s.get_mailbox(a, "Old/Work/2023/Q1_")).name == "Old/Work/2023/Q1_"


def test_rename_inbox_moves_messages(store: StoreHarness) -> None:
    """RENAME INBOX moves its messages to the new mailbox and leaves INBOX empty
    (RFC 3501 §6.3.5)."""
    a = _account(store)
    s = store.store
    store.deliver_bytes(b"a", [Delivery(a)])
    store.deliver_bytes(b"b", [Delivery(a)])
    store.run(s.rename_mailbox(a, "inbox", "Saved"))
    assert store.run(s.get_mailbox(a, "INBOX")).exists == 0
    saved = store.run(s.get_mailbox(a, "Saved"))
    assert saved.exists == 2 and saved.uidnext == 3


def test_subscribe_flag(store: StoreHarness) -> None:
    """SUBSCRIBE/UNSUBSCRIBE set the subscribed attribute."""
    a = _account(store)
    store.run(store.store.set_subscribed(a, "Sent", False))
    assert not store.run(store.store.get_mailbox(a, "Sent")).subscribed
    assert isinstance(store.fail(store.store.set_subscribed(a, "Nope", True)), NoSuchMailbox)


# -- writer behaviour -------------------------------------------------------------------

def test_group_commit_batches_and_isolates_failures(store: StoreHarness) -> None:
    """Deliveries submitted together commit in fewer transactions than deliveries, and
    one failing operation does not take the others down."""
    a = _account(store)
    s = store.store
    ds = []
    for i in range(20):
        w = s.new_blob()
        w.write(b"m%d" % i)
        target = Delivery(a, "Nope") if i == 7 else Delivery(a)
        ds.append(s.deliver(w, [target], MessageProps()))
    batches_before = s._writer.batches
    results = []
    for i, d in enumerate(ds):
        if i == 7:
            assert isinstance(store.fail(d), NoSuchMailbox)
        else:
            results.append(store.run(d)[0])
    assert sorted(results) == list(range(1, 20))
    assert s._writer.batches - batches_before < 20
    assert store.run(s.get_mailbox(a, "INBOX")).exists == 19


def test_inline_mode_fires_at_once(data_dir: Path) -> None:
    """With inline=True every store Deferred has fired when the call returns."""
    h = open_store(data_dir, inline=True)
    d = h.store.add_account("alice", "{}")
    fired = []
    d.addCallback(fired.append)
    assert fired and fired[0].name == "alice"
    h.close()


def test_closed_store_refuses_work(data_dir: Path) -> None:
    """After close() operations fail with StoreClosed and a pending body is removed."""
    h = open_store(data_dir)
    h.close()
    w = h.store.new_blob()
    w.write(b"x")
    assert isinstance(h.fail(h.store.deliver(w, [Delivery(1)], MessageProps())), StoreClosed)
    assert list((data_dir / "tmp").glob("*.tmp")) == []  # no body (the pool list may be)


def test_small_batches_setting(data_dir: Path) -> None:
    """max_batch=1 runs each operation in its own transaction."""
    h = open_store(data_dir, settings=StoreSettings(max_batch=1))
    a = _account(h)
    ds = [h.store.get_account("alice") for _ in range(5)]
    before = h.store._writer.batches
    for d in ds:
        assert h.run(d).id == a
    assert h.store._writer.batches - before == 5
    h.close()


def test_content_survives_reopen(data_dir: Path) -> None:
    """Delivered messages and their bodies are there after close and reopen."""
    h = open_store(data_dir)
    a = _account(h)
    body = b"persist me" * 1000
    h.deliver_bytes(body, [Delivery(a)])
    h = h.reopen()
    (m,) = h.run(h.store.list_messages(_mbox(h, a)))
    with h.store.open_blob(m.blob_id) as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(body).digest()
    h.close()


def test_open_blob_rejects_bad_ids(store: StoreHarness) -> None:
    """Blob ids are checked before they become paths."""
    with pytest.raises(Exception, match="malformed blob id"):
        store.store.open_blob("../../etc/passwd")
    with pytest.raises(Exception, match="missing"):
        store.store.open_blob("0" * 32)


def test_work_submitted_during_open_waits_for_it(data_dir: Path) -> None:
    """Operations submitted before open() has finished run once it has."""
    from mxd.store.sqlite import SQLiteStore
    from tests.store.helpers import StoreHarness, ThreadCalls

    calls = ThreadCalls()
    s = SQLiteStore(data_dir, calls)  # type: ignore[arg-type]
    h = StoreHarness(s, calls, inline=False)
    opened = s.open()
    early = s.add_account("early", "{}")
    h.run(opened)
    assert h.run(early).name == "early"
    h.close()


def test_failed_open_fails_queued_work(data_dir: Path) -> None:
    """When open() fails (here: a too-new schema), queued operations fail too and
    their bodies are dropped."""
    from mxd.store.schema import SchemaTooNew
    from mxd.store.sqlite import SQLiteStore
    from tests.store.helpers import StoreHarness, ThreadCalls

    open_store(data_dir).close()
    with sqlite3.connect(data_dir / "mxd.sqlite3") as c:
        c.execute("UPDATE schema_version SET version = 99 WHERE name = 'store'")
    calls = ThreadCalls()
    s = SQLiteStore(data_dir, calls)  # type: ignore[arg-type]
    h = StoreHarness(s, calls, inline=False)
    opened = s.open()
    w = s.new_blob()
    w.write(b"x")
    queued = s.deliver(w, [Delivery(1)], MessageProps())
    closing = s.close()
    assert isinstance(h.fail(opened), SchemaTooNew)
    assert isinstance(h.fail(queued), StoreClosed)
    h.run(closing)
    assert list((data_dir / "tmp").glob("*.tmp")) == []  # no body (the pool list may be)


def test_sqlite_errors_become_store_errors(store: StoreHarness) -> None:
    """A database error inside transact reaches the caller as a StoreError, and the
    writer goes on working."""
    from mxd.store.interfaces import StoreError

    err = store.fail(store.store.transact(lambda c: c.execute("SELECT * FROM no_such_table")))
    assert isinstance(err, StoreError) and isinstance(err.__cause__, sqlite3.Error)
    assert store.run(store.store.list_accounts()) == []


def test_sqlite_store_provides_the_protocols(store: StoreHarness) -> None:
    """SQLiteStore structurally provides every store protocol others code against, and
    its queue store IQueueStore (no database connection crosses either)."""
    from mxd.queue.storage import IQueueStore
    from mxd.store.interfaces import IAccountStore, IMailStore
    from mxd.store.sqlitequeue import SQLiteQueueStore

    s = store.store
    qs = SQLiteQueueStore(s)
    for proto, obj in ((IAccountStore, s), (IMailStore, s), (IQueueStore, qs)):
        missing = [m for m in dir(proto) if not m.startswith("_") and not hasattr(obj, m)]
        assert missing == [], (proto.__name__, missing)
    a: IAccountStore = s
    m: IMailStore = s
    q: IQueueStore = qs
    assert a is m and q.new_blob is not None


def test_quota_and_usage(data_dir: Path) -> None:
    """Usage follows deliveries, copies and expunges; a delivery, append or copy that
    would pass the quota fails with QuotaExceeded and stores nothing; move is free."""
    from mxd.store.interfaces import QuotaExceeded

    h = open_store(data_dir, settings=StoreSettings(quota_bytes=250))
    s = h.store
    a = _account(h)
    inbox, archive = _mbox(h, a), _mbox(h, a, "Archive")
    assert h.run(s.get_usage(a)) == (0, 250)
    h.deliver_bytes(b"x" * 100, [Delivery(a)])
    assert h.run(s.get_usage(a)) == (100, 250)
    w = s.new_blob()
    w.write(b"y" * 100)
    err = h.fail(s.deliver(w, [Delivery(a), Delivery(a, "Archive")], MessageProps()))
    assert isinstance(err, QuotaExceeded)
    assert h.run(s.get_usage(a)) == (100, 250)
    h.run(s.copy(inbox, [1], archive))
    assert h.run(s.get_usage(a))[0] == 200
    assert isinstance(h.fail(s.copy(inbox, [1], archive)), QuotaExceeded)
    w2 = s.new_blob()
    w2.write(b"z" * 51)
    assert isinstance(h.fail(s.append(inbox, w2, frozenset())), QuotaExceeded)
    assert h.run(s.move(inbox, [1], _mbox(h, a, "Trash"))) == [(1, 1)]
    assert h.run(s.get_usage(a))[0] == 200
    h.run(s.set_quota("alice", None))
    assert h.run(s.get_usage(a)) == (200, 250)  # back to the default
    h.run(s.set_quota("alice", 10_000))
    h.deliver_bytes(b"w" * 1000, [Delivery(a)])
    assert h.run(s.get_usage(a)) == (1200, 10_000)
    h.run(s.store_flags(archive, [1], frozenset({"\\Deleted"}), "add"))
    h.run(s.expunge(archive))
    assert h.run(s.get_usage(a))[0] == 1100
    assert isinstance(h.fail(s.set_quota("nobody", 1)), NoSuchAccount)
    assert isinstance(h.fail(s.get_usage(999)), NoSuchAccount)
    h.close()


def test_naive_internal_date_is_utc(store: StoreHarness) -> None:
    """A naive internal date is stored and returned as UTC."""
    a = _account(store)
    w = store.store.new_blob()
    w.write(b"x")
    store.run(store.store.append(_mbox(store, a), w, frozenset(), datetime(2021, 5, 6, 7, 8, 9)))
    (m,) = store.run(store.store.list_messages(_mbox(store, a)))
    assert m.internal_date == datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_held_body_outlives_its_last_reference(store: StoreHarness, data_dir: Path) -> None:
    """A body a reader holds (hold_blob, from a change listener) stays on disk after the
    expunge that dropped its last reference, and goes when the hold is released."""
    a = _account(store)
    s = store.store
    inbox = _mbox(store, a)
    store.deliver_bytes(b"one", [Delivery(a)])
    [m] = store.run(s.list_messages(inbox))

    def listener(change: MailboxChange) -> None:
        if change.kind == "expunge":
            s.hold_blob(m.blob_id)

    unsubscribe = s.subscribe(inbox, listener)
    store.run(s.store_flags(inbox, [1], frozenset({"\\Deleted"}), "add"))
    assert store.run(s.expunge(inbox)) == [1]
    unsubscribe()
    assert _refcount(data_dir, m.blob_id) is None
    with s.open_blob(m.blob_id) as f:
        assert f.read() == b"one"
    s.release_blob(m.blob_id)
    store.run(s.get_usage(a))  # a writer round trip: the removal has run by then
    assert not s.blob_path(m.blob_id).exists()


def test_subscription_outlives_its_mailbox(store: StoreHarness) -> None:
    """RFC 3501 §6.3.6: DELETE does not unsubscribe; UNSUBSCRIBE ends it; a new mailbox
    of the same name is subscribed again."""
    a = _account(store)
    s = store.store
    store.run(s.create_mailbox(a, "hc/x"))
    store.run(s.set_subscribed(a, "hc/x", True))
    store.run(s.delete_mailbox(a, "hc/x"))
    assert "hc/x" in store.run(s.list_subscriptions(a))
    assert "hc/x" not in [b.name for b in store.run(s.list_mailboxes(a))]
    store.run(s.create_mailbox(a, "hc/x"))
    assert [b.subscribed for b in store.run(s.list_mailboxes(a)) if b.name == "hc/x"] == [True]
    store.run(s.delete_mailbox(a, "hc/x"))
    store.run(s.set_subscribed(a, "hc/x", False))
    assert "hc/x" not in store.run(s.list_subscriptions(a))
    assert isinstance(store.fail(s.set_subscribed(a, "hc/x", False)), NoSuchMailbox)


def test_rename_to_own_inferior_is_a_name_error(store: StoreHarness) -> None:
    a = _account(store)
    s = store.store
    store.run(s.create_mailbox(a, "P"))
    assert isinstance(store.fail(s.rename_mailbox(a, "P", "P/Q")), InvalidMailboxName)


class _ManualPool:
    """A writer "thread" that runs only when told: what was submitted before it starts
    is there for it to take."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None:
        self.calls.append((onResult, func, args, kw))

    def run_all(self) -> None:
        while self.calls:
            onResult, func, args, kw = self.calls.pop(0)
            try:
                result = func(*args, **kw)
            except BaseException:  # handed to the caller, as a pool does
                onResult(False, Failure())
                continue
            onResult(True, result)


def test_operations_submitted_before_the_writer_starts_share_its_batch(data_dir: Path) -> None:
    """The writer thread takes its batch when it starts running, not when it was asked
    to: three deliveries submitted before it ran go in one transaction."""
    pool = _ManualPool()
    store = SQLiteStore(data_dir, InlineReactor(), threadpool=pool)  # type: ignore[arg-type]
    opened = store.open()
    pool.run_all()
    assert opened.called
    added = store.add_account("alice", "{}")
    pool.run_all()
    account_id = result_of(added)[1].id
    before = (store._writer.batches, store._writer.ops)
    delivered = []
    for i in range(3):
        w = store.new_blob()
        w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
        delivered.append(store.deliver(w, [Delivery(account_id)], MessageProps()))
    assert not any(d.called for d in delivered)
    pool.run_all()
    assert [result_of(d)[1] for d in delivered] == [[1], [2], [3]]
    assert (store._writer.batches - before[0], store._writer.ops - before[1]) == (1, 3)
    closed = store.close()
    pool.run_all()
    assert closed.called
