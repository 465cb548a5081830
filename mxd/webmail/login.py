"""Webmail login and logout.

The address and password go through the SASL server's password check, the one IMAP
LOGIN uses: the same directory, the same failure limiter (keyed per client IP and per
account, ``mxd.sasl.ratelimit``) and the hash computed off the reactor thread.  A
successful login starts a new session (never one named by the client: no session
fixation) in an HttpOnly, SameSite=Strict cookie, Secure over TLS (RFC 6265bis
§4.1.2.7)."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import Logger

from mxd.admin import auth
from mxd.admin.render import async_render
from mxd.sasl.api import ConnectionInfo, Success
from mxd.webmail.context import COOKIE
from mxd.webmail.layout import WebmailPage, arg, e, layout
from mxd.webui import client_ip

log = Logger(namespace="mxd.webmail")


def login_form(address: str = "", message: str = "") -> str:
    note = f"<p class=error>{e(message)}</p>" if message else ""
    return (f"<div class='login card'>{note}<form method=post action=/login>"
            "<label>Address <input name=address type=email autocomplete=username "
            f'required autofocus value="{e(address)}"></label>'
            "<label>Password <input name=password type=password "
            "autocomplete=current-password required></label>"
            "<p><button>Log in</button></p></form></div>")


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class Login(WebmailPage):

    def render_GET(self, request: Any) -> bytes:
        self.headers(request)
        return layout("Log in", login_form())

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        self.headers(request)
        ip = client_ip(request)
        address = arg(request, b"address").strip()
        password = arg(request, b"password")
        loopback = _loopback(ip)
        if not (request.isSecure() or loopback):  # the config allows plain HTTP on loopback only
            request.setResponseCode(403)
            return layout("Log in", login_form(address, "Log in over HTTPS."))
        if not address or not password:
            request.setResponseCode(400)
            return layout("Log in", login_form(address, "Give your address and password."))
        # Loopback without TLS counts as protected: the bytes never leave the host.
        conn = ConnectionInfo(remote_ip=ip, tls=True, loopback=loopback, service="webmail")
        outcome = await self.ctx.sasl.check_password(address, password, conn)
        if not isinstance(outcome, Success):
            if getattr(outcome, "rate_limited", False):
                request.setResponseCode(429)  # RFC 6585 §4
                return layout("Log in", login_form(
                    address, "Too many failed logins; try again later."))
            if getattr(outcome, "temporary", False):
                request.setResponseCode(503)
                return layout("Log in", login_form(
                    address, "The account could not be looked up; try again later."))
            request.setResponseCode(403)
            return layout("Log in", login_form(address, "Wrong address or password."))
        session = self.ctx.sessions.create(outcome.authcid)
        request.setHeader(b"set-cookie", auth.cookie_header(
            session, request.isSecure(), self.ctx.sessions.lifetime, COOKIE))
        log.info("webmail login of {account} from {ip}", account=outcome.authcid, ip=ip)
        request.redirect(b"/")
        return b""


class Logout(WebmailPage):

    def render_POST(self, request: Any) -> bytes:
        self.ctx.sessions.end(request.webmail.sid)
        request.setHeader(b"set-cookie", auth.cookie_header(None, request.isSecure(), 0, COOKIE))
        request.redirect(b"/login")
        return b""

