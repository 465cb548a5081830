"""``mxd store migrate`` on a real installation: a twistd mxd on the SQLite store gets mail,
flags, an expunge and a copy over SMTP and IMAP; then, stopped, its store moves to
PostgreSQL (the tests' private cluster) and back to a new SQLite data directory.  What an
IMAP client sees (imaplib: every mailbox's UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, and
``UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ BODY.PEEK[])``) is the same
byte for byte on all three."""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import VENV_BIN, MxdServer, make_server
from tests.integration.pglab import PGCluster

pytestmark = pytest.mark.integration


def _imap(server: MxdServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    m.login(MxdServer.user2, MxdServer.password2)
    return m


def _view(server: MxdServer) -> dict[str, Any]:
    """Everything an IMAP client of bob sees, as raw responses."""
    m = _imap(server)
    out: dict[str, Any] = {}
    try:
        typ, boxes = m.list()
        assert typ == "OK"
        out["LIST"] = sorted(boxes)
        for line in boxes:
            name = line.decode().rsplit(' "/" ', 1)[1].strip('"')
            typ, status = m.status(f'"{name}"', "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
            assert typ == "OK", status
            typ, data = m.select(f'"{name}"', readonly=True)
            assert typ == "OK"
            if int(data[0]):
                typ, fetched = m.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE "
                                     "MODSEQ BODY.PEEK[])")
                assert typ == "OK"
            else:
                fetched = []
            # \Recent belongs to the session that saw the message first (RFC 3501
            # §2.3.2), not to the store: left out of the comparison.
            out[name] = (status, [_no_recent(x) for x in fetched])
            m.close()
    finally:
        m.logout()
    return out


def _no_recent(item: Any) -> Any:
    if isinstance(item, tuple):
        return (item[0].replace(b" \\Recent", b"").replace(b"\\Recent ", b""), item[1])
    return item


def _fill(server: MxdServer) -> None:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(MxdServer.user, MxdServer.password)
        for i in range(6):
            s.sendmail(MxdServer.user, [MxdServer.user2],
                       f"From: {MxdServer.user}\r\nTo: {MxdServer.user2}\r\nSubject: m{i}\r\n"
                       f"Message-ID: <m{i}@example.test>\r\n\r\nbody {i}\r\n")
    m = _imap(server)
    try:
        m.select("INBOX")
        m.uid("STORE", "1,3", "+FLAGS", r"(\Seen $Work)")
        m.uid("STORE", "2", "+FLAGS", r"(\Flagged)")
        m.uid("STORE", "4", "+FLAGS", r"(\Deleted)")
        m.expunge()
        m.create("Work/2026")
        m.uid("COPY", "1:2", "Work/2026")
        m.uid("STORE", "5", "+FLAGS", r"(\Answered)")
    finally:
        m.logout()


def _migrate(server: MxdServer, *args: str) -> str:
    import subprocess

    r = subprocess.run([str(VENV_BIN / "mxd"), "store", "migrate", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _pg_config(dsn: str, blobs: Path) -> str:
    return f'\n[store]\nbackend = "postgresql"\ndsn = "{dsn}"\nblob_dir = "{blobs}"\n'


def test_migrate_to_postgresql_and_back_keeps_what_imap_shows(
        tmp_path: Path, tls_files: dict[str, Path], pg_cluster: PGCluster) -> None:
    base = tmp_path / "one"
    base.mkdir()
    server = make_server(base, tls_files)
    server.start()
    try:
        _fill(server)
        before = _view(server)
    finally:
        server.stop()
    inbox_status = before["INBOX"][0][0].decode()
    assert re.search(r"MESSAGES 5 UIDNEXT 7", inbox_status), inbox_status
    assert len([x for x in before["Work/2026"][1] if isinstance(x, tuple)]) == 2

    dsn = pg_cluster.create_database("migrate")
    blobs = tmp_path / "blobs"
    out = _migrate(server, "--from", f"sqlite:{server.data_dir}", "--to",
                   f"postgresql:{dsn}", "--blob-dir", str(blobs))
    assert "verified" in out
    # A second run into the now full database changes nothing and says why.
    import subprocess

    again = subprocess.run([str(VENV_BIN / "mxd"), "store", "migrate", "--from",
                            f"sqlite:{server.data_dir}", "--to", f"postgresql:{dsn}",
                            "--blob-dir", str(blobs)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 1 and "not empty" in again.stderr

    server.extra_config = _pg_config(dsn, blobs)
    server.write_config()
    server.start()
    try:
        on_pg = _view(server)
    finally:
        server.stop()
    assert on_pg == before

    base2 = tmp_path / "two"
    base2.mkdir()
    back = MxdServer(base2, tls_files)
    _migrate(back, "--from", f"postgresql:{dsn}", "--to", f"sqlite:{back.data_dir}",
             "--blob-dir", str(blobs))
    back.start()
    try:
        on_sqlite = _view(back)
    finally:
        back.stop()
    assert on_sqlite == before
