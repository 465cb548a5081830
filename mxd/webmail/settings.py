"""Account settings: the password, and the TLS results of the account's own deliveries.

  GET  /settings            the password form and the account's addresses and usage
  POST /settings/password   old, new, again: the old password is checked by the SASL
                            password check (with its limiter, so a stolen session cannot
                            guess it); the new one is derived by the directory exactly as
                            ``mxd account passwd`` does (SCRAM-SHA-1/-256 keys, RFC 5802
                            §3, and the scrypt hash); the account's other sessions end
  GET  /settings/tls        per recipient domain, the last TLS result seen by mail of
                            this account (what ``GET /api/account/tls/domains`` serves)
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import Logger

from mxd.admin.manage import tls_table
from mxd.errors import MxdError
from mxd.sasl.api import ConnectionInfo, Success
from mxd.webmail.layout import WebmailPage, arg, e, layout, page_render, post_form
from mxd.webui import client_ip

log = Logger(namespace="mxd.webmail")

MIN_PASSWORD = 8


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Settings(WebmailPage):

    @page_render
    async def render_GET(self, request: Any) -> bytes:
        self.headers(request)
        sub = [p for p in request.postpath if p]
        if sub == [b"tls"]:
            return await self._tls(request)
        if sub:
            request.setResponseCode(404)
            return layout("Not found", "<p class=error>No such page.</p>", request)
        return await self._page(request)

    async def _page(self, request: Any, message: str = "", error: bool = False) -> bytes:
        acct = await self.account(request)
        used, limit = await self.ctx.store.get_usage(acct.id)
        note = f"<p class={'error' if error else 'note'} id=result>{e(message)}</p>" \
            if message else ""
        form = post_form(request, "/settings/password",
                         "<p><label>Current password <input type=password name=old "
                         "autocomplete=current-password required></label></p>"
                         "<p><label>New password <input type=password name=new "
                         f"autocomplete=new-password required minlength={MIN_PASSWORD}>"
                         "</label></p><p><label>New password again <input type=password "
                         "name=again autocomplete=new-password required></label></p>",
                         "Change password")
        body = (f"{note}<div class=card><table class=headers>"
                f"<tr><th>Account</th><td>{e(acct.name)}</td></tr>"
                f"<tr><th>Addresses</th><td>{e(', '.join(acct.addresses) or '-')}</td></tr>"
                f"<tr><th>Storage</th><td>{_size(used)}"
                f"{' of ' + _size(limit) if limit else ''}</td></tr></table></div>"
                f"<h2>Password</h2>{form}"
                '<h2>Delivery security</h2><p><a href="/settings/tls">TLS results per '
                "recipient domain</a> of the mail you sent.</p>")
        return layout("Settings", body, request)

    async def _tls(self, request: Any) -> bytes:
        queue = self.ctx.queue
        if queue is None:
            return layout("TLS per recipient domain", "<p>No outbound queue here.</p>",
                          request)
        rows = await queue.tls_domains(None, request.webmail.account)
        body = ("<p>What the last delivery of your mail to each domain found: STARTTLS, "
                "TLS verified by DANE or MTA-STS, REQUIRETLS (RFC 8689) support.</p>"
                + (tls_table(rows) if rows else "<p>No deliveries yet.</p>"))
        return layout("TLS per recipient domain", body, request)

    @page_render
    async def render_POST(self, request: Any) -> bytes:
        self.headers(request)
        if [p for p in request.postpath if p] != [b"password"]:
            request.setResponseCode(404)
            return layout("Not found", "<p class=error>No such page.</p>", request)
        account = request.webmail.account
        old, new, again = arg(request, b"old"), arg(request, b"new"), arg(request, b"again")
        if new != again:
            request.setResponseCode(400)
            return await self._page(request, "The new passwords differ.", True)
        if len(new) < MIN_PASSWORD:
            request.setResponseCode(400)
            return await self._page(
                request, f"The new password needs at least {MIN_PASSWORD} characters.", True)
        ip = client_ip(request)
        try:
            loopback = ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        conn = ConnectionInfo(remote_ip=ip, tls=True, loopback=loopback, service="webmail")
        outcome = await self.ctx.sasl.check_password(account, old, conn)
        if not isinstance(outcome, Success):
            request.setResponseCode(429 if getattr(outcome, "rate_limited", False) else 403)
            return await self._page(request, "The current password is not right.", True)
        try:
            await self.ctx.directory.set_password(account, new)
        except MxdError as err:
            request.setResponseCode(409)
            return await self._page(request, f"Not changed: {err}", True)
        ended = self.ctx.sessions.end_account(account, keep=request.webmail.sid)
        log.info("webmail password change for {account} ({ended} other session(s) ended)",
                 account=account, ended=ended)
        return await self._page(request, "Password changed.")
