"""FETCH of attributes only (``UID FETCH 1:* (UID FLAGS)``, a client's re-sync) reads the
shared state's columns; its answers are those of the general FETCH path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mxd.imap import fetch
from tests.imap.helpers import MSG1, MSG2, Conn, make_store

COMMANDS = [
    "UID FETCH 1:* (UID FLAGS)",
    "FETCH 1:* (FLAGS RFC822.SIZE INTERNALDATE)",
    "UID FETCH 2:4 (FLAGS MODSEQ)",
    "FETCH 2,4 FAST",
]


def _session() -> Conn:
    store, acc = make_store()
    when = datetime(2024, 2, 1, 10, 0, tzinfo=UTC)
    for i in range(5):
        store.put(acc, "INBOX", MSG1 if i % 2 else MSG2,
                  flags=["\\Seen", "$Label1"] if i % 2 else [], when=when)
    c = Conn(store)
    c.factory.recent.created(store._find(acc.id, "INBOX").id)  # all five are \Recent
    c.login()
    assert b"* 5 RECENT" in c.select()
    # Another session's change and an expunge this one has not been told of yet.
    other = Conn(store, factory=c.factory)
    other.login()
    other.select()
    other.cmd("O1 STORE 3 +FLAGS (\\Flagged \\Deleted)")
    other.cmd("O2 EXPUNGE")
    return c


@pytest.mark.parametrize("command", COMMANDS)
def test_meta_fetch_matches_the_general_path(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same octets with and without the columns path, \\Recent and ghosts included."""
    fast = _session().cmd("F " + command)
    monkeypatch.setattr(fetch, "_META", frozenset())
    slow = _session().cmd("F " + command)
    assert b"F OK" in fast
    assert fast == slow
