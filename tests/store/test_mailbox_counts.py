"""get_mailbox with and without the message counts (SELECT and APPEND skip the scans of
a large mailbox's messages; STATUS needs them)."""

from __future__ import annotations

from mxd.store.interfaces import Delivery
from tests.store.helpers import StoreHarness


def test_counts_only_when_asked(store: StoreHarness) -> None:
    """counts=True gives exists/unseen/size; counts=False the same identity with 0s."""
    acct = store.run(store.store.add_account("alice", "{}", ["alice@example.test"]))
    for body in (b"Subject: a\r\n\r\nx\r\n", b"Subject: b\r\n\r\nyy\r\n"):
        store.deliver_bytes(body, [Delivery(acct.id)])
    full = store.run(store.store.get_mailbox(acct.id, "INBOX"))
    light = store.run(store.store.get_mailbox(acct.id, "INBOX", counts=False))
    assert (full.exists, full.unseen, full.size) == (2, 2, 35)
    assert (light.exists, light.unseen, light.size) == (0, 0, 0)
    assert (light.id, light.uidvalidity, light.uidnext, light.highestmodseq) == \
        (full.id, full.uidvalidity, full.uidnext, full.highestmodseq)
