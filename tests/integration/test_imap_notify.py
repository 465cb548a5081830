"""METADATA (RFC 5464), PREVIEW (RFC 8970) and NOTIFY (RFC 5465) against `twistd mxd` with
Python's imaplib sending raw commands, mail delivered over SMTP with smtplib."""

from __future__ import annotations

import base64
import imaplib
import re
import select
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.imap.test_preview import ALTERNATIVE, HTML, ONLY_ATTACHMENT, PLAIN
from tests.integration.mxdserver import MxdServer
from tests.integration.runqueue import RunQueueWatch, watch_session, within
from tests.integration.test_imap_vs_dovecot import DOVECOT_PASSWORD, DOVECOT_USER
from tests.integration.test_imap_vs_dovecot import dovecot as dovecot

pytestmark = pytest.mark.integration


def _imaps(srv: MxdServer, user: str | None = None, password: str | None = None) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=ctx, timeout=10)
    c.login(user or srv.user, password or srv.password)
    return c


def _raw(c: imaplib.IMAP4, line: str) -> tuple[list[bytes], bytes]:
    """Send one command; the untagged lines (literals joined in) and the tagged line."""
    tag = c._new_tag().decode()
    c.send(f"{tag} {line}\r\n".encode())
    untagged: list[bytes] = []
    while True:
        ln = c.readline()
        assert ln, "connection closed"
        while ln.rstrip(b"\r\n").endswith(b"}") and b"{" in ln:
            n = int(ln[ln.rindex(b"{") + 1:-3].rstrip(b"+"))
            ln = ln + c.read(n) + c.readline()
        if ln.startswith(tag.encode() + b" "):
            return untagged, ln.rstrip(b"\r\n")
        untagged.append(ln.rstrip(b"\r\n"))


def test_metadata_set_get_limits(mxd_server_module: MxdServer) -> None:
    """SETMETADATA/GETMETADATA on server and mailbox entries survive a new session; the
    per-entry limit answers NO [METADATA MAXSIZE n]; another account sees nothing."""
    srv = mxd_server_module
    a = _imaps(srv)
    assert b" METADATA" in a.capability()[1][0]
    _, done = _raw(a, 'SETMETADATA "" (/private/vendor/mxd-test/theme "dark")')
    assert done.endswith(b"OK SETMETADATA completed"), done
    _, done = _raw(a, 'SETMETADATA INBOX (/shared/comment "Incoming mail" /private/color "#ff0000")')
    assert b"OK" in done, done
    _, done = _raw(a, "SETMETADATA INBOX (/private/big {20000+}\r\n" + "x" * 20000 + ")")
    assert b"NO [METADATA MAXSIZE 16384]" in done, done
    a.logout()
    b = _imaps(srv)
    lines, done = _raw(b, "GETMETADATA (DEPTH infinity) INBOX (/private /shared)")
    assert lines == [b'* METADATA INBOX (/private/color "#ff0000" /shared/comment "Incoming mail")'], lines
    lines, done = _raw(b, 'GETMETADATA "" /private/vendor/mxd-test/theme')
    assert lines == [b'* METADATA "" (/private/vendor/mxd-test/theme "dark")'], lines
    lines, done = _raw(b, "GETMETADATA (MAXSIZE 5) INBOX (/private/color /shared/comment)")
    assert lines == [] and b"[METADATA LONGENTRIES 13]" in done, (lines, done)
    # RFC 9590 LIST-METADATA: the entries with the LIST response.
    lines, done = _raw(b, 'LIST "" INBOX RETURN (METADATA (/private/color))')
    assert lines[-1] == b'* METADATA INBOX (/private/color "#ff0000")', lines
    b.logout()
    other = _imaps(srv, srv.user2, srv.password2)
    lines, _ = _raw(other, "GETMETADATA INBOX /private/color")
    assert lines == [b"* METADATA INBOX (/private/color NIL)"], lines
    other.logout()


PREVIEW_MSGS = [PLAIN, HTML, ALTERNATIVE, ONLY_ATTACHMENT, b"From: a\r\n\r\n" + b"word " * 100,
                b"From: a\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n"
                + base64.b64encode("Grüße aus Köln — bis bald\r\n".encode()) + b"\r\n"]


def test_preview_of_smtp_delivery(mxd_server_module: MxdServer) -> None:
    """A message delivered over SMTP, fetched at once: PREVIEW (LAZY) answers its
    preview (not NIL), although the store computes its values a moment after the
    delivery (the fetch computes it meanwhile); HTML stripped, the plain alternative
    preferred."""
    srv = mxd_server_module
    msg = (b"From: sender@remote.test\r\nTo: " + srv.user.encode() + b"\r\n"
           b"Subject: preview over smtp\r\n" + ALTERNATIVE.split(b"\r\n", 1)[1])
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], local_hostname="client.test",
                      timeout=10) as smtp:
        smtp.sendmail("sender@remote.test", [srv.user], msg)
    c = _imaps(srv)
    assert b" PREVIEW" in c.capability()[1][0]
    c.select("INBOX")
    typ, data = c.uid("SEARCH", None, "SUBJECT", '"preview over smtp"')
    uid = data[0].split()[-1].decode()
    lines, done = _raw(c, f"UID FETCH {uid} (PREVIEW (LAZY))")
    assert lines[0].endswith(b"PREVIEW {19}\r\nplain version \xc3\xa9t\xc3\xa9)"), lines
    c.logout()


def test_preview_same_as_dovecot(mxd_server_module: MxdServer, dovecot: int,
                                 tls_files: dict[str, Path]) -> None:
    """The same messages appended to Dovecot 2.3 and to mxd: FETCH PREVIEW answers are
    equal octet for octet (plain, HTML with style/script/comments, alternative with a QP
    Latin-1 part, attachment only, a long body cut at 200 characters, base64 UTF-8)."""
    ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    dc = imaplib.IMAP4_SSL("127.0.0.1", dovecot, ssl_context=ctx, timeout=10)
    dc.login(DOVECOT_USER, DOVECOT_PASSWORD)
    mc = _imaps(mxd_server_module)
    answers = []
    for c in (dc, mc):
        c.create("PreviewBox")
        for m in PREVIEW_MSGS:
            c.append("PreviewBox", None, None, m)
        c.select("PreviewBox")
        lines, done = _raw(c, "FETCH 1:* (PREVIEW)")
        assert b" OK " in done, done
        answers.append(lines)
        c.logout()
    assert answers[1] == answers[0]


class RawIMAP:
    """A client that reads the server's lines itself (imaplib cannot wait for a line
    with a deadline): for the session that listens for notifications."""

    def __init__(self, srv: MxdServer) -> None:
        ctx = ssl.create_default_context(cafile=str(srv.ca_file))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.ports["imaps"]),
                                                             timeout=10),
                                    server_hostname="localhost")
        self.buf = b""
        self.n = 0
        assert self.line(10.0) is not None
        self.cmd(f"LOGIN {srv.user} {srv.password}")

    def line(self, within: float) -> bytes | None:
        deadline = time.monotonic() + within
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self.sock.pending() and not select.select([self.sock], [], [], left)[0]:
                return None
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def cmd(self, text: str) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = f"n{self.n}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines: list[bytes] = []
        while True:
            ln = self.line(10.0)
            assert ln is not None, f"no reply to {text!r}"
            if ln.startswith(tag + b" "):
                return lines, ln
            lines.append(ln)

    def wait(self, pattern: bytes, within: float) -> float:
        """Seconds until an unsolicited line matching ``pattern`` arrived."""
        t0 = time.monotonic()
        while True:
            ln = self.line(within - (time.monotonic() - t0))
            assert ln is not None, f"no {pattern!r} within {within} s"
            if re.search(pattern, ln):
                return time.monotonic() - t0


def _watch(srv: MxdServer, a: RawIMAP) -> RunQueueWatch:
    assert srv.proc is not None
    return watch_session(srv.proc.pid, a.sock, srv.ports["imaps"])


def _notified(a: RawIMAP, watch: RunQueueWatch, pattern: bytes, bound: float) -> bool:
    """Does ``a`` get an unsolicited line matching ``pattern`` within ``bound`` seconds
    from now, not counting the watched waits for a CPU (30 s at most in all)?"""
    t0 = time.monotonic()
    took = a.wait(pattern, 30.0)
    return within(watch, t0, t0 + took, bound)


def test_notify_smtp_delivery_and_flags(mxd_server_module: MxdServer) -> None:
    """A NOTIFY session (no command running) sees a message delivered over SMTP to its
    INBOX as STATUS within a second (RFC 5465 §5.2, INBOXES), a message appended by
    another session to its selected mailbox as EXISTS + FETCH (§5.2), that session's
    flag change as FETCH (§5.1) and its new mailbox as LIST (§5.4)."""
    srv = mxd_server_module
    a = RawIMAP(srv)
    lines, _ = a.cmd("CAPABILITY")
    assert b" NOTIFY" in lines[0] and b" INPROGRESS" in lines[0]
    a.cmd("SELECT Sent")
    _, done = a.cmd("NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange)) "
                    "(INBOXES (MessageNew MessageExpunge)) (PERSONAL (MailboxName))")
    assert done.endswith(b"OK NOTIFY completed"), done
    # Each bound leaves out the time the session's process and this thread waited for
    # a CPU (RunQueueWatch): it is the server's, not that of a machine busy with tests.
    watch = _watch(srv, a)
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], local_hostname="client.test",
                      timeout=10) as smtp:
        smtp.sendmail("sender@remote.test", [srv.user],
                      b"From: sender@remote.test\r\nSubject: notify me\r\n\r\nhello\r\n")
    # The 250 means stored; the notice follows without any command from the client.
    assert _notified(a, watch, rb"^\* STATUS INBOX \(MESSAGES \d+ UIDNEXT \d+ UNSEEN \d+\)",
                     1.0)
    b = _imaps(srv)
    watch = _watch(srv, a)
    b.append("Sent", None, None, b"Subject: sent copy\r\n\r\nx\r\n")
    assert _notified(a, watch, rb"^\* \d+ FETCH \(UID \d+ FLAGS \(", 1.0)
    b.select("Sent")
    watch = _watch(srv, a)
    b.store("1", "+FLAGS", "\\Flagged")
    assert _notified(a, watch, rb"^\* 1 FETCH \(FLAGS \(.*\\Flagged", 1.0)
    watch = _watch(srv, a)
    b.create("NotifyNew")
    # Maybe made in another worker process: then seen by the once-a-second comparison.
    assert _notified(a, watch, rb'^\* LIST \(\) "/" "?NotifyNew', 2.5)
    b.logout()
    _, done = a.cmd("NOTIFY NONE")
    assert done.endswith(b"OK NOTIFY completed")
    a.cmd("LOGOUT")


METADATA_STEPS = [
    'SETMETADATA INBOX (/private/comment "My own comment" /shared/comment "x")',
    "GETMETADATA INBOX (/shared/comment /private/comment)",
    "GETMETADATA (MAXSIZE 5) INBOX (/shared/comment /private/comment)",
    "GETMETADATA INBOX /private/nothing",
    "GETMETADATA INBOX (/private/nothing /private/comment)",
    'SETMETADATA INBOX (/private/filters/values/small "S" /private/filters/values/big "B" '
    '/private/filters/values/big/x "deep")',
    "GETMETADATA (DEPTH 1) INBOX (/private/filters/values)",
    "GETMETADATA (DEPTH infinity) INBOX (/private/filters)",
    "GETMETADATA (DEPTH infinity) INBOX (/private)",
    "SETMETADATA INBOX (/private/comment NIL)",
    "GETMETADATA INBOX /private/comment",
    'SETMETADATA INBOX (/Private/Color "red")',
    "GETMETADATA INBOX /PRIVATE/COLOR",
    'SETMETADATA Nope (/private/a "1")',
    'SETMETADATA INBOX (/other/x "v")',
    'SETMETADATA INBOX (/private//x "v")',
    "GETMETADATA INBOX /private/*",
    'GETMETADATA "" /shared/comment',
]
_VALUE = re.compile(rb'(/\S+) (NIL|"(?:[^"\\]|\\.)*"|\{(\d+)\}\r\n)')


def _metadata(lines: list[bytes]) -> list[tuple[bytes, dict[bytes, bytes | None]]]:
    """METADATA responses as (mailbox, {entry: value}): quoting, literals and entry order
    are the server's choice (RFC 5464 §4.4.1 gives no order)."""
    out = []
    for ln in lines:
        m = re.match(rb'\* METADATA ("[^"]*"|\S+) \((.*)\)$', ln, re.S)
        assert m, ln
        box = m.group(1).strip(b'"')
        body, entries, pos = m.group(2), {}, 0
        while pos < len(body):
            v = _VALUE.match(body, pos)
            assert v, body[pos:]
            if v.group(3) is not None:
                n = int(v.group(3))
                entries[v.group(1)] = body[v.end():v.end() + n]
                pos = v.end() + n + 1
            else:
                raw = v.group(2)
                entries[v.group(1)] = None if raw == b"NIL" else raw[1:-1].replace(b'\\"', b'"')
                pos = v.end() + 1
        out.append((box, entries))
    return out


def test_metadata_same_as_dovecot(mxd_server_module: MxdServer, dovecot: int,
                                  tls_files: dict[str, Path]) -> None:
    """The same METADATA commands to Dovecot 2.3 (imap_metadata with a file dictionary)
    and to mxd: the same status, the same LONGENTRIES, the same entries and values.
    Choices the RFC leaves: Dovecot sends every value as a literal and lists DEPTH
    results in its own order (compared as sets here); it keeps server /shared entries
    for the administrator (NO [CANNOT]) where mxd keeps them per account, so only reading
    one is compared; it refuses options after the mailbox (BAD), which mxd also takes
    (RFC 5464's own examples put them there)."""
    ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    dc = imaplib.IMAP4_SSL("127.0.0.1", dovecot, ssl_context=ctx, timeout=10)
    dc.login(DOVECOT_USER, DOVECOT_PASSWORD)
    mc = _imaps(mxd_server_module, mxd_server_module.user2, mxd_server_module.password2)
    for step in METADATA_STEPS:
        (dl, dt), (ml, mt) = _raw(dc, step), _raw(mc, step)
        dstat, mstat = dt.split(b" ")[1], mt.split(b" ")[1]
        assert dstat == mstat, (step, dt, mt)
        dcode = re.search(rb"\[METADATA [^\]]*\]", dt)
        mcode = re.search(rb"\[METADATA [^\]]*\]", mt)
        assert (dcode and dcode.group()) == (mcode and mcode.group()), (step, dt, mt)
        assert _metadata(dl) == _metadata(ml), (step, dl, ml)
    dc.logout()
    mc.logout()
