"""Search extensions differential test: the same generated mailboxes are appended to
Dovecot 2.3 and to ``twistd mxd`` and their answers compared item by item for ESEARCH
(RFC 4731), CONTEXT=SEARCH PARTIAL and UPDATE notifications (RFC 5267 §4), WITHIN
(RFC 5032), SAVEDATE (RFC 8514), MULTISEARCH (RFC 7377) and the IMAP4rev2 answers
(RFC 9051).

Where the two may differ and why:
- Dovecot 2.3 has neither MULTISEARCH nor IMAP4rev2: mxd's ``ESEARCH IN (...)`` is
  compared with Dovecot's ``UID SEARCH`` of each mailbox, and mxd's rev2 answers with
  Dovecot's rev1 answers to the same question (``SEARCH`` in rev2 is ``SEARCH RETURN
  (ALL)``, STATUS DELETED is the count of ``SEARCH DELETED``, FLAGS without \\Recent).
- RFC 9394's ranges from the end (``PARTIAL -1:-10``) are newer than Dovecot 2.3, which
  refuses them with BAD; mxd answers them (checked against the positive range that
  names the same messages).
- Save dates are the moment each server stored the message, so FETCH SAVEDATE values
  are compared for being present and within the run, not for the second.
- The TAG of an ESEARCH response carries the command's tag; both clients send the same
  tags in the same order, so lines compare whole.
- STATUS items come in the order asked for from mxd and in Dovecot's own order; their
  values are compared.

``MXD_SEARCH_DIFF_MESSAGES`` sets the size of the main mailbox (default 120; the long
form is 10000, the generator of the SORT/THREAD differential test: reply threads, odd
subjects, RFC 2047 non-ASCII names).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.test_imap_vs_dovecot import DOVECOT_PASSWORD, DOVECOT_USER
from tests.integration.test_imap_vs_dovecot import dovecot as dovecot
from tests.integration.test_sort_thread_vs_dovecot import Client, make_mailbox

pytestmark = pytest.mark.integration

N = int(os.environ.get("MXD_SEARCH_DIFF_MESSAGES", "120"))
FLAG_STEPS = ["STORE 1:* +FLAGS (\\Seen)", "STORE 3:40 -FLAGS (\\Seen)",
              "STORE 5:60:7 +FLAGS (\\Flagged)", "STORE 2,9,30:33 +FLAGS (\\Deleted)"]

# (command, what the answer is compared on)
ESEARCH_COMMANDS = [
    "SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT plan",
    "UID SEARCH RETURN (ALL) OR FROM bob SUBJECT Budget",
    "SEARCH RETURN (COUNT ALL) UNSEEN",
    "UID SEARCH RETURN (MIN MAX COUNT) FLAGGED NOT DELETED",
    "SEARCH RETURN () SENTSINCE 10-Feb-2024",
    "SEARCH RETURN (ALL) UID 5:50 FLAGGED",
    "UID SEARCH RETURN (PARTIAL 1:10) ALL",
    "SEARCH RETURN (PARTIAL 5:25 COUNT) SUBJECT Re",
    f"UID SEARCH RETURN (PARTIAL {N - 20}:{N + 80}) ALL",
    f"SEARCH RETURN (PARTIAL {N + 10}:{N + 11}) ALL",
    "UID SEARCH RETURN (PARTIAL 3:7 MIN MAX) UNSEEN",
    "UID SEARCH RETURN (COUNT) NOT DELETED",
    "SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 UNSEEN",
]


def _esearch(answer: bytes) -> list[bytes]:
    return [ln for ln in answer.split(b"\r\n") if ln.startswith(b"* ESEARCH")]


def _fill(c: Client, box: str, msgs: list[tuple[str, bytes]]) -> None:
    assert b" OK" in c.cmd(f"CREATE {box}".encode()).rsplit(b"\r\n", 2)[-2]
    for internal, m in msgs:
        r = c.cmd(f'APPEND {box} () "{internal}" '.encode(), m)
        assert b" OK" in r.rsplit(b"\r\n", 2)[-2], r


def _recent_box(now: datetime) -> list[tuple[str, bytes]]:
    """Messages with internal dates 1 hour + k * 10 hours back, for WITHIN."""
    out = []
    for k in range(12):
        when = now - timedelta(hours=1 + 10 * k)
        internal = when.strftime("%d-%b-%Y %H:%M:%S +0000")
        out.append((internal, b"Subject: w%d\r\nFrom: a@example.test\r\n\r\nwithin\r\n" % k))
    return out


def _run(c: Client, now: datetime) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    _fill(c, "esdiff", make_mailbox(N, seed=7))
    _fill(c, "esdiff2", make_mailbox(30, seed=8))
    _fill(c, "within", _recent_box(now))
    c.cmd(b"SELECT esdiff")
    for step in FLAG_STEPS:
        c.cmd(step.encode())
    for cmd in ESEARCH_COMMANDS:
        out[cmd] = c.cmd(cmd.encode())
    out["status"] = c.cmd(b"STATUS esdiff (MESSAGES SIZE UNSEEN)")
    out["deleted"] = c.cmd(b"SEARCH RETURN (COUNT) DELETED")
    # WITHIN (RFC 5032): thresholds half way between two messages' ages.
    c.cmd(b"SELECT within")
    for secs in (3600 * 6, 3600 * 26, 3600 * 56, 3600 * 200):
        out[f"YOUNGER {secs}"] = c.cmd(f"UID SEARCH YOUNGER {secs}".encode())
        out[f"OLDER {secs}"] = c.cmd(f"UID SEARCH OLDER {secs}".encode())
    # SAVEDATE (RFC 8514): the copies are saved now, whatever their internal date.
    out["copy"] = c.cmd(b"UID COPY 1:3 within")
    out["savedate"] = c.cmd(b"UID FETCH 1:* (UID SAVEDATE)")
    today = now.strftime("%d-%b-%Y")
    tomorrow = (now + timedelta(days=1)).strftime("%d-%b-%Y")
    for key in (f"SAVEDON {today}", f"SAVEDBEFORE {tomorrow}", f"SAVEDSINCE {tomorrow}",
                f"SAVEDSINCE {today} BEFORE {today}", "SAVEDATESUPPORTED"):
        out[key] = c.cmd(f"UID SEARCH {key}".encode())
    return out


def _numbers(answer: bytes, word: bytes = b"SEARCH") -> list[int]:
    for ln in answer.split(b"\r\n"):
        if ln.startswith(b"* " + word):
            return [int(x) for x in ln.split()[2:]]
    raise AssertionError(answer)


def test_search_extensions_match_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    """ESEARCH, PARTIAL, WITHIN and SAVEDATE answers are the same, item by item."""
    srv = mxd_server_module
    now = datetime.now(UTC).replace(microsecond=0)
    d = Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    m = Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    try:
        dov = _run(d, now)
        mxd = _run(m, now)
    finally:
        d.close()
        m.close()
    diffs = []
    for cmd in ESEARCH_COMMANDS:
        if _esearch(dov[cmd]) != _esearch(mxd[cmd]) or not _esearch(mxd[cmd]):
            diffs.append(f"{cmd}: dovecot {_esearch(dov[cmd])!r} mxd {_esearch(mxd[cmd])!r}")
    assert not diffs, "\n".join(diffs)
    # STATUS items: the same values (the order of items and the quoting of the name are
    # the server's; Dovecot writes its own order, mxd the order asked in).
    assert _status_items(dov["status"]) == _status_items(mxd["status"])
    assert _esearch(dov["deleted"]) == _esearch(mxd["deleted"])
    for secs in (3600 * 6, 3600 * 26, 3600 * 56, 3600 * 200):
        for k in (f"YOUNGER {secs}", f"OLDER {secs}"):
            assert _numbers(dov[k]) == _numbers(mxd[k]), (k, dov[k], mxd[k])
    assert _numbers(mxd["YOUNGER 93600"]) == [1, 2, 3]  # 1, 11 and 21 hours old
    # SAVEDATE: present for every message, today, on both.
    for answer in (dov["savedate"], mxd["savedate"]):
        dates = re.findall(rb'SAVEDATE "([^"]+)"', answer)
        assert len(dates) == 15, answer
        for text in dates:
            saved = datetime.strptime(text.decode(), "%d-%b-%Y %H:%M:%S %z")
            assert abs((saved - now).total_seconds()) < 600, answer
    for key in (k for k in dov if k.startswith("SAVED")):
        assert _numbers(dov[key]) == _numbers(mxd[key]), (key, dov[key], mxd[key])
    assert _numbers(mxd[f"SAVEDON {now:%d-%b-%Y}"]) == list(range(1, 16))


def test_partial_from_the_end_names_the_same_messages(dovecot: int,
                                                       mxd_server_module: MxdServer) -> None:
    """RFC 9394 ranges from the end: Dovecot 2.3 refuses them (BAD); mxd's answer names
    the messages that Dovecot names for the same window counted from the start."""
    srv = mxd_server_module
    d = Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    m = Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    try:
        for c in (d, m):
            _fill(c, "partial9394", make_mailbox(40, seed=9))
            c.cmd(b"SELECT partial9394")
        assert b" BAD " in d.cmd(b"UID SEARCH RETURN (PARTIAL -1:-10) ALL")
        count = _esearch(d.cmd(b"UID SEARCH RETURN (COUNT) SUBJECT Re"))[0].split()[-1]
        n = int(count)
        first = _esearch(d.cmd(f"UID SEARCH RETURN (PARTIAL {n - 9}:{n}) SUBJECT Re".encode()))
        last = _esearch(m.cmd(b"UID SEARCH RETURN (PARTIAL -1:-10) SUBJECT Re"))
        assert first[0].split(b" PARTIAL (")[1].split()[1] == last[0].split(b" PARTIAL (")[1].split()[1]
    finally:
        d.close()
        m.close()


def test_context_updates_match_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    """CONTEXT=SEARCH (RFC 5267 §4.3): after another session appends, flags and
    expunges, the ADDTO/REMOVEFROM notifications name the same messages."""
    srv = mxd_server_module
    conns = {
        "dovecot": (Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD),
                    Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)),
        "mxd": (Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password),
                Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)),
    }
    got: dict[str, list[list[bytes]]] = {}
    try:
        for name, (watcher, other) in conns.items():
            _fill(other, "ctxdiff", make_mailbox(10, seed=10))
            watcher.cmd(b"SELECT ctxdiff")
            other.cmd(b"SELECT ctxdiff")
            answers = [_esearch(watcher.cmd(b"UID SEARCH RETURN (UPDATE) UNSEEN")),
                       _esearch(watcher.cmd(b"SEARCH RETURN (UPDATE COUNT) FROM alice"))]
            steps = [b"UID STORE 2:4 +FLAGS (\\Seen)", b"UID STORE 3 -FLAGS (\\Seen)",
                     b"UID STORE 5,6 +FLAGS (\\Deleted)", b"EXPUNGE"]
            for step in steps:
                other.cmd(step)
                answers.append(sorted(_esearch(watcher.cmd(b"NOOP"))))
            for i, (_, msg) in enumerate(make_mailbox(3, seed=11)):
                other.cmd(b'APPEND ctxdiff () "01-Mar-2024 10:00:00 +0000" ', msg)
                answers.append(sorted(_esearch(watcher.cmd(b"NOOP"))))
                del i
            watcher.cmd(b'CANCELUPDATE "t3"')
            other.cmd(b"UID STORE 1:* -FLAGS (\\Seen)")
            answers.append(sorted(_esearch(watcher.cmd(b"NOOP"))))
            got[name] = answers
    finally:
        for a, b in conns.values():
            a.close()
            b.close()
    assert got["dovecot"] == got["mxd"], "\n".join(
        f"{i}: dovecot {x!r} mxd {y!r}" for i, (x, y) in
        enumerate(zip(got["dovecot"], got["mxd"], strict=True)) if x != y)
    assert any(b"ADDTO" in ln for step in got["mxd"] for ln in step)
    assert any(b"REMOVEFROM" in ln for step in got["mxd"] for ln in step)


def test_multisearch_matches_dovecot_per_mailbox(dovecot: int,
                                                 mxd_server_module: MxdServer) -> None:
    """MULTISEARCH (RFC 7377; not in Dovecot 2.3): mxd's ESEARCH IN (mailboxes ...)
    names, per mailbox, the UIDs that Dovecot's UID SEARCH of that mailbox names."""
    srv = mxd_server_module
    d = Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    m = Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    boxes = ["multi1", "multi2", "multi2/sub"]  # Dovecot's separator here is "."
    try:
        for i, box in enumerate(boxes):
            _fill(d, box.replace("/", "."), make_mailbox(25, seed=20 + i))
            _fill(m, box, make_mailbox(25, seed=20 + i))
        assert b"MULTISEARCH" not in d.cmd(b"CAPABILITY")
        for key in ("SUBJECT plan", "OR FROM bob TO alice", "LARGER 300", "SUBJECT zzznothing"):
            want = {}
            for box in boxes:
                d.cmd(f"EXAMINE {box.replace('/', '.')}".encode())
                want[box] = _numbers(d.cmd(f"UID SEARCH {key}".encode()))
            lines = _esearch(m.cmd(f"ESEARCH IN (mailboxes multi1 subtree multi2) RETURN (ALL) {key}"
                                   .encode()))
            have: dict[str, list[int]] = {box: [] for box in boxes}
            for ln in lines:
                mm = re.match(rb'\* ESEARCH \(TAG "\w+" MAILBOX "?([^" ]+)"? UIDVALIDITY \d+\) UID'
                              rb"(?: ALL ([0-9:,]+))?$", ln)
                assert mm is not None, ln
                have[mm.group(1).decode()] = _expand(mm.group(2) or b"")
            assert have == want, (key, have, want)
    finally:
        d.close()
        m.close()


def test_rev2_answers_match_dovecot_rev1(dovecot: int, mxd_server_module: MxdServer) -> None:
    """mxd in IMAP4rev2 against Dovecot 2.3 in IMAP4rev1 (it has no rev2): the same
    messages, counts and flags, in rev2's forms (RFC 9051 Appendix E)."""
    srv = mxd_server_module
    d = Client(dovecot, srv.ca_file, DOVECOT_USER, DOVECOT_PASSWORD)
    m = Client(srv.ports["imaps"], srv.ca_file, srv.user, srv.password)
    try:
        for c in (d, m):
            _fill(c, "rev2diff", make_mailbox(30, seed=30))
        assert b"* ENABLED IMAP4rev2" in m.cmd(b"ENABLE IMAP4rev2")
        d.cmd(b"NOOP")  # the same tags from here on
        dsel, msel = d.cmd(b"SELECT rev2diff"), m.cmd(b"SELECT rev2diff")
        assert b"RECENT" in dsel and b"RECENT" not in msel and b"UNSEEN" not in msel
        assert re.findall(rb"\* (\d+) EXISTS", dsel) == re.findall(rb"\* (\d+) EXISTS", msel)
        assert re.findall(rb"UIDNEXT (\d+)", dsel) == re.findall(rb"UIDNEXT (\d+)", msel)
        assert b'* LIST (\\HasNoChildren) "/" "rev2diff"\r\n' in msel, msel.decode()
        for c in (d, m):
            c.cmd(b"STORE 1:10 +FLAGS (\\Seen)")
            c.cmd(b"STORE 4:6 +FLAGS (\\Deleted)")
        for key in ("ALL", "UNSEEN", "SUBJECT plan", "DELETED"):
            want = _esearch(d.cmd(f"SEARCH RETURN (ALL) {key}".encode()))
            have = _esearch(m.cmd(f"SEARCH {key}".encode()))
            assert [w.split(b") ", 1)[-1] for w in want] == [h.split(b") ", 1)[-1] for h in have]
        dflags = re.findall(rb"\* \d+ FETCH \(FLAGS \(([^)]*)\)\)", d.cmd(b"FETCH 1:* (FLAGS)"))
        mflags = re.findall(rb"\* \d+ FETCH \(FLAGS \(([^)]*)\)\)", m.cmd(b"FETCH 1:* (FLAGS)"))
        strip = [b" ".join(f for f in x.split() if f != b"\\Recent") for x in dflags]
        assert strip == mflags and not any(b"\\Recent" in x for x in mflags)
        dsize = re.search(rb"SIZE (\d+)", d.cmd(b"STATUS rev2diff (SIZE)"))
        mstat = m.cmd(b"STATUS rev2diff (SIZE DELETED)")
        assert dsize is not None and re.search(rb"SIZE (\d+)", mstat).group(1) == dsize.group(1)  # type: ignore[union-attr]
        ddel = _esearch(d.cmd(b"SEARCH RETURN (COUNT) DELETED"))[0].split()[-1]
        assert re.search(rb"DELETED (\d+)", mstat).group(1) == ddel  # type: ignore[union-attr]
    finally:
        d.close()
        m.close()


def _status_items(answer: bytes) -> dict[bytes, int]:
    m = re.search(rb"\* STATUS \S+ \(([^)]*)\)", answer)
    assert m is not None, answer
    words = m.group(1).split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def _expand(s: bytes) -> list[int]:
    out: list[int] = []
    for part in s.split(b","):
        if not part:
            continue
        a, _, b = part.partition(b":")
        out.extend(range(int(a), int(b or a) + 1))
    return out




def test_closed_response_matches_dovecot(dovecot: int, mxd_server_module: MxdServer) -> None:
    """RFC 7162 §3.2.11 (and RFC 9051 §7.1 for rev2): a SELECT that closes the selected
    mailbox first answers OK [CLOSED]; required with QRESYNC, and both servers send it
    without QRESYNC too."""
    srv = mxd_server_module
    answers: dict[str, list[bytes]] = {}
    for name, port, user, pw in (("dovecot", dovecot, DOVECOT_USER, DOVECOT_PASSWORD),
                                 ("mxd", srv.ports["imaps"], srv.user, srv.password)):
        plain, qr = (Client(port, srv.ca_file, user, pw) for _ in range(2))
        try:
            qr.cmd(b"ENABLE QRESYNC")
            out = []
            for c in (plain, qr):
                c.cmd(b"SELECT INBOX")
                out.append(c.cmd(b"EXAMINE INBOX").split(b"\r\n", 1)[0])
            answers[name] = out
        finally:
            plain.close()
            qr.close()
    d, m = answers["dovecot"], answers["mxd"]
    assert all(a.startswith(b"* OK [CLOSED]") for a in d + m), (d, m)
