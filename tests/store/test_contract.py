"""The store contract (mxd.store.interfaces), run against the in-memory store that tests
use (mxd.store.testing.MemoryStore) and both real backends, SQLiteStore and PostgresStore
(on the tests' private PostgreSQL cluster): what one does, the others do, so that tests
written against the fake say something about the real things."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mxd.store.interfaces import (
    AccountExists,
    AddressInUse,
    CannotDeleteInbox,
    Delivery,
    IAccountStore,
    IMailStore,
    MailboxChange,
    MailboxExists,
    MailboxHasChildren,
    MessageProps,
    NoSuchAccount,
    NoSuchMailbox,
    OutboundMessage,
    OutboundRecipient,
    QuotaExceeded,
    StoreError,
)
from mxd.store.sqlite import StoreSettings
from mxd.store.testing import MemoryStore
from tests.store.helpers import open_pg_store, open_store

ENVELOPE = OutboundMessage("a@example.test", (OutboundRecipient("x@remote.test"),))


class Contract:
    """A store under test and a way to wait for its (already fired) Deferreds."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def run(self, d: Deferred[Any]) -> Any:
        box: list[Any] = []
        d.addBoth(box.append)
        assert box, "the Deferred did not fire at once"
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    def fail(self, d: Deferred[Any]) -> BaseException:
        try:
            self.run(d)
        except BaseException as e:
            return e
        raise AssertionError("the Deferred succeeded")

    def blob(self, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> Any:
        w = self.store.new_blob()
        w.write(data)
        return w

    def account(self, name: str = "alice") -> int:
        return int(self.run(self.store.add_account(name, "{}", [f"{name}@example.test"])).id)

    def box(self, account_id: int, name: str = "INBOX") -> int:
        return int(self.run(self.store.get_mailbox(account_id, name)).id)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    if request.param == "memory":
        yield Contract(MemoryStore(quota_bytes=10_000))
        return
    settings = StoreSettings(quota_bytes=10_000)
    if request.param == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        h = open_pg_store(dsn, tmp_path / "blobs", inline=True, settings=settings)
    else:
        h = open_store(tmp_path / "data", inline=True, settings=settings)
    try:
        yield Contract(h.store)
    finally:
        h.close()


def test_both_provide_the_protocols(c: Contract) -> None:
    """Every method of IAccountStore and IMailStore is there."""
    for proto in (IAccountStore, IMailStore):
        missing = [m for m in dir(proto) if not m.startswith("_") and not hasattr(c.store, m)]
        assert missing == [], (proto.__name__, missing)


def test_accounts_and_addresses(c: Contract) -> None:
    """An account gets the default mailboxes; names and addresses are unique."""
    a = c.account()
    assert {m.name for m in c.run(c.store.list_mailboxes(a))} >= {"INBOX", "Sent", "Trash"}
    assert isinstance(c.fail(c.store.add_account("alice", "{}")), AccountExists)
    assert isinstance(c.fail(c.store.add_account("bob", "{}", ["alice@example.test"])),
                      AddressInUse)
    assert c.run(c.store.account_for_address("alice@example.test")).name == "alice"
    c.run(c.store.set_secrets("alice", "new"))
    assert c.run(c.store.get_secrets("alice")) == "new"
    assert c.run(c.store.get_account_by_id(a)).name == "alice"


def test_uids_and_modseqs_grow_per_mailbox(c: Contract) -> None:
    """UIDs start at 1 in each mailbox and grow; each change raises the modseq."""
    a = c.account()
    inbox, sent = c.box(a), c.box(a, "Sent")
    assert c.run(c.store.deliver(c.blob(), [Delivery(a)], MessageProps())) == [1]
    assert c.run(c.store.append(inbox, c.blob(), frozenset({"\\Seen"}))) == 2
    assert c.run(c.store.append(sent, c.blob(), frozenset())) == 1
    info = c.run(c.store.get_mailbox(a, "INBOX"))
    assert (info.uidnext, info.exists, info.unseen) == (3, 2, 1)
    # Without counts, the mailbox's identity and UID/modseq state are the same.
    lean = c.run(c.store.get_mailbox(a, "INBOX", counts=False))
    assert (lean.id, lean.uidvalidity, lean.uidnext, lean.highestmodseq) == (
        info.id, info.uidvalidity, info.uidnext, info.highestmodseq)
    first = info.highestmodseq
    changed, failed = c.run(c.store.store_flags(inbox, [1], frozenset({"\\Flagged"}), "add"))
    assert [m.uid for m in changed] == [1] and failed == []
    assert changed[0].modseq > first
    assert [m.uid for m in c.run(c.store.list_messages(inbox, first))] == [1]


def test_append_to_looks_the_mailbox_up_by_name(c: Contract) -> None:
    """append_to stores into the account's mailbox of that name (INBOX in any case, after
    a RENAME under its new name) and tells its id and UIDVALIDITY; a name that does not
    exist (or is the name before a RENAME) is NoSuchMailbox and stores nothing; the
    quota holds."""
    a, b = c.account(), c.account("bob")
    inbox = c.run(c.store.get_mailbox(a, "INBOX"))
    done = c.run(c.store.append_to(a, "inbox", c.blob(), frozenset({"\\Seen"})))
    assert (done.mailbox_id, done.uidvalidity, done.uid) == (inbox.id, inbox.uidvalidity, 1)
    assert c.run(c.store.append_to(a, "INBOX", c.blob(), frozenset())).uid == 2
    c.run(c.store.create_mailbox(a, "Old"))
    c.run(c.store.rename_mailbox(a, "Old", "New"))
    assert isinstance(c.fail(c.store.append_to(a, "Old", c.blob(), frozenset())), NoSuchMailbox)
    new = c.run(c.store.get_mailbox(a, "New"))
    assert c.run(c.store.append_to(a, "New", c.blob(), frozenset())).mailbox_id == new.id
    assert isinstance(c.fail(c.store.append_to(b, "New", c.blob(), frozenset())), NoSuchMailbox)
    assert [m.uid for m in c.run(c.store.list_messages(inbox.id))] == [1, 2]
    assert c.run(c.store.list_messages(inbox.id))[0].flags == frozenset({"\\Seen"})
    assert len(c.run(c.store.list_messages(new.id))) == 1
    assert isinstance(c.fail(c.store.append_to(a, "INBOX", c.blob(b"x" * 20_000), frozenset())),
                      QuotaExceeded)
    assert c.run(c.store.get_mailbox(a, "INBOX")).exists == 2


def test_unchanged_since_fails_newer_messages(c: Contract) -> None:
    """RFC 7162 UNCHANGEDSINCE: a message changed after the given modseq is not stored."""
    a = c.account()
    inbox = c.box(a)
    c.run(c.store.append(inbox, c.blob(), frozenset()))
    old = c.run(c.store.get_mailbox(a, "INBOX")).highestmodseq
    c.run(c.store.store_flags(inbox, [1], frozenset({"\\Seen"}), "add"))
    changed, failed = c.run(c.store.store_flags(inbox, [1], frozenset({"\\Flagged"}), "add",
                                                unchanged_since=old))
    assert changed == [] and failed == [1]


def test_copy_move_expunge_and_vanished(c: Contract) -> None:
    """Copies share the body; MOVE removes from the source; EXPUNGE removes \\Deleted ones
    and they are listed as vanished after the modseq before."""
    a = c.account()
    inbox, archive = c.box(a), c.box(a, "Archive")
    for _ in range(3):
        c.run(c.store.append(inbox, c.blob(), frozenset()))
    assert c.run(c.store.copy(inbox, [1, 2], archive)) == [(1, 1), (2, 2)]
    assert c.run(c.store.move(inbox, [3], archive)) == [(3, 3)]
    before = c.run(c.store.get_mailbox(a, "INBOX")).highestmodseq
    c.run(c.store.store_flags(inbox, [1], frozenset({"\\Deleted"}), "add"))
    assert c.run(c.store.expunge(inbox)) == [1]
    assert c.run(c.store.list_vanished(inbox, before)) == [1]
    assert [m.uid for m in c.run(c.store.list_messages(inbox))] == [2]
    blob_ids = {m.blob_id for m in c.run(c.store.list_messages(archive))}
    assert len(blob_ids) == 3
    with c.store.open_blob(next(iter(blob_ids))) as f:
        assert f.read().endswith(b"body\r\n")


def test_read_blob_head(c: Contract) -> None:
    """read_blob_head gives a body's first octets, all of a shorter body, and agrees with
    open_blob."""
    a = c.account()
    inbox = c.box(a)
    body = b"Subject: head\r\n\r\n" + b"x" * 9000
    c.run(c.store.append(inbox, c.blob(body), frozenset()))
    blob_id = c.run(c.store.list_messages(inbox))[0].blob_id
    assert c.store.read_blob_head(blob_id, 10) == body[:10]
    assert c.store.read_blob_head(blob_id, 5000) == body[:5000]
    assert c.store.read_blob_head(blob_id, 1 << 20) == body
    with c.store.open_blob(blob_id) as f:
        assert f.read() == body


def test_mailbox_names(c: Contract) -> None:
    """CREATE makes superiors; INBOX is case-insensitive and cannot be deleted; a mailbox
    with inferiors cannot be deleted; RENAME moves the inferiors."""
    a = c.account()
    c.run(c.store.create_mailbox(a, "Work/2024/Q1"))
    names = {m.name for m in c.run(c.store.list_mailboxes(a))}
    assert {"Work", "Work/2024", "Work/2024/Q1"} <= names
    assert isinstance(c.fail(c.store.create_mailbox(a, "Work")), MailboxExists)
    assert c.run(c.store.get_mailbox(a, "inbox")).name == "INBOX"
    assert isinstance(c.fail(c.store.delete_mailbox(a, "INBOX")), CannotDeleteInbox)
    assert isinstance(c.fail(c.store.delete_mailbox(a, "Work")), MailboxHasChildren)
    c.run(c.store.rename_mailbox(a, "Work", "Job"))
    assert c.run(c.store.get_mailbox(a, "Job/2024/Q1")).name == "Job/2024/Q1"
    assert isinstance(c.fail(c.store.get_mailbox(a, "Work")), NoSuchMailbox)


def test_uidvalidity_is_never_reused(c: Contract) -> None:
    """RFC 3501 §2.3.1.1: a mailbox created again gets a new UIDVALIDITY."""
    a = c.account()
    first = c.run(c.store.create_mailbox(a, "Temp")).uidvalidity
    c.run(c.store.delete_mailbox(a, "Temp"))
    assert c.run(c.store.create_mailbox(a, "Temp")).uidvalidity != first


def test_accept_is_all_or_nothing(c: Contract) -> None:
    """accept stores the local copies and the queue rows together; over quota, or with a
    queue id already taken, nothing at all is stored."""
    a, b = c.account(), c.account("bob")
    got = c.run(c.store.accept(c.blob(), [Delivery(a), Delivery(b)], MessageProps(),
                               ENVELOPE, "q1"))
    assert got.queue_id == "q1" and got.uids == (1, 1)
    err = c.fail(c.store.accept(c.blob(), [Delivery(a)], MessageProps(), ENVELOPE, "q1"))
    assert isinstance(err, StoreError)
    assert c.run(c.store.get_mailbox(a, "INBOX")).exists == 1
    big = c.blob(b"x" * 20_000)
    assert isinstance(c.fail(c.store.accept(big, [Delivery(a)], MessageProps(), ENVELOPE,
                                            "q2")), QuotaExceeded)
    assert c.run(c.store.get_mailbox(a, "INBOX")).exists == 1
    assert c.run(c.store.get_usage(a))[1] == 10_000


def test_listeners_hear_committed_changes(c: Contract) -> None:
    """subscribe: exists, flags and expunge changes, after they are done; unsubscribe stops."""
    a = c.account()
    inbox = c.box(a)
    heard: list[MailboxChange] = []
    stop = c.store.subscribe(inbox, heard.append)
    c.run(c.store.append(inbox, c.blob(), frozenset()))
    c.run(c.store.store_flags(inbox, [1], frozenset({"\\Deleted"}), "add"))
    c.run(c.store.expunge(inbox))
    assert [(h.kind, h.uids) for h in heard] == [("exists", (1,)), ("flags", (1,)),
                                                ("expunge", (1,))]
    stop()
    c.run(c.store.append(inbox, c.blob(), frozenset()))
    assert len(heard) == 3


def test_message_props_are_kept(c: Contract) -> None:
    """The properties given at delivery come back for the message."""
    a = c.account()
    props = MessageProps(requiretls=True, mail_from="s@example.test", received_via="ESMTPS")
    c.run(c.store.deliver(c.blob(), [Delivery(a)], props))
    got = c.run(c.store.get_message_props(c.box(a), 1))
    assert (got.requiretls, got.mail_from) == (True, "s@example.test")


def test_save_dates(c: Contract) -> None:
    """RFC 8514: the save date is when a message entered its mailbox (now for delivery,
    APPEND and COPY/MOVE), not the internal date that APPEND sets and COPY keeps."""
    a = c.account()
    inbox, archive = c.box(a), c.box(a, "Archive")
    old = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    c.run(c.store.append(inbox, c.blob(), frozenset(), old))
    c.run(c.store.deliver(c.blob(), [Delivery(a)], MessageProps()))
    c.run(c.store.copy(inbox, [1], archive))
    saved = c.run(c.store.save_dates(inbox))
    assert set(saved) == {1, 2}
    assert all(d.tzinfo is not None and d.year > 2020 for d in saved.values())
    (copied,) = c.run(c.store.list_messages(archive))
    assert copied.internal_date == old  # COPY keeps the internal date ...
    assert c.run(c.store.save_dates(archive, [1, 99]))[1].year > 2020  # ... not the save date
    assert c.run(c.store.save_dates(inbox, [2])) == {2: saved[2]}


def test_deleted_count(c: Contract) -> None:
    """MailboxInfo.deleted counts \\Deleted messages (RFC 9051 STATUS DELETED)."""
    a = c.account()
    inbox = c.box(a)
    for _ in range(3):
        c.run(c.store.append(inbox, c.blob(), frozenset()))
    c.run(c.store.store_flags(inbox, [1, 3], frozenset({"\\Deleted"}), "add"))
    assert c.run(c.store.get_mailbox(a, "INBOX")).deleted == 2


def test_derived_values_follow_their_body(c: Contract) -> None:
    """A registered deriver's values are stored with each new body, shared by a copy,
    read back per mailbox by UID, and replaced (not duplicated) when computed again."""
    c.store.register_deriver("len", ["len"], lambda head: {"len": str(len(head(100))).encode()})
    a = c.account()
    inbox, sent = c.box(a), c.box(a, "Sent")
    w = c.blob(b"Subject: d\r\n\r\n12345\r\n")
    [uid] = c.run(c.store.deliver(w, [Delivery(a)], MessageProps()))
    c.run(c.store.copy(inbox, [uid], sent))
    assert c.run(c.store.get_derived(inbox, "len")) == {uid: b"21"}
    assert list(c.run(c.store.get_derived(sent, "len")).values()) == [b"21"]
    assert c.run(c.store.get_derived(inbox, "other")) == {}
    assert c.run(c.store.backfill_derived()) == 0


def test_newest_messages_pages_in_descending_uid_order(c: Contract) -> None:
    """newest_messages: the rows list_messages has, highest UID first, ``limit`` at a
    time, by ``offset`` or below ``before_uid``; expunged ones absent; NoSuchMailbox."""
    a = c.account()
    inbox = c.box(a)
    for i in range(7):
        c.run(c.store.append(inbox, c.blob(b"Subject: %d\r\n\r\n%d\r\n" % (i, i)),
                             frozenset()))
    c.run(c.store.store_flags(inbox, [4], frozenset({"\\Deleted"}), "add"))
    c.run(c.store.expunge(inbox))
    listed = {m.uid: m for m in c.run(c.store.list_messages(inbox))}
    page = c.run(c.store.newest_messages(inbox, 3))
    assert [m.uid for m in page] == [7, 6, 5]
    assert page == [listed[7], listed[6], listed[5]]
    assert [m.uid for m in c.run(c.store.newest_messages(inbox, 3, offset=3))] == [3, 2, 1]
    assert [m.uid for m in c.run(c.store.newest_messages(inbox, 3, offset=6))] == []
    assert [m.uid for m in c.run(c.store.newest_messages(inbox, 2, before_uid=5))] == [3, 2]
    assert [m.uid for m in c.run(c.store.newest_messages(inbox, 10, before_uid=2))] == [1]
    assert c.run(c.store.newest_messages(inbox, 0)) == []
    assert isinstance(c.fail(c.store.newest_messages(999_999, 5)), NoSuchMailbox)


def test_get_message_is_one_row_by_uid(c: Contract) -> None:
    """get_message answers the row list_messages has for that UID (flags, size, dates,
    body), None for a UID the mailbox lacks (never there, or expunged), and NoSuchMailbox
    for a mailbox that is not there."""
    a = c.account()
    inbox = c.box(a)
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    c.run(c.store.append(inbox, c.blob(b"Subject: one\r\n\r\n1\r\n"), frozenset(), when))
    c.run(c.store.append(inbox, c.blob(b"Subject: two\r\n\r\n22\r\n"),
                         frozenset({"\\Seen", "$Work"})))
    c.run(c.store.append(inbox, c.blob(), frozenset()))
    c.run(c.store.store_flags(inbox, [3], frozenset({"\\Deleted"}), "add"))
    c.run(c.store.expunge(inbox))
    listed = {m.uid: m for m in c.run(c.store.list_messages(inbox))}
    assert sorted(listed) == [1, 2]
    for uid, m in listed.items():
        assert c.run(c.store.get_message(inbox, uid)) == m
    assert c.run(c.store.get_message(inbox, 1)).internal_date == when
    assert c.run(c.store.get_message(inbox, 2)).flags == frozenset({"\\Seen", "$Work"})
    assert c.run(c.store.get_message(inbox, 3)) is None  # expunged
    assert c.run(c.store.get_message(inbox, 99)) is None
    assert c.run(c.store.get_message(c.box(a, "Archive"), 1)) is None  # UIDs are per mailbox
    assert isinstance(c.fail(c.store.get_message(999_999, 1)), NoSuchMailbox)


def test_local_delivery_to_several_mailboxes_is_all_or_nothing(c: Contract) -> None:
    """A delivery to two accounts of which the second is over its quota stores nothing:
    the first account's INBOX, its use and its UIDs are as before (the next delivery
    there gets the UID the failed one would have had, no gap)."""
    a, b = c.account(), c.account("bob")
    c.run(c.store.append(c.box(b), c.blob(b"x" * 9_000), frozenset()))
    before = c.run(c.store.get_mailbox(a, "INBOX"))
    used = c.run(c.store.get_usage(a))[0]
    err = c.fail(c.store.deliver(c.blob(b"y" * 2_000), [Delivery(a), Delivery(b)],
                                 MessageProps()))
    assert isinstance(err, QuotaExceeded)
    after = c.run(c.store.get_mailbox(a, "INBOX"))
    assert (after.exists, after.uidnext) == (before.exists, before.uidnext)
    assert c.run(c.store.get_usage(a))[0] == used
    assert c.run(c.store.deliver(c.blob(), [Delivery(a)], MessageProps())) == [before.uidnext]
    # Two targets that fit: one UID in each, flags per target.
    d = c.account("dave")
    uids = c.run(c.store.deliver(c.blob(), [Delivery(a, flags=frozenset({"\\Seen"})),
                                            Delivery(d, "Sent")], MessageProps()))
    assert uids == [before.uidnext + 1, 1]
    seen = c.run(c.store.get_message(c.box(a), uids[0]))
    assert seen.flags == frozenset({"\\Seen"})
    assert c.run(c.store.get_message(c.box(d, "Sent"), 1)).blob_id == seen.blob_id


def test_new_messages_fail_with_the_missing_part_named(c: Contract) -> None:
    """deliver to an account that does not exist: NoSuchAccount; to a mailbox that does
    not exist: NoSuchMailbox; append to a mailbox id that does not exist: NoSuchMailbox;
    append and append_to over the quota: QuotaExceeded.  None of them stores anything
    or uses a UID."""
    a = c.account()
    inbox = c.box(a)
    assert isinstance(c.fail(c.store.deliver(c.blob(), [Delivery(a + 1000)],
                                             MessageProps())), NoSuchAccount)
    assert isinstance(c.fail(c.store.deliver(c.blob(), [Delivery(a, "Nope")],
                                             MessageProps())), NoSuchMailbox)
    assert isinstance(c.fail(c.store.append(inbox + 1000, c.blob(), frozenset())),
                      NoSuchMailbox)
    big = b"z" * 20_000
    assert isinstance(c.fail(c.store.append(inbox, c.blob(big), frozenset())), QuotaExceeded)
    assert isinstance(c.fail(c.store.append_to(a, "INBOX", c.blob(big), frozenset())),
                      QuotaExceeded)
    assert c.run(c.store.get_usage(a))[0] == 0
    assert c.run(c.store.append(inbox, c.blob(), frozenset())) == 1
    info = c.run(c.store.get_mailbox(a, "INBOX"))
    assert (info.exists, info.uidnext) == (1, 2)


def test_every_new_message_gets_its_derived_values(c: Contract) -> None:
    """A registered deriver's values come with messages stored by deliver, append and
    append_to alike, each with its own body's values."""
    c.store.register_deriver("len", ["len"], lambda head: {"len": str(len(head(100))).encode()})
    a = c.account()
    inbox = c.box(a)
    c.run(c.store.deliver(c.blob(b"1"), [Delivery(a)], MessageProps()))
    c.run(c.store.append(inbox, c.blob(b"22"), frozenset()))
    c.run(c.store.append_to(a, "INBOX", c.blob(b"333"), frozenset()))
    assert c.run(c.store.get_derived(inbox, "len")) == {1: b"1", 2: b"2", 3: b"3"}
