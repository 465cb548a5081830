"""twistd mxd: the derived values of mail delivered over SMTP (IMAP's ENVELOPE, SORT
and SEARCH texts, PREVIEW) are stored shortly after the delivery, once the store is
quiet (mxd.store.derived.Later); an IMAP client asking before that gets the same
answers, computed from the message."""

from __future__ import annotations

import imaplib
import smtplib
import sqlite3
import ssl
import time
from pathlib import Path

import pytest

from mxd.imap import preview, summary
from tests.integration.mxdserver import MxdServer, make_server

pytestmark = pytest.mark.integration

KINDS = (*summary.KINDS, preview.KIND)


def _deliver(server: MxdServer, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        for i in range(n):
            s.sendmail("sender@remote.example", [server.user],
                       (f"From: Sender {i:03d} <sender@remote.example>\r\nTo: {server.user}\r\n"
                        f"Subject: note {i:03d}\r\n\r\nhello number {i}\r\n").encode())


def _stored_kinds(data_dir: Path) -> int:
    with sqlite3.connect(f"file:{data_dir / 'mxd.sqlite3'}?mode=ro", uri=True) as c:
        return int(c.execute("SELECT count(*) FROM blob_data WHERE kind IN (?, ?, ?, ?)",
                             KINDS).fetchone()[0])


def test_values_follow_the_delivery_and_readers_never_miss_them(
        tmp_path: Path, tls_files: dict[str, Path]) -> None:
    server = make_server(tmp_path, tls_files, extra_config='[server]\nworkers = 1\n')
    server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx,
                                 timeout=30)
        imap.login(server.user, server.password)
        imap.select("INBOX")
        # A first SEARCH and SORT of the mailbox, so that the server's cache of stored
        # values has a place for it before the new mail comes.
        assert imap.search(None, "SUBJECT", "note")[1] == [b""]
        _deliver(server, 20)
        imap.noop()
        # At once: every answer is there, stored values or not.
        typ, data = imap.fetch("1:20", "(ENVELOPE PREVIEW)")
        assert typ == "OK"
        envelopes = [d[0] if isinstance(d, tuple) else d for d in data if d != b")"]
        assert len([e for e in envelopes if b"ENVELOPE" in e]) == 20
        for i in range(20):
            assert any(f'"note {i:03d}"'.encode() in e for e in envelopes), i
        assert imap.search(None, "SUBJECT", '"note 007"')[1] == [b"8"]
        assert imap.search(None, "FROM", '"Sender 011"')[1] == [b"12"]
        # The values are stored shortly after, once the store is quiet.
        deadline = time.monotonic() + 15
        while _stored_kinds(server.data_dir) < 20 * len(KINDS):
            assert time.monotonic() < deadline, _stored_kinds(server.data_dir)
            time.sleep(0.05)
        # The same answers from the stored values, also from the cache that saw the
        # mailbox before they were stored.
        assert imap.search(None, "SUBJECT", '"note 007"')[1] == [b"8"]
        assert imap.search(None, "FROM", '"Sender 011"')[1] == [b"12"]
        typ, data = imap.uid("SORT", "(REVERSE SUBJECT)", "UTF-8", "ALL")
        assert typ == "OK" and data[0].split()[:3] == [b"20", b"19", b"18"]
        imap.logout()
    finally:
        server.stop()
