"""LDAP search filters from templates, with values escaped per RFC 4515.

An administrator writes a filter template such as
``(&(objectClass=inetOrgPerson)(|(uid=%s)(mail=%s)))``; mxd substitutes the login name or
address.  Placeholders:

* ``%s`` the whole value (login name or address), ``%u`` its local part (before the last
  "@"; the whole value when there is none), ``%d`` its domain (empty when none),
  ``%D`` the DN of the entry found (group filters), ``%%`` a literal "%".

RFC 4515 §3: in an assertion value the octets ``*`` ``(`` ``)`` ``\\`` and NUL MUST be
written as ``\\2a`` ``\\28`` ``\\29`` ``\\5c`` ``\\00``.  mxd also escapes every other
control character, so a substituted value is always a single assertion value: ``*`` is
never a wildcard, ``)(uid=*`` never closes the assertion.  Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping

from mxd.errors import MxdError

PLACEHOLDERS = frozenset("suDd%")


class FilterTemplateError(MxdError):
    """A filter template is malformed (unknown placeholder, unbalanced parentheses)."""


def escape_value(value: str) -> str:
    """RFC 4515 §3 escaping of one assertion value (UTF-8 is kept as is)."""
    out = []
    for c in value:
        if c in "*()\\" or ord(c) < 0x20 or ord(c) == 0x7F:
            out.append("\\%02x" % ord(c))
        else:
            out.append(c)
    return "".join(out)


def check_template(template: str, allowed: str = "sud") -> None:
    """FilterTemplateError unless ``template`` is one parenthesised filter whose
    placeholders are among ``allowed`` (plus ``%%``)."""
    if not (template.startswith("(") and template.endswith(")")):
        raise FilterTemplateError("a filter must be enclosed in parentheses (RFC 4515 §3)")
    depth = 0
    for i, c in enumerate(template):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(template) - 1:
                raise FilterTemplateError("text after the filter's closing parenthesis")
        if depth < 0:
            raise FilterTemplateError("unbalanced parentheses")
    if depth != 0:
        raise FilterTemplateError("unbalanced parentheses")
    i = 0
    while i < len(template):
        if template[i] == "%":
            nxt = template[i + 1:i + 2]
            if nxt != "%" and nxt not in allowed:
                raise FilterTemplateError(
                    f"unknown placeholder %{nxt} (allowed: "
                    + ", ".join("%" + a for a in allowed) + ", %%)")
            i += 2
        else:
            i += 1


def substitute(template: str, values: Mapping[str, str]) -> str:
    """The template with each ``%x`` replaced by ``escape_value(values[x])``."""
    out = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template):
            key = template[i + 1]
            if key == "%":
                out.append("%")
            elif key in values:
                out.append(escape_value(values[key]))
            else:
                raise FilterTemplateError(f"no value for placeholder %{key}")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def name_filter(template: str, name: str) -> str:
    """The filter for a login name or address ``name`` (``%s``, ``%u``, ``%d``)."""
    local, at, domain = name.rpartition("@")
    if not at:
        local, domain = name, ""
    return substitute(template, {"s": name, "u": local, "d": domain})


def group_filter(template: str, name: str, dn: str) -> str:
    """The group filter for the entry ``dn`` found for ``name`` (adds ``%D``)."""
    local, at, domain = name.rpartition("@")
    if not at:
        local, domain = name, ""
    return substitute(template, {"s": name, "u": local, "d": domain, "D": dn})


__all__ = [
    "FilterTemplateError",
    "check_template",
    "escape_value",
    "group_filter",
    "name_filter",
    "substitute",
]
