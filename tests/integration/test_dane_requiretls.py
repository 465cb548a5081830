"""REQUIRETLS and TLS-Required: No (RFC 8689) with DANE: mxd's SMTP client under the
policies of mxd.queue.tlspolicy, TLSA records from the DNSSEC lab, aiosmtpd peers that do or
do not offer REQUIRETLS."""

from __future__ import annotations

import io
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from cryptography import x509
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from mxd import dane
from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.queue import tlspolicy
from mxd.queue.tlspolicy import HostRefusal, HostTLSPolicy, PolicyMode
from mxd.smtp.client import (
    ClientMessage,
    ClientRecipient,
    ClientSettings,
    SMTPClient,
    SMTPLocalError,
    SMTPTLSError,
)
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.tools import free_port, require_module

pytestmark = pytest.mark.integration

BODY = b"From: a@example.org\r\nTo: b@remote.test\r\nSubject: requiretls\r\n\r\nhi\r\n"


class Peer:
    """aiosmtpd with STARTTLS; ``requiretls`` adds the REQUIRETLS keyword (RFC 8689 §3) and
    accepts the MAIL FROM parameter, recording it."""

    def __init__(self, leaf: trustme.LeafCert, requiretls: bool) -> None:
        require_module("aiosmtpd")
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        self.port = free_port()
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        peer = self

        class Handler:
            async def handle_EHLO(self, server: Any, session: Any, envelope: Any,
                                  hostname: str, responses: list[str]) -> list[str]:
                session.host_name = hostname
                if requiretls and session.ssl is not None:
                    return [*responses[:-1], "250-REQUIRETLS", responses[-1]]
                return responses

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with peer.lock:
                    peer.messages.append({"tls": session.ssl is not None,
                                          "requiretls": getattr(envelope, "requiretls", False)})
                return "250 2.0.0 OK"

        class RequireTLSServer(SMTP):
            async def smtp_MAIL(self, arg: str) -> None:
                words = (arg or "").split()
                wants = any(w.upper() == "REQUIRETLS" for w in words)
                if wants:
                    arg = " ".join(w for w in words if w.upper() != "REQUIRETLS")
                await super().smtp_MAIL(arg)
                if self.envelope is not None and self.envelope.mail_from is not None:
                    self.envelope.requiretls = wants  # type: ignore[attr-defined]

        class PeerController(Controller):
            def factory(self) -> SMTP:
                return RequireTLSServer(self.handler, tls_context=ctx, require_starttls=False)

        self.controller = PeerController(Handler(), hostname="127.0.0.1", port=self.port)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


@pytest.fixture
def peers() -> Iterator[dict[str, Any]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.remote.test")
    out = {"with": Peer(leaf, True), "without": Peer(leaf, False), "leaf": leaf}
    for key in ("with", "without"):
        out[key].controller.start()
    try:
        yield out
    finally:
        for key in ("with", "without"):
            out[key].controller.stop()


def _tlsa_text(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return dane.tlsa_text(dane.tlsa_for_certificate(cert))


def _send(lab: Any, port: int, monkeypatch: pytest.MonkeyPatch, *, requiretls: bool,
          tls_required_no: bool = False) -> Any:
    """Decide the policy for mx.remote.test and, unless refused, send one message with
    mxd's SMTP client; returns the refusal, the client's error, or (result, tls_result)."""
    import twisted.protocols.tls as tls

    async def go(reactor: Any) -> Any:
        monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
        resolver = Resolver(reactor, lab.resolver_settings())
        mx = await resolver.lookup_mx("remote.test")
        addr = await resolver.lookup_a("mx.remote.test")
        policy = await tlspolicy.policy_for_host(
            resolver, None, "remote.test", "mx.remote.test", mx.authentic, addr.authentic,
            requiretls, tls_required_no)
        if isinstance(policy, HostRefusal):
            return policy
        client = SMTPClient(reactor, ClientSettings(helo_name="client.test"),
                            policy.client_policy(reactor), "mx.remote.test")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        try:
            await client.start()
            result = await client.send(ClientMessage(
                "a@example.org", (ClientRecipient("b@remote.test"),), size=len(BODY),
                requiretls=requiretls), io.BytesIO(BODY))
            return policy, result, client.tls_result
        except (SMTPTLSError, SMTPLocalError) as e:
            return policy, e, client.tls_result
        finally:
            await client.quit()

    return run_with_reactor(go, timeout=40)


def _zone(tlsa: str) -> dict[str, ZoneSpec]:
    return {"remote.test": ZoneSpec(records=["@ MX 10 mx", "mx A 127.0.0.1",
                                             f"_25._tcp.mx TLSA {tlsa}"])}


def test_requiretls_to_dane_verified_host_with_requiretls(
        dns_lab_factory: Any, peers: dict[str, Any],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DANE-verified host that offers REQUIRETLS gets the message with REQUIRETLS in
    MAIL FROM (RFC 8689 §4.1)."""
    lab = dns_lab_factory(_zone(_tlsa_text(peers["leaf"])))
    policy, result, tls_result = _send(lab, peers["with"].port, monkeypatch, requiretls=True)
    assert isinstance(policy, HostTLSPolicy) and policy.mode is PolicyMode.DANE
    assert result.recipients[0].delivered
    assert tls_result.verified and tls_result.policy_type == "tlsa"
    assert peers["with"].messages == [{"tls": True, "requiretls": True}]


def test_requiretls_to_host_without_requiretls_fails_5_7_30(
        dns_lab_factory: Any, peers: dict[str, Any],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified host that does not offer REQUIRETLS does not get the message: 5.7.30."""
    lab = dns_lab_factory(_zone(_tlsa_text(peers["leaf"])))
    _policy, error, _tls = _send(lab, peers["without"].port, monkeypatch, requiretls=True)
    assert isinstance(error, SMTPLocalError) and error.enhanced == "5.7.30" and error.permanent
    assert peers["without"].count() == 0


def test_requiretls_without_verified_tls_is_refused(
        dns_lab_factory: Any, peers: dict[str, Any],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With an unsigned zone (no DANE, no MTA-STS) a REQUIRETLS message is refused for the
    host before connecting: permanent 5.7.30."""
    lab = dns_lab_factory({"remote.test": ZoneSpec(
        records=["@ MX 10 mx", "mx A 127.0.0.1"], signed=False)})
    refusal = _send(lab, peers["with"].port, monkeypatch, requiretls=True)
    assert isinstance(refusal, HostRefusal) and refusal.permanent
    assert refusal.enhanced == "5.7.30"
    assert peers["with"].count() == 0


def test_dane_mismatch_fails_but_tls_required_no_delivers(
        dns_lab_factory: Any, peers: dict[str, Any],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DANE mismatch fails the attempt; with TLS-Required: No the same message is
    delivered over TLS and the failure is recorded (RFC 8689 §5)."""
    lab = dns_lab_factory(_zone("3 1 1 " + "00" * 32))
    _policy, error, tls_result = _send(lab, peers["without"].port, monkeypatch,
                                       requiretls=False)
    assert isinstance(error, SMTPTLSError) and error.result_type == "validation-failure"
    assert peers["without"].count() == 0
    policy, result, tls_result = _send(lab, peers["without"].port, monkeypatch,
                                       requiretls=False, tls_required_no=True)
    assert policy.mode is PolicyMode.DANE and policy.tls_required_no
    assert result.recipients[0].delivered
    assert tls_result.used and not tls_result.verified
    assert tls_result.failure == "validation-failure"
    assert peers["without"].messages == [{"tls": True, "requiretls": False}]
