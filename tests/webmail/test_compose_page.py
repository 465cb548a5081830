"""The compose page through the webmail Site in memory: multipart uploads, sending
through the submission session, the Sent copy, reply/forward prefill, the TLS data the
indicator reads, and refusals (header injection, CSRF, oversize uploads)."""

from __future__ import annotations

import email
import email.policy
import json
import re
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from mxd.smtp.inprocess import InProcessSubmission
from mxd.smtp.session import SMTPServerSettings
from mxd.store.interfaces import SpecialUse
from mxd.store.queuedb import DomainTLS
from mxd.webmail.site import webmail_site
from mxd.webmail.submit import WebSubmitter
from tests.webmail.world import ALICE, World

ORIGINAL = (b"From: Bob <bob@remote.example>\r\nTo: alice@example.test, carol@other.example\r\n"
            b"Subject: plans\r\nMessage-ID: <orig@remote.example>\r\n"
            b"Date: Fri, 04 Dec 2026 09:00:00 +0000\r\n\r\nshall we meet?\r\n")


class _Directory:
    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.test"

    def resolve_recipient(self, address: str) -> Any:
        return succeed(None)

    def may_send_as(self, account: str, address: str) -> Any:
        return succeed(account == ALICE and address == ALICE)


class _Outbound:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class _Queue:
    """The per-domain TLS records of the queue, per sending account."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str | None]] = []

    def tls_domains(self, domain: str | None, account: str | None = None) -> Any:
        self.asked.append((domain, account))
        rows = {"secure.example": DomainTLS("secure.example", 1_000_000.0, "mx.secure.example",
                                            "192.0.2.1", True, True, True, True, "dane",
                                            None, "TLSv1.3"),
                "plain.example": DomainTLS("plain.example", 1_000_000.0, "mx.plain.example",
                                           "192.0.2.2", True, False, True, False)}
        row = rows.get(domain or "") if account == ALICE else None
        return succeed([row] if row else [])


@pytest.fixture
def world() -> World:
    w = World()
    w.ctx.queue = _Queue()
    w.outbound = _Outbound()  # type: ignore[attr-defined]
    submission = InProcessSubmission(
        settings=SMTPServerSettings(), store=w.store, directory=_Directory(),
        outbound=w.outbound, clock=w.clock, hostname="mx.example.test")  # type: ignore[attr-defined]
    w.ctx.submitter = WebSubmitter(submission, w.store, clock=w.clock,
                                   run_blocking=lambda f: succeed(f()))
    w.ctx.max_request_body = 200_000
    w.ctx.run_blocking = lambda f: succeed(f())
    w.site = webmail_site(w.ctx)
    return w


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]] = ()
              ) -> tuple[bytes, str]:  # type: ignore[assignment]
    boundary = "----formboundaryXyZ"
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                ).encode() + v.encode() + b"\r\n"
    for name, ctype, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"attachment\"; "
                f"filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def raw_post(w: World, path: str, cookie: str, body: bytes, ctype: str, *,
             length: int | None = None, chunked: bool = False,
             origin: str | None = None) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body, connection closed by the server)."""
    proto: Any = w.site.buildProtocol(None)
    tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(tr)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1:8081", f"Cookie: {cookie}",
            f"Content-Type: {ctype}"]
    if origin:
        head.append(f"Origin: {origin}")
    if chunked:
        head.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                           for i in range(0, len(body), 4096)) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body) if length is None else length}")
        payload = body
    proto.dataReceived(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    raw = tr.value()
    closed = tr.disconnecting
    status, _, rest = raw.partition(b"\r\n")
    hdr_text, _, content = rest.partition(b"\r\n\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (
        ln.partition(":") for ln in hdr_text.decode("latin-1").split("\r\n"))}
    proto.connectionLost(None)
    return int(status.split()[1]), hdrs, content, closed


def _login(w: World) -> tuple[str, str]:
    code, cookie = w.login()
    assert code == 302
    return cookie, w.csrf(cookie, "/compose")


def _sent(w: World) -> list[Any]:
    boxes = w.store.list_mailboxes(w.account.id).result
    box = next(b for b in boxes if b.special_use == SpecialUse.SENT)
    return list(w.store.list_messages(box.id).result)


def test_compose_page_form_script_and_csp(world: World) -> None:
    """The form (multipart, CSRF token, To/Cc/Bcc, attachments, the TLS choice) under a
    CSP that allows only this server's script file; the script is served as a file."""
    cookie, _ = _login(world)
    code, hdrs, body = world.request("GET", "/compose", cookie=cookie)
    assert code == 200
    assert b'enctype=multipart/form-data' in body and b"name=csrf" in body
    assert b"<script src=/compose/compose.js></script>" in body
    assert re.search(rb"<script>", body) is None  # no inline script
    csp = hdrs["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    for choice in (b"default", b"requiretls", b"insecure"):
        assert b"<option value=" + choice in body
    code, hdrs, js = world.request("GET", "/compose/compose.js", cookie=cookie)
    assert code == 200 and hdrs["content-type"].startswith("text/javascript")
    assert b"textContent" in js and b"innerHTML" not in js


def test_send_with_attachments_and_sent_copy(world: World) -> None:
    """A multipart POST sends through the submission session (the queue is woken) and
    answers 303; the attachment's octets and non-ASCII name survive; the Sent copy has
    \\Seen."""
    cookie, csrf = _login(world)
    data = bytes(range(256)) * 10
    body, ctype = multipart({"csrf": csrf, "from": ALICE, "to": "Dave <dave@remote.example>",
                             "subject": "Grüße", "body": "hello", "tls": "default"},
                            [("résumé.bin", "application/octet-stream", data)])
    code, hdrs, content, _ = raw_post(world, "/compose", cookie, body, ctype)
    assert code == 303, content
    assert hdrs["location"].startswith("/compose?sent=")
    assert world.outbound.wakes == 1  # type: ignore[attr-defined]
    (info,) = _sent(world)
    assert "\\Seen" in info.flags
    msg = email.message_from_bytes(world.store.bodies[info.blob_id], policy=email.policy.default)
    assert msg["Subject"] == "Grüße"
    (att,) = msg.iter_attachments()  # type: ignore[attr-defined]
    assert att.get_filename() == "résumé.bin" and att.get_content() == data
    code, _, page = world.request("GET", hdrs["location"], cookie=cookie)
    assert b"Message sent" in page


def test_crlf_in_subject_refused(world: World) -> None:
    """Header injection through the subject is refused with the field named; nothing
    is sent or saved."""
    cookie, csrf = _login(world)
    body, ctype = multipart({"csrf": csrf, "from": ALICE, "to": "dave@remote.example",
                             "subject": "hi\r\nBcc: victim@example.com", "body": "x"})
    code, _, content, _ = raw_post(world, "/compose", cookie, body, ctype)
    assert code == 400 and b"Not sent: subject" in content and b"control character" in content
    assert world.outbound.wakes == 0 and _sent(world) == []  # type: ignore[attr-defined]


def test_post_without_csrf_or_cross_site_refused(world: World) -> None:
    """A POST without the session's token, or from another origin, never sends."""
    cookie, csrf = _login(world)
    body, ctype = multipart({"from": ALICE, "to": "dave@remote.example", "body": "x"})
    assert raw_post(world, "/compose", cookie, body, ctype)[0] == 403
    body, ctype = multipart({"csrf": csrf, "from": ALICE, "to": "dave@remote.example"})
    assert raw_post(world, "/compose", cookie, body, ctype,
                    origin="http://evil.example")[0] == 403
    assert world.outbound.wakes == 0  # type: ignore[attr-defined]


def test_oversize_upload_refused_before_it_is_read(world: World) -> None:
    """A declared Content-Length above the limit gets 413 and the connection closes
    before the body is read; a chunked body is cut off when it passes the limit."""
    cookie, csrf = _login(world)
    code, _, content, closed = raw_post(world, "/compose", cookie, b"x" * 10, "multipart/"
                                        "form-data; boundary=b", length=10_000_000)
    assert code == 413 and closed and b"larger than 200000" in content
    big, ctype = multipart({"csrf": csrf, "from": ALICE, "to": "dave@remote.example"},
                           [("big.bin", "application/octet-stream", b"\0" * 300_000)])
    code, _, _, closed = raw_post(world, "/compose", cookie, big, ctype, chunked=True)
    assert code == 413 and closed
    assert world.outbound.wakes == 0  # type: ignore[attr-defined]


def test_tls_json_is_the_accounts_own(world: World) -> None:
    """/compose/tls gives, per domain, what this account's last delivery saw."""
    cookie, _ = _login(world)
    code, hdrs, body = world.request(
        "GET", "/compose/tls?domain=secure.example&domain=Plain.Example&domain=new.example",
        cookie=cookie)
    assert code == 200 and hdrs["content-type"] == "application/json"
    data: Any = json.loads(body)
    assert data["secure.example"]["requiretls"] is True
    assert data["secure.example"]["verified"] is True
    assert data["plain.example"]["requiretls"] is False and data["new.example"] is None
    assert all(acct == ALICE for _, acct in world.ctx.queue.asked)
    # This server's own domains need no TLS hop; IDNs are asked for as A-labels.
    world.ctx.directory = _Directory()
    code, _, body = world.request(
        "GET", "/compose/tls?domain=example.test&domain=b%C3%BCcher.example", cookie=cookie)
    data = json.loads(body)
    assert data["example.test"]["local"] is True and data["example.test"]["requiretls"]
    assert data["bücher.example"] is None
    assert ("xn--bcher-kva.example", ALICE) in world.ctx.queue.asked


def test_reply_prefill_and_server_side_indicator(world: World) -> None:
    """A reply gets Re:, In-Reply-To/References and the quoted text; the recipient's
    domain shows its TLS bars, and REQUIRETLS is selected when every recipient domain
    supports it."""
    uid = world.deliver(ORIGINAL.replace(b"bob@remote.example", b"bob@secure.example"))
    cookie, _ = _login(world)
    code, _, body = world.request("GET", f"/compose?reply=INBOX/{uid}", cookie=cookie)
    text = body.decode()
    assert code == 200
    assert 'value="Re: plans"' in text and 'value="&lt;orig@remote.example&gt;"' in text
    assert "&gt; shall we meet?" in text and "bob@secure.example" in text
    assert 'data-domain="secure.example" data-level=3' in text
    assert "<option value=requiretls selected>" in text and "selected automatically" in text
    code, _, body = world.request("GET", f"/compose?reply=INBOX/{uid}&all=1", cookie=cookie)
    assert b"carol@other.example" in body and b"<option value=default selected>" in body
    assert world.request("GET", "/compose?reply=INBOX/999", cookie=cookie)[0] == 404


def test_forward_as_attachment(world: World) -> None:
    """Forwarding attaches the original octets as message/rfc822."""
    uid = world.deliver(ORIGINAL)
    cookie, csrf = _login(world)
    code, _, page = world.request("GET", f"/compose?forward=INBOX/{uid}&as=attachment",
                                  cookie=cookie)
    assert code == 200 and b'value="Fwd: plans"' in page and b"attached as a whole" in page
    body, ctype = multipart({"csrf": csrf, "from": ALICE, "to": "dave@remote.example",
                             "subject": "Fwd: plans", "body": "fyi",
                             "forward": f"INBOX/{uid}", "forward_as": "attachment"})
    code, _, content, _ = raw_post(world, "/compose", cookie, body, ctype)
    assert code == 303, content
    (info,) = _sent(world)
    assert ORIGINAL in world.store.bodies[info.blob_id]


def test_reply_to_a_message_without_a_valid_message_id_can_be_sent(world: World) -> None:
    """A parent whose Message-ID is malformed is answered without In-Reply-To (the form
    would otherwise be refused on sending)."""
    uid = world.deliver(ORIGINAL.replace(b"<orig@remote.example>", b"no-brackets"))
    cookie, csrf = _login(world)
    code, _, page = world.request("GET", f"/compose?reply=INBOX/{uid}", cookie=cookie)
    assert code == 200 and b"name=in_reply_to" not in page and b"no-brackets" not in page
    body, ctype = multipart({"csrf": csrf, "from": ALICE, "to": "bob@remote.example",
                             "subject": "Re: plans", "body": "yes"})
    assert raw_post(world, "/compose", cookie, body, ctype)[0] == 303
