"""Our MTA-STS policy and its id (RFC 8461 §3.1): the id changes exactly when the policy does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mxd.mtasts.policy import parse_policy, parse_txt_record
from mxd.mtasts.publish import policy_for, policy_id, txt_record


def test_policy_text_parses_back():
    p = policy_for("enforce", 604800, ["mx.example.test"])
    assert parse_policy(p.to_text()) == p


def test_id_changes_with_mode_mx_and_max_age_only():
    base = policy_id(policy_for("enforce", 86400, ["mx.example.test"]))
    assert base == policy_id(policy_for("enforce", 86400, ["mx.example.test"]))
    assert base != policy_id(policy_for("testing", 86400, ["mx.example.test"]))
    assert base != policy_id(policy_for("enforce", 86401, ["mx.example.test"]))
    assert base != policy_id(policy_for("enforce", 86400, ["mx2.example.test"]))


@given(st.sampled_from(["enforce", "testing", "none"]), st.integers(1, 31557600))
def test_txt_record_is_always_valid(mode, age):
    """The suggested record parses as STSv1 with our id (1-32 alphanumerics)."""
    p = policy_for(mode, age, ["mx.example.test"])
    assert parse_txt_record(txt_record(p)).id == policy_id(p)
