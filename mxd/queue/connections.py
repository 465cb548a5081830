"""The idle-connection cache of outbound SMTP: a connection that just delivered waits a
little for the next message to the same host under the same TLS policy (like Postfix's
connection cache), so a burst to one domain does not pay a handshake per message."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from mxd.smtp.client import SMTPClient


class IdleConnections:
    """Started SMTP clients waiting for another message to the same host (and TLS policy)."""

    def __init__(self, clock: IReactorTime, timeout: float, per_key: int, max_uses: int) -> None:
        self.clock = clock
        self.timeout = timeout
        self.per_key = per_key
        self.max_uses = max_uses
        self._idle: dict[tuple[Any, ...], list[tuple[SMTPClient, Any]]] = {}

    def put(self, key: tuple[Any, ...], client: SMTPClient) -> None:
        entries = self._idle.setdefault(key, [])
        if (self.timeout <= 0 or client.transactions >= self.max_uses
                or len(entries) >= self.per_key or not client.usable):
            client.quit()
            return
        timer = self.clock.callLater(self.timeout, self._expire, key, client)
        entries.append((client, timer))

    def take(self, key: tuple[Any, ...]) -> SMTPClient | None:
        entries = self._idle.get(key)
        while entries:
            client, timer = entries.pop()
            if timer.active():
                timer.cancel()
            if client.usable:
                return client
        return None

    def _expire(self, key: tuple[Any, ...], client: SMTPClient) -> None:
        entries = self._idle.get(key, [])
        for i, (c, _t) in enumerate(entries):
            if c is client:
                del entries[i]
                break
        if not entries:
            self._idle.pop(key, None)
        client.quit()

    def close_all(self) -> None:
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for client, timer in entries:
                if timer.active():
                    timer.cancel()
                client.quit()
