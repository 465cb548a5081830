"""Refreshing cached MTA-STS policies in the background (RFC 8461 §5.1).

``STSRefresher`` is a Twisted service: every ``interval`` seconds it refreshes the cached
policies that expire within ``refresh_before`` seconds (``due_for_refresh``, pure), so a
domain that still publishes its policy never drops out of the cache between deliveries.
Expired entries of domains that no longer publish a TXT record are removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.mtasts.cache import CachedPolicy, IPolicyCache
from mxd.mtasts.resolve import STSResolver

log = Logger()


@attrs.frozen
class RefreshSettings:
    """``interval``: seconds between rounds; ``refresh_before``: refresh policies expiring
    within this many seconds; ``max_per_round`` bounds the work of one round."""

    interval: float = 3600.0
    refresh_before: float = 86400.0
    max_per_round: int = 200


def due_for_refresh(entries: Iterable[CachedPolicy], now: float,
                    settings: RefreshSettings) -> list[str]:
    """Domains whose cached policy expires within ``refresh_before``, soonest first."""
    due = sorted((e.expires_at, e.domain) for e in entries
                 if e.expires_at - now <= settings.refresh_before)
    return [d for _t, d in due[: settings.max_per_round]]


class STSRefresher(Service):
    """Runs ``due_for_refresh`` rounds on ``clock`` (IReactorTime)."""

    name = "mta-sts-refresher"

    def __init__(self, sts: STSResolver, cache: IPolicyCache, clock: Any,
                 settings: RefreshSettings | None = None) -> None:
        self.sts = sts
        self.cache = cache
        self.clock = clock
        self.settings = settings or RefreshSettings()
        self._call: Any = None
        self._running: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self._running

    def _schedule(self, delay: float) -> None:
        self._call = self.clock.callLater(delay, self._round)

    def _round(self) -> None:
        self._call = None
        d = Deferred.fromCoroutine(self.run_once())
        self._running = d

        def done(_: object) -> None:
            self._running = None
            if self.running:
                self._schedule(self.settings.interval)

        d.addErrback(lambda f: log.failure("MTA-STS refresh round failed", f))
        d.addBoth(done)

    async def run_once(self) -> list[str]:
        """One round; returns the domains refreshed."""
        now = self.clock.seconds()
        entries = [e for e in (self.cache.get(d) for d in self.cache.domains()) if e is not None]
        refreshed = []
        for domain in due_for_refresh(entries, now, self.settings):
            result = await self.sts.refresh(domain)
            entry = self.cache.get(domain)
            if entry is not None and entry.expired(self.clock.seconds()) and (
                    result.policy_id is None):
                self.cache.delete(domain)  # withdrawn and expired (RFC 8461 §8.3)
                log.info("MTA-STS policy of {domain} expired and withdrawn", domain=domain)
                continue
            if result.failure is not None:
                log.info("MTA-STS refresh of {domain}: {failure} {detail}", domain=domain,
                         failure=result.failure.value, detail=result.detail)
            refreshed.append(domain)
        return refreshed
