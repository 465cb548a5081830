"""Which UIDs vanished since a client's mod-sequence (RFC 7162 §3.2.5.1, §3.2.6)."""

from __future__ import annotations

from typing import Any

from mxd.imap.values import SeqSet
from mxd.imap.view import MailboxView


async def vanished(store: Any, view: MailboxView, modseq: int, known: SeqSet | None,
                   uidnext: int) -> list[int]:
    """UIDs expunged since ``modseq``, from the store's record when it keeps one
    (``list_vanished``), else every absent UID the client may know of (allowed by
    RFC 7162 §3.2.6).  ``known`` limits the answer to the client's known UIDs."""
    limit = max(uidnext - 1, view.max_uid)
    list_vanished = getattr(store, "list_vanished", None)
    if list_vanished is not None:
        uids = await list_vanished(view.info.id, modseq)
        if known is not None:
            return sorted(u for u in uids if known.contains(u, limit))
        return sorted(uids)
    if known is not None:
        return [u for u in known.iter_values(view.max_uid, limit) if u not in view.msgs]
    return [u for u in range(1, view.max_uid + 1) if u not in view.msgs]
