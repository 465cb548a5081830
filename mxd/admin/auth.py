"""Admin web authentication: the password file, sessions, CSRF tokens, Host checks and
the local wake-up token.  Pure apart from the clock and the files passed in.

* The admin password is kept as an scrypt hash (RFC 7914, N=2^15, r=8, p=1, via
  ``mxd.sasl.credentials.PasswordHash``) in a file of mode 0600, in the text form
  ``scrypt$N$r$p$SALT$HASH`` (base64) that ``mxd quickstart`` writes too.
* A session is a 256-bit random id in an HttpOnly, SameSite=Strict cookie (RFC 6265bis
  §4.1.2.7: a strict cookie is never sent on a cross-site request, so a page elsewhere
  cannot ride on the login).  Each session has its own CSRF token that every form POST
  must carry; sessions end at logout, after ``idle`` seconds without a request, and
  ``lifetime`` seconds after login whatever happens.
* The ``Host`` header must name this server (a configured name, or 127.0.0.1/localhost
  when the listener is on loopback): a DNS-rebinding page reaches the listener with its
  own host name in ``Host`` and is refused (421, RFC 9110 §15.5.20).
* The CLI proves that it runs as the mxd user with a token kept in ``<data_dir>/
  admin.token`` (mode 0600), sent as ``Authorization: Bearer`` (RFC 6750 §2.1); a
  browser cannot add that header to a cross-site request without a CORS preflight that
  this server never grants.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from pathlib import Path

import attrs
from twisted.internet.interfaces import IReactorTime

from mxd.sasl.credentials import SCRYPT_N, SCRYPT_P, SCRYPT_R, PasswordHash

COOKIE = b"mxd_admin"
ADMIN_ACCOUNT = "admin"  # the limiter's account key for admin logins


class AdminAuthError(ValueError):
    """The stored admin password is malformed."""


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$SALT$HASH`` for ``password`` (slow: call it off the reactor)."""
    h = PasswordHash.derive(password)
    b64 = base64.b64encode
    return f"scrypt${h.n}${h.r}${h.p}${b64(h.salt).decode()}${b64(h.digest).decode()}"


def parse_password_hash(text: str) -> PasswordHash:
    parts = text.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise AdminAuthError("expected scrypt$N$r$p$SALT$HASH")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(
            parts[5], validate=True)
    except ValueError as e:
        raise AdminAuthError(f"bad scrypt hash: {e}") from None
    if not (2 <= n <= 1 << 20 and r == SCRYPT_R and p == SCRYPT_P and salt and digest):
        raise AdminAuthError("scrypt parameters out of range")
    return PasswordHash(salt, n, r, p, digest)


def verify_password_file(path: Path, password: str) -> bool:
    """Does ``password`` match the hash in ``path``?  False when there is no password
    file (no admin password set: nobody logs in).  Slow (scrypt): off the reactor."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        # Same work as a real check, so timing does not tell whether a file exists.
        PasswordHash.derive(password, n=SCRYPT_N)
        return False
    return parse_password_hash(text).verify(password)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the start."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def local_token(path: Path, create: bool = False) -> str | None:
    """The CLI's wake-up token in ``path`` (mode 0600); made when ``create`` and missing."""
    try:
        tok = path.read_text().strip()
        if len(tok) >= 32:
            return tok
    except (FileNotFoundError, PermissionError):
        pass
    if not create:
        return None
    tok = secrets.token_hex(32)
    write_private(path, tok.encode() + b"\n")
    return tok


def bearer_matches(header: bytes | None, token: str | None) -> bool:
    """``Authorization: Bearer TOKEN`` (RFC 6750 §2.1) naming ``token``."""
    if not header or not token or not header[:7].lower() == b"bearer ":
        return False
    return hmac.compare_digest(header[7:].strip(), token.encode())


def host_allowed(host_header: bytes | None, names: frozenset[str], loopback: bool) -> bool:
    """Does ``Host`` (RFC 9110 §7.2: host[:port]) name this server?  ``names`` are the
    configured host names (lowercase); on a loopback listener 127.0.0.1, [::1] and
    localhost are accepted too."""
    if not host_header:
        return False
    try:
        host = host_header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
        name = f"[{name}]"
    else:
        name, sep, port = host.partition(":")
        if sep and not port.isdigit():
            return False
    name = name.rstrip(".")
    if name in names:
        return True
    return loopback and name in ("127.0.0.1", "localhost", "[::1]")


@attrs.define
class Session:
    sid: str
    csrf: str
    created: float
    last_used: float
    account: str = ""  # the logged-in account (webmail); "" for the admin


class Sessions:
    """Logged-in sessions (admin or webmail), in memory (a restart logs everyone out)."""

    def __init__(self, clock: IReactorTime, *, lifetime: float = 8 * 3600.0,
                 idle: float = 1800.0, max_sessions: int = 64) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self.idle = idle
        self.max_sessions = max_sessions
        self._by_id: dict[str, Session] = {}

    def create(self, account: str = "") -> Session:
        now = self._clock.seconds()
        self._expire(now)
        while len(self._by_id) >= self.max_sessions:  # drop the oldest
            oldest = min(self._by_id.values(), key=lambda s: s.last_used)
            del self._by_id[oldest.sid]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now, account)
        self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session named by ``sid`` (and its idle time restarts), or None."""
        if not sid:
            return None
        now = self._clock.seconds()
        self._expire(now)
        s = self._by_id.get(sid)
        if s is None:
            return None
        s.last_used = now
        return s

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    def end_account(self, account: str, keep: str | None = None) -> int:
        """End every session of ``account`` but ``keep`` (after a password change);
        returns how many ended."""
        ended = [sid for sid, s in self._by_id.items() if s.account == account and sid != keep]
        for sid in ended:
            del self._by_id[sid]
        return len(ended)

    def _expire(self, now: float) -> None:
        for sid, s in list(self._by_id.items()):
            if now - s.created >= self.lifetime or now - s.last_used >= self.idle:
                del self._by_id[sid]

    def __len__(self) -> int:
        return len(self._by_id)


def csrf_matches(session: Session, given: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())


def cookie_header(session: Session | None, secure: bool, max_age: float,
                  name: bytes = COOKIE) -> bytes:
    """Set-Cookie value (RFC 6265 §4.1; SameSite per RFC 6265bis): the session id, or an
    expired empty cookie to log out, under the cookie ``name``."""
    value = session.sid.encode() if session is not None else b""
    age = int(max_age) if session is not None else 0
    parts = [name + b"=" + value, b"Path=/", b"HttpOnly", b"SameSite=Strict",
             b"Max-Age=%d" % age]
    if secure:
        parts.append(b"Secure")
    return b"; ".join(parts)
