"""Settings of the queue runner and of direct delivery (the composition layer maps the
config onto them)."""

from __future__ import annotations

from typing import Any

import attrs

from mxd.queue.routes import Route, RouteTable, Transport
from mxd.queue.schedule import RetrySettings
from mxd.smtp.client import ClientSettings


@attrs.frozen
class QueueSettings:
    """Settings of the queue runner (the composition layer maps the config onto it)."""

    retry: RetrySettings = RetrySettings()
    max_concurrent: int = 20  # deliveries (SMTP transactions) in flight in total
    max_per_domain: int = 4  # ... and per destination domain
    port: int = 25  # direct delivery port (RFC 5321 §4.5.4.2); tests use another
    connect_timeout: float = 30.0
    lease: float = 3 * 3600.0  # longer than any attempt can take (sum of client timeouts)
    # This runner's name on its leases (worker processes: one each, see mxd.supervisor);
    # None: the only runner.
    lease_owner: str | None = None
    # At start, put every in-flight recipient back (a crash cut them short).  Off in a
    # worker process: other workers' leases are live; the main process recovers at start.
    recover_at_start: bool = True
    batch: int = 500  # due recipients read per wake
    max_rcpts_per_transaction: int = 100  # RFC 5321 §4.5.3.1.8: at least 100 must be accepted
    own_names: frozenset[str] = frozenset()  # our host names (RFC 5321 §5.1 MX loop rule)
    own_addresses: frozenset[str] = frozenset()  # never connect to these
    ipv4: bool = True
    ipv6: bool = True
    prefer_ipv6: bool = False
    plaintext_fallback: bool = True  # opportunistic TLS: retry in plaintext after a TLS failure
    client: ClientSettings = ClientSettings()
    routes: tuple[Route, ...] = ()  # global routes (used when route_table is None)
    route_table: RouteTable | None = None  # account, domain and global routes
    transports: tuple[Transport, ...] = ()
    smarthost_trust: Any = None  # trust root for verified smarthosts; None: the system's
    stop_timeout: float = 10.0
    # Connection reuse: a connection that just delivered waits this long for the next
    # message to the same host (like Postfix's connection cache); 0 disables reuse.
    idle_timeout: float = 2.0
    max_idle_per_host: int = 8
    max_messages_per_connection: int = 100
