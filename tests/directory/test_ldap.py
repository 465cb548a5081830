"""LDAPDirectory over a fake client: recipient rules, cache, failures, logins, the SASL
server with directory secrets, and the read-only administration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from mxd.directory.authpassword import derive_values
from mxd.directory.ldap import (
    IncompleteListing,
    LDAPDirectory,
    LDAPSecrets,
    LDAPSettings,
    ReadOnlyDirectory,
    entry_to_account,
)
from mxd.directory.ldapclient import AmbiguousEntry, LDAPUnavailable, RawEntry
from mxd.directory.ldapfilter import escape_value
from mxd.directory.local import DirectorySettings
from mxd.sasl.api import ConnectionInfo, Success
from mxd.sasl.api import Failure as SASLFailure
from mxd.sasl.credentials import CredentialsUnavailable
from mxd.sasl.ratelimit import AuthLimiter
from mxd.sasl.server import SASLServer, SASLSettings
from tests.store.helpers import StoreHarness, open_store

LIST = "(objectClass=inetOrgPerson)"
SETTINGS = LDAPSettings(base_dn="ou=people,dc=example,dc=test", list_filter=LIST,
                        group_filter="(&(cn=mail)(member=%D))", quota_attribute="mailQuota",
                        cache_ttl=60.0, negative_cache_ttl=10.0)
DIRSET = DirectorySettings(domains=("example.test",), catchall={}, postmaster="alice",
                           scrypt_n=2**10)


def person(uid: str, mails: Sequence[str], aliases: Sequence[str] = (),
           **extra: list[str]) -> RawEntry:
    attrs = {"uid": [uid], "mail": list(mails), "maillocaladdress": list(aliases)}
    attrs.update({k.lower(): v for k, v in extra.items()})
    return RawEntry(f"uid={uid},ou=people,dc=example,dc=test", attrs)


class FakeClient:
    """Matches an entry when one of its uid/mail/alias values appears, escaped, as an
    assertion value of the filter; groups by DN; counts searches; can be "down"."""

    def __init__(self, entries: list[RawEntry], members: set[str],
                 passwords: dict[str, str]) -> None:
        self.entries = entries
        self.members = members
        self.passwords = passwords
        self.filters: list[str] = []
        self.binds: list[str] = []
        self.down = False
        self.list_limit: int | None = None

    def search(self, base: str, f: str, attributes: Sequence[str],
               limit: int = 0) -> tuple[list[RawEntry], bool]:
        self.filters.append(f)
        if self.down:
            raise LDAPUnavailable("no LDAP server available")
        if "member=" in f:
            hits = [RawEntry("cn=mail")] if any(f"member={escape_value(m)})" in f
                                                for m in self.members) else []
        elif f == LIST:
            hits = list(self.entries)
            if self.list_limit is not None and len(hits) > self.list_limit:
                return hits[:self.list_limit], True
        else:
            low = f.lower()
            hits = [e for e in self.entries if any(
                f"={escape_value(v).lower()})" in low
                for k in ("uid", "mail", "maillocaladdress") for v in e.attributes.get(k, []))]
        return (hits[:limit] if limit else hits), bool(limit and len(hits) > limit)

    def search_one(self, base: str, f: str, attributes: Sequence[str]) -> RawEntry | None:
        entries, truncated = self.search(base, f, attributes, limit=2)
        if len(entries) > 1 or truncated:
            raise AmbiguousEntry("several")
        return entries[0] if entries else None

    def check_password(self, dn: str, password: str) -> bool:
        self.binds.append(dn)
        if self.down:
            raise LDAPUnavailable("down")
        return bool(password) and self.passwords.get(dn) == password


@pytest.fixture
def h(data_dir: Path) -> Iterator[StoreHarness]:
    harness = open_store(data_dir, inline=True)
    yield harness
    harness.close()


def make(h: StoreHarness, entries: list[RawEntry] | None = None,
         settings: LDAPSettings = SETTINGS) -> tuple[LDAPDirectory, FakeClient, task.Clock]:
    entries = entries if entries is not None else [
        person("alice", ["Alice@Example.test"], ["sales@example.test"], mailquota=["1000"]),
        person("carol", ["carol@example.test"], authpassword=derive_values("carol-pw", 4096)),
        person("dave", ["dave@example.test"]),
    ]
    members = {e.dn for e in entries if e.attributes["uid"][0] in ("alice", "carol")}
    client = FakeClient(entries, members, {e.dn: e.attributes["uid"][0] + "-pw" for e in entries})
    clock = task.Clock()
    d = LDAPDirectory(client, settings, DIRSET, h.store, clock, maybeDeferred)  # type: ignore[arg-type]
    return d, client, clock


def failure_of(d: Any) -> Failure:
    box: list[Failure] = []
    d.addErrback(box.append)
    assert box, "expected an errback"
    return box[0]


@pytest.mark.parametrize("address, account", [
    ("alice@example.test", "alice"),
    ("ALICE@example.TEST", "alice"),
    ("sales@example.test", "alice"),
    ("sales+news@example.test", "alice"),
    ("carol@example.test", "carol"),
    ("postmaster@example.test", "alice"),
    ("nobody@example.test", None),
    ("alice@elsewhere.example", None),
    ("not an address", None),
])
def test_recipients_follow_the_local_rules(h: StoreHarness, address: str,
                                           account: str | None) -> None:
    """Exact address, alias, sub-address, postmaster, unknown, foreign domain."""
    d, _, _ = make(h)
    acct = h.run(d.resolve_recipient(address))
    assert (acct.name if acct else None) == account


def test_recipient_gets_a_store_account_once_with_ldap_addresses(h: StoreHarness) -> None:
    """The store row is created on first use and reused; addresses come from LDAP, the
    quota from the quota attribute."""
    d, _, _ = make(h)
    a1 = h.run(d.resolve_recipient("alice@example.test"))
    a2 = h.run(d.resolve_recipient("sales@example.test"))
    assert a1.id == a2.id and a1.addresses == ("alice@example.test", "sales@example.test")
    assert [a.name for a in h.run(h.store.list_accounts())] == ["alice"]
    assert h.run(h.store.get_usage(a1.id)) == (0, 1000)


def test_cache_positive_and_negative_ttl(h: StoreHarness) -> None:
    """Answers are reused until their TTL passes (60 s found, 10 s not found)."""
    d, client, clock = make(h)
    h.run(d.resolve_recipient("carol@example.test"))
    h.run(d.resolve_recipient("nobody@example.test"))
    n = len(client.filters)
    h.run(d.resolve_recipient("carol@example.test"))
    h.run(d.resolve_recipient("nobody@example.test"))
    assert len(client.filters) == n and d.cache_hits == 2
    clock.advance(11)
    h.run(d.resolve_recipient("carol@example.test"))
    assert len(client.filters) == n
    h.run(d.resolve_recipient("nobody@example.test"))
    assert len(client.filters) == n + 1
    clock.advance(60)
    h.run(d.resolve_recipient("carol@example.test"))
    assert len(client.filters) == n + 2


def test_directory_down_is_an_error_not_an_unknown_user(h: StoreHarness) -> None:
    """With LDAP down resolve_recipient and lookup_secrets errback with LDAPUnavailable
    (SMTP: 451 4.4.3; SASL: temporary), and nothing is cached; once up, it works."""
    d, client, _ = make(h)
    client.down = True
    failure_of(d.resolve_recipient("carol@example.test")).trap(LDAPUnavailable)
    failure_of(d.lookup_secrets("carol")).trap(LDAPUnavailable)
    client.down = False
    assert h.run(d.resolve_recipient("carol@example.test")).name == "carol"


def test_several_entries_for_an_address_or_login(h: StoreHarness) -> None:
    """Two entries with one address: RCPT fails temporarily (AmbiguousEntry, logged);
    a login matching two entries is refused (None)."""
    entries = [person("x1", ["dup@example.test"]), person("x2", ["dup@example.test"])]
    d, _, _ = make(h, entries)
    failure_of(d.resolve_recipient("dup@example.test")).trap(AmbiguousEntry)
    assert h.run(d.lookup_secrets("dup@example.test")) is None


def test_login_secrets_group_and_canonical_name(h: StoreHarness) -> None:
    """A login by address gives the account's own name and its RFC 5803 secrets; dave,
    outside the group, gets None; unknown logins get None."""
    d, _, _ = make(h)
    s = h.run(d.lookup_secrets("carol@example.test"))
    assert isinstance(s, LDAPSecrets) and s.account == "carol"
    assert set(s.scram) == {"SHA-1", "SHA-256"} and s.cram_md5 is None
    assert s.verify_password("carol-pw") and not s.verify_password("nope")
    assert not s.verify_password("")
    assert h.run(d.lookup_secrets("dave")) is None
    assert h.run(d.lookup_secrets("nobody")) is None
    assert h.run(h.store.get_account("carol")) is not None


def test_verify_password_while_down_is_credentials_unavailable(h: StoreHarness) -> None:
    """A bind that cannot be made raises CredentialsUnavailable, not False."""
    d, client, _ = make(h)
    s = h.run(d.lookup_secrets("alice"))
    client.down = True
    with pytest.raises(CredentialsUnavailable):
        s.verify_password("alice-pw")


def _sasl(d: LDAPDirectory, clock: task.Clock) -> SASLServer:
    st = SASLSettings(fake_salt_key=b"k" * 32, fake_scrypt_n=2**10)
    return SASLServer(d.lookup_secrets, st, AuthLimiter(clock), clock, "mx.example.test",
                      dummy_verify=d.dummy_verify)


CONN = ConnectionInfo("192.0.2.1", tls=True)


def test_sasl_password_login_names_the_account(h: StoreHarness) -> None:
    """IMAP LOGIN with an address succeeds as the account's name (its mailbox owner)."""
    d, _, clock = make(h)
    out = h.run(_sasl(d, clock).check_password("Alice@Example.test", "alice-pw", CONN))
    assert isinstance(out, Success) and out.authcid == "alice"


def test_sasl_password_login_while_down_fails_temporarily(h: StoreHarness) -> None:
    """The entry is cached but the bind cannot be made: temporary failure, not counted
    as a wrong password."""
    d, client, clock = make(h)
    server = _sasl(d, clock)
    h.run(d.lookup_secrets("alice"))
    client.down = True
    out = h.run(server.check_password("alice", "alice-pw", CONN))
    assert isinstance(out, SASLFailure) and out.temporary
    client.down = False
    assert isinstance(h.run(server.check_password("alice", "wrong", CONN)), SASLFailure)
    assert isinstance(h.run(server.check_password("alice", "alice-pw", CONN)), Success)


def test_may_send_as_uses_ldap_addresses(h: StoreHarness) -> None:
    """An account may send as its mail and alias addresses (and their +tags), not others'."""
    d, _, _ = make(h)
    assert h.run(d.may_send_as("alice", "sales+x@example.test"))
    assert h.run(d.may_send_as("alice", "ALICE@example.test"))
    assert not h.run(d.may_send_as("alice", "carol@example.test"))
    assert not h.run(d.may_send_as("ghost", "alice@example.test"))


def test_entry_values_that_cannot_be_used_are_skipped() -> None:
    """Bad addresses, a bad quota and bad SCRAM values are skipped; no name: no account."""
    e = person("eve", ["eve@example.test", "not-an-address", "x@" + "a" * 300],
               mailquota=["lots"], authpassword=["SCRAM-SHA-256$bad", "MD5$x$y"])
    acct = entry_to_account(e, SETTINGS)
    assert acct is not None
    assert acct.addresses == ("eve@example.test",) and acct.quota is None and not acct.scram
    assert entry_to_account(RawEntry("cn=x", {"mail": ["a@b.c"]}), SETTINGS) is None


def test_read_only_and_orphans(h: StoreHarness) -> None:
    """Password and address changes are refused; an account gone from LDAP is an orphan
    whose mail an admin may then delete (but not while it is in LDAP)."""
    d, client, clock = make(h)
    failure_of(d.set_password("alice", "x")).trap(ReadOnlyDirectory)
    failure_of(d.add_account("bob", "x")).trap(ReadOnlyDirectory)
    h.run(d.resolve_recipient("dave@example.test"))
    h.run(d.resolve_recipient("alice@example.test"))
    client.entries = [e for e in client.entries if e.attributes["uid"] != ["dave"]]
    clock.advance(61)
    assert [a.name for a in h.run(d.orphans())] == ["dave"]
    failure_of(d.delete_account("alice")).trap(ReadOnlyDirectory)
    h.run(d.delete_account("dave"))
    assert h.run(d.orphans()) == []


def test_unknown_login_costs_a_bind_like_a_known_one(h: StoreHarness) -> None:
    """PLAIN for an unknown login (and for one outside the group) binds once as a DN that
    does not exist, as a known login binds once as its own DN; both fail the same way."""
    d, client, clock = make(h)
    server = _sasl(d, clock)
    out = h.run(server.check_password("nobody", "whatever-1", CONN))
    assert isinstance(out, SASLFailure) and not out.temporary
    assert len(client.binds) == 1 and "mxd-no-such-account-" in client.binds[0]
    assert client.binds[0].endswith("," + SETTINGS.base_dn)
    h.run(server.check_password("alice", "wrong-pw", CONN))
    assert client.binds[1] == "uid=alice,ou=people,dc=example,dc=test"
    h.run(server.check_password("dave", "dave-pw", CONN))
    assert len(client.binds) == 3 and "mxd-no-such-account-" in client.binds[2]


def test_login_spellings_share_one_cache_entry_and_key(h: StoreHarness) -> None:
    """Every spelling of a login (ASCII case, IDNA domain) is one key, for the SASL
    limiter and fake salts as for this directory's cache: one search serves them all."""
    d, client, _ = make(h)
    h.run(d.lookup_secrets("Carol@Example.TEST"))
    n = len(client.filters)
    h.run(d.lookup_secrets("carol@example.test"))
    h.run(d.lookup_secrets("CAROL@example.test"))
    assert len(client.filters) == n
    assert d.login_key("Nobody@EXAMPLE.test") == d.login_key("nobody@example.test")


def test_truncated_listing_finds_no_orphans(h: StoreHarness) -> None:
    """When the directory's size limit cuts the listing short, orphans (and the account
    list) fail instead of calling present accounts orphans."""
    d, client, _ = make(h)
    h.run(d.resolve_recipient("carol@example.test"))
    client.list_limit = 1
    failure_of(d.orphans()).trap(IncompleteListing)
    failure_of(d.list_accounts()).trap(IncompleteListing)


def test_huge_name_is_not_an_account() -> None:
    """An entry whose account name is longer than 256 octets is ignored (logged)."""
    assert entry_to_account(person("x" * 300, ["x@example.test"]), SETTINGS) is None


def test_postmaster_without_configured_account_goes_to_first_account(
        h: StoreHarness) -> None:
    """RFC 5321 §4.5.1: without [domains] postmaster (and no entry with the address),
    postmaster@ still reaches someone: the first account by name, as locally."""
    client_settings = DirectorySettings(domains=("example.test",), postmaster=None)
    d, client, clock = make(h)
    d.directory = client_settings
    client.entries = list(reversed(client.entries))  # dave first in the answer
    acct = h.run(d.resolve_recipient("Postmaster@example.test"))
    assert acct is not None and acct.name == "alice"
