"""FETCH PREVIEW (RFC 8970): the preview text of typical messages, stored when the message
is stored, computed for older messages, NIL under LAZY when not stored; Hypothesis holds
the generator to its bounds."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mxd.imap import preview
from mxd.imap.parser import parse_bytes
from mxd.imap.values import FetchAtt
from tests.imap.helpers import Conn, make_store

PLAIN = (b"From: a@example.test\r\nSubject: hi\r\n\r\n"
         b"Hello Bob,\r\n\r\n  how   are you?\r\n")
HTML = (b"From: a@example.test\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
        b"<p>Caf\xc3\xa9 &amp; <b>cake</b></p><!-- hidden --><script>x()</script>"
        b"<div>tomorrow?</div></body></html>\r\n")
ALTERNATIVE = (b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=M\r\n\r\n"
               b"--M\r\nContent-Type: multipart/alternative; boundary=A\r\n\r\n"
               b"--A\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n"
               b"--A\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\nplain version =E9t=E9\r\n"
               b"--A--\r\n--M\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\n"
               b"attached\r\n--M--\r\n")
ONLY_ATTACHMENT = (b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=M\r\n\r\n"
                   b"--M\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   + base64.b64encode(b"%PDF") + b"\r\n--M--\r\n")


@pytest.mark.parametrize(("raw", "text"), [
    (PLAIN, "Hello Bob, how are you?"),
    (HTML, "T Café & cake tomorrow?"),
    (ALTERNATIVE, "plain version été"),
    (ONLY_ATTACHMENT, ""),
    (b"Subject: no body\r\n\r\n", ""),
    (b"From: a\r\n\r\n" + b"word " * 100, ("word " * 40).strip()),
])
def test_preview_text(raw: bytes, text: str) -> None:
    """The first text part (plain before HTML in an alternative, attachments passed
    over), decoded, HTML stripped, white space collapsed, at most 200 characters."""
    assert preview.preview_text(raw) == text


def test_parse_preview_items() -> None:
    """RFC 8970 §6: PREVIEW with an optional (LAZY) modifier; unknown modifiers are BAD."""
    assert parse_bytes(b"a FETCH 1 (PREVIEW (LAZY) UID)").args.atts == (
        FetchAtt("PREVIEW", lazy=True), FetchAtt("UID"))
    assert parse_bytes(b"a FETCH 1 PREVIEW").args.atts == (FetchAtt("PREVIEW"),)


def test_fetch_preview_stored_and_lazy() -> None:
    """A message stored with the deriver registered is answered from the stored value;
    an older one is computed on FETCH PREVIEW and NIL under PREVIEW (LAZY) (RFC 8970
    §3.2) until the store's backfill has stored it."""
    store, acc = make_store()
    store.put(acc, "INBOX", PLAIN)  # before the deriver: an "older" message
    preview.register(store)
    store.put(acc, "INBOX", HTML)
    c = Conn(store)
    c.login()
    assert b" PREVIEW" in c.cmd("a CAPABILITY")
    c.select()
    assert c.cmd("a FETCH 1:2 (PREVIEW (LAZY))") == (
        b"* 1 FETCH (PREVIEW NIL)\r\n"
        b"* 2 FETCH (PREVIEW {24}\r\nT Caf\xc3\xa9 & cake tomorrow?)\r\n"
        b"a OK FETCH completed\r\n")
    assert c.cmd("a UID FETCH 1 (PREVIEW)") == (
        b'* 1 FETCH (UID 1 PREVIEW "Hello Bob, how are you?")\r\n'
        b"a OK UID FETCH completed\r\n")
    store.backfill_derived(10)
    c2 = Conn(store)
    c2.login()
    c2.select()
    assert b'PREVIEW "Hello Bob, how are you?"' in c2.cmd("a FETCH 1 (PREVIEW (LAZY))")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([b"text/plain", b"text/html",
                                                  b"multipart/alternative; boundary=x"]))
def test_preview_bounds(body: bytes, ctype: bytes) -> None:
    """Whatever the body, the preview is at most 200 characters with no control
    characters, and deriving it never raises."""
    raw = b"Content-Type: " + ctype + b"\r\n\r\n" + body
    text = preview.preview_text(raw)
    assert len(text) <= preview.MAX_CHARS
    assert all(ch >= " " and ch != "\x7f" for ch in text)
    assert preview.derive(lambda n: raw[:n])[preview.KIND] == text.encode("utf-8")


@given(st.text(alphabet=st.sampled_from(list("ab \t\r\n\u00a0\u2003x.")), max_size=6000))
def test_collapse_equals_collapsing_everything(text: str) -> None:
    """Collapsing only a window of the text gives the preview the whole text gives."""
    from mxd.imap.preview import MAX_CHARS, _collapse

    assert _collapse(text)[:2 * MAX_CHARS] == _WS.sub(" ", text).strip()[:2 * MAX_CHARS]


_WS = re.compile(r"\s+")
# Every character re's \s matches, and some that look like white space but are not.
_SPACES = [chr(c) for c in range(0x110000) if _WS.match(chr(c))] + ["\u200b", "\ufeff", "\x00"]


@given(st.text(alphabet=st.sampled_from([*_SPACES, "a", "b", "\x01", "\x7f", "\x80", "\u00e9"]),
               max_size=3000))
def test_collapse_and_controls_as_the_regex_and_filter_do(text: str) -> None:
    """The preview's white-space collapsing (str.split) and control-character removal
    (str.translate) give what the regular expression and the character filter they
    replace gave, for every white-space character."""
    from mxd.imap.preview import _CONTROLS, MAX_CHARS, _collapse

    assert _collapse(text)[:2 * MAX_CHARS] == _WS.sub(" ", text).strip()[:2 * MAX_CHARS]
    assert text.translate(_CONTROLS) == "".join(c for c in text if c >= " " and c != "\x7f")


@pytest.mark.parametrize(("age", "answer"), [
    (3.0, b'PREVIEW "Hello Bob, how are you?"'),  # values may still be coming
    (11.0, b"PREVIEW NIL"),  # older: left to the backfill
])
def test_lazy_preview_of_mail_that_just_arrived_is_computed(age: float, answer: bytes) -> None:
    """A message without a stored preview that arrived a moment ago (its values may
    still be on their way: the store derives delivered mail once quiet, within
    DERIVED_MAX_DELAY) is computed under LAZY; an older one is NIL (RFC 8970 §3.2)."""
    store, acc = make_store()
    store.put(acc, "INBOX", PLAIN, when=datetime.fromtimestamp(1_000_000, UTC))  # no deriver
    clock = Clock()
    clock.advance(1_000_000 + age)
    c = Conn(store, clock=clock)
    c.login()
    c.select()
    assert answer in c.cmd("a FETCH 1 (PREVIEW (LAZY))")


def test_fetch_preview_of_many_messages_from_the_mailbox_s_stored_previews() -> None:
    """A FETCH of PREVIEW for many messages (the column path with the mailbox's stored
    previews, kept between commands) answers what one FETCH per message answers: stored
    previews, computed ones for messages stored before previews were (NIL under LAZY),
    with FLAGS/UID as asked; a message stored later is seen by the next FETCH."""
    store, acc = make_store()
    bodies = [PLAIN, HTML, ALTERNATIVE, ONLY_ATTACHMENT]
    for i in range(40):
        store.put(acc, "INBOX", bodies[i % 4])
    preview.register(store)
    for i in range(40):
        store.put(acc, "INBOX", bodies[(i + 1) % 4])
    first = Conn(store)
    first.login()
    first.select()
    # RFC 8970 §3.2: LAZY gives NIL for the 40 without a stored preview, nothing computed.
    assert first.cmd("f FETCH 1:* (PREVIEW (LAZY))").count(b"PREVIEW NIL") == 40
    c = Conn(store)
    c.login()
    c.select()
    c.cmd("s STORE 3,50 +FLAGS (\\Flagged)")
    for atts in ("PREVIEW", "(UID PREVIEW (LAZY) FLAGS)", "(PREVIEW RFC822.SIZE)"):
        whole = c.cmd(f"f FETCH 1:* {atts}")
        assert whole.endswith(b"f OK FETCH completed\r\n"), whole[-200:]
        one_by_one = b"".join(c.cmd(f"f FETCH {n} {atts}").rsplit(b"f OK", 1)[0]
                              for n in range(1, 81))
        assert whole.rsplit(b"f OK", 1)[0] == one_by_one, atts
    store.put(acc, "INBOX", PLAIN)
    c.cmd("n NOOP")
    assert b'* 81 FETCH (PREVIEW "Hello Bob, how are you?")' in c.cmd("f FETCH 1:* (PREVIEW)")
