"""``IQueueStore`` (mxd.queue.storage) over the embedded SQLite store: each operation is
one ``transact`` of the SQL in ``mxd.store.queuedb`` (SQL that PostgreSQL runs too:
mxd.store.postgres.PostgresQueueStore is this over the PostgreSQL store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from twisted.internet.defer import Deferred

from mxd.store import queuedb as qs
from mxd.store.interfaces import Accepted, BlobWriter, Delivery, MessageProps, OutboundMessage
from mxd.store.sqlbase import Conn
from mxd.store.sqlite import SQLiteStore
from mxd.tlsrpt.results import TLSAttempt


class SQLiteQueueStore:
    """The queue's storage in the mail store's SQLite database."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def new_blob(self) -> BlobWriter:
        return self.store.new_blob()

    def open_blob(self, blob_id: str) -> BinaryIO:
        return self.store.open_blob(blob_id)

    def accept(self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
               outbound: OutboundMessage | None = None,
               queue_id: str | None = None) -> Deferred[Accepted]:
        return self.store.accept(blob, targets, props, outbound, queue_id)

    def recover_inflight(self, now: float) -> Deferred[int]:
        return self.store.transact(lambda c: qs.recover_inflight(c, now))

    def claim_due(self, now: float, *, free: int, running: dict[str, int], per_domain: int,
                  batch: int, max_rcpts: int, lease: float,
                  owner: str | None = None) -> Deferred[qs.Claimed]:
        return self.store.transact(lambda c: qs.claim_due(
            c, now, free=free, running=running, per_domain=per_domain, batch=batch,
            max_rcpts=max_rcpts, lease=lease, owner=owner))

    def renew_leases(self, recipient_ids: Sequence[int], now: float, lease: float,
                     owner: str | None = None) -> Deferred[int]:
        ids = list(recipient_ids)
        return self.store.transact(lambda c: qs.renew_leases(c, ids, now, lease, owner))

    def release_owner(self, owner: str, now: float) -> Deferred[int]:
        return self.store.transact(lambda c: qs.release_owner(c, owner, now))

    async def _record(self, m: qs.QueuedMessage, result: qs.AttemptResult, now: float,
                      dsn: tuple[BlobWriter, OutboundMessage, str] | None) -> None:
        dsn_blob = await self.store.commit_blob(dsn[0]) if dsn is not None else None

        def op(c: Conn) -> None:
            for a in result.attempts:
                qs.log_attempt(c, a)
            for d in result.domains:
                qs.record_domain_tls(c, d, m.sender_account)
            for rid in result.finished:
                qs.finish_recipient(c, rid)
            for f in result.deferred:
                qs.defer_recipient(c, f.recipient_id, next_attempt=f.next_attempt, now=now,
                                   code=f.code, enhanced=f.enhanced, text=f.text, host=f.host,
                                   delay_dsn_sent=f.delay_dsn_sent)
            blob = qs.remove_message_if_done(c, m.id)
            if blob is not None:
                self.store.unref_blob(c, blob)
            if dsn is not None and dsn_blob is not None:
                self.store.ref_blob(c, dsn_blob)
                qs.insert_message(c, dsn[2], dsn_blob, dsn[1], now, is_dsn=True)

        await self.store.transact(op)

    def record_result(self, m: qs.QueuedMessage, result: qs.AttemptResult, now: float,
                      dsn: tuple[BlobWriter, OutboundMessage, str] | None = None,
                      ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._record(m, result, now, dsn))

    def list_messages(self, domain: str | None = None, sender: str | None = None,
                      held: bool | None = None, limit: int = 1000,
                      ) -> Deferred[list[qs.QueuedMessage]]:
        return self.store.transact(lambda c: qs.list_messages(
            c, domain=domain, sender=sender, held=held, limit=limit))

    def show(self, queue_id: str,
             ) -> Deferred[tuple[qs.QueuedMessage, list[qs.AttemptRecord]] | None]:
        def op(c: Conn) -> tuple[qs.QueuedMessage, list[qs.AttemptRecord]] | None:
            m = qs.get_message(c, queue_id)
            return None if m is None else (m, qs.attempts_for(c, queue_id))
        return self.store.transact(op)

    def hold(self, queue_id: str | None, domain: str | None, recipient: str | None,
             hold: bool) -> Deferred[int]:
        return self.store.transact(lambda c: qs.op_hold(c, queue_id, domain, recipient, hold))

    def kick(self, now: float, queue_id: str | None, domain: str | None,
             recipient: str | None) -> Deferred[int]:
        return self.store.transact(lambda c: qs.op_kick(c, now, queue_id, domain, recipient))

    def drop(self, queue_id: str | None, domain: str | None,
             recipient: str | None) -> Deferred[int]:
        return self.store.transact(
            lambda c: qs.op_drop(c, self.store.unref_blob, queue_id, domain, recipient))

    def set_tls_override(self, queue_id: str, setting: str) -> Deferred[bool]:
        return self.store.transact(lambda c: qs.op_requiretls(c, queue_id, setting))

    def set_transport(self, queue_id: str, name: str) -> Deferred[int]:
        return self.store.transact(lambda c: qs.op_transport(c, queue_id, name))

    def domain_tls(self, domain: str | None = None,
                   account: str | None = None) -> Deferred[list[qs.DomainTLS]]:
        return self.store.transact(lambda c: qs.domain_tls(c, domain, account))

    def requiretls_ready(self, domains: Sequence[str]) -> Deferred[dict[str, bool]]:
        return self.store.transact(lambda c: qs.requiretls_ready(c, domains))

    def counts(self) -> Deferred[dict[str, int]]:
        return self.store.transact(qs.count_recipients)

    def tls_attempts_between(self, start: float, end: float) -> Deferred[list[TLSAttempt]]:
        return self.store.transact(lambda c: qs.tls_attempts_between(c, start, end))
