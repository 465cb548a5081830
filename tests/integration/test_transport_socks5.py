"""The socks5 transport through mxd's real queue runner and real proxies: MX and TLSA from
the DNSSEC lab (nsd + unbound), mxd's own resolver does every lookup, the proxy (microsocks
with and without RFC 1929 auth, dante) is asked for the MX's IP address, and DANE verifies
the aiosmtpd sink's certificate through the tunnel.  The proxy's log shows the tunnel.
A proxy that is down, or that refuses our password, defers the message with its words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mxd import dane
from mxd.queue.routes import Transport, TransportKind
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.proxies import Dante, Microsocks
from tests.integration.tools import free_port
from tests.integration.transport_harness import deliver
from tests.queue.sinks import AiosmtpdSink

pytestmark = pytest.mark.integration


def _zones(cert: Path) -> dict[str, ZoneSpec]:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    tlsa = dane.tlsa_text(dane.tlsa_for_certificate(leaf))
    return {"remote.test": ZoneSpec(records=["@ MX 10 mx", "mx A 127.0.0.1",
                                             f"_25._tcp.mx TLSA {tlsa}"], signed=True)}


def _proxied(port: int, user: str | None = None, password: str | None = None) -> Transport:
    return Transport("proxied", TransportKind.SOCKS5, host="127.0.0.1", port=port,
                     proxy_username=user, proxy_password=password,
                     remote_ips=("198.51.100.7",), ehlo_hostname="out.example.org")


@pytest.mark.parametrize("proxy", ["microsocks", "microsocks-auth", "dante"])
def test_dane_verified_delivery_through_proxy(proxy: str, dns_lab_factory: Any,  # noqa: F811
                                              tls_files: dict[str, Path], data_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    lab = dns_lab_factory(_zones(tls_files["cert"]))
    creds = ("mxd", "pr0xy-secret") if proxy == "microsocks-auth" else (None, None)
    server: Any = Dante() if proxy == "dante" else Microsocks(*creds)  # type: ignore[arg-type]
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink, server as p:
        out = deliver(monkeypatch, data_dir, (_proxied(p.port, *creds),),
                      [("a@example.org", ["someone@remote.test"], {})],
                      lambda: sink.count() >= 1, resolver=lab.resolver_settings(),
                      port=sink.port, policy=True)
        assert sink.count() == 1 and sink.messages[0]["tls"]
        assert p.connected_to(sink.port), p.log()
    [[a]] = out.attempts.values()
    assert (a.transport, a.result, a.host) == ("proxied", "delivered", "mx.remote.test")
    assert a.tls_verified and a.tls_policy_type == "tlsa" and a.tls_version == "TLSv1.3"
    assert a.tls_success is True  # a TLS report session of remote.test, like direct
    assert a.sending_ip == "198.51.100.7"  # the proxy's public address (RFC 8460 §4.4)
    assert out.left == []


def test_proxy_down_or_wrong_password_defers(dns_lab_factory: Any,  # noqa: F811
                                             tls_files: dict[str, Path], data_dir: Path,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens at the proxy's port: deferred (4.4.1) with "cannot connect to the
    SOCKS proxy"; microsocks refuses the password: deferred with the RFC 1929 refusal."""
    lab = dns_lab_factory(_zones(tls_files["cert"]))
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink:
        out = deliver(monkeypatch, data_dir, (_proxied(free_port()),),
                      [("a@example.org", ["someone@remote.test"], {})],
                      lambda: False, resolver=lab.resolver_settings(), port=sink.port,
                      policy=True, wait=2.0)
        [m] = out.left
        r = m.recipients[0]
        assert (r.last_code, r.last_enhanced) == (451, "4.4.1")
        assert "through transport proxied" in (r.last_text or "")
        assert "cannot connect to the SOCKS proxy" in (r.last_text or "")
        with Microsocks("mxd", "right") as p:
            out = deliver(monkeypatch, tmp_path / "d2", (_proxied(p.port, "mxd", "wrong"),),
                          [("a@example.org", ["someone@remote.test"], {})],
                          lambda: False, resolver=lab.resolver_settings(), port=sink.port,
                          policy=True, wait=2.0)
        [m] = out.left
        assert "SOCKS proxy refused the username/password" in (m.recipients[0].last_text or "")
        assert sink.count() == 0


def test_requiretls_still_applies_through_proxy(dns_lab_factory: Any,  # noqa: F811
                                                tls_files: dict[str, Path], data_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8689 through the proxy: the MX is DANE-verified but does not offer REQUIRETLS
    (aiosmtpd), so a REQUIRETLS message fails with 5.7.30 and is not sent."""
    lab = dns_lab_factory(_zones(tls_files["cert"]))
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink, Microsocks() as p:
        out = deliver(monkeypatch, data_dir, (_proxied(p.port),),
                      [("a@example.org", ["someone@remote.test"], {"requiretls": True})],
                      lambda: False, resolver=lab.resolver_settings(), port=sink.port,
                      policy=True, wait=3.0)
        assert p.connected_to(sink.port)
    assert sink.messages == [] or all(m["rcpts"] != ["someone@remote.test"]
                                      for m in sink.messages)
    [[a]] = out.attempts.values()
    assert a.transport == "proxied" and a.enhanced == "5.7.30" and a.tls_verified
    assert all(m.queue_id not in out.attempts for m in out.left)
