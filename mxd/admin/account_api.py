"""The account's own JSON API on the admin listener (what a webmail calls for its user).

  GET /api/account/tls/domains[?domain=D]   the last TLS result per recipient domain as
                                            the messages of THIS account found it

Authentication is the account's own credentials in HTTP Basic (RFC 7617), checked by
the same SASL password check as IMAP LOGIN / AUTHENTICATE PLAIN: the same directory, the
same failure limiter (per IP and per account) and the password hash off the reactor
thread (the SASL server's hash pool).  Never the admin session or token: an admin uses
``/api/tls/domains?account=``.  Credentials are only accepted over TLS or from a loopback
peer (the admin listener is plain HTTP only when it is bound to loopback); anything else
gets 403 without a check.  A refused login gets 401 with a ``WWW-Authenticate`` challenge
(RFC 7235 §3.1) and a rate-limited one 429 (RFC 6585 §4)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Any

from mxd.admin.render import Page, async_render, json_body, path_parts, query_args
from mxd.queue.views import domain_tls_dict
from mxd.sasl.api import ConnectionInfo, Success

CHALLENGE = b'Basic realm="mxd account", charset="UTF-8"'


def basic_credentials(header: bytes | None) -> tuple[str, str] | None:
    """``Authorization: Basic base64(user:password)`` (RFC 7617 §2: UTF-8 with
    charset="UTF-8"; the user-id cannot contain a colon) -> (user, password), or None."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


def _peer_ip(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", ""))


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class AccountAPI(Page):
    """/api/account/... (mounted by the admin root before its own authentication)."""

    def _unauthorized(self, request: Any, error: str) -> bytes:
        request.setHeader(b"www-authenticate", CHALLENGE)
        return json_body(request, {"error": error}, 401)

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        sasl, queue = self.ctx.sasl, self.ctx.queue
        if sasl is None or queue is None:
            return json_body(request, {"error": "not found"}, 404)
        ip = _peer_ip(request)
        secure, loopback = bool(request.isSecure()), _is_loopback(ip)
        if not (secure or loopback):
            return json_body(request, {"error": "credentials only over TLS or loopback"}, 403)
        creds = basic_credentials(request.getHeader(b"authorization"))
        if creds is None:
            return self._unauthorized(request, "account credentials required (HTTP Basic)")
        # Loopback without TLS counts as protected here: the bytes never leave the host.
        conn = ConnectionInfo(remote_ip=ip, tls=True, loopback=loopback, service="admin")
        outcome = await sasl.check_password(creds[0], creds[1], conn)
        if not isinstance(outcome, Success):
            if getattr(outcome, "rate_limited", False):
                return json_body(request, {"error": "too many failed logins, retry later"},
                                 429)
            if getattr(outcome, "temporary", False):
                return json_body(request, {"error": "account lookup failed, retry later"},
                                 503)
            return self._unauthorized(request, "authentication failed")
        parts = path_parts(request)
        if parts != ["account", "tls", "domains"]:
            return json_body(request, {"error": "not found"}, 404)
        domains = query_args(request, b"domain")
        rows = await queue.tls_domains(domains[0] if domains else None, outcome.authcid)
        return json_body(request, [domain_tls_dict(d) for d in rows])
