"""APPEND of several messages (MULTIAPPEND, RFC 3502), of messages built from parts
(CATENATE, RFC 4469) and REPLACE / UID REPLACE (RFC 8508).

The plain one-message APPEND stays in ``mxd.imap.commands``; this module takes the
APPENDs that parse to ``MultiAppendArgs`` and the REPLACE commands.  Both are atomic in
the store (``IMailStore.append_many`` and ``replace``: one transaction).  Literal
limits are checked as each literal is announced (``choose_sink``), before any of its
octets is accepted: every message against APPENDLIMIT (RFC 7889), the command's total
against the account's quota (RFC 9208), the number of messages against
``max_multiappend``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from mxd.imap import response
from mxd.imap.appendsyntax import AppendMessage, MultiAppendArgs, ReplaceArgs
from mxd.imap.catenate import CatenateRefused, SpoolSink, assemble
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.errors import BadSequence, FramingError
from mxd.imap.framer import BlobLiteral, LiteralSink, Part
from mxd.imap.values import Command
from mxd.store.interfaces import BlobWriter, MessageGone, QuotaExceeded, StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

MAX_MULTIAPPEND = 1000  # messages in one APPEND


def _refuse(text: str) -> FramingError:
    err = FramingError(text)
    err.append = True  # a tagged NO, not BAD (RFC 7889 §4)
    return err


def choose_sink(s: IMAPSession, parts: tuple[Part, ...], size: int) -> LiteralSink | None | bool:
    """Where an APPEND or REPLACE literal goes, or False when it is the mailbox name
    (ordinary literal limits apply).  Raises FramingError (a tagged NO) when the
    literal would break a limit, before any of its octets is accepted."""
    t = s.literal_counter.tally(parts)
    if t.role == "mailbox":
        return False
    st = s.settings
    if t.index >= MAX_MULTIAPPEND:
        raise _refuse(f"[LIMIT] At most {MAX_MULTIAPPEND} messages in one APPEND")
    if t.message_octets + size > st.append_limit:
        raise _refuse(f"[TOOBIG] Message larger than APPENDLIMIT {st.append_limit}")
    if s.usage is not None:
        used, limit = s.usage
        if limit is not None and used + t.total_octets + size > limit:
            # Another session may have freed space since: look again for next time.
            s.clock.callLater(0, lambda: Deferred.fromCoroutine(s.refresh_usage()))
            raise _refuse("[OVERQUOTA] The message would exceed the quota")
    # In-memory literals count against the command's size limit (the framer's
    # max_command): beyond half of it, or append_memory per literal, they are spooled.
    if size > st.append_memory or t.in_memory + size > st.max_command // 2:
        return SpoolSink(st.append_memory) if t.role == "text" else s.store.new_blob()
    return None


def _sinks(m: AppendMessage) -> list[BlobLiteral]:
    if isinstance(m.data, tuple):
        return [p.data for p in m.data if hasattr(p, "data") and isinstance(p.data, BlobLiteral)]
    return [m.data] if isinstance(m.data, BlobLiteral) else []


async def _body(s: IMAPSession, m: AppendMessage) -> tuple[BlobWriter, int]:
    """The message's store body and size; raises CatenateRefused."""
    if isinstance(m.data, tuple):
        return await assemble(s, m.data, s.settings.append_limit)
    if isinstance(m.data, BlobLiteral):
        return m.data.sink, m.data.size  # type: ignore[return-value]
    blob = s.store.new_blob()
    blob.write(m.data.data)
    return blob, len(m.data.data)


def _flags(m: AppendMessage) -> frozenset[str] | Reply:
    from mxd.imap.commands import flags_problem, normalise_flags

    flags = normalise_flags(m.flags)
    if flags is None:
        return bad("Unknown system flag")
    refused = flags_problem(m.flags)
    return refused if refused is not None else flags


async def cmd_multiappend(s: IMAPSession, cmd: Command) -> Reply:
    """RFC 3502 §6.3.11: all messages are appended, or none."""
    from mxd.imap.commands import _get_mailbox, mailbox_name

    args: MultiAppendArgs = cmd.args
    pending: list[BlobWriter] = []  # bodies to drop unless the store takes them
    for m in args.messages:
        pending += [b.sink for b in _sinks(m) if not isinstance(b.sink, SpoolSink)]  # type: ignore[misc]
    try:
        items: list[tuple[BlobWriter, frozenset[str], datetime | None]] = []
        checked = []
        for m in args.messages:
            flags = _flags(m)
            if isinstance(flags, Reply):
                return flags
            checked.append(flags)
        box = await _get_mailbox(s, mailbox_name(s, args.mailbox))
        if box is None:
            return no("Mailbox does not exist", "TRYCREATE")
        total = 0
        for m, flags in zip(args.messages, checked, strict=True):
            try:
                blob, size = await _body(s, m)
            except CatenateRefused as e:
                return e.reply
            if not isinstance(m.data, BlobLiteral):
                pending.append(blob)
            if size == 0:
                # RFC 3502 §6.3.11: a zero-length message is how a client cancels.
                return no("APPEND cancelled (empty message); nothing appended")
            total += size
            items.append((blob, flags, m.date))
        if s.usage is not None and s.usage[1] is not None and s.usage[0] + total > s.usage[1]:
            return no("The messages would exceed the quota", "OVERQUOTA")
        try:
            uids = await s.store.append_many(box.id, items)
        except QuotaExceeded:
            pending = []
            await s.refresh_usage()
            return no("Quota exceeded", "OVERQUOTA")
        except StoreError:
            pending = []
            raise
        pending = []
        s.note_appended(total)
        if s.view is not None and s.view.info.id == box.id:
            s.view.dirty = True
        # RFC 4315 §3 / RFC 3502 §6.3.11: APPENDUID with the UID set, in message order.
        return ok("APPEND completed",
                  f"APPENDUID {box.uidvalidity} {response.seqset(uids).decode()}")
    finally:
        for b in pending:
            b.abort()
        for m in args.messages:
            for bl in _sinks(m):
                if isinstance(bl.sink, SpoolSink):
                    bl.sink.abort()


async def cmd_replace(s: IMAPSession, cmd: Command) -> Reply:
    """RFC 8508 §3.4: append the new message and expunge the old one, atomically."""
    from mxd.imap.commands import _get_mailbox, mailbox_name

    args: ReplaceArgs = cmd.args
    view = s.view
    assert view is not None
    m = args.message
    blob: BlobWriter | None = None
    taken = False  # the store has the body (or has dropped it)
    try:
        if view.readonly:
            # RFC 8508 §3.4: the expunge half needs a mailbox open read-write.
            return no("Mailbox is read-only", "READ-ONLY")
        if cmd.name == "UID REPLACE":
            uid = args.target
            if not view.contains(uid):
                return no("No message with that UID", "NONEXISTENT")
        else:
            if args.target > view.exists:
                raise BadSequence("Invalid message sequence number")
            uid = view.uid_of(args.target)
        flags = _flags(m)
        if isinstance(flags, Reply):
            return flags
        dest = await _get_mailbox(s, mailbox_name(s, args.mailbox))
        if dest is None:
            return no("Mailbox does not exist", "TRYCREATE")
        try:
            blob, size = await _body(s, m)
        except CatenateRefused as e:
            return e.reply
        if size == 0:
            return no("Cannot append an empty message")
        when = m.date or datetime.fromtimestamp(s.clock.seconds(), UTC)
        taken = True
        try:
            new_uid = await s.store.replace(view.info.id, uid, dest.id, blob, flags, when)
        except MessageGone:
            return no("The message to replace has been expunged", "EXPUNGEISSUED")
        except QuotaExceeded:
            await s.refresh_usage()
            return no("Quota exceeded", "OVERQUOTA")
        await s.refresh_usage()
        # RFC 8508 §3.2 (and §4.3 with UIDPLUS): the new message's APPENDUID comes in an
        # untagged OK, then EXISTS for it when it went to the selected mailbox, then the
        # EXPUNGE (VANISHED with QRESYNC) of the replaced one.
        s.untagged(f"OK [APPENDUID {dest.uidvalidity} {new_uid}] Replacement Message ready")
        if s.view is view:
            if dest.id == view.info.id:
                view.dirty = True
                await s.sync(False)
            if s.view is view:
                s.report_expunged(view.expunge([uid]))
        return ok(f"{cmd.name} completed")
    finally:
        for bl in _sinks(m):
            if isinstance(bl.sink, SpoolSink) or not taken:
                bl.sink.abort()
        if blob is not None and not taken and not isinstance(m.data, BlobLiteral):
            blob.abort()
