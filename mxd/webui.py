"""Request guards shared by the admin web and the webmail: Host checks against DNS
rebinding, same-origin checks of POSTs, CSRF tokens, small error and redirect resources.

Both interfaces refuse a request before any page sees it when

* ``Host`` does not name this server (RFC 9110 §7.2; 421 Misdirected Request, §15.5.20),
  so a DNS-rebinding page that reaches the listener under its own name gets nothing;
* a state-changing request carries an ``Origin`` (RFC 6454 §7) other than this server,
  or lacks the session's CSRF token (``mxd.admin.auth.csrf_matches``)."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import resource

from mxd.admin import auth

log = Logger(namespace="mxd.web")


class ErrorPage(resource.Resource):
    """A plain-text error with a status code."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code, self.message = code, message

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.message.encode() + b"\n"


class Redirect(resource.Resource):
    isLeaf = True

    def __init__(self, to: bytes) -> None:
        super().__init__()
        self.to = to

    def render(self, request: Any) -> bytes:
        request.redirect(self.to)
        return b""


def client_ip(request: Any) -> str:
    return str(getattr(request.getClientAddress(), "host", "") or "unknown")


def same_origin(request: Any) -> bool:
    """A POST's ``Origin`` (RFC 6454 §7), when the browser sends one, must be this
    server as the request's ``Host`` names it."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    scheme = b"https://" if request.isSecure() else b"http://"
    return bool(origin == scheme + (request.getHeader(b"host") or b""))


def refuse_host(request: Any, hosts: frozenset[str], loopback: bool,
                what: str) -> resource.Resource | None:
    """An error resource when ``Host`` is missing (400) or names another server (421),
    else None."""
    host = request.getHeader(b"host")
    if host is None:
        return ErrorPage(400, "missing Host header")
    if not auth.host_allowed(host, hosts, loopback):
        # RFC 9110 §15.5.20: not a name this server answers for (DNS rebinding).
        log.warn("{what} request for host {host} refused", what=what,
                 host=host.decode("latin-1"))
        return ErrorPage(421, "misdirected request: unknown Host")
    return None


def refuse_post(request: Any, session: auth.Session, what: str) -> resource.Resource | None:
    """An error resource (403) for a state-changing request from another origin or
    without the session's CSRF token (form field ``csrf``), else None."""
    if request.method in (b"GET", b"HEAD"):
        return None
    token = (request.args.get(b"csrf") or [b""])[0].decode("ascii", "replace")
    if not same_origin(request) or not auth.csrf_matches(session, token):
        log.warn("{what} {method} without a valid CSRF token refused", what=what,
                 method=request.method.decode("latin-1"))
        return ErrorPage(403, "missing or wrong CSRF token")
    return None
