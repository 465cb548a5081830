"""An in-memory store for tests: ``MemoryStore`` implements IAccountStore and IMailStore.

It keeps the contract's semantics (tests/store/test_contract.py runs the same suite
against it and ``SQLiteStore``): per-mailbox UIDs and modseqs, UIDVALIDITY that is never
reused, INBOX case-insensitive and undeletable, superiors created on CREATE, shared bodies,
quotas, VANISHED, and ``accept`` that stores all of a message or none of it.  Every
Deferred has fired when it is returned; listeners run after the change, as after a commit.

Test hooks: ``rollback = False`` skips the per-write snapshot (for fast bulk fills: a
failed write then keeps its partial changes); ``fail_next`` makes the next writing
operation fail with a StoreError (and change nothing); ``outbound`` holds what ``accept``
queued (queue id -> (body id, envelope)).
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from mxd.store import names
from mxd.store.interfaces import (
    DEFAULT_MAILBOXES,
    Accepted,
    Account,
    AccountExists,
    AddressInUse,
    Appended,
    CannotDeleteInbox,
    Delivery,
    Deriver,
    MailboxChange,
    MailboxExists,
    MailboxHasChildren,
    MailboxInfo,
    MessageGone,
    MessageInfo,
    MessageProps,
    NoSuchAccount,
    NoSuchMailbox,
    OutboundMessage,
    QuotaExceeded,
    SpecialUse,
    StoreError,
)

T = TypeVar("T")


class MemoryBlob:
    """A body being written (``BlobWriter``); the store reads ``data`` when it takes it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.aborted = False
        self.taken = False
        self.blob_id = ""  # given when the store takes it

    def write(self, data: bytes) -> None:
        if self.aborted or self.taken:
            raise StoreError("the body was already handed over or aborted")
        self.data += data

    @property
    def size(self) -> int:
        return len(self.data)

    def abort(self) -> None:
        if not self.taken:  # once handed to the store, the store owns it (as on disk)
            self.aborted = True


@attrs.define
class _Message:
    info: MessageInfo
    props: MessageProps
    saved: datetime | None = None  # RFC 8514 save date


@attrs.define
class _Mailbox:
    id: int
    account_id: int
    name: str
    uidvalidity: int
    special_use: SpecialUse | None
    subscribed: bool = True
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, _Message] = attrs.Factory(dict)
    vanished: dict[int, int] = attrs.Factory(dict)  # uid -> modseq of its expunge


class MemoryStore:
    """IAccountStore + IMailStore in memory (see the module docstring)."""

    def __init__(self, *, quota_bytes: int | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.quota_bytes = quota_bytes
        self._now = now or (lambda: datetime(2024, 2, 1, 12, 0, tzinfo=UTC))
        self._account_ids = itertools.count(1)
        self._mailbox_ids = itertools.count(1)
        self._blob_ids = itertools.count(1)
        self._uidvalidity = itertools.count(1_700_000_000)
        self.accounts: dict[str, Account] = {}
        self.secrets: dict[str, str] = {}
        self.quotas: dict[str, int | None] = {}
        self.mailboxes: dict[int, _Mailbox] = {}
        self.bodies: dict[str, bytes] = {}
        self.outbound: dict[str, tuple[str, OutboundMessage]] = {}
        self.fail_next = False
        self.rollback = True
        self._listeners: dict[int, list[Callable[[MailboxChange], None]]] = {}
        self._derivers: dict[str, tuple[tuple[str, ...], Deriver]] = {}
        self.derived: dict[tuple[str, str], bytes] = {}  # (blob id, kind) -> value

    # -- the write path: all or nothing, then notify ------------------------------------
    def _write(self, fn: Callable[[list[MailboxChange]], T]) -> Deferred[T]:
        if self.fail_next:
            self.fail_next = False
            return fail(StoreError("injected failure"))
        changes: list[MailboxChange] = []
        snapshot = self._snapshot() if self.rollback else None
        try:
            result = fn(changes)
        except Exception as e:  # noqa: BLE001 - roll back and report, like a transaction
            if snapshot is not None:
                self._restore(snapshot)
            return fail(e)
        for ch in changes:
            for listener in list(self._listeners.get(ch.mailbox_id, [])):
                listener(ch)
        return succeed(result)

    def _snapshot(self) -> Any:
        return copy.deepcopy((self.accounts, self.secrets, self.quotas, self.mailboxes,
                              self.bodies, self.outbound))

    def _restore(self, snap: Any) -> None:
        (self.accounts, self.secrets, self.quotas, self.mailboxes, self.bodies,
         self.outbound) = snap

    # -- accounts -------------------------------------------------------------------------
    def add_account(self, name: str, secrets_text: str,
                    addresses: Iterable[str] = ()) -> Deferred[Account]:
        def op(changes: list[MailboxChange]) -> Account:
            if name in self.accounts:
                raise AccountExists(f"account {name!r} exists")
            addrs = tuple(addresses)
            for a in addrs:
                if self._owner(a) is not None:
                    raise AddressInUse(f"address {a!r} is in use")
            acct = Account(next(self._account_ids), name, addrs)
            self.accounts[name] = acct
            self.secrets[name] = secrets_text
            for mb, use in DEFAULT_MAILBOXES.items():
                self._create(acct.id, mb, use)
            return acct
        return self._write(op)

    def _owner(self, address: str) -> Account | None:
        return next((a for a in self.accounts.values() if address in a.addresses), None)

    def _account(self, name: str) -> Account:
        acct = self.accounts.get(name)
        if acct is None:
            raise NoSuchAccount(f"no account {name!r}")
        return acct

    def delete_account(self, name: str) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            acct = self._account(name)
            for box in [b for b in self.mailboxes.values() if b.account_id == acct.id]:
                del self.mailboxes[box.id]
                changes.append(MailboxChange(box.id, "deleted"))
            del self.accounts[name], self.secrets[name]
        return self._write(op)

    def set_secrets(self, name: str, secrets_text: str) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            self._account(name)
            self.secrets[name] = secrets_text
        return self._write(op)

    def get_account(self, name: str) -> Deferred[Account | None]:
        return succeed(self.accounts.get(name))

    def get_account_by_id(self, account_id: int) -> Deferred[Account | None]:
        return succeed(next((a for a in self.accounts.values() if a.id == account_id), None))

    def get_secrets(self, name: str) -> Deferred[str | None]:
        return succeed(self.secrets.get(name))

    def list_accounts(self) -> Deferred[list[Account]]:
        return succeed(sorted(self.accounts.values(), key=lambda a: a.name))

    def add_address(self, name: str, address: str) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            acct = self._account(name)
            if self._owner(address) is not None:
                raise AddressInUse(f"address {address!r} is in use")
            self.accounts[name] = attrs.evolve(acct, addresses=(*acct.addresses, address))
        return self._write(op)

    def remove_address(self, address: str) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            acct = self._owner(address)
            if acct is None:
                raise StoreError(f"no address {address!r}")
            self.accounts[acct.name] = attrs.evolve(
                acct, addresses=tuple(a for a in acct.addresses if a != address))
        return self._write(op)

    def account_for_address(self, address: str) -> Deferred[Account | None]:
        return succeed(self._owner(address))

    # -- quota (RFC 9208) --------------------------------------------------------------------
    def set_quota(self, name: str, quota_bytes: int | None) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            self._account(name)
            self.quotas[name] = quota_bytes
        return self._write(op)

    def get_usage(self, account_id: int) -> Deferred[tuple[int, int | None]]:
        return succeed((self._used(account_id), self._limit(account_id)))

    def _used(self, account_id: int) -> int:
        return sum(m.info.size for b in self.mailboxes.values() if b.account_id == account_id
                   for m in b.messages.values())

    def _limit(self, account_id: int) -> int | None:
        name = next(a.name for a in self.accounts.values() if a.id == account_id)
        return self.quotas.get(name, self.quota_bytes)

    def _check_quota(self, account_id: int, adding: int) -> None:
        limit = self._limit(account_id)
        if limit is not None and self._used(account_id) + adding > limit:
            raise QuotaExceeded("quota exceeded")

    # -- bodies ----------------------------------------------------------------------------
    def new_blob(self) -> MemoryBlob:
        return MemoryBlob()

    def new_blob_nowait(self) -> MemoryBlob:
        return MemoryBlob()

    def open_blob(self, blob_id: str) -> BinaryIO:
        return io.BytesIO(self.bodies[blob_id])

    def read_blob_head(self, blob_id: str, length: int) -> bytes:
        return self.bodies[blob_id][:length]

    def _take(self, blob: Any, derive: bool = True) -> str:
        if not isinstance(blob, MemoryBlob) or blob.aborted:
            raise StoreError("blob writer does not belong to this store")
        blob.taken = True
        if not blob.blob_id:
            # A counter, not id(blob): a collected writer's id is reused by the next one.
            blob.blob_id = f"b{next(self._blob_ids)}"
            self.bodies[blob.blob_id] = bytes(blob.data)
            if derive:
                self._derive(blob.blob_id)
        return blob.blob_id

    # -- derived data (interfaces module docstring) -------------------------------------------
    def register_deriver(self, name: str, kinds: Iterable[str], fn: Deriver) -> None:
        self._derivers[name] = (tuple(kinds), fn)

    def _derive(self, blob_id: str) -> int:
        body = self.bodies[blob_id]
        done = 0
        for kinds, fn in self._derivers.values():
            if all((blob_id, k) in self.derived for k in kinds):
                continue
            try:
                values = fn(lambda n: body[:n])
            except Exception:  # noqa: BLE001 - as the SQLite store: store nothing
                continue
            for k, v in values.items():
                if k in kinds:
                    self.derived[(blob_id, k)] = bytes(v)
            done = 1
        return done

    def get_derived(self, mailbox_id: int, kind: str, first_uid: int = 1,
                    last_uid: int = 0xFFFFFFFF) -> Deferred[dict[int, bytes]]:
        def get() -> dict[int, bytes]:
            out = {}
            for uid, m in self._box(mailbox_id).messages.items():
                v = self.derived.get((m.info.blob_id, kind))
                if first_uid <= uid <= last_uid and v is not None:
                    out[uid] = v
            return out
        return self._read(get)

    def flush_derived(self) -> Deferred[None]:
        return succeed(None)  # values are computed with each delivery

    def backfill_derived(self, limit: int = 64) -> Deferred[int]:
        def op(changes: list[MailboxChange]) -> int:
            live = {m.info.blob_id for b in self.mailboxes.values() for m in b.messages.values()}
            done = 0
            for blob_id in sorted(live):
                if done >= limit:
                    break
                done += self._derive(blob_id)
            return done
        return self._write(op)

    # -- mailboxes ---------------------------------------------------------------------------
    def _create(self, account_id: int, name: str, use: SpecialUse | None = None) -> _Mailbox:
        box = _Mailbox(next(self._mailbox_ids), account_id, name, next(self._uidvalidity), use)
        self.mailboxes[box.id] = box
        return box

    def _find(self, account_id: int, name: str) -> _Mailbox:
        name = names.normalize_mailbox_name(name)
        for box in self.mailboxes.values():
            if box.account_id == account_id and box.name == name:
                return box
        raise NoSuchMailbox(f"no mailbox {name!r}")

    def _box(self, mailbox_id: int) -> _Mailbox:
        box = self.mailboxes.get(mailbox_id)
        if box is None:
            raise NoSuchMailbox(f"no mailbox {mailbox_id}")
        return box

    @staticmethod
    def _info(b: _Mailbox) -> MailboxInfo:
        msgs = [m.info for m in b.messages.values()]
        return MailboxInfo(b.id, b.account_id, b.name, b.uidvalidity, b.uidnext,
                           b.highestmodseq, b.special_use, b.subscribed, len(msgs),
                           sum(1 for m in msgs if "\\Seen" not in m.flags),
                           sum(m.size for m in msgs),
                           sum(1 for m in msgs if "\\Deleted" in m.flags))

    def _read(self, fn: Callable[[], T]) -> Deferred[T]:
        try:
            return succeed(fn())
        except Exception as e:  # noqa: BLE001 - reads errback like the real store
            return fail(e)

    def list_mailboxes(self, account_id: int) -> Deferred[list[MailboxInfo]]:
        return succeed(sorted((self._info(b) for b in self.mailboxes.values()
                               if b.account_id == account_id), key=lambda i: i.name))

    def get_mailbox(self, account_id: int, name: str, counts: bool = True) -> Deferred[MailboxInfo]:
        # Counting costs nothing here, so ``counts=False`` still fills them in.
        return self._read(lambda: self._info(self._find(account_id, name)))

    def get_mailbox_by_id(self, mailbox_id: int) -> Deferred[MailboxInfo]:
        return self._read(lambda: self._info(self._box(mailbox_id)))

    def create_mailbox(self, account_id: int, name: str,
                       special_use: SpecialUse | None = None) -> Deferred[MailboxInfo]:
        def op(changes: list[MailboxChange]) -> MailboxInfo:
            norm = names.normalize_mailbox_name(name)
            try:
                self._find(account_id, norm)
            except NoSuchMailbox:
                pass
            else:
                raise MailboxExists(f"mailbox {norm!r} exists")
            for parent in names.parents(norm):  # RFC 3501 §6.3.3
                try:
                    self._find(account_id, parent)
                except NoSuchMailbox:
                    self._create(account_id, parent)
            return self._info(self._create(account_id, norm, special_use))
        return self._write(op)

    def delete_mailbox(self, account_id: int, name: str) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            norm = names.normalize_mailbox_name(name)
            if names.is_inbox(norm):
                raise CannotDeleteInbox("INBOX cannot be deleted")
            box = self._find(account_id, norm)
            if any(b.account_id == account_id and names.is_inferior(b.name, norm)
                   for b in self.mailboxes.values()):
                raise MailboxHasChildren(f"mailbox {norm!r} has inferior mailboxes")
            del self.mailboxes[box.id]
            changes.append(MailboxChange(box.id, "deleted"))
        return self._write(op)

    def rename_mailbox(self, account_id: int, old: str, new: str) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            o, n = names.normalize_mailbox_name(old), names.normalize_mailbox_name(new)
            box = self._find(account_id, o)
            try:
                self._find(account_id, n)
            except NoSuchMailbox:
                pass
            else:
                raise MailboxExists(f"mailbox {n!r} exists")
            if names.is_inferior(n, o):
                raise StoreError(f"cannot rename {o!r} to its own inferior {n!r}")
            for parent in names.parents(n):
                try:
                    self._find(account_id, parent)
                except NoSuchMailbox:
                    self._create(account_id, parent)
            if names.is_inbox(o):  # RFC 3501 §6.3.5: INBOX's messages move, INBOX stays
                target = self._create(account_id, n)
                for m in list(box.messages.values()):
                    self._insert(target, m.info.blob_id, m.info.size, m.info.flags,
                                 m.info.internal_date, m.props, changes)
                self._remove(box, list(box.messages), changes)
                return
            for b in self.mailboxes.values():
                if b.account_id == account_id and names.is_inferior(b.name, o):
                    b.name = n + b.name[len(o):]
                    changes.append(MailboxChange(b.id, "renamed"))
            box.name = n
            changes.append(MailboxChange(box.id, "renamed"))
        return self._write(op)

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> Deferred[None]:
        def op(changes: list[MailboxChange]) -> None:
            self._find(account_id, name).subscribed = subscribed
        return self._write(op)

    # -- messages ----------------------------------------------------------------------------
    def _insert(self, box: _Mailbox, blob_id: str, size: int, flags: frozenset[str],
                when: datetime, props: MessageProps, changes: list[MailboxChange]) -> int:
        uid = box.uidnext
        box.uidnext += 1
        box.highestmodseq += 1
        box.messages[uid] = _Message(
            MessageInfo(uid, box.highestmodseq, names.clean_flags(flags), when, size, blob_id),
            props, self._now())
        changes.append(MailboxChange(box.id, "exists", (uid,), box.highestmodseq))
        return uid

    def _remove(self, box: _Mailbox, uids: Sequence[int], changes: list[MailboxChange]) -> None:
        if not uids:
            return
        box.highestmodseq += 1
        for uid in uids:
            del box.messages[uid]
            box.vanished[uid] = box.highestmodseq
        changes.append(MailboxChange(box.id, "expunge", tuple(uids), box.highestmodseq))

    def deliver(self, blob: Any, targets: Sequence[Delivery], props: MessageProps,
                internal_date: datetime | None = None) -> Deferred[list[int]]:
        d = self.accept(blob, targets, props, internal_date=internal_date)
        return d.addCallback(lambda a: list(a.uids))

    def accept(self, blob: Any, targets: Sequence[Delivery], props: MessageProps,
               outbound: OutboundMessage | None = None, queue_id: str | None = None, *,
               internal_date: datetime | None = None) -> Deferred[Accepted]:
        def op(changes: list[MailboxChange]) -> Accepted:
            if outbound is not None and not queue_id:
                raise StoreError("accept: an outbound part needs a queue id")
            blob_id = self._take(blob, derive=bool(targets))
            size = len(self.bodies[blob_id])
            uids = []
            for t in targets:
                if not any(acct.id == t.account_id for acct in self.accounts.values()):
                    raise NoSuchAccount(f"no account with id {t.account_id}")
                box = self._find(t.account_id, t.mailbox)
                self._check_quota(t.account_id, size)
                uids.append(self._insert(box, blob_id, size, t.flags,
                                         internal_date or self._now(), props, changes))
            if outbound is not None and queue_id is not None:
                if queue_id in self.outbound:
                    raise StoreError(f"queue id {queue_id} is taken")
                self.outbound[queue_id] = (blob_id, outbound)
            return Accepted(tuple(uids), queue_id if outbound is not None else None)
        return self._write(op)

    def append(self, mailbox_id: int, blob: Any, flags: frozenset[str],
               internal_date: datetime | None = None) -> Deferred[int]:
        def op(changes: list[MailboxChange]) -> int:
            blob_id = self._take(blob)
            box = self._box(mailbox_id)
            size = len(self.bodies[blob_id])
            self._check_quota(box.account_id, size)
            return self._insert(box, blob_id, size, flags, internal_date or self._now(),
                                MessageProps(), changes)
        return self._write(op)

    def append_to(self, account_id: int, name: str, blob: Any, flags: frozenset[str],
                  internal_date: datetime | None = None) -> Deferred[Appended]:
        def op(changes: list[MailboxChange]) -> Appended:
            box = self._find(account_id, name)
            blob_id = self._take(blob)
            size = len(self.bodies[blob_id])
            self._check_quota(box.account_id, size)
            uid = self._insert(box, blob_id, size, flags, internal_date or self._now(),
                               MessageProps(), changes)
            return Appended(box.id, box.uidvalidity, uid)
        return self._write(op)

    def append_many(self, mailbox_id: int,
                    items: Sequence[tuple[Any, frozenset[str], datetime | None]]) -> Deferred[list[int]]:
        def op(changes: list[MailboxChange]) -> list[int]:
            box = self._box(mailbox_id)
            for blob, _, _ in items:
                if not isinstance(blob, MemoryBlob) or blob.aborted:
                    raise StoreError("blob writer does not belong to this store")
            self._check_quota(box.account_id, sum(len(b.data) for b, _, _ in items))
            uids = []
            for blob, flags, when in items:
                blob_id = self._take(blob)
                uids.append(self._insert(box, blob_id, len(self.bodies[blob_id]), flags,
                                         when or self._now(), MessageProps(), changes))
            return uids
        return self._write(op)

    def replace(self, mailbox_id: int, uid: int, dest_mailbox_id: int, blob: Any,
                flags: frozenset[str], internal_date: datetime | None = None) -> Deferred[int]:
        def op(changes: list[MailboxChange]) -> int:
            src, dst = self._box(mailbox_id), self._box(dest_mailbox_id)
            old = src.messages.get(uid)
            if old is None:
                raise MessageGone(f"no message {uid} in mailbox {mailbox_id}")
            if not isinstance(blob, MemoryBlob) or blob.aborted:
                raise StoreError("blob writer does not belong to this store")
            self._check_quota(dst.account_id, len(blob.data) - old.info.size)
            blob_id = self._take(blob)
            new = self._insert(dst, blob_id, len(self.bodies[blob_id]), flags,
                               internal_date or self._now(), MessageProps(), changes)
            self._remove(src, [uid], changes)
            return new
        return self._write(op)

    def list_messages(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[MessageInfo]]:
        return self._read(lambda: [m.info for _, m in sorted(self._box(mailbox_id).messages.items())
                                   if m.info.modseq > since_modseq])

    def newest_messages(self, mailbox_id: int, limit: int, *, offset: int = 0,
                        before_uid: int | None = None) -> Deferred[list[MessageInfo]]:
        def get() -> list[MessageInfo]:
            msgs = self._box(mailbox_id).messages
            uids = sorted((u for u in msgs if before_uid is None or u < before_uid),
                          reverse=True)
            return [msgs[u].info for u in uids[max(0, offset):max(0, offset) + max(0, limit)]]
        return self._read(get)

    def get_message(self, mailbox_id: int, uid: int) -> Deferred[MessageInfo | None]:
        def get() -> MessageInfo | None:
            m = self._box(mailbox_id).messages.get(uid)
            return None if m is None else m.info
        return self._read(get)

    def save_dates(self, mailbox_id: int,
                   uids: Sequence[int] | None = None) -> Deferred[dict[int, datetime]]:
        def get() -> dict[int, datetime]:
            msgs = self._box(mailbox_id).messages
            wanted = msgs.keys() if uids is None else [u for u in uids if u in msgs]
            return {u: s for u in wanted if (s := msgs[u].saved) is not None}
        return self._read(get)

    def list_vanished(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[int]]:
        return self._read(lambda: sorted(u for u, ms in self._box(mailbox_id).vanished.items()
                                         if ms > since_modseq))

    def get_message_props(self, mailbox_id: int, uid: int) -> Deferred[MessageProps | None]:
        def get() -> MessageProps | None:
            m = self._box(mailbox_id).messages.get(uid)
            return None if m is None else m.props
        return self._read(get)

    def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str], mode: str,
                    unchanged_since: int | None = None,
                    ) -> Deferred[tuple[list[MessageInfo], list[int]]]:
        def op(changes: list[MailboxChange]) -> tuple[list[MessageInfo], list[int]]:
            box = self._box(mailbox_id)
            clean = names.clean_flags(flags)
            todo, failed = [], []
            for uid in uids:
                m = box.messages.get(uid)
                if m is None:
                    continue
                if unchanged_since is not None and m.info.modseq > unchanged_since:
                    failed.append(uid)
                    continue
                new = names.apply_flags(m.info.flags, clean, mode)
                if not names.flags_equal(new, m.info.flags):
                    todo.append((m, new))
            changed = []
            if todo:
                box.highestmodseq += 1
                for m, new in todo:
                    m.info = attrs.evolve(m.info, flags=new, modseq=box.highestmodseq)
                    changed.append(m.info)
                changes.append(MailboxChange(box.id, "flags", tuple(i.uid for i in changed),
                                             box.highestmodseq))
            return changed, failed
        return self._write(op)

    def copy(self, mailbox_id: int, uids: Sequence[int],
             dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        return self._write(lambda changes: self._copy(mailbox_id, uids, dest_mailbox_id,
                                                      changes, quota=True))

    def _copy(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int,
              changes: list[MailboxChange], quota: bool) -> list[tuple[int, int]]:
        src, dst = self._box(mailbox_id), self._box(dest_mailbox_id)
        found = [(u, src.messages[u]) for u in sorted(set(uids)) if u in src.messages]
        if quota:
            self._check_quota(dst.account_id, sum(m.info.size for _, m in found))
        return [(u, self._insert(dst, m.info.blob_id, m.info.size, m.info.flags,
                                 m.info.internal_date, m.props, changes)) for u, m in found]

    def move(self, mailbox_id: int, uids: Sequence[int],
             dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        def op(changes: list[MailboxChange]) -> list[tuple[int, int]]:
            pairs = self._copy(mailbox_id, uids, dest_mailbox_id, changes, quota=False)
            self._remove(self._box(mailbox_id), [a for a, _ in pairs], changes)
            return pairs
        return self._write(op)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> Deferred[list[int]]:
        def op(changes: list[MailboxChange]) -> list[int]:
            box = self._box(mailbox_id)
            wanted = None if uids is None else set(uids)
            gone = [u for u, m in sorted(box.messages.items()) if "\\Deleted" in m.info.flags
                    and (wanted is None or u in wanted)]
            self._remove(box, gone, changes)
            return gone
        return self._write(op)

    # -- notifications ---------------------------------------------------------------------
    def subscribe(self, mailbox_id: int,
                  listener: Callable[[MailboxChange], None]) -> Callable[[], None]:
        self._listeners.setdefault(mailbox_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(mailbox_id, [])
            if listener in listeners:
                listeners.remove(listener)

        return unsubscribe

    def close(self) -> Deferred[None]:
        return succeed(None)
