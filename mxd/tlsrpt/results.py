"""SMTP TLS Reporting (RFC 8460) result values: what one delivery attempt records.

The queue records one ``TLSAttempt`` per connection attempt (successful or not); the report
module (``mxd.tlsrpt.report``) aggregates a day's attempts per policy into the JSON report of
RFC 8460 §4.4.  The words are the RFC's: ``PolicyType`` (§4.4 "policy-type"), ``ResultType``
(§4.3 "result-type").
"""

from __future__ import annotations

import enum

import attrs


class PolicyType(enum.StrEnum):
    """RFC 8460 §4.4 ``policy-type``."""

    TLSA = "tlsa"
    STS = "sts"
    NO_POLICY_FOUND = "no-policy-found"


class ResultType(enum.StrEnum):
    """RFC 8460 §4.3 result types (negotiation §4.3.1, policy §4.3.2, general §4.3.3)."""

    # §4.3.1 negotiation failures
    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    # §4.3.2 policy failures: DANE
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    # §4.3.2 policy failures: MTA-STS
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


@attrs.frozen
class PolicyInfo:
    """The policy an attempt was made under (RFC 8460 §4.4 "policy").

    ``strings``: for tlsa, one presentation-form TLSA rdata per record ("3 1 1 ab.."); for
    sts, the policy's lines ("version: STSv1", "mode: enforce", one "mx: ..." each) (§4.4).
    ``mx_host``: the MX patterns of an STS policy, or the MX host of a TLSA policy.
    """

    type: PolicyType
    domain: str
    strings: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()

    @classmethod
    def none_found(cls, domain: str) -> PolicyInfo:
        return cls(PolicyType.NO_POLICY_FOUND, domain)


@attrs.frozen
class CheckResult:
    """The verdict of a TLS policy (DANE, MTA-STS) on one TLS connection.

    ``ok``: deliver over it.  ``verified``: the peer was authenticated as the policy says.
    ``result_type``: a failure to record (also when ``ok``: MTA-STS testing mode, or
    ``downgraded`` by ``TLS-Required: No``, RFC 8689 §5); ``detail``: its reason in words
    ("no DANE-EE record matches the server certificate").
    """

    ok: bool
    verified: bool
    result_type: ResultType | None = None
    detail: str = ""
    downgraded: bool = False


@attrs.frozen
class FailureDetail:
    """One failure of an attempt (RFC 8460 §4.4 "failure-details" entry, without the count)."""

    result_type: ResultType
    sending_mta_ip: str | None = None
    receiving_mx_hostname: str | None = None
    receiving_mx_helo: str | None = None
    receiving_ip: str | None = None
    additional_information: str | None = None
    failure_reason_code: str | None = None


@attrs.frozen
class TLSAttempt:
    """One connection attempt's TLS outcome, as the queue stores it for reporting.

    ``success`` is True when the session established the TLS the policy asked for (for
    sts testing mode and ``TLS-Required: No`` a delivery may happen with ``success=False``;
    RFC 8460 §4.4 counts it as a failure session).  ``time`` is POSIX seconds (UTC).
    """

    policy: PolicyInfo
    success: bool
    time: float
    failure: FailureDetail | None = None

    def __attrs_post_init__(self) -> None:
        if self.success and self.failure is not None:
            raise ValueError("a successful attempt carries no failure detail")
        if not self.success and self.failure is None:
            raise ValueError("a failed attempt needs a failure detail")
