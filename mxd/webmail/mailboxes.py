"""The mailbox list with message and unseen counts (the store counts them)."""

from __future__ import annotations

from typing import Any

from mxd.store.interfaces import MailboxInfo, SpecialUse
from mxd.webmail.layout import WebmailPage, e, layout, page_render, q

_ORDER = {None: 1, SpecialUse.DRAFTS: 2, SpecialUse.SENT: 3, SpecialUse.ARCHIVE: 4,
          SpecialUse.JUNK: 5, SpecialUse.TRASH: 6}


def ordered(mailboxes: list[MailboxInfo]) -> list[MailboxInfo]:
    """INBOX first, then the special-use mailboxes in a fixed order, then the rest by
    name."""
    def key(m: MailboxInfo) -> tuple[int, str]:
        if m.name.upper() == "INBOX":
            return 0, ""
        return (_ORDER.get(m.special_use, 7) if m.special_use else 7), m.name.casefold()

    return sorted(mailboxes, key=key)


def mailbox_link(name: str) -> str:
    return f"/messages?mailbox={q(name)}"


class Mailboxes(WebmailPage):
    """GET /: every mailbox of the account with its counts."""

    @page_render
    async def render_GET(self, request: Any) -> bytes:
        self.headers(request)
        acct = await self.account(request)
        boxes = ordered(await self.ctx.store.list_mailboxes(acct.id))
        rows = "".join(
            f"<tr{' class=unseen' if m.unseen else ''}>"
            f'<td><a href="{e(mailbox_link(m.name))}">{e(m.name)}</a></td>'
            f"<td class=num>{m.exists}</td><td class=num>{m.unseen}</td></tr>"
            for m in boxes)
        body = ("<table class=mailboxes><tr><th>Mailbox</th><th class=num>Messages</th>"
                f"<th class=num>Unseen</th></tr>{rows}</table>")
        return layout("Mailboxes", body, request)
