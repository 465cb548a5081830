"""Grouping client addresses into networks, for connection shares (SMTP, IMAP).

A flood from many addresses of one network (a /24 of IPv4, a /48 of IPv6: one site)
counts against one share of a listener's connections.  Pure.
"""

from __future__ import annotations

import functools
import ipaddress


# Every new connection asks (twice: the listener's shares, then the session); the
# ipaddress module's parsing costs tens of microseconds.  Bounded: a flood from many
# addresses only churns it.
@functools.lru_cache(maxsize=4096)
def network_key(ip: str) -> str:
    """The network a connection share is counted on: IPv4 /24, IPv6 /48 (IPv4-mapped
    IPv6 addresses count as IPv4); anything unparsable stands for itself."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network((addr, prefix), strict=False))
