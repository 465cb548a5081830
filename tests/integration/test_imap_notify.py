"""METADATA (RFC 5464), PREVIEW (RFC 8970) and NOTIFY (RFC 5465) against `twistd mxd` with
Python's imaplib sending raw commands, mail delivered over SMTP with smtplib."""

from __future__ import annotations

import imaplib
import ssl

import pytest

from tests.integration.mxdserver import MxdServer

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
