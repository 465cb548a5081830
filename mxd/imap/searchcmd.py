"""SEARCH and UID SEARCH with ESEARCH results (RFC 3501 §6.4.4, RFC 9051 §6.4.4, RFC 4731,
RFC 7162 §3.1.5, RFC 5267 §4 CONTEXT=SEARCH, RFC 9394 PARTIAL, RFC 8514 SAVEDATE keys)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from email.message import Message
from typing import TYPE_CHECKING

from mxd.imap import context, esearch, headersearch
from mxd.imap import message as mimemsg
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.messagecache import read_header_block
from mxd.imap.search import Candidate, matches, needs, uses_modseq, uses_savedate
from mxd.imap.searchres import to_save
from mxd.imap.storedvalues import stored_values
from mxd.imap.values import Command, SearchArgs, SearchKey
from mxd.store.interfaces import MessageInfo

if TYPE_CHECKING:
    from mxd.imap.mailboxstate import MailboxState
    from mxd.imap.server import IMAPSession

CHARSETS = ("US-ASCII", "UTF-8")
_ALL = SearchKey("ALL")


def loaders(s: IMAPSession, m: MessageInfo) -> tuple[object, object]:
    """Header and whole-message loaders of one message, read only when a key needs them."""
    def header() -> Message:
        try:
            with s.store.open_blob(m.blob_id) as f:
                return mimemsg.parse_headers(read_header_block(f))
        except (OSError, KeyError):
            return mimemsg.parse_headers(b"")

    def full() -> mimemsg.ParsedMessage:
        try:
            with s.store.open_blob(m.blob_id) as f:
                return mimemsg.ParsedMessage.parse(f.read())
        except (OSError, KeyError):
            return mimemsg.ParsedMessage.parse(b"")

    return header, full


async def save_dates_for(s: IMAPSession, mailbox_id: int, key: SearchKey,
                         uids: Iterable[int] | None = None) -> dict[int, datetime]:
    """The save dates a program needs (RFC 8514), read once per search."""
    if not uses_savedate(key):
        return {}
    read = getattr(s.store, "save_dates", None)
    if read is None:
        return {}
    got: dict[int, datetime] = await read(mailbox_id, None if uids is None else list(uids))
    return got


class Row:
    """A message of the selected mailbox as the evaluator reads it: its columns in the
    shared state (``MailboxState``) at index ``i``, each read when a key asks for it, so
    that a search builds no MessageInfo per message.  Valid only until the reactor is
    given back (an expunge elsewhere moves the columns)."""

    __slots__ = ("_i", "_st", "uid")

    def __init__(self, st: MailboxState, i: int, uid: int) -> None:
        self._st = st
        self._i = i
        self.uid = uid

    @property
    def flags(self) -> frozenset[str]:
        return self._st.flagset(self._st.meta_at(self._i)[1])

    @property
    def modseq(self) -> int:
        return self._st.meta_at(self._i)[0]

    @property
    def size(self) -> int:
        return self._st.meta_at(self._i)[2]

    @property
    def internal_date(self) -> datetime:
        return self._st.date_at(self._i)

    @property
    def blob_id(self) -> str:
        return self._st.blob_at(self._i)

    def info(self) -> MessageInfo:
        return self._st.info_at(self._i)


async def selected_matches(s: IMAPSession, key: SearchKey, now: datetime,
                           only: Iterable[int] | None = None) -> list[tuple[int, int, MessageInfo]]:
    """(sequence number, UID, message) of the selected mailbox's messages that ``key``
    matches (of ``only`` those UIDs when given), in mailbox order, giving the reactor
    back between work slices.  Raises ValueError for a program that cannot be run."""
    return [hit async for hit in iter_matches(s, key, now, only)]


async def iter_matches(s: IMAPSession, key: SearchKey, now: datetime,
                       only: Iterable[int] | None = None
                       ) -> AsyncIterator[tuple[int, int, MessageInfo]]:
    """``selected_matches`` one by one (SORT and THREAD select their messages this way);
    a MessageInfo is built for the matches only."""
    async for seq, uid, m in _judged(s, key, now, only):
        yield seq, uid, m.info() if isinstance(m, Row) else m


async def matched_modseqs(s: IMAPSession, key: SearchKey,
                          now: datetime) -> list[tuple[int, int, int]]:
    """(sequence number, UID, modseq) of the selected mailbox's messages that ``key``
    matches, as ``selected_matches`` finds them, with no message object per match."""
    return [(seq, uid, m.modseq) async for seq, uid, m in _judged(s, key, now, None)]


async def _judged(s: IMAPSession, key: SearchKey, now: datetime, only: Iterable[int] | None
                  ) -> AsyncIterator[tuple[int, int, MessageInfo | Row]]:
    """The matches, each as a ``Row`` (to be read before the reactor runs again) or, for
    a message expunged elsewhere, its MessageInfo.  Each message is judged on its
    columns and, for header keys, the stored header search text."""
    view = s.view
    assert view is not None
    exists, max_uid, recent = view.exists, view.max_uid, view.recent
    saved = await save_dates_for(s, view.info.id, key, only)
    if s.view is not view:
        return
    need = needs(key)
    # Header keys read the stored header search text (mxd.imap.headersearch), one query
    # per mailbox and command at most; a message without one has its header read.
    stored = await stored_values(s, headersearch.KIND) if need == "header" else {}
    if s.view is not view:
        return
    todo: Iterable[tuple[int, int]]
    if only is None:
        todo = enumerate(view.uids[:], 1)  # lazily: no list per message of a big mailbox
    else:
        todo = [(q, u) for u in sorted(set(only)) if (q := view.seq_of(u)) is not None]
    # Messages that become \Recent later are above the ones searched here.
    any_recent = len(recent) > 0
    meta_only = need == "meta"
    get_stored = stored.get
    # A message whose body is read (BODY, TEXT) may take a while: a check after each.
    every = 1 if need == "body" else 16
    # One pair of loaders for the whole search, reading the message being judged
    # (``current``): matches() runs to its end before the next message is looked at.
    current: list[MessageInfo | Row] = []
    header, full = (_no_header, _no_message) if meta_only else _loaders(s, current)
    n = 0
    for seq, uid in todo:
        n += 1
        if not n % every:
            await s.breathe()
        st = view.state
        i = st.index(uid)
        m: MessageInfo | Row
        if i is None:
            ghost = view.msgs.get(uid)  # expunged by another session, not yet reported
            if ghost is None:
                continue
            m = ghost
        else:
            m = Row(st, i, uid)
        current[:] = [m]
        c = Candidate(seq, m, exists, max_uid, header, full, now,  # type: ignore[arg-type]
                      any_recent and uid in recent, saved.get(uid), get_stored(uid))
        if matches(key, c):
            yield seq, uid, m


def _loaders(s: IMAPSession, current: list[MessageInfo | Row]
             ) -> tuple[Callable[[], Message], Callable[[], mimemsg.ParsedMessage]]:
    def header() -> Message:
        h, _ = loaders(s, current[0])  # type: ignore[arg-type]
        return h()  # type: ignore[operator]

    def full() -> mimemsg.ParsedMessage:
        _, f = loaders(s, current[0])  # type: ignore[arg-type]
        return f()  # type: ignore[operator]

    return header, full


def _no_header() -> Message:
    raise AssertionError("a flags-only search read a header")


def _no_message() -> mimemsg.ParsedMessage:
    raise AssertionError("a flags-only search read a message")


async def do_search(s: IMAPSession, cmd: Command) -> Reply:
    args: SearchArgs = cmd.args
    view = s.view
    assert view is not None
    saving = args.return_opts is not None and "SAVE" in args.return_opts
    if saving:
        s.search_result = ()  # RFC 5182 §2.4: a failed SEARCH leaves the result empty
    if args.charset is not None and args.charset not in CHARSETS:
        return no("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    is_uid = cmd.name == "UID SEARCH"
    now = datetime.fromtimestamp(s.clock.seconds(), UTC)
    if args.key == _ALL:
        # Every message (a client paging with RETURN (PARTIAL ...) ALL): no test per
        # message, no message object per message.
        matched = list(view.uids)
        results = matched if is_uid else list(range(1, len(matched) + 1))
        modseqs: list[int] = []
    else:
        try:
            found = await matched_modseqs(s, args.key, now)
        except ValueError as e:
            return bad(str(e))
        if s.view is not view:
            return ok(f"{cmd.name} completed")
        matched = [uid for _, uid, _ in found]
        results = matched if is_uid else [seq for seq, _, _ in found]
        modseqs = [modseq for _, _, modseq in found]  # of each result, in order
    with_modseq = uses_modseq(args.key)
    if with_modseq:
        s.enable_condstore()
    return_opts = args.return_opts
    if return_opts is None and s.rev2:
        # RFC 9051 §6.4.4: an IMAP4rev2 server answers SEARCH with ESEARCH; no RETURN
        # options mean RETURN (ALL).
        return_opts = ()
    if return_opts is None:
        line = b"SEARCH" + b"".join(b" %d" % r for r in results)
        if with_modseq and results:
            line += b" (MODSEQ %d)" % max(modseqs)
        s.untagged(line)
        return ok(f"{cmd.name} completed")
    opts = return_opts or ("ALL",)
    if saving:
        saved = to_save(opts, results)
        s.search_result = tuple(saved if is_uid else (view.uids[q - 1] for q in saved))
        opts = tuple(o for o in opts if o != "SAVE")
        if not opts:
            return ok(f"{cmd.name} completed")  # RFC 5182 §2.4: SAVE alone answers no ESEARCH
    if "UPDATE" in opts:
        context.start(s, cmd.tag, is_uid, args.key, None, matched, args.partial)
    # Only RETURN () means ALL (RFC 4731 §3.1); RETURN (UPDATE) alone asks for the
    # notifications without a first result (an empty ESEARCH answers it, as Dovecot).
    modseq = None
    if with_modseq and results:
        # RFC 7162 §3.1.5: with ALL or COUNT the highest mod-sequence of all matches;
        # with only MIN and/or MAX, the highest of the messages those return.
        if "ALL" in opts or "COUNT" in opts or "PARTIAL" in opts:
            modseq = max(modseqs)
        else:
            picked = []
            if "MIN" in opts:
                picked.append(modseqs[results.index(min(results))])
            if "MAX" in opts:
                picked.append(modseqs[results.index(max(results))])
            modseq = max(picked) if picked else max(modseqs)
    s.untagged(esearch.render(cmd.tag, is_uid, opts, results, partial=args.partial,
                              modseq=modseq))
    return ok(f"{cmd.name} completed")


async def do_cancelupdate(s: IMAPSession, cmd: Command) -> Reply:
    """CANCELUPDATE (RFC 5267 §4.3): stop the updates of the named searches."""
    for tag in cmd.args.tags:
        context.cancel(s, tag)
    return ok("CANCELUPDATE completed")
