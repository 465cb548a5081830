"""THREAD and UID THREAD (RFC 5256 §3): the session adapter around the pure
``mxd.imap.thread``.  Headers are read between work slices and the threading runs as
a generator of work units, so a big mailbox never holds the reactor."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message
from typing import TYPE_CHECKING

import attrs

from mxd.imap import message as mimemsg
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.search import Candidate, matches
from mxd.imap.searchcmd import CHARSETS
from mxd.imap.sortcmd import header_keys, read_headers
from mxd.imap.thread import Node, ThreadData, ordered_subject, references, render
from mxd.imap.values import Command, ThreadArgs
from mxd.store.interfaces import MessageInfo

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
        exists, max_uid, recent = view.exists, view.max_uid, view.recent
        for seq, uid in enumerate(view.uids[:], 1):
            await s.breathe()
            m = view.msgs[uid]
            cache: list[Message] = []

            def header(m: MessageInfo = m, cache: list[Message] = cache) -> Message:
                if not cache:
                    cache.append(read_headers(s, m))
                return cache[0]

            def full(m: MessageInfo = m) -> mimemsg.ParsedMessage:
                try:
                    with s.store.open_blob(m.blob_id) as f:
                        return mimemsg.ParsedMessage.parse(f.read())
                except (OSError, KeyError):
                    return mimemsg.ParsedMessage.parse(b"")

            c = Candidate(seq, m, exists, max_uid, header, full, now, uid in recent)
            if matches(args.key, c):
                date, _, d = header_keys(s, m)
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
