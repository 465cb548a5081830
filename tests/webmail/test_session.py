"""Webmail login, sessions, CSRF and Host checks through the real Site in memory."""

from __future__ import annotations

import pytest

from mxd.admin import auth
from tests.webmail.world import ALICE, PASSWORD, World


@pytest.fixture
def world() -> World:
    return World()


def test_login_sets_strict_httponly_cookie_and_shows_mailboxes(world: World) -> None:
    """A right password starts a session in an HttpOnly SameSite=Strict cookie (not
    Secure over plain loopback HTTP) and the mailbox list shows under it."""
    code, hdrs, _ = world.request("POST", "/login",
                                  body=f"address={ALICE}&password={PASSWORD}".encode())
    assert code == 302 and hdrs["location"].endswith("/")
    cookie = hdrs["set-cookie"]
    assert cookie.startswith("mxd_webmail=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Secure" not in cookie
    code, hdrs, body = world.request("GET", "/", cookie=cookie.split(";")[0])
    assert code == 200
    assert b"INBOX" in body and b"Trash" in body and ALICE.encode() in body
    csp = hdrs["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    assert hdrs["x-content-type-options"] == "nosniff"
    assert hdrs["cache-control"] == "no-store"


def test_wrong_password_refused_and_limited_per_account_and_ip(world: World) -> None:
    """Wrong passwords get 403 and then 429 from the SASL limiter, which also refuses
    the right password meanwhile; another client IP for the same account is limited
    too (the account key), while the IP key alone limits a guesser of many names."""
    codes = [world.login(password="wrong")[0] for _ in range(12)]
    assert codes[0] == 403 and codes[-1] == 429, codes
    assert world.login()[0] == 429  # even the right password, while limited
    world.clock.advance(24 * 3600)
    assert world.login()[0] == 302


def test_other_ip_still_logs_in_when_one_ip_is_limited(world: World) -> None:
    """A guesser of many names on one IP is limited by its IP; the account's owner on
    another IP is not."""
    codes = [world.login(address=f"u{i}@example.test", password="x", peer="127.0.0.7")[0]
             for i in range(40)]
    assert codes[-1] == 429, codes
    assert world.login(peer="127.0.0.2")[0] == 302


def test_plain_http_login_from_afar_refused_unchecked(world: World) -> None:
    """Credentials over plain HTTP from a non-loopback peer are refused without a check
    (a webmail listener off loopback is HTTPS only; this is the second line)."""
    assert world.login(peer="192.0.2.7")[0] == 403
    assert world.lookups == []


def test_forged_and_expired_sessions_are_refused(world: World) -> None:
    """A made-up cookie redirects GETs to /login and gets 401 on POSTs; a session ends
    after the idle time and after logout."""
    forged = "mxd_webmail=" + "A" * 43
    code, hdrs, _ = world.request("GET", "/", cookie=forged)
    assert code == 302 and hdrs["location"].endswith("/login")
    assert world.request("POST", "/logout", cookie=forged, body=b"csrf=x")[0] == 401
    _, cookie = world.login()
    assert world.request("GET", "/", cookie=cookie)[0] == 200
    world.clock.advance(601)
    assert world.request("GET", "/", cookie=cookie)[0] == 302
    _, cookie = world.login()
    csrf = world.csrf(cookie)
    code, hdrs, _ = world.request("POST", "/logout", cookie=cookie, body=f"csrf={csrf}".encode())
    assert code == 302 and "Max-Age=0" in hdrs["set-cookie"]
    assert world.request("GET", "/", cookie=cookie)[0] == 302


def test_post_without_or_with_wrong_csrf_or_origin_refused(world: World) -> None:
    """Every POST needs the session's CSRF token and, when Origin is sent, this origin;
    another session's token does not do."""
    _, cookie = world.login()
    _, other = world.login()
    theirs = world.csrf(other)
    assert world.request("POST", "/logout", cookie=cookie)[0] == 403
    assert world.request("POST", "/logout", cookie=cookie, body=f"csrf={theirs}".encode())[0] == 403
    mine = world.csrf(cookie)
    assert world.request("POST", "/logout", cookie=cookie, body=f"csrf={mine}".encode(),
                         headers={"Origin": "http://evil.example"})[0] == 403
    assert world.request("POST", "/login", body=b"address=a&password=b",
                         headers={"Origin": "http://evil.example"})[0] == 403
    assert world.request("GET", "/", cookie=cookie)[0] == 200  # still logged in


def test_rebinding_host_refused(world: World) -> None:
    """A request naming another host (DNS rebinding) is refused before the login."""
    assert world.request("GET", "/login", host="evil.example:8081")[0] == 421
    assert world.request("GET", "/login", host=None)[0] == 400
    assert world.request("GET", "/login", host="mail.example.test")[0] == 200


def test_session_account_and_end_account() -> None:
    """Sessions carry their account; ending an account's sessions keeps the one named."""
    from twisted.internet.task import Clock

    s = auth.Sessions(Clock())
    a, b, c = s.create("a"), s.create("a"), s.create("b")
    assert s.end_account("a", keep=b.sid) == 1
    assert s.get(a.sid) is None and s.get(b.sid) is b and s.get(c.sid) is c
    assert b.account == "a"


def test_hostile_address_escaped_on_the_login_page(world: World) -> None:
    """The address typed at a failed login comes back escaped."""
    code, _, body = world.request("POST", "/login",
                                  body=b"address=%22%3E%3Cscript%3Ex%3C%2Fscript%3E&password=p")
    assert code == 403
    assert b"<script>" not in body and b"&quot;&gt;&lt;script&gt;" in body


def test_deleted_account_ends_its_session(world: World) -> None:
    """When the account is deleted while logged in, the next page ends the session and
    sends the browser to the login."""
    _, cookie = world.login()
    world.store.delete_account(ALICE)
    code, hdrs, _ = world.request("GET", "/", cookie=cookie)
    assert code == 303 and hdrs["location"] == "/login" and "Max-Age=0" in hdrs["set-cookie"]
    assert world.request("GET", "/", cookie=cookie)[0] == 302  # no session any more
