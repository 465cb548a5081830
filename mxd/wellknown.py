"""The public web endpoints on the https (443) and http (80) listeners.

https:
  GET  /.well-known/mta-sts.txt            our MTA-STS policy, on host mta-sts.<domain>
                                           (RFC 8461 §3.3: text/plain, HTTPS only)
  GET  /mail/config-v1.1.xml               Thunderbird autoconfig for autoconfig.<domain>
  GET  /.well-known/autoconfig/mail/config-v1.1.xml   the same, on the domain itself
  POST /autodiscover/autodiscover.xml      Microsoft autodiscover (POX)
http:
  GET  /.well-known/acme-challenge/TOKEN   ACME HTTP-01 key authorization (RFC 8555 §8.3)
  anything else                            301 to the same path over https

A request for a name that is not ours gets 404; nothing here reflects input unescaped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger
from twisted.web import resource, server

from mxd.autoconfig import (
    AutoconfigError,
    ClientSettings,
    autodiscover_email,
    autodiscover_xml,
    thunderbird_xml,
)

log = Logger(namespace="mxd.wellknown")

ACME_PREFIX = b"/.well-known/acme-challenge/"


class HTTP01Responder:
    """Key authorizations of pending HTTP-01 challenges, token → text (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._tokens.get(token)


def _host(request: Any) -> str:
    raw = request.getHeader(b"host") or b""
    host = raw.decode("ascii", "replace").strip().lower()
    if host.startswith("["):
        return host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def _plain(request: Any, code: int, text: str, ctype: bytes = b"text/plain; charset=utf-8"
           ) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", ctype)
    request.setHeader(b"cache-control", b"no-store" if code != 200 else b"max-age=300")
    return text.encode("utf-8")


class PublicSite(resource.Resource):
    """The https listener's site (``isLeaf``: routing by path and Host header)."""

    isLeaf = True

    def __init__(self, domains: Iterable[str], policy_text: Callable[[], str],
                 client_settings: Callable[[str], ClientSettings]) -> None:
        super().__init__()
        self.domains = frozenset(domains)
        self.policy_text = policy_text
        self.client_settings = client_settings

    def _domain_of(self, host: str, prefix: str) -> str | None:
        if host.startswith(prefix) and host[len(prefix):] in self.domains:
            return host[len(prefix):]
        return None

    def render_GET(self, request: Any) -> bytes:
        path = request.path
        host = _host(request)
        if path == b"/.well-known/mta-sts.txt":
            # RFC 8461 §3.3: the policy host is mta-sts.<domain>.
            if self._domain_of(host, "mta-sts.") is None:
                return _plain(request, 404, "no MTA-STS policy for this host\n")
            return _plain(request, 200, self.policy_text())
        if path in (b"/mail/config-v1.1.xml", b"/.well-known/autoconfig/mail/config-v1.1.xml"):
            domain = self._domain_of(host, "autoconfig.") or (host if host in self.domains
                                                               else None)
            arg = request.args.get(b"emailaddress", [b""])[0].decode("utf-8", "replace")
            if domain is None and "@" in arg:
                cand = arg.rsplit("@", 1)[1].lower()
                domain = cand if cand in self.domains else None
            if domain is None:
                return _plain(request, 404, "unknown domain\n")
            return _plain(request, 200, thunderbird_xml(self.client_settings(domain)),
                          b"application/xml; charset=utf-8")
        return _plain(request, 404, "not found\n")

    def render_POST(self, request: Any) -> bytes:
        if request.path.lower() != b"/autodiscover/autodiscover.xml":
            return _plain(request, 404, "not found\n")
        try:
            email = autodiscover_email(request.content.read(64 * 1024 + 1))
        except AutoconfigError as e:
            return _plain(request, 400, f"bad autodiscover request: {e}\n")
        domain = email.rsplit("@", 1)[1].lower()
        if domain not in self.domains:
            return _plain(request, 404, "unknown domain\n")
        return _plain(request, 200, autodiscover_xml(self.client_settings(domain), email),
                      b"application/xml; charset=utf-8")


class PlainSite(resource.Resource):
    """The http listener: HTTP-01 answers, and a redirect to https for everything else."""

    isLeaf = True

    def __init__(self, http01: HTTP01Responder) -> None:
        super().__init__()
        self.http01 = http01

    def render_GET(self, request: Any) -> bytes:
        path: bytes = request.path
        if path.startswith(ACME_PREFIX):
            token = path[len(ACME_PREFIX):].decode("ascii", "replace")
            answer = self.http01.get(token)
            if answer is None:
                return _plain(request, 404, "no such challenge\n")
            log.info("answered ACME HTTP-01 challenge for {host}", host=_host(request))
            return _plain(request, 200, answer, b"application/octet-stream")
        host = _host(request)
        if not host or not all(c.isalnum() or c in "-." for c in host):
            return _plain(request, 400, "no valid Host header\n")
        request.setResponseCode(301)
        request.setHeader(b"location", b"https://" + host.encode("ascii") + request.uri)
        return b""

    render_HEAD = render_GET


def site(root: resource.Resource) -> server.Site:
    s = server.Site(root)
    s.displayTracebacks = False
    return s
