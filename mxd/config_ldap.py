"""The ``[ldap]`` section of the config (with ``[directory] backend = "ldap"``): checks
with precise errors, run by ``mxd config check`` and at start-up before any port is bound.

TLS is required towards the directory (RFC 4513 §3: StartTLS, or ldaps://); plaintext is
accepted only to loopback addresses and only when asked for.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mxd.directory.ldapfilter import FilterTemplateError, check_template

if TYPE_CHECKING:
    from mxd.config import Config


def validate_ldap(cfg: Config) -> None:
    """ConfigError (naming the key) for the first problem of the [ldap] section."""
    from mxd.config import ConfigError, _show

    src, ldap = cfg.source, cfg.ldap
    if not ldap.uris:
        raise ConfigError(src, "ldap.uris", "[directory] backend is ldap: list at least one URI")
    for i, uri in enumerate(ldap.uris):
        u = urlsplit(uri)
        if u.scheme not in ("ldap", "ldaps") or not u.hostname:
            raise ConfigError(src, f"ldap.uris[{i}]", f"expected ldap://HOST[:PORT] or "
                              f"ldaps://HOST[:PORT], got {_show(uri)}")
        if u.scheme == "ldap" and not ldap.starttls:
            try:
                loopback = ipaddress.ip_address(u.hostname).is_loopback
            except ValueError:
                loopback = u.hostname == "localhost"
            if not (loopback and ldap.allow_plaintext_on_loopback):
                raise ConfigError(src, f"ldap.uris[{i}]", "passwords would cross the network "
                                  "in the clear: use ldaps://, or starttls = true (plaintext "
                                  "is allowed only to loopback with allow_plaintext_on_loopback)")
    if not ldap.base_dn:
        raise ConfigError(src, "ldap.base_dn", "required with [directory] backend = \"ldap\"")
    for key, allowed in (("user_filter", "sud"), ("address_filter", "sud"),
                         ("list_filter", ""), ("group_filter", "sudD")):
        value = getattr(ldap, key)
        if not value and key == "group_filter":
            continue
        try:
            check_template(value, allowed)
        except FilterTemplateError as e:
            raise ConfigError(src, f"ldap.{key}", str(e)) from None
    for key in ("ca_file", "bind_password_file"):
        p = getattr(ldap, key)
        if p is not None and not p.is_file():
            raise ConfigError(src, f"ldap.{key}", f"file not found: {p}")
    if cfg.accounts:
        raise ConfigError(src, "accounts", "[[accounts]] are for the local directory; with "
                          "backend = \"ldap\" accounts come from the directory")
    if ldap.bind_dn and ldap.bind_password_file is None:
        raise ConfigError(src, "ldap.bind_password_file", "bind_dn is set: give the file "
                          "with its password")
