"""Admin web authentication: Host checks, sessions, CSRF, login limiting, local token —
driven through a real twisted.web Site over an in-memory transport."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from mxd.admin import auth
from mxd.admin.web import AdminContext, admin_site
from mxd.sasl.ratelimit import AuthLimiter
from tests.webtesting import http_request

PASSWORD = "correct horse"


class Admin:
    def __init__(self, tmp: Path, hashed: str) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        pw = tmp / "admin-password"
        auth.write_private(pw, hashed.encode())
        self.token = auth.local_token(tmp / "admin.token", create=True)
        self.limiter = AuthLimiter(self.clock)
        self.ctx = AdminContext(lambda: {"listeners": "x"}, clock=self.clock,
                                password_file=pw, token=self.token,
                                hosts=frozenset(["mail.example.org"]), limiter=self.limiter,
                                session_lifetime=3600, session_idle=600,
                                run_blocking=lambda f: succeed(f()))
        self.site = admin_site(self.ctx)

    def request(self, method: str, path: str, *, host: str | None = "127.0.0.1:8080",
                headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        return http_request(self.site, method, path, host=host, headers=headers, body=body)

    def login(self, password: str = PASSWORD) -> tuple[int, str]:
        code, hdrs, _ = self.request("POST", "/login", body=b"password=" + password.encode())
        cookie = hdrs.get("set-cookie", "")
        return code, cookie.split(";", 1)[0]

    def csrf(self, cookie: str) -> str:
        _, _, page = self.request("GET", "/", headers={"Cookie": cookie})
        return page.decode().split('name=csrf value="', 1)[1].split('"', 1)[0]


@pytest.fixture
def admin(tmp_path: Path, hashed: str) -> Admin:
    return Admin(tmp_path, hashed)


@pytest.mark.parametrize("host,loopback,ok", [
    (b"127.0.0.1:8080", True, True),
    (b"localhost", True, True),
    (b"LOCALHOST:1", True, True),
    (b"[::1]:8080", True, True),
    (b"mail.example.org", True, True),
    (b"mail.example.org.:443", False, True),
    (b"127.0.0.1:8080", False, False),
    (b"evil.example", True, False),
    (b"evil.example:8080", True, False),
    (b"localhost.evil.example", True, False),
    (b"127.0.0.1:x", True, False),
    (b"[::1]x", True, False),
    (b"", True, False),
    (None, True, False),
    (b"\xff", True, False),
])
def test_host_allowed(host, loopback, ok):
    """Only this server's names (and loopback names on a loopback listener) pass."""
    assert auth.host_allowed(host, frozenset(["mail.example.org"]), loopback) is ok


def test_password_hash_round_trip_and_bad_files(tmp_path, hashed):
    """The stored hash verifies its password only; a missing file refuses every password;
    a malformed file is an error, never a pass."""
    p = tmp_path / "pw"
    auth.write_private(p, hashed.encode())
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert auth.verify_password_file(p, PASSWORD)
    assert not auth.verify_password_file(p, PASSWORD + "x")
    assert not auth.verify_password_file(tmp_path / "missing", PASSWORD)
    for bad in ("", "scrypt$1$8$1$AA==$AA==", "bcrypt$x", "scrypt$32768$8$1$!!$AA=="):
        with pytest.raises(auth.AdminAuthError):
            auth.parse_password_hash(bad)


def test_sessions_expire_when_idle_and_at_lifetime():
    """A session ends after ``idle`` seconds without use and ``lifetime`` after login."""
    clock = Clock()
    s = auth.Sessions(clock, lifetime=100, idle=30)
    a = s.create()
    clock.advance(29)
    assert s.get(a.sid) is a
    clock.advance(29)
    assert s.get(a.sid) is a  # used: the idle time restarted
    clock.advance(30)
    assert s.get(a.sid) is None
    b = s.create()
    for _ in range(3):
        clock.advance(25)
        assert s.get(b.sid) is b
    clock.advance(26)
    assert s.get(b.sid) is None  # 101 s after login
    assert s.get("forged") is None and s.get(None) is None


def test_rebinding_host_refused(admin):
    """A request naming another host (DNS rebinding) gets 421 before anything else; no
    Host at all gets 400."""
    assert admin.request("GET", "/login", host="evil.example")[0] == 421
    code, _, _ = admin.request("POST", "/api/queue/wake", host="evil.example:8080",
                               headers={"Authorization": f"Bearer {admin.token}"})
    assert code == 421
    assert admin.request("GET", "/login", host=None)[0] == 400


def test_unauthenticated_requests_refused(admin):
    """Without a session pages redirect to the login form and the API answers 401."""
    code, hdrs, _ = admin.request("GET", "/")
    assert code == 302 and hdrs["location"].endswith("/login")
    assert admin.request("GET", "/api/queue")[0] == 401
    assert admin.request("POST", "/api/queue/wake")[0] == 401
    assert admin.request("GET", "/", headers={"Cookie": "mxd_admin=forged"})[0] == 302
    assert admin.request("GET", "/api/queue",
                         headers={"Authorization": "Bearer " + "0" * 64})[0] == 401


def test_login_sets_strict_cookie_and_logout_ends_it(admin):
    """A right password sets an HttpOnly SameSite=Strict cookie (no Secure on plain
    loopback HTTP); the session reads pages; logout (with its CSRF token) ends it."""
    code, cookie = admin.login()
    assert code == 302
    _, hdrs, _ = admin.request("POST", "/login", body=b"password=" + PASSWORD.encode())
    attrs_ = [a.strip() for a in hdrs["set-cookie"].split(";")]
    assert "HttpOnly" in attrs_ and "SameSite=Strict" in attrs_ and "Secure" not in attrs_
    code, _, page = admin.request("GET", "/", headers={"Cookie": cookie})
    assert code == 200 and b"log out" in page
    token = admin.csrf(cookie)
    assert admin.request("POST", "/logout", headers={"Cookie": cookie})[0] == 403
    code, hdrs, _ = admin.request("POST", "/logout", headers={"Cookie": cookie},
                                  body=f"csrf={token}".encode())
    assert code == 302 and "Max-Age=0" in hdrs["set-cookie"]
    assert admin.request("GET", "/", headers={"Cookie": cookie})[0] == 302


def test_csrf_token_is_per_session_and_checked(admin):
    """A POST on a session needs that session's token, and a cross-site Origin is refused
    even with it."""
    _, c1 = admin.login()
    _, c2 = admin.login()
    t1, t2 = admin.csrf(c1), admin.csrf(c2)
    assert t1 != t2
    wake = "/api/queue/wake"
    assert admin.request("POST", wake, headers={"Cookie": c1})[0] == 403
    assert admin.request("POST", wake, headers={"Cookie": c1}, body=f"csrf={t2}".encode())[0] == 403
    assert admin.request("POST", wake, headers={"Cookie": c1, "Origin": "http://evil.example"},
                         body=f"csrf={t1}".encode())[0] == 403
    # The token passes the check (no queue here, so the route itself is missing).
    assert admin.request("POST", wake, headers={"Cookie": c1, "Origin": "http://127.0.0.1:8080"},
                         body=f"csrf={t1}".encode())[0] == 404


def test_session_expires(admin):
    """After the idle time the cookie no longer opens pages."""
    _, cookie = admin.login()
    admin.clock.advance(601)
    assert admin.request("GET", "/", headers={"Cookie": cookie})[0] == 302


def test_wrong_passwords_are_limited(admin):
    """Wrong passwords get 403; past the free allowance 429 with Retry-After, and then
    even the right password is refused until the block ends."""
    codes = [admin.login("wrong")[0] for _ in range(6)]
    assert codes[:5] == [403] * 5
    code, hdrs, _ = admin.request("POST", "/login", body=b"password=x")
    assert code == 429 and int(hdrs["retry-after"]) >= 1
    assert admin.login()[0] == 429
    admin.clock.advance(3600)
    assert admin.login()[0] == 302


def test_cross_origin_login_refused(admin):
    """A login form posted from another origin is refused (login CSRF)."""
    code, _, _ = admin.request("POST", "/login", headers={"Origin": "http://evil.example"},
                               body=b"password=" + PASSWORD.encode())
    assert code == 403


def test_bearer_token_file_and_header(tmp_path):
    """The local token is made once with mode 0600 and only the exact token matches."""
    p = tmp_path / "admin.token"
    tok = auth.local_token(p, create=True)
    assert tok is not None and auth.local_token(p) == tok
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert auth.bearer_matches(f"Bearer {tok}".encode(), tok)
    assert not auth.bearer_matches(f"Bearer {tok}x".encode(), tok)
    assert not auth.bearer_matches(b"Basic abc", tok)
    assert not auth.bearer_matches(None, tok)
    assert auth.local_token(tmp_path / "none") is None
