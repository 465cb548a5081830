"""METADATA (RFC 5464), PREVIEW (RFC 8970) and NOTIFY (RFC 5465) against `twistd mxd` with
Python's imaplib sending raw commands, mail delivered over SMTP with smtplib."""

from __future__ import annotations

import base64
import imaplib
import smtplib
import ssl
from pathlib import Path

import pytest

from tests.imap.test_preview import ALTERNATIVE, HTML, ONLY_ATTACHMENT, PLAIN
from tests.integration.mxdserver import MxdServer
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
    """A message delivered over SMTP has its preview stored at delivery: PREVIEW (LAZY)
    answers it (not NIL), HTML stripped, the plain alternative preferred."""
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
