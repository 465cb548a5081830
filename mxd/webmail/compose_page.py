"""The compose page of the web client: new message, reply and forward, sending.

  GET  /compose                          an empty form (?to= prefills a recipient)
  GET  /compose?reply=MAILBOX/UID        a reply: Re:, In-Reply-To, References, quoted
                                         text (&all=1: reply to all)
  GET  /compose?forward=MAILBOX/UID      a forward: Fwd:, the text inline with the
                                         original's attachments (&as=attachment: the
                                         whole message attached, message/rfc822)
  POST /compose                          send (multipart/form-data: fields and files)
  GET  /compose/tls?domain=D&domain=E    JSON: what the last delivery from this account
                                         to each domain saw (STARTTLS, verified TLS,
                                         REQUIRETLS), from the queue's per-domain records
  GET  /compose/compose.js               the page's script (a file: the CSP allows no
                                         inline script)

The form works without JavaScript.  The script adds, while recipients are typed, a
three-bar TLS indicator per recipient domain with a text tooltip, and selects
"require verified TLS" (REQUIRETLS, RFC 8689 §4) when every recipient domain is known
to support it — unless the user chose the TLS option themselves: an explicit choice
always wins.  The server renders the same indicator and the same automatic choice for
recipients it prefills (a reply).  What is selected is what is sent: the server never
upgrades "default" on its own (see ``mxd.webmail.submit``).
"""

from __future__ import annotations

import email.policy
import ipaddress
import json
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from importlib import resources
from typing import Any

from twisted.logger import Logger

from mxd.admin.render import async_render
from mxd.queue.views import domain_tls_dict
from mxd.smtp.address import AddressError, domain_to_ascii
from mxd.smtp.inprocess import SubmissionRefused
from mxd.store.interfaces import Account, NoSuchMailbox
from mxd.webmail.compose import (
    Attachment,
    ComposeError,
    ComposeForm,
    Forward,
    clean_display,
    forward_subject,
    plain_text_of,
    quote_text,
    references_for_reply,
    reply_subject,
    valid_msg_id,
)
from mxd.webmail.layout import CSP, WebmailPage, arg, csrf_field, e, layout
from mxd.webmail.submit import TLSChoice
from mxd.webmail.upload import form_files

log = Logger(namespace="mxd.webmail")

# The webmail's CSP with this page's own script and its fetch of /compose/tls.
COMPOSE_CSP = CSP.replace(b"default-src 'none';",
                          b"default-src 'none'; script-src 'self'; connect-src 'self';")
MAX_ORIGINAL = 50 * 1024 * 1024  # a replied/forwarded message read at most this far
MAX_TLS_DOMAINS = 50  # domains per /compose/tls request

TLS_LABELS = {TLSChoice.DEFAULT: "default (DANE, MTA-STS or opportunistic TLS)",
              TLSChoice.REQUIRETLS: "require verified TLS on every hop (REQUIRETLS)",
              TLSChoice.INSECURE: "fallback to insecure (TLS-Required: No)"}

_STYLE = """
<style>
form.compose label{display:block;margin:.5em 0 .15em;font-weight:600}
form.compose input[type=text],form.compose textarea,form.compose select{width:100%}
form.compose textarea{min-height:10em;font:13px/1.5 ui-monospace,monospace}
.tlsrow{display:flex;align-items:center;gap:.6em}form.compose .tlsrow select{width:auto}
.tls{display:flex;flex-wrap:wrap;gap:.4em .9em;margin:.25em 0;min-height:1.2em;
 font-size:12px;color:#4a5561}
.tls span.dom{display:inline-flex;align-items:center;gap:.35em}
.bars{display:inline-flex;gap:2px;align-items:flex-end}
.bars i{display:inline-block;width:6px;background:#cfd6dd;border-radius:1px}
.bars i:nth-child(1){height:7px}.bars i:nth-child(2){height:11px}
.bars i:nth-child(3){height:15px}
.bars i.on{background:#2e8b57}.bars.unknown i{background:#e4e8ec}
#tls-auto{font-size:12px;color:#2e6b45}
</style>"""


_POLICY_NAMES = {"tlsa": "DANE", "sts": "MTA-STS"}  # RFC 8460 policy types, as known


def _record_text(domain: str, rec: dict[str, Any] | None) -> str:
    """The indicator's tooltip."""
    if rec is None:
        return f"{domain}: no delivery from this account yet, nothing known"
    if rec.get("local"):
        return f"{domain}: a domain of this server, the message never leaves it"
    policy = rec.get("policy") or ""
    how = _POLICY_NAMES.get(policy, policy)
    verified = "yes" + (f" ({how})" if how else "") if rec.get("verified") else "no"
    return (f"{domain}: STARTTLS {'yes' if rec.get('starttls') else 'no'}, "
            f"verified TLS {verified}, REQUIRETLS {'yes' if rec.get('requiretls') else 'no'}"
            f" (last delivery {rec.get('at') or '?'}"
            + (f", {rec['tls_version']}" if rec.get("tls_version") else "") + ")")


def indicator_html(domain: str, rec: dict[str, Any] | None) -> str:
    """Three bars (STARTTLS, verified TLS, REQUIRETLS) and the domain, the details in
    the tooltip: the server-side form of what compose.js draws."""
    if rec is None:
        bars = "<span class='bars unknown'><i></i><i></i><i></i></span>"
    else:
        bars = "<span class=bars>" + "".join(
            f"<i{' class=on' if rec.get(k) else ''}></i>"
            for k in ("starttls", "verified", "requiretls")) + "</span>"
    level = 0 if rec is None else sum(bool(rec.get(k)) for k in (
        "starttls", "verified", "requiretls"))
    return (f"<span class=dom title=\"{e(_record_text(domain, rec))}\" "
            f"data-domain=\"{e(domain)}\" data-level={level}>{bars}{e(domain)}</span>")


def recipient_domains(*fields: str) -> list[str]:
    """The distinct domains (lowercase) of the addresses in ``fields``."""
    out: list[str] = []
    for _, addr in getaddresses(list(fields)):
        domain = addr.rpartition("@")[2].strip().lower().rstrip(".")
        if "@" in addr and domain and domain not in out:
            out.append(domain)
    return out


def _protected(request: Any) -> bool:
    """Did the form come over TLS or from this host (the bytes never left it)?"""
    if request.isSecure():
        return True
    host = str(getattr(request.getClientAddress(), "host", ""))
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ComposePage(WebmailPage):
    """/compose and /compose/tls, /compose/compose.js."""

    # -- GET -----------------------------------------------------------------------------

    @async_render
    async def render_GET(self, request: Any) -> bytes:
        parts = [p for p in request.postpath if p]
        if parts == [b"compose.js"]:
            request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
            request.setHeader(b"x-content-type-options", b"nosniff")
            request.setHeader(b"cache-control", b"no-cache")
            return _script()
        if parts == [b"tls"]:
            return await self._tls_json(request)
        if parts:
            self.headers(request)
            request.setResponseCode(404)
            return layout("Compose", "<p class=error>No such page.</p>", request)
        self.headers(request, COMPOSE_CSP)
        acct = await self.account(request)
        values = {"to": arg(request, b"to"), "cc": "", "bcc": "", "subject": "", "body": "",
                  "in_reply_to": "", "references": "", "forward": "", "forward_as": ""}
        note = ""
        sent = arg(request, b"sent")
        if sent:
            note = (f"<p class=note id=sent>Message sent (queue id {e(sent)}); a copy is in "
                    "Sent.</p>")
        reply, forward = arg(request, b"reply"), arg(request, b"forward")
        if reply or forward:
            original = await self._original(acct, reply or forward)
            if original is None:
                request.setResponseCode(404)
                return layout("Compose", "<p class=error>That message is gone.</p>",
                              request)
            if reply:
                values.update(_reply_values(original, acct, arg(request, b"all") == "1"))
            else:
                values.update(_forward_values(original, arg(request, b"as") == "attachment"))
                values["forward"] = forward
                values["forward_as"] = "attachment" if arg(request, b"as") == "attachment" \
                    else "inline"
        return await self._form(request, acct, values, None, note)

    async def _tls_json(self, request: Any) -> bytes:
        """{domain: record or null} for the ``domain`` arguments (this account's own
        deliveries only: the queue's records per sending account)."""
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        acct = await self.account(request)
        domains = [d.strip().lower().rstrip(".") for d in
                   (v.decode("utf-8", "replace") for v in request.args.get(b"domain", []))
                   if d.strip()][:MAX_TLS_DOMAINS]
        return json.dumps(await self._records(acct, domains)).encode()

    async def _records(self, acct: Account, domains: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        queue = self.ctx.queue
        is_local = getattr(self.ctx.directory, "is_local_domain", None)
        for d in domains:
            try:
                ascii_domain = domain_to_ascii(d)
            except AddressError:
                out[d] = None
                continue
            if is_local is not None and is_local(ascii_domain):
                # Delivered into this server's store: no TLS hop to ask about.
                out[d] = {"domain": d, "local": True, "starttls": True, "verified": True,
                          "requiretls": True}
                continue
            rows = await queue.tls_domains(ascii_domain, acct.name) if queue is not None \
                else []
            out[d] = domain_tls_dict(rows[0]) if rows else None
        return out

    async def _original(self, acct: Account, ref: str) -> bytes | None:
        """The raw message ``MAILBOX/UID`` of this account, or None."""
        mailbox, _, uid_text = ref.rpartition("/")
        if not mailbox or not uid_text.isdigit():
            return None
        store = self.ctx.store
        try:
            box = await store.get_mailbox(acct.id, mailbox, counts=False)
        except NoSuchMailbox:
            return None
        if box.account_id != acct.id:
            return None
        uid = int(uid_text)
        info = await store.get_message(box.id, uid) if 0 < uid < 2**32 else None
        if info is None:
            return None

        def read() -> bytes:
            with store.open_blob(info.blob_id) as f:
                return bytes(f.read(MAX_ORIGINAL))

        data: bytes = await self.ctx.run_blocking(read)
        return data

    async def _form(self, request: Any, acct: Account, values: dict[str, str],
                    error: str | None, note: str = "") -> bytes:
        domains = recipient_domains(values["to"], values["cc"], values["bcc"])
        records = await self._records(acct, domains[:MAX_TLS_DOMAINS])
        chosen = values.get("tls") or ""
        auto = not chosen and bool(records) and all(
            r is not None and r.get("requiretls") for r in records.values())
        tls = TLSChoice(chosen) if chosen in set(TLSChoice) else (
            TLSChoice.REQUIRETLS if auto else TLSChoice.DEFAULT)
        from_opts = "".join(
            f"<option{' selected' if a == values.get('from') else ''}>{e(a)}</option>"
            for a in acct.addresses)
        tls_opts = "".join(
            f"<option value={c.value}{' selected' if c is tls else ''}>{e(label)}</option>"
            for c, label in TLS_LABELS.items())

        def field(name: str, label: str) -> str:
            indicators = "".join(indicator_html(d, records.get(d)) for d in
                                 recipient_domains(values[name]))
            return (f"<label for={name}>{label}</label><input type=text id={name} "
                    f"name={name} value=\"{e(values[name])}\" autocomplete=off "
                    f"data-recipients>"
                    f"<div class=tls id=tls-{name} aria-live=polite>{indicators}</div>")

        hidden = "".join(
            f"<input type=hidden name={k} value=\"{e(values[k])}\">"
            for k in ("in_reply_to", "references", "forward", "forward_as") if values[k])
        forward_note = ""
        if values["forward"]:
            what = ("attached as a whole message" if values["forward_as"] == "attachment"
                    else "quoted below, its attachments attached")
            forward_note = f"<p class=note>The forwarded message is {what}.</p>"
        err = f"<p class=error id=error>{e(error)}</p>" if error else ""
        auto_note = ("<span id=tls-auto>selected automatically: every recipient domain "
                     "supports REQUIRETLS</span>" if auto else "<span id=tls-auto></span>")
        body = (
            f"{_STYLE}{note}{err}{forward_note}"
            "<form class=compose method=post action=/compose enctype=multipart/form-data>"
            f"{csrf_field(request)}{hidden}"
            f"<label for=from>From</label><select id=from name=from>{from_opts}</select>"
            f"{field('to', 'To')}{field('cc', 'Cc')}{field('bcc', 'Bcc')}"
            f"<label for=tls-choice>Transport security</label>"
            f"<div class=tlsrow><select id=tls-choice name=tls>{tls_opts}</select>"
            f"{auto_note}</div>"
            f"<label for=subject>Subject</label><input type=text id=subject name=subject "
            f"value=\"{e(values['subject'])}\">"
            f"<label for=body>Message</label><textarea id=body name=body>"
            f"{e(values['body'])}</textarea>"
            "<label for=attachment>Attachments</label>"
            "<input type=file id=attachment name=attachment multiple>"
            "<p><button id=send>Send</button></p></form>"
            "<script src=/compose/compose.js></script>")
        return layout("Compose", body, request)

    # -- POST: send ------------------------------------------------------------------------

    @async_render
    async def render_POST(self, request: Any) -> bytes:
        self.headers(request, COMPOSE_CSP)
        if [p for p in request.postpath if p]:
            request.setResponseCode(404)
            return layout("Compose", "<p class=error>No such page.</p>", request)
        acct = await self.account(request)
        values = {k: arg(request, k.encode()) for k in (
            "from", "to", "cc", "bcc", "subject", "body", "in_reply_to", "references",
            "forward", "forward_as", "tls")}
        submitter = getattr(self.ctx, "submitter", None)
        if submitter is None:
            request.setResponseCode(503)
            return await self._form(request, acct, values, "Sending is not configured.")
        try:
            tls = TLSChoice(values["tls"] or "default")
        except ValueError:
            request.setResponseCode(400)
            return await self._form(request, acct, values, "Unknown transport security "
                                    "choice.")
        files = await self.ctx.run_blocking(lambda: form_files(request, b"attachment"))
        attachments = tuple(Attachment(f.filename, f.content_type, f.data) for f in files)
        forward = None
        if values["forward"]:
            original = await self._original(acct, values["forward"])
            if original is None:
                request.setResponseCode(400)
                return await self._form(request, acct, values,
                                        "The forwarded message is gone.")
            forward = Forward(original, inline=values["forward_as"] != "attachment")
        form = ComposeForm(
            from_addr=values["from"], to=values["to"], cc=values["cc"], bcc=values["bcc"],
            subject=values["subject"], body=values["body"], attachments=attachments,
            in_reply_to=values["in_reply_to"], references=values["references"],
            forward=forward)
        again = " Attach the files again before sending." if attachments else ""
        try:
            result = await submitter.send(acct, form, tls, client_ip=str(getattr(
                request.getClientAddress(), "host", "")), protected=_protected(request))
        except ComposeError as err:
            request.setResponseCode(400)
            return await self._form(request, acct, values,
                                    f"Not sent: {err.field}: {err.message}.{again}")
        except SubmissionRefused as err:
            request.setResponseCode(400 if err.permanent else 503)
            return await self._form(request, acct, values,
                                    f"Not sent: the server refused it ({err.code} "
                                    f"{err.text}).{again}")
        if result.sent_error is not None:
            return layout("Compose", f"<p class=error>The message was sent (queue id "
                          f"{e(result.queue_id)}), but its copy could not be saved in Sent: "
                          f"{e(result.sent_error)}</p>", request)
        request.setResponseCode(303)  # RFC 9110 §15.4.4: show the result with a GET
        request.setHeader(b"location", b"/compose?sent=" + result.queue_id.encode("ascii"))
        return b""


def _parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def _header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, IndexError, AttributeError):  # a broken field: show nothing
        return ""
    return clean_display(str(value)) if value is not None else ""


def _reply_values(data: bytes, acct: Account, reply_all: bool) -> dict[str, str]:
    """RFC 5322 §3.6.3/§3.6.4: to Reply-To (else From); with all, the other To and Cc
    addresses too, never the account's own."""
    msg = _parse(data)
    own = {a.lower() for a in acct.addresses}
    to = _header(msg, "Reply-To") or _header(msg, "From")
    cc = ""
    if reply_all:
        others = [f"{n} <{a}>" if n else a
                  for n, a in getaddresses([_header(msg, "To"), _header(msg, "Cc")])
                  if a and a.lower() not in own and a.lower() not in to.lower()]
        cc = ", ".join(others)
    who = _header(msg, "From") or "someone"
    when = _header(msg, "Date")
    attribution = f"On {when}, {who} wrote:" if when else f"{who} wrote:"
    # A parent without a well-formed Message-ID is answered without threading fields
    # rather than with a form that cannot be sent.
    mid = _header(msg, "Message-ID")
    mid = mid if valid_msg_id(mid) else ""
    return {"to": to, "cc": cc, "subject": reply_subject(_header(msg, "Subject")),
            "in_reply_to": mid,
            "references": references_for_reply(mid,
                                                _header(msg, "References"),
                                                _header(msg, "In-Reply-To")),
            "body": "\n\n" + quote_text(plain_text_of(msg), attribution)}


def _forward_values(data: bytes, as_attachment: bool) -> dict[str, str]:
    msg = _parse(data)
    subject = forward_subject(_header(msg, "Subject"))
    if as_attachment:
        return {"subject": subject, "body": ""}
    head = "".join(f"{name}: {_header(msg, name)}\n" for name in ("From", "Date", "Subject",
                                                                    "To", "Cc")
                   if _header(msg, name))
    return {"subject": subject,
            "body": f"\n\n---------- Forwarded message ----------\n{head}\n"
                    f"{plain_text_of(msg)}"}


def _script() -> bytes:
    return resources.files("mxd.webmail").joinpath("compose.js").read_bytes()


__all__ = ["COMPOSE_CSP", "ComposePage", "indicator_html", "recipient_domains"]
