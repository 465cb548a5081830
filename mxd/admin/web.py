"""Admin HTTP pages and the Prometheus /metrics endpoint (loopback only by default)."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from twisted.web import resource, server

import mxd
from mxd.metrics import PrometheusMetrics


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: PrometheusMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        body, ctype = self._metrics.render()
        request.setHeader(b"content-type", ctype.encode())
        return body


class _Status(resource.Resource):
    isLeaf = True

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._status = status

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'")
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self._status().items())
        return (f"<!doctype html><title>mxd</title><h1>mxd {html.escape(mxd.__version__)}</h1>"
                f"<table>{rows}</table>").encode()


def admin_site(status: Callable[[], dict[str, Any]],
               metrics: PrometheusMetrics | None = None) -> server.Site:
    root = resource.Resource()
    status_page: Any = _Status(status)
    root.putChild(b"", status_page)
    root.putChild(b"status", status_page)
    if metrics is not None:
        metrics_page: Any = _Metrics(metrics)
        root.putChild(b"metrics", metrics_page)
    site = server.Site(root)
    site.displayTracebacks = False
    return site
