"""Header keys of SEARCH answered from the stored header search text
(mxd.imap.headersearch) give the very results of reading the header (RFC 9051 §6.4.4)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap import headersearch, summary
from mxd.imap.message import ParsedMessage, parse_headers
from mxd.imap.search import Candidate, matches
from mxd.imap.values import SearchKey
from mxd.store.interfaces import MessageInfo
from tests.imap.helpers import Conn, make_store

INFO = MessageInfo(1, 1, frozenset(), datetime(2024, 2, 1, tzinfo=UTC), 100, "b1")
NOW = datetime(2024, 3, 1, tzinfo=UTC)

HEADERS = [
    b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hello\r\n"
    b"Date: Thu, 01 Feb 2024 10:00:00 +0000\r\n\r\n",
    # RFC 2047 encoded words, in a display name and a subject (folded across lines)
    b"From: =?utf-8?q?Jos=C3=A9_Garc=C3=ADa?= <jose@example.test>\r\n"
    b"Subject: =?utf-8?b?Q2Fmw6kgU3RyYcOfZQ==?=\r\n =?iso-8859-1?q?_r=E9sum=E9?=\r\n\r\n",
    # raw UTF-8 (RFC 6532) and invalid 8-bit octets
    "From: Zoë <zoe@exämple.test>\r\nSubject: Grüße aus Köln\r\n".encode()
    + b"X-Junk: caf\xe9 \xff\r\n\r\n",
    # comments and folding inside an address (RFC 5322 §3.4.1)
    b"From: <user-from (comment)@ (comment) domain.org>\r\nCc: Group: a@x.test, b@y.test;\r\n"
    b"Bcc: \"Quoted, Name\" <q@z.test>\r\n\r\n",
    # folded header fields, several occurrences, an empty value
    b"Subject: a long\r\n\tfolded subject\r\nX-List: one\r\nX-List: two\r\nX-Empty:\r\n"
    b"Date: 5 Mar 2023 23:30:00 -0800\r\n\r\n",
    # trace fields are not stored: their keys read the header
    b"Received: from a.example.test by b.example.test; Thu, 1 Feb 2024 10:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; b=abc\r\nSubject: traced\r\n\r\n",
    # an over-long field is not stored
    b"Subject: short\r\nX-Long: " + b"word " * 1000 + b"\r\n\r\n",
    # no header at all, an unparseable date
    b"\r\n",
    b"Date: yesterday\r\nSubject: =?bogus?q?x?= =?utf-8?q?ok?=\r\n\r\n",
    # a sharp s and the casefolding RFC 5051 / Unicode case folding does
    "Subject: STRASSE und Straße\r\nTo: ÉMILE <e@x.test>\r\n".encode() + b"\r\n",
]

NEEDLES = ["", "alice", "ALICE@EXAMPLE", "bob", "hello", "josé", "GARCÍA", "café", "strasse",
           "résumé", "zoë", "grüsse", "köln", "exämple", "user-from@domain.org", "comment",
           "b@y.test", "quoted, name", "folded", "long folded", "two", "one", "b.example.test",
           "rsa-sha256", "word word", "ok", "bogus", "émile", "\u00ff", "x", "@", " "]
FIELDS = ["From", "To", "Cc", "Bcc", "Subject"]
HEADER_NAMES = ["subject", "FROM", "X-List", "X-Empty", "x-junk", "Received", "DKIM-Signature",
                "X-Long", "Date", "Missing"]


def _candidate(h: Message, stored: bytes | None, load: bool = True) -> Candidate:
    def header() -> Message:
        if not load:
            raise AssertionError("the header was read")
        return h

    def full() -> ParsedMessage:
        raise AssertionError("the message was read")

    return Candidate(1, INFO, 1, 1, header, full, NOW, stored=stored)


def _keys() -> list[SearchKey]:
    keys = [SearchKey(f.upper(), (n,)) for f in FIELDS for n in NEEDLES]
    keys += [SearchKey("HEADER", (f, n)) for f in HEADER_NAMES for n in NEEDLES]
    for k in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        keys += [SearchKey(k, (d,)) for d in (date(2024, 2, 1), date(2023, 3, 5), date(2023, 3, 6))]
    return keys


@pytest.mark.parametrize("block", HEADERS)
def test_stored_text_answers_as_the_header_does(block: bytes) -> None:
    h = parse_headers(block)
    stored = headersearch.encode(h)
    assert stored != headersearch.UNUSABLE
    for key in _keys():
        want = matches(key, _candidate(h, None))
        assert matches(key, _candidate(h, stored)) == want, (block, key)


def test_stored_fields_decide_without_the_header() -> None:
    """The header is not read for a field the stored text holds, nor for a field the
    message does not have; it is for a field left out (trace, over-long)."""
    h = parse_headers(HEADERS[5] + b"")
    stored = headersearch.encode(h)
    for key in [SearchKey("SUBJECT", ("traced",)), SearchKey("FROM", ("nobody",)),
                SearchKey("HEADER", ("Missing", "")), SearchKey("SENTON", (date(2024, 2, 1),)),
                SearchKey("HEADER", ("Received", ""))]:
        matches(key, _candidate(h, stored, load=False))
    with pytest.raises(AssertionError, match="header was read"):
        matches(SearchKey("HEADER", ("Received", "b.example")), _candidate(h, stored, load=False))
    assert headersearch.contains(stored, "Received", "example") is None
    assert headersearch.contains(stored, "Received", "") is True
    assert headersearch.contains(stored, "Subject", "TRACED") is True


def test_a_needle_with_a_line_break_reads_the_header() -> None:
    stored = headersearch.encode(parse_headers(HEADERS[0]))
    assert headersearch.contains(stored, "Subject", "hel\nlo") is None
    assert headersearch.contains(headersearch.UNUSABLE, "Subject", "x") is None


def test_encoded_line_breaks_leave_the_field_out() -> None:
    """An encoded word that decodes to a line break cannot be a line of the stored text."""
    h = parse_headers(b"Subject: =?utf-8?q?a=0Ab?=\r\nTo: t@x.test\r\n\r\n")
    stored = headersearch.encode(h)
    assert headersearch.contains(stored, "Subject", "a") is None
    assert headersearch.contains(stored, "To", "t@x") is True


_TEXT = st.lists(st.sampled_from(list("aAbß é€z=?_ :,.<>@\"()\t") + ["=?utf-8?q?", "?=",
                                                                    "=C3=A9", "\r\n "]),
                 max_size=20).map("".join)


@settings(max_examples=1000, deadline=None)
@given(subject=_TEXT, frm=_TEXT, other=_TEXT, needle=_TEXT, pick=st.integers(0, 5))
def test_any_header_and_needle(subject: str, frm: str, other: str, needle: str, pick: int) -> None:
    block = (f"Subject: {subject}\r\nFrom: {frm}\r\nX-Other: {other}\r\n\r\n"
             .encode())
    h = parse_headers(block)
    stored = headersearch.encode(h)
    # A needle taken from a value finds something more often than a random one.
    source = [subject, frm, other][pick % 3]
    if pick >= 3 and source:
        needle = source[len(source) // 3:len(source) // 3 + 4]
    for key in [SearchKey("SUBJECT", (needle,)), SearchKey("FROM", (needle,)),
                SearchKey("HEADER", ("X-Other", needle)), SearchKey("TO", (needle,))]:
        assert matches(key, _candidate(h, stored)) == matches(key, _candidate(h, None)), key


def test_search_reads_no_message_file_when_stored() -> None:
    """SEARCH SUBJECT/FROM/HEADER over stored texts opens no message file; results are
    those of the header."""
    store, acc = make_store()
    summary.register(store)
    for block in HEADERS:
        store.put(acc, "INBOX", block + b"body\r\n")
    c = Conn(store)
    c.login()
    c.select()
    opened: list[str] = []
    real = store.open_blob

    def counting(blob_id: str):  # type: ignore[no-untyped-def]
        opened.append(blob_id)
        return real(blob_id)

    store.open_blob = counting  # type: ignore[method-assign]
    assert c.cmd("s SEARCH SUBJECT strasse").startswith(b"* SEARCH 2 10\r\n")
    assert c.cmd(b"s SEARCH CHARSET UTF-8 FROM {5+}\r\njos\xc3\xa9").startswith(b"* SEARCH 2\r\n")
    assert c.cmd("s SEARCH FROM user-from@domain.org").startswith(b"* SEARCH 4\r\n")
    assert c.cmd("s SEARCH HEADER X-List two").startswith(b"* SEARCH 5\r\n")
    assert c.cmd("s SEARCH SENTON 5-Mar-2023").startswith(b"* SEARCH 5\r\n")
    assert opened == []
    assert c.cmd("s SEARCH HEADER Received b.example").startswith(b"* SEARCH 6\r\n")
    assert len(opened) == 1  # only the message that has the field left out


def test_bodies_stored_before_the_search_text_get_it_from_the_backfill(tmp_path: Path) -> None:
    """A store whose bodies have ENVELOPE and the sort keys but no header search text (an
    older mxd) gets the text from the backfill, and keeps the other values."""
    from tests.store.helpers import open_store
    from tests.store.test_contract import Contract

    h = open_store(tmp_path / "data", inline=True)
    try:
        older = (summary.ENVELOPE, summary.KEYS)
        h.store.register_deriver(summary.DERIVER, older,
                                 lambda rh: {k: v for k, v in summary.derive(rh).items()
                                             if k in older})
        c = Contract(h.store)
        inbox = c.box(c.account())
        for block in HEADERS[:4]:
            c.run(h.store.append(inbox, c.blob(block + b"x\r\n"), frozenset()))
        assert c.run(h.store.get_derived(inbox, summary.HSEARCH)) == {}
        envelopes = c.run(h.store.get_derived(inbox, summary.ENVELOPE))
        summary.register(h.store)
        while c.run(h.store.backfill_derived(2)):
            pass
        got = c.run(h.store.get_derived(inbox, summary.HSEARCH))
        assert got == {i + 1: headersearch.encode(parse_headers(b)) for i, b in enumerate(HEADERS[:4])}
        assert c.run(h.store.get_derived(inbox, summary.ENVELOPE)) == envelopes
    finally:
        h.close()
