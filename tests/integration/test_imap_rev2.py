"""IMAP4rev2 (RFC 9051), CONTEXT=SEARCH/SORT (RFC 5267), PARTIAL (RFC 9394), WITHIN
(RFC 5032), SAVEDATE (RFC 8514), MULTISEARCH (RFC 7377) and STATUS DELETED/SIZE against
``twistd mxd`` with real clients: imapclient's search/fetch/folder_status/enable and
Python imaplib with raw commands, each in a rev1 session and a rev2 session."""

from __future__ import annotations

import imaplib
import re
import ssl
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.tools import require_module

pytestmark = pytest.mark.integration

# imaplib runs only the commands it knows of: these two it is told of (the way its own
# docs extend it), with the states RFC 7377 §2 and RFC 5267 §4.3 allow.
imaplib.Commands.setdefault("ESEARCH", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("CANCELUPDATE", ("SELECTED",))

MSG = (b"From: a@example.test\r\nTo: x@example.test\r\nSubject: %s\r\n"
       b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nbody %s\r\n")


def _imapclient(srv: MxdServer) -> Any:
    imapclient = require_module("imapclient")
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    c = imapclient.IMAPClient("127.0.0.1", port=srv.ports["imaps"], ssl=True, ssl_context=ctx,
                              timeout=10)
    c.login(srv.user, srv.password)
    return c


def _imaplib(srv: MxdServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=ctx, timeout=10)
    c.login(srv.user, srv.password)
    return c


def _fill(c: Any, box: str, n: int, old: int = 0) -> None:
    """``n`` messages in ``box``; the first ``old`` with an internal date 30 days back."""
    if not c.folder_exists(box):
        c.create_folder(box)
    for i in range(n):
        when = datetime.now().astimezone() - timedelta(days=30 if i < old else 0)
        c.append(box, MSG % (b"m%d" % i, b"%d" % i), msg_time=when)


def _raw(c: imaplib.IMAP4, *words: str) -> tuple[str, list[bytes]]:
    """A raw command; its ESEARCH lines (imaplib keeps unknown untagged responses)."""
    typ, data = c._simple_command(*words)
    _, lines = c._untagged_response(typ, data, "ESEARCH")
    return typ, [x for x in lines if x is not None]


def test_imapclient_rev1_session(mxd_server_module: MxdServer) -> None:
    """imapclient (which does not enable IMAP4rev2): the capabilities, WITHIN, SAVEDATE
    keys and FETCH SAVEDATE, STATUS SIZE/DELETED with the rev1 SEARCH answers."""
    c = _imapclient(mxd_server_module)
    try:
        for cap in ("IMAP4REV2", "WITHIN", "SAVEDATE", "MULTISEARCH", "CONTEXT=SEARCH",
                    "CONTEXT=SORT", "ESEARCH", "STATUS=SIZE"):
            assert c.has_capability(cap), cap
        _fill(c, "Rev1Box", 4, old=2)
        c.select_folder("Rev1Box")
        uids = c.search("ALL")
        assert c.search(["YOUNGER", 86400]) == uids[2:]
        assert c.search(["OLDER", 86400 * 7]) == uids[:2]
        today = date.today()
        assert c.search(["SAVEDSINCE", today - timedelta(days=1)]) == uids
        assert c.search(["SAVEDBEFORE", today - timedelta(days=1)]) == []
        fetched = c.fetch(uids[:1], ["SAVEDATE", "INTERNALDATE"])
        # imapclient leaves the item as the date-time text (it converts only INTERNALDATE).
        from imapclient.datetime_util import parse_to_datetime

        saved = parse_to_datetime(fetched[uids[0]][b"SAVEDATE"])
        assert saved.date() >= today - timedelta(days=1)
        assert fetched[uids[0]][b"INTERNALDATE"].date() < today - timedelta(days=20)
        c.add_flags(uids[:3], [b"\\Deleted"])
        st = c.folder_status("Rev1Box", ["MESSAGES", "SIZE", "DELETED"])
        assert st[b"MESSAGES"] == 4 and st[b"DELETED"] == 3 and st[b"SIZE"] > 4 * 80
    finally:
        c.logout()


def test_imapclient_rev2_session(mxd_server_module: MxdServer) -> None:
    """imapclient's enable() of IMAP4rev2, then SELECT (with its LIST response, no
    RECENT), FETCH and STATUS as rev2 answers them."""
    c = _imapclient(mxd_server_module)
    try:
        _fill(c, "Rev2Box", 3)
        assert c.enable("IMAP4rev2") == [b"IMAP4rev2"]
        sel = c.select_folder("Rev2Box")
        assert sel[b"EXISTS"] == 3 and b"RECENT" not in sel
        fetched = c.fetch([1, 2, 3], ["FLAGS"])  # UIDs of the new mailbox
        assert len(fetched) == 3
        assert all(b"\\Recent" not in v[b"FLAGS"] for v in fetched.values())
        st = c.folder_status("Rev2Box", ["MESSAGES", "DELETED", "SIZE"])
        assert st[b"MESSAGES"] == 3 and st[b"DELETED"] == 0
    finally:
        c.logout()


@pytest.mark.parametrize("rev2", [False, True])
def test_imaplib_raw_esearch_partial_and_multisearch(mxd_server_module: MxdServer,
                                                     rev2: bool) -> None:
    """Raw SEARCH RETURN (PARTIAL), SORT RETURN (PARTIAL) and ESEARCH IN (...) in a rev1
    and in a rev2 session; in rev2 a plain SEARCH answers ESEARCH."""
    srv = mxd_server_module
    box = f"Esearch{int(rev2)}"
    ic = _imapclient(srv)
    _fill(ic, box, 6)
    ic.logout()
    c = _imaplib(srv)
    try:
        if rev2:
            typ, data = c._simple_command("ENABLE", "IMAP4rev2")
            assert typ == "OK" and c._untagged_response(typ, data, "ENABLED")[1] == [b"IMAP4rev2"]
        c.select(box)
        typ, data = c.search(None, "ALL")
        if rev2:
            # imaplib knows no ESEARCH: its SEARCH result is empty, the answer is kept.
            assert c.untagged_responses.pop("ESEARCH")[-1].endswith(b"ALL 1:6")
        else:
            assert data == [b"1 2 3 4 5 6"]
        typ, lines = _raw(c, "UID", "SEARCH", "RETURN", "(PARTIAL -1:-2 COUNT)", "ALL")
        assert typ == "OK" and re.search(rb"UID PARTIAL \(-1:-2 \d+:\d+\) COUNT 6$", lines[-1]), lines
        typ, lines = _raw(c, "SORT", "RETURN", "(PARTIAL 1:2)", "(REVERSE SUBJECT)", "UTF-8", "ALL")
        assert typ == "OK" and lines[-1].endswith(b"PARTIAL (1:2 6,5)"), lines
        typ, lines = _raw(c, "ESEARCH", "IN", f"(mailboxes {box} inboxes)", "RETURN", "(COUNT)",
                          "SUBJECT", "m3")
        assert typ == "OK" and any(
            re.match(rb'\(TAG "\w+" MAILBOX "?' + box.encode() + rb'"? UIDVALIDITY \d+\) UID COUNT 1$',
                     x) for x in lines), lines
    finally:
        c.logout()
    # UTF-8 mailbox names once UTF8=ACCEPT is enabled (imaplib then sends UTF-8).
    c = _imaplib(srv)
    try:
        assert c.enable("UTF8=ACCEPT")[0] == "OK"
        name = f"{box}/Entwürfe"
        assert c.create(f'"{name}"')[0] == "OK"
        typ, data = c.list(box + "/", "*")
        assert typ == "OK" and any(name in x.decode("utf-8") for x in data), data
    finally:
        c.logout()


def test_imaplib_raw_context_updates(mxd_server_module: MxdServer) -> None:
    """CONTEXT=SEARCH (RFC 5267 §4): a UID SEARCH RETURN (UPDATE) is kept up to date
    with ADDTO when another client appends, REMOVEFROM when it leaves the result, and
    no more after CANCELUPDATE."""
    srv = mxd_server_module
    ic = _imapclient(srv)
    _fill(ic, "CtxBox", 2)
    c = _imaplib(srv)
    try:
        c.select("CtxBox")
        typ, data = c._simple_command("UID", "SEARCH", "RETURN", "(UPDATE)", "UNSEEN")
        assert typ == "OK"
        tag = re.match(rb'\(TAG "(\w+)"\)', c._untagged_response(typ, data, "ESEARCH")[1][-1])
        assert tag is not None
        ic.append("CtxBox", MSG % (b"new", b"n"))
        c.noop()
        added = c.untagged_responses.pop("ESEARCH", [])
        assert any(x.endswith(b"UID ADDTO (0 3)") for x in added), added
        ic.select_folder("CtxBox")
        ic.add_flags([1], [b"\\Seen"])
        c.noop()
        removed = c.untagged_responses.pop("ESEARCH", [])
        assert any(x.endswith(b"UID REMOVEFROM (0 1)") for x in removed), removed
        typ, _ = c._simple_command("CANCELUPDATE", '"' + tag.group(1).decode() + '"')
        assert typ == "OK"
        ic.append("CtxBox", MSG % (b"newer", b"n"))
        c.noop()
        assert not c.untagged_responses.get("ESEARCH")
    finally:
        c.logout()
        ic.logout()
