"""SORT / SORT=DISPLAY (RFC 5256, RFC 5957), i;unicode-casemap (RFC 5051) and
UNSELECT (RFC 3691): the pure module, the parser and the session."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.errors import ParseError
from mxd.imap.message import parse_headers
from mxd.imap.parser import parse_bytes
from mxd.imap.sort import SortData, base_subject, casemap, sort_data, sort_steps
from mxd.imap.values import SearchKey, SortArgs
from tests.imap.helpers import Conn, make_store

# -- RFC 5051 ------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b", [
    ("hello", "HELLO"), ("Ünïcödé", "ÜNÏCÖDÉ"),
    ("straße", "STRAßE"), ("ǆ", "ǅ"),  # DZ digraph: titlecase is ǅ
    ("é", "E\u0301"),  # decomposed after titlecasing
    ("ﬁ", "FI"),  # compatibility decomposition, then titlecase of each part
])
def test_casemap_equal(a: str, b: str) -> None:
    """RFC 5051 §2: strings equal after titlecasing and decomposition compare equal."""
    assert casemap(a) == casemap(b)


def test_casemap_orders_by_code_point_of_canonical_form() -> None:
    """RFC 5051 §2: ordering is on the octets of the titlecased canonical UTF-8 form."""
    words = ["zebra", "Äpfel", "apple", "Été", "eta"]
    # "A" + U+0308 sorts after "AP": combining marks follow ASCII letters
    assert sorted(words, key=casemap) == ["apple", "Äpfel", "eta", "Été", "zebra"]


@given(st.text(max_size=40))
@settings(max_examples=300)
def test_casemap_idempotent(s: str) -> None:
    """Casemapping a casemapped string changes nothing."""
    assert casemap(casemap(s)) == casemap(s)


@given(st.text(st.characters(max_codepoint=0x4FF), max_size=40))
@settings(max_examples=300)
def test_casemap_case_blind_latin_greek_cyrillic(s: str) -> None:
    """In scripts whose lower and upper case share a titlecase (Latin, Greek,
    Cyrillic) case differences vanish.  (Not in every script: Georgian Mkhedruli's
    titlecase is itself, not its Mtavruli capital, so RFC 5051 keeps them apart.)"""
    if any(len(c.upper()) > 1 or len(c.lower()) > 1 for c in s):
        return  # SpecialCasing full mappings are not part of RFC 5051
    assert casemap(s.lower()) == casemap(s.upper())


# -- RFC 5256 §2.1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("subject,base", [
    ("Hello", "Hello"),
    ("Re: Hello", "Hello"),
    ("RE:  re: Fwd: Hello", "Hello"),
    ("Re[2]: Hello", "Hello"),  # subj-refwd with a subj-blob before ":"
    ("fw: Hello (fwd)", "Hello"),
    ("Hello (fwd) (FWD)  ", "Hello"),  # step 2 repeats
    ("[list] Re: Hello", "Hello"),  # *subj-blob subj-refwd
    ("[list] Hello", "Hello"),  # step 4
    ("[list]", "[list]"),  # step 4: the blob stays when nothing would remain
    ("[fwd: Re: Hello]", "Hello"),  # step 6
    ("Re: [fwd: [x] Hello (fwd)]", "Hello"),
    ("  Hello\t\r\n  world  ", "Hello world"),  # step 1 and 2
    ("Reply: Hello", "Reply: Hello"),  # "Reply" is not subj-refwd
    ("", ""),
    ("Re:", ""),
])
def test_base_subject(subject: str, base: str) -> None:
    """RFC 5256 §2.1 steps 1-6 on hand-made subjects."""
    assert base_subject(subject) == base


@given(st.text(alphabet=st.sampled_from(list("ReFwd[]:() \tab")), max_size=30))
@settings(max_examples=500)
def test_base_subject_is_a_fixed_point(s: str) -> None:
    """Extraction ends (no loop) and a base subject has no leader, trailer or wrapper
    left: extracting again changes nothing."""
    b = base_subject(s)
    assert base_subject(b) == b
    assert not b.startswith((" ", "\t")) and not b.endswith((" ", "\t"))


def _data(seq: int, header: bytes, size: int = 100, when: float = 0.0) -> SortData:
    return sort_data(seq, seq * 10, datetime.fromtimestamp(when, UTC), size, parse_headers(header))


def test_raw_utf8_headers_read_as_utf8() -> None:
    """RFC 6532: unencoded UTF-8 in Subject and From is text, not escaped octets (a
    defect found against Dovecot: raw "café" sorted apart from encoded "café")."""
    raw = _data(1, "Subject: Re: café\r\nFrom: Ärger <a@x>\r\n\r\n".encode())
    enc = _data(2, b"Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: =?utf-8?q?=C3=84rger?= <a@x>\r\n\r\n")
    assert raw.subject == enc.subject == casemap("CAFÉ")
    assert raw.display_from == enc.display_from == casemap("Ärger")


def test_sort_data_keys() -> None:
    """FROM/TO/CC use the first addr-mailbox (RFC 5256 §3); DISPLAYFROM the decoded
    display-name or else mailbox@host (RFC 5957 §3); DATE falls back to the arrival."""
    d = _data(1, b"From: =?utf-8?q?=C3=89mile?= <zed@example.test>, b@x\r\n"
                 b"To: bob@example.test\r\nSubject: Re: [l] Caf=?x?= \r\n"
                 b"Date: Thu, 01 Feb 2024 10:00:00 +0100\r\n\r\n", when=5.0)
    assert d.from_ == "ZED" and d.to == "BOB" and d.cc == ""
    assert d.display_from == casemap("Émile") and d.display_to == "BOB@EXAMPLE.TEST"
    assert d.sent == datetime(2024, 2, 1, 9, 0, tzinfo=UTC).timestamp()
    assert d.arrival == 5.0
    assert _data(2, b"Date: not a date\r\n\r\n", when=7.0).sent == 7.0
    assert _data(3, b"\r\n", when=8.0).sent == 8.0


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=60),
       st.lists(st.tuples(st.sampled_from(["SIZE", "ARRIVAL", "SUBJECT", "FROM"]), st.booleans()),
                min_size=1, max_size=3),
       st.integers(1, 7))
@settings(max_examples=200)
def test_chunked_sort_equals_one_sort(rows: list[tuple[int, int]], criteria: list[tuple[str, bool]],
                                      chunk: int) -> None:
    """The chunked sort and merge gives the order of one stable multi-pass sort, ties in
    sequence order (RFC 5256 §3)."""
    items = [_data(i + 1, b"Subject: %s\r\nFrom: %s@x\r\n\r\n" % (b"ab"[a % 2:], b"pq"[b % 2:]),
                   size=a, when=float(b)) for i, (a, b) in enumerate(rows)]
    out: list[SortData] = []
    for _ in sort_steps(items, criteria, out, chunk=chunk):
        pass
    expect = sorted(items, key=lambda d: d.seq)
    attr = {"SIZE": "size", "ARRIVAL": "arrival", "SUBJECT": "subject", "FROM": "from_"}
    for k, rev in reversed(criteria):
        expect.sort(key=lambda d, a=attr[k]: getattr(d, a), reverse=rev)  # type: ignore[misc]
    assert [d.seq for d in out] == [d.seq for d in expect]


# -- parser ------------------------------------------------------------------------------------


def test_parse_sort_rfc_examples() -> None:
    """The commands of RFC 5256 §3's examples parse."""
    c = parse_bytes(b"A282 SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994")
    assert c.name == "SORT" and c.args.criteria == (("SUBJECT", False),)
    assert c.args.charset == "UTF-8" and c.args.key.name == "SINCE"
    c = parse_bytes(b"A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL")
    assert c.args == SortArgs((("SUBJECT", False), ("DATE", True)), "UTF-8", SearchKey("ALL"))
    c = parse_bytes(b'A284 SORT (SUBJECT) US-ASCII TEXT "not in mailbox"')
    assert c.args.key == SearchKey("TEXT", ("not in mailbox",))
    c = parse_bytes(b"u UID SORT (REVERSE DISPLAYFROM ARRIVAL) utf-8 1:* UNSEEN")
    assert c.name == "UID SORT" and c.args.key.name == "AND"


@pytest.mark.parametrize("line", [
    b"a SORT () UTF-8 ALL", b"a SORT (SUBJECT) ALL", b"a SORT (BOGUS) UTF-8 ALL",
    b"a SORT (REVERSE) UTF-8 ALL", b"a SORT SUBJECT UTF-8 ALL", b"a SORT (SUBJECT) UTF-8",
    b"a SORT (REVERSE REVERSE SIZE) UTF-8 ALL",
])
def test_parse_sort_rejects(line: bytes) -> None:
    """Malformed SORT commands are parse errors (tagged BAD)."""
    with pytest.raises(ParseError):
        parse_bytes(line)


@given(st.binary(max_size=60))
@settings(max_examples=500)
def test_parse_sort_fuzz(tail: bytes) -> None:
    """Any bytes after "SORT " either parse or raise ParseError, nothing else."""
    try:
        parse_bytes(b"a SORT " + tail.replace(b"\r", b"").replace(b"\n", b""))
    except ParseError:
        pass


# -- session -------------------------------------------------------------------------------------

MSGS = [  # built so that RFC 5256 §3's "SORT (SUBJECT REVERSE DATE)" answers 5 3 4 1 2
    b"Subject: c\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n1",
    b"Subject: d\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n2",
    b"Subject: b\r\nDate: Wed, 03 Jan 2024 00:00:00 +0000\r\n\r\n3",
    b"Subject: Re: B\r\nDate: Tue, 02 Jan 2024 00:00:00 +0000\r\n\r\n4",
    b"Subject: [list] a\r\nDate: Tue, 02 Jan 2024 00:00:00 +0000\r\n\r\n5",
]


def _session() -> Conn:
    store, acc = make_store()
    for i, m in enumerate(MSGS):
        store.put(acc, "INBOX", m, when=datetime(2024, 1, 10 - i, tzinfo=UTC))
    c = Conn(store)
    c.login()
    c.select()
    return c


def test_sort_rfc5256_examples_byte_exact() -> None:
    """RFC 5256 §3 examples: the untagged SORT lines byte for byte."""
    c = _session()
    assert c.cmd("A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL") == (
        b"* SORT 5 3 4 1 2\r\nA283 OK SORT completed\r\n")
    assert c.cmd('A284 SORT (SUBJECT) US-ASCII TEXT "not in mailbox"') == (
        b"* SORT\r\nA284 OK SORT completed\r\n")
    assert c.cmd("A285 SORT (SUBJECT) UTF-8 SENTSINCE 2-Jan-2024") == (
        b"* SORT 5 3 4\r\nA285 OK SORT completed\r\n")


def test_sort_criteria_and_uid_sort() -> None:
    """ARRIVAL, REVERSE ARRIVAL, SIZE and UID SORT; unknown charsets get BADCHARSET."""
    c = _session()
    assert c.cmd("a SORT (ARRIVAL) UTF-8 ALL").startswith(b"* SORT 5 4 3 2 1\r\n")
    assert c.cmd("b SORT (REVERSE ARRIVAL) UTF-8 ALL").startswith(b"* SORT 1 2 3 4 5\r\n")
    assert c.cmd("c UID SORT (SIZE) UTF-8 2:4").startswith(b"* SORT 2 3 4\r\n")
    assert c.cmd("d SORT (SIZE) KOI8-R ALL") == (
        b"d NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n")
    assert c.cmd("e SORT (BOGUS) UTF-8 ALL").startswith(b"e BAD")


def test_sort_display_rfc5957() -> None:
    """RFC 5957 §3: DISPLAYFROM sorts on the display-name, falling back to the address;
    FROM sorts on the mailbox part."""
    store, acc = make_store()
    store.put(acc, "INBOX", b"From: Zoe <a@example.test>\r\n\r\nx")
    store.put(acc, "INBOX", b"From: b@example.test\r\n\r\nx")
    store.put(acc, "INBOX", b"From: =?utf-8?q?=C3=84nne?= <c@example.test>\r\n\r\nx")
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("a SORT (DISPLAYFROM) UTF-8 ALL").startswith(b"* SORT 3 2 1\r\n")
    assert c.cmd("b SORT (FROM) UTF-8 ALL").startswith(b"* SORT 1 2 3\r\n")
    assert c.cmd("c SORT (REVERSE DISPLAYTO FROM) UTF-8 ALL").startswith(b"* SORT 1 2 3\r\n")


def test_sort_capabilities_and_unselect_rfc3691() -> None:
    """SORT and SORT=DISPLAY are advertised after login; UNSELECT (RFC 3691 §2) leaves
    the selected state without expunging \\Deleted messages."""
    c = _session()
    caps = c.cmd("a CAPABILITY")
    assert b" SORT SORT=DISPLAY" in caps and b" UNSELECT" in caps
    c.cmd("b STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("A341 UNSELECT") == b"A341 OK UNSELECT completed\r\n"
    assert c.cmd("c SORT (ARRIVAL) UTF-8 ALL").startswith(b"c BAD")
    assert b"* 5 EXISTS" in c.select()


def test_esort_rfc5267_examples_byte_exact() -> None:
    """RFC 5267 §3.1 ESORT: the RFC's answer forms byte for byte; MIN/MAX are the first
    and last in sort order and ALL keeps sort order (ranges only for ascending runs)."""
    c = _session()
    assert c.cmd("A282 SORT RETURN (MIN COUNT) (DATE) UTF-8 2:4") == (
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\nA282 OK SORT completed\r\n')
    assert c.cmd("A283 SORT RETURN (ALL) (REVERSE DATE) UTF-8 ALL") == (
        b'* ESEARCH (TAG "A283") ALL 3:5,1:2\r\nA283 OK SORT completed\r\n')
    assert c.cmd("A284 SORT RETURN (COUNT) (DATE) UTF-8 SUBJECT b") == (
        b'* ESEARCH (TAG "A284") COUNT 2\r\nA284 OK SORT completed\r\n')
    assert c.cmd("a UID SORT RETURN (MIN MAX) (SUBJECT) UTF-8 ALL").startswith(
        b'* ESEARCH (TAG "a") UID MIN 5 MAX 2\r\n')
    assert c.cmd("b SORT RETURN () (SIZE) UTF-8 ALL").startswith(b'* ESEARCH (TAG "b") ALL 1:5\r\n')
    assert c.cmd("c SORT RETURN (MIN COUNT) (SIZE) UTF-8 NOT ALL").startswith(
        b'* ESEARCH (TAG "c") COUNT 0\r\n')
    # RFC 5267 §3 with RFC 5182: SORT RETURN (SAVE) keeps the result for "$".
    assert c.cmd("d SORT RETURN (SAVE) (SIZE) UTF-8 2:3") == b"d OK SORT completed\r\n"
    assert c.cmd("d2 SEARCH $").startswith(b"* SEARCH 2 3\r\n")
    assert c.cmd("d3 SORT RETURN (SAVE MIN) (REVERSE DATE) UTF-8 ALL").startswith(
        b'* ESEARCH (TAG "d3") MIN 3\r\n')
    assert c.cmd("d4 SEARCH $").startswith(b"* SEARCH 3\r\n")
    assert c.cmd("e SORT RETURN (BOGUS) (SIZE) UTF-8 ALL").startswith(b"e BAD")
    assert b" ESORT" in c.cmd("f CAPABILITY")


def test_header_keys_cached_per_blob_and_internal_date_per_message() -> None:
    """A second SORT or THREAD reads no message file (header keys are kept per blob),
    yet a message without a Date header still sorts by its own internal date."""
    store, acc = make_store()
    store.put(acc, "INBOX", b"Subject: x\r\n\r\nbody", when=datetime(2024, 1, 5, tzinfo=UTC))
    store.put(acc, "INBOX", b"Subject: x\r\n\r\nbody", when=datetime(2024, 1, 3, tzinfo=UTC))
    store.put(acc, "INBOX", b"Subject: y\r\n\r\nother", when=datetime(2024, 1, 4, tzinfo=UTC))
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("a SORT (DATE) UTF-8 ALL").startswith(b"* SORT 2 3 1\r\n")
    opened: list[str] = []
    real = store.open_blob

    def counting(blob_id: str) -> object:
        opened.append(blob_id)
        return real(blob_id)

    store.open_blob = counting  # type: ignore[method-assign]
    assert c.cmd("b SORT (REVERSE DATE) UTF-8 ALL").startswith(b"* SORT 1 3 2\r\n")
    assert c.cmd("c THREAD ORDEREDSUBJECT UTF-8 ALL").startswith(b"* THREAD (2 1)(3)\r\n")
    assert opened == []
