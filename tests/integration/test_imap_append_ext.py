"""MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and REPLACE (RFC 8508) against ``twistd
mxd``: imapclient's ``multiappend()``, and Python imaplib sending the raw commands."""

from __future__ import annotations

import imaplib
import re
import ssl
from datetime import UTC, datetime

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.tools import require_module

pytestmark = pytest.mark.integration

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\nbody %s\r\n"


def _imaps(srv: MxdServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=ctx, timeout=15)
    c.login(srv.user, srv.password)
    return c


def _raw(c: imaplib.IMAP4, data: bytes) -> bytes:
    """Send a whole command (non-synchronising literals inside) and read to its tag."""
    tag = c._new_tag()  # type: ignore[attr-defined]
    c.send(tag + b" " + data + b"\r\n")
    out = b""
    while True:
        line = c.readline()
        out += line
        if line.startswith(tag + b" "):
            return out


def test_imapclient_multiappend(mxd_server_module: MxdServer) -> None:
    """imapclient's multiappend() sends three messages in one APPEND; all arrive with
    their flags and dates, with consecutive UIDs in APPENDUID."""
    require_module("imapclient")
    import imapclient

    srv = mxd_server_module
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    with imapclient.IMAPClient("127.0.0.1", port=srv.ports["imaps"], ssl_context=ctx,
                               timeout=15) as c:
        c.login(srv.user, srv.password)
        assert b"MULTIAPPEND" in c.capabilities()
        c.create_folder("multi")
        when = datetime(2024, 2, 1, 10, 0, tzinfo=UTC)
        resp = c.multiappend("multi", [
            MSG % (b"one", b"1"),
            {"msg": MSG % (b"two", b"2"), "flags": [imapclient.SEEN]},
            {"msg": MSG % (b"three", b"3"), "flags": ["$Work"], "date": when},
        ])
        typ, data = resp
        assert typ == "OK" and re.search(rb"\[APPENDUID \d+ 1:3\]", data[0]), resp
        c.select_folder("multi")
        got = c.fetch([1, 2, 3], ["FLAGS", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        subjects = [got[u][b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for u in sorted(got)]
        assert subjects == [b"Subject: one", b"Subject: two", b"Subject: three"]
        assert imapclient.SEEN in got[2][b"FLAGS"]
        assert b"$Work" in got[3][b"FLAGS"]
        assert got[3][b"INTERNALDATE"].replace(tzinfo=None) == datetime(2024, 2, 1, 10, 0)


def test_multiappend_is_atomic_over_the_wire(mxd_server_module: MxdServer) -> None:
    c = _imaps(mxd_server_module)
    try:
        c.create("atomic")
        one = MSG % (b"x", b"1")
        r = _raw(c, b"APPEND atomic {%d+}\r\n%s (\\Bogus) {%d+}\r\n%s" % (len(one), one, len(one), one))
        assert b" BAD " in r, r
        r = _raw(c, b"APPEND atomic {%d+}\r\n%s {0+}\r\n" % (len(one), one))
        assert b" NO " in r, r
        typ, data = c.status("atomic", "(MESSAGES)")
        assert b"MESSAGES 0" in data[0]
    finally:
        c.logout()


def test_catenate_and_replace_with_imaplib(mxd_server_module: MxdServer) -> None:
    """A draft is built with CATENATE from text and a part of a stored message, then
    replaced with REPLACE and UID REPLACE: one message remains, the newest."""
    c = _imaps(mxd_server_module)
    try:
        c.create("drafts2")
        src = (b"Subject: source\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
               b"--B\r\nContent-Type: text/plain\r\n\r\nquoted text\r\n--B--\r\n")
        typ, data = c.append("drafts2", None, None, src)
        m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        assert m, data
        v, uid = m.group(1), m.group(2)
        head = b"Subject: reply\r\n\r\n> "
        r = _raw(c, b'APPEND drafts2 (\\Draft) CATENATE (TEXT {%d+}\r\n%s URL "/drafts2;UIDVALIDITY=%s/;UID=%s/;SECTION=1")'
                 % (len(head), head, v, uid))
        assert re.search(rb"OK \[APPENDUID %s \d+\]" % v, r), r
        c.select("drafts2")
        typ, data = c.fetch("2", "(BODY.PEEK[])")
        assert data[0][1] == head + b"quoted text", data
        r = _raw(c, b'APPEND drafts2 CATENATE (URL "/drafts2;UIDVALIDITY=%s/;UID=99")' % v)
        assert b"NO [BADURL /drafts2;UIDVALIDITY=" in r, r
        new = b"Subject: reply v2\r\n\r\nfinal\r\n"
        r = _raw(c, b"REPLACE 2 drafts2 (\\Draft) {%d+}\r\n%s" % (len(new), new))
        assert re.search(rb"\* OK \[APPENDUID %s 3\] .*\r\n\* 3 EXISTS\r\n.*\* 2 EXPUNGE\r\n" % v,
                         r, re.S), r
        newer = b"Subject: reply v3\r\n\r\nfinal!\r\n"
        r = _raw(c, b"UID REPLACE 3 drafts2 {%d+}\r\n%s" % (len(newer), newer))
        assert b"OK UID REPLACE completed" in r, r
        typ, data = c.uid("SEARCH", "ALL")
        assert data[0].split() == [uid, b"4"]
        typ, data = c.uid("FETCH", "4", "(BODY.PEEK[])")
        assert data[0][1] == newer
    finally:
        c.logout()


def test_uidonly_with_imaplib(mxd_server_module: MxdServer) -> None:
    """ENABLE UIDONLY (RFC 9586): FETCH by number is BAD [UIDREQUIRED], UID FETCH answers
    UIDFETCH, an expunge by another session comes as VANISHED."""
    srv = mxd_server_module
    c = _imaps(srv)
    other = _imaps(srv)
    try:
        c.create("uidonly")
        for i in range(3):
            c.append("uidonly", None, None, MSG % (b"u%d" % i, b"x"))
        typ, caps = c.capability()
        assert b"UIDONLY" in caps[0].split()
        r = _raw(c, b"ENABLE UIDONLY")
        assert b"* ENABLED UIDONLY\r\n" in r, r
        c.select("uidonly")
        r = _raw(c, b"FETCH 1 (FLAGS)")
        assert re.search(rb" BAD \[UIDREQUIRED\] ", r), r
        r = _raw(c, b"UID FETCH 1:* (FLAGS)")
        assert re.findall(rb"^\* (\d+) UIDFETCH \(FLAGS ", r, re.M) == [b"1", b"2", b"3"], r
        other.select("uidonly")
        other.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
        other.expunge()
        r = _raw(c, b"NOOP")
        assert b"* VANISHED 2\r\n" in r and b"EXPUNGE" not in r, r
    finally:
        other.logout()
        c.logout()
