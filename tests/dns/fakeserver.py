"""A small in-process DNS server on loopback (Twisted sockets + dnspython) for unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import Int16StringReceiver

# handler(query, transport) -> list of wire messages to send back ("udp" or "tcp")
Handler = Callable[[dns.message.Message, str], list[bytes]]


def reply(query: dns.message.Message, *rrs: str, rcode: int = dns.rcode.NOERROR,
          ad: bool = False, tc: bool = False, authority: tuple[str, ...] = (),
          ede: tuple[tuple[int, str], ...] = ()) -> dns.message.Message:
    """A response to ``query`` with answer records given as zone-file lines."""
    import dns.edns

    r = dns.message.make_response(query)
    r.set_rcode(dns.rcode.Rcode.make(rcode))
    for line in rrs:
        r.answer.append(_rrset(line))
    for line in authority:
        r.authority.append(_rrset(line))
    if ad:
        r.flags |= dns.flags.AD
    if tc:
        r.flags |= dns.flags.TC
    if ede:
        r.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode.make(c), t) for c, t in ede])
    return r


def _rrset(line: str) -> dns.rrset.RRset:
    name, ttl, cls, typ, *rdata = line.split(None, 4)
    return dns.rrset.from_text(name, int(ttl), cls, typ, " ".join(rdata))


class _UDP(DatagramProtocol):
    def __init__(self, server: FakeDNSServer) -> None:
        self.server = server

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        self.server.received.append(("udp", query))
        for wire in self.server.handler(query, "udp"):
            self.transport.write(wire, addr)  # type: ignore[union-attr]


class _TCP(Int16StringReceiver):
    def __init__(self, server: FakeDNSServer) -> None:
        self.server = server

    def stringReceived(self, data: bytes) -> None:
        query = dns.message.from_wire(data)
        self.server.received.append(("tcp", query))
        for wire in self.server.handler(query, "tcp"):
            self.sendString(wire)


class FakeDNSServer:
    """UDP and TCP on the same loopback port; ``handler`` decides what to send back."""

    def __init__(self, reactor: Any, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.received: list[tuple[str, dns.message.Message]] = []
        for _ in range(20):
            self._udp = reactor.listenUDP(0, _UDP(self), interface=host)
            self.port = self._udp.getHost().port
            try:
                self._tcp = reactor.listenTCP(self.port, Factory.forProtocol(lambda: _TCP(self)),
                                              interface=host)
                break
            except Exception:
                self._udp.stopListening()
        else:
            raise RuntimeError("no free port pair")

    def stop(self) -> None:
        self._udp.stopListening()
        self._tcp.stopListening()
