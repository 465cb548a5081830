"""The webmail's resource tree: the guard in front of every page and the page table.

Routes (the first path segment; see ``PAGES``):
  GET  /login, POST /login     the login form; POST /logout ends the session
  GET  /                       mailboxes with message and unseen counts
  GET  /messages               a mailbox's messages, paged, with search (messages.py)
  GET  /message[/body|/part]   one message, its sanitised HTML frame, an attachment
  POST /message/flags          seen/unseen, flag/unflag, delete, move (actions.py)
  GET  /settings[/tls], POST /settings/password   account settings (settings.py)
  GET  /compose                the compose pages (``mxd.webmail.compose_page``; the message
                               is built by ``mxd.webmail.compose``, sent by ``.submit``)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import resource, server

from mxd.admin.web import BoundedFactory
from mxd.webmail.compose_page import ComposePage
from mxd.webmail.context import WebmailContext
from mxd.webmail.login import Login, Logout
from mxd.webmail.mailboxes import Mailboxes
from mxd.webmail.message import MessageView
from mxd.webmail.messages import MessageList
from mxd.webmail.settings import Settings
from mxd.webmail.upload import limited_request
from mxd.webui import ErrorPage, Redirect, refuse_host, refuse_post, same_origin

log = Logger(namespace="mxd.webmail")


# The pages behind the login: first path segment -> factory of the page.  Add a page
# with one line here (mxd/webmail/__init__.py says how to write one).
PAGES: dict[bytes, Callable[[WebmailContext], resource.Resource]] = {
    b"": Mailboxes,
    b"logout": Logout,
    b"messages": MessageList,
    b"message": MessageView,
    b"settings": Settings,
    b"compose": ComposePage,
}


class Root(resource.Resource):
    """Checks ``Host``, the session and (for POSTs) the CSRF token before any page."""

    def __init__(self, ctx: WebmailContext,
                 pages: dict[bytes, Callable[[WebmailContext], resource.Resource]]) -> None:
        super().__init__()
        self.ctx = ctx
        self.login = Login(ctx)
        for path, factory in pages.items():
            self.putChild(path, factory(ctx))

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        ctx = self.ctx
        refused = refuse_host(request, ctx.hosts, ctx.loopback, "webmail")
        if refused is not None:
            return refused
        request.webmail = None
        if path == b"login" and not request.postpath:
            if request.method == b"POST" and not same_origin(request):
                return ErrorPage(403, "cross-origin request refused")
            return self.login
        session = ctx.session(request)
        if session is None:
            if request.method in (b"GET", b"HEAD"):
                return Redirect(b"/login")
            return ErrorPage(401, "log in first")
        refused = refuse_post(request, session, "webmail")
        if refused is not None:
            return refused
        request.webmail = session
        return super().getChildWithDefault(path, request)


def webmail_site(ctx: WebmailContext,
                 pages: dict[bytes, Callable[[WebmailContext], resource.Resource]] | None = None,
                 ) -> server.Site:
    site = server.Site(Root(ctx, PAGES if pages is None else pages), timeout=30)
    # Uploads (compose) are refused above the limit before they are read (413).
    site.requestFactory = limited_request(ctx.max_request_body)
    site.displayTracebacks = False
    site.noisy = False
    return site


def bounded_webmail_factory(site: server.Site, clock: IReactorTime) -> BoundedFactory:
    """The site behind a connection cap and a hard per-connection deadline (as the
    admin's: a page takes milliseconds; a download of a large attachment has minutes)."""
    return BoundedFactory(site, clock, max_connections=256, lifetime=600.0)
