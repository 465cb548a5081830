"""The Received field mxd adds (RFC 5321 §4.4): client-supplied text (HELO name, TLS
cipher, recipient) cannot break out of its place in the field."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mxd.smtp import received
from mxd.smtp.received import TraceInfo, received_field


def _slow_clean(text: str) -> str:
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)[:255]


@given(st.text(max_size=300))
def test_clean_is_the_per_character_rule_for_any_text(text: str) -> None:
    assert received._clean(text) == _slow_clean(text)


def test_a_hostile_helo_stays_inside_its_comment_free_place() -> None:
    info = TraceInfo(helo="evil)\r\nX-Injected: yes (", remote_ip="192.0.2.1", remote_host=None,
                     by_host="mx.example.test", protocol="ESMTP", queue_id="abc",
                     when=datetime(2026, 12, 5, tzinfo=UTC), recipient="a@example.test")
    field = received_field(info).decode()
    assert "\r\nX-Injected" not in field
    assert field.startswith("Received: from evil???X-Injected: yes ? ([192.0.2.1])\r\n")
