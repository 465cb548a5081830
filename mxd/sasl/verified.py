"""A cache of recently verified PLAIN/LOGIN passwords, so that a client that logs in
again and again (IMAP clients open a connection per folder, every few minutes) does not
pay scrypt each time.

The idea of Dovecot's auth cache, kept narrow: only a *successful* check is remembered,
as HMAC-SHA-256(per-process random key, credential stamp, password), never the password.
A later attempt with the same password for the same stored credential, within ``ttl``
seconds of the check, succeeds without scrypt; anything else (a wrong password, a
changed password: the stamp is the stored hash) takes the full check.  Guessing stays as
expensive as before; the price is that a memory dump of the process within ``ttl`` would
allow a fast offline attack on the remembered passwords (the key is in the same memory),
as with Dovecot's cache — ``ttl = 0`` turns it off.  Pure apart from the clock.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from twisted.internet.interfaces import IReactorTime


class VerifiedCache:
    """``remember`` after a successful full check; ``matches`` before the next one."""

    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int = 10_000) -> None:
        self._clock = clock
        self.ttl = ttl
        self._max = max_entries
        self._key = os.urandom(32)
        self._entries: dict[str, tuple[bytes, float]] = {}  # login key -> (tag, expiry)

    def _tag(self, stamp: bytes, password: str) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(len(stamp).to_bytes(4, "big") + stamp)
        mac.update(password.encode("utf-8", "surrogatepass"))
        return mac.digest()

    def matches(self, login: str, stamp: bytes, password: str) -> bool:
        """True when ``password`` was verified for this stored credential within ttl."""
        if self.ttl <= 0:
            return False
        entry = self._entries.get(login)
        if entry is None:
            return False
        tag, expiry = entry
        if self._clock.seconds() >= expiry:
            del self._entries[login]
            return False
        return hmac.compare_digest(tag, self._tag(stamp, password))

    def remember(self, login: str, stamp: bytes, password: str) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(login, None)
        self._entries[login] = (self._tag(stamp, password), self._clock.seconds() + self.ttl)
        while len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]

    def forget(self, login: str) -> None:
        self._entries.pop(login, None)

    def __len__(self) -> int:
        return len(self._entries)
