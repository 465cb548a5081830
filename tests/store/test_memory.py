"""MemoryStore's own test hooks (the shared semantics are in test_contract.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from mxd.store.interfaces import Delivery, MessageProps, NoSuchMailbox, StoreError
from mxd.store.testing import MemoryStore


def _now(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def _deliver(store: MemoryStore, account_id: int, mailboxes: list[str]) -> Any:
    blob = store.new_blob()
    blob.write(b"Subject: x\r\n\r\nbody\r\n")
    return _now(store.deliver(blob, [Delivery(account_id, m) for m in mailboxes], MessageProps()))


def test_failed_write_rolls_back_by_default() -> None:
    """A write that fails half-way changes nothing (as a transaction)."""
    store = MemoryStore()
    acct = _now(store.add_account("alice", ""))
    failure = _deliver(store, acct.id, ["INBOX", "Nope"])
    assert failure.check(NoSuchMailbox)
    assert _now(store.get_mailbox(acct.id, "INBOX")).exists == 0


def test_rollback_off_skips_the_snapshot_and_keeps_partial_changes() -> None:
    """``rollback = False`` (for bulk fills) still stores and notifies, but a failed write
    keeps what it did before failing."""
    store = MemoryStore()
    acct = _now(store.add_account("alice", ""))
    store.rollback = False
    inbox = _now(store.get_mailbox(acct.id, "INBOX"))
    seen: list[Any] = []
    store.subscribe(inbox.id, seen.append)
    assert _deliver(store, acct.id, ["INBOX"]) == [1]
    assert [c.kind for c in seen] == ["exists"]
    failure = _deliver(store, acct.id, ["INBOX", "Nope"])
    assert failure.check(NoSuchMailbox)
    assert _now(store.get_mailbox(acct.id, "INBOX")).exists == 2


def test_fail_next_fails_one_write() -> None:
    """``fail_next`` fails the next write only, with a StoreError."""
    store = MemoryStore()
    store.fail_next = True
    assert _now(store.add_account("alice", "")).check(StoreError)
    assert _now(store.add_account("alice", "")).name == "alice"
