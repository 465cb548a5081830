"""RFC-exact answers where mxd differed from the RFCs (and from Dovecot 2.3)."""

from __future__ import annotations

import re

import pytest

from mxd.imap.addresses import Address, GroupEnd, GroupStart, parse_address_list
from mxd.imap.message import HeaderList, ParsedMessage, envelope, parse_headers
from tests.imap.helpers import Conn, make_store

FOLDED = (b'Content-Type: multipart/mixed; boundary="foo\r\n bar"\r\n\r\n'
          b"--foo bar\r\nContent-Type: text/plain\r\n\r\nA\r\n"
          b"--foo bar\r\nContent-Type: text/plain\r\n\r\nB\r\n--foo bar--\r\n")
TOP_RFC822 = (b"Content-Type: message/rfc822\r\n\r\n"
              b"Content-Type: multipart/mixed; boundary=X\r\n\r\n"
              b"--X\r\n\r\nHello world\r\n--X\r\n\r\nsecond\r\n--X--\r\n")
WITH_NUL = (b"Subject: nul\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n"
            b"--X\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--X\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary"
            b"\r\n\r\n\x00\x01\x02\xff\r\n--X--\r\n")


def _conn(*messages: bytes) -> Conn:
    store, acc = make_store()
    for m in messages:
        store.put(acc, "INBOX", m)
    c = Conn(store)
    c.login()
    c.select()
    return c


def test_folded_boundary_parameter_is_unfolded() -> None:
    m = ParsedMessage.parse(FOLDED)
    assert m.root.param("boundary") == "foo bar"
    assert [m.section((1,), ""), m.binary((2,))] == [b"A", b"B"]
    c = _conn(FOLDED)
    r = c.cmd("f FETCH 1 (BODYSTRUCTURE BODY[1] BINARY[2])")
    assert b'("BOUNDARY" "foo bar")' in r, r
    assert b"BODY[1] {1}\r\nA" in r and b"BINARY[2] {1}\r\nB" in r, r


def test_part_numbers_enter_a_top_level_message_rfc822() -> None:
    """RFC 3501 §6.4.5: BODY[1] of a message/rfc822 message is the enclosed message,
    BODY[1.1] the enclosed message's first part."""
    c = _conn(TOP_RFC822)
    r = c.cmd("f FETCH 1 (BODY[1.1] BODY[1.2] BODY[1.HEADER])")
    assert b"BODY[1.1] {11}\r\nHello world" in r, r
    assert b"BODY[1.2] {6}\r\nsecond" in r, r
    assert b"BODY[1.HEADER] {45}\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n" in r, r


def test_nul_never_in_body_sections_and_binary_decodes() -> None:
    c = _conn(WITH_NUL)
    for item in ("BODY[]", "BODY[2]", "RFC822", "BODY[TEXT]", "BODY.PEEK[]<0.1000>"):
        r = c.cmd(f"f FETCH 1 ({item})")
        assert r.endswith(b"f OK FETCH completed\r\n"), r
        assert b"\x00" not in r, (item, r)
    r = c.cmd("f FETCH 1 (BODY[2])")
    assert b"{8}\r\nAAEC/w==" in r, r
    r = c.cmd("f FETCH 1 (BODY[2.MIME])")
    assert b"Content-Transfer-Encoding: base64" in r, r
    r = c.cmd("f FETCH 1 (BINARY[2])")
    assert b"BINARY[2] ~{4}\r\n\x00\x01\x02\xff" in r, r
    r = c.cmd("f FETCH 1 (BINARY.SIZE[2])")
    assert b"BINARY.SIZE[2] 4" in r, r


@pytest.mark.parametrize(("text", "entries"), [
    ("user@domain (Real Name)", [Address("Real Name", None, "user", "domain")]),
    ("<@route:user@domain>", [Address(None, "@route", "user", "domain")]),
    ("<@a.test,@b.test:u@d>", [Address(None, "@a.test,@b.test", "u", "d")]),
    ("<user-from (comment)@ (comment) domain.org>",
     [Address(None, None, "user-from", "domain.org")]),
    ('Team: a@x.test, "B" <b@x.test>;, c@x.test',
     [GroupStart("Team"), Address(None, None, "a", "x.test"), Address("B", None, "b", "x.test"),
      GroupEnd(), Address(None, None, "c", "x.test")]),
    ("Joe Q. Public <john.q.public@example.com>",
     [Address("Joe Q. Public", None, "john.q.public", "example.com")]),
    ('"odd \\" local"@x.test', [Address(None, None, 'odd " local', "x.test")]),
    ("<<@>>,,\"", []),
])
def test_address_lists(text: str, entries: list[object]) -> None:
    assert parse_address_list(text) == entries


def test_envelope_comment_name_and_route() -> None:
    for parse in (HeaderList.parse, parse_headers):
        env = envelope(parse(b"From: user@domain (Real Name)\r\nTo: <@route:u@d>\r\n\r\n"))
        assert env[2].addresses == ([b"Real Name", None, b"user", b"domain"],)  # type: ignore[union-attr]
        assert env[5].addresses == ([None, b"@route", b"u", b"d"],)  # type: ignore[union-attr]
    c = _conn(b"From: user@domain (Real Name)\r\nTo: <@route:u@d>\r\n\r\nx\r\n")
    r = c.cmd("f FETCH 1 ENVELOPE")
    assert b'(("Real Name" NIL "user" "domain"))' in r, r
    assert b'((NIL "@route" "u" "d"))' in r, r


def test_search_from_sees_through_comments() -> None:
    c = _conn(b"From: <user-from (comment)@ (comment) domain.org>\r\n\r\nx\r\n",
              b"From: other@domain.org\r\n\r\ny\r\n")
    assert c.cmd("s SEARCH FROM user-from@domain.org").startswith(b"* SEARCH 1\r\n")
    assert c.cmd("s SEARCH FROM other@domain.org").startswith(b"* SEARCH 2\r\n")
    assert c.cmd("s SEARCH TO nobody@domain.org").startswith(b"* SEARCH\r\n")


def test_search_return_min_max_modseq_is_that_of_the_returned_message() -> None:
    """RFC 7162 §3.1.5."""
    c = _conn(b"Subject: a\r\n\r\n1\r\n", b"Subject: b\r\n\r\n2\r\n", b"Subject: c\r\n\r\n3\r\n")
    c.cmd("s STORE 1 +FLAGS (x)")
    c.cmd("s STORE 3 +FLAGS (y)")
    ms = {int(a): int(b) for a, b in re.findall(
        rb"\* (\d) FETCH \(MODSEQ \((\d+)\)\)", c.cmd("f FETCH 1:3 (MODSEQ)"))}
    assert ms[3] > ms[1] > ms[2]
    r = c.cmd("a SEARCH RETURN (MIN) MODSEQ 1")
    assert b"MIN 1 MODSEQ %d\r\n" % ms[1] in r, r
    r = c.cmd("a SEARCH RETURN (MAX) MODSEQ 1")
    assert b"MAX 3 MODSEQ %d\r\n" % ms[3] in r, r
    r = c.cmd("a SEARCH RETURN (MIN COUNT) MODSEQ 1")
    assert b"MODSEQ %d\r\n" % ms[3] in r, r
    r = c.cmd("a UID SEARCH RETURN (MIN) MODSEQ %d" % (ms[2] + 1))
    assert b"MIN 1 MODSEQ %d\r\n" % ms[1] in r, r


def test_implicit_condstore_enable_sends_highestmodseq_first() -> None:
    """RFC 7162 §3.1: the first CONDSTORE enabling command with a mailbox selected."""
    c = _conn(b"Subject: a\r\n\r\n1\r\n")
    r = c.cmd("f FETCH 1 (MODSEQ)")
    assert re.match(rb"\* OK \[HIGHESTMODSEQ \d+\] .*\r\n\* 1 FETCH \(MODSEQ", r), r
    r = c.cmd("f FETCH 1 (MODSEQ)")
    assert b"HIGHESTMODSEQ" not in r
    c2 = _conn(b"Subject: a\r\n\r\n1\r\n")
    r = c2.cmd("s SEARCH MODSEQ 1")
    assert r.startswith(b"* OK [HIGHESTMODSEQ"), r
    c3 = _conn(b"Subject: a\r\n\r\n1\r\n")
    r = c3.cmd("e ENABLE CONDSTORE")
    assert r.startswith(b"* OK [HIGHESTMODSEQ"), r


def test_examine_after_appends_shows_recent() -> None:
    """EXAMINE claims nothing but reports what STATUS RECENT counts (RFC 3501 §6.3.2)."""
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("c CREATE Box").startswith(b"c OK")
    for i in range(2):
        assert c.send(b"a APPEND Box {5+}\r\nhello\r\n").startswith(b"a OK"), i
    assert b"RECENT 2" in c.cmd("s STATUS Box (RECENT)")
    r = c.cmd("e EXAMINE Box")
    assert b"* 2 RECENT\r\n" in r, r
    r = c.cmd("e SELECT Box")  # the first read-write session claims them
    assert b"* 2 RECENT\r\n" in r, r
    r = c.cmd("e EXAMINE Box")
    assert b"* 0 RECENT\r\n" in r, r


def test_move_into_the_selected_mailbox() -> None:
    """Dovecot answers OK with COPYUID; the messages get new UIDs (RFC 6851)."""
    c = _conn(b"Subject: a\r\n\r\n1\r\n", b"Subject: b\r\n\r\n2\r\n")
    r = c.cmd("m UID MOVE 1 INBOX")
    assert b"* OK [COPYUID " in r and b" 1 3] " in r, r
    assert b"* 1 EXPUNGE\r\n" in r and b"* 2 EXISTS\r\n" in r, r
    assert r.endswith(b"m OK UID MOVE completed\r\n"), r
    assert c.cmd("f UID FETCH 1:* (UID)").count(b"* ") == 2


@pytest.mark.parametrize("name", ["a*b%c", "a//b", "/a", "a\tb"])
def test_rename_refuses_what_create_refuses(name: str) -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("c CREATE old").startswith(b"c OK")
    assert c.cmd(f'c CREATE "{name}"').startswith(b"c NO [CANNOT]")
    assert c.cmd(f'r RENAME old "{name}"').startswith(b"r NO [CANNOT]")
    assert b"old" in c.cmd('l LIST "" *')


def test_new_keyword_is_announced_before_the_fetch() -> None:
    """RFC 3501 §7.2.6: FLAGS and PERMANENTFLAGS with the new keyword come first."""
    c = _conn(b"Subject: a\r\n\r\n1\r\n")
    r = c.cmd("s STORE 1 +FLAGS ($Label1)")
    assert r.startswith(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)\r\n"
                        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
                        b"$Label1 \\*)]"), r
    assert b"* 1 FETCH (FLAGS ($Label1))" in r
    assert b"* FLAGS" not in c.cmd("s STORE 1 +FLAGS ($label1)")  # known (case-insensitive)


def test_keyword_set_by_another_session_is_announced() -> None:
    store, acc = make_store()
    store.put(acc, "INBOX", b"Subject: a\r\n\r\n1\r\n")
    c1, c2 = Conn(store), Conn(store)
    for c in (c1, c2):
        c.login()
        c.select()
    c2.cmd("s STORE 1 +FLAGS (Other)")
    r = c1.cmd("n NOOP")
    assert r.index(b"* FLAGS (") < r.index(b"* 1 FETCH (FLAGS (Other))"), r


def test_long_keyword_is_a_clean_no() -> None:
    c = _conn(b"Subject: a\r\n\r\n1\r\n")
    r = c.cmd("s STORE 1 +FLAGS (" + "k" * 300 + ")")
    assert r.startswith(b"s NO [LIMIT]"), r
    r = c.send(b"a APPEND INBOX (" + b"k" * 300 + b") {5+}\r\nhello\r\n")
    assert r.startswith(b"a NO [LIMIT]"), r


@pytest.mark.parametrize("command", [
    'LIST (RECURSIVEMATCH) "" ""', 'LIST (RECURSIVEMATCH REMOTE) "" "*"',
    'LIST (BOGUS) "" "*"', 'LIST "" "*" RETURN (BOGUS)',
])
def test_list_extended_bad_options(command: str) -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("l " + command).startswith(b"l BAD"), command


def _subscribed_hierarchy() -> Conn:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    for name in ("hc/a/b", "hc/c"):
        assert c.cmd(f"c CREATE {name}").startswith(b"c OK")
    for name in ("hc", "hc/a", "hc/c"):  # the fake subscribes what it creates
        assert c.cmd(f"u UNSUBSCRIBE {name}").startswith(b"u OK")
    assert c.cmd("s SUBSCRIBE hc/a/b").startswith(b"s OK")
    return c


def test_lsub_shows_noselect_parent_of_a_subscribed_child() -> None:
    """RFC 3501 §6.3.9: "foo/bar" subscribed, "foo" not: LSUB "%" gives foo \\Noselect."""
    c = _subscribed_hierarchy()
    r = c.cmd('l LSUB "" hc/%')
    assert r == b'* LSUB (\\Noselect) "/" "hc/a"\r\nl OK LSUB completed\r\n', r
    r = c.cmd('l LSUB "" hc/*')
    assert r == b'* LSUB () "/" "hc/a/b"\r\nl OK LSUB completed\r\n', r


def test_list_subscribed_recursivematch_childinfo() -> None:
    """RFC 5258 §3.5: a parent whose subscribed child the pattern misses gets CHILDINFO."""
    c = _subscribed_hierarchy()
    r = c.cmd('l LIST (SUBSCRIBED RECURSIVEMATCH) "" hc/% RETURN (CHILDREN)')
    assert r == (b'* LIST (\\HasChildren) "/" "hc/a" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
                 b"l OK LIST completed\r\n"), r
    r = c.cmd('l LIST (SUBSCRIBED) "" hc/%')
    assert r == b"l OK LIST completed\r\n", r


def test_fetch_of_a_message_expunged_elsewhere_whose_file_is_gone() -> None:
    """RFC 9051: BODY[] NIL and OK [EXPUNGEISSUED] (as Dovecot), no error-level log."""
    from twisted.logger import LogLevel, globalLogPublisher

    store, acc = make_store()
    store.put(acc, "INBOX", b"Subject: a\r\n\r\n1\r\n")
    store.put(acc, "INBOX", b"Subject: b\r\n\r\n2\r\n")
    c1, c2 = Conn(store), Conn(store)
    for c in (c1, c2):
        c.login()
        c.select()
    c2.cmd("s STORE 1 +FLAGS (\\Deleted)")
    assert b"* 1 EXPUNGE" in c2.cmd("e EXPUNGE")
    blob = next(iter(store.blobs))
    del store.blobs[blob]  # the body went with the expunge (another process, say)
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r = c1.cmd("f FETCH 1:2 (UID BODY.PEEK[] BODY.PEEK[HEADER] ENVELOPE)")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.startswith(b"* 1 FETCH (UID 1 BODY[] NIL BODY[HEADER] NIL)\r\n* 2 FETCH (UID 2 "), r
    assert r.endswith(b"\r\nf OK [EXPUNGEISSUED] FETCH completed; some messages were expunged "
                      b"by another session\r\n"), r
    assert not [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert b"* 1 EXPUNGE" in c1.cmd("n NOOP")


def test_list_subscribed_shows_deleted_mailboxes_nonexistent() -> None:
    """RFC 5258 §3.1: LIST (SUBSCRIBED) lists a subscribed name whose mailbox is gone,
    with \\NonExistent; LSUB shows it \\Noselect (the store lists such names)."""
    from twisted.internet.defer import succeed

    store, _ = make_store()
    store.list_subscriptions = lambda account_id: succeed(["INBOX", "hc/gone"])  # type: ignore[attr-defined]
    c = Conn(store)
    c.login()
    r = c.cmd('l LIST (SUBSCRIBED) "" "hc/*"')
    assert r == b'* LIST (\\NonExistent \\Subscribed) "/" "hc/gone"\r\nl OK LIST completed\r\n', r
    r = c.cmd('l LSUB "" "hc/*"')
    assert r == b'* LSUB (\\Noselect) "/" "hc/gone"\r\nl OK LSUB completed\r\n', r
    assert b"hc/gone" not in c.cmd('l LIST "" "*"')
