"""Composing a message from the web client's form: RFC 5322 with MIME (RFC 2045, 2046),
encoded words for non-ASCII header text (RFC 2047), RFC 2231 file names.

Pure: no I/O, no clock, no randomness of its own (the caller passes ``now`` and the
Message-ID's unique part).  ``build`` either returns a message that parses back to the
fields it was given, or raises ``ComposeError`` naming the field and what is wrong.

Header injection: a field value holding CR, LF, NUL or another control character (the
C0 and C1 sets, and the Unicode line and paragraph separators some parsers treat as line
ends) is refused, never stripped: the user sees what was wrong and nothing is sent in a
form they did not write.  Addresses are parsed here (RFC 5322 §3.4 ``mailbox``: an
optional display name, then ``local@domain``) and checked as SMTP mailboxes (RFC 5321
§4.1.2) before anything is built.
"""

from __future__ import annotations

import base64
import email.policy
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime

import attrs

from mxd.errors import MxdError
from mxd.smtp.address import Address, AddressError, parse_mailbox

__all__ = ["Attachment", "ComposeError", "ComposeForm", "Composed", "Forward", "Limits",
           "MailboxAddress", "build", "parse_address_list", "reply_subject",
           "forward_subject", "quote_text", "references_for_reply", "valid_msg_id"]


class ComposeError(MxdError):
    """The form cannot become a message; ``field`` names the form field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@attrs.frozen
class Limits:
    """Size limits of one composed message (octets)."""

    max_body: int = 1024 * 1024  # the text the user typed
    max_attachment: int = 20 * 1024 * 1024  # one attached file
    max_total: int = 25 * 1024 * 1024  # the message as sent (after base64)
    max_recipients: int = 100  # To + Cc + Bcc (the SMTP listener's RCPTMAX)
    max_subject: int = 998  # characters; RFC 5322 §2.1.1's line limit as a sane bound


@attrs.frozen
class Attachment:
    filename: str
    content_type: str  # "type/subtype"; checked by build
    data: bytes


@attrs.frozen
class Forward:
    """A message forwarded: attached whole (message/rfc822, RFC 2046 §5.2.1) or inline
    (its text quoted in the body by the page, its attachments attached here)."""

    data: bytes
    inline: bool = False


@attrs.frozen
class ComposeForm:
    from_addr: str
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    attachments: tuple[Attachment, ...] = ()
    in_reply_to: str = ""  # the replied message's Message-ID, "<...>"
    references: str = ""  # msg-ids separated by white space
    forward: Forward | None = None
    tls_required_no: bool = False  # add "TLS-Required: No" (RFC 8689 §5)


@attrs.frozen
class MailboxAddress:
    """One ``mailbox`` (RFC 5322 §3.4): display name (may be empty) and the address."""

    name: str
    address: Address

    @property
    def addr_spec(self) -> str:
        return str(self.address)


@attrs.frozen
class Composed:
    envelope_from: str  # MAIL FROM
    recipients: tuple[str, ...]  # RCPT TO: To, Cc, Bcc, each once
    message: bytes  # as transmitted: no Bcc field (RFC 5322 §3.6.3), CRLF line ends
    sent_copy: bytes  # the Sent mailbox copy: with the Bcc field for the sender's record
    message_id: str  # "<...>"
    smtputf8: bool  # an address needs SMTPUTF8 (RFC 6531)
    eight_bit: bool  # the message has 8-bit octets (BODY=8BITMIME, RFC 6152)


# Characters refused in any header field value: the C0 controls but HTAB, DEL, the C1
# controls (U+0085 NEL among them) and the Unicode line/paragraph separators.
_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# Line ends CRLF, 7bit transfer encodings, lines folded at 78 (RFC 5322 §2.1.1).
_POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=78)
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x5a\x5e-\x7e]+>")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 2045 §5.1 token (no tspecials)


def _check_line(field: str, value: str) -> str:
    m = _FORBIDDEN.search(value)
    if m is not None:
        ch = m.group()
        what = {"\r": "CR", "\n": "LF", "\0": "NUL"}.get(ch, f"U+{ord(ch):04X}")
        raise ComposeError(field, f"contains a control character ({what}); header fields "
                           "are one line of text")
    return value


def _check_text(field: str, value: str, limit: int) -> str:
    """The body text: any line ends (made CRLF on the wire), no NUL or other controls
    than HTAB, CR, LF and FF."""
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise ComposeError(field, f"longer than {limit} octets")
    bad = re.search("[\x00-\x08\x0b\x0e-\x1f\x7f\ud800-\udfff]", value)
    if bad is not None:
        raise ComposeError(field, f"contains the control character U+{ord(bad.group()):04X}")
    return value


def _split_list(text: str) -> list[str]:
    """Split an address list at commas (and semicolons) outside quotes and <...>."""
    items, cur, quoted, angle, escaped = [], [], False, False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == '"' and not angle:
            quoted = not quoted
            cur.append(ch)
        elif ch == "<" and not quoted:
            angle = True
            cur.append(ch)
        elif ch == ">" and not quoted:
            angle = False
            cur.append(ch)
        elif ch in ",;" and not quoted and not angle:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise AddressError("unterminated quoted display name")
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def _parse_one(item: str) -> MailboxAddress:
    name, spec = "", item
    if item.endswith(">"):
        lt = item.rfind("<")
        if lt < 0:
            raise AddressError(f"{item!r}: '>' without '<'")
        name, spec = item[:lt].strip(), item[lt + 1:-1].strip()
        if name.startswith('"'):
            if len(name) < 2 or not name.endswith('"'):
                raise AddressError(f"{item!r}: bad quoted display name")
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
        elif '"' in name:
            raise AddressError(f"{item!r}: quote inside a display name")
    elif "<" in item or ">" in item or " " in item:
        raise AddressError(f"{item!r} is not an address (write Name <local@domain>)")
    if spec.startswith('"'):
        raise AddressError(f"{spec!r}: quoted local parts are not supported here")
    addr = parse_mailbox(spec)
    if addr.is_literal:
        raise AddressError(f"{spec!r}: address literals are not supported here")
    addr.domain_ascii  # noqa: B018 - raises AddressError for a bad IDN
    if addr.local.isascii():  # A-label domain: no SMTPUTF8 needed (RFC 5890)
        addr = Address(addr.local, addr.domain_ascii)
    return MailboxAddress(" ".join(name.split()), addr)


def parse_address_list(field: str, text: str) -> list[MailboxAddress]:
    """``Name <a@b>, c@d`` -> mailboxes; ComposeError naming ``field`` for anything else."""
    _check_line(field, text)
    try:
        return [_parse_one(item) for item in _split_list(text)]
    except AddressError as e:
        raise ComposeError(field, str(e)) from None


def _msg_ids(field: str, text: str) -> list[str]:
    _check_line(field, text)
    ids = text.split()
    for i in ids:
        if not _MSG_ID.fullmatch(i):
            raise ComposeError(field, f"{i!r} is not a message id (<left@right>)")
    return ids


# -- header fields (RFC 5322 §2.2, §3.6; RFC 2047 encoded words) -------------------------

_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]+\Z")  # atext and spaces
_EW_OCTETS = 45  # 60 base64 characters: "=?utf-8?b?" + 60 + "?=" = 72 <= 75 (§2)


def _encoded_words(text: str) -> list[str]:
    """``text`` as B-encoded words (RFC 2047 §4.1), each at most 75 characters and never
    splitting a character between two words (§5)."""
    words, chunk = [], b""
    for ch in text:
        enc = ch.encode("utf-8")
        if len(chunk) + len(enc) > _EW_OCTETS:
            words.append(chunk)
            chunk = b""
        chunk += enc
    if chunk:
        words.append(chunk)
    return ["=?utf-8?b?" + base64.b64encode(w).decode("ascii") + "?=" for w in words]


def _plain_ok(text: str, limit: int) -> bool:
    """Can ``text`` go into a field as it is: printable ASCII, nothing a decoder would
    take for an encoded word (RFC 2047 §5: "=?" must not appear in unencoded text that
    could be mistaken for one), words short enough to fold."""
    return (text.isascii() and text.isprintable() and "=?" not in text
            and all(len(w) <= limit for w in text.split(" ")))


def _fold(name: str, tokens: list[str], sep: str = " ") -> bytes:
    """``Name: tok1<sep>tok2...`` folded before a space so that lines stay within 78
    characters where the tokens allow it (RFC 5322 §2.2.3)."""
    line = f"{name}:"
    out: list[str] = []
    for i, tok in enumerate(tokens):
        piece = (" " if i == 0 else sep) + tok
        if i and len(line) + len(piece) > 78:
            out.append(line + sep.rstrip())
            line = " " + tok
        else:
            line += piece
    out.append(line)
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


def _unstructured(name: str, text: str) -> bytes:
    if _plain_ok(text, 70) and "  " not in text:
        return _fold(name, text.split(" "))
    return _fold(name, _encoded_words(text))


def _phrase(name: str) -> str:
    """A display name as atoms, a quoted string or encoded words (RFC 5322 §3.2.5,
    RFC 2047 §5(3))."""
    if not _plain_ok(name, 60) or len(name) > 60:
        # One or more encoded words per word of the name, the space inside the encoded
        # text: decoders that keep the white space between encoded words (against §6.2)
        # then show the name with a doubled space rather than with words run together.
        words = name.split(" ")
        return " ".join(ew for i, w in enumerate(words)
                        for ew in _encoded_words(w + (" " if i < len(words) - 1 else "")))
    if _ATOM_PHRASE.match(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox_text(m: MailboxAddress) -> str:
    spec = m.addr_spec
    return f"{_phrase(m.name)} <{spec}>" if m.name else spec


def _address_field(name: str, boxes: Sequence[MailboxAddress]) -> bytes:
    tokens: list[str] = []
    for i, m in enumerate(boxes):
        words = _mailbox_text(m).split(" ")
        if i < len(boxes) - 1:
            words[-1] += ","
        tokens.extend(words)
    return _fold(name, tokens)


def _check_attachment(a: Attachment, limits: Limits) -> tuple[str, str]:
    field = "attachments"
    _check_line(field, a.filename)
    if not a.filename.strip():
        raise ComposeError(field, "an attachment has no file name")
    if len(a.data) > limits.max_attachment:
        raise ComposeError(field, f"{a.filename!r} is larger than {limits.max_attachment} "
                           "octets")
    maintype, sep, subtype = a.content_type.strip().lower().partition("/")
    if not (sep and _TOKEN.match(maintype) and _TOKEN.match(subtype)) or maintype in (
            "multipart", "message"):
        maintype, subtype = "application", "octet-stream"
    return maintype, subtype


def _attachments_of(data: bytes) -> Iterable[Attachment]:
    """The attached files of a forwarded message (for an inline forward)."""
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    if not isinstance(msg, EmailMessage):
        return
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        yield Attachment(part.get_filename() or "attachment", part.get_content_type(),
                         payload)


def build(form: ComposeForm, *, allowed_from: Sequence[str], now: datetime, hostname: str,
          unique: str, limits: Limits = Limits()) -> Composed:
    """The message for ``form``.

    ``allowed_from``: the account's addresses (normalised, ``local@domain`` with an
    A-label domain): From must be one of them (the submission listener checks again).
    ``unique``: the random left part of the Message-ID (RFC 5322 §3.6.4).
    Raises ComposeError."""
    froms = parse_address_list("from", form.from_addr)
    if len(froms) != 1:
        raise ComposeError("from", "give exactly one sender address")
    sender = froms[0]
    if sender.address.normalised().lower() not in {a.lower() for a in allowed_from}:
        raise ComposeError("from", f"{sender.addr_spec} is not an address of this account")
    to = parse_address_list("to", form.to)
    cc = parse_address_list("cc", form.cc)
    bcc = parse_address_list("bcc", form.bcc)
    if not (to or cc or bcc):
        raise ComposeError("to", "give at least one recipient")
    recipients: list[str] = []
    seen: set[str] = set()
    for m in (*to, *cc, *bcc):
        key = m.address.normalised().lower()
        if key not in seen:
            seen.add(key)
            recipients.append(m.addr_spec)
    if len(recipients) > limits.max_recipients:
        raise ComposeError("to", f"more than {limits.max_recipients} recipients")
    subject = _check_line("subject", form.subject).strip()
    if len(subject) > limits.max_subject:
        raise ComposeError("subject", f"longer than {limits.max_subject} characters")
    body = _check_text("body", form.body, limits.max_body)
    in_reply_to = _msg_ids("in_reply_to", form.in_reply_to)
    references = _msg_ids("references", form.references)
    if len(in_reply_to) > 1:
        raise ComposeError("in_reply_to", "one message id")
    hostname = _check_line("hostname", hostname)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", unique) or not re.fullmatch(
            r"[A-Za-z0-9.-]+", hostname):
        raise ComposeError("message_id", "bad unique part or host name")
    message_id = f"<{unique}@{hostname}>"

    attachments = list(form.attachments)
    if form.forward is not None and form.forward.inline:
        attachments.extend(_attachments_of(form.forward.data))
    checked = [(a, *_check_attachment(a, limits)) for a in attachments]
    raw_total = len(body) + sum(len(a.data) for a in attachments) + (
        len(form.forward.data) if form.forward is not None else 0)
    if raw_total * 4 // 3 > limits.max_total:  # base64 grows data by a third
        raise ComposeError("attachments", f"the message would be larger than "
                           f"{limits.max_total} octets")

    smtputf8 = any(not m.address.local.isascii() for m in (sender, *to, *cc, *bcc))
    fields = [f"Date: {format_datetime(now)}\r\n".encode(),  # RFC 5322 §3.3
              _address_field("From", [sender])]
    if to:
        fields.append(_address_field("To", to))
    if cc:
        fields.append(_address_field("Cc", cc))
    fields.append(f"Message-ID: {message_id}\r\n".encode())
    if in_reply_to:
        fields.append(f"In-Reply-To: {in_reply_to[0]}\r\n".encode())
    if references:
        fields.append(_fold("References", references))
    if subject:
        fields.append(_unstructured("Subject", subject))
    if form.tls_required_no:
        fields.append(b"TLS-Required: No\r\n")  # RFC 8689 §5

    # The MIME entity (RFC 2045, 2046): text/plain alone, or multipart/mixed with the
    # attachments; quoted-printable or base64 where needed, so that the message needs
    # 8BITMIME only for a forwarded 8-bit message or SMTPUTF8 for an address.
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    text_part = EmailMessage(policy=_POLICY)
    text_part.set_content(text, subtype="plain", charset="utf-8")
    parts = [_leaf_bytes(text_part)]
    for a, maintype, subtype in checked:
        leaf = EmailMessage(policy=_POLICY)
        # non-ASCII file names as RFC 2231 parameters (filename*=utf-8''...)
        leaf.set_content(a.data, maintype=maintype, subtype=subtype,
                         disposition="attachment", filename=a.filename)
        parts.append(_leaf_bytes(leaf))
    if form.forward is not None and not form.forward.inline:
        parts.append(_forward_part(form.forward.data))
    if len(parts) == 1:
        mime = b"MIME-Version: 1.0\r\n" + parts[0]
    else:
        boundary = _boundary(unique, parts)
        mime = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\""
                + boundary + b"\"\r\n\r\nThis is a MIME message.\r\n"
                + b"".join(b"\r\n--" + boundary + b"\r\n" + p for p in parts)
                + b"\r\n--" + boundary + b"--\r\n")
    sent = b"".join(fields) + mime
    if len(sent) > limits.max_total:
        raise ComposeError("attachments", f"the message is {len(sent)} octets, more than "
                           f"{limits.max_total}")
    sent_copy = (b"".join(fields) + _address_field("Bcc", bcc) + mime) if bcc else sent
    return Composed(
        envelope_from=sender.addr_spec, recipients=tuple(recipients), message=sent,
        sent_copy=sent_copy, message_id=message_id, smtputf8=smtputf8,
        eight_bit=any(b > 0x7F for b in sent))


def _leaf_bytes(part: EmailMessage) -> bytes:
    """A body part's header and body (without MIME-Version: RFC 2045 §4 wants it at
    the top only), CRLF line ends."""
    del part["MIME-Version"]
    data = part.as_bytes(policy=_POLICY)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _forward_part(data: bytes) -> bytes:
    """The forwarded message unchanged as message/rfc822 (RFC 2046 §5.2.1: 7bit or 8bit
    only, so a message that is not line-oriented text goes as application/octet-stream
    in base64 instead)."""
    data = re.sub(rb"\r?\n|\r", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if b"\0" in data or any(len(line) > 998 for line in data.split(b"\r\n")):
        leaf = EmailMessage(policy=_POLICY)
        leaf.set_content(data, maintype="application", subtype="octet-stream",
                         disposition="attachment", filename="forwarded.eml")
        return _leaf_bytes(leaf)
    cte = b"8bit" if any(b > 0x7F for b in data) else b"7bit"
    return (b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n"
            b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + data)


def _boundary(unique: str, parts: Sequence[bytes]) -> bytes:
    """A boundary (RFC 2046 §5.1.1) that occurs in no part."""
    n = 0
    while True:
        b = f"=_mxd_{unique}_{n}".encode()
        if not any(b in p for p in parts):
            return b
        n += 1


# -- replies and forwards (what the page prefills) --------------------------------------

_RE = re.compile(r"^\s*(?:(?:re|aw|sv|fwd?|wg)\s*:\s*)+", re.IGNORECASE)


def reply_subject(subject: str) -> str:
    """``Re: `` once (RFC 5322 §3.6.5 suggests it), not ``Re: Re: ``."""
    s = " ".join(subject.split())
    if re.match(r"re\s*:", s, re.IGNORECASE):
        return s
    return f"Re: {s}" if s else "Re:"


def forward_subject(subject: str) -> str:
    s = " ".join(subject.split())
    return f"Fwd: {s}" if s else "Fwd:"


def references_for_reply(message_id: str, references: str, in_reply_to: str) -> str:
    """RFC 5322 §3.6.4: the parent's References (or else its In-Reply-To) followed by
    the parent's Message-ID."""
    ids = [i for i in _MSG_ID.findall(references)] or _MSG_ID.findall(in_reply_to)[:1]
    if _MSG_ID.fullmatch(message_id):
        ids.append(message_id)
    return " ".join(ids[-20:])  # a bound: deep threads keep the newest ones


def valid_msg_id(text: str) -> bool:
    """Is ``text`` one ``msg-id`` (RFC 5322 §3.6.4, ``<left@right>``)?"""
    return _MSG_ID.fullmatch(text.strip()) is not None


def quote_text(text: str, attribution: str) -> str:
    """The reply body: ``attribution`` then each line quoted with ``> ``."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    return attribution + "\n" + "\n".join(("> " + ln) if ln else ">" for ln in lines) + "\n"


def plain_text_of(msg: Message) -> str:
    """The first text/plain part's text (for quoting), or ''."""
    if isinstance(msg, EmailMessage):
        part = msg.get_body(preferencelist=("plain",))
        if part is not None:
            try:
                content = part.get_content()
            except (LookupError, ValueError, AssertionError):
                return ""
            return content if isinstance(content, str) else ""
    return ""


def clean_display(text: str) -> str:
    """Header text for display and prefill: controls become spaces, NFC."""
    return unicodedata.normalize("NFC", " ".join(_FORBIDDEN.sub(" ", text).split()))
