"""The outbound queue: ``Queue`` implements IOutbound.enqueue and the admin operations.

``enqueue`` fires only once the message is durable: the body blob committed (fsynced) and
the queue rows committed in the store's database.  Admin operations (list, show, hold,
release, drop, kick) are plain functions over a database connection, shared by ``Queue``
(inside the server) and ``mxd queue`` (mxd.queue.cli, directly on the database file).
"""

from __future__ import annotations

import builtins
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxd.errors import MxdError
from mxd.metrics import IMetrics, NoopMetrics
from mxd.store import queuedb as qs
from mxd.store.interfaces import Accepted, BlobWriter, Delivery, MessageProps, OutboundMessage

log = Logger()

VALID_BODY = ("7BIT", "8BITMIME", "BINARYMIME")


class QueueError(MxdError):
    """A queue operation was refused (bad envelope, unknown id)."""


class QueueStore(Protocol):
    """The part of mxd.store.sqlite.SQLiteStore the queue uses."""

    def transact(self, fn: Callable[[sqlite3.Connection], Any]) -> Deferred[Any]: ...

    def commit_blob(self, writer: BlobWriter) -> Deferred[str]: ...

    def accept(self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
               outbound: OutboundMessage | None = None,
               queue_id: str | None = None) -> Deferred[Accepted]: ...

    def ref_blob(self, conn: sqlite3.Connection, blob_id: str) -> None: ...

    def unref_blob(self, conn: sqlite3.Connection, blob_id: str) -> None: ...

    def new_blob(self) -> Any: ...

    def open_blob(self, blob_id: str) -> Any: ...


def new_queue_id() -> str:
    return secrets.token_hex(8)


def validate_message(m: OutboundMessage) -> None:
    """Raise QueueError for an envelope that cannot be queued."""
    if not m.recipients:
        raise QueueError("a queued message needs at least one recipient")
    if m.body.upper() not in VALID_BODY:
        raise QueueError(f"unknown body type {m.body!r}")
    for r in m.recipients:
        if "@" not in r.address or any(c in r.address for c in "\r\n<> "):
            raise QueueError(f"bad recipient address {r.address!r}")
        if not r.address.isascii() and not m.smtputf8:
            raise QueueError(f"non-ASCII recipient {r.address!r} without SMTPUTF8")
    if any(c in m.mail_from for c in "\r\n<> "):
        raise QueueError(f"bad sender address {m.mail_from!r}")


# -- admin operations over a connection (used by Queue and the CLI) -------------------------


def op_hold(conn: sqlite3.Connection, queue_id: str | None = None, domain: str | None = None,
            recipient: str | None = None, hold: bool = True) -> int:
    ids = qs.select_recipients(conn, queue_id, domain, recipient)
    conn.executemany("UPDATE queue_recipients SET hold = ? WHERE id = ?",
                     [(int(hold), i) for i in ids])
    return len(ids)


def op_kick(conn: sqlite3.Connection, now: float, queue_id: str | None = None,
            domain: str | None = None, recipient: str | None = None) -> int:
    """Make matching recipients due now (held ones stay held)."""
    ids = qs.select_recipients(conn, queue_id, domain, recipient)
    conn.executemany("UPDATE queue_recipients SET next_attempt = ? WHERE id = ? AND state = ?",
                     [(now, i, qs.QUEUED) for i in ids])
    return len(ids)


def op_drop(conn: sqlite3.Connection, unref: Callable[[sqlite3.Connection, str], None],
            queue_id: str | None = None, domain: str | None = None,
            recipient: str | None = None) -> int:
    """Remove matching recipients without a DSN; messages left empty go with their blob ref."""
    ids = qs.select_recipients(conn, queue_id, domain, recipient)
    message_ids = set()
    for rid in ids:
        row = conn.execute("SELECT message_id FROM queue_recipients WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            message_ids.add(int(row[0]))
        qs.finish_recipient(conn, rid)
    for mid in message_ids:
        blob_id = qs.remove_message_if_done(conn, mid)
        if blob_id is not None:
            unref(conn, blob_id)
    return len(ids)


def op_requiretls(conn: sqlite3.Connection, queue_id: str, setting: str) -> bool:
    """RFC 8689 admin override of one queued message: ``yes`` requires REQUIRETLS, ``no``
    delivers as with ``TLS-Required: No``, ``default`` restores what the message came with.
    Returns False when there is no such message; raises QueueError for another setting."""
    if setting not in qs.TLS_OVERRIDES:
        raise QueueError(f"REQUIRETLS setting must be one of {', '.join(qs.TLS_OVERRIDES)},"
                         f" not {setting!r}")
    return qs.set_tls_override(conn, queue_id, setting)


def op_transport_check(name: str) -> None:
    if not name or any(c.isspace() or c in "\"'" for c in name):
        raise QueueError(f"bad transport name {name!r}")


def op_transport(conn: sqlite3.Connection, queue_id: str, name: str) -> int:
    """Per-message transport override (``mxd queue transport ID NAME``, admin API): NAME
    wins over routes at the next attempt; "default" clears it.  Returns the number of
    recipients changed (0: no such message)."""
    op_transport_check(name)
    return qs.set_transport(conn, queue_id, None if name == "default" else name)


def unref_blob_sql(conn: sqlite3.Connection, blob_id: str) -> None:
    """Drop a blob reference without the store object (the CLI): the store removes bodies
    left at refcount 0 at its next start."""
    conn.execute("UPDATE blobs SET refcount = refcount - 1 WHERE id = ? AND refcount > 0",
                 (blob_id,))


# -- the service-side object ---------------------------------------------------------------


class Queue:
    """The persistent outbound queue (IOutbound) over the mail store's database."""

    def __init__(self, store: QueueStore, clock: IReactorTime, metrics: IMetrics | None = None) -> None:
        self.store = store
        self.clock = clock
        self.metrics: IMetrics = metrics or NoopMetrics()
        self._listeners: list[Callable[[], None]] = []
        # The configured transport names (set by the composition layer), so an override
        # naming no transport is refused at once; None: not checked.
        self.transport_names: frozenset[str] | None = None

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs after new work became due (enqueue, kick, release)."""
        self._listeners.append(fn)

    def _notify(self, _result: Any = None) -> Any:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a listener must not break the queue
                log.failure("queue listener failed")
        return _result

    def wake(self) -> None:
        """Have the runner look for due work now (after another process, such as the
        ``mxd queue`` CLI, changed the queue tables)."""
        self._notify()

    def enqueue(self, blob: BlobWriter, message: OutboundMessage) -> Deferred[str]:
        """IOutbound.enqueue: fires with the queue id once body and rows are durable.

        Errbacks with QueueError for a bad envelope or a StoreError; then nothing is queued.
        """
        return ensureDeferred(self._enqueue(blob, message, False))

    def enqueue_bytes(self, data: bytes, message: OutboundMessage, is_dsn: bool = False) -> Deferred[str]:
        """Queue a message generated here (a DSN) from bytes."""
        writer = self.store.new_blob()
        try:
            writer.write(data)
        except Exception:
            writer.abort()
            raise
        return ensureDeferred(self._enqueue(writer, message, is_dsn))

    async def _enqueue(self, blob: BlobWriter, message: OutboundMessage, is_dsn: bool) -> str:
        try:
            validate_message(message)
        except QueueError:
            blob.abort()
            raise
        message = attrs.evolve(message, size=message.size or blob.size,
                               is_dsn=is_dsn or message.is_dsn)
        queue_id = new_queue_id()
        # Body, its reference and the queue rows in one transaction.
        await self.store.accept(blob, [], MessageProps(), message, queue_id)
        log.info("queued {queue_id} from <{sender}> to {n} recipient(s) size={size}",
                 queue_id=queue_id, sender=message.mail_from, n=len(message.recipients),
                 size=message.size)
        self.metrics.inc("queue_enqueued", dsn="yes" if message.is_dsn else "no")
        self._notify()
        return queue_id

    # -- admin ---------------------------------------------------------------------------

    def list(self, domain: str | None = None, sender: str | None = None,
             held: bool | None = None, limit: int = 1000) -> Deferred[builtins.list[qs.QueuedMessage]]:
        return self.store.transact(lambda c: qs.list_messages(
            c, domain=domain, sender=sender, held=held, limit=limit))

    def show(self, queue_id: str) -> Deferred[tuple[qs.QueuedMessage, builtins.list[qs.AttemptRecord]] | None]:
        def op(c: sqlite3.Connection) -> tuple[qs.QueuedMessage, builtins.list[qs.AttemptRecord]] | None:
            m = qs.get_message(c, queue_id)
            return None if m is None else (m, qs.attempts_for(c, queue_id))
        return self.store.transact(op)

    def hold(self, queue_id: str | None = None, domain: str | None = None,
             recipient: str | None = None) -> Deferred[int]:
        return self.store.transact(lambda c: op_hold(c, queue_id, domain, recipient, True))

    def release(self, queue_id: str | None = None, domain: str | None = None,
                recipient: str | None = None) -> Deferred[int]:
        d = self.store.transact(lambda c: op_hold(c, queue_id, domain, recipient, False))
        return d.addCallback(self._notify)

    def kick(self, queue_id: str | None = None, domain: str | None = None,
             recipient: str | None = None) -> Deferred[int]:
        now = self.clock.seconds()
        d = self.store.transact(lambda c: op_kick(c, now, queue_id, domain, recipient))
        return d.addCallback(self._notify)

    def drop(self, queue_id: str | None = None, domain: str | None = None,
             recipient: str | None = None) -> Deferred[int]:
        return self.store.transact(
            lambda c: op_drop(c, self.store.unref_blob, queue_id, domain, recipient))

    def set_transport(self, queue_id: str, name: str) -> Deferred[int]:
        """Per-message transport override (admin API); "default" clears it.  Errbacks with
        QueueError for a name that is not a configured transport (``transport_names``)."""
        from twisted.internet.defer import fail

        known = self.transport_names
        if name not in ("default", "direct") and known is not None and name not in known:
            return fail(QueueError(f"unknown transport {name!r} (transports: "
                                   f"{', '.join(sorted(known)) or 'none defined'})"))
        try:
            op_transport_check(name)
        except QueueError as e:
            return fail(e)
        d = self.store.transact(lambda c: op_transport(c, queue_id, name))

        def logged(n: int) -> int:
            if n:
                log.info("queue {queue_id}: transport override {name}", queue_id=queue_id,
                         name=name)
                self._notify()
            return n

        return d.addCallback(logged)

    def set_requiretls(self, queue_id: str, setting: str) -> Deferred[bool]:
        """``mxd queue requiretls ID yes|no|default`` (see ``op_requiretls``); fires False for
        an unknown id, errbacks with QueueError for a bad setting.  Takes effect at the
        message's next attempt."""
        if setting not in qs.TLS_OVERRIDES:
            from twisted.internet.defer import fail

            return fail(QueueError(f"REQUIRETLS setting must be one of "
                                   f"{', '.join(qs.TLS_OVERRIDES)}, not {setting!r}"))
        d = self.store.transact(lambda c: op_requiretls(c, queue_id, setting))

        def logged(found: bool) -> bool:
            if found:
                log.info("REQUIRETLS of {queue_id} set to {setting}", queue_id=queue_id,
                         setting=setting)
            return found

        return d.addCallback(logged)

    def tls_domains(self, domain: str | None = None) -> Deferred[builtins.list[qs.DomainTLS]]:
        """The last TLS result per recipient domain (STARTTLS, REQUIRETLS, verified)."""
        return self.store.transact(lambda c: qs.domain_tls(c, domain))

    def requiretls_ready(self, domains: builtins.list[str]) -> Deferred[dict[str, bool]]:
        """Per domain: REQUIRETLS offered over verified TLS at the last connection."""
        return self.store.transact(lambda c: qs.requiretls_ready(c, domains))

    def counts(self) -> Deferred[dict[str, int]]:
        return self.store.transact(qs.count_recipients)
