"""Route matching (mxd.queue.routes)."""

from __future__ import annotations

import pytest

from mxd.queue.routes import (
    DIRECT,
    Route,
    RouteError,
    Transport,
    TransportKind,
    choose_transport,
    domain_matches,
    validate,
)

SMART = Transport(name="smart", kind=TransportKind.SMTP, host="relay.example.net", port=25)
NOPE = Transport(name="nope", kind=TransportKind.FAIL)
TRANSPORTS = {"smart": SMART, "nope": NOPE}


@pytest.mark.parametrize(("pattern", "domain", "expected"), [
    ("example.com", "example.com", True),
    ("example.com", "EXAMPLE.com.", True),
    ("example.com", "sub.example.com", False),
    (".example.com", "sub.example.com", True),
    (".example.com", "example.com", False),
    (".example.com", "badexample.com", False),
    ("*", "anything.test", True),
    ("bücher.example", "xn--bcher-kva.example", True),
])
def test_domain_patterns(pattern: str, domain: str, expected: bool) -> None:
    """Exact, subdomain and wildcard patterns match as documented."""
    assert domain_matches(pattern, domain) is expected


def test_first_matching_route_wins_and_default_is_direct() -> None:
    """Routes are checked in order; unmatched recipients go direct."""
    routes = (
        Route(transport="nope", to_domains=("blocked.test",)),
        Route(transport="smart", to_domains=(".corp.test",), from_domains=("example.org",)),
        Route(transport="smart", to_domains=("blocked.test",)),
    )
    assert choose_transport(routes, TRANSPORTS, "a@x.test", "b@blocked.test") == NOPE
    assert choose_transport(routes, TRANSPORTS, "a@example.org", "b@mx.corp.test") == SMART
    assert choose_transport(routes, TRANSPORTS, "a@other.org", "b@mx.corp.test") == DIRECT


def test_override_wins_and_unknown_names_are_errors() -> None:
    """A per-recipient override beats routes; an unknown transport name raises RouteError."""
    assert choose_transport((), TRANSPORTS, "a@x", "b@y", override="smart") == SMART
    with pytest.raises(RouteError):
        choose_transport((), TRANSPORTS, "a@x", "b@y", override="missing")
    with pytest.raises(RouteError):
        validate((Route(transport="missing"),), TRANSPORTS)


def test_transport_values_are_validated() -> None:
    """A smarthost transport needs a host; ports and fail codes are range-checked."""
    with pytest.raises(RouteError):
        Transport(name="s", kind=TransportKind.SMTP)
    with pytest.raises(RouteError):
        Transport(name="s", kind=TransportKind.DIRECT, port=70000)
    with pytest.raises(RouteError):
        Transport(name="f", kind=TransportKind.FAIL, fail_code=250)
