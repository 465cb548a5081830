"""A JSON Schema of the RFC 8460 §4.4 report, written from the RFC's text (§4.3, §4.4):
required members, the policy types, the result types of §4.3.1–§4.3.3, counts as integers,
and RFC 3339 date-times.  Used to validate every report mxd sends."""

from __future__ import annotations

from typing import Any

RESULT_TYPES = [
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure",  # §4.3.1
    "tlsa-invalid", "dnssec-invalid", "dane-required",  # §4.3.2.1
    "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",  # §4.3.2.2
]

_DATETIME = {"type": "string",
             "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"}
_COUNT = {"type": "integer", "minimum": 0}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object", "required": ["start-datetime", "end-datetime"],
            "properties": {"start-datetime": _DATETIME, "end-datetime": _DATETIME},
        },
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {"type": "array", "items": {
            "type": "object", "required": ["policy", "summary"],
            "properties": {
                "policy": {
                    "type": "object", "required": ["policy-type", "policy-domain"],
                    "properties": {
                        "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                        "policy-string": {"type": "array", "items": {"type": "string"}},
                        "policy-domain": {"type": "string", "minLength": 1},
                        "mx-host": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "summary": {
                    "type": "object",
                    "required": ["total-successful-session-count",
                                 "total-failure-session-count"],
                    "properties": {"total-successful-session-count": _COUNT,
                                   "total-failure-session-count": _COUNT},
                },
                "failure-details": {"type": "array", "items": {
                    "type": "object", "required": ["result-type", "failed-session-count"],
                    "properties": {
                        "result-type": {"enum": RESULT_TYPES},
                        "sending-mta-ip": {"type": "string"},
                        "receiving-mx-hostname": {"type": "string"},
                        "receiving-mx-helo": {"type": "string"},
                        "receiving-ip": {"type": "string"},
                        "failed-session-count": _COUNT,
                        "additional-information": {"type": "string"},
                        "failure-reason-code": {"type": "string"},
                    },
                }},
            },
        }},
    },
}
