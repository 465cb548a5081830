"""mxd's configuration: one TOML file parsed into frozen, typed objects.

The schema is the attrs classes below; each field's ``doc`` metadata is the reference
documentation (``mxd config reference`` prints it, ``doc/config.md`` is generated from it,
and a test keeps ``etc/mxd.toml.example`` in step with it).  Every error names the file,
the key path and what is wrong, e.g. ``mxd.toml: listeners[2].port: expected an integer
from 1 to 65535, got "25x"``.

Only the composition layer (``mxd.tap``, ``mxd.cli``) imports this module; protocol and
library modules take their own small settings objects.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from mxd.errors import MxdError

DEFAULT_CONFIG_PATH = Path("etc/mxd.toml")


class ConfigError(MxdError):
    """The configuration is invalid; the message names file, key path and problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)


def _doc(text: str, *, choices: tuple[str, ...] | None = None,
         check: Callable[[Any], str | None] | None = None, example: str | None = None) -> dict[str, Any]:
    return {"doc": text, "choices": choices, "check": check, "example": example}


def opt(default: Any, text: str, **kw: Any) -> Any:
    """A config field with a default."""
    if isinstance(default, list | dict | tuple) or attrs.has(type(default)):
        return attrs.field(factory=lambda: copy.deepcopy(default), metadata=_doc(text, **kw))
    return attrs.field(default=default, metadata=_doc(text, **kw))


def req(text: str, **kw: Any) -> Any:
    """A required config field."""
    return attrs.field(metadata=_doc(text, **kw))


def _port_check(v: int) -> str | None:
    return None if 0 <= v <= 65535 else f"expected a port from 0 to 65535, got {v}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be positive, got {v}"


def _metadata_value_check(v: int) -> str | None:
    return None if 0 < v <= 65536 else f"must be from 1 to 65536, got {v}"


def _address_check(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"expected an IP address such as 127.0.0.1 or ::1, got {v!r}"
    return None


def _nameserver_check(v: str) -> str | None:
    try:
        parse_hostport(v, 53)
    except ValueError as e:
        return str(e)
    return None


def parse_hostport(v: str, default_port: int) -> tuple[str, int]:
    """Parse ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``."""
    host, port = v, default_port
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            raise ValueError(f"unbalanced brackets in {v!r}")
        host = v[1:end]
        rest = v[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [IPv6]:PORT, got {v!r}")
            port = int(rest[1:])
    elif v.count(":") == 1:
        host, p = v.split(":")
        if not p.isdigit():
            raise ValueError(f"port must be a number in {v!r}")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address (optionally with :PORT), got {v!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {v!r}")
    return host, port


LISTENER_PROTOCOLS = ("smtp", "submission", "submissions", "imap", "imaps", "admin", "https",
                      "http", "webmail")
# HTTP listeners that may be plain HTTP on loopback and must be HTTPS anywhere else.
WEB_UI_PROTOCOLS = ("admin", "webmail")
ACME_CHALLENGES = ("tls-alpn-01", "http-01")
STS_MODES = ("enforce", "testing", "none")
DMARC_POLICIES = ("none", "quarantine", "reject")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")


@attrs.frozen
class TLSCertConfig:
    cert: Path | None = opt(None, "PEM file with the certificate followed by its chain.",
                            example='"/etc/mxd/tls/fullchain.pem"')
    key: Path | None = opt(None, "PEM file with the private key of `cert`.",
                           example='"/etc/mxd/tls/privkey.pem"')
    min_version: str = opt("TLSv1.2", "Oldest TLS version accepted (RFC 8996 forbids older).",
                           choices=TLS_VERSIONS)
    host_keys: list[Path] = opt([], "Pre-generated host keys (PEM, mode 0600): an RSA-2048 "
                                "and an ECDSA P-256 key. When set and `cert`/`key` are not, "
                                "every TLS listener serves certificates made for these keys "
                                "(ACME-issued when [acme] is enabled, self-signed until "
                                "then), picked by SNI, so TLSA 3 1 1 records stay valid "
                                "across renewals. `mxd quickstart` generates them.",
                                example='["hostkey-rsa2048.pem", "hostkey-ecdsap256.pem"]')


@attrs.frozen
class ListenerConfig:
    protocol: str = req("What this listener speaks: smtp (port 25, inbound), submission "
                        "(587, STARTTLS then AUTH), submissions (465, implicit TLS), imap (143, "
                        "STARTTLS), imaps (993, implicit TLS), admin (HTTP admin and /metrics), "
                        "https (443: MTA-STS policy, client autoconfig, ACME TLS-ALPN-01), "
                        "http (80: ACME HTTP-01, otherwise a redirect to https), webmail "
                        "(the accounts' web client; plain HTTP on loopback only, HTTPS "
                        "elsewhere).",
                        choices=LISTENER_PROTOCOLS)
    port: int = req("TCP port.", check=_port_check)
    address: str = opt("127.0.0.1", "IP address to bind; \"::\" or \"0.0.0.0\" for all.",
                       check=_address_check)
    cert: Path | None = opt(None, "Certificate for this listener only (default: [tls].cert).")
    key: Path | None = opt(None, "Private key for this listener only (default: [tls].key).")
    max_tls_version: str | None = opt(None, "Newest TLS version offered (default: the newest "
                                      "available). Testing aid: TLSv1.2 exercises tls-unique.",
                                      choices=TLS_VERSIONS)


@attrs.frozen
class DomainsConfig:
    names: list[str] = opt([], "Domains this server receives mail for (IDNA names allowed).",
                           example='["example.org"]')
    localpart_separator: str = opt("+", "Sub-address separator: alice+tag@ goes to alice@. "
                                   "Empty string disables it.")
    catchall: dict[str, str] = opt({}, "Per-domain catch-all: domain = account name that "
                                   "receives mail for unknown local parts.",
                                   example='{ "example.org" = "alice" }')
    postmaster: str = opt("", "Account that receives postmaster@ of every local domain "
                          "(RFC 5321 §4.5.1) unless that address is assigned; empty: the "
                          "first account by name (postmaster@ is never refused).")
    routes: dict[str, list[RouteConfig]] = opt(
        {}, "Per local domain: routes for mail sent from that domain, checked after the "
        "account's and before the global routes (`[[domains.routes.\"example.org\"]]`).")


STORE_BACKENDS = ("sqlite", "postgresql")


@attrs.frozen
class StoreConfig:
    quota_bytes: int = opt(0, "Default per-account quota in bytes; 0 means unlimited. "
                           "Deliveries over quota are refused temporarily (452 4.2.2).",
                           check=lambda v: None if v >= 0 else f"must not be negative, got {v}")
    backend: str = opt("sqlite", "Where metadata (accounts, mailboxes, messages, flags, "
                       "the queue) is kept: sqlite (in data_dir, one machine) or postgresql "
                       "(`dsn`; several mxd nodes may share the database and `blob_dir`).",
                       choices=STORE_BACKENDS)
    dsn: str = opt("", "postgresql: the libpq connection string or URI of the database "
                   "(a password is better kept in ~/.pgpass or PGPASSFILE than here).",
                   example='"host=db.example.org dbname=mxd user=mxd"')
    blob_dir: Path | None = opt(None, "postgresql: the directory of message bodies, shared "
                                "by every node (e.g. on NFS); it must exist and be writable, "
                                "or mxd refuses to start. sqlite keeps bodies in data_dir.",
                                example='"/srv/mxd-blobs"')
    pool_size: int = opt(8, "postgresql: database connections (and threads running store "
                         "operations) per mxd process; each of `[server] workers` has its "
                         "own, plus one that listens for other nodes' changes.",
                         check=_positive)
    connect_timeout: float = opt(10.0, "postgresql: seconds an operation waits for a "
                                 "database connection before it fails temporarily (SMTP "
                                 "451, IMAP NO [UNAVAILABLE]).", check=_positive)
    expunged_body_grace: float = opt(60.0, "With workers or PostgreSQL (several processes "
                                     "on one store): seconds the body of an expunged "
                                     "message stays on disk, so that IMAP sessions of "
                                     "other processes that still show the message can "
                                     "keep it readable until they report the expunge. "
                                     "One process removes it at once.", check=_positive)
    orphan_sweep_interval: float = opt(1800.0, "postgresql: seconds between a node's sweeps "
                                       "of `blob_dir` for body files that no row references "
                                       "(left by a node killed while it wrote or kept "
                                       "them); one node sweeps at a time.", check=_positive)
    orphan_min_age: float = opt(3600.0, "postgresql: a sweep leaves every body or tmp file "
                                "modified more recently than this many seconds (a body "
                                "being written is younger); must exceed `[smtp] "
                                "data_timeout` and `command_timeout` and `[imap] "
                                "idle_timeout`.", check=_positive)
    orphan_hold_off: float = opt(600.0, "postgresql: a sweep removes a body file only when "
                                 "no row named it at two sweeps at least this many seconds "
                                 "apart; must exceed `expunged_body_grace` (a node keeps an "
                                 "expunged body that long).", check=_positive)


TRANSPORT_KINDS = ("direct", "smtp", "submission", "submissions", "socks5", "fail")
SMARTHOST_TLS = ("verified", "required", "opportunistic", "none")


def _transport_port_check(v: int) -> str | None:
    return None if 0 <= v <= 65535 else f"expected a port from 1 to 65535, got {v}"


@attrs.frozen
class RouteConfig:
    transport: str = req("Name of a `[transports.NAME]` entry; \"\" or \"direct\" means "
                         "direct delivery (MX lookup).", example='"relay"')
    to_domains: list[str] = opt([], "Recipient domains this route applies to: "
                                "`example.com` (that domain), `.example.com` (its "
                                "subdomains), `*` (all). Empty: any.",
                                example='["gmail.com", ".outlook.com"]')
    from_domains: list[str] = opt([], "Sender (reverse-path) domains, same patterns. "
                                  "Empty: any.", example='["example.org"]')
    min_attempt: int = opt(0, "Apply only from this delivery attempt on (1 = the first), "
                           "e.g. 4 to switch to a third party after three failures. "
                           "0: every attempt.",
                           check=lambda v: None if v >= 0 else f"must not be negative, got {v}")


@attrs.frozen
class TransportConfig:
    kind: str = req("How to deliver: direct (MX lookup), smtp (a smarthost, no AUTH), "
                    "submission (587, STARTTLS + SASL AUTH), submissions (465, implicit TLS "
                    "+ SASL AUTH), socks5 (direct delivery with every connection through a "
                    "SOCKS5 proxy), fail (refuse with `code`/`enhanced`/`text`).",
                    choices=TRANSPORT_KINDS)
    host: str = opt("", "smtp/submission/submissions: the smarthost's name (resolved with "
                    "[resolver]) or IP address; socks5: the proxy's IP address.",
                    example='"smtp.provider.example"')
    port: int = opt(0, "Port of the smarthost or proxy; 0: the kind's default (smtp 25, "
                    "submission 587, submissions 465, socks5 1080).",
                    check=_transport_port_check)
    tls: str = opt("verified", "smtp/submission/submissions: TLS to the smarthost. "
                   "verified: required, certificate checked against the host name (PKIX, "
                   "[outbound].ca_file); required: not checked; opportunistic; none. "
                   "REQUIRETLS messages (RFC 8689) go only through verified TLS.",
                   choices=SMARTHOST_TLS)
    username: str = opt("", "submission/submissions: SASL user name.",
                        example='"mailer@example.org"')
    password_file: Path | None = opt(None, "submission/submissions: file holding the SASL "
                                     "password (one line; readable only by its owner).",
                                     example='"/etc/mxd/relay.password"')
    mechanisms: list[str] = opt([], "submission/submissions: SASL mechanisms allowed, e.g. "
                                "[\"SCRAM-SHA-256-PLUS\"] to force one. Empty: the most "
                                "secure one the server offers (SCRAM-SHA-256-PLUS, "
                                "SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, "
                                "PLAIN; PLAIN never without TLS).")
    proxy_username: str = opt("", "socks5: RFC 1929 user name (empty: no authentication).")
    proxy_password_file: Path | None = opt(None, "socks5: file holding the proxy password.",
                                           example='"/etc/mxd/proxy.password"')
    remote_ips: list[str] = opt([], "socks5: the public IP addresses the proxy sends from "
                                "(for the SPF check of your domains).",
                                example='["198.51.100.7"]', check=lambda v: _address_check(v))
    ehlo_hostname: str = opt("", "The name said in EHLO through this transport (e.g. the "
                             "proxy's public host name); empty: [hostname].")
    code: int = opt(554, "fail: SMTP reply code (4xx: retried, 5xx: bounced).",
                    check=lambda v: None if 400 <= v < 600 else f"expected 400-599, got {v}")
    enhanced: str = opt("5.7.1", "fail: enhanced status code (RFC 3463).")
    text: str = opt("delivery to this domain is not allowed", "fail: reply text in the "
                    "bounce.")


@attrs.frozen
class AccountConfig:
    name: str = req("Login name of the account (passwords are set with `mxd account passwd`).")
    addresses: list[str] = opt([], "Addresses delivered to this account and that it may "
                               "send as.")
    routes: list[RouteConfig] = opt([], "Routes for mail this account submits, checked "
                                    "before the domain's and the global routes.")


@attrs.frozen
class AuthConfig:
    mechanisms: list[str] = opt(
        ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5",
         "PLAIN", "LOGIN"],
        "SASL mechanisms offered, most preferred first. -PLUS variants are offered only "
        "where the TLS connection provides channel binding.")
    allow_plaintext_on_loopback: bool = opt(False, "Offer PLAIN/LOGIN/CRAM-MD5 without TLS "
                                            "to loopback clients (never to others).")
    scram_iterations: int = opt(4096, "PBKDF2 iteration count for new SCRAM credentials "
                                "(RFC 7677 asks for at least 4096).", check=_positive)
    cram_md5: bool = opt(True, "Store CRAM-MD5 secrets for new passwords. They are "
                         "password-equivalent for CRAM-MD5; turn off if you do not need it.")
    ip_free_failures: int = opt(5, "Failed logins per client IP (IPv6: per /64) before "
                                "back-off starts; also per account and IP. A successful "
                                "login does not clear the IP's count (only its own "
                                "account-and-IP count), so mixing in logins to one's own "
                                "account does not buy more guesses.", check=_positive)
    network_free_failures: int = opt(20, "Failed logins per client network (IPv4 /24, IPv6 "
                                     "/48) before back-off starts, so that many addresses "
                                     "of one network do not each get their own allowance.",
                                     check=_positive)
    ip_base_delay: float = opt(2.0, "First back-off for one client IP, in seconds, once "
                               "its free failures are used; it doubles with each further "
                               "failure.", check=_positive)
    ip_max_delay: float = opt(600.0, "Longest back-off for one client IP, in seconds "
                              "(doubling from ip_base_delay).", check=_positive)
    account_free_failures: int = opt(10, "Failed logins per account, from any IP, before "
                                     "back-off starts.", check=_positive)
    account_base_delay: float = opt(1.0, "First back-off for one account, in seconds, once "
                                    "its free failures are used; it doubles with each "
                                    "further failure.", check=_positive)
    account_max_delay: float = opt(300.0, "Longest back-off for one account, in seconds "
                                   "(doubling from account_base_delay). It applies only to addresses without "
                                   "a recent successful login to the account (see "
                                   "trusted_for), so others' guessing does not lock its owner "
                                   "out.", check=_positive)
    failure_half_life: float = opt(900.0, "Seconds for a failure count (per IP, per account "
                                   "and IP, per account) to halve: old failures fade away.",
                                   check=_positive)
    trusted_for: float = opt(30 * 86400.0, "Seconds an address stays trusted for an account "
                             "after a successful login from it: trusted addresses pass the "
                             "per-IP and per-account limits for that account (only its own "
                             "per-account-and-IP limit applies). Kept in memory only.",
                             check=_positive)
    hash_threads: int = opt(0, "Threads that hash passwords (scrypt, PBKDF2) off the event "
                            "loop; 0: one per CPU (2 to 8). Each uses 32 MiB while hashing.",
                            check=lambda v: None if v >= 0 else f"must not be negative, got {v}")
    login_cache_ttl: float = opt(900.0, "Seconds a successful PLAIN/LOGIN password check "
                                 "is remembered (as a keyed hash, in memory) so that the "
                                 "same password skips scrypt; wrong passwords always pay "
                                 "it. 0 turns this off (every login then costs one scrypt).",
                                 check=lambda v: None if v >= 0 else
                                 f"must not be negative, got {v}")
    hash_max_pending: int = opt(256, "Password checks that may wait for a hashing thread; "
                                "beyond it logins fail temporarily instead of queueing.",
                                check=_positive)


@attrs.frozen
class DirectoryConfig:
    backend: str = opt("local", "Where accounts come from: local (mxd's own store, managed "
                       "with `mxd account`) or ldap (the [ldap] section; read-only).",
                       choices=("local", "ldap"))


@attrs.frozen
class LDAPConfig:
    uris: list[str] = opt([], "LDAP servers, tried in order (failover): ldaps://HOST:PORT, "
                          "or ldap://HOST:PORT with starttls = true.",
                          example='["ldaps://ldap1.example.org", "ldaps://ldap2.example.org"]')
    starttls: bool = opt(False, "Use StartTLS (RFC 4513 §3) on ldap:// URIs.")
    ca_file: Path | None = opt(None, "PEM CA bundle to verify the LDAP servers' certificates "
                               "(default: the system store). Verification is always on.")
    allow_plaintext_on_loopback: bool = opt(
        False, "Allow ldap:// without StartTLS, and so passwords in the clear, when every "
        "URI is a loopback address. Never allowed over the network.")
    bind_dn: str = opt("", "DN of the service account that searches the directory; empty "
                       "for an anonymous search.", example='"cn=mxd,ou=services,dc=example,dc=org"')
    bind_password_file: Path | None = opt(None, "File holding the service account's password "
                                          "(first line; keep it mode 0600).")
    base_dn: str = opt("", "Where accounts are searched (subtree).",
                       example='"ou=people,dc=example,dc=org"')
    user_filter: str = opt("(&(objectClass=inetOrgPerson)(|(uid=%s)(mail=%s)(mailLocalAddress=%s)))",
                           "Filter finding the entry of a login name: %s the name, %u its "
                           "local part, %d its domain; values are escaped (RFC 4515).")
    address_filter: str = opt("(&(objectClass=inetOrgPerson)(|(mail=%s)(mailLocalAddress=%s)))",
                              "Filter finding the account that receives mail for an address "
                              "(normalised local@domain; placeholders as in user_filter).")
    list_filter: str = opt("(objectClass=inetOrgPerson)", "Filter listing every account "
                           "(`mxd account list`, orphan detection).")
    group_filter: str = opt("", "Optional: only accounts for which a search with this filter "
                            "(%D the account's DN, escaped) finds an entry may log in, e.g. "
                            "(&(objectClass=groupOfNames)(cn=mail)(member=%D)).")
    group_base_dn: str = opt("", "Where group_filter searches (default: base_dn).")
    name_attribute: str = opt("uid", "Attribute holding the account name (the mailbox owner "
                              "in mxd's store).")
    mail_attributes: list[str] = opt(["mail"], "Attributes with the account's own addresses.")
    alias_attributes: list[str] = opt(["mailLocalAddress"], "Attributes with more addresses "
                                      "delivered to the account (multi-valued aliases).")
    quota_attribute: str = opt("", "Attribute with the account's quota in bytes; empty: the "
                               "default [store].quota_bytes.")
    scram_attribute: str = opt("authPassword", "Attribute with RFC 5803 SCRAM secrets "
                               "(`mxd account scram-keys` prints them). Accounts without "
                               "them can use PLAIN/LOGIN only.")
    pool_size: int = opt(4, "Connections (and worker threads) to the directory.",
                         check=_positive)
    timeout: float = opt(5.0, "Seconds for connecting and for each operation.",
                         check=_positive)
    cache_ttl: float = opt(60.0, "Seconds an entry found is reused (0: no cache). Password "
                           "checks always bind.", check=lambda v: None if v >= 0 else
                           f"must not be negative, got {v}")
    negative_cache_ttl: float = opt(10.0, "Seconds a \"no such entry\" answer is reused.",
                                    check=lambda v: None if v >= 0 else
                                    f"must not be negative, got {v}")


@attrs.frozen
class ResolverConfig:
    nameservers: list[str] = opt(["127.0.0.1"], "Recursive resolvers as IP or IP:PORT. Run a "
                                 "local validating resolver (unbound) for DNSSEC.",
                                 check=None)
    trusted: list[str] = opt([], "Nameservers (as written above) whose AD bit is trusted. "
                             "Default when empty: loopback nameservers only.")
    timeout: float = opt(2.0, "Seconds to wait for one answer before retrying.",
                         check=_positive)
    attempts: int = opt(2, "Tries per nameserver.", check=_positive)
    cache_size: int = opt(10000, "Cached answers kept at most; 0 turns the cache off.",
                          check=lambda v: None if v >= 0 else f"must not be negative, got {v}")


@attrs.frozen
class SMTPConfig:
    max_message_size: int = opt(50 * 1024 * 1024, "Largest message accepted, in bytes "
                                "(SIZE, RFC 1870).", check=_positive)
    max_recipients: int = opt(100, "Recipients per transaction (LIMITS RCPTMAX, RFC 9422).",
                              check=_positive)
    max_connections: int = opt(200, "Concurrent SMTP connections in total.", check=_positive)
    max_connections_per_ip: int = opt(20, "Concurrent SMTP connections per client IP.",
                                      check=_positive)
    max_connections_per_network: int = opt(50, "Concurrent SMTP connections per client "
                                           "network (IPv4 /24, IPv6 /48), so that a flood "
                                           "from many addresses of one network cannot take "
                                           "every slot.", check=_positive)
    command_timeout: float = opt(300.0, "Seconds within which each command line must be "
                                 "complete, counted from the previous reply; bytes that "
                                 "trickle in do not extend it (RFC 5321 §4.5.3.2.7).",
                                 check=_positive)
    command_timeout_busy: float = opt(10.0, "The same deadline while three quarters of "
                                      "max_connections are in use (sessions already "
                                      "waiting get it too).", check=_positive)
    data_timeout: float = opt(300.0, "Seconds for message data (DATA, a BDAT chunk), "
                              "extended by the bytes received divided by data_min_rate.",
                              check=_positive)
    data_min_rate: float = opt(500.0, "Bytes per second a client must keep up while sending "
                               "message data.", check=_positive)
    max_hops: int = opt(100, "Received fields a message may carry; more is a mail loop and "
                        "is refused with 554 5.4.6 (RFC 5321 §6.3 asks for at least 100).",
                        check=_positive)
    requiretls: bool = opt(True, "Offer REQUIRETLS (RFC 8689) on smtp and submission "
                           "listeners once TLS is up. false: the keyword is not advertised "
                           "and MAIL FROM ... REQUIRETLS is refused as an unknown parameter "
                           "(555 5.5.4); queued REQUIRETLS messages are still honoured.")


@attrs.frozen
class IMAPConfig:
    max_literal_size: int = opt(50 * 1024 * 1024, "Largest literal (APPENDLIMIT).",
                                check=_positive)
    max_connections_per_ip: int = opt(50, "Concurrent IMAP connections per client IP.",
                                      check=_positive)
    max_connections_per_network: int = opt(200, "Concurrent IMAP connections per client "
                                           "network (IPv4 /24, IPv6 /48).", check=_positive)
    max_connections: int = opt(5000, "Concurrent IMAP connections in total (all IMAP "
                               "listeners).", check=_positive)
    idle_timeout: float = opt(1800.0, "Seconds before an idle client is logged out "
                              "(RFC 9051 §5.4: at least 30 minutes).", check=_positive)
    login_timeout: float = opt(180.0, "Seconds from connecting within which a client must "
                               "log in; bytes sent meanwhile do not extend it.",
                               check=_positive)
    metadata_max_value: int = opt(16384, "Largest value of one METADATA entry in octets "
                                  "(RFC 5464; larger: NO [METADATA MAXSIZE n]); at most 65536, "
                                  "the literal limit.", check=_metadata_value_check)
    metadata_max_entries: int = opt(1000, "METADATA entries per account, server and "
                                    "mailboxes together (more: NO [METADATA TOOMANY]).",
                                    check=_positive)
    metadata_max_total: int = opt(1048576, "Octets of all METADATA values of one account "
                                  "(more: NO [METADATA TOOMANY]).", check=_positive)


def _workers_check(v: int) -> str | None:
    return None if 0 <= v <= 256 else f"expected 0 (one per CPU core) to 256, got {v}"


@attrs.frozen
class ServerConfig:
    workers: int = opt(0, "Worker processes serving SMTP, submission and IMAP (and running "
                       "the outbound queue) on listening sockets the main process binds "
                       "and hands down. 0: one per CPU core; 1: everything in one process, "
                       "as without workers. Applies to `twistd mxd`; `mxd serve` and "
                       "`mxd localserve` always run one process. See doc/processes.md.",
                       check=_workers_check)
    drain_timeout: float = opt(30.0, "At SIGTERM, seconds the workers let open SMTP and "
                               "IMAP sessions finish (they stop accepting at once) before "
                               "closing them.", check=_positive)
    restart_backoff_max: float = opt(30.0, "A worker that exits is started again after a "
                                     "delay that doubles with each quick exit, from 0.5 s "
                                     "up to this many seconds.", check=_positive)
    cpu_affinity: str = opt("auto", "\"auto\": with several workers and at least as many "
                            "usable CPU cores, worker N runs (all its threads) on the N-th "
                            "core only; \"none\": the kernel's scheduler places them. "
                            "Keeping a worker's threads on one core turns their hand-offs "
                            "of Python's interpreter lock into cheap local switches instead "
                            "of wake-ups across cores (see doc/processes.md for figures).",
                            check=lambda v: None if v in ("auto", "none")
                            else f'expected "auto" or "none", got {v!r}')

    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the CPU cores this process may run on."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)


@attrs.frozen
class QueueConfig:
    hold_all: bool = opt(False, "Keep every outbound message queued (never deliver); "
                         "`mxd localserve` sets this so nothing leaves the machine.")
    max_concurrent: int = opt(20, "Deliveries in flight at once (for the server: with "
                              "[server] workers each worker runs its share, rounded up).",
                              check=_positive)
    max_concurrent_per_domain: int = opt(4, "Deliveries in flight per destination domain.",
                                         check=_positive)
    smtp_port: int = opt(25, "Port used for direct delivery to MX hosts (tests change it).",
                         check=_port_check)
    lease: float = opt(10800.0, "Seconds a node holds the recipients it is delivering; "
                       "a delivery still under way renews its leases every third of "
                       "this, so a slow one is never taken for abandoned. When a node "
                       "dies, another node (or itself after a restart, with postgresql) "
                       "takes its recipients once their leases run out.", check=_positive)


@attrs.frozen
class OutboundConfig:
    dane: bool = opt(True, "Apply DANE (RFC 7672) when the MX host has DNSSEC-signed TLSA "
                     "records: verified TLS becomes mandatory for that host.")
    mta_sts: bool = opt(True, "Apply MTA-STS (RFC 8461) policies of recipient domains.")
    ca_file: Path | None = opt(None, "PEM bundle of WebPKI roots for MTA-STS (policy fetch and "
                               "MX certificates); default: the system store "
                               "(/etc/ssl/certs/ca-certificates.crt).")
    mta_sts_fetch_timeout: float = opt(60.0, "Seconds allowed for one policy fetch (RFC 8461 "
                                       "§3.3 suggests at least a minute).", check=_positive)
    mta_sts_refresh_interval: float = opt(3600.0, "Seconds between background refresh "
                                          "rounds of cached policies.", check=_positive)
    mta_sts_refresh_before: float = opt(86400.0, "Refresh cached policies that expire "
                                        "within this many seconds.", check=_positive)
    mta_sts_port: int = opt(443, "HTTPS port of policy hosts (tests change it).",
                            check=_port_check)


def _selectors_check(v: dict[str, list[str]]) -> str | None:
    for domain, selectors in v.items():
        if not selectors:
            return f"{domain}: list at least one selector (or remove the domain)"
    return None


@attrs.frozen
class DKIMConfig:
    key_dir: Path | None = opt(None, "Directory of DKIM private keys, one file per key at "
                               "KEY_DIR/DOMAIN/SELECTOR.pem (written by `mxd dkim genkey`); "
                               "default: DATA_DIR/dkim.", example='"/var/lib/mxd/dkim"')
    selectors: dict[str, list[str]] = opt(
        {}, "Per sending domain, the selectors whose keys sign its outgoing mail (submission "
        "and mxd's own DSNs and reports). Each selector's key file must exist. List an RSA "
        "and an Ed25519 selector to sign with both (RFC 8463 §3); for a key rollover add the "
        "new selector, and remove the old one once its successor is published.",
        check=_selectors_check,
        example='{ "example.org" = ["20261205r", "20261205e"] }')


@attrs.frozen
class ForwardConfig:
    address: str = req("A local address (its domain in [domains].names) whose mail is sent "
                       "on; `local+tag@domain` is forwarded too.", example='"alias@example.org"')
    to: list[str] = req("Where it goes (1 to 10 addresses, usually elsewhere).",
                        example='["someone@elsewhere.example"]')
    keep_copy: bool = opt(False, "Also deliver to the account owning the address (when one "
                          "does).")


@attrs.frozen
class ForwardingConfig:
    srs_secret_file: Path | None = opt(
        None, "Secret of the Sender Rewriting Scheme: forwarded mail leaves with an envelope "
        "sender SRS0=HASH=TT=domain=local@<forwarding domain> so that SPF at the next hop "
        "passes and bounces come back here, to be sent on to the original sender; only "
        "addresses made with this secret are accepted back. Created (mode 0600) when "
        "missing; default: DATA_DIR/srs.secret.", example='"/var/lib/mxd/srs.secret"')
    srs_max_age_days: int = opt(21, "Days a bounce address stays valid.", check=_positive)


@attrs.frozen
class MsgAuthConfig:
    inbound_checks: bool = opt(True, "Check iprev, SPF, DKIM and DMARC for mail received on "
                               "port 25 (through the [resolver]; a local validating resolver "
                               "makes the DNSSEC status in Authentication-Results meaningful) "
                               "and add an Authentication-Results field naming `hostname`.")
    dmarc_reject: str = opt("reject", "A message that fails DMARC where the From domain "
                            "publishes p=reject is refused at the end of DATA with 550 5.7.1 "
                            "(reject), or delivered to the recipient's Junk mailbox (junk). "
                            "p=quarantine always means Junk.", choices=("reject", "junk"))
    dmarc_report_addresses: list[str] = opt(
        [], "Local addresses whose incoming mail is read as DMARC aggregate reports (RFC 7489 "
        "§7.2; gzip, zip or XML, with size limits) and stored under DATA_DIR/dmarc/incoming; "
        "the mail is delivered as usual. `mxd dmarc reports` and GET /api/dmarc/reports list "
        "them. Name such an address in the rua= of your domains' DMARC records.",
        example='["dmarc-reports@example.org"]')
    dmarc_reports_send: bool = opt(True, "Send a daily DMARC aggregate report (RFC 7489 §7.2) "
                                   "to each domain whose DMARC record asks for one (rua=), "
                                   "after 00:00 UTC with a random delay of up to an hour, "
                                   "DKIM-signed when [dkim] has keys for the From domain. "
                                   "Destinations outside the domain are used only when they "
                                   "agree (RFC 7489 §7.1). false: keep no evaluations, send "
                                   "nothing.")
    dmarc_reports_from: str = opt("", "From address and envelope sender of the reports we "
                                  "send; empty: postmaster@HOSTNAME.",
                                  example='"dmarc-noreply@example.org"')


@attrs.frozen
class ACMEConfig:
    enabled: bool = opt(False, "Obtain and renew certificates with ACME (RFC 8555) for the "
                        "host name and each domain's mta-sts. and autoconfig. names, made for "
                        "[tls].host_keys. Needs an https listener (TLS-ALPN-01) or an http "
                        "listener (HTTP-01) reachable from the CA on ports 443/80.")
    directory_url: str = opt("https://acme-v02.api.letsencrypt.org/directory",
                             "The CA's ACME directory URL.")
    contact: str = opt("", "Contact e-mail address given to the CA (empty: none).")
    ca_file: Path | None = opt(None, "PEM roots to verify the ACME server's HTTPS with "
                               "(default: the system store; tests point it at pebble's).")
    challenges: list[str] = opt(["tls-alpn-01", "http-01"], "Challenge types to use, in order "
                                "of preference.", choices=ACME_CHALLENGES)
    renew_fraction: float = opt(2 / 3, "Renew when this fraction of a certificate's lifetime "
                                "has passed.", check=lambda v: None if 0 < v < 1 else
                                f"must be between 0 and 1, got {v}")
    retry_min: float = opt(60.0, "First retry delay in seconds after a failed order; doubles "
                           "per failure.", check=_positive)
    retry_max: float = opt(21600.0, "Longest retry delay in seconds.", check=_positive)
    caa_issuer: str = opt("letsencrypt.org", "The CA's CAA issuer domain (RFC 8659), for the "
                          "CAA record `mxd dns records` suggests.")


@attrs.frozen
class MTASTSConfig:
    mode: str = opt("enforce", "Mode of the MTA-STS policy served at "
                    "https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 §3.2).",
                    choices=STS_MODES)
    max_age: int = opt(604800, "Seconds senders may cache the policy (RFC 8461 §3.2; at most "
                       "31557600).", check=lambda v: None if 0 < v <= 31557600 else
                       f"must be from 1 to 31557600, got {v}")
    mx: list[str] = opt([], "MX host patterns of the policy (default: [hostname]).")


@attrs.frozen
class TLSRPTConfig:
    send: bool = opt(True, "Send a daily SMTP TLS report (RFC 8460) about the previous UTC "
                     "day to each policy domain that publishes `_smtp._tls` (rua=): the "
                     "recipient domain for MTA-STS and STARTTLS results, the MX host for "
                     "DANE results, after 00:00 UTC with a random delay of up to an hour; "
                     "by mail (DKIM-signed when [dkim] has a key for the From domain) or "
                     "HTTPS POST. false: send nothing.")
    send_success: bool = opt(False, "Also report days on which every TLS session to the "
                             "domain succeeded (by default only days with a failure).")
    organization: str = opt("", "The reporting organisation's name in the reports "
                            "(organization-name); empty: `hostname`.",
                            example='"Example Org"')
    contact: str = opt("", "Contact information in the reports (contact-info); empty: "
                       "the From address.", example='"mailto:postmaster@example.org"')
    from_address: str = opt("", "From address and envelope sender of the report mails; "
                            "empty: postmaster@HOSTNAME.",
                            example='"tls-reports-noreply@example.org"')
    report_addresses: list[str] = opt(
        [], "Local addresses whose incoming mail is read as TLS reports (RFC 8460 §5.3; "
        "gzip or JSON, with size limits) and stored under DATA_DIR/tlsrpt/incoming; the mail "
        "is delivered as usual. `mxd tlsrpt list|show` and GET /api/tlsrpt/reports show "
        "them. Name such an address in the rua= of `_smtp._tls.<your domain>` (needs "
        "[msgauth] inbound_checks).", example='["tls-reports@example.org"]')
    host_address: str = opt(
        "", "HostTLSRPT: the address receiving TLS reports about this server's own host "
        "name (the DANE policy of `hostname`, RFC 8460 §3 at `_smtp._tls.<hostname>`); "
        "read as reports like report_addresses, and suggested by `mxd dns records`. A bare "
        "local part means LOCAL@<first local domain>.", example='"tls-reports@example.org"')


@attrs.frozen
class DNSRecordsConfig:
    public_ips: list[str] = opt([], "This server's public IP addresses: A/AAAA of the host "
                                "name, SPF, reverse DNS. `mxd dns check` compares DNS with "
                                "them.", check=_address_check, example='["192.0.2.10"]')
    dmarc_policy: str = opt("reject", "DMARC policy suggested for each domain (RFC 7489 §6.3).",
                            choices=DMARC_POLICIES)
    dmarc_rua: str = opt("dmarc-reports", "Local part (at each domain) receiving DMARC "
                         "aggregate reports.")
    tlsrpt_rua: str = opt("tls-reports", "Local part (at each domain) receiving TLS reports "
                          "(RFC 8460).")


@attrs.frozen
class LogConfig:
    level: str = opt("info", "Lowest level written.", choices=LOG_LEVELS)
    format: str = opt("logfmt", "Output format.", choices=("logfmt", "json"))
    levels: dict[str, str] = opt({}, "Per-namespace levels, e.g. { \"mxd.smtp\" = \"debug\" }.")


@attrs.frozen
class AdminConfig:
    password_file: Path | None = opt(None, "File with the admin web password's scrypt hash, "
                                     "mode 0600 (default: <data_dir>/admin-password). Set it "
                                     "with `mxd admin password`.")
    hosts: list[str] = opt([], "Host names the admin web answers to besides `hostname` "
                           "(and 127.0.0.1/localhost on a loopback listener); requests "
                           "naming any other Host are refused (DNS rebinding).",
                           example='["admin.example.org"]')
    session_lifetime: float = opt(8 * 3600.0, "Seconds an admin login lasts at most.")
    session_idle: float = opt(1800.0, "Seconds without a request after which an admin "
                              "session ends.")


@attrs.frozen
class WebmailConfig:
    hosts: list[str] = opt([], "Host names the webmail answers to besides `hostname` (and "
                           "127.0.0.1/localhost on a loopback listener); requests naming any "
                           "other Host are refused (DNS rebinding).",
                           example='["webmail.example.org"]')
    session_lifetime: float = opt(12 * 3600.0, "Seconds a webmail login lasts at most.")
    session_idle: float = opt(3600.0, "Seconds without a request after which a webmail "
                              "session ends.")
    max_sessions: int = opt(1024, "Webmail sessions kept at once (the least recently used "
                            "ends first).", check=lambda v: None if v > 0 else
                            f"must be positive, got {v}")
    page_size: int = opt(50, "Messages per page of a message list.",
                         check=lambda v: None if 0 < v <= 500 else
                         f"expected 1 to 500, got {v}")
    max_upload: int = opt(
        25 * 1024 * 1024, "Largest upload the compose page accepts, in octets: the text and "
        "the attached files together as the browser sends them (a larger request is refused "
        "with 413 before it is read). The message built from it, the files in base64, must "
        "also fit `[smtp] max_message_size`.",
        check=lambda v: None if v > 0 else f"must be positive, got {v}")


@attrs.frozen
class MetricsConfig:
    enabled: bool = opt(False, "Serve Prometheus metrics at /metrics on the admin listener "
                        "(needs the `metrics` extra: prometheus-client).")


@attrs.frozen
class Config:
    hostname: str = req("This server's host name: greeting, Received headers, HELO.",
                        example='"mail.example.org"')
    data_dir: Path = req("Directory for the database and message files.",
                         example='"/var/lib/mxd"')
    tls: TLSCertConfig = opt(TLSCertConfig(), "Default certificate for every TLS listener.")
    listeners: list[ListenerConfig] = opt([], "Sockets to listen on.")
    domains: DomainsConfig = opt(DomainsConfig(), "Local domains.")
    store: StoreConfig = opt(StoreConfig(), "Mail storage.")
    accounts: list[AccountConfig] = opt([], "Accounts created at start-up if missing, with "
                                        "their addresses (accounts may also be added with "
                                        "`mxd account add`).")
    auth: AuthConfig = opt(AuthConfig(), "Authentication.")
    directory: DirectoryConfig = opt(DirectoryConfig(), "Account directory.")
    ldap: LDAPConfig = opt(LDAPConfig(), "LDAP account directory (with "
                           "[directory] backend = \"ldap\").")
    resolver: ResolverConfig = opt(ResolverConfig(), "DNS resolver.")
    smtp: SMTPConfig = opt(SMTPConfig(), "SMTP server limits.")
    imap: IMAPConfig = opt(IMAPConfig(), "IMAP server limits.")
    server: ServerConfig = opt(ServerConfig(), "Processes: worker processes on this "
                               "machine.")
    queue: QueueConfig = opt(QueueConfig(), "Outbound queue.")
    outbound: OutboundConfig = opt(OutboundConfig(), "Transport security of outbound delivery.")
    dkim: DKIMConfig = opt(DKIMConfig(), "DKIM signing of outgoing mail (RFC 6376).")
    msgauth: MsgAuthConfig = opt(MsgAuthConfig(), "Message authentication of incoming mail "
                                 "(SPF, DKIM, DMARC, iprev; RFC 8601 Authentication-Results).")
    acme: ACMEConfig = opt(ACMEConfig(), "ACME certificates.")
    mta_sts: MTASTSConfig = opt(MTASTSConfig(), "MTA-STS policy served for our domains.")
    tlsrpt: TLSRPTConfig = opt(TLSRPTConfig(), "SMTP TLS reports we send (RFC 8460).")
    dns: DNSRecordsConfig = opt(DNSRecordsConfig(), "What `mxd dns records` suggests and "
                                "`mxd dns check` expects.")
    log: LogConfig = opt(LogConfig(), "Logging.")
    metrics: MetricsConfig = opt(MetricsConfig(), "Metrics.")
    admin: AdminConfig = opt(AdminConfig(), "The admin web interface.")
    webmail: WebmailConfig = opt(WebmailConfig(), "The accounts' web client (served by "
                                 "`webmail` listeners).")
    forward: list[ForwardConfig] = opt(
        [], "Forwarding (`[[forward]]`): mail to a local address is sent on to other "
        "addresses, with an SRS envelope sender and an ARC set sealed with the forwarding "
        "domain's RSA DKIM key ([dkim].selectors) when it has one.")
    forwarding: ForwardingConfig = opt(ForwardingConfig(), "Settings of forwarding.")
    transports: dict[str, TransportConfig] = opt(
        {}, "Named ways to deliver outbound mail (`[transports.NAME]`); routes pick one.")
    routes: list[RouteConfig] = opt([], "Global routes, checked on every delivery attempt "
                                    "after account and domain routes; the first match "
                                    "wins; no match: direct delivery.")
    # Where the file was read from; not a config key.
    source: str = attrs.field(default="<config>", metadata={"internal": True})

    @property
    def dkim_key_dir(self) -> Path:
        """Where DKIM keys are kept: ``[dkim].key_dir`` or DATA_DIR/dkim."""
        return self.dkim.key_dir or self.data_dir / "dkim"

    def tls_for(self, listener: ListenerConfig) -> tuple[Path | None, Path | None]:
        return (listener.cert or self.tls.cert, listener.key or self.tls.key)


# --- generic loader -------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is Path:
        return "a file path string"
    if origin is list:
        return "an array"
    if origin is dict:
        return "a table"
    if attrs.has(tp):
        return "a table"
    return str(tp)


def _convert(tp: Any, value: Any, src: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, src, key)
    if attrs.has(tp):
        if not isinstance(value, dict):
            raise ConfigError(src, key, f"expected a table, got {_show(value)}")
        return _build(tp, value, src, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(src, key, f"expected an array, got {_show(value)}")
        return [_convert(item_tp, v, src, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(src, key, f"expected a table, got {_show(value)}")
        return {k: _convert(val_tp, v, src, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(src, key, f"expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(src, key, f"expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(src, key, f"expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(src, key, f"expected a string, got {_show(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(src, key, f"expected a file path string, got {_show(value)}")
        return Path(value)
    raise ConfigError(src, key, f"unsupported type {tp}")  # pragma: no cover


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _build(cls: type, data: dict[str, Any], src: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for k in data:
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(src, _join(prefix, k), f"unknown key (known keys here: {known})")
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is attrs.NOTHING:
                raise ConfigError(src, key, "required key is missing")
            continue
        value = _convert(hints[name], data[name], src, key)
        choices = f.metadata.get("choices")
        if choices and value is not None:
            for v in value if isinstance(value, list) else [value]:
                if v not in choices:
                    raise ConfigError(src, key, f"{_show(v)} is not one of {', '.join(choices)}")
        check = f.metadata.get("check")
        if check is not None:
            for v in value if isinstance(value, list) else [value]:
                problem = check(v)
                if problem:
                    raise ConfigError(src, key, problem)
        kwargs[name] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Make relative paths in the config relative to the config file's directory."""

    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return base / p

    return attrs.evolve(
        cfg,
        data_dir=cfg.data_dir if cfg.data_dir.is_absolute() else base / cfg.data_dir,
        tls=attrs.evolve(cfg.tls, cert=fix(cfg.tls.cert), key=fix(cfg.tls.key),
                         host_keys=[base / p if not p.is_absolute() else p
                                    for p in cfg.tls.host_keys]),
        acme=attrs.evolve(cfg.acme, ca_file=fix(cfg.acme.ca_file)),
        outbound=attrs.evolve(cfg.outbound, ca_file=fix(cfg.outbound.ca_file)),
        dkim=attrs.evolve(cfg.dkim, key_dir=fix(cfg.dkim.key_dir)),
        forwarding=attrs.evolve(cfg.forwarding,
                                srs_secret_file=fix(cfg.forwarding.srs_secret_file)),
        store=attrs.evolve(cfg.store, blob_dir=fix(cfg.store.blob_dir)),
        admin=attrs.evolve(cfg.admin, password_file=fix(cfg.admin.password_file)),
        ldap=attrs.evolve(cfg.ldap, ca_file=fix(cfg.ldap.ca_file),
                          bind_password_file=fix(cfg.ldap.bind_password_file)),
        listeners=[attrs.evolve(li, cert=fix(li.cert), key=fix(li.key)) for li in cfg.listeners],
        transports={name: attrs.evolve(t, password_file=fix(t.password_file),
                                       proxy_password_file=fix(t.proxy_password_file))
                    for name, t in cfg.transports.items()},
    )


def _validate_sweep(cfg: Config) -> None:
    """The orphan sweep (mxd.store.orphans) must never take a body still in use."""
    st = cfg.store
    longest = max(cfg.smtp.data_timeout, cfg.smtp.command_timeout, cfg.imap.idle_timeout)
    if st.orphan_min_age <= longest:
        raise ConfigError(cfg.source, "store.orphan_min_age",
                          f"{st.orphan_min_age:g} s would let a sweep remove a body still "
                          f"being written: it must exceed the longest transfer timeout "
                          f"({longest:g} s, [smtp] data_timeout/command_timeout, [imap] "
                          "idle_timeout)")
    if st.orphan_hold_off <= st.expunged_body_grace:
        raise ConfigError(cfg.source, "store.orphan_hold_off",
                          f"{st.orphan_hold_off:g} s would let a sweep remove a body that a "
                          f"node still keeps: it must exceed expunged_body_grace "
                          f"({st.expunged_body_grace:g} s)")


def _validate(cfg: Config) -> None:
    src = cfg.source
    seen: dict[tuple[str, int], int] = {}
    for i, li in enumerate(cfg.listeners):
        key = f"listeners[{i}]"
        if (li.address, li.port) in seen and li.port != 0:
            raise ConfigError(src, f"{key}.port", f"{li.address}:{li.port} is already used by "
                              f"listeners[{seen[(li.address, li.port)]}]")
        seen[(li.address, li.port)] = i
        admin_tls = (li.protocol in WEB_UI_PROTOCOLS
                     and not ipaddress.ip_address(li.address).is_loopback)
        if li.protocol not in (*WEB_UI_PROTOCOLS, "http") or admin_tls:
            cert, keyf = cfg.tls_for(li)
            # smtp offers STARTTLS; submission/imap require it before auth
            if (cert is None or keyf is None) and not cfg.tls.host_keys:
                what = (f"an {li.protocol} listener off loopback" if admin_tls else
                        f"protocol {li.protocol}")
                raise ConfigError(src, key, f"{what} needs a certificate: set "
                                  "[tls].host_keys, or [tls].cert and [tls].key, or cert/key "
                                  "on the listener")
            for what, p in (("cert", cert), ("key", keyf)):
                if p is not None and not p.is_file():
                    k = f"{key}.{what}" if getattr(li, what) else f"tls.{what}"
                    raise ConfigError(src, k, f"file not found: {p}")
    from mxd.config_golive import validate_golive

    validate_golive(cfg)
    if cfg.outbound.ca_file is not None and not cfg.outbound.ca_file.is_file():
        raise ConfigError(src, "outbound.ca_file", f"file not found: {cfg.outbound.ca_file}")
    names = set()
    for i, d in enumerate(cfg.domains.names):
        try:
            names.add(normalise_domain(d))
        except ValueError as e:
            raise ConfigError(src, f"domains.names[{i}]", str(e)) from None
    for d in cfg.domains.catchall:
        try:
            nd = normalise_domain(d)
        except ValueError as e:
            raise ConfigError(src, f"domains.catchall.{d}", str(e)) from None
        if nd not in names:
            raise ConfigError(src, f"domains.catchall.{d}", "not listed in domains.names")
    for i, a in enumerate(cfg.accounts):
        for j, addr in enumerate(a.addresses):
            if "@" not in addr:
                raise ConfigError(src, f"accounts[{i}].addresses[{j}]",
                                  f"expected local@domain, got {_show(addr)}")
            dom = addr.rsplit("@", 1)[1]
            try:
                nd = normalise_domain(dom)
            except ValueError as e:
                raise ConfigError(src, f"accounts[{i}].addresses[{j}]", str(e)) from None
            if nd not in names:
                raise ConfigError(src, f"accounts[{i}].addresses[{j}]",
                                  f"domain {dom} is not listed in domains.names")
    for i, ns in enumerate(cfg.resolver.nameservers):
        problem = _nameserver_check(ns)
        if problem:
            raise ConfigError(src, f"resolver.nameservers[{i}]", problem)
    for i, ns in enumerate(cfg.resolver.trusted):
        if ns not in cfg.resolver.nameservers:
            raise ConfigError(src, f"resolver.trusted[{i}]", f"{_show(ns)} is not in "
                              "resolver.nameservers")
    for d in cfg.dkim.selectors:
        try:
            normalise_domain(d)
        except ValueError as e:
            raise ConfigError(src, f"dkim.selectors.{d}", str(e)) from None
    from mxd.config_forward import validate_forward

    validate_forward(cfg, names)
    if cfg.store.backend == "postgresql":
        if not cfg.store.dsn:
            raise ConfigError(src, "store.dsn", 'required with backend = "postgresql"')
        if cfg.store.blob_dir is None:
            raise ConfigError(src, "store.blob_dir", 'required with backend = "postgresql"')
        _validate_sweep(cfg)
    if cfg.directory.backend == "ldap":
        from mxd.config_ldap import validate_ldap

        validate_ldap(cfg)
    for ns, lvl in cfg.log.levels.items():
        if lvl not in LOG_LEVELS:
            raise ConfigError(src, f"log.levels.{ns}", f"{_show(lvl)} is not one of "
                              f"{', '.join(LOG_LEVELS)}")
    from mxd.config_transports import validate_transports

    validate_transports(cfg, names)


def normalise_domain(d: str) -> str:
    """Lower-case A-label form of a domain name (IDNA 2008, UTS 46)."""
    import idna

    d = d.strip().rstrip(".")
    if not d:
        raise ValueError("empty domain name")
    try:
        return idna.encode(d, uts46=True).decode("ascii").lower()
    except idna.IDNAError as e:
        raise ValueError(f"invalid domain name {d!r}: {e}") from None


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Parse TOML text into a Config; raise ConfigError naming ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "", f"not valid TOML: {e}") from None
    cfg = _build(Config, data, source, "")
    cfg = attrs.evolve(cfg, source=source)
    cfg = _resolve_paths(cfg, base or Path.cwd())
    _validate(cfg)
    return cfg


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config file (default ``$MXD_CONFIG`` or ``etc/mxd.toml``)."""
    p = Path(path or os.environ.get("MXD_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), "", "config file not found (use --config PATH or "
                          "set MXD_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "", f"cannot read: {e}") from None
    return parse_config(text, str(p), p.resolve().parent)


# --- reference documentation from the schema -----------------------------------------

def schema_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any]]:
    """Every key path of the schema with its attrs field, depth first."""
    out: list[tuple[str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in attrs.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = _join(prefix, f.name)
        out.append((key, f))
        tp = hints[f.name]
        if typing.get_origin(tp) is list and attrs.has(typing.get_args(tp)[0]):
            out.extend(schema_keys(typing.get_args(tp)[0], key + "[]"))
        elif attrs.has(tp):
            out.extend(schema_keys(tp, key))
        elif typing.get_origin(tp) is dict:
            # ``[transports.NAME]``, ``[[domains.routes."DOMAIN"]]``: NAME stands for any key
            val = typing.get_args(tp)[1]
            if attrs.has(val):
                out.extend(schema_keys(val, key + ".NAME"))
            elif typing.get_origin(val) is list and attrs.has(typing.get_args(val)[0]):
                out.extend(schema_keys(typing.get_args(val)[0], key + ".NAME[]"))
    return out


def reference_markdown() -> str:
    """The configuration reference, generated from the schema."""
    lines = ["# mxd configuration reference", "",
             "Generated from `mxd/config.py` by `mxd config reference`; every key of the TOML "
             "file is listed here. `etc/mxd.toml.example` shows them all in use.", ""]
    hints_cache: dict[str, Any] = {}
    for key, f in schema_keys():
        _ = hints_cache
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if attrs.has(type(default)):
            lines += ["", f"## [{key}]", "", f.metadata["doc"], ""]
            continue
        if isinstance(default, list) and default == [] and key in ("listeners", "accounts",
                                                                    "routes"):
            lines += ["", f"## [[{key}]]", "", f.metadata["doc"], ""]
            continue
        if key == "transports":
            lines += ["", "## [transports.NAME]", "", f"`transports`: {f.metadata['doc']}", ""]
            continue
        d = "required" if default is attrs.NOTHING else f"default `{_toml_value(default)}`"
        choices = f.metadata.get("choices")
        ch = f"; one of {', '.join(f'`{c}`' for c in choices)}" if choices else ""
        lines.append(f"- `{key}` ({d}{ch}): {f.metadata['doc']}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)
