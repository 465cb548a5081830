"""The IMAP command grammar: table tests and fuzzing."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.errors import ParseError
from mxd.imap.framer import Literal
from mxd.imap.parser import FetchAtt, SearchKey, Section, SeqSet, parse_bytes


def test_login_with_quoted_and_literal() -> None:
    """LOGIN takes astrings: atoms, quoted strings with escapes, and literals."""
    c = parse_bytes(b'a1 LOGIN "al\\"ice" {7}\r\nsec ret')
    assert (c.tag, c.name) == ("a1", "LOGIN")
    assert (c.args.username, c.args.password) == ('al"ice', "sec ret")


def test_literal_plus() -> None:
    """A non-synchronising literal {n+} is read like a synchronising one."""
    c = parse_bytes(b"a LOGIN {5+}\r\nalice {1+}\r\nx")
    assert (c.args.username, c.args.password) == ("alice", "x")


@pytest.mark.parametrize("text,star,expected", [
    (b"1", 10, [(1, 1)]),
    (b"1:*", 10, [(1, 10)]),
    (b"*:3", 10, [(3, 10)]),
    (b"2,4:5,*", 7, [(2, 2), (4, 5), (7, 7)]),
    (b"5:2", 9, [(2, 5)]),
])
def test_sequence_sets(text: bytes, star: int, expected: list[tuple[int, int]]) -> None:
    """Sequence sets resolve '*' to the largest number and order each range."""
    c = parse_bytes(b"t FETCH " + text + b" FLAGS")
    assert c.args.seqset.resolve(star) == expected


def test_saved_search_marker() -> None:
    """'$' parses as the saved-result marker (RFC 5182)."""
    assert parse_bytes(b"t UID FETCH $ FLAGS").args.seqset == SeqSet(saved=True)


def test_fetch_items_and_sections() -> None:
    """FETCH items with sections, partials, PEEK and CHANGEDSINCE parse into values."""
    c = parse_bytes(b"t UID FETCH 1:* (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From to)]<0.100> "
                    b"BODY[] BINARY.PEEK[2] BINARY.SIZE[1] RFC822.SIZE) (CHANGEDSINCE 7 VANISHED)")
    atts = c.args.atts
    assert atts[0] == FetchAtt("FLAGS")
    assert atts[1] == FetchAtt("BODY", Section((1, 2), "HEADER.FIELDS", ("FROM", "TO")), (0, 100), True)
    assert atts[2] == FetchAtt("BODY", Section(), None, False)
    assert atts[3] == FetchAtt("BINARY", Section((2,)), None, True)
    assert atts[4] == FetchAtt("BINARY.SIZE", Section((1,)))
    assert (c.args.changedsince, c.args.vanished) == (7, True)


@pytest.mark.parametrize("macro,n", [(b"ALL", 4), (b"FAST", 3), (b"FULL", 5)])
def test_fetch_macros(macro: bytes, n: int) -> None:
    """The ALL/FAST/FULL macros expand to their items."""
    assert len(parse_bytes(b"t FETCH 1 " + macro).args.atts) == n


def test_search_program() -> None:
    """Search keys nest with parentheses, OR and NOT; dates and headers parse."""
    c = parse_bytes(b't SEARCH CHARSET UTF-8 OR (FROM "a b" SEEN) NOT 1:5 SINCE 1-Feb-2024 '
                    b"HEADER X-Foo bar UID 3:* MODSEQ 5 LARGER 10")
    k = c.args.key
    assert k.name == "AND"
    assert k.args[0] == SearchKey("OR", (SearchKey("AND", (SearchKey("FROM", ("a b",)), SearchKey("SEEN"))),
                                         SearchKey("NOT", (SearchKey("SEQ", (SeqSet(((1, 5),)),)),))))
    assert k.args[1] == SearchKey("SINCE", (date(2024, 2, 1),))
    assert k.args[2] == SearchKey("HEADER", ("X-FOO", "bar"))
    assert c.args.charset == "UTF-8"


def test_esearch_return_options() -> None:
    """SEARCH RETURN (...) selects ESEARCH result options (RFC 4731)."""
    c = parse_bytes(b"t UID SEARCH RETURN (MIN MAX COUNT) UNSEEN")
    assert c.args.return_opts == ("MIN", "MAX", "COUNT")
    assert parse_bytes(b"t SEARCH RETURN () ALL").args.return_opts == ()


def test_append_with_flags_and_date() -> None:
    """APPEND takes optional flags and date-time before the message literal."""
    c = parse_bytes(b't APPEND Sent (\\Seen $Label) "01-Feb-2024 10:00:00 +0130" {3}\r\nabc')
    assert c.args.flags == ("\\Seen", "$Label")
    assert c.args.date == datetime(2024, 2, 1, 10, 0, tzinfo=timezone(timedelta(hours=1, minutes=30)))
    assert c.args.message == Literal(b"abc")


def test_append_utf8_data_item() -> None:
    """APPEND accepts RFC 6855's UTF8 (~{n} literal8) form."""
    c = parse_bytes(b"t APPEND INBOX UTF8 (~{3+}\r\nabc)")
    assert c.args.message == Literal(b"abc")


def test_authenticate_initial_response() -> None:
    """AUTHENTICATE decodes a SASL-IR (RFC 4959), '=' meaning empty."""
    assert parse_bytes(b"t AUTHENTICATE PLAIN AGEAYg==").args.initial == b"\0a\0b"
    assert parse_bytes(b"t AUTHENTICATE PLAIN =").args.initial == b""
    assert parse_bytes(b"t AUTHENTICATE PLAIN").args.initial is None


def test_list_extended() -> None:
    """LIST with selection options, several patterns and RETURN (STATUS ...)."""
    c = parse_bytes(b't LIST (SUBSCRIBED) "" (INBOX "Sent/%") RETURN (CHILDREN STATUS (MESSAGES))')
    a = c.args
    assert a.patterns == ("INBOX", "Sent/%")
    assert a.select_opts == {"SUBSCRIBED"} and "CHILDREN" in a.return_opts
    assert a.status_items == ("MESSAGES",)


def test_store_forms() -> None:
    """STORE accepts +/-FLAGS(.SILENT), bare flag lists and UNCHANGEDSINCE."""
    c = parse_bytes(b"t UID STORE 1:3 (UNCHANGEDSINCE 9) -FLAGS.SILENT \\Seen \\Deleted")
    a = c.args
    assert (a.mode, a.silent, a.flags, a.unchangedsince) == ("remove", True, ("\\Seen", "\\Deleted"), 9)


def test_select_qresync() -> None:
    """SELECT (QRESYNC (uidvalidity modseq known-uids)) parses (RFC 7162 §3.2.5)."""
    c = parse_bytes(b"t SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))")
    assert c.args.qresync[:2] == (67890007, 20050715194045000)


@pytest.mark.parametrize("line", [
    b"", b"tag", b"t NOSUCH", b"t LOGIN", b"t LOGIN a", b"t FETCH 0 FLAGS", b"t FETCH 1 (",
    b"t FETCH 1 BODY[9.X]", b't SEARCH SINCE 31-Foo-2024', b"t SEARCH " + b"(" * 100 + b"ALL" + b")" * 100,
    b't LOGIN "unterminated', b"t STORE 1 FLAGS", b"t SELECT", b"+ FETCH 1 FLAGS",
    b"t AUTHENTICATE PLAIN !!!", b"t APPEND INBOX", b"t NOOP extra", b"t LOGIN a\x00 b",
])
def test_malformed_commands_raise_parse_error(line: bytes) -> None:
    """Malformed commands raise ParseError and nothing else."""
    with pytest.raises(ParseError):
        parse_bytes(line)


def test_parse_error_carries_tag() -> None:
    """A ParseError names the tag so the server can answer it with a tagged BAD."""
    with pytest.raises(ParseError) as e:
        parse_bytes(b"x12 FETCH nonsense")
    assert e.value.tag == "x12"


_ALPHABET = st.sampled_from(
    [b" ", b"(", b")", b"[", b"]", b"<", b">", b'"', b"\\", b"{", b"}", b"+", b"*", b"$", b":", b",",
     b".", b"1", b"0", b"9", b"A", b"FETCH", b"UID", b"SEARCH", b"BODY", b"HEADER.FIELDS", b"OR",
     b"NOT", b"{3}\r\n", b"{2+}\r\n", b"\r\n", b"\xff", b"\x00", b"STORE", b"FLAGS", b"LIST",
     b"APPEND", b"SINCE", b"1-Feb-2024", b"RETURN", b"QRESYNC", b"SELECT", b"ID", b"NIL"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=30))
def test_parser_never_raises_anything_else(chunks: list[bytes]) -> None:
    """Arbitrary token soup either parses or raises ParseError."""
    try:
        parse_bytes(b"t " + b"".join(chunks))
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parser_on_random_bytes(data: bytes) -> None:
    """Random bytes either parse or raise ParseError."""
    try:
        parse_bytes(data)
    except ParseError:
        pass
