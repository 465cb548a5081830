"""The compose core (mxd.webmail.compose): the message built from a form parses back to
the same fields, header injection is refused with the field named, sizes are bounded."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import getaddresses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.webmail.compose import (
    Attachment,
    ComposeError,
    ComposeForm,
    Forward,
    Limits,
    build,
    forward_subject,
    parse_address_list,
    quote_text,
    references_for_reply,
    reply_subject,
)

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
ME = "me@example.org"


def make(**kw: object) -> bytes:
    form = ComposeForm(**{"from_addr": ME, "to": "you@example.net", **kw})  # type: ignore[arg-type]
    return build(form, allowed_from=[ME], now=NOW, hostname="mx.example.org",
                 unique="u1").message


def parsed(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def decoded(raw: str) -> str:
    """RFC 2047 decoding by the email package's older API, which joins adjacent
    encoded words as §6.2 says (the newer parser inserts a space in a phrase)."""
    return str(make_header(decode_header(raw)))


def raw_field(data: bytes, name: str) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    value = msg[name]
    return "" if value is None else str(value).replace("\r\n", "").replace("\n", "")


# -- header injection -------------------------------------------------------------------

INJECTIONS = ["\r\nBcc: victim@example.com", "\nX-Evil: 1", "\rX: 1", "a\0b", "a\x85b",
              "a\u2028b", "a\u2029b", "a\x0bb", "a\x1bb", "a\x7fb"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("field", ["subject", "to", "cc", "bcc", "from_addr", "in_reply_to",
                                   "references"])
def test_control_characters_refused_not_stripped(field: str, value: str) -> None:
    """CR, LF, NUL and other controls in any header field are refused with the field
    named (nothing is stripped and sent in a form the user did not write)."""
    base = {"subject": "hi", "to": "you@example.net", "cc": "", "bcc": "", "from_addr": ME,
            "in_reply_to": "", "references": ""}
    base[field] = (base[field] or "x@example.net") + value
    with pytest.raises(ComposeError) as e:
        build(ComposeForm(**base), allowed_from=[ME], now=NOW,  # type: ignore[arg-type]
              hostname="mx.example.org", unique="u1")
    assert e.value.field == {"from_addr": "from"}.get(field, field)
    assert "control character" in e.value.message or "not" in e.value.message


def test_attachment_filename_with_crlf_refused() -> None:
    """A file name is a header parameter: CR/LF in it is refused too."""
    with pytest.raises(ComposeError) as e:
        make(attachments=(Attachment("a\r\nX-Evil: 1", "text/plain", b"x"),))
    assert e.value.field == "attachments"


@pytest.mark.parametrize("text, error", [
    ("not an address", "not an address"),
    ("a@", "domain"),
    ("@b.example", "local part"),
    ("a@b..example", "label"),
    ("<a@b.example", "not an address"),
    ("x <a@[127.0.0.1]>", "literal"),
    ('"unterminated <a@b.example>', "unterminated"),
    ('"q"@b.example', "quoted local"),
])
def test_bad_addresses_refused(text: str, error: str) -> None:
    """Addresses are parsed and checked as SMTP mailboxes; the error says why."""
    with pytest.raises(ComposeError) as e:
        parse_address_list("to", text)
    assert error in str(e.value)


def test_sender_must_be_the_accounts() -> None:
    """From must be one of the account's addresses (submission checks it again)."""
    with pytest.raises(ComposeError, match="not an address of this account"):
        make(from_addr="ceo@example.org")


def test_no_recipient_refused() -> None:
    with pytest.raises(ComposeError, match="at least one recipient"):
        make(to="")


# -- sizes -------------------------------------------------------------------------------

def test_size_limits() -> None:
    """Body, each attachment and the whole message are bounded."""
    small = Limits(max_body=100, max_attachment=1000, max_total=3000)
    form = ComposeForm(from_addr=ME, to="you@example.net", body="x" * 101)
    with pytest.raises(ComposeError) as e:
        build(form, allowed_from=[ME], now=NOW, hostname="h", unique="u", limits=small)
    assert e.value.field == "body"
    form = ComposeForm(from_addr=ME, to="you@example.net",
                       attachments=(Attachment("a.bin", "application/x", b"\0" * 1001),))
    with pytest.raises(ComposeError, match="larger than 1000"):
        build(form, allowed_from=[ME], now=NOW, hostname="h", unique="u", limits=small)
    form = ComposeForm(from_addr=ME, to="you@example.net", attachments=tuple(
        Attachment(f"{i}.bin", "application/x", b"\0" * 900) for i in range(3)))
    with pytest.raises(ComposeError, match="larger than 3000"):
        build(form, allowed_from=[ME], now=NOW, hostname="h", unique="u", limits=small)


def test_too_many_recipients() -> None:
    form = ComposeForm(from_addr=ME, to=", ".join(f"r{i}@example.net" for i in range(4)))
    with pytest.raises(ComposeError, match="more than 3 recipients"):
        build(form, allowed_from=[ME], now=NOW, hostname="h", unique="u",
              limits=Limits(max_recipients=3))


# -- what is built -----------------------------------------------------------------------

def test_plain_message_fields() -> None:
    """Date, Message-ID, one text/plain part in 7bit when ASCII."""
    msg = parsed(make(subject="Hello", body="one\ntwo"))
    assert msg["Message-ID"] == "<u1@mx.example.org>"
    assert msg["Date"].datetime == NOW
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == "one\ntwo\n"


def test_bcc_only_in_the_sent_copy() -> None:
    """RFC 5322 §3.6.3: Bcc recipients get the mail, the transmitted header hides them;
    the sender's Sent copy keeps them."""
    c = build(ComposeForm(from_addr=ME, to="a@example.net", bcc="Hidden <h@example.com>"),
              allowed_from=[ME], now=NOW, hostname="h", unique="u")
    assert c.recipients == ("a@example.net", "h@example.com")
    assert b"h@example.com" not in c.message
    assert parsed(c.sent_copy)["Bcc"].addresses[0].addr_spec == "h@example.com"


def test_encoded_word_lookalike_subject_is_encoded() -> None:
    """RFC 2047 §5: text that looks like an encoded word is encoded, so it reads back
    as typed instead of being decoded."""
    msg = parsed(make(subject="=?utf-8?q?x?="))
    assert msg["Subject"] == "=?utf-8?q?x?="


def test_rfc2231_filename_and_idn() -> None:
    """A non-ASCII file name goes as an RFC 2231 parameter; an IDN domain as A-label
    (no SMTPUTF8 needed); a non-ASCII local part needs SMTPUTF8."""
    c = build(ComposeForm(from_addr=ME, to="bob@exämple.de", attachments=(
        Attachment("résumé.pdf", "application/pdf", b"%PDF\0\xff"),)),
        allowed_from=[ME], now=NOW, hostname="h", unique="u")
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf" in c.message
    assert c.recipients == ("bob@xn--exmple-cua.de",) and not c.smtputf8
    assert not c.eight_bit
    (part,) = parsed(c.message).iter_attachments()
    assert part.get_filename() == "résumé.pdf" and part.get_content() == b"%PDF\0\xff"
    c = build(ComposeForm(from_addr=ME, to="jösé@exämple.de"), allowed_from=[ME], now=NOW,
              hostname="h", unique="u")
    assert c.smtputf8 and c.recipients == ("jösé@exämple.de",)


def test_forward_as_attachment_keeps_the_bytes() -> None:
    """message/rfc822 (RFC 2046 §5.2.1) with the original octets, 8bit when needed."""
    orig = "From: a@b.example\r\nSubject: é\r\n\r\nbody é\r\n".encode()
    c = build(ComposeForm(from_addr=ME, to="x@example.net", forward=Forward(orig)),
              allowed_from=[ME], now=NOW, hostname="h", unique="u")
    assert orig in c.message and c.eight_bit
    (part,) = parsed(c.message).iter_attachments()
    assert part.get_content_type() == "message/rfc822"


def test_forward_inline_attaches_the_originals_files() -> None:
    orig = build(ComposeForm(from_addr=ME, to="x@example.net", attachments=(
        Attachment("a.txt", "text/plain", b"file\n"),)), allowed_from=[ME], now=NOW,
        hostname="h", unique="u").message
    c = build(ComposeForm(from_addr=ME, to="y@example.net", body="see below",
                          forward=Forward(orig, inline=True)),
              allowed_from=[ME], now=NOW, hostname="h", unique="v")
    (part,) = parsed(c.message).iter_attachments()
    assert part.get_filename() == "a.txt" and part.get_content().replace("\r\n", "\n") == "file\n"


def test_reply_helpers() -> None:
    assert reply_subject("Re: hi") == "Re: hi"
    assert reply_subject("hi") == "Re: hi"
    assert forward_subject("hi") == "Fwd: hi"
    assert references_for_reply("<c@x>", "<a@x> <b@x>", "") == "<a@x> <b@x> <c@x>"
    assert references_for_reply("<c@x>", "", "<b@x>") == "<b@x> <c@x>"
    assert quote_text("a\n\nb", "X wrote:") == "X wrote:\n> a\n>\n> b\n"
    c = build(ComposeForm(from_addr=ME, to="x@example.net", in_reply_to="<c@x>",
                          references="<a@x> <c@x>"), allowed_from=[ME], now=NOW,
              hostname="h", unique="u")
    msg = parsed(c.message)
    assert msg["In-Reply-To"] == "<c@x>" and msg["References"] == "<a@x> <c@x>"


def test_tls_required_no_field() -> None:
    """RFC 8689 §5: the "fallback to insecure" choice adds the header field."""
    assert parsed(make(tls_required_no=True))["TLS-Required"] == "No"
    assert "TLS-Required" not in parsed(make())


# -- any input: a clear error or a message that parses back to the same fields ------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)
_name = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=40)
_local = st.from_regex(r"[a-z0-9][a-z0-9.+_-]{0,10}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s)
_domain = st.sampled_from(["example.net", "exämple.de", "b.example", "xn--bcher-kva.example"])


@st.composite
def _mailbox(draw: st.DrawFn) -> tuple[str, str, str]:
    name, local, domain = draw(_name), draw(_local), draw(_domain)
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = f"{quoted} <{local}@{domain}>" if name.strip() else f"{local}@{domain}"
    return text, " ".join(name.split()), local


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(subject=_text, body=_text, to=st.lists(_mailbox(), min_size=1, max_size=4),
       cc=st.lists(_mailbox(), max_size=3), me=_name,
       fname=_text, data=st.binary(max_size=200))
def test_round_trip(subject: str, body: str, to: list[tuple[str, str, str]],
                    cc: list[tuple[str, str, str]], me: str, fname: str, data: bytes) -> None:
    """Any form either gives a ComposeError or a message whose Subject, From and To/Cc
    (names and addresses), body and attachment read back as given; the message is CRLF
    only, with lines of at most 998 octets (RFC 5322 §2.1.1) and no bare CR or LF."""
    quoted_me = '"' + me.replace("\\", "\\\\").replace('"', '\\"') + '"'
    form = ComposeForm(from_addr=f"{quoted_me} <{ME}>" if me.strip() else ME,
                       to=", ".join(t for t, _, _ in to), cc=", ".join(t for t, _, _ in cc),
                       subject=subject, body=body,
                       attachments=(Attachment(fname, "application/pdf", data),))
    try:
        c = build(form, allowed_from=[ME], now=NOW, hostname="mx.example.org", unique="u")
    except ComposeError:
        return
    lines = c.message.split(b"\r\n")
    assert all(b"\r" not in ln and b"\n" not in ln and len(ln) <= 998 for ln in lines)
    msg = parsed(c.message)
    assert decoded(raw_field(c.message, "Subject")) == subject.strip()
    names = [decoded(n) for n, _ in getaddresses([raw_field(c.message, "To")])]
    assert [" ".join(n.split()) for n in names] == [n for _, n, _ in to]
    assert [a.username for a in msg["To"].addresses] == [lp for _, _, lp in to]
    if cc:
        cc_names = [decoded(n) for n, _ in getaddresses([raw_field(c.message, "Cc")])]
        assert [" ".join(n.split()) for n in cc_names] == [n for _, n, _ in cc]
    else:
        assert "Cc" not in msg
    ((from_name, from_addr),) = getaddresses([raw_field(c.message, "From")])
    assert " ".join(decoded(from_name).split()) == " ".join(me.split()) and from_addr == ME
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    got = msg.get_body(("plain",))
    assert got is not None
    assert got.get_content().replace("\r\n", "\n") == (
        text if text.endswith("\n") else text + "\n")
    (part,) = msg.iter_attachments()
    # The parameter as the header registry reads it (RFC 2045 quoted-string or RFC 2231):
    # get_filename() also strips white space and a pair of <> around the name.
    assert part["Content-Disposition"].params["filename"] == fname
    assert part.get_payload(decode=True) == data
