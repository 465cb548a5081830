"""The webmail's base page: head, styles, navigation and logout form; response headers;
the base class of its pages.  Every value put into a page goes through ``e``."""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web import resource

from mxd.admin import auth
from mxd.admin.auth import Session
from mxd.admin.render import async_render, html_headers
from mxd.store.interfaces import Account
from mxd.webmail.context import COOKIE

# No script at all; styles inline; images from here only; frames (the sanitised message
# body) from here only; forms post here only; never framed elsewhere.
CSP = (b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
       b"frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

# The navigation (href, label).  /compose is served by the compose pages.
NAV: tuple[tuple[str, str], ...] = (("/", "Mailboxes"), ("/compose", "Compose"),
                                    ("/settings", "Settings"))

STYLE = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#f4f6f8}
header{display:flex;align-items:center;gap:1.2em;background:#1f3a5f;color:#fff;
 padding:.6em 1.2em}
header a{color:#fff;text-decoration:none;font-weight:500}
header a:hover{text-decoration:underline}
header .brand{font-weight:700;letter-spacing:.04em;margin-right:.6em}
header .who{margin-left:auto;opacity:.85}
header form{margin:0}
main{max-width:1100px;margin:1.2em auto;padding:0 1.2em}
h1{font-size:1.35em;margin:.2em 0 .8em}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{border-bottom:1px solid #e1e5ea;padding:.45em .7em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
tr.unseen td{font-weight:700}
td.num{text-align:right;width:7em}
a{color:#1f5fa8}
button,input[type=submit]{font:inherit;padding:.25em .8em;border:1px solid #9aa7b4;
 border-radius:4px;background:#fff;cursor:pointer}
input,select{font:inherit;padding:.25em .4em}
.bar{display:flex;flex-wrap:wrap;gap:.5em;align-items:center;margin:.6em 0}
.bar form{display:inline;margin:0}
.note{background:#fff7d6;border:1px solid #e8d48a;padding:.5em .8em;border-radius:4px}
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:.5em .8em;border-radius:4px}
.card{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:1em 1.2em}
.headers th{width:7em;background:none;border:0;padding:.15em .6em .15em 0}
.headers td{border:0;padding:.15em 0}
pre.body{white-space:pre-wrap;word-wrap:break-word;font:13px/1.5 ui-monospace,monospace;
 background:#fff;border:1px solid #dde2e8;padding:1em;border-radius:6px}
iframe.body{width:100%;height:32em;border:1px solid #dde2e8;border-radius:6px;
 background:#fff}
.pager{margin:.8em 0}
.login{max-width:24em;margin:5em auto}
.login label{display:block;margin:.6em 0}
.login input{width:100%}
.flag{color:#c77700}
"""


def e(v: Any) -> str:
    """``v`` as HTML text (quotes too, so it is safe in attribute values)."""
    return html.escape("" if v is None else str(v), quote=True)


def q(v: str) -> str:
    """``v`` as a URL query value."""
    return urllib.parse.quote(v, safe="")


def csrf_field(request: Any) -> str:
    s: Session | None = getattr(request, "webmail", None)
    return f'<input type=hidden name=csrf value="{e(s.csrf)}">' if s is not None else ""


def post_form(request: Any, action: str, inner: str, label: str) -> str:
    """A POST form (no JavaScript) with the session's CSRF token."""
    return (f'<form method=post action="{e(action)}">{csrf_field(request)}{inner}'
            f"<button>{e(label)}</button></form>")


def hidden(name: str, value: Any) -> str:
    return f'<input type=hidden name="{e(name)}" value="{e(value)}">'


def layout(title: str, body: str, request: Any = None) -> bytes:
    """The base page around ``body`` (HTML, already escaped)."""
    s: Session | None = getattr(request, "webmail", None) if request is not None else None
    bar = '<header><span class=brand>mxd webmail</span>'
    if s is not None:
        bar += "".join(f'<a href="{e(href)}">{e(label)}</a>' for href, label in NAV)
        bar += (f'<span class=who>{e(s.account)}</span>'
                + post_form(request, "/logout", "", "Log out"))
    bar += "</header>"
    return (f"<!doctype html><html lang=en><meta charset=utf-8>"
            f'<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{e(title)} - mxd webmail</title><style>{STYLE}</style>"
            f"{bar}<main><h1>{e(title)}</h1>{body}</main></html>").encode()


def headers(request: Any, csp: bytes = CSP) -> None:
    """Headers of every webmail HTML page: the CSP, no framing, no sniffing, no
    referrer to other sites (message URLs name mailboxes; ``same-origin`` rather than
    ``no-referrer``, under which Chromium sends ``Origin: null`` with our own form
    POSTs), never cached (private mail)."""
    html_headers(request, csp)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"same-origin")
    request.setHeader(b"cache-control", b"no-store")


class WebmailPage(resource.Resource):
    """A leaf page with the webmail context (``mxd.webmail.context.WebmailContext``)."""

    isLeaf = True

    def __init__(self, ctx: Any) -> None:
        super().__init__()
        self.ctx = ctx

    def headers(self, request: Any, csp: bytes = CSP) -> None:
        headers(request, csp)

    async def account(self, request: Any) -> Account:
        """The logged-in account (the store's record)."""
        acct: Account | None = await self.ctx.store.get_account(request.webmail.account)
        if acct is None:  # deleted while logged in
            raise AccountGone(request.webmail.account)
        return acct


class AccountGone(Exception):
    """The session's account no longer exists."""


def page_render(render: Callable[[Any, Any], Awaitable[bytes]]) -> Callable[[Any, Any], Any]:
    """``async def render_X(self, request) -> bytes`` of a webmail page, for twisted.web
    (``mxd.admin.render.async_render``); when the account was deleted meanwhile, the
    session ends and the browser goes to the login."""

    async def guarded(self: Any, request: Any) -> bytes:
        try:
            return await render(self, request)
        except AccountGone:
            self.ctx.sessions.end(request.webmail.sid)
            request.setHeader(b"set-cookie", auth.cookie_header(
                None, request.isSecure(), 0, COOKIE))
            request.setResponseCode(303)
            request.setHeader(b"location", b"/login")
            return b""

    return async_render(guarded)


def arg(request: Any, name: bytes, default: str = "") -> str:
    """The first value of a query or form field, as text."""
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else default
