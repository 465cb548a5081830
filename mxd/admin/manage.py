"""Admin pages for accounts, domains (their DNS records), TLS support per recipient
domain, and the DMARC and TLS reports received.  Plain HTML forms (no JavaScript), each
POST carrying the session's CSRF token (checked before the page sees it); every value
escaped."""

from __future__ import annotations

import html
from typing import Any

from twisted.logger import Logger

from mxd.admin.render import Page, async_render, csrf_value, html_headers, page
from mxd.errors import MxdError
from mxd.queue.views import iso

log = Logger(namespace="mxd.admin")


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _table(head: list[str], rows: list[list[str]]) -> str:
    """``rows`` hold HTML already escaped."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _form(request: Any, action: str, fields: str, label: str) -> str:
    return (f"<form method=post action=\"{_e(action)}\" style=display:inline>"
            f"<input type=hidden name=csrf value=\"{csrf_value(request)}\">{fields}"
            f"<button>{_e(label)}</button></form>")


def _hidden(name: str, value: str) -> str:
    return f"<input type=hidden name={name} value=\"{_e(value)}\">"


def _arg(request: Any, name: str) -> str:
    return (request.args.get(name.encode()) or [b""])[0].decode("utf-8", "replace").strip()


def _back(request: Any, path: bytes) -> bytes:
    request.setResponseCode(303)  # RFC 9110 §15.4.4: see the page again with GET
    request.setHeader(b"location", path)
    return b""


def _error(request: Any, title: str, message: str, back: str) -> bytes:
    request.setResponseCode(400)
    return page(title, f"<p class=error>{_e(message)}</p><p><a href=\"{_e(back)}\">back</a>"
                "</p>", request)


class Accounts(Page):
    """/accounts: list with addresses and quota; POST /accounts/ACTION with ACTION in add,
    delete, password, address-add, address-remove, quota."""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        html_headers(request)
        store, directory = self.ctx.store, self.ctx.directory
        rows = []
        for a in await directory.list_accounts():
            used, quota = await store.get_usage(a.id) if hasattr(store, "get_usage") else (
                None, None)
            addrs = "<br>".join(
                f"{_e(addr)} " + _form(request, "/accounts/address-remove",
                                       _hidden("address", addr), "remove")
                for addr in a.addresses)
            addrs += ("<br>" if a.addresses else "") + _form(
                request, "/accounts/address-add",
                _hidden("name", a.name) + "<input name=address aria-label=\"new address\" "
                "placeholder=\"new address\"> ", "add address")
            usage = f"{_e(used)} of {_e(quota if quota else 'unlimited')} bytes"
            quota_form = _form(request, "/accounts/quota", _hidden("name", a.name) +
                               "<input name=quota size=12 aria-label=quota "
                               "placeholder=\"bytes or empty\"> ", "set quota")
            pw_form = _form(request, "/accounts/password", _hidden("name", a.name) +
                            "<input type=password name=password autocomplete=new-password "
                            "aria-label=\"new password\" placeholder=\"new password\"> ",
                            "set password")
            delete = _form(request, "/accounts/delete", _hidden("name", a.name) +
                           "<input name=confirm size=12 aria-label=\"type the name to confirm\" "
                           "placeholder=\"name to confirm\"> ", "delete")
            rows.append([_e(a.name), addrs, f"{usage}<br>{quota_form}", pw_form, delete])
        add = _form(request, "/accounts/add",
                    "<label>name <input name=name></label> <label>password <input "
                    "type=password name=password autocomplete=new-password></label> "
                    "<label>addresses <input name=addresses size=40 placeholder=\"a@example.org "
                    "b@example.org\"></label> ", "add account")
        table = _table(["account", "addresses", "usage / quota", "password", ""], rows)
        return page("accounts", f"<p>{add}</p>{table}", request)

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        html_headers(request)
        action = b"/".join(request.postpath).decode("ascii", "replace")
        directory, store = self.ctx.directory, self.ctx.store
        name = _arg(request, "name")
        try:
            if action == "add":
                password = _arg(request, "password")
                if not name or not password:
                    return _error(request, "accounts", "give a name and a password", "/accounts")
                addresses = _arg(request, "addresses").replace(",", " ").split()
                await directory.add_account(name, password, addresses)
            elif action == "delete":
                if _arg(request, "confirm") != name:
                    return _error(request, "accounts", "type the account's name to confirm "
                                  "its deletion (all its mail is deleted)", "/accounts")
                await directory.delete_account(name)
            elif action == "password":
                password = _arg(request, "password")
                if not password:
                    return _error(request, "accounts", "empty password", "/accounts")
                await directory.set_password(name, password)
            elif action == "address-add":
                await directory.add_address(name, _arg(request, "address"))
            elif action == "address-remove":
                await directory.remove_address(_arg(request, "address"))
            elif action == "quota":
                text = _arg(request, "quota")
                if text and not text.isdigit():
                    return _error(request, "accounts", "the quota is a number of bytes (empty: "
                                  "the default)", "/accounts")
                await store.set_quota(name, int(text) if text else None)
            else:
                request.setResponseCode(404)
                return page("accounts", "<p>No such action.</p>", request)
        except (MxdError, NotImplementedError, ValueError) as e:
            return _error(request, "accounts", f"{action}: {e}", "/accounts")
        log.info("admin accounts {action} {name}", action=action, name=name)
        return _back(request, b"/accounts")


_WORST = {"ERROR": 3, "WARN": 2, "OK": 1}


def _check_cell(results: list[Any]) -> str:
    """The check results of one record kind: the worst status first, each detail."""
    if not results:
        return ""
    worst = max(results, key=lambda r: _WORST.get(str(r.status), 0))
    return (f"<b class=\"{_e(str(worst.status).lower())}\">{_e(worst.status)}</b> "
            + "<br>".join(_e(f"[{r.dnssec}] {r.detail}") for r in results))


class Domains(Page):
    """/domains: each configured domain with the DNS records it needs (``mxd dns
    records``) and, next to each, what the last DNS check (``mxd dns check``,
    mxd.dnscheck) found; POST /domains/check (field ``domain``) runs the check now."""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        html_headers(request)
        parts = []
        checks = self.ctx.dns_checks
        for domain in self.ctx.domains:
            try:
                recs = await self.ctx.run_blocking(lambda d=domain: self.ctx.domain_records(d))
            except MxdError as e:
                parts.append(f"<h2>{_e(domain)}</h2><p>{_e(e)}</p>")
                continue
            checked = checks.get(domain)
            results = list(checked[1]) if checked is not None else []
            by_name: dict[str, list[Any]] = {}
            for r in results:
                by_name.setdefault(r.name, []).append(r)
            head = ["name", "type", "value", "for", "why"]
            if checked is not None:
                head.append(f"DNS check {iso(checked[0])}")
            rows = []
            for rec in recs:
                row = [_e(rec.name), _e(rec.rtype), f"<code>{_e(rec.value)}</code>",
                       _e(rec.purpose), _e(rec.explanation)]
                if checked is not None:
                    row.append(_check_cell(by_name.get(rec.purpose, [])))
                rows.append(row)
            section = f"<h2 id=\"{_e(domain)}\">{_e(domain)}</h2>" + _table(head, rows)
            purposes = {rec.purpose for rec in recs}
            others = [r for r in results if r.name not in purposes]
            if others:  # checks without a record of their own (dnssec, policy fetch ...)
                section += "<h3>other checks</h3>" + _table(
                    ["check", "status", "DNSSEC", "detail", "fix"],
                    [[_e(r.name), _e(r.status), _e(r.dnssec), _e(r.detail), _e(r.fix)]
                     for r in others])
            fixes = [r for r in results if r.fix and r.name in purposes]
            if fixes:
                section += "<h3>to fix</h3><ul>" + "".join(
                    f"<li>{_e(r.name)}: {_e(r.fix)}</li>" for r in fixes) + "</ul>"
            if self.ctx.domain_check is not None:
                section += "<p>" + _form(request, "/domains/check", _hidden("domain", domain),
                                         "run the DNS check now") + "</p>"
            parts.append(section)
        note = ("<p>The records each domain needs and what the DNS check (<code>mxd dns "
                "check DOMAIN</code>) found when it last ran.</p>")
        return page("domains", note + "".join(parts), request)

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        html_headers(request)
        domain = _arg(request, "domain")
        if request.postpath != [b"check"] or self.ctx.domain_check is None:
            request.setResponseCode(404)
            return page("domains", "<p>No such action.</p>", request)
        if domain not in self.ctx.domains:
            return _error(request, "domains", f"{domain} is not a configured domain",
                          "/domains")
        try:
            results = await self.ctx.domain_check(domain)
        except Exception as e:  # noqa: BLE001 - shown to the admin, logged
            log.failure("dns check of {domain} failed", domain=domain)
            return _error(request, "domains", f"DNS check of {domain} failed: {e}", "/domains")
        self.ctx.dns_checks[domain] = (self.ctx.clock.seconds(), tuple(results))
        log.info("admin dns check {domain}: {n} result(s)", domain=domain, n=len(results))
        return _back(request, b"/domains#" + domain.encode("ascii", "replace"))


def _yes(v: Any) -> str:
    return "yes" if v else ("no" if v is not None else "")


class TLSSupport(Page):
    """/tls: what the last delivery to each recipient domain saw (STARTTLS, verified TLS,
    REQUIRETLS, RFC 8689)."""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        html_headers(request)
        table = tls_table(await self.ctx.queue.tls_domains(None))
        return page("TLS support per recipient domain", table, request)


def tls_table(domains: list[Any]) -> str:
    """The support records (``mxd.store.queuedb.DomainTLS``) as an HTML table, escaped;
    the admin's /tls page and the webmail's settings show it."""
    rows = [[_e(d.domain), _e(iso(d.at)), _e(d.mx_host), _yes(d.starttls),
             _yes(d.verified), _e(d.policy_type or ""), _yes(d.requiretls),
             _e(d.tls_version or ""), _e(d.result_type or "")] for d in domains]
    return _table(["domain", "last delivery", "MX", "STARTTLS", "verified",
                   "policy", "REQUIRETLS", "TLS", "failure"], rows)


class Reports(Page):
    """/reports: DMARC aggregate reports (RFC 7489) and TLS reports (RFC 8460), received
    and sent."""

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        html_headers(request)
        body = "<h2>DMARC aggregate reports received</h2>"
        if self.ctx.dmarc_reports is not None:
            dmarc = await self.ctx.run_blocking(self.ctx.dmarc_reports.reports)
            body += _table(["from", "report id", "domain", "period", "messages", "DMARC pass",
                            "policy"], [
                [_e(r.get("org_name")), _e(r.get("report_id")), _e(r.get("domain")),
                 _e(f"{iso(r.get('begin'))} – {iso(r.get('end'))}"), _e(r.get("messages")),
                 _e(r.get("dmarc_pass")), _e(r.get("policy"))] for r in dmarc])
        else:
            body += "<p>Not kept (no report store configured).</p>"
        body += "<h2>DMARC aggregate reports sent</h2>"
        sent_store = getattr(self.ctx, "dmarc_sent", None)
        if sent_store is not None:
            sent = await self.ctx.run_blocking(sent_store.reports)
            body += _table(["domain", "report id", "period", "messages", "rows", "sent to",
                            "sent", "queue id"], [
                [_e(r.get("domain")), _e(r.get("report_id")),
                 _e(f"{iso(r.get('begin'))} – {iso(r.get('end'))}"), _e(r.get("messages")),
                 _e(r.get("records")), _e(r.get("to")), _e(iso(r.get("sent"))),
                 f"<a href=\"/queue/{_e(r.get('queue_id'))}\">{_e(r.get('queue_id'))}</a>"]
                for r in sent]) if sent else "<p>None sent yet.</p>"
        else:
            body += "<p>Not kept.</p>"
        body += "<h2>TLS reports received</h2>"
        tls_reports = getattr(self.ctx, "tls_reports", None)
        if tls_reports is not None:
            got = await self.ctx.run_blocking(tls_reports.reports)
            rows = []
            for r in got:
                pols = r.get("policies") or []
                rows.append([_e(r.get("organization")),
                             _e(r.get("report_id")),
                             "<br>".join(_e(f"{p.get('policy_type')} {p.get('policy_domain')}: "
                                            f"{p.get('successful')} ok, {p.get('failed')} failed")
                                         for p in pols)])
            body += _table(["from", "report id", "policies"], rows)
        else:
            body += "<p>Not kept.</p>"
        body += "<h2>TLS reports sent</h2>"
        tls_sent = getattr(self.ctx, "tls_sent", None)
        if tls_sent is not None:
            sent = await self.ctx.run_blocking(tls_sent.reports)
            body += _table(["policy domain", "kind", "report id", "period", "failures",
                            "sent to", "result", "at"], [
                [_e(r.get("policy_domain")), _e(r.get("kind")), _e(r.get("report_id")),
                 _e(f"{iso(r.get('begin'))} – {iso(r.get('end'))}"), _e(r.get("failures")),
                 _e(r.get("to")),
                 (f"queued as <a href=\"/queue/{_e(r.get('queue_id'))}\">"
                  f"{_e(r.get('queue_id'))}</a>" if r.get("queue_id") else _e(r.get("result"))),
                 _e(iso(r.get("sent")))] for r in sent]) if sent else "<p>None sent yet.</p>"
        else:
            body += "<p>Not kept.</p>"
        return page("reports", body, request)
