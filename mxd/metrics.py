"""Metrics behind an interface: a no-op default, Prometheus wired only by the composition layer.

Library code calls ``metrics.inc("smtp_connections", tls="yes")`` and friends on whatever
object it was given; it never imports prometheus_client.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class IMetrics(Protocol):
    def inc(self, name: str, value: float = 1, **labels: str) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...

    def set(self, name: str, value: float, **labels: str) -> None: ...


class NoopMetrics:
    """Discards everything."""

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        pass

    def observe(self, name: str, value: float, **labels: str) -> None:
        pass

    def set(self, name: str, value: float, **labels: str) -> None:
        pass


class PrometheusMetrics:
    """Creates prometheus_client metrics lazily, named ``mxd_<name>``.

    A metric's label names are fixed by its first use; a later call with other label
    names is a programming error and raises ValueError.
    """

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client

        self._pc = prometheus_client
        self.registry = registry or prometheus_client.CollectorRegistry()
        self._metrics: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _get(self, kind: str, name: str, labels: dict[str, str]) -> Any:
        key = (kind, name)
        with self._lock:
            m = self._metrics.get(key)
            if m is None:
                cls = {"counter": self._pc.Counter, "histogram": self._pc.Histogram,
                       "gauge": self._pc.Gauge}[kind]
                m = cls(f"mxd_{name}", f"mxd {name}", sorted(labels), registry=self.registry)
                self._metrics[key] = m
        return m.labels(**labels) if labels else m

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self._get("counter", name, labels).inc(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._get("histogram", name, labels).observe(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._get("gauge", name, labels).set(value)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
