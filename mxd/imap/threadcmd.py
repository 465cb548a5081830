"""THREAD and UID THREAD (RFC 5256 §3): the session adapter around the pure
``mxd.imap.thread``.  Header keys come from the store (``mxd.imap.summary``) or are
read between work slices and the threading runs as
a generator of work units, so a big mailbox never holds the reactor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.searchcmd import CHARSETS
from mxd.imap.sortcmd import fields, rows
from mxd.imap.thread import Node, ThreadData, ordered_subject, references, refs, render
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
    try:
        async for chunk in rows(s, args.key, now):
            for seq, uid, arrival, _, keys in chunk:
                f = fields(keys)
                # RFC 5256 §2.2: the sent date, else the internal date.
                items.append(ThreadData(seq, uid, arrival if f[0] is None else f[0], f[1],
                                        f[7], f[8], f[9]))
    except ValueError as e:
        return bad(str(e))
    roots: list[Node] = []
    algorithm = {"ORDEREDSUBJECT": ordered_subject, "REFS": refs}.get(args.algorithm, references)
    for _ in algorithm(items, roots):
        await s.breathe()
    s.untagged(render(roots, uid=cmd.name == "UID THREAD"))
    return ok(f"{cmd.name} completed")
