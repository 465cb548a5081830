"""MULTISEARCH (RFC 7377): the ESEARCH command, one search over several mailboxes.

``ESEARCH IN (personal) RETURN (COUNT) UNSEEN`` answers one ESEARCH response per
mailbox with matches, each correlated by ``(TAG "t" MAILBOX "m" UIDVALIDITY n)`` and
always in UIDs (§2.1: sequence numbers mean nothing outside the selected mailbox).
Without ``IN`` the selected mailbox is searched.  Mailboxes other than the selected one
are read from the store (no \\Recent there), one message per work slice as SEARCH does.

Unlike SEARCH RETURN, the ESEARCH command answers only for mailboxes with matches
(§2: a mailbox without any gets no ESEARCH response; as mox does).  Choices the RFC
leaves open: a named mailbox that does not exist is passed over (it has nothing to
match); "inboxes" (RFC 5465 §6: where an MDA delivers) is INBOX and Junk, where a
DMARC quarantine verdict delivers (mxd.msgauth.inbound).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mxd.imap import context, esearch, response
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.search import Candidate, matches
from mxd.imap.searchcmd import CHARSETS, loaders, save_dates_for, selected_matches
from mxd.imap.searchres import to_save
from mxd.imap.values import Command, ESearchArgs, SearchKey
from mxd.store.interfaces import HIERARCHY_SEPARATOR, MailboxInfo, SpecialUse

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

_SELECTED = ("SELECTED", "SELECTED-DELAYED")


def choose(sources: tuple[tuple[str, tuple[str, ...]], ...], boxes: list[MailboxInfo],
           subscribed: set[str], selected: str | None) -> list[str]:
    """The mailbox names that the source options name (RFC 7377 §2.2 with the
    filter-mailboxes of RFC 5465 §6), INBOX first, then by name, each once."""
    names = {b.name for b in boxes}
    out: set[str] = set()
    for f, args in sources:
        if f in _SELECTED:
            if selected is not None:
                out.add(selected)
        elif f == "INBOXES":
            out.add("INBOX")
            out |= {b.name for b in boxes if b.special_use == SpecialUse.JUNK}
        elif f == "PERSONAL":
            out |= names
        elif f == "SUBSCRIBED":
            out |= names & subscribed
        elif f == "MAILBOXES":
            out |= names & set(args)
        elif f in ("SUBTREE", "SUBTREE-ONE"):
            for top in args:
                prefix = top + HIERARCHY_SEPARATOR
                for n in names:
                    if n == top or (n.startswith(prefix) and (
                            f == "SUBTREE" or HIERARCHY_SEPARATOR not in n[len(prefix):])):
                        out.add(n)
    return sorted(out & names, key=lambda n: (n != "INBOX", n))


async def _search_box(s: IMAPSession, box: MailboxInfo, key: SearchKey,
                      now: datetime) -> list[int]:
    """UIDs of the messages of a mailbox that is not selected that ``key`` matches."""
    msgs = await s.store.list_messages(box.id)
    saved = await save_dates_for(s, box.id, key)
    max_uid = msgs[-1].uid if msgs else 0
    out = []
    for seq, m in enumerate(msgs, 1):
        await s.breathe()
        h, f = loaders(s, m)
        c = Candidate(seq, m, len(msgs), max_uid, h, f, now, False,  # type: ignore[arg-type]
                      saved.get(m.uid))
        if matches(key, c):
            out.append(m.uid)
    return out


async def do_esearch(s: IMAPSession, cmd: Command) -> Reply:
    args: ESearchArgs = cmd.args
    assert s.account is not None
    if args.charset is not None and args.charset not in CHARSETS:
        return no("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    view = s.view
    opts = args.return_opts or ("ALL",)
    only_selected = not args.sources or all(f in _SELECTED for f, _ in args.sources)
    if view is None and (not args.sources or any(f in _SELECTED for f, _ in args.sources)):
        # RFC 7377 §2: no IN, or IN (selected), searches the selected mailbox.
        return bad("ESEARCH of the selected mailbox needs a selected mailbox")
    if not only_selected and ("SAVE" in opts or "UPDATE" in opts):
        # RFC 7377 §2.2: SAVE (and so the updates that keep a result) only for the
        # selected mailbox.
        return bad("RETURN SAVE and UPDATE need IN (selected)")
    now = datetime.fromtimestamp(s.clock.seconds(), UTC)
    if only_selected:
        assert view is not None
        targets = [view.info]
    else:
        boxes = await s.store.list_mailboxes(s.account.id)
        list_subscriptions = getattr(s.store, "list_subscriptions", None)
        subscribed = (set(await list_subscriptions(s.account.id)) if list_subscriptions
                      else {b.name for b in boxes if b.subscribed})
        by_name = {b.name: b for b in boxes}
        targets = [by_name[n] for n in choose(args.sources, boxes, subscribed,
                                              view.info.name if view is not None else None)]
    for box in targets:
        try:
            if view is not None and box.id == view.info.id and s.view is view:
                uids = [uid for _, uid, _ in await selected_matches(s, args.key, now)]
                if "SAVE" in opts:
                    s.search_result = tuple(to_save(opts, uids))
                if "UPDATE" in opts:
                    context.start(s, cmd.tag, True, args.key, None, uids, args.partial)
            else:
                uids = await _search_box(s, box, args.key, now)
        except ValueError as e:
            return bad(str(e))
        shown = tuple(o for o in opts if o not in ("SAVE", "UPDATE", "CONTEXT")) or (
            () if "SAVE" in opts else ("ALL",))
        if not shown or not uids:
            continue
        s.untagged(esearch.render(cmd.tag, True, shown, uids, partial=args.partial,
                                  mailbox=response.mailbox(box.name, s.utf8),
                                  uidvalidity=box.uidvalidity))
    return ok("ESEARCH completed")
