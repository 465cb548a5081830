"""Relaying through a smarthost (``smtp``, ``submission``, ``submissions`` transports).

The smarthost's name is resolved with mxd's own resolver (its A/AAAA records, in order,
RFC 5321 §5.1 as for an MX host); each address is tried until one runs the transaction.
The connection, TLS policy (``mxd.queue.transports.smarthost_policy``), SASL AUTH and
implicit TLS come from the ``Via``; the transaction itself and the idle-connection cache
are direct delivery's (``DirectDelivery.connect_and_send``).

Results: a transaction's per-recipient replies are final for this attempt; a refused
AUTH defers the recipients with the relay's words (the administrator can fix the
credentials within the retry period); connection-level failures move to the next address
and finally defer.  Smarthost sessions are not the recipient domain's MX sessions, so they
are left out of TLS reports and per-domain TLS records.
"""

from __future__ import annotations

import ipaddress

import attrs

from mxd.queue import mx
from mxd.queue.direct import DirectDelivery
from mxd.queue.outcome import (
    RcptKind,
    RcptOutcome,
    for_all,
    from_transaction,
    reply_fields,
    temporary,
)
from mxd.queue.records import Attempt
from mxd.queue.transports import Via
from mxd.smtp.client import (
    SMTPAuthError,
    SMTPConnectionError,
    SMTPLocalError,
    SMTPReplyError,
    TLSPolicy,
)
from mxd.store import queuedb as qs


async def deliver(direct: DirectDelivery, m: qs.QueuedMessage, via: Via,
                  policy: TLSPolicy) -> tuple[list[RcptOutcome], list[Attempt]]:
    """Relay ``m`` through ``via``'s smarthost."""
    host, _port = via.transport.address
    s = direct.settings
    try:
        ipaddress.ip_address(host)
        ips = [host]
    except ValueError:
        try:
            addrs = await mx.resolve_host(direct.resolver, host, s.ipv6, s.ipv4, s.prefer_ipv6)
        except mx.MXError as e:
            return for_all(m, RcptKind.TEMPORARY, 451, temporary(e.enhanced),
                           f"smarthost {host} of transport {via.name}: {e}"), []
        ips = [a.ip for a in addrs]
    if not ips:
        return for_all(m, RcptKind.TEMPORARY, 451, "4.4.4",
                       f"smarthost {host} of transport {via.name} has no address"), []
    attempts: list[Attempt] = []
    last: Exception = SMTPConnectionError(f"no usable address for {host}")
    for ip in ips:
        a = attrs.evolve(await direct.connect_and_send(m, host, ip, policy, via),
                         report_tls=False)
        attempts.append(a)
        if a.result is not None:
            return from_transaction(m, a.result, host, a.peer_dsn), attempts
        err = a.error or last
        if isinstance(err, SMTPAuthError):
            text = f"smarthost {host} refused authentication: {err}"
            return for_all(m, RcptKind.TEMPORARY, err.code if err.code < 500 else 454,
                           temporary(err.enhanced or "4.7.8"), text, host=host), attempts
        if isinstance(err, SMTPLocalError) or (
                isinstance(err, SMTPReplyError) and err.command == "MAIL FROM"
                and err.code != 421):
            kind = RcptKind.PERMANENT if err.permanent else RcptKind.TEMPORARY
            return for_all(m, kind, *reply_fields(err), host=host), attempts
        last = err
    code, enhanced, text = reply_fields(last)
    if code is not None and code >= 500:
        code = 451  # a 5xx greeting is no verdict on the message
    return for_all(m, RcptKind.TEMPORARY, code or 451, temporary(enhanced),
                   f"smarthost {host}: {text}", host=host), attempts
