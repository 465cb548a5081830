"""A session's view of its selected mailbox: sequence numbers, and the RFC 3501 §7.4.1 /
RFC 7162 §3.2.10 rules for telling the client about changes made elsewhere.

Pure bookkeeping (no I/O): the server feeds it store listings and change notices and asks
it which untagged responses are due.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

import attrs

from mxd.store.interfaces import MailboxInfo, MessageInfo


@attrs.frozen
class Update:
    """Untagged responses due: new count, changed messages, expunged (seq, uid) pairs."""

    exists: int | None = None
    changed: tuple[tuple[int, MessageInfo], ...] = ()  # (seq, message)
    expunged: tuple[tuple[int, int], ...] = ()  # (seq, uid), highest seq first


class MailboxView:
    def __init__(self, info: MailboxInfo, messages: Iterable[MessageInfo], readonly: bool) -> None:
        self.info = info
        self.readonly = readonly
        self.uids: list[int] = []
        self.msgs: dict[int, MessageInfo] = {}
        for m in sorted(messages, key=lambda m: m.uid):
            self.uids.append(m.uid)
            self.msgs[m.uid] = m
        self.modseq = max([info.highestmodseq] + [m.modseq for m in self.msgs.values()])
        self.dirty = False
        self.deleted = False
        self.pending_expunge: set[int] = set()
        self.recent: set[int] = set()

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
        kw: set[str] = set()
        for m in self.msgs.values():
            kw.update(f for f in m.flags if not f.startswith("\\"))
        return kw

    def first_unseen(self) -> int | None:
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in self.msgs[uid].flags:
                return i + 1
        return None

    def claim_recent(self, claims: Any) -> None:
        """Take the \\Recent messages no other session has claimed (RFC 3501 §2.3.2)."""
        prev = claims.claim(self.info.id, self.max_uid, self.info.uidnext - 1)
        self.recent.update(u for u in self.uids if u > prev)

    # -- applying changes -------------------------------------------------------------
    def update_messages(self, messages: Iterable[MessageInfo]) -> Update:
        """Merge a store listing (messages changed after ``self.modseq``)."""
        changed: list[tuple[int, MessageInfo]] = []
        added = False
        for m in sorted(messages, key=lambda m: m.uid):
            self.modseq = max(self.modseq, m.modseq)
            old = self.msgs.get(m.uid)
            if old is not None:
                if m.uid in self.pending_expunge:
                    continue
                self.msgs[m.uid] = m
                if old.flags != m.flags or old.modseq != m.modseq:
                    seq = self.seq_of(m.uid)
                    assert seq is not None
                    if old.flags != m.flags:
                        changed.append((seq, m))
            elif m.uid > self.max_uid:
                self.uids.append(m.uid)
                self.msgs[m.uid] = m
                added = True
        return Update(self.exists if added else None, tuple(changed))

    def set_messages(self, messages: Iterable[MessageInfo]) -> None:
        """Our own STORE results: record them without reporting."""
        for m in messages:
            if m.uid in self.msgs:
                self.msgs[m.uid] = m

    def expunge(self, uids: Iterable[int]) -> list[tuple[int, int]]:
        """Remove ``uids``; (seq, uid) pairs, highest seq first, so that each reported
        sequence number is right at the moment the client reads it (RFC 3501 §7.4.1)."""
        out: list[tuple[int, int]] = []
        for uid in sorted(set(uids), reverse=True):
            self.pending_expunge.discard(uid)
            seq = self.seq_of(uid)
            if seq is None:
                continue
            del self.uids[seq - 1]
            del self.msgs[uid]
            self.recent.discard(uid)
            out.append((seq, uid))
        return out

    def take_pending_expunges(self) -> list[tuple[int, int]]:
        return self.expunge(list(self.pending_expunge))
