"""The smtp transport through a real Postfix relay (smtpd on a loopback port, relaying
remote.test to an aiosmtpd sink), driven by mxd's real queue runner: the message reaches
the sink through Postfix over verified TLS; a self-signed relay is refused while
verification is on and used with tls = "required"; REQUIRETLS is refused (5.7.30) through
an unverified smarthost: only the failure DSN is relayed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxd.queue.routes import SmarthostTLS, Transport, TransportKind
from tests.integration.transport_harness import PostfixRelay, deliver, self_signed, trust_root
from tests.queue.sinks import AiosmtpdSink

pytestmark = pytest.mark.integration


def _relay(port: int, tls: SmarthostTLS) -> Transport:
    return Transport("relay", TransportKind.SMTP, host="127.0.0.1", port=port, tls=tls,
                     ehlo_hostname="out.example.org")


@pytest.fixture(scope="module")
def relay(tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[tuple[AiosmtpdSink, PostfixRelay]]:
    """One Postfix relay (certificate from the test CA) and its sink for the module."""
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink, \
            PostfixRelay(tmp_path_factory.mktemp("pf"), sink.port, tls_files["cert"],
                         tls_files["key"]) as pf:
        yield sink, pf


def test_postfix_relays_over_verified_tls(tls_files: dict[str, Path], relay: Any,
                                          data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink, pf = relay
    sink.messages.clear()
    out = deliver(monkeypatch, data_dir, (_relay(pf.port, SmarthostTLS.VERIFIED),),
                  [("a@example.org", ["someone@remote.test"], {})],
                  lambda: sink.count() >= 1, trust=trust_root(tls_files["ca"]))
    assert sink.count() == 1, pf.log_text()[-2000:]
    got = sink.messages[0]
    assert got["rcpts"] == ["someone@remote.test"]
    assert b"by relay.example.net" in got["data"]  # Postfix's Received header
    assert b"from out.example.org" in got["data"]  # the transport's EHLO name
    [attempts] = out.attempts.values()
    [a] = attempts
    assert (a.transport, a.result, a.host, a.tls_used, a.tls_verified) == (
        "relay", "delivered", "127.0.0.1", True, True)
    assert a.tls_success is None  # a smarthost session is not TLS-reported
    log = pf.log_text()
    assert "Anonymous TLS connection established from" in log or "TLS connection" in log
    assert f"relay=127.0.0.1[127.0.0.1]:{sink.port}" in log and "status=sent" in log
    assert out.left == []


def test_self_signed_relay_refused_when_verifying(tls_files: dict[str, Path], tmp_path: Path,
                                                 data_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's certificate is self-signed: with verification on nothing is sent and
    the message is deferred with the TLS error; with tls = "required" it goes through, and
    so does a "TLS-Required: No" message through the verifying transport."""
    cert, key = self_signed(tmp_path)
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink, \
            PostfixRelay(tmp_path, sink.port, cert, key) as pf:
        out = deliver(monkeypatch, data_dir, (_relay(pf.port, SmarthostTLS.VERIFIED),),
                      [("a@example.org", ["someone@remote.test"], {})],
                      lambda: "certificate verify failed" in pf.log_text()
                      or "alert" in pf.log_text(), trust=trust_root(tls_files["ca"]), wait=5.0)
        assert sink.count() == 0
        [m] = out.left
        r = m.recipients[0]
        assert r.last_code == 451 and r.last_enhanced and r.last_enhanced.startswith("4.")
        assert "TLS" in (r.last_text or "") and "certificate verify failed" in (r.last_text or "")
        [a] = next(iter(out.attempts.values()))
        assert a.transport == "relay" and not a.tls_verified
        out2 = deliver(monkeypatch, tmp_path / "data2", (_relay(pf.port, SmarthostTLS.REQUIRED),),
                       [("a@example.org", ["other@remote.test"], {})],
                       lambda: sink.count() >= 1, trust=trust_root(tls_files["ca"]))
        assert sink.count() == 1 and out2.left == []
        [a2] = next(iter(out2.attempts.values()))
        assert a2.tls_used and not a2.tls_verified
        # RFC 8689 §5: "TLS-Required: No" relaxes the verified transport's check (TLS is
        # still used), so that message goes through the same self-signed relay.
        out3 = deliver(monkeypatch, tmp_path / "data3", (_relay(pf.port, SmarthostTLS.VERIFIED),),
                       [("a@example.org", ["third@remote.test"], {"tls_required_no": True})],
                       lambda: sink.count() >= 2, trust=trust_root(tls_files["ca"]))
        assert sink.count() == 2 and out3.left == []
        [a3] = next(iter(out3.attempts.values()))
        assert a3.result == "delivered" and a3.tls_used and not a3.tls_verified


def test_requiretls_never_reaches_an_unverified_smarthost(
        relay: Any, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8689 §4.2: a REQUIRETLS message through a smarthost with tls = "required"
    fails with 5.7.30 without being sent; what reaches the sink through Postfix is only
    the failure DSN to the sender (itself sent without REQUIRETLS, RFC 8689 §4.1)."""
    sink, pf = relay
    sink.messages.clear()
    out = deliver(monkeypatch, data_dir, (_relay(pf.port, SmarthostTLS.REQUIRED),),
                  [("a@example.org", ["someone@remote.test"], {"requiretls": True})],
                  lambda: sink.count() >= 1)
    [[a]] = out.attempts.values()
    assert (a.transport, a.enhanced) == ("relay", "5.7.30") and a.ip is None
    assert "cannot verify the TLS of the next hop" in (a.text or "")
    [got] = sink.messages
    assert got["mail_from"] in ("", "<>") and got["rcpts"] == ["a@example.org"]
    assert b"Status: 5.7.30" in got["data"] and b"someone@remote.test" in got["data"]
    assert "REQUIRETLS" not in " ".join(got["mail_options"])
