"""COMPRESS=DEFLATE (RFC 4978) against ``twistd mxd``: Python imaplib with a raw-DEFLATE
wrapper over TLS (FETCH, and an IDLE push that decompresses as soon as it arrives), and
mbsync (isync 1.4 turns COMPRESS on by itself when offered)."""

from __future__ import annotations

import imaplib
import re
import ssl
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.test_imap_vs_dovecot import DOVECOT_PASSWORD, DOVECOT_USER, dovecot
from tests.integration.tools import require_tool

pytestmark = pytest.mark.integration
__all__ = ["dovecot"]

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))  # imaplib does not know it

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\n%s\r\n"


class DeflateIMAP(imaplib.IMAP4_SSL):
    """imaplib over TLS with COMPRESS=DEFLATE: raw DEFLATE, sync-flushed per command."""

    raw_in = 0
    plain_in = 0

    def compress(self) -> None:
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        self._comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._decomp = zlib.decompressobj(-15)
        self._plain = b""
        self._on = True

    _on = False

    def send(self, data: bytes) -> None:
        if self._on:
            data = self._comp.compress(data) + self._comp.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def fill(self) -> int:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("connection closed")
        plain = self._decomp.decompress(chunk)
        self.raw_in += len(chunk)
        self.plain_in += len(plain)
        self._plain += plain
        return len(plain)

    def read(self, size: int) -> bytes:
        if not self._on:
            return super().read(size)
        while len(self._plain) < size:
            self.fill()
        out, self._plain = self._plain[:size], self._plain[size:]
        return out

    def readline(self) -> bytes:
        if not self._on:
            return super().readline()
        while b"\n" not in self._plain:
            self.fill()
        i = self._plain.index(b"\n") + 1
        out, self._plain = self._plain[:i], self._plain[i:]
        return out


def _ctx(srv: MxdServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(srv.ca_file))


def test_imaplib_compressed_fetch_over_tls(mxd_server_module: MxdServer) -> None:
    srv = mxd_server_module
    c = DeflateIMAP("127.0.0.1", srv.ports["imaps"], ssl_context=_ctx(srv), timeout=15)
    c.login(srv.user, srv.password)
    typ, caps = c.capability()
    assert b"COMPRESS=DEFLATE" in caps[0].split()
    c.compress()
    body = b"All work and no play makes Jack a dull boy.\r\n" * 2000
    c.create("zbox")
    typ, _ = c.append("zbox", None, None, MSG % (b"big", body))
    assert typ == "OK"
    c.select("zbox")
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == MSG % (b"big", body)
    assert c.plain_in > 5 * c.raw_in, (c.plain_in, c.raw_in)  # it was compressed
    c.logout()


def test_idle_push_arrives_decompressible_at_once(mxd_server_module: MxdServer) -> None:
    """While one compressed TLS session idles, another appends: the first recv() after
    it decompresses, alone, to the complete EXISTS line (a sync flush per write)."""
    srv = mxd_server_module
    a = DeflateIMAP("127.0.0.1", srv.ports["imaps"], ssl_context=_ctx(srv), timeout=15)
    a.login(srv.user, srv.password)
    a.compress()
    a.create("idlebox")
    a.select("idlebox")
    a.send(b"i1 IDLE\r\n")
    assert a.readline().startswith(b"+ ")
    b = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=_ctx(srv), timeout=15)
    b.login(srv.user, srv.password)
    started = time.monotonic()
    b.append("idlebox", None, None, MSG % (b"pushed", b"x"))
    a.sock.settimeout(10)
    got = b""
    while b"EXISTS\r\n" not in got:
        a.fill()  # each recv decompresses to whole lines
        got, a._plain = a._plain, b""
    assert re.search(rb"^\* 1 EXISTS\r\n", got, re.M), got
    assert time.monotonic() - started < 10
    a.send(b"DONE\r\n")
    assert a.readline().startswith(b"i1 OK")
    b.logout()
    a.logout()


def test_mbsync_with_compress(mxd_server_module: MxdServer, tmp_path: Path) -> None:
    """mbsync (isync 1.4.4) sends COMPRESS DEFLATE when offered and syncs through it."""
    mbsync = require_tool("mbsync")
    srv = mxd_server_module
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=_ctx(srv), timeout=15)
    c.login(srv.user2, srv.password2)
    c.create("zsync")
    for i in range(20):
        c.append("zsync", None, None, MSG % (b"z-%d" % i, b"line\r\n" * 500))
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    cfg = tmp_path / "mbsyncrc"
    cfg.write_text(f"""IMAPAccount mxd
Host localhost
Port {srv.ports['imaps']}
User {srv.user2}
Pass {srv.password2}
SSLType IMAPS
CertificateFile {srv.ca_file}

IMAPStore remote
Account mxd

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel z
Far :remote:
Near :local:
Patterns zsync
Create Both
SyncState *
""")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([mbsync, "-Dn", "-c", str(cfg), "-a"], capture_output=True, text=True,
                       timeout=120, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert re.search(r"COMPRESS DEFLATE", out), out[-3000:]
    files = list((maildir / "zsync" / "new").iterdir()) + list((maildir / "zsync" / "cur").iterdir())
    assert len(files) == 20
    assert any(b"Subject: z-7\r\n" in f.read_bytes() or b"Subject: z-7\n" in f.read_bytes()
               for f in files)
    # And back: a local message reaches the server through the compressed session.
    (maildir / "zsync" / "new" / "1700000000.1_1.local").write_bytes(MSG % (b"z-up", b"y"))
    p = subprocess.run([mbsync, "-c", str(cfg), "-a"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    c.select("zsync")
    typ, data = c.search(None, "SUBJECT", "z-up")
    assert typ == "OK" and len(data[0].split()) == 1
    c.logout()


def _compress_transcript(port: int, ca: Path, user: str, password: str) -> list[bytes]:
    """Statuses of COMPRESS before login, with a bad mechanism, the real one, and once
    more inside the compressed session."""
    ctx = ssl.create_default_context(cafile=str(ca))
    c = DeflateIMAP("127.0.0.1", port, ssl_context=ctx, timeout=15)
    out = []
    for tag, data in ((b"p1", b"COMPRESS DEFLATE"),):
        c.send(tag + b" " + data + b"\r\n")
        out.append(c.readline())
    c.login(user, password)
    c.send(b"p2 COMPRESS BOGUS\r\n")
    out.append(c.readline())
    c.compress()
    for tag, data in ((b"p3", b"COMPRESS DEFLATE"), (b"p4", b"NOOP")):
        c.send(tag + b" " + data + b"\r\n")
        while not (line := c.readline()).startswith(tag):
            pass
        out.append(line)
    c.logout()
    return out


def test_compress_answers_as_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    """Dovecot 2.3 with imap_zlib and mxd alike: BAD before login (COMPRESS is a
    command-auth, RFC 4978 §5), OK and then a working compressed session.  Where the RFC
    decides otherwise than Dovecot: RFC 4978 §3 lists BAD for "invalid or unknown
    argument, or COMPRESS already active"; Dovecot answers NO to both, mxd BAD."""
    srv = mxd_server_module
    dov = _compress_transcript(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    mxd = _compress_transcript(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    status = [[x.split(b" ")[1] for x in t] for t in (dov, mxd)]
    assert status[0] == [b"BAD", b"NO", b"NO", b"OK"], dov
    assert status[1] == [b"BAD", b"BAD", b"BAD", b"OK"], mxd
