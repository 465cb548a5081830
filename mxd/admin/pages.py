"""The admin HTML pages: status, queue (list, filter, one message with its attempts and
actions).  Forms work without JavaScript; every value is escaped."""

from __future__ import annotations

import html
import platform
from typing import Any

import mxd
import twisted
from mxd.admin.render import Page, async_render, csrf_value, html_headers, page
from mxd.queue.views import iso

QUEUE_OPS = ("hold", "release", "kick", "drop")


class Status(Page):

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        html_headers(request)
        rows = dict(self.ctx.status())
        if self.ctx.queue is not None:
            counts = await self.ctx.queue.counts()
            rows.update({f"queue {k}": v for k, v in counts.items()})
        if self.ctx.store is not None:
            rows["accounts"] = len(await self.ctx.store.list_accounts())
        rows["python"] = platform.python_version()
        rows["twisted"] = twisted.__version__
        table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in rows.items())
        body = f"<table>{table}</table><h2>recent warnings and errors</h2>"
        recent = getattr(self.ctx, "recent", None)
        problems = recent.latest() if recent is not None else []
        body += _table(["at", "level", "where", "what"], [
            [_e(iso(t)), _e(level), _e(ns), _e(text)] for t, ns, level, text in problems]
        ) if problems else "<p>none since the start</p>"
        return page(f"mxd {mxd.__version__}", body, request)


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _form(request: Any, action: str, inner: str, label: str) -> str:
    """A POST form (no JavaScript) with the session's CSRF token."""
    return (f"<form method=post action=\"{_e(action)}\" style=display:inline>"
            f"<input type=hidden name=csrf value=\"{csrf_value(request)}\">{inner}"
            f"<button>{_e(label)}</button></form>")


def _table(head: list[str], rows: list[list[str]]) -> str:
    """``rows`` hold HTML already escaped."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _requiretls_state(m: Any) -> str:
    """The message's RFC 8689 state as the admin override left it."""
    if m.requiretls:
        return "REQUIRETLS"
    if m.tls_required_no:
        return "TLS-Required: No"
    return "default"


class QueuePage(Page):
    """/queue (filtered by ?domain= and ?sender=) and /queue/ID (one message)."""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        html_headers(request)
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        if parts:
            return await self._message(request, parts[0])
        domain = (request.args.get(b"domain") or [b""])[0].decode("utf-8", "replace").strip()
        sender = (request.args.get(b"sender") or [b""])[0].decode("utf-8", "replace").strip()
        msgs = await self.ctx.queue.list(domain=domain or None, sender=sender or None)
        rows = []
        for m in msgs:
            rcpts = "<br>".join(
                _e(f"{r.address} {r.state}{' held' if r.hold else ''} attempts={r.attempts}")
                for r in m.recipients)
            qid = m.queue_id
            buttons = " ".join(_form(request, f"/api/queue/{qid}/{op}", "", op)
                               for op in QUEUE_OPS)
            rows.append([f"<a href=\"/queue/{_e(qid)}\">{_e(qid)}</a>",
                         _e(m.mail_from or "<>"), rcpts, _e(_requiretls_state(m)), buttons])
        search = ("<form method=get action=/queue><label>recipient domain <input name=domain "
                  f"value=\"{_e(domain)}\"></label> <label>sender <input name=sender "
                  f"value=\"{_e(sender)}\"></label> <button>filter</button></form>")
        table = _table(["id", "from", "recipients", "TLS", ""], rows)
        return page("queue", f"{search}<p>{len(msgs)} message(s)</p>{table}", request)

    async def _message(self, request: Any, queue_id: str) -> bytes:
        found = await self.ctx.queue.show(queue_id)
        if found is None:
            request.setResponseCode(404)
            return page("queue", f"<p>No message {_e(queue_id)}.</p>", request)
        m, attempts = found
        base = f"/api/queue/{m.queue_id}"
        ops = " ".join(_form(request, f"{base}/{op}", "", op) for op in QUEUE_OPS)
        choices = "".join(f"<option value={v}>{v}</option>" for v in ("yes", "no", "default"))
        rtls = _form(request, f"{base}/requiretls",
                     f"<select name=setting aria-label=REQUIRETLS>{choices}</select> ",
                     "set REQUIRETLS")
        transport = _form(request, f"{base}/transport",
                          "<input name=name placeholder=\"transport or default\" "
                          "aria-label=transport> ", "set transport")
        info = _table(["", ""], [
            ["from", _e(m.mail_from or "<>")], ["size", _e(m.size)],
            ["REQUIRETLS (RFC 8689)", _e(_requiretls_state(m))],
            ["admin override", _e(m.tls_override or "default")],
        ])
        rcpts = _table(["recipient", "state", "held", "attempts", "next", "last result",
                        "transport"], [
            [_e(r.address), _e(r.state), "yes" if r.hold else "", _e(r.attempts),
             _e(iso(r.next_attempt)), _e(" ".join(str(x) for x in (r.last_code, r.last_enhanced,
                                                              r.last_text) if x)),
             _e(r.transport or "")] for r in m.recipients])
        tries = _table(["at", "transport", "host", "result", "reply", "TLS", "policy"], [
            [_e(iso(a.at)), _e(a.transport or "direct"), _e(a.host), _e(a.result),
             _e(" ".join(str(x) for x in (a.code, a.enhanced, a.text) if x)),
             _e(f"{a.tls_version or ''} {a.tls_cipher or ''}".strip() if a.tls_used else
                "none") + (" verified" if a.tls_verified else ""),
             _e(" ".join(str(x) for x in (a.tls_policy_type, a.tls_policy_domain,
                                          a.tls_failure) if x))] for a in attempts])
        body = (f"<p>{ops}</p><p>{rtls}</p><p>{transport}</p>{info}<h2>recipients</h2>{rcpts}"
                f"<h2>attempts</h2>{tries}")
        return page(f"message {m.queue_id}", body, request)
