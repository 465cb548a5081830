"""IMAP extensions against `twistd mxd` with real clients: imapclient's ``sort()`` and
``thread()`` (RFC 5256 SORT and THREAD, RFC 5957 SORT=DISPLAY) and Python imaplib for
ESORT (RFC 5267) and UNSELECT (RFC 3691)."""

from __future__ import annotations

import imaplib
import ssl
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.tools import require_module

pytestmark = pytest.mark.integration

MSGS = [
    b"From: Zoe <b@example.test>\r\nTo: x@example.test\r\nSubject: Re: [list] banana\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\none\r\n",
    b"From: a@example.test\r\nTo: x@example.test\r\nSubject: =?utf-8?q?=C3=84pfel?=\r\n"
    b"Date: Wed, 03 Jan 2024 10:00:00 +0000\r\n\r\ntwo two\r\n",
    b"From: =?utf-8?q?=C3=89mile?= <c@example.test>\r\nTo: x@example.test\r\n"
    b"Subject: apple\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\n\r\nthree three three\r\n",
    b"From: d@example.test\r\nTo: x@example.test\r\nSubject: Fwd: Banana (fwd)\r\n"
    b"Date: Tue, 02 Jan 2024 09:00:00 +0100\r\n\r\nfour\r\n",
]


def _client(srv: MxdServer, box: str) -> Any:
    imapclient = require_module("imapclient")
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    c = imapclient.IMAPClient("127.0.0.1", port=srv.ports["imaps"], ssl=True, ssl_context=ctx,
                              timeout=10)
    c.login(srv.user, srv.password)
    if not c.folder_exists(box):
        c.create_folder(box)
        for m in MSGS:
            c.append(box, m)
    c.select_folder(box)
    return c


def test_imapclient_sort(mxd_server_module: MxdServer) -> None:
    """imapclient sees SORT advertised and its sort() answers in RFC 5256 order: base
    subjects with i;unicode-casemap, ties in UID order, REVERSE DATE in UTC, DISPLAYFROM."""
    c = _client(mxd_server_module, "SortBox")
    try:
        assert c.has_capability("SORT") and c.has_capability("SORT=DISPLAY")
        uids = c.search("ALL")
        u1, u2, u3, u4 = uids
        # "apple" < "Äpfel" (A + U+0308 follows AP), "banana" == "Banana" (tie: UID order)
        assert c.sort(["SUBJECT"]) == [u3, u2, u1, u4]
        assert c.sort(["SUBJECT", "REVERSE DATE"]) == [u3, u2, u4, u1]
        assert c.sort(["REVERSE DATE"]) == [u2, u3, u4, u1]  # 4 is 08:00 UTC on Jan 2
        assert c.sort(["DISPLAYFROM"]) == [u2, u4, u3, u1]  # a@, d@, Émile, Zoe
        assert c.sort(["FROM"]) == [u2, u1, u3, u4]
        assert c.sort(["SIZE"], ["NOT", "FROM", "zoe"]) == [u4, u2, u3]
        assert c.sort(["ARRIVAL"], "SUBJECT banana") == [u1, u4]
    finally:
        c.logout()


def test_imaplib_raw_sort_and_unselect(mxd_server_module: MxdServer) -> None:
    """imaplib's sort() and a raw UNSELECT: RFC 3691 leaves \\Deleted messages in place."""
    _client(mxd_server_module, "SortBox2").logout()
    ctx = ssl.create_default_context(cafile=str(mxd_server_module.ca_file))
    c = imaplib.IMAP4_SSL("127.0.0.1", mxd_server_module.ports["imaps"], ssl_context=ctx, timeout=10)
    c.login(mxd_server_module.user, mxd_server_module.password)
    c.select("SortBox2")
    typ, data = c.sort("(REVERSE SUBJECT)", "UTF-8", "ALL")
    assert typ == "OK" and data == [b"1 4 2 3"]  # the tie stays in mailbox order
    # ESORT (RFC 5267) as a raw command: the ESEARCH answer in sort order.
    typ, data = c._simple_command("SORT", "RETURN", "(MIN MAX ALL COUNT)", "(REVERSE SIZE)", "UTF-8", "ALL")
    assert typ == "OK", data
    typ, data = c._untagged_response(typ, data, "ESEARCH")
    assert data[-1].decode().endswith(" MIN 3 MAX 4 ALL 3,2,1,4 COUNT 4"), data
    c.store("1:*", "+FLAGS", "\\Deleted")
    typ, data = c.unselect()
    assert typ == "OK", data
    typ, data = c.select("SortBox2")
    assert typ == "OK" and data == [b"4"]
    c.logout()


THREAD_MSGS = [
    b"Message-ID: <t1@example.test>\r\nSubject: plan\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n1\r\n",
    b"Message-ID: <t2@example.test>\r\nReferences: <t1@example.test>\r\nSubject: Re: plan\r\n"
    b"Date: Mon, 01 Jan 2024 11:00:00 +0000\r\n\r\n2\r\n",
    b"Message-ID: <t3@example.test>\r\nSubject: =?utf-8?q?=C3=BCber?=\r\n"
    b"Date: Mon, 01 Jan 2024 10:30:00 +0000\r\n\r\n3\r\n",
    b"Message-ID: <t4@example.test>\r\nIn-Reply-To: <t2@example.test>\r\nSubject: Re: Re: plan\r\n"
    b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n\r\n4\r\n",
    b"Message-ID: <t5@example.test>\r\nSubject: Re: plan\r\nDate: Mon, 01 Jan 2024 13:00:00 +0000\r\n\r\n5\r\n",
]


def test_imapclient_thread(mxd_server_module: MxdServer) -> None:
    """imapclient sees THREAD=REFERENCES and THREAD=ORDEREDSUBJECT and parses the
    nested answers of its thread(): by References/In-Reply-To, and a reply without
    references gathered under its subject's original (RFC 5256 REFERENCES step 6)."""
    imapclient = require_module("imapclient")
    ctx = ssl.create_default_context(cafile=str(mxd_server_module.ca_file))
    c = imapclient.IMAPClient("127.0.0.1", port=mxd_server_module.ports["imaps"], ssl=True,
                              ssl_context=ctx, timeout=10)
    c.login(mxd_server_module.user, mxd_server_module.password)
    try:
        if not c.folder_exists("ThreadBox"):
            c.create_folder("ThreadBox")
            for m in THREAD_MSGS:
                c.append("ThreadBox", m)
        c.select_folder("ThreadBox")
        assert c.has_capability("THREAD=REFERENCES") and c.has_capability("THREAD=ORDEREDSUBJECT")
        u1, u2, u3, u4, u5 = c.search("ALL")
        assert c.thread("REFERENCES") == ((u1, (u2, u4), (u5,)), (u3,))
        assert c.thread("ORDEREDSUBJECT") == ((u1, (u2,), (u4,), (u5,)), (u3,))
        assert c.thread("REFERENCES", ["SUBJECT", "plan"]) == ((u1, (u2, u4), (u5,)),)
    finally:
        c.logout()


def test_imaplib_searchres(mxd_server_module: MxdServer) -> None:
    """RFC 5182 with imaplib raw commands: SEARCH RETURN (SAVE), then FETCH $ and
    UID SEARCH UID $ name the saved messages."""
    _client(mxd_server_module, "ResBox").logout()
    ctx = ssl.create_default_context(cafile=str(mxd_server_module.ca_file))
    c = imaplib.IMAP4_SSL("127.0.0.1", mxd_server_module.ports["imaps"], ssl_context=ctx, timeout=10)
    c.login(mxd_server_module.user, mxd_server_module.password)
    assert "SEARCHRES" in c.capabilities or "SEARCHRES" in c.capability()[1][0].decode()
    c.select("ResBox")
    typ, data = c._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "banana")
    assert typ == "OK", data
    assert "ESEARCH" not in c.untagged_responses and "SEARCH" not in c.untagged_responses
    typ, data = c.fetch("$", "(UID)")
    assert typ == "OK" and [d.split(b" ")[0] for d in data] == [b"1", b"4"], data
    typ, data = c.uid("SEARCH", "UID", "$")
    assert typ == "OK" and len(data[0].split()) == 2, data
    c.logout()
