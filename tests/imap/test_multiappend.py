"""MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and REPLACE (RFC 8508) on a scripted
session: the RFC examples, atomicity and the limits checked before octets are read."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import succeed

from mxd.imap.appendsyntax import (
    CatText,
    CatURL,
    MultiAppendArgs,
    ReplaceArgs,
    URLError,
    literal_role,
    parse_url,
)
from mxd.imap.errors import ParseError
from mxd.imap.parser import parse_bytes
from mxd.imap.server import IMAPServerSettings
from mxd.imap.values import AppendArgs, Section
from tests.imap.helpers import Conn, make_store

M1 = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.example>\r\n"
      b"Subject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu.example\r\n"
      b"Message-Id: <B27397-0100000@Blurdybloop.example>\r\nMIME-Version: 1.0\r\n"
      b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n")
M2 = (b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\nFrom: Joe Mooch <mooch@OWaTaGu.siam.EDU.example>\r\n"
      b"Subject: Re: afternoon meeting\r\nTo: foobar@blurdybloop.example\r\n"
      b"Message-Id: <a0434793874930@OWaTaGu.siam.EDU.example>\r\nMIME-Version: 1.0\r\n"
      b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n3:30 is fine with me.\r\n")


def _messages(store: object, box: str = "INBOX") -> list[bytes]:
    b = next(b for b in store.mailboxes.values() if b.name == box)  # type: ignore[attr-defined]
    return [store.bodies[m.info.blob_id] for _, m in sorted(b.messages.items())]  # type: ignore[attr-defined]


# -- MULTIAPPEND ---------------------------------------------------------------------------------

def test_rfc3502_example() -> None:
    """RFC 3502 §6.3.11's example: two messages with their own flags and dates, each
    literal synchronising; APPENDUID (RFC 4315) gives both UIDs."""
    store, _ = make_store()
    store.put(store.add_account("bob").result, "INBOX", M1)  # another account's mail
    c = Conn(store)
    c.login()
    c.cmd("c CREATE saved-messages")
    assert c.send(b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(M1)) == \
        b"+ Ready for literal data\r\n"
    assert c.send(M1 + b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n' % len(M2)) == \
        b"+ Ready for literal data\r\n"
    r = c.send(M2 + b"\r\n")
    uidvalidity = next(b.uidvalidity for b in store.mailboxes.values() if b.name == "saved-messages")
    assert r == b"A003 OK [APPENDUID %d 1:2] APPEND completed\r\n" % uidvalidity
    assert _messages(store, "saved-messages") == [M1, M2]
    box = next(b for b in store.mailboxes.values() if b.name == "saved-messages")
    assert box.messages[2].info.internal_date.isoformat() == "1994-02-07T22:43:04-08:00"
    assert box.messages[1].info.flags == frozenset({"\\Seen"})


def test_a_failing_message_appends_none() -> None:
    """RFC 3502 §6.3.11: "If the append is unsuccessful for any reason ... no partial
    appending is permitted": an empty third message fails the whole command."""
    store, _ = make_store()
    c = Conn(store)
    c.login()
    r = c.send(b"a APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {0+}\r\n\r\n" % (len(M1), M1, len(M2), M2))
    assert r.startswith(b"a NO "), r
    assert _messages(store) == []


def test_unknown_flag_on_a_later_message_appends_none() -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    r = c.send(b"a APPEND INBOX {%d+}\r\n%s (\\Bogus) {%d+}\r\n%s\r\n" % (len(M1), M1, len(M2), M2))
    assert r.startswith(b"a BAD "), r
    assert _messages(store) == []


def test_total_over_quota_refused_before_the_second_message() -> None:
    """The command's total is counted against the quota as each literal is announced."""
    store, _ = make_store()
    store.get_usage = lambda account_id: succeed((0, 1000))  # type: ignore[method-assign]
    c = Conn(store)
    c.login()
    msg = b"Subject: x\r\n\r\n" + b"x" * 586  # 600 octets
    assert c.send(b"a APPEND INBOX {600}\r\n") == b"+ Ready for literal data\r\n"
    r = c.send(msg + b" {600}\r\n")
    assert r.startswith(b"a NO [OVERQUOTA]"), r
    assert _messages(store) == []


def test_many_small_messages_exceed_no_command_limit() -> None:
    """In-memory literals count against max_command; beyond half of it they are
    spooled, so a MULTIAPPEND of many small messages is not "command too long"."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(max_command=4096))
    c.login()
    msg = b"Subject: x\r\n\r\n" + b"y" * 486  # 500 octets
    data = b"a APPEND INBOX" + b"".join(b" {500+}\r\n" + msg for _ in range(40)) + b"\r\n"
    r = c.send(data)
    assert r.startswith(b"a OK [APPENDUID ") and b" 1:40]" in r, r
    assert len(_messages(store)) == 40


def test_message_count_limited() -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    data = b"a APPEND INBOX" + b" {1+}\r\nx" * 1000 + b" {1}\r\n"
    r = c.send(data)
    assert r.startswith(b"a NO [LIMIT]"), r
    assert _messages(store) == []


# -- CATENATE --------------------------------------------------------------------------------

DRAFT = (b"Subject: draft\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"------------030308070208000400050907\"\r\n\r\n"
         b"--------------030308070208000400050907\r\nContent-Type: text/plain\r\n\r\nFirst part.\r\n"
         b"--------------030308070208000400050907--\r\n")
ATTACHED = b"Subject: forwarded\r\n\r\nA message to attach.\r\n"


def test_rfc4469_appendix_a() -> None:
    """RFC 4469 Appendix A: a new draft from the header of UID 20, its first part (with
    its MIME header) and the whole of UID 30, between TEXT literals."""
    store, acc = make_store()
    drafts = next(b for b in store.mailboxes.values() if b.name == "Drafts")
    drafts.uidnext = 20
    store.put(acc, "Drafts", DRAFT)
    drafts.uidnext = 30
    store.put(acc, "Drafts", ATTACHED)
    v = drafts.uidvalidity
    c = Conn(store)
    c.login()
    sep = b"\r\n--------------030308070208000400050907\r\n"
    assert len(sep) == 42
    end = b"\r\n--------------030308070208000400050907--\r\n"
    assert len(end) == 44
    r = c.send(b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE '
               b'(URL "/Drafts;UIDVALIDITY=%d/;UID=20/;section=HEADER" TEXT {42}\r\n' % v)
    assert r == b"+ Ready for literal data\r\n"
    r = c.send(sep + b' URL "/Drafts;UIDVALIDITY=%d/;UID=20/;section=1.MIME" '
               b'URL "/Drafts;UIDVALIDITY=%d/;UID=20/;section=1" TEXT {42}\r\n' % (v, v))
    assert r == b"+ Ready for literal data\r\n"
    r = c.send(sep + b' URL "/Drafts;UIDVALIDITY=%d/;UID=30" TEXT {44}\r\n' % v)
    assert r == b"+ Ready for literal data\r\n"
    r = c.send(end + b")\r\n")
    assert r == b"A003 OK [APPENDUID %d 31] APPEND completed\r\n" % v
    header = DRAFT[:DRAFT.index(b"\r\n\r\n") + 4]
    part1_mime = b"Content-Type: text/plain\r\n\r\n"
    assert _messages(store, "Drafts")[-1] == (header + sep + part1_mime + b"First part." + sep
                                              + ATTACHED + end)
    m = drafts.messages[31].info
    assert m.flags == frozenset({"\\Seen", "\\Draft", "$MDNSent"})


def test_bad_url_names_the_url_and_appends_nothing() -> None:
    """RFC 4469 §5 (with erratum 4046: the URL bare in the code)."""
    store, acc = make_store()
    store.put(acc, "INBOX", ATTACHED)
    c = Conn(store)
    c.login()
    r = c.cmd('a APPEND INBOX CATENATE (TEXT {3+}\r\nabc URL "/INBOX/;UID=99/;section=1.5.9")')
    assert re.match(rb"a NO \[BADURL /INBOX/;UID=99/;section=1\.5\.9\] ", r), r
    assert len(_messages(store)) == 1


def test_url_to_another_account_or_with_urlauth_is_bad() -> None:
    store, acc = make_store()
    store.put(acc, "INBOX", ATTACHED)
    c = Conn(store)
    c.login()
    for url in ("imap://bob@mx.example.test/INBOX/;UID=1",
                "imap://alice@mx.example.test/INBOX/;UID=1;URLAUTH=anonymous:internal:0123"):
        r = c.cmd(f'a APPEND INBOX CATENATE (URL "{url}")')
        assert r.startswith(b"a NO [BADURL "), r
    r = c.cmd('b APPEND INBOX CATENATE (URL "imap://alice@mx.example.test/INBOX/;UID=1")')
    assert r.startswith(b"b OK [APPENDUID "), r
    assert _messages(store) == [ATTACHED, ATTACHED]


def test_catenated_message_over_appendlimit_is_toobig() -> None:
    store, acc = make_store()
    store.put(acc, "INBOX", b"Subject: big\r\n\r\n" + b"z" * 900)
    c = Conn(store, settings=IMAPServerSettings(append_limit=1500))
    c.login()
    r = c.cmd('a APPEND INBOX CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")')
    assert r.startswith(b"a NO [TOOBIG]"), r
    # A TEXT part over the limit is refused when announced, before its octets.
    r = c.cmd("b APPEND INBOX CATENATE (TEXT {2000}")
    assert r.startswith(b"b NO [TOOBIG]"), r
    assert len(_messages(store)) == 1


def test_relative_url_uses_the_selected_mailbox_and_partial() -> None:
    store, acc = make_store()
    store.put(acc, "INBOX", ATTACHED)
    c = Conn(store)
    c.login()
    c.select()
    r = c.cmd('a APPEND Drafts CATENATE (URL ";UID=1/;SECTION=TEXT/;PARTIAL=2.7")')
    assert r.startswith(b"a OK [APPENDUID "), r
    assert _messages(store, "Drafts") == [b"message"]


def test_large_text_parts_are_spooled_and_kept_in_order() -> None:
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(append_memory=64))
    c.login()
    a, b = b"Subject: spool\r\n\r\n" + b"a" * 200, b"b" * 300
    r = c.send(b"a APPEND INBOX CATENATE (TEXT {%d+}\r\n%s TEXT {%d+}\r\n%s)\r\n"
               % (len(a), a, len(b), b))
    assert r.startswith(b"a OK"), r
    assert _messages(store) == [a + b]


# -- REPLACE ---------------------------------------------------------------------------------

def test_rfc8508_replace_example() -> None:
    """RFC 8508 §3.2: the APPENDUID of the new message in an untagged OK, its EXISTS,
    then the EXPUNGE of the old one."""
    store, acc = make_store()
    for i in range(4):
        store.put(acc, "Drafts", b"Subject: draft %d\r\n\r\nv1\r\n" % i)
    v = next(b.uidvalidity for b in store.mailboxes.values() if b.name == "Drafts")
    c = Conn(store)
    c.login()
    c.select("Drafts")
    new = b"Subject: draft 3\r\n\r\nv2\r\n"
    assert c.send(b"A003 REPLACE 4 Drafts (\\Seen \\Draft) {%d}\r\n" % len(new)) == \
        b"+ Ready for literal data\r\n"
    r = c.send(new + b"\r\n")
    assert r == (b"* OK [APPENDUID %d 5] Replacement Message ready\r\n* 5 EXISTS\r\n"
                 b"* 1 RECENT\r\n* 4 EXPUNGE\r\nA003 OK REPLACE completed\r\n" % v)
    assert _messages(store, "Drafts")[-1] == new


def test_uid_replace_into_another_mailbox_with_qresync() -> None:
    store, acc = make_store()
    uid = store.put(acc, "INBOX", b"Subject: v1\r\n\r\nx\r\n")
    c = Conn(store)
    c.login()
    c.cmd("e ENABLE QRESYNC")
    c.select()
    r = c.cmd(b"a UID REPLACE %d Drafts {15+}\r\nSubject: v2\r\n\r\n" % uid)
    assert re.match(rb"\* OK \[APPENDUID \d+ 1\] Replacement Message ready\r\n"
                    rb"\* VANISHED 1\r\na OK UID REPLACE completed\r\n", r), r
    assert _messages(store) == []
    assert _messages(store, "Drafts") == [b"Subject: v2\r\n\r\n"]


def test_replace_failures_keep_the_original() -> None:
    store, acc = make_store()
    store.put(acc, "INBOX", b"Subject: v1\r\n\r\nx\r\n")
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd(b"a UID REPLACE 7 INBOX {3+}\r\nabc").startswith(b"a NO [NONEXISTENT]")
    assert c.cmd(b"b REPLACE 2 INBOX {3+}\r\nabc").startswith(b"b BAD")
    assert c.cmd(b"c REPLACE 1 Nowhere {3+}\r\nabc").startswith(b"c NO [TRYCREATE]")
    assert c.cmd(b'd REPLACE 1 INBOX CATENATE (URL "/INBOX/;UID=9")').startswith(b"d NO [BADURL")
    c.cmd("x EXAMINE INBOX")
    assert c.cmd(b"e REPLACE 1 INBOX {3+}\r\nabc").startswith(b"e NO [READ-ONLY]")
    assert _messages(store) == [b"Subject: v1\r\n\r\nx\r\n"]


def test_replace_needs_a_selected_mailbox() -> None:
    """Refused by state, and the body it streamed to a file is dropped (before: kept)."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(append_memory=10))
    c.login()
    assert c.cmd(b"a REPLACE 1 INBOX {30+}\r\nSubject: x\r\n\r\n0123456789abcdef").startswith(b"a BAD")
    assert store.aborted_blobs == 1


def test_capabilities_after_login() -> None:
    store, _ = make_store()
    c = Conn(store)
    r = c.login()
    for cap in (b"MULTIAPPEND", b"CATENATE", b"REPLACE"):
        assert b" " + cap + b" " in r or b" " + cap + b"]" in r, r


# -- parsers ---------------------------------------------------------------------------------

def test_parse_forms() -> None:
    one = parse_bytes(b"a APPEND INBOX {1}\r\nx")
    assert isinstance(one.args, AppendArgs)
    two = parse_bytes(b'a APPEND INBOX (\\Seen) {1}\r\nx "07-Feb-1994 22:43:04 -0800" {1}\r\ny')
    assert isinstance(two.args, MultiAppendArgs) and len(two.args.messages) == 2
    assert two.args.messages[1].flags == () and two.args.messages[1].date is not None
    cat = parse_bytes(b'a APPEND INBOX CATENATE (URL "/INBOX/;UID=1" TEXT {1}\r\nx)')
    assert isinstance(cat.args, MultiAppendArgs)
    parts = cat.args.messages[0].data
    assert isinstance(parts, tuple) and isinstance(parts[0], CatURL) and isinstance(parts[1], CatText)
    rep = parse_bytes(b"a UID REPLACE 17 Drafts (\\Draft) {1}\r\nx")
    assert rep.name == "UID REPLACE" and isinstance(rep.args, ReplaceArgs) and rep.args.target == 17
    for bad in (b"a APPEND INBOX", b"a APPEND INBOX {1}\r\nx junk", b"a APPEND INBOX CATENATE ()",
                b"a APPEND INBOX CATENATE (TEXT x)", b"a REPLACE 0 INBOX {1}\r\nx",
                b"a APPEND INBOX CATENATE (URL)"):
        try:
            parse_bytes(bad)
        except ParseError:
            continue
        raise AssertionError(bad)


def test_parse_url_forms() -> None:
    u = parse_url("imap://alice@h.example/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME", "alice")
    assert (u.mailbox, u.uidvalidity, u.uid, u.section) == ("Drafts", 385759045, 20, Section((1,), "MIME"))
    u = parse_url("/Sent%20Items/;UID=3/;PARTIAL=0.100", "alice")
    assert (u.mailbox, u.uid, u.partial, u.section) == ("Sent Items", 3, (0, 100), None)
    assert parse_url(";UID=5", "alice").mailbox is None
    for bad in ("imap://bob@h/INBOX/;UID=1", "/INBOX/;UID=0", "/INBOX", "http://x/",
                "/INBOX/;UID=1/;SECTION=1.x", "/INBOX/;UID=1;URLAUTH=x:y:z"):
        try:
            parse_url(bad, "alice")
        except URLError:
            continue
        raise AssertionError(bad)


@given(st.text(max_size=80))
def test_parse_url_raises_only_urlerror(url: str) -> None:
    try:
        parse_url(url, "alice")
    except URLError:
        pass


_pieces = st.lists(st.one_of(
    st.sampled_from([b" ", b"(", b")", b"CATENATE (", b"TEXT ", b"URL ", b'"/INBOX/;UID=1"',
                     b"(\\Seen) ", b"UTF8 (", b"{3}\r\nabc", b"{0}\r\n", b"~{2}\r\nxy"]),
    st.binary(max_size=6)), max_size=12)


@given(_pieces)
def test_append_parser_raises_only_parseerror(pieces: list[bytes]) -> None:
    """Whatever follows the mailbox, the grammar of RFC 3502/4469 raises ParseError or
    parses; the literal roles the session counts sizes with never fail."""
    data = b"a APPEND INBOX " + b"".join(pieces)
    try:
        parse_bytes(data)
    except ParseError:
        pass
    from mxd.imap.framer import Literal
    parts: list[object] = [b"a APPEND INBOX "]
    for p in pieces:
        parts += [p, Literal(b"x")]
    role, index = literal_role(tuple(parts))  # type: ignore[arg-type]
    assert role in ("message", "text") and index >= 0


@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8))
def test_multiappend_roundtrip(bodies: list[bytes]) -> None:
    data = b"a APPEND INBOX" + b"".join(b" {%d}\r\n%s" % (len(b), b) for b in bodies)
    cmd = parse_bytes(data + b"\r\n")
    got = [cmd.args.message.data] if isinstance(cmd.args, AppendArgs) else \
        [m.data.data for m in cmd.args.messages]
    assert got == bodies


def test_literal_counter_looks_at_each_part_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MULTIAPPEND of 1000 messages: the sizes are tallied in 1000 steps, not a
    million (before: every announcement re-read the whole command)."""
    from mxd.imap.appendsyntax import LiteralCounter
    from mxd.imap.framer import Literal

    steps = 0
    real = LiteralCounter._step

    def counting(self: LiteralCounter, p: object) -> None:
        nonlocal steps
        steps += 1
        real(self, p)  # type: ignore[arg-type]

    monkeypatch.setattr(LiteralCounter, "_step", counting)
    counter = LiteralCounter()
    parts: list[object] = [b"a APPEND INBOX "]
    for i in range(1000):
        t = counter.tally(tuple(parts))  # type: ignore[arg-type]
        assert (t.role, t.index, t.total_octets) == ("message", i, 3 * i)
        parts += [Literal(b"abc"), b" "]
    assert steps == len(parts) - 2
    other = counter.tally((b"b APPEND INBOX ",))  # a new command starts afresh
    assert (other.index, other.total_octets) == (0, 0)


def test_whole_message_urls_are_copied_in_chunks_and_files_closed() -> None:
    """A URL naming a whole message is copied from its file a chunk at a time; the file
    is closed also when the result turns out TOOBIG halfway."""
    store, acc = make_store()
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * 40  # 10,256 octets
    store.put(acc, "INBOX", big)
    opened: list[Any] = []
    real_open = store.open_blob

    def open_blob(blob_id: str) -> Any:
        f = real_open(blob_id)
        opened.append(f)
        return f

    store.open_blob = open_blob  # type: ignore[method-assign]
    c = Conn(store, settings=IMAPServerSettings(chunk_size=1000, append_limit=15_000))
    c.login()
    r = c.cmd('a APPEND INBOX CATENATE (URL "/INBOX/;UID=1/;PARTIAL=16.10000")')
    assert r.startswith(b"a OK"), r
    assert _messages(store)[-1] == big[16:10016]
    r = c.cmd('b APPEND INBOX CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")')
    assert r.startswith(b"b NO [TOOBIG]"), r
    assert len(opened) == 3 and all(f.closed for f in opened)
