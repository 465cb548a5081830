"""The ValiMail ARC test suites (validation and signing), every case, via FakeResolver."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred

from mxd.dns.testing import FakeResolver
from mxd.msgauth.arc import ARCResult, Validator, seal, validate_message
from mxd.msgauth.dkim import BodyHasher
from mxd.msgauth.dkimkeys import DKIMKey
from mxd.msgauth.headers import split_fields

# The ValiMail ARC suites, kept in the repository with their licence (tests/vectors/README.md).
VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _load(name: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    import yaml

    out = []
    for doc in yaml.safe_load_all((VECTORS / name).read_text(encoding="utf-8")):
        for case, test in doc["tests"].items():
            out.append((case, test, doc))
    return out


VALIDATION = _load("arc-draft-validation-tests.yml")
SIGNING = _load("arc-draft-sign-tests.yml")


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _resolver(records: dict[str, str]) -> FakeResolver:
    fake = FakeResolver()
    for name, value in (records or {}).items():
        fake.add(name, "TXT", [value.encode()])
    return fake


def test_suites_present() -> None:
    """171 validation and 17 signing cases are collected."""
    assert (len(VALIDATION), len(SIGNING)) == (171, 17)


@pytest.mark.parametrize(("case", "test", "doc"), VALIDATION, ids=[c[0] for c in VALIDATION])
def test_validation(case: str, test: dict[str, Any], doc: dict[str, Any]) -> None:
    """cv matches the suite (an empty expectation is a chain whose seal says cv=fail)."""
    message = _crlf(test["message"] or "")
    outcome = Deferred.fromCoroutine(
        validate_message(_resolver(doc.get("txt-records", {})), message)).result
    expected = (test["cv"] or "fail").lower()
    assert outcome.result.value == expected, outcome


def _tags(value: str) -> dict[str, str]:
    value = re.sub(r"\s+", "", value)
    return dict(p.split("=", 1) for p in value.split(";") if p)


@pytest.mark.parametrize(("case", "test", "doc"), SIGNING, ids=[c[0] for c in SIGNING])
def test_signing(case: str, test: dict[str, Any], doc: dict[str, Any]) -> None:
    """The AAR, AMS and AS that mxd adds equal the suite's, tag by tag (RSA signatures
    are deterministic, so b= must match exactly)."""
    message = _crlf(test["message"])
    idx = message.find(b"\r\n\r\n")
    fields = split_fields(message[: idx + 2])
    resolver = _resolver(doc.get("txt-records", {}))
    v = Validator(fields)
    v.feed(message[idx + 4:])
    cv = Deferred.fromCoroutine(v.finish(resolver)).result.result
    hasher = BodyHasher(True, "sha256", None)
    hasher.feed(message[idx + 4:])
    private = serialization.load_pem_private_key(doc["privatekey"].encode(), password=None)
    key = DKIMKey(doc["domain"], doc["sel"], "rsa", private)  # type: ignore[arg-type]
    srv = test["srv-id"]
    ar = [f for f in fields if f.lname == "authentication-results"
          and f.value.decode().strip().lower().startswith(srv.lower())]
    # Several Authentication-Results of our authserv-id are merged into one AAR.
    results = "; ".join(re.sub(r"\s+", " ", f.value.decode().split(";", 1)[1]).strip()
                        for f in ar if ";" in f.value.decode()) or "none"
    made = seal(key, fields, hasher.digest(), authserv_id=srv, auth_results=results,
                cv=cv, signed_headers=tuple(test["sig-headers"].split(":")),
                now=int(test["t"]))
    if not test["AS"]:
        assert made == []  # a chain that already failed is not sealed again
        return
    aar, ams, as_ = made
    assert _tags(ams.split(":", 1)[1]) == _tags(test["AMS"])
    assert _tags(as_.split(":", 1)[1]) == _tags(test["AS"])
    want_aar = re.sub(r"\s+", " ", test["AAR"]).strip()
    assert re.sub(r"\s+", " ", aar.split(":", 1)[1]).strip() == want_aar
    assert cv in (ARCResult.NONE, ARCResult.PASS, ARCResult.FAIL)


def test_validator_total_on_random_arc_fields() -> None:
    """Garbled ARC fields give cv=fail (never an exception)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200)
    @given(st.lists(st.tuples(st.sampled_from(["ARC-Seal", "ARC-Message-Signature",
                                               "ARC-Authentication-Results"]),
                              st.text(alphabet=st.characters(min_codepoint=0x20,
                                                             max_codepoint=0x7e),
                                      max_size=80)), min_size=1, max_size=6))
    def check(fields: list[tuple[str, str]]) -> None:
        msg = "".join(f"{n}: {v}\r\n" for n, v in fields).encode() + b"From: a@b\r\n\r\nx\r\n"
        out = Deferred.fromCoroutine(validate_message(FakeResolver(), msg)).result
        assert out.result in (ARCResult.FAIL, ARCResult.PASS, ARCResult.NONE)

    check()
