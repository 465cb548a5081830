"""The outbound queue: ``Queue`` takes new messages (``enqueue``; the SMTP server's
``IOutbound.wake``) and carries out the admin operations, through ``IQueueStore``.

``enqueue`` fires only once the message is durable: body, its reference and the queue
rows in one transaction (``IQueueStore.accept``).  ``mxd queue`` (mxd.queue.cli) runs the
same admin SQL (mxd.store.queuedb) directly on the database file of a stopped server.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxd.errors import MxdError
from mxd.metrics import IMetrics, NoopMetrics
from mxd.queue.storage import IQueueStore
from mxd.store import queuedb as qs
from mxd.store.interfaces import BlobWriter, MessageProps, OutboundMessage

log = Logger()

VALID_BODY = ("7BIT", "8BITMIME", "BINARYMIME")


class QueueError(MxdError):
    """A queue operation was refused (bad envelope, unknown id)."""


def check_transport_name(name: str) -> None:
    """A per-message transport override names a transport: no spaces or quotes."""
    if not name or any(c.isspace() or c in "\"'" for c in name):
        raise QueueError(f"bad transport name {name!r}")


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


# -- the service-side object ---------------------------------------------------------------


class Queue:
    """The persistent outbound queue (IOutbound) over the mail store's database."""

    def __init__(self, store: IQueueStore, clock: IReactorTime, metrics: IMetrics | None = None) -> None:
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
        return self.store.list_messages(domain, sender, held, limit)

    def show(self, queue_id: str) -> Deferred[tuple[qs.QueuedMessage, builtins.list[qs.AttemptRecord]] | None]:
        return self.store.show(queue_id)

    def hold(self, queue_id: str | None = None, domain: str | None = None,
             recipient: str | None = None) -> Deferred[int]:
        return self.store.hold(queue_id, domain, recipient, True)

    def release(self, queue_id: str | None = None, domain: str | None = None,
                recipient: str | None = None) -> Deferred[int]:
        d = self.store.hold(queue_id, domain, recipient, False)
        return d.addCallback(self._notify)

    def kick(self, queue_id: str | None = None, domain: str | None = None,
             recipient: str | None = None) -> Deferred[int]:
        now = self.clock.seconds()
        d = self.store.kick(now, queue_id, domain, recipient)
        return d.addCallback(self._notify)

    def drop(self, queue_id: str | None = None, domain: str | None = None,
             recipient: str | None = None) -> Deferred[int]:
        return self.store.drop(queue_id, domain, recipient)

    def set_transport(self, queue_id: str, name: str) -> Deferred[int]:
        """Per-message transport override (admin API); "default" clears it.  Errbacks with
        QueueError for a name that is not a configured transport (``transport_names``)."""
        known = self.transport_names
        if name not in ("default", "direct") and known is not None and name not in known:
            return fail(QueueError(f"unknown transport {name!r} (transports: "
                                   f"{', '.join(sorted(known)) or 'none defined'})"))
        try:
            check_transport_name(name)
        except QueueError as e:
            return fail(e)
        d = self.store.set_transport(queue_id, name)

        def logged(n: int) -> int:
            if n:
                log.info("queue {queue_id}: transport override {name}", queue_id=queue_id,
                         name=name)
                self._notify()
            return n

        return d.addCallback(logged)

    def set_requiretls(self, queue_id: str, setting: str) -> Deferred[bool]:
        """``mxd queue requiretls ID yes|no|default`` (RFC 8689 admin override); fires False for
        an unknown id, errbacks with QueueError for a bad setting.  Takes effect at the
        message's next attempt."""
        if setting not in qs.TLS_OVERRIDES:
            return fail(QueueError(f"REQUIRETLS setting must be one of "
                                   f"{', '.join(qs.TLS_OVERRIDES)}, not {setting!r}"))
        d = self.store.set_tls_override(queue_id, setting)

        def logged(found: bool) -> bool:
            if found:
                log.info("REQUIRETLS of {queue_id} set to {setting}", queue_id=queue_id,
                         setting=setting)
            return found

        return d.addCallback(logged)

    def tls_domains(self, domain: str | None = None, account: str | None = None
                    ) -> Deferred[builtins.list[qs.DomainTLS]]:
        """The last TLS result per recipient domain (STARTTLS, REQUIRETLS, verified); with
        ``account``: as the messages of that sending account found it."""
        return self.store.domain_tls(domain, account)

    def requiretls_ready(self, domains: builtins.list[str]) -> Deferred[dict[str, bool]]:
        """Per domain: REQUIRETLS offered over verified TLS at the last connection."""
        return self.store.requiretls_ready(domains)

    def counts(self) -> Deferred[dict[str, int]]:
        return self.store.counts()
