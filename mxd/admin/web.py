"""Admin HTTP pages, a small JSON API and the Prometheus /metrics endpoint.

The admin listener is loopback-only (the config refuses other addresses) and has no
login of its own, so it defends against the one attacker that can reach it: a web page in
a local browser making cross-site requests.  Every state-changing request is a POST that
must carry either the header ``X-Mxd-Admin: 1`` (which a cross-site form cannot set
without a CORS preflight this server never grants) or the page's CSRF token, an HMAC of
the server secret.  Pages send a strict Content-Security-Policy and never reflect input
unescaped.

Routes:
  GET  /                     status page (listeners, queue counts, accounts)
  GET  /queue                queued messages with hold/release/kick/drop buttons
  GET  /api/queue            JSON list (?domain=, ?sender=)
  GET  /api/queue/ID         JSON message, recipients and attempts
  POST /api/queue/ID/OP      OP in hold, release, kick, drop
  POST /api/queue/ID/requiretls   form or query field setting=yes|no|default (RFC 8689)
  POST /api/queue/ID/transport    form or query field name=TRANSPORT|default: per-message
                                  transport override (wins over routes; default clears it)
  POST /api/queue/wake       look for due work now (the CLI calls this after changing the queue)
  GET  /api/tls/domains      last TLS result per recipient domain (?domain=)
  GET  /api/tls/requiretls-ready?domain=D&domain=E   REQUIRETLS usable for every domain?
  GET  /api/dmarc/reports    DMARC aggregate reports received (JSON)
  GET  /metrics              Prometheus text (when [metrics] is enabled)
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import resource, server

import mxd
from mxd.metrics import PrometheusMetrics
from mxd.queue.queue import QueueError
from mxd.queue.views import domain_tls_dict, message_dict

log = Logger(namespace="mxd.admin")

QUEUE_OPS = ("hold", "release", "kick", "drop")
CSP = b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


class AdminContext:
    """What the pages may read and change; built by the composition layer."""

    def __init__(self, status: Callable[[], dict[str, Any]], secret: bytes,
                 queue: Any = None, store: Any = None,
                 metrics: PrometheusMetrics | None = None, dmarc_reports: Any = None) -> None:
        self.status = status
        self.dmarc_reports = dmarc_reports  # a ReportStore, or None
        self.queue = queue
        self.store = store
        self.metrics = metrics
        self.csrf_token = hmac.new(secret, b"mxd admin csrf", hashlib.sha256).hexdigest()

    def authorised_post(self, request: Any) -> bool:
        if request.getHeader(b"x-mxd-admin") == b"1":
            return True
        token = (request.args.get(b"csrf") or [b""])[0].decode("ascii", "replace")
        return hmac.compare_digest(token, self.csrf_token)


def _async(render: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
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


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)} - mxd</title>"
            "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>"
            f"<p><a href=/>status</a> · <a href=/queue>queue</a></p>"
            f"<h1>{html.escape(title)}</h1>{body}").encode()


def _html(request: Any) -> None:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-frame-options", b"DENY")


def _json(request: Any, data: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(data, indent=1).encode() + b"\n"


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: PrometheusMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        body, ctype = self._metrics.render()
        request.setHeader(b"content-type", ctype.encode())
        return body


class _Page(resource.Resource):
    """A leaf page with the admin context."""

    isLeaf = True

    def __init__(self, ctx: AdminContext) -> None:
        super().__init__()
        self.ctx = ctx


def _parts(request: Any) -> list[str]:
    return [p.decode("utf-8", "replace") for p in request.postpath if p]


def _args(request: Any, name: bytes) -> list[str]:
    return [v.decode("utf-8", "replace") for v in request.args.get(name, [])]


class _Status(_Page):

    @_async
    async def render_GET(self, request: Any) -> bytes:
        _html(request)
        rows = dict(self.ctx.status())
        if self.ctx.queue is not None:
            counts = await self.ctx.queue.counts()
            rows.update({f"queue {k}": v for k, v in counts.items()})
        if self.ctx.store is not None:
            rows["accounts"] = len(await self.ctx.store.list_accounts())
        table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in rows.items())
        return _page(f"mxd {mxd.__version__}", f"<table>{table}</table>")


class _QueuePage(_Page):

    @_async
    async def render_GET(self, request: Any) -> bytes:
        _html(request)
        msgs = await self.ctx.queue.list()
        rows = []
        for m in msgs:
            rcpts = "<br>".join(
                html.escape(f"{r.address} {r.state}{' held' if r.hold else ''} "
                            f"attempts={r.attempts}") for r in m.recipients)
            qid = html.escape(m.queue_id)
            buttons = "".join(
                f"<form method=post action=/api/queue/{qid}/{op} style=display:inline>"
                f"<input type=hidden name=csrf value={self.ctx.csrf_token}>"
                f"<button>{op}</button></form>" for op in QUEUE_OPS)
            rows.append(f"<tr><td>{qid}</td><td>{html.escape(m.mail_from or '<>')}</td>"
                        f"<td>{rcpts}</td><td>{'yes' if m.requiretls else ''}</td>"
                        f"<td>{buttons}</td></tr>")
        table = ("<table><tr><th>id</th><th>from</th><th>recipients</th><th>REQUIRETLS</th>"
                 "<th></th></tr>" + "".join(rows) + "</table>")
        return _page("queue", f"<p>{len(msgs)} message(s)</p>{table}")


class _QueueAPI(_Page):
    """/api/queue[/ID[/OP]]"""


    @_async
    async def render_GET(self, request: Any) -> bytes:
        parts = _parts(request)
        if not parts:
            domain, sender = _args(request, b"domain")[:1], _args(request, b"sender")[:1]
            msgs = await self.ctx.queue.list(domain=domain[0] if domain else None,
                                             sender=sender[0] if sender else None)
            return _json(request, [message_dict(m) for m in msgs])
        if len(parts) == 1:
            found = await self.ctx.queue.show(parts[0])
            if found is None:
                return _json(request, {"error": f"no message {parts[0]}"}, 404)
            m, attempts = found
            return _json(request, message_dict(m, attempts))
        return _json(request, {"error": "not found"}, 404)

    @_async
    async def render_POST(self, request: Any) -> bytes:
        if not self.ctx.authorised_post(request):
            return _json(request, {"error": "missing X-Mxd-Admin header or CSRF token"}, 403)
        parts = _parts(request)
        if parts == ["wake"]:
            self.ctx.queue.wake()
            return _json(request, {"woken": True})
        if len(parts) == 2 and parts[1] == "requiretls":
            return await self._requiretls(request, parts[0])
        if len(parts) == 2 and parts[1] == "transport":
            return await self._transport(request, parts[0])
        if len(parts) != 2 or parts[1] not in QUEUE_OPS:
            return _json(request, {"error": f"use POST /api/queue/ID/({'|'.join(QUEUE_OPS)})"},
                         404)
        queue_id, op = parts
        n = await getattr(self.ctx.queue, op)(queue_id=queue_id)
        log.info("admin {op} {queue_id}: {n} recipient(s)", op=op, queue_id=queue_id, n=n)
        if request.args.get(b"csrf"):  # an HTML form: back to the page
            request.redirect(b"/queue")
            return b""
        return _json(request, {"op": op, "queue_id": queue_id, "recipients": n},
                     200 if n else 404)

    async def _requiretls(self, request: Any, queue_id: str) -> bytes:
        setting = (_args(request, b"setting") or [""])[0]
        try:
            found = await self.ctx.queue.set_requiretls(queue_id, setting)
        except QueueError as e:
            return _json(request, {"error": str(e)}, 400)
        if not found:
            return _json(request, {"error": f"no message {queue_id}"}, 404)
        log.info("admin requiretls {queue_id} {setting}", queue_id=queue_id, setting=setting)
        return _json(request, {"queue_id": queue_id, "requiretls": setting})


    async def _transport(self, request: Any, queue_id: str) -> bytes:
        name = (_args(request, b"name") or [""])[0]
        try:
            n = await self.ctx.queue.set_transport(queue_id, name)
        except QueueError as e:
            return _json(request, {"error": str(e)}, 400)
        if not n:
            return _json(request, {"error": f"no message {queue_id}"}, 404)
        log.info("admin transport {queue_id} {name}", queue_id=queue_id, name=name)
        return _json(request, {"queue_id": queue_id, "transport": name, "recipients": n})


class _TLSAPI(_Page):
    """/api/tls/domains and /api/tls/requiretls-ready"""


    @_async
    async def render_GET(self, request: Any) -> bytes:
        parts = _parts(request)
        domains = _args(request, b"domain")
        if parts == ["domains"]:
            rows = await self.ctx.queue.tls_domains(domains[0] if domains else None)
            return _json(request, [domain_tls_dict(d) for d in rows])
        if parts == ["requiretls-ready"]:
            if not domains:
                return _json(request, {"error": "give one or more ?domain="}, 400)
            ready = await self.ctx.queue.requiretls_ready(domains)
            return _json(request, {"domains": ready, "all": all(ready.values())})
        return _json(request, {"error": "not found"}, 404)


class _DMARCAPI(_Page):
    """/api/dmarc/reports"""

    @_async
    async def render_GET(self, request: Any) -> bytes:
        if _parts(request) != ["reports"] or self.ctx.dmarc_reports is None:
            return _json(request, {"error": "not found"}, 404)
        from twisted.internet.threads import deferToThread

        reports = await deferToThread(self.ctx.dmarc_reports.reports)
        return _json(request, reports)


def admin_site(ctx: AdminContext) -> server.Site:
    root = resource.Resource()
    status_page: Any = _Status(ctx)
    root.putChild(b"", status_page)
    root.putChild(b"status", status_page)
    if ctx.queue is not None:
        queue_page: Any = _QueuePage(ctx)
        root.putChild(b"queue", queue_page)
        api: Any = resource.Resource()
        queue_api: Any = _QueueAPI(ctx)
        api.putChild(b"queue", queue_api)
        tls_api: Any = _TLSAPI(ctx)
        api.putChild(b"tls", tls_api)
        dmarc_api: Any = _DMARCAPI(ctx)
        api.putChild(b"dmarc", dmarc_api)
        root.putChild(b"api", api)
    if ctx.metrics is not None:
        metrics_page: Any = _Metrics(ctx.metrics)
        root.putChild(b"metrics", metrics_page)
    # twisted.web's idle timeout restarts on every byte; the listener is wrapped in
    # bounded_admin_factory for a hard per-connection deadline and a connection cap.
    site = server.Site(root, timeout=30)
    site.displayTracebacks = False
    site.noisy = False
    return site


class _Deadline(policies.ProtocolWrapper):
    """Closes the connection ``lifetime`` seconds after it opened, busy or not."""

    def connectionMade(self) -> None:
        f: Any = self.factory
        self._deadline = f.clock.callLater(f.lifetime, self._expired)
        super().connectionMade()

    def _expired(self) -> None:
        t: Any = self.transport
        t.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)


class BoundedFactory(policies.WrappingFactory):
    """At most ``max_connections`` at once (others are closed at once), each closed
    ``lifetime`` seconds after it opened: the admin listener cannot be held by slow
    or many clients (a page or API call takes milliseconds)."""

    protocol = _Deadline

    def __init__(self, wrapped: Any, clock: IReactorTime, *, max_connections: int = 32,
                 lifetime: float = 120.0) -> None:
        super().__init__(wrapped)
        self.clock: Any = clock
        self.max_connections = max_connections
        self.lifetime = lifetime

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.max_connections:
            log.warn("admin connection from {peer} refused: {count} open",
                     peer=getattr(addr, "host", "?"), count=len(self.protocols))
            return None
        return super().buildProtocol(addr)


def bounded_admin_factory(site: server.Site, clock: IReactorTime) -> BoundedFactory:
    """The admin site behind a connection cap and a hard per-connection deadline."""
    return BoundedFactory(site, clock)
