"""Shared pieces of the admin pages: HTML page frame, headers, JSON bodies, request args."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger(namespace="mxd.admin")

# No scripts at all, styles only inline, forms only to this server, never framed.
CSP = (b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
       b"frame-ancestors 'none'; base-uri 'none'")


def async_render(render: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Adapt ``async def render(self, request) -> bytes`` to twisted.web."""

    def wrapper(self: Any, request: Any) -> Any:
        d: Deferred[bytes] = ensureDeferred(render(self, request))

        def done(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        def failed(f: Any) -> None:
            log.failure("admin request failed", f)
            if not request._disconnected:
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write(b"internal error\n")
                request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET

    return wrapper


def csrf_value(request: Any) -> str:
    s = getattr(request, "mxd_session", None)
    return html.escape(s.csrf) if s is not None else ""


def page(title: str, body: str, request: Any = None) -> bytes:
    nav = ""
    if request is not None and getattr(request, "mxd_session", None) is not None:
        links = getattr(request, "mxd_nav", None) or [("/", "status")]
        nav = ("<nav>" + " · ".join(f"<a href=\"{html.escape(href)}\">{html.escape(label)}</a>"
                                    for href, label in links) + " · "
               "<form method=post action=/logout style=display:inline>"
               f"<input type=hidden name=csrf value=\"{csrf_value(request)}\">"
               "<button>log out</button></form></nav>")
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)} - mxd</title>"
            "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>"
            f"{nav}<h1>{html.escape(title)}</h1>{body}").encode()


def html_headers(request: Any, csp: bytes = CSP) -> None:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", csp)
    request.setHeader(b"x-frame-options", b"DENY")


def json_body(request: Any, data: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(data, indent=1).encode() + b"\n"



class Page(resource.Resource):
    """A leaf page with the admin context (an mxd.admin.web.AdminContext)."""

    isLeaf = True

    def __init__(self, ctx: Any) -> None:
        super().__init__()
        self.ctx = ctx


def path_parts(request: Any) -> list[str]:
    return [p.decode("utf-8", "replace") for p in request.postpath if p]


def query_args(request: Any, name: bytes) -> list[str]:
    return [v.decode("utf-8", "replace") for v in request.args.get(name, [])]


