"""Route choice for outbound mail: which transport carries a recipient.

Routes are checked in order; the first whose recipient-domain and sender-domain patterns
match names the transport.  Without a match the default transport is used ("direct":
MX lookup, RFC 5321 §5).  A per-recipient transport override in the queue wins over routes.

Domain patterns: ``example.com`` matches that domain only, ``.example.com`` matches its
subdomains (not itself), ``*`` matches every domain.  Comparison is on the ASCII (A-label)
form, case-insensitively.

Transports here are plain values; only "direct" is implemented by the runner for now.
"""

from __future__ import annotations

import enum

import attrs

from mxd.errors import MxdError


class RouteError(MxdError):
    """Invalid route or transport settings."""


class TransportKind(enum.StrEnum):
    DIRECT = "direct"  # MX lookup, RFC 5321 §5
    SMTP = "smtp"  # a smarthost on port 25 (RFC 5321)
    SUBMISSION = "submission"  # a smarthost on 587/465 with SASL (RFC 6409)
    SOCKS5 = "socks5"  # direct delivery through a SOCKS5 proxy (RFC 1928)
    FAIL = "fail"  # refuse: the recipient bounces with the given code and text


@attrs.frozen
class Transport:
    """A named way to deliver.  Fields not used by a kind are left at their defaults."""

    name: str
    kind: TransportKind
    host: str | None = None  # smtp/submission smarthost, socks5 proxy
    port: int | None = None
    implicit_tls: bool = False  # submission on 465
    username: str | None = None  # submission SASL
    password_file: str | None = None  # never the password itself in the value
    fail_code: int = 554
    fail_enhanced: str = "5.7.1"
    fail_text: str = "delivery to this domain is not allowed"

    def __attrs_post_init__(self) -> None:
        if self.kind in (TransportKind.SMTP, TransportKind.SUBMISSION, TransportKind.SOCKS5):
            if not self.host:
                raise RouteError(f"transport {self.name!r} ({self.kind}): host is required")
        if self.port is not None and not 0 < self.port < 65536:
            raise RouteError(f"transport {self.name!r}: port {self.port} out of range")
        if self.kind is TransportKind.FAIL and not 400 <= self.fail_code < 600:
            raise RouteError(f"transport {self.name!r}: fail code must be 4xx or 5xx")


DIRECT = Transport(name="direct", kind=TransportKind.DIRECT)


@attrs.frozen
class Route:
    transport: str
    to_domains: tuple[str, ...] = ("*",)
    from_domains: tuple[str, ...] = ("*",)


def _normalise(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    try:
        return d.encode("idna").decode("ascii") if not d.isascii() else d
    except UnicodeError:
        return d


def domain_matches(pattern: str, domain: str) -> bool:
    """Whether ``domain`` matches one route pattern (see the module docstring)."""
    if pattern == "*":
        return True
    d = _normalise(domain)
    if pattern.startswith("."):
        return d.endswith("." + _normalise(pattern[1:]))
    return d == _normalise(pattern)


def domain_of(address: str) -> str:
    """The domain of ``local@domain`` (the last '@'); '' for the null path or no '@'."""
    return address.rpartition("@")[2] if "@" in address else ""


def choose_transport(
    routes: tuple[Route, ...],
    transports: dict[str, Transport],
    sender: str,
    recipient: str,
    override: str | None = None,
) -> Transport:
    """The transport for one recipient; raises RouteError for an unknown transport name."""
    name = override
    if name is None:
        rdom, sdom = domain_of(recipient), domain_of(sender)
        for route in routes:
            if any(domain_matches(p, rdom) for p in route.to_domains) and any(
                domain_matches(p, sdom) for p in route.from_domains
            ):
                name = route.transport
                break
    if name is None or name == "direct" and "direct" not in transports:
        return DIRECT
    try:
        return transports[name]
    except KeyError:
        raise RouteError(f"route names unknown transport {name!r}") from None


def validate(routes: tuple[Route, ...], transports: dict[str, Transport]) -> None:
    """Raise RouteError when a route names a transport that is not defined."""
    for route in routes:
        if route.transport != "direct" and route.transport not in transports:
            raise RouteError(f"route names unknown transport {route.transport!r}")
