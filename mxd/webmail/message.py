"""One message: its header fields, its body (plain text escaped; HTML sanitised and shown
in a sandboxed frame of its own), its attachments, and the actions on it.

  GET /message?mailbox=M&uid=U[&remote=1][&view=text]   the message page (marks it \\Seen)
  GET /message/body?mailbox=M&uid=U[&remote=1]         the sanitised HTML for the frame
  GET /message/part?mailbox=M&uid=U&part=1.2           an attachment, as a download

The frame is ``<iframe sandbox="allow-popups allow-popups-to-escape-sandbox">``: no
script, no same-origin access, no forms, no top navigation; its document comes with its
own CSP (``mxd.webmail.sanitize.frame_csp``) that allows images from ``data:`` only
until the user asks for remote content.  Downloads are ``Content-Disposition:
attachment`` (RFC 6266) as application/octet-stream with ``nosniff``, so a hostile
attachment is never rendered in the webmail's origin."""

from __future__ import annotations

import base64
import re
import urllib.parse
from typing import Any

from mxd.imap.message import ParsedMessage
from mxd.store.interfaces import MessageInfo
from mxd.webmail.actions import Flags
from mxd.webmail.layout import WebmailPage, arg, e, hidden, layout, page_render, post_form, q
from mxd.webmail.mailboxes import mailbox_link
from mxd.webmail.messages import find_mailbox, load_message, move_options
from mxd.webmail.mime import Attachment, Body, body, parse_part, part_bytes, summary
from mxd.webmail.sanitize import Sanitised, frame_csp, frame_document, sanitise

INLINE_TYPES = ("image/png", "image/gif", "image/jpeg", "image/webp")
MAX_INLINE = 2 * 1024 * 1024  # octets of one inline image embedded as a data: URL


async def find_message(page: WebmailPage, request: Any) -> tuple[Any, Any, MessageInfo] | None:
    """(account, mailbox, message) named by the request, or None (404 set)."""
    found = await find_mailbox(page, request)
    if found is None:
        return None
    acct, mbox = found
    try:
        uid = int(arg(request, b"uid"))
    except ValueError:
        uid = 0
    # One row by its key, not the mailbox's list (RFC 3501 §2.3.1.1: a UID is a
    # non-zero 32-bit number; anything else names no message).
    m: MessageInfo | None = (await page.ctx.store.get_message(mbox.id, uid)
                             if 0 < uid < 2**32 else None)
    if m is None:
        request.setResponseCode(404)
        return None
    return acct, mbox, m


def _gone(request: Any) -> bytes:
    return layout("No such message", "<p class=error>That message is not there (any "
                  'more).</p><p><a href="/">Mailboxes</a></p>', request)


def inline_images(msg: ParsedMessage, parts: Body) -> dict[str, str]:
    """Content-ID -> data: URL of the message's own raster images (bounded)."""
    out = {}
    for cid, a in parts.inline.items():
        if a.content_type in INLINE_TYPES and a.size <= MAX_INLINE * 4 // 3 + 1024:
            data = part_bytes(msg, a.part)
            if data is not None and len(data) <= MAX_INLINE:
                out[cid] = f"data:{a.content_type};base64,{base64.b64encode(data).decode()}"
    return out


def sanitised_html(msg: ParsedMessage, parts: Body, remote: bool) -> Sanitised:
    assert parts.html is not None
    return sanitise(parts.html, remote=remote, inline=inline_images(msg, parts).get)


def _linkify(text: str) -> str:
    """Escaped plain text with http(s) URLs as links (opened outside, no referrer)."""
    out, pos = [], 0
    for m in re.finditer(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]", text):
        out.append(e(text[pos:m.start()]))
        url = m.group(0)
        out.append(f'<a href="{e(url)}" target=_blank rel="noopener noreferrer">{e(url)}</a>')
        pos = m.end()
    out.append(e(text[pos:]))
    return "".join(out)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n // 1024} KiB" if n < 1 << 20 else f"{n >> 20} MiB"


class MessageView(WebmailPage):
    """GET /message; /message/body and /message/part below it; POST /message/flags."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.flags = Flags(ctx)

    def render_POST(self, request: Any) -> Any:
        if [p for p in request.postpath if p] == [b"flags"]:
            return self.flags.render_POST(request)
        self.headers(request)
        request.setResponseCode(404)
        return layout("Not found", "<p class=error>No such page.</p>", request)

    @page_render
    async def render_GET(self, request: Any) -> bytes:
        sub = [p for p in request.postpath if p]
        if sub == [b"body"]:
            return await self._frame(request)
        if sub == [b"part"]:
            return await self._part(request)
        self.headers(request)
        if sub:
            request.setResponseCode(404)
            return layout("Not found", "<p class=error>No such page.</p>", request)
        found = await find_message(self, request)
        if found is None:
            return _gone(request)
        acct, mbox, m = found
        store = self.ctx.store
        if "\\Seen" not in m.flags:
            await store.store_flags(mbox.id, [m.uid], frozenset({"\\Seen"}), "add")
        msg: ParsedMessage = await self.ctx.run_blocking(lambda: load_message(store, m))
        remote = arg(request, b"remote") == "1"
        as_text = arg(request, b"view") == "text"
        parts = body(msg)
        s = summary(msg.root.headers)
        here = f"/message?mailbox={q(mbox.name)}&uid={m.uid}"
        ref = f"{q(mbox.name)}/{m.uid}"
        fields = "".join(f"<tr><th>{label}</th><td>{e(v)}</td></tr>" for label, v in (
            ("From", s.from_), ("To", s.to), ("Cc", s.cc),
            ("Date", s.date.isoformat(" ") if s.date else ""), ("Subject", s.subject))
            if v)
        flagged = "\\Flagged" in m.flags

        def op(value: str, label: str, extra: str = "") -> str:
            return post_form(request, "/message/flags",
                             hidden("mailbox", mbox.name) + hidden("uid", m.uid)
                             + hidden("op", value) + extra, label)

        boxes = await store.list_mailboxes(acct.id)
        actions = (
            f'<div class=bar><a href="/compose?reply={e(ref)}">Reply</a>'
            f'<a href="/compose?forward={e(ref)}">Forward</a>'
            + op("unseen", "Mark unread")
            + op("unflag" if flagged else "flag", "Unflag" if flagged else "Flag")
            + op("delete", "Delete")
            + op("move", "Move to", f"<select name=to aria-label='move to'>"
                 f"{move_options(boxes, mbox.name)}</select> ")
            + f'<a href="{e(mailbox_link(mbox.name))}">Back to {e(mbox.name)}</a></div>')
        content = ""
        if parts.html is not None and not as_text:
            clean = await self.ctx.run_blocking(lambda: sanitised_html(msg, parts, remote))
            if clean.blocked:
                content += (f"<p class=note id=remote-blocked>{clean.blocked} remote "
                            f'image(s) blocked. <a href="{e(here)}&amp;remote=1">Load remote '
                            "content</a></p>")
            src = f"/message/body?mailbox={q(mbox.name)}&uid={m.uid}" + (
                "&remote=1" if remote else "")
            content += (f'<iframe class=body title="message body" src="{e(src)}" '
                        'sandbox="allow-popups allow-popups-to-escape-sandbox" '
                        "referrerpolicy=no-referrer></iframe>")
            if parts.text is not None:
                content += f'<p><a href="{e(here)}&amp;view=text">Show plain text</a></p>'
        elif parts.text is not None or parts.html is not None:
            text = parts.text if parts.text is not None else ""
            content += f"<pre class=body>{_linkify(text)}</pre>"
            if parts.html is not None:
                content += f'<p><a href="{e(here)}">Show formatted</a></p>'
        if parts.attachments:
            items = "".join(
                f'<li><a href="/message/part?mailbox={e(q(mbox.name))}&amp;uid={m.uid}'
                f'&amp;part={".".join(map(str, a.part))}" download>{e(a.filename)}</a> '
                f"({e(a.content_type)}, {_size(a.size)})</li>" for a in parts.attachments)
            content += f"<h2>Attachments</h2><ul class=attachments>{items}</ul>"
        return layout(s.subject or "(no subject)",
                      f"{actions}<div class=card><table class=headers>{fields}</table></div>"
                      f"{content}", request)

    async def _frame(self, request: Any) -> bytes:
        """The sanitised HTML body, under the frame's own CSP."""
        remote = arg(request, b"remote") == "1"
        self.headers(request, frame_csp(remote))
        request.setHeader(b"x-frame-options", b"SAMEORIGIN")
        found = await find_message(self, request)
        if found is None:
            return b"no such message"
        _, _, m = found
        store = self.ctx.store

        def render() -> bytes:
            msg = load_message(store, m)
            parts = body(msg)
            if parts.html is None:
                return frame_document("").encode()
            return frame_document(sanitised_html(msg, parts, remote).html).encode()

        result: bytes = await self.ctx.run_blocking(render)
        return result

    async def _part(self, request: Any) -> bytes:
        """One attachment as a download (RFC 6266), never rendered here."""
        found = await find_message(self, request)
        part = parse_part(arg(request, b"part"))
        if found is None or part is None:
            self.headers(request)
            request.setResponseCode(404)
            return _gone(request)
        _, _, m = found
        store = self.ctx.store

        def extract() -> tuple[Attachment | None, bytes | None]:
            msg = load_message(store, m)
            a = next((a for a in body(msg).attachments if a.part == part), None)
            return a, part_bytes(msg, part) if a is not None else None

        a, data = await self.ctx.run_blocking(extract)
        if a is None or data is None:
            self.headers(request)
            request.setResponseCode(404)
            return _gone(request)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-disposition", content_disposition(a.filename))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return data


def content_disposition(filename: str) -> bytes:
    """``attachment`` with an ASCII ``filename`` and the exact name in ``filename*``
    (RFC 6266 §4.3, RFC 8187); no path, quotes or control characters get through."""
    name = re.sub(r"[\x00-\x1f\x7f/\\\"]", "_", filename).strip(". ") or "attachment"
    ascii_name = name.encode("ascii", "replace").decode("ascii").replace("?", "_")
    star = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{star}".encode("ascii")
