"""THREAD and UID THREAD (RFC 5256 §3): the session adapter around the pure
``mxd.imap.thread``.  Header keys come from the store (``mxd.imap.summary``) or are
read between work slices and the threading runs as
a generator of work units, so a big mailbox never holds the reactor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs

from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.searchcmd import CHARSETS
from mxd.imap.sortcmd import header_keys, matching, stored_keys
from mxd.imap.thread import Node, ThreadData, ordered_subject, references, render
from mxd.imap.values import Command, ThreadArgs

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession


async def do_thread(s: IMAPSession, cmd: Command) -> Reply:
    args: ThreadArgs = cmd.args
    view = s.view
    assert view is not None
    if args.charset not in CHARSETS:
        return no("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    now = datetime.fromtimestamp(s.clock.seconds(), UTC)
    items: list[ThreadData] = []
    stored = await stored_keys(s)
    try:
        async for seq, uid, m in matching(s, args.key, now):
            date, _, d = header_keys(s, m, stored)
            sent = m.internal_date.timestamp() if date is None else date
            items.append(attrs.evolve(d, seq=seq, uid=uid, sent=sent))
    except ValueError as e:
        return bad(str(e))
    roots: list[Node] = []
    algorithm = ordered_subject if args.algorithm == "ORDEREDSUBJECT" else references
    for _ in algorithm(items, roots):
        await s.breathe()
    s.untagged(render(roots, uid=cmd.name == "UID THREAD"))
    return ok(f"{cmd.name} completed")
