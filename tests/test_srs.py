"""The Sender Rewriting Scheme (mxd.srs): forward, reverse, chains, expiry, forgery."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.srs import SRS, SRSError, is_srs

DAY = 86400.0
NOW = 20_000 * DAY + 3600  # a fixed day
srs = SRS(b"secret-one")


def test_srs0_round_trip_and_form() -> None:
    out = srs.forward("Alice.Smith@Example.COM", "fwd.example", NOW)
    local, _, domain = out.rpartition("@")
    assert domain == "fwd.example"
    tag, h, tt, odomain, olocal = local.split("=", 4)
    assert (tag, odomain, olocal) == ("SRS0", "Example.COM", "Alice.Smith")
    assert len(h) == 6 and len(tt) == 2
    assert srs.reverse(out, NOW) == "Alice.Smith@Example.COM"
    assert is_srs(local)


def test_case_of_the_whole_address_may_change_on_the_way_back() -> None:
    """Relays and mxd's own normalisation may lower-case a local part."""
    out = srs.forward("bob@remote.example", "fwd.example", NOW)
    assert srs.reverse(out.lower(), NOW) == "bob@remote.example"
    assert srs.reverse(out.upper(), NOW).lower() == "bob@remote.example"


def test_null_sender_and_own_domain_are_kept() -> None:
    assert srs.forward("", "fwd.example", NOW) == ""
    assert srs.forward("me@fwd.example", "fwd.example", NOW) == "me@fwd.example"


@pytest.mark.parametrize("mangle", [
    lambda a: a.replace("SRS0=", "SRS0=X", 1),                   # hash changed
    lambda a: a.replace("=remote.example=", "=evil.example="),  # domain swapped
    lambda a: a.replace("=bob@", "=mallory@"),                   # local part swapped
])
def test_tampered_addresses_are_refused(mangle: object) -> None:
    out = srs.forward("bob@remote.example", "fwd.example", NOW)
    with pytest.raises(SRSError):
        srs.reverse(mangle(out), NOW)  # type: ignore[operator]


def test_another_secret_does_not_accept_our_addresses() -> None:
    out = srs.forward("bob@remote.example", "fwd.example", NOW)
    with pytest.raises(SRSError, match="hash"):
        SRS(b"secret-two").reverse(out, NOW)


def test_expiry() -> None:
    out = srs.forward("bob@remote.example", "fwd.example", NOW)
    assert srs.reverse(out, NOW + 21 * DAY) == "bob@remote.example"
    with pytest.raises(SRSError, match="older"):
        srs.reverse(out, NOW + 22 * DAY)


def test_srs1_chain_goes_back_to_the_first_forwarder() -> None:
    """A second forwarder wraps the first one's SRS0 address into SRS1 (one level)."""
    first = SRS(b"first-hop").forward("bob@remote.example", "hop1.example", NOW)
    second = srs.forward(first, "hop2.example", NOW)
    assert second.startswith("SRS1=") and second.endswith("@hop2.example")
    assert "=hop1.example==" in second
    # A third forwarder keeps the first forwarder's domain (no growing chain).
    third = SRS(b"third").forward(second, "hop3.example", NOW)
    assert third.startswith("SRS1=") and "=hop1.example==" in third
    assert SRS(b"third").reverse(third, NOW) == first
    # Our reverse gives back the first forwarder's SRS0 address, which it reverses.
    back = srs.reverse(second, NOW)
    assert back == first
    assert SRS(b"first-hop").reverse(back, NOW) == "bob@remote.example"


@pytest.mark.parametrize("address", [
    "bob@fwd.example", "SRS0@fwd.example", "SRS0=abc@fwd.example", "SRS0=a=b=c@fwd.example",
    "SRS1=abc=nodouble@fwd.example", "SRS0=AAAAAA=!!=d=l@fwd.example", "no-at-sign",
])
def test_malformed_addresses_are_errors(address: str) -> None:
    with pytest.raises(SRSError):
        srs.reverse(address, NOW)


@given(local=st.from_regex(r"[A-Za-z0-9._%+=-]{1,40}", fullmatch=True),
       domain=st.from_regex(r"[a-z0-9]{1,20}\.[a-z]{2,6}", fullmatch=True),
       day=st.integers(min_value=0, max_value=40_000))
def test_round_trip_property(local: str, domain: str, day: int) -> None:
    now = day * DAY + 5
    out = srs.forward(f"{local}@{domain}", "fwd.example", now)
    if out == f"{local}@{domain}":
        return  # already ours
    assert srs.reverse(out, now + 3 * DAY) == f"{local}@{domain}"
