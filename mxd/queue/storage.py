"""What the outbound queue needs from storage: ``IQueueStore``.

The queue (``Queue``, ``QueueRunner``) reaches its rows only through these operations, in
the queue's own terms, so that a second backend (PostgreSQL) implements them without the
queue knowing SQL.  ``mxd.store.sqlitequeue.SQLiteQueueStore`` is the embedded one; the
values (``QueuedMessage``, ``AttemptRecord``, ...) are in ``mxd.store.queuedb``.  Every
write fires once durable; operations on several rows are one transaction each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO, Protocol

from twisted.internet.defer import Deferred

from mxd.store.interfaces import Accepted, BlobWriter, Delivery, MessageProps, OutboundMessage
from mxd.store.queuedb import (
    AttemptRecord,
    AttemptResult,
    Claimed,
    DomainTLS,
    QueuedMessage,
)
from mxd.tlsrpt.results import TLSAttempt


class IQueueStore(Protocol):
    # -- bodies and new messages ----------------------------------------------------------
    def new_blob(self) -> BlobWriter: ...

    def open_blob(self, blob_id: str) -> BinaryIO: ...

    def accept(self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
               outbound: OutboundMessage | None = None,
               queue_id: str | None = None) -> Deferred[Accepted]:
        """IMailStore.accept: the body, local copies and queue rows in one transaction."""

    # -- the runner ---------------------------------------------------------------------------
    def recover_inflight(self, now: float) -> Deferred[int]:
        """At start: recipients left in flight by a crash are due again now."""

    def claim_due(self, now: float, *, free: int, running: dict[str, int], per_domain: int,
                  batch: int, max_rcpts: int, lease: float,
                  owner: str | None = None) -> Deferred[Claimed]:
        """Lease due recipients for delivery to runner ``owner`` (see
        ``mxd.store.queuedb.claim_due``); of several runners each recipient goes to one."""

    def renew_leases(self, recipient_ids: Sequence[int], now: float, lease: float,
                     owner: str | None = None) -> Deferred[int]:
        """A delivery is still under way: its recipients' leases (``owner``'s, not yet
        run out) last ``lease`` seconds from ``now``; fires with how many were renewed."""

    def release_owner(self, owner: str, now: float) -> Deferred[int]:
        """Runner ``owner`` is gone: its in-flight recipients are due again now."""

    def record_result(self, m: QueuedMessage, result: AttemptResult, now: float,
                      dsn: tuple[BlobWriter, OutboundMessage, str] | None = None,
                      ) -> Deferred[None]:
        """Write a job's attempts and verdicts; a message with no recipient left goes with
        its body reference; ``dsn`` (body, envelope, queue id) is queued in the same
        transaction."""

    # -- admin ----------------------------------------------------------------------------------
    def list_messages(self, domain: str | None = None, sender: str | None = None,
                      held: bool | None = None, limit: int = 1000,
                      ) -> Deferred[list[QueuedMessage]]: ...

    def show(self, queue_id: str,
             ) -> Deferred[tuple[QueuedMessage, list[AttemptRecord]] | None]: ...

    def hold(self, queue_id: str | None, domain: str | None, recipient: str | None,
             hold: bool) -> Deferred[int]: ...

    def kick(self, now: float, queue_id: str | None, domain: str | None,
             recipient: str | None) -> Deferred[int]: ...

    def drop(self, queue_id: str | None, domain: str | None,
             recipient: str | None) -> Deferred[int]: ...

    def set_tls_override(self, queue_id: str, setting: str) -> Deferred[bool]: ...

    def set_transport(self, queue_id: str, name: str) -> Deferred[int]: ...

    def domain_tls(self, domain: str | None = None,
                   account: str | None = None) -> Deferred[list[DomainTLS]]:
        """The last TLS facts per recipient domain; with ``account``: that sending
        account's own (STARTTLS and REQUIRETLS support as its messages found them)."""

    def requiretls_ready(self, domains: Sequence[str]) -> Deferred[dict[str, bool]]: ...

    def counts(self) -> Deferred[dict[str, int]]: ...

    def tls_attempts_between(self, start: float, end: float) -> Deferred[list[TLSAttempt]]:
        """The TLS sessions of [start, end) for TLS reports (RFC 8460 §4.4)."""
