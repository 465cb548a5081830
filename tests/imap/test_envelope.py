"""The fast ENVELOPE renderer gives exactly the octets of the general path."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.envelope import render_envelope, split_fields
from mxd.imap.message import HeaderList, envelope
from mxd.imap.messagecache import FIRST_HEAD, MAX_HEADER, read_header, read_header_block
from mxd.imap.response import render


def general(block: bytes, utf8: bool) -> bytes:
    """The path FETCH ENVELOPE took before the fast renderer (the reference)."""
    return render(envelope(HeaderList.parse(block)), utf8)


def header_of(raw: bytes) -> bytes:
    return read_header_block(io.BytesIO(raw))


CORPUS = [
    # plain, as most mail is
    b"From: Sender 1 <s1@example.test>\r\nTo: Alice <alice@example.test>, bob@example.test\r\n"
    b"Cc: carol@example.test\r\nSubject: hello there\r\nDate: Thu, 01 Feb 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1.x@example.test>\r\nMIME-Version: 1.0\r\n\r\nbody\r\n",
    # LF-only line ends, no body
    b"From: a@b.test\nSubject: lf only\nTo: c@d.test\n",
    # folded lines, in wanted and unwanted fields, with tabs
    b"Subject: a long\r\n\tsubject that\r\n  folds twice\r\nX-Junk: skip\r\n me too\r\n"
    b"From: \"Folded Name\"\r\n <f@x.test>\r\nTo: a@x.test,\r\n b@x.test\r\n\r\n",
    # encoded words stay as they are
    b"Subject: =?utf-8?B?w6TDtsO8?= =?iso-8859-1?q?caf=E9?=\r\n"
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.test>\r\n\r\n",
    # groups, comments, route addresses, quoted local parts: the registry path
    b"To: Team: a@x.test, \"B\" <b@x.test>;, Empty:;\r\nCc: c@x.test (Carl)\r\n"
    b"From: <@route.test:r@x.test>\r\nBcc: \"odd local\"@x.test\r\n\r\n",
    # 8-bit headers (raw UTF-8 and Latin-1)
    "From: Jürgen Groß <jg@example.test>\r\nSubject: Grüße\r\n".encode()
    + b"To: \xe9t\xe9 <e@x.test>\r\nSubject: second subject ignored\r\n\r\n",
    # broken MIME and junk lines
    b"From: <<@>>,,\"\r\nSubject\r\nTo: x@y.test\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n\r\n",
    b"bad header line\r\n continued\r\nSubject: after junk\r\n\r\n",
    b"Subject : spaced name\r\nFrom : a@b.test\r\n\r\n",
    b"\tleading fold\r\nSubject: x\r\n\r\n",
    # repeated address fields are joined; empty ones are NIL
    b"To: a@x.test\r\nTo: b@x.test\r\nCc:\r\nSender: \r\nReply-To: r@x.test\r\n\r\n",
    # odd line breaks: lone CR, VT, FF, FS
    b"Subject: lone\rcr\r\nFrom: a@x.test\r\n\r\n",
    b"Subject: vt\x0bff\x0c\r\nFrom: a@x.test\x1c\r\n\r\n",
    b"Subject: trailing space   \r\nIn-Reply-To: <p@x.test>  \r\n\r\n",
    # quotes, backslashes, control characters, NUL, long values: literals
    b"Subject: say \"hi\" \\ back\r\nFrom: \"q\\\"uote\" <q@x.test>\r\n\r\n",
    b"Subject: nul\x00here\r\nMessage-ID: <" + b"m" * 1200 + b"@x.test>\r\n\r\n",
    # empty header, no header at all
    b"\r\nbody only\r\n",
    b"",
    b"Subject: no end of header",
    b"Subject: ends with cr\r",
]


@pytest.mark.parametrize("utf8", [False, True])
@pytest.mark.parametrize("raw", CORPUS)
def test_corpus_matches_general_path(raw: bytes, utf8: bool) -> None:
    """On a corpus of real and broken headers, the fast renderer equals the general one."""
    block = header_of(raw)
    assert render_envelope(block, utf8) == general(block, utf8)


def test_plain_header_takes_the_fast_path() -> None:
    """A well-formed header is split by the fast splitter (no fallback)."""
    fields = split_fields(header_of(CORPUS[0]))
    assert fields is not None
    assert fields[1] == [b"hello there"]
    assert fields[5] == [b"Alice <alice@example.test>, bob@example.test"]


def test_unusual_headers_fall_back() -> None:
    """Junk lines, spaced names and odd line breaks send the header to the general path."""
    for raw in (b"bad header line\r\nSubject: x\r\n\r\n", b"Subject : x\r\n\r\n",
                b"Subject: a\rb\r\n\r\n", b"Subject: \x1cx\r\n\r\n"):
        assert split_fields(header_of(raw)) is None


_NAMES = st.sampled_from([
    b"From", b"from", b"To", b"Cc", b"BCC", b"Sender", b"Reply-To", b"Subject", b"Date",
    b"Message-ID", b"In-Reply-To", b"X-Other", b"Subject ", b"Bad Name", b"",
])
_VALUE_PIECES = st.sampled_from([
    b"a@x.test", b"\"Q\" <q@x.test>", b"Name <n@x.test>", b", ", b",", b"group:", b";",
    b"(comment)", b"<", b">", b"@", b"\"", b"\\", b" ", b"\t", b"\r\n ", b"\n\t", b"\r",
    b"\xc3\xa9", b"\xff", b"=?utf-8?q?x?=", b"\x00", b"\x0b", b"\x1f", b":", b"word",
])
_LINE = st.one_of(
    st.builds(lambda n, v, e: n + b":" + b"".join(v) + e, _NAMES, st.lists(_VALUE_PIECES, max_size=8),
              st.sampled_from([b"\r\n", b"\n"])),
    st.builds(lambda v: b" " + b"".join(v) + b"\r\n", st.lists(_VALUE_PIECES, max_size=4)),
    st.sampled_from([b"junk\r\n", b"\r\n", b"\n"]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_LINE, max_size=12), st.booleans())
def test_any_header_matches_general_path(lines: list[bytes], utf8: bool) -> None:
    """For any header built from field, fold, junk and odd-octet pieces, the fast
    renderer gives the same octets as the general path."""
    block = header_of(b"".join(lines) + b"\r\nbody")
    assert render_envelope(block, utf8) == general(block, utf8)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_match_general_path(raw: bytes, utf8: bool) -> None:
    """Arbitrary octets as a header give the same ENVELOPE on both paths."""
    block = header_of(raw)
    assert render_envelope(block, utf8) == general(block, utf8)


@pytest.mark.parametrize("raw", [
    *CORPUS,
    b"",
    b"\r\n\r\nbody",
    b"A: b\r\n" * (FIRST_HEAD // 6) + b"\r\nbody",  # the header outgrows the first read
    b"A: " + b"b" * (FIRST_HEAD - 7) + b"\r\n\r\n" + b"body",  # blank line ends the first read
    b"A: " + b"b" * (FIRST_HEAD - 6) + b"\r\n\r\n" + b"body",  # blank line split across reads
    b"A: b\r\n" * 300_000,  # no end within MAX_HEADER
])
def test_read_header_matches_read_header_block(raw: bytes) -> None:
    """FETCH's small-read header (read_header) is the same block read_header_block gives."""
    # Both stop at MAX_HEADER octets when the header does not end before (in reads of
    # different sizes).
    assert read_header(lambda n: raw[:n]) == header_of(raw)[:MAX_HEADER]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"A: b\r\n", b"\r\n", b"\n", b"x" * 3000, b"\r", b" c\n"]),
                max_size=20))
def test_read_header_property(parts: list[bytes]) -> None:
    """Any header shape, split anywhere by the reads: the same block."""
    raw = b"".join(parts)
    assert read_header(lambda n: raw[:n]) == header_of(raw)
