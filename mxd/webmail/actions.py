"""Changing messages: seen/unseen, flagged, delete (to Trash), move — through the store,
so that IMAP sessions on the same mailbox see the change (the store notifies them, as
it does for another IMAP session's STORE or MOVE).

  POST /message/flags   mailbox=M, uid=U (one or more), op=seen|unseen|flag|unflag|
                        delete|move, to=MAILBOX (for move), back=list (where to go next)

Delete moves to the account's \\Trash mailbox (RFC 6154); in Trash itself it marks the
messages \\Deleted and expunges them."""

from __future__ import annotations

import urllib.parse
from typing import Any

from twisted.logger import Logger

from mxd.store.interfaces import NoSuchMailbox, SpecialUse
from mxd.webmail.layout import WebmailPage, arg, layout, page_render
from mxd.webmail.mailboxes import mailbox_link
from mxd.webmail.messages import find_mailbox, message_link, no_mailbox

log = Logger(namespace="mxd.webmail")

FLAG_OPS = {"seen": ("\\Seen", "add"), "unseen": ("\\Seen", "remove"),
            "flag": ("\\Flagged", "add"), "unflag": ("\\Flagged", "remove")}
OPS = (*FLAG_OPS, "delete", "move")


def _see_other(request: Any, path: str) -> bytes:
    """Back to a page after the change (303, RFC 9110 §15.4.4)."""
    request.setResponseCode(303)
    request.setHeader(b"location", path.encode("ascii"))
    return b""


def _refuse(request: Any, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    return layout("Not done", f"<p class=error>{text}</p><p><a href=/>Mailboxes</a></p>",
                  request)


class Flags(WebmailPage):

    @page_render
    async def render_POST(self, request: Any) -> bytes:
        self.headers(request)
        found = await find_mailbox(self, request)
        if found is None:
            return no_mailbox(request)
        acct, mbox = found
        store = self.ctx.store
        op = arg(request, b"op")
        try:
            uids = sorted({int(u) for u in request.args.get(b"uid", [])})
        except ValueError:
            return _refuse(request, 400, "Bad message number.")
        if op not in OPS:
            return _refuse(request, 400, "Unknown action.")
        # After "mark unread" the list: the message page would mark it read again.
        back_to_list = arg(request, b"back") == "list" or op in ("delete", "move", "unseen")
        back = mailbox_link(mbox.name) if back_to_list or len(uids) != 1 else message_link(
            mbox.name, uids[0])
        if not uids:
            return _see_other(request, back)
        if op in FLAG_OPS:
            flag, mode = FLAG_OPS[op]
            await store.store_flags(mbox.id, uids, frozenset({flag}), mode)
            return _see_other(request, back)
        if op == "delete":
            boxes = await store.list_mailboxes(acct.id)
            trash = next((b for b in boxes if b.special_use == SpecialUse.TRASH), None)
            if trash is None or trash.id == mbox.id:
                await store.store_flags(mbox.id, uids, frozenset({"\\Deleted"}), "add")
                await store.expunge(mbox.id, uids)
            else:
                await store.move(mbox.id, uids, trash.id)
            return _see_other(request, back)
        to = arg(request, b"to")
        try:
            dest = await store.get_mailbox(acct.id, to, counts=False)
        except NoSuchMailbox:
            return _refuse(request, 404, "There is no such mailbox to move to.")
        if dest.id != mbox.id:
            await store.move(mbox.id, uids, dest.id)
        log.info("webmail {account} moved {n} message(s) to {to}", account=acct.name,
                 n=len(uids), to=urllib.parse.quote(dest.name))
        return _see_other(request, back)
