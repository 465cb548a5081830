"""SASL client side: mechanism choice, gs2 flags, and SCRAM against scramp's server."""

from __future__ import annotations

import pytest

from mxd.sasl.api import ChannelBindings
from mxd.sasl.client import ClientError, choose_mechanism, make_client
from mxd.sasl.scram import ScramError

ALL = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5",
       "PLAIN", "LOGIN"]

CHOICES = [
    (ALL, None, True, "SCRAM-SHA-256-PLUS"),
    (ALL, None, False, "SCRAM-SHA-256"),
    (["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256"], None, True, "SCRAM-SHA-1-PLUS"),
    (["scram-sha-1", "PLAIN"], None, True, "SCRAM-SHA-1"),
    (["PLAIN", "CRAM-MD5", "LOGIN"], None, True, "CRAM-MD5"),
    (["LOGIN", "PLAIN"], None, False, "PLAIN"),
    (["LOGIN"], None, False, "LOGIN"),
    (ALL, ["PLAIN"], True, "PLAIN"),
    (ALL, ["SCRAM-SHA-1", "SCRAM-SHA-256-PLUS"], False, "SCRAM-SHA-1"),
    (["GSSAPI", "XOAUTH2"], None, True, None),
    (["PLAIN"], ["SCRAM-SHA-256"], True, None),
]


@pytest.mark.parametrize(("offered", "allowed", "have_cb", "expected"), CHOICES)
def test_choose_mechanism(offered, allowed, have_cb, expected) -> None:
    """The most secure offered and allowed mechanism is chosen; -PLUS needs binding data."""
    assert choose_mechanism(offered, allowed, have_cb) == expected


CB = ChannelBindings("TLSv1.3", tls_exporter=b"E" * 32, tls_server_end_point=b"S" * 32)


def test_gs2_flags() -> None:
    """-PLUS sends p=<type>; plain SCRAM sends y when the client could bind but the
    server offered no -PLUS, and n otherwise."""
    assert make_client("SCRAM-SHA-256-PLUS", "u", "p", channel_bindings=CB).initial_response().startswith(b"p=tls-exporter,,")  # type: ignore[union-attr]
    assert make_client("SCRAM-SHA-256-PLUS", "u", "p", channel_bindings=CB, cb_type="tls-server-end-point").initial_response().startswith(b"p=tls-server-end-point,,")  # type: ignore[union-attr]
    assert make_client("SCRAM-SHA-256", "u", "p", channel_bindings=CB).initial_response().startswith(b"y,,")  # type: ignore[union-attr]
    assert make_client("SCRAM-SHA-256", "u", "p", channel_bindings=CB, server_offered_plus=True).initial_response().startswith(b"n,,")  # type: ignore[union-attr]
    assert make_client("SCRAM-SHA-256", "u", "p").initial_response().startswith(b"n,,")  # type: ignore[union-attr]


def test_plus_needs_usable_binding() -> None:
    """A -PLUS client without binding data, or for a type the connection lacks, is refused."""
    with pytest.raises(ClientError):
        make_client("SCRAM-SHA-1-PLUS", "u", "p")
    with pytest.raises(ClientError):
        make_client("SCRAM-SHA-1-PLUS", "u", "p", channel_bindings=CB, cb_type="tls-unique")
    with pytest.raises(ClientError):
        make_client("DIGEST-MD5", "u", "p")


def test_scram_client_demands_server_proof() -> None:
    """A server that says success without a v= is not trusted (mutual authentication)."""
    c = make_client("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    c.initial_response()
    c.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ScramError):
        c.finish(None)


def test_scram_client_accepts_v_as_challenge() -> None:
    """The server-final may come as a last challenge (SMTP 334); the client answers empty."""
    c = make_client("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    c.initial_response()
    c.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    assert c.step(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""
    c.finish(None)


def test_plain_client_single_message() -> None:
    """PLAIN sends one message, as initial response or after an empty challenge."""
    c = make_client("PLAIN", "user", "pencil")
    assert c.step(b"") == b"\0user\0pencil"
    with pytest.raises(ClientError):
        c.step(b"")


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
def test_against_scramp_server(mech: str) -> None:
    """mxd's SCRAM client authenticates to scramp's server (an independent
    implementation), with tls-server-end-point binding for -PLUS."""
    import scramp

    data = b"S" * 32
    m = scramp.ScramMechanism(mech)
    salt, stored, server_key, it = m.make_auth_info("pencil", iteration_count=4096)  # scramp minimum
    cb = ("tls-server-end-point", data) if mech.endswith("PLUS") else None
    server = m.make_server(lambda u: (salt, stored, server_key, it), channel_binding=cb)
    client = make_client(mech, "user", "pencil", cb_type="tls-server-end-point",
                         channel_bindings=ChannelBindings("TLSv1.3", tls_server_end_point=data),
                         server_offered_plus=True)
    server.set_client_first(client.initial_response().decode())  # type: ignore[union-attr]
    final = client.step(server.get_server_first().encode())
    server.set_client_final(final.decode())
    client.finish(server.get_server_final().encode())


def test_bad_user_name_is_a_client_error() -> None:
    """A user name that SASLprep refuses raises ClientError, not ValueError."""
    with pytest.raises(ClientError):
        make_client("SCRAM-SHA-256", "a\u0007b", "pw")
