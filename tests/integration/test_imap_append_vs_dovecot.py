"""MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469) against Dovecot 2.3 and ``twistd mxd``
with the same commands: the same statuses and response codes, the same APPENDUID sets
and the same catenated octets.  (Dovecot 2.3 offers neither REPLACE nor UIDONLY.)"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.test_imap_vs_dovecot import DOVECOT_PASSWORD, DOVECOT_USER, dovecot

pytestmark = pytest.mark.integration
__all__ = ["dovecot"]

SRC = (b"Subject: source\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
       b"--B\r\nContent-Type: text/plain\r\n\r\nquoted text\r\n--B\r\n"
       b"Content-Type: text/html\r\n\r\n<p>html</p>\r\n--B--\r\n")
ONE = b"Subject: one\r\n\r\nfirst\r\n"
TWO = b"Subject: two\r\n\r\nsecond\r\n"


class _Session:
    def __init__(self, port: int, ca: Path, user: str, password: str) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15),
                                    server_hostname="localhost")
        self.buf = b""
        self.n = 0
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf[self.buf.index(b"\r\n") + 2:]
        assert b" OK" in self.cmd(f'LOGIN "{user}" "{password}"'.encode())

    def cmd(self, data: bytes) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + data + b"\r\n")
        pat = re.compile(rb"(?:^|\r\n)" + tag + rb" (?:OK|NO|BAD)[^\r\n]*\r\n")
        while (m := pat.search(self.buf)) is None:
            chunk = self.sock.recv(65536)
            assert chunk, self.buf
            self.buf += chunk
        out, self.buf = self.buf[:m.end()], self.buf[m.end():]
        return out

    def close(self) -> None:
        self.sock.close()


def _lit(data: bytes) -> bytes:
    return b"{%d+}\r\n%s" % (len(data), data)


def _run(port: int, ca: Path, user: str, password: str) -> dict[str, bytes]:
    s = _Session(port, ca, user, password)
    try:
        out: dict[str, bytes] = {}
        s.cmd(b"CREATE mapp")
        out["multi"] = s.cmd(b"APPEND mapp (\\Seen) " + _lit(ONE) + b' "01-Feb-2024 10:00:00 +0000" '
                             + _lit(TWO))
        # A failing second message (empty; RFC 3502: nothing of the command is kept).
        # Not an unknown flag: Dovecot answers BAD at the flag without reading the
        # non-synchronising literal after it, and then runs that literal as commands.
        out["empty"] = s.cmd(b"APPEND mapp " + _lit(ONE) + b" " + _lit(b""))
        out["src"] = s.cmd(b"APPEND mapp " + _lit(SRC))
        v = re.search(rb"APPENDUID (\d+) ", out["src"])
        assert v, out["src"]
        base = b"/mapp;UIDVALIDITY=" + v.group(1) + b"/;UID=3"
        out["cat"] = s.cmd(b'APPEND mapp CATENATE (URL "' + base + b'/;SECTION=HEADER" TEXT '
                           + _lit(b"> ") + b' URL "' + base + b'/;SECTION=1" URL "' + base
                           + b'/;SECTION=2.MIME")')
        out["badurl"] = s.cmd(b'APPEND mapp CATENATE (TEXT ' + _lit(b"x") + b' URL "/mapp;UIDVALIDITY='
                              + v.group(1) + b'/;UID=77")')
        out["status"] = s.cmd(b"STATUS mapp (MESSAGES)")
        s.cmd(b"EXAMINE mapp")
        out["bodies"] = s.cmd(b"FETCH 1:* (FLAGS BODY.PEEK[])")
        return out
    finally:
        s.close()


def _code(answer: bytes) -> bytes:
    last = answer.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
    m = re.match(rb"\S+ (OK|NO|BAD) (?:\[([A-Z-]+))?", last)
    assert m, answer
    return m.group(1) + b" " + (m.group(2) or b"")


def test_multiappend_and_catenate_as_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    srv = mxd_server_module
    dov = _run(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    mxd = _run(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    for step in ("multi", "empty", "src", "cat", "badurl", "status"):
        assert _code(dov[step]) == _code(mxd[step]), (step, dov[step], mxd[step])
    # APPENDUID with the UID set of the two messages (RFC 4315 §3 with RFC 3502).
    assert re.search(rb"APPENDUID \d+ 1:2\]", dov["multi"]) and re.search(rb"APPENDUID \d+ 1:2\]", mxd["multi"])
    assert re.search(rb"APPENDUID \d+ 4\]", dov["cat"]) and re.search(rb"APPENDUID \d+ 4\]", mxd["cat"])
    # Nothing of a failed MULTIAPPEND or CATENATE is kept: four messages in both.
    assert b"MESSAGES 4" in dov["status"] and b"MESSAGES 4" in mxd["status"]
    # The same octets, message by message (the catenated one included).
    assert _untagged_bodies(dov["bodies"]) == _untagged_bodies(mxd["bodies"])


def _untagged_bodies(answer: bytes) -> list[bytes]:
    return [answer[m.end():m.end() + int(m.group(1))]
            for m in re.finditer(rb"BODY\[\] \{(\d+)\}\r\n", answer)]
