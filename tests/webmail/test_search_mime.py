"""The search box's parser and the reader's choice of body and attachments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.imap.message import ParsedMessage
from mxd.imap.values import SearchKey
from mxd.webmail.message import content_disposition
from mxd.webmail.mime import body, parse_part
from mxd.webmail.search import MAX_TERMS, search_key


@pytest.mark.parametrize("query,key", [
    ("", None),
    ("   ", None),
    ("invoice", SearchKey("TEXT", ("invoice",))),
    ("from:ann", SearchKey("FROM", ("ann",))),
    ("FROM:ann", SearchKey("FROM", ("ann",))),
    ("is:unseen", SearchKey("UNSEEN")),
    ("is:Flagged", SearchKey("FLAGGED")),
    ("is:bogus", SearchKey("TEXT", ("is:bogus",))),
    ("from:", SearchKey("TEXT", ("from:",))),
    ('subject:"budget 2027" x', SearchKey("AND", (SearchKey("SUBJECT", ("budget 2027",)),
                                                  SearchKey("TEXT", ("x",))))),
    ('"unbalanced', SearchKey("TEXT", ('"unbalanced',))),
    ("to:bob cc:carol body:hi", SearchKey("AND", (SearchKey("TO", ("bob",)),
                                                  SearchKey("CC", ("carol",)),
                                                  SearchKey("BODY", ("hi",))))),
])
def test_search_key(query: str, key: SearchKey | None) -> None:
    assert search_key(query) == key


@given(st.text(max_size=300))
def test_search_key_never_raises_and_is_bounded(query: str) -> None:
    """Any text gives a program of at most MAX_TERMS keys, or None."""
    key = search_key(query)
    if key is not None and key.name == "AND":
        assert 2 <= len(key.args) <= MAX_TERMS


@pytest.mark.parametrize("text,part", [
    ("1", (1,)), ("1.2.3", (1, 2, 3)), ("", None), ("0", None), ("1..2", None),
    ("a", None), ("1.-1", None), ("99999", None),
])
def test_parse_part(text: str, part: tuple[int, ...] | None) -> None:
    assert parse_part(text) == part


def test_alternative_prefers_last_and_attachments_listed() -> None:
    """multipart/alternative: the last text/plain and text/html win (RFC 2046 §5.1.4);
    named non-text parts and disposition attachments are attachments; images with a
    Content-ID are inline candidates; an attached message/rfc822 is message.eml."""
    raw = (b"Content-Type: multipart/mixed; boundary=X\r\n\r\n"
           b"--X\r\nContent-Type: multipart/alternative; boundary=Y\r\n\r\n"
           b"--Y\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
           b"--Y\r\nContent-Type: text/html\r\n\r\n<i>first</i>\r\n"
           b"--Y\r\nContent-Type: text/html\r\n\r\n<b>last</b>\r\n--Y--\r\n"
           b"--X\r\nContent-Type: image/gif\r\nContent-ID: <i1>\r\n\r\nGIF\r\n"
           b"--X\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; "
           b"filename*=UTF-8''caf%C3%A9.txt\r\n\r\ntext file\r\n"
           b"--X\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--X--\r\n")
    b = body(ParsedMessage.parse(raw))
    assert b.text == "plain" and b.html == "<b>last</b>"
    assert [(a.part, a.filename) for a in b.attachments] == [
        ((2,), "part-2"), ((3,), "café.txt"), ((4,), "message.eml")]
    assert list(b.inline) == ["i1"]


@pytest.mark.parametrize("name,ascii_part", [
    ("report.pdf", 'filename="report.pdf"'),
    ("../../etc/passwd", 'filename="_.._etc_passwd"'),
    ('a"b\r\nX-Evil: 1', 'filename="a_b__X-Evil: 1"'),
    ("café.txt", 'filename="caf_.txt"'),
    ("", 'filename="attachment"'),
])
def test_content_disposition(name: str, ascii_part: str) -> None:
    """RFC 6266: attachment, a safe ASCII filename and the UTF-8 one in filename*."""
    value = content_disposition(name).decode("ascii")
    assert value.startswith("attachment; ") and ascii_part in value
    assert "\r" not in value and "\n" not in value
