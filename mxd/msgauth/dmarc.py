"""Domain-based Message Authentication, Reporting and Conformance (DMARC), RFC 7489.

``parse_record`` reads a DMARC record (§6.3, §6.4); ``organizational_domain`` applies the
Public Suffix List (§3.2, through the ``publicsuffixlist`` package, which ships and
updates the list); ``lookup`` finds the policy for the RFC5322.From domain, falling back
to the organizational domain (§6.6.3); ``evaluate`` is the pure decision (§6.6.2, §6.6.4):
identifier alignment of SPF and DKIM, the applicable policy (p or sp) and pct sampling.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from typing import Any

import attrs

from mxd.dns.errors import DNSNegativeAnswer, DNSTemporaryError, DomainError
from mxd.dns.interfaces import IResolver
from mxd.dns.names import Domain
from mxd.msgauth.dkim import DKIMResult
from mxd.msgauth.dkim import Result as DKIMStatus
from mxd.msgauth.spf import SPFOutcome, SPFResult


class DMARCResult(enum.StrEnum):
    """Results of the ``dmarc`` method (RFC 7489 §11.2, RFC 8601 §2.7)."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Policy(enum.StrEnum):
    """p= / sp= values (RFC 7489 §6.3)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class DMARCSyntaxError(ValueError):
    """Not a usable DMARC record."""


@attrs.frozen
class Record:
    policy: Policy
    subdomain_policy: Policy | None = None
    adkim: str = "r"  # "r" relaxed, "s" strict (§6.3)
    aspf: str = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    text: str = ""
    nonexistent_policy: Policy | None = None  # np= (RFC 9091 §4.1)


_VERSION = re.compile(r"^\s*v\s*=\s*DMARC1\s*(?:;|$)")


def is_dmarc(txt: str) -> bool:
    return _VERSION.match(txt) is not None


def _uris(value: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in value.split(",") if u.strip())


@functools.lru_cache(maxsize=1024)
def parse_record(txt: str) -> Record:
    """§6.3/§6.4: v=DMARC1 first; p= required (an invalid p= with a rua= is p=none,
    §6.6.3); unknown tags ignored; a bad pct= is ignored (100)."""
    if not is_dmarc(txt):
        raise DMARCSyntaxError("not a DMARC record (v=DMARC1 must come first)")
    tags: dict[str, str] = {}
    for part in txt.split(";")[1:]:
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    rua = _uris(tags.get("rua", ""))
    try:
        policy = Policy(tags.get("p", "").lower())
    except ValueError:
        if not rua:
            raise DMARCSyntaxError(f"p={tags.get('p', '')!r} is not none, quarantine or "
                                   "reject") from None
        policy = Policy.NONE
    sp = np = None
    if "sp" in tags:
        try:
            sp = Policy(tags["sp"].lower())
        except ValueError:
            sp = None
    if "np" in tags:
        try:
            np = Policy(tags["np"].lower())
        except ValueError:
            np = None
    pct = 100
    if tags.get("pct", "").isdigit() and 0 <= int(tags["pct"]) <= 100:
        pct = int(tags["pct"])
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return Record(policy, sp, adkim, aspf, pct, rua, _uris(tags.get("ruf", "")), txt, np)


@functools.lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def warm_up() -> None:
    """Parse the Public Suffix List now (a quarter of a second of CPU): the server calls
    this in a thread at start-up so that the first message does not pay for it on the
    reactor thread."""
    _psl()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """§3.2: the registrable domain under the public suffix (``mail.example.co.uk`` →
    ``example.co.uk``); a public suffix itself is its own organizational domain."""
    d = domain.lower().rstrip(".")
    org = _psl().privatesuffix(d)
    return str(org) if org else d


def aligned(a: str, b: str, mode: str) -> bool:
    """§3.1: strict needs equal names, relaxed equal organizational domains."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return a == b or organizational_domain(a) == organizational_domain(b)


@attrs.frozen
class Found:
    """The record found for a From domain (or None), where, and its DNSSEC status."""

    record: Record | None
    domain: str  # where the record was published ("" when none)
    authentic: bool
    error: DMARCResult | None = None  # temperror / permerror on the way
    reason: str = ""
    nonexistent: bool = False  # the From domain does not exist (RFC 9091 §2.1)


async def _records_at(resolver: IResolver, domain: str) -> tuple[list[str], bool]:
    try:
        answer = await resolver.lookup_txt(f"_dmarc.{domain}")
    except DNSNegativeAnswer as e:
        return [], e.authentic
    texts = [r.decode("utf-8", "replace") for r in answer.records]
    return [t for t in texts if is_dmarc(t)], bool(answer.authentic)


async def _nonexistent(resolver: Any, domain: str) -> bool:
    """RFC 9091 §2.1: NXDOMAIN for A, AAAA and MX (any other outcome: it exists)."""
    from mxd.dns.errors import DNSNotFound

    for method in ("lookup_a", "lookup_aaaa", "lookup_mx"):
        try:
            await getattr(resolver, method)(domain)
        except DNSNotFound:
            continue
        except Exception:  # noqa: BLE001 - no data, a failure: not shown to be absent
            return False
        return False
    return True


async def lookup(resolver: IResolver, from_domain: str) -> Found:
    """§6.6.3: _dmarc.FROM, else _dmarc.ORGANIZATIONAL; more than one record is none."""
    try:
        Domain.parse(from_domain)
    except DomainError:
        return Found(None, "", False, DMARCResult.PERMERROR, f"bad From domain {from_domain!r}")
    authentic = True
    candidates = [from_domain]
    org = organizational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        try:
            texts, auth = await _records_at(resolver, domain)
        except DNSTemporaryError as e:
            return Found(None, "", False, DMARCResult.TEMPERROR, f"_dmarc.{domain}: {e}")
        except DomainError:
            continue
        authentic = authentic and auth
        if len(texts) != 1:
            continue  # none, or several: no policy at this name (§6.6.3)
        try:
            record = parse_record(texts[0])
        except DMARCSyntaxError as e:
            return Found(None, domain, authentic, reason=str(e))
        gone = False
        if domain != from_domain and record.nonexistent_policy is not None:
            gone = await _nonexistent(resolver, from_domain)
        return Found(record, domain, authentic, nonexistent=gone)
    return Found(None, "", authentic)


@attrs.frozen
class DMARCOutcome:
    """The DMARC evaluation of one message (what RFC 8601 and the aggregate report need)."""

    result: DMARCResult
    from_domain: str
    policy: Policy = Policy.NONE  # the policy that applies (p or sp)
    disposition: Policy = Policy.NONE  # what to do after pct sampling
    record_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    authentic: bool = False  # the record and the deciding authentication were DNSSEC-secure
    reason: str = ""
    rua: tuple[str, ...] = ()


_DOWNGRADE = {Policy.REJECT: Policy.QUARANTINE, Policy.QUARANTINE: Policy.NONE,
              Policy.NONE: Policy.NONE}


def evaluate(from_domain: str, found: Found, spf: SPFOutcome | None,
             dkim: list[DKIMResult], sample: Callable[[], float]) -> DMARCOutcome:
    """§6.6.2: pass when SPF or DKIM passes for an aligned domain; else fail, and the
    policy applies to ``pct`` percent of failing messages (§6.6.4: the rest get the next
    weaker policy)."""
    if found.error is not None:
        return DMARCOutcome(found.error, from_domain, reason=found.reason)
    record = found.record
    if record is None:
        return DMARCOutcome(DMARCResult.NONE, from_domain, authentic=found.authentic,
                            reason=found.reason or "no DMARC record")
    policy = record.policy
    if found.domain != from_domain:
        if found.nonexistent and record.nonexistent_policy is not None:
            policy = record.nonexistent_policy  # RFC 9091 §4.1
        elif record.subdomain_policy is not None:
            policy = record.subdomain_policy
    spf_ok = (spf is not None and spf.result is SPFResult.PASS
              and aligned(spf.domain, from_domain, record.aspf))
    dkim_pass = [d for d in dkim if d.result is DKIMStatus.PASS
                 and aligned(d.domain, from_domain, record.adkim)]
    common = {"from_domain": from_domain, "policy": policy, "record_domain": found.domain,
              "spf_aligned": spf_ok, "dkim_aligned": bool(dkim_pass), "rua": record.rua}
    if spf_ok or dkim_pass:
        via_auth = any(d.authentic for d in dkim_pass) or (spf_ok and spf is not None
                                                          and spf.authentic)
        return DMARCOutcome(DMARCResult.PASS, authentic=found.authentic and via_auth,
                            **common)  # type: ignore[arg-type]
    disposition = policy
    if record.pct < 100 and sample() * 100 >= record.pct:
        disposition = _DOWNGRADE[policy]
    return DMARCOutcome(DMARCResult.FAIL, disposition=disposition,
                        authentic=found.authentic,
                        reason="no aligned SPF or DKIM pass", **common)  # type: ignore[arg-type]
