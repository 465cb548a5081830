"""Fetching MTA-STS policies over HTTPS (RFC 8461 §3.3): a thin Twisted adapter.

``PolicyFetcher.fetch(domain)`` GETs ``https://mta-sts.<domain>/.well-known/mta-sts.txt``:

* the host name is resolved with mxd's resolver (never the system resolver), and always for
  the recipient domain itself, never a CNAME target of it (RFC 8461 §4);
* the server certificate must validate for ``mta-sts.<domain>`` against the trust root
  (the system CA store by default, ``FetchSettings.trust_root`` in tests);
* redirects are not followed: any status but 200 fails (§3.3);
* the media type must be ``text/plain`` (§3.2), the body at most ``max_size`` bytes (64 KiB,
  §3.3), and the whole exchange must finish within ``timeout`` seconds.

The Deferred fires with a ``FetchedPolicy`` or errbacks with ``PolicyFetchError`` whose
``result_type`` is the RFC 8460 §4.3.2 word (sts-policy-fetch-error, sts-policy-invalid,
sts-webpki-invalid).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from OpenSSL import SSL
from service_identity import VerificationError as ServiceIdentityError
from service_identity.exceptions import CertificateError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, TimeoutError
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.ssl import optionsForClientTLS, platformTrust
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mxd.dns.errors import DNSLookupError
from mxd.dns.interfaces import IResolver
from mxd.mtasts.policy import (
    MAX_POLICY_SIZE,
    Policy,
    PolicySyntaxError,
    STSError,
    parse_policy,
    policy_url,
)
from mxd.tlsrpt.results import ResultType

log = Logger()


@attrs.frozen
class FetchSettings:
    """Limits of a policy fetch.  ``port`` is 443 except in tests; ``trust_root`` is a
    Twisted ``IOpenSSLTrustRoot`` (None: the platform's CA store)."""

    timeout: float = 60.0
    max_size: int = MAX_POLICY_SIZE
    port: int = 443
    trust_root: Any = None
    user_agent: str = "mxd MTA-STS"


@attrs.frozen
class FetchedPolicy:
    policy: Policy
    text: str


class PolicyFetchError(STSError):
    """A policy could not be fetched or parsed; ``result_type`` is RFC 8460's word."""

    def __init__(self, detail: str,
                 result_type: ResultType = ResultType.STS_POLICY_FETCH_ERROR) -> None:
        self.detail = detail
        self.result_type = result_type
        super().__init__(detail)


async def _addresses(resolver: IResolver, host: str) -> list[str]:
    found: list[str] = []
    errors: list[str] = []
    for lookup in (resolver.lookup_a, resolver.lookup_aaaa):
        try:
            answer = await lookup(host)
        except DNSLookupError as e:
            errors.append(str(e))
            continue
        found.extend(str(r) for r in answer.records)
    if not found:
        raise PolicyFetchError(f"no address for {host}: {'; '.join(errors)}")
    return found


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    """Connects to the policy host's address found by mxd's resolver, TLS-verified."""

    def __init__(self, reactor: Any, resolver: IResolver, settings: FetchSettings) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._settings = settings

    def endpointForURI(self, uri: URI) -> Any:
        return _ResolvingEndpoint(self, uri.host.decode("ascii"), uri.port)


class _ResolvingEndpoint:
    def __init__(self, factory: _EndpointFactory, host: str, port: int) -> None:
        self._f = factory
        self._host = host
        self._port = port

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> Any:
        f = self._f
        trust = f._settings.trust_root if f._settings.trust_root is not None else platformTrust()
        creator = optionsForClientTLS(self._host, trustRoot=trust)
        last: Exception | None = None
        for ip in await _addresses(f._resolver, self._host):
            endpoint_class = (TCP6ClientEndpoint if ipaddress.ip_address(ip).version == 6
                              else TCP4ClientEndpoint)
            tcp: Any = endpoint_class(f._reactor, ip, self._port, timeout=f._settings.timeout)
            # (wrapClientTLS would schedule TLS writes on the global reactor.)
            tls_factory = TLSMemoryBIOFactory(creator, True, protocol_factory, clock=f._reactor)
            try:
                tls_protocol = await tcp.connect(tls_factory)
                return tls_protocol.wrappedProtocol
            except ConnectError as e:
                last = e
        raise PolicyFetchError(f"cannot connect to {self._host}: {last}")


class _BodyReader(TwistedProtocol):
    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self._limit = limit
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(PolicyFetchError(f"policy larger than {self._limit} bytes",
                                                ResultType.STS_POLICY_INVALID))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if reason is None or reason.check(ResponseDone):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(PolicyFetchError(f"policy body incomplete: {reason.value}"))


class _Discard(TwistedProtocol):
    """Stops reading a body nobody wants."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _is_tls_failure(failure: Failure | BaseException) -> bool:
    """Whether an Agent error was a TLS handshake/verification failure."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, (SSL.Error, ServiceIdentityError, CertificateError)):
        return True
    for sub in getattr(exc, "reasons", None) or []:
        if _is_tls_failure(sub):
            return True
    return False


class PolicyFetcher:
    """Fetches MTA-STS policies; ``reactor`` provides IReactorTCP and IReactorTime."""

    def __init__(self, reactor: Any, resolver: IResolver,
                 settings: FetchSettings | None = None) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self.settings = settings or FetchSettings()
        self._agent = Agent.usingEndpointFactory(
            reactor, _EndpointFactory(reactor, resolver, self.settings),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )

    def url(self, domain: str) -> str:
        url = policy_url(domain)
        if self.settings.port != 443:
            host = url.split("/")[2]
            url = url.replace(host, f"{host}:{self.settings.port}", 1)
        return url

    def fetch(self, domain: str) -> Deferred[FetchedPolicy]:
        """Fetch and parse the policy of ``domain`` (see the module docstring)."""
        d = Deferred.fromCoroutine(self._fetch(domain))
        d.addTimeout(self.settings.timeout, self._reactor)

        def timed_out(f: Failure) -> Failure:
            if f.check(TimeoutError, defer.TimeoutError, defer.CancelledError):
                raise PolicyFetchError(f"no policy within {self.settings.timeout}s")
            return f

        return d.addErrback(timed_out)

    async def _fetch(self, domain: str) -> FetchedPolicy:
        url = self.url(domain)
        headers = Headers({b"User-Agent": [self.settings.user_agent.encode()]})
        try:
            response = await self._agent.request(b"GET", url.encode("ascii"), headers)
        except PolicyFetchError:
            raise
        except defer.CancelledError:
            raise
        except Exception as e:
            if any(r.check(defer.CancelledError) for r in getattr(e, "reasons", None) or []):
                raise defer.CancelledError() from e  # the timeout fired
            if _is_tls_failure(e):
                raise PolicyFetchError(f"TLS with {url} failed: {e}",
                                       ResultType.STS_WEBPKI_INVALID) from e
            raise PolicyFetchError(f"fetching {url} failed: {e}") from e
        if response.code != 200:  # RFC 8461 §3.3: no redirects; anything else is a failure
            response.deliverBody(_Discard())
            raise PolicyFetchError(f"HTTP {response.code} from {url}")
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if ctype.split(b";")[0].strip().lower() != b"text/plain":  # RFC 8461 §3.2
            response.deliverBody(_Discard())
            raise PolicyFetchError(f"media type {ctype.decode('latin-1')!r} is not text/plain",
                                   ResultType.STS_POLICY_INVALID)
        if response.length is not None and isinstance(response.length, int) and (
                response.length > self.settings.max_size):
            response.deliverBody(_Discard())
            raise PolicyFetchError(f"policy larger than {self.settings.max_size} bytes",
                                   ResultType.STS_POLICY_INVALID)
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_BodyReader(self.settings.max_size, done))
        body = await done
        try:
            policy = parse_policy(body)
        except PolicySyntaxError as e:
            raise PolicyFetchError(f"invalid policy: {e}", ResultType.STS_POLICY_INVALID) from e
        log.debug("fetched MTA-STS policy of {domain}: mode {mode}", domain=domain,
                  mode=policy.mode.value)
        return FetchedPolicy(policy, body.decode("utf-8"))
