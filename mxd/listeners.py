"""Listening sockets as services that bind in ``privilegedStartService``.

Binding there lets twistd drop privileges (``--uid/--gid``) after ports below 1024 are
open.  A port that cannot be bound stops start-up with a message naming the listener.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from mxd.errors import MxdError


class ListenError(MxdError):
    """A configured port could not be bound."""


class TCPListener(service.Service):
    """Listens on one address and port with one protocol factory."""

    log = Logger()

    def __init__(self, reactor: Any, name: str, address: str, port: int,
                 factory: IProtocolFactory, backlog: int = 128) -> None:
        self._reactor = reactor
        self.setName(name)
        self.address = address
        self.port = port
        self.factory = factory
        self.backlog = backlog
        self.listening: Any = None  # IListeningPort once bound

    def privilegedStartService(self) -> None:
        try:
            self.listening = self._reactor.listenTCP(
                self.port, self.factory, backlog=self.backlog, interface=self.address)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise ListenError(f"cannot listen for {self.name} on {self.address} port "
                              f"{self.port}: {reason}") from e
        self.port = self.listening.getHost().port
        self.log.info("listening for {listener} on {address} port {port}",
                      listener=self.name, address=self.address, port=self.port)
        super().privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None
