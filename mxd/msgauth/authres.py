"""Authentication-Results header field (RFC 8601): writing ours, removing forged ones.

Each method's result carries its properties (§2.7) and a comment with the DNSSEC status of
the lookups that decided it: ``(dnssec=secure)`` when every one was validated by a trusted
resolver, ``(dnssec=insecure)`` otherwise, so an administrator (or a filter) can read it.
"""

from __future__ import annotations

import re

import attrs

from mxd.msgauth.arc import ARCOutcome
from mxd.msgauth.dkim import DKIMResult
from mxd.msgauth.dmarc import DMARCOutcome, DMARCResult
from mxd.msgauth.headers import Field, unfold
from mxd.msgauth.iprev import IprevOutcome
from mxd.msgauth.spf import SPFOutcome

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+$")


def _pvalue(value: str) -> str:
    """A property value: a token or addr-spec as is, anything else quoted (RFC 2045)."""
    if value and _TOKEN.match(value) and value.count("@") <= 1:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return "(" + re.sub(r"[()\\\r\n]", " ", text)[:200] + ")"


def _dnssec(authentic: bool) -> str:
    return "dnssec=secure" if authentic else "dnssec=insecure"


@attrs.frozen
class AuthResults:
    """The results of one message, in the order they are reported."""

    authserv_id: str
    iprev: IprevOutcome | None = None
    spf: SPFOutcome | None = None
    dkim: tuple[DKIMResult, ...] = ()
    dmarc: DMARCOutcome | None = None
    arc: ARCOutcome | None = None


def arc_text(r: ARCOutcome) -> str:
    """RFC 8617 §7.2: the arc method; the chain length and DNSSEC status as a comment."""
    note = f"i={r.instances}; " if r.instances else ""
    if r.reason and r.result != "pass":
        return f"arc={r.result} reason={_pvalue(r.reason)} {_comment(note + _dnssec(r.authentic))}"
    return f"arc={r.result} {_comment(note + _dnssec(r.authentic))}"


def iprev_text(r: IprevOutcome) -> str:
    comment = f"{r.name}; " if r.name else ""
    return f"iprev={r.result} policy.iprev={_pvalue(r.ip)} {_comment(comment + _dnssec(r.authentic))}"


def spf_text(r: SPFOutcome, mail_from: str) -> str:
    if r.identity == "helo":
        prop = f"smtp.helo={_pvalue(r.domain or mail_from)}"
    else:
        prop = f"smtp.mailfrom={_pvalue(mail_from or r.domain)}"
    return f"spf={r.result} {prop} {_comment(_dnssec(r.authentic))}"


def dkim_text(r: DKIMResult) -> str:
    props = []
    if r.reason and r.result != "pass":
        props.append(f"reason={_pvalue(r.reason)}")
    if r.domain:
        props.append(f"header.d={_pvalue(r.domain)}")
    if r.selector:
        props.append(f"header.s={_pvalue(r.selector)}")
    if r.algorithm:
        props.append(f"header.a={_pvalue(r.algorithm)}")
    if r.b:
        props.append(f'header.b="{r.b}"')
    note = _dnssec(r.authentic)
    if r.unsigned_body:
        note += f"; {r.unsigned_body} body octets not signed (l=)"
    return " ".join([f"dkim={r.result}", *props, _comment(note)])


def dmarc_text(r: DMARCOutcome) -> str:
    note = f"p={r.policy}"
    if r.result is DMARCResult.FAIL and r.disposition != r.policy:
        note += f" pct-sampled to {r.disposition}"
    note += " " + _dnssec(r.authentic)
    return f"dmarc={r.result} header.from={_pvalue(r.from_domain)} {_comment(note)}"


def field(results: AuthResults, mail_from: str) -> str:
    """The whole field (no final CRLF), one method per folded line (§2.2)."""
    parts: list[str] = []
    if results.iprev is not None:
        parts.append(iprev_text(results.iprev))
    if results.spf is not None:
        parts.append(spf_text(results.spf, mail_from))
    parts.extend(dkim_text(d) for d in results.dkim)
    if results.dmarc is not None:
        parts.append(dmarc_text(results.dmarc))
    if results.arc is not None and results.arc.result != "none":
        parts.append(arc_text(results.arc))
    if not parts:
        return f"Authentication-Results: {results.authserv_id}; none"
    return f"Authentication-Results: {results.authserv_id};\r\n\t" + ";\r\n\t".join(parts)


def authserv_id(f: Field) -> str:
    """The authserv-id of an Authentication-Results field (§2.2), lower case."""
    text = unfold(f.value)
    text = re.sub(r"\([^()]*\)", " ", text)  # comments (not nested) are CFWS
    return text.split(";", 1)[0].strip().split()[0].lower().rstrip(".") if text.strip() else ""


def remove_ours(fields: list[Field], hostname: str) -> tuple[list[Field], int]:
    """§5: drop Authentication-Results fields that claim to be from us (forged or left
    from an earlier pass); returns the remaining fields and how many were removed."""
    host = hostname.lower().rstrip(".")
    kept = [f for f in fields
            if not (f.lname in ("authentication-results", "arc-authentication-results")
                    and f.lname == "authentication-results" and authserv_id(f) == host)]
    return kept, len(fields) - len(kept)
