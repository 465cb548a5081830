"""A mailbox's message list: newest first, a page at a time, with search.

The store hands over the rows of the page shown (``newest_messages``: one indexed query,
off the reactor; a large mailbox is never loaded whole, which on a 10,000-message box
also cost a full garbage collection pass over the objects it made); only the messages of
the page shown have their header read, in a thread.  A search runs the IMAP search
evaluator over the mailbox newest first, ``SEARCH_CHUNK`` rows at a time from the store,
and stops once it has the page.  It
runs on the reactor in work slices (``WebmailContext.work_slice``, 4 ms), as IMAP SEARCH
does, giving the reactor back between them: a search in a thread held the interpreter
lock against the reactor for tens to hundreds of milliseconds at a time (the parsing is
Python code), so every other session waited; on the reactor the wait is one slice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from twisted.internet import task

from mxd.imap.message import ParsedMessage, parse_headers
from mxd.imap.messagecache import read_header
from mxd.imap.values import SearchKey
from mxd.store.interfaces import MailboxInfo, MessageInfo, NoSuchMailbox
from mxd.webmail.context import WebmailContext
from mxd.webmail.layout import WebmailPage, arg, csrf_field, e, hidden, layout, page_render, q
from mxd.webmail.mailboxes import mailbox_link, ordered
from mxd.webmail.mime import Summary, summary
from mxd.webmail.search import match, search_key


def load_header(store: Any, m: MessageInfo) -> Message:
    """The parsed header of a stored message (blocking)."""
    try:
        return parse_headers(read_header(lambda n: store.read_blob_head(m.blob_id, n)))
    except (OSError, KeyError):
        return parse_headers(b"")


def load_message(store: Any, m: MessageInfo) -> ParsedMessage:
    """The parsed message (blocking)."""
    try:
        with store.open_blob(m.blob_id) as f:
            return ParsedMessage.parse(f.read())
    except (OSError, KeyError):
        return ParsedMessage.parse(b"")


async def search_messages(ctx: WebmailContext, key: SearchKey, msgs: Sequence[MessageInfo],
                          want: int) -> list[MessageInfo]:
    """The first ``want`` messages of ``msgs`` that match ``key`` (fewer when fewer do),
    in order.  Runs on the reactor and gives it back after each ``ctx.work_slice`` of
    work (DESIGN.md: no request stalls other sessions for more than a few ms); a message
    is read from its file (the page cache, mostly) only as far as ``key`` needs."""
    store, clock = ctx.store, ctx.clock
    now = datetime.fromtimestamp(clock.seconds(), UTC)

    def header(m: MessageInfo) -> Message:
        return load_header(store, m)

    def whole(m: MessageInfo) -> ParsedMessage:
        return load_message(store, m)

    hits: list[MessageInfo] = []
    started = clock.seconds()
    for m in msgs:
        if clock.seconds() - started >= ctx.work_slice:
            await task.deferLater(clock, 0, lambda: None)
            started = clock.seconds()
        if match(key, m, now, header, whole):
            hits.append(m)
            if len(hits) >= want:
                break
    return hits


SEARCH_CHUNK = 500  # rows fetched from the store per step of a search


async def search_mailbox(ctx: WebmailContext, key: SearchKey, mailbox_id: int,
                         want: int, chunk: int = SEARCH_CHUNK) -> list[MessageInfo]:
    """search_messages over a whole mailbox, newest first, reading its rows from the
    store a chunk at a time and no further than the hits wanted."""
    hits: list[MessageInfo] = []
    before: int | None = None
    while len(hits) < want:
        rows = await ctx.store.newest_messages(mailbox_id, chunk, before_uid=before)
        if not rows:
            break
        hits.extend(await search_messages(ctx, key, rows, want - len(hits)))
        if len(rows) < chunk:
            break
        before = rows[-1].uid
    return hits


def message_link(mailbox: str, uid: int) -> str:
    return f"/message?mailbox={q(mailbox)}&uid={uid}"


def _date(s: Summary, m: MessageInfo) -> str:
    d = s.date or m.internal_date
    try:
        return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError):
        return ""


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n // 1024} KiB" if n < 1 << 20 else f"{n >> 20} MiB"


async def find_mailbox(page: WebmailPage, request: Any) -> tuple[Any, MailboxInfo] | None:
    """The account and the mailbox named by the ``mailbox`` field, or None (404 set)."""
    acct = await page.account(request)
    name = arg(request, b"mailbox", "INBOX")
    try:
        return acct, await page.ctx.store.get_mailbox(acct.id, name)
    except NoSuchMailbox:
        request.setResponseCode(404)
        return None


def no_mailbox(request: Any) -> bytes:
    return layout("No such mailbox", "<p class=error>There is no such mailbox.</p>"
                  '<p><a href="/">Mailboxes</a></p>', request)


def move_options(boxes: list[MailboxInfo], current: str) -> str:
    return "".join(f'<option value="{e(b.name)}">{e(b.name)}</option>'
                   for b in ordered(boxes) if b.name != current)


class MessageList(WebmailPage):
    """GET /messages?mailbox=NAME[&page=N][&q=SEARCH]"""

    @page_render
    async def render_GET(self, request: Any) -> bytes:
        self.headers(request)
        found = await find_mailbox(self, request)
        if found is None:
            return no_mailbox(request)
        acct, mbox = found
        store, size = self.ctx.store, self.ctx.page_size
        try:
            page = max(0, min(int(arg(request, b"page", "0")), 1_000_000))
        except ValueError:
            page = 0
        query = arg(request, b"q").strip()[:500]
        key = search_key(query)
        if key is None:
            rows = await store.newest_messages(mbox.id, size + 1, offset=page * size)
            shown, more = rows[:size], len(rows) > size
            n = mbox.exists
            total = f"{n} message{'' if n == 1 else 's'}, {mbox.unseen} unseen"
        else:
            want = (page + 1) * size + 1  # one more than shown: is there a next page?
            hits = await search_mailbox(self.ctx, key, mbox.id, want)
            shown, more = hits[page * size:(page + 1) * size], len(hits) >= want
            total = f"search: {len(shown)} shown"
        heads = await self.ctx.run_blocking(
            lambda: [summary(load_header(store, m)) for m in shown])
        rows = []
        for m, s in zip(shown, heads, strict=True):
            seen, flagged = "\\Seen" in m.flags, "\\Flagged" in m.flags
            link = message_link(mbox.name, m.uid)
            rows.append(
                f"<tr{'' if seen else ' class=unseen'}>"
                f"<td><input type=checkbox name=uid value={m.uid} form=bulk "
                f'aria-label="select message {m.uid}"></td>'
                f"<td class=flag>{'★' if flagged else ''}</td>"
                f"<td>{e(s.sender)}</td>"
                f'<td><a href="{e(link)}">{e(s.subject) or "(no subject)"}</a></td>'
                f"<td>{e(_date(s, m))}</td><td class=num>{_size(m.size)}</td></tr>")
        base = f"{mailbox_link(mbox.name)}&q={q(query)}" if query else mailbox_link(mbox.name)
        pager = []
        if page > 0:
            pager.append(f'<a rel=prev href="{e(base)}&amp;page={page - 1}">« newer</a>')
        if more:
            pager.append(f'<a rel=next href="{e(base)}&amp;page={page + 1}">older »</a>')
        boxes = await store.list_mailboxes(acct.id)
        search = ("<form method=get action=/messages class=bar role=search>"
                  f"{hidden('mailbox', mbox.name)}"
                  f'<input type=search name=q value="{e(query)}" size=40 '
                  'placeholder="search: words, from:, to:, subject:, is:unseen" '
                  'aria-label="search"><button>Search</button>'
                  + (f'<a href="{e(mailbox_link(mbox.name))}">clear</a>' if query else "")
                  + "</form>")
        bulk = (f"<form method=post action=/message/flags id=bulk class=bar>{csrf_field(request)}"
                f"{hidden('mailbox', mbox.name)}{hidden('back', 'list')}"
                "<button name=op value=seen>Mark read</button>"
                "<button name=op value=unseen>Mark unread</button>"
                "<button name=op value=flag>Flag</button>"
                "<button name=op value=unflag>Unflag</button>"
                "<button name=op value=delete>Delete</button>"
                f"<select name=to aria-label='move to'>{move_options(boxes, mbox.name)}</select>"
                "<button name=op value=move>Move</button></form>")
        table = ("<table class=messages><tr><th></th><th></th><th>From</th><th>Subject</th>"
                 f"<th>Date</th><th class=num>Size</th></tr>{''.join(rows)}</table>"
                 if rows else "<p>No messages.</p>")
        body = (f"<p>{e(total)}</p>{search}{bulk}{table}"
                f"<p class=pager>{' · '.join(pager)}</p>")
        return layout(mbox.name, body, request)
