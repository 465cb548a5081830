"""The same IMAP transcript against Dovecot 2.3 and ``twistd mxd``: where the RFCs leave
room (part numbering of an enclosed message, re-encoding NUL for BODY[], ENVELOPE of
comments and source routes, announcing new keywords, HIGHESTMODSEQ on an implicit
CONDSTORE enable, ESEARCH MIN with MODSEQ, MOVE into the selected mailbox, names that are
not modified UTF-7, LIST-EXTENDED option errors), mxd answers as Dovecot does.

Dovecot runs unprivileged from a one-file config in a world-readable temp dir (its
auth and mail processes run as other users), on a free loopback port.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.tools import free_port, require_tool

DOVECOT_USER = "alice@example.test"
DOVECOT_PASSWORD = "s3cret-pass"

TOP_RFC822 = (b"Content-Type: message/rfc822\r\n\r\n"
              b"Content-Type: multipart/mixed; boundary=X\r\n\r\n"
              b"--X\r\n\r\nHello world\r\n--X--\r\n")
WITH_NUL = (b"Subject: nul\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n"
            b"--X\r\nContent-Type: text/plain\r\n\r\nhi\r\n--X\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
            b"\r\n\x00\x01\x02\xff\r\n--X--\r\n")
FOLDED = (b'Content-Type: multipart/mixed; boundary="foo\r\n bar"\r\n\r\n'
          b"--foo bar\r\nContent-Type: text/plain\r\n\r\nA\r\n--foo bar\r\n\r\nB\r\n--foo bar--\r\n")
ADDRESSES = (b"From: user@domain (Real Name)\r\nTo: <@route:u@d>\r\n"
             b"Cc: <user-from (comment)@ (comment) domain.org>\r\n\r\nx\r\n")

STEPS: list[str | tuple[bytes, bytes]] = [
    "CREATE cmpbox",
    (b"APPEND cmpbox {", TOP_RFC822), (b"APPEND cmpbox ~{", WITH_NUL),
    (b"APPEND cmpbox {", FOLDED), (b"APPEND cmpbox {", ADDRESSES),
    "EXAMINE cmpbox",
    "SELECT cmpbox",
    "FETCH 1 (BODY.PEEK[1.1])",
    "FETCH 2 (BODY.PEEK[2] BINARY.PEEK[2])",
    "FETCH 3 (BODYSTRUCTURE BODY.PEEK[1] BINARY.PEEK[2])",
    "FETCH 4 (ENVELOPE)",
    "SEARCH CC user-from@domain.org",
    "STORE 1 +FLAGS ($NewKw)",
    "STORE 1 +FLAGS (" + "k" * 300 + ")",
    "FETCH 1 (MODSEQ)",
    "SEARCH RETURN (MIN) MODSEQ 1",
    "UID MOVE 1 cmpbox",
    "CREATE &Jjo",
    'LIST (RECURSIVEMATCH) "" ""',
    'LIST (BOGUS) "" "*"',
]


@pytest.fixture(scope="module")
def dovecot(tls_files: dict[str, Path]) -> Iterator[int]:
    binary = require_tool("dovecot")
    base = Path(tempfile.mkdtemp(prefix="mxd-dovecot-"))
    base.chmod(0o755)  # the auth and mail processes run as other users
    try:
        home = base / "home" / DOVECOT_USER
        for sub in ("cur", "new", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True)
        subprocess.run(["chown", "-R", "nobody:nogroup", str(base / "home")], check=True)
        for name in ("cert", "key"):
            shutil.copyfile(tls_files[name], base / f"{name}.pem")
        (base / "passwd").write_text(f"{DOVECOT_USER}:{{PLAIN}}{DOVECOT_PASSWORD}\n")
        port = free_port()
        (base / "dovecot.conf").write_text(f"""
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {base}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
mail_attribute_dict = file:%h/dovecot-attributes
protocol imap {{
  mail_plugins = $mail_plugins imap_zlib
  imap_metadata = yes
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
""")
        proc = subprocess.Popen([binary, "-F", "-c", str(base / "dovecot.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = (base / "dovecot.log")
                        raise RuntimeError("dovecot did not start: " + (
                            log.read_text(errors="replace") if log.exists() else "")) from None
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _transcript(port: int, ca: Path, user: str, password: str) -> list[bytes]:
    """The server's answer to each step (untagged lines and the tagged one)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15),
                           server_hostname="localhost")
    buf = b""

    def until(tag: bytes) -> bytes:
        nonlocal buf
        pat = re.compile(rb"(?:^|\r\n)" + re.escape(tag) + rb" (?:OK|NO|BAD)[^\r\n]*\r\n")
        while (m := pat.search(buf)) is None:
            chunk = sock.recv(65536)
            assert chunk, buf
            buf += chunk
        out, buf = buf[:m.end()], buf[m.end():]
        return out

    try:
        while b"\r\n" not in buf:
            buf += sock.recv(65536)
        buf = buf[buf.index(b"\r\n") + 2:]
        sock.sendall(f'x LOGIN "{user}" "{password}"\r\n'.encode())
        assert b"x OK" in until(b"x")
        answers = []
        for i, step in enumerate(STEPS):
            tag = b"t%d" % i
            if isinstance(step, tuple):
                head, data = step
                sock.sendall(tag + b" " + head + b"%d+}\r\n" % len(data) + data + b"\r\n")
            else:
                sock.sendall(tag + b" " + step.encode() + b"\r\n")
            answers.append(until(tag))
        return answers
    finally:
        sock.close()


def _untagged(answer: bytes) -> list[bytes]:
    # RFC 9585 progress lines depend on how long a command took on a loaded machine.
    return [line for line in answer.split(b"\r\n")
            if line.startswith(b"* ") and not line.startswith(b"* OK [INPROGRESS")]


def _status(answer: bytes) -> bytes:
    return answer.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].split(b" ")[1]


def test_same_answers_as_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    server = mxd_server_module
    dov = _transcript(dovecot, server.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    mxd = _transcript(server.ports["imaps"], server.ca_file, server.user, server.password)
    ans = {step if isinstance(step, str) else step[0].decode() + str(i): (d, m)
           for i, (step, d, m) in enumerate(zip(STEPS, dov, mxd, strict=True))}
    # Everything both servers accept or refuse alike.
    assert [_status(d) for d in dov] == [_status(m) for m in mxd], list(zip(dov, mxd, strict=True))
    # Octet-exact FETCH answers: BODY[1.1] of a message/rfc822 message, NUL re-encoded
    # in BODY[] and decoded in BINARY[], ENVELOPE of comments and routes.
    for step in ("FETCH 1 (BODY.PEEK[1.1])", "FETCH 2 (BODY.PEEK[2] BINARY.PEEK[2])",
                 "FETCH 4 (ENVELOPE)", "SEARCH CC user-from@domain.org"):
        d, m = ans[step]
        assert _untagged(d) == _untagged(m), (step, d, m)
    # BODYSTRUCTURE with the unfolded boundary (Dovecot writes lower case).
    d, m = ans["FETCH 3 (BODYSTRUCTURE BODY.PEEK[1] BINARY.PEEK[2])"]
    assert [x.lower() for x in _untagged(d)] == [x.lower() for x in _untagged(m)], (d, m)
    # \Recent on EXAMINE right after the APPENDs.
    d, m = ans["EXAMINE cmpbox"]
    assert [x for x in _untagged(d) if x.endswith(b"RECENT")] == \
        [x for x in _untagged(m) if x.endswith(b"RECENT")] == [b"* 4 RECENT"], (d, m)
    # A new keyword: FLAGS and PERMANENTFLAGS first, then the FETCH.
    d, m = ans["STORE 1 +FLAGS ($NewKw)"]
    for a in (d, m):
        lines = _untagged(a)
        assert lines[0].startswith(b"* FLAGS (") and b"$NewKw" in lines[0], a
        assert lines[1].startswith(b"* OK [PERMANENTFLAGS (") and b"$NewKw" in lines[1], a
        assert lines[2].startswith(b"* 1 FETCH (FLAGS ("), a
    # The first implicit CONDSTORE enable: HIGHESTMODSEQ first, with the same value.
    d, m = ans["FETCH 1 (MODSEQ)"]
    assert _untagged(d) == _untagged(m), (d, m)
    assert _untagged(d)[0].startswith(b"* OK [HIGHESTMODSEQ "), d
    # ESEARCH MIN with the MIN message's modseq.
    d, m = ans["SEARCH RETURN (MIN) MODSEQ 1"]
    assert _untagged(d) == _untagged(m), (d, m)
    # MOVE into the selected mailbox: OK, COPYUID, EXPUNGE, EXISTS.
    d, m = ans["UID MOVE 1 cmpbox"]
    for a in (d, m):
        assert re.search(rb"\* OK \[COPYUID \d+ 1 5\]", a), a
        assert b"* 1 EXPUNGE\r\n" in a and b"* 4 EXISTS\r\n" in a, a
