"""CATENATE (RFC 4469): a message built on the server from literal text and (parts of)
messages the account already holds, named by internal IMAP URLs (RFC 5092; URLAUTH,
RFC 4467, is not offered, so a URL can only name the logged-in account's own mail).

``assemble`` writes the parts, in order, into a new store body and checks the result
against APPENDLIMIT.  Refusals are ``CatenateRefused`` carrying the tagged NO with the
response code RFC 4469 §5 gives: ``BADURL`` (naming the URL) or ``TOOBIG``.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any

from mxd.imap.appendsyntax import CatPart, CatText, CatURL, MessageURL, URLError, parse_url
from mxd.imap.dispatch import Reply, no
from mxd.imap.framer import BlobLiteral, Literal
from mxd.imap.message import ParsedMessage
from mxd.store.interfaces import BlobWriter, MessageInfo, NoSuchMailbox

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession


class CatenateRefused(Exception):
    """The command fails with ``reply`` (RFC 4469 §5 BADURL / TOOBIG)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class SpoolSink:
    """Where a large CATENATE TEXT literal goes while the command is read: memory up to
    ``max_memory`` octets, a temporary file beyond (readable again, unlike a store
    body being written)."""

    def __init__(self, max_memory: int) -> None:
        self._f: Any = tempfile.SpooledTemporaryFile(max_size=max_memory)

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def abort(self) -> None:
        self._f.close()

    def chunks(self) -> Iterator[bytes]:
        self._f.seek(0)
        while chunk := self._f.read(1 << 20):
            yield chunk


def text_chunks(data: Literal | BlobLiteral) -> Iterator[bytes]:
    if isinstance(data, Literal):
        yield data.data
        return
    sink = data.sink
    if isinstance(sink, SpoolSink):
        yield from sink.chunks()
        return
    raise TypeError("a CATENATE TEXT part in a store body")  # the session never does this


def bad_url(url: str, why: str) -> CatenateRefused:
    # RFC 4469 §5 (erratum 4046): the URL goes into the code bare, without quotes; the
    # url-resp-text must not hold "]" (erratum 2002).
    shown = "".join(c for c in url if c != "]" and 0x20 <= ord(c) < 0x7F) or "-"
    return CatenateRefused(no(f"CATENATE: {why}", f"BADURL {shown}"))


async def resolve(s: IMAPSession, url: str) -> AsyncGenerator[bytes, None]:
    """The octets a URL names, in pieces: FETCH BODY[section]<partial> of the message
    (RFC 4469 §3: the same data as a FETCH of the section).  A whole message, or a
    range of one, is copied from its file a chunk at a time between work slices; a
    section needs the message parsed (at most APPENDLIMIT octets)."""
    assert s.account is not None
    try:
        ref: MessageURL = parse_url(url, s.account.name)
    except URLError as e:
        raise bad_url(url, str(e)) from None
    info = await _message(s, url, ref)
    if ref.section is None:
        start, end = 0, info.size
        if ref.partial is not None:
            offset, length = ref.partial
            start = min(offset, info.size)
            end = info.size if length is None else min(info.size, start + length)
        f = s.store.open_blob(info.blob_id)
        try:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(s.settings.chunk_size, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
                await s.breathe()
        finally:
            f.close()
        return
    raw = s.store.read_blob_head(info.blob_id, info.size)
    data = ParsedMessage.parse(raw).section(ref.section.part, ref.section.text)
    if data is None:
        raise bad_url(url, "no such part")
    if ref.partial is not None:
        offset, length = ref.partial
        data = data[offset:] if length is None else data[offset:offset + length]
    yield data


async def _message(s: IMAPSession, url: str, ref: MessageURL) -> MessageInfo:
    view = s.view
    if ref.mailbox is None:
        # RFC 5092 §7.1: a relative URL is relative to the selected mailbox.
        if view is None:
            raise bad_url(url, "relative URL without a selected mailbox")
        box_id, uidvalidity = view.info.id, view.info.uidvalidity
    else:
        assert s.account is not None
        try:
            box = await s.store.get_mailbox(s.account.id, _store_name(ref.mailbox),
                                            counts=False)
        except NoSuchMailbox:
            raise bad_url(url, "no such mailbox") from None
        box_id, uidvalidity = box.id, box.uidvalidity
    if ref.uidvalidity is not None and ref.uidvalidity != uidvalidity:
        raise bad_url(url, "UIDVALIDITY does not match")
    if view is not None and view.info.id == box_id:
        m = view.msgs.get(ref.uid)
        if m is None:
            raise bad_url(url, "no such message")
        return m
    for m in await s.store.list_messages(box_id):
        if m.uid == ref.uid:
            return m
    raise bad_url(url, "no such message")


def _store_name(name: str) -> str:
    """RFC 5092 §3.1 (enc-mailbox): URL mailbox names are UTF-8, percent-encoded (not
    modified UTF-7 as on the wire of IMAP4rev1): the store's own form, INBOX folded."""
    if name.upper() == "INBOX" or name.upper().startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


async def assemble(s: IMAPSession, parts: tuple[CatPart, ...], limit: int) -> tuple[BlobWriter, int]:
    """Write the parts into a new store body; (body, size).  Raises CatenateRefused."""
    blob = s.store.new_blob()
    size = 0
    try:
        for part in parts:
            if isinstance(part, CatText):
                pieces: AsyncGenerator[bytes, None] = _aiter(text_chunks(part.data))
            else:
                assert isinstance(part, CatURL)
                pieces = resolve(s, part.url)
            try:
                async for chunk in pieces:
                    size += len(chunk)
                    if size > limit:
                        # RFC 4469 §5 TOOBIG; APPENDLIMIT (RFC 7889) is the limit.
                        raise CatenateRefused(no(f"Message would be larger than APPENDLIMIT "
                                                 f"{limit}", "TOOBIG"))
                    blob.write(chunk)
            finally:
                await pieces.aclose()  # its file is closed now
        return blob, size
    except BaseException:
        blob.abort()
        raise


async def _aiter(chunks: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk
