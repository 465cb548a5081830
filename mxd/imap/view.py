"""A session's view of its selected mailbox: sequence numbers, and the RFC 3501 §7.4.1 /
RFC 7162 §3.2.10 rules for telling the client about changes made elsewhere.

Pure bookkeeping (no I/O).  The view holds only what differs between sessions: its UIDs
in sequence order (an array), the expunges it has not reported yet and its \\Recent
messages.  Flags, sizes, dates and bodies are read from the ``MailboxState`` that all
sessions of the process share (mxd.imap.mailboxstate).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from mxd.imap.mailboxstate import MailboxState
from mxd.store.interfaces import MailboxChange, MailboxInfo, MessageInfo


@attrs.frozen
class Update:
    """Untagged responses due: new count and the UIDs whose flags changed elsewhere."""

    exists: int | None = None
    changed: tuple[tuple[int, MessageInfo], ...] = ()  # (seq, message)


class _Messages:
    """``view.msgs``: the view's messages by UID, read from the shared state."""

    def __init__(self, view: MailboxView) -> None:
        self._view = view

    def get(self, uid: int, default: MessageInfo | None = None) -> MessageInfo | None:
        if self._view.seq_of(uid) is None:
            return default
        m = self._view.state.info(uid)
        return m if m is not None else default

    def __getitem__(self, uid: int) -> MessageInfo:
        m = self.get(uid)
        if m is None:
            raise KeyError(uid)
        return m

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._view.seq_of(uid) is not None

    def __len__(self) -> int:
        return len(self._view.uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._view.uids)


class RecentSet:
    """The UIDs that are \\Recent for this session (RFC 3501 §2.3.2): ranges (lo, hi],
    since a session claims every UID above the previous claim."""

    def __init__(self, view: MailboxView) -> None:
        self._view = view
        self._ranges: list[tuple[int, int]] = []

    def add_above(self, lo: int) -> None:
        hi = self._view.max_uid
        if hi > lo:
            self._ranges.append((lo, hi))

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and any(lo < uid <= hi for lo, hi in self._ranges) \
            and self._view.seq_of(uid) is not None

    def __len__(self) -> int:
        uids = self._view.uids
        return sum(bisect.bisect_right(uids, hi) - bisect.bisect_right(uids, lo)
                   for lo, hi in self._ranges)

    def __iter__(self) -> Iterator[int]:
        return (u for u in self._view.uids if u in self)

    def discard(self, uid: int) -> None:
        """Expunged messages leave the view, so nothing is kept to discard."""


class MailboxView:
    def __init__(self, info: MailboxInfo, state: MailboxState, readonly: bool) -> None:
        self.info = info
        self.readonly = readonly
        self.state = state
        self.uids = array("I", state.uids)
        self.msgs = _Messages(self)
        self.modseq = max(info.highestmodseq, state.modseq)
        self.dirty = False
        self.deleted = False
        self.pending_expunge: set[int] = set()
        self.recent = RecentSet(self)
        self._own: dict[int, int] = {}  # uid -> modseq of our STORE, already reported
        self.listener: Any = None  # the session's change callback

    # -- the shared state's members interface ----------------------------------------------
    def contains(self, uid: int) -> bool:
        return self.seq_of(uid) is not None

    def expunged_elsewhere(self, uids: set[int]) -> None:
        self.pending_expunge |= uids

    def changed(self, change: MailboxChange) -> None:
        if change.kind == "deleted":
            self.deleted = True
        elif change.kind != "expunge":
            self.dirty = True
        if self.listener is not None:
            self.listener(change)

    def attach(self, listener: Any) -> None:
        self.listener = listener
        self.state.members.append(self)

    def detach(self) -> None:
        """Leave the shared state: expunges not reported are released."""
        if self in self.state.members:
            self.state.members.remove(self)
        for uid in self.pending_expunge:
            self.state.release_ghost(uid)
        self.pending_expunge.clear()
        self.listener = None

    # -- sequence numbers -------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def uid_of(self, seq: int) -> int:
        return self.uids[seq - 1]

    def keywords(self) -> set[str]:
        return self.state.keywords()

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without \\Seen (at SELECT, when the view
        and the state agree)."""
        i = self.state.first_without("\\Seen")
        if i is None:
            return None
        return self.seq_of(self.state.uids[i])

    def claim_recent(self, claims: Any) -> None:
        """Take the \\Recent messages no other session has claimed (RFC 3501 §2.3.2)."""
        prev = claims.claim(self.info.id, self.max_uid, self.info.uidnext - 1)
        self.recent.add_above(prev)

    # -- applying changes -------------------------------------------------------------
    def catch_up(self) -> Update:
        """After the shared state was refreshed: take its new messages and name the ones
        whose flags changed since this view last looked."""
        st = self.state
        old_max = self.max_uid
        changed: list[tuple[int, MessageInfo]] = []
        for uid in st.changed_since(self.modseq):
            if uid > old_max or uid in self.pending_expunge:
                continue
            ms = st.modseq_of(uid)
            if ms is None or ms <= self.modseq or self._own.get(uid) == ms:
                continue
            seq = self.seq_of(uid)
            m = st.info(uid) if seq is not None else None
            if seq is not None and m is not None:
                changed.append((seq, m))
        start = bisect.bisect_right(st.uids, old_max)
        added = len(st.uids) - start
        if added > 0:
            self.uids.extend(st.uids[start:])
        self.modseq = max(self.modseq, st.modseq)
        self._own.clear()
        return Update(self.exists if added > 0 else None, tuple(changed))

    def set_messages(self, messages: Iterable[MessageInfo]) -> None:
        """Our own STORE results: record them (they are reported by STORE itself)."""
        messages = list(messages)
        self.state.apply(messages)
        for m in messages:
            self._own[m.uid] = m.modseq

    def expunge(self, uids: Iterable[int]) -> list[tuple[int, int]]:
        """Remove ``uids``; (seq, uid) pairs, highest seq first, so that each reported
        sequence number is right at the moment the client reads it (RFC 3501 §7.4.1)."""
        out: list[tuple[int, int]] = []
        for uid in sorted(set(uids), reverse=True):
            if uid in self.pending_expunge:
                self.pending_expunge.discard(uid)
                self.state.release_ghost(uid)
            seq = self.seq_of(uid)
            if seq is None:
                continue
            out.append((seq, uid))
        if out:
            gone = {u for _, u in out}
            if len(out) == 1:
                del self.uids[out[0][0] - 1]
            else:
                self.uids = array("I", (u for u in self.uids if u not in gone))
        return out

    def take_pending_expunges(self) -> list[tuple[int, int]]:
        return self.expunge(list(self.pending_expunge))
