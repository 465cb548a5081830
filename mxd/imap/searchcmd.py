"""SEARCH and UID SEARCH with ESEARCH results (RFC 3501 §6.4.4, RFC 4731, RFC 7162 §3.1.5)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message
from typing import TYPE_CHECKING

from mxd.imap import message as mimemsg
from mxd.imap import response
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.messagecache import read_header_block
from mxd.imap.search import Candidate, matches, uses_modseq
from mxd.imap.searchres import to_save
from mxd.imap.values import Command, SearchArgs
from mxd.store.interfaces import MessageInfo

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

CHARSETS = ("US-ASCII", "UTF-8")


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

    def loaders(m: MessageInfo) -> tuple[object, object]:
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

    results: list[int] = []
    modseqs: list[int] = []  # of each result, in order
    try:
        exists, max_uid, recent = view.exists, view.max_uid, view.recent
        for seq, uid in enumerate(view.uids[:], 1):
            await s.breathe()
            m = view.msgs[uid]
            h, f = loaders(m)
            c = Candidate(seq, m, exists, max_uid, h, f, now, uid in recent)  # type: ignore[arg-type]
            if matches(args.key, c):
                results.append(uid if is_uid else seq)
                modseqs.append(m.modseq)
    except ValueError as e:
        return bad(str(e))
    with_modseq = uses_modseq(args.key)
    if with_modseq:
        s.enable_condstore()
    if args.return_opts is None:
        line = b"SEARCH" + b"".join(b" %d" % r for r in results)
        if with_modseq and results:
            line += b" (MODSEQ %d)" % max(modseqs)
        s.untagged(line)
        return ok(f"{cmd.name} completed")
    opts = args.return_opts or ("ALL",)
    if saving:
        saved = to_save(opts, results)
        s.search_result = tuple(saved if is_uid else (view.uids[q - 1] for q in saved))
        opts = tuple(o for o in opts if o != "SAVE")
        if not opts:
            return ok(f"{cmd.name} completed")  # RFC 5182 §2.4: SAVE alone answers no ESEARCH
    tag = cmd.tag.replace("\\", "\\\\").replace('"', '\\"')
    line = f'ESEARCH (TAG "{tag}")'.encode()
    if is_uid:
        line += b" UID"
    if results:
        if "MIN" in opts:
            line += b" MIN %d" % min(results)
        if "MAX" in opts:
            line += b" MAX %d" % max(results)
        if "ALL" in opts:
            line += b" ALL " + response.seqset(results)
    if "COUNT" in opts:
        line += b" COUNT %d" % len(results)
    if with_modseq and results:
        # RFC 7162 §3.1.5: with ALL or COUNT the highest mod-sequence of all matches;
        # with only MIN and/or MAX, the highest of the messages those return.
        if "ALL" in opts or "COUNT" in opts:
            modseq = max(modseqs)
        else:
            picked = []
            if "MIN" in opts:
                picked.append(modseqs[results.index(min(results))])
            if "MAX" in opts:
                picked.append(modseqs[results.index(max(results))])
            modseq = max(picked) if picked else max(modseqs)
        line += b" MODSEQ %d" % modseq
    s.untagged(line)
    return ok(f"{cmd.name} completed")
