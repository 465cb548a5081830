"""MIME structure, sections, ENVELOPE and BODYSTRUCTURE of stored messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.message import ParsedMessage, bodystructure, envelope, filter_header
from mxd.imap.response import render

NESTED = (b"From: A <a@x.test>\r\nTo: b@y.test, \"C D\" <c@z.test>\r\nSubject: hi\r\n"
          b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\npreamble\r\n--BB\r\n'
          b"Content-Type: text/plain\r\n\r\nhello\r\n--BB\r\nContent-Type: message/rfc822\r\n\r\n"
          b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=CC\r\n\r\n"
          b"--CC\r\nContent-Type: text/plain\r\n\r\nplain\r\n--CC\r\nContent-Type: text/html\r\n\r\n"
          b"<p>html</p>\r\n--CC--\r\n\r\n--BB--\r\nepilogue")


def test_sections_of_nested_message() -> None:
    """Part numbers reach into multiparts and encapsulated messages (RFC 3501 §6.4.5)."""
    m = ParsedMessage.parse(NESTED)
    assert m.section((1,), "") == b"hello"
    assert m.section((2,), "HEADER") == (b"Subject: inner\r\nContent-Type: multipart/alternative;"
                                          b" boundary=CC\r\n\r\n")
    assert m.section((2, 1), "") == b"plain"
    assert m.section((2, 2), "") == b"<p>html</p>"
    assert m.section((2, 2), "MIME") == b"Content-Type: text/html\r\n\r\n"
    assert m.section((), "HEADER.FIELDS", ("SUBJECT",)) == b"Subject: hi\r\n\r\n"
    assert m.section((3,), "") is None
    assert m.section((1,), "HEADER") is None  # not a message/rfc822 part


def test_single_part_message_part_one_is_body() -> None:
    """In a non-multipart message, part 1 is the body."""
    m = ParsedMessage.parse(b"Subject: x\r\n\r\nbody text\r\n")
    assert m.section((1,), "") == b"body text\r\n"
    assert m.section((), "TEXT") == b"body text\r\n"


def test_bodystructure_rendering() -> None:
    """BODYSTRUCTURE writes multipart children without spaces and text line counts."""
    bs = render(bodystructure(ParsedMessage.parse(NESTED)))
    assert bs.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)'
                         b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" ')
    assert b'"ALTERNATIVE"' in bs and bs.endswith(b'"MIXED" ("BOUNDARY" "BB") NIL NIL NIL)')
    body = render(bodystructure(ParsedMessage.parse(NESTED), extended=False))
    assert body.endswith(b' "MIXED")')


def test_envelope_addresses_and_defaults() -> None:
    """ENVELOPE splits addresses and defaults Sender and Reply-To to From."""
    m = ParsedMessage.parse(NESTED)
    env = render(envelope(m.root.headers))
    assert env == (b'(NIL "hi" (("A" NIL "a" "x.test")) (("A" NIL "a" "x.test")) (("A" NIL "a" "x.test")) '
                   b'((NIL NIL "b" "y.test")("C D" NIL "c" "z.test")) NIL NIL NIL NIL)')


def test_envelope_groups_and_comments() -> None:
    """Group syntax becomes group start/end markers; comments are not display names
    (RFC 3501 §7.4.2, the same output as Dovecot)."""
    m = ParsedMessage.parse(b"From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\r\n"
                            b"To: A Group:Chris Jones <c@public.example>,joe@example.org;\r\n"
                            b"Cc: undisclosed-recipients:;\r\n\r\n")
    env = render(envelope(m.root.headers))
    assert b'(("Pete" NIL "pete" "silly.test"))' in env
    assert (b'((NIL NIL "A Group" NIL)("Chris Jones" NIL "c" "public.example")'
            b'(NIL NIL "joe" "example.org")(NIL NIL NIL NIL))') in env
    assert b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))' in env


def test_eight_bit_header_becomes_literal() -> None:
    """Raw 8-bit header octets are returned unchanged, as a literal."""
    m = ParsedMessage.parse("Subject: café\r\n\r\nx".encode())
    env = render(envelope(m.root.headers))
    assert "{5}\r\ncafé".encode() in env


def test_broken_mime_is_tolerated() -> None:
    """A multipart without boundary or closing delimiter still has a structure."""
    no_boundary = ParsedMessage.parse(b"Content-Type: multipart/mixed\r\n\r\njunk")
    assert render(bodystructure(no_boundary)).startswith(b'(("TEXT" "PLAIN"')
    unterminated = ParsedMessage.parse(b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n\r\nabc')
    assert unterminated.section((1,), "") == b"abc"
    no_header_end = ParsedMessage.parse(b"Subject: only a header")
    assert no_header_end.section((), "TEXT") == b""


def test_binary_decodes_transfer_encoding() -> None:
    """BINARY returns decoded base64 and quoted-printable content (RFC 3516)."""
    m = ParsedMessage.parse(b'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n'
                            b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b\r\n"
                            b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n--b--\r\n")
    assert m.binary((1,)) == b"\x00\x01\x02"
    assert m.binary((2,)) == "café".encode()


def test_filter_header_keeps_folded_lines() -> None:
    """HEADER.FIELDS keeps continuation lines of a selected field."""
    block = b"Subject: a\r\n b\r\nTo: x\r\n\r\n"
    assert filter_header(block, ("SUBJECT",), False) == b"Subject: a\r\n b\r\n\r\n"
    assert filter_header(block, ("SUBJECT",), True) == b"To: x\r\n\r\n"


_PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=x\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=\"bogus\"\r\n", b"--x\r\n", b"--x--\r\n", b"\r\n",
    b"Subject: =?utf-8?b?!!?=\r\n", b"From: <<@>>,,\"\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"body\r\n", b"\xff\xfe", b"Content-Disposition: attachment; filename*=utf-8''%ZZ\r\n", b" folded\r\n",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=25))
def test_any_message_parses_and_renders(pieces: list[bytes]) -> None:
    """Any byte soup of MIME pieces parses, renders ENVELOPE/BODYSTRUCTURE and sections."""
    raw = b"".join(pieces)
    m = ParsedMessage.parse(raw)
    render(bodystructure(m))
    render(envelope(m.root.headers))
    for part in ((), (1,), (1, 1), (2,)):
        for text in ("", "HEADER", "TEXT", "MIME"):
            if text == "MIME" and not part:
                continue
            got = m.section(part, text)
            assert got is None or isinstance(got, bytes)
    m.text_parts()


def test_parse_headers_parses_a_block_once_per_thread() -> None:
    """The store's derivers parse the same header block one after the other: the
    second gets the first's parse; any other block is parsed anew, and another thread
    never gets this thread's parse."""
    import threading

    from mxd.imap.message import parse_headers

    a = b"Subject: one\r\nFrom: a@example.test\r\n\r\n"
    b = b"Subject: two\r\nFrom: a@example.test\r\n\r\n"  # same length, other octets
    first = parse_headers(a)
    assert parse_headers(bytes(bytearray(a))) is first
    other = parse_headers(b)
    assert other is not first and other["Subject"] == "two"
    assert parse_headers(a)["Subject"] == "one"
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(parse_headers(a)))
    t.start()
    t.join()
    assert seen[0] is not parse_headers(a) and seen[0]["Subject"] == "one"  # type: ignore[index]
