"""MTA-STS policy and TXT record parsing, MX matching (mxd.mtasts.policy, RFC 8461 §3-4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.mtasts.policy import (
    MAX_MAX_AGE,
    Mode,
    MXPattern,
    PolicySyntaxError,
    TXTRecordError,
    parse_policy,
    parse_txt_record,
    policy_url,
    select_txt_record,
)

RFC_EXAMPLE = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
    "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n"
)


def test_rfc_example_policy() -> None:
    """The RFC 8461 §3.2 example parses into mode, mx patterns and max_age."""
    p = parse_policy(RFC_EXAMPLE.encode())
    assert p.mode is Mode.ENFORCE
    assert p.max_age == 604800
    assert [m.text for m in p.mx] == ["mail.example.com", "*.example.net", "backupmx.example.com"]


@pytest.mark.parametrize("body,mode,age,mx", [
    ("version: STSv1\nmode: testing\nmx: mx.example.test\nmax_age: 86400\n", Mode.TESTING,
     86400, ["mx.example.test"]),  # LF line ends
    ("version: STSv1\r\nmode: none\r\nmax_age: 0", Mode.NONE, 0, []),  # none needs no mx
    ("version:STSv1\nmode:\tenforce\nmx:MX.Example.Test.\nmax_age: 1", Mode.ENFORCE, 1,
     ["mx.example.test"]),  # no space after colon, tab, case and final dot
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 9999999999\n", Mode.ENFORCE,
     MAX_MAX_AGE, ["a.test"]),  # capped at 31557600
    ("version: STSv1\nmode: enforce\nfoo: bar\nmx: a.test\nmax_age: 5\n\n", Mode.ENFORCE, 5,
     ["a.test"]),  # unknown key ignored, blank lines
    ("version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 5", Mode.ENFORCE, 5,
     ["a.test"]),  # first occurrence counts
])
def test_valid_policies(body: str, mode: Mode, age: int, mx: list[str]) -> None:
    """Accepted variants: LF, whitespace, unknown keys, capped max_age."""
    p = parse_policy(body)
    assert (p.mode, p.max_age, [m.text for m in p.mx]) == (mode, age, mx)


@pytest.mark.parametrize("body,reason", [
    ("mode: enforce\nmx: a.test\nmax_age: 5", "version"),
    ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 5", "version"),
    ("version: STSv1\nmode: report\nmx: a.test\nmax_age: 5", "mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 5", "mx"),
    ("version: STSv1\nmode: testing\nmax_age: 5", "mx"),
    ("version: STSv1\nmode: enforce\nmx: a.test", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1e5", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: *.*.test\nmax_age: 5", "mx pattern"),
    ("version: STSv1\nmode: enforce\nmx: a*.test\nmax_age: 5", "mx pattern"),
    ("version: STSv1\nmode: enforce\nmx: localhost\nmax_age: 5", "mx pattern"),
    ("version: STSv1\nthis is not a field\n", "key: value"),
    ("<html>not a policy</html>", "key: value"),
])
def test_invalid_policies(body: str, reason: str) -> None:
    """Invalid policies raise PolicySyntaxError naming what is wrong."""
    with pytest.raises(PolicySyntaxError, match=reason):
        parse_policy(body)


def test_size_and_encoding_limits() -> None:
    """A body over 64 KiB or not UTF-8 is refused."""
    big = RFC_EXAMPLE + "x-pad: " + "a" * 65536 + "\n"
    with pytest.raises(PolicySyntaxError, match="larger"):
        parse_policy(big.encode())
    with pytest.raises(PolicySyntaxError, match="larger"):
        parse_policy(big)
    with pytest.raises(PolicySyntaxError, match="UTF-8"):
        parse_policy(b"version: STSv1\nmode: none\nmax_age: 1\nx: \xff\n")


def test_round_trip_text() -> None:
    """A policy written with to_text parses back to the same policy."""
    p = parse_policy(RFC_EXAMPLE)
    assert parse_policy(p.to_text()) == p
    assert p.to_strings()[:3] == ("version: STSv1", "mode: enforce", "mx: mail.example.com")


@pytest.mark.parametrize("pattern,host,ok", [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.example.com.", True),
    ("mail.example.com", "mail2.example.com", False),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "example.net", False),  # the wildcard is one whole label
    ("*.example.net", "a.b.example.net", False),  # ...and only one
    ("*.example.net", ".example.net", False),
])
def test_mx_matching(pattern: str, host: str, ok: bool) -> None:
    """RFC 8461 §4.1: exact names, and ``*.`` matching exactly one leftmost label."""
    assert MXPattern.parse(pattern).matches(host) is ok


def test_policy_matches_any_pattern() -> None:
    """A host is allowed when any mx pattern of the policy matches it."""
    p = parse_policy(RFC_EXAMPLE)
    assert p.matches("backupmx.example.com") and p.matches("x.example.net")
    assert not p.matches("evil.example.org")


@pytest.mark.parametrize("text,record_id", [
    ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
    ("v=STSv1;id=abc", "abc"),
    ("v=STSv1; id=abc; ext=value", "abc"),
    (b"v=STSv1;  id=A1 ;", "A1"),
])
def test_txt_record_valid(text: str | bytes, record_id: str) -> None:
    """RFC 8461 §3.1 TXT records give their id."""
    assert parse_txt_record(text).id == record_id


@pytest.mark.parametrize("text", [
    "v=STSv2; id=abc", "id=abc; v=STSv1", "v=STSv1", "v=STSv1; id=", "v=STSv1; id=a-b",
    "v=STSv1; id=" + "a" * 33, "v=STSv1; id=a; id=b", "v=STSv1; id=a; junk",
    "v=STSv1; id=a; e=", b"v=STSv1; id=\xff",
])
def test_txt_record_invalid(text: str | bytes) -> None:
    """Malformed STSv1 TXT records raise TXTRecordError."""
    with pytest.raises(TXTRecordError):
        parse_txt_record(text)


def test_select_txt_record_needs_exactly_one() -> None:
    """Records not starting with v=STSv1 are ignored; zero or two valid ones is an error."""
    assert select_txt_record([b"v=spf1 -all", b"v=STSv1; id=one"]).id == "one"
    with pytest.raises(TXTRecordError):
        select_txt_record([b"v=spf1 -all"])
    with pytest.raises(TXTRecordError):
        select_txt_record([b"v=STSv1; id=one", b"v=STSv1; id=two"])
    assert select_txt_record(["v=STSv1; id=one", "v=STSv1; broken"]).id == "one"


def test_policy_url() -> None:
    """The policy lives at mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 §3.3)."""
    assert policy_url("Example.COM.") == "https://mta-sts.example.com/.well-known/mta-sts.txt"


# -- Hypothesis --------------------------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=2, max_size=4).map(".".join)


@given(st.sampled_from(list(Mode)), st.integers(0, 10**10 - 1),
       st.lists(st.tuples(st.booleans(), hosts), min_size=1, max_size=5),
       st.sampled_from(["\r\n", "\n"]))
def test_generated_policies_parse(mode: Mode, age: int, mx: list[tuple[bool, str]],
                                  eol: str) -> None:
    """Every well-formed policy parses to its fields (max_age capped)."""
    patterns = [("*." if wild else "") + h for wild, h in mx]
    lines = ["version: STSv1", f"mode: {mode.value}", *(f"mx: {p}" for p in patterns),
             f"max_age: {age}"]
    p = parse_policy(eol.join(lines))
    assert p.mode is mode and p.max_age == min(age, MAX_MAX_AGE)
    assert [m.text for m in p.mx] == patterns


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_policy_parser(data: bytes) -> None:
    """Any input either parses or raises PolicySyntaxError."""
    try:
        parse_policy(data)
    except PolicySyntaxError:
        pass


@given(st.text(max_size=120))
def test_arbitrary_text_never_crashes_txt_parser(text: str) -> None:
    """Any TXT text either parses or raises TXTRecordError."""
    try:
        r = parse_txt_record(text)
    except TXTRecordError:
        return
    assert 1 <= len(r.id) <= 32 and r.id.isalnum()


@given(labels, hosts)
def test_wildcard_matches_exactly_one_label(label: str, base: str) -> None:
    """``*.base`` matches ``label.base`` and never ``base`` or ``x.label.base``."""
    pattern = MXPattern.parse("*." + base)
    assert pattern.matches(f"{label}.{base}")
    assert not pattern.matches(base)
    assert not pattern.matches(f"x.{label}.{base}")
