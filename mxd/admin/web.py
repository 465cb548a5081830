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
  GET  /queue                queued messages (?domain=, ?sender=); /queue/ID one message with
                             its attempts and forms for every action below
  GET  /accounts             accounts; POST /accounts/(add|delete|password|address-add|
                             address-remove|quota)
  GET  /domains              each domain's DNS records (mxd dns records) next to the last
                             DNS check's results; POST /domains/check runs it (mxd dns check)
  GET  /tls                  TLS support per recipient domain
  GET  /reports              DMARC and TLS reports received and sent
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
  GET  /api/dmarc/sent       DMARC aggregate reports this server sent (JSON)
  GET  /api/tlsrpt/reports   TLS reports received (JSON; /api/tlsrpt/reports/ID: one)
  GET  /api/tlsrpt/sent      TLS reports this server sent (JSON)
  POST /api/tlsrpt/send?day=YYYY-MM-DD   build and send that UTC day's TLS reports now
  GET  /metrics              Prometheus text (when [metrics] is enabled)
  GET  /api/account/tls/domains   the ACCOUNT's own TLS results, authenticated by the
                             account's credentials (HTTP Basic), not as admin: see
                             mxd.admin.account_api
"""

from __future__ import annotations

import datetime
import html
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import resource, server

from mxd.admin import auth
from mxd.admin.account_api import AccountAPI
from mxd.admin.manage import Accounts, Domains, Reports, TLSSupport
from mxd.admin.pages import QUEUE_OPS, QueuePage, Status
from mxd.admin.render import (
    Page,
    async_render,
    html_headers,
    json_body,
    page,
    path_parts,
    query_args,
)
from mxd.metrics import PrometheusMetrics
from mxd.queue.queue import QueueError
from mxd.queue.views import domain_tls_dict, message_dict
from mxd.webui import ErrorPage as _Error
from mxd.webui import Redirect as _Redirect
from mxd.webui import client_ip as _client_ip
from mxd.webui import refuse_host, refuse_post
from mxd.webui import same_origin as _same_origin

log = Logger(namespace="mxd.admin")



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
                 tls_reports: Any = None, directory: Any = None,
                 domains: tuple[str, ...] = (),
                 domain_records: Callable[[str], list[Any]] | None = None,
                 tls_reporter: Any = None, recent: Any = None, sasl: Any = None,
                 domain_check: Callable[[str], Deferred[list[Any]]] | None = None,
                 dmarc_sent: Any = None, tls_sent: Any = None) -> None:
        self.status = status
        self.clock: Any = clock
        # domain -> the results of ``mxd dns check`` (mxd.dnscheck.CheckResult), or None
        self.domain_check = domain_check
        self.dns_checks: dict[str, tuple[float, tuple[Any, ...]]] = {}  # the last per domain
        self.dmarc_sent = dmarc_sent  # a msgauth.reportstore.SentReportStore, or None
        self.tls_sent = tls_sent  # a tlsrpt.send.SentTLSReports, or None
        self.sasl = sasl  # the SASL server (account password checks), or None
        self.tls_reporter = tls_reporter  # a tlsrpt.send.TLSReporter when [tlsrpt] send
        self.dmarc_reports = dmarc_reports  # a ReportStore, or None
        self.tls_reports = tls_reports  # a tlsrpt.incoming.TLSReportStore, or None
        self.queue = queue
        self.store = store
        self.directory = directory  # the account directory (local or LDAP), or None
        self.domains = domains
        self.domain_records = domain_records  # domain -> [mxd.dnsrecords.DNSRecord]; blocking
        self.recent = recent  # an mxd.admin.recent.RecentProblems, or None
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


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: PrometheusMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        body, ctype = self._metrics.render()
        request.setHeader(b"content-type", ctype.encode())
        return body


class _QueueAPI(Page):
    """/api/queue[/ID[/OP]]"""


    @async_render
    async def render_GET(self, request: Any) -> bytes:
        parts = path_parts(request)
        if not parts:
            domain, sender = query_args(request, b"domain")[:1], query_args(request, b"sender")[:1]
            msgs = await self.ctx.queue.list(domain=domain[0] if domain else None,
                                             sender=sender[0] if sender else None)
            return json_body(request, [message_dict(m) for m in msgs])
        if len(parts) == 1:
            found = await self.ctx.queue.show(parts[0])
            if found is None:
                return json_body(request, {"error": f"no message {parts[0]}"}, 404)
            m, attempts = found
            return json_body(request, message_dict(m, attempts))
        return json_body(request, {"error": "not found"}, 404)

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        parts = path_parts(request)
        if parts == ["wake"]:
            self.ctx.queue.wake()
            return json_body(request, {"woken": True})
        if len(parts) == 2 and parts[1] == "requiretls":
            return await self._requiretls(request, parts[0])
        if len(parts) == 2 and parts[1] == "transport":
            return await self._transport(request, parts[0])
        if len(parts) != 2 or parts[1] not in QUEUE_OPS:
            return json_body(request, {"error": f"use POST /api/queue/ID/({'|'.join(QUEUE_OPS)})"},
                         404)
        queue_id, op = parts
        n = await getattr(self.ctx.queue, op)(queue_id=queue_id)
        log.info("admin {op} {queue_id}: {n} recipient(s)", op=op, queue_id=queue_id, n=n)
        if _form_post(request):
            return _back(request, "/queue" if op == "drop" else f"/queue/{queue_id}")
        return json_body(request, {"op": op, "queue_id": queue_id, "recipients": n},
                     200 if n else 404)

    async def _requiretls(self, request: Any, queue_id: str) -> bytes:
        setting = (query_args(request, b"setting") or [""])[0]
        try:
            found = await self.ctx.queue.set_requiretls(queue_id, setting)
        except QueueError as e:
            return _failed(request, str(e), 400)
        if not found:
            return _failed(request, f"no message {queue_id}", 404)
        log.info("admin requiretls {queue_id} {setting}", queue_id=queue_id, setting=setting)
        if _form_post(request):
            return _back(request, f"/queue/{queue_id}")
        return json_body(request, {"queue_id": queue_id, "requiretls": setting})


    async def _transport(self, request: Any, queue_id: str) -> bytes:
        name = (query_args(request, b"name") or [""])[0]
        try:
            n = await self.ctx.queue.set_transport(queue_id, name)
        except QueueError as e:
            return _failed(request, str(e), 400)
        if not n:
            return _failed(request, f"no message {queue_id}", 404)
        log.info("admin transport {queue_id} {name}", queue_id=queue_id, name=name)
        if _form_post(request):
            return _back(request, f"/queue/{queue_id}")
        return json_body(request, {"queue_id": queue_id, "transport": name, "recipients": n})


def _form_post(request: Any) -> bool:
    """A form of the HTML pages (it carries the CSRF token), not an API client."""
    return bool(request.args.get(b"csrf"))


def _back(request: Any, path: str) -> bytes:
    """After a form's action: back to the page (303, RFC 9110 §15.4.4)."""
    request.setResponseCode(303)
    request.setHeader(b"location", urllib.parse.quote(path).encode())
    return b""


def _failed(request: Any, error: str, code: int) -> bytes:
    if not _form_post(request):
        return json_body(request, {"error": error}, code)
    html_headers(request)
    request.setResponseCode(code)
    return page("error", f"<p>{html.escape(error)}</p><p><a href=/queue>back</a></p>", request)


class _TLSAPI(Page):
    """/api/tls/domains[?domain=D][&account=A] and /api/tls/requiretls-ready"""


    @async_render
    async def render_GET(self, request: Any) -> bytes:
        parts = path_parts(request)
        domains = query_args(request, b"domain")
        if parts == ["domains"]:
            accounts = query_args(request, b"account")
            rows = await self.ctx.queue.tls_domains(domains[0] if domains else None,
                                                    accounts[0] if accounts else None)
            return json_body(request, [domain_tls_dict(d) for d in rows])
        if parts == ["requiretls-ready"]:
            if not domains:
                return json_body(request, {"error": "give one or more ?domain="}, 400)
            ready = await self.ctx.queue.requiretls_ready(domains)
            return json_body(request, {"domains": ready, "all": all(ready.values())})
        return json_body(request, {"error": "not found"}, 404)


class _DMARCAPI(Page):
    """/api/dmarc/reports (received) and /api/dmarc/sent"""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        parts = path_parts(request)
        if parts == ["sent"] and self.ctx.dmarc_sent is not None:
            return json_body(request, await self.ctx.run_blocking(self.ctx.dmarc_sent.reports))
        if parts != ["reports"] or self.ctx.dmarc_reports is None:
            return json_body(request, {"error": "not found"}, 404)
        reports = await self.ctx.run_blocking(self.ctx.dmarc_reports.reports)
        return json_body(request, reports)


class _TLSRPTAPI(Page):
    """/api/tlsrpt/reports, /api/tlsrpt/reports/ID and /api/tlsrpt/sent"""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        parts = path_parts(request)
        if parts == ["sent"] and self.ctx.tls_sent is not None:
            return json_body(request, await self.ctx.run_blocking(self.ctx.tls_sent.reports))
        if self.ctx.tls_reports is None or parts[:1] != ["reports"] or len(parts) > 2:
            return json_body(request, {"error": "not found"}, 404)
        if len(parts) == 2:
            report = await self.ctx.run_blocking(lambda: self.ctx.tls_reports.get(parts[1]))
            if report is None:
                return json_body(request, {"error": "not found"}, 404)
            return json_body(request, report)
        return json_body(request, await self.ctx.run_blocking(self.ctx.tls_reports.reports))

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        """POST /api/tlsrpt/send?day=YYYY-MM-DD: the reports of that UTC day, now."""
        if path_parts(request) != ["send"]:
            return json_body(request, {"error": "not found"}, 404)
        if self.ctx.tls_reporter is None:
            return json_body(request, {"error": "TLS reports are not sent ([tlsrpt] send)"},
                             409)
        day = (query_args(request, b"day") or [""])[0]
        try:
            start = datetime.datetime.strptime(day, "%Y-%m-%d").replace(
                tzinfo=datetime.UTC).timestamp()
        except ValueError:
            return json_body(request, {"error": "day must be YYYY-MM-DD"}, 400)
        reports, deliveries = await self.ctx.tls_reporter.report_day(start)
        log.info("admin: tls reports of {day}: {reports} report(s), {n} delivery(ies)",
                 day=day, reports=reports, n=deliveries)
        return json_body(request, {"day": day, "reports": reports, "deliveries": deliveries})


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
        html_headers(request)
        return page("log in", _LOGIN_FORM)

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        html_headers(request)
        ip = _client_ip(request)
        limiter = self.ctx.limiter
        if limiter is not None:
            verdict = limiter.check(ip, auth.ADMIN_ACCOUNT)
            if not verdict.allowed:
                request.setResponseCode(429)
                request.setHeader(b"retry-after", str(int(verdict.retry_after) + 1).encode())
                log.warn("admin login from {ip} refused: too many failures", ip=ip)
                return page("log in", "<p>Too many failed logins; try again later.</p>")
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
            return page("log in", "<p>Wrong password.</p>" + _LOGIN_FORM)
        if limiter is not None:
            limiter.success(ip, auth.ADMIN_ACCOUNT)
        session = self.ctx.sessions.create()
        request.setHeader(b"set-cookie", auth.cookie_header(
            session, request.isSecure(), self.ctx.sessions.lifetime))
        log.info("admin login from {ip}", ip=ip)
        request.redirect(b"/")
        return b""


class _Logout(Page):

    def render_POST(self, request: Any) -> bytes:
        session = request.mxd_session
        self.ctx.sessions.end(session.sid)
        request.setHeader(b"set-cookie", auth.cookie_header(None, request.isSecure(), 0))
        request.redirect(b"/login")
        return b""


NAV_LABELS = {b"status": "status", b"queue": "queue", b"domains": "domains",
              b"accounts": "accounts", b"tls": "TLS support", b"reports": "reports",
              b"metrics": "metrics"}


class _Root(resource.Resource):
    """Checks ``Host`` and authentication before any page or API call."""

    def __init__(self, ctx: AdminContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.nav: list[tuple[str, str]] = []

    def putChild(self, path: bytes, child: Any) -> None:
        super().putChild(path, child)
        label = NAV_LABELS.get(path)
        if label is not None:
            self.nav.append(("/" + path.decode(), label))

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        ctx = self.ctx
        refused = refuse_host(request, ctx.hosts, ctx.loopback, "admin")
        if refused is not None:
            return refused
        request.mxd_session = None
        if path == b"login" and not request.postpath:
            if request.method == b"POST" and not _same_origin(request):
                return _Error(403, "cross-origin request refused")
            return _Login(ctx)
        if path == b"api" and request.postpath[:1] == [b"account"]:
            # The account's own API: its credentials, never the admin's (account_api).
            return AccountAPI(ctx)
        if ctx.bearer(request):
            return super().getChildWithDefault(path, request)
        session = ctx.session(request)
        if session is None:
            if request.method == b"GET" and path not in (b"api", b"metrics"):
                return _Redirect(b"/login")
            return _Error(401, "log in first (or use the local token)")
        refused = refuse_post(request, session, "admin")
        if refused is not None:
            return refused
        request.mxd_session = session
        request.mxd_nav = self.nav
        return super().getChildWithDefault(path, request)


def admin_site(ctx: AdminContext) -> server.Site:
    root = _Root(ctx)
    status_page: Any = Status(ctx)
    root.putChild(b"", status_page)
    root.putChild(b"status", status_page)
    logout: Any = _Logout(ctx)
    root.putChild(b"logout", logout)
    api: Any = resource.Resource()
    dmarc_api: Any = _DMARCAPI(ctx)
    api.putChild(b"dmarc", dmarc_api)
    if ctx.queue is not None:
        queue_page: Any = QueuePage(ctx)
        root.putChild(b"queue", queue_page)
        queue_api: Any = _QueueAPI(ctx)
        api.putChild(b"queue", queue_api)
        tls_api: Any = _TLSAPI(ctx)
        api.putChild(b"tls", tls_api)
        tlsrpt_api: Any = _TLSRPTAPI(ctx)
        api.putChild(b"tlsrpt", tlsrpt_api)
    root.putChild(b"api", api)
    if ctx.directory is not None and ctx.store is not None:
        accounts: Any = Accounts(ctx)
        root.putChild(b"accounts", accounts)
    if ctx.domain_records is not None:
        domains: Any = Domains(ctx)
        root.putChild(b"domains", domains)
    if ctx.queue is not None:
        tls_page: Any = TLSSupport(ctx)
        root.putChild(b"tls", tls_page)
    reports: Any = Reports(ctx)
    root.putChild(b"reports", reports)
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
