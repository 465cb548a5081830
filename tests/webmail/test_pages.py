"""Webmail pages over a MemoryStore: message list paging and search, message view (plain
text escaped, HTML in a sandboxed frame with its own CSP, attachments as downloads),
flags/delete/move through the store, settings (password change, TLS results)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest
from twisted.internet.defer import succeed

from mxd.store.queuedb import DomainTLS
from tests.webmail.world import ALICE, PASSWORD, World


def plain(subject: str, text: str = "hello", sender: str = "Bob <bob@remote.example>") -> bytes:
    return (f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n\r\n"
            f"{text}\r\n").encode()


HOSTILE_HTML = (
    b"From: mallory@evil.example\r\nTo: alice@example.test\r\nSubject: hostile\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: multipart/alternative; boundary=A\r\n\r\n"
    b"--A\r\nContent-Type: text/plain\r\n\r\nplain <b>version</b>\r\n"
    b"--A\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Hi</p><script>alert(1)</script><img src=\"http://127.0.0.1:9/track.png\" "
    b"onerror=\"alert(2)\"><form action=http://evil.example><input name=pw></form>"
    b"<img src=\"cid:logo@x\">\r\n--A--\r\n"
    b"--B\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
    b"--B\r\nContent-Type: text/html; name=\"evil.html\"\r\n"
    b"Content-Disposition: attachment; filename=\"../ev\\\"il\r\n .html\"\r\n\r\n"
    b"<script>alert(3)</script>\r\n--B--\r\n")


@pytest.fixture
def world() -> World:
    return World()


def logged_in(world: World) -> str:
    code, cookie = world.login()
    assert code == 302
    return cookie


def test_message_list_pages_newest_first(world: World) -> None:
    """Page size 3: 7 messages make pages of 3, 3, 1, newest first, with links."""
    for i in range(7):
        world.deliver(plain(f"msg{i}"))
    cookie = logged_in(world)
    _, _, p0 = world.request("GET", "/messages?mailbox=INBOX", cookie=cookie)
    assert re.findall(rb">(msg\d)<", p0) == [b"msg6", b"msg5", b"msg4"]
    assert b"page=1" in p0 and b"rel=prev" not in p0
    _, _, p2 = world.request("GET", "/messages?mailbox=INBOX&page=2", cookie=cookie)
    assert re.findall(rb">(msg\d)<", p2) == [b"msg0"] and b"rel=next" not in p2
    assert b"7 messages, 7 unseen" in p0


def test_message_list_reads_only_the_page_headers(world: World) -> None:
    """Listing a mailbox of many messages reads the headers of one page only."""
    for i in range(60):
        world.deliver(plain(f"m{i}"))
    reads: list[str] = []
    orig = world.store.read_blob_head

    def counting(blob_id: str, n: int) -> bytes:
        reads.append(blob_id)
        return orig(blob_id, n)

    world.store.read_blob_head = counting  # type: ignore[method-assign]
    cookie = logged_in(world)
    assert world.request("GET", "/messages?mailbox=INBOX", cookie=cookie)[0] == 200
    assert len(set(reads)) == 3


def test_search_uses_imap_search_and_stops_with_the_page(world: World) -> None:
    """The search box: words (TEXT), from:, subject:, is:unseen; evaluated on the reactor
    (no thread hop but the shown page's headers), message by message newest first, and
    it stops once it has one hit more than the page shows."""
    for i in range(450):
        world.deliver(plain(f"s{i}", text="needle" if i % 2 else "hay"))
    world.deliver(plain("from carol", sender="Carol <carol@other.example>"))
    hops: list[int] = []
    run = world.ctx.run_blocking

    def counting(f: Any) -> Any:
        hops.append(1)
        return run(f)

    opened: list[str] = []
    orig = world.store.open_blob

    def opening(blob_id: str) -> Any:
        opened.append(blob_id)
        return orig(blob_id)

    world.ctx.run_blocking = counting
    world.store.open_blob = opening  # type: ignore[method-assign]
    cookie = logged_in(world)
    _, _, page = world.request("GET", "/messages?mailbox=INBOX&q=needle", cookie=cookie)
    assert re.findall(rb">(s\d+)<", page) == [b"s449", b"s447", b"s445"]
    assert len(hops) == 1  # the shown page's headers
    # carol's message, s449 .. s443: the fourth hit (s443) says there is a next page.
    assert len(opened) == 8 and b"rel=next" in page
    _, _, page = world.request("GET", "/messages?mailbox=INBOX&q=from%3Acarol", cookie=cookie)
    assert re.findall(rb">(from carol|s\d+)<", page) == [b"from carol"]
    _, _, page = world.request(
        "GET", "/messages?mailbox=INBOX&q=" + urllib.parse.quote('subject:"s44" is:unseen'),
        cookie=cookie)
    assert re.findall(rb">(s\d+)<", page) == [b"s449", b"s448", b"s447"]


def test_plain_text_view_escapes_and_marks_seen(world: World) -> None:
    """A plain-text message shows escaped, with Reply/Forward links to compose, and is
    \\Seen afterwards (as IMAP sees it)."""
    uid = world.deliver(plain("<b>subj</b>", text="<script>alert(1)</script> https://x.example/a"))
    cookie = logged_in(world)
    code, hdrs, page = world.request("GET", f"/message?mailbox=INBOX&uid={uid}", cookie=cookie)
    assert code == 200
    assert b"<script>" not in page and b"&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert b"&lt;b&gt;subj&lt;/b&gt;" in page
    assert f'href="/compose?reply=INBOX/{uid}"'.encode() in page
    assert f'href="/compose?forward=INBOX/{uid}"'.encode() in page
    assert b'href="https://x.example/a"' in page
    mbox = world.store.get_mailbox(world.account.id, "INBOX").result
    assert "\\Seen" in world.store.list_messages(mbox.id).result[0].flags


def test_html_view_frames_sanitised_body_under_its_own_csp(world: World) -> None:
    """HTML goes into a sandboxed iframe (no allow-scripts); the frame's document is
    sanitised (no script, no form, remote image blocked, cid: image inlined) and served
    with a CSP that allows no script and images from data: only; "load remote content"
    lets the remote image through under a CSP that allows it."""
    uid = world.deliver(HOSTILE_HTML)
    cookie = logged_in(world)
    _, _, page = world.request("GET", f"/message?mailbox=INBOX&uid={uid}", cookie=cookie)
    frame = re.search(rb"<iframe[^>]*>", page)
    assert frame is not None
    assert b'sandbox="allow-popups allow-popups-to-escape-sandbox"' in frame.group(0)
    assert b"allow-scripts" not in page and b"allow-same-origin" not in page
    assert b"1 remote image(s) blocked" in page and b"remote=1" in page
    code, hdrs, doc = world.request("GET", f"/message/body?mailbox=INBOX&uid={uid}",
                                    cookie=cookie)
    assert code == 200
    csp = hdrs["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src data:;" in csp and "script-src" not in csp
    assert "sandbox" in csp
    assert hdrs["x-frame-options"] == "SAMEORIGIN"
    assert b"<script" not in doc and b"onerror" not in doc and b"<form" not in doc
    assert b"127.0.0.1:9" not in doc and b"<p>Hi</p>" in doc
    assert b'src="data:image/png;base64,iVBORw0KGgo="' in doc
    _, hdrs, doc = world.request("GET", f"/message/body?mailbox=INBOX&uid={uid}&remote=1",
                                 cookie=cookie)
    assert b'src="http://127.0.0.1:9/track.png"' in doc
    assert "img-src data: https: http:;" in hdrs["content-security-policy"]
    assert b"<script" not in doc
    _, _, text = world.request("GET", f"/message?mailbox=INBOX&uid={uid}&view=text",
                               cookie=cookie)
    assert b"plain &lt;b&gt;version&lt;/b&gt;" in text and b"<iframe" not in text


def test_attachment_downloads_never_render(world: World) -> None:
    """An HTML attachment downloads as application/octet-stream, attachment, nosniff,
    with a filename stripped of path, quotes and line breaks."""
    uid = world.deliver(HOSTILE_HTML)
    cookie = logged_in(world)
    _, _, page = world.request("GET", f"/message?mailbox=INBOX&uid={uid}", cookie=cookie)
    links = re.findall(rb'href="(/message/part[^"]+)"', page)
    assert len(links) == 2  # the inline image and the HTML file
    url = links[1].decode().replace("&amp;", "&")
    code, hdrs, data = world.request("GET", url, cookie=cookie)
    assert code == 200 and data == b"<script>alert(3)</script>"
    assert hdrs["content-type"] == "application/octet-stream"
    assert hdrs["x-content-type-options"] == "nosniff"
    disp = hdrs["content-disposition"]
    assert disp.startswith("attachment; filename=\"") and "/" not in disp.split(";")[1]
    assert '\\"' not in disp and "\r" not in disp
    assert world.request("GET", re.sub(r"part=\d+", "part=9", url), cookie=cookie)[0] == 404
    assert world.request("GET", re.sub(r"part=\d+", "part=x", url), cookie=cookie)[0] == 404


def _post(world: World, cookie: str, fields: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    csrf = world.csrf(cookie)
    return world.request("POST", "/message/flags", cookie=cookie,
                         body=urllib.parse.urlencode([("csrf", csrf), *fields]).encode())


def _flags(world: World, mailbox: str) -> dict[int, frozenset[str]]:
    mbox = world.store.get_mailbox(world.account.id, mailbox).result
    return {m.uid: m.flags for m in world.store.list_messages(mbox.id).result}


def test_flags_delete_and_move_go_through_the_store(world: World) -> None:
    """Seen/unseen and flag/unflag change the stored flags; delete moves to Trash and,
    in Trash, expunges; move puts messages in the chosen mailbox; each change is
    announced to the store's subscribers (the IMAP sessions)."""
    a, b, c = (world.deliver(plain(f"f{i}")) for i in range(3))
    inbox = world.store.get_mailbox(world.account.id, "INBOX").result
    changes: list[Any] = []
    world.store.subscribe(inbox.id, changes.append)
    cookie = logged_in(world)
    code, hdrs, _ = _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(a)),
                                          ("uid", str(b)), ("op", "seen")])
    assert code == 303 and hdrs["location"] == "/messages?mailbox=INBOX"
    assert all("\\Seen" in _flags(world, "INBOX")[u] for u in (a, b))
    _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(a)), ("op", "unseen")])
    _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(a)), ("op", "flag")])
    assert _flags(world, "INBOX")[a] == frozenset({"\\Flagged"})
    _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(a)), ("op", "unflag")])
    assert _flags(world, "INBOX")[a] == frozenset()
    code, hdrs, _ = _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(b)), ("op", "delete")])
    assert code == 303 and b not in _flags(world, "INBOX")
    assert len(_flags(world, "Trash")) == 1
    _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(c)), ("op", "move"), ("to", "Archive")])
    assert list(_flags(world, "INBOX")) == [a] and len(_flags(world, "Archive")) == 1
    trash_uid = next(iter(_flags(world, "Trash")))
    _post(world, cookie, [("mailbox", "Trash"), ("uid", str(trash_uid)), ("op", "delete")])
    assert _flags(world, "Trash") == {}
    assert {ch.kind for ch in changes} >= {"flags", "expunge"}
    code, _, _ = _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(a)), ("op", "move"),
                                       ("to", "Nowhere")])
    assert code == 404 and list(_flags(world, "INBOX")) == [a]
    assert _post(world, cookie, [("mailbox", "INBOX"), ("uid", "x"), ("op", "seen")])[0] == 400
    assert _post(world, cookie, [("mailbox", "INBOX"), ("uid", str(a)), ("op", "burn")])[0] == 400


def test_flags_post_without_csrf_refused(world: World) -> None:
    """A cross-site form posting a delete without the token changes nothing."""
    uid = world.deliver(plain("keep"))
    cookie = logged_in(world)
    code, _, _ = world.request("POST", "/message/flags", cookie=cookie,
                               body=f"mailbox=INBOX&uid={uid}&op=delete".encode())
    assert code == 403 and uid in _flags(world, "INBOX")


def test_unknown_mailbox_and_message_are_404(world: World) -> None:
    cookie = logged_in(world)
    assert world.request("GET", "/messages?mailbox=Nope", cookie=cookie)[0] == 404
    assert world.request("GET", "/message?mailbox=INBOX&uid=42", cookie=cookie)[0] == 404
    assert world.request("GET", "/message/body?mailbox=INBOX&uid=x", cookie=cookie)[0] == 404


def _password(world: World, cookie: str, old: str, new: str, again: str | None = None
              ) -> tuple[int, bytes]:
    csrf = world.csrf(cookie, "/settings")
    code, _, page = world.request("POST", "/settings/password", cookie=cookie,
                                  body=urllib.parse.urlencode(
                                      {"csrf": csrf, "old": old, "new": new,
                                       "again": new if again is None else again}).encode())
    return code, page


def test_password_change_needs_old_password_and_rederives_secrets(world: World) -> None:
    """A wrong old password changes nothing; a right one stores new secrets (SCRAM keys
    included) through the directory, the new password logs in, the old does not, and
    the account's other sessions end."""
    cookie = logged_in(world)
    other = logged_in(world)
    before = world.store.get_secrets(ALICE).result
    assert _password(world, cookie, "wrong", "new password 1")[0] == 403
    assert _password(world, cookie, PASSWORD, "new password 1", "different")[0] == 400
    assert _password(world, cookie, PASSWORD, "short")[0] == 400
    assert world.store.get_secrets(ALICE).result == before
    code, page = _password(world, cookie, PASSWORD, "new password 1")
    assert code == 200 and b"Password changed." in page
    after = world.store.get_secrets(ALICE).result
    assert after != before and '"SHA-256"' in after and '"scram"' in after
    assert world.request("GET", "/", cookie=cookie)[0] == 200
    assert world.request("GET", "/", cookie=other)[0] == 302
    assert world.login(password=PASSWORD)[0] == 403
    assert world.login(password="new password 1")[0] == 302


def test_tls_results_page_shows_only_this_accounts_records(world: World) -> None:
    """/settings/tls lists the TLS support records of the account's own deliveries."""
    asked: list[Any] = []

    class Queue:
        def tls_domains(self, domain: str | None = None, account: str | None = None) -> Any:
            asked.append(account)
            return succeed([DomainTLS("<remote>.example", 1_000_000.0, "mx.remote.example",
                                      "192.0.2.1", True, True, True, True, "sts", None,
                                      "TLSv1.3")])

    world.ctx.queue = Queue()
    cookie = logged_in(world)
    code, _, page = world.request("GET", "/settings/tls", cookie=cookie)
    assert code == 200 and asked == [ALICE]
    assert b"&lt;remote&gt;.example" in page and b"TLSv1.3" in page and b"<remote>" not in page


@pytest.mark.parametrize("path", ["/message?mailbox=INBOX&uid={uid}",
                                  "/message/body?mailbox=INBOX&uid={uid}",
                                  "/compose?reply=INBOX/{uid}"])
def test_one_message_is_fetched_by_its_uid(world: World, path: str) -> None:
    """The view, its frame and a reply ask the store for the one message by UID
    (get_message), never for the mailbox's whole list; a UID the mailbox lacks, or one
    out of the 32-bit range, is a 404 (the reply: a blank form), not a 500."""
    uids = [world.deliver(plain(f"m{i}")) for i in range(5)]
    listed: list[int] = []
    orig = world.store.list_messages

    def listing(mailbox_id: int, since_modseq: int = 0) -> Any:
        listed.append(mailbox_id)
        return orig(mailbox_id, since_modseq)

    world.store.list_messages = listing  # type: ignore[method-assign]
    cookie = logged_in(world)
    code, _, page = world.request("GET", path.format(uid=uids[2]), cookie=cookie)
    assert code == 200 and (b"m2" in page or "/body" in path), page[:300]
    assert listed == []
    for bad in (999, 0, 2**32, 2**64):
        code, _, _ = world.request("GET", path.format(uid=bad), cookie=cookie)
        assert code == 404, (bad, code)
    assert listed == []
