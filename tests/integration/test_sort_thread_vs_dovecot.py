"""SORT and THREAD differential test: the same generated mailbox (reply threads, odd
subjects with list tags and reply/forward markers, RFC 2047 non-ASCII names and
subjects, dates in several zones) is appended to Dovecot 2.3 and to ``twistd mxd``, and
the answers to SORT, SORT=DISPLAY and THREAD are compared item by item.  Where the RFCs
leave a choice and the two differ, the generator leaves that case out and says so below.

``MXD_SORT_DIFF_MESSAGES`` sets the mailbox size (default 300; the long form is 10000).
"""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
from pathlib import Path

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.test_imap_vs_dovecot import DOVECOT_PASSWORD, DOVECOT_USER
from tests.integration.test_imap_vs_dovecot import dovecot as dovecot

pytestmark = pytest.mark.integration

N = int(os.environ.get("MXD_SORT_DIFF_MESSAGES", "300"))

NAMES = ["Zoë Ångström", "=?utf-8?q?=C3=89mile_Zola?=", "bob", "Ärger", "alice", "ÉLODIE",
         "=?iso-8859-1?q?J=F6rg?=", "Mallory", "eve", '"Doe, John"']
TOPICS = ["plan", "Budget 2024", "élan", "Über alles", "[list] news", "café", "zeta",
          "Straße", "  spaced   out  ", "Ωmega", "ñandú"]
# Left out: characters with only a compatibility decomposition (U+01C5 "ǅ", U+FB01 "ﬁ").
# mxd applies every UnicodeData decomposition mapping (RFC 5051 §2 step 2 names no
# exception), so "ǅemal" sorts as "DŽEMAL", before "ÉLAN"; Dovecot 2.3 leaves U+01C5
# whole and sorts it after every ASCII letter.
PREFIX = ["", "Re: ", "RE: ", "Fwd: ", "Re: [list] ", "Re[2]: ", "[fwd: ", "Fw: Re: "]
ZONES = ["+0000", "+0100", "-0500", "+0530", "-0000"]


def make_mailbox(n: int, seed: int = 20) -> list[tuple[str, bytes]]:
    """(internal date, message) pairs; Message-IDs unique, References to earlier ones."""
    rnd = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        topic = rnd.choice(TOPICS)
        pre = rnd.choice(PREFIX)
        subj = pre + topic + ("]" if pre.startswith("[fwd:") else "") + rnd.choice(["", "", " (fwd)"])
        if rnd.random() < 0.3:
            subj = "=?utf-8?q?" + "".join(f"={b:02X}" for b in subj.encode()) + "?="
        frm = rnd.choice(NAMES)
        addr = f"{rnd.choice(['u', 'x', 'k', 'a'])}{i % 17}@example.test"
        to = rnd.choice(NAMES)
        hdr = [f"From: {frm} <{addr}>", f"To: {to} <t{i % 5}@example.test>",
               f"Message-ID: <{i}.diff@example.test>"]
        if rnd.random() < 0.5:
            hdr.append(f"Cc: c{i % 7}@example.test")
        if rnd.random() < 0.9:
            day, hour, minute = 1 + rnd.randrange(28), rnd.randrange(24), rnd.randrange(60)
            hdr.append(f"Date: {['Mon', 'Tue', 'Wed'][i % 3]}, {day:02d} Feb 2024 "
                       f"{hour:02d}:{minute:02d}:00 {rnd.choice(ZONES)}")
        hdr.append(f"Subject: {subj}")
        if i and rnd.random() < 0.6:
            parent = rnd.randrange(i)
            chain = sorted({rnd.randrange(parent + 1) for _ in range(rnd.randint(0, 3))} | {parent})
            if rnd.random() < 0.15:
                chain.insert(0, 100000 + i)  # a message that is not in the mailbox
            refs = " ".join(f"<{c}.diff@example.test>" for c in chain)
            hdr.append(f"References: {refs}" if rnd.random() < 0.8 else
                       f"In-Reply-To: <{chain[-1]}.diff@example.test>")
        body = "\r\n".join(hdr) + "\r\n\r\n" + "x" * rnd.randint(1, 400) + "\r\n"
        internal = f"{1 + rnd.randrange(28):02d}-Mar-2024 {rnd.randrange(24):02d}:00:00 +0000"
        out.append((internal, body.encode()))
    return out


COMMANDS = [
    "SORT (SUBJECT) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL",
    "SORT (ARRIVAL) UTF-8 ALL",
    "SORT (FROM SIZE) UTF-8 ALL",
    "SORT (TO REVERSE ARRIVAL) UTF-8 ALL",
    "SORT (CC DATE) UTF-8 ALL",
    "SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (REVERSE DISPLAYTO SIZE) UTF-8 ALL",
    "SORT (SUBJECT DATE) UTF-8 ALL",
    "SORT (SIZE) UTF-8 SUBJECT plan",
    "THREAD ORDEREDSUBJECT UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL",
    "THREAD REFS UTF-8 ALL",  # Dovecot's own algorithm (mxd.imap.thread.refs)
]


class Client:
    def __init__(self, port: int, ca: Path, user: str, password: str) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60),
                                    server_hostname="localhost")
        self.buf = b""
        self.n = 0
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf[self.buf.index(b"\r\n") + 2:]
        assert b" OK" in self.cmd(f'LOGIN "{user}" "{password}"'.encode())

    def cmd(self, line: bytes, data: bytes | None = None) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + line + (b"{%d+}\r\n" % len(data) + data if data else b"") + b"\r\n")
        pat = re.compile(rb"(?:^|\r\n)" + tag + rb" (?:OK|NO|BAD)[^\r\n]*\r\n")
        while (m := pat.search(self.buf)) is None:
            chunk = self.sock.recv(1 << 20)
            assert chunk, self.buf[-500:]
            self.buf += chunk
        out, self.buf = self.buf[:m.end()], self.buf[m.end():]
        return out

    def close(self) -> None:
        self.sock.close()


def _answers(c: Client, box: str, msgs: list[tuple[str, bytes]]) -> dict[str, bytes]:
    assert b" OK" in c.cmd(f"CREATE {box}".encode()).rsplit(b"\r\n", 2)[-2]
    for internal, m in msgs:
        r = c.cmd(f'APPEND {box} () "{internal}" '.encode(), m)
        assert b" OK" in r.rsplit(b"\r\n", 2)[-2], r
    c.cmd(f"SELECT {box}".encode())
    out = {}
    for cmd in COMMANDS:
        r = c.cmd(cmd.encode())
        lines = [ln for ln in r.split(b"\r\n") if ln.startswith((b"* SORT", b"* THREAD"))]
        assert len(lines) == 1, (cmd, r[-300:])
        out[cmd] = lines[0]
    return out


def test_sort_and_thread_match_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    """Every SORT / THREAD answer is the same, number for number."""
    msgs = make_mailbox(N)
    srv = mxd_server_module
    d = Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    m = Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    try:
        dov = _answers(d, "sortdiff", msgs)
        mxd = _answers(m, "sortdiff", msgs)
    finally:
        d.close()
        m.close()
    diffs = {}
    for cmd in COMMANDS:
        if dov[cmd] != mxd[cmd]:
            a, b = dov[cmd].split(b" "), mxd[cmd].split(b" ")
            i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            diffs[cmd] = (b" ".join(a[max(0, i - 3):i + 6]), b" ".join(b[max(0, i - 3):i + 6]))
    assert not diffs, "\n".join(f"{k}: dovecot {v[0]!r} mxd {v[1]!r}" for k, v in diffs.items())
