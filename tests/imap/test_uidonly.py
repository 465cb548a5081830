"""UIDONLY (RFC 9586) on a scripted session: ENABLE, sequence numbers refused with
BAD [UIDREQUIRED], UIDFETCH responses, VANISHED instead of EXPUNGE."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.imap.helpers import MSG1, MSG2, Conn, make_store


def _session(n: int = 3) -> tuple[Conn, Any, Any]:
    store, acc = make_store()
    box = next(b for b in store.mailboxes.values() if b.name == "INBOX")
    box.uidnext = 25996  # the UIDs of the RFC's examples
    store.put(acc, "INBOX", MSG1, ["\\Flagged", "\\Answered"])
    store.put(acc, "INBOX", MSG2, ["\\Seen", "\\Deleted"])
    for _ in range(n - 2):
        store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    assert c.cmd("e ENABLE UIDONLY") == b"* ENABLED UIDONLY\r\ne OK ENABLE completed\r\n"
    c.select()
    return c, store, acc


def test_capability_advertised_after_login() -> None:
    store, _ = make_store()
    c = Conn(store)
    assert b"UIDONLY" not in c.greeting
    assert b" UIDONLY" in c.login()


def test_select_names_no_sequence_number() -> None:
    """SELECT gives no OK [UNSEEN seq] (a message number) with UIDONLY."""
    store, acc = make_store()
    store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    assert b"[UNSEEN 1]" in c.cmd("s SELECT INBOX")
    c.cmd("e ENABLE UIDONLY")
    r = c.cmd("t SELECT INBOX")
    assert b"UNSEEN" not in r and b"* 1 EXISTS" in r, r


def test_uid_fetch_answers_uidfetch() -> None:
    """RFC 9586 §3.3's example: ``* 25996 UIDFETCH (FLAGS (\\Flagged \\Answered))``."""
    c, _, _ = _session()
    assert c.cmd("5 UID FETCH 25996:25997 (FLAGS)") == (
        b"* 25996 UIDFETCH (FLAGS (\\Answered \\Flagged))\r\n"
        b"* 25997 UIDFETCH (FLAGS (\\Deleted \\Seen))\r\n5 OK UID FETCH completed\r\n")


@pytest.mark.parametrize("command", [
    "FETCH 1 (FLAGS)", "FETCH 1:* (UID)", "STORE 1 +FLAGS (\\Seen)", "COPY 1 Trash",
    "MOVE 1 Trash", "SEARCH ALL", "SORT (DATE) UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
    "UID SEARCH 1:2", "UID SEARCH OR 2 SEEN", "UID SORT (DATE) UTF-8 NOT 1:*",
    "REPLACE 1 INBOX {3+}\r\nabc",
])
def test_sequence_numbers_are_refused(command: str) -> None:
    """RFC 9586 §3: BAD with the UIDREQUIRED response code, and nothing is done."""
    c, store, _ = _session()
    r = c.cmd("x " + command)
    assert re.match(rb"x BAD \[UIDREQUIRED\] ", r), r
    box = next(b for b in store.mailboxes.values() if b.name == "INBOX")
    assert len(box.messages) == 3 and box.messages[25996].info.flags == \
        frozenset({"\\Flagged", "\\Answered"})


def test_uid_commands_work_and_saved_result_is_fine() -> None:
    c, _, _ = _session()
    r = c.cmd("s UID SEARCH RETURN (SAVE) SEEN")
    assert r.endswith(b"s OK UID SEARCH completed\r\n"), r
    r = c.cmd("f UID FETCH $ (FLAGS)")
    assert r.startswith(b"* 25997 UIDFETCH (FLAGS (\\Deleted \\Seen))\r\n"), r
    r = c.cmd("t UID STORE 25998 +FLAGS (\\Seen)")
    assert re.fullmatch(rb"\* 25998 UIDFETCH \(UID 25998 FLAGS \([^)]*\\Seen[^)]*\)\)\r\n"
                        rb"t OK STORE completed\r\n", r), r


def test_expunge_is_reported_with_vanished() -> None:
    """RFC 9586 §3.2: VANISHED, not EXPUNGE (which carries a sequence number)."""
    c, _, _ = _session()
    assert c.cmd("x EXPUNGE") == b"* VANISHED 25997\r\nx OK EXPUNGE completed\r\n"
    assert c.cmd("y UID EXPUNGE 25996") == b"y OK UID EXPUNGE completed\r\n"


def test_changes_by_another_session_come_as_uidfetch_and_vanished() -> None:
    c, store, acc = _session()
    other = Conn(store, clock=c.clock, factory=c.factory)
    other.login()
    other.select()
    other.cmd("s UID STORE 25998 +FLAGS (\\Seen)")
    other.cmd("d UID STORE 25996 +FLAGS (\\Deleted)")
    other.cmd("x EXPUNGE")
    r = c.cmd("n NOOP")
    assert re.search(rb"^\* 25998 UIDFETCH \(FLAGS \([^)]*\\Seen[^)]*\)\)\r\n", r, re.M), r
    assert b"* VANISHED 25996:25997\r\n" in r, r
    assert not re.search(rb"^\* \d+ (FETCH|EXPUNGE)", r, re.M), r
