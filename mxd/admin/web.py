"""Admin HTTP pages, a small JSON API and the Prometheus /metrics endpoint.

Every request must name this server in ``Host`` (DNS rebinding, see mxd.admin.auth) and,
apart from the login page, be authenticated: by an admin session (a cookie set at
``/login``) or by the local token of the CLI (``Authorization: Bearer``, the file
``<data_dir>/admin.token``).  A POST on a session must carry the session's CSRF token
and, when the browser sends ``Origin``, come from this origin.  Pages send a strict
Content-Security-Policy and never reflect input unescaped.

Routes:
  GET  /login, POST /login   the password form; POST /logout ends the session
  GET  /                     status page (listeners, queue counts, accounts)
  GET  /queue                queued messages with hold/release/kick/drop buttons
  GET  /api/queue            JSON list (?domain=, ?sender=)
  GET  /api/queue/ID         JSON message, recipients and attempts
  POST /api/queue/ID/OP      OP in hold, release, kick, drop
  POST /api/queue/ID/requiretls   form or query field setting=yes|no|default (RFC 8689)
  POST /api/queue/ID/transport    form or query field name=TRANSPORT|default: per-message
                                  transport override (wins over routes; default clears it)
  POST /api/queue/wake       look for due work now (the CLI calls this after changing the queue)
  GET  /api/tls/domains      last TLS result per recipient domain (?domain=, ?account=)
  GET  /api/tls/requiretls-ready?domain=D&domain=E   REQUIRETLS usable for every domain?
  GET  /api/dmarc/reports    DMARC aggregate reports received (JSON)
  GET  /api/tlsrpt/reports   TLS reports received (JSON; /api/tlsrpt/reports/ID: one)
  GET  /metrics              Prometheus text (when [metrics] is enabled)
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import resource, server

import mxd
from mxd.admin import auth
from mxd.metrics import PrometheusMetrics
from mxd.queue.queue import QueueError
from mxd.queue.views import domain_tls_dict, message_dict

log = Logger(namespace="mxd.admin")

QUEUE_OPS = ("hold", "release", "kick", "drop")
CSP = b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


class AdminContext:
    """What the pages may read and change, and how requests authenticate; built by the
    composition layer."""

    def __init__(self, status: Callable[[], dict[str, Any]], *, clock: IReactorTime,
                 password_file: Path, token: str | None, hosts: frozenset[str] = frozenset(),
                 loopback: bool = True, limiter: Any = None,
                 queue: Any = None, store: Any = None,
                 metrics: PrometheusMetrics | None = None, dmarc_reports: Any = None,
                 session_lifetime: float = 8 * 3600.0, session_idle: float = 1800.0,
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
                 tls_reports: Any = None
                 ) -> None:
        self.status = status
        self.dmarc_reports = dmarc_reports  # a ReportStore, or None
        self.tls_reports = tls_reports  # a tlsrpt.incoming.TLSReportStore, or None
        self.queue = queue
        self.store = store
        self.metrics = metrics
        self.password_file = password_file
        self.token = token
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)
        self.loopback = loopback
        self.limiter = limiter  # an mxd.sasl.ratelimit.AuthLimiter, or None
        self.sessions = auth.Sessions(clock, lifetime=session_lifetime, idle=session_idle)
        self.run_blocking = run_blocking if run_blocking is not None else deferToThread

    def session(self, request: Any) -> auth.Session | None:
        return self.sessions.get(
            (request.getCookie(auth.COOKIE) or b"").decode("ascii", "replace"))

    def bearer(self, request: Any) -> bool:
        return auth.bearer_matches(request.getHeader(b"authorization"), self.token)


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


def _csrf(request: Any) -> str:
    s = getattr(request, "mxd_session", None)
    return html.escape(s.csrf) if s is not None else ""


def _page(title: str, body: str, request: Any = None) -> bytes:
    nav = ""
    if request is not None and getattr(request, "mxd_session", None) is not None:
        nav = ("<p><a href=/>status</a> · <a href=/queue>queue</a> · "
               "<form method=post action=/logout style=display:inline>"
               f"<input type=hidden name=csrf value={_csrf(request)}>"
               "<button>log out</button></form></p>")
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)} - mxd</title>"
            "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>"
            f"{nav}<h1>{html.escape(title)}</h1>{body}").encode()


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
        return _page(f"mxd {mxd.__version__}", f"<table>{table}</table>", request)


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
                f"<input type=hidden name=csrf value={_csrf(request)}>"
                f"<button>{op}</button></form>" for op in QUEUE_OPS)
            rows.append(f"<tr><td>{qid}</td><td>{html.escape(m.mail_from or '<>')}</td>"
                        f"<td>{rcpts}</td><td>{'yes' if m.requiretls else ''}</td>"
                        f"<td>{buttons}</td></tr>")
        table = ("<table><tr><th>id</th><th>from</th><th>recipients</th><th>REQUIRETLS</th>"
                 "<th></th></tr>" + "".join(rows) + "</table>")
        return _page("queue", f"<p>{len(msgs)} message(s)</p>{table}", request)


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
    """/api/tls/domains[?domain=D][&account=A] and /api/tls/requiretls-ready"""


    @_async
    async def render_GET(self, request: Any) -> bytes:
        parts = _parts(request)
        domains = _args(request, b"domain")
        if parts == ["domains"]:
            accounts = _args(request, b"account")
            rows = await self.ctx.queue.tls_domains(domains[0] if domains else None,
                                                    accounts[0] if accounts else None)
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
        reports = await self.ctx.run_blocking(self.ctx.dmarc_reports.reports)
        return _json(request, reports)


class _TLSRPTAPI(_Page):
    """/api/tlsrpt/reports and /api/tlsrpt/reports/ID"""

    @_async
    async def render_GET(self, request: Any) -> bytes:
        parts = _parts(request)
        if self.ctx.tls_reports is None or parts[:1] != ["reports"] or len(parts) > 2:
            return _json(request, {"error": "not found"}, 404)
        if len(parts) == 2:
            report = await self.ctx.run_blocking(lambda: self.ctx.tls_reports.get(parts[1]))
            if report is None:
                return _json(request, {"error": "not found"}, 404)
            return _json(request, report)
        return _json(request, await self.ctx.run_blocking(self.ctx.tls_reports.reports))


class _Error(resource.Resource):
    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code, self.message = code, message

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.message.encode() + b"\n"


class _Redirect(resource.Resource):
    isLeaf = True

    def __init__(self, to: bytes) -> None:
        super().__init__()
        self.to = to

    def render(self, request: Any) -> bytes:
        request.redirect(self.to)
        return b""


def _client_ip(request: Any) -> str:
    return str(getattr(request.getClientAddress(), "host", "") or "unknown")


def _same_origin(request: Any) -> bool:
    """A POST's ``Origin`` (RFC 6454 §7), when the browser sends one, must be this
    server as the request's ``Host`` names it."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    scheme = b"https://" if request.isSecure() else b"http://"
    return bool(origin == scheme + (request.getHeader(b"host") or b""))


_LOGIN_FORM = ("<form method=post action=/login><p><label>admin password "
               "<input type=password name=password autocomplete=current-password autofocus>"
               "</label> <button>log in</button></p></form>")


class _Login(resource.Resource):
    """GET shows the password form; POST checks the password (scrypt, off the reactor,
    behind the login limiter) and starts a session."""

    isLeaf = True

    def __init__(self, ctx: AdminContext) -> None:
        super().__init__()
        self.ctx = ctx

    def render_GET(self, request: Any) -> bytes:
        _html(request)
        return _page("log in", _LOGIN_FORM)

    @_async
    async def render_POST(self, request: Any) -> bytes:
        _html(request)
        ip = _client_ip(request)
        limiter = self.ctx.limiter
        if limiter is not None:
            verdict = limiter.check(ip, auth.ADMIN_ACCOUNT)
            if not verdict.allowed:
                request.setResponseCode(429)
                request.setHeader(b"retry-after", str(int(verdict.retry_after) + 1).encode())
                log.warn("admin login from {ip} refused: too many failures", ip=ip)
                return _page("log in", "<p>Too many failed logins; try again later.</p>")
        password = (request.args.get(b"password") or [b""])[0].decode("utf-8", "replace")
        try:
            ok = bool(password) and await self.ctx.run_blocking(
                lambda: auth.verify_password_file(self.ctx.password_file, password))
        except auth.AdminAuthError as e:
            log.error("admin password file {path}: {err}", path=str(self.ctx.password_file),
                      err=str(e))
            ok = False
        if not ok:
            if limiter is not None:
                limiter.failure(ip, auth.ADMIN_ACCOUNT)
            log.info("admin login from {ip} failed", ip=ip)
            request.setResponseCode(403)
            return _page("log in", "<p>Wrong password.</p>" + _LOGIN_FORM)
        if limiter is not None:
            limiter.success(ip, auth.ADMIN_ACCOUNT)
        session = self.ctx.sessions.create()
        request.setHeader(b"set-cookie", auth.cookie_header(
            session, request.isSecure(), self.ctx.sessions.lifetime))
        log.info("admin login from {ip}", ip=ip)
        request.redirect(b"/")
        return b""


class _Logout(_Page):

    def render_POST(self, request: Any) -> bytes:
        session = request.mxd_session
        self.ctx.sessions.end(session.sid)
        request.setHeader(b"set-cookie", auth.cookie_header(None, request.isSecure(), 0))
        request.redirect(b"/login")
        return b""


class _Root(resource.Resource):
    """Checks ``Host`` and authentication before any page or API call."""

    def __init__(self, ctx: AdminContext) -> None:
        super().__init__()
        self.ctx = ctx

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        ctx = self.ctx
        host = request.getHeader(b"host")
        if host is None:
            return _Error(400, "missing Host header")
        if not auth.host_allowed(host, ctx.hosts, ctx.loopback):
            # RFC 9110 §15.5.20: not a name this server answers for (DNS rebinding).
            log.warn("admin request for host {host} refused", host=host.decode("latin-1"))
            return _Error(421, "misdirected request: unknown Host")
        request.mxd_session = None
        if path == b"login" and not request.postpath:
            if request.method == b"POST" and not _same_origin(request):
                return _Error(403, "cross-origin request refused")
            return _Login(ctx)
        if ctx.bearer(request):
            return super().getChildWithDefault(path, request)
        session = ctx.session(request)
        if session is None:
            if request.method == b"GET" and path not in (b"api", b"metrics"):
                return _Redirect(b"/login")
            return _Error(401, "log in first (or use the local token)")
        if request.method not in (b"GET", b"HEAD"):
            token = (request.args.get(b"csrf") or [b""])[0].decode("ascii", "replace")
            if not _same_origin(request) or not auth.csrf_matches(session, token):
                log.warn("admin {method} without a valid CSRF token refused",
                         method=request.method.decode("latin-1"))
                return _Error(403, "missing or wrong CSRF token")
        request.mxd_session = session
        return super().getChildWithDefault(path, request)


def admin_site(ctx: AdminContext) -> server.Site:
    root = _Root(ctx)
    status_page: Any = _Status(ctx)
    root.putChild(b"", status_page)
    root.putChild(b"status", status_page)
    logout: Any = _Logout(ctx)
    root.putChild(b"logout", logout)
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
        tlsrpt_api: Any = _TLSRPTAPI(ctx)
        api.putChild(b"tlsrpt", tlsrpt_api)
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
