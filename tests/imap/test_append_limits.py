"""APPEND cannot make the server write more than one message within the limits:
a literal that cannot belong to the command is refused at its announcement, and the
message's size is checked against APPENDLIMIT (RFC 7889) and the quota (RFC 9208)
before any octet is accepted."""

from __future__ import annotations

import time

import pytest
from twisted.internet.defer import succeed

from mxd.imap.appendsyntax import literal_role
from mxd.imap.framer import BlobLiteral, Literal
from mxd.imap.server import IMAPServerSettings
from tests.imap.helpers import Conn, make_store


@pytest.mark.parametrize(("parts", "role"), [
    ((b"a APPEND INBOX ",), ("message", 0)),
    ((b"a append ",), ("mailbox", 0)),
    ((b"a UID REPLACE 7 ",), ("mailbox", 0)),
    ((b"a APPEND ", Literal(b"INBOX"), b" (\\Seen) "), ("message", 0)),
    ((b"a APPEND INBOX ", BlobLiteral(None, 5), b" "), ("message", 1)),  # type: ignore[arg-type]
    ((b"a APPEND ", Literal(b"INBOX"), b" ", Literal(b"x"), b" "), ("message", 1)),
    ((b"a APPEND INBOX UTF8 (",), ("message", 0)),
    ((b'a APPEND INBOX CATENATE (URL "/x" TEXT ',), ("text", 0)),
    ((b"a APPEND INBOX CATENATE (TEXT ", Literal(b"x"), b" TEXT "), ("text", 0)),
    ((b"a APPEND INBOX CATENATE (TEXT ", Literal(b"x"), b") CATENATE (TEXT "), ("text", 1)),
    ((b"a APPEND INBOX CATENATE (TEXT ", Literal(b"x"), b") "), ("message", 1)),
])
def test_literal_roles(parts: tuple[object, ...], role: tuple[str, int]) -> None:
    assert literal_role(parts) == role  # type: ignore[arg-type]


def test_second_message_over_appendlimit_refused_before_its_data() -> None:
    """With MULTIAPPEND (RFC 3502) a second message is welcome, but one over APPENDLIMIT
    is refused at its announcement: before, each extra {40 MB+} literal was written to
    disk before the command failed."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(append_memory=100, append_limit=10_000))
    c.login()
    body = b"Subject: one\r\n\r\n" + b"x" * 500
    # Synchronising: the first message is taken, the second is refused with no "+".
    assert c.send(b"a APPEND INBOX {%d}\r\n" % len(body)) == b"+ Ready for literal data\r\n"
    r = c.send(body + b" {41943040}\r\n")
    assert r.startswith(b"a NO [TOOBIG]"), r
    assert store.aborted_blobs == 1  # the first message's file is dropped too
    assert not any(b.messages for b in store.mailboxes.values())
    assert c.cmd("b NOOP").startswith(b"b OK")  # the session goes on


def test_second_nonsync_literal_over_the_limit_closes_the_connection() -> None:
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(append_memory=100, append_limit=10_000))
    c.login()
    body = b"Subject: one\r\n\r\n" + b"x" * 500
    started = time.process_time()
    r = c.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b" {41943040+}\r\n"
               + b"y" * 65536)
    assert time.process_time() - started < 0.1  # refused at once, none of it stored
    assert r.startswith(b"* BYE") and b"TOOBIG" in r, r
    assert c.tr.disconnecting
    assert not any(b.messages for b in store.mailboxes.values())
    assert store.aborted_blobs == 1


def test_mailbox_name_as_literal_then_message() -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.send(b"a APPEND {5+}\r\nINBOX {5+}\r\nhello\r\n").startswith(b"a OK [APPENDUID")


def test_append_over_quota_refused_before_the_data() -> None:
    store, _ = make_store()
    usage = [(900, 1000)]
    store.get_usage = lambda account_id: succeed(usage[0])  # type: ignore[attr-defined]
    c = Conn(store)
    c.login()
    r = c.send(b"a APPEND INBOX {200}\r\n")
    assert r.startswith(b"a NO [OVERQUOTA]"), r
    r = c.send(b"b APPEND INBOX {200+}\r\n")
    assert r.startswith(b"* BYE"), r  # the octets are on their way: no way to resynchronise
    assert not any(b.messages for b in store.mailboxes.values())


def test_quota_check_follows_usage() -> None:
    store, _ = make_store()
    usage = [(0, 1000)]
    store.get_usage = lambda account_id: succeed(usage[0])  # type: ignore[attr-defined]
    c = Conn(store)
    c.login()
    msg = b"Subject: x\r\n\r\n" + b"x" * 586  # 600 octets
    assert c.send(b"a APPEND INBOX {600+}\r\n" + msg + b"\r\n").startswith(b"a OK")
    # The session counts what it appended: a second 600 would exceed 1000.
    assert c.send(b"b APPEND INBOX {600}\r\n").startswith(b"b NO [OVERQUOTA]")
    usage[0] = (0, 1000)  # another session expunged everything
    c.clock.advance(0)  # the refusal asked for a fresh reading
    assert c.send(b"c APPEND INBOX {600}\r\n") == b"+ Ready for literal data\r\n"
