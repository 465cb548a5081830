"""Log lines (logfmt/JSON, levels, no secrets) and the metrics implementations."""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.logger import Logger, LogPublisher

from mxd.log import make_observer, render_event
from mxd.metrics import NoopMetrics, PrometheusMetrics


def _emit(fmt: str, level: str = "info", levels: dict[str, str] | None = None) -> str:
    out = io.StringIO()
    pub = LogPublisher(make_observer(level, fmt, levels, out))
    log = Logger(namespace="mxd.smtp.server", observer=pub)
    log.info("delivered {queue_id} to {mx}", queue_id="Q1", mx="mx.example.test", tls="TLSv1.3")
    log.debug("trace detail {x}", x=1)
    log.info("auth {user}", user="alice", password="hunter2", sasl_payload="c2VjcmV0")
    return out.getvalue()


def test_logfmt_line_has_named_fields():
    """logfmt lines carry level, namespace, rendered message and each named field."""
    first = _emit("logfmt").splitlines()[0]
    assert "level=info" in first and "ns=mxd.smtp.server" in first
    assert 'msg="delivered Q1 to mx.example.test"' in first
    assert "queue_id=Q1" in first and "tls=TLSv1.3" in first


def test_json_lines_parse():
    """JSON output is one object per line with the same fields."""
    lines = [json.loads(x) for x in _emit("json").splitlines()]
    assert lines[0]["queue_id"] == "Q1" and lines[0]["msg"] == "delivered Q1 to mx.example.test"


def test_levels_filter_by_namespace():
    """The default level hides debug; a per-namespace level shows it for that namespace."""
    assert "trace detail" not in _emit("logfmt")
    assert "trace detail" in _emit("logfmt", levels={"mxd.smtp": "debug"})


def test_secret_looking_fields_are_redacted():
    """Fields named like passwords or SASL payloads never reach the output."""
    text = _emit("logfmt") + _emit("json")
    assert "hunter2" not in text and "c2VjcmV0" not in text
    assert "<redacted>" in text


def test_render_event_quotes_values():
    """Values with spaces, quotes or newlines are quoted and escaped in logfmt."""
    line = render_event({"log_format": "x", "log_namespace": "n", "v": 'a "b"\nc'})
    assert 'v="a \\"b\\"\\nc"' in line


def test_prometheus_metrics_render():
    """Counters, gauges and histograms appear in the exposition text with labels."""
    m = PrometheusMetrics()
    m.inc("smtp_connections", tls="yes")
    m.inc("smtp_connections", 2, tls="yes")
    m.set("queue_size", 7)
    m.observe("dns_latency_seconds", 0.01, rtype="MX")
    body, ctype = m.render()
    text = body.decode()
    assert 'mxd_smtp_connections_total{tls="yes"} 3.0' in text
    assert "mxd_queue_size 7.0" in text
    assert 'mxd_dns_latency_seconds_count{rtype="MX"} 1.0' in text
    assert ctype.startswith("text/plain")


def test_noop_metrics_accepts_everything():
    """The default metrics object takes every call and keeps nothing."""
    m = NoopMetrics()
    m.inc("a", x="1")
    m.observe("b", 1.0)
    m.set("c", 2)
    assert vars(m) == {}


def test_one_metrics_seam_for_every_layer() -> None:
    """Every layer (SMTP, IMAP, SASL, DNS, queue) counts through mxd.metrics.IMetrics: the
    no-op default and the Prometheus implementation take the same calls."""
    import pytest

    from mxd.metrics import IMetrics, NoopMetrics, PrometheusMetrics

    pytest.importorskip("prometheus_client")
    for m in (NoopMetrics(), PrometheusMetrics()):
        seam: IMetrics = m
        seam.inc("dns_lookups_total", rdtype="A", outcome="ok", cache="miss")
        seam.inc("smtp_accepted_total", 2, role="smtp")
        seam.observe("dns_lookup_seconds", 0.01, rdtype="A")
        seam.set("queue_recipients", 3, state="queued")
    text = m.render()[0].decode()
    assert 'mxd_smtp_accepted_total{role="smtp"} 2.0' in text


_MULTIPROC_SCRIPT = r'''
import subprocess, sys
from pathlib import Path
from mxd.metrics import PrometheusMetrics, enable_multiprocess, process_ended
enable_multiprocess(Path(sys.argv[1]) / "run" / "metrics")
main = PrometheusMetrics()
main.inc("smtp_messages", 1, role="smtp")
child = ("from mxd.metrics import PrometheusMetrics\n"
         "m = PrometheusMetrics(); m.inc('smtp_messages', {n}, role='smtp')\n"
         "m.set('imap_sessions', {n}); m.observe('dns_lookup_seconds', 0.5, rdtype='A')\n"
         "import os; print(os.getpid())")
pids = [int(subprocess.run([sys.executable, "-c", child.format(n=n)], check=True,
                           capture_output=True, text=True).stdout) for n in (2, 3)]
print(main.render()[0].decode())
print("----")
process_ended(pids[0])
print(main.render()[0].decode())
'''


def test_metrics_of_worker_processes_are_added_up(tmp_path: Path) -> None:
    """With [server] workers the main process's /metrics shows every process: counters
    and histograms summed, per-process gauges summed over the live processes only."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MULTIPROC_SCRIPT, str(tmp_path)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    before, after = out.split("----")
    assert 'mxd_smtp_messages_total{role="smtp"} 6.0' in before
    assert 'mxd_dns_lookup_seconds_count{rdtype="A"} 2.0' in before
    assert "mxd_imap_sessions 5.0" in before
    assert "mxd_imap_sessions 3.0" in after  # the first child has ended
    assert 'mxd_smtp_messages_total{role="smtp"} 6.0' in after  # counts stay
