"""FETCH of a message that another process expunged and whose body file is gone: the
session learns of the expunge only when the store catches up (mxd.store.watch), and
FETCH asks for that only when a body cannot be read (doc/processes.md)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from mxd.store.interfaces import MailboxChange
from tests.imap.fakes import FakeStore
from tests.imap.helpers import Conn


class TwoProcessStore(FakeStore):
    """While ``elsewhere`` is set, changes are held back from the listeners as another
    process's commits are, until ``catch_up`` delivers them."""

    def __init__(self) -> None:
        super().__init__()
        self.elsewhere = False
        self.held: list[tuple[Any, MailboxChange]] = []
        self.catch_ups = 0

    def subscribe(self, mailbox_id: int, listener: Any) -> Any:
        def maybe_hold(ch: MailboxChange) -> None:
            if self.elsewhere:
                self.held.append((listener, ch))
            else:
                listener(ch)

        return super().subscribe(mailbox_id, maybe_hold)

    def catch_up(self) -> Deferred[None]:
        self.catch_ups += 1
        held, self.held = self.held, []
        for listener, ch in held:
            listener(ch)
        return succeed(None)


def _setup() -> tuple[TwoProcessStore, Conn]:
    store = TwoProcessStore()
    acc = store.add_account("alice").result
    for i in range(3):
        store.put(acc, "INBOX", b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i))
    c = Conn(store)
    c.login()
    c.select()
    return store, c


def test_fetch_of_readable_messages_does_not_catch_up() -> None:
    """FETCH BODY[] of messages whose files are there asks the store for nothing more
    (a sync client's one-message FETCHes cost no round trip to the store's thread)."""
    store, c = _setup()
    before = store.catch_ups
    r = c.cmd("f UID FETCH 1:3 (UID BODY.PEEK[])")
    assert r.count(b"body ") == 3 and r.endswith(b"f OK UID FETCH completed\r\n"), r
    assert store.catch_ups == before


def test_body_removed_by_another_process_is_nil_with_expungeissued() -> None:
    """Another process expunged message 2 and removed its file; this session has not
    heard yet.  FETCH catches up when the read fails, then answers BODY[] NIL for it and
    OK [EXPUNGEISSUED] (as Dovecot), the others in full, and no error is counted."""
    store, c = _setup()
    view = c.proto.view
    assert view is not None
    box_id = view.info.id
    blob = store._box(box_id).messages[2].info.blob_id
    store.elsewhere = True
    store.store_flags(box_id, [2], frozenset({"\\Deleted"}), "add")
    store.expunge(box_id, [2])
    store.blobs.pop(blob, None)
    assert store.held, "the expunge is held back as another process's commit"
    before = store.catch_ups
    r = c.cmd("f UID FETCH 1:3 (UID BODY.PEEK[])")
    assert store.catch_ups == before + 1
    assert b"* 2 FETCH (UID 2 BODY[] NIL)\r\n" in r, r
    assert r.count(b"body ") == 2, r
    assert r.endswith(b"f OK [EXPUNGEISSUED] UID FETCH completed; some messages were "
                      b"expunged by another session\r\n"), r
