"""The resolver's cache: bounded (LRU), honouring TTLs and negative TTLs (RFC 2308 §5).

Keyed by (ASCII name, type). Each entry keeps the whole outcome, including whether it was
authentic, so a cached answer is exactly as trustworthy as the one that filled it. Time comes
from the caller (``IReactorTime.seconds()``) so tests use ``task.Clock``.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from mxd.dns.errors import DNSNegativeAnswer, DNSNoData, DNSNotFound
from mxd.dns.names import Domain
from mxd.dns.results import Answer, ExtendedError, Record


@attrs.frozen
class _Negative:
    not_found: bool
    authentic: bool
    canonical_name: Domain
    extended_errors: tuple[ExtendedError, ...]


@attrs.define
class _Entry:
    expires: float
    value: Answer[Record] | _Negative
    # The last Answer handed out with its remaining TTL: the TTL changes once a second,
    # and a busy server asks for the same names many times a second.
    last: Answer[Record] | None = None


CachedOutcome = Answer[Record] | DNSNotFound | DNSNoData


class Cache:
    """At most ``size`` outcomes; the least recently used goes first when full."""

    def __init__(self, size: int, max_ttl: int = 86400, max_negative_ttl: int = 10800) -> None:
        self.size = size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, outcome: CachedOutcome, now: float) -> None:
        """Remember ``outcome`` for its TTL (capped); TTL 0 outcomes are not kept."""
        if self.size <= 0:
            return
        value: Answer[Record] | _Negative
        if isinstance(outcome, Answer):
            ttl = min(outcome.ttl, self.max_ttl)
            value = outcome
        else:
            # RFC 2308 §5: negative answers are cached for the SOA-derived TTL.
            ttl = min(outcome.ttl, self.max_negative_ttl)
            value = _Negative(
                isinstance(outcome, DNSNotFound),
                outcome.authentic,
                outcome.canonical_name,
                outcome.extended_errors,
            )
        if ttl <= 0:
            return
        key = (outcome.name.ascii, outcome.rdtype)
        self._entries[key] = _Entry(now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def get(self, name: Domain, rdtype: int, now: float) -> CachedOutcome | None:
        """The cached outcome with its remaining TTL, or None (absent or expired)."""
        key = (name.ascii, rdtype)
        entry = self._entries.get(key)
        if entry is None:
            return None
        remaining = entry.expires - now
        if remaining <= 0:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        ttl = max(1, int(remaining))
        value = entry.value
        if isinstance(value, Answer):
            last = entry.last
            if last is None or last.ttl != ttl:
                last = entry.last = attrs.evolve(value, ttl=ttl, from_cache=True)
            return last
        cls: type[DNSNegativeAnswer] = DNSNotFound if value.not_found else DNSNoData
        neg = cls(
            name, rdtype, authentic=value.authentic, canonical_name=value.canonical_name,
            extended_errors=value.extended_errors, ttl=ttl,
        )
        assert isinstance(neg, DNSNotFound | DNSNoData)
        return neg

    def clear(self) -> None:
        self._entries.clear()
