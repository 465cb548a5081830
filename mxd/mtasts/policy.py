"""MTA-STS policies and TXT records (RFC 8461 §3.1, §3.2, §4.1): pure parsing and matching.

Choices made here:

* Lines end in CRLF or a bare LF (RFC 8461 §3.2 says CRLF; real servers send LF); trailing
  whitespace on a line is dropped, and blank lines are ignored.
* Unknown keys are ignored (§3.2 extensions); for a repeated key other than ``mx`` the first
  occurrence counts.  ``version`` must be ``STSv1``, ``mode`` one of enforce/testing/none,
  ``max_age`` 1 to 10 digits; a value above 31557600 is capped to it (§3.2).
* ``enforce`` and ``testing`` need at least one ``mx``; ``none`` may have none.
* A policy body over 64 KiB is refused (§3.3 lets senders do so).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import attrs

from mxd.errors import MxdError
from mxd.txtrecord import record_fields

MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 §3.3
MAX_MAX_AGE = 31557600  # RFC 8461 §3.2: about one year


class STSError(MxdError):
    """Base of mxd.mtasts errors."""


class PolicySyntaxError(STSError):
    """A policy file is not a valid STSv1 policy (TLSRPT: sts-policy-invalid)."""


class TXTRecordError(STSError):
    """The ``_mta-sts`` TXT record set holds no single valid STSv1 record (RFC 8461 §3.1)."""


class Mode(enum.StrEnum):
    """RFC 8461 §5 policy modes."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


_LABEL = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


def _normalise_host(name: str) -> str:
    return name.strip().rstrip(".").lower()


@attrs.frozen
class MXPattern:
    """An ``mx`` value: a host name, or ``*.`` + a domain matching exactly one more label."""

    text: str

    @classmethod
    def parse(cls, value: str) -> MXPattern:
        v = _normalise_host(value)
        base = v[2:] if v.startswith("*.") else v
        if not _DOMAIN.fullmatch(base):
            raise PolicySyntaxError(f"invalid mx pattern {value!r}")
        return cls(v)

    @property
    def wildcard(self) -> bool:
        return self.text.startswith("*.")

    def matches(self, host: str) -> bool:
        """RFC 8461 §4.1: exact match, or the wildcard replaced by exactly one label."""
        h = _normalise_host(host)
        if not self.wildcard:
            return h == self.text
        head, dot, rest = h.partition(".")
        return bool(head and dot) and rest == self.text[2:]


@attrs.frozen
class Policy:
    """A parsed STSv1 policy (RFC 8461 §3.2)."""

    mode: Mode
    max_age: int
    mx: tuple[MXPattern, ...]
    version: str = "STSv1"
    extensions: tuple[tuple[str, str], ...] = ()

    def matches(self, host: str) -> bool:
        """Whether an MX host name is allowed by the policy (RFC 8461 §4.1)."""
        return any(p.matches(host) for p in self.mx)

    def to_strings(self) -> tuple[str, ...]:
        """The lines of the policy for RFC 8460 §4.4 ``policy-string`` (one per ``mx``)."""
        return (f"version: {self.version}", f"mode: {self.mode.value}",
                *(f"mx: {p.text}" for p in self.mx), f"max_age: {self.max_age}")

    def to_text(self) -> str:
        """The policy in file form (CRLF line ends)."""
        return "\r\n".join(self.to_strings()) + "\r\n"


def _lines(text: str) -> Iterable[str]:
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip(" \t\r")
        if line:
            yield line


def parse_policy(body: bytes | str) -> Policy:
    """Parse a policy file; raise ``PolicySyntaxError`` with the reason when invalid."""
    if isinstance(body, bytes):
        if len(body) > MAX_POLICY_SIZE:
            raise PolicySyntaxError(f"policy larger than {MAX_POLICY_SIZE} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicySyntaxError("policy is not UTF-8 text") from None
    else:
        text = body
        if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_SIZE:
            raise PolicySyntaxError(f"policy larger than {MAX_POLICY_SIZE} bytes")
    fields: dict[str, str] = {}
    mx: list[MXPattern] = []
    extensions: list[tuple[str, str]] = []
    for n, line in enumerate(_lines(text), 1):
        key, colon, value = line.partition(":")
        if not colon or not _KEY.fullmatch(key):
            raise PolicySyntaxError(f"line {n}: not a 'key: value' field")
        value = value.strip(" \t")  # RFC 8461 §3.2: sts-policy-field-delim = ":" *WSP
        if key == "mx":
            mx.append(MXPattern.parse(value))
        elif key in ("version", "mode", "max_age"):
            fields.setdefault(key, value)
        else:
            extensions.append((key, value))
    if fields.get("version") != "STSv1":
        raise PolicySyntaxError(f"version must be STSv1, not {fields.get('version')!r}")
    try:
        mode = Mode(fields.get("mode", ""))
    except ValueError:
        raise PolicySyntaxError(f"invalid mode {fields.get('mode')!r}") from None
    age = fields.get("max_age", "")
    if not (age.isascii() and age.isdigit() and 1 <= len(age) <= 10):
        raise PolicySyntaxError(f"invalid max_age {age!r}")
    if mode is not Mode.NONE and not mx:
        raise PolicySyntaxError(f"mode {mode.value} needs at least one mx")
    return Policy(mode, min(int(age), MAX_MAX_AGE), tuple(mx), "STSv1", tuple(extensions))


@attrs.frozen
class TXTRecord:
    """A parsed ``_mta-sts`` TXT record: ``v=STSv1; id=...`` (RFC 8461 §3.1)."""

    id: str
    extensions: tuple[tuple[str, str], ...] = ()


def parse_txt_record(text: bytes | str) -> TXTRecord:
    """Parse one TXT record; raise ``TXTRecordError`` when it is not a valid STSv1 record."""
    record_id: str | None = None
    extensions: list[tuple[str, str]] = []
    for field in record_fields(text, "STSv1", TXTRecordError):
        name, eq, value = field.partition("=")
        if not eq or not _KEY.fullmatch(name):
            raise TXTRecordError(f"invalid field {field!r}")
        if name == "id":
            if record_id is not None:
                raise TXTRecordError("more than one id")
            if not _ID.fullmatch(value):
                raise TXTRecordError(f"invalid id {value!r}")
            record_id = value
        else:
            if not value or any(c in value for c in "= ;") or not value.isprintable():
                raise TXTRecordError(f"invalid extension value in {field!r}")
            extensions.append((name, value))
    if record_id is None:
        raise TXTRecordError("no id field")
    return TXTRecord(record_id, tuple(extensions))


def select_txt_record(records: Iterable[bytes | str]) -> TXTRecord:
    """The STSv1 record of a TXT RRset (RFC 8461 §3.1): records not starting with
    ``v=STSv1`` are ignored; anything but exactly one valid record is an error."""
    found: list[TXTRecord] = []
    for r in records:
        raw = r.decode("ascii", "replace") if isinstance(r, bytes) else r
        if not raw.lstrip(" \t").startswith("v=STSv1"):
            continue
        try:
            found.append(parse_txt_record(raw))
        except TXTRecordError:
            continue  # RFC 8461 §3.1: invalid records do not count
    if len(found) != 1:
        raise TXTRecordError(f"{len(found)} valid STSv1 records (need exactly one)")
    return found[0]


def policy_url(domain: str) -> str:
    """``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (RFC 8461 §3.3)."""
    return f"https://mta-sts.{_normalise_host(domain)}/.well-known/mta-sts.txt"
