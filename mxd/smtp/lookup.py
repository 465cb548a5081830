"""A short-lived cache in front of the directory for recipient lookups.

Each RCPT would otherwise cost a round trip to the store; with many sessions delivering to
the same few mailboxes the answers repeat.  Entries live ``ttl`` seconds (negative answers
too, which also slows address harvesting down a little); a stale positive answer is
harmless: delivery to a deleted account fails in the store and the client gets 451.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from mxd.smtp.interfaces import IDirectory
from mxd.store.interfaces import Account


class CachingDirectory:
    """``IDirectory`` with ``resolve_recipient`` answers cached for ``ttl`` seconds."""

    def __init__(self, directory: IDirectory, clock: Any, ttl: float = 30.0,
                 max_entries: int = 10000) -> None:
        self._directory = directory
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[str, tuple[float, Account | None]] = {}

    def resolve_recipient(self, address: str) -> Deferred[Account | None]:
        now = self._clock.seconds()
        hit = self._cache.get(address)
        if hit is not None and hit[0] > now:
            return succeed(hit[1])

        def store(account: Account | None) -> Account | None:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[address] = (self._clock.seconds() + self._ttl, account)
            return account

        return self._directory.resolve_recipient(address).addCallback(store)

    def is_local_domain(self, domain: str) -> bool:
        return self._directory.is_local_domain(domain)

    def may_send_as(self, account_name: str, address: str) -> Deferred[bool]:
        return self._directory.may_send_as(account_name, address)
