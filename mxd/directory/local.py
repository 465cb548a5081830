"""The local account directory: accounts and addresses kept in mxd's own store.

``LocalDirectory`` answers the questions the protocols ask — who receives mail for an
address (``resolve_recipient``), which domains are ours (``is_local_domain``), whether
an authenticated account may use a sender address (``may_send_as``), and the stored
SASL secrets of a login name (``lookup_secrets``) — and manages accounts for the admin
interface and CLI.  Passwords are turned into ``StoredSecrets`` here (SCRAM keys,
CRAM-MD5 pad states, an scrypt hash; mxd.sasl.credentials); the store never sees them.

Recipient resolution, in order: the domain must be one of ``settings.domains`` (after
IDNA normalisation); then the exact normalised address; then the address without its
sub-address tag (``alice+tag@`` -> ``alice@``); then, for ``postmaster@`` (any case,
RFC 5321 §4.5.1), the ``postmaster`` account (without one configured: the first account
by name, so that postmaster@ is never refused); then the domain's catch-all account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mxd.directory.addresses import (
    InvalidAddress,
    base_address,
    login_key,
    lower_ascii,
    normalize_address,
    normalize_domain,
)
from mxd.errors import MxdError
from mxd.sasl.credentials import (
    DEFAULT_SCRAM_ITERATIONS,
    SCRYPT_N,
    CredentialError,
    StoredSecrets,
)
from mxd.store.interfaces import Account, IAccountStore

log = Logger()


_FIRST_ACCOUNT = "\0first account"  # postmaster fallback when none is configured


class DirectoryError(MxdError):
    """An account or address request cannot be carried out."""


class NotLocalDomain(DirectoryError):
    """An address given for an account is not in one of the configured domains."""


def _domains(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(normalize_domain(d) for d in value)


def _catchall(value: Mapping[str, str]) -> dict[str, str]:
    return {normalize_domain(d): a for d, a in dict(value).items()}


@attrs.frozen
class DirectorySettings:
    """Settings of the local directory (mapped from the ``[domains]``/``[auth]`` config)."""

    domains: tuple[str, ...] = attrs.field(default=(), converter=_domains)
    localpart_separator: str | None = "+"
    catchall: dict[str, str] = attrs.field(factory=dict, converter=_catchall, hash=False)
    scram_iterations: int = DEFAULT_SCRAM_ITERATIONS
    cram_md5: bool = True
    scrypt_n: int = SCRYPT_N  # scrypt cost for PLAIN/LOGIN hashes; lower only in tests
    # RFC 5321 §4.5.1: postmaster@ each local domain must be deliverable; the account
    # that receives it when no account has the address itself (None: the first account).
    postmaster: str | None = None


class LocalDirectory:
    """Accounts and addresses in an ``IAccountStore``.

    ``reactor`` (optional) lets password derivation (PBKDF2 + scrypt, ~100 ms) run on the
    reactor's thread pool instead of the calling thread.
    """

    def __init__(self, store: IAccountStore, settings: DirectorySettings, *,
                 reactor: Any = None) -> None:
        self.store = store
        self.settings = settings
        self._reactor = reactor
        self._domains = frozenset(settings.domains)
        for domain in settings.catchall:
            if domain not in self._domains:
                raise DirectoryError(f"catch-all domain {domain} is not a configured domain")

    # -- secrets ---------------------------------------------------------------------
    def _derive(self, password: str) -> Deferred[StoredSecrets]:
        if not password:
            raise DirectoryError("empty password")

        def derive() -> StoredSecrets:
            return StoredSecrets.derive(
                password, iterations=self.settings.scram_iterations,
                cram_md5=self.settings.cram_md5, scrypt_n=self.settings.scrypt_n)

        if self._reactor is not None and hasattr(self._reactor, "getThreadPool"):
            return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), derive)
        return succeed(derive())

    # -- accounts ----------------------------------------------------------------------
    def add_account(self, name: str, password: str, addresses: Iterable[str] = ()) -> Deferred[Account]:
        """Create an account with its password's secrets and addresses.

        Errbacks with DirectoryError/NotLocalDomain/InvalidAddress, or the store's
        AccountExists/AddressInUse."""
        try:
            normalised = [self._own_address(a) for a in addresses]
            d = self._derive(password)
        except MxdError as e:
            return fail(e)
        return d.addCallback(lambda s: self.store.add_account(name, s.to_text(), normalised))

    def set_password(self, name: str, password: str) -> Deferred[None]:
        """Replace the account's secrets; errbacks with NoSuchAccount."""
        try:
            d = self._derive(password)
        except MxdError as e:
            return fail(e)
        return d.addCallback(lambda s: self.store.set_secrets(name, s.to_text()))

    def delete_account(self, name: str) -> Deferred[None]:
        return self.store.delete_account(name)

    def list_accounts(self) -> Deferred[list[Account]]:
        return self.store.list_accounts()

    def get_account(self, name: str) -> Deferred[Account | None]:
        return self.store.get_account(name)

    def add_address(self, name: str, address: str) -> Deferred[None]:
        try:
            norm = self._own_address(address)
        except MxdError as e:
            return fail(e)
        return self.store.add_address(name, norm)

    def remove_address(self, address: str) -> Deferred[None]:
        try:
            norm = normalize_address(address)
        except InvalidAddress as e:
            return fail(e)
        return self.store.remove_address(norm)

    def _own_address(self, address: str) -> str:
        norm = normalize_address(address)
        domain = norm.rpartition("@")[2]
        if domain not in self._domains:
            raise NotLocalDomain(f"{address!r} is not in a configured domain")
        return norm

    @staticmethod
    def login_key(name: str) -> str:
        """The key of a login name (``mxd.directory.addresses.login_key``)."""
        return login_key(name)

    def lookup_secrets(self, username: str) -> Deferred[StoredSecrets | None]:
        """The stored SASL secrets of the account whose name, or one of whose addresses,
        is ``username`` (mail clients log in with the address), or None (unknown,
        unusable record).  ``account`` of the result names the account.

        For ``mxd.sasl.server.SASLServer``; never logs secrets."""
        return Deferred.fromCoroutine(self._lookup_secrets(username))

    async def _lookup_secrets(self, username: str) -> StoredSecrets | None:
        name = username
        text = await self.store.get_secrets(name)
        if text is None and "@" in username:
            try:
                owner = await self.store.account_for_address(normalize_address(username))
            except InvalidAddress:
                owner = None
            if owner is not None:
                name = owner.name
                text = await self.store.get_secrets(name)
        if text is None:
            return None
        try:
            return attrs.evolve(StoredSecrets.from_text(text), account=name)
        except CredentialError:
            log.warn("account {account} has no usable credentials; set a password with "
                     "`mxd account passwd {account}`", account=name)
            return None

    # -- addresses -----------------------------------------------------------------------
    def is_local_domain(self, domain: str) -> bool:
        try:
            return normalize_domain(domain) in self._domains
        except InvalidAddress:
            return False

    def resolve_recipient(self, address: str) -> Deferred[Account | None]:
        """The account receiving mail for ``address`` (see the module docstring), or None
        for an unknown address, a foreign domain or a malformed address."""
        try:
            norm = normalize_address(address)
        except InvalidAddress:
            return succeed(None)
        domain = norm.rpartition("@")[2]
        if domain not in self._domains:
            return succeed(None)
        candidates = [norm]
        base = base_address(norm, self.settings.localpart_separator)
        if base != norm:
            candidates.append(base)
        fallback: str | None = self.settings.catchall.get(domain)
        if norm.rpartition("@")[0] == "postmaster":
            # RFC 5321 §4.5.1: postmaster@ every local domain MUST be accepted: the
            # postmaster account, before the catch-all; without one, the first account.
            fallback = self.settings.postmaster or _FIRST_ACCOUNT
        return self._first_match(candidates, fallback)

    def _first_match(self, candidates: list[str], catchall: str | None) -> Deferred[Account | None]:
        if not candidates:
            if catchall is None:
                return succeed(None)
            if catchall is _FIRST_ACCOUNT:
                return self.store.list_accounts().addCallback(
                    lambda accounts: accounts[0] if accounts else None)
            return self.store.get_account(catchall)
        head, rest = candidates[0], candidates[1:]

        def found(acct: Account | None) -> Deferred[Account | None] | Account:
            if acct is not None:
                return acct
            return self._first_match(rest, catchall)

        d: Deferred[Any] = self.store.account_for_address(head)
        return d.addCallback(found)

    def may_send_as(self, account_name: str, address: str) -> Deferred[bool]:
        """True when the account owns ``address``, or its base address without the
        sub-address tag.  A catch-all does not make every address of the domain its own."""
        try:
            norm = normalize_address(address)
        except InvalidAddress:
            return succeed(False)
        base = base_address(norm, self.settings.localpart_separator)

        def check(acct: Account | None) -> bool:
            if acct is None:
                return False
            owned = {lower_ascii(a) for a in acct.addresses}
            return norm in owned or base in owned

        return self.store.get_account(account_name).addCallback(check)


__all__ = [
    "DirectoryError",
    "DirectorySettings",
    "LocalDirectory",
    "NotLocalDomain",
]
