"""In-memory fakes of the store and SASL contracts for the IMAP tests."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from twisted.internet.defer import Deferred, fail, succeed

from mxd.sasl.api import ConnectionInfo, Continue, Failure, Outcome, Success, UnknownMechanism
from mxd.store.interfaces import (
    DEFAULT_MAILBOXES,
    Account,
    Delivery,
    MailboxChange,
    MailboxExists,
    MailboxInfo,
    MessageInfo,
    MessageProps,
    NoSuchMailbox,
    SpecialUse,
)


class FakeBlob:
    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.data = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    @property
    def size(self) -> int:
        return len(self.data)

    def abort(self) -> None:
        self.aborted = True
        self._store.aborted_blobs += 1


class _Box:
    def __init__(self, id: int, account_id: int, name: str, special_use: SpecialUse | None) -> None:
        self.id = id
        self.account_id = account_id
        self.name = name
        self.uidvalidity = 1000 + id
        self.uidnext = 1
        self.special_use = special_use
        self.subscribed = True
        self.msgs: dict[int, MessageInfo] = {}


class FakeStore:
    """IMailStore + IAccountStore in memory; listeners are called synchronously."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.secrets: dict[str, str] = {}
        self.boxes: dict[int, _Box] = {}
        self.blobs: dict[str, bytes] = {}
        self.listeners: dict[int, list[Callable[[MailboxChange], None]]] = {}
        self._ids = itertools.count(1)
        self._modseq = itertools.count(2)
        self.aborted_blobs = 0
        self.now = datetime(2024, 2, 1, 12, 0, tzinfo=UTC)

    # -- accounts ----------------------------------------------------------------------
    def add_account(self, name: str, secrets_text: str = "", addresses: Iterable[str] = ()) -> Deferred[Account]:
        acc = Account(next(self._ids), name, tuple(addresses))
        self.accounts[name] = acc
        self.secrets[name] = secrets_text
        for mb, use in DEFAULT_MAILBOXES.items():
            self._create(acc.id, mb, use)
        return succeed(acc)

    def get_account(self, name: str) -> Deferred[Account | None]:
        return succeed(self.accounts.get(name))

    def get_secrets(self, name: str) -> Deferred[str | None]:
        return succeed(self.secrets.get(name))

    # -- helpers -----------------------------------------------------------------------
    def _create(self, account_id: int, name: str, use: SpecialUse | None = None) -> _Box:
        b = _Box(next(self._ids), account_id, name, use)
        self.boxes[b.id] = b
        return b

    def _find(self, account_id: int, name: str) -> _Box:
        for b in self.boxes.values():
            if b.account_id == account_id and b.name == name:
                return b
        raise NoSuchMailbox(name)

    def _info(self, b: _Box) -> MailboxInfo:
        msgs = b.msgs.values()
        return MailboxInfo(
            b.id, b.account_id, b.name, b.uidvalidity, b.uidnext,
            max([1] + [m.modseq for m in msgs]), b.special_use, b.subscribed, len(b.msgs),
            sum(1 for m in msgs if "\\Seen" not in m.flags), sum(m.size for m in msgs))

    def _notify(self, box_id: int, kind: str, uids: Iterable[int] = ()) -> None:
        ch = MailboxChange(box_id, kind, tuple(uids))
        for fn in list(self.listeners.get(box_id, [])):
            fn(ch)

    def _add(self, b: _Box, data: bytes, flags: frozenset[str], when: datetime | None) -> int:
        blob_id = f"blob{next(self._ids)}"
        self.blobs[blob_id] = bytes(data)
        uid = b.uidnext
        b.uidnext += 1
        b.msgs[uid] = MessageInfo(uid, next(self._modseq), frozenset(flags), when or self.now,
                                  len(data), blob_id)
        return uid

    def put(self, account: Account, mailbox: str, data: bytes, flags: Iterable[str] = (),
            when: datetime | None = None) -> int:
        """Test helper: add a message and notify."""
        b = self._find(account.id, mailbox)
        uid = self._add(b, data, frozenset(flags), when)
        self._notify(b.id, "exists", [uid])
        return uid

    # -- IMailStore --------------------------------------------------------------------
    def new_blob(self) -> FakeBlob:
        return FakeBlob(self)

    def open_blob(self, blob_id: str) -> BinaryIO:
        return io.BytesIO(self.blobs[blob_id])

    def read_blob_head(self, blob_id: str, length: int) -> bytes:
        return bytes(self.blobs[blob_id][:length])

    def deliver(self, blob: FakeBlob, targets: Sequence[Delivery], props: MessageProps,
                internal_date: datetime | None = None) -> Deferred[list[int]]:
        out = []
        for t in targets:
            acc = next(a for a in self.accounts.values() if a.id == t.account_id)
            out.append(self.put(acc, t.mailbox, bytes(blob.data), t.flags, internal_date))
        return succeed(out)

    def list_mailboxes(self, account_id: int) -> Deferred[list[MailboxInfo]]:
        return succeed([self._info(b) for b in self.boxes.values() if b.account_id == account_id])

    def get_mailbox(self, account_id: int, name: str, counts: bool = True) -> Deferred[MailboxInfo]:
        try:
            return succeed(self._info(self._find(account_id, name)))
        except NoSuchMailbox as e:
            return fail(e)

    def create_mailbox(self, account_id: int, name: str, special_use: SpecialUse | None = None) -> Deferred[MailboxInfo]:
        try:
            self._find(account_id, name)
            return fail(MailboxExists(name))
        except NoSuchMailbox:
            return succeed(self._info(self._create(account_id, name, special_use)))

    def delete_mailbox(self, account_id: int, name: str) -> Deferred[None]:
        try:
            b = self._find(account_id, name)
        except NoSuchMailbox as e:
            return fail(e)
        del self.boxes[b.id]
        self._notify(b.id, "deleted")
        return succeed(None)

    def rename_mailbox(self, account_id: int, old: str, new: str) -> Deferred[None]:
        try:
            b = self._find(account_id, old)
        except NoSuchMailbox as e:
            return fail(e)
        try:
            self._find(account_id, new)
            return fail(MailboxExists(new))
        except NoSuchMailbox:
            pass
        for other in self.boxes.values():
            if other.account_id == account_id and other.name.startswith(old + "/"):
                other.name = new + other.name[len(old):]
        b.name = new
        return succeed(None)

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> Deferred[None]:
        try:
            self._find(account_id, name).subscribed = subscribed
        except NoSuchMailbox as e:
            return fail(e)
        return succeed(None)

    def list_messages(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[MessageInfo]]:
        b = self.boxes[mailbox_id]
        return succeed([m for _, m in sorted(b.msgs.items()) if m.modseq > since_modseq])

    def append(self, mailbox_id: int, blob: FakeBlob, flags: frozenset[str],
               internal_date: datetime | None = None) -> Deferred[int]:
        b = self.boxes[mailbox_id]
        uid = self._add(b, bytes(blob.data), flags, internal_date)
        self._notify(b.id, "exists", [uid])
        return succeed(uid)

    def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str], mode: str,
                    unchanged_since: int | None = None) -> Deferred[tuple[list[MessageInfo], list[int]]]:
        b = self.boxes[mailbox_id]
        changed, failed = [], []
        for uid in uids:
            m = b.msgs.get(uid)
            if m is None:
                continue
            if unchanged_since is not None and m.modseq > unchanged_since:
                failed.append(uid)
                continue
            new = flags if mode == "set" else m.flags | flags if mode == "add" else m.flags - flags
            if new != m.flags:
                m = MessageInfo(m.uid, next(self._modseq), frozenset(new), m.internal_date, m.size, m.blob_id)
                b.msgs[uid] = m
                changed.append(m)
        if changed:
            self._notify(b.id, "flags", [m.uid for m in changed])
        return succeed((changed, failed))

    def copy(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        src, dst = self.boxes[mailbox_id], self.boxes[dest_mailbox_id]
        pairs = []
        for uid in uids:
            m = src.msgs.get(uid)
            if m is None:
                continue
            new = dst.uidnext
            dst.uidnext += 1
            dst.msgs[new] = MessageInfo(new, next(self._modseq), m.flags, m.internal_date, m.size, m.blob_id)
            pairs.append((uid, new))
        if pairs:
            self._notify(dst.id, "exists", [b for _, b in pairs])
        return succeed(pairs)

    def move(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        d = self.copy(mailbox_id, uids, dest_mailbox_id)
        pairs: list[tuple[int, int]] = []
        d.addCallback(pairs.extend)
        src = self.boxes[mailbox_id]
        for a, _ in pairs:
            del src.msgs[a]
        self._notify(src.id, "expunge", [a for a, _ in pairs])
        return succeed(pairs)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> Deferred[list[int]]:
        b = self.boxes[mailbox_id]
        gone = [u for u, m in sorted(b.msgs.items())
                if "\\Deleted" in m.flags and (uids is None or u in uids)]
        for u in gone:
            del b.msgs[u]
        if gone:
            self._notify(b.id, "expunge", gone)
        return succeed(gone)

    def subscribe(self, mailbox_id: int, listener: Callable[[MailboxChange], None]) -> Callable[[], None]:
        self.listeners.setdefault(mailbox_id, []).append(listener)
        return lambda: self.listeners[mailbox_id].remove(listener)

    def close(self) -> Deferred[None]:
        return succeed(None)


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
