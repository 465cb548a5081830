"""What a mail reader shows of a message: its summary header fields, the body to show
(plain text and/or HTML, RFC 2046 §5.1.4 multipart/alternative), the attachments and
the inline images referred to by Content-ID (RFC 2392 ``cid:`` URLs).  Pure: works on
the bytes of a stored message through mxd's MIME parser (``mxd.imap.message``), so
part numbers are the IMAP ones (RFC 3501 §6.4.5)."""

from __future__ import annotations

import email.utils
from datetime import datetime
from email.message import Message

import attrs

from mxd.imap.addresses import Address, parse_address_list
from mxd.imap.message import (
    Entity,
    ParsedMessage,
    UnknownCTE,
    decode_charset,
    decode_cte,
    decode_header_value,
    raw_all,
    unfold,
)

MAX_TEXT = 4 * 1024 * 1024  # characters of a body shown; the rest is cut


@attrs.frozen
class Summary:
    """The header fields a message list and view show, decoded (RFC 2047)."""

    subject: str
    sender: str  # From: display name, else the address
    from_: str  # From: as decoded text
    to: str
    cc: str
    date: datetime | None
    message_id: str


@attrs.frozen
class Attachment:
    part: tuple[int, ...]
    filename: str
    content_type: str
    size: int  # encoded size in the message
    content_id: str | None = None


@attrs.frozen
class Body:
    text: str | None  # text/plain to show
    html: str | None  # text/html to sanitise and show
    attachments: tuple[Attachment, ...]
    inline: dict[str, Attachment]  # Content-ID (without <>) -> image part


def _header(headers: Message, name: str) -> str:
    values = raw_all(headers, name)
    return decode_header_value(str(values[0])) if values else ""


def _first_sender(text: str) -> str:
    for entry in parse_address_list(text):
        if isinstance(entry, Address):
            if entry.name:
                return entry.name
            if entry.mailbox:
                return f"{entry.mailbox}@{entry.host}" if entry.host else entry.mailbox
    return text.strip()


def summary(headers: Message) -> Summary:
    from_ = _header(headers, "From")
    date: datetime | None
    try:
        date = email.utils.parsedate_to_datetime(_header(headers, "Date"))
    except (TypeError, ValueError, IndexError):
        date = None
    return Summary(subject=_header(headers, "Subject"), sender=_first_sender(from_),
                   from_=from_, to=_header(headers, "To"), cc=_header(headers, "Cc"),
                   date=date, message_id=_header(headers, "Message-ID").strip())


def _filename(e: Entity) -> str | None:
    """RFC 2183 filename (RFC 2231 encoded too), else the Content-Type name."""
    name = e.headers.get_filename()
    if name is None:
        name = e.param("name")
    return decode_header_value(unfold(str(name))).strip() if name else None


def _disposition(e: Entity) -> str:
    value = e.headers.get("Content-Disposition")
    return unfold(str(value)).split(";", 1)[0].strip().lower() if value else ""


def _text(msg: ParsedMessage, e: Entity) -> str:
    body = msg.raw[e.body_start:e.end]
    try:
        body = decode_cte(body, unfold(str(e.headers.get("Content-Transfer-Encoding", "7bit")))
                          .strip().lower())
    except UnknownCTE:
        pass
    return decode_charset(body, e.param("charset"))[:MAX_TEXT]


def _content_id(e: Entity) -> str | None:
    cid = e.headers.get("Content-ID")
    if not cid:
        return None
    return unfold(str(cid)).strip().strip("<>").strip() or None


def body(msg: ParsedMessage) -> Body:
    """Which parts to show and which to offer as attachments.

    The first text/plain and text/html that are not attachments make the body; within
    a multipart/alternative the last of each type wins (RFC 2046 §5.1.4: the richest
    comes last).  Everything else that is not a container is an attachment; images with
    a Content-ID are also available to the HTML as ``cid:`` references."""
    text: list[str] = []
    html: list[str] = []
    attachments: list[Attachment] = []
    inline: dict[str, Attachment] = {}

    def leaf(e: Entity, part: tuple[int, ...], in_alternative: bool) -> None:
        ctype = f"{e.maintype}/{e.subtype}"
        name = _filename(e)
        is_attachment = _disposition(e) == "attachment" or (name is not None and
                                                            e.maintype != "text")
        if e.maintype == "text" and not is_attachment and e.subtype in ("plain", "html"):
            target = text if e.subtype == "plain" else html
            if not target or in_alternative:
                value = _text(msg, e)
                if in_alternative and target:
                    target[0] = value
                else:
                    target.append(value)
                return
        cid = _content_id(e)
        fallback = "message.eml" if e.is_message else f"part-{'.'.join(map(str, part))}"
        a = Attachment(part, name or fallback, ctype, e.size, cid)
        if cid is not None and e.maintype == "image":
            inline[cid] = a
        attachments.append(a)

    def walk(e: Entity, part: tuple[int, ...], in_alternative: bool) -> None:
        if e.is_multipart:
            alt = e.subtype == "alternative"
            for i, child in enumerate(e.children, 1):
                walk(child, (*part, i), alt)
        else:
            leaf(e, part or (1,), in_alternative)

    walk(msg.root, (), False)
    return Body(text[0] if text else None, html[0] if html else None, tuple(attachments),
                inline)


def part_bytes(msg: ParsedMessage, part: tuple[int, ...]) -> bytes | None:
    """The decoded content of a leaf part (None when there is no such part)."""
    try:
        return msg.binary(part)
    except UnknownCTE:
        e = msg.locate(part)
        return None if e is None else msg.raw[e.body_start:e.end]


def parse_part(text: str) -> tuple[int, ...] | None:
    """``"1.2"`` -> (1, 2); None for anything else."""
    try:
        part = tuple(int(p) for p in text.split("."))
    except ValueError:
        return None
    if not part or any(p < 1 or p > 10000 for p in part) or len(part) > 20:
        return None
    return part
