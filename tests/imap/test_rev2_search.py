"""IMAP4rev2 mode (RFC 9051), CONTEXT=SEARCH/SORT (RFC 5267 §4), PARTIAL (RFC 9394),
WITHIN (RFC 5032), SAVEDATE (RFC 8514), MULTISEARCH (RFC 7377) and STATUS DELETED/SIZE:
the parser, the pure helpers and sessions in rev1 and rev2 mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mxd.imap import context, esearch
from mxd.imap.errors import ParseError
from mxd.imap.parser import parse_bytes
from mxd.imap.values import ESearchArgs, SearchKey
from tests.imap.helpers import MSG1, MSG2, Conn, make_store

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _session(n: int = 5, rev2: bool = False) -> Conn:
    store, acc = make_store()
    store._now = lambda: NOW
    for i in range(n):
        store.put(acc, "INBOX", MSG1 if i % 2 == 0 else MSG2,
                  flags=("\\Seen",) if i % 2 else (),
                  when=NOW - timedelta(days=i))
    clock = Clock()
    clock.advance(NOW.timestamp())
    c = Conn(store, clock=clock)
    c.login()
    if rev2:
        assert c.cmd("E ENABLE IMAP4rev2") == b"* ENABLED IMAP4rev2\r\nE OK ENABLE completed\r\n"
    c.select()
    return c


# -- parser ----------------------------------------------------------------------------------


@pytest.mark.parametrize("line,partial", [
    (b"a SEARCH RETURN (PARTIAL 1:500) UNDELETED", (1, 500)),
    (b"a SEARCH RETURN (PARTIAL 500:1) ALL", (1, 500)),
    (b"a UID SEARCH RETURN (PARTIAL -1:-100 COUNT) ALL", (-100, -1)),
    (b"a SORT RETURN (PARTIAL 2:3) (DATE) UTF-8 ALL", (2, 3)),
])
def test_partial_ranges_parse(line: bytes, partial: tuple[int, int]) -> None:
    """RFC 5267 §4.4 / RFC 9394 §3.1 partial-range, either end first."""
    assert parse_bytes(line).args.partial == partial


@pytest.mark.parametrize("line", [
    b"a SEARCH RETURN (PARTIAL 1:10 ALL) ALL",  # RFC 9394: not with ALL
    b"a SEARCH RETURN (PARTIAL 0:10) ALL",
    b"a SEARCH RETURN (PARTIAL -1:10) ALL",
    b"a SEARCH RETURN (PARTIAL 1:-10) ALL",
    b"a SEARCH RETURN (MIN MIN) ALL",
    b"a SEARCH YOUNGER 0",  # RFC 5032: nz-number
    b"a ESEARCH IN (nosuchfilter) ALL",
    b"a ESEARCH IN (mailboxes) ALL",
    b"a ESEARCH IN (personal) $",  # RFC 7377 §2.2: $ only for the selected mailbox
    b"a CANCELUPDATE",
    b"a CANCELUPDATE atom",
])
def test_bad_syntax(line: bytes) -> None:
    with pytest.raises(ParseError):
        parse_bytes(line)


def test_esearch_sources_parse() -> None:
    """RFC 7377 §4 source options: filters with one mailbox or a list."""
    args = parse_bytes(b'a ESEARCH IN (mailboxes "folder1" subtree-one ("folder2" x) inboxes) '
                       b'RETURN (COUNT) SUBJECT "chicken"').args
    assert isinstance(args, ESearchArgs)
    assert args.sources == (("MAILBOXES", ("folder1",)), ("SUBTREE-ONE", ("folder2", "x")),
                            ("INBOXES", ()))
    assert args.return_opts == ("COUNT",) and args.key == SearchKey("SUBJECT", ("chicken",))


@given(st.binary(max_size=80))
@settings(max_examples=400)
def test_new_grammar_raises_only_parse_error(tail: bytes) -> None:
    """Whatever follows ESEARCH / CANCELUPDATE / RETURN (PARTIAL: a ParseError or a value."""
    for head in (b"a ESEARCH ", b"a CANCELUPDATE ", b"a SEARCH RETURN (PARTIAL ",
                 b"a ESEARCH IN (", b"a SEARCH SAVEDON "):
        data = (head + tail).replace(b"\r", b"").replace(b"\n", b"").replace(b"{", b"")
        try:
            parse_bytes(data)
        except ParseError:
            pass


@given(st.lists(st.integers(1, 50), unique=True, max_size=30).map(sorted),
       st.integers(1, 60), st.integers(1, 60), st.booleans())
def test_partial_window_matches_slicing(results: list[int], a: int, b: int, neg: bool) -> None:
    """RFC 9394 §3.1: positions a..b (1-based) or -a..-b from the end, as list slicing."""
    lo, hi = min(a, b), max(a, b)
    got = esearch.partial_window(results, (-hi, -lo) if neg else (lo, hi))
    want = results[::-1][lo - 1:hi][::-1] if neg else results[lo - 1:hi]
    assert got == want


# -- pure helpers ----------------------------------------------------------------------------


def test_render_rfc_forms_byte_exact() -> None:
    """RFC 4731 / 9051 §7.3.4, RFC 5267 §4.4, RFC 7377 §2.1 wire forms."""
    assert esearch.render("A282", False, ("MIN", "COUNT"), [2, 10, 11]) == \
        b'ESEARCH (TAG "A282") MIN 2 COUNT 3'
    assert esearch.render("A283", False, ("ALL",), [2, 10, 11]) == \
        b'ESEARCH (TAG "A283") ALL 2,10:11'
    assert esearch.render("A284", False, ("MIN",), []) == b'ESEARCH (TAG "A284")'
    assert esearch.render("E01", True, ("PARTIAL",), [23765, 23767, 23769, 23771],
                          partial=(1, 3)) == \
        b'ESEARCH (TAG "E01") UID PARTIAL (1:3 23765,23767,23769)'
    assert esearch.render("E04", False, ("COUNT", "PARTIAL"), [1, 2], partial=(1, 1)) == \
        b'ESEARCH (TAG "E04") PARTIAL (1:1 1) COUNT 2'
    assert esearch.render("E02", True, ("PARTIAL",), [1, 2, 3, 7], partial=(-2, -1)) == \
        b'ESEARCH (TAG "E02") UID PARTIAL (-1:-2 3,7)'
    assert esearch.render("E03", True, ("PARTIAL",), [1, 2], partial=(5, 9)) == \
        b'ESEARCH (TAG "E03") UID PARTIAL (5:9 NIL)'
    assert esearch.render("tag1", True, ("ALL",), [1, 2, 3, 4, 5, 9], mailbox=b'"folder1"',
                          uidvalidity=1) == \
        b'ESEARCH (TAG "tag1" MAILBOX "folder1" UIDVALIDITY 1) UID ALL 1:5,9'
    assert esearch.update_lines("B01", True, [], [(0, [32768, 32769])]) == \
        [b'ESEARCH (TAG "B01") UID ADDTO (0 32768:32769)']


def test_diff_sort_positions() -> None:
    """RFC 5267 §4.3: REMOVEFROM from the last position down, ADDTO at final positions."""
    ctx = context.Context.sorted("t", True, SearchKey("ALL"), (("SIZE", False),),
                                 [((10, 5), 5), ((20, 6), 6), ((30, 7), 7), ((40, 8), 8)])
    rem, add = context.diff_sort(ctx, {6, 8}, [((25, 9), 9), ((26, 10), 10), ((1, 11), 11)])
    assert rem == [(4, [8]), (2, [6])]
    assert ctx.uids == [11, 5, 9, 10, 7]
    assert add == [(1, [11]), (3, [9, 10])]


@given(st.lists(st.integers(0, 60), unique=True, max_size=25),
       st.lists(st.tuples(st.sets(st.integers(0, 60), max_size=6),
                          st.sets(st.integers(0, 60), max_size=6)), max_size=6))
@settings(max_examples=200)
def test_sort_notifications_replay_to_the_servers_order(start: list[int],
                                                        steps: list[tuple[set[int], set[int]]]
                                                        ) -> None:
    """A client that applies each REMOVEFROM and ADDTO in order (RFC 5267 §4.3) ends
    with the server's sorted result, whatever joins and leaves."""
    def key(u: int) -> tuple[int, int]:
        return ((u * 7919) % 61, u)  # an order unlike the UIDs'

    ordered = sorted(start, key=key)
    ctx = context.Context.sorted("t", True, SearchKey("ALL"), (("SIZE", False),),
                                 [(key(u), u) for u in ordered])
    client = list(ordered)
    for leave, join in steps:
        rem, add = context.diff_sort(ctx, leave, [(key(u), u) for u in join - leave])
        for pos, uids in rem:
            assert client[pos - 1:pos - 1 + len(uids)] == uids
            del client[pos - 1:pos - 1 + len(uids)]
        for pos, uids in add:
            client[pos - 1:pos - 1] = uids
        assert client == ctx.uids == sorted(ctx.members, key=key)


@given(st.sets(st.integers(0, 40)), st.sets(st.integers(0, 40)),
       st.dictionaries(st.integers(0, 40), st.booleans()))
def test_search_notifications_replay(members: set[int], removed: set[int],
                                     verdicts: dict[int, bool]) -> None:
    """For SEARCH: REMOVEFROM then ADDTO turn the client's set into the server's."""
    client = set(members)
    server = set(members)
    gone, added = context.diff_search(server, removed, verdicts)
    assert client - set(gone) | set(added) == server


def test_stable_keys() -> None:
    """Results over keys that change by themselves are not updated (NOUPDATE)."""
    assert context.stable(parse_bytes(b"a SEARCH UNSEEN FROM x").args.key)
    for prog in (b"1:3", b"RECENT", b"YOUNGER 5", b"NOT OLD", b"UID $"):
        assert not context.stable(parse_bytes(b"a SEARCH " + prog).args.key)


# -- sessions: IMAP4rev1 and IMAP4rev2 -----------------------------------------------------


def test_capabilities_advertise_the_extensions() -> None:
    c = _session()
    caps = c.cmd("c CAPABILITY")
    for cap in (b"IMAP4rev1", b"IMAP4rev2", b"WITHIN", b"SAVEDATE", b"MULTISEARCH",
                b"CONTEXT=SEARCH", b"CONTEXT=SORT", b"ESEARCH", b"STATUS=SIZE", b"PARTIAL"):
        assert b" " + cap + b" " in caps or caps.endswith(b" " + cap + b"\r\n"), cap
    assert b"IMAP4rev2" in c.greeting


def test_rev1_session_keeps_rev1_answers() -> None:
    """Without ENABLE IMAP4rev2: RECENT, OK [UNSEEN], \\Recent and SEARCH responses."""
    store, acc = make_store()
    store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    sel = c.select()
    assert b" RECENT\r\n" in sel and b"OK [UNSEEN 1]" in sel and b"* LIST" not in sel
    assert c.select().startswith(b"* OK [CLOSED] Previous mailbox closed\r\n")
    assert c.cmd("s SEARCH ALL") == b"* SEARCH 1\r\ns OK SEARCH completed\r\n"
    store.put(acc, "INBOX", MSG2)
    assert b"* 2 EXISTS\r\n* 1 RECENT\r\n" in c.cmd("n NOOP")
    assert b"\\Recent" in c.cmd("f FETCH 2 FLAGS")


def test_rev2_session_answers() -> None:
    """RFC 9051 (Appendix E): no RECENT and no \\Recent, SELECT sends LIST and no
    UNSEEN, SEARCH answers ESEARCH (RFC 9051 §6.4.4 examples byte for byte)."""
    store, acc = make_store()
    store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    assert c.cmd("t1 ENABLE IMAP4rev2") == b"* ENABLED IMAP4rev2\r\nt1 OK ENABLE completed\r\n"
    sel = c.select()
    assert b"RECENT" not in sel and b"UNSEEN" not in sel
    assert b'* LIST (\\HasNoChildren) "/" INBOX\r\n' in sel, sel
    store.put(acc, "INBOX", MSG2)
    store.put(acc, "INBOX", MSG1, flags=("\\Flagged",))
    noop = c.cmd("n NOOP")
    assert b"* 3 EXISTS\r\n" in noop and b"RECENT" not in noop
    assert b"\\Recent" not in c.cmd("f FETCH 2:3 FLAGS")
    assert c.cmd('A282 SEARCH RETURN (MIN COUNT) FLAGGED NOT FROM "Smith"') == \
        b'* ESEARCH (TAG "A282") MIN 3 COUNT 1\r\nA282 OK SEARCH completed\r\n'
    assert c.cmd("A283 SEARCH ALL") == \
        b'* ESEARCH (TAG "A283") ALL 1:3\r\nA283 OK SEARCH completed\r\n'
    assert c.cmd('A284 SEARCH TEXT "string not in mailbox"') == \
        b'* ESEARCH (TAG "A284")\r\nA284 OK SEARCH completed\r\n'
    assert c.cmd("A285 UID SEARCH ALL") == \
        b'* ESEARCH (TAG "A285") UID ALL 1:3\r\nA285 OK UID SEARCH completed\r\n'
    # The LIST of SELECT/EXAMINE has the mailbox's attributes (RFC 9051 §6.3.2); the
    # mailbox closed by it is marked by OK [CLOSED] first (§7.1).
    c.cmd("c CREATE INBOX/sub")
    out = c.cmd("x EXAMINE INBOX")
    assert out.startswith(b"* OK [CLOSED] Previous mailbox closed\r\n* FLAGS"), out
    assert b'* LIST (\\HasChildren) "/" INBOX\r\n' in out
    assert b'* LIST (\\HasNoChildren \\Sent) "/" ' in c.cmd("y EXAMINE Sent")


def test_rev2_utf8_mailbox_names_and_list() -> None:
    """RFC 9051 §5.1: rev2 names are UTF-8 (no modified UTF-7); LIST is extended."""
    c = _session(1, rev2=True)
    assert b"OK" in c.cmd("c CREATE Entwürfe/Alt")
    out = c.cmd('l LIST "" "*"')
    assert '"Entwürfe/Alt"'.encode() in out or "Entwürfe/Alt".encode() in out, out
    assert b"&" not in out
    c2 = _session(1)
    c2.cmd("c CREATE Entw&APw-rfe")
    assert b"Entw&APw-rfe" in c2.cmd('l LIST "" "*"')


@pytest.mark.parametrize("rev2", [False, True])
def test_status_deleted_and_size(rev2: bool) -> None:
    """RFC 9051 §6.3.11 DELETED and RFC 8438 SIZE, in both modes."""
    c = _session(3, rev2=rev2)
    c.cmd("s STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    out = c.cmd("t STATUS INBOX (MESSAGES DELETED SIZE)")
    size = 2 * len(MSG1) + len(MSG2)
    assert f"* STATUS INBOX (MESSAGES 3 DELETED 2 SIZE {size})\r\n".encode() in out


@pytest.mark.parametrize("rev2", [False, True])
def test_within_rfc5032(rev2: bool) -> None:
    """RFC 5032 §3: YOUNGER/OLDER in seconds from now, by the internal date."""
    c = _session(5, rev2=rev2)
    day = 86400
    younger = c.cmd(f"a SEARCH YOUNGER {day + 60}")
    older = c.cmd(f"b SEARCH OLDER {3 * day}")
    if rev2:
        assert younger.startswith(b'* ESEARCH (TAG "a") ALL 1:2\r\n')
        assert older.startswith(b'* ESEARCH (TAG "b") ALL 4:5\r\n')
    else:
        assert younger.startswith(b"* SEARCH 1 2\r\n")
        assert older.startswith(b"* SEARCH 4 5\r\n")
    assert c.cmd(f"c SEARCH UNSEEN YOUNGER {day * 10}").startswith(
        b'* ESEARCH (TAG "c") ALL 1,3,5\r\n' if rev2 else b"* SEARCH 1 3 5\r\n")


def test_savedate_fetch_and_search() -> None:
    """RFC 8514: FETCH SAVEDATE; SAVEDBEFORE/SAVEDON/SAVEDSINCE read the save date (the
    copy's moment), not the internal date; SAVEDATESUPPORTED matches all."""
    store, acc = make_store()
    store._now = lambda: datetime(2024, 2, 1, 10, 0, tzinfo=UTC)
    store.put(acc, "INBOX", MSG1, when=datetime(1996, 7, 17, 9, 44, 25, tzinfo=UTC))
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("A101 FETCH 1 (SAVEDATE)") == \
        b'* 1 FETCH (SAVEDATE "01-Feb-2024 10:00:00 +0000")\r\nA101 OK FETCH completed\r\n'
    store._now = lambda: datetime(2024, 2, 5, 10, 0, tzinfo=UTC)
    assert b"OK" in c.cmd("c COPY 1 INBOX")
    c.cmd("n NOOP")
    out = c.cmd("f FETCH 1:2 (INTERNALDATE SAVEDATE)")
    assert b'* 2 FETCH (INTERNALDATE "17-Jul-1996 09:44:25 +0000" SAVEDATE "05-Feb-2024 10:00:00 +0000")' in out
    assert c.cmd("a SEARCH SAVEDON 5-Feb-2024").startswith(b"* SEARCH 2\r\n")
    assert c.cmd("b SEARCH SAVEDBEFORE 5-Feb-2024").startswith(b"* SEARCH 1\r\n")
    assert c.cmd("d SEARCH SAVEDSINCE 1-Feb-2024 ON 17-Jul-1996").startswith(b"* SEARCH 1 2\r\n")
    assert c.cmd("e SEARCH SAVEDATESUPPORTED").startswith(b"* SEARCH 1 2\r\n")
    assert c.cmd("g SORT (ARRIVAL) UTF-8 SAVEDSINCE 2-Feb-2024").startswith(b"* SORT 2\r\n")


def test_partial_in_search_and_sort() -> None:
    """RFC 5267 §4.4, RFC 9394: windows of the result, in sort order for SORT."""
    c = _session(5)
    assert c.cmd("E01 UID SEARCH RETURN (PARTIAL 2:3) ALL").startswith(
        b'* ESEARCH (TAG "E01") UID PARTIAL (2:3 2:3)\r\n')
    assert c.cmd("E02 SEARCH RETURN (PARTIAL -1:-2 COUNT) ALL").startswith(
        b'* ESEARCH (TAG "E02") PARTIAL (-1:-2 4:5) COUNT 5\r\n')
    assert c.cmd("E03 SEARCH RETURN (PARTIAL 9:10) ALL").startswith(
        b'* ESEARCH (TAG "E03") PARTIAL (9:10 NIL)\r\n')
    assert c.cmd("E04 SORT RETURN (PARTIAL 1:2) (ARRIVAL) UTF-8 ALL").startswith(
        b'* ESEARCH (TAG "E04") PARTIAL (1:2 5,4)\r\n')
    assert c.cmd("E05 SEARCH RETURN (PARTIAL 1:2 ALL) ALL").startswith(b"E05 BAD")


def test_context_search_updates() -> None:
    """RFC 5267 §4.3: ADDTO for arriving and changed messages, REMOVEFROM for ones that
    leave (before their EXPUNGE), none after CANCELUPDATE."""
    store, acc = make_store()
    for _ in range(3):
        store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("B01 UID SEARCH RETURN (UPDATE ALL) UNSEEN") == \
        b'* ESEARCH (TAG "B01") UID ALL 1:3\r\nB01 OK UID SEARCH completed\r\n'
    store.put(acc, "INBOX", MSG1)
    store.put(acc, "INBOX", MSG1)
    out = c.cmd("n NOOP")
    assert b'* ESEARCH (TAG "B01") UID ADDTO (0 4:5)\r\n' in out, out
    out = c.cmd("s STORE 2 +FLAGS (\\Seen)")
    assert b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 2)\r\n' in out, out
    out = c.cmd("s STORE 3 +FLAGS.SILENT (\\Deleted)")
    assert b"ESEARCH" not in out
    out = c.cmd("x EXPUNGE")
    assert out.index(b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 3)\r\n') < out.index(b"* 3 EXPUNGE")
    assert c.cmd("CU CANCELUPDATE \"B01\"") == b"CU OK CANCELUPDATE completed\r\n"
    store.put(acc, "INBOX", MSG1)
    assert b"ESEARCH" not in c.cmd("n NOOP")
    # Sequence numbers, and results that cannot be kept up to date.
    out = c.cmd("B02 SEARCH RETURN (UPDATE COUNT) UNSEEN")
    assert out.startswith(b'* ESEARCH (TAG "B02") COUNT 4\r\n'), out
    out = c.cmd("s STORE 1 +FLAGS.SILENT (\\Seen)")
    assert b'* ESEARCH (TAG "B02") REMOVEFROM (0 1)\r\n' in out, out
    assert c.cmd("B03 SEARCH RETURN (UPDATE) 1:2").startswith(b'* NO [NOUPDATE "B03"]')


def test_context_sort_updates_with_positions() -> None:
    """RFC 5267 §4.3 for SORT: positions in the sorted result."""
    store, acc = make_store()
    for i in range(3):
        store.put(acc, "INBOX", MSG1 + b"x" * (10 * (3 - i)))  # sizes descending by UID
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("S01 UID SORT RETURN (UPDATE ALL) (SIZE) UTF-8 ALL").startswith(
        b'* ESEARCH (TAG "S01") UID ALL 3,2,1\r\n')
    # UPDATE alone: notifications only, the first answer carries no result data.
    assert c.cmd("S02 UID SORT RETURN (UPDATE) (SIZE) UTF-8 ALL").startswith(
        b'* ESEARCH (TAG "S02") UID\r\nS02 OK')
    c.cmd('c CANCELUPDATE "S02"')
    store.put(acc, "INBOX", MSG1 + b"x" * 15)  # between 3 (10) and 2 (20)
    assert b'* ESEARCH (TAG "S01") UID ADDTO (2 4)\r\n' in c.cmd("n NOOP")
    c.cmd("s STORE 2 +FLAGS.SILENT (\\Deleted)")
    out = c.cmd("x EXPUNGE")
    assert b'* ESEARCH (TAG "S01") UID REMOVEFROM (3 2)\r\n' in out, out


def test_multisearch() -> None:
    """RFC 7377: ESEARCH over mailboxes, UIDs with MAILBOX and UIDVALIDITY; in the
    authenticated state too; the selected mailbox without IN."""
    store, acc = make_store()
    store.put(acc, "INBOX", MSG1)
    store.put(acc, "INBOX", MSG2)
    store.put(acc, "Archive", MSG2)
    store.create_mailbox(acc.id, "Archive/2023")
    store.put(acc, "Archive/2023", MSG1)
    c = Conn(store)
    c.login()
    out = c.cmd('tag1 ESEARCH IN (personal) SUBJECT "hello"')
    lines = [ln for ln in out.split(b"\r\n") if ln.startswith(b"* ESEARCH")]
    assert len(lines) == 2, out
    assert lines[0].startswith(b'* ESEARCH (TAG "tag1" MAILBOX INBOX UIDVALIDITY ')
    assert lines[0].endswith(b") UID ALL 1")
    assert lines[1].startswith(b'* ESEARCH (TAG "tag1" MAILBOX "Archive/2023" UIDVALIDITY ')
    out = c.cmd("t2 ESEARCH IN (subtree Archive) RETURN (COUNT) ALL")
    assert out.count(b"COUNT 1") == 2 and b"MAILBOX INBOX" not in out
    out = c.cmd("t3 ESEARCH IN (subtree-one Archive mailboxes nosuch) RETURN (MIN) ALL")
    assert out.count(b"* ESEARCH") == 2
    assert c.cmd("t4 ESEARCH ALL").startswith(b"t4 BAD")
    c.select()
    out = c.cmd("t5 ESEARCH RETURN (MIN MAX) ALL")
    assert b'(TAG "t5" MAILBOX INBOX UIDVALIDITY ' in out and out.rstrip().endswith(
        b"t5 OK ESEARCH completed") and b"UID MIN 1 MAX 2" in out
    assert c.cmd("t6 ESEARCH IN (selected) RETURN (SAVE) SUBJECT hello") == \
        b"t6 OK ESEARCH completed\r\n"
    assert c.cmd("t7 SEARCH $").startswith(b"* SEARCH 1\r\n")
    assert c.cmd("t8 ESEARCH IN (personal) RETURN (SAVE) ALL").startswith(b"t8 BAD")
    # RFC 7377 §2: no ESEARCH response for a mailbox without matches, none at all here.
    assert c.cmd("t9 ESEARCH SUBJECT nothing-like-this") == b"t9 OK ESEARCH completed\r\n"
    # "inboxes": INBOX and Junk, where quarantined mail is delivered.
    store.put(acc, "Junk", MSG1)
    out = c.cmd("t10 ESEARCH IN (inboxes) RETURN (COUNT) ALL")
    assert b"MAILBOX INBOX " in out and b'MAILBOX "Junk" ' in out and b"Archive" not in out
    c.cmd("u UNSELECT")
    assert c.cmd("t11 ESEARCH IN (selected) ALL").startswith(b"t11 BAD")


@pytest.mark.parametrize("rev2", [False, True])
def test_binary_fetch_alike_in_both_modes(rev2: bool) -> None:
    """BINARY (RFC 3516, part of IMAP4rev2, RFC 9051 §6.4.5): decoded content, literal8
    for content with NUL, BINARY.SIZE, NO [UNKNOWN-CTE]; the same in both modes."""
    store, acc = make_store()
    store.put(acc, "INBOX", MSG2)
    store.put(acc, "INBOX", b"Content-Transfer-Encoding: x-unknown\r\n\r\nzz\r\n")
    c = Conn(store)
    c.login()
    if rev2:
        c.cmd("E ENABLE IMAP4rev2")
    c.select()
    out = c.cmd("f FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])")
    assert out.startswith(b"* 1 FETCH (BINARY[2] ~{4}\r\n\x00\x01\x02\x03 BINARY.SIZE[2] 4)\r\n"), out
    assert c.cmd("g FETCH 2 (BINARY.PEEK[1])").startswith(b"g NO [UNKNOWN-CTE]")


def test_rev2_subscriptions_through_list_extended() -> None:
    """RFC 9051 has no LSUB: a rev2 client lists subscriptions with LIST (SUBSCRIBED)
    (RFC 5258 §3), which answers \\Subscribed; LSUB is still answered for rev1 habits."""
    c = _session(1, rev2=True)
    c.cmd("c CREATE Projekte/Alt")
    c.cmd("s SUBSCRIBE Projekte/Alt")
    out = c.cmd('l LIST (SUBSCRIBED) "" "Projekte/*"')
    assert b'\\Subscribed) "/" "Projekte/Alt"\r\n' in out, out
    assert c.cmd('m LSUB "" "Projekte/*"').endswith(b"m OK LSUB completed\r\n")
