"""What this process knows of a selected mailbox's messages, in compact columns shared by
every session that has the mailbox selected (RFC 3501 §2.3: UID, flags, internal date,
size; RFC 7162 modseq).

A session does not hold a Python object per message: its own view (``mxd.imap.view``)
is an array of UIDs (its sequence numbers, RFC 3501 §2.3.1.2), and everything else is
looked up here by UID.  A ``MailboxState`` is loaded from the store when the first
session selects the mailbox, kept current from the store's change notices (one
subscription per mailbox, not per session), and dropped when the last session leaves,
so nothing stale outlives the sessions that keep it in step.

Expunged messages that a session has not yet been told about (RFC 3501 §7.4.1 forbids
EXPUNGE during FETCH, STORE and SEARCH) stay readable as "ghosts" until every session
that still shows them has reported the expunge.
"""

from __future__ import annotations

import bisect
import collections
from array import array
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from mxd.store.interfaces import MailboxChange, MailboxInfo, MessageColumns, MessageInfo

log = Logger()

LOG_LIMIT = 4096  # flag changes remembered for sessions catching up


class _Store(Protocol):
    def list_messages(self, mailbox_id: int, since_modseq: int = 0) -> Any: ...

    def subscribe(self, mailbox_id: int,
                  listener: Callable[[MailboxChange], None]) -> Callable[[], None]: ...


class Member(Protocol):
    """A session's view attached to a state: told of expunges and other changes."""

    def contains(self, uid: int) -> bool: ...

    uids: Any  # the member's UIDs in sequence order (an array)

    def expunged_elsewhere(self, uids: set[int]) -> None: ...

    def changed(self, change: MailboxChange) -> None: ...


class _BlobColumn:
    """Blob ids, 16 bytes each while they are 32 hex digits (the SQLite store's), else a
    list of strings."""

    def __init__(self) -> None:
        self._packed: bytearray | None = bytearray()
        self._list: list[str] = []

    def _unpack(self) -> None:
        assert self._packed is not None
        p = self._packed
        self._list = [p[i:i + 16].hex() for i in range(0, len(p), 16)]
        self._packed = None

    def append(self, blob_id: str) -> None:
        if self._packed is not None:
            if len(blob_id) == 32:
                try:
                    raw = bytes.fromhex(blob_id)
                except ValueError:
                    raw = b""
                if len(raw) == 16 and raw.hex() == blob_id:
                    self._packed += raw
                    return
            self._unpack()
        self._list.append(blob_id)

    def insert(self, i: int, blob_id: str) -> None:
        if self._packed is not None:
            self._unpack()
        self._list.insert(i, blob_id)

    def __getitem__(self, i: int) -> str:
        if self._packed is not None:
            return self._packed[16 * i:16 * i + 16].hex()
        return self._list[i]

    def keep_spans(self, spans: list[tuple[int, int]]) -> None:
        """Keep only the entries in the index ranges ``[a, b)`` of ``spans`` (ascending)."""
        if self._packed is not None:
            p = self._packed
            self._packed = bytearray(b"".join(p[16 * a:16 * b] for a, b in spans))
        else:
            lst = self._list
            self._list = [x for a, b in spans for x in lst[a:b]]


_TZ: dict[int, timezone] = {0: UTC}


def _tz(minutes: int) -> timezone:
    tz = _TZ.get(minutes)
    if tz is None:
        tz = _TZ[minutes] = timezone(timedelta(minutes=minutes))
    return tz


class MailboxState:
    """Columns of one mailbox's messages in UID order, plus the flag changes recently
    merged (so that sessions can report them, RFC 3501 §7.4.2 unilateral FETCH)."""

    def __init__(self, mailbox_id: int) -> None:
        self.mailbox_id = mailbox_id
        self.uids = array("I")
        self._modseqs = array("Q")
        self._flag_ids = array("I")
        self._sizes = array("Q")
        self._dates = array("d")
        self._tz = array("h")
        self._blobs = _BlobColumn()
        self._flagsets: list[frozenset[str]] = []
        self._flag_index: dict[frozenset[str], int] = {}
        self.modseq = 0  # the highest modseq merged from the store
        self.stale = True  # the store has changes not merged yet
        self.loaded = False
        self.deleted = False  # the mailbox is gone; its id may be reused
        self.uidvalidity = 0
        self._log: list[tuple[int, int]] = []  # (modseq, uid) of flag changes
        self._log_floor = 0  # changes at or below this may be missing from _log
        self._tombstones: set[int] | None = None  # expunged while a refresh is running
        self.ghosts: dict[int, tuple[MessageInfo, int]] = {}  # uid -> (info, sessions)
        # The store's body holds (SQLiteStore.hold_blob), when it has them.
        self.hold_blob: Callable[[str], None] | None = None
        self.release_blob: Callable[[str], None] | None = None
        self.members: list[Member] = []
        self.lock = DeferredLock()
        self.unsubscribe: Callable[[], None] | None = None
        self.refs = 0

    # -- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def index(self, uid: int) -> int | None:
        uids = self.uids
        i = bisect.bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            return i
        return None

    def info(self, uid: int) -> MessageInfo | None:
        """The message with ``uid``, or its ghost if it was expunged; None if unknown."""
        i = self.index(uid)
        if i is None:
            g = self.ghosts.get(uid)
            return g[0] if g is not None else None
        return self._info_at(i)

    def info_at(self, i: int) -> MessageInfo:
        """The message at index ``i``."""
        return self._info_at(i)

    def date_at(self, i: int) -> datetime:
        """The internal date of the message at index ``i``."""
        return datetime.fromtimestamp(self._dates[i], _tz(self._tz[i]))

    def _info_at(self, i: int) -> MessageInfo:
        return MessageInfo(
            self.uids[i], self._modseqs[i], self._flagsets[self._flag_ids[i]],
            datetime.fromtimestamp(self._dates[i], _tz(self._tz[i])), self._sizes[i],
            self._blobs[i])

    def meta_at(self, i: int) -> tuple[int, int, int]:
        """(modseq, flag set id, size) of the message at index ``i``: the columns a
        metadata-only FETCH needs, without building a MessageInfo."""
        return self._modseqs[i], self._flag_ids[i], self._sizes[i]

    def blob_at(self, i: int) -> str:
        """The body id of the message at index ``i``."""
        return self._blobs[i]

    def arrival_size_at(self, i: int) -> tuple[float, int]:
        """(internal date in POSIX seconds, size) of the message at index ``i``: what
        SORT needs of the message besides its header keys."""
        return self._dates[i], self._sizes[i]

    def flagset(self, fid: int) -> frozenset[str]:
        return self._flagsets[fid]

    def flags(self, uid: int) -> frozenset[str] | None:
        i = self.index(uid)
        if i is None:
            g = self.ghosts.get(uid)
            return g[0].flags if g is not None else None
        return self._flagsets[self._flag_ids[i]]

    def modseq_of(self, uid: int) -> int | None:
        i = self.index(uid)
        if i is None:
            g = self.ghosts.get(uid)
            return g[0].modseq if g is not None else None
        return self._modseqs[i]

    def keywords(self) -> set[str]:
        used = set(self._flag_ids)
        out: set[str] = set()
        for fid in used:
            out.update(f for f in self._flagsets[fid] if not f.startswith("\\"))
        return out

    def first_without(self, flag: str) -> int | None:
        """Index of the first message without ``flag`` (for ``OK [UNSEEN n]``)."""
        first: int | None = None
        for fid, fs in enumerate(self._flagsets):
            if flag in fs:
                continue
            try:
                i = self._flag_ids.index(fid)  # a scan in C
            except ValueError:
                continue
            if first is None or i < first:
                first = i
        return first

    def changed_since(self, modseq: int) -> Iterator[int]:
        """UIDs of messages whose flags changed after ``modseq`` (may include some that
        did not, never misses one)."""
        if modseq >= self._log_floor:
            return iter(sorted({u for m, u in self._log if m > modseq}))
        mods = self._modseqs
        uids = self.uids
        return (uids[i] for i in range(len(uids)) if mods[i] > modseq)

    # -- changing -----------------------------------------------------------------------
    def _flag_id(self, flags: frozenset[str]) -> int:
        fid = self._flag_index.get(flags)
        if fid is None:
            fid = self._flag_index[flags] = len(self._flagsets)
            self._flagsets.append(flags)
        return fid

    def _append(self, m: MessageInfo) -> None:
        when = m.internal_date
        off = when.utcoffset()
        self.uids.append(m.uid)
        self._modseqs.append(m.modseq)
        self._flag_ids.append(self._flag_id(m.flags))
        self._sizes.append(m.size)
        self._dates.append(when.timestamp())
        self._tz.append(int(off.total_seconds() // 60) if off is not None else 0)
        self._blobs.append(m.blob_id)

    def _insert(self, i: int, m: MessageInfo) -> None:
        when = m.internal_date
        off = when.utcoffset()
        self.uids.insert(i, m.uid)
        self._modseqs.insert(i, m.modseq)
        self._flag_ids.insert(i, self._flag_id(m.flags))
        self._sizes.insert(i, m.size)
        self._dates.insert(i, when.timestamp())
        self._tz.insert(i, int(off.total_seconds() // 60) if off is not None else 0)
        self._blobs.insert(i, m.blob_id)

    def _log_change(self, modseq: int, uid: int) -> None:
        self._log.append((modseq, uid))
        if len(self._log) > LOG_LIMIT:
            drop = self._log[:LOG_LIMIT // 2]
            self._log = self._log[LOG_LIMIT // 2:]
            self._log_floor = max([self._log_floor] + [m for m, _ in drop])

    def load(self, messages: Iterable[MessageInfo], highestmodseq: int = 0) -> None:
        """Replace the columns with a full listing (in any order)."""
        for name in ("uids", "_modseqs", "_flag_ids", "_sizes", "_dates", "_tz"):
            setattr(self, name, array(getattr(self, name).typecode))
        self._blobs = _BlobColumn()
        self._flagsets = []
        self._flag_index = {}
        top = highestmodseq
        for m in sorted(messages, key=lambda m: m.uid):
            self._append(m)
            if m.modseq > top:
                top = m.modseq
        self.modseq = max(self.modseq, top)
        self.loaded = True
        self._log = []
        self._log_floor = self.modseq

    def load_columns(self, cols: MessageColumns, highestmodseq: int = 0) -> None:
        """Take a store's full listing in columns (its arrays become this state's)."""
        self.uids, self._modseqs, self._flag_ids = cols.uids, cols.modseqs, cols.flag_ids
        self._sizes, self._dates, self._tz = cols.sizes, cols.dates, cols.tz_minutes
        self._flagsets = list(cols.flag_sets)
        self._flag_index = {fs: i for i, fs in enumerate(self._flagsets)}
        self._blobs = _BlobColumn()
        if cols.blobs_packed is not None:
            self._blobs._packed = bytearray(cols.blobs_packed)
        else:
            self._blobs._packed = None
            self._blobs._list = list(cols.blob_ids or ())
        top = max(self._modseqs) if self._modseqs else 0
        self.modseq = max(self.modseq, highestmodseq, top)
        self.loaded = True
        self._log = []
        self._log_floor = self.modseq

    def merge(self, messages: Iterable[MessageInfo]) -> None:
        """Merge a listing of messages changed after ``self.modseq``."""
        tomb = self._tombstones or ()
        for m in sorted(messages, key=lambda m: m.uid):
            if m.modseq > self.modseq:
                self.modseq = m.modseq
            if m.uid in tomb:
                continue
            self._put(m)

    def _put(self, m: MessageInfo) -> None:
        uids = self.uids
        if not uids or m.uid > uids[-1]:
            self._append(m)
            return
        i = bisect.bisect_left(uids, m.uid)
        if i < len(uids) and uids[i] == m.uid:
            if self._modseqs[i] != m.modseq or self._flagsets[self._flag_ids[i]] != m.flags:
                self._modseqs[i] = m.modseq
                self._flag_ids[i] = self._flag_id(m.flags)
                self._log_change(m.modseq, m.uid)
        else:
            self._insert(i, m)

    def apply(self, messages: Iterable[MessageInfo]) -> None:
        """A session's own STORE results (already durable): record them now.  The
        state's ``modseq`` is not advanced: changes below it may still be unmerged."""
        for m in messages:
            i = self.index(m.uid)
            if i is not None and self._modseqs[i] < m.modseq:
                self._modseqs[i] = m.modseq
                self._flag_ids[i] = self._flag_id(m.flags)
                self._log_change(m.modseq, m.uid)

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Expunge ``uids``; members that still show one get it as pending (a ghost)."""
        gone = sorted({u for u in uids})
        if self._tombstones is not None:
            self._tombstones.update(gone)
        idx = [i for i in (self.index(u) for u in gone) if i is not None]
        if not idx:
            return []
        removed = [self.uids[i] for i in idx]
        # Which sessions still show which of them: set operations in C, since a large
        # expunge seen by many sessions must not cost (sessions x messages) Python steps.
        gone_set = set(removed)
        holders: collections.Counter[int] = collections.Counter()
        for mb in self.members:
            if len(gone_set) <= 8:
                hit = {u for u in gone_set if mb.contains(u)}
            else:
                hit = gone_set.intersection(mb.uids)
            if hit:
                holders.update(hit)
                mb.expunged_elsewhere(hit)
        for i, uid in zip(idx, removed, strict=True):
            n = holders.get(uid, 0)
            if n:
                info = self._info_at(i)
                self.ghosts[uid] = (info, n)
                if self.hold_blob is not None:
                    self.hold_blob(info.blob_id)  # its body stays readable meanwhile
        # Keep the slices between removed indexes (copies in C).
        bounds = [-1, *idx, len(self.uids)]
        spans = [(bounds[k] + 1, bounds[k + 1]) for k in range(len(bounds) - 1)
                 if bounds[k + 1] > bounds[k] + 1]
        for name in ("uids", "_modseqs", "_flag_ids", "_sizes", "_dates", "_tz"):
            col = getattr(self, name)
            new = array(col.typecode)
            for a, b in spans:
                new.extend(col[a:b])
            setattr(self, name, new)
        self._blobs.keep_spans(spans)
        return removed

    def release_ghost(self, uid: int) -> None:
        """A session has reported the expunge of ``uid``."""
        g = self.ghosts.get(uid)
        if g is None:
            return
        if g[1] <= 1:
            del self.ghosts[uid]
            if self.release_blob is not None:
                self.release_blob(g[0].blob_id)
        else:
            self.ghosts[uid] = (g[0], g[1] - 1)

    # -- store notices ----------------------------------------------------------------------
    def on_change(self, change: MailboxChange) -> None:
        if change.kind == "deleted":
            self.deleted = True
        if change.kind == "expunge":
            self.remove(change.uids)
        elif change.kind in ("exists", "flags"):
            self.stale = True
        for mb in list(self.members):
            mb.changed(change)

    async def refresh(self, store: _Store) -> None:
        """Merge what changed in the store since ``self.modseq`` (one query at a time,
        whichever session asks)."""
        async with self.lock:
            while self.stale:
                self.stale = False
                self._tombstones = set()
                try:
                    rows = await store.list_messages(self.mailbox_id, since_modseq=self.modseq)
                    self.merge(rows)
                except BaseException:
                    self.stale = True
                    raise
                finally:
                    self._tombstones = None


class MailboxStates:
    """The states of the mailboxes selected by sessions of this process.

    A state outlives its last session by ``linger`` seconds (still subscribed to the
    store, so still current): a client that syncs by connecting, selecting and leaving
    (mbsync, a phone) does not reload the whole mailbox every time.  Without a clock a
    state goes with its last session."""

    def __init__(self, clock: Any = None, linger: float = 60.0) -> None:
        self._states: dict[int, MailboxState] = {}
        self.clock = clock
        self.linger = linger
        self._timers: dict[int, Any] = {}

    def get(self, mailbox_id: int) -> MailboxState | None:
        return self._states.get(mailbox_id)

    async def acquire(self, store: _Store, info: MailboxInfo) -> MailboxState:
        """The state of ``info``'s mailbox, current as of ``info`` or later; call
        ``release`` when done with it."""
        timer = self._timers.pop(info.id, None)
        if timer is not None and timer.active():
            timer.cancel()
        st = self._states.get(info.id)
        if st is not None and (st.deleted or st.uidvalidity != info.uidvalidity):
            # The mailbox was deleted (a new one may reuse its id): never reuse its state.
            self._forget(st)
            st = None
        if st is None:
            st = self._states[info.id] = MailboxState(info.id)
            st.uidvalidity = info.uidvalidity
            st.hold_blob = getattr(store, "hold_blob", None)
            st.release_blob = getattr(store, "release_blob", None)
            st.unsubscribe = store.subscribe(info.id, st.on_change)
        st.refs += 1
        try:
            if not st.loaded:
                async with st.lock:
                    if not st.loaded:
                        st.stale = False
                        tomb: set[int] = set()
                        st._tombstones = tomb
                        try:
                            columns = getattr(store, "message_columns", None)
                            if columns is not None:
                                st.load_columns(await columns(info.id), info.highestmodseq)
                                if tomb:
                                    st.remove(tomb)
                            else:
                                rows = await store.list_messages(info.id)
                                st.load((m for m in rows if m.uid not in tomb),
                                        info.highestmodseq)
                        except BaseException:
                            st.stale = True
                            raise
                        finally:
                            st._tombstones = None
            if info.highestmodseq > st.modseq:
                st.stale = True
            await st.refresh(store)
        except BaseException:
            self.release(st)
            raise
        return st

    def release(self, st: MailboxState) -> None:
        st.refs -= 1
        if st.refs > 0 or self._states.get(st.mailbox_id) is not st:
            return
        if st.release_blob is not None:
            for info, _ in st.ghosts.values():
                st.release_blob(info.blob_id)
        st.ghosts.clear()
        if self.clock is not None and self.linger > 0 and not st.deleted:
            old = self._timers.pop(st.mailbox_id, None)
            if old is not None and old.active():
                old.cancel()
            self._timers[st.mailbox_id] = self.clock.callLater(self.linger, self._drop, st)
        else:
            self._drop(st)

    def _drop(self, st: MailboxState) -> None:
        self._timers.pop(st.mailbox_id, None)
        if st.refs <= 0:
            self._forget(st)

    def _forget(self, st: MailboxState) -> None:
        """Stop keeping ``st`` (its sessions, if any, keep their reference)."""
        if self._states.get(st.mailbox_id) is st:
            del self._states[st.mailbox_id]
        if st.unsubscribe is not None:
            st.unsubscribe()
            st.unsubscribe = None
