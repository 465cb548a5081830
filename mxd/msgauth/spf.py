"""Sender Policy Framework (SPF), RFC 7208.

``check_host`` is the RFC's function (§4): it evaluates the SPF record of a domain for a
client IP, following ``include``/``redirect``, with the limits of §4.6.4 (10 terms that
cause DNS lookups, 2 void lookups, 10 address lookups per MX or PTR).  ``check_mail_from``
and ``check_helo`` pick the identity (§2.3, §2.4).  The record is parsed completely before
it is evaluated, so a syntax error anywhere is a ``permerror`` (§4.6).

DNS goes through the resolver passed in (``mxd.dns.Resolver`` or ``FakeResolver``);
``SPFOutcome.authentic`` is True only when every lookup that decided the result was
DNSSEC-validated by a trusted resolver.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import urllib.parse
from typing import Any

import attrs
import dns.exception
import dns.name
from twisted.internet.defer import Deferred

from mxd.dns.errors import DNSNegativeAnswer, DNSTemporaryError, DomainError
from mxd.dns.interfaces import IResolver
from mxd.dns.names import Domain

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4
VOID_LIMIT = 2  # RFC 7208 §4.6.4
ADDRESS_LIMIT = 10  # per MX / PTR, RFC 7208 §4.6.4
MAX_RECORD = 64 * 1024  # larger TXT answers are not SPF policies anyone should publish


class SPFResult(enum.StrEnum):
    """RFC 7208 §2.6 results."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


_QUALIFIERS = {"+": SPFResult.PASS, "-": SPFResult.FAIL, "~": SPFResult.SOFTFAIL,
               "?": SPFResult.NEUTRAL}


@attrs.frozen
class SPFOutcome:
    """The result of one check: what the RFC calls the result, plus what explains it."""

    result: SPFResult
    domain: str  # the domain whose policy was checked (A-label), "" if none
    identity: str  # "mailfrom" or "helo" (RFC 8601 §2.7.2 ptype smtp properties)
    reason: str = ""  # which mechanism matched, or what went wrong
    explanation: str | None = None  # exp= text on fail (RFC 7208 §6.2), untrusted
    authentic: bool = False  # every deciding lookup was DNSSEC-validated
    lookups: int = 0


class _Stop(Exception):
    """Ends evaluation with a result (control flow, not an error)."""

    def __init__(self, result: SPFResult, reason: str) -> None:
        self.result = result
        self.reason = reason


def _perm(reason: str) -> _Stop:
    return _Stop(SPFResult.PERMERROR, reason)


# -- record syntax (RFC 7208 §4.6.1, §12 ABNF) ---------------------------------------------

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*\Z")
_MACRO = re.compile(r"%(?:\{([A-Za-z])(\d*)(r?)([.\-+,/_=]*)\}|(.))", re.S)
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])\Z")
_CIDR = re.compile(r"(?:/(\d+))?(?://(\d+))?\Z")
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")


@attrs.frozen
class Mechanism:
    qualifier: SPFResult
    name: str
    arg: str = ""  # domain-spec (macro text) or IP network text
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@attrs.frozen
class Record:
    mechanisms: tuple[Mechanism, ...]
    redirect: str | None = None
    exp: str | None = None


def _check_macro_string(text: str, *, exp: bool = False) -> None:
    """RFC 7208 §7.1 macro syntax; c, r and t only in explanation strings."""
    for m in _MACRO.finditer(text):
        if m.group(5) is not None:
            if m.group(5) not in "%_-":
                raise _perm(f"bad macro %{m.group(5)}")
            continue
        letter = m.group(1).lower()
        if letter not in "slodiphv" + ("crt" if exp else ""):
            raise _perm(f"macro letter {m.group(1)!r} not allowed here")
        if m.group(2) and int(m.group(2)) == 0:
            raise _perm("macro transformer digit must be nonzero")
    # A % that did not start a valid macro (e.g. "%{" unclosed, or a trailing "%").
    stripped = _MACRO.sub("", text)
    if "%" in stripped:
        raise _perm("bad macro syntax")


def _check_domain_spec(spec: str) -> None:
    """domain-spec = macro-string domain-end (RFC 7208 §7.1)."""
    if not spec:
        raise _perm("empty domain-spec")
    if not all(0x21 <= ord(c) <= 0x7E for c in spec):
        raise _perm("domain-spec with characters outside visible ASCII")
    _check_macro_string(spec)
    if spec.endswith("}") and _MACRO.search(spec) and _last_is_macro(spec):
        return  # domain-end = macro-expand
    body = spec[:-1] if spec.endswith(".") else spec
    if "." not in body:
        raise _perm(f"domain-spec {spec!r} has no top label")
    if not _TOPLABEL.match(body.rsplit(".", 1)[1]):
        raise _perm(f"domain-spec {spec!r} does not end in a valid top label")


def _last_is_macro(spec: str) -> bool:
    last = None
    for m in _MACRO.finditer(spec):
        last = m
    return last is not None and last.end() == len(spec) and last.group(1) is not None


def parse_record(text: str) -> Record:
    """Parse one ``v=spf1`` record; raises ``SPFSyntaxError`` (a ``permerror``)."""
    try:
        return _parse(text)
    except _Stop as e:
        raise SPFSyntaxError(e.reason) from None


class SPFSyntaxError(ValueError):
    """The record is not valid SPF (RFC 7208 §4.6: permerror)."""


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> Record:
    """Parsed records are cached: the same policies come back message after message."""
    if not text.isascii():
        raise _perm("non-ASCII record")
    terms = text.split(" ")
    if terms[0].lower() != "v=spf1":
        raise _perm("not an SPF record")
    mechanisms: list[Mechanism] = []
    redirect = exp = None
    for term in terms[1:]:
        if not term:
            continue
        q = term[0]
        if q in _QUALIFIERS:
            body, qualifier = term[1:], _QUALIFIERS[q]
        else:
            body, qualifier = term, SPFResult.PASS
        name_part = re.split(r"[:/=]", body, maxsplit=1)[0]
        sep = body[len(name_part):len(name_part) + 1]
        if sep == "=" and q not in _QUALIFIERS:
            # modifier = name "=" macro-string (§4.6.1, §6)
            name, value = name_part.lower(), body[len(name_part) + 1:]
            if not _NAME.match(name_part):
                raise _perm(f"bad modifier name in {term!r}")
            if name == "redirect":
                if redirect is not None:
                    raise _perm("redirect given twice")  # §6
                _check_domain_spec(value)
                redirect = value
            elif name == "exp":
                if exp is not None:
                    raise _perm("exp given twice")
                _check_domain_spec(value)
                exp = value
            else:
                _check_macro_string(value)
            continue
        mechanisms.append(_mechanism(term, qualifier, name_part.lower(), body[len(name_part):]))
    return Record(tuple(mechanisms), redirect, exp)


def _mechanism(term: str, qualifier: SPFResult, name: str, rest: str) -> Mechanism:
    if name not in _MECHANISMS:
        raise _perm(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise _perm(f"'all' takes no argument: {term!r}")
        return Mechanism(qualifier, name)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _perm(f"{name} needs an address: {term!r}")
        addr, _, length = rest[1:].partition("/")
        try:
            ip: IP = (ipaddress.IPv4Address(addr) if name == "ip4"
                      else ipaddress.IPv6Address(addr))
        except ValueError:
            raise _perm(f"bad address in {term!r}") from None
        bits = 32 if name == "ip4" else 128
        if length:
            if not length.isdigit() or (length.startswith("0") and length != "0"):
                raise _perm(f"bad prefix length in {term!r}")
            bits = int(length)
            if bits > (32 if name == "ip4" else 128):
                raise _perm(f"prefix length too long in {term!r}")
        net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
        return Mechanism(qualifier, name, rest[1:], network=net)
    cidr4, cidr6 = 32, 128
    spec = ""
    if name in ("a", "mx"):
        m = _CIDR.search(rest)
        assert m is not None
        cidr_text = rest[m.start():]
        if m.group(1) is not None:
            if m.group(1).startswith("0") and m.group(1) != "0" or int(m.group(1)) > 32:
                raise _perm(f"bad IPv4 prefix length in {term!r}")
            cidr4 = int(m.group(1))
        if m.group(2) is not None:
            if m.group(2).startswith("0") and m.group(2) != "0" or int(m.group(2)) > 128:
                raise _perm(f"bad IPv6 prefix length in {term!r}")
            cidr6 = int(m.group(2))
        rest = rest[: len(rest) - len(cidr_text)]
    if rest:
        if not rest.startswith(":"):
            raise _perm(f"bad mechanism syntax {term!r}")
        spec = rest[1:]
        _check_domain_spec(spec)
    elif name in ("include", "exists"):
        raise _perm(f"{name} needs a domain: {term!r}")
    return Mechanism(qualifier, name, spec, cidr4, cidr6)


# -- evaluation ------------------------------------------------------------------------------

@attrs.define
class _State:
    """Shared by a check_host and every include/redirect inside it (§4.6.4 limits)."""

    resolver: IResolver
    ip: IP
    sender: str
    helo: str
    receiver: str
    lookups: int = 0
    voids: int = 0
    authentic: bool = True
    validated_name: str | None = None  # the p macro, computed once

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise _perm(f"more than {LOOKUP_LIMIT} DNS-querying terms (RFC 7208 §4.6.4)")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > VOID_LIMIT:
            raise _perm(f"more than {VOID_LIMIT} void lookups (RFC 7208 §4.6.4)")


def target_domain(name: str) -> Domain:
    """The Domain to query for an expanded target name.  RFC 7208 §7.1 lets a domain-spec
    hold any visible character, so a name that is no host name (``foo:bar/baz.example``)
    is still queried, in DNS presentation form; one with an over-long or empty label is
    refused (DomainError)."""
    try:
        return Domain.parse(name)
    except DomainError:
        pass
    try:
        return Domain.from_dns(dns.name.from_text(name.replace("\\", "\\\\"),
                                                  origin=dns.name.root))
    except dns.exception.DNSException as e:
        raise DomainError(f"not a domain name: {name!r} ({e})") from None


async def _query(state: _State, method: str, name: str, *, void_counts: bool = True
                 ) -> tuple[Any, ...]:
    """Records of one lookup; () for NXDOMAIN/no data (a void lookup); temperror on DNS
    failure; permerror for a name that is not a domain name."""
    try:
        answer = await getattr(state.resolver, method)(target_domain(name))
    except DNSNegativeAnswer as e:
        state.authentic = state.authentic and e.authentic
        if void_counts:
            state.count_void()
        return ()
    except DNSTemporaryError as e:
        raise _Stop(SPFResult.TEMPERROR, f"DNS {method[7:].upper()} {name}: {e}") from None
    except DomainError:
        raise _perm(f"invalid domain name {name!r}") from None
    state.authentic = state.authentic and answer.authentic
    return tuple(answer.records)


def _valid_target(name: str) -> str:
    """§4.8 / §7.3: after expansion, trim to 253 octets, and reject what is no host name."""
    name = name.rstrip(".") if name.endswith(".") and not name.endswith("..") else name
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    labels = name.split(".")
    if not name or any(not label or len(label) > 63 for label in labels):
        raise _perm(f"expanded target {name!r} is not a domain name")
    return name


def _sender_parts(sender: str) -> tuple[str, str]:
    local, _, domain = sender.rpartition("@")
    return (local or "postmaster"), domain


def _ip_macro(ip: IP) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


async def _expand(state: _State, spec: str, domain: str, *, exp: bool = False) -> str:
    """Macro expansion (RFC 7208 §7)."""
    if "%" not in spec:
        return spec
    if re.search(r"%\{[pP]", spec) and state.validated_name is None:
        state.validated_name = await _validated_name(state, domain)
    local, sender_domain = _sender_parts(state.sender)
    out: list[str] = []
    pos = 0
    for m in _MACRO.finditer(spec):
        out.append(spec[pos:m.start()])
        pos = m.end()
        if m.group(5) is not None:
            out.append({"%": "%", "_": " ", "-": "%20"}[m.group(5)])
            continue
        letter = m.group(1)
        value = {
            "s": state.sender, "l": local, "o": sender_domain, "d": domain,
            "i": _ip_macro(state.ip), "p": state.validated_name or "unknown",
            "v": "in-addr" if isinstance(state.ip, ipaddress.IPv4Address) else "ip6",
            "h": state.helo, "c": str(state.ip), "r": state.receiver, "t": "0",
        }[letter.lower()]
        delimiters = m.group(4) or "."
        parts = re.split("[" + re.escape(delimiters) + "]", value)
        if m.group(3):
            parts.reverse()
        if m.group(2):
            parts = parts[-int(m.group(2)):]
        value = ".".join(parts)
        if letter.isupper():
            value = urllib.parse.quote(value, safe="-._~")
        out.append(value)
    out.append(spec[pos:])
    return "".join(out)


def _addr_lookup(ip: IP) -> str:
    return "lookup_a" if isinstance(ip, ipaddress.IPv4Address) else "lookup_aaaa"


async def _validated_names(state: _State, void_counts: bool) -> list[str]:
    """PTR names of the client whose forward lookup contains it (§5.5): at most 10 PTR
    names are tried; DNS errors skip a name."""
    try:
        answer = await state.resolver.lookup_ptr(state.ip)
    except (DNSNegativeAnswer, DNSTemporaryError, DomainError) as e:
        if isinstance(e, DNSNegativeAnswer) and void_counts:
            state.count_void()
        return []
    names: list[str] = []
    for target in list(answer.records)[:ADDRESS_LIMIT]:
        name = target.ascii if isinstance(target, Domain) else str(target).rstrip(".").lower()
        try:
            addrs = await getattr(state.resolver, _addr_lookup(state.ip))(name)
        except (DNSNegativeAnswer, DNSTemporaryError, DomainError):
            continue
        if state.ip in addrs.records:
            names.append(name)
    return names


async def _validated_name(state: _State, domain: str) -> str:
    """The p macro (§7.3): a validated name, preferring ``domain`` or a subdomain of it."""
    names = await _validated_names(state, void_counts=False)
    for n in names:
        if n == domain or n.endswith("." + domain):
            return n
    return names[0] if names else "unknown"


def _in(ip: IP, addrs: tuple[Any, ...], cidr4: int, cidr6: int) -> bool:
    bits = cidr4 if isinstance(ip, ipaddress.IPv4Address) else cidr6
    for a in addrs:
        if a.version == ip.version and ip in ipaddress.ip_network(f"{a}/{bits}", strict=False):
            return True
    return False


async def _matches(state: _State, mech: Mechanism, domain: str) -> bool:
    name = mech.name
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        assert mech.network is not None
        return mech.network.version == state.ip.version and state.ip in mech.network
    state.count_lookup()
    target = _valid_target(await _expand(state, mech.arg, domain)) if mech.arg else domain
    if name == "include":
        sub = await _check(state, target)
        if sub.result is SPFResult.PASS:
            return True
        if sub.result in (SPFResult.FAIL, SPFResult.SOFTFAIL, SPFResult.NEUTRAL):
            return False
        if sub.result is SPFResult.NONE:
            raise _perm(f"include:{target} has no SPF record (RFC 7208 §5.2)")
        raise _Stop(sub.result, f"include:{target}: {sub.reason}")
    if name == "a":
        addrs = await _query(state, _addr_lookup(state.ip), target)
        return _in(state.ip, addrs, mech.cidr4, mech.cidr6)
    if name == "mx":
        mxs = await _query(state, "lookup_mx", target)
        if len(mxs) > ADDRESS_LIMIT:
            raise _perm(f"mx:{target} has more than {ADDRESS_LIMIT} MX records (§4.6.4)")
        for mx in sorted(mxs, key=lambda r: r.preference):
            host = mx.host.ascii
            if not host:  # a null MX (RFC 7505) has no addresses
                continue
            addrs = await _query(state, _addr_lookup(state.ip), host, void_counts=False)
            if _in(state.ip, addrs, mech.cidr4, mech.cidr6):
                return True
        return False
    if name == "ptr":
        target = target.lower()
        for n in await _validated_names(state, void_counts=True):
            if n == target or n.endswith("." + target):
                return True
        return False
    # exists: an A query whatever the client's address family (§5.7)
    return bool(await _query(state, "lookup_a", target))


@attrs.frozen
class _Check:
    result: SPFResult
    reason: str
    explanation: str | None = None


async def _record_for(state: _State, domain: str) -> Record | None:
    """§4.4, §4.5: the domain's single v=spf1 TXT record, or None."""
    try:
        answer = await state.resolver.lookup_txt(target_domain(domain))
    except DNSNegativeAnswer as e:
        state.authentic = state.authentic and e.authentic
        return None
    except DNSTemporaryError as e:
        raise _Stop(SPFResult.TEMPERROR, f"DNS TXT {domain}: {e}") from None
    except DomainError:
        return None
    state.authentic = state.authentic and answer.authentic
    records = []
    for raw in answer.records:
        head = raw[:7].lower()
        if head == b"v=spf1" or head == b"v=spf1 ":
            records.append(raw)
    if not records:
        return None
    if len(records) > 1:
        raise _perm(f"{domain} publishes more than one SPF record (§4.5)")
    if len(records[0]) > MAX_RECORD:
        raise _perm(f"{domain}: SPF record of {len(records[0])} octets")
    try:
        text = records[0].decode("ascii")
    except UnicodeDecodeError:
        raise _perm(f"{domain}: non-ASCII SPF record (§3.1)") from None
    return _parse(text)


async def _check(state: _State, domain: str) -> _Check:
    """check_host() for ``domain`` within the shared limits; _Stop escapes for errors."""
    record = await _record_for(state, domain)
    if record is None:
        return _Check(SPFResult.NONE, f"no SPF record at {domain}")
    for mech in record.mechanisms:
        if await _matches(state, mech, domain):
            result = mech.qualifier
            label = mech.name + (":" + mech.arg if mech.arg else "")
            explanation = None
            if result is SPFResult.FAIL and record.exp is not None:
                explanation = await _explanation(state, record.exp, domain)
            return _Check(result, f"matched {label}", explanation)
    if record.redirect is not None:
        # §6.1: used only when no mechanism matched; exp= of this record no longer applies.
        state.count_lookup()
        target = _valid_target(await _expand(state, record.redirect, domain))
        sub = await _check(state, target)
        if sub.result is SPFResult.NONE:
            raise _perm(f"redirect={target} has no SPF record (§6.1)")
        return sub
    return _Check(SPFResult.NEUTRAL, "no mechanism matched")


async def _explanation(state: _State, spec: str, domain: str) -> str | None:
    """§6.2: the exp= TXT, macro-expanded; any problem means no explanation."""
    try:
        name = _valid_target(await _expand(state, spec, domain))
        answer = await state.resolver.lookup_txt(target_domain(name))
        if len(answer.records) != 1:
            return None
        text = answer.records[0].decode("ascii")
        _check_macro_string(text, exp=True)
        return await _expand(state, text, domain, exp=True)
    except (_Stop, DNSNegativeAnswer, DNSTemporaryError, DomainError, UnicodeDecodeError):
        return None


def _initial_domain(domain: str) -> str | None:
    """§4.3: a domain that is no FQDN (literal, single label, empty or long label) → None."""
    d = domain.rstrip(".") if domain.endswith(".") else domain
    if not d or d.startswith("[") or "." not in d:
        return None
    labels = d.split(".")
    if any(not label or len(label) > 63 for label in labels) or len(d) > 253:
        return None
    try:
        return Domain.parse(d).ascii
    except (DomainError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def client_address(text: str) -> IP:
    """The parsed client address (memoised: a server sees the same peers again and again);
    ValueError when ``text`` is not an address."""
    return ipaddress.ip_address(text)


async def check_host(resolver: IResolver, ip: str | IP, domain: str, sender: str,
                     helo: str, *, identity: str = "mailfrom",
                     receiver: str = "unknown") -> SPFOutcome:
    """RFC 7208 §4: the SPF result for ``ip`` sending as ``sender`` from ``domain``."""
    client = client_address(ip) if isinstance(ip, str) else ip
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    checked = _initial_domain(domain)
    if checked is None:
        return SPFOutcome(SPFResult.NONE, "", identity, f"{domain!r} is not a domain name")
    state = _State(resolver, client, sender, helo, receiver)
    try:
        out = await _check(state, checked)
    except _Stop as e:
        return SPFOutcome(e.result, checked, identity, e.reason, None, state.authentic,
                          state.lookups)
    return SPFOutcome(out.result, checked, identity, out.reason, out.explanation,
                      state.authentic, state.lookups)


def check_mail_from(resolver: IResolver, ip: str | IP, mail_from: str, helo: str, *,
                    receiver: str = "unknown") -> Deferred[SPFOutcome]:
    """The MAIL FROM identity (§2.4); for the null reverse-path, postmaster@HELO."""
    if not mail_from:
        return check_helo(resolver, ip, helo, receiver=receiver)
    local, _, domain = mail_from.rpartition("@")
    sender = f"{local or 'postmaster'}@{domain}"
    return Deferred.fromCoroutine(check_host(resolver, ip, domain, sender, helo,
                                             identity="mailfrom", receiver=receiver))


def check_helo(resolver: IResolver, ip: str | IP, helo: str, *,
               receiver: str = "unknown") -> Deferred[SPFOutcome]:
    """The HELO identity (§2.3): sender is postmaster@HELO."""
    return Deferred.fromCoroutine(check_host(resolver, ip, helo, f"postmaster@{helo}", helo,
                                             identity="helo", receiver=receiver))
