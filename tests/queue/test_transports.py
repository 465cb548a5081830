"""mxd.queue.transports: TLS policy toward smarthosts, REQUIRETLS refusal, SASL
credentials; and the per-transport metrics of the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mxd.queue import transports as tp
from mxd.queue.routes import Route, RouteTable, SmarthostTLS, Transport, TransportKind
from mxd.smtp.client import TLSMode
from tests.queue.test_runner import World


def _t(kind: TransportKind, tls: SmarthostTLS) -> Transport:
    return Transport("t", kind, host="relay.test", tls=tls, username="u", password="p")


@pytest.mark.parametrize(("kind", "tls", "tls_required_no", "mode", "verifying"), [
    (TransportKind.SMTP, SmarthostTLS.VERIFIED, False, TLSMode.VERIFIED, True),
    # RFC 8689 §5: TLS-Required: No relaxes verification; TLS is still used when offered
    (TransportKind.SMTP, SmarthostTLS.VERIFIED, True, TLSMode.OPPORTUNISTIC, False),
    (TransportKind.SMTP, SmarthostTLS.REQUIRED, False, TLSMode.REQUIRED, False),
    (TransportKind.SMTP, SmarthostTLS.OPPORTUNISTIC, False, TLSMode.OPPORTUNISTIC, False),
    (TransportKind.SMTP, SmarthostTLS.NONE, False, TLSMode.NONE, None),
    (TransportKind.SUBMISSION, SmarthostTLS.VERIFIED, False, TLSMode.VERIFIED, True),
    # implicit TLS (RFC 8314): there is no connection without TLS
    (TransportKind.SUBMISSIONS, SmarthostTLS.VERIFIED, True, TLSMode.REQUIRED, False),
    (TransportKind.SUBMISSIONS, SmarthostTLS.NONE, False, TLSMode.REQUIRED, False),
])
def test_smarthost_policy(kind: TransportKind, tls: SmarthostTLS, tls_required_no: bool,
                          mode: TLSMode, verifying: bool | None) -> None:
    from twisted.internet.ssl import CertificateOptions

    p = tp.smarthost_policy(_t(kind, tls), tls_required_no=tls_required_no)
    assert p.mode is mode and p.policy_domain == "relay.test"
    if verifying is None:
        assert p.client_options is None
    else:
        assert isinstance(p.client_options, CertificateOptions) is not verifying


def test_requiretls_refusal_and_auth() -> None:
    assert tp.requiretls_refusal(_t(TransportKind.SMTP, SmarthostTLS.VERIFIED)) is None
    why = tp.requiretls_refusal(_t(TransportKind.SUBMISSION, SmarthostTLS.REQUIRED))
    assert why is not None and "RFC 8689 §4.2" in why
    auth = tp.client_auth(Transport("s", TransportKind.SUBMISSIONS, host="h", username="u",
                                    password="p", mechanisms=("CRAM-MD5",)))
    assert auth is not None and auth.allowed_mechanisms == ("CRAM-MD5",)
    assert not auth.allow_plaintext  # credentials never go without TLS from the queue
    assert tp.client_auth(_t(TransportKind.SMTP, SmarthostTLS.VERIFIED)) is None


class RecordingMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counts[key] = self.counts.get(key, 0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        pass

    def set(self, name: str, value: float, **labels: str) -> None:
        pass


def test_metrics_per_transport(data_dir: Path) -> None:
    relay = Transport("relay", TransportKind.SMTP, host="192.0.2.99", tls=SmarthostTLS.NONE)
    w = World(data_dir, route_table=RouteTable(global_routes=(
        Route("relay", to_domains=("remote.test",)),)), transports=(relay,))
    metrics = RecordingMetrics()
    w.runner.metrics = metrics
    w.runner.direct.metrics = metrics
    try:
        w.sink.behaviour.rcpt["bad@other.test"] = "550 5.1.1 no"
        w.enqueue("x@remote.test", "y@remote.test")
        w.enqueue("bad@other.test")
        w.start()
        c: Any = metrics.counts
        assert c[("queue_transport_attempts", (("transport", "relay"),))] == 1
        assert c[("queue_transport_results", (("result", "delivered"),
                                              ("transport", "relay")))] == 2
        assert c[("queue_transport_results", (("result", "permanent"),
                                              ("transport", "direct")))] == 1
    finally:
        w.h.close()
