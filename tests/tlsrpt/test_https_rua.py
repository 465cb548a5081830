"""https: rua (RFC 8460 §5.4) against a real twisted.web HTTPS server on loopback with a
certificate from a test CA: a valid gzipped report arrives when the CA is trusted, a 500
answer is retried, a server whose certificate the sender does not trust gets nothing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
import trustme
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.protocols import tls
from twisted.web import resource, server

from mxd.dns.testing import FakeResolver, run_with_reactor
from mxd.tlsrpt.results import TLSAttempt
from mxd.tlsrpt.send import TLSReporter, https_poster
from tests.tlsrpt.schema import REPORT_SCHEMA
from tests.tlsrpt.test_send import ATTEMPTS, MIDNIGHT, SETTINGS, FakeQueue


class Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = statuses
        self.received: list[tuple[bytes | None, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        self.received.append((request.getHeader(b"content-type"), request.content.read()))
        request.setResponseCode(self.statuses.pop(0) if self.statuses else 200)
        return b"ok"


def _run(tmp_path: Path, statuses: list[int], trusted: bool,
         monkeypatch: pytest.MonkeyPatch) -> tuple[Endpoint, bool]:
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    endpoint = Endpoint(statuses)

    async def scenario(reactor: Any) -> tuple[Endpoint, bool]:
        # TLSMemoryBIOProtocol flushes small writes on the global reactor unless told
        # otherwise; these tests run a private one.
        monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
        ctx = ssl.PrivateCertificate.loadPEM(
            cert.private_key_pem.bytes() + cert.cert_chain_pems[0].bytes()).options()
        port = reactor.listenSSL(0, server.Site(endpoint, reactor=reactor), ctx, interface="127.0.0.1")
        try:
            trust = (ca if trusted else other).cert_pem.bytes()
            root = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(trust)])
            resolver = FakeResolver()
            resolver.add("_smtp._tls.mx2.b.example", "TXT", [
                f"v=TLSRPTv1; rua=https://127.0.0.1:{port.getHost().port}/tlsrpt".encode()])

            def attempts(start: float, end: float) -> Deferred[list[TLSAttempt]]:
                return succeed([a for a in ATTEMPTS if start <= a.time < end])

            rep = TLSReporter(attempts, resolver, FakeQueue(), reactor,
                              attrs.evolve(SETTINGS, https_retries=(0.05, 0.05)), sign=None,
                              post=https_poster(reactor, root, timeout=5),
                              state=tmp_path / "state")
            rep.clock = _Shifted(reactor)  # the day after the attempts, on the real reactor
            assert await rep.run_once() == 1
            [pending] = rep.pending
            return endpoint, bool(await pending)
        finally:
            await port.stopListening()

    return run_with_reactor(scenario, timeout=30)


class _Shifted:
    """The reactor's timers with seconds() moved to just after MIDNIGHT."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def seconds(self) -> float:
        return MIDNIGHT + 60

    def callLater(self, delay: float, fn: Any, *a: Any, **kw: Any) -> Any:
        return self.reactor.callLater(delay, fn, *a, **kw)


def test_trusted_endpoint_receives_a_valid_gzipped_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted server certificate: one POST of the gzipped report, valid per §4.4."""
    endpoint, ok = _run(tmp_path, [], trusted=True, monkeypatch=monkeypatch)
    assert ok
    [(ctype, body)] = endpoint.received
    assert ctype == b"application/tlsrpt+gzip"
    doc = json.loads(gzip.decompress(body))
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["policies"][0]["policy"]["policy-domain"] == "mx2.b.example"


def test_500_is_retried_until_it_is_taken(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 500 answers, then 200: three POSTs, the last one counts."""
    endpoint, ok = _run(tmp_path, [500, 500], trusted=True, monkeypatch=monkeypatch)
    assert ok and len(endpoint.received) == 3


def test_untrusted_certificate_gets_nothing(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate from a CA the sender does not trust: no request ever reaches it."""
    endpoint, ok = _run(tmp_path, [], trusted=False, monkeypatch=monkeypatch)
    assert not ok and endpoint.received == []
