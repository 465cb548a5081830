"""TLS reporting (mxd.tlsrpt): results, daily aggregation (RFC 8460 §4.4), the TXT record (§3)."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.tlsrpt.report import (
    ReportError,
    TXTRecordError,
    aggregate,
    day_range,
    parse_report,
    parse_txt_record,
    report_filename,
    report_json,
    select_txt_record,
)
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, PolicyType, ResultType, TLSAttempt

# The RFC 8460 §4.4 example; "mx-host" is a string there (erratum 6241: the schema's array).
RFC_EXAMPLE = """{
  "organization-name": "Company-X",
  "date-range": {"start-datetime": "2016-04-01T00:00:00Z",
                 "end-datetime": "2016-04-01T23:59:59Z"},
  "contact-info": "sts-reporting@company-x.example",
  "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
  "policies": [{
    "policy": {
      "policy-type": "sts",
      "policy-string": ["version: STSv1", "mode: testing",
                        "mx: *.mail.company-y.example", "max_age: 86400"],
      "policy-domain": "company-y.example",
      "mx-host": "*.mail.company-y.example"
    },
    "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
    "failure-details": [{
      "result-type": "certificate-expired",
      "sending-mta-ip": "2001:db8:abcd:0012::1",
      "receiving-mx-hostname": "mx1.mail.company-y.example",
      "failed-session-count": 100
    }, {
      "result-type": "starttls-not-supported",
      "sending-mta-ip": "2001:db8:abcd:0013::1",
      "receiving-mx-hostname": "mx2.mail.company-y.example",
      "receiving-ip": "203.0.113.56",
      "failed-session-count": 200,
      "additional-information": "https://reports.company-x.example/report_info?id=5065427c-23d3#StarttlsNotSupported"
    }, {
      "result-type": "validation-failure",
      "sending-mta-ip": "198.51.100.62",
      "receiving-ip": "203.0.113.58",
      "receiving-mx-hostname": "mx-backup.mail.company-y.example",
      "failed-session-count": 3,
      "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"
    }]
  }]
}"""

DAY = datetime.date(2016, 4, 1)
START, END = day_range(DAY)
STS = PolicyInfo(PolicyType.STS, "company-y.example",
                 ("version: STSv1", "mode: testing", "mx: *.mail.company-y.example",
                  "max_age: 86400"), ("*.mail.company-y.example",))
TLSA = PolicyInfo(PolicyType.TLSA, "company-y.example", ("3 1 1 ABCD",),
                  ("mx1.mail.company-y.example",))


def _at(hour: int) -> float:
    return (START + datetime.timedelta(hours=hour)).timestamp()


def test_parse_rfc_example_with_string_mx_host() -> None:
    """The RFC's own example parses although its mx-host is a string (erratum 6241)."""
    r = parse_report(RFC_EXAMPLE)
    (p,) = r.policies
    assert p.policy.type is PolicyType.STS and p.policy.mx_host == ("*.mail.company-y.example",)
    assert (p.successful, p.failed) == (5326, 303)
    assert [n for _d, n in p.failure_details] == [100, 200, 3]
    assert p.failure_details[2][0].failure_reason_code == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"
    assert r.report_id == "5065427c-23d3-47ca-b6e0-946ea0e8c4be"


def test_aggregate_reproduces_rfc_example_counts() -> None:
    """Aggregating attempts like the example's gives its summary, details and counts, with
    mx-host written as an array."""
    expired = FailureDetail(ResultType.CERTIFICATE_EXPIRED, "2001:db8:abcd:0012::1",
                            "mx1.mail.company-y.example")
    nostarttls = FailureDetail(
        ResultType.STARTTLS_NOT_SUPPORTED, "2001:db8:abcd:0013::1", "mx2.mail.company-y.example",
        None, "203.0.113.56",
        "https://reports.company-x.example/report_info?id=5065427c-23d3#StarttlsNotSupported")
    invalid = FailureDetail(ResultType.VALIDATION_FAILURE, "198.51.100.62",
                            "mx-backup.mail.company-y.example", None, "203.0.113.58", None,
                            "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED")
    attempts = ([TLSAttempt(STS, True, _at(1))] * 5326 + [TLSAttempt(STS, False, _at(2), expired)] * 100
                + [TLSAttempt(STS, False, _at(3), nostarttls)] * 200
                + [TLSAttempt(STS, False, _at(4), invalid)] * 3)
    report = aggregate(attempts, organization_name="Company-X",
                       contact_info="sts-reporting@company-x.example",
                       report_id="5065427c-23d3-47ca-b6e0-946ea0e8c4be", start=START, end=END)
    ours = json.loads(report_json(report))
    theirs = json.loads(RFC_EXAMPLE)
    theirs["policies"][0]["policy"]["mx-host"] = ["*.mail.company-y.example"]  # erratum 6241
    theirs["date-range"]["end-datetime"] = "2016-04-02T00:00:00Z"  # we end at the next midnight
    assert ours == theirs


def test_aggregate_separates_policies_and_filters_range_and_domain() -> None:
    """One entry per policy; attempts outside the day or for another domain are left out."""
    other = PolicyInfo.none_found("other.example")
    attempts = [
        TLSAttempt(STS, True, _at(1)),
        TLSAttempt(TLSA, False, _at(2), FailureDetail(ResultType.VALIDATION_FAILURE)),
        TLSAttempt(TLSA, False, _at(3), FailureDetail(ResultType.VALIDATION_FAILURE)),
        TLSAttempt(STS, True, _at(25)),  # the next day
        TLSAttempt(other, True, _at(5)),
    ]
    report = aggregate(attempts, organization_name="o", contact_info="c", report_id="r",
                       start=START, end=END, policy_domain="Company-Y.example")
    kinds = [(p["policy"]["policy-type"], p["summary"]["total-successful-session-count"],
              p["summary"]["total-failure-session-count"]) for p in report["policies"]]
    assert kinds == [("sts", 1, 0), ("tlsa", 0, 2)]
    assert "failure-details" not in report["policies"][0]
    assert report["policies"][1]["failure-details"] == [
        {"result-type": "validation-failure", "failed-session-count": 2}]


def test_empty_day_has_no_policies() -> None:
    """No attempts: a report with an empty policies list."""
    report = aggregate([], organization_name="o", contact_info="c", report_id="r",
                       start=START, end=END)
    assert report["policies"] == [] and report["date-range"]["start-datetime"] == "2016-04-01T00:00:00Z"


def test_attempt_invariants() -> None:
    """A success carries no failure detail and a failure needs one."""
    with pytest.raises(ValueError):
        TLSAttempt(STS, True, 0.0, FailureDetail(ResultType.DANE_REQUIRED))
    with pytest.raises(ValueError):
        TLSAttempt(STS, False, 0.0)


def test_report_filename() -> None:
    """RFC 8460 §5.3 file name: sender!policy-domain!begin!end[!id].json.gz."""
    assert report_filename("mail.sender.example", "company-y.example", START, END, "x1") == (
        "mail.sender.example!company-y.example!1459468800!1459555200!x1.json.gz")


@pytest.mark.parametrize("doc", ["not json", "{}", '{"date-range": {}, "policies": []}',
                                 json.dumps({"date-range": {"start-datetime": "a", "end-datetime": "b"},
                                             "report-id": "x",
                                             "policies": [{"policy": {"policy-type": "dane"}}]})])
def test_parse_report_errors(doc: str) -> None:
    """Malformed report documents raise ReportError."""
    with pytest.raises(ReportError):
        parse_report(doc)


# -- TXT record -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,mailto,https", [
    ("v=TLSRPTv1; rua=mailto:reports@example.com", ("reports@example.com",), ()),
    ("v=TLSRPTv1;rua=https://reporting.example.com/v1/tlsrpt", (),
     ("https://reporting.example.com/v1/tlsrpt",)),
    ("v=TLSRPTv1; rua=mailto:a@example.com, https://r.example.com/x ;", ("a@example.com",),
     ("https://r.example.com/x",)),
    ("v=TLSRPTv1; rua=mailto:a@example.com?subject=x,ftp://x.example", ("a@example.com",), ()),
    (b"v=TLSRPTv1; ext=1; rua=mailto:a@example.com", ("a@example.com",), ()),
])
def test_txt_record_valid(text: str | bytes, mailto: tuple[str, ...], https: tuple[str, ...]) -> None:
    """RFC 8460 §3 records give their mailto: and https: report URIs (others are ignored)."""
    r = parse_txt_record(text)
    assert r.mailto == mailto and r.https == https


@pytest.mark.parametrize("text", [
    "v=TLSRPTv2; rua=mailto:a@example.com", "rua=mailto:a@example.com; v=TLSRPTv1",
    "v=TLSRPTv1", "v=TLSRPTv1; rua=", "v=TLSRPTv1; rua=ftp://x.example",
    "v=TLSRPTv1; rua=mailto:nobody", "v=TLSRPTv1; rua=mailto:a@example.com,,https://x.test",
    "v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", "v=TLSRPTv1; junk",
])
def test_txt_record_invalid(text: str) -> None:
    """Malformed TLSRPT records raise TXTRecordError."""
    with pytest.raises(TXTRecordError):
        parse_txt_record(text)


def test_select_txt_record() -> None:
    """Records not starting with v=TLSRPTv1 are discarded; exactly one valid must remain."""
    assert select_txt_record([b"v=spf1 -all", b"v=TLSRPTv1; rua=mailto:a@b.example"]).mailto == (
        "a@b.example",)
    with pytest.raises(TXTRecordError):
        select_txt_record([b"v=TLSRPTv1; rua=mailto:a@b.example",
                           b"v=TLSRPTv1; rua=mailto:c@b.example"])
    with pytest.raises(TXTRecordError):
        select_txt_record([])


@given(st.text(max_size=150))
def test_arbitrary_txt_never_crashes(text: str) -> None:
    """Any text either parses into at least one report URI or raises TXTRecordError."""
    try:
        r = parse_txt_record(text)
    except TXTRecordError:
        return
    assert r.rua and all(u.lower().startswith(("mailto:", "https:")) for u in r.rua)


@given(st.lists(st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.example", fullmatch=True),
                min_size=1, max_size=4))
def test_generated_mailto_lists(addresses: list[str]) -> None:
    """A list of mailto: URIs comes back as the same addresses, in order."""
    text = "v=TLSRPTv1; rua=" + ",".join(f"mailto:{a}" for a in addresses)
    assert parse_txt_record(text).mailto == tuple(addresses)


def test_lookup_txt_record() -> None:
    """The _smtp._tls record is found through the resolver; absence is None, SERVFAIL raises."""
    from twisted.internet.defer import Deferred

    from mxd.dns.errors import DNSServFail
    from mxd.dns.testing import FakeResolver
    from mxd.tlsrpt.report import lookup_txt_record

    r = FakeResolver()
    r.add("_smtp._tls.example.test", "TXT", [b"v=TLSRPTv1; rua=mailto:tls@example.test"])
    r.add("_smtp._tls.two.test", "TXT", [b"v=TLSRPTv1; rua=mailto:a@two.test",
                                         b"v=TLSRPTv1; rua=mailto:b@two.test"])
    r.fail("_smtp._tls.broken.test", "TXT", "servfail")

    def run(domain: str) -> object:
        out: list[object] = []
        Deferred.fromCoroutine(lookup_txt_record(r, domain)).addBoth(out.append)
        return out[0]

    found = run("Example.Test.")
    assert getattr(found, "mailto", None) == ("tls@example.test",)
    assert run("none.test") is None
    assert run("two.test") is None
    failure = run("broken.test")
    assert getattr(failure, "check", lambda *_: False)(DNSServFail)
