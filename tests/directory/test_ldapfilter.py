"""RFC 4515 escaping of substituted values and filter templates."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.directory.ldapfilter import (
    FilterTemplateError,
    check_template,
    escape_value,
    group_filter,
    name_filter,
)

TEMPLATE = "(&(objectClass=inetOrgPerson)(|(uid=%s)(mail=%s)))"


@pytest.mark.parametrize("value, escaped", [
    ("alice", "alice"),
    ("*", "\\2a"),
    (")(uid=*", "\\29\\28uid=\\2a"),
    ("a\\b", "a\\5cb"),
    ("nul\0", "nul\\00"),
    ("tab\tnl\n", "tab\\09nl\\0a"),
    ("j\u00fcrgen@b\u00fccher.example", "j\u00fcrgen@b\u00fccher.example"),
])
def test_escape_value(value: str, escaped: str) -> None:
    """RFC 4515 §3: *, (, ), \\ and NUL (and other controls) become \\XX."""
    assert escape_value(value) == escaped


def test_injection_stays_one_assertion() -> None:
    """A login name crafted to widen the filter yields a filter with the template's shape."""
    f = name_filter(TEMPLATE, "*)(uid=*))(|(uid=*")
    assert f == ("(&(objectClass=inetOrgPerson)(|(uid=\\2a\\29\\28uid=\\2a\\29\\29\\28|"
                 "\\28uid=\\2a)(mail=\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a)))")


def test_local_part_and_domain_placeholders() -> None:
    """%u and %d are the parts around the last "@"; %D is a group filter's entry DN."""
    assert name_filter("(uid=%u)(dc=%d)", "a*b@ex.test") == "(uid=a\\2ab)(dc=ex.test)"
    assert name_filter("(uid=%u)(dc=%d)", "plain") == "(uid=plain)(dc=)"
    assert group_filter("(member=%D)", "x", "uid=a(1),dc=t") == "(member=uid=a\\281\\29,dc=t)"
    assert name_filter("(cn=100%%)", "x") == "(cn=100%)"


@pytest.mark.parametrize("template, problem", [
    ("uid=%s", "parentheses"),
    ("(uid=%s", "parentheses"),
    ("(uid=%s))", "closing"),
    ("(uid=%s)(mail=%s)", "closing"),
    ("(uid=%x)", "unknown placeholder"),
    ("(member=%D)", "unknown placeholder"),
])
def test_bad_templates_are_refused(template: str, problem: str) -> None:
    """A template that is not one filter, or has an unknown placeholder, is refused."""
    with pytest.raises(FilterTemplateError, match=problem):
        check_template(template)


def test_group_template_may_use_dn() -> None:
    """%D is allowed where the caller allows it."""
    check_template("(&(cn=mail)(member=%D))", allowed="sudD")


@given(st.text(max_size=80))
def test_escaped_values_contain_no_filter_syntax(value: str) -> None:
    """Whatever the value, the escaped form has no unescaped *, (, ) or control octet, and
    every backslash starts a two-hex-digit escape."""
    e = escape_value(value)
    assert not re.search(r"[*()\x00-\x1f\x7f]", e)
    assert re.fullmatch(r"(?:[^\\]|\\[0-9a-f]{2})*", e, flags=re.S)
