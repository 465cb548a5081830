"""RFC 5803 authPassword values: vectors, round trips, gsasl as an independent oracle, and
what is refused."""

from __future__ import annotations

import base64
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.directory.authpassword import (
    AuthPasswordError,
    UnknownScheme,
    derive_values,
    format_value,
    parse_value,
    parse_values,
)
from mxd.sasl.credentials import ScramSecret
from tests.integration.tools import require_tool

# RFC 5803 §4 example (user "user", password "pencil", the RFC 5802 §5 salt).
RFC5803_SHA1 = ("SCRAM-SHA-1$4096:QSXCR+Q6sek8bf92$6dlGYMOdZcOPutkcNY8U2g7vK9Y=:"
                "D+CSWLOshSulAsxiupA+qs2/fTE=")


def test_rfc5803_example_parses_to_the_rfc5802_keys() -> None:
    """The RFC's example value is the SCRAM-SHA-1 secret of "pencil" with its salt."""
    secret = parse_value(RFC5803_SHA1)
    want = ScramSecret.derive("SHA-1", "pencil", 4096, base64.b64decode("QSXCR+Q6sek8bf92"))
    assert secret == want
    assert format_value(secret) == RFC5803_SHA1


def test_rfc7677_sha256_vector_round_trips() -> None:
    """SCRAM-SHA-256 with the RFC 7677 §3 salt formats and parses back to the same keys."""
    want = ScramSecret.derive("SHA-256", "pencil", 4096,
                              base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    value = format_value(want)
    assert value.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert parse_value(value) == want
    assert parse_value(value.encode()) == want


def test_spaces_around_dollar_and_lowercase_scheme_are_accepted() -> None:
    """RFC 3112 §4.1 allows spaces around "$"; schemes compare case-insensitively."""
    spaced = "scram-sha-1 $ " + RFC5803_SHA1.split("$", 1)[1].replace("$", " $ ")
    assert parse_value(spaced) == parse_value(RFC5803_SHA1)


@pytest.mark.parametrize("value, problem", [
    ("SCRAM-SHA-1$4096$a:b", "authInfo"),
    ("SCRAM-SHA-1$x:QSXCR+Q6sek8bf92$6dlGYMOdZcOPutkcNY8U2g7vK9Y=:D+CSWLOshSulAsxiupA+qs2/fTE=",
     "authInfo"),
    ("SCRAM-SHA-1$0:QSXCR+Q6sek8bf92$6dlGYMOdZcOPutkcNY8U2g7vK9Y=:D+CSWLOshSulAsxiupA+qs2/fTE=",
     "out of range"),
    ("SCRAM-SHA-1$4096:!!!$6dlGYMOdZcOPutkcNY8U2g7vK9Y=:D+CSWLOshSulAsxiupA+qs2/fTE=", "base64"),
    ("SCRAM-SHA-1$4096:QSXCR+Q6sek8bf92$6dlGYMOdZcOPutkcNY8U2g7vK9Y=", "StoredKey>:<ServerKey"),
    ("SCRAM-SHA-256$4096:QSXCR+Q6sek8bf92$6dlGYMOdZcOPutkcNY8U2g7vK9Y=:D+CSWLOshSulAsxiupA+qs2/fTE=",
     "32 octets"),
    ("no dollars at all", "form"),
    ("SCRAM-SHA-1$4096:" + "A" * 2000 + "$a:b", "longer"),
    (b"SCRAM-SHA-1$4096:\xff$a:b", "ASCII"),
])
def test_unusable_values_are_refused_with_a_reason(value: str | bytes, problem: str) -> None:
    """Each malformed value raises AuthPasswordError naming what is wrong."""
    with pytest.raises(AuthPasswordError, match=problem):
        parse_value(value)


def test_other_schemes_are_skipped_not_reported() -> None:
    """RFC 3112 allows other schemes (e.g. MD5) in the same attribute: skipped quietly."""
    with pytest.raises(UnknownScheme):
        parse_value("MD5$c2FsdA==$aGFzaA==")
    found, problems = parse_values(["MD5$c2FsdA==$aGFzaA==", RFC5803_SHA1, "SCRAM-SHA-256$bad$x"])
    assert list(found) == ["SHA-1"]
    assert len(problems) == 1


def test_derive_values_gives_one_value_per_hash() -> None:
    """`mxd account scram-keys` output parses back into SHA-256 and SHA-1 secrets that
    verify the password."""
    values = derive_values("pencil", iterations=4096)
    found, problems = parse_values(values)
    assert problems == [] and set(found) == {"SHA-1", "SHA-256"}
    s = found["SHA-256"]
    assert s == ScramSecret.derive("SHA-256", "pencil", 4096, s.salt)


@given(st.binary(min_size=1, max_size=64), st.integers(1, 100000),
       st.sampled_from(["SHA-1", "SHA-256"]), st.data())
def test_format_parse_round_trip(salt: bytes, iterations: int, hash_name: str,
                                 data: st.DataObject) -> None:
    """Any secret survives format -> parse unchanged."""
    size = 20 if hash_name == "SHA-1" else 32
    stored = data.draw(st.binary(min_size=size, max_size=size))
    server = data.draw(st.binary(min_size=size, max_size=size))
    secret = ScramSecret(hash_name, salt, iterations, stored, server)
    assert parse_value(format_value(secret)) == secret


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_parse_never_raises_anything_else(value: str | bytes) -> None:
    """Arbitrary input gives a ScramSecret or AuthPasswordError, nothing else."""
    try:
        parse_value(value)
    except AuthPasswordError:
        pass


def test_gsasl_derived_keys_match_ours() -> None:
    """gsasl -k (an independent SCRAM implementation) computes the same StoredKey and
    ServerKey for the salt and count it chose: our RFC 5803 value of it parses to them."""
    gsasl = require_tool("gsasl")
    out = subprocess.run([gsasl, "-k", "-m", "SCRAM-SHA-256", "-p", "pencil",
                          "--iteration-count=4096"], capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    line = [x for x in out.stdout.splitlines() if x.startswith("{SCRAM-SHA-256}")][-1]
    count, salt, stored, server = line.split("}", 1)[1].split(",")
    value = f"SCRAM-SHA-256${count}:{salt}${stored}:{server}"
    got = parse_value(value)
    assert got == ScramSecret.derive("SHA-256", "pencil", int(count), got.salt)
