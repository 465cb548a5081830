"""SASLServer: advertising, round trips with mxd's clients, misuse, limits, logging."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from mxd.sasl.api import ChannelBindings, Continue, Failure, Success, UnknownMechanism
from mxd.sasl.client import make_client
from mxd.sasl.credentials import StoredSecrets
from mxd.sasl.ratelimit import AuthLimiterSettings
from mxd.sasl.server import ALL_MECHANISMS, SASLSettings

from .helpers import (
    TEST_ITERATIONS,
    TEST_SCRYPT_N,
    make_server,
    result,
    run_exchange,
    secrets_for,
    tls_conn,
)

CB13 = ChannelBindings("TLSv1.3", tls_exporter=b"E" * 32, tls_server_end_point=b"S" * 32)
CB12 = ChannelBindings("TLSv1.2", tls_exporter=b"E" * 32, tls_unique=b"U" * 12,
                       tls_server_end_point=b"S" * 32)


@pytest.fixture
def captured() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# --- advertising -------------------------------------------------------------------------


def test_advertises_everything_with_bindings() -> None:
    """Over TLS with channel bindings all seven mechanisms are offered, -PLUS first."""
    rig = make_server()
    assert rig.server.advertised(tls_conn(CB13)) == list(ALL_MECHANISMS)


def test_no_plus_without_bindings() -> None:
    """TLS without any binding type available: no -PLUS variant."""
    rig = make_server()
    offered = rig.server.advertised(tls_conn(ChannelBindings("TLSv1.2")))
    assert offered == ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"]


def test_nothing_without_tls() -> None:
    """Without TLS nothing is offered, even to a loopback peer, by default."""
    rig = make_server()
    assert rig.server.advertised(tls_conn(tls=False, loopback=True)) == []


def test_loopback_allowance() -> None:
    """allow_plaintext_on_loopback offers the non-PLUS mechanisms to loopback only."""
    rig = make_server(settings=SASLSettings(allow_plaintext_on_loopback=True))
    assert rig.server.advertised(tls_conn(tls=False, loopback=True, ip="127.0.0.1")) == [
        "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"]
    assert rig.server.advertised(tls_conn(tls=False, loopback=False)) == []


def test_configured_subset_and_order() -> None:
    """Only configured mechanisms are offered, in the configured order."""
    rig = make_server(settings=SASLSettings(mechanisms=("PLAIN", "SCRAM-SHA-256-PLUS")))
    assert rig.server.advertised(tls_conn(CB13)) == ["PLAIN", "SCRAM-SHA-256-PLUS"]


def test_unknown_mechanism_setting_is_refused() -> None:
    """A mechanism name mxd does not implement is a settings error."""
    with pytest.raises(ValueError, match="DIGEST-MD5"):
        SASLSettings(mechanisms=("DIGEST-MD5",))


def test_start_refuses_unadvertised() -> None:
    """start() raises UnknownMechanism for a name not offered on this connection."""
    rig = make_server()
    with pytest.raises(UnknownMechanism):
        rig.server.start("SCRAM-SHA-256-PLUS", tls_conn(ChannelBindings("TLSv1.2")))
    with pytest.raises(UnknownMechanism):
        rig.server.start("GSSAPI", tls_conn(CB13))


# --- round trips -------------------------------------------------------------------------

ROUND_TRIPS = [
    ("SCRAM-SHA-256-PLUS", CB13, "tls-exporter"),
    ("SCRAM-SHA-256-PLUS", CB13, "tls-server-end-point"),
    ("SCRAM-SHA-1-PLUS", CB12, "tls-unique"),
    ("SCRAM-SHA-1-PLUS", CB12, "tls-exporter"),
    ("SCRAM-SHA-256", CB13, None),
    ("SCRAM-SHA-1", CB13, None),
    ("CRAM-MD5", CB13, None),
    ("PLAIN", CB13, None),
    ("LOGIN", CB13, None),
]


@pytest.mark.parametrize("initial", [True, False], ids=["ir", "no-ir"])
@pytest.mark.parametrize(("mech", "cb", "cb_type"), ROUND_TRIPS)
def test_round_trip(mech, cb, cb_type, initial) -> None:
    """mxd's client authenticates against mxd's server with every mechanism, with and
    without an initial response; SCRAM's server signature is verified by the client."""
    rig = make_server()
    client = make_client(mech, "user", "pencil", channel_bindings=cb, cb_type=cb_type,
                         server_offered_plus=True)
    out = run_exchange(rig.server, client, tls_conn(cb), initial=initial)
    assert out == Success(authcid="user", authzid=None, additional=out.additional, mechanism=mech)
    assert rig.metrics.total("sasl_auth_total", mechanism=mech, result="success") == 1


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"])
def test_wrong_password(mech) -> None:
    """A wrong password fails (SCRAM with e=invalid-proof) and is counted."""
    rig = make_server()
    client = make_client(mech, "user", "crayon", channel_bindings=CB13, server_offered_plus=True)
    out = run_exchange(rig.server, client, tls_conn(CB13))
    assert isinstance(out, Failure) and not out.temporary and not out.rate_limited
    if mech.startswith("SCRAM"):
        assert out.additional == b"e=invalid-proof"
    assert rig.metrics.total("sasl_auth_total", mechanism=mech, result="failure") == 1


def test_plain_authzid_equal_is_accepted_other_refused() -> None:
    """PLAIN with authzid equal to authcid succeeds; another authzid (proxy) fails."""
    rig = make_server()
    ok = run_exchange(rig.server, make_client("PLAIN", "user", "pencil", authzid="user"), tls_conn(CB13))
    assert isinstance(ok, Success) and ok.authcid == "user"
    bad = run_exchange(rig.server, make_client("PLAIN", "user", "pencil", authzid="root"), tls_conn(CB13))
    assert isinstance(bad, Failure)


def test_scram_authzid_other_refused() -> None:
    """SCRAM with a=<someone else> fails at the first step."""
    rig = make_server()
    client = make_client("SCRAM-SHA-256", "user", "pencil", authzid="root")
    out = run_exchange(rig.server, client, tls_conn(CB13))
    assert isinstance(out, Failure) and out.additional == b"e=other-error"
    assert rig.lookups == []


def test_check_password() -> None:
    """check_password (IMAP LOGIN) succeeds with the password and fails without it."""
    rig = make_server()
    assert isinstance(result(rig.server.check_password("user", "pencil", tls_conn(CB13))), Success)
    assert isinstance(result(rig.server.check_password("user", "nope", tls_conn(CB13))), Failure)
    assert isinstance(result(rig.server.check_password("nobody", "pencil", tls_conn(CB13))), Failure)


def test_authcid_is_saslprepped() -> None:
    """The authcid in Success is the SASLprep form of what the client sent."""
    rig = make_server(accounts={"IX": secrets_for("pencil")})
    out = result(rig.server.check_password("I\u00adX", "pencil", tls_conn(CB13)))
    assert isinstance(out, Success) and out.authcid == "IX"
    assert rig.lookups == ["IX"]


def test_cram_md5_without_stored_secret_fails() -> None:
    """An account stored without CRAM-MD5 secrets cannot use CRAM-MD5."""
    rig = make_server(accounts={"user": secrets_for("pencil", cram=False)})
    out = run_exchange(rig.server, make_client("CRAM-MD5", "user", "pencil"), tls_conn(CB13))
    assert isinstance(out, Failure)


def test_cram_md5_initial_response_is_refused() -> None:
    """CRAM-MD5 is server-first: an initial response fails cleanly."""
    rig = make_server()
    ex = rig.server.start("CRAM-MD5", tls_conn(CB13))
    assert isinstance(result(ex.step(b"user 0123")), Failure)


def test_step_after_end_fails() -> None:
    """Stepping a finished exchange gives a Failure, not an exception."""
    rig = make_server()
    ex = rig.server.start("PLAIN", tls_conn(CB13))
    assert isinstance(result(ex.step(b"\0user\0pencil")), Success)
    assert isinstance(result(ex.step(b"\0user\0pencil")), Failure)


# --- misuse (RFC 5802 §6) ----------------------------------------------------------------


def _scram_first(rig, mech: str, first: bytes, cb: ChannelBindings | None = CB13) -> Failure:  # type: ignore[no-untyped-def]
    ex = rig.server.start(mech, tls_conn(cb))
    out = result(ex.step(first))
    assert isinstance(out, Failure)
    return out


def test_downgrade_y_fails_when_plus_offered() -> None:
    """gs2 y under SCRAM-SHA-256 while -PLUS was offered: e=server-does-support-channel-binding."""
    rig = make_server()
    out = _scram_first(rig, "SCRAM-SHA-256", b"y,,n=user,r=abc")
    assert out.additional == b"e=server-does-support-channel-binding"


def test_y_accepted_when_plus_not_offered() -> None:
    """gs2 y is fine where the server offered no -PLUS (no bindings, or not configured)."""
    rig = make_server(settings=SASLSettings(mechanisms=("SCRAM-SHA-256",)))
    client = make_client("SCRAM-SHA-256", "user", "pencil", channel_bindings=CB13)
    assert client.initial_response().startswith(b"y,,")  # type: ignore[union-attr]
    client = make_client("SCRAM-SHA-256", "user", "pencil", channel_bindings=CB13)
    assert isinstance(run_exchange(rig.server, client, tls_conn(CB13)), Success)


def test_cyrus_style_p_under_non_plus_fails(captured: list[LogEvent]) -> None:
    """p=tls-unique under plain SCRAM-SHA-256 (what Cyrus clients send) fails and is logged."""
    rig = make_server()
    out = _scram_first(rig, "SCRAM-SHA-256", b"p=tls-unique,,n=user,r=abc")
    assert out.additional == b"e=channel-binding-not-supported"
    assert any("non-PLUS" in formatEvent(e) for e in captured)


def test_unavailable_binding_type() -> None:
    """tls-unique on a TLS 1.3 connection: e=unsupported-channel-binding-type."""
    rig = make_server()
    out = _scram_first(rig, "SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=user,r=abc")
    assert out.additional == b"e=unsupported-channel-binding-type"


def test_wrong_binding_data() -> None:
    """The client bound to other data than the server sees: e=channel-bindings-dont-match."""
    rig = make_server()
    other = ChannelBindings("TLSv1.3", tls_exporter=b"X" * 32)
    client = make_client("SCRAM-SHA-256-PLUS", "user", "pencil", channel_bindings=other)
    out = run_exchange(rig.server, client, tls_conn(CB13))
    assert isinstance(out, Failure) and out.additional == b"e=channel-bindings-dont-match"


# --- unknown users -----------------------------------------------------------------------


def _server_first(rig, user: str) -> bytes:  # type: ignore[no-untyped-def]
    ex = rig.server.start("SCRAM-SHA-256", tls_conn(CB13))
    out = result(ex.step(f"n,,n={user},r=abc".encode()))
    assert isinstance(out, Continue)
    return out.challenge


def test_unknown_user_looks_like_a_known_one() -> None:
    """For an unknown user the server-first has the same shape (salt size, iteration
    count), its salt is stable across attempts and differs between users, and the end
    is the same e=invalid-proof as a wrong password."""
    rig = make_server()
    known = _server_first(rig, "user").split(b",")
    ghost1 = _server_first(rig, "ghost").split(b",")
    ghost2 = _server_first(rig, "ghost").split(b",")
    other = _server_first(rig, "phantom").split(b",")
    assert [len(p) for p in ghost1[1:]] == [len(p) for p in known[1:]]
    assert ghost1[2] == known[2] == f"i={TEST_ITERATIONS}".encode()
    assert ghost1[1] == ghost2[1] != other[1]
    client = make_client("SCRAM-SHA-256", "ghost", "pencil")
    out = run_exchange(rig.server, client, tls_conn(CB13))
    assert isinstance(out, Failure) and out.additional == b"e=invalid-proof"


@pytest.mark.parametrize("spellings", [
    ["nobody@localhost", "NOBODY@localhost", "Nobody@LOCALHOST", "nobody@LocalHost"],
    ["ghost", "GHOST", "Ghost"],
])
def test_unknown_user_salt_is_the_same_for_every_spelling(spellings: list[str]) -> None:
    """The fake salt comes from the normalised name, as one real account would give one
    salt for every spelling of its name (RFC 5802 §9: no account enumeration)."""
    rig = make_server()
    salts = {_server_first(rig, name).split(b",")[1] for name in spellings}
    assert len(salts) == 1


def test_unknown_user_salt_uses_the_given_normalisation() -> None:
    """SASLServer keys fake salts on ``normalise_user`` (the directory's function)."""
    from mxd.directory.addresses import login_key
    from mxd.sasl.ratelimit import AuthLimiter
    from mxd.sasl.server import SASLServer

    rig = make_server()
    server = SASLServer(lambda n: succeed(None), rig.server.settings, AuthLimiter(rig.clock),
                        rig.clock, "mx.example.test", normalise_user=login_key)
    rig.server = server
    a = _server_first(rig, "nobody@xn--bcher-kva.example").split(b",")[1]
    b = _server_first(rig, "Nobody@B\u00fccher.example").split(b",")[1]
    assert a == b


def test_unknown_user_plain_costs_one_scrypt_like_a_known_one() -> None:
    """PLAIN for an unknown user runs one scrypt of the accounts' cost (the dummy hash is
    ready from the start: nothing is derived on the first attempt)."""
    calls: list[int] = []
    rig = make_server()

    def counting(f):  # type: ignore[no-untyped-def]
        calls.append(1)
        return succeed(f())

    rig.server._run_blocking = counting
    assert rig.server._dummy_hash.n == TEST_SCRYPT_N
    run_exchange(rig.server, make_client("PLAIN", "ghost", "pencil"), tls_conn(CB13))
    run_exchange(rig.server, make_client("PLAIN", "user", "wrong"), tls_conn(CB13))
    assert calls == [1, 1]


def test_full_hashing_pool_fails_temporarily() -> None:
    """When run_blocking refuses (HashingBusy) the login fails temporarily, uncounted."""
    from mxd.sasl.server import HashingBusy

    rig = make_server()
    rig.server._run_blocking = lambda f: fail(HashingBusy("full"))
    out = run_exchange(rig.server, make_client("PLAIN", "user", "pencil"), tls_conn(CB13))
    assert isinstance(out, Failure) and out.temporary
    assert rig.limiter.check("192.0.2.1", "user").allowed


def test_unknown_user_plain_same_failure() -> None:
    """PLAIN for an unknown user fails exactly like a wrong password."""
    rig = make_server()
    a = run_exchange(rig.server, make_client("PLAIN", "ghost", "pencil"), tls_conn(CB13))
    b = run_exchange(rig.server, make_client("PLAIN", "user", "wrong"), tls_conn(CB13))
    assert a == b and isinstance(a, Failure)


# --- temporary failures ------------------------------------------------------------------


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"])
def test_lookup_error_is_temporary(mech: str, captured: list[LogEvent]) -> None:
    """A failing secret lookup gives Failure(temporary=True) and is not counted against
    the user in the limiter."""
    def broken(name: str) -> Deferred[StoredSecrets | None]:
        return fail(RuntimeError("database is down"))

    rig = make_server(lookup=broken, limiter_settings=AuthLimiterSettings(ip_free_failures=0))
    out = run_exchange(rig.server, make_client(mech, "user", "pencil"), tls_conn(CB13))
    assert isinstance(out, Failure) and out.temporary
    assert rig.limiter.check("192.0.2.1", "user").allowed


# --- rate limiting -----------------------------------------------------------------------


def test_rate_limited_attempt_skips_password_check() -> None:
    """After the free failures, an attempt is refused with rate_limited=True without a
    lookup, even with the right password; after the delay it goes through."""
    rig = make_server(limiter_settings=AuthLimiterSettings(ip_free_failures=2, ip_base_delay=10))
    conn = tls_conn(CB13)
    for _ in range(3):
        assert isinstance(result(rig.server.check_password("user", "bad", conn)), Failure)
    looked = len(rig.lookups)
    out = run_exchange(rig.server, make_client("SCRAM-SHA-256", "user", "pencil"), conn)
    assert isinstance(out, Failure) and out.rate_limited
    assert len(rig.lookups) == looked
    assert rig.metrics.total("sasl_auth_total", result="rate_limited") == 1
    rig.clock.advance(10)
    assert isinstance(run_exchange(rig.server, make_client("PLAIN", "user", "pencil"), conn), Success)


# --- logging -----------------------------------------------------------------------------


def test_logs_never_contain_secrets(captured: list[LogEvent]) -> None:
    """Failure and success logs name mechanism, address and user, never the password
    or SCRAM proofs."""
    rig = make_server()
    conn = tls_conn(CB13, ip="198.51.100.7")
    for mech in ("SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"):
        run_exchange(rig.server, make_client(mech, "user", "hunter2-secret"), conn)
        run_exchange(rig.server, make_client(mech, "user", "pencil"), conn)
    text = "\n".join(formatEvent(e) + repr(e) for e in captured)
    assert "198.51.100.7" in text and "'user'" in text and "SCRAM-SHA-256" in text
    assert "hunter2-secret" not in text and "pencil" not in text
    assert base64.b64encode(b"\0user\0pencil").decode() not in text
    assert "p=" not in text


def test_fake_salt_key_makes_salts_stable_across_servers() -> None:
    """With a configured fake_salt_key the unknown-user salt survives a restart."""
    st = SASLSettings(fake_salt_key=b"z" * 32, fake_scram_iterations=TEST_ITERATIONS,
                      fake_scrypt_n=TEST_SCRYPT_N)
    a, b = make_server(settings=st), make_server(settings=st)
    assert _server_first(a, "ghost").split(b",")[1] == _server_first(b, "ghost").split(b",")[1]


def test_check_password_requires_tls() -> None:
    """IMAP LOGIN without TLS is refused without a lookup; loopback only when allowed."""
    rig = make_server()
    out = result(rig.server.check_password("user", "pencil", tls_conn(tls=False)))
    assert isinstance(out, Failure) and rig.lookups == []
    assert not rig.server.plaintext_allowed(tls_conn(tls=False, loopback=True))
    rig2 = make_server(settings=SASLSettings(allow_plaintext_on_loopback=True,
                                             fake_scrypt_n=TEST_SCRYPT_N))
    conn = tls_conn(tls=False, loopback=True, ip="127.0.0.1")
    assert isinstance(result(rig2.server.check_password("user", "pencil", conn)), Success)


def test_long_user_names_are_truncated_in_logs(captured: list[LogEvent]) -> None:
    """A client-chosen 10 kB user name does not go whole into the log."""
    rig = make_server()
    result(rig.server.check_password("x" * 10_000, "pw", tls_conn(CB13)))
    texts = [formatEvent(e) for e in captured]
    assert any("x" * 128 in t for t in texts)
    assert all("x" * 200 not in t for t in texts)


def test_internal_error_becomes_temporary_failure(captured: list[LogEvent]) -> None:
    """A broken collaborator (lookup fires with garbage) yields a logged temporary
    Failure, never an errback that would kill the connection."""
    from twisted.internet.defer import succeed

    rig = make_server(lookup=lambda name: succeed(object()))  # type: ignore[arg-type,return-value]
    out = run_exchange(rig.server, make_client("SCRAM-SHA-1", "user", "pencil"), tls_conn(CB13))
    assert isinstance(out, Failure) and out.temporary
    assert any(e.get("log_failure") is not None for e in captured)
