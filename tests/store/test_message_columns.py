"""message_columns: a mailbox's messages column by column, equal to list_messages."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from mxd.imap.mailboxstate import MailboxState
from mxd.store.interfaces import Delivery
from tests.store.helpers import StoreHarness


def test_columns_equal_the_listing(store: StoreHarness) -> None:
    """Same UIDs, modseqs, flags, dates (with their offsets), sizes and blob ids as
    list_messages; a MailboxState loaded from either gives the same messages."""
    acct = store.run(store.store.add_account("alice", "{}", ["alice@example.test"]))
    box = store.run(store.store.get_mailbox(acct.id, "INBOX")).id
    tz = timezone(timedelta(hours=-5, minutes=-30))
    for i in range(5):
        w = store.store.new_blob()
        w.write(b"Subject: %d\r\n\r\n" % i + b"x" * i)
        store.run(store.store.append(box, w, frozenset({"\\Seen"} if i % 2 else {"$A", "\\Flagged"}),
                                     datetime(2024, 3, 1 + i, 12, 0, tzinfo=tz)))
    store.deliver_bytes(b"Subject: d\r\n\r\ny\r\n", [Delivery(acct.id)])
    listing = store.run(store.store.list_messages(box))
    cols = store.run(store.store.message_columns(box))
    assert list(cols.uids) == [m.uid for m in listing]
    assert cols.blobs_packed is not None and len(cols.blobs_packed) == 16 * len(listing)
    assert len(cols.flag_sets) == 3
    a, b = MailboxState(box), MailboxState(box)
    a.load(listing)
    b.load_columns(cols)
    assert [a.info(u) for u in a.uids] == [b.info(u) for u in b.uids] == listing
    assert a.modseq == b.modseq
