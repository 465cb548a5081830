"""The store contract for the multi-message writes of IMAP MULTIAPPEND (RFC 3502) and
REPLACE (RFC 8508), against both MemoryStore and SQLiteStore: all or nothing."""

from __future__ import annotations

from mxd.store.interfaces import MessageGone, QuotaExceeded
from tests.store.test_contract import Contract, c

__all__ = ["c"]


def test_append_many_gives_uids_in_order(c: Contract) -> None:
    """All messages land in one transaction, with consecutive UIDs in command order."""
    box = c.box(c.account())
    uids = c.run(c.store.append_many(box, [(c.blob(b"Subject: 1\r\n\r\na\r\n"), frozenset({"\\Seen"}), None),
                                           (c.blob(b"Subject: 2\r\n\r\nb\r\n"), frozenset(), None)]))
    assert uids == [1, 2]
    msgs = c.run(c.store.list_messages(box))
    assert [m.uid for m in msgs] == [1, 2]
    assert msgs[0].flags == frozenset({"\\Seen"}) and msgs[1].flags == frozenset()


def test_append_many_over_quota_appends_none(c: Contract) -> None:
    """RFC 3502: the quota (10,000 here) is checked against the total, and nothing is kept."""
    box = c.box(c.account())
    big = b"Subject: x\r\n\r\n" + b"y" * 6000
    err = c.fail(c.store.append_many(box, [(c.blob(big), frozenset(), None),
                                           (c.blob(big), frozenset(), None)]))
    assert isinstance(err, QuotaExceeded)
    assert c.run(c.store.list_messages(box)) == []
    assert c.run(c.store.get_usage(c.run(c.store.get_mailbox_by_id(box)).account_id))[0] == 0


def test_replace_appends_and_expunges_together(c: Contract) -> None:
    acc = c.account()
    inbox, drafts = c.box(acc), c.box(acc, "Drafts")
    old = c.run(c.store.append(inbox, c.blob(b"Subject: v1\r\n\r\nold\r\n"), frozenset()))
    new = c.run(c.store.replace(inbox, old, drafts, c.blob(b"Subject: v2\r\n\r\nnew\r\n"),
                                frozenset({"\\Draft"})))
    assert c.run(c.store.list_messages(inbox)) == []
    assert c.run(c.store.list_vanished(inbox)) == [old]
    [m] = c.run(c.store.list_messages(drafts))
    assert m.uid == new and m.flags == frozenset({"\\Draft"})


def test_replace_of_a_gone_message_appends_nothing(c: Contract) -> None:
    acc = c.account()
    inbox = c.box(acc)
    err = c.fail(c.store.replace(inbox, 99, inbox, c.blob(), frozenset()))
    assert isinstance(err, MessageGone)
    assert c.run(c.store.list_messages(inbox)) == []


def test_replace_counts_only_the_growth_against_the_quota(c: Contract) -> None:
    acc = c.account()
    inbox = c.box(acc)
    old = c.run(c.store.append(inbox, c.blob(b"Subject: x\r\n\r\n" + b"a" * 7000), frozenset()))
    new = c.run(c.store.replace(inbox, old, inbox, c.blob(b"Subject: x\r\n\r\n" + b"b" * 7100),
                                frozenset()))
    assert [m.uid for m in c.run(c.store.list_messages(inbox))] == [new]
