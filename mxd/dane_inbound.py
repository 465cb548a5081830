"""Inbound DANE: do our own TLSA records match the certificates we serve? (RFC 7672 §3.1.1)

A sending MTA that finds DNSSEC-signed TLSA records for our MX host insists on a matching
certificate and *defers* mail otherwise (RFC 7672 §2.2).  A stale record therefore stops
inbound mail from every DANE sender, silently.  mxd checks at start-up, and `mxd dns check`
checks on demand, that every certificate it may present (the RSA and the ECDSA one) matches
a usable record, and says loudly what to publish when not.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd import dane
from mxd.dane import TLSALookup, TLSAOutcome

log = Logger(namespace="mxd.dane_inbound")


class InboundStatus(enum.StrEnum):
    OK = "ok"  # every served certificate matches an authentic, usable record
    NO_RECORDS = "no-records"  # authentically no TLSA records: DANE is not in use
    INSECURE = "insecure"  # TLSA lookup not DNSSEC-authenticated: senders ignore it
    LOOKUP_FAILED = "lookup-failed"
    PARTIAL = "partial"  # some served certificates match, others do not
    MISMATCH = "mismatch"  # no served certificate matches: DANE senders defer our mail


@attrs.frozen
class InboundDANE:
    status: InboundStatus
    detail: str
    unmatched: tuple[str, ...] = ()  # key kinds whose certificate matches no record


def evaluate(lookup: TLSALookup, served: Sequence[tuple[str, Sequence[bytes]]],
             names: Sequence[str], now: datetime.datetime) -> InboundDANE:
    """Compare our TLSA lookup with the chains we serve (kind, DER chain leaf first)."""
    if lookup.outcome is TLSAOutcome.DENIAL:
        return InboundDANE(InboundStatus.NO_RECORDS, "no TLSA records (DANE not in use)")
    if lookup.outcome is TLSAOutcome.FAILURE:
        return InboundDANE(InboundStatus.LOOKUP_FAILED, lookup.detail)
    if lookup.outcome is TLSAOutcome.INSECURE:
        return InboundDANE(InboundStatus.INSECURE, "TLSA answer is not DNSSEC-authenticated; "
                           "sign the zone (senders ignore unsigned TLSA records)")
    unmatched = []
    for kind, chain in served:
        result = dane.verify_chain(lookup.records, chain, names, now)
        if not result.verified:
            unmatched.append(kind)
    if not unmatched:
        return InboundDANE(InboundStatus.OK, f"{len(served)} served certificate(s) match")
    status = InboundStatus.MISMATCH if len(unmatched) == len(served) else InboundStatus.PARTIAL
    return InboundDANE(status, "no usable TLSA record matches the " + ", ".join(unmatched) +
                       " certificate", tuple(unmatched))


def served_chains(store: Any, name: str) -> list[tuple[str, list[bytes]]]:
    """The chains a CertStore serves for ``name``, as (kind, DER list)."""
    out = []
    for ck in store.current(name):
        out.append((ck.kind.value, [c.public_bytes(serialization.Encoding.DER)
                                    for c in ck.chain]))
    return out


async def check(resolver: Any, store: Any, hostname: str) -> InboundDANE:
    lookup = await dane.lookup_tlsa(resolver, hostname)
    return evaluate(lookup, served_chains(store, hostname), (hostname,),
                    datetime.datetime.now(datetime.UTC))


class InboundDANECheck(service.Service):
    """At start-up, look up ``_25._tcp.<hostname>`` and compare with the keys in use."""

    name = "inbound-dane-check"

    def __init__(self, resolver: Any, store: Any, hostname: str) -> None:
        self.resolver = resolver
        self.store = store
        self.hostname = hostname
        self.result: Deferred[InboundDANE] | None = None

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(check(self.resolver, self.store, self.hostname))
        d.addCallback(self._report)
        d.addErrback(lambda f: log.failure("inbound DANE check failed", f))
        self.result = d

    def _report(self, r: InboundDANE) -> InboundDANE:
        base = f"_25._tcp.{self.hostname}"
        if r.status is InboundStatus.OK:
            log.info("inbound DANE: TLSA records at {name} match the host keys in use",
                     name=base)
        elif r.status in (InboundStatus.MISMATCH, InboundStatus.PARTIAL):
            log.critical(
                "inbound DANE: TLSA records at {name} do NOT match the certificates mxd "
                "serves ({detail}); senders using DANE will defer mail to this server. "
                "Publish the records `mxd dns records` prints (TLSA 3 1 1 of both host keys) "
                "or restore the host keys they were made for", name=base, detail=r.detail)
        elif r.status is InboundStatus.NO_RECORDS:
            log.info("inbound DANE: no TLSA records at {name}; publish them (see `mxd dns "
                     "records`) so senders can authenticate this server", name=base)
        else:
            log.warn("inbound DANE: {name}: {detail}", name=base, detail=r.detail)
        return r
