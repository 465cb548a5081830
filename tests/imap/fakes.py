"""The IMAP tests' store (mxd.store.testing.MemoryStore plus test helpers) and a fake SASL."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure as TwistedFailure

from mxd.sasl.api import ConnectionInfo, Continue, Failure, Outcome, Success, UnknownMechanism
from mxd.store.interfaces import Account, Delivery, MessageProps
from mxd.store.testing import MemoryBlob, MemoryStore


class CountingBlob(MemoryBlob):
    """A MemoryBlob that tells its store when it is dropped."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__()
        self._store = store

    def abort(self) -> None:
        if not self.taken and not self.aborted:
            self._store.aborted_blobs += 1
        super().abort()


class FakeStore(MemoryStore):
    """The shipped in-memory store with the helpers the IMAP tests use: ``put`` adds a
    message (and notifies, as a delivery does), ``aborted_blobs`` counts dropped bodies,
    ``blobs`` is the body table (body id -> bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted_blobs = 0

    @property
    def blobs(self) -> dict[str, bytes]:
        return self.bodies

    def add_account(self, name: str, secrets_text: str = "",
                    addresses: Iterable[str] = ()) -> Deferred[Account]:
        return super().add_account(name, secrets_text, addresses)

    def new_blob(self) -> CountingBlob:
        return CountingBlob(self)

    def put(self, account: Account, mailbox: str, data: bytes, flags: Iterable[str] = (),
            when: datetime | None = None) -> int:
        """Add a message through ``deliver`` and return its UID."""
        blob = self.new_blob()
        blob.write(data)
        self.rollback = False  # a fill of thousands must not copy the store per message
        try:
            d = self.deliver(blob, [Delivery(account.id, mailbox, frozenset(flags))],
                             MessageProps(), internal_date=when)
        finally:
            self.rollback = True
        out: list[Any] = []
        d.addBoth(out.append)
        if isinstance(out[0], TwistedFailure):
            out[0].raiseException()
        (uid,) = out[0]
        return int(uid)


class _PlainExchange:
    mechanism = "PLAIN"

    def __init__(self, sasl: FakeSASL) -> None:
        self.sasl = sasl

    def step(self, data: bytes | None) -> Deferred[Outcome]:
        if data is None:
            return succeed(Continue(b""))
        parts = data.split(b"\0")
        if len(parts) != 3:
            return succeed(Failure("malformed"))
        authz, user, pw = (p.decode() for p in parts)
        return self.sasl._check(user, pw, "PLAIN", authz or None)


class _TwoStepExchange:
    """A fake mechanism with a server challenge and additional data on success."""

    mechanism = "X-TWO"

    def __init__(self, sasl: FakeSASL) -> None:
        self.sasl = sasl
        self.n = 0

    def step(self, data: bytes | None) -> Deferred[Outcome]:
        self.n += 1
        if self.n == 1:
            return succeed(Continue(b"r=challenge,with\nnewline=" + b"x" * 100))
        user, _, pw = (data or b"").decode().partition(":")
        d = self.sasl._check(user, pw, "X-TWO", None)
        return d.addCallback(lambda o: Success(o.authcid, None, b"v=final", "X-TWO")
                             if isinstance(o, Success) else o)


class FakeSASL:
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.seen: list[ConnectionInfo] = []

    def advertised(self, conn: ConnectionInfo) -> list[str]:
        mechs = ["X-TWO"]
        if conn.tls:
            mechs.append("PLAIN")
        return mechs

    def start(self, mechanism: str, conn: ConnectionInfo) -> _PlainExchange | _TwoStepExchange:
        self.seen.append(conn)
        if mechanism == "PLAIN" and conn.tls:
            return _PlainExchange(self)
        if mechanism == "X-TWO":
            return _TwoStepExchange(self)
        raise UnknownMechanism(mechanism)

    def _check(self, user: str, pw: str, mech: str, authz: str | None) -> Deferred[Outcome]:
        if self.passwords.get(user) == pw:
            return succeed(Success(user, authz, None, mech))
        return succeed(Failure("invalid credentials"))

    def check_password(self, username: str, password: str, conn: ConnectionInfo) -> Deferred[Outcome]:
        self.seen.append(conn)
        return self._check(username, password, "LOGIN", None)
