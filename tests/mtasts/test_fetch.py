"""MTA-STS policy fetching over HTTPS against a loopback twisted.web server (RFC 8461 §3.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource, server
from zope.interface import implementer

from mxd.dns.testing import FakeResolver, run_with_reactor
from mxd.mtasts.cache import MemoryPolicyCache
from mxd.mtasts.fetch import FetchSettings, PolicyFetcher, PolicyFetchError
from mxd.mtasts.policy import Mode
from mxd.mtasts.resolve import STSResolver
from mxd.tlsrpt.results import ResultType

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"


class PolicyResource(resource.Resource):
    """Serves /.well-known/mta-sts.txt in the way ``behaviour`` says."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.behaviour = "ok"
        self.requests: list[tuple[bytes, bytes | None]] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append((request.path, request.getHeader(b"host")))
        b = self.behaviour
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"not found"
        if b == "redirect":
            request.setResponseCode(301)
            request.setHeader(b"location", b"https://elsewhere.test/.well-known/mta-sts.txt")
            return b""
        if b == "hang":
            return server.NOT_DONE_YET
        if b == "html":
            request.setHeader(b"content-type", b"text/html")
            return POLICY
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if b == "big":
            return POLICY + b"x-pad: " + b"a" * 70000 + b"\r\n"
        if b == "invalid":
            return b"version: STSv1\r\nmode: sometimes\r\n"
        return POLICY


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Server-side TLS presenting a trustme leaf and its chain (cryptography objects)."""

    def __init__(self, leaf: trustme.LeafCert) -> None:
        pems = [x509.load_pem_x509_certificate(b.bytes()) for b in leaf.cert_chain_pems]
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(pems[0])
        for extra in pems[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None))
        self._ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        return conn


@pytest.fixture(scope="module")
def certs() -> dict[str, Any]:
    ca = trustme.CA()
    other = trustme.CA()
    return {
        "ca": ca,
        "good": ca.issue_cert("mta-sts.example.test"),
        "wrong_name": ca.issue_cert("mta-sts.other.test"),
        "untrusted": other.issue_cert("mta-sts.example.test"),
    }


def _fetch_with_server(certs: dict[str, Any], behaviour: str, cert: str = "good",
                       timeout: float = 10.0, extra: Callable[..., Any] | None = None) -> Any:
    """Start the HTTPS server on a private reactor, run a fetch (or ``extra``), stop it."""
    res = PolicyResource()
    res.behaviour = behaviour
    options = ServerTLS(certs[cert])
    trust = ssl.Certificate.loadPEM(certs["ca"].cert_pem.bytes())

    async def go(reactor: Any) -> Any:
        site = server.Site(res, reactor=reactor)
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(options, False, site, clock=reactor),
                                 interface="127.0.0.1")
        dns = FakeResolver()
        dns.add("mta-sts.example.test", "A", ["127.0.0.1"])
        fetcher = PolicyFetcher(reactor, dns, FetchSettings(
            timeout=timeout, port=port.getHost().port, trust_root=trust))
        try:
            if extra is not None:
                return await extra(fetcher, dns)
            try:
                return await fetcher.fetch("example.test")
            except PolicyFetchError as e:
                return e
        finally:
            await port.stopListening()

    result = run_with_reactor(go, timeout=30)
    return result, res


def test_fetch_ok(certs: dict[str, Any]) -> None:
    """A text/plain policy over verified TLS is fetched and parsed; Host names mta-sts."""
    result, res = _fetch_with_server(certs, "ok")
    assert result.policy.mode is Mode.ENFORCE and result.text == POLICY.decode()
    path, host = res.requests[0]
    assert path == b"/.well-known/mta-sts.txt" and host.startswith(b"mta-sts.example.test")


def test_redirect_refused(certs: dict[str, Any]) -> None:
    """A 3xx is not followed: the fetch fails (RFC 8461 §3.3)."""
    result, res = _fetch_with_server(certs, "redirect")
    assert isinstance(result, PolicyFetchError) and "HTTP 301" in result.detail
    assert result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert len(res.requests) == 1


def test_oversize_refused(certs: dict[str, Any]) -> None:
    """A body over 64 KiB is refused as sts-policy-invalid."""
    result, _ = _fetch_with_server(certs, "big")
    assert isinstance(result, PolicyFetchError) and "larger" in result.detail
    assert result.result_type is ResultType.STS_POLICY_INVALID


def test_wrong_content_type_refused(certs: dict[str, Any]) -> None:
    """A policy served as text/html is refused (RFC 8461 §3.2)."""
    result, _ = _fetch_with_server(certs, "html")
    assert isinstance(result, PolicyFetchError) and "text/html" in result.detail
    assert result.result_type is ResultType.STS_POLICY_INVALID


def test_invalid_policy(certs: dict[str, Any]) -> None:
    """A body that is not a valid policy is sts-policy-invalid."""
    result, _ = _fetch_with_server(certs, "invalid")
    assert isinstance(result, PolicyFetchError)
    assert result.result_type is ResultType.STS_POLICY_INVALID


@pytest.mark.parametrize("cert", ["untrusted", "wrong_name"])
def test_certificate_must_validate(certs: dict[str, Any], cert: str) -> None:
    """A certificate from an unknown CA or for another name is sts-webpki-invalid."""
    result, res = _fetch_with_server(certs, "ok", cert=cert)
    assert isinstance(result, PolicyFetchError), result
    assert result.result_type is ResultType.STS_WEBPKI_INVALID
    assert res.requests == []


def test_timeout(certs: dict[str, Any]) -> None:
    """A server that never answers fails the fetch after the timeout."""
    result, _ = _fetch_with_server(certs, "hang", timeout=0.3)
    assert isinstance(result, PolicyFetchError) and "within 0.3s" in result.detail


def test_no_address_is_fetch_error(certs: dict[str, Any]) -> None:
    """A policy host without address records is a fetch error, not a crash."""

    async def other_domain(fetcher: PolicyFetcher, dns: FakeResolver) -> Any:
        try:
            return await fetcher.fetch("nowhere.test")
        except PolicyFetchError as e:
            return e

    result, _ = _fetch_with_server(certs, "ok", extra=other_domain)
    assert isinstance(result, PolicyFetchError) and "no address" in result.detail


def test_cached_policy_used_when_server_later_down(certs: dict[str, Any]) -> None:
    """A policy fetched once stays in force when the server is gone and the id changed."""
    cache = MemoryPolicyCache()
    clock = Clock()
    clock.advance(1_800_000_000)

    async def first(fetcher: PolicyFetcher, dns: FakeResolver) -> Any:
        dns.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=1"])
        return await STSResolver(dns, fetcher, cache, clock).lookup("example.test")

    got, _ = _fetch_with_server(certs, "ok", extra=first)
    assert got.enforce and not got.from_cache

    async def later(reactor: Any) -> Any:  # no server listening any more
        dns = FakeResolver()
        dns.add("mta-sts.example.test", "A", ["127.0.0.1"])
        dns.add("_mta-sts.example.test", "TXT", [b"v=STSv1; id=2"])
        from tests.integration.tools import free_port

        fetcher = PolicyFetcher(reactor, dns, FetchSettings(timeout=5, port=free_port()))
        return await STSResolver(dns, fetcher, cache, clock).lookup("example.test")

    clock.advance(3600)
    again = run_with_reactor(later, timeout=30)
    assert again.enforce and again.from_cache
    assert again.failure is ResultType.STS_POLICY_FETCH_ERROR
