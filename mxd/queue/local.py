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

from mxd.errors import MxdError
from mxd.store.interfaces import Delivery, MessageProps


class LocalDeliveryError(MxdError):
    """Local delivery failed; ``permanent`` for an unknown recipient."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def normalise_address(address: str) -> str:
    local, _at, domain = address.rpartition("@")
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii").lower() if not domain.isascii() \
            else domain.rstrip(".").lower()
    except UnicodeError:
        domain = domain.lower()
    return f"{local}@{domain}"


class StoreLocalDelivery:
    """LocalDelivery over an IAccountStore + IMailStore (mxd.store.sqlite.SQLiteStore)."""

    def __init__(self, store: Any, local_domains: Iterable[str]) -> None:
        self.store = store
        self.domains = frozenset(normalise_address("x@" + d).split("@", 1)[1] for d in local_domains)

    def is_local(self, address: str) -> bool:
        return normalise_address(address).rpartition("@")[2] in self.domains

    def deliver(self, address: str, body: bytes) -> Deferred[None]:
        return ensureDeferred(self._deliver(address, body))

    async def _deliver(self, address: str, body: bytes) -> None:
        account = await self.store.account_for_address(normalise_address(address))
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
