"""Local delivery for the queue runner: DSNs to local senders go into their INBOX.

``StoreLocalDelivery`` is the ``LocalDelivery`` the composition layer passes to
``QueueRunner``: an address is local when its domain is one of ours; delivery looks the
address up (exact, normalised ``local@domain``) and stores the bytes into the account's
INBOX in one durable store operation.  An unknown address is a permanent failure (5.1.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from mxd.directory.local import DirectorySettings, LocalDirectory
from mxd.errors import MxdError
from mxd.store.interfaces import Delivery, MessageProps


class LocalDeliveryError(MxdError):
    """Local delivery failed; ``permanent`` for an unknown recipient; ``enhanced`` is the
    RFC 3463 status code (None: the runner's default)."""

    def __init__(self, message: str, permanent: bool, enhanced: str | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.enhanced = enhanced


class StoreLocalDelivery:
    """LocalDelivery over an IAccountStore + IMailStore (mxd.store.sqlite.SQLiteStore).

    Addresses resolve exactly as inbound SMTP resolves them (sub-addresses, catch-all,
    postmaster, IDNA): through ``directory`` (the server's LocalDirectory), or a directory
    made for ``local_domains`` when none is given."""

    def __init__(self, store: Any, local_domains: Iterable[str] = (),
                 directory: Any = None) -> None:
        self.store = store
        self.directory = directory or LocalDirectory(
            store, DirectorySettings(domains=tuple(local_domains)))

    def is_local(self, address: str) -> bool:
        return bool(self.directory.is_local_domain(address.rpartition("@")[2]))

    def deliver(self, address: str, body: bytes) -> Deferred[None]:
        return ensureDeferred(self._deliver(address, body))

    async def _deliver(self, address: str, body: bytes) -> None:
        try:
            account = await self.directory.resolve_recipient(address)
        except MxdError as e:
            # e.g. the LDAP directory is down: RFC 3463 X.4.3 "directory server failure".
            raise LocalDeliveryError(f"directory lookup failed: {e}", permanent=False,
                                     enhanced="4.4.3") from e
        if account is None:
            raise LocalDeliveryError(f"no mailbox for {address}", permanent=True)
        writer = self.store.new_blob()
        try:
            writer.write(body)
        except Exception:
            writer.abort()
            raise
        await self.store.deliver(writer, [Delivery(account.id, "INBOX")],
                                 MessageProps(mail_from=""))
