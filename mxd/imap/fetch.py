"""FETCH and UID FETCH (RFC 3501 §6.4.5, §7.4.2; RFC 3516 BINARY; RFC 7162 CONDSTORE).

Bodies are written from the store's files in chunks, waiting for the transport to drain
between chunks; small responses are sent in batches of BATCH bytes, with the same wait
between batches.  Derived data (ENVELOPE, BODYSTRUCTURE) is cached by blob id; ENVELOPE
is rendered from the header block alone (envelope.render_envelope), never from a full
parse of the message.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.imap import message as mimemsg
from mxd.imap import preview, response, summary, uidonly
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.envelope import render_envelope
from mxd.imap.errors import BadSequence
from mxd.imap.messagecache import FIRST_HEAD, read_header, read_header_block
from mxd.imap.qresync import vanished
from mxd.imap.storedvalues import stored_values
from mxd.imap.values import Command, FetchArgs, FetchAtt, SeqSet
from mxd.imap.view import MailboxView
from mxd.store.interfaces import DERIVED_MAX_DELAY, MessageInfo, StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

log = Logger()

STREAM_THRESHOLD = 256 * 1024


def resolve(view: MailboxView, seqset: SeqSet, uid: bool) -> Iterator[int]:
    """UIDs named by a sequence set.  Raises ValueError for sequence numbers that do not
    exist (RFC 3501 §9 seq-number) and for ``$`` (no saved search)."""
    if seqset.saved:
        raise BadSequence("No saved search result ($)")
    if uid:
        # Each merged range is a slice of the sorted UID array: no work per UID outside.
        uids = view.uids
        last = 0
        for lo, hi in sorted(seqset.resolve(view.max_uid)):
            lo = max(lo, last + 1)
            if hi < lo:
                continue
            yield from uids[bisect.bisect_left(uids, lo):bisect.bisect_right(uids, hi)]
            last = hi
        return
    n = view.exists
    for a, b in seqset.ranges:
        if (a > n) or (b > n):
            raise BadSequence("Invalid message sequence number")
    for seq in seqset.iter_values(n, n):
        yield view.uids[seq - 1]


class _Loader:
    """Opens a message's file at most once and parses it at most once."""

    def __init__(self, s: IMAPSession, m: MessageInfo) -> None:
        self.s = s
        self.m = m
        self._f: BinaryIO | None = None
        self._header: bytes | None = None
        self._parsed: mimemsg.ParsedMessage | None = None
        self._data: bytes | None = None  # the whole message, when small (see whole())
        self.envelope: bytes | None = None  # the stored ENVELOPE (summary.ENVELOPE)
        self.saved: datetime | None = None  # RFC 8514 save date, when FETCH asks for it
        self.preview: bytes | None = None  # the stored PREVIEW (mxd.imap.preview)

    def file(self) -> BinaryIO:
        if self._f is None:
            self._f = self.s.store.open_blob(self.m.blob_id)
        self._f.seek(0)
        return self._f

    def header(self) -> bytes:
        if self._header is None:
            data = self.whole() if self._data is not None or self.m.size <= FIRST_HEAD else None
            if data is not None:
                # Read already, or no larger than the first header read would be.
                self._header = read_header(lambda n: data[:n])
            elif self._f is None:
                # Only the header is needed so far (ENVELOPE, the header section): a
                # small read without a file object.
                store, blob_id = self.s.store, self.m.blob_id
                self._header = read_header(lambda n: store.read_blob_head(blob_id, n))
            else:
                self._header = read_header_block(self.file())
        return self._header

    def parsed(self) -> mimemsg.ParsedMessage:
        if self._parsed is None:
            data = self.whole()
            self._parsed = mimemsg.ParsedMessage.parse(data if data is not None else self.file().read())
        return self._parsed

    def has_nul(self) -> bool:
        """Does the stored message hold NUL (a binary literal8 APPEND)?  Cached per blob."""
        cache = self.s.cache
        v = cache.get("nul", self.m.blob_id)
        if v is None and (data := self.whole()) is not None:
            v = b"1" if b"\0" in data else b"0"
            cache.put("nul", self.m.blob_id, v)
        if v is None:
            f = self.file()
            found = False
            while chunk := f.read(1 << 20):
                if b"\0" in chunk:
                    found = True
                    break
            v = b"1" if found else b"0"
            cache.put("nul", self.m.blob_id, v)
        return v == b"1"

    def whole(self) -> bytes | None:
        """The whole message if it is at most STREAM_THRESHOLD octets (one unbuffered
        read, kept for the next item), else None.  A full-body FETCH of a small message
        (a client's download of new mail) then reads the file once, not once for the NUL
        check and once more for the literal."""
        if self._data is None and self.m.size <= STREAM_THRESHOLD:
            self._data = self.s.store.read_blob_head(self.m.blob_id, self.m.size)
        return self._data

    def read(self, offset: int, length: int) -> bytes:
        data = self.whole()
        if data is not None:
            return data[offset:offset + length]
        f = self.file()
        f.seek(offset)
        return f.read(length)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class _FileRange:
    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length


Segment = bytes | _FileRange


def _literal_or_nil(data: bytes | None, partial: tuple[int, int] | None) -> bytes:
    # A section that does not exist is sent as an empty string, as Dovecot does: some
    # clients do not expect NIL for BODY[...] although the grammar allows it.
    if data is None:
        data = b""
    if partial is not None:
        off, n = partial
        data = data[off:off + n]
    return b"{%d}\r\n" % len(data) + data


def _item_name(att: FetchAtt) -> bytes:
    assert att.section is not None
    name = f"{att.name}[{att.section.spec()}]"
    if att.partial is not None:
        name += f"<{att.partial[0]}>"
    return name.encode()


def _render_att(s: IMAPSession, ld: _Loader, seq: int, att: FetchAtt) -> list[Segment]:
    m = ld.m
    n = att.name
    cache = s.cache
    utf8 = s.utf8
    if n == "UID":
        return [b"UID %d" % m.uid]
    if n == "FLAGS":
        return [b"FLAGS " + response.flags(s.flags_of(m))]
    if n == "INTERNALDATE":
        return [b"INTERNALDATE " + response.internaldate(m.internal_date)]
    if n == "RFC822.SIZE":
        return [b"RFC822.SIZE %d" % m.size]
    if n == "SAVEDATE":
        # RFC 8514 §3: the save date as a date-time, NIL when there is none.
        return [b"SAVEDATE " + (b"NIL" if ld.saved is None else response.internaldate(ld.saved))]
    if n == "MODSEQ":
        return [b"MODSEQ (%d)" % m.modseq]
    if n == "PREVIEW":
        return [b"PREVIEW " + _preview(ld, att.lazy)]
    if n == "ENVELOPE":
        if ld.envelope is not None and not utf8:
            return [b"ENVELOPE ", ld.envelope]
        kind = "env8" if utf8 else "env"
        v = cache.get(kind, m.blob_id)
        if v is None:
            v = render_envelope(ld.header(), utf8)
            cache.put(kind, m.blob_id, v)
        return [b"ENVELOPE " + v]
    if n in ("BODYSTRUCTURE", "BODY") and att.section is None:
        kind = ("bs" if n == "BODYSTRUCTURE" else "body") + ("8" if utf8 else "")
        v = cache.get(kind, m.blob_id)
        if v is None:
            v = response.render(mimemsg.bodystructure(ld.parsed(), extended=n == "BODYSTRUCTURE"), utf8)
            cache.put(kind, m.blob_id, v)
        return [n.encode() + b" " + v]
    if (n in ("RFC822", "RFC822.HEADER", "RFC822.TEXT") or n == "BODY") and ld.has_nul():
        # Never NUL in a normal literal: the parts holding it are sent re-encoded.
        safe = ld.parsed().without_nul()
        if n == "BODY":
            assert att.section is not None
            sec0 = att.section
            data = safe.section(sec0.part, sec0.text, sec0.fields)
            return [_item_name(att) + b" " + _literal_or_nil(data, att.partial)]
        text = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[n]
        return [n.encode() + b" " + _literal_or_nil(safe.section((), text), None)]
    if n in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        if n == "RFC822":
            return [b"RFC822 {%d}\r\n" % m.size, _FileRange(0, m.size)]
        if n == "RFC822.HEADER":
            return [b"RFC822.HEADER " + _literal_or_nil(ld.header(), None)]
        h = len(ld.header())
        return [b"RFC822.TEXT {%d}\r\n" % max(0, m.size - h), _FileRange(h, max(0, m.size - h))]
    sec = att.section
    assert sec is not None
    if n == "BINARY.SIZE":
        data = _binary(ld, sec.part)
        return [b"BINARY.SIZE[%s] %d" % (sec.spec().encode(), len(data or b""))]
    name = _item_name(att)
    if n == "BINARY":
        data = _binary(ld, sec.part)
        if data is not None and b"\0" in data:
            lit = _literal_or_nil(data, att.partial)
            return [name + b" ~" + lit]
        return [name + b" " + _literal_or_nil(data, att.partial)]
    # BODY[section]
    if not sec.part and sec.text == "":
        off, length = 0, m.size
        if att.partial is not None:
            off = min(att.partial[0], m.size)
            length = max(0, min(att.partial[1], m.size - off))
        if length > STREAM_THRESHOLD:
            return [name + b" {%d}\r\n" % length, _FileRange(off, length)]
        return [name + b" {%d}\r\n" % length + ld.read(off, length)]
    if not sec.part and sec.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        block = ld.header()
        if sec.text != "HEADER":
            block = mimemsg.filter_header(block, sec.fields, sec.text == "HEADER.FIELDS.NOT")
        return [name + b" " + _literal_or_nil(block, att.partial)]
    return [name + b" " + _literal_or_nil(ld.parsed().section(sec.part, sec.text, sec.fields),
                                          att.partial)]


class UnknownCTEError(Exception):
    pass


def _binary(ld: _Loader, part: tuple[int, ...]) -> bytes | None:
    try:
        return ld.parsed().binary(part)
    except mimemsg.UnknownCTE as e:
        raise UnknownCTEError(str(e)) from e


def _sets_seen(att: FetchAtt) -> bool:
    if att.name in ("BODY", "BINARY") and att.section is not None:
        return not att.peek
    return att.name in ("RFC822", "RFC822.TEXT")


async def do_fetch(s: IMAPSession, cmd: Command) -> Reply:
    args: FetchArgs = cmd.args
    view = s.view
    assert view is not None
    is_uid = cmd.name == "UID FETCH"
    try:
        uids = list(resolve(view, args.seqset, uid=is_uid))
    except ValueError as e:
        return bad(str(e))
    atts = list(args.atts)
    names = {a.name for a in atts}
    if is_uid and "UID" not in names and not uidonly.active(s):
        # RFC 3501 §6.4.8; with UIDONLY the UID leads the UIDFETCH response instead.
        atts.insert(0, FetchAtt("UID"))
    if args.changedsince is not None or "MODSEQ" in names:
        s.enable_condstore()  # RFC 7162 §3.1
    if "CONDSTORE" in s.enabled and "MODSEQ" not in names:
        # RFC 7162 §3.1.2: once CONDSTORE is enabled every FETCH response carries MODSEQ.
        atts.append(FetchAtt("MODSEQ"))
    if args.changedsince is not None:
        uids = [u for u in uids if view.msgs[u].modseq > args.changedsince]
    if args.vanished:
        if not is_uid or "QRESYNC" not in s.enabled or args.changedsince is None:
            return bad("VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE")
        gone = await vanished(s.store, view, args.changedsince, args.seqset,
                              view.info.uidnext)
        if gone:
            s.untagged(b"VANISHED (EARLIER) " + response.seqset(gone))
    if all(a.name in _META for a in atts):
        return await _fetch_meta(s, view, uids, atts, cmd.name)
    if len(uids) >= MANY_PREVIEWS and "PREVIEW" in names and not view.pending_expunge \
            and all(a.name in _META or a.name == "PREVIEW" for a in atts):
        # A client's list of previews (RFC 8970): the mailbox's stored previews, kept
        # in memory between commands (mxd.imap.storedvalues), and the columns.
        kept = await stored_values(s, preview.KIND)
        if s.view is not view:
            return ok(f"{cmd.name} completed")
        return await _fetch_meta(s, view, uids, atts, cmd.name, kept)
    seen_set: set[int] = set()
    if not view.readonly and any(_sets_seen(a) for a in atts):
        unseen = [u for u in uids if "\\Seen" not in view.msgs[u].flags]
        if unseen:
            changed, _ = await s.store.store_flags(view.info.id, unseen, frozenset({"\\Seen"}), "add")
            if s.view is not view:
                return ok("FETCH completed")
            view.set_messages(changed)
            seen_set = {m.uid for m in changed}
            if "FLAGS" not in names:
                # RFC 3501 §6.4.5: report the implicit \Seen change.
                pass
    saved: dict[int, datetime] = {}
    if "SAVEDATE" in names and (read := getattr(s.store, "save_dates", None)) is not None:
        saved = await read(view.info.id, uids)
        if s.view is not view:
            return ok("FETCH completed")
    failed = 0
    expunge_issued = False
    out = bytearray()  # responses not yet sent, written in batches of BATCH bytes
    # ENVELOPE as the store keeps it (summary.ENVELOPE), read for PREFETCH messages at a
    # time; a message without one is rendered from its header.
    envelopes: dict[int, bytes] = {}
    ahead: Deferred[dict[int, bytes]] | None = None
    stored_envelopes = "ENVELOPE" in names and not s.utf8
    previews: dict[int, bytes] = {}  # RFC 8970, as stored; read per PREFETCH messages too
    try:
        state = view.state
        for k, uid in enumerate(uids):
            if not k & 15:
                await s.breathe(k, len(uids))
            if stored_envelopes and k % PREFETCH == 0:
                # This batch's envelopes (asked for with the previous batch), and the next
                # batch's asked for now: the store's thread reads while this one renders.
                envelopes = await (ahead or _stored_envelopes(s, view, uids[k:k + PREFETCH]))
                ahead = None
                if k + PREFETCH < len(uids):
                    ahead = Deferred.fromCoroutine(
                        _stored_envelopes(s, view, uids[k + PREFETCH:k + 2 * PREFETCH]))
            if "PREVIEW" in names and k % PREFETCH == 0:
                previews = await _stored(s, view, uids[k:k + PREFETCH], preview.KIND)
            seq = view.seq_of(uid)
            m = state.info(uid) if seq is not None else None
            if seq is None or m is None:
                continue
            for retry in (False, True):
                ld = _Loader(s, m)
                ld.envelope = envelopes.get(uid)
                ld.preview = previews.get(uid)
                ld.saved = saved.get(uid)
                try:
                    body_gone = _body_gone(view, uid, ld)
                    if body_gone:
                        expunge_issued = True
                        log.info("imap fetch of message {uid} expunged by another session",
                                 uid=uid)
                    segs: list[Segment] = [uidonly.fetch_head(s, seq, uid)]
                    first = True
                    for att in atts:
                        if body_gone and att.name in _NEEDS_BODY:
                            if att.section is None:
                                continue  # no value to give; the item is left out
                            rendered: list[Segment] = [_item_name(att) + b" NIL"]
                        else:
                            rendered = _render_att(s, ld, seq, att)
                        if not first:
                            segs.append(b" ")
                        first = False
                        segs.extend(rendered)
                    if uid in seen_set and "FLAGS" not in names:
                        segs.append(b" FLAGS " + response.flags(s.flags_of(m)))
                    segs.append(b")\r\n")
                    if len(out) < BATCH and all(type(seg) is bytes for seg in segs):
                        out += b"".join(segs)  # type: ignore[arg-type]
                    else:
                        await _write(s, ld, segs, out)
                    break
                except UnknownCTEError:
                    return no("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE")
                except (OSError, KeyError, StoreError) as e:
                    if not retry:
                        # Another process may have expunged the message and removed its
                        # body (doc/processes.md): learn of that now and render it again,
                        # NIL with [EXPUNGEISSUED].  Asked only when a read fails, so a
                        # FETCH costs no round trip to the store's thread otherwise.
                        ld.close()
                        await s.catch_up()
                        if s.view is not view:
                            return ok("FETCH completed")
                        continue
                    failed += 1
                    log.error("imap fetch cannot read message {uid}: {error}", uid=uid,
                              error=str(e))
                finally:
                    ld.close()
    finally:
        if ahead is not None:
            ahead.addErrback(lambda _: None)  # a batch no longer wanted
        # Everything rendered so far goes out before the tagged reply (or the error).
        if out:
            s.send(bytes(out))
    await s.drain()
    if failed:
        return no("Some messages could not be read", "SERVERBUG")
    if expunge_issued:
        # RFC 9051 §7.1 EXPUNGEISSUED: the client learns of the expunge with its next
        # command that may report it (as Dovecot answers).
        return ok(f"{cmd.name} completed; some messages were expunged by another session",
                  "EXPUNGEISSUED")
    return ok(f"{cmd.name} completed")


BATCH = 64 * 1024
PREFETCH = 2000
MANY_PREVIEWS = 64  # a FETCH of PREVIEW for this many messages reads the whole mailbox's
_META = frozenset({"UID", "FLAGS", "MODSEQ", "RFC822.SIZE", "INTERNALDATE"})


async def _stored_envelopes(s: IMAPSession, view: MailboxView, uids: list[int]) -> dict[int, bytes]:
    """UID -> stored ENVELOPE of those of ``uids`` that have one and are not in the
    session cache already ({} if the store fails: the envelopes are then rendered from
    the files).  What is read is put in the cache, so a second FETCH asks nothing."""
    st, cache = view.state, s.cache
    todo: list[tuple[int, str]] = []
    for uid in uids:
        i = st.index(uid)
        if i is not None and cache.get("env", blob := st.blob_at(i)) is None:
            todo.append((uid, blob))
    if not todo:
        return {}
    try:
        found = await s.store.get_derived(view.info.id, summary.ENVELOPE, todo[0][0], todo[-1][0])
    except StoreError:
        return {}
    for uid, blob in todo:
        v = found.get(uid)
        if v is not None:
            cache.put("env", blob, v)
    return found


async def _stored(s: IMAPSession, view: MailboxView, uids: list[int], kind: str) -> dict[int, bytes]:
    """UID -> the stored ``kind`` value of those of ``uids`` that have one ({} if the
    store fails: the values are then computed from the files)."""
    if not uids:
        return {}
    try:
        return await s.store.get_derived(view.info.id, kind, min(uids), max(uids))
    except StoreError:
        return {}


# A message delivered less than this long ago may still be waiting for its stored values:
# the worker that delivered it computes them once no delivery came for a moment, after
# DERIVED_MAX_DELAY seconds at the latest (mxd.store.derived.Later).
JUST_ARRIVED = 2 * DERIVED_MAX_DELAY


def _values_coming(ld: _Loader) -> bool:
    """Did the message arrive so recently that its stored values may still be coming?
    A client that fetches new mail at once (IDLE) then gets its preview computed now,
    the same work the store is about to do, rather than NIL for its newest messages."""
    age = ld.s.clock.seconds() - ld.m.internal_date.timestamp()
    return 0 <= age < JUST_ARRIVED


def _preview(ld: _Loader, lazy: bool) -> bytes:
    """RFC 8970 §3.1: the preview as a string; computed from the message when the store
    has none yet (a message stored before previews were), or NIL under LAZY (§3.2: the
    server need not compute it now; the store's backfill will) unless the message
    arrived a moment ago (``_values_coming``)."""
    v = ld.preview
    if v is None:
        cached = ld.s.cache.get("preview", ld.m.blob_id)
        if cached is None and lazy and not _values_coming(ld):
            return b"NIL"
        if cached is None:
            store, blob_id = ld.s.store, ld.m.blob_id
            cached = preview.derive(lambda n: store.read_blob_head(blob_id, n))[preview.KIND]
            ld.s.cache.put("preview", ld.m.blob_id, cached)
        v = cached
    return response.string(v)


async def _fetch_meta(s: IMAPSession, view: MailboxView, uids: list[int], atts: list[FetchAtt],
                      name: str, previews: Mapping[int, bytes] | None = None) -> Reply:
    """FETCH of message attributes only (a client's flag re-sync: ``UID FETCH 1:* (UID
    FLAGS)``): read from the shared state's columns, no message object per message; with
    ``previews`` (UID -> stored PREVIEW), PREVIEW too, a message without a stored one
    computed from its file (or NIL under LAZY) as in every FETCH."""
    st = view.state
    recent = view.recent
    any_recent = len(recent) > 0
    rendered: dict[int, bytes] = {}  # flag set id -> "FLAGS (...)"
    names = [a.name for a in atts]
    lazy = any(a.lazy for a in atts if a.name == "PREVIEW")
    out = bytearray()
    for k, uid in enumerate(uids):
        if not k & 255:
            await s.breathe(k, len(uids))
        seq = view.seq_of(uid)
        i = st.index(uid)
        if seq is None:
            continue
        if i is None or (any_recent and uid in recent):
            m = view.msgs.get(uid)  # expunged elsewhere (kept as a ghost), or \Recent
            if m is None:
                continue
            modseq, size, flags = m.modseq, m.size, b"FLAGS " + response.flags(s.flags_of(m))
        else:
            modseq, fid, size = st.meta_at(i)
            flags = rendered.get(fid)  # type: ignore[assignment]
            if flags is None:
                flags = rendered[fid] = b"FLAGS " + response.flags(st.flagset(fid))
        items = []
        for n in names:
            if n == "UID":
                items.append(b"UID %d" % uid)
            elif n == "FLAGS":
                items.append(flags)
            elif n == "MODSEQ":
                items.append(b"MODSEQ (%d)" % modseq)
            elif n == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % size)
            elif n == "PREVIEW":
                v = previews.get(uid) if previews is not None else None
                if v is not None:
                    items.append(b"PREVIEW " + response.string(v))
                    continue
                info = view.msgs.get(uid)
                if info is None:
                    continue
                ld = _Loader(s, info)
                try:
                    items.append(b"PREVIEW " + _preview(ld, lazy))
                except (OSError, KeyError, StoreError):
                    items.append(b"PREVIEW NIL")  # RFC 8970 §3.1: nstring
                finally:
                    ld.close()
            else:
                info = view.msgs.get(uid)
                if info is None:
                    continue
                items.append(b"INTERNALDATE " + response.internaldate(info.internal_date))
        out += uidonly.fetch_head(s, seq, uid) + b" ".join(items) + b")\r\n"
        if len(out) >= BATCH:
            s.send(bytes(out))
            out.clear()
            await s.drain()
    if out:
        s.send(bytes(out))
    await s.drain()
    return ok(f"{name} completed")

# Items that need the message's file; for a message whose file went with an expunge by
# another session, sections are NIL (RFC 9051 §7.5.2 nstring) and the others left out.
_NEEDS_BODY = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY", "BINARY", "BINARY.SIZE", "RFC822",
                         "RFC822.HEADER", "RFC822.TEXT", "PREVIEW"})


def _body_gone(view: MailboxView, uid: int, ld: _Loader) -> bool:
    """Is ``uid`` expunged by another session (still shown here) and its file gone?"""
    if view.state.index(uid) is not None:
        return False
    try:
        ld.file()
    except (OSError, KeyError, StoreError):
        return True
    return False


async def _write(s: IMAPSession, ld: _Loader, segs: list[Segment], out: bytearray) -> None:
    """Append one response to ``out``; send ``out`` (and wait for the transport to drain)
    once it holds BATCH bytes or before a file range is streamed.  When the message's file
    cannot be opened, nothing of its response stays in ``out``."""
    mark = len(out)
    for seg in segs:
        if isinstance(seg, bytes):
            out += seg
            continue
        try:
            f = ld.file()
        except BaseException:
            del out[mark:]  # the response must not be cut after it began
            raise
        if out:
            s.send(bytes(out))
            out.clear()
        mark = 0
        f.seek(seg.offset)
        left = seg.length
        chunk_size = s.settings.chunk_size
        while left > 0:
            chunk = f.read(min(chunk_size, left))
            if not chunk:
                # The file is shorter than recorded: pad so the literal stays well-formed.
                chunk = b" " * min(chunk_size, left)
            s.send(chunk)
            left -= len(chunk)
            await s.drain()
    if len(out) >= BATCH:
        s.send(bytes(out))
        out.clear()
        await s.drain()
