"""Metrics behind an interface: a no-op default, Prometheus wired only by the composition layer.

Library code calls ``metrics.inc("smtp_connections", tls="yes")`` and friends on whatever
object it was given; it never imports prometheus_client.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
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


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How a gauge of several processes (``[server] workers``) is shown: per-process counts add
# up over the live processes; the rest (build_info, queue_recipients: every process sees
# the same shared store) show the value set last.
GAUGE_MODES = {"imap_sessions": "livesum"}


def enable_multiprocess(directory: Path) -> None:
    """Metrics of this process and of the workers it starts (they inherit the
    environment) go to files in ``directory`` (emptied now), prometheus_client's
    multiprocess mode; ``/metrics`` in this process then shows them all together.
    Must run before the first metric is made."""
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    if os.geteuid() == 0:
        # Made before twistd drops privileges: owned like the data directory above it,
        # so the processes that write there after the drop can.
        owner = directory.parent.parent.stat()
        for d in (directory.parent, directory):
            os.chown(d, owner.st_uid, owner.st_gid)
    os.environ[MULTIPROC_ENV] = str(directory)
    import prometheus_client.values as values

    # The value class is chosen when prometheus_client is first imported; choose again.
    values.ValueClass = values.get_value_class()


def process_ended(pid: int) -> None:
    """A worker process ended: its live gauges no longer count (its counters do)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class PrometheusMetrics:
    """Creates prometheus_client metrics lazily, named ``mxd_<name>``.

    A metric's label names are fixed by its first use; a later call with other label
    names is a programming error and raises ValueError.  In multiprocess mode (see
    ``enable_multiprocess``) ``render`` gathers every process's metrics.
    """

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client

        self._pc = prometheus_client
        self.registry = registry or prometheus_client.CollectorRegistry()
        self._metrics: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._multiproc = os.environ.get(MULTIPROC_ENV)

    def _get(self, kind: str, name: str, labels: dict[str, str]) -> Any:
        key = (kind, name)
        with self._lock:
            m = self._metrics.get(key)
            if m is None:
                cls = {"counter": self._pc.Counter, "histogram": self._pc.Histogram,
                       "gauge": self._pc.Gauge}[kind]
                extra: dict[str, Any] = {}
                if kind == "gauge" and self._multiproc:
                    extra["multiprocess_mode"] = GAUGE_MODES.get(name, "mostrecent")
                m = cls(f"mxd_{name}", f"mxd {name}", sorted(labels), registry=self.registry,
                        **extra)
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
        if self._multiproc:
            from prometheus_client import multiprocess

            registry = self._pc.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._multiproc)
            return self._pc.generate_latest(registry), self._pc.CONTENT_TYPE_LATEST
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
