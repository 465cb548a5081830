"""Accounts from an LDAP directory: recipients, sender addresses and SASL secrets.

``LDAPDirectory`` answers the same questions as ``LocalDirectory`` (``resolve_recipient``,
``is_local_domain``, ``may_send_as``, ``lookup_secrets``) from LDAP entries, through
``mxd.directory.ldapclient`` on a bounded pool of worker threads (ldap3 is synchronous;
nothing blocks the reactor thread).

* **Recipients** resolve with the local directory's rules (configured domains, exact
  address, address without its sub-address tag, postmaster, catch-all), each address
  looked up with ``address_filter`` (values escaped per RFC 4515).  When the directory
  cannot be asked the Deferred errbacks with ``LDAPUnavailable``: SMTP answers
  451 4.4.3 (RFC 3463 "directory server failure"), never "no such user".
* **Logins** find the entry with ``user_filter`` (service bind), optionally require a
  match of ``group_filter``, and then: PLAIN/LOGIN bind as the entry's DN with the
  password (RFC 4513 §5.1.3), so password policies stay in the directory; SCRAM uses the
  RFC 5803 values of ``scram_attribute`` — an account without them cannot use SCRAM
  (nothing is ever stored in plaintext).  CRAM-MD5 is not available with LDAP.
* **Mailboxes** stay in mxd's store under the account name (``name_attribute``); the
  store's account row is created the first time an account receives mail or logs in.
  An account deleted from LDAP keeps its mail until an admin deletes it (``orphans``).
* A short cache (``cache_ttl``, ``negative_cache_ttl``) keeps entries found, by login
  name, address and account name; password checks always go to the directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxd.directory.addresses import (
    InvalidAddress,
    base_address,
    login_key,
    lower_ascii,
    normalize_address,
    normalize_domain,
)
from mxd.directory.authpassword import parse_values
from mxd.directory.ldapclient import (
    AmbiguousEntry,
    LDAPClient,
    LDAPUnavailable,
    RawEntry,
)
from mxd.directory.ldapfilter import escape_value, group_filter, name_filter
from mxd.directory.local import DirectoryError, DirectorySettings
from mxd.metrics import IMetrics, NoopMetrics
from mxd.sasl.credentials import CramMD5Secret, CredentialsUnavailable, ScramSecret
from mxd.store.interfaces import Account, AccountExists

T = TypeVar("T")
log = Logger(namespace="mxd.directory.ldap")

MAX_NAME = 256  # octets of an account name taken from the directory
MAX_VALUES = 1000  # addresses per entry considered


class IncompleteListing(DirectoryError):
    """The directory cut a listing short (size limit): no conclusions from it."""


class ReadOnlyDirectory(DirectoryError):
    """Accounts come from LDAP: change them in the directory, not with mxd."""


@attrs.frozen
class LDAPSettings:
    """What the LDAP directory searches for (mapped from the ``[ldap]`` config)."""

    base_dn: str
    user_filter: str = "(&(objectClass=inetOrgPerson)(|(uid=%s)(mail=%s)(mailLocalAddress=%s)))"
    address_filter: str = "(&(objectClass=inetOrgPerson)(|(mail=%s)(mailLocalAddress=%s)))"
    list_filter: str = "(objectClass=inetOrgPerson)"
    group_filter: str = ""
    group_base_dn: str = ""
    name_attribute: str = "uid"
    mail_attributes: tuple[str, ...] = ("mail",)
    alias_attributes: tuple[str, ...] = ("mailLocalAddress",)
    quota_attribute: str = ""
    scram_attribute: str = "authPassword"
    cache_ttl: float = 60.0
    negative_cache_ttl: float = 10.0
    cache_entries: int = 10000

    @property
    def attributes(self) -> list[str]:
        names = [self.name_attribute, *self.mail_attributes, *self.alias_attributes,
                 self.scram_attribute]
        if self.quota_attribute:
            names.append(self.quota_attribute)
        return list(dict.fromkeys(names))


@attrs.frozen
class LDAPAccount:
    """An LDAP entry in mxd's terms."""

    dn: str
    name: str
    addresses: tuple[str, ...]  # normalised; mail attributes first, then aliases
    quota: int | None = None
    scram: Mapping[str, ScramSecret] = attrs.field(factory=dict, hash=False)
    may_login: bool = True


@attrs.frozen
class LDAPSecrets:
    """``AccountSecrets`` of an LDAP account: SCRAM from RFC 5803 values, passwords
    checked by binding as the entry."""

    account: str
    dn: str
    scram: Mapping[str, ScramSecret]
    check: Callable[[str, str], bool] = attrs.field(repr=False)
    cram_md5: CramMD5Secret | None = None

    def verify_password(self, password: str) -> bool:
        """Blocking: a bind as ``dn``.  CredentialsUnavailable when LDAP is down."""
        try:
            return self.check(self.dn, password)
        except LDAPUnavailable as e:
            raise CredentialsUnavailable(str(e)) from e


def entry_to_account(entry: RawEntry, settings: LDAPSettings) -> LDAPAccount | None:
    """An LDAPAccount from a search result; None (logged) when the entry has no usable
    account name.  Unusable addresses and SCRAM values are skipped with a log line."""
    a = entry.attributes
    names = a.get(settings.name_attribute.lower()) or []
    if not names or not names[0] or len(names[0].encode()) > MAX_NAME:
        log.error("LDAP entry {dn} has no usable {attribute}: ignored", dn=entry.dn,
                  attribute=settings.name_attribute)
        return None
    addresses: list[str] = []
    for attr in (*settings.mail_attributes, *settings.alias_attributes):
        for value in (a.get(attr.lower()) or [])[:MAX_VALUES]:
            try:
                norm = normalize_address(value)
            except InvalidAddress as e:
                log.warn("LDAP entry {dn}: {attribute} value skipped: {error}", dn=entry.dn,
                         attribute=attr, error=str(e))
                continue
            if norm not in addresses:
                addresses.append(norm)
    quota = None
    if settings.quota_attribute:
        raw = (a.get(settings.quota_attribute.lower()) or [""])[0].strip()
        if raw.isdigit() and len(raw) < 20:
            quota = int(raw) or None
        elif raw:
            log.warn("LDAP entry {dn}: {attribute} is not a number of bytes: ignored",
                     dn=entry.dn, attribute=settings.quota_attribute)
    scram, problems = parse_values(a.get(settings.scram_attribute.lower()) or [])
    for p in problems:
        log.warn("LDAP entry {dn}: a {attribute} value is unusable: {problem}", dn=entry.dn,
                 attribute=settings.scram_attribute, problem=p)
    return LDAPAccount(entry.dn, names[0], tuple(addresses), quota, scram)


class LDAPDirectory:
    """The LDAP ``IDirectory`` and ``lookup_secrets`` (see the module docstring).

    Metrics: ``ldap_cache_total{result=hit|miss,kind=login|address|name}``.

    ``client`` is a blocking ``LDAPClient``; ``run_in_thread(fn)`` runs its calls off the
    reactor thread (``in_threadpool`` over a bounded pool that the caller starts and
    stops).  ``store`` keeps the mailboxes (``IAccountStore``); ``clock`` (``seconds()``)
    times the cache.
    """

    def __init__(self, client: LDAPClient, settings: LDAPSettings,
                 directory: DirectorySettings, store: Any, clock: Any,
                 run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]], *,
                 metrics: IMetrics | None = None) -> None:
        self.client = client
        self.settings = settings
        self.directory = directory
        self.store = store
        self._clock = clock
        self._run = run_in_thread
        self._metrics: IMetrics = metrics if metrics is not None else NoopMetrics()
        self._domains = frozenset(directory.domains)
        self._cache: dict[tuple[str, str], tuple[float, LDAPAccount | None]] = {}
        self._store_ids: dict[str, int] = {}
        self._quotas: dict[str, int | None] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self._dummy_name = "mxd-no-such-account-" + os.urandom(8).hex()

    # -- plumbing ------------------------------------------------------------------------

    def _in_thread(self, fn: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = self._run(fn)
        return d

    def _cached(self, kind: str, key: str,
                fetch: Callable[[], LDAPAccount | None]) -> Deferred[LDAPAccount | None]:
        now = self._clock.seconds()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[0] > now:
            self.cache_hits += 1
            self._metrics.inc("ldap_cache_total", result="hit", kind=kind)
            return succeed(hit[1])
        self.cache_misses += 1
        self._metrics.inc("ldap_cache_total", result="miss", kind=kind)

        def remember(acct: LDAPAccount | None) -> LDAPAccount | None:
            ttl = self.settings.cache_ttl if acct is not None else self.settings.negative_cache_ttl
            if ttl > 0:
                if len(self._cache) >= self.settings.cache_entries:
                    self._cache.clear()
                self._cache[(kind, key)] = (self._clock.seconds() + ttl, acct)
            return acct

        return self._in_thread(fetch).addCallback(remember)

    def _search_one(self, search_filter: str, what: str) -> LDAPAccount | None:
        """Blocking: the one account matching, None for none or an unusable entry;
        AmbiguousEntry for several (logged here)."""
        try:
            entry = self.client.search_one(self.settings.base_dn, search_filter,
                                           self.settings.attributes)
        except AmbiguousEntry as e:
            log.error("LDAP: several entries for {what}, refused: {error}", what=what,
                      error=str(e))
            raise
        return entry_to_account(entry, self.settings) if entry is not None else None

    def _by_address(self, address: str) -> Deferred[LDAPAccount | None]:
        f = name_filter(self.settings.address_filter, address)
        return self._cached("address", address, lambda: self._search_one(f, address))

    def _by_name(self, name: str) -> Deferred[LDAPAccount | None]:
        f = self._name_filter(name)

        def fetch() -> LDAPAccount | None:
            acct = self._search_one(f, name)
            # The filter matched the attribute by the server's rules; keep the account
            # only when its name is the one asked for (ASCII case aside).
            if acct is not None and lower_ascii(acct.name) != lower_ascii(name):
                return None
            return acct

        return self._cached("name", lower_ascii(name), fetch)

    def _name_filter(self, name: str) -> str:
        return (f"(&{self.settings.list_filter}"
                f"({self.settings.name_attribute}={escape_value(name)}))")

    def _by_login(self, login: str) -> Deferred[LDAPAccount | None]:
        f = name_filter(self.settings.user_filter, login)

        def fetch() -> LDAPAccount | None:
            try:
                acct = self._search_one(f, login)
            except AmbiguousEntry:
                return None  # refused (logged): a login must name one entry
            if acct is None or not self.settings.group_filter:
                return acct
            gf = group_filter(self.settings.group_filter, login, acct.dn)
            entries, _ = self.client.search(self.settings.group_base_dn or self.settings.base_dn,
                                            gf, ["1.1"], limit=1)
            return attrs.evolve(acct, may_login=bool(entries))

        return self._cached("login", login_key(login), fetch)

    async def _store_account(self, acct: LDAPAccount) -> Account:
        """The store's account row for ``acct`` (created on first use), with the
        directory's addresses; the quota follows the directory's."""
        account_id = self._store_ids.get(acct.name)
        if account_id is None:
            row = await self.store.get_account(acct.name)
            if row is None:
                try:
                    row = await self.store.add_account(acct.name, "", ())
                    log.info("account {account} from LDAP has a mailbox now", account=acct.name)
                except AccountExists:
                    row = await self.store.get_account(acct.name)
            if row is None:
                raise DirectoryError(f"cannot create the store account {acct.name}")
            account_id = self._store_ids[acct.name] = row.id
        if self.settings.quota_attribute and self._quotas.get(acct.name, -1) != acct.quota:
            await self.store.set_quota(acct.name, acct.quota)
            self._quotas[acct.name] = acct.quota
        return Account(account_id, acct.name, acct.addresses)

    # -- IDirectory ------------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        try:
            return normalize_domain(domain) in self._domains
        except InvalidAddress:
            return False

    def resolve_recipient(self, address: str) -> Deferred[Account | None]:
        """The account receiving mail for ``address``, None for an unknown one; errbacks
        with LDAPUnavailable (or AmbiguousEntry) when that cannot be decided now."""
        return ensureDeferred(self._resolve(address))

    async def _resolve(self, address: str) -> Account | None:
        try:
            norm = normalize_address(address)
        except InvalidAddress:
            return None
        local, _, domain = norm.rpartition("@")
        if domain not in self._domains:
            return None
        candidates = [norm]
        base = base_address(norm, self.directory.localpart_separator)
        if base != norm:
            candidates.append(base)
        for candidate in candidates:
            acct = await self._by_address(candidate)
            if acct is not None:
                return await self._store_account(acct)
        fallback = self.directory.catchall.get(domain)
        if local == "postmaster":
            # RFC 5321 §4.5.1: postmaster@ every local domain MUST be accepted: the
            # postmaster account, before the catch-all; without one (as the local
            # directory does) the first account by name.
            if not self.directory.postmaster:
                acct = await self._first_account()
                return await self._store_account(acct) if acct is not None else None
            fallback = self.directory.postmaster
        if fallback is None:
            return None
        acct = await self._by_name(fallback)
        if acct is None:
            log.warn("the catch-all/postmaster account {account} is not in LDAP",
                     account=fallback)
            return None
        return await self._store_account(acct)

    def _first_account(self) -> Deferred[LDAPAccount | None]:
        def fetch() -> LDAPAccount | None:
            entries, _ = self.client.search(self.settings.base_dn, self.settings.list_filter,
                                            self.settings.attributes)
            accounts = [a for a in (entry_to_account(e, self.settings) for e in entries)
                        if a is not None]
            if accounts:
                log.warn("postmaster@ goes to {account}, the first LDAP account by name: set "
                         "[domains] postmaster", account=min(a.name for a in accounts))
            return min(accounts, key=lambda a: a.name, default=None)

        return self._cached("first", "", fetch)

    def may_send_as(self, account_name: str, address: str) -> Deferred[bool]:
        """True when the LDAP account ``account_name`` has ``address`` (or its base
        address) among its addresses."""
        try:
            norm = normalize_address(address)
        except InvalidAddress:
            return succeed(False)
        base = base_address(norm, self.directory.localpart_separator)

        def check(acct: LDAPAccount | None) -> bool:
            return acct is not None and (norm in acct.addresses or base in acct.addresses)

        return self._by_name(account_name).addCallback(check)

    # -- SASL --------------------------------------------------------------------------------

    @staticmethod
    def login_key(name: str) -> str:
        """The key of a login name (``mxd.directory.addresses.login_key``): the SASL
        server keys its limiter counters and fake SCRAM salts on it, as this directory
        keys its login cache."""
        return login_key(name)

    def lookup_secrets(self, login: str) -> Deferred[LDAPSecrets | None]:
        """For ``SASLServer``: the account's secrets, None when there is no such entry or
        it may not log in; errbacks with LDAPUnavailable (a temporary failure)."""
        return ensureDeferred(self._lookup_secrets(login))

    async def _lookup_secrets(self, login: str) -> LDAPSecrets | None:
        acct = await self._by_login(login)
        if acct is None:
            return None
        if not acct.may_login:
            log.info("LDAP account {account} is not in the login group: refused",
                     account=acct.name)
            return None
        await self._store_account(acct)
        return LDAPSecrets(acct.name, acct.dn, dict(acct.scram), self.client.check_password)

    def dummy_verify(self, password: str) -> bool:
        """Blocking, for ``SASLServer(dummy_verify=...)``: the password check of an unknown
        login costs a bind, like a known one's (a bind as a DN that does not exist, which
        the server refuses as invalid credentials, RFC 4513 §5.1.3).  Always False."""
        dn = f"{self.settings.name_attribute}={self._dummy_name},{self.settings.base_dn}"
        try:
            self.client.check_password(dn, password)
        except LDAPUnavailable as e:
            raise CredentialsUnavailable(str(e)) from e
        return False

    # -- administration (read-only) --------------------------------------------------------

    def list_entries(self) -> Deferred[list[LDAPAccount]]:
        def fetch() -> list[LDAPAccount]:
            entries, truncated = self.client.search(
                self.settings.base_dn, self.settings.list_filter, self.settings.attributes)
            if truncated:
                # An incomplete listing would make present accounts look like orphans.
                raise IncompleteListing(
                    f"the directory returned only {len(entries)} entries (its size limit); "
                    "allow the service account to read them all")
            accounts = [entry_to_account(e, self.settings) for e in entries]
            return sorted((a for a in accounts if a is not None), key=lambda a: a.name)

        return self._in_thread(fetch)

    def list_accounts(self) -> Deferred[list[Account]]:
        return self.list_entries().addCallback(
            lambda accts: [Account(0, a.name, a.addresses) for a in accts])

    def get_entry(self, name: str) -> Deferred[LDAPAccount | None]:
        return self._by_name(name)

    def get_account(self, name: str) -> Deferred[Account | None]:
        """The account ``name`` as LDAP has it, with its store id (0 when it has no
        mailboxes yet: reading creates nothing)."""
        async def get() -> Account | None:
            acct = await self._by_name(name)
            if acct is None:
                return None
            row = await self.store.get_account(acct.name)
            return Account(row.id if row is not None else 0, acct.name, acct.addresses)

        return ensureDeferred(get())

    def orphans(self) -> Deferred[list[Account]]:
        """Store accounts (with mail) whose name no LDAP entry has any more."""
        async def find() -> list[Account]:
            names = {lower_ascii(a.name) for a in await self.list_entries()}
            rows = await self.store.list_accounts()
            return [r for r in rows if lower_ascii(r.name) not in names]

        return ensureDeferred(find())

    def test_login(self, login: str) -> Deferred[LDAPAccount | None]:
        """``mxd config check --ldap-test``: the entry a login name finds (no cache)."""
        self._cache.pop(("login", login_key(login)), None)
        return self._by_login(login)

    def _read_only(self, *_: Any, **__: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.errback(ReadOnlyDirectory("accounts come from LDAP ([directory] backend = "
                                    "\"ldap\"): change them in the directory"))
        return d

    add_account = set_password = add_address = remove_address = _read_only

    def delete_account(self, name: str) -> Deferred[None]:
        """Delete the mail of an account that is no longer in LDAP (an orphan)."""
        async def delete() -> None:
            if await self._by_name(name) is not None:
                raise ReadOnlyDirectory(f"{name} is still in LDAP: remove it there first")
            await self.store.delete_account(name)
            self._store_ids.pop(name, None)

        return ensureDeferred(delete())


def make_threadpool(size: int) -> ThreadPool:
    """The bounded pool LDAP operations run on (start and stop it with the service)."""
    return ThreadPool(minthreads=0, maxthreads=size, name="mxd-ldap")


def in_threadpool(reactor: Any, pool: ThreadPool) -> Callable[[Callable[[], T]], Deferred[T]]:
    """``run_in_thread`` for LDAPDirectory: ``fn`` on ``pool``, the result back on the
    reactor thread."""
    def run(fn: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, pool, fn)

    return run


def settings_from_values(values: Mapping[str, Any]) -> LDAPSettings:
    """LDAPSettings from a mapping of the config's key names (lists become tuples)."""
    fields = {f.name for f in attrs.fields(LDAPSettings)}
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields}
    return LDAPSettings(**kw)


__all__ = [
    "IncompleteListing",
    "LDAPAccount",
    "LDAPDirectory",
    "LDAPSecrets",
    "LDAPSettings",
    "ReadOnlyDirectory",
    "entry_to_account",
    "in_threadpool",
    "make_threadpool",
    "settings_from_values",
]
