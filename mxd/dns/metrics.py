"""The metrics seam of mxd.dns: an object with ``inc`` and ``observe`` (no-op by default).

Names used: ``dns_lookups_total{rdtype,outcome,cache}``, ``dns_lookup_seconds{rdtype}``,
``dns_exchanges_total{nameserver,outcome}``, ``dns_ignored_responses_total{transport}``,
``dns_tcp_fallbacks_total``.
"""

from __future__ import annotations

from typing import Protocol


class Metrics(Protocol):
    def inc(self, name: str, **labels: str) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...


class NoMetrics:
    """Metrics that go nowhere."""

    def inc(self, name: str, **labels: str) -> None:
        pass

    def observe(self, name: str, value: float, **labels: str) -> None:
        pass
