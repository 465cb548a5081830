"""The [directory]/[ldap] sections: what is accepted and each refusal's key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxd.config import ConfigError, parse_config
from tests.test_config import _minimal


def _ldap(tls_files: dict[str, Path], body: str) -> str:
    return _minimal(tls_files, '[directory]\nbackend = "ldap"\n[ldap]\n'
                    'base_dn = "ou=people,dc=example,dc=test"\n' + body)


def test_ldaps_config_is_accepted(tls_files: dict[str, Path]) -> None:
    """ldaps:// URIs with a CA file and a service bind parse, paths made absolute."""
    pw = tls_files["ca"].parent / "pw"
    pw.write_text("x\n")
    cfg = parse_config(_ldap(tls_files, f'uris = ["ldaps://127.0.0.1:636", "ldaps://ldap2.example"]\n'
                             f'ca_file = "{tls_files["ca"]}"\nbind_dn = "cn=mxd"\n'
                             f'bind_password_file = "{pw}"\n'), "t.toml")
    assert cfg.directory.backend == "ldap" and cfg.ldap.ca_file == tls_files["ca"]
    assert len(cfg.ldap.uris) == 2


@pytest.mark.parametrize("body, key, problem", [
    ("", "ldap.uris", "at least one URI"),
    ('uris = ["http://x"]', r"ldap.uris\[0\]", "expected ldap://"),
    ('uris = ["ldap://ldap.example.org"]', r"ldap.uris\[0\]", "in the clear"),
    ('uris = ["ldap://10.0.0.1"]\nallow_plaintext_on_loopback = true', r"ldap.uris\[0\]",
     "in the clear"),
    ('uris = ["ldaps://x"]\nuser_filter = "uid=%s"', "ldap.user_filter", "parentheses"),
    ('uris = ["ldaps://x"]\naddress_filter = "(mail=%D)"', "ldap.address_filter",
     "unknown placeholder"),
    ('uris = ["ldaps://x"]\nca_file = "/nonexistent/ca.pem"', "ldap.ca_file", "not found"),
    ('uris = ["ldaps://x"]\nbind_dn = "cn=mxd"', "ldap.bind_password_file", "bind_dn is set"),
    ('uris = ["ldaps://x"]\npool_size = 0', "ldap.pool_size", "positive"),
])
def test_ldap_config_refusals(tls_files: dict[str, Path], body: str, key: str,
                              problem: str) -> None:
    """Each problem is reported with its key path."""
    with pytest.raises(ConfigError, match=rf"{key}: .*{problem}"):
        parse_config(_ldap(tls_files, body + "\n"), "t.toml")


def test_plaintext_allowed_only_to_loopback_when_asked(tls_files: dict[str, Path]) -> None:
    """ldap:// without StartTLS is accepted for 127.0.0.1 with the opt-in; StartTLS makes
    ldap:// to any host acceptable."""
    parse_config(_ldap(tls_files, 'uris = ["ldap://127.0.0.1:3389"]\n'
                       'allow_plaintext_on_loopback = true\n'), "t.toml")
    parse_config(_ldap(tls_files, 'uris = ["ldap://ldap.example.org"]\nstarttls = true\n'),
                 "t.toml")


def test_config_accounts_conflict_with_ldap(tls_files: dict[str, Path]) -> None:
    """[[accounts]] belong to the local directory."""
    text = _ldap(tls_files, 'uris = ["ldaps://x"]\n') + '\n[[accounts]]\nname = "a"\n'
    with pytest.raises(ConfigError, match="accounts: .*local directory"):
        parse_config(text, "t.toml")
