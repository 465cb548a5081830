"""Resolver settings (Nameserver, resolv.conf trust), metrics, malformed answers, the CLI."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from mxd.dns import cli
from mxd.dns.errors import DNSServFail, DomainError
from mxd.dns.resolver import (
    Nameserver,
    Resolver,
    ResolverSettings,
    settings_from_resolv_conf,
)
from mxd.dns.testing import run_with_reactor
from tests.dns.fakeserver import FakeDNSServer, Handler, reply


def test_nameserver_default_trust_is_loopback_only() -> None:
    """Loopback nameservers are trusted by default, others not; explicit trust wins."""
    assert Nameserver("127.0.0.1").trusted and Nameserver("::1").trusted
    assert not Nameserver("192.0.2.53").trusted
    assert Nameserver("192.0.2.53", trusted=True).trusted
    with pytest.raises(ValueError):
        Nameserver("dns.example")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1", "127.0.0.1", 53), ("127.0.0.1:5353", "127.0.0.1", 5353),
     ("::1", "::1", 53), ("[::1]:5300", "::1", 5300), ("2001:db8::53", "2001:db8::53", 53)],
)
def test_nameserver_parse(text: str, host: str, port: int) -> None:
    """IP, IP:PORT, [IPv6]:PORT and bare IPv6 parse into host and port."""
    ns = Nameserver.parse(text)
    assert (ns.host, ns.port) == (host, port)


def test_resolv_conf_trust_ad(tmp_path: Path) -> None:
    """resolv.conf: options trust-ad trusts every nameserver; otherwise only loopback."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("# c\nnameserver 192.0.2.53\nnameserver ::1\nnameserver fe80::1%eth0\n"
                    "options timeout:3 attempts:4\nsearch example\n")
    s = settings_from_resolv_conf(conf)
    assert [(n.host, n.trusted) for n in s.nameservers] == [
        ("192.0.2.53", False), ("::1", True), ("fe80::1", False)]
    assert (s.timeout, s.attempts) == (3.0, 4)
    conf.write_text("nameserver 192.0.2.53\noptions edns0 trust-ad\n")
    assert [n.trusted for n in settings_from_resolv_conf(conf).nameservers] == [True]
    conf.write_text("")
    assert settings_from_resolv_conf(conf).nameservers == (Nameserver("127.0.0.1", 53, True),)


def test_resolver_needs_a_nameserver() -> None:
    """A resolver without nameservers is a configuration error."""
    with pytest.raises(ValueError):
        Resolver(None, ResolverSettings(nameservers=()))


class RecordingMetrics:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, str]]] = []

    def inc(self, name: str, **labels: str) -> None:
        self.events.append(("inc", name, labels))

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.events.append(("observe", name, labels))


def with_server(handler: Handler, call: Any, metrics: Any = None) -> Any:
    async def go(reactor: Any) -> Any:
        server = FakeDNSServer(reactor, handler)
        try:
            settings = ResolverSettings(nameservers=(Nameserver("127.0.0.1", server.port),),
                                        timeout=0.5, attempts=1)
            return await call(Resolver(reactor, settings, metrics), server)
        finally:
            server.stop()

    return run_with_reactor(go, timeout=10)


def a_handler(query: dns.message.Message, transport: str) -> list[bytes]:
    return [reply(query, "mx.example.test. 300 IN A 192.0.2.1", ad=True).to_wire()]


def test_metrics_lookups_and_cache() -> None:
    """Lookups report count (with cache hit/miss and outcome), latency and exchanges."""
    metrics = RecordingMetrics()

    async def twice(r: Resolver, server: FakeDNSServer) -> None:
        await r.lookup_a("mx.example.test")
        await r.lookup_a("mx.example.test")

    with_server(a_handler, twice, metrics)
    lookups = [labels for kind, name, labels in metrics.events if name == "dns_lookups_total"]
    assert [(x["cache"], x["outcome"], x["rdtype"]) for x in lookups] == [
        ("miss", "answer", "A"), ("hit", "answer", "A")]
    assert sum(1 for _, name, _ in metrics.events if name == "dns_lookup_seconds") == 2
    assert sum(1 for _, name, _ in metrics.events if name == "dns_exchanges_total") == 1


def test_malformed_answer_is_formerr_failure() -> None:
    """An undecodable answer to our question fails the lookup as DNSServFail(FORMERR)."""

    def handler(query: dns.message.Message, transport: str) -> list[bytes]:
        wire = reply(query, "mx.example.test. 300 IN A 192.0.2.1").to_wire()
        return [wire[:-2]]

    with pytest.raises(DNSServFail) as info:
        with_server(handler, lambda r, s: r.lookup_a("mx.example.test"))
    assert info.value.rcode == dns.rcode.FORMERR


def test_bad_name_and_type_errback_domain_error() -> None:
    """An invalid name or type errbacks with DomainError before any query is sent."""

    async def call(r: Resolver, server: FakeDNSServer) -> list[type]:
        out = []
        for d in (r.lookup_a("bad..name"), r.query("ok.test", "NOSUCHTYPE"),
                  r.lookup_ptr("x")):
            try:
                await d
            except DomainError as e:
                out.append(type(e))
        assert server.received == []
        return out

    assert with_server(a_handler, call) == [DomainError] * 3


def cli_args(*argv: str) -> argparse.Namespace:
    """Parse ``mxd dns lookup ...`` as mxd/cli.py wires it."""
    assert argv[0] == "lookup"
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv[1:]))


def run_cli(handler: Handler, *argv: str) -> tuple[int, str]:
    out = io.StringIO()

    async def call(r: Resolver, server: FakeDNSServer) -> int:
        args = cli_args("lookup", *argv, "--server", f"127.0.0.1:{server.port}",
                        "--timeout", "0.5")
        return await cli.lookup(r._reactor, args, out)

    return with_server(handler, call), out.getvalue()


def test_cli_prints_answer() -> None:
    """The CLI prints records, authentic and TTL; exit 0."""
    code, text = run_cli(a_handler, "A", "mx.example.test")
    assert code == 0
    assert "authentic: yes" in text and "record: 192.0.2.1" in text and "ttl: 300" in text


def test_cli_negative_and_failure_codes() -> None:
    """NXDOMAIN exits 1; SERVFAIL with EDE exits 2 and prints the extended error."""

    def nx(query: dns.message.Message, transport: str) -> list[bytes]:
        return [reply(query, rcode=dns.rcode.NXDOMAIN).to_wire()]

    def sf(query: dns.message.Message, transport: str) -> list[bytes]:
        return [reply(query, rcode=dns.rcode.SERVFAIL, ede=((9, "no DNSKEY"),)).to_wire()]

    code, text = run_cli(nx, "MX", "gone.example.test")
    assert code == 1 and "status: NXDOMAIN" in text and "authentic: no" in text
    code, text = run_cli(sf, "TLSA", "_25._tcp.mx.example.test")
    assert code == 2 and "extended-error: EDE 9 (DNSKEY Missing): no DNSKEY" in text


def test_cli_untrusted_note_and_txt_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no trusted nameserver the CLI says so; TXT bytes print escaped."""

    def txt(query: dns.message.Message, transport: str) -> list[bytes]:
        return [reply(query, 'x.test. 60 IN TXT "a\\"b" "\\255"', ad=True).to_wire()]

    real_settings = cli._settings

    def untrusted(args: argparse.Namespace) -> ResolverSettings:
        s = real_settings(args)
        return ResolverSettings(nameservers=tuple(
            Nameserver(n.host, n.port, trusted=False) for n in s.nameservers))

    monkeypatch.setattr(cli, "_settings", untrusted)
    code, text = run_cli(txt, "TXT", "x.test")
    assert code == 0
    assert 'record: "a\\034b\\255"' in text
    assert "note: no trusted nameserver" in text and "authentic: no" in text


def test_cli_bad_type_and_name() -> None:
    """An unknown type or an invalid name exits 2 with an error line."""
    code, text = run_cli(a_handler, "NOPE", "x.test")
    assert code == 2 and text.startswith("error:")
    code, text = run_cli(a_handler, "A", "a..b")
    assert code == 2 and text.startswith("error:")


def test_warns_when_no_nameserver_is_trusted() -> None:
    """A resolver whose nameservers are all untrusted logs a warning naming them."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        Resolver(None, ResolverSettings(nameservers=(Nameserver("192.0.2.53"),)))
        Resolver(None, ResolverSettings(nameservers=(Nameserver("127.0.0.1"),)))
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "no trusted nameserver" in e.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["nameservers"] == ["192.0.2.53:53"]


def test_settings_from_values() -> None:
    """Config values map to settings: explicit trusted list, else loopback-only trust."""
    from mxd.dns.resolver import settings_from_values

    s = settings_from_values(["127.0.0.1:5353", "192.0.2.53"], timeout=1.5, attempts=3)
    assert [(n.host, n.port, n.trusted) for n in s.nameservers] == [
        ("127.0.0.1", 5353, True), ("192.0.2.53", 53, False)]
    assert (s.timeout, s.attempts) == (1.5, 3)
    s = settings_from_values(["127.0.0.1", "[2001:db8::53]:53"], ["[2001:db8::53]:53"])
    assert [n.trusted for n in s.nameservers] == [False, True]


def test_mxd_cli_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mxd dns lookup TYPE NAME`` parses through mxd/cli.py's parser into our run()."""
    from mxd.cli import build_parser

    seen: list[Any] = []
    monkeypatch.setattr(cli, "run", lambda a: seen.append(a) or 0)
    args = build_parser().parse_args(["dns", "lookup", "TLSA", "_25._tcp.mx.example.test",
                                      "--server", "127.0.0.1:5353", "--timeout", "1"])
    assert args.func(args) == 0 and seen == [args]
    assert (args.type, args.name, args.server, args.timeout) == (
        "TLSA", "_25._tcp.mx.example.test", ["127.0.0.1:5353"], 1.0)
