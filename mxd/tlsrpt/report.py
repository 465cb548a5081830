"""SMTP TLS Reporting (RFC 8460): daily aggregate reports (§4) and the ``_smtp._tls`` TXT record (§3).

* ``aggregate(attempts, ...)`` turns one day's ``TLSAttempt`` values for one recipient domain
  into the JSON report of RFC 8460 §4.4 (``report_json`` serialises it).  ``mx-host`` is
  always written as an array, as the §4.4 schema says; the example of the RFC shows a string
  (erratum 6241), so ``parse_report`` accepts both.
* ``parse_txt_record`` / ``select_txt_record`` read ``v=TLSRPTv1; rua=mailto:...,https://...``;
  ``lookup_txt_record`` asks a resolver for ``_smtp._tls.<domain>``.

Sending the reports (mail or HTTPS POST, gzip, RFC 8460 §5) is not done here.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import attrs

from mxd.dns.errors import DNSNegativeAnswer
from mxd.dns.interfaces import IResolver
from mxd.errors import MxdError
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, PolicyType, ResultType, TLSAttempt
from mxd.txtrecord import record_fields


class TLSRPTError(MxdError):
    """Base of mxd.tlsrpt errors."""


class TXTRecordError(TLSRPTError):
    """The ``_smtp._tls`` TXT records hold no single valid TLSRPTv1 record (RFC 8460 §3)."""


class ReportError(TLSRPTError):
    """A report document is not a valid RFC 8460 §4.4 report."""


# -- reports ----------------------------------------------------------------------------------


def _rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_range(day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    """The UTC day a daily report covers (RFC 8460 §4.1: "date-range")."""
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return start, start + datetime.timedelta(days=1)


def _detail_json(d: FailureDetail, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"result-type": d.result_type.value}
    for key, value in (("sending-mta-ip", d.sending_mta_ip),
                       ("receiving-mx-hostname", d.receiving_mx_hostname),
                       ("receiving-mx-helo", d.receiving_mx_helo),
                       ("receiving-ip", d.receiving_ip)):
        if value:
            out[key] = value
    out["failed-session-count"] = count
    if d.additional_information:
        out["additional-information"] = d.additional_information
    if d.failure_reason_code:
        out["failure-reason-code"] = d.failure_reason_code
    return out


def _policy_json(p: PolicyInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"policy-type": p.type.value}
    if p.strings:
        out["policy-string"] = list(p.strings)
    out["policy-domain"] = p.domain
    if p.mx_host:
        out["mx-host"] = list(p.mx_host)  # an array (RFC 8460 §4.4; erratum 6241)
    return out


def aggregate(attempts: Iterable[TLSAttempt], *, organization_name: str, contact_info: str,
              report_id: str, start: datetime.datetime, end: datetime.datetime,
              policy_domain: str | None = None) -> dict[str, Any]:
    """The RFC 8460 §4.4 report of the attempts made in [start, end).

    Attempts outside the range, or (with ``policy_domain``) for another policy domain, are
    left out.  One "policies" entry per distinct policy; failure details with identical
    fields are counted together.  Policies and details keep first-seen order.
    """
    lo, hi = start.timestamp(), end.timestamp()
    policies: dict[PolicyInfo, dict[str, Any]] = {}
    for a in attempts:
        if not lo <= a.time < hi:
            continue
        if policy_domain is not None and a.policy.domain != policy_domain.rstrip(".").lower():
            continue
        entry = policies.setdefault(a.policy, {"ok": 0, "failed": 0, "details": {}})
        if a.success:
            entry["ok"] += 1
        else:
            entry["failed"] += 1
            assert a.failure is not None  # TLSAttempt guarantees it
            entry["details"][a.failure] = entry["details"].get(a.failure, 0) + 1
    report_policies = []
    for policy, entry in policies.items():
        item: dict[str, Any] = {
            "policy": _policy_json(policy),
            "summary": {"total-successful-session-count": entry["ok"],
                        "total-failure-session-count": entry["failed"]},
        }
        if entry["details"]:
            item["failure-details"] = [_detail_json(d, n) for d, n in entry["details"].items()]
        report_policies.append(item)
    return {
        "organization-name": organization_name,
        "date-range": {"start-datetime": _rfc3339(start), "end-datetime": _rfc3339(end)},
        "contact-info": contact_info,
        "report-id": report_id,
        "policies": report_policies,
    }


def report_json(report: dict[str, Any]) -> bytes:
    """The report as UTF-8 JSON (RFC 8460 §4.4; §5.3 gzips it for sending)."""
    return json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def report_filename(sender_domain: str, policy_domain: str, start: datetime.datetime,
                    end: datetime.datetime, unique_id: str = "", gzip: bool = True) -> str:
    """RFC 8460 §5.3: ``sender!policy-domain!begin!end[!unique-id].json[.gz]``."""
    parts = [sender_domain, policy_domain, str(int(start.timestamp())), str(int(end.timestamp()))]
    if unique_id:
        parts.append(unique_id)
    return "!".join(parts) + (".json.gz" if gzip else ".json")


def _need(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        raise ReportError(f"missing or invalid {key!r}")
    return obj[key]


@attrs.frozen
class ParsedPolicy:
    policy: PolicyInfo
    successful: int
    failed: int
    failure_details: tuple[tuple[FailureDetail, int], ...]


@attrs.frozen
class ParsedReport:
    organization_name: str
    start: str
    end: str
    contact_info: str
    report_id: str
    policies: tuple[ParsedPolicy, ...]


def parse_report(data: bytes | str) -> ParsedReport:
    """Read an RFC 8460 §4.4 report, leniently: ``mx-host`` may be a string or an array
    (erratum 6241), unknown result types are kept as ``validation-failure`` with the
    original word as failure-reason-code."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportError(f"not JSON: {e}") from None
    rng = _need(doc, "date-range", dict)
    parsed = []
    for item in _need(doc, "policies", list):
        pol = _need(item, "policy", dict)
        try:
            ptype = PolicyType(_need(pol, "policy-type", str))
        except ValueError:
            raise ReportError(f"unknown policy-type {pol['policy-type']!r}") from None
        mx = pol.get("mx-host", [])
        mx_hosts = (mx,) if isinstance(mx, str) else tuple(str(m) for m in mx or [])
        strings = tuple(str(s) for s in pol.get("policy-string", []) or [])
        info = PolicyInfo(ptype, str(_need(pol, "policy-domain", str)).lower(), strings, mx_hosts)
        summary = _need(item, "summary", dict)
        details = []
        for d in item.get("failure-details", []) or []:
            word = _need(d, "result-type", str)
            try:
                rtype, code = ResultType(word), d.get("failure-reason-code")
            except ValueError:
                rtype, code = ResultType.VALIDATION_FAILURE, word
            details.append((FailureDetail(
                rtype, d.get("sending-mta-ip"), d.get("receiving-mx-hostname"),
                d.get("receiving-mx-helo"), d.get("receiving-ip"),
                d.get("additional-information"), code,
            ), int(d.get("failed-session-count", 0))))
        parsed.append(ParsedPolicy(
            info, int(_need(summary, "total-successful-session-count", int)),
            int(_need(summary, "total-failure-session-count", int)), tuple(details)))
    return ParsedReport(
        str(doc.get("organization-name", "")), str(_need(rng, "start-datetime", str)),
        str(_need(rng, "end-datetime", str)), str(doc.get("contact-info", "")),
        str(_need(doc, "report-id", str)), tuple(parsed))


# -- the TXT record (RFC 8460 §3) --------------------------------------------------------------

_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


@attrs.frozen
class TLSRPTRecord:
    """A parsed ``_smtp._tls`` record: the report URIs (mailto: and https: only)."""

    rua: tuple[str, ...]
    extensions: tuple[tuple[str, str], ...] = ()

    @property
    def mailto(self) -> tuple[str, ...]:
        """The addresses of the mailto: URIs (RFC 8460 §5.3)."""
        return tuple(u[7:].split("?", 1)[0] for u in self.rua if u[:7].lower() == "mailto:")

    @property
    def https(self) -> tuple[str, ...]:
        return tuple(u for u in self.rua if u[:6].lower() == "https:")


def _valid_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "mailto":
        addr = uri[7:].split("?", 1)[0]
        local, at, domain = addr.rpartition("@")
        return bool(local and at and domain and "." in domain and " " not in addr)
    if scheme == "https":
        parts = urlsplit(uri)
        return bool(parts.hostname) and " " not in uri
    return False


def parse_txt_record(text: bytes | str) -> TLSRPTRecord:
    """Parse one TXT record; raise ``TXTRecordError`` when it is not valid TLSRPTv1."""
    rua: tuple[str, ...] | None = None
    extensions: list[tuple[str, str]] = []
    for field in record_fields(text, "TLSRPTv1", TXTRecordError):
        name, eq, value = field.partition("=")
        if not eq or not _EXT_NAME.fullmatch(name) or not value:
            raise TXTRecordError(f"invalid field {field!r}")
        if name == "rua":
            if rua is not None:
                raise TXTRecordError("more than one rua")
            uris = [u.strip(" \t") for u in value.split(",")]
            if any(not u for u in uris):
                raise TXTRecordError("empty URI in rua")
            usable = tuple(u for u in uris if _valid_uri(u))
            if not usable:
                raise TXTRecordError(f"no usable mailto: or https: URI in {value!r}")
            rua = usable
        else:
            extensions.append((name, value))
    if rua is None:
        raise TXTRecordError("no rua field")
    return TLSRPTRecord(rua, tuple(extensions))


def select_txt_record(records: Iterable[bytes | str]) -> TLSRPTRecord:
    """RFC 8460 §3: records not starting with ``v=TLSRPTv1;`` are discarded; anything other
    than exactly one remaining (valid) record means the domain does not use TLSRPT."""
    found: list[TLSRPTRecord] = []
    for r in records:
        raw = r.decode("ascii", "replace") if isinstance(r, bytes) else r
        if not raw.startswith("v=TLSRPTv1"):
            continue
        try:
            found.append(parse_txt_record(raw))
        except TXTRecordError:
            continue
    if len(found) != 1:
        raise TXTRecordError(f"{len(found)} valid TLSRPTv1 records (need exactly one)")
    return found[0]


async def lookup_txt_record(resolver: IResolver, domain: str) -> TLSRPTRecord | None:
    """The TLSRPT record of ``domain`` (RFC 8460 §3), or None when it has none (no record,
    not exactly one valid record).  Temporary DNS failures raise the resolver's
    ``DNSTemporaryError`` so that the caller can retry."""
    try:
        answer = await resolver.lookup_txt(f"_smtp._tls.{domain.rstrip('.').lower()}")
    except DNSNegativeAnswer:
        return None
    try:
        return select_txt_record(answer.records)
    except TXTRecordError:
        return None
